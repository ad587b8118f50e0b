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

The same controls are exposed over HTTP under ``/_standin/`` so another
process (the demo CLI) can drive it; ``python -m standins.webpush --help``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@dataclass
class _Subscription:
    id: str
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    application_server_key: bytes | None
    messages: list[ReceivedMessage] = field(default_factory=list)
    attempts: int = 0
    behavior: _Behavior | None = None


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
        self._open_connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> WebPushStandin:
        """Bind the socket and serve in a daemon thread; returns ``self``."""
        if self._server is not None or self._stopped:
            raise RuntimeError("a WebPushStandin can be started only once")
        server = _Server((self._host, self._port), _Handler, self)
        try:
            port = server.server_address[1]
            host = f"[{self._host}]" if ":" in self._host else self._host
            self._base_url = f"http://{host}:{port}"
            thread = threading.Thread(
                target=server.serve_forever,
                # stop() waits up to one poll interval: keep test teardown quick.
                kwargs={"poll_interval": 0.02},
                name=f"webpush-standin:{port}",
                daemon=True,
            )
            thread.start()
        except BaseException:
            server.server_close()
            raise
        self._server, self._thread = server, thread
        log.debug("web push stand-in listening on %s", self._base_url)
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and open connections.

        Idempotent.  Open keep-alive connections are shut down so their
        handler threads see EOF, close their sockets and exit.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopped = True
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        with self._lock:
            open_connections = list(self._open_connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        if thread is not None:
            thread.join()

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
    ) -> None:
        """Script the answers to the next ``times`` pushes (``None``: all of them).

        ``status`` other than 201 is answered without validating or storing
        anything; 429/503 carry ``Retry-After`` when ``retry_after`` is set.
        ``delay`` seconds are slept before answering, whatever the status.
        """
        if not 100 <= int(status) <= 599:
            raise ValueError(f"not an HTTP status: {status!r}")
        if times is not None and times < 1:
            raise ValueError("times must be None or >= 1")
        if delay < 0 or (retry_after is not None and retry_after < 0):
            raise ValueError("delay and retry_after must be >= 0")
        behavior = _Behavior(int(status), retry_after, times, float(delay))
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

        The checks run in the order real services apply them, so a request
        with several faults gets the same answer as in production.
        """
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
        if behavior is not None:
            if behavior.delay:
                time.sleep(behavior.delay)
            if behavior.status != 201:
                extra: dict[str, str] = {}
                if behavior.status in (429, 503) and behavior.retry_after is not None:
                    extra["Retry-After"] = str(behavior.retry_after)
                return behavior.status, extra, "scripted by set_behavior"

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
        return 201, {"Location": location, "TTL": str(ttl)}, f"{len(payload)} bytes"

    def _check_vapid(self, sub: _Subscription, authorization: str | None) -> tuple[dict, str]:
        """Verify an RFC 8292 ``vapid t=<jwt>, k=<key>`` header; returns (claims, k)."""
        if not authorization:
            raise _PushError(401, "missing Authorization")
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
        if not isinstance(claims["exp"], (int, float)) or claims["exp"] > time.time() + MAX_VAPID_LIFETIME:
            raise _PushError(401, "VAPID exp is more than 24 hours ahead")
        if not claims["sub"].startswith(("mailto:", "https:")):
            raise _PushError(401, "VAPID sub must be a mailto: or https: URI")
        return claims, k

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

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections_accepted += 1
            self._open_connections.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
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
    return {"code": status, "error": HTTPStatus(status).phrase, "message": message}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its stand-in and speaks IPv6 when asked."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, standin: WebPushStandin) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.standin = standin
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Registered here, in the serving thread, so stop() sees every
        # connection accepted before shutdown() returned.
        self.standin._connection_opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.standin._connection_closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (or stop() cutting a slow answer) are routine
        # here; keep them off stderr.
        log.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the stand-in; keeps HTTP/1.1 connections alive."""

    protocol_version = "HTTP/1.1"
    server_version = "pushq-webpush-standin"
    # Idle keep-alive connections are closed after this, like real services.
    timeout = 120
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle
    # plus the client's delayed ACK adds ~40 ms per response on keep-alive.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes | None:
        """Read exactly Content-Length bytes; None after answering an error."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send_json(411, _error(411, "send a Content-Length"))
            return None
        length_text = (self.headers.get("Content-Length") or "0").strip()
        if not length_text.isdigit():
            self.close_connection = True
            self._send_json(400, _error(400, "bad Content-Length"))
            return None
        length = int(length_text)
        if length > _MAX_READ_BODY:
            # Not worth reading to keep the connection in sync: close it.
            self.close_connection = True
            self._send_json(413, _error(413, f"body exceeds {MAX_PUSH_BODY} bytes"))
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        standin = self.server.standin
        path = urlsplit(self.path).path
        try:
            if path.startswith("/push/"):
                self._handle_push(path[len("/push/"):], body)
            elif path == "/_standin" or path.startswith("/_standin/"):
                status, payload = standin._control(self.command, path, body)
                self._send_json(status, payload)
            else:
                self._send_json(404, _error(404, "no such endpoint"))
        except Exception:
            log.exception("web push stand-in failed on %s %s", self.command, path)
            self.close_connection = True
            self._send_json(500, _error(500, "stand-in error"))

    def _handle_push(self, sub_id: str, body: bytes) -> None:
        if not sub_id or "/" in sub_id:
            self._send_json(404, _error(404, "no such endpoint"))
            return
        if self.command != "POST":
            self._send_json(405, _error(405, "use POST"), {"Allow": "POST"})
            return
        try:
            status, headers, detail = self.server.standin._push(sub_id, self.headers, body)
        except _PushError as exc:
            status, headers, detail = exc.status, {}, exc.message
        # One line per push; subscription ids are not key material.
        log.info("push %s -> %d (%s)", sub_id, status, detail)
        if status == 201:
            self._send(status, b"", headers)
        else:
            self._send_json(status, _error(status, detail), headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        content_type = {"Content-Type": "application/json"} if payload is not None else {}
        self._send(status, data, {**content_type, **(headers or {})})

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 204:  # RFC 9110 §8.6: no Content-Length on 204
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if data:
            self.wfile.write(data)


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
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
