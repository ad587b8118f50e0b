"""The APNs stand-in, driven by the real client pushq uses (aioapns 4.0, token auth),
by httpx over HTTP/2 for requests aioapns cannot make, and by a bare h2 client
for the HTTP/2 mechanics (settings, PING, flow control, GOAWAY).

Self-contained: the fixtures are defined here. Every event loop is made and
closed by ``asyncio.run``; every aioapns client is closed and its connections
waited for, so ``-W error`` sees no unclosed transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h2.events
import httpx
import jwt
import pytest
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsDevelopmentClientProtocol
from aioapns.exceptions import MaxAttemptsExceeded
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings

from standins.apns import ApnsMessage, ApnsStandin, main
from standins.tls import client_ssl_context, make_test_certificate

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
TOPIC = "com.example.app"


def _new_key() -> tuple[str, str]:
    """(private PEM as aioapns wants it, public PEM for register_key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private_pem, public_pem


PRIVATE_PEM, PUBLIC_PEM = _new_key()


def device_token() -> str:
    return os.urandom(32).hex()


def provider_token(private_pem: str = PRIVATE_PEM, *, iat: int | None = None,
                   key_id: str = KEY_ID, team_id: str = TEAM_ID) -> str:
    issued = int(time.time()) if iat is None else iat
    return jwt.encode({"iss": team_id, "iat": issued}, private_pem, algorithm="ES256",
                      headers={"kid": key_id})


@pytest.fixture(scope="module")
def standin():
    with ApnsStandin() as server:
        server.register_key(TEAM_ID, KEY_ID, PUBLIC_PEM)
        yield server


@pytest.fixture(autouse=True)
def _fresh(request):
    if "standin" in request.fixturenames:
        request.getfixturevalue("standin").reset()
    return


# ----------------------------------------------------------------- aioapns
@contextlib.asynccontextmanager
async def apns_client(server: ApnsStandin, *, key_pem: str = PRIVATE_PEM, key_id: str = KEY_ID,
                      team_id: str = TEAM_ID, host: str = "127.0.0.1",
                      ssl_context: ssl.SSLContext | None = None, **kwargs):
    """An aioapns client pointed at ``server``: the pattern pushq's adapter uses."""
    client = APNs(
        key=key_pem,
        key_id=key_id,
        team_id=team_id,
        topic=TOPIC,
        use_sandbox=True,
        # trusts the stand-in's CA and asks for ALPN h2 (aioapns does not)
        ssl_context=ssl_context or client_ssl_context(server.certificate),
        **kwargs,
    )

    class StandinProtocol(APNsDevelopmentClientProtocol):
        APNS_SERVER = host
        APNS_PORT = server.port

    client.pool.protocol_class = StandinProtocol
    try:
        yield client
    finally:
        client.pool.close()
        # connection_lost removes each connection from the pool: wait for it, so
        # the sockets are closed before asyncio.run closes the loop.
        deadline = time.monotonic() + 5
        while client.pool.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not client.pool.connections


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def test_send_is_accepted_and_recorded(standin):
    token = device_token()
    notification_id = str(uuid.uuid4())

    async def scenario():
        async with apns_client(standin) as client:
            before = int(time.time())
            result = await client.send_notification(NotificationRequest(
                device_token=token,
                message={"aps": {"alert": {"title": "Hi", "body": "there"}, "badge": 3}, "k": "v"},
                notification_id=notification_id,
                time_to_live=3600,
                priority=10,
                collapse_key="news-1",
                push_type=PushType.ALERT,
            ))
            plain = await client.send_notification(
                NotificationRequest(device_token=token, message={"aps": {"content-available": 1}}))
            return before, result, plain

    before, result, plain = asyncio.run(scenario())

    assert result.is_successful
    assert result.status == "200"
    assert result.description is None
    assert result.notification_id == notification_id  # the apns-id echoed back
    assert plain.is_successful

    first, second = standin.messages(token)
    assert isinstance(first, ApnsMessage)
    assert first.apns_id == notification_id
    assert first.device_token == token
    assert first.topic == TOPIC
    assert first.push_type == "alert"
    assert first.priority == 10
    assert before + 3600 <= first.expiration <= int(time.time()) + 3600
    assert first.collapse_id == "news-1"
    assert first.payload == {"aps": {"alert": {"title": "Hi", "body": "there"}, "badge": 3}, "k": "v"}
    assert first.received_at <= second.received_at
    # aioapns sends no optional header unless asked
    assert (second.push_type, second.priority, second.expiration, second.collapse_id) == (None, None, None, None)
    assert second.apns_id == plain.notification_id
    assert standin.attempts(token) == 2
    assert standin.messages(device_token()) == []


def test_localhost_name_works_too(standin):
    token = device_token()

    async def scenario():
        async with apns_client(standin, host="localhost") as client:
            return await client.send_notification(
                NotificationRequest(device_token=token, message={"aps": {"alert": "x"}}))

    assert asyncio.run(scenario()).is_successful
    assert len(standin.messages(token)) == 1


def test_client_context_without_alpn_h2_is_refused(standin):
    """aioapns does not set ALPN; with a context that lacks it the stand-in
    closes each connection and aioapns gives up with MaxAttemptsExceeded."""
    no_alpn = ssl.create_default_context(cafile=standin.certificate.ca_path)

    async def scenario():
        async with apns_client(standin, ssl_context=no_alpn, max_connection_attempts=2) as client:
            with pytest.raises(MaxAttemptsExceeded):
                await asyncio.wait_for(client.send_notification(
                    NotificationRequest(device_token=device_token(), message={"aps": {}})), 10)

    asyncio.run(scenario())
    assert standin.connections_accepted == 2


def test_concurrent_sends_share_one_connection_and_one_provider_token(standin):
    tokens = [device_token() for _ in range(50)]

    async def scenario():
        async with apns_client(standin) as client:
            return await asyncio.gather(*(
                client.send_notification(NotificationRequest(
                    device_token=t, message={"aps": {"alert": f"n{i}"}}))
                for i, t in enumerate(tokens)))

    results = asyncio.run(scenario())
    assert all(r.is_successful for r in results)
    assert standin.connections_accepted <= 2
    assert standin.provider_token_count == 1
    assert len(standin.provider_tokens_seen) == 1
    for i, t in enumerate(tokens):
        assert [m.payload["aps"]["alert"] for m in standin.messages(t)] == [f"n{i}"]
    assert len(standin.messages()) == 50


def test_request_bodies_beyond_the_initial_window_are_acknowledged(standin):
    """30 pushes of ~4 KB on one connection exceed the client's 64 KiB send
    window: they only go through if the stand-in sends WINDOW_UPDATEs."""
    token = device_token()
    filler = "x" * 3900

    async def scenario():
        async with apns_client(standin) as client:
            return await asyncio.gather(*(
                client.send_notification(NotificationRequest(
                    device_token=token, message={"aps": {"alert": "big"}, "f": filler, "i": i}))
                for i in range(30)))

    assert all(r.is_successful for r in asyncio.run(scenario()))
    assert standin.connections_accepted == 1
    assert sorted(m.payload["i"] for m in standin.messages(token)) == list(range(30))


def test_unregistered_key_is_refused(standin):
    token = device_token()
    stranger_pem, _ = _new_key()
    standin.set_behavior(token, None)  # a configured behaviour never bypasses auth

    async def scenario():
        async with apns_client(standin, key_pem=stranger_pem, key_id="OTHERKEY01") as c1:
            unknown_key = await c1.send_notification(
                NotificationRequest(device_token=token, message={"aps": {"alert": "x"}}))
        # the registered key id, but signed by another key: bad signature
        async with apns_client(standin, key_pem=stranger_pem) as c2:
            bad_signature = await c2.send_notification(
                NotificationRequest(device_token=token, message={"aps": {"alert": "x"}}))
        async with apns_client(standin, team_id="OTHERTEAM1") as c3:
            wrong_team = await c3.send_notification(
                NotificationRequest(device_token=token, message={"aps": {"alert": "x"}}))
        return unknown_key, bad_signature, wrong_team

    for result in asyncio.run(scenario()):
        assert not result.is_successful
        assert result.status == "403"
        assert result.description == "InvalidProviderToken"
    assert standin.messages(token) == []
    assert standin.attempts(token) == 3


def test_bad_token_is_refused_before_the_configured_behavior(standin):
    token = device_token()
    stranger_pem, _ = _new_key()
    standin.set_behavior(token, "Unregistered")

    async def scenario():
        async with apns_client(standin, key_pem=stranger_pem, key_id="OTHERKEY01") as client:
            return await client.send_notification(
                NotificationRequest(device_token=token, message={"aps": {"alert": "x"}}))

    result = asyncio.run(scenario())
    assert (result.status, result.description) == ("403", "InvalidProviderToken")


REASONS = [
    ("BadDeviceToken", "400"),
    ("Unregistered", "410"),
    ("TooManyRequests", "429"),
    ("InternalServerError", "500"),
    ("ServiceUnavailable", "503"),
    ("PayloadTooLarge", "413"),
    ("DeviceTokenNotForTopic", "400"),
]


@pytest.mark.parametrize(("reason", "status"), REASONS)
def test_configured_reason_once_then_normal(standin, reason, status):
    token = device_token()
    standin.set_behavior(token, reason, times=1)

    async def scenario():
        async with apns_client(standin) as client:
            first = await client.send_notification(
                NotificationRequest(device_token=token, message={"aps": {"alert": "1"}}))
            second = await client.send_notification(
                NotificationRequest(device_token=token, message={"aps": {"alert": "2"}}))
            return first, second

    before_ms = int(time.time() * 1000)
    first, second = asyncio.run(scenario())
    assert not first.is_successful
    assert first.status == status
    assert first.description == reason
    if status == "410":
        assert isinstance(first.timestamp, int)
        assert abs(first.timestamp - before_ms) < 60_000
    else:
        assert first.timestamp is None
    assert second.is_successful
    assert [m.payload["aps"]["alert"] for m in standin.messages(token)] == ["2"]
    assert standin.attempts(token) == 2


def test_behavior_without_times_persists_and_star_applies_to_every_token(standin):
    sticky, other = device_token(), device_token()
    standin.set_behavior(sticky, "Unregistered")
    standin.set_behavior("*", "ServiceUnavailable", times=2)

    async def scenario():
        async with apns_client(standin) as client:
            out = []
            for t in (sticky, sticky, other, other, other):
                r = await client.send_notification(
                    NotificationRequest(device_token=t, message={"aps": {}}))
                out.append(r.description or r.status)
            return out

    assert asyncio.run(scenario()) == ["Unregistered", "Unregistered",
                                       "ServiceUnavailable", "ServiceUnavailable", "200"]
    standin.reset()
    assert standin.attempts(sticky) == 0 and standin.messages() == []


def test_stalled_stream_does_not_block_other_streams(standin):
    slow, fast = device_token(), device_token()
    standin.set_behavior(slow, None, delay=1.0, times=1)

    async def scenario():
        async with apns_client(standin) as client:
            stalled = asyncio.ensure_future(client.send_notification(
                NotificationRequest(device_token=slow, message={"aps": {"alert": "slow"}})))
            await wait_until(lambda: standin.attempts(slow) == 1)
            other = await client.send_notification(
                NotificationRequest(device_token=fast, message={"aps": {"alert": "fast"}}))
            stalled_was_pending = not stalled.done()
            recorded_meanwhile = standin.messages(slow)
            return other, stalled_was_pending, recorded_meanwhile, await stalled

    other, stalled_was_pending, recorded_meanwhile, stalled_result = asyncio.run(scenario())
    assert other.is_successful
    assert stalled_was_pending
    assert recorded_meanwhile == []
    assert stalled_result.is_successful  # answered once the delay was over
    assert standin.connections_accepted == 1  # both streams on the same connection
    assert len(standin.messages(slow)) == 1


def test_client_timeout_on_a_stall_and_what_a_late_answer_does(standin):
    """aioapns has no timeout of its own: a stalled stream waits until the caller
    gives up (asyncio.wait_for -> TimeoutError). When the answer comes late,
    aioapns 4.0 calls set_result on the cancelled future, the InvalidStateError
    kills that connection (asyncio logs "Fatal error on SSL protocol") and the
    next push opens a new connection. pushq's adapter must expect this."""
    token, warm_up = device_token(), device_token()

    async def scenario():
        async with apns_client(standin) as client:
            # open the connection first, so the timeout below runs on a sent request
            assert (await client.send_notification(
                NotificationRequest(device_token=warm_up, message={"aps": {}}))).is_successful
            standin.set_behavior(token, None, delay=0.5, times=1)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.send_notification(
                    NotificationRequest(device_token=token, message={"aps": {}})), 0.1)
            assert standin.attempts(token) == 1
            await wait_until(lambda: len(standin.messages(token)) == 1)  # the late 200
            await wait_until(lambda: not client.pool.connections)
            return await client.send_notification(
                NotificationRequest(device_token=token, message={"aps": {}}))

    assert asyncio.run(scenario()).is_successful
    assert standin.connections_accepted == 2
    assert len(standin.messages(token)) == 2


