"""Apple Push Notification service (APNs): deliveries to requests, answers to outcomes.

The request: the ``aps`` payload (alert, badge, sound) plus ``data`` and ``url``
for the app, fitted to 4096 bytes (built by :mod:`shared.vendor_payloads`, as the
API measured it at accept), with ``apns-expiration`` (the TTL left at this push),
``apns-priority`` 10/5, ``apns-collapse-id`` and ``apns-push-type`` (``alert``, or
``background`` at priority 5 for a silent push: :func:`shared.vendor_payloads.apns_push_type`).
The answer: :func:`outcome_for`. How requests travel (the provider token, HTTP/2
through the wire client, the event loop) is :mod:`workers.vendors.apns_client`'s
business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from shared.clock import utcnow
from shared.outcomes import Outcome
from shared.payloads import PayloadTooLarge
from shared.pipeline.values import ClaimedDelivery
from shared.platforms import APNS_MAX_PAYLOAD_BYTES, APNS_TOKEN
from shared.vendor_payloads import IOS, apns_priority, apns_push_type, fit
from workers.adapters.base import (
    AppCredentials,
    ChunkInterrupted,
    parse_retry_after,
    unanswered_as_retries,
    vendor_text,
)
from workers.vendors.apns_client import ApnsAnswer, ApnsClient, ApnsCredentials, ApnsFailure, PushRequest

MAX_PAYLOAD_BYTES = APNS_MAX_PAYLOAD_BYTES
PRIORITY_HIGH = 10
PRIORITY_NORMAL = 5
MAX_REASON_CHARS = 200  # APNs reasons are short identifiers ("BadDeviceToken")


def outcome_for(answer: ApnsAnswer | ApnsFailure, *, sandbox: bool, truncated: bool = False) -> Outcome:
    """APNs' answer (or why none came) in pushq's outcome vocabulary."""
    if isinstance(answer, ApnsFailure):
        return Outcome.rejected(answer.detail) if answer.credentials else Outcome.retry(answer.detail)
    # What APNs sent is untrusted: a reason with NUL or of any length is cleaned and bounded.
    status = vendor_text(answer.status, 16) or ""
    reason = vendor_text(answer.reason, MAX_REASON_CHARS) or ""
    if status == "200":
        return Outcome.sent(answer.apns_id, truncated)
    label = f"{reason or 'no reason'} ({status or 'no status'})"
    delay = parse_retry_after(answer.retry_after)
    if reason in ("Unregistered", "ExpiredToken") or status == "410":
        return Outcome.dead_token(reason or "Unregistered")
    if reason == "BadDeviceToken":
        where = "sent to sandbox; a production token?" if sandbox else "sent to production; a sandbox token?"
        return Outcome.dead_token(f"BadDeviceToken ({where})")
    if reason == "InvalidProviderToken":
        return Outcome.rejected("InvalidProviderToken: check the app's APNs key id/team id")
    if reason == "ExpiredProviderToken":
        return Outcome.retry("ExpiredProviderToken: provider token too old", delay)
    if reason == "IdleTimeout":
        return Outcome.retry(f"APNs {label}", delay)
    if status == "429" or status.startswith("5") or not status:
        return Outcome.retry(f"APNs {label}", delay)
    if reason == "DeviceTokenNotForTopic":
        return Outcome.rejected("DeviceTokenNotForTopic: the device token is not for this app's bundle id")
    if reason in ("BadEnvironmentKeyIdInToken", "BadCertificateEnvironment"):
        environment = "sandbox" if sandbox else "production"
        return Outcome.rejected(f"{reason}: the app's APNs key is not valid for {environment}")
    return Outcome.rejected(f"APNs {label}")


class ApnsAdapter:
    """Pushes to iOS devices through :class:`ApnsClient`; see the module docstring."""

    platform = "ios"

    def __init__(
        self,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        *,
        host: str | None = None,
        port: int = 443,
        ca_file: str | None = None,
        max_connections: int = 10,
        deadline: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.clock = clock
        # ``deadline`` bounds each push (connecting, waiting for a stream, the answer); default connect + read.
        self.client = ApnsClient(connect_timeout, read_timeout, host=host, port=port, ca_file=ca_file,
                                 max_connections=max_connections, deadline=deadline)

    @property
    def late_answers(self) -> int:
        """APNs answers that came after the request had been given up (reported as a retry)."""
        return self.client.late_answers

    def send_many(self, app: AppCredentials, deliveries: Sequence[ClaimedDelivery]) -> list[Outcome]:
        if not deliveries:
            return []
        if not (app.apns_private_key and app.apns_key_id and app.apns_team_id and app.apns_bundle_id):
            return [Outcome.rejected("app has no APNs credentials") for _ in deliveries]
        credentials = ApnsCredentials(str(app.app_id), app.apns_private_key, app.apns_key_id, app.apns_team_id,
                                      app.apns_bundle_id, app.apns_use_sandbox)
        outcomes: list[Outcome | None] = []
        requests: list[tuple[int, PushRequest, bool]] = []
        for index, delivery in enumerate(deliveries):
            prepared = self._prepare(delivery, self.clock())  # the TTL left at this push
            if isinstance(prepared, Outcome):
                outcomes.append(prepared)
            else:
                outcomes.append(None)
                requests.append((index, *prepared))
        try:
            answers: list[ApnsAnswer | ApnsFailure | None] = list(
                self.client.push_many(credentials, [request for _, request, _ in requests])
            )
            interrupted = None
        except ChunkInterrupted as exc:  # the task's time limit: keep what came back
            answers, interrupted = exc.partial, exc
        for (index, _, truncated), answer in zip(requests, answers):
            if answer is not None:
                outcomes[index] = outcome_for(answer, sandbox=app.apns_use_sandbox, truncated=truncated)
        if interrupted is not None:
            raise ChunkInterrupted(unanswered_as_retries(outcomes, interrupted.cause), interrupted.cause) from interrupted
        return unanswered_as_retries(outcomes, None)

    def close(self) -> None:
        self.client.close()

    def _prepare(self, delivery: ClaimedDelivery, now: datetime) -> Outcome | tuple[PushRequest, bool]:
        if not APNS_TOKEN.fullmatch(delivery.token):
            return Outcome.dead_token("BadDeviceToken (not a hex APNs device token)")
        content = delivery.message
        try:
            payload, truncated = fit(IOS, content)  # as the API measured it at accept
        except PayloadTooLarge as exc:
            return Outcome.rejected(f"payload too large for APNs: {exc}")
        except (TypeError, ValueError) as exc:
            return Outcome.rejected(f"payload cannot be encoded as JSON: {exc}")
        request = PushRequest(
            device_token=delivery.token,
            notification_id=str(delivery.delivery_id),
            time_to_live=content.remaining_ttl(now),
            priority=apns_priority(content),
            collapse_key=content.collapse_key or None,
            push_type=apns_push_type(content),
            payload=payload,
        )
        return request, truncated
