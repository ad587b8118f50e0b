"""A local Web Push service: the receiving side of RFC 8030, 8291 and 8292.

pushq's Web Push delivery code talks to whatever push service a browser
subscription names (FCM, Mozilla autopush, Apple, ...).  Tests, benchmarks and
the demo need one that behaves like those services without the internet, so
this module runs one over a real HTTP/1.1 socket:

* it plays the browser too: :meth:`WebPushStandin.new_subscription` makes the
  P-256 key pair and auth secret a browser would, so every accepted push is
  *decrypted* (RFC 8291, ``aes128gcm``) and a test can assert on the exact
  bytes pushq sent;
* it checks requests the way real services do (``TTL``, ``Urgency``,
  ``Topic``, VAPID per RFC 8292, ``Content-Encoding``, the 4096-byte cap) and
  answers with their status codes, so pushq's error handling is exercised
  against the same answers it will get in production;
* :meth:`WebPushStandin.set_behavior` scripts failures (410 gone, 429 with
  ``Retry-After``, 5xx, slow answers) for retry and pruning logic;
* keep-alive works, so connection reuse in pushq can be observed
  (:attr:`WebPushStandin.connections_accepted`).

It is fast enough not to be what limits a benchmark of pushq: one asyncio
event loop (on a background thread) serves every connection with a small
HTTP/1.1 parser, and a VAPID signature is verified once per distinct
``Authorization`` header string (pushq reuses one header per origin for
hours) while ``exp``, ``aud``, ``sub`` and the subscription's key restriction
are still checked on every push; the RFC 8291 decryption runs for every push.

The same controls are exposed over HTTP under ``/_standin/`` so another
process (the demo CLI) can drive it; ``python -m standins.webpush --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import re
import secrets
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["ReceivedMessage", "WebPushStandin", "main"]

log = logging.getLogger(__name__)

#: Largest request body a push service must accept (RFC 8030 §7.2); with the
#: aes128gcm overhead that leaves 3993 bytes of plaintext.
MAX_PUSH_BODY = 4096
#: Bodies above this are refused before being read (and the connection is
#: closed), so a misbehaving client cannot make the stand-in buffer megabytes.
_MAX_READ_BODY = 1 << 20
#: RFC 8292 §2: services reject tokens that expire more than 24 h ahead.
MAX_VAPID_LIFETIME = 24 * 60 * 60
_URGENCIES = frozenset({"very-low", "low", "normal", "high"})
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_TTL_RE = re.compile(r"[0-9]{1,10}")
# Auth params of the "vapid" scheme: name=value or name="value", separated by
# commas and/or whitespace (py-vapid sends "t=..,k=..", others ", ").
_AUTH_PARAM_RE = re.compile(r'([A-Za-z]+)\s*=\s*("[^"]*"|[^\s,]+)')
#: Verified VAPID headers kept (header string -> claims); cleared when full.
_VAPID_CACHE_SIZE = 4096
#: Largest request head (request line and headers) accepted, like real servers' limits.
_MAX_HEAD = 64 * 1024
#: Idle keep-alive connections are closed after this, like real services.
_IDLE_TIMEOUT = 120.0


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Decode URL-safe base64 with or without padding, strictly otherwise."""
    text = text.strip().rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not URL-safe base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc


def _p256_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """Load an uncompressed P-256 point, the only form RFC 8291/8292 use."""
    if len(raw) != 65 or raw[0] != 0x04:
        raise ValueError("expected a 65-byte uncompressed P-256 point")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


@dataclass(frozen=True)
class ReceivedMessage:
    """One push the stand-in accepted (201), already decrypted."""

    id: str
    payload: bytes
    ttl: int
    urgency: str | None
    topic: str | None
    vapid_claims: dict
    vapid_public_key: str
    received_at: float

    def json(self) -> Any:
        """The payload parsed as JSON (pushq sends JSON payloads)."""
        return json.loads(self.payload)

    def to_wire(self) -> dict[str, Any]:
        """The JSON shape served by the HTTP control endpoints."""
        body: dict[str, Any] = {"id": self.id}
        try:
            body["payload"] = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            body["payload"] = None
            body["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        body.update(
            ttl=self.ttl,
            urgency=self.urgency,
            topic=self.topic,
            received_at=self.received_at,
        )
        return body