def test_full_stall_ends_when_the_server_stops():
    """delay=3600 holds the stream; stop() still returns at once, and aioapns
    reports the dropped connection (after max_connection_attempts) as
    MaxAttemptsExceeded."""
    server = ApnsStandin().start()
    server.register_key(TEAM_ID, KEY_ID, PUBLIC_PEM)
    token = device_token()
    server.set_behavior(token, None, delay=3600)

    async def scenario():
        async with apns_client(server, max_connection_attempts=1) as client:
            pending = asyncio.ensure_future(client.send_notification(
                NotificationRequest(device_token=token, message={"aps": {}})))
            await wait_until(lambda: server.attempts(token) == 1)
            started = time.monotonic()
            await asyncio.to_thread(server.stop)
            stop_took = time.monotonic() - started
            with pytest.raises(MaxAttemptsExceeded):
                await asyncio.wait_for(pending, 30)
            return stop_took

    try:
        assert asyncio.run(scenario()) < 30  # the stream stalls for an hour: stop did not wait for it
    finally:
        server.stop()
    server.stop()  # idempotent
    assert server.messages(token) == []
    assert not os.path.exists(server.certificate.ca_path)  # its own temp certificate is gone


# ---------------------------------------------------------------- httpx h2
@pytest.fixture(scope="module")
def http(standin):
    with httpx.Client(http2=True, verify=client_ssl_context(standin.certificate),
                      base_url=standin.url, timeout=5) as client:
        yield client


