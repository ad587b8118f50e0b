"""The contract's error table and input validation, through the Flask test client.

Every error is JSON ``{"error": <code>, "message": <text>}`` with exactly the
documented code and message (README "error" table); validation errors add
``fields`` naming what was wrong.
"""

from __future__ import annotations

import json
import secrets
import uuid

import pytest
from sqlalchemy import func, select

from shared.models import Device, Notification
from shared.token_signing import mint_token

MAX_TTL = 28 * 24 * 3600


# -- helpers -------------------------------------------------------------------


def assert_error(response, status: int, error: str, message: str, *extra: str) -> dict:
    """The response is a JSON error with exactly this code and message (and only ``extra`` keys besides)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == error
    assert body["message"] == message
    assert set(body) == {"error", "message", *extra}
    return body


def assert_validation_error(response, *field_names: str) -> dict:
    """400 validation_error whose ``fields`` names (at least) each of ``field_names``."""
    body = assert_error(response, 400, "validation_error", "Invalid request", "fields")
    for name in field_names:
        assert name in body["fields"], body["fields"]
    return body["fields"]


def notification_count(session_factory) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(Notification))


def send_body(user_id, /, **overrides) -> dict:
    return {"user_id": str(user_id), "title": "Shift approved", "body": "Your request was approved.", **overrides}


def sized_data(size: int, char: str = "x") -> dict:
    """``{"k": char * n}`` whose compact UTF-8 JSON is exactly ``size`` bytes."""
    overhead = len(b'{"k":""}')
    width = len(char.encode("utf-8"))
    assert (size - overhead) % width == 0, "pick a size the character divides"
    data = {"k": char * ((size - overhead) // width)}
    assert len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")) == size
    return data


def register_ios(client, tenant, user_id) -> str:
    response = client.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": "ios", "push_token": secrets.token_hex(32)},
        headers=tenant.user_headers(user_id),
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["device_id"]


@pytest.fixture
def user(tenant) -> uuid.UUID:
    """A user enrolled in ``tenant``."""
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    return user_id


# -- 400 User not enrolled -----------------------------------------------------


def test_send_to_unenrolled_user_is_refused(client, tenant, session_factory):
    stranger = uuid.uuid4()
    response = client.post("/push/send", json=send_body(stranger), headers=tenant.service_headers())
    body = assert_error(response, 400, "user_not_enrolled", "User not enrolled", "user_ids")
    assert body["user_ids"] == [str(stranger)]
    assert notification_count(session_factory) == 0


def test_user_enrolled_only_in_another_app_is_not_enrolled_here(client, tenant, other_tenant, session_factory):
    """Enrollment is per app: another app's user is not a target for this one."""
    theirs = uuid.uuid4()
    other_tenant.enroll(theirs)
    response = client.post("/push/send", json=send_body(theirs), headers=tenant.service_headers())
    body = assert_error(response, 400, "user_not_enrolled", "User not enrolled", "user_ids")
    assert body["user_ids"] == [str(theirs)]
    assert notification_count(session_factory) == 0


def test_bulk_with_one_unenrolled_user_creates_nothing(client, tenant, session_factory):
    enrolled = [uuid.uuid4() for _ in range(3)]
    tenant.enroll(*enrolled)
    missing = uuid.uuid4()
    user_ids = [enrolled[0], enrolled[1], missing, enrolled[2]]
    response = client.post(
        "/push/send/bulk",
        json={"user_ids": [str(u) for u in user_ids], "title": "Gym closes early", "body": "Closing at 6pm."},
        headers=tenant.service_headers(),
    )
    body = assert_error(response, 400, "user_not_enrolled", "User not enrolled", "user_ids")
    assert body["user_ids"] == [str(missing)]
    assert notification_count(session_factory) == 0


