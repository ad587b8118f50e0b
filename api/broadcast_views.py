"""Broadcasts and user tags: parse, authorize, call one service function, serialize."""

from __future__ import annotations

from flask import Blueprint, current_app

from api.auth import Principal
from api.broadcast_schemas import (
    BroadcastAccepted,
    BroadcastListQuery,
    BroadcastPage,
    BroadcastRequest,
    BroadcastSchema,
    RecipientPage,
    RecipientQuery,
    TagsRequest,
    TagsResponse,
)
from api.endpoints import endpoint, parse_id
from api.metrics import current_request_id
from api.request_session import db_session
from api.schemas import StatusResponse
from shared.backlog import backpressure_headers
from shared.clock import utcnow
from shared.errors import EnrollmentNotFound
from shared.services import broadcasts, tags
from shared.services.broadcasts import BroadcastNotFound
from shared.services.sends import SendRequest

bp = Blueprint("broadcasts", __name__)


@endpoint(
    bp, "/push/enrollments/{user_id}/tags", "PUT", summary="Set an enrolled user's tags",
    auth="service", request_schema=TagsRequest, responses={200: TagsResponse},
    errors={404: "User not enrolled"}, tags=["enrollments"],
)
def put_tags(principal: Principal, body: dict, user_id: str):
    """Replaces the user's tags in the calling app (broadcasts select segments by them); [] removes them all.
    At most 32 tags of 1-64 characters (A-Z a-z 0-9 _ - . : /). Unenrolling the user removes their tags."""
    uid = parse_id(user_id, EnrollmentNotFound)
    return TagsResponse().dump({"user_id": uid, "tags": tags.set_tags(db_session(), principal.app_id, uid, body["tags"])}), 200


@endpoint(
    bp, "/push/enrollments/{user_id}/tags", "GET", summary="An enrolled user's tags",
    auth="service", responses={200: TagsResponse}, errors={404: "User not enrolled"}, tags=["enrollments"],
)
def get_tags(principal: Principal, _body, user_id: str):
    uid = parse_id(user_id, EnrollmentNotFound)
    return TagsResponse().dump({"user_id": uid, "tags": tags.get_tags(db_session(), principal.app_id, uid)}), 200


@endpoint(
    bp, "/push/broadcasts", "POST", summary="Send one message to every enrolled user, or a tag segment",
    auth="service", request_schema=BroadcastRequest, responses={202: BroadcastAccepted},
    errors={400: "Data payload too large / Invalid request"}, tags=["broadcasts"], idempotent=True, quota=True,
)
def create_broadcast(principal: Principal, body: dict, **_):
    """Answers at once, whatever the audience: the workers fan it out in pages (optionally at
    rate_per_minute). It takes the audience size (users in the audience now) from the daily quota; an
    audience larger than what is left today is refused whole with 429, naming audience_size and
    quota_remaining. A future send_at schedules it (DELETE cancels it until, and while, it is sent)."""
    pushq = current_app.extensions["pushq"]
    request_id = current_request_id()
    audience = body.pop("audience")
    rate = body.pop("rate_per_minute")
    accepted = broadcasts.create_broadcast(
        db_session(), principal.app_id, SendRequest(user_id=broadcasts.NO_USER, **body),
        broadcasts.Audience(tuple(audience["tags_all"]), tuple(audience["tags_any"]), tuple(audience["platforms"])),
        rate_per_minute=rate, default_ttl=pushq.settings.default_ttl_seconds,
        enqueue_step=lambda broadcast_id, token: pushq.dispatcher.enqueue_broadcast_step(
            broadcast_id, token, request_ids=(request_id,)),
        quota=pushq.quota, request_id=request_id,
    )
    headers = accepted.quota.headers(utcnow()) if accepted.quota else {}
    headers.update(backpressure_headers(pushq.redis, pushq.settings.backpressure_threshold))
    b = accepted.broadcast
    return BroadcastAccepted().dump({"broadcast_id": b.id, "status": b.status, "audience_size": b.audience_size}), 202, headers


@endpoint(
    bp, "/push/broadcasts", "GET", summary="The calling app's broadcasts, newest first",
    auth="service", query_schema=BroadcastListQuery, responses={200: BroadcastPage}, tags=["broadcasts"],
)
def list_broadcasts(principal: Principal, query: dict, **_):
    """Filter by status; follow next_cursor for older ones."""
    page = broadcasts.list_broadcasts(db_session(), principal.app_id, limit=query["limit"], cursor=query["cursor"],
                                      status=query["status"])
    return BroadcastPage().dump(page), 200


@endpoint(
    bp, "/push/broadcasts/{broadcast_id}", "GET", summary="A broadcast: audience size, deliveries per status, times",
    auth="service", responses={200: BroadcastSchema}, errors={404: "Broadcast not found"}, tags=["broadcasts"],
)
def get_broadcast(principal: Principal, _body, broadcast_id: str):
    """Counts are live while it is sent and frozen once it completes."""
    session = db_session()
    found = broadcasts.get_broadcast(session, principal.app_id, parse_id(broadcast_id, BroadcastNotFound))
    return BroadcastSchema().dump(broadcasts.describe(session, found)), 200


@endpoint(
    bp, "/push/broadcasts/{broadcast_id}", "DELETE", summary="Cancel a broadcast: what was not pushed never will be",
    auth="service", responses={200: StatusResponse},
    errors={404: "Broadcast not found", 409: "Broadcast already completed"}, tags=["broadcasts"],
)
def cancel_broadcast(principal: Principal, _body, broadcast_id: str):
    """200 {"status": "cancelled"}, also when asked again. Deliveries already claimed by a worker finish their
    push; the rest end `cancelled`. The daily quota it took is not given back."""
    status = broadcasts.cancel(db_session(), principal.app_id, parse_id(broadcast_id, BroadcastNotFound), utcnow())
    return StatusResponse().dump({"status": status}), 200


@endpoint(
    bp, "/push/broadcasts/{broadcast_id}/recipients", "GET", summary="A broadcast's per-recipient results",
    auth="service", query_schema=RecipientQuery, responses={200: RecipientPage},
    errors={404: "Broadcast not found"}, tags=["broadcasts"],
)
def broadcast_recipients(principal: Principal, query: dict, broadcast_id: str):
    """One result per device reached, ordered by device id; filter by user_id, device_id or status."""
    page = broadcasts.recipients(
        db_session(), principal.app_id, parse_id(broadcast_id, BroadcastNotFound), limit=query["limit"],
        after=query["cursor"], user_id=query["user_id"], device_id=query["device_id"],
        statuses=[query["status"]] if query["status"] else [],
    )
    return RecipientPage().dump(page), 200