def post(http: httpx.Client, token: str, *, payload: object = None, content: bytes | None = None,
         auth: str | None = None, **headers: str) -> httpx.Response:
    all_headers = {"apns-topic": TOPIC}
    all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    all_headers = {k: v for k, v in all_headers.items() if v is not None}
    all_headers["authorization"] = auth if auth is not None else f"bearer {provider_token()}"
    if content is None:
        content = json.dumps({"aps": {"alert": "x"}} if payload is None else payload).encode()
    return http.post(f"/3/device/{token}", content=content, headers=all_headers)


def test_httpx_success_generates_upper_case_apns_id(standin, http):
    token = device_token()
    response = post(http, token, apns_priority="5", apns_push_type="background",
                    payload={"aps": {"content-available": 1}})
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.content == b""
    apns_id = response.headers["apns-id"]
    assert apns_id == apns_id.upper() and uuid.UUID(apns_id)
    (message,) = standin.messages(token)
    assert message.apns_id == apns_id
    assert (message.push_type, message.priority) == ("background", 5)


@pytest.mark.parametrize(("kwargs", "status", "reason"), [
    ({"apns_topic": None}, 400, "MissingTopic"),
    ({"apns_priority": "7"}, 400, "BadPriority"),
    ({"apns_priority": "high"}, 400, "BadPriority"),
    ({"apns_push_type": "background", "apns_priority": "10"}, 400, "BadPriority"),
    ({"apns_push_type": "carrier-pigeon"}, 400, "InvalidPushType"),
    ({"apns_push_type": "background", "apns_priority": "5"}, 400, "InvalidPushType"),  # aps has an alert
    ({"apns_push_type": "background", "apns_priority": "5",
      "payload": {"aps": {"content-available": 1, "badge": 1}}}, 400, "InvalidPushType"),
    ({"apns_push_type": "background", "apns_priority": "5",
      "payload": {"aps": {"content-available": 1, "sound": "x"}}}, 400, "InvalidPushType"),
    ({"apns_push_type": "background", "apns_priority": "5", "payload": {"aps": {}, "data": {}}}, 400,
     "InvalidPushType"),
    ({"apns_expiration": "tomorrow"}, 400, "BadExpirationDate"),
    ({"apns_collapse_id": "c" * 65}, 400, "BadCollapseId"),
    ({"apns_id": "not-a-uuid"}, 400, "BadMessageId"),
    ({"content": b""}, 400, "PayloadEmpty"),
    ({"content": b"{not json"}, 400, "BadPayload"),
    ({"payload": ["a", "list"]}, 400, "BadPayload"),
    ({"payload": {"aps": {}, "pad": "p" * 4100}}, 413, "PayloadTooLarge"),
    ({"auth": ""}, 403, "MissingProviderToken"),
    ({"auth": "bearer not.a.jwt"}, 403, "InvalidProviderToken"),
    ({"auth": "basic abc"}, 403, "InvalidProviderToken"),
    ({"auth": "expired"}, 403, "ExpiredProviderToken"),
])
def test_httpx_refusals(standin, http, kwargs, status, reason):
    token = device_token()
    if kwargs.get("auth") == "expired":
        kwargs = {"auth": f"bearer {provider_token(iat=int(time.time()) - 61 * 60)}"}
    response = post(http, token, **kwargs)
    assert response.status_code == status
    assert response.json() == {"reason": reason}
    assert response.headers["apns-id"]
    assert standin.messages(token) == []
    assert standin.attempts(token) == 1


