"""What every vendor adapter receives and implements."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

from shared.models import App
from shared.outcomes import MAX_RETRY_AFTER_SECONDS, Outcome, clamp_delay, clean_text
from shared.pipeline.values import ClaimedDelivery
from workers.vendors.loop import ChunkInterrupted

__all__ = ["Adapter", "AppCredentials", "ChunkInterrupted", "chunk_budget", "parse_retry_after",
           "unanswered_as_retries", "vendor_text"]

# Beyond its waves of pushes, a chunk may take this long (at most half a push deadline):
# encryption, credentials, the event loop's own turns.
CHUNK_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class AppCredentials:
    """An app's vendor credentials, as plain data detached from the database."""

    app_id: uuid.UUID
    vapid_private_key: str
    vapid_public_key: str
    vapid_subject: str
    apns_team_id: str | None = None
    apns_key_id: str | None = None
    apns_private_key: str | None = None
    apns_bundle_id: str | None = None
    apns_use_sandbox: bool = False
    fcm_project_id: str | None = None
    fcm_service_account: str | None = None

    @classmethod
    def from_model(cls, app: App) -> AppCredentials:
        return cls(
            app_id=app.id,
            vapid_private_key=app.vapid_private_key,
            vapid_public_key=app.vapid_public_key,
            vapid_subject=app.vapid_subject,
            apns_team_id=app.apns_team_id,
            apns_key_id=app.apns_key_id,
            apns_private_key=app.apns_private_key,
            apns_bundle_id=app.apns_bundle_id,
            apns_use_sandbox=app.apns_use_sandbox,
            fcm_project_id=app.fcm_project_id,
            fcm_service_account=app.fcm_service_account,
        )


def parse_retry_after(value: str | bytes | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or an HTTP date), within [0, MAX_RETRY_AFTER_SECONDS].

    None when absent or not either form. A vendor's value is never trusted: a
    number too large for a datetime (``300000000000``, 400 digits) is the maximum,
    a date in the past is 0.
    """
    if not value:
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", "replace")
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also accepts "²" and other digits float() refuses
        # More than 9 digits is more than 31 years: the maximum (and int() never sees 400 digits).
        return clamp_delay(int(value)) if len(value) <= 9 else MAX_RETRY_AFTER_SECONDS
    if len(value) > 64:  # an HTTP date is 29 characters
        return None
    try:
        when = parsedate_to_datetime(value)
        seconds = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return clamp_delay(seconds)


def vendor_text(value: object, limit: int) -> str | None:
    """A string (or bytes) from a vendor's answer, fit to store and log: see :func:`shared.outcomes.clean_text`."""
    return clean_text(value, limit)


def chunk_budget(count: int, concurrency: int, push_deadline: float) -> float:
    """Seconds a chunk of ``count`` pushes may take: its waves of ``concurrency`` pushes, each
    bounded by the push deadline, plus a margin. Stays under the deliver task's soft time limit
    (``Settings.deliver_time_limits``: one more push deadline than the waves)."""
    waves = max(math.ceil(count / max(concurrency, 1)), 1)
    return waves * push_deadline + min(CHUNK_MARGIN_SECONDS, push_deadline / 2)


def unanswered_as_retries(answers: Sequence[Outcome | None], interrupted_by: str | None) -> list[Outcome]:
    """Each push's outcome; one that had no answer when the chunk stopped is a retry saying why."""
    reason = (f"no answer before the chunk was interrupted ({interrupted_by})" if interrupted_by
              else "no answer within the chunk's deadline")
    return [answer if answer is not None else Outcome.retry(reason) for answer in answers]


class Adapter(Protocol):
    """Turns deliveries into vendor requests and the vendor's answers into outcomes."""

    platform: str

    def send_many(self, app: AppCredentials, deliveries: Sequence[ClaimedDelivery]) -> list[Outcome]:
        """One outcome per delivery, in order: any failure of one push is its outcome.

        The remaining TTL is computed at each push, not once per chunk. Every push is
        bounded by the push deadline and the chunk by :func:`chunk_budget`. Raises only
        :class:`ChunkInterrupted` (with every delivery's outcome: the answers that came
        back, retries for the rest) when the wait is interrupted by the task's time limit.
        """
        ...

    def close(self) -> None: ...
