"""Small local servers for the wire client's tests: HTTP/2 (h2c or TLS with ALPN) and HTTP/1.1 (TLS).

Each path is a behaviour (``/ok``, ``/echo``, ``/slow/<s>``, ``/big/<n>``,
``/refuse``, ``/goaway`` (the first time), ``/silent``); the server counts connections, requests
per path and the most streams it saw open at once.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes


class _H2ServerConnection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.bodies: dict[int, bytearray] = {}
        self.open_streams: set[int] = set()
        self.window = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server.live.append(self)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.server.initial_window_size,
        })
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.server.frozen:  # read later, when thawed
            self.held = getattr(self, "held", b"") + data
            asyncio.get_running_loop().call_later(0.05, self.data_received, b"")
            return
        data, self.held = getattr(self, "held", b"") + data, b""
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.bodies[event.stream_id] = bytearray()
                self.open_streams.add(event.stream_id)
                self.server.peak_streams = max(self.server.peak_streams, len(self.open_streams))
                headers = dict(event.headers or [])
                self.bodies[event.stream_id].extend(b"")
                self.server.paths[headers[b":path"].decode()] += 1
                if event.stream_ended:
                    self.answer(event.stream_id, headers)
                else:
                    self.pending = getattr(self, "pending", {})
                    self.pending[event.stream_id] = headers
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id].extend(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_ended:
                    self.answer(event.stream_id, self.pending.pop(event.stream_id))
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self.window.set()
            elif isinstance(event, h2.events.StreamReset):
                self.open_streams.discard(event.stream_id)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.live:
            self.server.live.remove(self)

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    def answer(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        path = headers[b":path"].decode()
        kind, _, argument = path.strip("/").partition("/")
        loop = asyncio.get_running_loop()
        if kind == "ok":
            self.respond(stream_id, 200, b"ok")
        elif kind == "echo":
            self.respond(stream_id, 200, str(len(self.bodies[stream_id])).encode())
        elif kind == "slow":
            loop.call_later(float(argument), self.respond, stream_id, 200, b"late")
        elif kind == "big":
            self.server.tasks.add(loop.create_task(self.respond_big(stream_id, int(argument))))
        elif kind == "refuse":
            self.open_streams.discard(stream_id)
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
        elif kind == "goaway" and self.server.paths[path] > 1:
            self.respond(stream_id, 200, b"after goaway")
        elif kind == "goaway":  # the first time: GOAWAY, this stream left unprocessed
            self.h2.close_connection(last_stream_id=stream_id - 2)
            self.flush()
            assert self.transport is not None
            self.transport.close()
        elif kind == "silent":
            pass
        else:
            self.respond(stream_id, 404, b"")

    def respond(self, stream_id: int, status: int, body: bytes) -> None:
        if stream_id not in self.open_streams or self.transport is None or self.transport.is_closing():
            return
        try:
            self.h2.send_headers(stream_id, [(b":status", str(status).encode()), (b"x-stream", str(stream_id).encode())],
                                 end_stream=not body)
        except h2.exceptions.StreamClosedError:
            return
        if body:
            self.server.tasks.add(asyncio.get_running_loop().create_task(self.send_body(stream_id, body)))
        else:
            self.open_streams.discard(stream_id)
        self.flush()

    async def respond_big(self, stream_id: int, size: int) -> None:
        self.h2.send_headers(stream_id, [(b":status", b"200")])
        await self.send_body(stream_id, b"x" * size)

    async def send_body(self, stream_id: int, body: bytes) -> None:
        """Send ``body`` as the client's flow control window allows."""
        sent = 0
        while sent < len(body) and stream_id in self.open_streams and self.transport and not self.transport.is_closing():
            try:
                window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                break
            if window <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            chunk = body[sent:sent + window]
            sent += len(chunk)
            self.h2.send_data(stream_id, chunk, end_stream=sent >= len(body))
            self.flush()
            await asyncio.sleep(0)
        self.open_streams.discard(stream_id)


class H2Server:
    """An HTTP/2 server on a thread of its own: h2c, or TLS offering ``alpn``."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, max_concurrent_streams: int = 100,
                 initial_window_size: int = 65535) -> None:
        self.tls = tls
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.connections = 0
        self.peak_streams = 0
        self.paths: Counter[str] = Counter()
        self.live: list[_H2ServerConnection] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.frozen = False  # while True, connections read nothing (and so say nothing)
        self.loop = asyncio.new_event_loop()
        self.port = 0

    def start(self) -> H2Server:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                self.loop.create_server(lambda: _H2ServerConnection(self), "127.0.0.1", 0, ssl=self.tls))
            self.port = server.sockets[0].getsockname()[1]
            self.server = server
            ready.set()
            self.loop.run_forever()
            server.close()
            for connection in list(self.live):
                if connection.transport is not None:
                    connection.transport.abort()
            self.loop.run_until_complete(asyncio.sleep(0.05))
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)
        return self

    def call(self, function) -> None:  # type: ignore[no-untyped-def]
        self.loop.call_soon_threadsafe(function)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{self.port}"


@contextmanager
def h2_server(**options) -> Iterator[H2Server]:  # type: ignore[no-untyped-def]
    server = H2Server(**options).start()
    try:
        yield server
    finally:
        server.stop()
