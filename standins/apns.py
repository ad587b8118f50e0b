"""A local stand-in for Apple's APNs provider API (HTTP/2 over TLS, token auth).

It speaks the documented provider protocol on a real socket so pushq's real
APNs client (aioapns) can be tested without the internet::

    with ApnsStandin() as apns:                       # 127.0.0.1, free port
        apns.register_key(TEAM_ID, KEY_ID, public_key_pem)
        apns.set_behavior(token, "Unregistered", times=1)
        ...                                           # point the client at apns.host/apns.port,
        apns.messages(token)                          # trusting apns.certificate.ca_path

What it checks, in this order (each failure answers ``{"reason": ...}``):

1. method ``POST`` (405 ``MethodNotAllowed``), path ``/3/device/<token>``
   (404 ``BadPath``), token present (400 ``MissingDeviceToken``) and hex
   (400 ``BadDeviceToken``). From here on the request counts in ``attempts()``.
2. ``authorization: bearer <JWT>``: missing → 403 ``MissingProviderToken``;
   not ES256, unknown (team id, key id), bad signature, no ``iat`` or ``iat``
   in the future → 403 ``InvalidProviderToken``; ``iat`` older than 60 min →
   403 ``ExpiredProviderToken``.
3. Headers: ``apns-topic`` (400 ``MissingTopic``), ``apns-push-type``
   (400 ``InvalidPushType``), ``apns-priority`` 10/5/1 and not 10 for
   background pushes (400 ``BadPriority``), ``apns-expiration`` an integer
   (400 ``BadExpirationDate``), ``apns-collapse-id`` ≤ 64 bytes
   (400 ``BadCollapseId``), ``apns-id`` a UUID (400 ``BadMessageId``), an
   ``apns-*`` header given twice (400 ``DuplicateHeaders``).
4. Payload: empty → 400 ``PayloadEmpty``; over 4096 bytes (5120 for voip) →
   413 ``PayloadTooLarge``; not a JSON object → 400 ``BadPayload`` (this one is
   the stand-in's own: Apple documents no reason for malformed JSON); a
   ``background`` push whose ``aps`` is not ``content-available: 1`` alone
   without ``alert``, ``sound`` or ``badge`` → 400 ``InvalidPushType`` (Apple
   throttles or drops such pushes; the stand-in refuses them so a test notices).
5. Then the behaviour set with ``set_behavior()`` for that device token (or for
   ``"*"``, every token): an error reason, a delay (a stalled stream), both, or
   the default: 200 with the message recorded.

Every answer carries ``apns-id`` (the request's own, echoed as given, or a new
upper-case UUID) and ``apns-unique-id`` (as Apple's development environment does).
Error answers carry the JSON body in a single DATA frame (aioapns parses each
DATA frame on its own) and ``"timestamp"`` (ms) for 410.

HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS 1000 by default; every stream is
answered independently, a delayed one only holds its own stream; received DATA
is acknowledged at once (WINDOW_UPDATE); answers wait for the client's window
when it is exhausted; PING and SETTINGS are acknowledged; GOAWAY from the client
closes the connection.

Run it in the foreground with ``python -m standins.apns --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings

from standins.tls import (
    TestCertificate,
    make_test_certificate,
    remove_directory,
    server_ssl_context,
)

__all__ = ["REASON_STATUS", "ApnsMessage", "ApnsStandin", "main"]

logger = logging.getLogger(__name__)

#: Status code of every reason Apple documents for the provider API.
REASON_STATUS: dict[str, int] = {
    "BadCollapseId": 400,
    "BadDeviceToken": 400,
    "BadExpirationDate": 400,
    "BadMessageId": 400,
    "BadPriority": 400,
    "BadTopic": 400,
    "DeviceTokenNotForTopic": 400,
    "DuplicateHeaders": 400,
    "IdleTimeout": 400,
    "InvalidPushType": 400,
    "MissingDeviceToken": 400,
    "MissingTopic": 400,
    "PayloadEmpty": 400,
    "TopicDisallowed": 400,
    "BadPayload": 400,  # the stand-in's own (malformed JSON); see the module doc
    "BadCertificate": 403,
    "BadCertificateEnvironment": 403,
    "ExpiredProviderToken": 403,
    "Forbidden": 403,
    "InvalidProviderToken": 403,
    "MissingProviderToken": 403,
    "UnrelatedKeyIdInToken": 403,
    "BadEnvironmentKeyIdInToken": 403,
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}

PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "location",
        "pushtotalk",
    }
)
PRIORITIES = frozenset({10, 5, 1})
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
PROVIDER_TOKEN_MAX_AGE = 60 * 60  # Apple refuses tokens issued more than 1 h ago
_IAT_LEEWAY = 60  # tolerated clock skew for an iat in the future
_BODY_CAP = 1 << 20  # bytes of a request body kept in memory; the rest is counted only
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_DIGITS = re.compile(r"^[0-9]+$")
_PATH_PREFIX = "/3/device/"


def _short(secret: str) -> str:
    """A token or key id cut down for logs."""
    return secret[:8] + "…" if len(secret) > 8 else secret


@dataclass(frozen=True)
class ApnsMessage:
    """A push the stand-in accepted (answered 200)."""

    apns_id: str
    device_token: str  # lower-case hex
    topic: str
    push_type: str | None
    priority: int | None
    expiration: int | None
    collapse_id: str | None
    payload: dict
    received_at: float  # time.time() when the request was complete


@dataclass
class _Behavior:
    reason: str | None
    remaining: int | None  # None = until changed
    delay: float
    retry_after: int | str | None
    set_at: float
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes | None = None


@dataclass
class _Decision:
    status: int
    reason: str | None = None
    delay: float = 0.0
    retry_after: int | str | None = None
    timestamp_ms: int | None = None
    message: ApnsMessage | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)  # as sent, replacing any of the same name
    body: bytes | None = None  # as sent, instead of the {"reason": ...} document


class _Stream:
    __slots__ = ("body", "body_size", "headers", "received_at", "stream_id")

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.body = bytearray()
        self.body_size = 0
        self.received_at = 0.0


class ApnsStandin:
    """Local APNs provider API server, run on a background thread's event loop.

    Thread-safe: the test thread configures it and reads what it recorded while
    the server thread answers.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        certificate: TestCertificate | None = None,
        *,
        max_concurrent_streams: int = 1000,
    ) -> None:
        self.host = host
        self.port = port
        self._owns_certificate = certificate is None
        self.certificate: TestCertificate = certificate or make_test_certificate()
        self.max_concurrent_streams = max_concurrent_streams

        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], ec.EllipticCurvePublicKey] = {}
        self._verified: dict[str, tuple[str, str, int]] = {}  # jwt -> (team, kid, iat)
        self._behaviors: dict[str, _Behavior] = {}
        self._messages: dict[str, list[ApnsMessage]] = {}
        self._attempts: Counter[str] = Counter()
        #: Every distinct provider JWT presented in an ``authorization`` header.
        self.provider_tokens_seen: set[str] = set()
        #: TLS connections accepted since start (or the last ``reset()``).
        self.connections_accepted = 0

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_ApnsServerProtocol] = set()
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------------ life
    def start(self) -> ApnsStandin:
        if self._stopped:
            raise RuntimeError("an ApnsStandin cannot be restarted; make a new one")
        if self._started:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="apns-standin", daemon=True
        )
        self._started = True
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._stopped = True
            self._cleanup_certificate()
            raise failure[0]
        logger.info("APNs stand-in listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # loop already closed
                pass
            thread.join()
        self._cleanup_certificate()
        logger.info("APNs stand-in on port %d stopped", self.port)

    def __enter__(self) -> ApnsStandin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _cleanup_certificate(self) -> None:
        if self._owns_certificate:
            remove_directory(self.certificate)

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: _ApnsServerProtocol(self),
                        host=self.host,
                        port=self.port,
                        ssl=server_ssl_context(self.certificate),
                        reuse_address=True,
                    )
                )
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                return
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        # Let the transports run their connection_lost callbacks.
        deadline = time.monotonic() + 5
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._server is not None:
            await self._server.wait_closed()
        # Transports close their sockets one loop iteration after connection_lost.
        for _ in range(3):
            await asyncio.sleep(0)

    # ---------------------------------------------------------- configuration
    def register_key(self, team_id: str, key_id: str, public_key_pem: str) -> None:
        """Trust provider tokens from ``team_id`` signed with key ``key_id``.

        ``public_key_pem`` is the PEM of the EC P-256 public key; a private key
        PEM (the .p8 itself) is accepted too and its public half used.
        """
        data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        if b"PRIVATE KEY" in data:
            key: Any = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError("APNs signing keys are EC P-256 keys")
        with self._lock:
            self._keys[(team_id, key_id)] = key
            self._verified.clear()
        logger.info("trusting key %s of team %s", _short(key_id), team_id)

    def set_behavior(
        self,
        device_token: str,
        reason: str | None = None,
        *,
        times: int | None = None,
        delay: float = 0.0,
        retry_after: int | str | None = None,
        headers: dict[bytes, bytes] | None = None,
        body: bytes | None = None,
    ) -> None:
        """How to answer pushes to ``device_token`` (``"*"``: every token without its own).

        ``reason`` is an APNs error reason (``REASON_STATUS`` gives its status),
        or None for 200. ``delay`` stalls the answer that many seconds (a hung
        stream). ``retry_after`` adds a ``retry-after`` header (a string is sent as
        it is). ``times`` limits this to the next N requests that pass the
        auth/shape checks; after them the token is answered normally again. A new
        call replaces the old one. A hostile APNs: ``headers`` are sent as given
        (raw bytes, e.g. an ``apns-id`` that is not UTF-8) and ``body`` replaces an
        error answer's JSON document.
        """
        if reason is not None and reason not in REASON_STATUS:
            raise ValueError(f"unknown APNs reason {reason!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        key = device_token if device_token == "*" else device_token.lower()
        with self._lock:
            self._behaviors[key] = _Behavior(reason, times, delay, retry_after, time.time(), dict(headers or {}), body)

    def freeze(self, seconds: float) -> None:
        """Send and read nothing on any connection for ``seconds`` (a half-open connection, seen from the client)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(time.sleep, seconds)

    def drop_connections(self) -> None:
        """Abort every open connection (as a server restart or a network cut would)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: [c.abort() for c in list(self._connections)])

    def clear_behavior(self, device_token: str) -> None:
        key = device_token if device_token == "*" else device_token.lower()
        with self._lock:
            self._behaviors.pop(key, None)

    def reset(self) -> None:
        """Forget behaviours, recorded messages, attempts and counters.

        Registered keys stay trusted; open connections stay open.
        """
        with self._lock:
            self._behaviors.clear()
            self._messages.clear()
            self._attempts.clear()
            self.provider_tokens_seen.clear()
            self.connections_accepted = 0

    # -------------------------------------------------------------- reading
    def messages(self, device_token: str | None = None) -> list[ApnsMessage]:
        """Accepted (200) pushes to ``device_token``, oldest first (None: all tokens)."""
        with self._lock:
            if device_token is None:
                every = [m for ms in self._messages.values() for m in ms]
                return sorted(every, key=lambda m: m.received_at)
            return list(self._messages.get(device_token.lower(), ()))

    def attempts(self, device_token: str) -> int:
        """Requests received for ``device_token``, whatever the answer."""
        with self._lock:
            return self._attempts[device_token.lower()]

    @property
    def provider_token_count(self) -> int:
        with self._lock:
            return len(self.provider_tokens_seen)

    # ------------------------------------------------------- request handling
    def _connection_made(self, connection: _ApnsServerProtocol) -> None:
        with self._lock:
            self.connections_accepted += 1
        self._connections.add(connection)

    def _connection_lost(self, connection: _ApnsServerProtocol) -> None:
        self._connections.discard(connection)

    def _check_provider_token(self, value: str | None) -> str | None:
        """None if the bearer token is good, else the 403 reason."""
        if not value:
            return "MissingProviderToken"
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "InvalidProviderToken"
        with self._lock:
            self.provider_tokens_seen.add(token)
            verified = self._verified.get(token)
        if verified is None:
            try:
                header = jwt.get_unverified_header(token)
                unverified = jwt.decode(token, options={"verify_signature": False})
            except jwt.InvalidTokenError:
                logger.info("refused a malformed provider token %s", _short(token))
                return "InvalidProviderToken"
            team_id, key_id = unverified.get("iss"), header.get("kid")
            if header.get("alg") != "ES256" or not isinstance(team_id, str) or not isinstance(key_id, str):
                return "InvalidProviderToken"
            with self._lock:
                key = self._keys.get((team_id, key_id))
            if key is None:
                logger.info("refused a token signed with unknown key %s of team %s", _short(key_id), team_id)
                return "InvalidProviderToken"
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["ES256"],
                    issuer=team_id,
                    leeway=_IAT_LEEWAY,
                    options={"verify_exp": False, "verify_aud": False, "require": ["iss", "iat"]},
                )
                iat = int(claims["iat"])
            except (jwt.InvalidTokenError, TypeError, ValueError) as exc:
                logger.info("refused provider token %s: %s", _short(token), type(exc).__name__)
                return "InvalidProviderToken"
            verified = (team_id, key_id, iat)
            with self._lock:
                self._verified[token] = verified
        if time.time() - verified[2] > PROVIDER_TOKEN_MAX_AGE:
            return "ExpiredProviderToken"
        return None

    def _decide(self, stream: _Stream) -> tuple[_Decision, str | None]:
        """Answer for a complete request: (decision, apns-id to send back)."""
        headers: dict[str, str] = {}
        duplicated = False
        for raw_name, raw_value in stream.headers:
            name = raw_name.decode("ascii", "replace").lower()
            value = raw_value.decode("utf-8", "replace")
            if name in headers and (name.startswith("apns-") or name == "authorization"):
                duplicated = True
            headers.setdefault(name, value)
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()

        def refuse(reason: str) -> tuple[_Decision, str]:
            return _Decision(REASON_STATUS[reason], reason), apns_id

        if headers.get(":method") != "POST":
            return refuse("MethodNotAllowed")
        path = headers.get(":path", "").split("?", 1)[0]
        if not path.startswith(_PATH_PREFIX):
            return refuse("BadPath")
        token = path[len(_PATH_PREFIX):]
        if not token:
            return refuse("MissingDeviceToken")
        if "/" in token:
            return refuse("BadPath")
        if not _HEX.match(token):
            return refuse("BadDeviceToken")
        token = token.lower()
        with self._lock:
            self._attempts[token] += 1

        auth_error = self._check_provider_token(headers.get("authorization"))
        if auth_error:
            return refuse(auth_error)
        if duplicated:
            return refuse("DuplicateHeaders")

        topic = headers.get("apns-topic", "")
        if not topic:
            return refuse("MissingTopic")
        push_type = headers.get("apns-push-type")
        if push_type is not None and push_type not in PUSH_TYPES:
            return refuse("InvalidPushType")
        priority: int | None = None
        if "apns-priority" in headers:
            raw = headers["apns-priority"]
            if not _DIGITS.match(raw) or int(raw) not in PRIORITIES:
                return refuse("BadPriority")
            priority = int(raw)
        if push_type == "background" and priority == 10:
            return refuse("BadPriority")
        expiration: int | None = None
        if "apns-expiration" in headers:
            raw = headers["apns-expiration"].strip()
            if not _DIGITS.match(raw):
                return refuse("BadExpirationDate")
            expiration = int(raw)
        collapse_id = headers.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
            return refuse("BadCollapseId")
        if "apns-id" in headers:
            try:
                uuid.UUID(headers["apns-id"])
            except ValueError:
                return refuse("BadMessageId")

        if stream.body_size == 0:
            return refuse("PayloadEmpty")
        limit = MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD
        if stream.body_size > limit:
            return refuse("PayloadTooLarge")
        try:
            payload = json.loads(bytes(stream.body))
        except ValueError:
            return refuse("BadPayload")
        if not isinstance(payload, dict):
            return refuse("BadPayload")
        if push_type == "background" and not _background_payload(payload):
            return refuse("InvalidPushType")

        # The request is well formed: now the configured behaviour.
        with self._lock:
            behavior = self._behaviors.get(token) or self._behaviors.get("*")
            if behavior is not None and behavior.remaining is not None:
                behavior.remaining -= 1
                if behavior.remaining <= 0:
                    for key, value in list(self._behaviors.items()):
                        if value is behavior:
                            del self._behaviors[key]
        if behavior is not None and behavior.reason is not None:
            decision = _Decision(
                REASON_STATUS[behavior.reason],
                behavior.reason,
                delay=behavior.delay,
                retry_after=behavior.retry_after,
                headers=behavior.headers,
                body=behavior.body,
            )
            if decision.status == 410:
                decision.timestamp_ms = int(behavior.set_at * 1000)
            return decision, apns_id
        message = ApnsMessage(
            apns_id=apns_id,
            device_token=token,
            topic=topic,
            push_type=push_type,
            priority=priority,
            expiration=expiration,
            collapse_id=collapse_id,
            payload=payload,
            received_at=stream.received_at,
        )
        decision = _Decision(200, message=message)
        if behavior is not None:
            decision.delay = behavior.delay
            decision.retry_after = behavior.retry_after
            decision.headers = behavior.headers
        return decision, apns_id

    def _record(self, message: ApnsMessage) -> None:
        with self._lock:
            self._messages.setdefault(message.device_token, []).append(message)


