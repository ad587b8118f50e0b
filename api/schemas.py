"""Request and response schemas (marshmallow); the OpenAPI document is generated from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from api.option_schemas import WithOptions, option_fields
from shared.models import DeliveryStatus, NotificationStatus
from shared.platforms import PLATFORM_NAMES
from shared.services.sends import MAX_BODY_CHARS, MAX_RECIPIENTS, MAX_TITLE_CHARS, MAX_TTL_SECONDS

MAX_PUSH_TOKEN_CHARS = 8192
MAX_ENROLL_BATCH = 1000


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Stable machine-readable error code."})
    message = fields.String(required=True, metadata={"description": "Human-readable message, as documented."})


class ValidationErrorSchema(ErrorSchema):
    """Every 400: the error, plus what the particular error adds."""

    reason = fields.String(metadata={"description": "invalid_push_token: why the token does not fit its platform; "
                                     "data_too_large / options_not_deliverable: which platforms cannot carry the "
                                     "message, and why."})
    platforms = fields.List(fields.String(), metadata={
        "description": "data_too_large / options_not_deliverable: the targeted platforms (web, ios, android) that cannot carry the message "
                       "whatever the body's truncation (absent when the data alone exceeds 4096 bytes)."})
    user_ids = fields.List(fields.UUID(), metadata={"description": "user_not_enrolled: the users not enrolled."})
    # Last: from here on the class body's ``fields`` is this attribute, not the marshmallow module.
    fields = fields.Dict(
        metadata={"description": "validation_error: per-field messages (a list of texts, or per index/key for "
                  "nested values; `_schema` for the body as a whole)."}
    )


class QuotaErrorSchema(ErrorSchema):
    """A 429 of an operation that takes from the daily quota; a broadcast's also names its numbers."""

    audience_size = fields.Integer(metadata={"description": "Broadcasts: users in the audience (what it would take)."})
    quota_limit = fields.Integer(metadata={"description": "Broadcasts: the app's daily quota."})
    quota_remaining = fields.Integer(metadata={"description": "Broadcasts: what is left of it today."})


class RegisterDeviceRequest(Schema):
    app_id = fields.UUID(required=True)
    platform = fields.String(required=True, validate=validate.OneOf(PLATFORM_NAMES))
    push_token = fields.String(
        required=True,
        validate=validate.Length(min=1, max=MAX_PUSH_TOKEN_CHARS),
        metadata={
            "description": "APNs device token (hex), FCM registration token, or for web the "
            "PushSubscription as JSON text (JSON.stringify(subscription))."
        },
    )


class DeviceIdResponse(Schema):
    device_id = fields.UUID(required=True)


class StatusResponse(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})


def _storable() -> validate.Regexp:
    """Text stored in a PostgreSQL text column: it cannot hold NUL (U+0000), so such text is refused up front."""
    return validate.Regexp(r"^[^\x00]*$", error="Must not contain NUL (U+0000) characters.")


def _title() -> fields.String:
    return fields.String(required=True, validate=[validate.Length(min=1, max=MAX_TITLE_CHARS), _storable()])


def _body() -> fields.String:
    return fields.String(required=True, validate=[validate.Length(min=1, max=MAX_BODY_CHARS), _storable()])


def _data() -> fields.Dict:
    return fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={"description": "Free-form JSON object delivered with the message; at most 4096 bytes as UTF-8 JSON."},
    )


def _ttl() -> fields.Integer:
    return fields.Integer(
        strict=True,
        validate=validate.Range(min=0, max=MAX_TTL_SECONDS),
        load_default=None,
        metadata={"description": "Seconds the message may wait for delivery; defaults to PUSHQ_DEFAULT_TTL."},
    )


def _options() -> dict[str, fields.Field]:
    """Delivery options every send endpoint takes, mapped to each vendor's equivalent."""
    return {
        "priority": fields.String(
            load_default="normal", validate=validate.OneOf(["high", "normal"]),
            metadata={"description": "Web Push Urgency, apns-priority (10/5), FCM android.priority."},
        ),
        "collapse_key": fields.String(
            load_default=None, validate=validate.Regexp(r"^[A-Za-z0-9_-]{1,32}$"),
            metadata={"description": "Replaces a pending message with the same key: Web Push Topic, "
                      "apns-collapse-id, FCM collapse_key. 1-32 URL-safe base64 characters."},
        ),
        "badge": fields.Integer(
            strict=True, load_default=None, validate=validate.Range(min=0, max=99999),
            metadata={"description": "App icon badge (APNs aps.badge, FCM notification_count)."},
        ),
        "sound": fields.String(
            load_default=None, validate=[validate.Length(min=1, max=255), _storable()],
            metadata={"description": "Sound name (APNs aps.sound, FCM android.notification.sound)."},
        ),
    }


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 time with a zone that has a UTC equivalent in Python's years 1-9999, loaded in UTC.

    ``0001-01-01T00:00:00+14:00`` parses, but is in year 0 once in UTC: refused
    here as a 400 rather than overflowing when compared or stored.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        parsed: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            # In UTC from here on: an offset Python takes (up to ±23:59) may be one PostgreSQL refuses (±15:59).
            return parsed.astimezone(UTC)
        except OverflowError:
            raise ValidationError("Out of range: the time in UTC must fall within years 1 to 9999.") from None


