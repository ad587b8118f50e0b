"""The APNs adapter against the local APNs stand-in, through pushq's APNs client on the wire client.

No mocks: every push crosses a real TLS + HTTP/2 connection to
``standins.apns.ApnsStandin``, which checks the provider token, the headers and
the payload the way Apple documents them.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.outcomes import MAX_RETRY_AFTER_SECONDS, OutcomeKind
from shared.pipeline.values import ClaimedDelivery
from standins.apns import ApnsStandin
from tests.support.helpers import claimed_delivery
from tests.support.keys import ec_key_pair
from workers.adapters.apns import MAX_PAYLOAD_BYTES, ApnsAdapter
from workers.adapters.base import AppCredentials

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
BUNDLE_ID = "com.example.pushq"


def new_key() -> tuple[str, str]:
    """(private PEM, PKCS8 as in a .p8 file; public PEM)."""
    pair = ec_key_pair()
    return pair.private_pem, pair.public_pem


PRIVATE_PEM, PUBLIC_PEM = new_key()


def device_token() -> str:
    return os.urandom(32).hex()


def credentials(*, sandbox: bool = False, private_pem: str = PRIVATE_PEM, key_id: str = KEY_ID,
                apns: bool = True) -> AppCredentials:
    extra = {"apns_team_id": TEAM_ID, "apns_key_id": key_id, "apns_private_key": private_pem,
                 "apns_bundle_id": BUNDLE_ID, "apns_use_sandbox": sandbox} if apns else {}
    return AppCredentials(app_id=uuid.uuid4(), vapid_private_key="unused", vapid_public_key="unused",
                          vapid_subject="mailto:ops@example.com", **extra)


def delivery(token: str, now: datetime, *, ttl: int = 3600, **fields) -> ClaimedDelivery:
    return claimed_delivery(token, "ios", expires_at=now + timedelta(seconds=ttl), **fields)


def utcnow() -> datetime:
    return datetime.now(UTC)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def socket_fds() -> int:
    """Sockets this process holds open (Linux)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@pytest.fixture(scope="module")
def standin() -> Iterator[ApnsStandin]:
    with ApnsStandin() as server:
        server.register_key(TEAM_ID, KEY_ID, PUBLIC_PEM)
        yield server


@pytest.fixture(autouse=True)
def _fresh(standin: ApnsStandin) -> None:
    standin.reset()


@pytest.fixture
def make_adapter(standin: ApnsStandin) -> Iterator[Callable[..., ApnsAdapter]]:
    made: list[ApnsAdapter] = []

    def make(**kwargs) -> ApnsAdapter:
        options = {"host": "127.0.0.1", "port": standin.port, "ca_file": standin.certificate.ca_path}
        options.update(kwargs)
        adapter = ApnsAdapter(options.pop("connect_timeout", 5.0), options.pop("read_timeout", 10.0), **options)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


@pytest.fixture
def adapter(make_adapter) -> ApnsAdapter:
    return make_adapter()


# ------------------------------------------------------------------ sending
def test_sent_with_apns_id_headers_and_payload(standin, adapter):
    now = utcnow()
    token, plain_token = device_token(), device_token()
    rich = delivery(token, now, ttl=1800, priority="high", collapse_key="news-7", badge=3, sound="ping.caf",
                    data={"order": 42, "tags": ["a", "b"]}, url="https://example.com/o/42", title="Hi ☕")
    plain = delivery(plain_token, now, ttl=60)

    before = int(time.time())
    outcomes = adapter.send_many(credentials(), [rich, plain])
    after = int(time.time())

    assert [o.kind for o in outcomes] == [OutcomeKind.SENT, OutcomeKind.SENT]
    assert outcomes[0].vendor_message_id == str(rich.delivery_id)  # the apns-id APNs answered
    assert outcomes[1].vendor_message_id == str(plain.delivery_id)
    assert not outcomes[0].truncated

    (message,) = standin.messages(token)
    assert message.apns_id == str(rich.delivery_id)
    assert message.topic == BUNDLE_ID
    assert message.push_type == "alert"
    assert message.priority == 10
    assert message.collapse_id == "news-7"
    assert before + 1799 <= message.expiration <= after + 1800
    assert message.payload == {
        "aps": {"alert": {"title": "Hi ☕", "body": "World"}, "badge": 3, "sound": "ping.caf"},
        "data": {"order": 42, "tags": ["a", "b"]},
        "url": "https://example.com/o/42",
    }

    (second,) = standin.messages(plain_token)
    assert second.priority == 5
    assert second.push_type == "alert"
    assert second.collapse_id is None
    assert before + 59 <= second.expiration <= after + 60
    assert second.payload == {"aps": {"alert": {"title": "Hello", "body": "World"}}}  # no empty extras


