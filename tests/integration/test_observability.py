"""Request ids, log formats and metrics, in process (the Procfile processes: test_observability_procfile.py)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, select

from api.app import create_app
from api.metrics import QueueCollector
from shared.db import session_scope
from shared.logging import JsonFormatter, TextFormatter
from shared.models import Notification
from shared.observability.context import accept_request_id, request_ids_context, task_headers, task_request_ids
from shared.observability.metrics import metrics, observe_many, retry_reason
from shared.outcomes import Outcome
from tests.support.builders import add_notification
from tests.support.harness import LiveServer
from tests.support.helpers import claimed_delivery
from workers.metrics import record_chunk


@pytest.mark.parametrize("candidate", ["abc", "x" * 128, "a-b_c.d:e/f=g!~", "550e8400-e29b-41d4-a716-446655440000"])
def test_a_valid_request_id_is_kept(candidate):
    assert accept_request_id(candidate) == candidate


@pytest.mark.parametrize("candidate", [None, "", "x" * 129, "has space", "tab\tinside", "naïve", "new\nline"])
def test_an_invalid_request_id_is_replaced(candidate):
    replaced = accept_request_id(candidate)
    assert replaced != candidate and len(replaced) == 32 and int(replaced, 16) >= 0


def test_task_headers_carry_only_valid_distinct_ids():
    assert task_headers([]) is None
    headers = task_headers(["a", "a", "b"])
    assert headers == {"pushq_request_ids": ["a", "b"]}

    class Request:
        pushq_request_ids = ["a", 7, "bad id", "b"]

    assert task_request_ids(Request()) == ("a", "b")
    assert task_request_ids(object()) == ()


def _record(message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("pushq.test", logging.INFO, __file__, 1, message, (), exc_info)


def test_text_lines_name_the_request_ids_that_apply():
    formatter = TextFormatter()
    assert "request_ids" not in formatter.format(_record("outside"))
    with request_ids_context(["r1", "r2"]):
        line = formatter.format(_record("inside", exc=True))
    first, _, traceback = line.partition("\n")
    assert first.endswith("pushq.test: inside request_ids=r1,r2")
    assert "ValueError: boom" in traceback


def test_json_lines_are_one_object_each():
    formatter = JsonFormatter()
    with request_ids_context(["r1"]):
        event = json.loads(formatter.format(_record("hello %s")))
    assert event["message"] == "hello %s" and event["level"] == "INFO" and event["logger"] == "pushq.test"
    assert event["request_ids"] == ["r1"]
    assert datetime.fromisoformat(event["ts"]).tzinfo is not None
    line = formatter.format(_record("with a traceback", exc=True))
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc_info"]
    assert "request_ids" not in json.loads(formatter.format(_record("outside")))


@pytest.mark.parametrize("reason, label", [
    ("push service answered 429", "throttled"), ("FCM answered 429 QUOTA_EXCEEDED: slow down", "throttled"),
    ("APNs TooManyRequests (429)", "throttled"), ("ExpiredProviderToken: provider token too old", "auth"),
    ("FCM answered 401 error", "auth"), ("push service timed out", "timeout"), ("APNs timed out", "timeout"),
    ("push service answered 503", "vendor_error"), ("FCM answered 500 INTERNAL", "vendor_error"),
    ("APNs ServiceUnavailable (503)", "vendor_error"), ("connection lost", "connection"),
    ("cannot connect to APNs: ConnectionRefusedError: nope", "connection"),
    ("web push client error: KeyError", "client_error"), ("something new", "other"), (None, "other"),
    ("egress refused at connect: the push service host resolved to no public address", "egress"),
])
def test_retry_reasons_fold_into_few_labels(reason, label):
    assert retry_reason(reason) == label


def test_observe_many_matches_observe():
    one = Histogram("pushq_test_one_seconds", "t", buckets=(0.1, 1.0, 10.0), registry=None)
    many = Histogram("pushq_test_many_seconds", "t", buckets=(0.1, 1.0, 10.0), registry=None)
    values = [0.05, 0.1, 0.5, 1.0, 3.0, 100.0, 100.0]
    for value in values:
        one.observe(value)
    observe_many(many, values)

    def samples(histogram):
        return [(s.name.rsplit("_", 1)[-1], s.labels, s.value) for s in histogram.collect()[0].samples
                if not s.name.endswith("_created")]

    assert samples(one) == samples(many)


def _value(name: str, **labels: str) -> float:
    for family in metrics().__dict__.values():
        for metric in family.collect():
            for sample in metric.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
    return 0.0


def test_a_chunk_is_counted_by_vendor_outcome_and_retry_reason():
    accepted = datetime.now(UTC) - timedelta(seconds=2)
    deliveries = [claimed_delivery("t", "ios", expires_at=accepted + timedelta(seconds=60), ttl=60) for _ in range(4)]
    outcomes = [Outcome.sent("id"), Outcome.sent("id"), Outcome.retry("APNs TooManyRequests (429)"),
                Outcome.dead_token("Unregistered")]

    class Adapter:
        late_answers = 0

    adapter = Adapter()
    before = {key: _value(*key[:1], **dict(key[1:])) for key in [
        ("pushq_deliveries_total", ("vendor", "apns"), ("outcome", "sent")),
        ("pushq_delivery_retries_total", ("vendor", "apns"), ("reason", "throttled")),
        ("pushq_delivery_latency_seconds_count", ("vendor", "apns")),
        ("pushq_deliveries_closed_at_claim_total", ("vendor", "apns")),
        ("pushq_vendor_late_answers_total", ("vendor", "apns")),
    ]}
    adapter.late_answers = 2
    record_chunk("ios", list(zip(deliveries, outcomes)), 3, adapter, now=accepted + timedelta(seconds=2))
    record_chunk("ios", [], 0, adapter)  # the same late answers are not counted twice
    after = {key: _value(*key[:1], **dict(key[1:])) for key in before}
    assert [after[key] - before[key] for key in before] == [2, 1, 4, 3, 2]


def test_the_request_id_is_answered_and_stored_with_the_notification(api, tenant, session_factory):
    users = [uuid.uuid4(), uuid.uuid4()]
    tenant.enroll(*users)
    response = api.post("/push/send/bulk", json={"user_ids": [str(u) for u in users], "title": "t", "body": "b"},
                        headers={**tenant.service_headers(), "X-Request-Id": "trace-42"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-Id"] == "trace-42"
    with session_scope(session_factory) as session:
        stored = session.scalars(select(Notification.request_id)).all()
    assert stored == ["trace-42", "trace-42"]


def test_every_answer_carries_a_request_id(client):
    for response in (client.get("/healthz"), client.get("/no/such/route"),
                     client.post("/push/send", data="x", content_type="text/plain"),
                     client.get("/openapi.json", headers={"X-Request-Id": "bad id"})):
        assert len(response.headers["X-Request-Id"]) == 32
    assert client.get("/healthz", headers={"X-Request-Id": "mine"}).headers["X-Request-Id"] == "mine"


def test_metrics_are_served_in_the_text_format(client):
    client.get("/no/such/route")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"pushq_http_requests", "pushq_queue_depth", "pushq_queue_waiting_items",
            "pushq_queue_oldest_waiting_seconds"} <= set(families)
    assert any(sample.labels.get("route") == "unmatched" for sample in families["pushq_http_requests"].samples)


def test_metrics_may_require_a_bearer_token(settings, database):
    app = create_app(settings.replace(metrics_token="s3cret")).test_client()
    refused = app.get("/metrics")
    assert refused.status_code == 401 and refused.json["error"] == "invalid_token"
    assert app.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert app.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_each_process_group_gets_an_empty_directory_and_dead_ones_are_dropped(settings, tmp_path, monkeypatch):
    from shared.observability.metrics import ENV, claim_group_dir, release_group_dir

    monkeypatch.setenv(ENV, os.environ.get(ENV, ""))  # restored after the test: claiming sets it
    dead = 2**22 + 12345  # above Linux's largest pid: never alive
    (tmp_path / f"worker-{dead}").mkdir()
    (tmp_path / f"worker-{dead}" / "counter_1.db").write_bytes(b"")
    (tmp_path / f"web-{os.getppid()}").mkdir()  # a live group's directory is kept
    (tmp_path / f"api-{os.getpid()}").mkdir()
    (tmp_path / f"api-{os.getpid()}" / "old.db").write_bytes(b"")  # what this pid left before: cleared
    claimed = claim_group_dir(settings.replace(metrics_dir=str(tmp_path)), "api")
    assert claimed == tmp_path / f"api-{os.getpid()}" and os.environ[ENV] == str(claimed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"api-{os.getpid()}", f"web-{os.getppid()}"])
    assert list(claimed.iterdir()) == []
    release_group_dir(claimed)
    assert not claimed.exists()


def _gauge(body: str, name: str, queue: str) -> float:
    families = {family.name: family for family in text_string_to_metric_families(body)}
    (value,) = [s.value for s in families[name].samples if s.labels.get("queue") == queue]
    return value


def test_queue_gauges_are_read_once_per_interval_whatever_the_scrape_rate(settings, database, engine, monkeypatch):
    """/metrics ran two aggregate queries and opened a broker connection on every scrape: 60 scrapes (8 at a
    time, over HTTP) now make one reading: 2 statements and 1 broker connection in all (plus the one statement
    of the receipt rates' reading, cached the same way)."""
    app = create_app(settings.replace(metrics_refresh_seconds=3600))
    state = app.extensions["pushq"]
    statements: list[str] = []
    app_engine = state.session_factory.kw["bind"]
    event.listen(app_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    connections: list[int] = []
    celery = state.dispatcher.celery
    real_connection_for_read = celery.connection_for_read
    monkeypatch.setattr(celery, "connection_for_read",
                        lambda *a, **k: connections.append(1) or real_connection_for_read(*a, **k))
    server = LiveServer(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as http, \
                ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: http.get("/metrics"), range(60)))
    finally:
        server.stop()
    assert {answer.status_code for answer in answers} == {200}
    assert all("pushq_queue_waiting_items" in answer.text for answer in answers)
    # one reading of each cached collector: the queue gauges' two statements, the receipt rates' one
    assert len(statements) == 3, statements
    assert sum("GROUP BY notifications.app_id" in statement for statement in statements) == 1
    assert len(connections) == 1


def test_a_reading_is_renewed_once_the_interval_has_passed(settings, engine, session_factory, tenant):
    now = [1000.0]
    app = create_app(settings)
    state = app.extensions["pushq"]
    collector = QueueCollector(state.dispatcher.celery, state.session_factory, refresh_seconds=10, clock=lambda: now[0])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def waiting() -> float:
        return _gauge(generate_latest(registry).decode(), "pushq_queue_waiting_items", "fanout")

    assert waiting() == 0
    with session_scope(session_factory) as session:
        add_notification(session, tenant.id, uuid.uuid4(), "queued", age_days=0)
    now[0] += 9.9
    assert waiting() == 0  # within the interval: the last reading
    now[0] += 0.1
    assert waiting() == 1  # the interval has passed: read again
    assert collector.refreshes == 2
