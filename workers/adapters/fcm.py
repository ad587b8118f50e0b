"""Firebase Cloud Messaging (HTTP v1) through google-auth and pooled aiohttp connections.

* Access tokens come from the app's service account (its own ``token_uri``) with
  ``google.oauth2.service_account.Credentials``; one credentials object is cached
  per (app, private_key_id) and its token is reused until google-auth's
  ``valid`` says it is near expiry. A refresh runs on a refresher thread and
  chunks needing a token share it (one token request for concurrent chunks);
  each waits at most the push deadline, so a slow token endpoint cannot hold a
  chunk past its time limit.
* ``credentials.before_request`` and ``AuthorizedSession`` are deliberately not
  used: in google-auth >= 2.60 they also start a background "regional access
  boundary" lookup at iamcredentials.googleapis.com. The adapter calls
  ``credentials.refresh`` itself and writes the ``Authorization`` header.
* The token request itself goes through the same wire client as the pushes
  (:class:`_WireTokenTransport`, google-auth's transport interface), under the
  push deadline.
* The deliveries of a chunk are sent concurrently (:class:`workers.adapters.pushes.PushRunner`,
  as for Web Push: one event loop per worker process, the wire client's
  connections reused across tasks, HTTP/2 to FCM by ALPN), at most
  ``max_workers`` at once, each push bounded by the push deadline
  (``PUSHQ_PUSH_DEADLINE_SECONDS``) and the whole chunk, token fetch included, by
  its waves of deadlines; answers that came back are kept when the chunk stops
  early. (httpx's async pool was measured at ~7 ms of CPU per request here: it
  rescans every waiting request and polls every idle socket on each change.)
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import google.auth.exceptions
import google.auth.transport
from google.oauth2 import service_account

from shared import vendor_payloads
from shared.clock import utcnow
from shared.outcomes import Outcome
from shared.payloads import PayloadTooLarge
from shared.pipeline.values import ClaimedDelivery
from shared.platforms import FCM_MAX_MESSAGE_BYTES
from shared.vendor_payloads import fcm_with_token
from workers.adapters.base import AppCredentials, chunk_budget, parse_retry_after, vendor_text
from workers.adapters.pushes import PushRunner
from workers.vendors.wire import Headers, Protocol, Request, WireClient, WireError

log = logging.getLogger(__name__)

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_MESSAGE_BYTES = FCM_MAX_MESSAGE_BYTES  # the serialized ``message`` object, its target left out
MAX_TTL_SECONDS = vendor_payloads.FCM_MAX_TTL_SECONDS  # FCM's android.ttl range is 0-28 days
QUOTA_RETRY_FLOOR_SECONDS = 60.0  # Google: back off at least a minute on QUOTA_EXCEEDED
MAX_REASON_CHARS = 300
MAX_NAME_CHARS = 512  # "projects/<project>/messages/<id>"
MAX_ANSWER_BYTES = 64 * 1024
MAX_TOKEN_ANSWER_BYTES = 64 * 1024


def fcm_data(delivery: ClaimedDelivery) -> dict[str, str]:
    """The delivery's ``data`` map as FCM receives it (string values): :func:`shared.vendor_payloads.fcm_data`."""
    return vendor_payloads.fcm_data(delivery.message)


def fcm_message(delivery: ClaimedDelivery, now: datetime) -> dict[str, Any]:
    """The HTTP v1 ``message`` object for one delivery (body as in the notification)."""
    result: dict[str, Any] = json.loads(fcm_with_token(vendor_payloads.fcm_payload(delivery.message, now), delivery.token))
    return result