def test_chunk_of_50_shares_a_connection_and_one_provider_token(standin, adapter):
    now = utcnow()
    tokens = [device_token() for _ in range(50)]
    chunk = [delivery(t, now, body=f"n{i}") for i, t in enumerate(tokens)]

    assert {o.kind for o in adapter.send_many(credentials(), chunk)} == {OutcomeKind.SENT}
    assert standin.connections_accepted <= 2
    assert standin.provider_token_count == 1
    for i, token in enumerate(tokens):
        assert [m.payload["aps"]["alert"]["body"] for m in standin.messages(token)] == [f"n{i}"]

    # The next task reuses the connection and the provider token.
    app = credentials()
    again = [delivery(t, now) for t in tokens[:10]]
    assert {o.kind for o in adapter.send_many(app, again)} == {OutcomeKind.SENT}
    assert standin.connections_accepted <= 3  # another app = another client, one more connection at most
    assert standin.provider_token_count == 2  # one per client, not per connection or request


def test_same_app_reuses_connection_across_calls(standin, adapter):
    app, now = credentials(), utcnow()
    for _ in range(3):
        assert adapter.send_many(app, [delivery(device_token(), now)])[0].kind is OutcomeKind.SENT
    assert standin.connections_accepted == 1
    assert standin.provider_token_count == 1


@pytest.mark.parametrize(("reason", "kind", "words"), [
    ("Unregistered", OutcomeKind.DEAD_TOKEN, "Unregistered"),
    ("ExpiredToken", OutcomeKind.DEAD_TOKEN, "ExpiredToken"),
    ("BadDeviceToken", OutcomeKind.DEAD_TOKEN, "BadDeviceToken (sent to production; a sandbox token?)"),
    ("TooManyRequests", OutcomeKind.RETRY, "TooManyRequests (429)"),
    ("InternalServerError", OutcomeKind.RETRY, "InternalServerError (500)"),
    ("ServiceUnavailable", OutcomeKind.RETRY, "ServiceUnavailable (503)"),
    ("Shutdown", OutcomeKind.RETRY, "Shutdown (503)"),
    ("ExpiredProviderToken", OutcomeKind.RETRY, "ExpiredProviderToken"),
    ("DeviceTokenNotForTopic", OutcomeKind.REJECTED, "DeviceTokenNotForTopic"),
    ("PayloadTooLarge", OutcomeKind.REJECTED, "PayloadTooLarge (413)"),
    ("BadTopic", OutcomeKind.REJECTED, "BadTopic (400)"),
    ("TopicDisallowed", OutcomeKind.REJECTED, "TopicDisallowed (400)"),
    ("InvalidProviderToken", OutcomeKind.REJECTED, "InvalidProviderToken: check the app's APNs key id/team id"),
])
def test_error_reasons_map_to_outcomes(standin, adapter, reason, kind, words):
    now = utcnow()
    token, fine = device_token(), device_token()
    standin.set_behavior(token, reason)

    failed, ok = adapter.send_many(credentials(), [delivery(token, now), delivery(fine, now)])

    assert failed.kind is kind
    assert words in failed.reason
    assert failed.vendor_message_id is None
    assert ok.kind is OutcomeKind.SENT  # one device's error does not touch its neighbours
    assert standin.attempts(token) == 1  # answered once, never re-sent by the client
    assert standin.messages(token) == []


def test_bad_device_token_names_the_sandbox(standin, adapter):
    now, token = utcnow(), device_token()
    standin.set_behavior(token, "BadDeviceToken")
    (outcome,) = adapter.send_many(credentials(sandbox=True), [delivery(token, now)])
    assert outcome.kind is OutcomeKind.DEAD_TOKEN
    assert outcome.reason == "BadDeviceToken (sent to sandbox; a production token?)"


def test_too_many_requests_keeps_retry_after(standin, adapter):
    now, token = utcnow(), device_token()
    standin.set_behavior(token, "TooManyRequests", retry_after=30)
    (outcome,) = adapter.send_many(credentials(), [delivery(token, now)])
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.retry_after == 30.0


