"""A send's presentation options (silent, interruption level, image, grouping, actions, localisation keys,
per-vendor overrides), as one frozen value inside :class:`shared.message.Message`.

Stored as the notification's ``options`` JSON column (only what differs from the
defaults; NULL when nothing does) and rendered by each vendor's builder in
:mod:`shared.vendor_payloads`. The overrides are the vendor's own keys, limited to
:data:`OVERRIDE_ALLOWLIST`: what pushq controls (the target token, topic, TTL,
collapse, priority, the alert's title and body, the data) is not in it, and none of
them becomes an HTTP header, so an override cannot inject one.

What each option becomes for each vendor: docs/api.md "Message options".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

INTERRUPTION_LEVELS = ("passive", "active", "time-sensitive", "critical")
MAX_ACTIONS = 2  # Chrome shows two (Notification.maxActions); more would be dropped without a word
VENDOR_OVERRIDES = ("apns", "fcm", "webpush")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Action:
    """A button: ``id`` is what the click reports, ``url`` what it opens (else the notification's url)."""

    id: str
    title: str
    url: str | None = None

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, **({"url": self.url} if self.url else {})}


@dataclass(frozen=True)
class Options:
    """Presentation options of one message; every default means "as before these options existed"."""

    silent: bool = False  # data only, shows nothing: APNs background push, FCM data message; never Web Push
    interruption_level: str | None = None  # one of INTERRUPTION_LEVELS
    relevance_score: float | None = None  # 0..1, APNs only
    image: str | None = None  # https URL
    group: str | None = None  # APNs thread-id, Web Push tag, FCM android tag
    renotify: bool = False  # Web Push: alert again when replacing a notification of the same group
    category: str | None = None  # APNs category, FCM click_action: the app's set of buttons
    actions: tuple[Action, ...] = ()  # Web Push buttons, each opening its own url
    title_loc_key: str | None = None
    title_loc_args: tuple[str, ...] = ()
    body_loc_key: str | None = None
    body_loc_args: tuple[str, ...] = ()
    apns: Mapping[str, Any] = field(default_factory=dict)  # merged into the APNs payload (allowlisted keys)
    fcm: Mapping[str, Any] = field(default_factory=dict)  # merged into the FCM v1 message (allowlisted keys)
    webpush: Mapping[str, Any] = field(default_factory=dict)  # merged into showNotification's options

    @property
    def localized(self) -> bool:
        return bool(self.title_loc_key or self.body_loc_key)

    def as_json(self) -> dict[str, Any] | None:
        """The stored form: only the options that differ from the defaults; None when none does."""
        stored: dict[str, Any] = {}
        for option in fields(self):
            value = getattr(self, option.name)
            if value in (None, False, (), {}):
                continue
            if option.name == "actions":
                value = [action.as_json() for action in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            stored[option.name] = value
        return stored or None

    @classmethod
    def from_json(cls, stored: Mapping[str, Any] | None) -> Options:
        """The options a stored (or parsed) document holds; unknown keys are an error, not ignored."""
        if not stored:
            return NO_OPTIONS
        values = dict(stored)
        if "actions" in values:
            values["actions"] = tuple(Action(**action) for action in values["actions"])
        for name in ("title_loc_args", "body_loc_args"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


NO_OPTIONS = Options()
OPTION_NAMES = tuple(option.name for option in fields(Options))


# -- the overrides' allowlist ----------------------------------------------------------------------
# Each allowed key names its check; a nested dict is an object with its own allowed keys.

Check = Callable[[Any], str | None]


def _text(max_chars: int = 256) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return "must be a non-empty string"
        if len(value) > max_chars:
            return f"must be at most {max_chars} characters"
        if _CONTROL.search(value):
            return "must not contain control characters (CR, LF, NUL, ...)"
        return None
    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _texts(max_items: int = 10) -> Check:
    item = _text()

    def check(value: Any) -> str | None:
        if not isinstance(value, list) or len(value) > max_items:
            return f"must be a list of at most {max_items} strings"
        return next((problem for problem in map(item, value) if problem), None)
    return check


def _one_of(*allowed: str) -> Check:
    return lambda value: None if value in allowed else f"must be one of {', '.join(allowed)}"


def _pattern(regex: str, description: str) -> Check:
    compiled = re.compile(regex)
    return lambda value: None if isinstance(value, str) and compiled.fullmatch(value) else f"must be {description}"


def _integers(max_items: int, low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or len(value) > max_items or not all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value):
            return f"must be a list of at most {max_items} integers in {low}..{high}"
        return None
    return check


def https_url(value: Any) -> str | None:
    """Why ``value`` is not an absolute https URL a device may fetch (None: it is one)."""
    if not isinstance(value, str) or len(value) > 2048 or _CONTROL.search(value) or " " in value:
        return "must be an https URL of at most 2048 characters"
    if not re.fullmatch(r"https://[^/?#@\s]+(?:[/?#].*)?", value):
        return "must be an https URL (https://host/...)"
    return None


OVERRIDE_ALLOWLIST: dict[str, dict[str, Any]] = {
    "apns": {
        "aps": {
            "alert": {
                "subtitle": _text(), "subtitle-loc-key": _text(), "subtitle-loc-args": _texts(),
                "launch-image": _text(),
            },
            "target-content-id": _text(), "filter-criteria": _text(),
        },
    },
    "fcm": {
        "android": {
            "notification": {
                "channel_id": _text(), "icon": _text(), "color": _pattern(r"#[0-9a-fA-F]{6}", "a #rrggbb colour"),
                "ticker": _text(), "sticky": _boolean, "local_only": _boolean,
                "visibility": _one_of("PRIVATE", "PUBLIC", "SECRET"),
                "default_sound": _boolean, "default_vibrate_timings": _boolean, "default_light_settings": _boolean,
            },
            "direct_boot_ok": _boolean,
            "restricted_package_name": _pattern(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+",
                                                "an Android package name"),
        },
        "fcm_options": {"analytics_label": _pattern(r"[a-zA-Z0-9-_.~%]{1,50}", "1-50 of a-z A-Z 0-9 - _ . ~ %")},
    },
    "webpush": {
        "icon": https_url, "badge": https_url, "dir": _one_of("auto", "ltr", "rtl"),
        "lang": _pattern(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*", "a BCP 47 language tag"),
        "requireInteraction": _boolean, "silent": _boolean, "vibrate": _integers(10, 0, 10_000),
        "timestamp": lambda v: None if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 53
        else "must be a time in milliseconds since 1970",
    },
}


def override_problems(vendor: str, value: Any) -> list[str]:
    """Why the ``vendor`` override ``value`` is refused, one text per problem (empty: it is fine)."""
    return _problems(vendor, value, OVERRIDE_ALLOWLIST[vendor])


def _problems(path: str, value: Any, allowed: dict[str, Any]) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path} must be an object"]
    problems = []
    for key, item in value.items():
        rule = allowed.get(key)
        where = f"{path}.{key}"
        if rule is None:
            problems.append(f"{where} is not allowed (allowed in {path}: {', '.join(sorted(allowed))})")
        elif isinstance(rule, dict):
            problems.extend(_problems(where, item, rule))
        elif (problem := rule(item)) is not None:
            problems.append(f"{where} {problem}")
    return problems


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, objects key by key (the override's keys are allowlisted)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = merge({}, value)
        else:
            merged[key] = value
    return merged


def conflicts(options: Options, *, badge: int | None = None, sound: str | None = None) -> dict[str, list[str]]:
    """Option combinations no vendor can honour, per field (empty: none); vendor-independent rules only.

    A silent push shows nothing, so nothing visible may come with it; ``renotify``
    needs a ``group`` (a browser throws without a tag); localisation arguments need
    their key.
    """
    found: dict[str, list[str]] = {}
    if options.silent:
        visible = {
            "badge": badge is not None, "sound": sound is not None,
            "interruption_level": options.interruption_level is not None,
            "relevance_score": options.relevance_score is not None, "image": bool(options.image),
            "group": bool(options.group), "renotify": options.renotify, "category": bool(options.category),
            "actions": bool(options.actions), "title_loc_key": bool(options.title_loc_key),
            "body_loc_key": bool(options.body_loc_key),
            "webpush": bool(options.webpush),
            "apns": "alert" in options.apns.get("aps", {}),
            "fcm": "notification" in options.fcm.get("android", {}),
        }
        for name, present in visible.items():
            if present:
                found[name] = ["A silent push shows nothing: leave this out (or send a visible notification)."]
    if options.renotify and not options.group:
        found["renotify"] = ["renotify needs a group (a browser only re-alerts when replacing a tagged notification)."]
    for key, args in (("title_loc_key", "title_loc_args"), ("body_loc_key", "body_loc_args")):
        if getattr(options, args) and not getattr(options, key):
            found[args] = [f"{args} needs {key}."]
    return found
