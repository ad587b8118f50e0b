"""The FCM adapter against the local FCM stand-in (real HTTP, real OAuth2 token endpoint)."""

from __future__ import annotations

import dataclasses
import gc
import json
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from shared.outcomes import MAX_RETRY_AFTER_SECONDS, Outcome, OutcomeKind
from shared.pipeline.values import ClaimedDelivery
from shared.vendor_payloads import fcm_payload
from standins.fcm import FcmStandin
from tests.support.helpers import claimed_delivery
from workers.adapters.base import AppCredentials
from workers.adapters.fcm import FcmAdapter, classify_response

PROJECT = "proj"
OTHER_PROJECT = "other-proj"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def device_token() -> str:
    return f"fcm-{uuid.uuid4().hex}:APA91b" + "x" * 120


def serialized_size(message: dict) -> int:
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def counted_size(message: dict) -> int:
    """What FCM counts against its 4096 bytes: the message without its target (the token)."""
    return serialized_size({key: value for key, value in message.items() if key != "token"})


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin() -> Iterator[FcmStandin]:
    with FcmStandin() as service:
        yield service


@pytest.fixture(scope="module")
def service_account(standin: FcmStandin) -> str:
    return json.dumps(standin.new_service_account(PROJECT))


@pytest.fixture(scope="module")
def other_service_account(standin: FcmStandin) -> str:
    return json.dumps(standin.new_service_account(OTHER_PROJECT))


@pytest.fixture
def fcm(standin: FcmStandin) -> FcmStandin:
    standin.reset()
    return standin


@pytest.fixture
def adapter(fcm: FcmStandin) -> Iterator[FcmAdapter]:
    adapter = FcmAdapter(2.0, 5.0, base_url=fcm.base_url, max_workers=8, clock=lambda: NOW)
    yield adapter
    adapter.close()


def make_app(service_account: str | None, project_id: str | None = PROJECT) -> AppCredentials:
    return AppCredentials(
        app_id=uuid.uuid4(),
        vapid_private_key="unused",
        vapid_public_key="unused",
        vapid_subject="mailto:ops@example.com",
        fcm_project_id=project_id,
        fcm_service_account=service_account,
    )


@pytest.fixture
def app(service_account: str) -> AppCredentials:
    return make_app(service_account)


def delivery(token: str | None = None, *, ttl: float = 3600, **fields: Any) -> ClaimedDelivery:
    return claimed_delivery(token or device_token(), "android", expires_at=NOW + timedelta(seconds=ttl), **fields)


def send_one(adapter: FcmAdapter, app: AppCredentials, d: ClaimedDelivery) -> Outcome:
    [outcome] = adapter.send_many(app, [d])
    return outcome


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# success and the message sent
# --------------------------------------------------------------------------


def test_sent_with_the_message_name_and_full_message(adapter, fcm, app):
    d = delivery(
        priority="high",
        collapse_key="score",
        sound="ping.wav",
        badge=3,
        url="https://example.com/match/7",
        data={"s": "text", "n": 1, "f": 1.5, "b": True, "none": None, "obj": {"a": [1, 2]}},
    )
    outcome = send_one(adapter, app, d)
    assert outcome.kind is OutcomeKind.SENT, outcome
    [recorded] = fcm.messages(d.token)
    assert outcome.vendor_message_id == recorded.name
    assert recorded.name.startswith(f"projects/{PROJECT}/messages/")
    assert not outcome.truncated
    message = recorded.message
    assert message["token"] == d.token
    assert message["notification"] == {"title": "Hello", "body": "World"}
    android = message["android"]
    assert int(android["ttl"].removesuffix("s")) in (3599, 3600)
    assert android["priority"] == "HIGH"
    assert android["collapse_key"] == "score"
    assert android["notification"] == {"sound": "ping.wav", "notification_count": 3}
    assert message["data"] == {
        "s": "text",
        "n": "1",
        "f": "1.5",
        "b": "true",
        "none": "null",
        "obj": '{"a":[1,2]}',
        "url": "https://example.com/match/7",
    }


