"""POST /push/receipts: only tokens pushq signed, idempotent, rate-limited, errors as JSON."""

from __future__ import annotations

import uuid

from shared.db import session_scope
from shared.models import Delivery
from shared.receipts import ReceiptTokens, derive_key
from tests.support.builders import add_device, add_notification


def delivery_id(session_factory, tenant) -> uuid.UUID:
    with session_scope(session_factory) as session:
        user = uuid.uuid4()
        device = add_device(session, tenant.id, user)
        notification = add_notification(session, tenant.id, user, "delivered", 0, devices=[device])
        return session.query(Delivery.id).filter(Delivery.notification_id == notification).scalar()


def tokens(settings) -> ReceiptTokens:
    return ReceiptTokens(derive_key(settings.receipt_key, settings.token_hash_key))


def test_a_receipt_is_recorded_once(client, settings, session_factory, tenant):
    delivery = delivery_id(session_factory, tenant)
    token = tokens(settings).token(delivery)
    assert client.post("/push/receipts", json={"token": token, "event": "displayed"}).status_code == 204
    with session_factory() as session:
        first = session.get(Delivery, delivery).displayed_at
    assert first is not None
    response = client.post("/push/receipts", json={"token": token, "event": "displayed"})
    assert response.status_code == 204 and response.headers["Access-Control-Allow-Origin"] == "*"
    assert client.post("/push/receipts", json={"token": token, "event": "clicked"}).status_code == 204
    with session_factory() as session:
        row = session.get(Delivery, delivery)
        assert row.displayed_at == first and row.clicked_at is not None


def test_a_click_marks_displayed_too(client, settings, session_factory, tenant):
    delivery = delivery_id(session_factory, tenant)
    assert client.post("/push/receipts", json={"token": tokens(settings).token(delivery), "event": "clicked"}).status_code == 204
    with session_factory() as session:
        row = session.get(Delivery, delivery)
        assert row.displayed_at is not None and row.clicked_at == row.displayed_at


def test_tokens_pushq_did_not_sign_are_refused(client, settings, session_factory, tenant):
    delivery = delivery_id(session_factory, tenant)
    other_key = ReceiptTokens(b"another deployment's key").token(delivery)
    mine, someone_elses = tokens(settings).token(delivery), tokens(settings).token(uuid.uuid4())
    spliced = ".".join([*mine.split(".")[:1], someone_elses.split(".")[1], mine.split(".")[2]])
    for token in (other_key, spliced, "r1.x.y", "not a token", mine.upper()):
        response = client.post("/push/receipts", json={"token": token, "event": "displayed"})
        assert response.status_code == 403, token
        assert response.get_json() == {"error": "invalid_receipt", "message": "Receipt token is not valid"}
    assert client.post("/push/receipts", json={"token": mine, "event": "opened"}).status_code == 400
    with session_factory() as session:
        assert session.get(Delivery, delivery).displayed_at is None


def test_receipts_are_rate_limited_per_address(settings, database, session_factory, tenant):
    from api.app import create_app

    app = create_app(settings.replace(receipts_per_address_per_minute=3))
    client = app.test_client()
    token = tokens(settings).token(delivery_id(session_factory, tenant))
    answers = [client.post("/push/receipts", json={"token": token, "event": "displayed"}).status_code for _ in range(4)]
    assert answers == [204, 204, 204, 429]
    limited = client.post("/push/receipts", json={"token": token, "event": "displayed"})
    assert limited.get_json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1


def test_status_page_and_metrics_show_rates_and_the_webhook(client, settings, database, session_factory, tenant):
    from api.app import create_app
    from shared.clock import utcnow
    from shared.models import WebhookEndpoint
    from shared.services import webhooks

    token = "admin-token-for-this-test-0123456789"
    deliveries = [delivery_id(session_factory, tenant) for _ in range(4)]
    signer = tokens(settings)
    for delivery, event in ((deliveries[0], "clicked"), (deliveries[1], "displayed")):
        assert client.post("/push/receipts", json={"token": signer.token(delivery), "event": event}).status_code == 204
    with session_scope(session_factory) as session:
        webhooks.set_endpoint(session, tenant.id, "http://127.0.0.1:9/hook", allow_http_loopback=True)
        webhooks.emit_event(session, tenant.id, "broadcast.completed", {"broadcast_id": "b"})
        session.get(WebhookEndpoint, tenant.id).last_error = "endpoint answered 503"
        session.get(WebhookEndpoint, tenant.id).last_attempt_at = utcnow()

    admin = create_app(settings.replace(admin_token=token, metrics_refresh_seconds=0)).test_client()
    page = admin.get("/admin", headers={"Authorization": f"Bearer {token}"}).get_data(as_text=True)
    section = page[page.index(f'data-app-id="{tenant.id}"'):]
    assert 'data-sent="4" data-displayed="2" data-clicked="1"' in section
    assert "4 sent · 2 displayed (50%) · 1 clicked (25%)" in " ".join(section.split())
    assert 'data-pending="1" data-failed="0"' in section and "endpoint answered 503" in section
    metrics = admin.get("/metrics").get_data(as_text=True)
    assert f'pushq_receipt_display_rate{{app_id="{tenant.id}"}} 0.5' in metrics
    assert f'pushq_receipt_click_rate{{app_id="{tenant.id}"}} 0.25' in metrics


def test_a_click_on_an_action_button_names_it_and_the_first_click_is_kept(client, settings, session_factory, tenant):
    clicked_action, plain_first = delivery_id(session_factory, tenant), delivery_id(session_factory, tenant)
    for delivery, receipts in ((clicked_action, [{"action": "accept"}, {}, {"action": "later"}]),
                               (plain_first, [{}, {"action": "accept"}])):
        token = tokens(settings).token(delivery)
        for extra in receipts:
            assert client.post("/push/receipts", json={"token": token, "event": "clicked", **extra}).status_code == 204
    with session_factory() as session:
        assert session.get(Delivery, clicked_action).clicked_action == "accept"
        assert session.get(Delivery, plain_first).clicked_action is None
    token = tokens(settings).token(clicked_action)
    for body in ({"event": "displayed", "action": "accept"}, {"event": "clicked", "action": "a b"},
                 {"event": "clicked", "action": "x" * 65}):
        response = client.post("/push/receipts", json={"token": token, **body})
        assert response.status_code == 400 and response.get_json()["error"] == "validation_error", body
