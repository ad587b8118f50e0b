"""What every vendor adapter receives and implements."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

from shared.delivery import ClaimedDelivery
from shared.models import App
from shared.outcomes import Outcome


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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also accepts "²" and other digits float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class Adapter(Protocol):
    """Turns deliveries into vendor requests and the vendor's answers into outcomes."""

    platform: str

    def send_many(self, app: AppCredentials, deliveries: Sequence[ClaimedDelivery]) -> list[Outcome]:
        """One outcome per delivery, in order; never raises: any failure of one push is its outcome.

        The remaining TTL is computed at each push, not once per chunk.
        """
        ...

    def close(self) -> None: ...