def test_batch_with_one_unenrolled_user_creates_nothing(client, tenant, user, session_factory):
    missing = uuid.uuid4()
    response = client.post(
        "/push/send/batch",
        json={"notifications": [send_body(user), send_body(missing), send_body(user, title="again")]},
        headers=tenant.service_headers(),
    )
    body = assert_error(response, 400, "user_not_enrolled", "User not enrolled", "user_ids")
    assert body["user_ids"] == [str(missing)]
    assert notification_count(session_factory) == 0


# -- 400 Data payload too large ------------------------------------------------


def test_data_that_fits_a_push_payload_is_accepted(client, tenant, user, session_factory):
    response = client.post("/push/send", json=send_body(user, data=sized_data(3900)), headers=tenant.service_headers())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert notification_count(session_factory) == 1


def test_data_within_4kb_that_no_vendor_can_carry_is_refused_at_the_api(client, tenant, user, session_factory):
    """4096 bytes of data meet the contract's 4 KB but cannot fit Web Push's 3993-byte payload
    next to the title; title and data are never cut, so the API refuses it with the reason."""
    response = client.post("/push/send", json=send_body(user, data=sized_data(4096)), headers=tenant.service_headers())
    body = assert_error(response, 400, "data_too_large", "Data payload too large", "reason", "platforms")
    assert body["platforms"] == ["web", "ios", "android"]
    assert body["reason"].startswith("web: Web Push carries at most 3993 bytes and this message takes ")
    assert "; ios: APNs carries at most 4096 bytes" in body["reason"]
    assert "; android: FCM carries at most 4096 bytes" in body["reason"]
    assert notification_count(session_factory) == 0


def test_data_of_4097_bytes_is_refused(client, tenant, user, session_factory):
    response = client.post("/push/send", json=send_body(user, data=sized_data(4097)), headers=tenant.service_headers())
    assert response.status_code == 400
    assert response.get_json()["error"] == "data_too_large"
    assert response.get_json()["message"] == "Data payload too large"
    assert notification_count(session_factory) == 0


def test_data_size_counts_utf8_bytes_not_characters(client, tenant, user, session_factory):
    """2-byte characters: 2053 characters of JSON, 4098 bytes -> too large."""
    data = sized_data(4098, "é")
    assert len(json.dumps(data, separators=(",", ":"), ensure_ascii=False)) < 4096
    response = client.post("/push/send", json=send_body(user, data=data), headers=tenant.service_headers())
    assert response.status_code == 400
    assert response.get_json()["error"] == "data_too_large"
    assert response.get_json()["message"] == "Data payload too large"
    assert notification_count(session_factory) == 0


def test_data_size_is_not_inflated_by_json_escapes(client, tenant, user):
    """900 emoji are 3608 UTF-8 bytes, but 10808 bytes if counted as \\ud83d\\ude00 escapes."""
    data = sized_data(3608, "😀")
    response = client.post("/push/send", json=send_body(user, data=data), headers=tenant.service_headers())
    assert response.status_code == 200, response.get_data(as_text=True)


def test_bulk_with_too_large_data_creates_nothing(client, tenant, user, session_factory):
    response = client.post(
        "/push/send/bulk",
        json={"user_ids": [str(user)], "title": "t", "body": "b", "data": sized_data(4097)},
        headers=tenant.service_headers(),
    )
    assert response.status_code == 400
    assert (response.get_json()["error"], response.get_json()["message"]) == ("data_too_large", "Data payload too large")
    assert notification_count(session_factory) == 0


def test_batch_with_one_too_large_data_creates_nothing(client, tenant, user, session_factory):
    response = client.post(
        "/push/send/batch",
        json={"notifications": [send_body(user), send_body(user, data=sized_data(4097))]},
        headers=tenant.service_headers(),
    )
    assert response.status_code == 400
    assert (response.get_json()["error"], response.get_json()["message"]) == ("data_too_large", "Data payload too large")
    assert notification_count(session_factory) == 0


# -- 401 Invalid token ---------------------------------------------------------


def test_missing_authorization_header_is_401(client, user):
    response = client.post("/push/send", json=send_body(user))
    assert_error(response, 401, "invalid_token", "Invalid token")


