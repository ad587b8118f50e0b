"""The message options every send endpoint takes (marshmallow fields), parsed into one ``Options`` value.

Each field's description says what each vendor receives; the full table is
docs/api.md "Message options". Rules about one value are here (lengths, https images,
the overrides' allowlist); combinations no vendor can honour are
``shared.message_options.conflicts``; what depends on the targeted platforms
and the app (a silent push to a browser, critical alerts) is checked at accept
(``shared.services.sends``).
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from shared.message_options import (
    INTERRUPTION_LEVELS,
    MAX_ACTIONS,
    OPTION_NAMES,
    VENDOR_OVERRIDES,
    Action,
    Options,
    conflicts,
    https_url,
    override_problems,
)

_NO_CONTROL = validate.Regexp(r"^[^\x00-\x1f\x7f]*$", error="Must not contain control characters.")
ACTION_ID = validate.Regexp(r"^[A-Za-z0-9_.\-]+$", error="Letters, digits, '_', '.' and '-' only.")


def _https(value: Any) -> None:
    problem = https_url(value)
    if problem:
        raise ValidationError(problem[0].upper() + problem[1:] + ".")


def _action_url(value: str) -> None:
    if value.startswith("/") and not value.startswith("//"):
        validate.Length(max=2048)(value)
        _NO_CONTROL(value)
        return
    _https(value)


class ActionSchema(Schema):
    id = fields.String(required=True, validate=[validate.Length(min=1, max=64), ACTION_ID],
                       metadata={"description": "Reported as the clicked action; Web Push `action`."})
    title = fields.String(required=True, validate=[validate.Length(min=1, max=64), _NO_CONTROL],
                          metadata={"description": "The button's label."})
    url = fields.String(load_default=None, validate=_action_url, metadata={
        "description": "Opened when this button is clicked: an https URL or a path on the site (`/...`); "
                       "absent: the notification's url."})


def _override(vendor: str, description: str) -> fields.Dict:
    def check(value: dict) -> None:
        problems = override_problems(vendor, value)
        if problems:
            raise ValidationError(problems)
    return fields.Dict(load_default=dict, validate=check, metadata={"description": description})


def option_fields(camel_case: bool = False, only: tuple[str, ...] | None = None) -> dict[str, fields.Field]:
    """The option fields (every one unless ``only``); ``camel_case`` names them as /v1/push/send's contract does."""
    made: dict[str, fields.Field] = {
        "silent": fields.Boolean(load_default=False, metadata={
            "description": "Data only, nothing shown: APNs background push (`content-available: 1`, "
                           "`apns-push-type: background`, `apns-priority: 5`), FCM data message (no `notification`). "
                           "Browsers show every push: 400 when Web Push is the only target; with mixed targets web "
                           "devices end `rejected` (not pushed). Title and body are kept in pushq's records only."}),
        "interruption_level": fields.String(load_default=None, validate=validate.OneOf(INTERRUPTION_LEVELS), metadata={
            "description": "APNs `aps.interruption-level`; FCM `android.notification.notification_priority` "
                           "(LOW/DEFAULT/HIGH/MAX); Web Push `Urgency` (low/normal/high/high). `critical` needs the "
                           "app's critical-alerts setting when iOS is a target."}),
        "relevance_score": fields.Float(load_default=None, allow_nan=False, validate=validate.Range(min=0, max=1),
                                        metadata={"description": "APNs `aps.relevance-score` (0-1); others: unused."}),
        "image": fields.String(load_default=None, validate=_https, metadata={
            "description": "https URL: FCM `notification.image`, Web Push `image` (showNotification), APNs top-level "
                           "`image` with `aps.mutable-content: 1` for the app's notification service extension."}),
        "group": fields.String(load_default=None, validate=[validate.Length(min=1, max=64), _NO_CONTROL], metadata={
            "description": "APNs `aps.thread-id`, Web Push `tag`, FCM `android.notification.tag`."}),
        "renotify": fields.Boolean(load_default=False, metadata={
            "description": "Web Push `renotify`: alert again when replacing a notification of the same group "
                           "(needs `group`)."}),
        "category": fields.String(load_default=None, validate=[validate.Length(min=1, max=64), _NO_CONTROL], metadata={
            "description": "The app's set of buttons: APNs `aps.category`, FCM `android.notification.click_action`."}),
        "actions": fields.List(fields.Nested(ActionSchema), load_default=list,
                               validate=validate.Length(max=MAX_ACTIONS), metadata={
            "description": f"Up to {MAX_ACTIONS} buttons shown by browsers (Web Push `actions`); pushq-sw.js opens "
                           "the clicked one's url. iOS and Android show the buttons of `category` instead."}),
        "title_loc_key": _loc_key("APNs `aps.alert.title-loc-key`, FCM `android.notification.title_loc_key`."),
        "title_loc_args": _loc_args("APNs `title-loc-args`, FCM `title_loc_args`."),
        "body_loc_key": _loc_key("APNs `aps.alert.loc-key`, FCM `android.notification.body_loc_key`."),
        "body_loc_args": _loc_args("APNs `loc-args`, FCM `body_loc_args`."),
        "apns": _override("apns", "Merged into the APNs payload; allowed: `aps.alert.subtitle`, "
                                  "`aps.alert.subtitle-loc-key`, `aps.alert.subtitle-loc-args`, `aps.alert.launch-image`, "
                                  "`aps.target-content-id`, `aps.filter-criteria`."),
        "fcm": _override("fcm", "Merged into the FCM v1 message; allowed: `android.notification.` `channel_id`, "
                                "`icon`, `color`, `ticker`, `sticky`, `local_only`, `visibility`, `default_sound`, "
                                "`default_vibrate_timings`, `default_light_settings`; `android.direct_boot_ok`, "
                                "`android.restricted_package_name`, `fcm_options.analytics_label`."),
        "webpush": _override("webpush", "Merged into showNotification's options; allowed: `icon`, `badge` (https "
                                        "URLs), `dir`, `lang`, `requireInteraction`, `silent`, `vibrate`, `timestamp`."),
    }
    chosen = {name: made[name] for name in (only or OPTION_NAMES)}
    if camel_case:
        for name, field in chosen.items():
            field.data_key = _camel(name)
    return chosen


