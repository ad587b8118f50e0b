"""The delivery engine on all three platforms, end to end.

Each scenario runs through the HTTP API, the real worker and scheduler, and the
platform's local stand-in speaking the vendor's protocol. A small harness per
platform hides how each stand-in is told to fail and how it records messages.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from tests.support.helpers import wait_for


@dataclass
class Received:
    title: str
    body: str
    data: dict[str, Any]
    size: int  # bytes of the vendor payload as received
    received_at: float


class Harness:
    platform: str
    transient_error: Any  # the vendor's 429
    server_error: Any  # the vendor's 5xx
    dead_error: Any  # the vendor's "token is gone"
    payload_limit: int

    def __init__(self, service: Any) -> None:
        self.service = service

    def configure(self, tenant) -> None: ...
    def new_token(self) -> tuple[str, Any]:
        """(push_token to register, handle the stand-in knows it by)."""
        raise NotImplementedError

    def fail(self, handle: Any, error: Any, *, times: int | None = None, retry_after: int | None = None) -> None:
        """Every stand-in takes the same call: the vendor's error for that token, N times or always."""
        self.service.set_behavior(handle, error, times=times, retry_after=retry_after)

    def received(self, handle: Any) -> list[Received]:
        raise NotImplementedError

    def attempts(self, handle: Any) -> int:
        return self.service.attempts(handle)

    def ttls(self, handle: Any) -> list[int]:
        """The time to live each accepted message carried on the wire, in seconds (APNs: 0 or seconds left)."""
        raise NotImplementedError


class WebHarness(Harness):
    platform, transient_error, server_error, dead_error, payload_limit = "web", 429, 503, 410, 3993

    def new_token(self):
        subscription = self.service.new_subscription()
        return json.dumps(subscription), subscription

    def received(self, handle):
        out = []
        for message in self.service.messages(handle):
            payload = message.json()
            out.append(Received(payload["title"], payload["body"], payload["data"], len(message.payload), message.received_at))
        return out

    def ttls(self, handle):
        return [message.ttl for message in self.service.messages(handle)]


class ApnsHarness(Harness):
    platform, payload_limit = "ios", 4096
    transient_error, server_error, dead_error = "TooManyRequests", "ServiceUnavailable", "Unregistered"

    def configure(self, tenant):
        tenant.configure_apns(self.service)

    def new_token(self):
        token = secrets.token_hex(32)
        return token, token

    def received(self, handle):
        out = []
        for message in self.service.messages(handle):
            alert = message.payload["aps"]["alert"]
            size = len(json.dumps(message.payload, separators=(",", ":"), ensure_ascii=False).encode())
            out.append(Received(alert["title"], alert["body"], message.payload.get("data", {}), size, message.received_at))
        return out

    def ttls(self, handle):
        # apns-expiration is a UNIX time, except 0: "deliver once, do not store".
        return [0 if m.expiration == 0 else round(m.expiration - m.received_at) for m in self.service.messages(handle)]


class FcmHarness(Harness):
    platform, payload_limit = "android", 4096
    transient_error, server_error, dead_error = "QUOTA_EXCEEDED", "UNAVAILABLE", "UNREGISTERED"

    def configure(self, tenant):
        tenant.configure_fcm(self.service)

    def new_token(self):
        token = secrets.token_urlsafe(48)
        return token, token

    def received(self, handle):
        out = []
        for message in self.service.messages(handle):
            notification = message.message["notification"]
            data = dict(message.message.get("data", {}).items())
            # What FCM counts against its 4096 bytes: the message without its target (the token).
            counted = {key: value for key, value in message.message.items() if key != "token"}
            size = len(json.dumps(counted, separators=(",", ":"), ensure_ascii=False).encode())
            out.append(Received(notification["title"], notification["body"], data, size, message.received_at))
        return out

    def ttls(self, handle):
        return [int(message.message["android"]["ttl"].removesuffix("s")) for message in self.service.messages(handle)]


