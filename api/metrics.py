"""Request ids, HTTP metrics and ``GET /metrics`` (docs/operations.md).

Every answer carries an ``X-Request-Id``: the caller's when it is valid, else a
new one. It is stored with the notifications the request creates, travels in
the fan-out task's headers and appears in every log line about them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.receipt_metrics import ReceiptCollector
from api.request_session import db_session
from broker.dispatch import Dispatcher
from broker.queues import ALL_QUEUES, FANOUT_QUEUE, PLATFORM_QUEUES
from shared.clock import utcnow
from shared.db import after_commit, session_scope
from shared.models import Delivery, DeliveryStatus, Notification, NotificationStatus
from shared.observability.context import accept_request_id, reset_request_ids, set_request_ids
from shared.observability.metrics import exposition, host_registry, join_group_dir, metrics, metrics_authorized

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
UNMATCHED = "unmatched"  # the route label of requests no route matched (404s, scanners): one series, not one per path

bp = Blueprint("metrics", __name__)


def install_observability(app: Flask) -> None:
    """Request ids, HTTP metrics and the /metrics route for ``app``.

    Call before registering hooks that may replace the answer (the session's
    commit turns a failed commit into a 503): after-request hooks run in
    reverse order, so these see the final answer.
    """
    state = app.extensions["pushq"]
    join_group_dir(state.settings, "api")
    app.extensions["pushq_metrics"] = host_registry(
        state.settings,
        QueueCollector(state.dispatcher.celery, state.session_factory, state.settings.metrics_refresh_seconds),
        ReceiptCollector(state.session_factory, state.settings.metrics_refresh_seconds),
    )
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.teardown_request(_forget_request_id)
    app.register_blueprint(bp)


def current_request_id() -> str:
    """The id of the request being served."""
    request_id = g.get("request_id")
    if request_id is None:
        request_id = g.request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
    return request_id


def route_label() -> str:
    """The route template (``/push/notifications/<id>``), never the raw path: labels must stay few."""
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED


def enqueue_with_request_id(dispatcher: Dispatcher) -> Callable[[Sequence[uuid.UUID]], None]:
    """The after-commit enqueue for a send: its fan-out task carries this request's id in its headers."""
    request_id = current_request_id()

    def enqueue(notification_ids: Sequence[uuid.UUID]) -> None:
        dispatcher.enqueue_fanout(notification_ids, request_ids=(request_id,))

    return enqueue


def count_accepted(count: int) -> None:
    """Count ``count`` notifications accepted by this endpoint once the request's transaction commits
    (scheduled sends included; a rolled-back request counts nothing)."""
    endpoint = route_label()
    after_commit(db_session(), lambda: metrics().accepted.labels(endpoint).inc(count))


def _start_request() -> None:
    g.request_started = time.perf_counter()
    g.request_id_token = set_request_ids([current_request_id()])