def test_hostile_answers_are_cleaned_clamped_and_touch_no_other_push(standin, adapter):
    """Issue 16 item 2: APNs' reason, retry-after and apns-id are the vendor's values: a NUL or a lone
    surrogate in a reason, a retry-after of 300000000000 s or 400 digits, an apns-id that is not UTF-8
    (aioapns decoded it strictly, which killed the connection with every answer in flight on it)."""
    now = utcnow()
    huge, endless, odd_id, long_reason, fine, later = (device_token() for _ in range(6))
    standin.set_behavior(huge, "ServiceUnavailable", retry_after="300000000000")
    standin.set_behavior(endless, "TooManyRequests", retry_after="9" * 400,
                         body=b'{"reason":"TooMany\\u0000Requests\\ud800"}')
    standin.set_behavior(odd_id, None, headers={b"apns-id": b"\xff\xfe"})
    standin.set_behavior(long_reason, "BadTopic", body=b'{"reason":"' + b"\\u0000x" * 5000 + b'"}')
    standin.set_behavior(later, None, delay=0.3)  # answered after the odd apns-id, on the same connection

    outcomes = adapter.send_many(credentials(), [delivery(t, now) for t in (huge, endless, odd_id, long_reason,
                                                                             fine, later)])

    by_token = dict(zip((huge, endless, odd_id, long_reason, fine, later), outcomes))
    assert by_token[huge].kind is OutcomeKind.RETRY and by_token[huge].retry_after == MAX_RETRY_AFTER_SECONDS
    assert by_token[endless].kind is OutcomeKind.RETRY and by_token[endless].retry_after == MAX_RETRY_AFTER_SECONDS
    assert by_token[endless].reason == "APNs TooManyRequests\ufffd (429)"
    assert by_token[long_reason].kind is OutcomeKind.REJECTED and len(by_token[long_reason].reason) <= 1000
    assert by_token[odd_id].kind is OutcomeKind.RETRY  # an answer naming no request of ours
    for outcome in outcomes:
        assert "\x00" not in (outcome.reason or "")
        (outcome.reason or "").encode("utf-8")  # storable as it is
    assert by_token[fine].kind is OutcomeKind.SENT and by_token[later].kind is OutcomeKind.SENT
    assert (len(standin.messages(fine)), len(standin.messages(later))) == (1, 1)


def test_key_the_standin_does_not_trust_is_rejected(standin, adapter):
    now, token = utcnow(), device_token()
    stranger_pem, _ = new_key()
    for app in (credentials(private_pem=stranger_pem), credentials(private_pem=stranger_pem, key_id="OTHERKEY01")):
        (outcome,) = adapter.send_many(app, [delivery(token, now)])
        assert outcome.kind is OutcomeKind.REJECTED
        assert outcome.reason == "InvalidProviderToken: check the app's APNs key id/team id"
    assert standin.messages(token) == []


def test_a_key_that_is_not_ec_p256_pem_is_rejected_without_connecting(standin, adapter):
    now = utcnow()
    for pem in ("not a key", PUBLIC_PEM):
        (outcome,) = adapter.send_many(credentials(private_pem=pem), [delivery(device_token(), now)])
        assert outcome.kind is OutcomeKind.REJECTED
        assert "EC P-256" in outcome.reason
    assert standin.connections_accepted == 0


def test_app_without_apns_credentials_is_rejected(standin, adapter):
    now = utcnow()
    outcomes = adapter.send_many(credentials(apns=False), [delivery(device_token(), now) for _ in range(3)])
    assert [(o.kind, o.reason) for o in outcomes] == [(OutcomeKind.REJECTED, "app has no APNs credentials")] * 3
    assert standin.connections_accepted == 0
    assert adapter.send_many(credentials(), []) == []


# ----------------------------------------------------------------- payload size
def test_oversize_body_is_truncated_to_fit(standin, adapter):
    now, token = utcnow(), device_token()
    body = "Lorem ipsum dolor sit amet, é ☕ " * 300  # ~10 KB of UTF-8
    (outcome,) = adapter.send_many(credentials(), [delivery(token, now, body=body, data={"k": "v"})])

    assert outcome.kind is OutcomeKind.SENT
    assert outcome.truncated
    (message,) = standin.messages(token)  # the stand-in parsed it and found it within 4096 bytes
    sent_body = message.payload["aps"]["alert"]["body"]
    assert sent_body.endswith("…")
    assert body.startswith(sent_body[:-1].rstrip())
    assert len(json.dumps(message.payload, separators=(",", ":"), ensure_ascii=False).encode()) <= MAX_PAYLOAD_BYTES
    assert message.payload["data"] == {"k": "v"}  # data is never cut


@pytest.mark.parametrize("fields", [
    {"title": "T" * 5000},
    {"data": {"blob": "d" * 5000}},
])
def test_too_big_even_with_an_empty_body_is_rejected(standin, adapter, fields):
    now, token = utcnow(), device_token()
    (outcome,) = adapter.send_many(credentials(), [delivery(token, now, **fields)])
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason.startswith("payload too large for APNs")
    assert standin.attempts(token) == 0


