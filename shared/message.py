"""One notification's content and delivery options, as one frozen value.

Built once when a send is accepted, stored as the notification's columns of the
same names, and read back by the claim that hands deliveries to the adapters.
Every later step (fan-out, adapters, payload fitting) reads this value, never a
row by position. Adding a send option is one field here (with its column of the
same name in ``shared.models.Notification``), one field in the request schema and
one line in each adapter that uses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.message_options import NO_OPTIONS, Options

# Built once: json.dumps with non-default options builds a new encoder per call (~5 us), and payloads are
# encoded several times per send (once per platform at accept, again in the adapters).
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_CANONICAL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def compact_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """The wire form of a JSON document: compact separators, UTF-8, non-ASCII kept as is.

    ``sort_keys`` gives the canonical form, for hashing and comparing documents.
    """
    return (_CANONICAL if sort_keys else _COMPACT).encode(value).encode("utf-8")


@dataclass(frozen=True)
class Message:
    """What every vendor adapter renders; a notification row holds exactly these columns."""

    title: str
    body: str
    expires_at: datetime
    ttl: int
    data: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    priority: str = "normal"  # high | normal
    collapse_key: str | None = None
    badge: int | None = None
    sound: str | None = None
    platform: str | None = None  # fan out only to this platform (None: every platform)
    options: Options = NO_OPTIONS  # presentation options (shared.message_options); column: JSON, NULL = none

    @property
    def silent(self) -> bool:
        return self.options.silent

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The notification columns that make a message (same names as the fields)."""
        return _COLUMNS

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Message:
        """The message held by a row (any mapping with the columns by name)."""
        values = {name: row[name] for name in _COLUMNS}
        values["options"] = Options.from_json(values["options"])
        return cls(**values)

    @classmethod
    def accepted(cls, start: datetime, ttl: int, **content: Any) -> Message:
        """A message that may go out from ``start`` (accepted now, or its ``send_at``): it expires ``ttl`` seconds later."""
        return cls(expires_at=start + timedelta(seconds=ttl), ttl=ttl, **content)

    def as_row(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in self.columns()}
        row["options"] = self.options.as_json()
        return row

    def remaining_ttl(self, now: datetime) -> int:
        """Seconds the vendor may still hold the message; computed at each push.

        A ttl of 0 stays 0: the vendors' "deliver now or drop it". Any other ttl is
        rounded up and is at least 1, so time spent in pushq's queue never turns a
        short ttl into that special 0 (the claim closed it, explicitly, if it had
        run out before the push).
        """
        if self.ttl == 0:
            return 0
        return max(math.ceil((self.expires_at - now).total_seconds()), 1)

    def payload(self, body: str | None = None) -> dict[str, Any]:
        """The app-facing document (Web Push's push event data): title, body, data and url.

        The presentation options the service worker passes to ``showNotification``
        are added by :func:`shared.vendor_payloads.webpush_payload`.
        """
        document: dict[str, Any] = {"title": self.title, "body": self.body if body is None else body, "data": self.data}
        if self.url:
            document["url"] = self.url
        return document


_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Message))