def test_normal_priority_and_optional_fields_left_out(adapter, fcm, app):
    d = delivery(priority="normal", ttl=600)
    assert send_one(adapter, app, d).kind is OutcomeKind.SENT
    message = fcm.messages(d.token)[0].message
    assert message["android"] == {"ttl": "600s", "priority": "NORMAL"}
    assert "data" not in message


def test_ttl_is_capped_at_28_days(adapter, fcm, app):
    d = delivery(ttl=60 * 24 * 3600)
    assert send_one(adapter, app, d).kind is OutcomeKind.SENT
    assert fcm.messages(d.token)[0].message["android"]["ttl"] == f"{28 * 24 * 3600}s"


def test_project_id_falls_back_to_the_service_account(adapter, fcm, service_account):
    d = delivery()
    outcome = send_one(adapter, make_app(service_account, project_id=None), d)
    assert outcome.kind is OutcomeKind.SENT, outcome
    assert fcm.messages(d.token)[0].project_id == PROJECT


def test_chunk_reuses_connections_and_one_access_token(adapter, fcm, app):
    first = [delivery() for _ in range(30)]
    second = [delivery() for _ in range(30)]
    outcomes = adapter.send_many(app, first) + adapter.send_many(app, second)
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 60
    for d, outcome in zip(first + second, outcomes):
        [recorded] = fcm.messages(d.token)
        assert outcome.vendor_message_id == recorded.name  # outcomes come back in order
    assert fcm.token_requests == 1
    # 8 send connections at most (the pool) + 1 to /token, not one per message.
    assert fcm.connections_accepted <= adapter.max_workers + 1


def test_concurrent_chunks_refresh_the_token_once(adapter, fcm, app):
    chunks = [[delivery() for _ in range(10)] for _ in range(4)]
    results: list[list[Outcome]] = []
    threads = [threading.Thread(target=lambda c=c: results.append(adapter.send_many(app, c))) for c in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert [o.kind for r in results for o in r] == [OutcomeKind.SENT] * 40
    assert fcm.token_requests == 1


def test_rotated_service_account_gets_new_credentials(adapter, fcm, standin, app):
    assert send_one(adapter, app, delivery()).kind is OutcomeKind.SENT
    rotated = dataclasses.replace(app, fcm_service_account=json.dumps(standin.new_service_account(PROJECT)))
    assert send_one(adapter, rotated, delivery()).kind is OutcomeKind.SENT
    assert send_one(adapter, rotated, delivery()).kind is OutcomeKind.SENT
    assert fcm.token_requests == 2


def test_outcomes_keep_the_order_of_a_mixed_chunk(adapter, fcm, app):
    chunk = [delivery() for _ in range(6)]
    fcm.set_behavior(chunk[1].token, "UNREGISTERED")
    fcm.set_behavior(chunk[3].token, "UNAVAILABLE")
    fcm.set_behavior(chunk[4].token, "INVALID_ARGUMENT")
    kinds = [o.kind for o in adapter.send_many(app, chunk)]
    assert kinds == [
        OutcomeKind.SENT,
        OutcomeKind.DEAD_TOKEN,
        OutcomeKind.SENT,
        OutcomeKind.RETRY,
        OutcomeKind.REJECTED,
        OutcomeKind.SENT,
    ]
    assert adapter.send_many(app, []) == []


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("UNREGISTERED", OutcomeKind.DEAD_TOKEN),
        ("SENDER_ID_MISMATCH", OutcomeKind.DEAD_TOKEN),
        ("INVALID_ARGUMENT", OutcomeKind.REJECTED),
        ("QUOTA_EXCEEDED", OutcomeKind.RETRY),
        ("UNAVAILABLE", OutcomeKind.RETRY),
        ("INTERNAL", OutcomeKind.RETRY),
    ],
)
def test_error_outcomes(adapter, fcm, app, error, kind):
    d = delivery()
    fcm.set_behavior(d.token, error)
    outcome = send_one(adapter, app, d)
    assert outcome.kind is kind, outcome
    assert error in (outcome.reason or "")
    assert fcm.messages(d.token) == []
    assert fcm.attempts(d.token) == 1


