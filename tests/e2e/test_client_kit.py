"""The web client kit under /client/…, exercised in headless Chromium as far as works without the internet.

* The subscribe page loads from the API's own origin, registers pushq-sw.js,
  and, with ``PushManager.subscribe`` stubbed in the page (a real one would
  ask the browser vendor's push service), posts the subscription to
  ``POST /push/devices/register`` in the exact shape the API accepts; the
  device is then listed by the API.
* The service worker gets a real pushq message: sent through the API, pushed
  by the worker to the local Web Push service, decrypted there, and handed to
  the worker's push handler with DevTools' ``ServiceWorker.deliverPushMessage``.
  The notification it shows is read from DevTools' background-service log
  (``getNotifications()`` is unreliable in headless Chromium, which has no
  notification centre to keep it). Its click handler runs on a
  ``notificationclick`` event dispatched in the worker; opening or focusing a
  window needs a real user's click, so those two calls are recorded (and still
  made) rather than observed as tabs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.tokens import b64url_decode
from tests.support.browser import chromium, wait_in_browser
from tests.support.flows import register_web
from tests.support.helpers import wait_for

# Replaces the browser's PushManager before any page script runs: subscribe() answers with the subscription
# the test chose (window.__pushqTestSubscription) and records what it was asked.
_STUB_PUSH_MANAGER = """
window.__pushqSubscribeCalls = [];
PushManager.prototype.getSubscription = async function () { return null; };
PushManager.prototype.subscribe = async function (options) {
  window.__pushqSubscribeCalls.push({
    userVisibleOnly: options.userVisibleOnly,
    applicationServerKey: Array.from(new Uint8Array(options.applicationServerKey)),
  });
  const json = window.__pushqTestSubscription;
  return {endpoint: json.endpoint, expirationTime: null, options,
          toJSON() { return {endpoint: json.endpoint, expirationTime: null, keys: json.keys}; },
          unsubscribe: async () => true};
};
"""

# Records the click handler's window calls (and still makes them; without a user's click they are refused).
_RECORD_WINDOW_CALLS = """() => {
  self.__windowCalls = [];
  if (!self.__recording) {
    self.__recording = true;
    const openWindow = Clients.prototype.openWindow;
    Clients.prototype.openWindow = function (url) {
      self.__windowCalls.push({call: 'openWindow', url});
      return openWindow.call(this, url).catch(() => null);
    };
    const focus = WindowClient.prototype.focus;
    WindowClient.prototype.focus = function () {
      self.__windowCalls.push({call: 'focus', url: this.url});
      return focus.call(this).catch(() => this);
    };
    const show = ServiceWorkerRegistration.prototype.showNotification;
    self.__shown = [];
    ServiceWorkerRegistration.prototype.showNotification = function (title, options) {
      self.__shown.push({title, options});
      return show.call(this, title, options);
    };
  }
}"""

_CLICK = """(shown) => {
  let closed = false;
  const event = new ExtendableEvent('notificationclick');
  Object.defineProperty(event, 'notification', {value: {title: shown.title, body: shown.options.body,
    data: shown.options.data, close() { closed = true; }}});
  try { self.dispatchEvent(event); } catch (ignored) { /* waitUntil refuses a script-made event */ }
  return closed;
}"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-client-kit")) as context:
        context.add_init_script(_STUB_PUSH_MANAGER)
        yield context


@pytest.fixture(scope="module")
def kit(browser, live_server) -> dict[str, Any]:
    """The subscribe page open on the API's origin, its service worker active, and a DevTools session."""
    origin = live_server.url
    browser.grant_permissions(["notifications"], origin=origin)
    page = browser.new_page()
    cdp = browser.new_cdp_session(page)
    registrations: dict[str, str] = {}
    events: list[dict] = []
    cdp.on("ServiceWorker.workerRegistrationUpdated",
           lambda update: registrations.update({r["scopeURL"]: r["registrationId"] for r in update["registrations"]}))
    cdp.on("BackgroundService.backgroundServiceEventReceived", lambda event: events.append(event["backgroundServiceEvent"]))
    cdp.send("ServiceWorker.enable")
    for service in ("notifications", "pushMessaging"):
        cdp.send("BackgroundService.startObserving", {"service": service})
        cdp.send("BackgroundService.setRecording", {"shouldRecord": True, "service": service})
    page.goto(f"{origin}/client/subscribe.html")
    page.wait_for_selector("#status[data-state=ready]")
    scope = f"{origin}/client/"
    wait_in_browser(page, lambda: scope in registrations)
    worker = wait_in_browser(page, lambda: next((w for w in browser.service_workers if w.url.endswith("/client/pushq-sw.js")), None))
    return {"origin": origin, "page": page, "cdp": cdp, "registration_id": registrations[scope], "events": events,
            "worker": worker}


