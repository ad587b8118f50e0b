"""The status page at ``/admin``: per app, what was sent, what arrived, who is subscribed.

Server-rendered HTML (Jinja, autoescaped) with an inline SVG chart: nothing
runs in the browser, so the page works in any browser and its Content
Security Policy allows no script at all. The figures come from
:mod:`shared.services.stats`; this module only authenticates and renders.

Authentication is one shared secret, ``PUSHQ_ADMIN_TOKEN``: presented as
``Authorization: Bearer`` (curl, monitoring) or, for a browser, exchanged at
``/admin/login`` for a session cookie (HttpOnly, SameSite=Strict, Secure, 12 h)
naming a server-side session (:mod:`shared.admin_sessions`), never the token
itself: logging out, or changing the token, ends the session wherever its
cookie was copied. The cookie is always ``Secure`` (browsers keep it over
https, and over http only on localhost), so it never travels in clear behind a
TLS-terminating proxy either. Every state-changing request (login, logout)
must come from the page itself: its ``Origin`` (else ``Referer``) must name
this host, and ``Sec-Fetch-Site`` when sent must say same-origin; a cross-site
form is refused with 403. Without the setting the page does not exist (404).
Failed attempts are throttled per source address (IPv6 per /64) by the same
Redis windows as the token endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import current_app, make_response, redirect, render_template, request
from werkzeug.wrappers import Response

from api.endpoints import page_blueprint
from api.errors import ApiError
from api.request_session import db_session
from shared.admin_sessions import AdminSessions
from shared.clock import utcnow
from shared.guards import address_bucket
from shared.services import stats

bp = page_blueprint("admin", __name__, "/admin", template_folder="templates")

COOKIE_NAME = "pushq_admin"
SESSION_SECONDS = 12 * 3600
# No script, no external anything: the page is HTML and inline SVG, styled by one inline <style>.
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
_CHART_COLORS = {"Web Push": "#2563eb", "APNs": "#dc2626", "FCM": "#16a34a"}


def _admin_token() -> str:
    token = current_app.extensions["pushq"].settings.admin_token
    if not token:
        raise ApiError(404, "admin_disabled", "The status page is off: set PUSHQ_ADMIN_TOKEN to enable it")
    return token


def _same_secret(presented: str, token: str) -> bool:
    """Constant-time comparison that does not even reveal the token's length."""
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(token.encode()).digest())


def _sessions() -> AdminSessions:
    return AdminSessions(current_app.extensions["pushq"].redis, SESSION_SECONDS)


def _from_this_site() -> bool:
    """Whether a state-changing request came from a page of this host (a CSRF defence needing no token).

    Browsers send ``Origin`` on every POST (with this page's referrer policy,
    same-origin, it names the page's origin); its host must be the one the
    request was sent to (``Host``, or the first ``X-Forwarded-Host`` set by a
    proxy: a cross-site form can set neither). Without ``Origin`` the
    ``Referer`` is read the same way; with neither, or ``Origin: null``, the
    request is refused.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    try:
        host = urlsplit(source).netloc.lower()
    except ValueError:
        return False
    allowed = {request.host.lower()}
    forwarded = request.headers.get("X-Forwarded-Host")
    if forwarded:
        allowed.add(forwarded.split(",")[0].strip().lower())
    return bool(host) and host in allowed


def _require_same_origin() -> None:
    if not _from_this_site():
        raise ApiError(403, "cross_origin_request",
                       "Cross-origin request refused: log in and out from the status page itself")


def _check(accept: Callable[[], bool]) -> bool:
    """Run ``accept()`` under the per-address failure throttle: a refusal counts, a success is forgiven."""
    limiter = current_app.extensions["pushq"].client_auth_limiter
    address = request.remote_addr
    attempt = limiter.reserve(f"admin@{address_bucket(address)}", address, utcnow())
    if not accept():
        return False
    limiter.forgive(attempt)
    return True


def require_admin() -> None:
    """Let the request through with a valid bearer token or login cookie; 404 when the page is off, 401 otherwise."""
    token = _admin_token()
    header = request.headers.get("Authorization", "")
    cookie = request.cookies.get(COOKIE_NAME)
    if header:
        scheme, _, presented = header.partition(" ")
        accepted = scheme.lower() == "bearer" and _check(lambda: _same_secret(presented.strip(), token))
    elif cookie:
        accepted = _check(lambda: _sessions().valid(cookie, token))
    else:
        raise ApiError(401, "admin_token_required",
                       "Admin token required: Authorization: Bearer <PUSHQ_ADMIN_TOKEN>, or log in at /admin/login")
    if not accepted:
        raise ApiError(401, "invalid_admin_token", "Invalid admin token")


def _page(html: str, status: int = 200) -> Response:
    response = make_response(html, status)
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the page's own forms.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@dataclass(frozen=True)
class ChartLine:
    vendor: str
    color: str
    points: str  # SVG polyline points
    sent: int
    success_rate: float | None


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    peak: int
    lines: list[ChartLine]


def rate_chart(rates: list[stats.VendorRate], width: int = 360, height: int = 90) -> Chart:
    """Polylines of sent deliveries per minute, one per vendor, scaled to the busiest minute."""
    peak = max((max(rate.sent_per_minute, default=0) for rate in rates), default=0)
    lines = []
    for rate in rates:
        series = rate.sent_per_minute
        step = width / max(len(series) - 1, 1)
        points = " ".join(
            f"{i * step:.1f},{height - (value / peak * (height - 4) if peak else 0) - 2:.1f}"
            for i, value in enumerate(series)
        )
        lines.append(ChartLine(rate.vendor, _CHART_COLORS.get(rate.vendor, "#6b7280"), points,
                               sum(series), rate.success_rate))
    return Chart(width, height, peak, lines)


@bp.get("")
def status_page() -> Response:
    """The status of every app (server-rendered; refreshes itself every 30 s)."""
    require_admin()
    pushq = current_app.extensions["pushq"]
    now = utcnow()
    apps = stats.app_overview(db_session(), pushq.quota.counter, pushq.quota.default_limit, now)
    html = render_template(
        "admin/status.html", apps=apps, now=now, charts={app.app_id: rate_chart(app.rates) for app in apps},
        statuses=stats.notification_status_order(), vendors=stats.VENDORS,
    )
    return _page(html)


@bp.get("/login")
def login_form() -> Response:
    _admin_token()
    return _page(render_template("admin/login.html", error=None))


@bp.post("/login")
def login() -> Response:
    """Exchange the token (form field ``token``) for a session cookie; the token itself is never stored."""
    token = _admin_token()
    _require_same_origin()
    presented = request.form.get("token", "")
    if not _check(lambda: bool(presented) and _same_secret(presented, token)):
        return _page(render_template("admin/login.html", error="Invalid admin token"), 401)
    response = redirect("/admin", code=303)
    response.set_cookie(COOKIE_NAME, _sessions().open(token), max_age=SESSION_SECONDS, path="/admin",
                        httponly=True, samesite="Strict", secure=True)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/logout")
def logout() -> Response:
    """End the session server-side (its cookie stops working wherever it was copied), then drop the cookie."""
    _admin_token()
    _require_same_origin()
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie:
        _sessions().end(cookie)
    response = redirect("/admin/login", code=303)
    response.delete_cookie(COOKIE_NAME, path="/admin", httponly=True, samesite="Strict", secure=True)
    response.headers["Cache-Control"] = "no-store"
    return response