@dataclass
class _Behavior:
    status: int
    retry_after: int | None
    remaining: int | None  # None: every future push
    delay: float
    headers: dict[str, str] = field(default_factory=dict)  # added to the answer, replacing any of the same name


@dataclass
class _Subscription:
    id: str
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    application_server_key: bytes | None
    messages: list[ReceivedMessage] = field(default_factory=list)
    attempts: int = 0
    behavior: _Behavior | None = None


@dataclass(frozen=True)
class _VerifiedVapid:
    claims: dict
    k: str
    raw_key: bytes


class _PushError(Exception):
    """A refusal to answer with, raised from the push validation steps."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WebPushStandin:
    """A Web Push service on a local socket, with browser-side subscriptions.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.  All
    methods are thread-safe; the server answers each connection in its own
    daemon thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._subscriptions: dict[str, _Subscription] = {}
        self._messages: dict[str, ReceivedMessage] = {}
        self._connections_accepted = 0
        self._open_connections: set[_HttpProtocol] = set()
        self._vapid_cache: dict[str, _VerifiedVapid] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> WebPushStandin:
        """Bind the socket and serve on a background thread's event loop; returns ``self``."""
        if self._server is not None or self._stopped:
            raise RuntimeError("a WebPushStandin can be started only once")
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._run, args=(ready, failure), name="webpush-standin", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            self._stopped = True
            raise failure[0]
        self._thread = thread
        log.debug("web push stand-in listening on %s", self._base_url)
        return self

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        try:
            try:
                family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
                server = loop.run_until_complete(loop.create_server(
                    lambda: _HttpProtocol(self), host=self._host, port=self._port, family=family,
                    reuse_address=True, backlog=1024,
                ))
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                return
            port = server.sockets[0].getsockname()[1]
            host = f"[{self._host}]" if ":" in self._host else self._host
            self._base_url = f"http://{host}:{port}"
            self._loop, self._server = loop, server
            ready.set()
            loop.run_forever()
            # stop(): close the listener and every connection, let their callbacks run.
            server.close()
            with self._lock:
                connections = list(self._open_connections)
            for connection in connections:
                connection.abort()
            loop.run_until_complete(server.wait_closed())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(asyncio.sleep(0))
        finally:
            loop.close()

    def stop(self) -> None:
        """Stop serving, close the listening socket and open connections.

        Idempotent.  Open keep-alive connections are closed, so clients see the
        connection end; delayed answers in progress are dropped.
        """
        loop, thread = self._loop, self._thread
        if self._server is None or loop is None:
            return
        self._stopped = True
        self._server = None
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # loop already closed
            pass
        if thread is not None:
            thread.join()
        self._thread = None

    def __enter__(self) -> WebPushStandin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Origin of the service, e.g. ``http://127.0.0.1:43121`` (the VAPID ``aud``)."""
        if self._base_url is None:
            raise RuntimeError("the stand-in has not been started")
        return self._base_url

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far, to observe keep-alive reuse."""
        with self._lock:
            return self._connections_accepted

    # -- browser side and test controls --------------------------------------

    def new_subscription(self, application_server_key: str | None = None) -> dict:
        """Create a subscription the way a browser's ``PushManager.subscribe`` does.

        Returns the ``PushSubscription.toJSON()`` shape pushq stores.  With an
        ``application_server_key`` (b64url uncompressed P-256 point) pushes
        signed with any other VAPID key are refused with 403.
        """
        restricted: bytes | None = None
        if application_server_key is not None:
            restricted = _b64url_decode(application_server_key)
            _p256_public_key(restricted)  # ValueError if not a P-256 point
        base_url = self.base_url
        private_key = ec.generate_private_key(ec.SECP256R1())
        sub = _Subscription(
            id=secrets.token_urlsafe(16),
            private_key=private_key,
            auth_secret=secrets.token_bytes(16),
            application_server_key=restricted,
        )
        with self._lock:
            self._subscriptions[sub.id] = sub
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": f"{base_url}/push/{sub.id}",
            "keys": {"p256dh": _b64url_encode(public), "auth": _b64url_encode(sub.auth_secret)},
        }

    def set_behavior(
        self,
        subscription: dict | str,
        status: int = 201,
        *,
        retry_after: int | None = None,
        times: int | None = None,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Script the answers to the next ``times`` pushes (``None``: all of them).

        ``status`` other than 201 is answered without validating or storing
        anything; 429/503 carry ``Retry-After`` when ``retry_after`` is set.
        ``delay`` seconds are slept before answering, whatever the status.
        ``headers`` are added to the answer (a 201 still stores the message), as
        sent: each character is one byte on the wire (latin-1), so ``"\xff"`` makes
        a header that is not UTF-8 (a hostile push service's ``Location``).
        """
        if not 100 <= int(status) <= 599:
            raise ValueError(f"not an HTTP status: {status!r}")
        if times is not None and times < 1:
            raise ValueError("times must be None or >= 1")
        if delay < 0 or (retry_after is not None and retry_after < 0):
            raise ValueError("delay and retry_after must be >= 0")
        behavior = _Behavior(int(status), retry_after, times, float(delay), dict(headers or {}))
        with self._lock:
            self._lookup(subscription).behavior = behavior

    def messages(self, subscription: dict | str) -> list[ReceivedMessage]:
        """Decrypted messages accepted for the subscription, oldest first."""
        with self._lock:
            return list(self._lookup(subscription).messages)

    def attempts(self, subscription: dict | str) -> int:
        """Push requests received for the subscription, whatever the answer."""
        with self._lock:
            return self._lookup(subscription).attempts

    def message(self, message_id: str) -> ReceivedMessage | None:
        """The message a ``Location`` header named, if it exists."""
        with self._lock:
            return self._messages.get(message_id)

    def reset(self) -> None:
        """Forget all subscriptions, messages and behaviours."""
        with self._lock:
            self._subscriptions.clear()
            self._messages.clear()

    def _lookup(self, subscription: dict | str) -> _Subscription:
        """Find a subscription by dict, endpoint URL or id (lock held)."""
        if isinstance(subscription, dict):
            subscription = subscription["endpoint"]
        sub_id = subscription
        if "/" in subscription:
            sub_id = urlsplit(subscription).path.rstrip("/").rsplit("/", 1)[-1]
        try:
            return self._subscriptions[sub_id]
        except KeyError:
            raise KeyError(f"unknown subscription: {sub_id}") from None

    # -- the push endpoint ---------------------------------------------------

    def _push(self, sub_id: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], str]:
        """Handle ``POST /push/<sub_id>``; returns (status, headers, detail).

        Blocking form (sleeps through a scripted delay); the server itself uses
        :meth:`_push_begin` and :meth:`_push_end` around an asynchronous sleep.
        """
        sub, behavior = self._push_begin(sub_id)
        if behavior is not None and behavior.delay:
            time.sleep(behavior.delay)
        return self._push_end(sub_id, sub, behavior, headers, body)

    def _push_begin(self, sub_id: str) -> tuple[_Subscription, _Behavior | None]:
        """Count the attempt and take the scripted behaviour, if any (404 for an unknown subscription)."""
        with self._lock:
            sub = self._subscriptions.get(sub_id)
            if sub is None:
                raise _PushError(404, "no such subscription")
            sub.attempts += 1
            behavior = sub.behavior
            if behavior is not None and behavior.remaining is not None:
                behavior.remaining -= 1
                if behavior.remaining <= 0:
                    sub.behavior = None
        return sub, behavior

    def _push_end(
        self, sub_id: str, sub: _Subscription, behavior: _Behavior | None, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], str]:
        """The rest of a push once any scripted delay has passed.

        The checks run in the order real services apply them, so a request
        with several faults gets the same answer as in production.
        """
        if behavior is not None and behavior.status != 201:
            extra: dict[str, str] = {}
            if behavior.status in (429, 503) and behavior.retry_after is not None:
                extra["Retry-After"] = str(behavior.retry_after)
            return behavior.status, {**extra, **behavior.headers}, "scripted by set_behavior"

        ttl, urgency, topic = _check_push_headers(headers)
        claims, public_key = self._check_vapid(sub, headers.get("Authorization"))

        if body:  # RFC 8030 §5: a push without a body needs no encoding
            encoding = (headers.get("Content-Encoding") or "").strip().lower()
            if encoding != "aes128gcm":
                raise _PushError(415, "Content-Encoding must be aes128gcm")
        if len(body) > MAX_PUSH_BODY:
            raise _PushError(413, f"body exceeds {MAX_PUSH_BODY} bytes")
        payload = b""
        if body:
            try:
                payload = http_ece.decrypt(
                    body,
                    private_key=sub.private_key,
                    auth_secret=sub.auth_secret,
                    version="aes128gcm",
                )
            except Exception as exc:  # http_ece raises several types
                raise _PushError(400, f"could not decrypt: {type(exc).__name__}") from None

        message = ReceivedMessage(
            id=str(uuid.uuid4()),
            payload=payload,
            ttl=ttl,
            urgency=urgency,
            topic=topic,
            vapid_claims=claims,
            vapid_public_key=public_key,
            received_at=time.time(),
        )
        with self._lock:
            # reset() may have run meanwhile: store only if still subscribed.
            if self._subscriptions.get(sub_id) is sub:
                sub.messages.append(message)
                self._messages[message.id] = message
        location = f"{self.base_url}/_standin/messages/{message.id}"
        scripted = behavior.headers if behavior is not None else {}
        return 201, {"Location": location, "TTL": str(ttl), **scripted}, f"{len(payload)} bytes"

    def _check_vapid(self, sub: _Subscription, authorization: str | None) -> tuple[dict, str]:
        """Verify an RFC 8292 ``vapid t=<jwt>, k=<key>`` header; returns (claims, k).

        The ES256 signature of a given header string is verified once (a
        sender reuses one header for every push to an origin until near its
        ``exp``); ``exp``, ``aud``, ``sub``, the 24-hour limit and the
        subscription's key restriction are checked on every push.
        """
        if not authorization:
            raise _PushError(401, "missing Authorization")
        cached = self._vapid_cache.get(authorization)
        if cached is not None:
            if sub.application_server_key is not None and cached.raw_key != sub.application_server_key:
                raise _PushError(403, "subscription is restricted to another application server key")
            claims = cached.claims
            if claims["exp"] <= time.time():
                self._vapid_cache.pop(authorization, None)
                raise _PushError(401, "invalid VAPID token: Signature has expired")
            self._check_vapid_claims(claims)
            return claims, cached.k
        scheme, _, params_text = authorization.strip().partition(" ")
        if scheme.lower() != "vapid":
            raise _PushError(401, "Authorization scheme must be vapid")
        params = {
            name.lower(): value.strip('"')
            for name, value in _AUTH_PARAM_RE.findall(params_text)
        }
        token, k = params.get("t"), params.get("k")
        if not token or not k:
            raise _PushError(401, "vapid Authorization needs t and k")
        try:
            raw_key = _b64url_decode(k)
            public_key = _p256_public_key(raw_key)
        except ValueError:
            raise _PushError(401, "k is not a P-256 public key") from None
        if sub.application_server_key is not None and raw_key != sub.application_server_key:
            raise _PushError(403, "subscription is restricted to another application server key")
        try:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=["ES256"],
                audience=self.base_url,
                options={"require": ["aud", "exp", "sub"], "strict_aud": True},
            )
        except jwt.PyJWTError as exc:
            raise _PushError(401, f"invalid VAPID token: {exc}") from None
        self._check_vapid_claims(claims)
        if len(self._vapid_cache) >= _VAPID_CACHE_SIZE:
            self._vapid_cache.clear()
        self._vapid_cache[authorization] = _VerifiedVapid(claims, k, raw_key)
        return claims, k

    def _check_vapid_claims(self, claims: dict) -> None:
        """The claim checks repeated on every push, cached signature or not."""
        if claims.get("aud") != self.base_url:
            raise _PushError(401, "invalid VAPID token: Audience doesn't match")
        if not isinstance(claims["exp"], (int, float)) or claims["exp"] > time.time() + MAX_VAPID_LIFETIME:
            raise _PushError(401, "VAPID exp is more than 24 hours ahead")
        if not isinstance(claims["sub"], str) or not claims["sub"].startswith(("mailto:", "https:")):
            raise _PushError(401, "VAPID sub must be a mailto: or https: URI")

    # -- HTTP control endpoints ----------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """Serve ``/_standin/...``; returns (status, JSON-able body or None)."""
        parts = path.strip("/").split("/")[1:]
        try:
            if parts == ["subscriptions"]:
                if method != "POST":
                    return 405, _error(405, "use POST")
                request = json.loads(body) if body.strip() else {}
                if not isinstance(request, dict):
                    raise ValueError("body must be a JSON object")
                created = self.new_subscription(request.get("application_server_key"))
                return 201, {"id": created["endpoint"].rsplit("/", 1)[1], **created}
            if len(parts) == 3 and parts[0] == "subscriptions" and parts[2] == "behavior":
                if method != "PUT":
                    return 405, _error(405, "use PUT")
                request = json.loads(body) if body.strip() else {}
                if not isinstance(request, dict):
                    raise ValueError("body must be a JSON object")
                self.set_behavior(
                    parts[1],
                    int(request.get("status", 201)),
                    retry_after=request.get("retry_after"),
                    times=request.get("times"),
                    delay=float(request.get("delay") or 0.0),
                )
                return 204, None
            if len(parts) == 3 and parts[0] == "subscriptions" and parts[2] == "messages":
                if method != "GET":
                    return 405, _error(405, "use GET")
                return 200, [m.to_wire() for m in self.messages(parts[1])]
            if len(parts) == 2 and parts[0] == "messages":
                if method != "GET":
                    return 405, _error(405, "use GET")
                message = self.message(parts[1])
                if message is None:
                    return 404, _error(404, "no such message")
                return 200, message.to_wire()
        except KeyError as exc:
            return 404, _error(404, str(exc.args[0]) if exc.args else "not found")
        except (ValueError, TypeError) as exc:
            return 400, _error(400, str(exc))
        return 404, _error(404, "no such control endpoint")

    def _connection_opened(self, conn: _HttpProtocol) -> None:
        with self._lock:
            self._connections_accepted += 1
            self._open_connections.add(conn)

    def _connection_closed(self, conn: _HttpProtocol) -> None:
        with self._lock:
            self._open_connections.discard(conn)