@pytest.mark.parametrize("authorization", ["Bearer garbage", "Bearer ", "Bearer a.b.c", "Basic dXNlcjpwYXNz", "garbage"])
def test_garbage_authorization_is_401(client, user, authorization):
    response = client.post("/push/send", json=send_body(user), headers={"Authorization": authorization})
    assert_error(response, 401, "invalid_token", "Invalid token")


def test_token_signed_with_another_secret_is_401(client, tenant, user, settings):
    token = mint_token(
        settings, subject="svc", app_id=tenant.id, scopes=["push:send"], private_key="another-secret-" + "x" * 32
    )
    response = client.post("/push/send", json=send_body(user), headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401, "invalid_token", "Invalid token")


def test_token_with_tampered_signature_is_401(client, tenant, user):
    token = tenant.service_headers()["Authorization"]
    head, _, signature = token.rpartition(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    response = client.post("/push/send", json=send_body(user), headers={"Authorization": f"{head}.{flipped}"})
    assert_error(response, 401, "invalid_token", "Invalid token")


def test_invalid_token_is_checked_before_the_body(client):
    """An anonymous caller learns nothing about validation: 401 even for a broken body."""
    response = client.post("/push/send", data="{not json", content_type="application/json")
    assert_error(response, 401, "invalid_token", "Invalid token")


# -- 403 Missing required scope ------------------------------------------------


@pytest.mark.parametrize("scopes", [(), ("push:read",), ("push:send:extra",), ("PUSH:SEND",)])
def test_service_token_without_push_send_is_403(client, tenant, user, scopes, session_factory):
    response = client.post("/push/send", json=send_body(user), headers=tenant.service_headers(scopes=scopes))
    assert_error(response, 403, "missing_scope", "Missing required scope")
    assert notification_count(session_factory) == 0


def test_push_send_among_other_scopes_is_enough(client, tenant, user):
    headers = tenant.service_headers(scopes=("openid", "push:send", "push:read"))
    response = client.post("/push/send", json=send_body(user), headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/push/send", "/push/send/bulk", "/push/send/batch"])
def test_user_token_on_send_endpoints_is_403(client, tenant, user, path):
    body = {
        "/push/send": send_body(user),
        "/push/send/bulk": {"user_ids": [str(user)], "title": "t", "body": "b"},
        "/push/send/batch": {"notifications": [send_body(user)]},
    }[path]
    response = client.post(path, json=body, headers=tenant.user_headers(user))
    assert_error(response, 403, "missing_scope", "Missing required scope")


def test_user_token_carrying_a_push_send_scope_is_still_not_a_service(client, tenant, user):
    headers = tenant.user_headers(user, extra={"scope": "push:send"})
    response = client.post("/push/send", json=send_body(user), headers=headers)
    assert_error(response, 403, "missing_scope", "Missing required scope")


def test_user_token_cannot_read_notifications(client, tenant, user):
    sent = client.post("/push/send", json=send_body(user), headers=tenant.service_headers())
    notification_id = sent.get_json()["notification_id"]
    response = client.get(f"/push/notifications/{notification_id}", headers=tenant.user_headers(user))
    assert_error(response, 403, "missing_scope", "Missing required scope")


def test_service_token_without_scope_cannot_delete_devices(client, tenant, user):
    device_id = register_ios(client, tenant, user)
    response = client.delete(f"/push/devices/{device_id}", headers=tenant.service_headers(scopes=()))
    assert_error(response, 403, "missing_scope", "Missing required scope")


# -- 404 Device not found / Notification not found -----------------------------


def test_delete_unknown_device_is_404(client, tenant, user):
    response = client.delete(f"/push/devices/{uuid.uuid4()}", headers=tenant.service_headers())
    assert_error(response, 404, "device_not_found", "Device not found")
    response = client.delete(f"/push/devices/{uuid.uuid4()}", headers=tenant.user_headers(user))
    assert_error(response, 404, "device_not_found", "Device not found")


@pytest.mark.parametrize("device_id", ["not-a-uuid", "123", "%00", "00000000-0000-0000-0000-00000000000g"])
def test_delete_malformed_device_id_is_404(client, tenant, device_id):
    response = client.delete(f"/push/devices/{device_id}", headers=tenant.service_headers())
    assert_error(response, 404, "device_not_found", "Device not found")


def test_service_of_another_app_gets_404_not_403_and_device_survives(client, tenant, other_tenant, user, session_factory):
    """A device of another app must look exactly like a device that does not exist."""
    device_id = register_ios(client, tenant, user)
    response = client.delete(f"/push/devices/{device_id}", headers=other_tenant.service_headers())
    assert_error(response, 404, "device_not_found", "Device not found")
    with session_factory() as session:
        assert session.get(Device, uuid.UUID(device_id)).disabled_at is None


def test_user_cannot_delete_another_users_device(client, tenant, user, session_factory):
    device_id = register_ios(client, tenant, user)
    response = client.delete(f"/push/devices/{device_id}", headers=tenant.user_headers(uuid.uuid4()))
    assert_error(response, 404, "device_not_found", "Device not found")
    with session_factory() as session:
        assert session.get(Device, uuid.UUID(device_id)).disabled_at is None


@pytest.mark.parametrize("notification_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_or_malformed_notification_is_404(client, tenant, notification_id):
    response = client.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers())
    assert_error(response, 404, "notification_not_found", "Notification not found")


def test_another_apps_notification_is_404(client, tenant, other_tenant, user):
    sent = client.post("/push/send", json=send_body(user), headers=tenant.service_headers())
    notification_id = sent.get_json()["notification_id"]
    response = client.get(f"/push/notifications/{notification_id}", headers=other_tenant.service_headers())
    assert_error(response, 404, "notification_not_found", "Notification not found")


# -- body parsing: malformed JSON, media type, shape --------------------------


@pytest.mark.parametrize("raw", ["{not json", '{"user_id": ', "", b"\xff\xfe{}", "null"])
def test_malformed_json_is_400(client, tenant, raw, session_factory):
    """README: 400 malformed_json for a body that is not JSON."""
    response = client.post("/push/send", data=raw, content_type="application/json", headers=tenant.service_headers())
    assert_error(response, 400, "malformed_json", "Request body is not valid JSON")
    assert notification_count(session_factory) == 0


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/plain", '{"user_id": "x"}'),
        ("application/x-www-form-urlencoded", "user_id=x&title=t&body=b"),
        (None, None),
    ],
)
def test_non_json_content_type_is_415(client, tenant, content_type, data):
    response = client.post("/push/send", data=data, content_type=content_type, headers=tenant.service_headers())
    assert_error(response, 415, "unsupported_media_type", "Content-Type must be application/json")


