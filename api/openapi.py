"""``GET /openapi.json``: the OpenAPI 3 document, generated from the routes' declarations.

Each route is declared once with :func:`api.endpoints.endpoint`; this module turns
those declarations and their marshmallow schemas into the document, so what is
served and what is documented are the same thing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint

from api.endpoints import ENDPOINTS, EndpointSpec
from api.schemas import ErrorSchema, QuotaErrorSchema, ValidationErrorSchema

bp = Blueprint("openapi", __name__)

_SECURITY = {"service": [{"serviceToken": ["push:send"]}], "m2m": [{"serviceToken": ["push:send"]}], "user": [{"userToken": []}],
             "any": [{"userToken": []}, {"serviceToken": ["push:send"]}], "none": []}


def _implicit_errors(spec: EndpointSpec) -> dict[int, str]:
    """Errors every route of its kind can answer, whatever its declaration says."""
    errors: dict[int, str] = {}
    if "{" in spec.rule:
        # parse_id turns a malformed id into the object's "not found"; an id with a "/" matches no route.
        errors[404] = "Not found (also when an id is not a UUID)"
    if spec.request_schema is not None:
        # Werkzeug refuses a body over MAX_CONTENT_LENGTH when the view reads it.
        errors[413] = "Request body larger than PUSHQ_MAX_BODY_BYTES"
    # The database or Redis is unreachable: nothing was accepted; retry (see Retry-After when present).
    errors[503] = "Service temporarily unavailable"
    return errors


# Response headers, by where the app sets them: every 429 says when to come back (shared.guards); a replayed
# idempotent request says so (api.replay.idempotent_call); an operation that takes from the daily quota (the
# ones documenting its 429) reports the quota on its answers (QuotaDecision.headers), except on replays.
_RETRY_AFTER = {
    "description": "Seconds until the request may succeed.",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_REPLAYED = {
    "description": "Present on a replay: the stored response to an earlier request with the same Idempotency-Key.",
    "schema": {"type": "string", "enum": ["true"]},
}


def _quota_headers(required: bool) -> dict[str, Any]:
    headers = {
        "X-Quota-Limit": ("Notifications the app may send per UTC day.", 0),
        "X-Quota-Remaining": ("Notifications left today.", 0),
        "X-Quota-Reset": ("Seconds until the quota resets (the next UTC midnight).", 1),
    }
    return {
        name: {"description": description, **({"required": True} if required else {}),
               "schema": {"type": "integer", "minimum": minimum}}
        for name, (description, minimum) in headers.items()
    }


def _operation(spec: EndpointSpec) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, schema in spec.responses.items():
        responses[str(status)] = {"description": "Success"}
        if schema is not None:
            responses[str(status)]["content"] = {"application/json": {"schema": schema}}
        headers = {**(_quota_headers(required=False) if spec.quota else {}),
                   **({"Idempotent-Replayed": _REPLAYED} if spec.idempotent else {})}
        if headers:
            responses[str(status)]["headers"] = headers
    for status, description in sorted({**_implicit_errors(spec), **spec.errors}.items()):
        error_schema = (ValidationErrorSchema if status == 400
                        else QuotaErrorSchema if status == 429 and spec.quota else ErrorSchema)
        responses[str(status)] = {"description": description, "content": {"application/json": {"schema": error_schema}}}
        if status == 429:
            responses[str(status)]["headers"] = {
                "Retry-After": _RETRY_AFTER, **(_quota_headers(required=True) if spec.quota else {})
            }
    operation: dict[str, Any] = {
        "operationId": spec.view_name,
        "summary": spec.summary,
        "tags": spec.tags,
        "security": _SECURITY[spec.auth],
        "responses": responses,
    }
    if spec.description:
        operation["description"] = spec.description
    path_params = re.findall(r"{(\w+)}", spec.rule)
    parameters: list[dict[str, Any]] = [
        {"in": "path", "name": name, "required": True, "schema": {"type": "string", "format": "uuid"}}
        for name in path_params
    ]
    if spec.query_schema is not None:
        parameters.append({"in": "query", "schema": spec.query_schema})
    if spec.idempotent:
        parameters.append({
            "in": "header", "name": "Idempotency-Key", "required": False,
            # Printable ASCII (idempotency.begin); no leading or trailing space, which HTTP strips anyway.
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]([ -~]*[!-~])?$"},
            "description": "Repeat a send safely: the same key from the same app within 24 h returns the first "
                           "response and sends nothing again; the same key with another body is 422.",
        })
    if parameters:
        operation["parameters"] = parameters
    if spec.request_schema is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": spec.request_schema}}}
    operation.update(spec.openapi)
    return operation


@lru_cache(maxsize=1)
def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="pushq",
        version="0.1.0",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Queue-backed push notifications: Web Push, APNs and FCM behind one API."},
    )
    spec.components.security_scheme(
        "serviceToken",
        {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
         "description": "Service JWT from a client-credentials grant: claims app_id and scope (push:send)."},
    )
    spec.components.security_scheme(
        "clientBasic", {"type": "http", "scheme": "basic",
                        "description": "OAuth client id and secret (RFC 6749 section 2.3.1), for POST /oauth/token."},
    )
    spec.components.security_scheme(
        "userToken", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "User JWT: sub is the user id."}
    )
    by_rule: dict[str, dict[str, Any]] = {}
    for endpoint_spec in ENDPOINTS:
        by_rule.setdefault(endpoint_spec.rule, {})[endpoint_spec.method.lower()] = _operation(endpoint_spec)
    for rule, operations in by_rule.items():
        spec.path(path=rule, operations=operations)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json():
    return build_spec()
