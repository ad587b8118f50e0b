"""Listing an app's notifications and devices: filters, keyset pages, nothing secret, nothing of other apps."""

from __future__ import annotations

import json
import uuid

from tests.support.helpers import wait_for


def pages(client, path: str, headers, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        page = client.get(path, query_string={**params, **({"cursor": cursor} if cursor else {})}, headers=headers).json
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_notifications_newest_first_with_filters_and_pages(client, worker, tenant, other_tenant):
    alice, bob = uuid.uuid4(), uuid.uuid4()
    tenant.enroll(alice, bob)
    other_tenant.enroll(alice)
    headers = tenant.service_headers()
    sent = [client.post("/push/send", json={"user_id": str(user), "title": f"n{i}", "body": "b"}, headers=headers)
            .json["notification_id"] for i, user in enumerate([alice, bob, alice, alice, bob])]
    client.post("/push/send", json={"user_id": str(alice), "title": "theirs", "body": "b"},
                headers=other_tenant.service_headers())

    everything = pages(client, "/push/notifications", headers, limit=2)
    assert [n["id"] for n in everything] == sent[::-1]
    assert [n["title"] for n in pages(client, "/push/notifications", headers, user_id=str(alice))] == ["n3", "n2", "n0"]
    # Without devices each ends no_devices once the worker has fanned it out.
    wait_for(lambda: len(pages(client, "/push/notifications", headers, status="no_devices")) == 5)
    assert pages(client, "/push/notifications", headers, status="queued") == []
    assert pages(client, "/push/notifications", headers, status="delivered") == []
    bad = client.get("/push/notifications?cursor=not-a-cursor", headers=headers)
    assert (bad.status_code, bad.json["error"]) == (400, "invalid_cursor")


def test_devices_are_listed_without_tokens(client, tenant, other_tenant, push_service):
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    ids = []
    for platform, token in (("web", json.dumps(subscription)), ("ios", "ef" * 32)):
        ids.append(client.post("/push/devices/register", json={"app_id": str(tenant.id), "platform": platform,
                                                                "push_token": token},
                               headers=tenant.user_headers(user)).json["device_id"])
    client.delete(f"/push/devices/{ids[1]}", headers=tenant.service_headers())

    listed = pages(client, "/push/devices", tenant.service_headers(), limit=1, user_id=str(user))

    assert sorted(d["id"] for d in listed) == sorted(ids)
    by_id = {d["id"]: d for d in listed}
    assert by_id[ids[1]]["disabled_reason"] == "unregistered" and by_id[ids[0]]["disabled_at"] is None
    text = json.dumps(listed)
    assert subscription["endpoint"] not in text and "ef" * 32 not in text
    assert client.get("/push/devices", headers=other_tenant.service_headers()).json["items"] == []
