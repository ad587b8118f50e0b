"""The APNs wire client: aioapns' HTTP/2 connection pool on one event loop per worker process.

Owns connections, provider tokens, the event loop thread and forks; knows
nothing of deliveries or outcomes. ``push_many`` writes each request at most once
and answers each with an :class:`ApnsAnswer` (what APNs said) or an
:class:`ApnsFailure` (why no answer came), each request bounded by the push
deadline. pushq's fixes to aioapns itself are in
:mod:`workers.vendors.aioapns_fixes`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from aioapns import APNs
from aioapns.connection import (
    APNsBaseConnectionPool,
    APNsDevelopmentClientProtocol,
    APNsProductionClientProtocol,
    JWTAuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from workers.vendors.aioapns_fixes import NotSent, PushqProtocol, PushRequest
from workers.vendors.loop import ChunkInterrupted, LoopThread

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0  # seconds close() waits for connections to shut down cleanly
_RESULT_GRACE = 0.5  # seconds a chunk may take beyond the per-request deadline


@dataclass(frozen=True)
class ApnsCredentials:
    """A token-auth key (.p8) and where its pushes go."""

    app_id: str
    key_pem: str
    key_id: str
    team_id: str
    bundle_id: str
    sandbox: bool


@dataclass(frozen=True)
class ApnsAnswer:
    """What APNs answered to one request."""

    status: str  # the HTTP status, as text ("200", "410", ...)
    reason: str | None  # APNs' ``reason`` for an error
    apns_id: str | None
    retry_after: str | None  # the header as sent


@dataclass(frozen=True)
class ApnsFailure:
    """Why one request got no answer; ``credentials`` failures will not heal by retrying."""

    detail: str
    credentials: bool = False


class ApnsClient:
    """See the module docstring. ``host``/``port``/``ca_file`` point it elsewhere than
    Apple (a stand-in); with ``host=None`` each app goes to Apple's production or
    sandbox host. ``late_answers`` counts answers that came after the client had
    given up on the request (a push reported as failed that APNs may have delivered)."""

    def __init__(
        self,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        *,
        host: str | None = None,
        port: int = 443,
        ca_file: str | None = None,
        max_connections: int = 10,
        deadline: float | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # The whole of one request (connecting, waiting for a stream, the answer); default connect + read.
        self.deadline = deadline if deadline is not None else connect_timeout + read_timeout
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.ssl_context = ssl.create_default_context()
        if ca_file:
            self.ssl_context.load_verify_locations(cafile=ca_file)
        self.ssl_context.set_alpn_protocols(["h2"])  # aioapns does not; APNs needs h2
        self.late_answers = 0
        self._loop = LoopThread("pushq-apns")
        self._pid: int | None = None
        self._clients: dict[tuple[str, ...], APNs] = {}  # touched only on the loop's thread

    def push_many(
        self, credentials: ApnsCredentials, requests: Sequence[PushRequest]
    ) -> list[ApnsAnswer | ApnsFailure]:
        """Each request written at most once; one answer or failure per request, in order.

        Every request is bounded by the deadline, and so is the chunk (the requests go
        out concurrently). Raises :class:`ChunkInterrupted` (with the answers so far)
        when the wait is interrupted in this thread (the task's time limit).
        """
        if not requests:
            return []
        try:
            pool = self._loop.run(self._pool(credentials), self.deadline)
        except _BadCredentials as exc:
            return [ApnsFailure(str(exc), credentials=True)] * len(requests)
        except Exception:  # never let a client bug fail the task: retry later
            log.exception("APNs client setup failed")
            return [ApnsFailure("APNs client error")] * len(requests)
        try:
            answers = self._loop.run_each(len(requests), lambda i: self._push(pool, requests[i]),
                                          self.deadline + _RESULT_GRACE)
        except ChunkInterrupted:
            raise
        except Exception:  # never let a client bug fail the task: retry later
            log.exception("APNs send failed")
            return [ApnsFailure("APNs client error")] * len(requests)
        if any(answer is None for answer in answers):
            log.error("APNs chunk of %d did not finish in time", len(requests))
        return [answer if answer is not None else ApnsFailure("APNs timed out") for answer in answers]

    def close(self) -> None:
        """Close every connection and stop the loop's thread; push_many may still be
        called afterwards: it starts afresh."""
        self._loop.close(self._shutdown, timeout=CLOSE_TIMEOUT + 3)
        self._clients = {}

    @property
    def loop_thread(self) -> threading.Thread | None:
        """The event loop's thread while it runs."""
        return self._loop.thread

    def _count_late_answer(self) -> None:
        self.late_answers += 1

    def _client(self, app: ApnsCredentials) -> APNs:
        key_hash = hashlib.sha256(app.key_pem.encode()).hexdigest()
        cache_key = (
            app.app_id,
            app.key_id,
            app.team_id,
            app.bundle_id,
            "sandbox" if app.sandbox else "production",
            key_hash,
        )
        client = self._clients.get(cache_key)
        if client is not None:
            return client
        try:
            key = serialization.load_pem_private_key(app.key_pem.encode(), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise _BadCredentials("the app's APNs private key is not an EC P-256 key in PEM (.p8)")
        for stale in [k for k in self._clients if k[0] == cache_key[0]]:  # credentials changed
            self._clients.pop(stale).pool.close()
        client = APNs(
            key=app.key_pem,
            key_id=app.key_id,
            team_id=app.team_id,
            topic=app.bundle_id,
            use_sandbox=app.sandbox,
            max_connections=self.max_connections,
            max_connection_attempts=1,  # unused: this client never calls pool.send_notification
            ssl_context=self.ssl_context,
        )
        base = APNsDevelopmentClientProtocol if app.sandbox else APNsProductionClientProtocol
        client.pool.protocol_class = type(
            f"Pushq{base.__name__}",
            (PushqProtocol, base),
            {
                "APNS_SERVER": self.host or base.APNS_SERVER,
                "APNS_PORT": self.port if self.host else base.APNS_PORT,
                "shared_auth": JWTAuthorizationHeaderProvider(
                    key=app.key_pem, key_id=app.key_id, team_id=app.team_id
                ),
                "on_late_answer": staticmethod(self._count_late_answer),
            },
        )
        self._clients[cache_key] = client
        return client

    async def _pool(self, credentials: ApnsCredentials) -> APNsBaseConnectionPool:
        """The app's connection pool (on the loop's thread); raises _BadCredentials."""
        if self._pid != os.getpid():  # forked: the parent's clients belong to the parent's loop
            self._clients, self._pid = {}, os.getpid()
        return self._client(credentials).pool

    async def _push(
        self, pool: APNsBaseConnectionPool, request: PushRequest
    ) -> ApnsAnswer | ApnsFailure:
        """One request, written at most once; bounded by the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        try:
            for _ in range(3):
                try:
                    connection = await asyncio.wait_for(
                        self._acquire(pool), max(min(self.connect_timeout, deadline - loop.time()), 0)
                    )
                except TimeoutError:
                    return ApnsFailure("timed out connecting to APNs")
                except ApnsConnectionError as exc:
                    cause = exc.__context__ or exc
                    return ApnsFailure(f"cannot connect to APNs: {type(cause).__name__}: {cause}")
                assert isinstance(connection, PushqProtocol)
                try:
                    result, retry_after = await asyncio.wait_for(
                        connection.push(request), max(min(self.read_timeout, deadline - loop.time()), 0)
                    )
                except NotSent as exc:
                    log.debug("APNs request %s not sent (%s): another connection", request.notification_id, exc)
                    continue
                except ConnectionClosed:
                    return ApnsFailure("connection lost")
                except TimeoutError:
                    return ApnsFailure("APNs timed out")
                return ApnsAnswer(result.status or "", result.description or None, result.notification_id, retry_after)
            return ApnsFailure("no usable APNs connection")
        except Exception as exc:
            log.exception("APNs request %s failed", request.notification_id)
            return ApnsFailure(f"APNs client error: {type(exc).__name__}")

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


class _BadCredentials(Exception):
    pass