def test_quota_exceeded_backs_off_at_least_a_minute(adapter, fcm, app):
    d = delivery()
    fcm.set_behavior(d.token, "QUOTA_EXCEEDED")
    assert send_one(adapter, app, d).retry_after >= 60
    fcm.set_behavior(d.token, "QUOTA_EXCEEDED", retry_after=5)
    assert send_one(adapter, app, d).retry_after == 60
    fcm.set_behavior(d.token, "QUOTA_EXCEEDED", retry_after=120)
    assert send_one(adapter, app, d).retry_after == 120


@pytest.mark.parametrize("error", ["UNAVAILABLE", "INTERNAL"])
def test_server_errors_honour_retry_after_seconds(adapter, fcm, app, error):
    d = delivery()
    fcm.set_behavior(d.token, error, retry_after=7)
    outcome = send_one(adapter, app, d)
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.retry_after == 7
    fcm.set_behavior(d.token, error)
    assert send_one(adapter, app, d).retry_after is None


def test_retry_after_as_http_date(adapter, fcm, app):
    d = delivery()
    fcm.set_behavior(d.token, "UNAVAILABLE", retry_after=formatdate(time.time() + 90, usegmt=True))
    outcome = send_one(adapter, app, d)
    assert outcome.kind is OutcomeKind.RETRY
    assert 80 <= outcome.retry_after <= 90


def test_hostile_answers_are_cleaned_clamped_and_touch_no_other_push(adapter, fcm, app):
    """Issue 16 item 2: every string of FCM's error JSON and its Retry-After are the vendor's values:
    NUL and lone surrogates ("\\ud800" is valid JSON), any length, 300000000000 s or 400 digits."""
    huge, endless, nul_message, odd_name, not_utf8, fine = (delivery() for _ in range(6))
    fcm.set_behavior(huge.token, "UNAVAILABLE", retry_after="300000000000")
    fcm.set_behavior(endless.token, "QUOTA_EXCEEDED", retry_after="9" * 400)
    fcm.set_behavior(nul_message.token, "INVALID_ARGUMENT", body=json.dumps({"error": {
        "code": 400, "status": "INVALID\x00ARGUMENT", "message": "bad\x00\ud800 " + "x" * 5000,
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "\ud800" * 99}],
    }}).encode())
    fcm.set_behavior(odd_name.token, None, body=b'{"name":"projects/proj/messages/\\ud800\\u0000x"}')
    fcm.set_behavior(not_utf8.token, "INTERNAL", body=b'{"error":{"message":"\xff\xfe"}}')

    outcomes = adapter.send_many(app, [huge, endless, nul_message, odd_name, not_utf8, fine])

    by_name = dict(zip(("huge", "endless", "nul_message", "odd_name", "not_utf8", "fine"), outcomes))
    assert by_name["huge"].kind is OutcomeKind.RETRY and by_name["huge"].retry_after == MAX_RETRY_AFTER_SECONDS
    assert by_name["endless"].kind is OutcomeKind.RETRY and by_name["endless"].retry_after == MAX_RETRY_AFTER_SECONDS
    assert by_name["nul_message"].kind is OutcomeKind.REJECTED
    assert by_name["nul_message"].reason.startswith("FCM answered 400 \ufffd")
    assert by_name["odd_name"].kind is OutcomeKind.SENT
    assert by_name["odd_name"].vendor_message_id == "projects/proj/messages/\ufffdx"
    assert by_name["not_utf8"].kind is OutcomeKind.RETRY  # a body that is not UTF-8 is no JSON: the status decides
    for outcome in outcomes:
        for text in (outcome.reason or "", outcome.vendor_message_id or ""):
            assert "\x00" not in text and len(text) <= 300
            text.encode("utf-8")  # storable as it is
    assert by_name["fine"].kind is OutcomeKind.SENT and len(fcm.messages(fine.token)) == 1


def test_revoked_access_token_retries_then_refreshes(adapter, fcm, app):
    assert send_one(adapter, app, delivery()).kind is OutcomeKind.SENT
    assert fcm.token_requests == 1
    fcm.revoke_access_tokens()
    refused = delivery()
    outcome = send_one(adapter, app, refused)
    assert outcome.kind is OutcomeKind.RETRY, outcome
    assert outcome.retry_after is None
    assert "401" in outcome.reason
    again = send_one(adapter, app, refused)
    assert again.kind is OutcomeKind.SENT, again
    assert fcm.token_requests == 2
    assert len(fcm.messages(refused.token)) == 1


