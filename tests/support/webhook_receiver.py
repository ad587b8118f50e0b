"""A webhook receiver for the tests: verifies every request with the ``standardwebhooks`` verifier.

It answers 500 to its first ``fail_first`` verified requests (pushq must retry
them), then 204. Every request is checked: one that does not verify is counted
in ``unverified`` and answered 400, so a test can assert there were none.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    body: dict[str, Any]
    signatures: int  # v1 signatures in the header (two while a rotated-out secret still signs)
    raw: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.body["data"]["events"] if self.body["type"] == "batch" else [self.body]


@dataclass
class WebhookReceiver:
    secrets: list[str] = field(default_factory=list)  # any of them verifies
    fail_first: int = 0
    received: list[Received] = field(default_factory=list)  # verified requests, answered 2xx or not
    failures_answered: int = 0
    unverified: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Every event in a request answered 2xx (a failed answer's events come again)."""
        with self.lock:
            requests = list(self.received[self.failures_answered:])
        return [e for r in requests for e in r.events if event_type is None or e["type"] == event_type]

    def verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
        for secret in self.secrets:
            try:
                return Webhook(secret).verify(body, headers)  # type: ignore[no-any-return]
            except WebhookVerificationError:
                continue
        return None

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        payload = self.verify(body, headers)
        with self.lock:
            if payload is None:
                self.unverified += 1
                return 400
            # Failures come first, so the answered-2xx requests are received[failures_answered:].
            self.received.append(Received(headers["webhook-id"], payload, len(headers["webhook-signature"].split()),
                                          body, headers))
            if self.failures_answered < self.fail_first:
                self.failures_answered += 1
                return 500
            return 204


@contextmanager
def webhook_receiver(secrets: Sequence[str] = (), fail_first: int = 0) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(list(secrets), fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/pushq-events"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


