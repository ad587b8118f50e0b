"""Fuzz every operation of the served OpenAPI document against the app, in-process.

Schemathesis reads ``GET /openapi.json`` from the Flask app (WSGI, no socket),
generates valid and invalid requests for every operation (its examples,
coverage and fuzzing phases) and sends them with a valid token. Every answer
must be documented: no 5xx, a documented status code and content type, a body
matching the documented schema and the documented response headers.

Bounded and deterministic: a fixed seed, derandomized generation, a small
number of fuzzed examples per operation and no example database on disk.
No worker runs: accepted sends are only enqueued in the test Redis db.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.db import session_scope
from shared.models import App

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    # Not `unsupported_method`: the contract's paths overlap (DELETE /push/devices/register is
    # DELETE /push/devices/{device_id} with the id "register", rightly a 404).
]

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240611,
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
        "generation": {
            # Fuzzed examples per operation, on top of the examples and coverage phases' cases.
            # PUSHQ_FUZZ_EXAMPLES=300 for a deeper (still deterministic) run.
            "max-examples": int(os.environ.get("PUSHQ_FUZZ_EXAMPLES", "30")),
            "deterministic": True,
            "database": "none",
            # The test sends valid tokens itself; refused tokens are test_auth.py's subject.
            "with-security-parameters": False,
        },
        # Operations are fuzzed one by one; no stateful sequences.
        "phases": {"stateful": {"enabled": False}},
    }
)

SEND_PATHS = {"/push/send", "/push/send/bulk", "/push/send/batch"}


@pytest.fixture
def fuzz_schema(flask_app, redis_client):
    # ``redis_client`` empties the test Redis db first: quota and rate-limit counters start at zero.
    return schemathesis.openapi.from_wsgi("/openapi.json", flask_app, config=CONFIG)


@pytest.fixture(autouse=True)
def _nodeid_for_schemathesis(request):
    # schemathesis (<= 4.32) renames each operation's subtest through ``node._nodeid``, an attribute
    # pytest 9.2 no longer has; give it one (it only affects how subtests are labelled).
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("fuzz_schema")


def _headers(case, tenant) -> dict[str, str]:
    """A valid token for the operation, chosen by its documented security."""
    schemes = {name for requirement in case.operation.definition.raw.get("security", []) for name in requirement}
    if not schemes:
        return {}
    if "serviceToken" not in schemes:
        # A fresh user per request, so the per-user registration limit is not what is being fuzzed.
        return tenant.user_headers(uuid.uuid4())
    return tenant.service_headers()


def _send_targets(case) -> list[str]:
    body = case.body if isinstance(case.body, dict) else {}
    if case.path == "/push/send":
        targets = [body.get("user_id")]
    elif case.path == "/push/send/bulk":
        targets = body.get("user_ids")
    else:
        items = body.get("notifications")
        targets = [item.get("user_id") for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    return targets if isinstance(targets, list) else []


def _enroll_some(case, tenant) -> None:
    """Enroll the generated recipients whose id is even, so sends answer 200 as well as user_not_enrolled."""
    ids = set()
    for target in _send_targets(case):
        try:
            user_id = uuid.UUID(target)
        except (TypeError, ValueError, AttributeError):
            continue
        if user_id.int % 2 == 0:
            ids.add(user_id)
    if ids:
        tenant.enroll(*ids)


@schema.parametrize()
def test_every_operation_answers_as_documented(case, tenant):
    if case.method.upper() == "POST" and case.path in SEND_PATHS:
        _enroll_some(case, tenant)
    case.call_and_validate(headers=_headers(case, tenant), checks=CHECKS)


def test_an_oversized_body_answers_as_documented(fuzz_schema, tenant, settings):
    """413 for every JSON body over PUSHQ_MAX_BODY_BYTES (the fuzzer never generates one that large)."""
    padding = "x" * settings.max_body_bytes
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    with_json_body = [
        operation for operation in operations
        if "application/json" in operation.definition.raw.get("requestBody", {}).get("content", {})
    ]
    assert with_json_body
    for operation in with_json_body:
        path_parameters = {name: str(uuid.uuid4()) for name in re.findall(r"{(\w+)}", operation.path)}
        case = operation.Case(path_parameters=path_parameters, body={"padding": padding}, media_type="application/json")
        response = case.call_and_validate(headers=_headers(case, tenant), checks=CHECKS)
        assert response.status_code == 413, (operation.label, response.status_code)


def test_limits_and_replays_answer_as_documented(fuzz_schema, tenant, settings, session_factory):
    """The answers the fuzzer cannot reach on its own: 429s with their headers, an idempotent replay."""
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    send = fuzz_schema["/push/send"]["POST"]
    body = {"user_id": str(user_id), "title": "t", "body": "b"}

    first = send.Case(body=body, headers={"Idempotency-Key": "replay-1"}, media_type="application/json")
    assert first.call_and_validate(headers=tenant.service_headers(), checks=CHECKS).status_code == 200
    replay = send.Case(body=body, headers={"Idempotency-Key": "replay-1"}, media_type="application/json")
    response = replay.call_and_validate(headers=tenant.service_headers(), checks=CHECKS)
    assert response.status_code == 200 and response.headers.get("idempotent-replayed") == ["true"]

    with session_scope(session_factory) as session:
        session.get(App, tenant.id).daily_quota = 0
    over = send.Case(body=body, media_type="application/json")
    response = over.call_and_validate(headers=tenant.service_headers(), checks=CHECKS)
    assert response.status_code == 429 and "x-quota-reset" in response.headers

    register = fuzz_schema["/push/devices/register"]["POST"]
    registering_user = uuid.uuid4()
    tenant.enroll(registering_user)
    user_headers = tenant.user_headers(registering_user)
    statuses = []
    for n in range(settings.registration_limit + 1):
        token = f"{n:064x}"
        case = register.Case(body={"app_id": str(tenant.id), "platform": "ios", "push_token": token},
                             media_type="application/json")
        statuses.append(case.call_and_validate(headers=user_headers, checks=CHECKS).status_code)
    assert statuses == [201] * settings.registration_limit + [429]
