"""A local stand-in for FCM HTTP v1, including its OAuth2 token endpoint.

It speaks the real wire protocol over a real socket (HTTP/1.1 with keep-alive),
so pushq's real FCM client code runs against it unchanged:

* ``POST /token`` is Google's OAuth2 token endpoint for the service-account
  JWT-bearer grant (RFC 7523).  The RS256 assertion is checked against the
  public key of a service account registered with :meth:`FcmStandin.new_service_account`
  or :meth:`FcmStandin.register_service_account`.
* ``POST /v1/projects/<project_id>/messages:send`` is FCM's send endpoint.  It
  checks the bearer token, the shape of the message (the parts pushq uses are
  checked closely, the rest loosely), reserved data keys, the 4096-byte size limit
  (the message without its target), and then answers
  according to the behaviour configured for the registration token with
  :meth:`FcmStandin.set_behavior`.

Point google-auth at it by giving the service-account info ``token_uri =
standin.token_uri`` (``new_service_account`` already does).  google-auth signs
the assertion with ``aud = "https://oauth2.googleapis.com/token"`` whatever
``token_uri`` is, so that is the audience checked here.

Only use ``credentials.refresh(request)`` / ``credentials.valid`` /
``credentials.token`` against the stand-in: google-auth >= 2.60's
``before_request`` (and so ``AuthorizedSession``) also starts a background
"regional access boundary" lookup at iamcredentials.googleapis.com, which is not
served here.

Run it on its own with ``python -m standins.fcm --help``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import secrets
import signal
import socket
import string
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["FcmMessage", "FcmStandin", "main"]

log = logging.getLogger(__name__)

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
MAX_ASSERTION_LIFETIME = 3600  # seconds between iat and exp
CLOCK_SKEW = 60  # seconds of leeway when checking iat / exp
MAX_MESSAGE_BYTES = 4096  # the message without its target (token, topic or condition)
# Data keys FCM keeps for itself: "from", "message_type", or any word starting with "google" or "gcm"
# (HTTP v1 reference), and the legacy API's "collapse_key".
_RESERVED_DATA_KEYS = frozenset({"from", "message_type", "collapse_key"})
_RESERVED_DATA_PREFIXES = ("google", "gcm")
MAX_TTL_SECONDS = 28 * 24 * 3600
MAX_BODY_BYTES = 1 << 20  # refuse request bodies larger than this outright

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"

# FCM errorCode -> (HTTP status, google.rpc status name, message)
FCM_ERRORS: dict[str, tuple[int, str, str]] = {
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send messages' of service 'fcm.googleapis.com'.",
    ),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
}

_DURATION_RE = re.compile(r"^(-?)(\d+)(?:\.(\d{1,9}))?s$")
_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
_TOPIC_RE = re.compile(r"^(?:/topics/)?[a-zA-Z0-9\-_.~%]+$")
_SEND_PATH_RE = re.compile(r"^/v1/projects/([^/]+)/messages:send$")


@dataclass(frozen=True)
class FcmMessage:
    """A message the stand-in accepted."""

    name: str  # "projects/<p>/messages/<id>" as returned to the client
    project_id: str
    message: dict  # the "message" object as received
    received_at: float  # time.time() when it was accepted


@dataclass
class _Behavior:
    error: str | None
    remaining: int | None  # None = until replaced
    delay: float
    retry_after: str | None
    body: bytes | None = None  # sent as it is instead of the usual answer


@dataclass(frozen=True)
class _ServiceAccount:
    client_email: str
    private_key_id: str
    project_id: str
    public_key: Any


@dataclass(frozen=True)
class _AccessToken:
    client_email: str
    project_id: str
    expires_at: float


class _ApiError(Exception):
    """An error answered in Google's JSON error shape."""

    def __init__(
        self,
        code: int,
        status: str,
        message: str,
        details: list[dict] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return {"error": err}


def _fcm_error(error_code: str, message: str | None = None, **kw: Any) -> _ApiError:
    code, status, default = FCM_ERRORS[error_code]
    details = [{"@type": FCM_ERROR_TYPE, "errorCode": error_code}, *kw.pop("extra_details", [])]
    return _ApiError(code, status, message or default, details, **kw)


def _invalid_field(field: str, description: str, *, fcm: bool = False) -> _ApiError:
    """400 INVALID_ARGUMENT for a bad field.

    Like the real API, errors found while parsing the JSON into the proto
    (wrong type, unknown name) carry only a BadRequest detail; semantic errors
    (``fcm=True``) also carry the FcmError detail with errorCode INVALID_ARGUMENT.
    """
    violation = {"@type": BAD_REQUEST_TYPE, "fieldViolations": [{"field": field, "description": description}]}
    if fcm:
        return _fcm_error("INVALID_ARGUMENT", description, extra_details=[violation])
    return _ApiError(400, "INVALID_ARGUMENT", description, [violation])


class _OAuthError(Exception):
    def __init__(self, error: str, description: str, code: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.code = code


# --------------------------------------------------------------------------
# Message shape checking (a subset of the FCM v1 Message proto)
# --------------------------------------------------------------------------

# Field "types": a nested dict is a message; strings name scalar checks.
_ANDROID_NOTIFICATION = {
    "title": "string",
    "body": "string",
    "icon": "string",
    "color": "color",
    "sound": "string",
    "tag": "string",
    "click_action": "string",
    "body_loc_key": "string",
    "body_loc_args": "list_string",
    "title_loc_key": "string",
    "title_loc_args": "list_string",
    "channel_id": "string",
    "ticker": "string",
    "sticky": "bool",
    "event_time": "string",
    "local_only": "bool",
    "notification_priority": ("PRIORITY_UNSPECIFIED", "PRIORITY_MIN", "PRIORITY_LOW", "PRIORITY_DEFAULT",
                              "PRIORITY_HIGH", "PRIORITY_MAX"),
    "default_sound": "bool",
    "default_vibrate_timings": "bool",
    "default_light_settings": "bool",
    "vibrate_timings": "list_duration",
    "visibility": ("VISIBILITY_UNSPECIFIED", "PRIVATE", "PUBLIC", "SECRET"),
    "notification_count": "int",
    "light_settings": "object",
    "image": "string",
    "bypass_proxy_notification": "bool",
    "proxy": "string",
}

_ANDROID = {
    "collapse_key": "string",
    "priority": "android_priority",
    "ttl": "ttl",
    "restricted_package_name": "string",
    "data": "map_string",
    "notification": _ANDROID_NOTIFICATION,
    "fcm_options": {"analytics_label": "string"},
    "direct_boot_ok": "bool",
    "bandwidth_constrained_ok": "bool",
    "restricted_satellite_ok": "bool",
}

_MESSAGE = {
    "name": "string",
    "data": "map_string",
    "notification": {"title": "string", "body": "string", "image": "string"},
    "android": _ANDROID,
    "webpush": {
        "headers": "map_string",
        "data": "map_string",
        "notification": "object",
        "fcm_options": {"link": "string", "analytics_label": "string"},
    },
    "apns": {
        "headers": "map_string",
        "payload": "object",
        "fcm_options": {"analytics_label": "string", "image": "string"},
        "live_activity_token": "string",
    },
    "fcm_options": {"analytics_label": "string"},
    "token": "string",
    "topic": "string",
    "condition": "string",
}

_REQUEST = {"message": _MESSAGE, "validate_only": "bool"}


def _snake(name: str) -> str:
    """lowerCamelCase -> snake_case (proto JSON accepts both spellings)."""
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _type_error(path: str, type_name: str, value: Any) -> _ApiError:
    return _invalid_field(path, f"Invalid value at '{path}' ({type_name}), {json.dumps(value)}")


def _parse_duration(path: str, value: Any) -> float:
    if not isinstance(value, str) or not (m := _DURATION_RE.match(value)):
        raise _type_error(path, "type.googleapis.com/google.protobuf.Duration", value)
    sign, whole, frac = m.groups()
    seconds = int(whole) + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)
    return -seconds if sign else seconds


def _check_object(path: str, value: Any, schema: dict) -> dict[str, Any]:
    """Check ``value`` against ``schema``; return it keyed by snake_case names."""
    if not isinstance(value, dict):
        raise _invalid_field(path, f"Invalid value at '{path}', {json.dumps(value)}: expected an object")
    normalized: dict[str, Any] = {}
    for key, item in value.items():
        name = key if key in schema else _snake(key)
        if name not in schema:
            where = f" at '{path}'" if path else ""
            raise _invalid_field(
                path or key, f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.'
            )
        if name in normalized:
            raise _invalid_field(f"{path}.{name}".lstrip("."), f"Field '{name}' given more than once.")
        if item is None:  # proto JSON: null means "not set"
            continue
        normalized[name] = _check_value(f"{path}.{name}".lstrip("."), item, schema[name])
    return normalized


def _check_value(path: str, value: Any, kind: Any) -> Any:
    if isinstance(kind, dict):
        return _check_object(path, value, kind)
    if isinstance(kind, tuple):  # a proto enum: one of its names
        if value not in kind:
            raise _invalid_field(path, f"Invalid value at '{path}', {json.dumps(value)}: not one of {', '.join(kind)}")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise _type_error(path, "TYPE_STRING", value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(path, "TYPE_BOOL", value)
    elif kind == "int":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.lstrip("-").isdigit()
        )
        if not ok:
            raise _type_error(path, "TYPE_INT32", value)
    elif kind == "object":
        if not isinstance(value, dict):
            raise _type_error(path, "type.googleapis.com/google.protobuf.Struct", value)
    elif kind == "map_string":
        if not isinstance(value, dict):
            raise _type_error(path, "map<string, string>", value)
        for i, (_k, v) in enumerate(value.items()):
            if not isinstance(v, str):
                raise _type_error(f"{path}[{i}].value", "TYPE_STRING", v)
    elif kind == "list_string":
        if not isinstance(value, list):
            raise _type_error(path, "TYPE_STRING", value)
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise _type_error(f"{path}[{i}]", "TYPE_STRING", v)
    elif kind == "list_duration":
        if not isinstance(value, list):
            raise _type_error(path, "type.googleapis.com/google.protobuf.Duration", value)
        for i, v in enumerate(value):
            _parse_duration(f"{path}[{i}]", v)
    elif kind == "ttl":
        seconds = _parse_duration(path, value)
        if not 0 <= seconds <= MAX_TTL_SECONDS:
            raise _invalid_field(
                path,
                f"Invalid value at '{path}': TTL must be between 0 and {MAX_TTL_SECONDS}s (28 days), got {value}",
                fcm=True,
            )
    elif kind == "android_priority":
        if value not in ("HIGH", "NORMAL", "high", "normal", 0, 1):
            raise _type_error(path, "type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority", value)
    elif kind == "color":
        if not isinstance(value, str):
            raise _type_error(path, "TYPE_STRING", value)
        if not _COLOR_RE.match(value):
            raise _invalid_field(path, f"Invalid color format: {value!r}; expected #rrggbb", fcm=True)
    else:  # pragma: no cover - schema typo
        raise AssertionError(f"unknown field kind {kind!r}")
    return value


def _check_send_request(body: Any) -> tuple[dict, dict, bool]:
    """Return (message as received, message normalized, validate_only)."""
    request = _check_object("", body, _REQUEST)
    if "message" not in request:
        raise _invalid_field("message", "Request contains an invalid argument: 'message' is required.")
    message = request["message"]
    received = body.get("message")
    targets = [t for t in ("token", "topic", "condition") if t in message]
    if len(targets) != 1:
        raise _invalid_field(
            "message",
            "Exactly one of message.token, message.topic or message.condition must be set"
            + (f" (got {', '.join(targets)})." if targets else "."),
            fcm=True,
        )
    if "token" in message and not message["token"]:
        raise _invalid_field("message.token", "The registration token is not a valid FCM registration token", fcm=True)
    if "topic" in message and not _TOPIC_RE.match(message["topic"]):
        raise _invalid_field("message.topic", f"Invalid topic name: {message['topic']!r}", fcm=True)
    if "condition" in message and not message["condition"].strip():
        raise _invalid_field("message.condition", "Invalid condition expression", fcm=True)
    for key in message.get("data") or {}:
        if key in _RESERVED_DATA_KEYS or key.startswith(_RESERVED_DATA_PREFIXES):
            raise _invalid_field("message.data", f"Invalid data payload key: {key}", fcm=True)
    # FCM counts what it delivers, not the target (a registration token's length never decides the fit).
    payload = {name: value for name, value in received.items() if name not in ("token", "topic", "condition")}
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise _invalid_field(
            "message",
            f"Message is too big: its size is {size} bytes, the maximum message size is {MAX_MESSAGE_BYTES} bytes.",
            fcm=True,
        )
    return received, message, bool(request.get("validate_only", False))


def _target_of(message: dict) -> str:
    """The key messages/behaviours/attempts are stored under."""
    if "token" in message:
        return message["token"]
    if "topic" in message:
        topic = message["topic"]
        return topic if topic.startswith("/topics/") else "/topics/" + topic
    return "condition:" + message["condition"]


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a worker opening its pool of
    # connections at once would see SYNs dropped and retransmitted a second later.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], standin: FcmStandin) -> None:
        self.standin = standin
        self.open_connections: set[socket.socket] = set()
        self.connections_changed = threading.Condition()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        with self.connections_changed:
            self.open_connections.add(request)
        self.standin._count_connection()
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[override]
        try:
            super().shutdown_request(request)
        finally:
            with self.connections_changed:
                self.open_connections.discard(request)
                self.connections_changed.notify_all()

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            log.debug("fcm stand-in: connection from %s ended: %r", client_address, exc)
        else:
            log.exception("fcm stand-in: error handling a request from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ESF"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    # Quiet: request lines go to logging at DEBUG (they hold no secrets).
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fcm stand-in %s - %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("fcm stand-in %s - %s", self.address_string(), format % args)

    # -- helpers --------------------------------------------------------

    def _send_json(self, code: int, body: dict | bytes, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, indent=2).encode("utf-8") + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_api_error(self, err: _ApiError) -> None:
        headers = dict(err.headers)
        self._send_json(err.code, err.body(), headers)

    def _read_body(self) -> bytes | None:
        """Read exactly Content-Length bytes; answer and return None if we can't."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send_api_error(_ApiError(411, "INVALID_ARGUMENT", "Chunked request bodies are not supported."))
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.command in ("GET", "HEAD", "DELETE"):
                return b""
            self.close_connection = True
            self._send_api_error(_ApiError(411, "INVALID_ARGUMENT", "Content-Length is required."))
            return None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send_api_error(_ApiError(400, "INVALID_ARGUMENT", "Invalid Content-Length."))
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_api_error(_ApiError(413, "INVALID_ARGUMENT", "Request body too large."))
            return None
        data = self.rfile.read(length)
        if len(data) != length:
            self.close_connection = True
            return None
        return data

    # -- dispatch -------------------------------------------------------

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = urllib.parse.urlsplit(self.path).path
        standin = self.server.standin
        if path == "/token":
            code, payload = standin._handle_token(self.headers, body)
            self._send_json(code, payload, {"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate",
                                            "Pragma": "no-cache"})
            return
        m = _SEND_PATH_RE.match(urllib.parse.unquote(path))
        if m is None:
            self._send_api_error(_ApiError(404, "NOT_FOUND", f"Method not found: POST {path}"))
            return
        outcome = standin._handle_send(m.group(1), self.headers, body)
        if outcome is None:  # stopped while stalling
            self.close_connection = True
            return
        code, payload, headers = outcome
        self._send_json(code, payload, headers)

    def _not_found(self) -> None:
        if self._read_body() is None:
            return
        path = urllib.parse.urlsplit(self.path).path
        self._send_api_error(_ApiError(404, "NOT_FOUND", f"Method not found: {self.command} {path}"))

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_found


# --------------------------------------------------------------------------
# The stand-in
# --------------------------------------------------------------------------


class FcmStandin:
    """A local FCM HTTP v1 server with Google's OAuth2 token endpoint.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    #: Lifetime of issued access tokens (``expires_in``); lower it to make
    #: google-auth refresh (it refreshes tokens with < 225 s left).
    access_token_lifetime: int = 3599

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._accounts: dict[str, _ServiceAccount] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._messages: dict[str, list[FcmMessage]] = {}
        self._all_messages: list[FcmMessage] = []
        self._attempts: dict[str, int] = {}
        self._behaviors: dict[str, _Behavior] = {}
        self._token_requests = 0
        self._connections_accepted = 0

    # -- lifecycle --------------------------------------------------------

    def start(self) -> FcmStandin:
        """Bind and serve on a background daemon thread. Returns self."""
        with self._lock:
            if self._server is not None:
                return self
            if self._stopped:
                raise RuntimeError("FcmStandin cannot be restarted after stop(); make a new one")
            server = _Server((self.host, self.port), self)
            self._server = server
            self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"fcm-standin:{self.port}", daemon=True
        )
        self._thread.start()
        log.debug("fcm stand-in listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close every connection. Idempotent."""
        with self._lock:
            server, self._server = self._server, None
            self._stopped = True
        if server is None:
            return
        self._stopping.set()  # wake handlers stalled by a behaviour's delay
        server.shutdown()
        with server.connections_changed:
            for conn in list(server.open_connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            server.connections_changed.wait_for(lambda: not server.open_connections, timeout=5.0)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> FcmStandin:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("FcmStandin has no port yet: call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return self.base_url + "/token"

    def send_url(self, project_id: str) -> str:
        """The messages:send URL for a project."""
        return f"{self.base_url}/v1/projects/{project_id}/messages:send"

    # -- service accounts -------------------------------------------------

    def new_service_account(self, project_id: str) -> dict:
        """Make an RSA-2048 service account for ``project_id`` that this stand-in trusts.

        Returns a dict shaped exactly like the JSON key file Google hands out,
        with ``token_uri`` pointing here.
        """
        if not project_id or not isinstance(project_id, str):
            raise ValueError("project_id must be a non-empty string")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        client_email = f"firebase-adminsdk-{suffix}@{project_id}.iam.gserviceaccount.com"
        info = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": client_email,
            "client_id": str(secrets.randbelow(9 * 10**20) + 10**20),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
            + urllib.parse.quote(client_email, safe=""),
            "universe_domain": "googleapis.com",
        }
        self.register_service_account(info)
        return info

    def register_service_account(self, info: dict) -> None:
        """Trust an existing service account (its public key is derived from ``private_key``)."""
        missing = [k for k in ("client_email", "private_key", "private_key_id", "project_id") if not info.get(k)]
        if missing:
            raise ValueError(f"service-account info lacks {', '.join(missing)}")
        if info.get("type", "service_account") != "service_account":
            raise ValueError(f"not a service account: type {info.get('type')!r}")
        private_key = serialization.load_pem_private_key(info["private_key"].encode("ascii"), password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError("service-account private_key must be an RSA key")
        account = _ServiceAccount(
            client_email=info["client_email"],
            private_key_id=info["private_key_id"],
            project_id=info["project_id"],
            public_key=private_key.public_key(),
        )
        with self._lock:
            self._accounts[account.client_email] = account

    # -- behaviour and inspection ----------------------------------------

    def set_behavior(
        self,
        registration_token: str,
        error: str | None = None,
        *,
        times: int | None = None,
        delay: float = 0.0,
        retry_after: int | str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Configure how sends to ``registration_token`` are answered.

        ``error`` is an FCM errorCode (see ``FCM_ERRORS``) or None for success.
        ``times`` limits it to the next N send attempts (then: plain success);
        None keeps it until replaced.  ``delay`` stalls each answer that many
        seconds.  ``retry_after`` is sent as the Retry-After header (seconds or
        an HTTP-date).  ``body`` is sent as it is instead of the usual answer
        (with the error's status, or 200): a hostile FCM's strings.  A call
        replaces any previous behaviour for the token; ``set_behavior(token)``
        restores plain success.
        """
        if error is not None and error not in FCM_ERRORS:
            raise ValueError(f"unknown FCM error {error!r}; expected one of {sorted(FCM_ERRORS)} or None")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError("times must be a positive int or None")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if isinstance(retry_after, bool) or (isinstance(retry_after, int) and retry_after < 0):
            raise ValueError("retry_after must be a non-negative int, an HTTP-date string or None")
        behavior = _Behavior(error, times, float(delay), None if retry_after is None else str(retry_after), body)
        with self._lock:
            if error is None and not delay and retry_after is None and body is None:
                self._behaviors.pop(registration_token, None)
            else:
                self._behaviors[registration_token] = behavior

    def messages(self, registration_token: str) -> list[FcmMessage]:
        """Messages accepted for ``registration_token``, oldest first."""
        with self._lock:
            return list(self._messages.get(registration_token, ()))

    def all_messages(self) -> list[FcmMessage]:
        """Every accepted message, oldest first."""
        with self._lock:
            return list(self._all_messages)

    def attempts(self, registration_token: str) -> int:
        """Authenticated send requests naming ``registration_token`` (whatever their outcome)."""
        with self._lock:
            return self._attempts.get(registration_token, 0)

    @property
    def token_requests(self) -> int:
        """Access tokens issued by ``/token``."""
        with self._lock:
            return self._token_requests

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted (lets tests check keep-alive reuse)."""
        with self._lock:
            return self._connections_accepted

    def revoke_access_tokens(self) -> None:
        """Forget every issued access token: the next sends get 401 UNAUTHENTICATED."""
        with self._lock:
            self._access_tokens.clear()

    def reset(self) -> None:
        """Forget messages, behaviours and counters.

        Registered service accounts and issued access tokens stay valid.
        """
        with self._lock:
            self._messages.clear()
            self._all_messages.clear()
            self._attempts.clear()
            self._behaviors.clear()
            self._token_requests = 0
            self._connections_accepted = 0

    def _count_connection(self) -> None:
        with self._lock:
            self._connections_accepted += 1

    # -- /token -----------------------------------------------------------

    def _handle_token(self, headers: Any, body: bytes) -> tuple[int, dict]:
        try:
            token, expires_in = self._grant(body)
        except _OAuthError as e:
            log.debug("fcm stand-in /token refused: %s (%s)", e.error, e.description)
            return e.code, {"error": e.error, "error_description": e.description}
        return 200, {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}

    def _grant(self, body: bytes) -> tuple[str, int]:
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            raise _OAuthError("invalid_request", "Invalid request body.") from None
        grant_type = form.get("grant_type", [""])[0]
        if not grant_type:
            raise _OAuthError("unsupported_grant_type", "Invalid grant_type: ")
        if grant_type != JWT_BEARER_GRANT:
            raise _OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = form.get("assertion", [""])[0]
        if not assertion:
            raise _OAuthError("invalid_request", "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _OAuthError("invalid_grant", "Invalid JWT: could not be parsed.") from None
        issuer = claims.get("iss")
        with self._lock:
            account = self._accounts.get(issuer) if isinstance(issuer, str) else None
        if account is None:
            raise _OAuthError("invalid_grant", "Invalid grant: account not found")
        if header.get("alg") != "RS256" or header.get("kid") != account.private_key_id:
            raise _OAuthError("invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                issuer=account.client_email,
                leeway=CLOCK_SKEW,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.InvalidSignatureError:
            raise _OAuthError("invalid_grant", "Invalid JWT Signature.") from None
        except jwt.InvalidAudienceError:
            raise _OAuthError(
                "invalid_grant", f"Invalid JWT: Failed audience check. The right audience is {GOOGLE_TOKEN_AUDIENCE}"
            ) from None
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise _OAuthError(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            ) from None
        except jwt.PyJWTError as e:
            raise _OAuthError("invalid_grant", f"Invalid JWT: {e}") from None
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)) or not 0 < exp - iat <= MAX_ASSERTION_LIFETIME:
            raise _OAuthError(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            )
        sub = claims.get("sub")
        if sub is not None and sub != account.client_email:
            raise _OAuthError(
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, "
                "or client not authorized for any of the scopes requested.",
                code=401,
            )
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.strip():
            raise _OAuthError("invalid_scope", "Empty or missing scope not allowed.")
        scopes = scope.split()
        if FCM_SCOPE not in scopes and CLOUD_PLATFORM_SCOPE not in scopes:
            raise _OAuthError(
                "invalid_scope", f"The scope must include {FCM_SCOPE} to send FCM messages; got {scope!r}."
            )
        access_token = "ya29.standin-" + base64.urlsafe_b64encode(os.urandom(48)).decode("ascii").rstrip("=")
        lifetime = int(self.access_token_lifetime)
        with self._lock:
            self._access_tokens[access_token] = _AccessToken(
                account.client_email, account.project_id, time.time() + lifetime
            )
            self._token_requests += 1
        log.debug("fcm stand-in issued an access token for %s", account.client_email)
        return access_token, lifetime

    # -- messages:send ---------------------------------------------------

    def _authenticate(self, project_id: str, headers: Any) -> None:
        auth = headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        with self._lock:
            grant = self._access_tokens.get(token) if scheme.lower() == "bearer" and token else None
        if grant is None or grant.expires_at <= time.time():
            if grant is not None:
                with self._lock:
                    self._access_tokens.pop(token, None)
            reason = "CREDENTIALS_MISSING" if not auth else "ACCESS_TOKEN_EXPIRED" if grant else "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            raise _ApiError(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential. "
                "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                [{"@type": ERROR_INFO_TYPE, "reason": reason, "domain": "googleapis.com",
                  "metadata": {"service": "fcm.googleapis.com", "method": "google.firebase.fcm.v1.FcmService.SendMessage"}}],
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )
        if grant.project_id != project_id:
            raise _ApiError(
                403,
                "PERMISSION_DENIED",
                f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project_id}' (or it may not exist).",
                [{"@type": ERROR_INFO_TYPE, "reason": "IAM_PERMISSION_DENIED", "domain": "cloudresourcemanager.googleapis.com",
                  "metadata": {"permission": "cloudmessaging.messages.create",
                               "resource": f"projects/{project_id}"}}],
            )

    def _handle_send(
        self, project_id: str, headers: Any, body: bytes
    ) -> tuple[int, dict | bytes, dict[str, str]] | None:
        try:
            return self._send(project_id, headers, body)
        except _ApiError as e:
            return e.code, e.body(), e.headers

    def _send(self, project_id: str, headers: Any, body: bytes) -> tuple[int, dict | bytes, dict[str, str]] | None:
        self._authenticate(project_id, headers)
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, ValueError) as e:
            raise _ApiError(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {e}") from None

        # Count the attempt as soon as we know whom it is for.
        named = parsed.get("message") if isinstance(parsed, dict) else None
        named_token = named.get("token") if isinstance(named, dict) else None
        if isinstance(named_token, str) and named_token:
            with self._lock:
                self._attempts[named_token] = self._attempts.get(named_token, 0) + 1

        received, message, validate_only = _check_send_request(parsed)
        target = _target_of(message)
        if "token" not in message:
            with self._lock:
                self._attempts[target] = self._attempts.get(target, 0) + 1

        with self._lock:
            behavior = self._behaviors.get(target)
            if behavior is not None and behavior.remaining is not None:
                behavior.remaining -= 1
                if behavior.remaining <= 0:
                    del self._behaviors[target]
        if behavior is not None and behavior.delay > 0 and self._stopping.wait(behavior.delay):
            return None
        extra_headers = {}
        if behavior is not None and behavior.retry_after is not None:
            extra_headers["Retry-After"] = behavior.retry_after
        if behavior is not None and behavior.error is not None:
            err = _fcm_error(behavior.error, headers=extra_headers)
            return err.code, err.body() if behavior.body is None else behavior.body, err.headers

        if validate_only:
            return 200, {"name": f"projects/{project_id}/messages/fake_message_id"}, extra_headers
        message_id = f"0:{time.time_ns() // 1000}%{secrets.token_hex(8)}"
        record = FcmMessage(
            name=f"projects/{project_id}/messages/{message_id}",
            project_id=project_id,
            message=received,
            received_at=time.time(),
        )
        with self._lock:
            self._messages.setdefault(target, []).append(record)
            self._all_messages.append(record)
        if behavior is not None and behavior.body is not None:
            return 200, behavior.body, extra_headers
        return 200, {"name": record.name}, extra_headers


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.fcm",
        description=(
            "Run a local stand-in for FCM HTTP v1 and Google's OAuth2 token endpoint.\n"
            "It serves POST /token (the service-account JWT-bearer grant) and\n"
            "POST /v1/projects/<project>/messages:send, and accepts every well-formed\n"
            "message sent with an access token issued to a trusted service account."
        ),
        epilog=(
            "example:\n"
            "  python -m standins.fcm --port 8471 --project demo --write-service-account sa.json\n"
            "then load sa.json with\n"
            "  google.oauth2.service_account.Credentials.from_service_account_file(\n"
            "      'sa.json', scopes=['https://www.googleapis.com/auth/firebase.messaging'])\n"
            "(its token_uri already points here) and POST messages to\n"
            "  http://127.0.0.1:8471/v1/projects/demo/messages:send\n"
            "Stop with Ctrl-C or SIGTERM."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--project", help="project id for --write-service-account")
    parser.add_argument(
        "--write-service-account",
        metavar="PATH",
        help="generate a service-account key file for --project, trusted by this server, and write it to PATH",
    )
    parser.add_argument(
        "--trust-service-account",
        metavar="PATH",
        action="append",
        default=[],
        help="trust an existing service-account key file (may be repeated)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests at DEBUG level to stderr")
    args = parser.parse_args(argv)
    if args.write_service_account and not args.project:
        parser.error("--write-service-account needs --project")
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")

    standin = FcmStandin(args.host, args.port)
    for path in args.trust_service_account:
        with open(path, encoding="utf-8") as f:
            standin.register_service_account(json.load(f))
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _on_signal)
    standin.start()
    try:
        if args.write_service_account:
            info = standin.new_service_account(args.project)
            fd = os.open(args.write_service_account, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)
            print(f"wrote service account {info['client_email']} to {args.write_service_account}", flush=True)
        print(f"FCM stand-in listening on {standin.base_url} (token_uri {standin.token_uri})", flush=True)
        # Ctrl-C stops it even when started with SIGINT ignored (a background job of a non-interactive shell).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        standin.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
