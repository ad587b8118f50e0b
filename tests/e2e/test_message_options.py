"""Message options end to end: through the API and the real worker, the exact request each vendor's stand-in receives.

One user has a browser, an iPhone and an Android phone; each test sends once and
reads what the Web Push service decrypted (and its ``Urgency``), the APNs headers
and payload, and the FCM v1 message. The stand-ins refuse what the vendors refuse
(a background push with an alert or at priority 10, non-string FCM data, unknown
FCM fields), so a wrong rendering fails here. What pushq-sw.js then shows is
tests/e2e/test_client_kit.py.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import pytest

from shared.db import session_scope
from shared.services.apps import set_apns_critical_alerts
from shared.vendor_payloads import SILENT_WEB
from tests.support.flows import final_notification, register_web


@pytest.fixture
def phones(api, tenant, push_service, apns_service, fcm_service) -> dict[str, Any]:
    """An enrolled user with one device per platform: the handles each stand-in knows them by."""
    tenant.configure_apns(apns_service)
    tenant.configure_fcm(fcm_service)
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    devices = {"web": register_web(api, tenant, user, subscription)}
    apns_token, fcm_token = secrets.token_hex(32), secrets.token_urlsafe(48)
    for platform, token in (("ios", apns_token), ("android", fcm_token)):
        response = api.post("/push/devices/register", headers=tenant.user_headers(user),
                            json={"app_id": str(tenant.id), "platform": platform, "push_token": token})
        assert response.status_code == 201, response.text
        devices[platform] = response.json()["device_id"]
    return {"user": user, "subscription": subscription, "apns": apns_token, "fcm": fcm_token, "devices": devices}


def send(api, tenant, phones, **fields) -> dict:
    response = api.post("/push/send", headers=tenant.service_headers(), json={
        "user_id": str(phones["user"]), "title": "Shift", "body": "Starts at 9", **fields})
    assert response.status_code == 200, response.text
    return final_notification(api, tenant, response.json()["notification_id"])


def outcomes(notification: dict, phones) -> dict[str, tuple[str, str | None]]:
    platform_of = {device: platform for platform, device in phones["devices"].items()}
    return {platform_of[d["device_id"]]: (d["status"], d["last_error"]) for d in notification["deliveries"]}


def fcm_without_ttl(message: dict) -> dict:
    """The FCM message as received, android.ttl checked and left out (it is the TTL left at the push)."""
    android = dict(message["android"])
    assert android.pop("ttl").endswith("s")
    return {**message, "android": android}


def test_visible_options_reach_each_vendor_as_documented(api, worker, tenant, phones, push_service, apns_service,
                                                         fcm_service):
    notification = send(
        api, tenant, phones, priority="high", badge=3, sound="chime", data={"shift": 7, "url": "/shifts/7"},
        interruption_level="time-sensitive", relevance_score=0.5, image="https://cdn.example.com/shift.png",
        group="shifts", renotify=True, category="SHIFT", title_loc_key="SHIFT_TITLE", title_loc_args=["9:00"],
        body_loc_key="SHIFT_BODY", body_loc_args=["Gym 2"],
        actions=[{"id": "accept", "title": "Accept", "url": "/shifts/7/accept"}, {"id": "later", "title": "Later"}],
        apns={"aps": {"alert": {"subtitle": "Gym 2"}, "target-content-id": "shift-7"}},
        fcm={"android": {"notification": {"channel_id": "shifts", "visibility": "PRIVATE"}}},
        webpush={"icon": "https://cdn.example.com/icon.png", "requireInteraction": True},
    )
    assert outcomes(notification, phones) == dict.fromkeys(("web", "ios", "android"), ("sent", None))

    (apns,) = apns_service.messages(phones["apns"])
    assert (apns.push_type, apns.priority) == ("alert", 10)
    assert apns.payload == {
        "aps": {"alert": {"title": "Shift", "body": "Starts at 9", "title-loc-key": "SHIFT_TITLE",
                          "title-loc-args": ["9:00"], "loc-key": "SHIFT_BODY", "loc-args": ["Gym 2"],
                          "subtitle": "Gym 2"},
                "badge": 3, "sound": "chime", "interruption-level": "time-sensitive", "relevance-score": 0.5,
                "thread-id": "shifts", "category": "SHIFT", "mutable-content": 1, "target-content-id": "shift-7"},
        "data": {"shift": 7, "url": "/shifts/7"}, "image": "https://cdn.example.com/shift.png",
    }

    (fcm,) = fcm_service.messages(phones["fcm"])
    assert fcm_without_ttl(fcm.message) == {
        "token": phones["fcm"],
        "notification": {"title": "Shift", "body": "Starts at 9", "image": "https://cdn.example.com/shift.png"},
        "android": {"priority": "HIGH", "notification": {
            "sound": "chime", "notification_count": 3, "tag": "shifts", "click_action": "SHIFT",
            "notification_priority": "PRIORITY_HIGH", "title_loc_key": "SHIFT_TITLE", "title_loc_args": ["9:00"],
            "body_loc_key": "SHIFT_BODY", "body_loc_args": ["Gym 2"], "channel_id": "shifts", "visibility": "PRIVATE"}},
        "data": {"shift": "7", "url": "/shifts/7"},
    }

    (web,) = push_service.messages(phones["subscription"])
    assert web.urgency == "high"
    document = web.json()
    assert document.pop("receipt")  # pushq-sw.js's receipt token (the receipts feature)
    assert document == {
        "title": "Shift", "body": "Starts at 9", "data": {"shift": 7, "url": "/shifts/7"},
        "image": "https://cdn.example.com/shift.png", "tag": "shifts", "renotify": True,
        "actions": [{"action": "accept", "title": "Accept", "url": "/shifts/7/accept"},
                    {"action": "later", "title": "Later"}],
        "icon": "https://cdn.example.com/icon.png", "requireInteraction": True,
    }


def test_a_silent_push_is_a_background_push_and_a_data_message_and_skips_browsers(
        api, worker, tenant, phones, push_service, apns_service, fcm_service):
    notification = send(api, tenant, phones, silent=True, priority="high", data={"sync": "labs"}, collapse_key="labs")
    assert outcomes(notification, phones) == {"ios": ("sent", None), "android": ("sent", None),
                                              "web": ("rejected", SILENT_WEB)}
    (apns,) = apns_service.messages(phones["apns"])
    assert (apns.push_type, apns.priority, apns.collapse_id) == ("background", 5, "labs")
    assert apns.payload == {"aps": {"content-available": 1}, "data": {"sync": "labs"}}
    (fcm,) = fcm_service.messages(phones["fcm"])
    assert fcm_without_ttl(fcm.message) == {"token": phones["fcm"], "android": {"priority": "HIGH", "collapse_key": "labs"},
                                            "data": {"sync": "labs"}}
    assert push_service.messages(phones["subscription"]) == []
    assert push_service.attempts(phones["subscription"]) == 0


def test_interruption_levels_critical_with_the_entitlement_and_passive(api, worker, tenant, phones, push_service,
                                                                       apns_service, fcm_service):
    with session_scope(tenant.session_factory) as session:
        set_apns_critical_alerts(session, tenant.id, True)
    send(api, tenant, phones, interruption_level="critical", sound="alarm")
    send(api, tenant, phones, interruption_level="passive", priority="high")
    critical, passive = apns_service.messages(phones["apns"])
    assert critical.payload["aps"] == {"alert": {"title": "Shift", "body": "Starts at 9"}, "interruption-level": "critical",
                                       "sound": {"critical": 1, "name": "alarm", "volume": 1.0}}
    assert passive.payload["aps"]["interruption-level"] == "passive"
    assert [m.message["android"]["notification"]["notification_priority"] for m in fcm_service.messages(phones["fcm"])] \
        == ["PRIORITY_MAX", "PRIORITY_LOW"]
    # Web Push: the level decides Urgency, over priority.
    assert [m.urgency for m in push_service.messages(phones["subscription"])] == ["high", "low"]
