"""Apple Push Notification service (APNs) through aioapns: token auth over pooled HTTP/2.

Celery calls :meth:`ApnsAdapter.send_many` synchronously. The adapter keeps one
asyncio event loop on a daemon thread, so HTTP/2 connections and the provider
token (JWT) outlive a task; a chunk's deliveries go out concurrently over the
pooled connections and ``send_many`` waits for them, at most about
``connect_timeout + read_timeout``.

aioapns 4.0 provides the connection pool, the HTTP/2 framing and the provider
token. Its protocol class is replaced by :class:`PushqProtocol` (for Apple's
hosts as well as for a stand-in), which fixes what would make aioapns push twice
or hang:

* A late answer, after the adapter timed out on a request, made aioapns call
  ``set_result`` on the cancelled future: the InvalidStateError killed the
  connection and aioapns re-sent every request in flight on it. Finished
  futures are dropped before an answer is matched.
* aioapns never acknowledged received DATA: after ~64 KiB of error bodies on a
  connection the server could not send another error answer and those requests
  hung. Every DATA frame is acknowledged (WINDOW_UPDATE).
* ``APNsBaseConnectionPool.send_notification`` re-sends a request whose
  connection died after the request was written (up to
  ``max_connection_attempts``), which can push twice. The adapter does not use
  it: it takes a connection from the pool and writes each request once. A
  request that was written and then lost its connection is answered
  ``Outcome.retry("connection lost")`` and pushq's retry policy decides; only a
  request that never left (its connection was closing, or out of stream ids) is
  tried on another connection.
* aioapns made one provider token per connection; here a client's connections
  share one (Apple refuses token refreshes more often than every 20 minutes).
* Error bodies are parsed per stream, not per DATA frame; ``retry-after`` is
  kept; payloads are sent as the exact compact JSON that was size-checked; a
  request waits for HTTP/2 send window instead of failing (and takes its stream
  id from h2 just before its headers go out, so ids stay in increasing order);
  when every connection is at the server's stream limit a request waits for a
  stream instead of aioapns' 10 ms polling; a connection that stays silent while
  a request times out on it is dropped (a half-open TCP connection would
  otherwise keep every later push timing out).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import re
import ssl
import threading
import time
from datetime import datetime
from typing import Any, Callable, ClassVar, Sequence

from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import (
    APNsBaseConnectionPool,
    APNsDevelopmentClientProtocol,
    APNsProductionClientProtocol,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
    JWTAuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, NoAvailableStreamIDError

from shared.delivery import ClaimedDelivery
from shared.message import Message, compact_json
from shared.models import utcnow
from shared.outcomes import Outcome
from shared.payloads import PayloadTooLarge, fit_body
from workers.adapters.base import AppCredentials, parse_retry_after

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096
PRIORITY_HIGH = 10
PRIORITY_NORMAL = 5
CLOSE_TIMEOUT = 2.0  # seconds close() waits for connections to shut down cleanly
_RESULT_GRACE = 2.0  # seconds send_many waits beyond the per-request deadline
_MAX_ERROR_BODY = 64 * 1024
_HEX_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")


encode_payload = compact_json  # the exact bytes sent to APNs: compact UTF-8 JSON


def apns_message(content: Message, body: str | None = None) -> dict[str, Any]:
    """The APNs payload: ``aps`` for the system, ``data`` and ``url`` for the app."""
    aps: dict[str, Any] = {"alert": {"title": content.title, "body": content.body if body is None else body}}
    if content.badge is not None:
        aps["badge"] = content.badge
    if content.sound is not None:
        aps["sound"] = content.sound
    message: dict[str, Any] = {"aps": aps}
    if content.data:
        message["data"] = content.data
    if content.url:
        message["url"] = content.url
    return message


class PushRequest(NotificationRequest):
    """A NotificationRequest carrying its already encoded (and size-checked) payload."""

    __slots__ = ("payload",)

    def __init__(self, *args: Any, payload: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.payload = payload


class NotSent(Exception):
    """The request never left this connection: it is safe to try another one."""


def _tolerant(discard: Callable[[Any], Any] | None) -> Callable[[Any], None] | None:
    """aioapns' discard_connection raises if the connection never joined the pool
    (its creation was cancelled by a timeout); that must not break connection_lost."""
    if discard is None:
        return None

    def on_connection_lost(connection: Any) -> None:
        try:
            discard(connection)
        except ValueError:
            pass

    return on_connection_lost


class PushqProtocol(APNsTLSClientProtocol):
    """aioapns' APNs connection with pushq's fixes (see the module docstring).

    Used through a per-client subclass that also inherits the production or
    development protocol class and sets ``APNS_SERVER``/``APNS_PORT``,
    ``shared_auth`` and ``on_late_answer``.
    """

    shared_auth: ClassVar[AuthorizationHeaderProvider | None] = None
    on_late_answer: ClassVar[Callable[[], None] | None] = None

    def __init__(
        self,
        apns_topic: str,
        loop: asyncio.AbstractEventLoop | None = None,
        on_connection_lost: Callable[[Any], Any] | None = None,
        auth_provider: AuthorizationHeaderProvider | None = None,
    ) -> None:
        super().__init__(
            apns_topic,
            loop,
            _tolerant(on_connection_lost),  # type: ignore[arg-type]
            self.shared_auth or auth_provider,
        )
        self._bodies: dict[int, bytes] = {}
        self._retry_after: dict[str, str] = {}
        self._window_changed = asyncio.Event()
        self._lost = False
        self.last_received = time.monotonic()

    # ------------------------------------------------------------- state
    @property
    def closing(self) -> bool:
        return self._lost or self.transport is None or self.transport.is_closing()

    @property
    def is_busy(self) -> bool:
        # A closing connection is never handed out again by the pool.
        return self.closing or super().is_busy

    def abort(self) -> None:
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _drop_done(self, notification_id: str | None = None) -> None:
        """Forget finished futures (timed out, cancelled) so a late answer cannot
        set a result on them (aioapns 4.0 would raise InvalidStateError)."""
        if notification_id is not None:
            future = self.requests.get(notification_id)
            if future is not None and future.done():
                del self.requests[notification_id]
            return
        for done in [nid for nid, future in self.requests.items() if future.done()]:
            del self.requests[done]

    # -------------------------------------------------------------- send
    async def push(self, request: NotificationRequest) -> tuple[NotificationResult, str | None]:
        """Write ``request`` once on this connection; (result, retry-after header).

        Raises NotSent if nothing was written, ConnectionClosed if the connection
        died after the request was written (it is not re-sent).
        """
        if self.closing:
            raise NotSent("connection closing")
        data = getattr(request, "payload", None) or encode_payload(request.message)
        auth = self.auth_provider.get_header() if self.auth_provider else None
        try:
            # aioapns' ChannelPool counts concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS);
            # the stream id it hands out is not used: ids must be opened in increasing
            # order, so the id is taken from h2 below, right before the headers go out.
            await self.free_channels.acquire()
        except ConnectionClosed as exc:
            raise NotSent("connection closed while waiting for a stream") from exc
        except NoAvailableStreamIDError:
            pass  # aioapns' own counter; h2's is the one that matters
        try:
            # HTTP/2 flow control: wait for the server's WINDOW_UPDATE rather than fail.
            while (
                not self.closing
                and min(self.conn.outbound_flow_control_window, self.conn.remote_settings.initial_window_size)
                < len(data)
            ):
                await self._window_changed.wait()
            if self.closing:
                raise NotSent("connection closing")
            try:
                stream_id = self.conn.get_next_available_stream_id()
            except NoAvailableStreamIDError as exc:
                self.close()
                raise NotSent("connection out of stream ids") from exc
            headers = [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", f"/3/device/{request.device_token}"),
                ("host", self.APNS_SERVER),
                ("apns-id", request.notification_id),
                ("apns-topic", request.apns_topic or self.apns_topic),
            ]
            if request.time_to_live is not None:
                headers.append(("apns-expiration", str(int(time.time()) + request.time_to_live)))
            if request.priority is not None:
                headers.append(("apns-priority", str(request.priority)))
            if request.collapse_key is not None:
                headers.append(("apns-collapse-id", request.collapse_key))
            if request.push_type is not None:
                headers.append(("apns-push-type", request.push_type.value))
            if auth:
                headers.append(("authorization", auth))
            self.conn.send_headers(stream_id=stream_id, headers=headers)
        except BaseException as exc:
            self.free_channels.release()
            if isinstance(exc, H2Error):  # e.g. after GOAWAY: the stream was never opened
                self.close()
                raise NotSent(f"HTTP/2 state: {exc}") from exc
            raise
        try:
            self.conn.send_data(stream_id=stream_id, data=data, end_stream=True)
        except H2Error as exc:  # headers without END_STREAM: APNs never acts on it
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            self.flush()
            self.free_channels.release()
            raise NotSent(f"HTTP/2 refused the body: {exc}") from exc
        future: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.requests[request.notification_id] = future
        self.request_streams[stream_id] = request.notification_id
        written_at = time.monotonic()
        self.flush()
        try:
            return await future, self._retry_after.pop(request.notification_id, None)
        except asyncio.CancelledError:
            self._retry_after.pop(request.notification_id, None)
            if not self.closing and self.last_received < written_at:
                # Not a byte from the server since this request went out: a dead
                # (half-open) connection would keep every later push timing out.
                log.warning("APNs connection silent while a request timed out: dropping it")
                self.abort()
            raise

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        result, _ = await self.push(request)
        return result

    # ------------------------------------------------------------ receive
    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        try:
            super().data_received(data)
        finally:
            self._wake_window_waiters()

    def _wake_window_waiters(self) -> None:
        self._window_changed.set()
        self._window_changed = asyncio.Event()

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:  # type: ignore[override]
        notification_id = headers.get(b"apns-id", b"").decode("utf8", "replace")
        future = self.requests.get(notification_id)
        if future is None or future.done():
            self._drop_done(notification_id)
            if self.on_late_answer is not None:
                self.on_late_answer()
            log.info(
                "late APNs answer %s for %s: the adapter had given up on it",
                headers.get(b":status", b"?").decode("ascii", "replace"),
                notification_id,
            )
        else:
            retry_after = headers.get(b"retry-after")
            if retry_after:
                self._retry_after[notification_id] = retry_after.decode("ascii", "replace")
        super().on_response_received(headers)  # type: ignore[arg-type]

    def on_data_received(self, data: bytes, stream_id: int) -> None:
        # Hand the window back, or after ~64 KiB of error bodies the server stalls.
        self.conn.acknowledge_received_data(len(data), stream_id)
        body = self._bodies.pop(stream_id, b"") + data
        try:
            document = json.loads(body.decode("utf-8"))
        except ValueError:  # not complete yet (or not JSON): judged at the stream's end
            if len(body) <= _MAX_ERROR_BODY:
                self._bodies[stream_id] = body
            return
        notification_id = self.request_streams.get(stream_id)
        if notification_id is None:
            return  # not a request of ours
        self._drop_done(notification_id)
        if notification_id not in self.requests:  # a late answer: nobody waits for it
            del self.request_streams[stream_id]
            self.request_statuses.pop(notification_id, None)
            return
        if isinstance(document, dict) and document.get("reason") and notification_id in self.request_statuses:
            super().on_data_received(body, stream_id)
        else:
            self._bodies[stream_id] = body  # settled at the stream's end

    def on_stream_ended(self, stream_id: int) -> None:
        # aioapns forgets a stream only when an error body names a reason; settle
        # the rest here (200s, bodies without a reason) so nothing waits forever.
        notification_id = self.request_streams.pop(stream_id, None)
        body = self._bodies.pop(stream_id, None)
        if notification_id is not None:
            status = self.request_statuses.pop(notification_id, None)
            future = self.requests.pop(notification_id, None)
            if future is not None and not future.done():
                reason = None
                try:
                    document = json.loads((body or b"").decode("utf-8"))
                    if isinstance(document, dict) and isinstance(document.get("reason"), str):
                        reason = document["reason"]
                except ValueError:
                    pass
                future.set_result(NotificationResult(notification_id, status or "", description=reason))
        super().on_stream_ended(stream_id)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._drop_done()
        super().connection_lost(exc)
        self._bodies.clear()
        self.request_streams.clear()
        self.request_statuses.clear()
        self._wake_window_waiters()


class _BadCredentials(Exception):
    pass


def outcome_for(
    result: NotificationResult, retry_after: str | None, *, sandbox: bool, truncated: bool = False
) -> Outcome:
    """APNs' answer in pushq's outcome vocabulary."""
    status, reason = result.status, result.description or ""
    if status == "200":
        return Outcome.sent(result.notification_id, truncated)
    label = f"{reason or 'no reason'} ({status or 'no status'})"
    delay = parse_retry_after(retry_after)
    if reason in ("Unregistered", "ExpiredToken") or status == "410":
        return Outcome.dead_token(reason or "Unregistered")
    if reason == "BadDeviceToken":
        where = "sent to sandbox; a production token?" if sandbox else "sent to production; a sandbox token?"
        return Outcome.dead_token(f"BadDeviceToken ({where})")
    if reason == "InvalidProviderToken":
        return Outcome.rejected("InvalidProviderToken: check the app's APNs key id/team id")
    if reason == "ExpiredProviderToken":
        return Outcome.retry("ExpiredProviderToken: provider token too old", delay)
    if reason == "IdleTimeout":
        return Outcome.retry(f"APNs {label}", delay)
    if status == "429" or status.startswith("5") or not status:
        return Outcome.retry(f"APNs {label}", delay)
    if reason == "DeviceTokenNotForTopic":
        return Outcome.rejected("DeviceTokenNotForTopic: the device token is not for this app's bundle id")
    if reason in ("BadEnvironmentKeyIdInToken", "BadCertificateEnvironment"):
        environment = "sandbox" if sandbox else "production"
        return Outcome.rejected(f"{reason}: the app's APNs key is not valid for {environment}")
    return Outcome.rejected(f"APNs {label}")


class ApnsAdapter:
    """Pushes to iOS devices through APNs; see the module docstring.

    ``host``/``port``/``ca_file`` point it elsewhere than Apple (a stand-in);
    with ``host=None`` each app goes to Apple's production or sandbox host per
    its ``apns_use_sandbox`` flag. ``late_answers`` counts APNs answers that came
    after the adapter had given up on the request (a push reported ``retry`` that
    APNs may have delivered after all).
    """

    platform = "ios"

    def __init__(
        self,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        *,
        host: str | None = None,
        port: int = 443,
        ca_file: str | None = None,
        max_connections: int = 10,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.ssl_context = ssl.create_default_context()
        if ca_file:
            self.ssl_context.load_verify_locations(cafile=ca_file)
        self.ssl_context.set_alpn_protocols(["h2"])  # aioapns does not; APNs needs h2
        self.late_answers = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._abandoned: list[asyncio.AbstractEventLoop] = []
        self._clients: dict[tuple[str, ...], APNs] = {}  # touched only on the loop's thread

    # ----------------------------------------------------------- public
    def send_many(self, app: AppCredentials, deliveries: Sequence[ClaimedDelivery]) -> list[Outcome]:
        if not deliveries:
            return []
        if not (app.apns_private_key and app.apns_key_id and app.apns_team_id and app.apns_bundle_id):
            return [Outcome.rejected("app has no APNs credentials") for _ in deliveries]
        outcomes: list[Outcome | None] = []
        requests: list[tuple[int, PushRequest, bool]] = []
        for index, delivery in enumerate(deliveries):
            prepared = self._prepare(delivery, self.clock())  # the TTL left at this push
            if isinstance(prepared, Outcome):
                outcomes.append(prepared)
            else:
                outcomes.append(None)
                requests.append((index, *prepared))
        if requests:
            try:
                loop = self._running_loop()
                future = asyncio.run_coroutine_threadsafe(
                    self._send_chunk(app, [(request, truncated) for _, request, truncated in requests]), loop
                )
                try:
                    sent = future.result(timeout=self.connect_timeout + self.read_timeout + _RESULT_GRACE)
                except concurrent.futures.TimeoutError:
                    future.cancel()
                    log.error("APNs chunk of %d did not finish in time", len(requests))
                    sent = [Outcome.retry("APNs timed out") for _ in requests]
            except Exception:  # never let a client bug fail the task: retry later
                log.exception("APNs send failed")
                sent = [Outcome.retry("APNs client error") for _ in requests]
            for (index, _, _), outcome in zip(requests, sent):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def close(self) -> None:
        """Close every connection and stop the loop's thread. send_many may still be
        called afterwards: it starts afresh."""
        with self._lock:
            loop, thread, pid = self._loop, self._thread, self._pid
            self._loop = self._thread = self._pid = None
        if loop is None or thread is None:
            return
        if pid != os.getpid():
            self._abandoned.append(loop)  # a forked copy: its thread did not come along
            self._clients = {}
            return
        if thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=CLOSE_TIMEOUT + 3)
            except Exception:
                log.exception("APNs adapter did not shut down cleanly")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    # ------------------------------------------------------------ internals
    def _prepare(self, delivery: ClaimedDelivery, now: datetime) -> Outcome | tuple[PushRequest, bool]:
        if not _HEX_TOKEN.fullmatch(delivery.token):
            return Outcome.dead_token("BadDeviceToken (not a hex APNs device token)")
        content = delivery.message
        try:
            payload, truncated = fit_body(
                lambda body: encode_payload(apns_message(content, body)), content.body, MAX_PAYLOAD_BYTES
            )
        except PayloadTooLarge as exc:
            return Outcome.rejected(f"payload too large for APNs: {exc}")
        except (TypeError, ValueError) as exc:
            return Outcome.rejected(f"payload cannot be encoded as JSON: {exc}")
        request = PushRequest(
            device_token=delivery.token,
            message=json.loads(payload),
            notification_id=str(delivery.delivery_id),
            time_to_live=content.remaining_ttl(now),
            priority=PRIORITY_HIGH if content.priority == "high" else PRIORITY_NORMAL,
            collapse_key=content.collapse_key or None,
            push_type=PushType.ALERT,
            payload=payload,
        )
        return request, truncated

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self._pid != os.getpid():
                # Forked after the loop started (prefork): the thread stayed in the parent.
                self._abandoned.append(self._loop)
                self._loop = self._thread = None
                self._clients = {}
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=self._run_loop, args=(loop,), name="pushq-apns", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def _count_late_answer(self) -> None:
        self.late_answers += 1

    def _client(self, app: AppCredentials) -> APNs:
        assert app.apns_private_key and app.apns_key_id and app.apns_team_id and app.apns_bundle_id
        key_hash = hashlib.sha256(app.apns_private_key.encode()).hexdigest()
        cache_key = (
            str(app.app_id),
            app.apns_key_id,
            app.apns_team_id,
            app.apns_bundle_id,
            "sandbox" if app.apns_use_sandbox else "production",
            key_hash,
        )
        client = self._clients.get(cache_key)
        if client is not None:
            return client
        try:
            key = serialization.load_pem_private_key(app.apns_private_key.encode(), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise _BadCredentials("the app's APNs private key is not an EC P-256 key in PEM (.p8)")
        for stale in [k for k in self._clients if k[0] == cache_key[0]]:  # credentials changed
            self._clients.pop(stale).pool.close()
        client = APNs(
            key=app.apns_private_key,
            key_id=app.apns_key_id,
            team_id=app.apns_team_id,
            topic=app.apns_bundle_id,
            use_sandbox=app.apns_use_sandbox,
            max_connections=self.max_connections,
            max_connection_attempts=1,  # unused: the adapter never calls pool.send_notification
            ssl_context=self.ssl_context,
        )
        base = APNsDevelopmentClientProtocol if app.apns_use_sandbox else APNsProductionClientProtocol
        client.pool.protocol_class = type(  # type: ignore[assignment]
            f"Pushq{base.__name__}",
            (PushqProtocol, base),
            {
                "APNS_SERVER": self.host or base.APNS_SERVER,
                "APNS_PORT": self.port if self.host else base.APNS_PORT,
                "shared_auth": JWTAuthorizationHeaderProvider(
                    key=app.apns_private_key, key_id=app.apns_key_id, team_id=app.apns_team_id
                ),
                "on_late_answer": staticmethod(self._count_late_answer),
            },
        )
        self._clients[cache_key] = client
        return client

    async def _send_chunk(self, app: AppCredentials, requests: list[tuple[PushRequest, bool]]) -> list[Outcome]:
        try:
            client = self._client(app)
        except _BadCredentials as exc:
            return [Outcome.rejected(str(exc)) for _ in requests]
        return list(
            await asyncio.gather(
                *(self._push(client.pool, request, app.apns_use_sandbox, truncated) for request, truncated in requests)
            )
        )

    async def _push(
        self, pool: APNsBaseConnectionPool, request: PushRequest, sandbox: bool, truncated: bool
    ) -> Outcome:
        """One request, written at most once; bounded by connect_timeout + read_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout + self.read_timeout
        try:
            for _ in range(3):
                try:
                    connection = await asyncio.wait_for(
                        self._acquire(pool), max(min(self.connect_timeout, deadline - loop.time()), 0)
                    )
                except TimeoutError:
                    return Outcome.retry("timed out connecting to APNs")
                except ApnsConnectionError as exc:
                    cause = exc.__context__ or exc
                    return Outcome.retry(f"cannot connect to APNs: {type(cause).__name__}: {cause}")
                assert isinstance(connection, PushqProtocol)
                try:
                    result, retry_after = await asyncio.wait_for(
                        connection.push(request), max(min(self.read_timeout, deadline - loop.time()), 0)
                    )
                except NotSent as exc:
                    log.debug("APNs request %s not sent (%s): another connection", request.notification_id, exc)
                    continue
                except ConnectionClosed:
                    return Outcome.retry("connection lost")
                except TimeoutError:
                    return Outcome.retry("APNs timed out")
                return outcome_for(result, retry_after, sandbox=sandbox, truncated=truncated)
            return Outcome.retry("no usable APNs connection")
        except Exception as exc:
            log.exception("APNs request %s failed", request.notification_id)
            return Outcome.retry(f"APNs client error: {type(exc).__name__}")

    @staticmethod
    async def _acquire(pool: APNsBaseConnectionPool) -> PushqProtocol:
        """A connection to send on: one with a free stream, else a new one (up to
        max_connections), else the open one with the fewest waiters, where the
        request then waits for a stream (aioapns' pool would poll every 10 ms)."""
        connections: list[PushqProtocol] = pool.connections  # type: ignore[assignment]
        if len(connections) >= pool.max_connections and all(c.is_busy for c in connections):
            usable = [c for c in connections if not c.closing]
            if usable:
                return min(usable, key=lambda c: len(c.free_channels._waiters or ()))
        return await pool.acquire()  # type: ignore[return-value]

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:  # pushes of a send_many that stopped waiting
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            client.pool.close()  # TLS close_notify; connection_lost removes them from the pool
        deadline = loop.time() + CLOSE_TIMEOUT
        while any(client.pool.connections for client in clients) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for client in clients:
            for connection in list(client.pool.connections):
                if connection.transport is not None:
                    connection.transport.abort()
        while any(client.pool.connections for client in clients) and loop.time() < deadline + 1:
            await asyncio.sleep(0.01)
        for _ in range(3):  # transports close their sockets an iteration after connection_lost
            await asyncio.sleep(0)
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()