def test_files_are_served_with_their_types(client):
    types = {"pushq-sw.js": "text/javascript", "pushq-subscribe.js": "text/javascript",
             "subscribe-page.js": "text/javascript", "subscribe.html": "text/html"}
    for name, content_type in types.items():
        response = client.get(f"/client/{name}")
        assert response.status_code == 200, name
        assert response.mimetype == content_type
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-cache"
    sw = client.get("/client/pushq-sw.js")
    assert sw.headers["Service-Worker-Allowed"] == "/"
    assert client.get("/client/pushq-sw.js", headers={"If-None-Match": sw.headers["ETag"]}).status_code == 304
    assert "script-src 'self'" in client.get("/client/subscribe.html").headers["Content-Security-Policy"]
    for missing in ("/client/app.py", "/client/..%2fadmin.py", "/client/"):
        response = client.get(missing)
        assert response.status_code == 404 and response.json["error"] == "not_found", missing


def test_page_subscribes_and_registers_the_subscription(api, kit, tenant, push_service):
    page = kit["page"]
    user = uuid.uuid4()
    assert api.put(f"/push/enrollments/{user}", headers=tenant.service_headers()).status_code == 200
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    authorization = tenant.user_headers(user)["Authorization"]
    page.evaluate("(s) => { window.__pushqTestSubscription = s; window.__pushqSubscribeCalls = []; }", subscription)
    assert page.evaluate("navigator.serviceWorker.controller && navigator.serviceWorker.controller.scriptURL") \
        == f"{kit['origin']}/client/pushq-sw.js"

    page.fill("#app-id", str(tenant.id))
    page.fill("#vapid-key", tenant.vapid_public_key)
    page.fill("#user-token", authorization.removeprefix("Bearer "))
    with page.expect_request(f"{kit['origin']}/push/devices/register") as captured:
        page.click("#subscribe")
    page.wait_for_selector("#status[data-state=ok]")
    device_id = page.get_attribute("#status", "data-device-id")

    request = captured.value
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == authorization
    body = request.post_data_json
    assert set(body) == {"app_id", "platform", "push_token"}
    assert body["app_id"] == str(tenant.id) and body["platform"] == "web"
    assert json.loads(body["push_token"]) == {"endpoint": subscription["endpoint"], "expirationTime": None,
                                              "keys": subscription["keys"]}
    (call,) = page.evaluate("window.__pushqSubscribeCalls")
    assert call["userVisibleOnly"] is True
    assert bytes(call["applicationServerKey"]) == b64url_decode(tenant.vapid_public_key)  # base64url → bytes

    listed = api.get("/push/devices", params={"user_id": str(user)}, headers=tenant.service_headers()).json()
    assert [(d["id"], d["platform"]) for d in listed["items"]] == [(device_id, "web")]


def _deliver(kit: dict[str, Any], data: str) -> dict[str, str]:
    """Push ``data`` to the service worker through DevTools; the notification it then showed (title, body)."""
    seen = len(kit["events"])
    kit["cdp"].send("ServiceWorker.deliverPushMessage",
                    {"origin": kit["origin"] + "/", "registrationId": kit["registration_id"], "data": data})

    def displayed():
        for event in kit["events"][seen:]:
            if event["eventName"] == "Notification displayed":
                return {item["key"]: item["value"] for item in event["eventMetadata"]}
        return None

    return wait_in_browser(kit["page"], displayed)