HARNESSES: dict[str, Callable[[Any], Harness]] = {"web": WebHarness, "ios": ApnsHarness, "android": FcmHarness}


@pytest.fixture(params=["web", "ios", "android"])
def vendor(request, push_service, apns_service, fcm_service, tenant) -> Harness:
    service = {"web": push_service, "ios": apns_service, "android": fcm_service}[request.param]
    harness = HARNESSES[request.param](service)
    harness.configure(tenant)
    return harness


def register(api, tenant, vendor: Harness, user: uuid.UUID) -> tuple[str, Any]:
    push_token, handle = vendor.new_token()
    response = api.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": vendor.platform, "push_token": push_token},
        headers=tenant.user_headers(user),
    )
    assert response.status_code == 201, response.text
    return response.json()["device_id"], handle


def send(api, tenant, user, **fields) -> str:
    response = api.post("/push/send", json={"user_id": str(user), "title": "Shift approved", "body": "See you at 9.", **fields},
                        headers=tenant.service_headers())
    assert response.status_code == 200, response.text
    return response.json()["notification_id"]


def settled(api, tenant, notification_id: str, timeout: float = 25) -> dict:
    def done():
        body = api.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()
        return body if body["status"] not in ("queued", "sending") else None

    return wait_for(done, timeout=timeout)


@pytest.fixture
def user(tenant) -> uuid.UUID:
    user = uuid.uuid4()
    tenant.enroll(user)
    return user


def test_sent_with_the_vendor_message_id(api, worker, tenant, vendor, user):
    device_id, handle = register(api, tenant, vendor, user)
    notification = settled(api, tenant, send(api, tenant, user, data={"route": "/schedule"}))
    (received,) = vendor.received(handle)
    assert (received.title, received.body) == ("Shift approved", "See you at 9.")
    assert received.data == {"route": "/schedule"}
    (delivery,) = notification["deliveries"]
    assert notification["status"] == "delivered"
    assert (delivery["device_id"], delivery["status"], delivery["attempts"]) == (device_id, "sent", 1)
    assert delivery["vendor_message_id"]


def test_dead_token_disables_the_device_and_the_next_send_skips_it(api, worker, tenant, vendor, user):
    _, alive = register(api, tenant, vendor, user)
    dead_id, dead = register(api, tenant, vendor, user)
    vendor.fail(dead, vendor.dead_error)
    first = settled(api, tenant, send(api, tenant, user))
    assert first["status"] == "partially_delivered"
    assert {d["device_id"]: d["status"] for d in first["deliveries"]}[dead_id] == "dead_token"

    second = settled(api, tenant, send(api, tenant, user))
    assert second["status"] == "delivered"
    assert dead_id not in {d["device_id"] for d in second["deliveries"]}
    assert vendor.attempts(dead) == 1
    assert len(vendor.received(alive)) == 2


def test_rate_limit_is_retried_no_sooner_than_retry_after_then_sent(api, worker, tenant, vendor, user):
    _, handle = register(api, tenant, vendor, user)
    vendor.fail(handle, vendor.transient_error, times=1, retry_after=2)
    notification = settled(api, tenant, send(api, tenant, user), timeout=90 if vendor.platform == "android" else 25)
    (delivery,) = notification["deliveries"]
    assert (notification["status"], delivery["attempts"]) == ("delivered", 2)
    (received,) = vendor.received(handle)
    created = datetime.fromisoformat(notification["created_at"]).timestamp()
    floor = 60 if vendor.platform == "android" else 2  # FCM QUOTA_EXCEEDED backs off a minute at least
    assert received.received_at - created >= floor


