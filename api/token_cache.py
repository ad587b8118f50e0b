"""Tokens already verified, per process: a bounded LRU keyed by the token string, each kept until its ``exp``.

A service posting sends presents the same bearer token on every request; checking
its signature and claims again each time is the same answer at a cost (an RS256 or
ES256 verification is the larger part of a request's CPU). Only a token that
verified is kept, with the principal it gave and its ``exp`` (plus the configured
leeway, exactly when PyJWT would start refusing it). What can change while a token
is cached is still checked on every use: its OAuth client's revocation (the
per-process set :class:`api.auth.RevokedClients` refreshes within 30 s), so
``pushq revoke-client`` stops a cached token as fast as an uncached one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Distinct tokens kept per process: far above the callers one API process serves at once.
MAX_CACHED_TOKENS = 4096


@dataclass(frozen=True)
class VerifiedToken:
    principal: Any  # api.auth.Principal (not imported: auth imports this module)
    client_id: str | None
    valid_until: float  # epoch seconds: exp + leeway


class VerifiedTokens:
    """Thread-safe LRU of verified tokens; an expired entry is dropped when looked up."""

    def __init__(self, capacity: int = MAX_CACHED_TOKENS, clock: Callable[[], float] = time.time) -> None:
        self._capacity, self._clock = capacity, clock
        self._entries: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> VerifiedToken | None:
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            if self._clock() >= entry.valid_until:
                del self._entries[token]
                return None
            self._entries.move_to_end(token)
            return entry

    def put(self, token: str, entry: VerifiedToken) -> None:
        with self._lock:
            self._entries[token] = entry
            self._entries.move_to_end(token)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