def _send_at() -> fields.AwareDateTime:
    return UtcDateTime(
        load_default=None,
        metadata={"description": "ISO 8601 with a time zone: fan out no earlier than this (and within seconds "
                  "after it); the ttl counts from it. At most 2419200 s ahead; absent or past: at once. Until then "
                  "the notification is `scheduled` and DELETE /push/notifications/{id} cancels it. It takes from "
                  "the daily quota of the day of the request."},
    )


SEND_FIELDS = {"title": _title(), "body": _body(), "data": _data(), "ttl": _ttl(), **_options(), "send_at": _send_at(),
               **option_fields()}


class SendRequest(WithOptions.from_dict({"user_id": fields.UUID(required=True), **SEND_FIELDS})):  # type: ignore[misc]
    pass


class BulkSendRequest(WithOptions.from_dict(dict(SEND_FIELDS))):  # type: ignore[misc]
    user_ids = fields.List(fields.UUID(), required=True, validate=validate.Length(min=1, max=MAX_RECIPIENTS))

    @validates("user_ids")
    def _distinct(self, value: list, **_kwargs: object) -> None:
        if len(set(value)) != len(value):
            raise ValidationError("user_ids must not repeat a user")


class BatchSendRequest(Schema):
    notifications = fields.List(
        fields.Nested(SendRequest), required=True, validate=validate.Length(min=1, max=MAX_RECIPIENTS)
    )


class NotificationIdResponse(Schema):
    notification_id = fields.UUID(required=True)


class NotificationIdsResponse(Schema):
    notification_ids = fields.List(fields.UUID(), required=True, metadata={"description": "In request order."})


class DeliverySchema(Schema):
    id = fields.UUID(required=True)
    device_id = fields.UUID(required=True)
    platform = fields.String(required=True, validate=validate.OneOf(PLATFORM_NAMES))
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in DeliveryStatus]))
    attempts = fields.Integer(required=True)
    vendor_message_id = fields.String(allow_none=True, required=True)
    last_error = fields.String(allow_none=True, required=True)
    next_attempt_at = fields.AwareDateTime(allow_none=True, required=True)
    sent_at = fields.AwareDateTime(allow_none=True, required=True)
    displayed_at = fields.AwareDateTime(allow_none=True, required=True, metadata={
        "description": "Web Push: when pushq's service worker first showed it (a receipt); null otherwise."})
    clicked_at = fields.AwareDateTime(allow_none=True, required=True, metadata={
        "description": "Web Push: when its notification was first clicked (a receipt); null otherwise."})
    clicked_action = fields.String(allow_none=True, required=True, metadata={
        "description": "Web Push: the id of the action button of that first click (see `actions`); null for a click "
                       "on the notification itself, or no click."})
    updated_at = fields.AwareDateTime(required=True)


class NotificationSchema(Schema):
    id = fields.UUID(required=True)
    app_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    title = fields.String(required=True)
    body = fields.String(required=True)
    data = fields.Dict(required=True)
    ttl = fields.Integer(required=True)
    priority = fields.String(required=True)
    collapse_key = fields.String(allow_none=True, required=True)
    badge = fields.Integer(allow_none=True, required=True)
    sound = fields.String(allow_none=True, required=True)
    options = fields.Method("_options", required=True, metadata={
        "type": "object", "description": "The message options the send used (only those set; see docs/api.md, Message options)."})
    truncated = fields.Boolean(required=True, metadata={"description": "A vendor size limit forced the body to be shortened."})
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in NotificationStatus]))
    created_at = fields.AwareDateTime(required=True)
    send_at = fields.AwareDateTime(required=True, allow_none=True, metadata={"description": "A scheduled send's time; null: at once."})
    expires_at = fields.AwareDateTime(required=True)
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True)


    def _options(self, notification: Any) -> dict[str, Any]:
        return notification.options or {}


class EnrollRequest(Schema):
    user_ids = fields.List(fields.UUID(), required=True, validate=validate.Length(min=1, max=MAX_ENROLL_BATCH))