def _finish_request(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = current_request_id()
    started = g.get("request_started")
    if started is not None:
        route, method, m = route_label(), request.method, metrics()
        m.http_requests.labels(route, method, str(response.status_code)).inc()
        m.http_duration.labels(route, method).observe(time.perf_counter() - started)
        if response.status_code == 429 and response.is_json and \
                (response.get_json(silent=True) or {}).get("error") == "daily_quota_exceeded":
            m.quota_refusals.labels(route).inc()
    return response


def _forget_request_id(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        try:
            reset_request_ids(token)
        except ValueError:  # set in another context (cannot happen with Flask's threads; be safe)
            set_request_ids(())


@bp.get("/metrics")
def metrics_view():
    """Every pushq process's metrics on this host, in the Prometheus text format (outside the OpenAPI
    document, like /healthz). With PUSHQ_METRICS_TOKEN set it needs ``Authorization: Bearer <token>``."""
    token = current_app.extensions["pushq"].settings.metrics_token
    if not metrics_authorized(request.headers.get("Authorization"), token):
        response = current_app.json.response({"error": "invalid_token", "message": "Invalid token"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = exposition(current_app.extensions["pushq_metrics"])
    return Response(body, status=200, content_type=content_type)


class QueueCollector:
    """Queue gauges: messages in the broker and work waiting in the database, read at most once per interval.

    The broker's count is what Celery has not handed to a worker yet (Redis:
    the length of the queue's lists; RabbitMQ: the queue's ready messages). The
    database says what the queues stand for, whatever the broker: deliveries
    ``pending`` per vendor and notifications accepted but not fanned out, and
    how long the oldest of them has waited.

    Reading them costs a broker connection and two aggregate queries, so each
    process reads them at most once per ``refresh_seconds``
    (PUSHQ_METRICS_REFRESH_SECONDS) and answers every scrape in between from
    that reading, however often (and by however many scrapers) /metrics is
    asked: scraping cannot be turned into load on the database or the broker.
    """

    def __init__(self, celery: Any, session_factory: sessionmaker[Session], refresh_seconds: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.celery = celery
        self.session_factory = session_factory
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._reading: tuple[dict[str, int], dict[str, tuple[int, float]]] | None = None
        self._read_at = 0.0
        self.refreshes = 0  # readings taken (for tests and debugging)

    def reading(self) -> tuple[dict[str, int], dict[str, tuple[int, float]]]:
        """(broker depths, database waiting work): the last reading while it is fresh, else a new one.

        One thread reads at a time; the others wait for it and share its reading.
        """
        with self._lock:
            now = self.clock()
            if self._reading is None or now - self._read_at >= self.refresh_seconds:
                self._reading = (self._broker_depths(), self._database_waiting_or_nothing())
                self._read_at = self.clock()
                self.refreshes += 1
            return self._reading

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        depths, rows = self.reading()
        depth = GaugeMetricFamily("pushq_queue_depth", "Task messages waiting in the broker, by queue.",
                                  labels=["queue"])
        for queue, count in depths.items():
            depth.add_metric([queue], count)
        yield depth
        waiting = GaugeMetricFamily(
            "pushq_queue_waiting_items",
            "Work waiting in the database, by queue: pending deliveries per vendor queue, "
            "notifications not yet fanned out for fanout.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "pushq_queue_oldest_waiting_seconds", "Age of the oldest waiting item, by queue (0 when none).",
            labels=["queue"])
        for queue, (count, age) in rows.items():
            waiting.add_metric([queue], count)
            oldest.add_metric([queue], age)
        yield waiting
        yield oldest

    def _database_waiting_or_nothing(self) -> dict[str, tuple[int, float]]:
        try:
            return self._database_waiting()
        except Exception as exc:
            log.warning("metrics: cannot read waiting work from the database: %s", type(exc).__name__)
            return {}

    def _broker_depths(self) -> dict[str, int]:
        """Messages per queue, asked the way every kombu transport answers (a passive declare).

        A queue the broker does not know (Redis drops an empty list) holds 0.
        Without a broker the gauge is left out rather than the scrape failing.
        """
        depths: dict[str, int] = {}
        try:
            with self.celery.connection_for_read() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
                for queue in ALL_QUEUES:
                    channel = connection.channel()
                    try:
                        depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                    except connection.channel_errors:
                        depths[queue] = 0
                    finally:
                        try:
                            channel.close()
                        except Exception:
                            pass
        except Exception as exc:
            log.warning("metrics: cannot read queue depths from the broker: %s", type(exc).__name__)
            return {}
        return depths

    def _database_waiting(self) -> dict[str, tuple[int, float]]:
        now = utcnow()

        def age(oldest: Any) -> float:
            if oldest is None:
                return 0.0
            if oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            return max((now - oldest).total_seconds(), 0.0)

        result = dict.fromkeys((FANOUT_QUEUE, *PLATFORM_QUEUES.values()), (0, 0.0))
        with session_scope(self.session_factory) as session:
            for platform, count, oldest in session.execute(
                select(Delivery.platform, func.count(), func.min(Delivery.updated_at))
                .where(Delivery.status == DeliveryStatus.PENDING.value)
                .group_by(Delivery.platform)
            ):
                if platform in PLATFORM_QUEUES:
                    result[PLATFORM_QUEUES[platform]] = (count, age(oldest))
            count, oldest = session.execute(
                select(func.count(), func.min(Notification.created_at)).where(
                    Notification.status == NotificationStatus.QUEUED.value, Notification.fanned_out_at.is_(None)
                )
            ).one()
            result[FANOUT_QUEUE] = (count, age(oldest))
        return result
