"""Steps many end-to-end tests take: register a browser, wait for a notification to be final."""

from __future__ import annotations

import json

from tests.support.helpers import wait_for


def register_web(api, tenant, user_id, subscription) -> str:
    response = api.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": "web", "push_token": json.dumps(subscription)},
        headers=tenant.user_headers(user_id),
    )
    assert response.status_code == 201, response.text
    return response.json()["device_id"]


def final_notification(api, tenant, notification_id: str) -> dict:
    def done():
        body = api.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()
        return body if body["status"] not in ("queued", "sending") else None

    return wait_for(done)