class EnrollResponse(Schema):
    enrolled = fields.Integer(required=True, metadata={"description": "Users newly enrolled (already enrolled ones are skipped)."})


class EnrollmentSchema(Schema):
    app_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    enrolled_at = fields.AwareDateTime(required=True, attribute="created_at")


class EnrollmentPage(Schema):
    items = fields.List(fields.Nested(EnrollmentSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True, metadata={"description": "Pass as ?cursor= for the next page; null at the end."})


class PageQuery(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.UUID(load_default=None)


# The options a web-only send can use (the others have no browser equivalent): named in camelCase like the contract.
PATIENT_OPTIONS = ("silent", "interruption_level", "image", "group", "renotify", "actions", "webpush")


class PatientSendRequest(WithOptions.from_dict(option_fields(camel_case=True, only=PATIENT_OPTIONS))):  # type: ignore[misc]
    """The contract's request body (field names as specified), with message options as extensions."""

    patient_id = fields.UUID(required=True, data_key="patientId")
    title = _title()
    body = _body()
    url = fields.String(
        load_default=None, validate=[validate.Length(max=2048), _storable()],
        metadata={"description": "Opened by the service worker on click; travels in the push payload."},
    )
    send_at = UtcDateTime(
        load_default=None, data_key="sendAt",
        metadata={"description": "Extension (pushq's send_at): ISO 8601 with a time zone; a future one schedules the "
                  "send and the call answers at once, every subscription `pending`."},
    )


class SubscriptionResultSchema(Schema):
    subscription_id = fields.String(required=True)
    status = fields.String(
        required=True, validate=validate.OneOf(["sent", "rejected", "pending"]),
        metadata={"description": "sent / rejected as in the contract; `pending` (extension): no answer by the "
                  "deadline (a retry under way or a slow push service); read the final outcome at "
                  "GET /push/notifications/{notification_id}."},
    )
    vendor_message_id = fields.String(required=True, metadata={"description": "The push service's message id; empty unless sent."})


class PatientSendResponse(Schema):
    patient_id = fields.String(required=True)
    person_id = fields.String(required=True)
    sent = fields.Integer(required=True)
    rejected = fields.Integer(required=True)
    results = fields.List(fields.Nested(SubscriptionResultSchema), required=True)
    notification_id = fields.String(required=True, metadata={"description": "Extension: the notification carrying this send."})


class PatientSchema(Schema):
    patient_id = fields.UUID(required=True)
    person_id = fields.UUID(required=True, allow_none=True, metadata={"description": "null: known patient without a mapping."})
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)


class PatientPage(Schema):
    items = fields.List(fields.Nested(PatientSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class IdentityRequest(Schema):
    person_id = fields.UUID(required=True)


class MappingSchema(Schema):
    patient_id = fields.UUID(required=True)
    person_id = fields.UUID(required=True)


class BulkMappingRequest(Schema):
    mappings = fields.List(fields.Nested(MappingSchema), required=True, validate=validate.Length(min=1, max=1000))


class BulkMappingResponse(Schema):
    upserted = fields.Integer(required=True)


class NotificationListQuery(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, validate=validate.Length(min=1, max=200),
                           metadata={"description": "next_cursor of the previous page (opaque)."})
    user_id = fields.UUID(load_default=None)
    status = fields.String(load_default=None, validate=validate.OneOf([s.value for s in NotificationStatus]))


class NotificationSummary(Schema):
    id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    title = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in NotificationStatus]))
    priority = fields.String(required=True)
    truncated = fields.Boolean(required=True)
    created_at = fields.AwareDateTime(required=True)
    send_at = fields.AwareDateTime(required=True, allow_none=True)
    expires_at = fields.AwareDateTime(required=True)


class NotificationPage(Schema):
    items = fields.List(fields.Nested(NotificationSummary), required=True)
    next_cursor = fields.String(allow_none=True, required=True, metadata={"description": "Pass as ?cursor= for the next page; null at the end."})


class DeviceListQuery(PageQuery):
    user_id = fields.UUID(load_default=None)


class DeviceSchema(Schema):
    """A device as its app sees it: never the push token."""

    id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    platform = fields.String(required=True, validate=validate.OneOf(PLATFORM_NAMES))
    created_at = fields.AwareDateTime(required=True)
    last_seen_at = fields.AwareDateTime(required=True)
    disabled_at = fields.AwareDateTime(required=True, allow_none=True)
    disabled_reason = fields.String(required=True, allow_none=True,
                                    metadata={"description": "Why pushq stopped using it: unregistered, or the vendor's answer."})


class DevicePage(Schema):
    items = fields.List(fields.Nested(DeviceSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True, metadata={"description": "Pass as ?cursor= for the next page; null at the end."})