def test_json_with_charset_parameter_is_accepted(client, tenant, user):
    response = client.post(
        "/push/send",
        data=json.dumps(send_body(user)),
        content_type="application/json; charset=utf-8",
        headers=tenant.service_headers(),
    )
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("payload", [[], [{"title": "t"}], "a string", 42, True])
def test_json_that_is_not_an_object_is_400(client, tenant, payload):
    response = client.post("/push/send", json=payload, headers=tenant.service_headers())
    assert_validation_error(response, "_schema")


def test_body_over_one_mebibyte_is_refused_as_json(client, tenant, user):
    body = json.dumps(send_body(user, body="x" * (1024 * 1024)))
    response = client.post("/push/send", data=body, content_type="application/json", headers=tenant.service_headers())
    assert response.status_code == 413
    assert response.mimetype == "application/json"
    assert set(response.get_json()) == {"error", "message"}


# -- field validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"title": 123}, "title"),
        ({"body": ["b"]}, "body"),
        ({"user_id": "not-a-uuid"}, "user_id"),
        ({"user_id": 12345}, "user_id"),
        ({"ttl": "60"}, "ttl"),
        ({"ttl": 60.5}, "ttl"),
        ({"ttl": 60.0}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"data": ["route", "/schedule"]}, "data"),
        ({"data": "route=/schedule"}, "data"),
        ({"title": ""}, "title"),
        ({"body": ""}, "body"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": MAX_TTL + 1}, "ttl"),
        ({"title": "t" * 257}, "title"),
        ({"body": "b" * 4097}, "body"),
    ],
)
def test_send_field_violations_are_400_naming_the_field(client, tenant, user, overrides, field, session_factory):
    response = client.post("/push/send", json=send_body(user, **overrides), headers=tenant.service_headers())
    fields = assert_validation_error(response, field)
    assert set(fields) == {field}
    assert notification_count(session_factory) == 0