def test_service_account_of_another_project_is_rejected(adapter, fcm, other_service_account):
    d = delivery()
    outcome = send_one(adapter, make_app(other_service_account, project_id=PROJECT), d)
    assert outcome.kind is OutcomeKind.REJECTED, outcome
    assert "403" in outcome.reason and "PERMISSION_DENIED" in outcome.reason
    assert fcm.messages(d.token) == []


def test_service_account_refused_by_token_endpoint_is_rejected(adapter, fcm, standin):
    info = standin.new_service_account(PROJECT)
    info["private_key_id"] = "f" * 40  # the assertion's kid no longer matches: invalid_grant
    chunk = [delivery(), delivery()]
    outcomes = adapter.send_many(make_app(json.dumps(info)), chunk)
    assert [o.kind for o in outcomes] == [OutcomeKind.REJECTED] * 2
    assert "invalid_grant" in outcomes[0].reason
    assert fcm.token_requests == 0
    assert fcm.attempts(chunk[0].token) == 0


def test_unreachable_token_endpoint_is_retried(adapter, fcm, standin):
    info = standin.new_service_account(PROJECT)
    info["token_uri"] = f"http://127.0.0.1:{closed_port()}/token"
    outcome = send_one(adapter, make_app(json.dumps(info)), delivery())
    assert outcome.kind is OutcomeKind.RETRY, outcome
    assert "token endpoint" in outcome.reason


