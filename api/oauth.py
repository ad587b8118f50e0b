"""``POST /oauth/token``: the OAuth 2.0 client-credentials grant (RFC 6749 section 4.4).

For standalone deployments without an identity provider: a client created with
``pushq create-client`` exchanges its id and secret for a service JWT that the
send endpoints accept. The one exception to pushq's JSON-only rule: OAuth
requires an ``application/x-www-form-urlencoded`` request body. Answers are
JSON; errors follow RFC 6749 section 5.2 (``error`` is the OAuth code) in
pushq's ``{"error", "message"}`` shape.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import logging
from urllib.parse import unquote_plus

from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import Schema, fields

from api.endpoints import endpoint
from api.request_session import db_session
from shared.guards import TooManyFailedAuthentications
from shared.services import clients
from shared.token_signing import TokenIssuer

log = logging.getLogger(__name__)

bp = Blueprint("oauth", __name__)

FORM_MIMETYPE = "application/x-www-form-urlencoded"
GRANT_TYPE = "client_credentials"
_ISSUER_KEY = "pushq.token_issuer"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_SINGLE_PARAMETERS = ("grant_type", "scope", "client_id", "client_secret")


class TokenResponse(Schema):
    access_token = fields.String(required=True, metadata={"description": "A service JWT (app_id, scope, exp)."})
    token_type = fields.String(required=True, metadata={"enum": ["Bearer"]})
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds until the token expires."})
    scope = fields.String(required=True, metadata={"description": "The granted scopes, space-separated."})


class TokenRequestForm(Schema):
    """The form body (documentation: the view reads ``request.form`` itself, OAuth-style errors included)."""

    grant_type = fields.String(required=True, metadata={"enum": [GRANT_TYPE]})
    scope = fields.String(metadata={"description": "Space-separated subset of the client's scopes (default: all)."})
    client_id = fields.String(metadata={"description": "With client_secret, instead of HTTP Basic."})
    client_secret = fields.String(metadata={"description": "With client_id, instead of HTTP Basic."})


# The request as OpenAPI describes it: a form body (merged into the operation by the endpoint's ``openapi``).
OPENAPI_REQUEST_BODY = {"required": True, "content": {FORM_MIMETYPE: {"schema": TokenRequestForm}}}


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _invalid_client() -> OAuthError:
    return OAuthError(401, "invalid_client", "Client authentication failed")


def _invalid_request(message: str) -> OAuthError:
    return OAuthError(400, "invalid_request", message)


@bp.record_once
def _create_issuer(state) -> None:
    """Build the signer with the app, so a signing key that cannot work fails at startup, not per request."""
    state.app.extensions[_ISSUER_KEY] = TokenIssuer(state.app.extensions["pushq"].settings)


def _issuer() -> TokenIssuer:
    return current_app.extensions[_ISSUER_KEY]


def _dedent_doc(view):
    """The docstring becomes the OpenAPI description: without Python's indentation (Markdown code blocks)."""
    view.__doc__ = inspect.cleandoc(view.__doc__ or "")
    return view


