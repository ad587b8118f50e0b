"""How an adapter's pushes travel: one wire client and one event loop per worker process.

The Web Push and FCM adapters (and APNs) share this: the chunk's pushes run
concurrently on the loop (:class:`workers.vendors.loop.LoopThread`), at most
``concurrency`` at once per origin, each through :class:`workers.vendors.wire.WireClient`
under the push deadline, the chunk under :func:`chunk_budget`. A push that fails
in an unexpected way becomes its own retry, never the chunk's failure; a chunk
interrupted by the task's time limit keeps the answers that came back
(:class:`ChunkInterrupted`). After a fork, the loop, the client's pools and the
per-origin limits all start afresh in the child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.outcomes import Outcome
from workers.adapters.base import ChunkInterrupted, chunk_budget, unanswered_as_retries
from workers.vendors.loop import LoopThread
from workers.vendors.wire import Answer, Request, WireClient

log = logging.getLogger(__name__)

__all__ = ["PushRunner"]

T = TypeVar("T")


class PushRunner:
    """See the module docstring. ``name`` is the vendor as reasons and logs say it."""

    def __init__(
        self, name: str, client: WireClient, *, concurrency: int, deadline: float, also: tuple[WireClient, ...] = ()
    ) -> None:
        self.name = name
        self.client = client
        self.clients = (client, *also)  # ``also``: more clients on this loop (closed with it)
        self.concurrency = max(1, concurrency)
        self.deadline = deadline
        self._loop = LoopThread(f"pushq-{name.lower().replace(' ', '')}")
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._pid = os.getpid()

    def run(self, count: int, push: Callable[[int], Awaitable[Outcome]], budget: float | None = None) -> list[Outcome]:
        """``push(0) .. push(count - 1)`` concurrently; one outcome each, in order.

        ``budget`` (default :func:`chunk_budget`) bounds the whole chunk; a push
        without an answer by then is a retry.
        """
        if count == 0:
            return []
        if budget is None:
            budget = chunk_budget(count, self.concurrency, self.deadline)

        async def safely(index: int) -> Outcome:
            try:
                return await push(index)
            except Exception as exc:
                log.exception("%s: unexpected error in push %d of %d", self.name, index + 1, count)
                return Outcome.retry(f"unexpected error pushing to {self.name}: {type(exc).__name__}")

        try:
            answers = self._loop.run_each(count, safely, budget)
        except ChunkInterrupted as interrupted:  # the task's time limit: keep what came back
            raise ChunkInterrupted(unanswered_as_retries(interrupted.partial, interrupted.cause),
                                   interrupted.cause) from interrupted
        except Exception as exc:
            log.exception("%s: chunk of %d failed", self.name, count)
            return [Outcome.retry(f"{self.name} client error: {type(exc).__name__}")] * count
        return unanswered_as_retries(answers, None)

    def run_each(self, count: int, start: Callable[[int], Awaitable[T]], budget: float) -> list[T | None]:
        """:meth:`LoopThread.run_each` on this runner's loop (for a client with answers of its own)."""
        return self._loop.run_each(count, start, budget)

    @property
    def loop_thread(self) -> threading.Thread | None:
        """The event loop's thread while it runs."""
        return self._loop.thread

    def limit(self, origin: str) -> asyncio.Semaphore:
        """At most ``concurrency`` pushes at once to ``origin`` (on the loop's thread)."""
        if self._pid != os.getpid():  # forked: the parent's semaphores belong to the parent's loop
            self._limits, self._pid = {}, os.getpid()
        limit = self._limits.get(origin)
        if limit is None:
            limit = self._limits[origin] = asyncio.Semaphore(self.concurrency)
        return limit

    async def request(self, request: Request, max_body: int, client: WireClient | None = None) -> Answer:
        """``request`` under the push deadline (through ``client``, default the runner's first);
        raises what :meth:`WireClient.request` raises."""
        return await (client or self.client).request(request, deadline=self.deadline, max_body=max_body)

    def call(self, function: Callable[[], Awaitable[Answer]], timeout: float) -> Answer:
        """Run ``function()`` on the loop from another thread (a token fetch), waiting at most ``timeout``."""
        async def call() -> Answer:
            return await function()

        return self._loop.run(call(), timeout)

    def close(self) -> None:
        """Close every connection and stop the loop; the runner may be used again."""
        async def shutdown() -> None:
            current = asyncio.current_task()
            stopped = [task for task in asyncio.all_tasks() if task is not current]
            for task in stopped:  # pushes (or a token request) whose caller stopped waiting
                task.cancel()
            await asyncio.gather(*stopped, return_exceptions=True)
            for client in self.clients:
                await client.close()
            self._limits.clear()

        self._loop.close(shutdown)
        self._limits = {}
