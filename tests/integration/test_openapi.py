"""The served OpenAPI document is valid and describes exactly the routes the app serves."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from api.endpoints import PAGES


def test_document_is_valid_openapi(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    validate(response.json)


def test_every_route_is_documented_and_nothing_else(client, flask_app):
    documented = {
        (path, method.upper())
        for path, operations in client.get("/openapi.json").json["paths"].items()
        for method in operations
    }
    served = set()
    for rule in flask_app.url_map.iter_rules():
        if rule.endpoint in {"static", "openapi.openapi_json", "health.healthz", "metrics.metrics_view", "health.readyz"}:
            continue
        if rule.endpoint.partition(".")[0] in PAGES:  # pages for browsers, not API operations: checked below
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented


def test_only_the_declared_pages_are_left_out(client, flask_app):
    """Undocumented pages are exactly the status page and the client kit, each under its own prefix."""
    assert PAGES == {"admin": "/admin", "client_kit": "/client"}
    for rule in flask_app.url_map.iter_rules():
        blueprint = rule.endpoint.partition(".")[0]
        if blueprint in PAGES:
            assert rule.rule == PAGES[blueprint] or rule.rule.startswith(PAGES[blueprint] + "/"), rule.rule
    documented = client.get("/openapi.json").json["paths"]
    assert not [path for path in documented if path.startswith(tuple(PAGES.values()))]


def test_send_documents_the_contract_errors(client):
    send = client.get("/openapi.json").json["paths"]["/push/send"]["post"]
    assert {"200", "400", "401", "403"} <= set(send["responses"])
    assert send["security"] == [{"serviceToken": ["push:send"]}]
    schema = client.get("/openapi.json").json["components"]["schemas"]
    assert {"user_id", "title", "body"} <= set(schema["SendRequest"]["required"])