def fit_message(delivery: ClaimedDelivery, now: datetime) -> tuple[bytes, bool]:
    """The serialized ``message``, its payload (all but the token) within 4096 bytes, the body shortened if needed.

    The payload is measured as the API measured it at accept
    (:func:`shared.vendor_payloads.fit`); FCM does not count the target. Returns
    (bytes, truncated); raises PayloadTooLarge if even an empty body does not fit.
    """
    payload, truncated = vendor_payloads.fit(vendor_payloads.ANDROID, delivery.message, now)
    return fcm_with_token(payload, delivery.token), truncated


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def classify_response(response: _Answer, truncated: bool = False) -> tuple[Outcome, bool]:
    """FCM's answer as an Outcome, and whether the access token must be dropped (401).

    Google's error shape is ``{"error": {"code", "status", "message", "details":
    [{"@type": "...FcmError", "errorCode": ...}]}}``; the FCM errorCode decides
    when present, the HTTP status otherwise.
    """
    status = response.status_code
    try:
        payload = response.json()
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
        payload = None
    if status == 200:
        name = payload.get("name") if isinstance(payload, dict) else None
        return Outcome.sent(vendor_text(name, MAX_NAME_CHARS) if isinstance(name, str) else None, truncated), False

    # Every string of the answer is untrusted: NUL, lone surrogates ("\ud800" in JSON) and any length.
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    error_code = None
    details = error.get("details")
    for detail in details[:20] if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("FcmError") and detail.get("errorCode"):
            error_code = vendor_text(detail["errorCode"], 64)
            break
    google_status = vendor_text(error.get("status"), 64) if isinstance(error.get("status"), str) else None
    message = vendor_text(error.get("message"), MAX_REASON_CHARS) if isinstance(error.get("message"), str) else ""
    label = error_code or google_status or "error"
    reason = _shorten(f"FCM answered {status} {label}" + (f": {message}" if message else ""))
    retry_after = parse_retry_after(response.headers.get("Retry-After"))

    if error_code in ("UNREGISTERED", "SENDER_ID_MISMATCH"):
        return Outcome.dead_token(reason), False
    if error_code == "INVALID_ARGUMENT" or status == 400:
        return Outcome.rejected(reason), False
    if error_code == "QUOTA_EXCEEDED" or status == 429:
        return Outcome.retry(reason, max(retry_after or 0.0, QUOTA_RETRY_FLOOR_SECONDS)), False
    if error_code in ("UNAVAILABLE", "INTERNAL") or status >= 500 or status == 408:
        return Outcome.retry(reason, retry_after), False
    if error_code == "THIRD_PARTY_AUTH_ERROR":  # APNs/Web Push credentials in the Firebase project
        return Outcome.rejected(reason), False
    if status == 401:  # our access token was refused (revoked or expired early)
        return Outcome.retry(reason), True
    if status == 403:
        return Outcome.rejected(f"{reason} (check the app's FCM project id and service account)"), False
    # 404 without UNREGISTERED (a wrong base URL or project) and anything else:
    # never a reason to disable the device.
    return Outcome.rejected(reason), False


class _TokenAnswer(google.auth.transport.Response):
    """The token endpoint's answer as google-auth reads it."""

    def __init__(self, status: int, headers: Headers, data: bytes) -> None:
        self._status, self._headers, self._data = status, headers, data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        return dict(self._headers.items())

    @property
    def data(self) -> bytes:
        return self._data


class _WireTokenTransport(google.auth.transport.Request):
    """google-auth's transport interface over the wire client (called on a refresher thread;
    the request runs on the pushes' event loop), bounded by ``deadline`` seconds."""

    def __init__(self, pushes: PushRunner, deadline: float) -> None:
        self.pushes, self.deadline = pushes, deadline

    def __call__(
        self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any
    ) -> google.auth.transport.Response:
        data = body.encode() if isinstance(body, str) else bytes(body or b"")
        request = Request(method, url, [(str(k), str(v)) for k, v in (headers or {}).items()], data)
        client = self.pushes.client
        try:
            answer = self.pushes.call(
                lambda: client.request(request, deadline=self.deadline, max_body=MAX_TOKEN_ANSWER_BYTES),
                self.deadline + 1.0)
        except (TimeoutError, WireError, ValueError, concurrent.futures.CancelledError) as exc:
            raise google.auth.exceptions.TransportError(f"{type(exc).__name__}: {exc}") from exc
        return _TokenAnswer(answer.status, answer.headers, answer.body)


