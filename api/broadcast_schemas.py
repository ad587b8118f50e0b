"""Schemas of the broadcast and user-tag operations (the OpenAPI document is generated from them)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.option_schemas import WithOptions
from api.schemas import SEND_FIELDS
from shared.models import BroadcastStatus, DeliveryStatus, Platform
from shared.services.broadcasts import MAX_RATE_PER_MINUTE
from shared.services.tags import MAX_TAG_CHARS, MAX_TAGS_PER_USER, TAG_PATTERN

_TAG_RULE = f"1-{MAX_TAG_CHARS} characters of A-Z a-z 0-9 _ - . : /"


def _tag_list(description: str) -> fields.List:
    return fields.List(
        fields.String(validate=validate.Regexp(TAG_PATTERN, error=f"Each tag is {_TAG_RULE}.")),
        load_default=list, validate=validate.Length(max=MAX_TAGS_PER_USER),
        metadata={"description": f"{description} At most {MAX_TAGS_PER_USER} tags, each {_TAG_RULE}."},
    )


class TagsRequest(Schema):
    tags = fields.List(
        fields.String(validate=validate.Regexp(TAG_PATTERN, error=f"Each tag is {_TAG_RULE}.")), required=True,
        validate=validate.Length(max=MAX_TAGS_PER_USER),
        metadata={"description": f"The user's tags (replacing the ones before; [] removes all). At most "
                  f"{MAX_TAGS_PER_USER}, each {_TAG_RULE}; a repeated tag counts once."},
    )


class TagsResponse(Schema):
    user_id = fields.UUID(required=True)
    tags = fields.List(fields.String(), required=True, metadata={"description": "Sorted."})


class AudienceSchema(Schema):
    everyone = fields.Boolean(load_default=False, metadata={"description": "true: every user enrolled in the app."})
    tags_all = _tag_list("Users having every one of these tags.")
    tags_any = _tag_list("Users having at least one of these tags.")
    platforms = fields.List(
        fields.String(validate=validate.OneOf([p.value for p in Platform])), load_default=list,
        validate=validate.Length(max=len(Platform)),
        metadata={"description": "Only devices of these platforms (web, ios, android); empty: every platform."},
    )

    @validates_schema
    def _one_audience(self, data: dict[str, Any], **_kwargs: object) -> None:
        segment = bool(data.get("tags_all") or data.get("tags_any"))
        if data.get("everyone") == segment:
            raise ValidationError("Give either everyone: true or a tag segment (tags_all and/or tags_any).")


class BroadcastRequest(WithOptions.from_dict(dict(SEND_FIELDS))):  # type: ignore[misc]
    audience = fields.Nested(AudienceSchema, required=True)
    rate_per_minute = fields.Integer(
        strict=True, load_default=None, validate=validate.Range(min=1, max=MAX_RATE_PER_MINUTE),
        metadata={"description": "Deliveries released per minute at most (pages of the fan-out released per time "
                  "slice); absent: as fast as the workers go."},
    )


class BroadcastAccepted(Schema):
    broadcast_id = fields.UUID(required=True)
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in BroadcastStatus]))
    audience_size = fields.Integer(required=True, metadata={
        "description": "Users in the audience when accepted: what the daily quota took."})


class AudienceOut(Schema):
    tags_all = fields.List(fields.String(), required=True)
    tags_any = fields.List(fields.String(), required=True)
    platforms = fields.List(fields.String(), required=True)


DeliveryCounts = Schema.from_dict(
    {status.value: fields.Integer(required=True) for status in DeliveryStatus}, name="DeliveryCounts")


class BroadcastSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in BroadcastStatus]))
    title = fields.String(required=True)
    body = fields.String(required=True)
    audience = fields.Nested(AudienceOut, required=True)
    rate_per_minute = fields.Integer(required=True, allow_none=True)
    audience_size = fields.Integer(required=True, metadata={"description": "Users in the audience when accepted."})
    deliveries_created = fields.Integer(required=True, metadata={"description": "Devices fanned out to so far."})
    counts = fields.Nested(DeliveryCounts, required=True, metadata={"description": "Deliveries per status."})
    created_at = fields.AwareDateTime(required=True)
    send_at = fields.AwareDateTime(required=True, allow_none=True)
    started_at = fields.AwareDateTime(required=True, allow_none=True)
    fanned_out_at = fields.AwareDateTime(required=True, allow_none=True, metadata={"description": "The last page."})
    finished_at = fields.AwareDateTime(required=True, allow_none=True, metadata={
        "description": "Completed (every delivery final) or cancelled."})
    expires_at = fields.AwareDateTime(required=True)


class BroadcastSummary(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in BroadcastStatus]))
    audience_size = fields.Integer(required=True)
    deliveries_created = fields.Integer(required=True)
    created_at = fields.AwareDateTime(required=True)
    send_at = fields.AwareDateTime(required=True, allow_none=True)
    started_at = fields.AwareDateTime(required=True, allow_none=True)
    finished_at = fields.AwareDateTime(required=True, allow_none=True)


class BroadcastListQuery(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None, validate=validate.Length(min=1, max=200),
                           metadata={"description": "next_cursor of the previous page (opaque)."})
    status = fields.String(load_default=None, validate=validate.OneOf([s.value for s in BroadcastStatus]))


class BroadcastPage(Schema):
    items = fields.List(fields.Nested(BroadcastSummary), required=True)
    next_cursor = fields.String(allow_none=True, required=True, metadata={"description": "Pass as ?cursor= for the next page; null at the end."})


class RecipientQuery(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.UUID(load_default=None, metadata={"description": "next_cursor of the previous page."})
    user_id = fields.UUID(load_default=None, metadata={"description": "Only this user's results."})
    device_id = fields.UUID(load_default=None, metadata={"description": "Only this device's result."})
    status = fields.String(load_default=None, validate=validate.OneOf([s.value for s in DeliveryStatus]),
                           metadata={"description": "Only results in this status (dead_token: the dead devices)."})


class RecipientSchema(Schema):
    device_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    platform = fields.String(required=True, validate=validate.OneOf([p.value for p in Platform]))
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in DeliveryStatus]))
    attempts = fields.Integer(required=True)
    vendor_message_id = fields.String(allow_none=True, required=True)
    last_error = fields.String(allow_none=True, required=True)
    sent_at = fields.AwareDateTime(allow_none=True, required=True)
    displayed_at = fields.AwareDateTime(allow_none=True, required=True, metadata={
        "description": "When the browser showed it (a receipt from pushq-sw.js); Web Push only."})
    clicked_at = fields.AwareDateTime(allow_none=True, required=True, metadata={"description": "When it was clicked."})
    updated_at = fields.AwareDateTime(required=True)


class RecipientPage(Schema):
    items = fields.List(fields.Nested(RecipientSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True, metadata={"description": "Pass as ?cursor= for the next page; null at the end."})