def test_server_errors_are_retried_until_the_attempt_limit(api, worker, tenant, vendor, user):
    _, handle = register(api, tenant, vendor, user)
    vendor.fail(handle, vendor.server_error)
    notification = settled(api, tenant, send(api, tenant, user))
    (delivery,) = notification["deliveries"]
    assert (notification["status"], delivery["status"], delivery["attempts"]) == ("failed", "failed", 3)
    assert delivery["last_error"].startswith("gave up after 3 attempts")
    assert vendor.attempts(handle) == 3
    assert vendor.received(handle) == []


def test_ttl_running_out_while_retrying_ends_expired_never_late(api, worker, tenant, vendor, user):
    _, handle = register(api, tenant, vendor, user)
    vendor.fail(handle, vendor.server_error, times=1, retry_after=30)
    notification = settled(api, tenant, send(api, tenant, user, ttl=5))
    (delivery,) = notification["deliveries"]
    assert (notification["status"], delivery["status"], delivery["attempts"]) == ("expired", "expired", 1)
    assert vendor.received(handle) == []


def test_ttl_0_is_pushed_at_once_with_a_zero_ttl_and_never_retried(api, worker, tenant, vendor, user):
    """ttl 0 is the vendors' "deliver now or drop it": pushed once, with TTL 0 on the wire; a transient error ends it."""
    _, handle = register(api, tenant, vendor, user)
    now = settled(api, tenant, send(api, tenant, user, ttl=0, title="Now"))
    (delivery,) = now["deliveries"]
    assert (now["status"], delivery["status"], delivery["attempts"]) == ("delivered", "sent", 1)
    assert [r.title for r in vendor.received(handle)] == ["Now"]
    assert vendor.ttls(handle) == [0]

    vendor.fail(handle, vendor.transient_error, times=1, retry_after=1)
    dropped = settled(api, tenant, send(api, tenant, user, ttl=0, title="Or never"))
    (delivery,) = dropped["deliveries"]
    assert (dropped["status"], delivery["status"], delivery["attempts"]) == ("expired", "expired", 1)
    assert delivery["last_error"].startswith("ttl 0, not retried: ")
    assert vendor.attempts(handle) == 2
    assert [r.title for r in vendor.received(handle)] == ["Now"]


def test_oversize_body_is_truncated_to_the_vendor_limit(api, worker, tenant, vendor, user):
    _, handle = register(api, tenant, vendor, user)
    body = "ü" * 4096  # 8192 bytes of UTF-8
    notification = settled(api, tenant, send(api, tenant, user, body=body))
    assert (notification["status"], notification["truncated"]) == ("delivered", True)
    (received,) = vendor.received(handle)
    assert received.size <= vendor.payload_limit
    assert received.body.endswith("…") and body.startswith(received.body[:-1])
    assert len(received.body) > 1000


def script_hostile_answers(vendor: Harness, odd: list[Any]) -> dict[int, str]:
    """Make the vendor answer three of the chunk's pushes with values no code should trust;
    returns each odd push's expected final delivery status."""
    service, huge, endless = vendor.service, 300_000_000_000, "9" * 400
    if vendor.platform == "web":
        service.set_behavior(odd[0], 503, retry_after=huge)  # OverflowError on a datetime before
        service.set_behavior(odd[1], 429, retry_after=int(endless))  # float("9" * 400) is infinity
        service.set_behavior(odd[2], 201, headers={"Location": "https://push.example/m/\xff\xfe"})  # not UTF-8
        return {0: "retrying", 1: "retrying", 2: "sent"}
    if vendor.platform == "ios":
        service.set_behavior(odd[0], "ServiceUnavailable", retry_after=str(huge))
        service.set_behavior(odd[1], "TooManyRequests", retry_after=endless,
                             body=b'{"reason":"TooMany\\u0000Requests\\ud800"}')  # NUL and a lone surrogate
        # An apns-id that is not UTF-8 (aioapns decoded it strictly, killing the connection):
        # unmatched, so retried once, then answered normally.
        service.set_behavior(odd[2], None, times=1, headers={b"apns-id": b"\xff\xfe"})
        return {0: "retrying", 1: "retrying", 2: "sent"}
    service.set_behavior(odd[0], "UNAVAILABLE", retry_after=str(huge))
    service.set_behavior(odd[1], "INVALID_ARGUMENT",
                         body=b'{"error":{"code":400,"status":"INVALID\\u0000ARGUMENT","message":"bad\\u0000\\ud800"}}')
    service.set_behavior(odd[2], None, body=b'{"name":"projects/p/messages/\\ud800\\u0000x"}')  # accepted
    return {0: "retrying", 1: "rejected", 2: "sent"}


