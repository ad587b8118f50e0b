"""One webhook POST: the Standard Webhooks body and headers, signed, sent under the egress rules.

The endpoint is an app's own server, so it is untrusted like a Web Push
endpoint: the URL must pass :func:`shared.egress.check_webhook_url` at every
send (not only when it was stored), the connection goes only to public
addresses (the wire client's :class:`~workers.vendors.wire.addresses.AddressPolicy`), redirects are never followed, at
most :data:`MAX_ANSWER_BYTES` of the answer are read, and the whole POST has one
deadline. Signing is the ``standardwebhooks`` library's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from shared.egress import EndpointRefused, check_webhook_url
from shared.services.webhooks import event_wire_id
from shared.webhook_outbox import OutboxEvent, WebhookBatch
from workers.vendors.wire import EgressRefused, Request, WireClient, WireError
from workers.vendors.wire.addresses import AddressPolicy

MAX_ANSWER_BYTES = 16 * 1024
USER_AGENT = "pushq-webhooks/1"


def _event(event: OutboxEvent) -> dict[str, Any]:
    return {"id": event_wire_id(event.id), "type": event.event_type,
            "timestamp": event.created_at.isoformat(), "data": event.payload}


def message(batch: WebhookBatch, now: datetime) -> tuple[str, bytes]:
    """The ``webhook-id`` and body of a batch: one event as itself; several as a ``batch`` event.

    A batch's id is derived from its events' ids, so sending the same events again
    carries the same ``webhook-id``.
    """
    if len(batch.events) == 1:
        event = batch.events[0]
        return event_wire_id(event.id), json.dumps(_event(event), separators=(",", ":")).encode()
    digest = hashlib.sha256(",".join(str(event.id) for event in batch.events).encode()).hexdigest()[:32]
    body = {"type": "batch", "timestamp": now.isoformat(), "data": {"events": [_event(e) for e in batch.events]}}
    return f"msg_batch_{digest}", json.dumps(body, separators=(",", ":")).encode()


def signed_headers(message_id: str, body: bytes, secrets: Sequence[str], now: datetime) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (one ``v1,`` signature per secret)."""
    text = body.decode()
    signatures = " ".join(Webhook(secret).sign(message_id, now, text) for secret in secrets)
    return {
        "webhook-id": message_id, "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signatures,
        "Content-Type": "application/json", "User-Agent": USER_AGENT,
    }


def post_batch(batch: WebhookBatch, now: datetime, *, deadline: float, allow_http_loopback: bool) -> str | None:
    """POST ``batch``; None when the endpoint answered 2xx, else why not (for ``last_error``)."""
    try:
        check_webhook_url(batch.url, allow_http_loopback=allow_http_loopback)
    except EndpointRefused as exc:
        return f"refused by the egress rules: {exc.reason}"
    message_id, body = message(batch, now)
    headers = signed_headers(message_id, body, batch.secrets, now)
    return asyncio.run(_post(batch.url, body, headers, deadline, allow_http_loopback))


async def _post(url: str, body: bytes, headers: dict[str, str], deadline: float, allow_loopback: bool) -> str | None:
    client = WireClient(connect_timeout=deadline, http2=False,
                        policy=AddressPolicy.PUBLIC_OR_LOOPBACK if allow_loopback else AddressPolicy.PUBLIC)
    try:
        answer = await client.request(Request("POST", url, list(headers.items()), body), deadline=deadline,
                                      max_body=MAX_ANSWER_BYTES)
    except TimeoutError:
        return f"no answer within {deadline:g} s"
    except EgressRefused:
        return "egress refused at connect: the webhook host resolved to no public address"
    except WireError as exc:
        return f"connection failed: {type(exc).__name__}"
    finally:
        await client.close()
    if 200 <= answer.status < 300:
        return None
    return f"endpoint answered {answer.status}"
