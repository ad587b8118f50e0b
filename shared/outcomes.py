"""The one outcome vocabulary every vendor adapter answers in.

Adapters turn a vendor's answer into an :class:`Outcome`; nothing vendor-specific
(status codes, exception types, error strings) travels past them.

Whatever a vendor sent is untrusted: an :class:`Outcome` cleans its own fields
when it is built (text without NUL, control characters or lone surrogates and
of bounded length; a retry delay within ``[0, MAX_RETRY_AFTER_SECONDS]``), so no
value of one answer can make the chunk's outcome write fail (PostgreSQL refuses
NUL and invalid UTF-8; a delay of 10^11 s overflows a datetime).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

MAX_REASON_CHARS = 1000  # deliveries.last_error, devices.disabled_reason
MAX_VENDOR_ID_CHARS = 512  # deliveries.vendor_message_id
# A vendor's Retry-After is honoured up to a day; anything longer (or unparsable as a
# bounded number) is clamped to this. Longer waits than a message's TTL end it expired.
MAX_RETRY_AFTER_SECONDS = 86_400.0

_SURROGATES = re.compile("[\ud800-\udfff]")
_LINE_BREAKS = re.compile("[\t\n\r\x0b\x0c\x85\u2028\u2029]")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def clean_text(value: object, limit: int) -> str | None:
    """``value`` as text PostgreSQL stores and a log line shows on one line; None stays None.

    Bytes are decoded as UTF-8 leniently; lone surrogates (what a non-UTF-8 header
    becomes once decoded with ``surrogateescape``, or a JSON ``"\\ud800"``) become
    U+FFFD; line breaks become spaces; NUL and other control characters are
    dropped; the result is at most ``limit`` characters (cut with an ellipsis).
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: 4 * limit + 4]).decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():  # the usual case: nothing to do
        return text
    text = text[: 4 * limit]  # bounded work, whatever was sent
    text = _CONTROLS.sub("", _LINE_BREAKS.sub(" ", _SURROGATES.sub("\ufffd", text)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clamp_delay(value: object) -> float | None:
    """A retry delay in seconds within ``[0, MAX_RETRY_AFTER_SECONDS]``; None if it is not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int) and value > MAX_RETRY_AFTER_SECONDS:
        return MAX_RETRY_AFTER_SECONDS  # float(10**400) would raise
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


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

    def __post_init__(self) -> None:
        # Frozen: the cleaned values replace what the adapter passed (see the module docstring).
        object.__setattr__(self, "vendor_message_id", clean_text(self.vendor_message_id, MAX_VENDOR_ID_CHARS))
        object.__setattr__(self, "reason", clean_text(self.reason, MAX_REASON_CHARS))
        object.__setattr__(self, "retry_after", clamp_delay(self.retry_after))

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