@pytest.mark.parametrize("missing", ["user_id", "title", "body"])
def test_send_required_fields(client, tenant, user, missing):
    body = send_body(user)
    del body[missing]
    response = client.post("/push/send", json=body, headers=tenant.service_headers())
    assert_validation_error(response, missing)


def test_unknown_fields_are_refused_by_name(client, tenant, user, session_factory):
    response = client.post(
        "/push/send", json=send_body(user, subtitle="s", image_url="https://x"), headers=tenant.service_headers()
    )
    fields = assert_validation_error(response, "subtitle", "image_url")
    assert set(fields) == {"subtitle", "image_url"}
    assert notification_count(session_factory) == 0


def test_unknown_field_inside_a_batch_item_is_refused(client, tenant, user):
    response = client.post(
        "/push/send/batch",
        json={"notifications": [send_body(user), send_body(user, ringtone="ding")]},
        headers=tenant.service_headers(),
    )
    fields = assert_validation_error(response, "notifications")
    assert fields["notifications"] == {"1": {"ringtone": ["Unknown field."]}}


@pytest.mark.parametrize(
    ("overrides", "stored"),
    [
        ({"title": "t" * 256}, {"title": "t" * 256}),
        ({"title": "é" * 256}, {"title": "é" * 256}),  # characters, not bytes
        ({"body": "b" * 4096}, {"body": "b" * 4096}),
        ({"ttl": 0}, {"ttl": 0}),
        ({"ttl": MAX_TTL}, {"ttl": MAX_TTL}),
        ({}, {"ttl": 86400, "data": {}}),  # defaults: PUSHQ_DEFAULT_TTL and an empty object
        ({"ttl": None}, {"ttl": 86400}),  # an explicit null is "no ttl given"
    ],
)
def test_values_at_the_limits_are_accepted_and_stored(client, tenant, user, overrides, stored):
    response = client.post("/push/send", json=send_body(user, **overrides), headers=tenant.service_headers())
    assert response.status_code == 200, response.get_data(as_text=True)
    notification_id = response.get_json()["notification_id"]
    notification = client.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).get_json()
    for key, value in stored.items():
        assert notification[key] == value


# -- bulk -----------------------------------------------------------------------


def test_bulk_with_501_user_ids_is_400(client, tenant, session_factory):
    users = [uuid.uuid4() for _ in range(501)]
    tenant.enroll(*users)
    response = client.post(
        "/push/send/bulk",
        json={"user_ids": [str(u) for u in users], "title": "t", "body": "b"},
        headers=tenant.service_headers(),
    )
    assert_validation_error(response, "user_ids")
    assert notification_count(session_factory) == 0