def _check_push_headers(headers: Any) -> tuple[int, str | None, str | None]:
    """Validate TTL, Urgency and Topic (RFC 8030 §5.2-5.4)."""
    ttl_text = (headers.get("TTL") or "").strip()
    if not _TTL_RE.fullmatch(ttl_text):
        raise _PushError(400, "TTL header must be a non-negative integer")
    urgency = headers.get("Urgency")
    if urgency is not None:
        urgency = urgency.strip()
        if urgency not in _URGENCIES:
            raise _PushError(400, "Urgency must be very-low, low, normal or high")
    topic = headers.get("Topic")
    if topic is not None:
        topic = topic.strip()
        if not _TOPIC_RE.fullmatch(topic):
            raise _PushError(400, "Topic must be 1-32 characters of URL-safe base64")
    return int(ttl_text), urgency, topic


def _error(status: int, message: str) -> dict[str, Any]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return {"code": status, "error": phrase, "message": message}


class _Headers:
    """Request headers: case-insensitive ``get`` (first value wins), like ``email.message.Message``."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._items.get(name.lower(), default)


class _Request:
    __slots__ = ("body", "close", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: _Headers, body: bytes, close: bool) -> None:
        self.method, self.path, self.headers, self.body, self.close = method, path, headers, body, close


_SERVER_HEADER = "pushq-webpush-standin"
_date_cache: list[Any] = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, formatdate(now, usegmt=True)
    return _date_cache[1]


class _HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: requests answered in order, kept alive until idle or told to close."""

    def __init__(self, standin: WebPushStandin) -> None:
        self.standin = standin
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a request (maybe with a scripted delay) is being answered
        self.closing = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.peer = "?"

    # asyncio callbacks --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # Without TCP_NODELAY, Nagle plus the client's delayed ACK adds ~40 ms per answer.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.standin._connection_opened(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer += data
        if not self.busy:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.standin._connection_closed(self)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # requests -------------------------------------------------------------------
    def _arm_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        loop = asyncio.get_running_loop()
        self.idle_timer = loop.call_later(_IDLE_TIMEOUT, self._close)

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        """Answer every complete request in the buffer, in order, until one must wait."""
        while not self.closing and not self.busy:
            request = self._parse()
            if request is None:
                return
            self._arm_idle_timer()
            try:
                delayed = self._dispatch(request)
            except Exception:
                log.exception("web push stand-in failed on %s %s", request.method, request.path)
                request.close = True
                self._send_json(request, 500, _error(500, "stand-in error"))
                continue
            if delayed is not None:
                self.busy = True
                self._pending = asyncio.ensure_future(self._finish_later(request, *delayed))  # keep a reference

    def _parse(self) -> _Request | None:
        """One request from the buffer, or None if incomplete (or answered with an error and closing)."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD:
                self._refuse(431, "request head too large")
            return None
        try:
            head = bytes(self.buffer[:end]).decode("iso-8859-1")
            request_line, *header_lines = head.split("\r\n")
            method, target, version = request_line.split(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(version)
            items: dict[str, str] = {}
            for line in header_lines:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise ValueError(line)
                items.setdefault(name.lower(), value.strip())
        except ValueError:
            self._refuse(400, "malformed request")
            return None
        headers = _Headers(items)
        connection = (items.get("connection") or "").lower()
        close = (version == "HTTP/1.0" and "keep-alive" not in connection) or "close" in connection
        if items.get("transfer-encoding"):
            self._refuse(411, "send a Content-Length")
            return None
        length_text = items.get("content-length", "0").strip() or "0"
        if not length_text.isdigit():
            self._refuse(400, "bad Content-Length")
            return None
        length = int(length_text)
        if length > _MAX_READ_BODY:
            # Not worth reading to keep the connection in sync: close it.
            self._refuse(413, f"body exceeds {MAX_PUSH_BODY} bytes")
            return None
        if len(self.buffer) < end + 4 + length:
            if length and (items.get("expect") or "").lower() == "100-continue" and len(self.buffer) == end + 4:
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        return _Request(method, target, headers, body, close)

    def _refuse(self, status: int, message: str) -> None:
        self._write(status, json.dumps(_error(status, message)).encode(), {"Content-Type": "application/json"}, True)
        self._close()

    def _dispatch(self, request: _Request) -> tuple[str, _Subscription, _Behavior] | None:
        """Answer ``request`` now, or return what a delayed push needs to finish later."""
        standin = self.standin
        path = urlsplit(request.path).path
        if request.method not in ("GET", "POST", "PUT", "DELETE"):
            self._send_json(request, 501, _error(501, f"unsupported method {request.method!r}"))
        elif path.startswith("/push/"):
            sub_id = path[len("/push/"):]
            if not sub_id or "/" in sub_id:
                self._send_json(request, 404, _error(404, "no such endpoint"))
            elif request.method != "POST":
                self._send_json(request, 405, _error(405, "use POST"), {"Allow": "POST"})
            else:
                try:
                    sub, behavior = standin._push_begin(sub_id)
                except _PushError as exc:
                    self._answer_push(request, sub_id, exc.status, {}, exc.message)
                    return None
                if behavior is not None and behavior.delay:
                    return sub_id, sub, behavior
                self._finish_push(request, sub_id, sub, behavior)
        elif path == "/_standin" or path.startswith("/_standin/"):
            status, payload = standin._control(request.method, path, request.body)
            self._send_json(request, status, payload)
        else:
            self._send_json(request, 404, _error(404, "no such endpoint"))
        return None

    async def _finish_later(self, request: _Request, sub_id: str, sub: _Subscription, behavior: _Behavior) -> None:
        try:
            await asyncio.sleep(behavior.delay)
            if self.closing:
                return
            try:
                self._finish_push(request, sub_id, sub, behavior)
            except Exception:
                log.exception("web push stand-in failed on a delayed push")
                request.close = True
                self._send_json(request, 500, _error(500, "stand-in error"))
        finally:
            self.busy = False
        if not self.closing:
            self._process()

    def _finish_push(self, request: _Request, sub_id: str, sub: _Subscription, behavior: _Behavior | None) -> None:
        try:
            status, headers, detail = self.standin._push_end(sub_id, sub, behavior, request.headers, request.body)
        except _PushError as exc:
            status, headers, detail = exc.status, {}, exc.message
        self._answer_push(request, sub_id, status, headers, detail)

    def _answer_push(self, request: _Request, sub_id: str, status: int, headers: dict[str, str], detail: str) -> None:
        # One line per push; subscription ids are not key material.
        log.info("push %s -> %d (%s)", sub_id, status, detail)
        if status == 201:
            self._write(status, b"", headers, request.close)
        else:
            self._send_json(request, status, _error(status, detail), headers)

    def _send_json(self, request: _Request, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        content_type = {"Content-Type": "application/json"} if payload is not None else {}
        self._write(status, data, {**content_type, **(headers or {})}, request.close)

    def _write(self, status: int, data: bytes, headers: dict[str, str], close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:  # a status set_behavior allows but http.HTTPStatus does not name
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}", f"Server: {_SERVER_HEADER}", f"Date: {_http_date()}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if status != 204:  # RFC 9110 §8.6: no Content-Length on 204
            lines.append(f"Content-Length: {len(data)}")
        if close:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        if close:
            self._close()


def main(argv: list[str] | None = None) -> None:
    """Run the stand-in in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m standins.webpush",
        description=(
            "Run a local Web Push service (RFC 8030 push endpoint, RFC 8291 "
            "aes128gcm decryption, RFC 8292 VAPID checks) for pushq's demo and "
            "manual testing. Push endpoints are POST /push/<id>. Control it over "
            "HTTP: POST /_standin/subscriptions [{\"application_server_key\": ...}] "
            "creates a browser-side subscription; PUT /_standin/subscriptions/<id>"
            "/behavior {\"status\", \"retry_after\", \"times\", \"delay\"} scripts "
            "answers; GET /_standin/subscriptions/<id>/messages lists the "
            "decrypted messages; GET /_standin/messages/<id> reads one. "
            "VAPID tokens must use the origin printed at start-up as aud."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8089, help="port to bind, 0 for any free one (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    standin = WebPushStandin(args.host, args.port).start()
    log.info("web push stand-in listening on %s (Ctrl-C to stop)", standin.base_url)
    # Ctrl-C stops it even when started with SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
