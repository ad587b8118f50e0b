"""``POST /push/receipts``: pushq's service worker reports a Web Push notification displayed or clicked.

No bearer token: the service worker holds none (no user JWT ever reaches it).
The receipt token in the push payload is the credential; it names one delivery
and only pushq can sign one (shared/receipts.py). Cheap: a signature check, a
Redis window per source address, one UPDATE by primary key. The service worker
may be served from a site's own origin, so the answer allows any origin (CORS,
without credentials): the token alone decides.
"""

from __future__ import annotations

from flask import Blueprint, current_app, request
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from werkzeug.wrappers import Response

from api.endpoints import endpoint
from api.option_schemas import ACTION_ID
from api.request_session import db_session
from shared.clock import utcnow
from shared.errors import ServiceError
from shared.receipts import RECEIPT_EVENTS, TOKEN_CHARS
from shared.services.receipts import record_receipt

bp = Blueprint("receipts", __name__)


class InvalidReceipt(ServiceError):
    status, code, message = 403, "invalid_receipt", "Receipt token is not valid"


class ReceiptRequest(Schema):
    token = fields.String(required=True, validate=validate.Length(min=1, max=TOKEN_CHARS * 2), metadata={
        "description": "The `receipt` of the Web Push payload (signed by pushq for one delivery)."})
    event = fields.String(required=True, validate=validate.OneOf(RECEIPT_EVENTS))
    action = fields.String(load_default=None, validate=[validate.Length(min=1, max=64), ACTION_ID], metadata={
        "description": "clicked: the id of the action button clicked (the send's `actions`); absent: the notification."})

    @validates_schema
    def _action_with_a_click(self, data: dict, **_kwargs: object) -> None:
        if data.get("action") is not None and data["event"] != "clicked":
            raise ValidationError({"action": ["Only a clicked receipt names an action."]})


@endpoint(
    bp, "/push/receipts", "POST", summary="Report a Web Push notification displayed or clicked (service worker)",
    auth="none", request_schema=ReceiptRequest, responses={204: None},
    errors={400: "Invalid request", 403: "Receipt token is not valid", 429: "Too many receipts, try again later"},
    tags=["receipts"],
)
def post_receipt(_principal, body: dict, **_):
    """Idempotent: the first `displayed` and the first `clicked` are kept, repeats answer 204 and change nothing;
    a click also marks the delivery displayed. Rate-limited per source address (PUSHQ_RECEIPTS_PER_ADDRESS_PER_MINUTE)."""
    now = utcnow()
    current_app.extensions["pushq"].receipt_limiter.hit(request.remote_addr, now)
    delivery_id = current_app.extensions["pushq"].receipt_tokens.delivery_id(body["token"])
    if delivery_id is None:
        raise InvalidReceipt()
    record_receipt(db_session(), delivery_id, body["event"], now, body["action"])
    return "", 204


@bp.after_app_request
def _cors(response: Response) -> Response:
    """Any origin may post a receipt (the service worker's site), never with credentials."""
    if request.path == "/push/receipts":
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "86400"
    return response
