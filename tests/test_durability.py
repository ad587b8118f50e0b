"""Nothing accepted is lost: a send accepted while the broker is unreachable is still delivered."""

from __future__ import annotations

import uuid

import httpx

from api.app import create_app
from tests.conftest import LiveServer
from tests.test_e2e_webpush import final_notification, register_web


def test_a_send_accepted_while_the_broker_is_down_is_delivered_by_the_sweeper(
    settings, api, worker, tenant, push_service, caplog
):
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    register_web(api, tenant, user, subscription)
    # An API whose broker is unreachable (nothing listens on port 1): same database and guard store.
    broker_down = LiveServer(create_app(settings.replace(broker_url="redis://127.0.0.1:1/0"))).start()
    try:
        with httpx.Client(base_url=broker_down.url, trust_env=False, timeout=30) as http:
            response = http.post("/push/send", json={"user_id": str(user), "title": "Still here", "body": "b"},
                                 headers=tenant.service_headers())
    finally:
        broker_down.stop()

    assert response.status_code == 200  # committed: accepted even though the enqueue failed
    assert "after-commit callback failed" in caplog.text
    notification = final_notification(api, tenant, response.json()["notification_id"])
    assert notification["status"] == "delivered"
    assert [m.json()["title"] for m in push_service.messages(subscription)] == ["Still here"]


def test_without_redis_the_api_refuses_with_503_rather_than_guess_the_quota(settings, tenant):
    user = uuid.uuid4()
    tenant.enroll(user)
    client = create_app(settings.replace(redis_url="redis://127.0.0.1:1/0")).test_client()
    response = client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"},
                           headers=tenant.service_headers())
    assert response.status_code == 503
    assert response.get_json() == {"error": "unavailable", "message": "Service temporarily unavailable, try again"}
    assert response.headers["Retry-After"] == "5"