def test_a_silent_token_endpoint_holds_a_chunk_at_most_the_push_deadline(fcm, standin):
    """Issue 16 item 4: the token fetch honours the push deadline (before: the read timeout, 10 s here,
    times google-auth's attempts), so a chunk waiting for a token finishes within its time limit."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    info = standin.new_service_account(PROJECT)
    info["token_uri"] = f"http://127.0.0.1:{silent.getsockname()[1]}/token"
    adapter = FcmAdapter(5.0, 10.0, base_url=fcm.base_url, max_workers=2, deadline=1.0, clock=lambda: NOW)
    try:
        outcomes = adapter.send_many(make_app(json.dumps(info)), [delivery(), delivery()])
    finally:
        adapter.close()
        silent.close()  # the refresher thread's request ends with the listener
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 2
    assert outcomes[0].reason == "FCM token endpoint did not answer within 1.0 s (the push deadline)"


@pytest.mark.parametrize(
    ("service_account", "project_id", "reason"),
    [
        (None, PROJECT, "app has no FCM credentials"),
        ("", PROJECT, "app has no FCM credentials"),
        ("{not json", PROJECT, "not valid JSON"),
        (json.dumps({"type": "service_account", "project_id": PROJECT}), PROJECT, "invalid FCM service account"),
        (json.dumps({"type": "service_account"}), None, "no FCM project id"),
    ],
)
def test_missing_or_broken_credentials_are_rejected(adapter, fcm, service_account, project_id, reason):
    d = delivery()
    [outcome] = adapter.send_many(make_app(service_account, project_id), [d])
    assert outcome.kind is OutcomeKind.REJECTED
    assert reason in outcome.reason
    assert fcm.attempts(d.token) == 0


def test_stalled_fcm_is_retried_after_the_read_timeout(fcm, app):
    adapter = FcmAdapter(1.0, 0.3, base_url=fcm.base_url, max_workers=2, clock=lambda: NOW)
    try:
        send_one(adapter, app, delivery())  # fetch the access token first
        d = delivery()
        fcm.set_behavior(d.token, delay=60, times=1)
        started = time.monotonic()
        outcome = send_one(adapter, app, d)
        elapsed = time.monotonic() - started
    finally:
        adapter.close()
    assert outcome.kind is OutcomeKind.RETRY, outcome
    assert "timed out" in outcome.reason
    assert elapsed < 20  # the answer would take a minute: the 0.3 s read timeout ended the wait


def test_unreachable_fcm_is_retried(app, service_account, fcm):
    adapter = FcmAdapter(1.0, 1.0, base_url=f"http://127.0.0.1:{closed_port()}", max_workers=2, clock=lambda: NOW)
    try:
        outcomes = adapter.send_many(app, [delivery(), delivery()])
    finally:
        adapter.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 2
    assert "connection to FCM failed" in outcomes[0].reason


# --------------------------------------------------------------------------
# payload size
# --------------------------------------------------------------------------


@pytest.mark.parametrize("character", ["x", "é", "🙂"])
def test_oversize_body_is_truncated_to_fit(adapter, fcm, app, character):
    d = delivery(body=character * 5000, data={"k": "v"})
    outcome = send_one(adapter, app, d)
    assert outcome.kind is OutcomeKind.SENT, outcome
    assert outcome.truncated
    [recorded] = fcm.messages(d.token)
    body = recorded.message["notification"]["body"]
    assert body.endswith("…")
    assert body.startswith(character * 100)
    assert counted_size(recorded.message) <= 4096
    assert recorded.message["data"] == {"k": "v"}


def test_the_token_does_not_count_against_the_limit(adapter, fcm, app):
    """A body that fits next to title and options is sent whole, however long the registration token is."""
    token = device_token() + "x" * 400
    probe = delivery(token, body="")
    room = 4096 - len(fcm_payload(probe.message, NOW))
    d = delivery(token, body="b" * room)
    outcome = send_one(adapter, app, d)
    assert outcome.kind is OutcomeKind.SENT and not outcome.truncated, outcome
    [recorded] = fcm.messages(token)
    assert recorded.message["notification"]["body"] == "b" * room
    assert counted_size(recorded.message) == 4096 < serialized_size(recorded.message)


def test_body_that_just_fits_is_not_truncated(adapter, fcm, app):
    d = delivery(body="x" * 3000)
    outcome = send_one(adapter, app, d)
    assert outcome.kind is OutcomeKind.SENT and not outcome.truncated
    assert fcm.messages(d.token)[0].message["notification"]["body"] == "x" * 3000


def test_data_too_big_even_without_a_body_is_rejected(adapter, fcm, app):
    d = delivery(data={"blob": "x" * 5000})
    outcome = send_one(adapter, app, d)
    assert outcome.kind is OutcomeKind.REJECTED
    assert "payload too large for FCM" in outcome.reason
    assert fcm.attempts(d.token) == 0


# --------------------------------------------------------------------------
# answers the stand-in does not produce
# --------------------------------------------------------------------------


def google_error(status: int, google_status: str, error_code: str | None = None, **headers: str) -> httpx.Response:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}] if error_code else []
    body = {"error": {"code": status, "status": google_status, "message": "m", "details": details}}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("response", "kind", "drop_token"),
    [
        (google_error(400, "INVALID_ARGUMENT"), OutcomeKind.REJECTED, False),  # parse errors carry no errorCode
        (google_error(404, "NOT_FOUND"), OutcomeKind.REJECTED, False),  # wrong URL: never disable the device
        (google_error(403, "PERMISSION_DENIED"), OutcomeKind.REJECTED, False),
        (google_error(401, "UNAUTHENTICATED"), OutcomeKind.RETRY, True),
        (google_error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"), OutcomeKind.REJECTED, False),
        (google_error(502, "UNAVAILABLE"), OutcomeKind.RETRY, False),
        (httpx.Response(503, text="<html>busy</html>"), OutcomeKind.RETRY, False),
        (httpx.Response(200, text="not json"), OutcomeKind.SENT, False),
    ],
)
def test_classification_without_an_fcm_error_code(response, kind, drop_token):
    outcome, drop = classify_response(response)
    assert (outcome.kind, drop) == (kind, drop_token)


def test_status_decides_when_error_code_is_missing_for_quota():
    outcome, _ = classify_response(google_error(429, "RESOURCE_EXHAUSTED", **{"Retry-After": "3"}))
    assert outcome.kind is OutcomeKind.RETRY and outcome.retry_after == 60


# --------------------------------------------------------------------------
# lifecycle
# --------------------------------------------------------------------------


def test_close_leaves_no_resource_warning(fcm, app):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = FcmAdapter(2.0, 5.0, base_url=fcm.base_url, max_workers=4, clock=lambda: NOW)
        outcomes = adapter.send_many(app, [delivery() for _ in range(8)])
        adapter.close()
        adapter.close()  # idempotent
        del adapter
        gc.collect()
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 8
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