def test_service_worker_shows_a_pushq_message_and_opens_its_url(api, kit, tenant, push_service, worker):
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    registered = api.post("/push/devices/register", headers=tenant.user_headers(user),
                          json={"app_id": str(tenant.id), "platform": "web", "push_token": json.dumps(subscription)})
    assert registered.status_code == 201, registered.text
    page_url = f"{kit['origin']}/client/subscribe.html"
    response = api.post("/push/send", headers=tenant.service_headers(), json={
        "user_id": str(user), "title": "Shift approved", "body": "See you at 9 <sharp>.", "data": {"url": "/client/subscribe.html", "shift": 7}})
    assert response.status_code == 200, response.text
    (message,) = wait_for(lambda: push_service.messages(subscription), timeout=20)
    payload = message.json()
    receipt = payload.pop("receipt")
    assert payload == {"title": "Shift approved", "body": "See you at 9 <sharp>.",
                       "data": {"url": "/client/subscribe.html", "shift": 7}}

    worker_handle = kit["worker"]
    worker_handle.evaluate(_RECORD_WINDOW_CALLS)
    # The exact bytes pushq's worker pushed (as the push service decrypted them).
    shown = _deliver(kit, message.payload.decode())
    assert shown == {"Title": "Shift approved", "Body": "See you at 9 <sharp>."}
    last = worker_handle.evaluate("self.__shown[self.__shown.length - 1]")
    assert last["options"]["data"] == {"url": page_url, "data": payload["data"], "receipt": receipt}

    # A tab already shows the URL: it is focused, no new window.
    assert worker_handle.evaluate(_CLICK, last) is True  # the notification was closed
    wait_in_browser(kit["page"], lambda: worker_handle.evaluate("self.__windowCalls.length"))
    assert worker_handle.evaluate("self.__windowCalls") == [{"call": "focus", "url": page_url}]

    # No tab shows it: a new one is opened, at the absolute URL.
    worker_handle.evaluate("self.__windowCalls = []")
    shown = _deliver(kit, json.dumps({"title": "Elsewhere", "body": "", "data": {"url": "/client/inbox?x=1"}}))
    assert shown["Title"] == "Elsewhere"
    last = worker_handle.evaluate("self.__shown[self.__shown.length - 1]")
    worker_handle.evaluate(_CLICK, last)
    wait_in_browser(kit["page"], lambda: worker_handle.evaluate("self.__windowCalls.length"))
    assert worker_handle.evaluate("self.__windowCalls") == [{"call": "openWindow", "url": f"{kit['origin']}/client/inbox?x=1"}]

    # Not JSON, or a URL that is not http(s): still a notification, nothing unsafe to open.
    shown = _deliver(kit, "plain text")
    assert shown.get("Body") == "plain text"
    shown = _deliver(kit, json.dumps({"title": "x", "body": "y", "url": "javascript:alert(1)"}))
    assert worker_handle.evaluate("self.__shown[self.__shown.length - 1].options.data.url") is None


# A click on one of the notification's action buttons (event.action names it).
_CLICK_ACTION = """([shown, action]) => {
  const event = new ExtendableEvent('notificationclick');
  Object.defineProperty(event, 'notification', {value: {title: shown.title, body: shown.options.body,
    data: shown.options.data, close() {}}});
  Object.defineProperty(event, 'action', {value: action});
  try { self.dispatchEvent(event); } catch (ignored) { /* waitUntil refuses a script-made event */ }
  return true;
}"""


