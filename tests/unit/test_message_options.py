"""Each vendor's builder renders the message options as documented (docs/api.md "Message options")."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.message import Message
from shared.message_options import NO_OPTIONS, Action, Options, conflicts, merge, override_problems
from shared.option_rules import option_refusals
from shared.vendor_payloads import (
    ANDROID,
    IOS,
    WEB,
    NotDeliverable,
    apns_message,
    apns_priority,
    apns_push_type,
    fcm_message,
    refusals,
    webpush_document,
    webpush_urgency,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
RICH = Options(
    interruption_level="time-sensitive", relevance_score=0.75, image="https://cdn.example.com/a.png", group="shifts",
    renotify=True, category="SHIFT", actions=(Action("accept", "Accept", "/accept"), Action("later", "Later")),
    title_loc_key="T", title_loc_args=("9:00",), body_loc_key="B", body_loc_args=("Ann",),
    apns={"aps": {"alert": {"subtitle": "Gym 2"}, "target-content-id": "shift-7"}},
    fcm={"android": {"notification": {"channel_id": "shifts"}, "direct_boot_ok": True}},
    webpush={"icon": "https://cdn.example.com/i.png", "requireInteraction": True},
)


def message(options: Options = NO_OPTIONS, **fields) -> Message:
    values = {"title": "Shift", "body": "At 9", "data": {"n": 1}, **fields}
    return Message(expires_at=NOW + timedelta(seconds=60), ttl=60, options=options, **values)


def test_apns_renders_every_visible_option():
    assert apns_message(message(RICH, badge=2, sound="chime")) == {
        "aps": {"alert": {"title": "Shift", "body": "At 9", "title-loc-key": "T", "title-loc-args": ["9:00"],
                          "loc-key": "B", "loc-args": ["Ann"], "subtitle": "Gym 2"},
                "badge": 2, "sound": "chime", "interruption-level": "time-sensitive", "relevance-score": 0.75,
                "thread-id": "shifts", "category": "SHIFT", "mutable-content": 1, "target-content-id": "shift-7"},
        "data": {"n": 1}, "image": "https://cdn.example.com/a.png",
    }
    assert (apns_push_type(message(RICH)), apns_priority(message(RICH, priority="high"))) == ("alert", 10)


def test_apns_silent_is_a_background_push_and_critical_plays_through_mute():
    silent = message(Options(silent=True), priority="high")
    assert apns_message(silent) == {"aps": {"content-available": 1}, "data": {"n": 1}}
    assert (apns_push_type(silent), apns_priority(silent)) == ("background", 5)
    critical = apns_message(message(Options(interruption_level="critical")))
    assert critical["aps"]["sound"] == {"critical": 1, "name": "default", "volume": 1.0}
    assert critical["aps"]["interruption-level"] == "critical"


def test_fcm_renders_every_visible_option():
    rendered = fcm_message(message(RICH, badge=2), NOW)
    assert rendered == {
        "notification": {"title": "Shift", "body": "At 9", "image": "https://cdn.example.com/a.png"},
        "android": {"ttl": "60s", "priority": "NORMAL", "direct_boot_ok": True,
                    "notification": {"notification_count": 2, "tag": "shifts", "click_action": "SHIFT",
                                     "notification_priority": "PRIORITY_HIGH", "title_loc_key": "T",
                                     "title_loc_args": ["9:00"], "body_loc_key": "B", "body_loc_args": ["Ann"],
                                     "channel_id": "shifts"}},
        "data": {"n": "1"},
    }
    assert fcm_message(message(Options(silent=True), priority="high"), NOW) == {
        "android": {"ttl": "60s", "priority": "HIGH"}, "data": {"n": "1"}}


def test_webpush_renders_what_the_service_worker_shows():
    assert webpush_document(message(RICH, url="/shifts/7")) == {
        "title": "Shift", "body": "At 9", "data": {"n": 1}, "url": "/shifts/7",
        "image": "https://cdn.example.com/a.png", "tag": "shifts", "renotify": True,
        "actions": [{"action": "accept", "title": "Accept", "url": "/accept"}, {"action": "later", "title": "Later"}],
        "icon": "https://cdn.example.com/i.png", "requireInteraction": True,
    }
    assert [webpush_urgency(message(Options(interruption_level=level))) for level in
            ("passive", "active", "time-sensitive", "critical")] == ["low", "normal", "high", "high"]
    assert webpush_urgency(message(priority="high")) == "high"
    with pytest.raises(NotDeliverable):
        webpush_document(message(Options(silent=True)))


def test_no_options_render_as_before():
    plain = message(badge=1, sound="s", collapse_key="k", url="/x")
    assert apns_message(plain) == {"aps": {"alert": {"title": "Shift", "body": "At 9"}, "badge": 1, "sound": "s"},
                                   "data": {"n": 1}, "url": "/x"}
    assert webpush_document(plain) == {"title": "Shift", "body": "At 9", "data": {"n": 1}, "url": "/x"}


def test_options_survive_storage():
    assert Options.from_json(json.loads(json.dumps(RICH.as_json()))) == RICH
    assert Options().as_json() is None and Options.from_json(None) == Options()
    stored = message(RICH).as_row()
    assert Message.from_row(stored) == message(RICH)


def test_accept_rules_per_target():
    silent = message(Options(silent=True))
    assert [r.platform for r in option_refusals(silent, (WEB,), critical_allowed=False)] == [WEB]
    assert option_refusals(silent, (WEB, IOS, ANDROID), critical_allowed=False) == []
    assert refusals(silent, (WEB, IOS, ANDROID), NOW) == []  # the browser is skipped, not measured
    critical = message(Options(interruption_level="critical"))
    assert [r.platform for r in option_refusals(critical, (WEB, IOS, ANDROID), critical_allowed=False)] == [IOS]
    assert option_refusals(critical, (WEB, IOS, ANDROID), critical_allowed=True) == []
    assert option_refusals(critical, (WEB,), critical_allowed=False) == []
    only_apns = message(Options(apns={"aps": {"target-content-id": "x"}}))
    assert [r.platform for r in option_refusals(only_apns, (WEB,), critical_allowed=False)] == [IOS]


def test_the_allowlist_and_combinations():
    assert override_problems("fcm", {"android": {"notification": {"channel_id": "c"}}}) == []
    assert override_problems("fcm", {"android": {"priority": "HIGH"}}) == [
        "fcm.android.priority is not allowed (allowed in fcm.android: direct_boot_ok, notification, "
        "restricted_package_name)"]
    assert override_problems("webpush", []) == ["webpush must be an object"]
    assert override_problems("webpush", {"badge": "http://x.example"}) == [
        "webpush.badge must be an https URL (https://host/...)"]
    assert set(conflicts(Options(silent=True, group="g", renotify=True), sound="x")) == {"group", "renotify", "sound"}
    assert merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}
