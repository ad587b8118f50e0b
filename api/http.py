"""The plumbing every view shares: JSON parsing, auth, errors, the request's session.

Views stay thin: parse with a schema, authorize, call one service function,
serialize. Each route is declared with :func:`endpoint`, which also records
what the OpenAPI document says about it, so the document cannot drift from the
routes.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from flask import Blueprint, current_app, g, jsonify, request
from marshmallow import Schema, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from api.auth import AuthError, Principal
from shared.errors import ServiceError
from shared.guards import QuotaExceeded
from shared.models import utcnow
from shared.services import idempotency
from shared.token_signing import SEND_SCOPE

log = logging.getLogger(__name__)

Auth = Literal["service", "m2m", "user", "any", "none"]


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.extra = status, error, message, extra


def error_response(status: int, error: str, message: str, **extra: Any):
    response = jsonify({"error": error, "message": message, **extra})
    response.status_code = status
    return response


@dataclass
class EndpointSpec:
    rule: str
    method: str
    summary: str
    auth: Auth
    request_schema: type[Schema] | None
    query_schema: type[Schema] | None
    responses: dict[int, type[Schema] | None]
    errors: dict[int, str]
    view_name: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    idempotent: bool = False
    quota: bool = False  # takes from the daily quota: 429 and X-Quota-* headers
    openapi: dict[str, Any] = field(default_factory=dict)  # merged into the operation (e.g. a form body)


ENDPOINTS: list[EndpointSpec] = []

# Pages for people and browsers, not API operations (the status page, the web client kit): served by the
# same app but left out of the OpenAPI document. Blueprint name -> the URL prefix all its routes live under
# (tests/test_openapi.py holds every undocumented route to one of these).
PAGES: dict[str, str] = {}


def page_blueprint(name: str, import_name: str, url_prefix: str, **kwargs: Any) -> Blueprint:
    """A blueprint of non-API pages under ``url_prefix``: served, but not part of the OpenAPI document."""
    PAGES[name] = url_prefix
    return Blueprint(name, import_name, url_prefix=url_prefix, **kwargs)

STANDARD_ERRORS = {
    "service": {401: "Invalid token", 403: "Missing required scope"},
    "m2m": {401: "Invalid token", 403: "Only M2M callers may send push / Missing required scope"},
    "user": {401: "Invalid token", 403: "User token required"},
    "any": {401: "Invalid token", 403: "Missing required scope"},
    "none": {},
}


def endpoint(
    bp: Blueprint,
    rule: str,
    method: str,
    *,
    summary: str,
    auth: Auth,
    responses: dict[int, type[Schema] | None],
    request_schema: type[Schema] | None = None,
    query_schema: type[Schema] | None = None,
    errors: dict[int, str] | None = None,
    tags: list[str] | None = None,
    idempotent: bool = False,
    quota: bool = False,
    openapi: dict[str, Any] | None = None,
) -> Callable:
    """Register a view on ``bp`` with its auth rule and its OpenAPI description.

    The view is called as ``view(principal, body_or_query, **path_args)``.
    """

    def decorator(view: Callable) -> Callable:
        all_errors = dict(STANDARD_ERRORS[auth])
        if request_schema is not None:
            all_errors[400] = "Invalid request"
            all_errors[415] = "Content-Type must be application/json"
        if query_schema is not None:
            all_errors.setdefault(400, "Invalid request")
        all_errors.update(errors or {})
        if quota:
            all_errors[429] = QuotaExceeded.message
        if idempotent:
            all_errors[422] = "Idempotency-Key was used with a different request"
            all_errors[409] = "A request with this Idempotency-Key is still in progress"
            all_errors.setdefault(400, "Invalid request")
        ENDPOINTS.append(
            EndpointSpec(
                rule=rule, method=method, summary=summary, auth=auth, request_schema=request_schema,
                query_schema=query_schema, responses=responses, errors=all_errors, view_name=view.__name__,
                description=(view.__doc__ or "").strip(), tags=tags or [], idempotent=idempotent,
                quota=quota, openapi=openapi or {},
            )
        )

        # One schema instance per endpoint: building one deep-copies its fields (~0.5 ms a request),
        # and load() keeps no state on the instance.
        request_loader = request_schema() if request_schema is not None else None
        query_loader = query_schema() if query_schema is not None else None

        @functools.wraps(view)
        def wrapper(**path_args: Any):
            principal = authorize(auth)
            if request_schema is not None:
                payload = request_loader.load(json_body())
            elif query_schema is not None:
                payload = query_loader.load(request.args.to_dict())
            else:
                payload = None
            key = request.headers.get("Idempotency-Key") if idempotent else None

            def call() -> Any:
                if key is None:
                    return view(principal, payload, **path_args)
                return _idempotent_call(view, principal, payload, key, path_args)

            return _retry_on_lost_connection(call)

        bp.add_url_rule(rule.replace("{", "<").replace("}", ">"), view.__name__, wrapper, methods=[method])
        return wrapper

    return decorator


def _retry_on_lost_connection(call: Callable[[], Any]) -> Any:
    """Run the view again, once, on a fresh session when its database connection was found dead.

    Pooled connections are not pinged on checkout (a round trip per request);
    a connection PostgreSQL dropped (restart, failover) fails its first
    statement instead, and the request is redone on a new one. Nothing was
    committed and nothing enqueued: both happen only after the view returns.
    """
    try:
        return call()
    except OperationalError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("database connection lost (%s); running the request again", type(exc.orig).__name__)
        discard_session(None)
        return call()


def parse_id(value: str, not_found: type[ServiceError]) -> uuid.UUID:
    """A path id as UUID; a malformed one is simply an object that does not exist."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found() from None