def test_service_worker_shows_the_message_options_and_opens_the_clicked_actions_url(
        api, kit, tenant, push_service, worker):
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    registered = api.post("/push/devices/register", headers=tenant.user_headers(user),
                          json={"app_id": str(tenant.id), "platform": "web", "push_token": json.dumps(subscription)})
    assert registered.status_code == 201, registered.text
    # Images on an address that refuses at once: the browser's fetch fails fast, the notification still shows.
    image, icon = "https://127.0.0.1:9/shift.png", "https://127.0.0.1:9/icon.png"
    response = api.post("/push/send", headers=tenant.service_headers(), json={
        "user_id": str(user), "title": "Shift offered", "body": "Saturday 9:00", "data": {"url": "/client/subscribe.html"},
        "image": image, "group": "shifts", "renotify": True, "interruption_level": "time-sensitive",
        "actions": [{"id": "accept", "title": "Accept", "url": "/client/shifts/7/accept"},
                    {"id": "later", "title": "Later"}],
        "webpush": {"icon": icon, "requireInteraction": True, "lang": "en-GB"}})
    assert response.status_code == 200, response.text
    (message,) = wait_for(lambda: push_service.messages(subscription), timeout=20)
    assert message.urgency == "high"

    worker_handle = kit["worker"]
    worker_handle.evaluate(_RECORD_WINDOW_CALLS)
    shown = _deliver(kit, message.payload.decode())
    assert shown["Title"] == "Shift offered"
    last = worker_handle.evaluate("self.__shown[self.__shown.length - 1]")
    page_url = f"{kit['origin']}/client/subscribe.html"
    assert last["options"] == {
        "body": "Saturday 9:00", "image": image, "tag": "shifts", "renotify": True, "icon": icon,
        "requireInteraction": True, "lang": "en-GB",
        "actions": [{"action": "accept", "title": "Accept"}, {"action": "later", "title": "Later"}],
        "data": {"url": page_url, "data": {"url": "/client/subscribe.html"},
                 "actions": {"accept": f"{kit['origin']}/client/shifts/7/accept", "later": None},
                 "receipt": message.json()["receipt"]},
    }

    # The "accept" button opens its own URL (no tab shows it: a new one).
    worker_handle.evaluate(_CLICK_ACTION, [last, "accept"])
    wait_in_browser(kit["page"], lambda: worker_handle.evaluate("self.__windowCalls.length"))
    assert worker_handle.evaluate("self.__windowCalls") == [
        {"call": "openWindow", "url": f"{kit['origin']}/client/shifts/7/accept"}]
    # ... and the click is reported with the action's id (a clicked receipt to POST /push/receipts).
    notification_id = response.json()["notification_id"]
    clicked = wait_for(lambda: _delivery(api, tenant, notification_id)["clicked_at"] and _delivery(api, tenant, notification_id),
                       what="the clicked receipt")
    assert clicked["clicked_action"] == "accept" and clicked["displayed_at"]
    # "later" has no URL of its own: the notification's, whose tab is open, is focused.
    worker_handle.evaluate("self.__windowCalls = []")
    worker_handle.evaluate(_CLICK_ACTION, [last, "later"])
    wait_in_browser(kit["page"], lambda: worker_handle.evaluate("self.__windowCalls.length"))
    assert worker_handle.evaluate("self.__windowCalls") == [{"call": "focus", "url": page_url}]
    assert _delivery(api, tenant, notification_id)["clicked_action"] == "accept"  # the first click is the one kept

    # A payload's options of the wrong type are not passed on; renotify needs a tag.
    _deliver(kit, json.dumps({"title": "t", "body": "b", "renotify": True, "image": 5, "actions": "no",
                              "vibrate": ["x"], "requireInteraction": "yes"}))
    odd = worker_handle.evaluate("self.__shown[self.__shown.length - 1].options")
    assert odd == {"body": "b", "data": {"url": None, "data": {}}}


def _delivery(api, tenant, notification_id: str) -> dict:
    (delivery,) = api.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()["deliveries"]
    return delivery


def test_service_worker_reports_displayed_and_clicked(api, kit, tenant, push_service, worker):
    """A pushq message shown by the service worker posts a `displayed` receipt, a click a `clicked` one."""
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    register_web(api, tenant, user, subscription)
    sent = [api.post("/push/send", headers=tenant.service_headers(),
                     json={"user_id": str(user), "title": f"Reminder {n}", "body": "Take your medication."})
            for n in range(2)]
    ids = [response.json()["notification_id"] for response in sent]
    messages = wait_for(lambda: len(push_service.messages(subscription)) == 2 and push_service.messages(subscription))
    by_title = {m.json()["title"]: m for m in messages}
    first, second = by_title["Reminder 0"], by_title["Reminder 1"]
    worker_handle = kit["worker"]
    worker_handle.evaluate(_RECORD_WINDOW_CALLS)

    _deliver(kit, first.payload.decode())
    shown = wait_for(lambda: _delivery(api, tenant, ids[0])["displayed_at"] and _delivery(api, tenant, ids[0]),
                     what="the displayed receipt")
    assert shown["clicked_at"] is None
    last = worker_handle.evaluate("self.__shown[self.__shown.length - 1]")
    worker_handle.evaluate(_CLICK, last)
    clicked = wait_for(lambda: _delivery(api, tenant, ids[0])["clicked_at"] and _delivery(api, tenant, ids[0]),
                       what="the clicked receipt")
    assert clicked["displayed_at"] == shown["displayed_at"]  # the first display is kept
    assert _delivery(api, tenant, ids[1])["displayed_at"] is None  # the other message was never shown

    # A forged token, and one delivery's id under another's signature, are refused; nothing changes.
    token_one, token_two = first.json()["receipt"], second.json()["receipt"]
    prefix, _id_one, mac_one = token_one.split(".")
    _prefix, id_two, _mac_two = token_two.split(".")
    for forged in (f"{prefix}.{id_two}.{mac_one}", token_two[:-2] + ("AA" if not token_two.endswith("AA") else "BB")):
        refused = api.post("/push/receipts", json={"token": forged, "event": "displayed"})
        assert refused.status_code == 403
        assert refused.json() == {"error": "invalid_receipt", "message": "Receipt token is not valid"}
    assert _delivery(api, tenant, ids[1])["displayed_at"] is None
