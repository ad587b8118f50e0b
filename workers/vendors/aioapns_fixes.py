"""pushq's fixes to aioapns, in one place, each with a named test in tests/test_apns_client.py.

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
  ``max_connection_attempts``), which can push twice. The wire client does
  not use it: it takes a connection from the pool and writes each request once. A
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
  otherwise keep every later push timing out); an answer's ``apns-id`` or
  ``:status`` that is not UTF-8 no longer kills the connection (aioapns decodes
  them strictly inside ``data_received``).
* A time to live of 0 is sent as ``apns-expiration: 0`` (Apple: attempt delivery
  once, do not store); aioapns sends the current time instead.

aioapns is pinned to the 4.0 series (setup.cfg install_requires): this module subclasses its
protocol and reads its pool's ``connections`` and the channel pool's ``_waiters``;
``tests/test_apns_client.py::test_the_aioapns_internals_pushq_relies_on_are_there``
fails if a release moves them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

from aioapns import NotificationRequest
from aioapns.common import NotificationResult
from aioapns.connection import APNsTLSClientProtocol, AuthorizationHeaderProvider
from aioapns.exceptions import ConnectionClosed
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, NoAvailableStreamIDError

from shared.message import compact_json

log = logging.getLogger(__name__)

_MAX_ERROR_BODY = 64 * 1024


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
        data = getattr(request, "payload", None) or compact_json(request.message)
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
                # 0 is Apple's "deliver once, do not store" (aioapns would send the current time).
                expiration = int(time.time()) + request.time_to_live if request.time_to_live > 0 else 0
                headers.append(("apns-expiration", str(expiration)))
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

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        notification_id = headers.get(b"apns-id", b"").decode("utf8", "replace")
        future = self.requests.get(notification_id)
        if future is None or future.done():
            self._drop_done(notification_id)
            on_late_answer = type(self).on_late_answer
            if on_late_answer is not None:
                on_late_answer()
            log.info(
                "late APNs answer %s for %s: the adapter had given up on it",
                headers.get(b":status", b"?").decode("ascii", "replace"),
                notification_id,
            )
        else:
            retry_after = headers.get(b"retry-after")
            if retry_after:
                self._retry_after[notification_id] = retry_after[:64].decode("ascii", "replace")
        # aioapns decodes apns-id and :status strictly: a non-UTF-8 value would raise inside
        # data_received and kill the connection with every answer in flight on it.
        status = headers.get(b":status", b"").decode("utf8", "replace")
        super().on_response_received(
            {**headers, b"apns-id": notification_id.encode("utf8", "replace"), b":status": status.encode()}
        )

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
