"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from flask import Blueprint, current_app
from sqlalchemy import text

from api.request_session import db_session

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Liveness: the process serves requests. Checks nothing else, so an orchestrator does not
    restart every API process because PostgreSQL or the broker is away (that is /readyz)."""
    return {"status": "ok"}, 200


@bp.get("/readyz")
def readyz():
    """Readiness: 200 when the database answers and the broker accepts a connection, 503 otherwise
    (a load balancer then stops sending traffic here until both are back)."""
    state = current_app.extensions["pushq"]
    checks = {}
    try:
        db_session().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        with state.dispatcher.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return {"status": "ok" if healthy else "degraded", "checks": checks}, 200 if healthy else 503