# ------------------------------------------------------------ timeouts, failures
# The timeouts below are under a second and what they cut would last an hour (or for ever): a bound
# far above the timeouts and far below the stall tells the two apart on a loaded 2-core machine too.
STALL_BOUND = 20.0


def test_stalled_stream_times_out_and_the_adapter_recovers(standin, make_adapter):
    adapter = make_adapter(connect_timeout=0.5, read_timeout=0.5)
    app, now = credentials(), utcnow()
    stalled = device_token()
    standin.set_behavior(stalled, None, delay=3600)

    started = time.monotonic()
    (outcome,) = adapter.send_many(app, [delivery(stalled, now)])
    assert time.monotonic() - started < STALL_BOUND  # the stream stalls for an hour: the timeout ended it
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.reason == "APNs timed out"

    fine = device_token()
    (outcome,) = adapter.send_many(app, [delivery(fine, now)])
    assert outcome.kind is OutcomeKind.SENT
    assert len(standin.messages(fine)) == 1
    assert standin.messages(stalled) == []


def test_a_standin_stalling_every_stream_cannot_hold_the_worker(standin, make_adapter):
    adapter = make_adapter(connect_timeout=0.5, read_timeout=0.5)
    app, now = credentials(), utcnow()
    standin.set_behavior("*", None, delay=3600)

    started = time.monotonic()
    outcomes = adapter.send_many(app, [delivery(device_token(), now) for _ in range(20)])
    assert time.monotonic() - started < STALL_BOUND  # the streams stall for an hour: the timeouts ended them
    assert {o.kind for o in outcomes} == {OutcomeKind.RETRY}
    # every stream timed out, or its silent connection was dropped meanwhile
    assert {o.reason for o in outcomes} <= {"APNs timed out", "connection lost"}

    standin.clear_behavior("*")
    assert adapter.send_many(app, [delivery(device_token(), now)])[0].kind is OutcomeKind.SENT


def test_connecting_is_bounded_by_connect_timeout(make_adapter):
    """A server that accepts TCP but never answers the TLS handshake."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        adapter = make_adapter(port=silent.getsockname()[1], connect_timeout=0.3, read_timeout=0.3)
        now = utcnow()
        started = time.monotonic()
        outcomes = adapter.send_many(credentials(), [delivery(device_token(), now) for _ in range(3)])
        assert time.monotonic() - started < STALL_BOUND  # the handshake never ends: the connect timeout did
        assert [(o.kind, o.reason) for o in outcomes] == [(OutcomeKind.RETRY, "timed out connecting to APNs")] * 3
        adapter.close()


def test_refused_and_untrusted_connections_are_retried(standin, make_adapter):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        closed_port = placeholder.getsockname()[1]
    now = utcnow()
    (refused,) = make_adapter(port=closed_port).send_many(credentials(), [delivery(device_token(), now)])
    assert refused.kind is OutcomeKind.RETRY
    assert refused.reason.startswith("cannot connect to APNs")

    # Without the stand-in's CA the certificate is not trusted.
    (untrusted,) = make_adapter(ca_file=None).send_many(credentials(), [delivery(device_token(), now)])
    assert untrusted.kind is OutcomeKind.RETRY
    assert "SSLCertVerificationError" in untrusted.reason


# Late answers, DATA acknowledgement, no re-sends, shared provider tokens, silent connections
# and waiting for streams are tested on the APNs client: tests/unit/test_apns_client.py.


# ----------------------------------------------------------------------- close
def test_close_leaves_no_open_sockets_and_can_start_again(standin):
    before = socket_fds()
    adapter = ApnsAdapter(host="127.0.0.1", port=standin.port, ca_file=standin.certificate.ca_path)
    now = utcnow()
    for sandbox in (False, True):  # two clients, two connections
        assert adapter.send_many(credentials(sandbox=sandbox), [delivery(device_token(), now)])[0].kind \
            is OutcomeKind.SENT
    assert standin.connections_accepted == 2
    thread = adapter.client.loop_thread
    assert thread is not None and thread.is_alive()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter.close()
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert not thread.is_alive()
    wait_until(lambda: socket_fds() <= before)  # the stand-in's ends close too

    # close() is idempotent, and the adapter starts afresh when used again
    adapter.close()
    assert adapter.send_many(credentials(), [delivery(device_token(), now)])[0].kind is OutcomeKind.SENT
    adapter.close()
    wait_until(lambda: socket_fds() <= before)
