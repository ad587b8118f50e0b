"""Schemas of the outcome webhook operations (the OpenAPI document is generated from them)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from shared.egress import MAX_WEBHOOK_URL_CHARS
from shared.models import WebhookEventStatus
from shared.services.webhooks import EVENT_TYPES


class WebhookEndpointRequest(Schema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_WEBHOOK_URL_CHARS), metadata={
        "description": "https URL on port 443 of a host name that resolves to public addresses only.",
        "example": "https://example.com/pushq-events"})


class WebhookEndpointSchema(Schema):
    url = fields.String(required=True)
    secret = fields.String(metadata={
        "description": "The Standard Webhooks signing secret (whsec_...): only in the answer that created it "
                       "(first PUT, rotate-secret); keep it, it is never shown again."})
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    previous_secret_expires_at = fields.AwareDateTime(required=True, allow_none=True, metadata={
        "description": "Until then the secret before the last rotation still signs (a second signature)."})
    last_attempt_at = fields.AwareDateTime(required=True, allow_none=True)
    last_success_at = fields.AwareDateTime(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True, metadata={
        "description": "Why the last failed attempt failed (cleared by a success)."})
    events = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True, metadata={
        "description": "Events per status: pending, delivered, failed (gave up)."})


class WebhookEventListQuery(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, validate=validate.Length(min=1, max=200),
                           metadata={"description": "next_cursor of the previous page (opaque)."})
    status = fields.String(load_default=None, validate=validate.OneOf([s.value for s in WebhookEventStatus]))


class WebhookEventSchema(Schema):
    id = fields.Method("wire_id", required=True, metadata={"description": "The event id receivers see (msg_...)."})
    type = fields.String(attribute="event_type", required=True, validate=validate.OneOf(EVENT_TYPES))
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in WebhookEventStatus]))
    attempts = fields.Integer(required=True)
    next_attempt_at = fields.AwareDateTime(required=True, allow_none=True)
    last_attempt_at = fields.AwareDateTime(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)
    delivered_at = fields.AwareDateTime(required=True, allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    data = fields.Dict(attribute="payload", required=True)

    def wire_id(self, event: object) -> str:
        from shared.services.webhooks import event_wire_id

        return event_wire_id(event.id)  # type: ignore[attr-defined]


class WebhookEventPage(Schema):
    items = fields.List(fields.Nested(WebhookEventSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True,
                                metadata={"description": "Pass as ?cursor= for the next page; null at the end."})
