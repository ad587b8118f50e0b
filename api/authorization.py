"""Who may call an endpoint: the bearer token checked against the endpoint's rule."""

from __future__ import annotations

import logging
from typing import Literal

from flask import current_app, request

from api.auth import AuthError, Principal
from api.errors import ApiError
from shared.token_signing import SEND_SCOPE

log = logging.getLogger(__name__)

Auth = Literal["service", "m2m", "user", "any", "none"]

STANDARD_ERRORS = {
    "service": {401: "Invalid token", 403: "Missing required scope"},
    "m2m": {401: "Invalid token", 403: "Only M2M callers may send push / Missing required scope"},
    "user": {401: "Invalid token", 403: "User token required"},
    "any": {401: "Invalid token", 403: "Missing required scope"},
    "none": {},
}


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