def test_bulk_with_500_users_returns_500_ids_in_request_order(client, tenant, session_factory):
    users = [uuid.uuid4() for _ in range(500)]
    tenant.enroll(*users)
    response = client.post(
        "/push/send/bulk",
        json={"user_ids": [str(u) for u in users], "title": "Gym closes early", "body": "Closing at 6pm."},
        headers=tenant.service_headers(),
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    ids = [uuid.UUID(i) for i in response.get_json()["notification_ids"]]
    assert len(ids) == len(set(ids)) == 500
    with session_factory() as session:
        owner = dict(session.execute(select(Notification.id, Notification.user_id)).all())
    assert [owner[i] for i in ids] == users


@pytest.mark.parametrize("user_ids", [[], None, "not-a-list", ["not-a-uuid"]])
def test_bulk_user_ids_shape(client, tenant, user_ids):
    response = client.post(
        "/push/send/bulk", json={"user_ids": user_ids, "title": "t", "body": "b"}, headers=tenant.service_headers()
    )
    assert_validation_error(response, "user_ids")


def test_bulk_with_duplicate_user_ids_is_400(client, tenant, user, session_factory):
    other = uuid.uuid4()
    tenant.enroll(other)
    response = client.post(
        "/push/send/bulk",
        json={"user_ids": [str(user), str(other), str(user)], "title": "t", "body": "b"},
        headers=tenant.service_headers(),
    )
    assert_validation_error(response, "user_ids")
    assert notification_count(session_factory) == 0


def test_bulk_duplicates_are_detected_across_spellings(client, tenant, user, session_factory):
    """The same UUID in upper case is the same user."""
    response = client.post(
        "/push/send/bulk",
        json={"user_ids": [str(user), str(user).upper()], "title": "t", "body": "b"},
        headers=tenant.service_headers(),
    )
    assert_validation_error(response, "user_ids")
    assert notification_count(session_factory) == 0


def test_bulk_validates_title_body_data_and_ttl_too(client, tenant, user):
    response = client.post(
        "/push/send/bulk",
        json={"user_ids": [str(user)], "title": "", "body": 1, "data": [], "ttl": "1", "user_id": str(user)},
        headers=tenant.service_headers(),
    )
    fields = assert_validation_error(response, "title", "body", "data", "ttl", "user_id")
    assert set(fields) == {"title", "body", "data", "ttl", "user_id"}


# -- batch ----------------------------------------------------------------------


def test_batch_with_501_notifications_is_400(client, tenant, user, session_factory):
    response = client.post(
        "/push/send/batch",
        json={"notifications": [send_body(user) for _ in range(501)]},
        headers=tenant.service_headers(),
    )
    assert_validation_error(response, "notifications")
    assert notification_count(session_factory) == 0


@pytest.mark.parametrize("notifications", [[], None, {"user_id": "x"}, ["not an object"]])
def test_batch_notifications_shape(client, tenant, notifications):
    response = client.post("/push/send/batch", json={"notifications": notifications}, headers=tenant.service_headers())
    assert_validation_error(response, "notifications")


def test_batch_item_errors_name_the_item_and_field(client, tenant, user, session_factory):
    response = client.post(
        "/push/send/batch",
        json={"notifications": [send_body(user), send_body(user, title="t" * 257), send_body(user, ttl=-1)]},
        headers=tenant.service_headers(),
    )
    fields = assert_validation_error(response, "notifications")
    assert set(fields["notifications"]) == {"1", "2"}
    assert set(fields["notifications"]["1"]) == {"title"}
    assert set(fields["notifications"]["2"]) == {"ttl"}
    assert notification_count(session_factory) == 0


def test_batch_returns_ids_in_request_order(client, tenant):
    users = [uuid.uuid4() for _ in range(5)]
    tenant.enroll(*users)
    # Repeat a user and interleave them so that order cannot come out right by accident.
    order = [users[3], users[0], users[4], users[0], users[2], users[1]]
    items = [send_body(u, title=f"title {n}", ttl=60 + n) for n, u in enumerate(order)]
    response = client.post("/push/send/batch", json={"notifications": items}, headers=tenant.service_headers())
    assert response.status_code == 200, response.get_data(as_text=True)
    ids = response.get_json()["notification_ids"]
    assert len(ids) == len(set(ids)) == len(order)
    for n, (notification_id, expected_user) in enumerate(zip(ids, order)):
        got = client.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers())
        assert got.status_code == 200
        notification = got.get_json()
        assert notification["user_id"] == str(expected_user)
        assert notification["title"] == f"title {n}"
        assert notification["ttl"] == 60 + n
        assert notification["app_id"] == str(tenant.id)


