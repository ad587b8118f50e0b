"""Small helpers for tests."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.pipeline.values import ClaimedDelivery


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.1,
    *,
    what: str | None = None,
    detail: Callable[[], str] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> Any:
    """Poll until ``predicate()`` is truthy; fail with its last value (and ``detail()``) otherwise.

    ``sleep`` lets a caller keep something else running between polls (a browser's event loop).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            waited = f"waiting for {what}" if what else f"(last value: {value!r})"
            raise AssertionError(f"condition not met within {timeout:.0f}s {waited}"
                                 + (f"\n{detail()}" if detail else ""))
        sleep(interval)


def subscription_token(subscription: dict) -> str:
    return json.dumps(subscription)


def claimed_delivery(token: str, platform: str, *, expires_at: datetime, **fields: Any) -> ClaimedDelivery:
    """A delivery as a claim hands it to an adapter; ``fields`` may name delivery or message fields."""
    from shared.message import Message
    from shared.pipeline.values import ClaimedDelivery

    message_fields = {name: fields.pop(name) for name in Message.columns() if name in fields}
    message_fields.setdefault("title", "Hello")
    message_fields.setdefault("body", "World")
    ttl = message_fields.pop("ttl", 3600)
    values: dict[str, Any] = {
        "delivery_id": uuid.uuid4(), "device_id": uuid.uuid4(), "token": token, "token_hash": uuid.uuid4().hex,
        "platform": platform, "attempts": 1, "notification_id": uuid.uuid4(), "app_id": uuid.uuid4(),
    }
    values.update(fields)
    return ClaimedDelivery(message=Message(expires_at=expires_at, ttl=ttl, **message_fields), **values)
