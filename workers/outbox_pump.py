"""The outbox pump: a thread in every worker that consumes the fan-out queue (see :mod:`shared.outbox`).

It waits on the API's Redis signal (or :data:`shared.outbox.POLL_SECONDS`), then
claims waiting notifications and fans them out in one transaction per batch,
enqueueing their delivery chunks after the commit, until nothing waits. It runs
in the worker's main process, started after the pool has forked (a Consumer
step), with its own engine and Redis connection; several workers run one each
and share the work through ``FOR UPDATE SKIP LOCKED``. A failure (database or
Redis away) is logged and retried after a pause; the thread never takes the
worker down.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import redis
from celery import bootsteps
from sqlalchemy.orm import Session

from broker.dispatch import Dispatcher
from broker.queues import FANOUT_QUEUE
from shared.config import Settings
from shared.db import after_commit, make_engine, make_session_factory, run_in_transaction
from shared.observability.context import request_ids_context
from shared.outbox import POLL_SECONDS, PUMP_BATCH, Pumped, pump_once, wait_for_signal

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_SECONDS = 1.0


class OutboxPump:
    """The loop; :meth:`run` until :meth:`stop`."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        self.settings, self.dispatcher = settings, dispatcher
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self.run, name="pushq-outbox-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2 * POLL_SECONDS + 3) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run(self) -> None:
        engine = make_engine(self.settings.database_url, pool_size=1, max_overflow=0) \
            if not self.settings.database_url.startswith("sqlite") else make_engine(self.settings.database_url)
        session_factory = make_session_factory(engine)
        client = redis.Redis.from_url(self.settings.redis_url or "", socket_timeout=POLL_SECONDS + 5,
                                      socket_connect_timeout=5)
        try:
            while not self._stopping.is_set():
                try:
                    wait_for_signal(client)
                    self.drain(session_factory)
                except Exception as exc:  # the database or Redis away: wait, then try again
                    log.warning("outbox pump: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
                    self._stopping.wait(RETRY_AFTER_FAILURE_SECONDS)
        finally:
            client.close()
            engine.dispose()

    def drain(self, session_factory: Any) -> int:
        """Fan out batches until one comes back short; returns the notifications taken."""
        chunk_size = self.settings.delivery_chunk_size
        total = 0
        while not self._stopping.is_set():
            def work(session: Session) -> Pumped:
                pumped = pump_once(session, chunk_size)
                if pumped.chunks:
                    after_commit(session, functools.partial(self.dispatcher.enqueue_chunks, pumped.chunks,
                                                            request_ids=pumped.request_ids))
                return pumped

            pumped = run_in_transaction(session_factory, work)
            total += pumped.taken
            if pumped.taken:
                with request_ids_context(pumped.request_ids):  # the log line names the requests it served
                    log.info("fanned out %d notifications into %d chunks (%d deliveries) from the outbox",
                             pumped.taken, len(pumped.chunks), sum(len(c.delivery_ids) for c in pumped.chunks))
            if pumped.taken < PUMP_BATCH:
                return total
        return total


class OutboxPumpStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery's steps carry no hints
    """Starts the pump in a worker that consumes the fan-out queue, after its pool is up."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.pump: OutboxPump | None = None

    def start(self, parent: Any) -> None:
        app = parent.app
        if FANOUT_QUEUE not in app.amqp.queues.consume_from:
            return
        self.pump = OutboxPump(app.pushq_settings, Dispatcher(app))
        self.pump.start()

    def stop(self, parent: Any) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump = None

    shutdown = stop