def test_a_wrong_method_is_405_with_allow(client, tenant):
    response = client.put("/push/send", json={}, headers=tenant.service_headers())
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_a_lone_surrogate_is_a_malformed_body_not_a_server_error(client, tenant):
    user = uuid.uuid4()
    tenant.enroll(user)
    raw = '{"user_id": "%s", "title": "a\\ud800", "body": "b"}' % user
    response = client.post("/push/send", data=raw, content_type="application/json", headers=tenant.service_headers())
    assert (response.status_code, response.get_json()["error"]) == (400, "malformed_json")


# -- numbers and times the parser takes but nothing downstream can hold --------------------------

NOT_FINITE = "Not a finite number: NaN, Infinity and numbers beyond the float range (such as 1e400) are refused."


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_are_400_naming_the_field_on_every_send_endpoint(api, tenant, user, session_factory, number):
    """Python's JSON parser takes NaN and Infinity and reads 1e400 as infinity; PostgreSQL's JSON refuses them
    (a 500 before). Over HTTP, on each send endpoint, with the field named as marshmallow names nested fields."""
    send = json.dumps(send_body(user, data={"ok": 1.5, "k": 0})).replace('"k": 0', f'"k": {number}')
    cases = {
        "/push/send": (send, {"data": {"k": [NOT_FINITE]}}),
        "/push/send/bulk": (json.dumps({"user_ids": [str(user)], "title": "t", "body": "b", "ttl": 0})
                            .replace('"ttl": 0', f'"ttl": {number}'), {"ttl": [NOT_FINITE]}),
        "/push/send/batch": ('{"notifications": [%s, %s]}' % (json.dumps(send_body(user)), send),
                             {"notifications": {"1": {"data": {"k": [NOT_FINITE]}}}}),
    }
    for path, (raw, fields) in cases.items():
        response = api.post(path, content=raw, headers={**tenant.service_headers(), "Content-Type": "application/json"})
        assert response.status_code == 400, (path, response.text)
        assert response.json() == {"error": "validation_error", "message": "Invalid request", "fields": fields}, path
    assert notification_count(session_factory) == 0


def test_finite_floats_in_data_are_kept(api, tenant, user):
    response = api.post("/push/send", json=send_body(user, data={"a": 1e308, "b": -2.5e-300, "c": [0.1]}),
                        headers=tenant.service_headers())
    assert response.status_code == 200, response.text
    stored = api.get(f"/push/notifications/{response.json()['notification_id']}", headers=tenant.service_headers())
    assert stored.json()["data"] == {"a": 1e308, "b": -2.5e-300, "c": [0.1]}


OUT_OF_RANGE = "Out of range: the time in UTC must fall within years 1 to 9999."


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_send_at_without_a_utc_equivalent_is_400(api, tenant, user, session_factory, moment):
    """In UTC these fall in year 0 or 10000: the conversion overflowed into a 500 before."""
    patient = uuid.uuid4()
    mapped = api.put(f"/v1/patients/{patient}/identity", json={"person_id": str(user)}, headers=tenant.service_headers())
    assert mapped.status_code == 201, mapped.text
    cases = [
        ("/push/send", send_body(user, send_at=moment), {"send_at": [OUT_OF_RANGE]}),
        ("/push/send/bulk", {"user_ids": [str(user)], "title": "t", "body": "b", "send_at": moment},
         {"send_at": [OUT_OF_RANGE]}),
        ("/push/send/batch", {"notifications": [send_body(user), send_body(user, send_at=moment)]},
         {"notifications": {"1": {"send_at": [OUT_OF_RANGE]}}}),
        ("/v1/push/send", {"patientId": str(patient), "title": "t", "body": "b", "sendAt": moment},
         {"sendAt": [OUT_OF_RANGE]}),
    ]
    for path, body, fields in cases:
        response = api.post(path, json=body, headers=tenant.service_headers())
        assert response.status_code == 400, (path, response.text)
        assert response.json() == {"error": "validation_error", "message": "Invalid request", "fields": fields}, path
    assert notification_count(session_factory) == 0


