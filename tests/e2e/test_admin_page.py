"""The status page at /admin: its auth, and what it shows, read in headless Chromium.

The data is made through the API (enrollments, registrations, sends) and
delivered by the real worker to the three vendor stand-ins; the page is then
logged into and read the way an operator would, and a screenshot is saved and
checked not to be blank.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from api.admin import COOKIE_NAME
from api.app import create_app
from tests.support.browser import chromium, pixel_stats
from tests.support.harness import LiveServer, Tenant
from tests.support.helpers import wait_for

ADMIN_TOKEN = "admin-" + "x" * 26 + "-not-for-production"
HOSTILE_NAME = 'Clinic <img src=x onerror="alert(1)"> & co'  # rendered as text, never as markup
FINAL = {"delivered", "partially_delivered", "failed", "expired", "no_devices"}


@pytest.fixture(scope="module")
def admin_server(settings, database) -> Iterator[LiveServer]:
    """The API with the status page on (PUSHQ_ADMIN_TOKEN set), on its own socket."""
    server = LiveServer(create_app(settings.replace(admin_token=ADMIN_TOKEN))).start()
    yield server
    server.stop()


@pytest.fixture
def admin(admin_server: LiveServer, engine, redis_client) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=admin_server.url, timeout=10, trust_env=False) as http:
        yield http


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-admin")) as context:
        yield context


def test_the_page_is_off_without_a_token(client):
    for path in ("/admin", "/admin/login"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json["error"] == "admin_disabled"
        assert "PUSHQ_ADMIN_TOKEN" in response.json["message"]


REQUIRED = "Admin token required: Authorization: Bearer <PUSHQ_ADMIN_TOKEN>, or log in at /admin/login"
CROSS_ORIGIN = {"error": "cross_origin_request",
                "message": "Cross-origin request refused: log in and out from the status page itself"}


def _login(admin: httpx.Client, token: str = ADMIN_TOKEN) -> str:
    """Log in as the page's own form does (Origin: this server); the session cookie's value."""
    login = admin.post("/admin/login", data={"token": token}, headers={"Origin": str(admin.base_url).rstrip("/")})
    assert login.status_code == 303 and login.headers["location"] == "/admin", login.text
    return _session_cookie(login)


def _session_cookie(response: httpx.Response) -> str:
    name, _, rest = response.headers["set-cookie"].partition("=")
    assert name == COOKIE_NAME
    return rest.split(";", 1)[0]


def _with_cookie(value: str) -> dict[str, str]:
    # Sent by hand: the cookie is Secure, and httpx's jar (rightly) keeps Secure cookies off plain http.
    return {"Cookie": f"{COOKIE_NAME}={value}"}


def test_bearer_and_cookie_auth(admin: httpx.Client):
    missing = admin.get("/admin")
    assert missing.status_code == 401
    assert missing.json() == {"error": "admin_token_required", "message": REQUIRED}
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                    {"Authorization": f"Bearer {ADMIN_TOKEN}x"}):
        refused = admin.get("/admin", headers=headers)
        assert refused.status_code == 401
        assert refused.json() == {"error": "invalid_admin_token", "message": "Invalid admin token"}
    # Random ids, and the stateless <expiry>.<MAC> cookies of earlier releases, name no session.
    for cookie in ("nonsense", "x" * 43, f"{int(time.time()) + 60}.{'0' * 64}"):
        refused = admin.get("/admin", headers=_with_cookie(cookie))
        assert refused.status_code == 401, cookie
        assert refused.json() == {"error": "invalid_admin_token", "message": "Invalid admin token"}

    page = admin.get("/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script at all
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"  # no-referrer would make the forms' Origin "null"

    origin = {"Origin": str(admin.base_url).rstrip("/")}
    wrong_login = admin.post("/admin/login", data={"token": "wrong"}, headers=origin)
    assert wrong_login.status_code == 401
    assert '<p class="error" role="alert">Invalid admin token</p>' in wrong_login.text
    login = admin.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=origin)
    assert login.status_code == 303 and login.headers["location"] == "/admin"
    set_cookie = login.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE_NAME}=") and ADMIN_TOKEN not in set_cookie
    # Secure although this request is plain http: never sent in clear behind a TLS-terminating proxy.
    assert {"HttpOnly", "Secure", "SameSite=Strict", "Path=/admin"} <= {part.strip() for part in set_cookie.split(";")}
    session = _session_cookie(login)
    assert admin.get("/admin", headers=_with_cookie(session)).status_code == 200


def test_logout_ends_the_session_server_side(admin: httpx.Client):
    """Logging out used to drop only the browser's copy: the stateless cookie stayed valid for 12 hours."""
    copied = _login(admin)
    assert admin.get("/admin", headers=_with_cookie(copied)).status_code == 200
    logout = admin.post("/admin/logout", headers={**_with_cookie(copied), "Origin": str(admin.base_url).rstrip("/")})
    assert logout.status_code == 303 and logout.headers["location"] == "/admin/login"
    assert f"{COOKIE_NAME}=" in logout.headers["set-cookie"] and "Max-Age=0" in logout.headers["set-cookie"]
    replayed = admin.get("/admin", headers=_with_cookie(copied))  # a copy taken before the logout
    assert replayed.status_code == 401
    assert replayed.json() == {"error": "invalid_admin_token", "message": "Invalid admin token"}
    other = _login(admin)  # other sessions are their own
    assert admin.get("/admin", headers=_with_cookie(other)).status_code == 200


