"""The one outcome vocabulary every vendor adapter answers in.

Adapters turn a vendor's answer into an :class:`Outcome`; nothing vendor-specific
(status codes, exception types, error strings) travels past them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OutcomeKind(str, enum.Enum):
    SENT = "sent"  # the vendor accepted the message
    RETRY = "retry"  # transient: try again later (429, 5xx, timeouts, connection errors)
    DEAD_TOKEN = "dead_token"  # the token is gone for good: disable the device
    REJECTED = "rejected"  # this message will never be accepted (4xx, payload too large)


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    vendor_message_id: str | None = None
    reason: str | None = None
    retry_after: float | None = None  # seconds; a floor for the next attempt
    truncated: bool = False  # the body was shortened to fit the vendor's size limit
    # Stop using the device (a dead token always does; a refused push endpoint does too).
    disable_device: bool = False

    @classmethod
    def sent(cls, vendor_message_id: str | None, truncated: bool = False) -> Outcome:
        return cls(OutcomeKind.SENT, vendor_message_id=vendor_message_id, truncated=truncated)

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None) -> Outcome:
        return cls(OutcomeKind.RETRY, reason=reason, retry_after=retry_after)

    @classmethod
    def dead_token(cls, reason: str) -> Outcome:
        return cls(OutcomeKind.DEAD_TOKEN, reason=reason, disable_device=True)

    @classmethod
    def rejected(cls, reason: str, *, disable_device: bool = False) -> Outcome:
        return cls(OutcomeKind.REJECTED, reason=reason, disable_device=disable_device)