def _loc_key(description: str) -> fields.String:
    return fields.String(load_default=None, validate=[validate.Length(min=1, max=128), _NO_CONTROL],
                         metadata={"description": description + " Browsers show title and body as given."})


def _loc_args(description: str) -> fields.List:
    return fields.List(fields.String(validate=[validate.Length(max=256), _NO_CONTROL]), load_default=list,
                       validate=validate.Length(max=10), metadata={"description": description})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class WithOptions(Schema):
    """A send schema whose option fields are gathered into ``options`` (an ``Options``) once loaded."""

    @validates_schema
    def _combinations(self, data: dict[str, Any], **_kwargs: object) -> None:
        found = conflicts(_options_of(data), badge=data.get("badge"), sound=data.get("sound"))
        if found:
            raise ValidationError({_wire_name(self, name): messages for name, messages in found.items()})

    @post_load
    def _gather(self, data: dict[str, Any], **_kwargs: object) -> dict[str, Any]:
        options = _options_of(data)
        for name in OPTION_NAMES:
            data.pop(name, None)
        data["options"] = options
        return data


def _wire_name(schema: Schema, name: str) -> str:
    field = schema.fields.get(name)
    return (field.data_key if field is not None else None) or name


def _options_of(data: dict[str, Any]) -> Options:
    values = {name: data[name] for name in OPTION_NAMES if name in data}
    if "actions" in values:
        values["actions"] = tuple(Action(**action) for action in values["actions"])
    for name in ("title_loc_args", "body_loc_args"):
        if name in values:
            values[name] = tuple(values[name])
    for vendor in VENDOR_OVERRIDES:
        if values.get(vendor) is None:
            values.pop(vendor, None)
    return Options(**values)
