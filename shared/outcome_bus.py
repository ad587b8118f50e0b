"""Announcing recorded outcomes to the API calls that wait for them (Redis pub/sub).

``POST /v1/push/send`` answers with the first outcome of every subscription, so
it waits for the workers. Instead of polling the database, it subscribes to one
channel per notification; a worker that wrote outcomes of such a notification
(flagged ``notify_outcomes`` at accept) publishes to it, and the waiter reads the
database once per announcement. Concurrent waits are capped per app across all
API processes, so slow push services cannot tie up every API thread; each
waiter's slot expires on its own (:func:`wait_slot`), so one killed mid-wait
frees its slot after its own timeout.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)

_CHANNEL = "pushq:outcomes:{}"
# The app's waiters: a sorted set of waiter ids scored by the time (Redis' clock) their slot
# expires, so the slot of a waiter whose process died frees itself at its own expiry.
_WAITERS = "pushq:waiters:{}"
# A waiter's slot outlives its wait by this much (reading the outcomes, answering) before it expires.
WAIT_SLOT_GRACE_SECONDS = 5.0

# Atomic: drop expired waiters, take a slot if one is free. KEYS[1] the app's set;
# ARGV: waiter id, limit, seconds the slot is held. The key itself expires after the
# longest slot in it, so an app that stops waiting leaves nothing behind.
_ACQUIRE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""


def publish_outcomes(client: redis.Redis, notification_ids: Iterable[uuid.UUID]) -> None:
    """Tell waiters these notifications have new outcomes (one round trip for all)."""
    ids = sorted(set(notification_ids))
    if not ids:
        return
    with client.pipeline(transaction=False) as pipe:
        for notification_id in ids:
            pipe.publish(_CHANNEL.format(notification_id), b"1")
        pipe.execute()


@contextmanager
def wait_slot(client: redis.Redis, app_id: uuid.UUID, limit: int, hold_seconds: float) -> Iterator[bool]:
    """One of the app's ``limit`` concurrent waits, if one is free (yields False otherwise).

    Each waiter is counted on its own and its slot expires ``hold_seconds`` after it was
    taken, released or not: a waiter killed mid-wait never holds a slot longer than that,
    however steady the other waits are. Releasing is best effort (the expiry frees it).
    """
    key, waiter = _WAITERS.format(app_id), uuid.uuid4().hex
    taken = bool(client.eval(_ACQUIRE, 1, key, waiter, limit, hold_seconds))
    try:
        yield taken
    finally:
        if taken:
            try:
                client.zrem(key, waiter)
            except redis.RedisError as exc:
                log.warning("could not release a wait slot (%s); it expires on its own", type(exc).__name__)


def wait_for_outcomes(
    client: redis.Redis,
    notification_id: uuid.UUID,
    done: Callable[[], bool],
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Block until ``done()`` is true (checked now and at each announcement) or ``timeout`` passes."""
    deadline = clock() + timeout
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(_CHANNEL.format(notification_id))
        if done():  # outcomes written before the subscription took effect
            return True
        while (left := deadline - clock()) > 0:
            if pubsub.get_message(timeout=left) is not None and done():
                return True
        return done()
    finally:
        pubsub.close()
