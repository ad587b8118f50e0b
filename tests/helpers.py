"""Small helpers for tests."""

from __future__ import annotations

import json
import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)


def subscription_token(subscription: dict) -> str:
    return json.dumps(subscription)