class _CredentialsProblem(Exception):
    """No access token could be had; carries the outcome for every delivery."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


@dataclass
class _AppAuth:
    private_key_id: str
    credentials: service_account.Credentials
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The token request under way (on the refresher thread); chunks waiting for a token share it.
    refreshing: concurrent.futures.Future[Outcome | None] | None = None


class FcmAdapter:
    platform = "android"

    def __init__(
        self,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        *,
        base_url: str = "https://fcm.googleapis.com",
        max_workers: int = 16,
        deadline: float | None = None,
        cleartext: Protocol = Protocol.HTTP1,
        ca_file: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self.max_workers = max(1, max_workers)
        # The whole of one push: connect, send and the whole answer (a per-read timeout alone
        # lets a service answering one byte at a time hold the worker without end).
        self.deadline = deadline if deadline is not None else connect_timeout + read_timeout
        client = WireClient(connect_timeout=connect_timeout, cleartext=cleartext, ca_file=ca_file,
                            max_http1_connections=self.max_workers)
        self.pushes = PushRunner("FCM", client, concurrency=self.max_workers, deadline=self.deadline)
        # Token requests (rare) run through the same client, on threads of their own so a chunk
        # waits for a token at most the push deadline.
        self._refresher: concurrent.futures.ThreadPoolExecutor | None = None
        self._refresher_pid = os.getpid()
        self.token_request = _WireTokenTransport(self.pushes, self.deadline)
        self._auth: dict[uuid.UUID, _AppAuth] = {}
        self._auth_lock = threading.Lock()

    # -- credentials ---------------------------------------------------------

    def _app_auth(self, app: AppCredentials) -> tuple[_AppAuth, str]:
        """The app's cached credentials and its FCM project id."""
        if not app.fcm_service_account:
            raise _CredentialsProblem(Outcome.rejected("app has no FCM credentials"))
        try:
            info = json.loads(app.fcm_service_account)
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise _CredentialsProblem(Outcome.rejected(f"FCM service account is not valid JSON: {exc}")) from None
        project_id = app.fcm_project_id or info.get("project_id")
        if not project_id or not isinstance(project_id, str):
            raise _CredentialsProblem(Outcome.rejected("app has no FCM project id"))
        key_id = str(info.get("private_key_id") or "")
        with self._auth_lock:
            cached = self._auth.get(app.app_id)
            if cached is not None and cached.private_key_id == key_id:
                return cached, project_id
        try:
            credentials = service_account.Credentials.from_service_account_info(info, scopes=[FCM_SCOPE])
        except (ValueError, TypeError, KeyError) as exc:
            # google-auth's messages name missing fields, never the key material.
            raise _CredentialsProblem(Outcome.rejected(f"invalid FCM service account: {exc}")) from None
        auth = _AppAuth(key_id, credentials)
        with self._auth_lock:
            cached = self._auth.get(app.app_id)
            if cached is not None and cached.private_key_id == key_id:
                return cached, project_id  # another thread got there first
            self._auth[app.app_id] = auth  # replaces a rotated key's entry
        return auth, project_id

    def _access_token(self, auth: _AppAuth, wait: float) -> str:
        """A valid access token, waiting at most ``wait`` seconds for the token endpoint.

        The refresh runs on a refresher thread; a chunk that stops waiting leaves it to
        finish (bounded by the connect/read timeouts) for the next chunk to use.
        """
        with auth.lock:
            credentials = auth.credentials
            if credentials.valid:
                return str(credentials.token)
            if auth.refreshing is None or auth.refreshing.done():
                auth.refreshing = self._refresher_pool().submit(self._refresh, credentials)
            refreshing = auth.refreshing
        try:
            problem = refreshing.result(timeout=max(wait, 0.0))
        except concurrent.futures.TimeoutError:
            raise _CredentialsProblem(
                Outcome.retry(f"FCM token endpoint did not answer within {wait:.1f} s (the push deadline)")
            ) from None
        if problem is not None:
            raise _CredentialsProblem(problem)
        with auth.lock:
            token = credentials.token
        if not token:  # dropped (401) since: the next chunk refreshes
            raise _CredentialsProblem(Outcome.retry("FCM access token refused; refreshing"))
        return str(token)

    def _refresh(self, credentials: service_account.Credentials) -> Outcome | None:
        """Fetch a new access token (refresher thread); None when it worked, else every delivery's outcome."""
        try:
            credentials.refresh(self.token_request)
        except google.auth.exceptions.TransportError as exc:
            return Outcome.retry(_shorten(f"FCM token endpoint unreachable: {_describe(exc)}"))
        except google.auth.exceptions.RefreshError as exc:
            if exc.retryable:
                return Outcome.retry(_shorten(f"FCM token endpoint failed: {_describe(exc)}"))
            return Outcome.rejected(_shorten(f"FCM service account refused by the token endpoint: {_describe(exc)}"))
        except Exception as exc:
            log.exception("fcm: token refresh failed")
            return Outcome.retry(f"FCM token refresh failed: {type(exc).__name__}")
        return None

    def _refresher_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._refresher is None or self._refresher_pid != os.getpid():  # a fork leaves the threads behind
            self._refresher = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="pushq-fcm-token")
            self._refresher_pid = os.getpid()
        return self._refresher

    @staticmethod
    def _drop_token(auth: _AppAuth, token: str) -> None:
        """Forget a refused access token (unless another thread already replaced it)."""
        with auth.lock:
            if auth.credentials.token == token:
                auth.credentials.token = None

    # -- sending -------------------------------------------------------------

    def send_many(self, app: AppCredentials, deliveries: Sequence[ClaimedDelivery]) -> list[Outcome]:
        """One outcome per delivery, in order; the deliveries go out concurrently.

        The token fetch and the pushes share the chunk's deadline (:func:`chunk_budget`).
        """
        if not deliveries:
            return []
        until = time.monotonic() + chunk_budget(len(deliveries), self.max_workers, self.deadline)
        try:
            auth, project_id = self._app_auth(app)
            token = self._access_token(auth, min(self.deadline, until - time.monotonic()))
        except _CredentialsProblem as problem:
            log.warning("fcm: app %s: %s", app.app_id, problem.outcome.reason)
            return [problem.outcome] * len(deliveries)
        url = f"{self.base_url}/v1/projects/{quote(project_id, safe='')}/messages:send"
        budget = max(until - time.monotonic(), 0.0)
        return self.pushes.run(len(deliveries), lambda i: self._send(auth, token, url, deliveries[i]), budget)

    async def _send(self, auth: _AppAuth, token: str, url: str, delivery: ClaimedDelivery) -> Outcome:
        try:
            message, truncated = fit_message(delivery, self.clock())  # the TTL left at this push
        except PayloadTooLarge as exc:
            return Outcome.rejected(f"payload too large for FCM: {exc}")
        headers = [("authorization", f"Bearer {token}"), ("content-type", "application/json; charset=UTF-8")]
        request = Request("POST", url, headers, b'{"message":' + message + b"}")
        try:
            async with self.pushes.limit(self.base_url):
                # Bounded: FCM's answers are small; a broken one must not be read without end.
                answer = await self.pushes.request(request, max_body=MAX_ANSWER_BYTES)
        except TimeoutError:
            return Outcome.retry("FCM timed out")
        except WireError as exc:
            return Outcome.retry(f"connection to FCM failed: {type(exc).__name__}")
        outcome, drop_token = classify_response(_Answer(answer.status, answer.headers, answer.body), truncated)
        if drop_token:
            self._drop_token(auth, token)
        return outcome

    def close(self) -> None:
        self.pushes.close()
        if self._refresher is not None:
            self._refresher.shutdown(wait=False, cancel_futures=True)
            self._refresher = None


class _Answer:
    """FCM's answer as :func:`classify_response` reads it (status, headers, JSON body; an
    ``httpx.Response`` has the same shape, which the tests use)."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, status_code: int, headers: Headers | Mapping[str, str], body: bytes) -> None:
        self.status_code, self.headers, self.body = status_code, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def _describe(exc: Exception) -> str:
    """A readable one-liner for a google-auth exception (its first argument)."""
    if exc.args:
        first = exc.args[0]
        if isinstance(first, BaseException):
            return f"{type(first).__name__}: {first}"
        return str(first)
    return type(exc).__name__
