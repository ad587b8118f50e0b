"""How a route is declared: :func:`endpoint` registers the view with its auth rule and what the
OpenAPI document says about it, so the document cannot drift from the routes.

Views stay thin: parse with a schema, authorize, call service functions in ``shared/``, serialize.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, request
from marshmallow import Schema
from sqlalchemy.exc import OperationalError

from api.authorization import STANDARD_ERRORS, Auth, authorize
from api.errors import ApiError
from api.replay import idempotent_call
from api.request_session import discard_session
from shared.errors import ServiceError
from shared.guards import QuotaExceeded

log = logging.getLogger(__name__)


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
                return idempotent_call(view, principal, payload, key, path_args)

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
    try:
        # JSON may escape lone surrogates ("\ud800") that no UTF-8 store can hold; and Python's parser takes
        # NaN and Infinity (not JSON) and reads 1e400 as infinity, which no JSON column (nor vendor) can hold.
        json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "malformed_json", "Request body is not valid JSON") from None
    except ValueError:
        raise ApiError(400, "validation_error", "Invalid request", fields=non_finite_fields(body)) from None
    return body


NOT_FINITE = "Not a finite number: NaN, Infinity and numbers beyond the float range (such as 1e400) are refused."


def non_finite_fields(body: dict[str, Any]) -> dict[Any, Any]:
    """Where the first non-finite number sits, as marshmallow names nested fields: ``{"data": {"k": [msg]}}``
    (list items by index). Iterative: a body may nest as deep as the parser allows."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            fields: Any = [NOT_FINITE]
            for key in reversed(path):
                fields = {key: fields}
            return fields  # type: ignore[no-any-return]
        if isinstance(value, dict):
            stack.extend((item, (*path, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
    return {"_schema": [NOT_FINITE]}
