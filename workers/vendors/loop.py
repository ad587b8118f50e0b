"""One asyncio event loop on a daemon thread per worker process.

Celery calls adapters synchronously; an adapter that pushes concurrently over
keep-alive or HTTP/2 connections needs a loop that outlives a task, so its
connections are reused across tasks. After a fork (prefork pool) the thread did
not come along: the loop is started afresh in the child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        """Run ``coroutine`` on the loop and wait at most ``timeout`` seconds (then cancel it)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.name}: gave up after {timeout:.1f} s") from None

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