def test_state_changing_requests_must_come_from_the_page(admin: httpx.Client):
    """A cross-site form could log an operator out (or in); every admin POST checks where it came from."""
    session = _login(admin)
    own = str(admin.base_url).rstrip("/")
    foreign = [
        {},  # neither Origin nor Referer
        {"Origin": "null"},
        {"Origin": "https://evil.example"},
        {"Origin": own.replace("127.0.0.1", "localhost")},  # another host name is another site
        {"Referer": "https://evil.example/admin"},
        {"Origin": own, "Sec-Fetch-Site": "cross-site"},
        {"Origin": own, "Sec-Fetch-Site": "same-site"},
    ]
    for headers in foreign:
        for path, data in (("/admin/logout", None), ("/admin/login", {"token": ADMIN_TOKEN})):
            refused = admin.post(path, data=data, headers={**_with_cookie(session), **headers})
            assert (refused.status_code, refused.json()) == (403, CROSS_ORIGIN), (path, headers)
            assert "set-cookie" not in refused.headers
    assert admin.get("/admin", headers=_with_cookie(session)).status_code == 200  # still logged in
    for headers in ({"Referer": f"{own}/admin"}, {"Origin": own, "Sec-Fetch-Site": "same-origin"},
                    {"Origin": "https://status.example.org", "X-Forwarded-Host": "status.example.org"}):
        assert admin.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=headers).status_code == 303, headers


