"""``make demo`` (``python -m standins.demo``): one notification through the real pipeline to a local Web Push service.

A development tool beside the stand-ins it needs: neither is part of the
installed ``pushq`` package. Run it from a checkout while ``make run`` serves the
API (from the same directory, so it finds the same ``var/`` development keys).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import click

from cli.common import CONTEXT_SETTINGS, configure_crypto, load_settings
from shared.config import Settings
from standins.webpush import WebPushStandin

FINAL = {"delivered", "partially_delivered", "failed", "expired", "no_devices", "cancelled"}


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--api", "api_url", default="http://127.0.0.1:8000", show_default=True, help="A running pushq API.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for delivery.")
def demo(api_url: str, timeout: float) -> None:
    """End to end: app, user, a browser subscription on a local Web Push service, send, decrypt.

    Needs `pushq run` (or `make run`) serving API_URL, with the same database and
    JWT settings as this command. Prints the message the local push service
    received, decrypted; exits 1 unless it was delivered.
    """
    settings = load_settings()
    configure_crypto(settings)
    result = run_demo(settings, api_url, timeout)
    click.echo(json.dumps(result, indent=2))
    if result["notification"]["status"] != "delivered":
        raise SystemExit(1)


def run_demo(settings: Settings, api_url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Register a subscription, send to it through ``api_url``, return what the push service decrypted."""
    import requests

    from shared.db import make_engine, make_session_factory, session_scope
    from shared.services.apps import create_app
    from shared.services.enrollments import enroll
    from shared.token_signing import mint_token

    engine = make_engine(settings.database_url)
    with session_scope(make_session_factory(engine)) as session:
        app = create_app(session, "pushq demo", "mailto:demo@example.com")
        user_id = uuid.uuid4()
        enroll(session, app.id, [user_id])
    engine.dispose()
    user_token = mint_token(settings, subject=str(user_id))
    service_token = mint_token(settings, subject="demo", app_id=app.id, scopes=["push:send"])
    with WebPushStandin() as push_service, requests.Session() as http:
        subscription = push_service.new_subscription(application_server_key=app.vapid_public_key)
        registered = http.post(
            f"{api_url}/push/devices/register",
            json={"app_id": str(app.id), "platform": "web", "push_token": json.dumps(subscription)},
            headers={"Authorization": f"Bearer {user_token}"},
            timeout=10,
        )
        registered.raise_for_status()
        auth = {"Authorization": f"Bearer {service_token}"}
        sent = http.post(
            f"{api_url}/push/send",
            json={"user_id": str(user_id), "title": "Hello from pushq",
                  "body": "This came through the queue, encrypted end to end.", "data": {"route": "/demo"}, "ttl": 600},
            headers=auth,
            timeout=10,
        )
        sent.raise_for_status()
        notification_id = sent.json()["notification_id"]
        deadline = time.monotonic() + timeout
        while True:
            notification = http.get(f"{api_url}/push/notifications/{notification_id}", headers=auth, timeout=10).json()
            if notification["status"] in FINAL or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        received = [message.json() for message in push_service.messages(subscription)]
    return {
        "app_id": str(app.id),
        "device_id": registered.json()["device_id"],
        "notification": notification,
        "push_service_received_decrypted": received,
    }


if __name__ == "__main__":
    demo(prog_name="python -m standins.demo")
