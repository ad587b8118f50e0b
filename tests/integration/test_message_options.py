"""Message options through the Flask API: accepted and stored on every send endpoint, bad combinations 400.

What each vendor then receives is tests/e2e/test_message_options.py (the stand-ins
record the exact requests).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from shared.db import session_scope
from shared.models import Broadcast, Notification
from shared.services.apps import set_apns_critical_alerts

RICH = {
    "interruption_level": "time-sensitive", "relevance_score": 0.75, "image": "https://cdn.example.com/a.png",
    "group": "shifts", "renotify": True, "category": "SHIFT", "title_loc_key": "SHIFT_TITLE",
    "title_loc_args": ["9:00"], "body_loc_key": "SHIFT_BODY", "body_loc_args": ["Ann", "Gym 2"],
    "actions": [{"id": "accept", "title": "Accept", "url": "/shifts/7/accept"},
                {"id": "decline", "title": "Decline", "url": "https://app.example.com/shifts/7/decline"}],
    "apns": {"aps": {"alert": {"subtitle": "Gym 2"}, "target-content-id": "shift-7"}},
    "fcm": {"android": {"notification": {"channel_id": "shifts", "color": "#336699"}, "direct_boot_ok": True}},
    "webpush": {"icon": "https://cdn.example.com/icon.png", "requireInteraction": True},
}
STORED = {**RICH, "actions": RICH["actions"]}


def enrolled(tenant) -> uuid.UUID:
    user = uuid.uuid4()
    tenant.enroll(user)
    return user


def send(client, tenant, path: str = "/push/send", **body):
    return client.post(path, json=body, headers=tenant.service_headers())


def single(user, **options) -> dict:
    return {"user_id": str(user), "title": "Shift", "body": "Starts at 9", **options}


def stored_options(client, tenant, notification_id: str) -> dict:
    found = client.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers())
    assert found.status_code == 200, found.get_data(as_text=True)
    return found.json["options"]


def refused(response, error: str, *platforms: str) -> str:
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.json
    assert body["error"] == error, body
    if platforms:
        assert body["platforms"] == list(platforms), body
    return body.get("reason") or str(body.get("fields"))


def test_every_send_endpoint_takes_and_stores_the_options(client, tenant):
    user, other = enrolled(tenant), enrolled(tenant)
    one = send(client, tenant, **single(user, **RICH))
    assert one.status_code == 200, one.get_data(as_text=True)
    assert stored_options(client, tenant, one.json["notification_id"]) == STORED

    bulk = send(client, tenant, "/push/send/bulk", user_ids=[str(user), str(other)], title="t", body="b", **RICH)
    assert bulk.status_code == 200, bulk.get_data(as_text=True)
    assert [stored_options(client, tenant, i) for i in bulk.json["notification_ids"]] == [STORED, STORED]

    batch = send(client, tenant, "/push/send/batch", notifications=[single(user, silent=True), single(other, group="g")])
    assert batch.status_code == 200, batch.get_data(as_text=True)
    assert [stored_options(client, tenant, i) for i in batch.json["notification_ids"]] == [{"silent": True},
                                                                                             {"group": "g"}]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = send(client, tenant, **single(user, send_at=later, image="https://cdn.example.com/b.png"))
    assert scheduled.status_code == 200, scheduled.get_data(as_text=True)
    assert stored_options(client, tenant, scheduled.json["notification_id"]) == {"image": "https://cdn.example.com/b.png"}

    plain = send(client, tenant, **single(user))
    assert stored_options(client, tenant, plain.json["notification_id"]) == {}


def test_silent_push_to_a_browser_only_target_is_refused(client, tenant):
    patient, person = uuid.uuid4(), uuid.uuid4()
    headers = tenant.service_headers()
    assert client.put(f"/v1/patients/{patient}/identity", json={"person_id": str(person)}, headers=headers).status_code in (200, 201)
    body = {"patientId": str(patient), "title": "Lab result", "body": "Sync now"}
    reason = refused(client.post("/v1/push/send", json={**body, "silent": True}, headers=headers),
                     "options_not_deliverable", "web")
    assert "browsers show a notification for every push" in reason
    # The web options of the contract's endpoint are camelCase extensions, as sendAt is.
    fine = client.post("/v1/push/send", json={**body, "interruptionLevel": "passive", "group": "labs",
                                              "image": "https://cdn.example.com/lab.png",
                                              "actions": [{"id": "open", "title": "Open", "url": "/labs"}]},
                       headers=headers)
    assert fine.status_code == 200, fine.get_data(as_text=True)
    assert stored_options(client, tenant, fine.json["notification_id"]) == {
        "interruption_level": "passive", "group": "labs", "image": "https://cdn.example.com/lab.png",
        "actions": [{"id": "open", "title": "Open", "url": "/labs"}]}
    # Options with no browser equivalent are not part of that endpoint.
    assert refused(client.post("/v1/push/send", json={**body, "apns": {}}, headers=headers), "validation_error")


def test_silent_push_to_every_platform_is_accepted(client, tenant):
    response = send(client, tenant, **single(enrolled(tenant), silent=True, data={"sync": "labs"}))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_critical_needs_the_apps_entitlement_setting(client, tenant):
    user = enrolled(tenant)
    reason = refused(send(client, tenant, **single(user, interruption_level="critical")), "options_not_deliverable", "ios")
    assert "critical-alerts entitlement" in reason and "set-critical-alerts" in reason
    with session_scope(tenant.session_factory) as session:
        set_apns_critical_alerts(session, tenant.id, True)
    assert send(client, tenant, **single(user, interruption_level="critical")).status_code == 200


def test_override_keys_outside_the_allowlist_are_refused(client, tenant):
    user = enrolled(tenant)
    for vendor, override, named in [
        ("apns", {"aps": {"sound": "x"}}, "apns.aps.sound is not allowed"),
        ("apns", {"aps": {"alert": {"title": "replaced"}}}, "apns.aps.alert.title is not allowed"),
        ("fcm", {"token": "another-device"}, "fcm.token is not allowed"),
        ("fcm", {"android": {"ttl": "0s"}}, "fcm.android.ttl is not allowed"),
        ("fcm", {"android": {"notification": {"color": "red"}}}, "must be a #rrggbb colour"),
        ("webpush", {"headers": {"Urgency": "high"}}, "webpush.headers is not allowed"),
        ("webpush", {"title": "replaced"}, "webpush.title is not allowed"),
        ("apns", {"aps": {"alert": {"subtitle": "a\r\napns-priority: 10"}}}, "must not contain control characters"),
    ]:
        fields = refused(send(client, tenant, **single(user, **{vendor: override})), "validation_error")
        assert named in fields, (vendor, override, fields)


def test_image_must_be_https(client, tenant):
    user = enrolled(tenant)
    for url in ("http://cdn.example.com/a.png", "javascript:alert(1)", "/relative.png", "https://"):
        fields = refused(send(client, tenant, **single(user, image=url)), "validation_error")
        assert "image" in fields and "https" in fields
    fields = refused(send(client, tenant, **single(user, actions=[{"id": "x", "title": "X", "url": "http://a.example"}])),
                     "validation_error")
    assert "actions" in fields


def test_combinations_no_vendor_can_honour(client, tenant):
    user = enrolled(tenant)
    for options, field in [
        ({"silent": True, "badge": 3}, "badge"), ({"silent": True, "image": "https://cdn.example.com/a.png"}, "image"),
        ({"silent": True, "interruption_level": "active"}, "interruption_level"),
        ({"silent": True, "apns": {"aps": {"alert": {"subtitle": "s"}}}}, "apns"),
        ({"renotify": True}, "renotify"), ({"title_loc_args": ["a"]}, "title_loc_args"),
        ({"actions": [{"id": f"a{i}", "title": "A"} for i in range(3)]}, "actions"),
        ({"relevance_score": 1.5}, "relevance_score"), ({"interruption_level": "urgent"}, "interruption_level"),
    ]:
        response = send(client, tenant, **single(user, **options))
        assert response.status_code == 400 and response.json["error"] == "validation_error", (options, response.json)
        assert field in response.json["fields"], (options, response.json)


def test_a_payload_that_fits_one_vendor_but_not_another(client, tenant):
    user = enrolled(tenant)
    # The APNs override's text travels to APNs only: with this data it fits Web Push and FCM, not APNs.
    apns = {"aps": {"alert": {"subtitle": "s" * 256, "subtitle-loc-key": "K" * 256,
                              "subtitle-loc-args": ["a" * 256] * 10}}}
    data = {"note": "n" * 1200}
    reason = refused(send(client, tenant, **single(user, data=data, apns=apns)), "data_too_large", "ios")
    assert reason.startswith("ios: APNs carries at most 4096 bytes")
    assert send(client, tenant, **single(user, data=data)).status_code == 200


def test_the_openapi_document_describes_the_options(client):
    spec = client.get("/openapi.json").json
    schemas = spec["components"]["schemas"]
    send_schema = next(s for name, s in schemas.items() if name.startswith("SendRequest"))["properties"]
    levels = [level for level in send_schema["interruption_level"]["enum"] if level is not None]  # null: not given
    assert levels == ["passive", "active", "time-sensitive", "critical"]
    assert send_schema["actions"]["maxItems"] == 2
    assert send_schema["relevance_score"]["minimum"] == 0 and send_schema["relevance_score"]["maximum"] == 1
    for name in ("silent", "image", "group", "renotify", "category", "title_loc_key", "body_loc_args", "apns", "fcm",
                 "webpush"):
        assert send_schema[name]["description"], name


def test_broadcasts_take_the_same_options(client, tenant, session_factory):
    enrolled(tenant)
    base = {"title": "Gym closes early", "body": "Today at 18:00"}
    silent_web = send(client, tenant, "/push/broadcasts", **base, silent=True,
                      audience={"everyone": True, "platforms": ["web"]})
    assert "browsers show a notification for every push" in refused(silent_web, "options_not_deliverable", "web")
    assert "critical-alerts" in refused(send(client, tenant, "/push/broadcasts", **base, interruption_level="critical",
                                             audience={"everyone": True}), "options_not_deliverable", "ios")
    assert refused(send(client, tenant, "/push/broadcasts", **base, fcm={"token": "x"}, audience={"everyone": True}),
                   "validation_error")
    accepted = send(client, tenant, "/push/broadcasts", **base, group="closures", image="https://cdn.example.com/c.png",
                    audience={"everyone": True})
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    with session_factory() as session:
        options = session.scalar(select(Notification.options).join(Broadcast, Broadcast.notification_id == Notification.id)
                                 .where(Broadcast.id == uuid.UUID(accepted.json["broadcast_id"])))
    assert options == {"group": "closures", "image": "https://cdn.example.com/c.png"}
