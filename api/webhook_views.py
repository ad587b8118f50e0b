"""Outcome webhook operations: an app's endpoint, its secret's rotation, its events and their attempts."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

from flask import Blueprint, current_app

from api.auth import Principal
from api.endpoints import endpoint
from api.request_session import db_session
from api.schemas import StatusResponse
from api.webhook_schemas import (
    WebhookEndpointRequest,
    WebhookEndpointSchema,
    WebhookEventListQuery,
    WebhookEventPage,
)
from shared.services import webhooks

bp = Blueprint("webhooks", __name__)

_NOT_CONFIGURED = {404: "No webhook endpoint is configured for this app"}


def _dump(config: webhooks.WebhookConfig) -> dict:
    values = asdict(config)
    if values["secret"] is None:
        del values["secret"]
    return WebhookEndpointSchema().dump(values)


@endpoint(
    bp, "/push/webhook", "PUT", summary="Set the calling app's outcome webhook endpoint",
    auth="service", request_schema=WebhookEndpointRequest, responses={200: WebhookEndpointSchema},
    errors={400: "Webhook URL refused by the egress rules / Invalid request"}, tags=["webhooks"],
)
def put_webhook(principal: Principal, body: dict, **_):
    """Creating the endpoint makes its signing secret, shown in this answer only; changing the URL keeps it.
    Events are signed per the Standard Webhooks specification (docs/api.md "Outcome webhooks")."""
    settings = current_app.extensions["pushq"].settings
    config = webhooks.set_endpoint(db_session(), principal.app_id, body["url"],
                                   allow_http_loopback=settings.allow_http_endpoints)
    return _dump(config), 200


@endpoint(
    bp, "/push/webhook", "GET", summary="The calling app's webhook endpoint, its last attempt and event counts",
    auth="service", responses={200: WebhookEndpointSchema}, errors=_NOT_CONFIGURED, tags=["webhooks"],
)
def get_webhook(principal: Principal, _body, **_):
    return _dump(webhooks.get_endpoint(db_session(), principal.app_id)), 200


@endpoint(
    bp, "/push/webhook", "DELETE", summary="Remove the calling app's webhook endpoint",
    auth="service", responses={200: StatusResponse}, errors=_NOT_CONFIGURED, tags=["webhooks"],
)
def delete_webhook(principal: Principal, _body, **_):
    """Events not yet delivered are dropped with it."""
    webhooks.delete_endpoint(db_session(), principal.app_id)
    return {"status": "ok"}, 200


@endpoint(
    bp, "/push/webhook/rotate-secret", "POST", summary="Rotate the webhook signing secret",
    auth="service", responses={200: WebhookEndpointSchema}, errors=_NOT_CONFIGURED, tags=["webhooks"],
)
def rotate_webhook_secret(principal: Principal, _body, **_):
    """The new secret is in this answer only. The previous one keeps signing too (a second `v1,` signature)
    for PUSHQ_WEBHOOK_SECRET_OVERLAP_SECONDS, so receivers can switch without missing an event."""
    settings = current_app.extensions["pushq"].settings
    config = webhooks.rotate_secret(db_session(), principal.app_id,
                                    timedelta(seconds=settings.webhook_secret_overlap_seconds))
    return _dump(config), 200


@endpoint(
    bp, "/push/webhook/events", "GET", summary="The calling app's webhook events, newest first",
    auth="service", query_schema=WebhookEventListQuery, responses={200: WebhookEventPage},
    errors={400: "Invalid request"}, tags=["webhooks"],
)
def list_webhook_events(principal: Principal, query: dict, **_):
    """Each with its attempts, next attempt and last error; filter by status (pending, delivered, failed)."""
    page = webhooks.list_events(db_session(), principal.app_id, limit=query["limit"], cursor=query["cursor"],
                                status=query["status"])
    return WebhookEventPage().dump(page), 200