def test_a_new_admin_token_ends_every_session(settings, database, admin: httpx.Client):
    session = _login(admin)
    rotated = settings.replace(admin_token="rotated-" + "y" * 24)
    server = LiveServer(create_app(rotated)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as after:
            refused = after.get("/admin", headers=_with_cookie(session))
            assert refused.status_code == 401
            assert refused.json() == {"error": "invalid_admin_token", "message": "Invalid admin token"}
    finally:
        server.stop()
    # Ended for good, even where the old token still runs (the session was dropped when refused).
    assert admin.get("/admin", headers=_with_cookie(session)).status_code == 401


def test_failed_logins_are_throttled_per_address(admin: httpx.Client, settings):
    origin = {"Origin": str(admin.base_url).rstrip("/")}
    limit = settings.token_failures_per_client  # the admin page's window per source address
    statuses = [admin.post("/admin/login", data={"token": f"guess-{n}"}, headers=origin).status_code
                for n in range(limit + 2)]
    assert statuses == [401] * limit + [429, 429]
    locked = admin.post("/admin/login", data={"token": ADMIN_TOKEN}, headers=origin)  # even the right token, for now
    assert locked.status_code == 429
    assert locked.json() == {"error": "rate_limited", "message": "Too many failed client authentications, try again later"}
    assert 1 <= int(locked.headers["Retry-After"]) <= settings.token_failure_window_seconds
    bearer = admin.get("/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert bearer.status_code == 429  # the same window guards the bearer token


def _register(api, tenant: Tenant, user: uuid.UUID, platform: str, token: str) -> str:
    response = api.post("/push/devices/register", headers=tenant.user_headers(user),
                        json={"app_id": str(tenant.id), "platform": platform, "push_token": token})
    assert response.status_code == 201, response.text
    return response.json()["device_id"]


def test_status_page_in_chromium(api, admin, browser, settings, session_factory, worker, push_service,
                                 apns_service, fcm_service, tmp_path_factory):
    tenant = Tenant(settings, session_factory, HOSTILE_NAME)
    tenant.configure_apns(apns_service)
    tenant.configure_fcm(fcm_service)
    quiet = Tenant(settings, session_factory, "Quiet app")
    users = [uuid.uuid4() for _ in range(3)]
    assert api.post("/push/enrollments", json={"user_ids": [str(u) for u in users]},
                    headers=tenant.service_headers()).json() == {"enrolled": 3}
    web = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    gone = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    push_service.set_behavior(gone, 410)
    devices = {
        "web": _register(api, tenant, users[0], "web", json.dumps(web)),
        "web-gone": _register(api, tenant, users[0], "web", json.dumps(gone)),
        "ios": _register(api, tenant, users[1], "ios", secrets.token_hex(32)),
        "android": _register(api, tenant, users[2], "android", secrets.token_urlsafe(48)),
    }
    sent = api.post("/push/send/bulk", headers=tenant.service_headers(),
                    json={"user_ids": [str(u) for u in users], "title": "Shift <b>approved</b>", "body": "See you at 9."})
    assert sent.status_code == 200, sent.text
    notification_ids = sent.json()["notification_ids"]

    def all_final():
        found = [api.get(f"/push/notifications/{n}", headers=tenant.service_headers()).json() for n in notification_ids]
        return found if all(n["status"] in FINAL for n in found) else None

    final = {n["id"]: n for n in wait_for(all_final, timeout=30)}
    assert final[notification_ids[0]]["status"] == "partially_delivered"  # one browser sent, one gone
    assert {final[n]["status"] for n in notification_ids[1:]} == {"delivered"}

    page = browser.new_page()
    try:
        response = page.goto(f"{admin.base_url}/admin")
        assert response.status == 401 and response.headers["content-type"] == "application/json"
        page.goto(f"{admin.base_url}/admin/login")
        page.fill("#token", ADMIN_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{admin.base_url}/admin")
        cookie = next(c for c in browser.cookies() if c["name"] == COOKIE_NAME)
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

        section = page.locator(f"section[data-app-id='{tenant.id}']")
        # Escaped: the name is text, not markup.
        assert section.locator("h2").inner_text() == HOSTILE_NAME
        assert section.locator("h2 img").count() == 0 and page.locator("img").count() == 0
        counts = section.locator("table.notification-counts")
        assert counts.locator("tr[data-status=delivered] td").all_inner_texts() == ["delivered", "2", "2"]
        assert counts.locator("tr[data-status=partially_delivered] td").all_inner_texts() == ["partially_delivered", "1", "1"]
        device_rows = {
            platform: section.locator(f"table.devices tr[data-platform={platform}] td.num").all_inner_texts()
            for platform in ("web", "ios", "android")
        }
        assert device_rows == {"web": ["1", "1"], "ios": ["1", "0"], "android": ["1", "0"]}  # the 410 disabled one
        quota = section.locator("div.quota")
        assert quota.get_attribute("data-used") == "3"
        assert quota.get_attribute("data-limit") == str(settings.default_daily_quota)
        row = section.locator(f"tr[data-notification-id='{notification_ids[0]}']")
        assert "Shift <b>approved</b>" in row.inner_text()  # escaped, shown as typed
        outcomes = {item.get_attribute("data-device-id"): item.get_attribute("data-status")
                    for item in row.locator("li").all()}
        assert outcomes == {devices["web"]: "sent", devices["web-gone"]: "dead_token"}
        other = {
            section.locator(f"tr[data-notification-id='{n}'] li").get_attribute("data-status")
            for n in notification_ids[1:]
        }
        assert other == {"sent"}
        lines = section.locator("svg.chart polyline.rate")
        assert sorted(lines.evaluate_all("ls => ls.map(l => l.dataset.vendor)")) == ["APNs", "FCM", "Web Push"]
        legend = section.locator(".legend").inner_text()
        assert "Web Push: 1 sent, 50% of finished" in legend and "APNs: 1 sent, 100% of finished" in legend
        assert "no notifications yet" in page.locator(f"section[data-app-id='{quiet.id}']").inner_text()

        screenshot = tmp_path_factory.mktemp("artifacts") / "admin-status.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"status page screenshot: {screenshot}")
        stats = pixel_stats(browser, screenshot)
        assert stats["width"] == 1280 and stats["height"] >= 400
        assert stats["variance"] > 100 and stats["colors"] > 20, stats  # text, tables and the chart, not a blank page

        # The page's own Log out form passes the origin check and ends the session server-side.
        session = cookie["value"]
        page.click("header form button[type=submit]")
        page.wait_for_url(f"{admin.base_url}/admin/login")
        assert not [c for c in browser.cookies() if c["name"] == COOKIE_NAME]
        assert admin.get("/admin", headers={"Cookie": f"{COOKIE_NAME}={session}"}).status_code == 401
    finally:
        page.close()
