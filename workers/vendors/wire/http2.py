"""One HTTP/2 connection (``h2``): many requests at once, each on its own stream.

* Streams: at most the server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` are open at
  once; a request beyond it waits for a stream to close (no polling). The first
  request waits for the server's SETTINGS, so the limit is known before it counts.
  Stream ids are taken from h2 just before the headers go out (ids must rise).
* Flow control: a body waits for send window (``WINDOW_UPDATE``) instead of
  failing, and every received DATA frame is acknowledged at once, so error
  bodies never exhaust the window the server needs to answer.
* Bounded answers: a body is read up to a bound, then the stream is reset
  (``CANCEL``) and the answer returned cut.
* Nothing is sent twice: a stream the server refused unprocessed
  (``REFUSED_STREAM``, or above a ``GOAWAY``'s last stream id) is
  :class:`NotSent`; one lost after it was written is :class:`ConnectionLost`.
* A request given up by its caller (the deadline) keeps its stream open a
  little (``late_grace``) so a late answer is seen and counted
  (``on_late_answer``) instead of breaking the connection; then it is reset. If
  the connection received nothing at all since such a request was written, a
  PING asks whether the server is still there; without a word back within
  ``ping_timeout`` the connection is presumed dead (half-open TCP) and dropped,
  so later requests do not all time out on it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

from workers.vendors.wire.answer import Answer, ConnectFailed, ConnectionLost, ConnectTimeout, Headers, NotSent, Request

__all__ = ["Http2Connection"]


class _Stream:
    __slots__ = ("abandoned", "answer", "body", "headers", "max_body", "status")

    def __init__(self, answer: asyncio.Future[Answer], max_body: int) -> None:
        self.answer = answer
        self.max_body = max_body
        self.status = 0
        self.headers: Headers | None = None
        self.body = bytearray()
        self.abandoned = False  # the caller stopped waiting; a late answer is counted, not returned


class Http2Connection(asyncio.Protocol):
    """See the module docstring. Created by :func:`workers.vendors.wire.addresses.connect`."""

    http_version = "2"

    def __init__(
        self, on_late_answer: Callable[[], None] | None = None, late_grace: float = 30.0, ping_timeout: float = 5.0
    ) -> None:
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._streams: dict[int, _Stream] = {}
        self._open = 0  # streams holding one of the server's concurrent-stream slots
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._window = asyncio.Event()
        self._settled: asyncio.Future[None] = self._loop.create_future()  # the server's first SETTINGS
        self.lost: asyncio.Future[None] = self._loop.create_future()  # done at connection_lost
        self._closed = False
        self._draining = False  # GOAWAY received or out of stream ids: no new streams
        self.on_late_answer = on_late_answer
        self.late_grace = late_grace
        self.ping_timeout = ping_timeout
        self._pinging = False
        self.last_received = time.monotonic()

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._flush()  # h2 queued a GOAWAY saying why
            self._terminate(ConnectionLost(f"HTTP/2 protocol error from the server: {exc}"))
            return
        for event in events:
            self._handle(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._terminate(ConnectionLost(f"connection lost: {type(exc).__name__}" if exc else "connection lost"))

    # -- state ----------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open and taking new streams."""
        return (not self._closed and not self._draining and self._transport is not None
                and not self._transport.is_closing())

    @property
    def max_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def has_room(self) -> bool:
        """Usable with a free stream now."""
        return self.usable and self._settled.done() and self._open + len(self._waiting) < self.max_streams

    @property
    def load(self) -> int:
        """Streams open and requests waiting for one (to pick the least busy connection)."""
        return self._open + len(self._waiting)

    @property
    def idle(self) -> bool:
        return self._open == 0 and not self._waiting

    async def settled(self, timeout: float) -> None:
        """Wait for the server's SETTINGS (the end of connecting)."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._settled)
        except TimeoutError:
            self.abort()
            raise ConnectTimeout("no HTTP/2 SETTINGS from the server in time") from None
        except ConnectionLost as exc:
            raise ConnectFailed(f"HTTP/2 connection failed: {exc}") from exc

    def close(self) -> None:
        """Say GOAWAY and close (streams in flight end as :class:`ConnectionLost`)."""
        if self._transport is not None and not self._closed:
            try:
                self._h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            self._transport.close()
        self._terminate(ConnectionLost("connection closed by pushq"))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._terminate(ConnectionLost("connection dropped"))

    # -- a request -------------------------------------------------------------

    async def request(self, request: Request, scheme: str, authority: str, path: str, max_body: int) -> Answer:
        """Send ``request`` on a new stream and wait for its answer (no timeout here: the
        caller's deadline). Raises :class:`NotSent` or :class:`ConnectionLost`."""
        await self._take_slot()
        try:
            stream_id = self._h2.get_next_available_stream_id()
            headers = [(b":method", request.method.encode()), (b":scheme", scheme.encode()),
                       (b":authority", authority.encode("ascii")), (b":path", path.encode("ascii")),
                       *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in request.headers)]
            if request.body:
                headers.append((b"content-length", str(len(request.body)).encode()))
            self._h2.send_headers(stream_id, headers, end_stream=not request.body)
        except h2.exceptions.NoAvailableStreamIDError as exc:
            self._draining = True
            self._give_back_slot()
            raise NotSent("connection out of stream ids") from exc
        except h2.exceptions.H2Error as exc:  # e.g. the connection is closing: the stream never opened
            self._give_back_slot()
            self.close()
            raise NotSent(f"HTTP/2 state: {exc}") from exc
        stream = self._streams[stream_id] = _Stream(self._loop.create_future(), max_body)
        body_done = not request.body
        try:
            await self._send_body(stream_id, stream, request.body)
            body_done = True
            written_at = time.monotonic()
            self._flush()
            return await stream.answer
        except asyncio.CancelledError:
            self._give_up(stream_id, stream, sent_whole=body_done,
                          silent=body_done and self.last_received < written_at)
            raise

    async def _send_body(self, stream_id: int, stream: _Stream, body: bytes) -> None:
        offset = 0
        while offset < len(body) and not stream.answer.done():
            window = min(self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size)
            if window <= 0:  # wait for the server's WINDOW_UPDATE (or SETTINGS) rather than fail
                self._flush()
                self._window.clear()
                await self._window.wait()
                if self._closed:
                    break
                continue
            chunk = body[offset:offset + window]
            offset += len(chunk)
            try:
                self._h2.send_data(stream_id, chunk, end_stream=offset >= len(body))
            except h2.exceptions.H2Error:  # the stream was reset meanwhile: its answer says so
                break

    def _give_up(self, stream_id: int, stream: _Stream, *, sent_whole: bool, silent: bool) -> None:
        """The caller stopped waiting (its deadline): see the module docstring."""
        if stream_id not in self._streams:  # answered or failed meanwhile
            return
        stream.answer.cancel()
        if not sent_whole:  # no END_STREAM yet: the server never acts on it
            self._reset(stream_id)
            return
        stream.abandoned = True
        self._loop.call_later(self.late_grace, self._reset, stream_id)
        if silent and not self._pinging:
            self._ping()

    def _ping(self) -> None:
        """Ask a silent server whether it is there; drop the connection if nothing comes back."""
        self._pinging = True
        asked_at = time.monotonic()
        try:
            self._h2.ping(asked_at.hex().encode()[:8].ljust(8, b"0"))
            self._flush()
        except h2.exceptions.H2Error:
            self.abort()
            return

        def judge() -> None:
            self._pinging = False
            if not self._closed and self.last_received < asked_at:
                self.abort()

        self._loop.call_later(self.ping_timeout, judge)

    # -- stream slots ----------------------------------------------------------

    async def _take_slot(self) -> None:
        if not self._settled.done():
            await self.settled(timeout=30.0)
        while self._open >= self.max_streams:
            if not self.usable:
                raise NotSent("connection closing")
            turn = self._loop.create_future()
            self._waiting.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._wake_next()  # pass the stream this request no longer needs on
                raise
            finally:
                if turn in self._waiting:
                    self._waiting.remove(turn)
        if not self.usable:
            raise NotSent("connection closing")
        self._open += 1

    def _give_back_slot(self) -> None:
        self._open -= 1
        self._wake_next()

    def _wake_next(self) -> None:
        for turn in self._waiting:
            if not turn.done():
                turn.set_result(None)
                return

    # -- events ----------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.status, stream.headers = _status_and_headers(event.headers or [])
                if stream.abandoned and self.on_late_answer is not None:
                    self.on_late_answer()
        elif isinstance(event, h2.events.DataReceived):
            if event.flow_controlled_length:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self._streams.get(event.stream_id)
            if stream is not None and event.data:
                room = stream.max_body - len(stream.body)
                stream.body += event.data[:room]
                if len(event.data) > room:  # read bound reached: answer with what came, stop the stream
                    self._answer(event.stream_id, complete=False)
                    self._reset(event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._answer(event.stream_id, complete=True)
        elif isinstance(event, h2.events.StreamReset):
            if event.error_code == ErrorCodes.REFUSED_STREAM:
                self._fail_stream(event.stream_id, NotSent("the server refused the stream unprocessed"))
            else:
                self._fail_stream(event.stream_id, ConnectionLost(f"stream reset by the server ({event.error_code!s})"))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self._settled.done():
                self._settled.set_result(None)
            self._window.set()
            for _ in range(max(self.max_streams - self._open, 0)):
                self._wake_next()
        elif isinstance(event, h2.events.WindowUpdated):
            self._window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self._draining = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        said = (event.additional_data or b"")[:200].decode("utf-8", "replace")
        detail = f"GOAWAY {event.error_code!s}" + (f": {said}" if said else "")
        for stream_id in list(self._streams):
            self._fail_stream(stream_id, NotSent(detail) if stream_id > last else ConnectionLost(detail))
        if self._transport is not None:
            self._transport.close()
        self._terminate(ConnectionLost(detail))

    def _answer(self, stream_id: int, *, complete: bool) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._give_back_slot()
        if not stream.answer.done():
            stream.answer.set_result(Answer(stream.status, stream.headers or Headers(), bytes(stream.body),
                                            complete, "2"))

    def _fail_stream(self, stream_id: int, error: Exception) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._give_back_slot()
        if not stream.answer.done():
            stream.answer.set_exception(error)

    def _reset(self, stream_id: int) -> None:
        if stream_id not in self._streams:
            return
        try:
            self._h2.reset_stream(stream_id, ErrorCodes.CANCEL)
            self._flush()
        except h2.exceptions.H2Error:
            pass
        self._fail_stream(stream_id, ConnectionLost("stream cancelled"))

    def _terminate(self, error: ConnectionLost) -> None:
        """The connection is over: every stream and waiter learns it, once."""
        if self._closed:
            return
        self._closed = True
        if not self._settled.done():
            self._settled.set_exception(error)
            self._settled.exception()  # retrieved: nobody may be waiting for it
        for stream_id in list(self._streams):
            self._fail_stream(stream_id, error)
        for turn in self._waiting:
            if not turn.done():
                turn.set_result(None)  # it wakes, sees the connection is not usable: NotSent
        self._window.set()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _status_and_headers(raw: list[tuple[bytes, bytes]]) -> tuple[int, Headers]:
    status = 0
    plain: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        if name == b":status":
            status = int(value) if value.isdigit() and len(value) == 3 else 0
        elif not name.startswith(b":"):
            plain.append((name, value))
    return status, Headers(plain)
