"""One asyncio event loop on a daemon thread per worker process.

Celery calls adapters synchronously; an adapter that pushes concurrently over
keep-alive or HTTP/2 connections needs a loop that outlives a task, so its
connections are reused across tasks. After a fork (prefork pool) the thread did
not come along: the loop is started afresh in the child.

:meth:`LoopThread.run_each` runs a chunk's pushes under one chunk deadline and
keeps every answer that came back, whatever stops the wait: the deadline (the
rest are reported missing) or an exception raised in the waiting thread, such as
Celery's soft time limit (:class:`ChunkInterrupted` carries the answers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_WIND_DOWN_SECONDS = 1.0  # how long an interrupted chunk waits for its cancelled pushes to stop


class ChunkInterrupted(Exception):
    """The wait for a chunk stopped early (e.g. the task's soft time limit fired in the waiting thread).

    ``partial`` has one entry per push, in order: the answer, or None for a push
    that had none yet (it was cancelled). The answers are real and must be kept.
    """

    def __init__(self, partial: list[Any], cause: str = "interrupted") -> None:
        super().__init__(f"chunk {cause}: {sum(p is not None for p in partial)} of {len(partial)} answered")
        self.partial = partial
        self.cause = cause


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    @property
    def thread(self) -> threading.Thread | None:
        """The loop's thread while one runs (for shutdown checks)."""
        return self._thread

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self._pid != os.getpid():
                self._loop = self._thread = None  # forked: the parent's loop is not ours to use
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=self._run, args=(loop,), name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the loop and wait at most ``timeout`` seconds.

        Whatever ends the wait (the timeout, or an exception raised in this thread
        such as a time limit's), the coroutine is cancelled: nothing keeps pushing
        on the loop for a caller that stopped listening.
        """
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.name}: gave up after {timeout:.1f} s") from None
        except BaseException:
            future.cancel()
            raise

    def run_each(
        self, count: int, start: Callable[[int], Awaitable[T]], deadline: float, grace: float = 1.0
    ) -> list[T | None]:
        """Run ``start(0) .. start(count - 1)`` concurrently on the loop; each one's result, in order.

        At ``deadline`` seconds the unfinished ones are cancelled and their entry is
        None (as is that of one that raised); the answers that came back are kept.
        ``grace`` more seconds are allowed for the loop itself. If the wait is
        interrupted in this thread (Celery's soft time limit), the pushes are
        cancelled and :class:`ChunkInterrupted` carries the answers so far.
        """
        slots: list[T | None] = [None] * count
        if count == 0:
            return slots
        finished = threading.Event()

        async def one(index: int) -> None:
            try:
                slots[index] = await start(index)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: push %d of %d failed", self.name, index + 1, count)

        async def chunk() -> None:
            try:
                tasks = [asyncio.ensure_future(one(index)) for index in range(count)]
                try:
                    await asyncio.wait(tasks, timeout=deadline)
                finally:  # the deadline passed, or this chunk was cancelled: stop the rest
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                finished.set()

        try:
            self.run(chunk(), deadline + grace)
        except TimeoutError:  # the loop did not keep the deadline: keep what came back
            finished.wait(_WIND_DOWN_SECONDS)
            log.error("%s: chunk of %d overran its %.1f s deadline", self.name, count, deadline)
        except Exception as exc:
            finished.wait(_WIND_DOWN_SECONDS)
            raise ChunkInterrupted(list(slots), type(exc).__name__) from exc
        except BaseException:
            finished.wait(_WIND_DOWN_SECONDS)
            raise
        return list(slots)

    def close(self, shutdown: Callable[[], Coroutine[Any, Any, None]] | None = None, timeout: float = 5.0) -> None:
        """Run ``shutdown`` on the loop (closing connections), then stop the thread."""
        with self._lock:
            loop, thread, pid = self._loop, self._thread, self._pid
            self._loop = self._thread = self._pid = None
        if loop is None or thread is None or pid != os.getpid():
            return
        if thread.is_alive():
            if shutdown is not None:
                try:
                    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=timeout)
                except Exception:
                    log.exception("%s did not shut down cleanly", self.name)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=timeout)
        if not thread.is_alive():
            loop.close()
