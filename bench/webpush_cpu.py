"""CPU per Web Push delivery: pushq's adapter against a plain `pywebpush.webpush()` loop.

Both push the same payload to the same local push service, which runs in a
separate process so its decryption does not count. CPU time is this process's
user+system time (`time.process_time`), not wall time. This measures the vendor
adapter only (encryption, VAPID, HTTP); the whole pipeline (Celery, database) is
not included.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import requests
from pywebpush import webpush

from shared.clock import utcnow
from shared.message import Message
from shared.pipeline.values import ClaimedDelivery
from shared.vapid import generate_vapid_key_pair
from workers.adapters.base import AppCredentials
from workers.adapters.webpush import WebPushAdapter


def _start_push_service() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "standins.webpush", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, url
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)


def _subscriptions(url: str, count: int) -> list[dict]:
    with requests.Session() as http:
        return [http.post(f"{url}/_standin/subscriptions", timeout=10).json() for _ in range(count)]


def run(deliveries: int) -> None:
    process, url = _start_push_service()
    try:
        subscriptions = _subscriptions(url, deliveries)
        keys = generate_vapid_key_pair()
        payload = {"title": "Your shift starts in 30 min", "body": "Open GymOps to view details.", "data": {"route": "/schedule"}}
        encoded = json.dumps(payload, separators=(",", ":")).encode()

        # The usual way to call it: the key as a base64 DER string, a fresh claims dict per call.
        der_b64 = "".join(line for line in keys.private_pem.splitlines() if "-----" not in line)
        start = time.process_time()
        for subscription in subscriptions:
            webpush(subscription, encoded, vapid_private_key=der_b64,
                    vapid_claims={"sub": "mailto:bench@example.com"}, ttl=3600)
        baseline = (time.process_time() - start) / deliveries

        app = AppCredentials(app_id=uuid.uuid4(), vapid_private_key=keys.private_pem,
                             vapid_public_key=keys.public_key, vapid_subject="mailto:bench@example.com")
        now = utcnow()
        message = Message(title=payload["title"], body=payload["body"], data=payload["data"],
                           expires_at=now + timedelta(hours=1), ttl=3600)
        claimed = [
            ClaimedDelivery(delivery_id=uuid.uuid4(), device_id=uuid.uuid4(), token_hash="",
                            token=json.dumps({"endpoint": s["endpoint"], "keys": s["keys"]}), platform="web",
                            attempts=1, notification_id=uuid.uuid4(), app_id=app.app_id, message=message)
            for s in subscriptions
        ]
        adapter = WebPushAdapter(allow_http_loopback=True)  # the local push service is http on loopback
        adapter.send_many(app, claimed[:10])  # warm the connection pool and the VAPID cache
        start = time.process_time()
        outcomes = []
        for first in range(0, len(claimed), 100):  # in chunks, as the workers push them
            outcomes.extend(adapter.send_many(app, claimed[first : first + 100]))
        pushq = (time.process_time() - start) / deliveries
        adapter.close()
        failures = [o for o in outcomes if o.kind.value != "sent"]
        print(f"deliveries per loop:          {deliveries}")
        print(f"plain pywebpush.webpush():    {baseline * 1e6:8.0f} µs CPU per delivery")
        print(f"pushq WebPushAdapter:         {pushq * 1e6:8.0f} µs CPU per delivery")
        print(f"ratio (pushq / plain):        {pushq / baseline:8.2f}")
        if failures:
            print(f"WARNING: {len(failures)} deliveries not sent, e.g. {failures[0]}")
    finally:
        process.terminate()
        process.wait(timeout=10)
