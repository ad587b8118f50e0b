"""Per-process worker resources: engine, session factory, adapters, dispatcher, credential cache.

Built lazily inside the worker process (after prefork's fork), never at import
and never shared across processes: a database pool or an HTTP connection pool
must not cross a fork.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime
from functools import cached_property

import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.dispatch import Dispatcher
from shared import crypto
from shared.config import Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import App
from shared.pipeline.values import RetryPolicy
from workers.adapter_factories import build_adapters
from workers.adapters.base import Adapter, AppCredentials


class CredentialCache:
    """Decrypted app credentials, kept per process and dropped when the app's ``updated_at`` moves.

    The claim statement returns each app's ``updated_at``, so a cache hit costs no
    statement and a credentials change is seen by the next chunk.
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory
        self._entries: dict[uuid.UUID, tuple[datetime, AppCredentials]] = {}
        self._lock = threading.Lock()

    def get_many(self, versions: dict[uuid.UUID, datetime]) -> dict[uuid.UUID, AppCredentials]:
        found: dict[uuid.UUID, AppCredentials] = {}
        with self._lock:
            for app_id, version in versions.items():
                entry = self._entries.get(app_id)
                if entry is not None and entry[0] == version:
                    found[app_id] = entry[1]
        missing = [app_id for app_id in versions if app_id not in found]
        if missing:
            with session_scope(self._session_factory) as session:
                apps = session.scalars(select(App).where(App.id.in_(missing))).all()
                loaded = {app.id: (app.updated_at, AppCredentials.from_model(app)) for app in apps}
            with self._lock:
                self._entries.update(loaded)
            found.update({app_id: entry[1] for app_id, entry in loaded.items()})
        return found


class WorkerRuntime:
    def __init__(self, celery: Celery, settings: Settings) -> None:
        self.celery = celery
        self.settings = settings
        # Before any session: device tokens and app credentials are decrypted on load.
        crypto.configure(settings)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(make_engine(self.settings.database_url))

    @cached_property
    def redis(self) -> redis.Redis:
        """Quotas, locks and outcome announcements (not the broker, which may be another server)."""
        if not self.settings.redis_url:
            raise RuntimeError("REDIS_URL is not set")
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)

    @cached_property
    def credentials(self) -> CredentialCache:
        return CredentialCache(self.session_factory)

    @cached_property
    def adapters(self) -> dict[str, Adapter]:
        """One adapter per platform of the registry (shared/platforms.py), built here, after the fork."""
        return build_adapters(self.settings)

    def close(self) -> None:
        """Close vendor connections (worker process shutdown)."""
        if "adapters" in self.__dict__:
            for adapter in self.adapters.values():
                adapter.close()

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(self.celery)

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(s.max_attempts, s.retry_base_seconds, s.retry_max_seconds)


_runtimes: dict[tuple[int, int], WorkerRuntime] = {}


def runtime(celery: Celery) -> WorkerRuntime:
    """The runtime of this process for ``celery`` (created on first use)."""
    key = (os.getpid(), id(celery))
    found = _runtimes.get(key)
    if found is None:
        found = _runtimes[key] = WorkerRuntime(celery, celery.pushq_settings)
    return found


def close_runtimes() -> None:
    """Close this process's runtimes; connected to Celery's worker_process_shutdown."""
    pid = os.getpid()
    for key in [key for key in _runtimes if key[0] == pid]:
        _runtimes.pop(key).close()