def test_a_send_at_with_an_offset_postgresql_does_not_take_is_the_same_moment_in_utc(api, tenant, user):
    """Python takes offsets up to ±23:59, PostgreSQL up to ±15:59: the time is stored in UTC, not a 500."""
    response = api.post("/push/send/bulk", json={"user_ids": [str(user)], "title": "t", "body": "b",
                                                 "send_at": "1962-08-20T18:23:33-23:43"}, headers=tenant.service_headers())
    assert response.status_code == 200, response.text
    (notification_id,) = response.json()["notification_ids"]
    stored = api.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()
    assert stored["send_at"] == "1962-08-21T18:06:33+00:00"


# -- each targeted platform's real limit, at accept ---------------------------------------------


def compact(value) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def test_the_web_push_limit_is_the_plaintext_the_service_worker_reads(api, tenant, user, session_factory):
    """Title and data are never cut: with the body cut to "…", the Web Push plaintext may be 3993 bytes, not one more."""
    room = 3993 - compact({"title": "Shift approved", "body": "…", "data": {"k": ""}})
    at_limit = api.post("/push/send", json=send_body(user, body="b" * 4000, data={"k": "x" * room}),
                        headers=tenant.service_headers())
    assert at_limit.status_code == 200, at_limit.text
    over = api.post("/push/send", json=send_body(user, body="b" * 4000, data={"k": "x" * (room + 1)}),
                    headers=tenant.service_headers())
    assert over.status_code == 400, over.text
    assert over.json() == {
        "error": "data_too_large", "message": "Data payload too large", "platforms": ["web"],
        "reason": "web: Web Push carries at most 3993 bytes and this message takes 3994 with its body cut to '…' "
                  "(title, data and url are never cut)",
    }
    assert notification_count(session_factory) == 1


def test_data_fcm_cannot_carry_is_refused_naming_android(api, tenant, user, session_factory):
    """FCM v1 data values are strings: a list of 700 strings (2805 bytes of JSON) is 4209 bytes once each quote
    is escaped inside its string value. Web Push and APNs could carry it; FCM could not, so nothing is accepted."""
    data = {"k": ["a"] * 700}
    for path, body in (("/push/send", send_body(user, data=data)),
                       ("/push/send/bulk", {"user_ids": [str(user)], "title": "Shift approved", "body": "b", "data": data}),
                       ("/push/send/batch", {"notifications": [send_body(user), send_body(user, data=data)]})):
        response = api.post(path, json=body, headers=tenant.service_headers())
        assert response.status_code == 400, (path, response.text)
        refused = response.json()
        assert (refused["error"], refused["message"], refused["platforms"]) == \
            ("data_too_large", "Data payload too large", ["android"]), path
        assert refused["reason"].startswith("android: FCM carries at most 4096 bytes and this message takes "), path
    assert notification_count(session_factory) == 0


@pytest.mark.parametrize("key", ["from", "message_type", "collapse_key", "google.c.a.e", "gcm.notification.title"])
def test_fcm_reserved_data_keys_are_refused(api, tenant, user, session_factory, key):
    response = api.post("/push/send", json=send_body(user, data={"route": "/x", key: "1"}),
                        headers=tenant.service_headers())
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "data_too_large", "message": "Data payload too large", "platforms": ["android"],
        "reason": f"android: FCM reserves the data keys {key} "
                  "(from, message_type, collapse_key and keys starting with google or gcm)",
    }
    assert notification_count(session_factory) == 0


def test_a_long_body_alone_is_never_refused(api, tenant, user):
    """The body is cut to fit each vendor (and `truncated` flagged at delivery): never a reason to refuse."""
    response = api.post("/push/send", json=send_body(user, title="t" * 256, body="ü" * 4096, data={"k": "v" * 3000}),
                        headers=tenant.service_headers())
    assert response.status_code == 200, response.text
