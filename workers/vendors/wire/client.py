"""The wire client: a connection pool per origin, the overall deadline of a request, fork safety.

One :class:`WireClient` per adapter and worker process, used from one event
loop. Per origin (scheme, host, port) the protocol is chosen once: for https by
ALPN (``h2`` when the server offers it and the client allows it, else HTTP/1.1),
for plain http by configuration (``cleartext``: HTTP/2 with prior knowledge, for
the loopback stand-ins, or HTTP/1.1). HTTP/2 origins get up to
``max_http2_connections`` connections, a new one only when every open one is at
the server's stream limit; HTTP/1.1 origins a keep-alive pool of up to
``max_http1_connections``, a request waiting for a free one beyond that.

Every request is bounded by its ``deadline`` (connecting, waiting for a stream or
a connection, sending, the whole answer): :class:`TimeoutError` after it. Redirects
are never followed (a 3xx is an answer like any other). A request is never
written twice: it is tried on another connection only when it never left
(:class:`NotSent`). A pool belongs to the process that made it: after a fork the
child starts with none and never touches (or closes) the parent's sockets.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import os
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from workers.vendors.wire.addresses import AddressPolicy, connect
from workers.vendors.wire.answer import Answer, ConnectFailed, NotSent, Request
from workers.vendors.wire.http1 import Http1Connection
from workers.vendors.wire.http2 import Http2Connection

__all__ = ["Protocol", "WireClient"]

_ATTEMPTS = 3  # connections a request that never left may be tried on
DEFAULT_MAX_BODY = 64 * 1024
CLOSE_TIMEOUT_SECONDS = 2.0  # close() waits this long for connections to close cleanly


class Protocol(enum.Enum):
    HTTP1 = "http/1.1"
    HTTP2 = "h2"


Connection = Http1Connection | Http2Connection


class _Origin:
    """The connections to one (scheme, host, port)."""

    def __init__(self, client: WireClient, scheme: str, host: str, port: int) -> None:
        self.client, self.scheme, self.host, self.port = client, scheme, host, port
        default_port = 443 if scheme == "https" else 80
        self.authority = host if port == default_port else f"{host}:{port}"
        if ":" in host:
            self.authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        self.protocol: Protocol | None = None if scheme == "https" else client.cleartext
        self.http2: list[Http2Connection] = []
        self.idle: list[Http1Connection] = []
        self.http1_count = 0  # open or opening HTTP/1.1 connections
        self.http1_turns: collections.deque[asyncio.Future[None]] = collections.deque()
        self.lock = asyncio.Lock()
        # The last failure to connect and when: requests that waited for that attempt share its failure
        # instead of each trying (and timing out) in turn.
        self.failure: tuple[float, Exception] | None = None

    async def request(self, request: Request, target: str, max_body: int) -> Answer:
        for _ in range(_ATTEMPTS):
            connection = await self._connection()
            try:
                if isinstance(connection, Http2Connection):
                    return await connection.request(request, self.scheme, self.authority, target, max_body)
                return await connection.request(request, self.authority, target, max_body)
            except ConnectFailed:
                raise
            except NotSent:
                continue
            finally:
                if isinstance(connection, Http1Connection):
                    self._release(connection)
        raise NotSent("no usable connection")

    # -- choosing a connection -------------------------------------------------

    async def _connection(self) -> Connection:
        asked_at = time.monotonic()
        while True:
            if self.protocol is Protocol.HTTP1:
                return await self._http1_connection()
            picked = self._roomy_http2()
            if picked is not None:
                return picked
            async with self.lock:  # one connection opened at a time per origin
                if self._settled_protocol() is Protocol.HTTP1:  # settled by another request meanwhile
                    continue
                picked = self._roomy_http2()
                if picked is not None:
                    return picked
                if self.failure is not None and self.failure[0] >= asked_at and not self.http2:
                    raise type(self.failure[1])(str(self.failure[1]))  # the attempt it waited for failed
                if self.protocol is None or len(self.http2) < self.client.max_http2_connections:
                    try:
                        connection = await self._open()
                    except ConnectFailed as exc:
                        self.failure = (time.monotonic(), exc)
                        raise
                    if isinstance(connection, Http1Connection):  # ALPN chose HTTP/1.1: that pool's first
                        self.http1_count += 1
                        connection.busy = True
                    return connection
                usable = [c for c in self.http2 if c.usable]
                if usable:  # every connection at the server's limit: wait for a stream on the least busy
                    return min(usable, key=lambda c: c.load)

    def _settled_protocol(self) -> Protocol | None:
        return self.protocol

    def _roomy_http2(self) -> Http2Connection | None:
        self.http2 = [c for c in self.http2 if c.usable]
        roomy = [c for c in self.http2 if c.has_room]
        return min(roomy, key=lambda c: c.load) if roomy else None

    async def _http1_connection(self) -> Http1Connection:
        while True:
            now = time.monotonic()
            while self.idle:
                connection = self.idle.pop()
                if connection.usable and now - connection.idle_since < self.client.idle_timeout:
                    connection.busy = True
                    return connection
                connection.close()
                self.http1_count -= 1
            if self.http1_count < self.client.max_http1_connections:
                self.http1_count += 1
                try:
                    opened = await self._open()
                except BaseException:
                    self.http1_count -= 1
                    self._wake_http1()
                    raise
                assert isinstance(opened, Http1Connection)
                opened.busy = True
                return opened
            turn = asyncio.get_running_loop().create_future()
            self.http1_turns.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._wake_http1()
                raise
            finally:
                if turn in self.http1_turns:
                    self.http1_turns.remove(turn)

    def _release(self, connection: Http1Connection) -> None:
        connection.busy = False
        if connection.usable:
            self.idle.append(connection)
        else:
            connection.abort()
            self.http1_count -= 1
        self._wake_http1()

    def _wake_http1(self) -> None:
        for turn in self.http1_turns:
            if not turn.done():
                turn.set_result(None)
                return

    # -- opening ---------------------------------------------------------------

    async def _open(self) -> Connection:
        """A new connection; for https its protocol is what ALPN settled on (recorded for the origin)."""
        client = self.client
        started = time.monotonic()
        if self.scheme == "https":
            chooser = _AlpnChoice(client.on_late_answer, client.late_grace, client.connect_timeout)
            await connect(self.host, self.port, lambda: chooser, ssl_context=client.ssl_context,
                          policy=client.policy, timeout=client.connect_timeout)
            connection = chooser.chosen
            if connection is None:
                raise ConnectFailed("TLS connection closed before it was made")
        else:
            factory: Callable[[], asyncio.Protocol]
            if self.protocol is Protocol.HTTP2:
                factory = lambda: Http2Connection(client.on_late_answer, client.late_grace, client.connect_timeout)  # noqa: E731
            else:
                factory = Http1Connection
            _, made = await connect(self.host, self.port, factory, ssl_context=None, policy=client.policy,
                                    timeout=client.connect_timeout)
            assert isinstance(made, Http1Connection | Http2Connection)
            connection = made
        if isinstance(connection, Http2Connection):
            self.protocol = Protocol.HTTP2
            await connection.settled(max(client.connect_timeout - (time.monotonic() - started), 0.0))
            self.http2.append(connection)
        else:
            self.protocol = Protocol.HTTP1
        return connection

    def close(self) -> list[Connection]:
        """Close every connection of this origin; the ones closed (to wait for)."""
        connections: list[Connection] = [*self.http2, *self.idle]
        for connection in connections:
            connection.close()
        self.http2, self.idle = [], []
        return connections


class _AlpnChoice(asyncio.Protocol):
    """Hands a new TLS connection to the protocol ALPN settled on (``h2`` or HTTP/1.1)."""

    def __init__(self, on_late_answer: Callable[[], None] | None, late_grace: float, ping_timeout: float) -> None:
        self.on_late_answer, self.late_grace, self.ping_timeout = on_late_answer, late_grace, ping_timeout
        self.chosen: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        chosen: Connection = (Http2Connection(self.on_late_answer, self.late_grace, self.ping_timeout) if alpn == "h2"
                              else Http1Connection())
        self.chosen = chosen
        transport.set_protocol(chosen)
        chosen.connection_made(transport)


class WireClient:
    """See the module docstring.

    ``policy`` says which resolved addresses may be connected to
    (:class:`~workers.vendors.wire.addresses.AddressPolicy`); ``http2`` offers
    ``h2`` in ALPN for https; ``cleartext`` is the protocol for plain http.
    ``on_late_answer`` is called for each HTTP/2 answer that came after its
    request was given up (the caller may count them).
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        policy: AddressPolicy = AddressPolicy.ANY_ADDRESS,
        http2: bool = True,
        cleartext: Protocol = Protocol.HTTP1,
        ca_file: str | None = None,
        max_http1_connections: int = 16,
        max_http2_connections: int = 1,
        idle_timeout: float = 10.0,
        late_grace: float = 30.0,
        on_late_answer: Callable[[], None] | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.policy = policy
        self.cleartext = cleartext
        self.max_http1_connections = max(1, max_http1_connections)
        self.max_http2_connections = max(1, max_http2_connections)
        self.idle_timeout = idle_timeout  # below the servers' own, so a reused connection is rarely closing
        self.late_grace = late_grace
        self.on_late_answer = on_late_answer
        self.ssl_context = ssl.create_default_context()
        if ca_file:
            self.ssl_context.load_verify_locations(cafile=ca_file)
        self.ssl_context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._inherited: list[dict[tuple[str, str, int], _Origin]] = []  # a parent's pools, never touched
        self._pid = os.getpid()

    async def request(self, request: Request, *, deadline: float, max_body: int = DEFAULT_MAX_BODY) -> Answer:
        """The answer to ``request`` within ``deadline`` seconds (else :class:`TimeoutError`).

        Raises :class:`~workers.vendors.wire.answer.NotSent` (including
        :class:`ConnectFailed` and :class:`EgressRefused`) when the request never
        left, :class:`~workers.vendors.wire.answer.ConnectionLost` when it was
        written and no answer came, ValueError for a URL that is not http(s).
        """
        parts = urlsplit(request.url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "")
        if scheme not in ("http", "https") or not host:
            raise ValueError("not an http(s) URL")
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        async with asyncio.timeout(deadline):
            return await self._origin(scheme, host, port).request(request, target, max_body)

    def _origin(self, scheme: str, host: str, port: int) -> _Origin:
        if self._pid != os.getpid():  # forked: the parent's connections are not this process's to use
            self._inherited.append(self._origins)
            self._origins, self._pid = {}, os.getpid()
        key = (scheme, host, port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(self, scheme, host, port)
        return origin

    def protocol(self, url: str) -> Protocol | None:
        """The protocol settled on for ``url``'s origin (None before its first connection)."""
        parts = urlsplit(url)
        origin = self._origins.get((parts.scheme, parts.hostname or "", parts.port or
                                    (443 if parts.scheme == "https" else 80)))
        return origin.protocol if origin is not None else None

    async def close(self) -> None:
        """Close every connection of this process (on its loop); the client may be used again."""
        if self._pid != os.getpid():
            self._origins, self._pid = {}, os.getpid()
        closing: list[Connection] = []
        for origin in self._origins.values():
            closing.extend(origin.close())
        self._origins = {}
        lost = [connection.lost for connection in closing]
        if lost:  # TLS says close_notify first: wait for the sockets to be closed, then abort stragglers
            _, pending = await asyncio.wait(lost, timeout=CLOSE_TIMEOUT_SECONDS)
            for connection in closing:
                if not connection.lost.done():
                    connection.abort()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for _ in range(3):  # transports close their sockets an iteration after connection_lost
            await asyncio.sleep(0)