def _idempotent_call(view: Callable, principal: Principal, payload: Any, key: str, path_args: dict[str, Any]):
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
        remember_response(status, body)
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


def authorize(auth: Auth) -> Principal | None:
    if auth == "none":
        return None
    try:
        principal = current_app.extensions["pushq"].verifier.verify(request.headers.get("Authorization"))
    except AuthError as exc:
        log.info("rejected token: %s", exc)
        raise ApiError(401, "invalid_token", "Invalid token") from None
    if auth == "m2m" and not principal.is_service:
        raise ApiError(403, "m2m_only", "Only M2M callers may send push")
    if auth in ("service", "m2m") and not (principal.is_service and SEND_SCOPE in principal.scopes):
        raise ApiError(403, "missing_scope", "Missing required scope")
    if auth == "user" and principal.is_service:
        raise ApiError(403, "user_token_required", "User token required")
    if auth == "any" and principal.is_service and SEND_SCOPE not in principal.scopes:
        raise ApiError(403, "missing_scope", "Missing required scope")
    return principal


def json_body() -> Any:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nesting deeper than the parser's recursion limit ([[[[…) is bad input, not a 500
        body = None
    if body is None:
        raise ApiError(400, "malformed_json", "Request body is not valid JSON")
    if not isinstance(body, dict):
        raise ApiError(400, "validation_error", "Invalid request", fields={"_schema": ["Expected a JSON object."]})
    try:  # JSON may escape lone surrogates ("\ud800") that no UTF-8 store can hold
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "malformed_json", "Request body is not valid JSON") from None
    return body


def db_session() -> Session:
    """The request's one session; committed or rolled back by :func:`finish_session`."""
    session = g.get("db_session")
    if session is None:
        session = g.db_session = current_app.extensions["pushq"].session_factory()
    return session


def finish_session(response):
    """Commit on success (running after-commit enqueues), roll back otherwise."""
    session = g.pop("db_session", None)
    if session is None:
        return response
    try:
        if response.status_code < 400:
            session.commit()
        else:
            session.rollback()
    except Exception:
        log.exception("commit failed")
        session.rollback()
        response = error_response(503, "unavailable", "Service temporarily unavailable, try again")
        response.headers["Retry-After"] = "5"
    finally:
        session.close()
    return response


def commit_request_session() -> None:
    """Commit the request's work now (running its after-commit enqueues), for views that then wait on workers."""
    session = g.get("db_session")
    if session is not None:
        session.commit()


def discard_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.rollback()
        session.close()


def register_error_handlers(app) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.error, exc.message, **exc.extra)

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError):
        response = error_response(exc.status, exc.code, exc.message, **exc.details)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError):
        return error_response(400, "validation_error", "Invalid request", fields=exc.normalized_messages())

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_unavailable(exc: redis.RedisError):
        # Quotas and rate limits must be exact: without Redis, refuse rather than guess.
        log.error("redis unavailable: %s", type(exc).__name__)
        response = error_response(503, "unavailable", "Service temporarily unavailable, try again")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError):
        # Parameters are never logged (hide_parameters): only the kind of failure.
        log.error("database unavailable: %s", type(exc.orig).__name__)
        response = error_response(503, "unavailable", "Service temporarily unavailable, try again")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError):
        # A bug rather than an outage (OperationalError has its own handler). Logged with the statement
        # only: parameters are hidden (hide_parameters) and the server's message is left out, since
        # PostgreSQL's DETAIL ("Failing row contains (...)") repeats the values.
        log.error("database error %s (SQLSTATE %s) in: %s", type(exc.orig).__name__,
                  getattr(exc.orig, "pgcode", None), exc.statement)
        return error_response(500, "internal_error", "Internal server error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Internal server error")
