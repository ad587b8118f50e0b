"""Per-app wait slots of POST /v1/push/send (shared/outcome_bus.py) on a real Redis."""

from __future__ import annotations

import uuid
from contextlib import ExitStack

from shared.outcome_bus import wait_slot
from tests.support.helpers import wait_for


def test_each_waiter_holds_its_own_slot_until_released_or_expired(redis_client):
    app_id = uuid.uuid4()
    with ExitStack() as held:
        assert held.enter_context(wait_slot(redis_client, app_id, 2, 60)) is True
        abandoned = wait_slot(redis_client, app_id, 2, 1.0)
        assert abandoned.__enter__() is True  # never exited: a waiter whose process died
        with wait_slot(redis_client, app_id, 2, 60) as third:
            assert third is False  # both slots taken
        # Other waits keep coming; the abandoned slot frees itself one second after it was taken.
        wait_for(lambda: _try(redis_client, app_id), timeout=10, what="the abandoned slot expiring")
    with wait_slot(redis_client, app_id, 1, 60) as again:
        assert again is True  # released on exit


def _try(client, app_id) -> bool:
    with wait_slot(client, app_id, 2, 60) as taken:
        return taken
