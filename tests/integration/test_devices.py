"""Device registration and unregistration.

Registration is deduplicated on (app, token hash) with one atomic upsert, so the
same token registered twice (even concurrently) is one device.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from shared.errors import InvalidPushToken
from shared.models import Device
from shared.tokens import canonical_token

# -- helpers -------------------------------------------------------------------


def ios_token() -> str:
    return secrets.token_hex(32)


def fcm_token() -> str:
    """Shaped like an FCM registration token: instance id, colon, APA91b... blob."""
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(105)}"


def registration(tenant, platform: str, push_token: str) -> dict:
    return {"app_id": str(tenant.id), "platform": platform, "push_token": push_token}


def register(client, tenant, user_id, platform: str, push_token: str):
    return client.post("/push/devices/register", json=registration(tenant, platform, push_token), headers=tenant.user_headers(user_id))


def registered_id(client, tenant, user_id, platform: str, push_token: str) -> str:
    response = register(client, tenant, user_id, platform, push_token)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["device_id"]


def device(session_factory, device_id: str) -> Device:
    with session_factory() as session:
        found = session.get(Device, uuid.UUID(device_id))
        assert found is not None
        return found


def device_count(session_factory, **where) -> int:
    with session_factory() as session:
        query = select(func.count()).select_from(Device)
        for column, value in where.items():
            query = query.where(getattr(Device, column) == value)
        return session.scalar(query)


def assert_error(response, status: int, error: str, message: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.get_json() == {"error": error, "message": message}


def assert_invalid_push_token(response) -> None:
    """``invalid_push_token`` with the documented message; ``reason`` names the problem."""
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "message", "reason"}
    assert body["error"] == "invalid_push_token"
    assert body["message"] == "Invalid push token"
    assert body["reason"]


@pytest.fixture
def user(tenant) -> uuid.UUID:
    """A user enrolled in ``tenant``: only enrolled users may register devices into an app."""
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    return user_id


# -- registering each platform ---------------------------------------------------


def test_register_web_subscription(client, tenant, user, push_service, session_factory):
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    response = register(client, tenant, user, "web", json.dumps(subscription))
    assert response.status_code == 201, response.get_data(as_text=True)
    assert set(response.get_json()) == {"device_id"}
    stored = device(session_factory, response.get_json()["device_id"])
    assert (stored.app_id, stored.user_id, stored.platform) == (tenant.id, user, "web")
    assert json.loads(stored.token) == subscription
    assert stored.disabled_at is None


def test_register_ios_token(client, tenant, user, session_factory):
    token = ios_token()
    stored = device(session_factory, registered_id(client, tenant, user, "ios", token))
    assert (stored.user_id, stored.platform, stored.token) == (user, "ios", token)


def test_register_android_token(client, tenant, user, session_factory):
    token = fcm_token()
    stored = device(session_factory, registered_id(client, tenant, user, "android", token))
    assert (stored.user_id, stored.platform, stored.token) == (user, "android", token)


def test_a_user_can_have_several_devices(client, tenant, user, push_service, session_factory):
    ids = {
        registered_id(client, tenant, user, "web", json.dumps(push_service.new_subscription())),
        registered_id(client, tenant, user, "web", json.dumps(push_service.new_subscription())),
        registered_id(client, tenant, user, "ios", ios_token()),
        registered_id(client, tenant, user, "android", fcm_token()),
    }
    assert len(ids) == 4
    assert device_count(session_factory, user_id=user) == 4


def test_same_token_in_two_apps_is_two_devices(client, tenant, other_tenant, user):
    """Deduplication is per app."""
    other_tenant.enroll(user)
    token = ios_token()
    assert registered_id(client, tenant, user, "ios", token) != registered_id(client, other_tenant, user, "ios", token)


# -- re-registration -------------------------------------------------------------


@pytest.mark.parametrize("platform", ["web", "ios", "android"])
def test_reregistering_returns_same_device_and_updates_last_seen(client, tenant, user, push_service, session_factory, platform):
    token = {"web": lambda: json.dumps(push_service.new_subscription()), "ios": ios_token, "android": fcm_token}[platform]()
    first_id = registered_id(client, tenant, user, platform, token)
    first = device(session_factory, first_id)
    second_id = registered_id(client, tenant, user, platform, token)
    second = device(session_factory, second_id)
    assert second_id == first_id
    assert second.last_seen_at > first.last_seen_at
    assert second.created_at == first.created_at
    assert device_count(session_factory) == 1


def test_web_reregistration_with_refreshed_keys_updates_the_same_device(client, tenant, user, push_service, session_factory):
    """The endpoint names the subscription; new keys for it are the same device with a new token."""
    subscription = push_service.new_subscription()
    device_id = registered_id(client, tenant, user, "web", json.dumps(subscription))
    refreshed = {**subscription, "keys": push_service.new_subscription()["keys"]}
    assert registered_id(client, tenant, user, "web", json.dumps(refreshed)) == device_id
    assert json.loads(device(session_factory, device_id).token) == refreshed
    assert device_count(session_factory) == 1


def test_web_token_formatting_does_not_split_a_device(client, tenant, user, push_service, session_factory):
    """Whitespace, key order and extra browser fields (expirationTime) are the same subscription."""
    subscription = push_service.new_subscription()
    device_id = registered_id(client, tenant, user, "web", json.dumps(subscription))
    reformatted = json.dumps(
        {"expirationTime": None, "keys": dict(reversed(subscription["keys"].items())), "endpoint": subscription["endpoint"]},
        indent=2,
    )
    assert registered_id(client, tenant, user, "web", reformatted) == device_id
    assert device_count(session_factory) == 1


def test_ios_token_case_does_not_split_a_device(client, tenant, user, session_factory):
    token = ios_token()
    device_id = registered_id(client, tenant, user, "ios", token)
    assert registered_id(client, tenant, user, "ios", token.upper()) == device_id
    assert device(session_factory, device_id).token == token
    assert device_count(session_factory) == 1


def test_reregistering_an_unregistered_device_enables_it_again(client, tenant, user, session_factory):
    token = ios_token()
    device_id = registered_id(client, tenant, user, "ios", token)
    assert client.delete(f"/push/devices/{device_id}", headers=tenant.user_headers(user)).status_code == 200
    assert device(session_factory, device_id).disabled_at is not None

    assert registered_id(client, tenant, user, "ios", token) == device_id
    again = device(session_factory, device_id)
    assert again.disabled_at is None
    assert again.disabled_reason is None
    # ...and it can be unregistered again.
    response = client.delete(f"/push/devices/{device_id}", headers=tenant.user_headers(user))
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


# -- invalid registrations ----------------------------------------------------------


def _subscription_variants(push_service) -> dict[str, str]:
    good = push_service.new_subscription()
    keys = good["keys"]
    return {
        "not json": "not json",
        "json array": json.dumps([good]),
        "json string": json.dumps(json.dumps(good)),
        "no endpoint": json.dumps({"keys": keys}),
        "no keys": json.dumps({"endpoint": good["endpoint"]}),
        "endpoint not a string": json.dumps({"endpoint": 1, "keys": keys}),
        "ftp endpoint": json.dumps({**good, "endpoint": "ftp://push.example/x"}),
        "javascript endpoint": json.dumps({**good, "endpoint": "javascript:alert(1)"}),
        "endpoint without host": json.dumps({**good, "endpoint": "https:///push/x"}),
        "endpoint too long": json.dumps({**good, "endpoint": "https://push.example/" + "a" * 2048}),
        "p256dh not base64": json.dumps({**good, "keys": {**keys, "p256dh": "!!!"}}),
        "p256dh too short": json.dumps({**good, "keys": {**keys, "p256dh": keys["p256dh"][:40]}}),
        "p256dh compressed point": json.dumps({**good, "keys": {**keys, "p256dh": "Ag" + keys["p256dh"][2:44]}}),
        "auth too short": json.dumps({**good, "keys": {**keys, "auth": keys["auth"][:10]}}),
        "auth missing": json.dumps({**good, "keys": {"p256dh": keys["p256dh"]}}),
        "ios token on web": ios_token(),
    }


WEB_CASES = [
    "not json", "json array", "json string", "no endpoint", "no keys", "endpoint not a string", "ftp endpoint",
    "javascript endpoint", "endpoint without host", "endpoint too long", "p256dh not base64", "p256dh too short",
    "p256dh compressed point", "auth too short", "auth missing", "ios token on web",
]


@pytest.mark.parametrize("case", WEB_CASES)
def test_invalid_web_subscriptions_are_400(client, tenant, user, push_service, session_factory, case):
    variants = _subscription_variants(push_service)
    assert set(variants) == set(WEB_CASES)
    assert_invalid_push_token(register(client, tenant, user, "web", variants[case]))
    assert device_count(session_factory) == 0


@pytest.mark.parametrize(
    "token",
    [
        "ab" * 31 + "a",  # 63 hex characters
        "zz" * 32,  # not hex
        "ab" * 16 + " " + "ab" * 16,  # inner space
        "<" + "ab" * 32 + ">",  # as Xcode prints it
        "ab" * 101,  # 202 characters, over the limit
        "ab" * 32 + "\n",  # trailing newline
    ],
    ids=["63-hex", "non-hex", "inner-space", "angle-brackets", "too-long", "trailing-newline"],
)
def test_invalid_ios_tokens_are_400(client, tenant, user, session_factory, token):
    """A trailing newline is not part of a token: accepting it would store a token APNs refuses
    and, hashed differently, a second device for the same phone."""
    assert_invalid_push_token(register(client, tenant, user, "ios", token))
    assert device_count(session_factory) == 0


@pytest.mark.parametrize(
    "token",
    [
        "short:token",  # under 32 characters
        "a" * 40 + "/" + "b" * 40,  # character outside the token alphabet
        "a" * 40 + " " + "b" * 40,
        "a" * 4097,  # over the limit
        "a" * 100 + "\n",  # trailing newline
    ],
    ids=["short", "slash", "space", "too-long", "trailing-newline"],
)
def test_invalid_android_tokens_are_400(client, tenant, user, session_factory, token):
    assert_invalid_push_token(register(client, tenant, user, "android", token))
    assert device_count(session_factory) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"platform": "windows"}, "platform"),
        ({"platform": "WEB"}, "platform"),
        ({"push_token": ""}, "push_token"),
        ({"push_token": {"endpoint": "https://x"}}, "push_token"),
        ({"push_token": "a" * 8193}, "push_token"),
        ({"app_id": "not-a-uuid"}, "app_id"),
        ({"device_name": "my phone"}, "device_name"),
    ],
)
def test_registration_schema_violations_are_400(client, tenant, user, body, field, session_factory):
    response = client.post(
        "/push/devices/register",
        json={**registration(tenant, "ios", ios_token()), **body},
        headers=tenant.user_headers(user),
    )
    assert response.status_code == 400
    payload = response.get_json()
    assert (payload["error"], payload["message"]) == ("validation_error", "Invalid request")
    assert set(payload["fields"]) == {field}
    assert device_count(session_factory) == 0


def test_register_for_unknown_app_is_404(client, tenant, user, session_factory):
    response = client.post(
        "/push/devices/register",
        json={"app_id": str(uuid.uuid4()), "platform": "ios", "push_token": ios_token()},
        headers=tenant.user_headers(user),
    )
    assert_error(response, 404, "app_not_found", "App not found")
    assert device_count(session_factory) == 0


@pytest.mark.parametrize("scopes", [("push:send",), ()])
def test_register_with_a_service_token_is_403(client, tenant, scopes, session_factory):
    response = client.post(
        "/push/devices/register", json=registration(tenant, "ios", ios_token()), headers=tenant.service_headers(scopes=scopes)
    )
    assert_error(response, 403, "user_token_required", "User token required")
    assert device_count(session_factory) == 0


def test_register_without_a_token_is_401(client, tenant):
    response = client.post("/push/devices/register", json=registration(tenant, "ios", ios_token()))
    assert_error(response, 401, "invalid_token", "Invalid token")


# -- https endpoints -------------------------------------------------------------


def test_http_endpoint_is_refused_unless_allowed(push_service):
    """Production refuses plain http endpoints; the test settings allow them for the stand-in."""
    subscription = push_service.new_subscription()
    assert subscription["endpoint"].startswith("http://")
    with pytest.raises(InvalidPushToken):
        canonical_token("web", json.dumps(subscription), allow_http=False)
    with pytest.raises(InvalidPushToken):
        canonical_token("web", json.dumps(subscription))  # the default is https only
    canonical_token("web", json.dumps(subscription), allow_http=True)


def test_https_endpoint_is_accepted_and_hashed_on_the_endpoint(push_service):
    subscription = {**push_service.new_subscription(), "endpoint": "https://fcm.googleapis.com/fcm/send/abc123"}
    token, token_hash = canonical_token("web", json.dumps(subscription), allow_http=False)
    assert json.loads(token) == subscription
    refreshed = {**subscription, "keys": push_service.new_subscription()["keys"]}
    assert canonical_token("web", json.dumps(refreshed), allow_http=False)[1] == token_hash


# -- unregistering -----------------------------------------------------------------


def test_owner_unregisters_their_device(client, tenant, user, session_factory):
    device_id = registered_id(client, tenant, user, "ios", ios_token())
    response = client.delete(f"/push/devices/{device_id}", headers=tenant.user_headers(user))
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    stored = device(session_factory, device_id)
    assert stored.disabled_at is not None
    assert stored.disabled_reason == "unregistered"

    again = client.delete(f"/push/devices/{device_id}", headers=tenant.user_headers(user))
    assert_error(again, 404, "device_not_found", "Device not found")


def test_service_of_the_same_app_unregisters_a_device(client, tenant, user, session_factory):
    device_id = registered_id(client, tenant, user, "android", fcm_token())
    response = client.delete(f"/push/devices/{device_id}", headers=tenant.service_headers())
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert device(session_factory, device_id).disabled_reason == "unregistered"
    again = client.delete(f"/push/devices/{device_id}", headers=tenant.service_headers())
    assert_error(again, 404, "device_not_found", "Device not found")


def test_other_user_and_other_app_cannot_unregister(client, tenant, other_tenant, user, session_factory):
    device_id = registered_id(client, tenant, user, "ios", ios_token())
    for headers in (tenant.user_headers(uuid.uuid4()), other_tenant.service_headers(), other_tenant.user_headers(uuid.uuid4())):
        assert_error(client.delete(f"/push/devices/{device_id}", headers=headers), 404, "device_not_found", "Device not found")
    assert device(session_factory, device_id).disabled_at is None


def test_unregister_does_not_touch_other_devices(client, tenant, user, session_factory):
    keep = registered_id(client, tenant, user, "ios", ios_token())
    drop = registered_id(client, tenant, user, "ios", ios_token())
    assert client.delete(f"/push/devices/{drop}", headers=tenant.user_headers(user)).status_code == 200
    assert device(session_factory, keep).disabled_at is None


# -- concurrent duplicate registration ------------------------------------------------


def test_racing_duplicate_registrations_make_one_device(api, tenant, push_service, session_factory):
    """Two clients register the same token at the same instant, through the real server.

    Both must succeed with the same device_id and leave exactly one row: a
    check-then-insert would either create two rows or fail one request on the
    unique constraint.
    """
    base_url = str(api.base_url)
    rounds = 10
    barrier = threading.Barrier(2)

    def post(user_id: uuid.UUID, body: dict) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as http:
            barrier.wait(timeout=10)
            return http.post("/push/devices/register", json=body, headers=tenant.user_headers(user_id))

    platforms = ["web", "ios", "android"]
    for n in range(rounds):
        platform = platforms[n % len(platforms)]
        token = {"web": lambda: json.dumps(push_service.new_subscription()), "ios": ios_token, "android": fcm_token}[platform]()
        user_id = uuid.uuid4()
        tenant.enroll(user_id)
        body = registration(tenant, platform, token)
        with ThreadPoolExecutor(max_workers=2) as pool:
            responses = list(pool.map(lambda _: post(user_id, body), range(2)))
        for response in responses:
            assert response.status_code == 201, response.text  # documented: 201 whether new or re-registered
        device_ids = {response.json()["device_id"] for response in responses}
        assert len(device_ids) == 1, f"round {n} ({platform}): two devices {device_ids}"
        assert device_count(session_factory, user_id=user_id) == 1
    assert device_count(session_factory) == rounds
