"""``Idempotency-Key``: the first answer to a send is stored with its work and replayed for a day."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import current_app, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from api.auth import Principal
from api.request_session import db_session
from shared.clock import utcnow
from shared.services import idempotency

log = logging.getLogger(__name__)


def idempotent_call(
    view: Callable[..., Any], principal: Principal, payload: Any, key: str, path_args: dict[str, Any]
) -> Any:
    """Replay the stored response for a known key; otherwise run the view and store its 2xx answer."""
    session = db_session()
    ttl = current_app.extensions["pushq"].settings.idempotency_ttl_seconds
    fingerprint = idempotency.request_fingerprint(request.method, request.path, request.get_json(silent=True))
    stored = idempotency.begin(session, principal.app_id, key, fingerprint, utcnow(), ttl)
    if stored is not None:
        response = jsonify(stored.body)
        response.status_code = stored.status_code
        response.headers["Idempotent-Replayed"] = "true"
        return response
    g.idempotency_key = (principal.app_id, key)
    result = view(principal, payload, **path_args)
    body, status = result[0], result[1]
    if 200 <= status < 300:
        try:
            remember_response(status, body)
        except SQLAlchemyError:
            if not g.get("request_committed"):
                raise
            # The view committed its work and a provisional answer already: a replay gives that one.
            log.warning("could not store the final answer of a committed request (%s)", request.path)
    return result


def remember_response(status: int, body: dict[str, Any]) -> None:
    """Store the answer to replay for this request's Idempotency-Key, if it has one.

    Committed with the request's work. A view that commits before it is done
    (to wait for the workers) stores a provisional answer first, so a failure
    later never leaves the key "in progress".
    """
    pending_key = g.get("idempotency_key")
    if pending_key is not None:
        idempotency.finish(db_session(), pending_key[0], pending_key[1], status, body)
