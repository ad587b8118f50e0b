"""One HTTP/1.1 keep-alive connection (``h11``): one request at a time.

The whole request is written at once (push bodies are a few KiB). The answer's
body is read up to a bound; past it, the connection is closed and the answer
returned cut (``complete=False``): a service that never stops sending cannot
make the worker read without end. A connection is reused only when both sides
finished the exchange cleanly; a request cancelled half-way (its deadline)
closes it.
"""

from __future__ import annotations

import asyncio
import time

import h11

from workers.vendors.wire.answer import Answer, ConnectionLost, Headers, NotSent, Request

__all__ = ["Http1Connection"]

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of an answer


class Http1Connection(asyncio.Protocol):
    """See the module docstring. Created by :func:`workers.vendors.wire.addresses.connect`."""

    http_version = "1.1"

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Answer] | None = None
        self._status = 0
        self._headers: Headers | None = None
        self._body = bytearray()
        self._max_body = 0
        self._closed = False
        self.busy = False
        self.idle_since = time.monotonic()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # done at connection_lost

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._h11.receive_data(data)
            self._read_events()
        except h11.RemoteProtocolError as exc:
            self._fail(ConnectionLost(f"invalid HTTP/1.1 answer: {exc}"))

    def eof_received(self) -> bool | None:
        try:
            self._h11.receive_data(b"")
            self._read_events()
        except h11.RemoteProtocolError as exc:
            self._fail(ConnectionLost(f"connection closed mid-answer: {exc}"))
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._closed = True
        self._fail(ConnectionLost(f"connection lost: {type(exc).__name__}" if exc else "connection closed"))

    # -- state ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Open and between requests."""
        return (not self._closed and self._transport is not None and not self._transport.is_closing()
                and self._h11.our_state is h11.IDLE)

    @property
    def usable(self) -> bool:
        """Idle and able to carry another request."""
        return self.ready and not self.busy

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    # -- a request -------------------------------------------------------------

    async def request(self, request: Request, host: str, target: str, max_body: int) -> Answer:
        """Send ``request`` and wait for its answer (no timeout here: the caller's deadline).
        Raises :class:`NotSent` if the connection could not take it, :class:`ConnectionLost`."""
        if not self.ready or self._transport is None:
            raise NotSent("connection not usable")
        self.busy = True
        headers = [(b"host", host.encode("ascii")),
                   *((name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers)]
        if request.body or request.method not in ("GET", "HEAD"):
            headers.append((b"content-length", str(len(request.body)).encode()))
        try:
            wire = self._h11.send(h11.Request(method=request.method.encode(), target=target.encode("ascii"),
                                              headers=headers))
            if request.body:
                wire = (wire or b"") + (self._h11.send(h11.Data(data=request.body)) or b"")
            wire = (wire or b"") + (self._h11.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:  # a header value h11 refuses: nothing was written
            self.abort()
            raise NotSent(f"request refused by h11: {exc}") from exc
        self._answer = asyncio.get_running_loop().create_future()
        self._status, self._headers, self._body, self._max_body = 0, None, bytearray(), max_body
        self._transport.write(wire)
        try:
            answer = await self._answer
        except BaseException:
            self.abort()  # cancelled mid-exchange (the deadline): this connection cannot be reused
            raise
        finally:
            self._answer = None
        self.busy = False
        self.idle_since = time.monotonic()
        return answer

    # -- internals -------------------------------------------------------------

    def _read_events(self) -> None:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                self._status, self._headers = event.status_code, Headers(event.headers)
            elif isinstance(event, h11.Data):
                room = self._max_body - len(self._body)
                self._body += event.data[:room]
                if len(event.data) > room:  # read bound reached: answer with what came, drop the connection
                    self._finish(complete=False)
                    self.abort()
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._finish(complete=True)
                if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
                    self._h11.start_next_cycle()
                else:
                    self.close()
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._fail(ConnectionLost("connection closed"))
                self.close()
                return
            # InformationalResponse (1xx): wait for the final answer.

    def _finish(self, *, complete: bool) -> None:
        if self._answer is not None and not self._answer.done() and self._headers is not None:
            self._answer.set_result(Answer(self._status, self._headers, bytes(self._body), complete, "1.1"))

    def _fail(self, error: Exception) -> None:
        self._closed = self._closed or isinstance(error, ConnectionLost)
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