def _background_payload(payload: dict) -> bool:
    """Whether a background push's payload is one: ``aps.content-available`` 1 and nothing the user would see."""
    aps = payload.get("aps")
    return isinstance(aps, dict) and aps.get("content-available") == 1 and not {"alert", "sound", "badge"} & set(aps)


class _ApnsServerProtocol(asyncio.Protocol):
    """One client connection: an h2 server-side state machine."""

    def __init__(self, standin: ApnsStandin) -> None:
        self.standin = standin
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: standin.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
            },
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.pending: dict[int, bytes] = {}  # response bodies waiting for window
        self.peer = "?"
        self.closed = False

    # asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
        self.standin._connection_made(self)
        if alpn != "h2":
            logger.warning(
                "connection from %s negotiated ALPN %r, not h2: closing it "
                "(the client's SSLContext needs set_alpn_protocols(['h2']))",
                self.peer,
                alpn,
            )
            self.closed = True
            transport.close()
            return
        logger.debug("connection from %s", self.peer)
        self.conn.initiate_connection()
        self._write()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            logger.warning("HTTP/2 protocol error from %s: %s", self.peer, exc)
            self._write()
            self._close()
            return
        try:
            for event in events:
                self._dispatch(event)
        except H2Error as exc:  # should not happen; never let it kill the loop
            logger.exception("HTTP/2 error on connection from %s: %s", self.peer, exc)
            self.conn.close_connection(ErrorCodes.INTERNAL_ERROR)
            self._write()
            self._close()
            return
        self._write()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.streams.clear()
        self.pending.clear()
        self.standin._connection_lost(self)
        logger.debug("connection from %s closed (%s)", self.peer, exc or "clean")

    # ---------------------------------------------------------------------
    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _write(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, RequestReceived):
            self.streams[event.stream_id] = _Stream(event.stream_id, list(event.headers))
        elif isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body_size += len(event.data)
                if len(stream.body) < _BODY_CAP:
                    stream.body += event.data
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.received_at = time.time()
                self._handle(stream)
        elif isinstance(event, StreamReset):
            self._forget(event.stream_id)
        elif isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
            for stream_id in list(self.pending):
                self._send_body(stream_id)
        elif isinstance(event, ConnectionTerminated):
            logger.debug("client %s sent GOAWAY (%s)", self.peer, event.error_code)
            self._write()
            self._close()
        # PING and SETTINGS are acknowledged by h2 itself; others need nothing.

    def _forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self.pending.pop(stream_id, None)
        timer = self.timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def _handle(self, stream: _Stream) -> None:
        try:
            decision, apns_id = self.standin._decide(stream)
        except Exception:  # a stand-in bug must not look like an APNs answer
            logger.exception("could not evaluate stream %d", stream.stream_id)
            decision, apns_id = _Decision(500, "InternalServerError"), str(uuid.uuid4()).upper()
        if decision.delay > 0:
            assert self.standin._loop is not None
            self.timers[stream.stream_id] = self.standin._loop.call_later(
                decision.delay, self._answer_later, stream.stream_id, decision, apns_id
            )
        else:
            self._answer(stream.stream_id, decision, apns_id)

    def _answer_later(self, stream_id: int, decision: _Decision, apns_id: str | None) -> None:
        self.timers.pop(stream_id, None)
        if self.closed or stream_id not in self.streams:
            return
        self._answer(stream_id, decision, apns_id)
        self._write()

    def _answer(self, stream_id: int, decision: _Decision, apns_id: str | None) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        headers = [
            (b":status", str(decision.status).encode()),
            (b"apns-id", (apns_id or str(uuid.uuid4()).upper()).encode()),
            (b"apns-unique-id", str(uuid.uuid4()).encode()),
        ]
        if decision.retry_after is not None:
            headers.append((b"retry-after", str(decision.retry_after).encode("latin-1")))
        body = b""
        if decision.status != 200:
            document: dict[str, Any] = {"reason": decision.reason}
            if decision.timestamp_ms is not None:
                document["timestamp"] = decision.timestamp_ms
            body = json.dumps(document, separators=(",", ":")).encode() if decision.body is None else decision.body
            headers.append((b"content-type", b"application/json; charset=utf-8"))
            headers.append((b"content-length", str(len(body)).encode()))
        if decision.headers:  # scripted: replace those of the same name, as given
            headers = [(n, v) for n, v in headers if n not in decision.headers] + list(decision.headers.items())
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
        except H2Error as exc:  # e.g. the client reset the stream meanwhile
            logger.debug("cannot answer stream %d: %s", stream_id, exc)
            self._forget(stream_id)
            return
        if decision.message is not None:
            self.standin._record(decision.message)
        logger.debug(
            "stream %d for %s: %d %s",
            stream_id,
            _short(decision.message.device_token) if decision.message else "-",
            decision.status,
            decision.reason or "",
        )
        if body:
            self.pending[stream_id] = body
            self._send_body(stream_id)
        else:
            self.streams.pop(stream_id, None)

    def _send_body(self, stream_id: int) -> None:
        """Send a pending body once the windows allow it.

        A body that fits one frame goes in one DATA frame (aioapns parses each
        DATA frame as a whole JSON document); a larger one is sent in chunks.
        """
        body = self.pending.get(stream_id)
        if body is None:
            return
        try:
            while body:
                window = self.conn.local_flow_control_window(stream_id)
                frame = self.conn.max_outbound_frame_size
                if len(body) <= frame:
                    if window < len(body):
                        break  # wait for WINDOW_UPDATE
                    size = len(body)
                else:
                    size = min(window, frame)
                    if size <= 0:
                        break
                chunk, body = body[:size], body[size:]
                self.conn.send_data(stream_id, chunk, end_stream=not body)
        except H2Error as exc:
            logger.debug("cannot send body on stream %d: %s", stream_id, exc)
            self._forget(stream_id)
            return
        if body:
            self.pending[stream_id] = body
        else:
            self.pending.pop(stream_id, None)
            self.streams.pop(stream_id, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.apns",
        description=(
            "Run a local stand-in for Apple's APNs provider API (HTTP/2 over TLS, "
            "token auth) in the foreground until Ctrl-C. It generates a throw-away "
            "CA and a certificate for localhost/127.0.0.1: point your APNs client at "
            "the printed address and make it trust the printed CA file. Provider "
            "tokens are accepted only when signed with a key given by --key."
        ),
        epilog=(
            "Example: python -m standins.apns --port 2197 --key TEAM123456:KEY1234567:AuthKey.p8"
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=2197, help="port to listen on; 0 picks a free one (default 2197)"
    )
    parser.add_argument(
        "--cert-dir",
        help="directory to write ca.pem, server.pem and server-key.pem to "
        "(overwritten each run; default: a temporary directory removed on exit)",
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="TEAM_ID:KEY_ID:PEM_PATH",
        help="trust provider tokens of TEAM_ID signed with KEY_ID; PEM_PATH is the "
        "EC P-256 public key or the .p8 private key (repeatable)",
    )
    parser.add_argument(
        "--max-concurrent-streams", type=int, default=1000, help="advertised per connection (default 1000)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("hpack").setLevel(logging.WARNING)

    keys = []
    for spec in args.key:
        try:
            team_id, key_id, path = spec.split(":", 2)
            with open(path, encoding="ascii") as fh:
                keys.append((team_id, key_id, fh.read()))
        except (ValueError, OSError) as exc:
            parser.error(f"--key {spec!r}: {exc}")

    certificate = make_test_certificate(args.cert_dir) if args.cert_dir else None
    standin = ApnsStandin(
        args.host, args.port, certificate, max_concurrent_streams=args.max_concurrent_streams
    )
    for team_id, key_id, pem in keys:
        standin.register_key(team_id, key_id, pem)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        standin.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    # Ctrl-C stops it even when started with SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print(f"APNs stand-in listening on https://{standin.host}:{standin.port} (HTTP/2)", flush=True)
        print(f"CA certificate to trust: {standin.certificate.ca_path}", flush=True)
        if not keys:
            print("no --key given: every provider token will be refused", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