def _json(body: dict, status: int, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(_NO_STORE)
    response.headers.update(headers or {})
    return response


@endpoint(
    bp, "/oauth/token", "POST", summary="Exchange client credentials for a service token (OAuth 2.0)",
    auth="none", responses={200: TokenResponse},
    errors={
        400: "invalid_request / unsupported_grant_type / invalid_scope",
        401: "Client authentication failed (invalid_client)",
        404: "The built-in token endpoint is disabled (token_endpoint_disabled)",
        429: "Too many failed client authentications, try again later (rate_limited)",
    },
    tags=["oauth"],
    openapi={"requestBody": OPENAPI_REQUEST_BODY, "security": [{"clientBasic": []}, {}]},
)
@_dedent_doc
def issue_token(_principal, _body, **_):
    """The client-credentials grant of RFC 6749 section 4.4, for deployments without their own identity provider.

    The request body is `application/x-www-form-urlencoded` (OAuth requires it; the only non-JSON request
    pushq takes): `grant_type=client_credentials` and optionally `scope` (space-separated, a subset of the
    client's scopes; default: all of them). The client authenticates with HTTP Basic (`client_id:client_secret`,
    each form-urlencoded first) or with `client_id` and `client_secret` form fields, not both. The answer
    carries `Cache-Control: no-store`; the token is a service JWT for the client's app (`sub` = client id,
    `app_id`, `scope`), valid for `PUSHQ_TOKEN_LIFETIME_SECONDS`. Errors follow RFC 6749 section 5.2:
    `error` is the OAuth error code, `message` describes it. Answers 404 `token_endpoint_disabled` when
    pushq has no key to sign with (RS*/ES* deployments without `PUSHQ_TOKEN_SIGNING_KEY`). Failed
    authentications are limited per client id (`PUSHQ_TOKEN_FAILURES_PER_CLIENT`) and per source address
    (`PUSHQ_TOKEN_FAILURES_PER_ADDRESS`; an IPv6 address counts as its /64) in a sliding
    `PUSHQ_TOKEN_FAILURE_WINDOW_SECONDS`: beyond, 429 `rate_limited` with `Retry-After`, before the secret is
    even checked. An unknown client id is refused without hashing anything. At most
    `PUSHQ_TOKEN_HASH_CONCURRENCY` secrets are hashed at once per API process: beyond, after half a second,
    503 `temporarily_unavailable` with `Retry-After: 1` (not counted as a failure).
    """
    issuer = _issuer()
    if not issuer.enabled:
        return _json({"error": "token_endpoint_disabled",
                      "message": "The built-in token endpoint is disabled: this deployment has no token signing key"},
                     404)
    try:
        body = _grant()
    except OAuthError as exc:
        log.info("token request refused: %s (%s)", exc.error, exc.message)
        # Every 401 names the scheme (RFC 9110 section 11.6.1; RFC 6749 section 5.2 for clients that tried Basic).
        headers = {"WWW-Authenticate": 'Basic realm="pushq", charset="UTF-8"'} if exc.status == 401 else {}
        return _json({"error": exc.error, "message": exc.message}, exc.status, headers)
    except TooManyFailedAuthentications as exc:
        log.info("token request refused: too many failed client authentications")
        return _json({"error": exc.code, "message": exc.message}, exc.status, exc.headers)
    except clients.HashingBusy as exc:
        log.warning("token request refused: every hashing slot busy (PUSHQ_TOKEN_HASH_CONCURRENCY)")
        return _json({"error": exc.code, "message": exc.message}, exc.status, exc.headers)
    return _json(body, 200)


def _grant() -> dict:
    if request.mimetype != FORM_MIMETYPE:
        raise _invalid_request(f"Content-Type must be {FORM_MIMETYPE}")
    if "client_secret" in request.args:
        raise _invalid_request("client_secret must not be sent in the URL")
    form = request.form
    for name in _SINGLE_PARAMETERS:
        if len(form.getlist(name)) > 1:
            raise _invalid_request(f"{name} was given more than once")
    grant_type = form.get("grant_type")
    if not grant_type:
        raise _invalid_request("grant_type is required")
    basic = _basic_credentials()
    client_id, secret = _client_credentials(basic, form.get("client_id"), form.get("client_secret"))
    if grant_type != GRANT_TYPE:
        raise OAuthError(400, "unsupported_grant_type", f"Only grant_type={GRANT_TYPE} is supported")
    try:
        state = current_app.extensions["pushq"]
        client = clients.authenticate(db_session(), client_id, secret, limiter=state.client_auth_limiter,
                                      address=request.remote_addr, hash_slots=state.token_hash_slots)
    except clients.InvalidClient:
        raise _invalid_client() from None
    granted = _granted_scopes(form.get("scope"), clients.client_scopes(client))
    issuer = _issuer()
    token = issuer.issue(client_id=client.client_id, app_id=client.app_id, scopes=granted)
    log.info("issued a token to client %s of app %s (scope %s)", client.client_id, client.app_id, " ".join(granted))
    return {"access_token": token, "token_type": "Bearer", "expires_in": issuer.lifetime_seconds,
            "scope": " ".join(granted)}


def _basic_credentials() -> tuple[str, str] | None:
    """``(client_id, secret)`` from ``Authorization: Basic``; None without one (other schemes are ignored)."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise _invalid_client() from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _invalid_client()
    # RFC 6749 section 2.3.1: both are form-urlencoded before being joined.
    return unquote_plus(client_id), unquote_plus(secret)


def _client_credentials(basic: tuple[str, str] | None, form_id: str | None, form_secret: str | None) -> tuple[str, str]:
    if basic is not None:
        if form_secret is not None:
            raise _invalid_request("Use one client authentication method: HTTP Basic or form fields, not both")
        if form_id is not None and form_id != basic[0]:
            raise _invalid_request("client_id does not match the HTTP Basic credentials")
        return basic
    if not form_id or not form_secret:
        raise _invalid_client()
    return form_id, form_secret


def _granted_scopes(requested: str | None, allowed: list[str]) -> list[str]:
    if requested is None or not requested.strip():
        return allowed
    wanted = requested.split()
    try:
        wanted = clients.normalize_scopes(wanted)
    except ValueError:
        raise OAuthError(400, "invalid_scope", "The requested scope is malformed") from None
    extra = [scope for scope in wanted if scope not in allowed]
    if extra:
        raise OAuthError(400, "invalid_scope", "The requested scope exceeds the client's scopes")
    return wanted
