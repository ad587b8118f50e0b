"""The webhook POST's egress rules and signatures, without services (a local socket only)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from shared.services.webhooks import new_secret
from shared.webhook_outbox import OutboxEvent, WebhookBatch
from workers.webhook_sender import message, post_batch, signed_headers

NOW = datetime.now(UTC)


def batch(url: str, events: int = 1, secrets: tuple[str, ...] = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",)) -> WebhookBatch:
    return WebhookBatch(uuid.uuid4(), uuid.uuid4(), url, secrets, tuple(
        OutboxEvent(uuid.uuid4(), "device.disabled", {"n": n}, NOW) for n in range(events)))


def test_a_name_resolving_to_a_private_address_is_refused_at_connect():
    # localhost passes the URL rules (a host name, https, 443); only its addresses are not public.
    error = post_batch(batch("https://localhost/hook"), NOW, deadline=5, allow_http_loopback=False)
    assert error == "egress refused at connect: the webhook host resolved to no public address"


def test_urls_refused_before_any_connection():
    for url in ("https://10.0.0.1/hook", "http://127.0.0.1:9/hook", "https://example.com:8443/"):
        error = post_batch(batch(url), NOW, deadline=5, allow_http_loopback=False)
        assert error is not None and error.startswith("refused by the egress rules")


def test_signatures_verify_with_standardwebhooks_each_secret():
    # The verifier refuses a timestamp over five minutes old: the signing time is the test's own, not the
    # module's import time (a full suite reaches this test long after collecting it).
    now = datetime.now(UTC)
    first, second = new_secret(), new_secret()
    one = batch("https://example.com/", events=3, secrets=(first, second))
    message_id, body = message(one, now)
    assert message_id == message(one, now)[0]  # the same events: the same webhook-id
    headers = signed_headers(message_id, body, one.secrets, now)
    for secret in (first, second):
        payload = Webhook(secret).verify(body, headers)
        assert payload["type"] == "batch" and [e["data"] for e in payload["data"]["events"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    single = batch("https://example.com/")
    message_id, body = message(single, now)
    assert message_id == f"msg_{single.events[0].id.hex}"
    assert Webhook(single.secrets[0]).verify(body, signed_headers(message_id, body, single.secrets, now))["id"] == message_id