def test_httpx_payload_limits(standin, http):
    token = device_token()
    exactly = {"aps": {}, "pad": ""}
    exactly["pad"] = "p" * (4096 - len(json.dumps(exactly).encode()))
    assert len(json.dumps(exactly).encode()) == 4096
    assert post(http, token, payload=exactly).status_code == 200
    voip = {"aps": {}, "pad": "v" * 5000}
    assert post(http, token, payload=voip, apns_push_type="voip").status_code == 200
    assert post(http, token, payload=voip, apns_push_type="alert").status_code == 413


def test_httpx_echoes_apns_id_on_errors(standin, http):
    token = device_token()
    given = str(uuid.uuid4())
    standin.set_behavior(token, "TooManyRequests", retry_after=30)
    response = post(http, token, apns_id=given)
    assert response.status_code == 429
    assert response.headers["apns-id"] == given
    assert response.headers["retry-after"] == "30"
    assert response.json() == {"reason": "TooManyRequests"}


@pytest.mark.parametrize(("method", "path", "status", "reason"), [
    ("GET", "/3/device/{token}", 405, "MethodNotAllowed"),
    ("PUT", "/3/device/{token}", 405, "MethodNotAllowed"),
    ("POST", "/3/devices/{token}", 404, "BadPath"),
    ("POST", "/", 404, "BadPath"),
    ("POST", "/3/device/", 400, "MissingDeviceToken"),
    ("POST", "/3/device/not-hex-at-all", 400, "BadDeviceToken"),
])
def test_httpx_bad_method_path_and_token(http, method, path, status, reason):
    headers = {"apns-topic": TOPIC, "authorization": f"bearer {provider_token()}"}
    response = http.request(method, path.format(token=device_token()), headers=headers,
                            content=b'{"aps":{}}' if method != "GET" else None)
    assert response.status_code == status
    assert response.json() == {"reason": reason}


