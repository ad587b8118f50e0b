"""The Web Push adapter against a misbehaving push service on loopback (real sockets, real HTTP).

The local stand-in (standins/webpush.py) checks the protocol; this module checks
what a hostile or broken service can do to a worker: redirects, answers without
end, one byte per second, nonsense headers. Every push ends as its own outcome,
within the push deadline, and the chunk's other pushes are recorded normally.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.outcomes import MAX_RETRY_AFTER_SECONDS, OutcomeKind
from shared.vapid import generate_vapid_key_pair
from tests.support.helpers import claimed_delivery
from workers.adapters.base import AppCredentials, parse_retry_after
from workers.adapters.webpush import WebPushAdapter


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class HostileService:
    """Answers each path its own way; records what arrived."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with service.lock:
                    service.requests.append((self.path, dict(self.headers)))
                kind = self.path.strip("/").split("/")[0]
                if kind == "ok":
                    self._answer(201, {"Location": f"https://push.example/m/{uuid.uuid4()}"})
                elif kind == "redirect":
                    self._answer(302, {"Location": f"{service.other_url}/ok/elsewhere"})
                elif kind == "odd-retry-after":
                    self._answer(503, {"Retry-After": "²"})
                elif kind == "huge-retry-after":
                    self._answer(503, {"Retry-After": "300000000000"})
                elif kind == "endless-retry-after":
                    self._answer(429, {"Retry-After": "9" * 400})
                elif kind == "far-retry-after":
                    self._answer(503, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})
                elif kind == "not-utf8-location":  # send_header writes latin-1: "\xff" is one byte on the wire
                    self._answer(201, {"Location": "https://push.example/m/\xff\xfe" + "x" * 1000})
                elif kind == "endless":
                    self.send_response(201)
                    self.send_header("Content-Length", str(10**9))
                    self.end_headers()
                    try:
                        while True:
                            self.wfile.write(b"x" * 65536)
                    except OSError:
                        pass
                elif kind == "tarpit":
                    try:
                        for byte in b"HTTP/1.1 201 Created\r\n":
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(1)
                    except OSError:
                        pass
                    self.close_connection = True

            def _answer(self, status: int, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.other = socket.socket()
        self.other.bind(("127.0.0.1", 0))
        self.other.listen(8)
        self.other.settimeout(0.2)
        self.other_url = f"http://127.0.0.1:{self.other.getsockname()[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def other_was_contacted(self) -> bool:
        try:
            connection, _ = self.other.accept()
        except TimeoutError:
            return False
        connection.close()
        return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.other.close()


@pytest.fixture(scope="module")
def service() -> Iterator[HostileService]:
    hostile = HostileService()
    yield hostile
    hostile.close()


@pytest.fixture(scope="module")
def app() -> AppCredentials:
    keys = generate_vapid_key_pair()
    return AppCredentials(app_id=uuid.uuid4(), vapid_private_key=keys.private_pem, vapid_public_key=keys.public_key,
                          vapid_subject="mailto:ops@example.com")


def subscription(url: str) -> str:
    receiver = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = receiver.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return json.dumps({"endpoint": url, "keys": {"p256dh": b64(point), "auth": b64(os.urandom(16))}})


def delivery(url: str, ttl: int = 3600, now: datetime | None = None):
    now = now or datetime.now(UTC)
    return claimed_delivery(subscription(url), "web", expires_at=now + timedelta(seconds=ttl))


@pytest.fixture
def adapter() -> Iterator[WebPushAdapter]:
    adapter = WebPushAdapter(connect_timeout=1.0, deadline=2.0, concurrency=8, allow_http_loopback=True)
    yield adapter
    adapter.close()


def test_a_redirect_is_an_outcome_and_is_never_followed(service, app, adapter):
    redirected, fine = adapter.send_many(app, [delivery(f"{service.url}/redirect/1"), delivery(f"{service.url}/ok/1")])
    assert redirected.kind is OutcomeKind.REJECTED
    assert redirected.reason == "push service answered 302"
    assert redirected.vendor_message_id is None
    assert fine.kind is OutcomeKind.SENT and fine.vendor_message_id.startswith("https://push.example/m/")
    assert not service.other_was_contacted()


def test_a_malformed_retry_after_is_a_retry_not_an_exception(service, app, adapter):
    assert parse_retry_after("²") is None
    odd, fine = adapter.send_many(app, [delivery(f"{service.url}/odd-retry-after/1"), delivery(f"{service.url}/ok/2")])
    assert odd.kind is OutcomeKind.RETRY and odd.retry_after is None
    assert fine.kind is OutcomeKind.SENT


def test_hostile_retry_after_and_location_values_are_clamped_and_cleaned(service, app, adapter):
    """Issue 16 item 2: a Retry-After of 300000000000 or of 400 digits, or a Location that is not
    UTF-8, reached the outcome write as they were (an OverflowError, a lone surrogate PostgreSQL
    refuses) and sank the chunk."""
    huge, endless, far, location, fine = adapter.send_many(app, [
        delivery(f"{service.url}/huge-retry-after/1"), delivery(f"{service.url}/endless-retry-after/1"),
        delivery(f"{service.url}/far-retry-after/1"), delivery(f"{service.url}/not-utf8-location/1"),
        delivery(f"{service.url}/ok/5"),
    ])
    for outcome in (huge, endless, far):
        assert outcome.kind is OutcomeKind.RETRY and outcome.retry_after == MAX_RETRY_AFTER_SECONDS
    assert location.kind is OutcomeKind.SENT
    message_id = location.vendor_message_id
    assert message_id.startswith("https://push.example/m/\ufffd") and len(message_id) <= 512
    assert not any("\ud800" <= c <= "\udfff" for c in message_id)
    message_id.encode("utf-8")  # storable as it is
    assert fine.kind is OutcomeKind.SENT


def test_an_answer_without_end_is_read_only_up_to_a_bound(service, app, adapter):
    (outcome,) = adapter.send_many(app, [delivery(f"{service.url}/endless/1")])
    # The status line and headers said 201: SENT, not the deadline's RETRY an endless read would end in.
    assert outcome.kind is OutcomeKind.SENT


def test_a_tarpit_is_cut_off_at_the_push_deadline(service, app, adapter):
    started = time.monotonic()
    slow, fine = adapter.send_many(app, [delivery(f"{service.url}/tarpit/1"), delivery(f"{service.url}/ok/3")])
    elapsed = time.monotonic() - started
    assert slow.kind is OutcomeKind.RETRY and slow.reason == "push service timed out"
    assert fine.kind is OutcomeKind.SENT
    # The deadline is 2 s for the whole push, though bytes keep arriving (the tarpit's answer takes 22 s):
    # cut at the deadline, with a margin a loaded machine keeps.
    assert 1.9 < elapsed < 15.0


def test_a_broken_subscription_is_its_own_outcome(service, app, adapter):
    broken = claimed_delivery("{not json", "web", expires_at=datetime.now(UTC) + timedelta(hours=1))
    bad, fine = adapter.send_many(app, [broken, delivery(f"{service.url}/ok/4")])
    assert bad.kind is OutcomeKind.REJECTED and "cannot encrypt" in bad.reason
    assert fine.kind is OutcomeKind.SENT


def test_the_remaining_ttl_is_computed_at_each_push(service, app):
    start = datetime.now(UTC)
    ticks = iter(range(0, 1000, 100))
    adapter = WebPushAdapter(connect_timeout=1.0, deadline=2.0, concurrency=1, allow_http_loopback=True,
                             clock=lambda: start + timedelta(seconds=next(ticks)))
    try:
        marker = uuid.uuid4().hex
        outcomes = adapter.send_many(app, [delivery(f"{service.url}/ok/{marker}", ttl=3600, now=start) for _ in range(3)])
    finally:
        adapter.close()
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    ttls = sorted(int(headers["TTL"]) for path, headers in service.requests if marker in path)
    assert ttls == [3400, 3500, 3600]


def requests_to(service: HostileService, marker: str) -> int:
    return sum(1 for path, _ in service.requests if marker in path)


def test_a_stored_endpoint_the_egress_rules_refuse_is_never_contacted(service, app):
    """A device stored before the rules (or under a host since removed) ends rejected and disabled."""
    strict = WebPushAdapter(connect_timeout=1.0, deadline=2.0)  # production: no http, no loopback
    marker = uuid.uuid4().hex
    try:
        (outcome,) = strict.send_many(app, [delivery(f"{service.url}/ok/{marker}")])
    finally:
        strict.close()
    assert outcome.kind is OutcomeKind.REJECTED and outcome.disable_device
    assert outcome.reason == "endpoint refused by the egress rules: endpoint must be an https URL"
    assert requests_to(service, marker) == 0


@pytest.fixture
def loopback_https_listener() -> Iterator[socket.socket]:
    """Something listening where https://localhost/ would connect, to see whether anything does."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 443))  # the suite runs as root, as CI does
    listener.listen(8)
    listener.settimeout(0.3)
    yield listener
    listener.close()


def test_an_allowed_host_resolving_to_loopback_is_refused_at_connect_time(app, loopback_https_listener):
    """DNS rebinding: the name passes the allowlist, the address it resolves to does not."""
    adapter = WebPushAdapter(connect_timeout=1.0, deadline=2.0, extra_hosts=("localhost",))
    try:
        (outcome,) = adapter.send_many(app, [delivery("https://localhost/push/abc")])
    finally:
        adapter.close()
    # A retry, never a dead device: the name passed the rules, only today's DNS answer points inside.
    assert outcome.kind is OutcomeKind.RETRY and not outcome.disable_device
    assert outcome.reason == "egress refused at connect: the push service host resolved to no public address"
    with pytest.raises((TimeoutError, socket.timeout)):
        loopback_https_listener.accept()