def test_hostile_answers_in_a_chunk_never_stop_its_other_outcomes_being_written(api, worker, tenant, vendor, user):
    """Issue 16 item 2: a huge or endless Retry-After, NUL, lone surrogates and non-UTF-8 in a vendor's
    answer used to fail the chunk's whole outcome write: every delivery stayed `sending` and was
    pushed again after the lease, the accepted ones included."""
    devices = [register(api, tenant, vendor, user) for _ in range(5)]
    odd, plain = devices[:3], devices[3:]
    expected = script_hostile_answers(vendor, [handle for _, handle in odd])
    notification_id = send(api, tenant, user, ttl=7 * 86_400)  # one chunk of five deliveries

    def written():
        body = api.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()
        status = {d["device_id"]: d["status"] for d in body["deliveries"]}
        wanted = {**{odd[i][0]: s for i, s in expected.items()}, **{device_id: "sent" for device_id, _ in plain}}
        return body if status == wanted else None

    notification = wait_for(written, timeout=25, what="every outcome of the chunk written")
    by_device = {d["device_id"]: d for d in notification["deliveries"]}
    for device_id, handle in plain:  # accepted once, recorded as sent, never pushed again
        assert (by_device[device_id]["attempts"], len(vendor.received(handle))) == (1, 1)
    huge_retry = by_device[odd[0][0]]  # Retry-After 300000000000 s: clamped to a day
    due = datetime.fromisoformat(huge_retry["next_attempt_at"]) - datetime.fromisoformat(huge_retry["updated_at"])
    assert 86_000 < due.total_seconds() <= 86_400
    for delivery in notification["deliveries"]:
        for text in (delivery["last_error"] or "", delivery["vendor_message_id"] or ""):
            assert "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)
    if vendor.platform != "ios":
        assert "\ufffd" in by_device[odd[2][0]]["vendor_message_id"]  # what was not UTF-8, marked


def test_data_of_3900_bytes_accepted_is_delivered_on_every_platform(
    api, worker, tenant, push_service, apns_service, fcm_service, user
):
    """Issue 16 item 9: such a send was accepted and every Android delivery then ended rejected (the FCM
    adapter counted the token too). What the API accepts, every platform it targets now carries."""
    handles = {}
    for name, service in (("web", push_service), ("ios", apns_service), ("android", fcm_service)):
        harness = HARNESSES[name](service)
        harness.configure(tenant)
        if name == "android":  # a registration token as long as real ones (about 163 characters)
            token = (secrets.token_urlsafe(16) + ":APA91b" + secrets.token_urlsafe(120))[:163]
            harness.new_token = lambda token=token: (token, token)  # type: ignore[method-assign]
        handles[name] = (harness, register(api, tenant, harness, user)[1])
    data = {"k": "x" * (3900 - len('{"k":""}'))}
    assert len(json.dumps(data, separators=(",", ":")).encode()) == 3900
    notification = settled(api, tenant, send(api, tenant, user, data=data, body="ü" * 2000))
    assert notification["status"] == "delivered", notification
    assert {d["status"] for d in notification["deliveries"]} == {"sent"}
    assert notification["truncated"] is True
    for name, (harness, handle) in handles.items():
        (received,) = harness.received(handle)
        assert received.size <= harness.payload_limit, name
        assert received.data == data, name
        assert received.body.endswith("…"), name