def test_provider_token_expiry_is_checked_on_every_request(standin, http):
    """An ``iat`` 59 minutes old is still fine (no ``exp`` claim needed)."""
    token = device_token()
    fresh_enough = provider_token(iat=int(time.time()) - 59 * 60)
    assert post(http, token, auth=f"bearer {fresh_enough}").status_code == 200
    future = provider_token(iat=int(time.time()) + 3600)
    response = post(http, token, auth=f"bearer {future}")
    assert (response.status_code, response.json()) == (403, {"reason": "InvalidProviderToken"})


# ------------------------------------------------------------------ bare h2
class RawH2:
    """A minimal blocking HTTP/2 client, for what httpx/aioapns do not expose."""

    def __init__(self, server: ApnsStandin, settings: dict | None = None) -> None:
        ctx = client_ssl_context(server.certificate)
        raw = socket.create_connection((server.host, server.port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname=server.host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        if settings:
            self.conn.local_settings = Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.flush()
        self.events: list = []

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def read(self, until, timeout: float = 5.0) -> list:
        """Collect events until ``until(events)`` is true; [] if nothing more came in time."""
        deadline = time.monotonic() + timeout
        while not until(self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            data = self.sock.recv(65535)
            if not data:
                raise ConnectionError("closed by the server")
            self.events += self.conn.receive_data(data)
            self.flush()
        return self.events

    def post(self, token: str, body: bytes) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
            (":path", f"/3/device/{token}"), ("apns-topic", TOPIC),
            ("authorization", f"bearer {provider_token()}"),
        ])
        self.conn.send_data(stream_id, body, end_stream=True)
        self.flush()
        return stream_id

    def close(self) -> None:
        self.sock.close()


def of(kind, stream_id=None):
    return lambda events: [e for e in events if isinstance(e, kind)
                           and (stream_id is None or e.stream_id == stream_id)]


def test_h2_settings_ping_flow_control_and_goaway(standin):
    token = device_token()
    standin.set_behavior(token, "BadDeviceToken")
    client = RawH2(standin, settings={SettingCodes.INITIAL_WINDOW_SIZE: 10,
                                      SettingCodes.ENABLE_PUSH: 0})
    try:
        settings = of(h2.events.RemoteSettingsChanged)(client.read(of(h2.events.RemoteSettingsChanged)))
        advertised = settings[0].changed_settings[SettingCodes.MAX_CONCURRENT_STREAMS].new_value
        assert advertised == 1000

        client.conn.ping(b"12345678")
        client.flush()
        (ack,) = of(h2.events.PingAckReceived)(client.read(of(h2.events.PingAckReceived)))
        assert ack.ping_data == b"12345678"

        # The error body does not fit the 10-byte stream window: headers come,
        # the body waits for our WINDOW_UPDATE, then arrives in one frame.
        stream_id = client.post(token, b'{"aps":{}}')
        (response,) = of(h2.events.ResponseReceived, stream_id)(
            client.read(of(h2.events.ResponseReceived, stream_id)))
        assert dict(response.headers)[":status"] == "400"
        with pytest.raises(TimeoutError):
            client.read(of(h2.events.DataReceived, stream_id), timeout=0.3)
        client.conn.increment_flow_control_window(100, stream_id=stream_id)
        client.flush()
        client.read(of(h2.events.StreamEnded, stream_id))
        data = of(h2.events.DataReceived, stream_id)(client.events)
        assert len(data) == 1
        assert json.loads(data[0].data) == {"reason": "BadDeviceToken"}

        # GOAWAY from the client: the server closes the connection.
        client.conn.close_connection()
        client.flush()
        with pytest.raises((ConnectionError, ssl.SSLError)):
            client.read(lambda events: False, timeout=5)
    finally:
        client.close()


# ------------------------------------------------------------- TLS and CLI
def test_certificate_files_and_contexts(tmp_path):
    cert = make_test_certificate(str(tmp_path / "certs"))
    assert Path(cert.ca_path).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in Path(cert.key_path).read_text()
    assert os.stat(cert.key_path).st_mode & 0o077 == 0
    with ApnsStandin(certificate=cert) as server:
        with httpx.Client(http2=True, verify=client_ssl_context(cert), timeout=5) as client:
            response = client.get(f"https://localhost:{server.port}/")
            assert response.status_code == 405
        untrusting = ssl.create_default_context()
        untrusting.set_alpn_protocols(["h2"])
        with httpx.Client(http2=True, verify=untrusting, timeout=5) as client, pytest.raises(httpx.ConnectError):
                client.get(f"https://127.0.0.1:{server.port}/")
    assert os.path.exists(cert.ca_path)  # a certificate passed in is left alone
    cert.cleanup()
    assert not os.path.exists(tmp_path / "certs")


def test_main_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--host", "--port", "--cert-dir", "--key", "CA"):
        assert word in out


def test_module_runs_in_the_foreground(tmp_path):
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(PRIVATE_PEM)
    process = subprocess.Popen(
        [sys.executable, "-m", "standins.apns", "--port", "0", "--cert-dir", str(tmp_path / "tls"),
         "--key", f"{TEAM_ID}:{KEY_ID}:{key_file}"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        listening = process.stdout.readline()
        ca_line = process.stdout.readline()
        assert listening.startswith("APNs stand-in listening on https://127.0.0.1:"), listening
        url = listening.split()[4]
        ca_path = ca_line.rsplit(": ", 1)[1].strip()
        assert ca_path == str(tmp_path / "tls" / "ca.pem")
        ctx = ssl.create_default_context(cafile=ca_path)
        ctx.set_alpn_protocols(["h2"])
        with httpx.Client(http2=True, verify=ctx, base_url=url, timeout=5) as client:
            response = post(client, device_token())
        assert response.status_code == 200
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert PRIVATE_PEM.splitlines()[1] not in err  # no key material in the log
