"""Tests of the Web Push stand-in, driven by pywebpush over real sockets.

pushq's own tests trust the stand-in to answer like a real push service, so
these check that it accepts what pywebpush really sends, decrypts it exactly,
and refuses the faults real services refuse with the same status codes.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid
from pywebpush import WebPusher, WebPushException, webpush

from standins.webpush import WebPushStandin, main

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SUB_CLAIM = "mailto:ops@pushq.example"


@pytest.fixture
def standin() -> Iterator[WebPushStandin]:
    with WebPushStandin() as service:
        yield service


@pytest.fixture
def vapid() -> Vapid:
    key = Vapid()
    key.generate_keys()
    return key


def app_server_key(key: Vapid) -> str:
    """The b64url public key, as given to PushManager.subscribe."""
    raw = key.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def push(subscription: dict, data: bytes | str, key: Vapid, **kwargs) -> requests.Response:
    """Send with pywebpush's one-call API; a fresh claims dict every time
    because webpush() writes aud/exp into it."""
    claims = {"sub": SUB_CLAIM, **kwargs.pop("claims", {})}
    kwargs.setdefault("ttl", 60)
    return webpush(subscription, data, vapid_private_key=key, vapid_claims=claims, **kwargs)


def push_status(subscription: dict, data: bytes | str, key: Vapid, **kwargs) -> requests.Response:
    """Like push() but return the refusal's response instead of raising."""
    try:
        return push(subscription, data, key, **kwargs)
    except WebPushException as exc:
        assert exc.response is not None  # noqa: PT017 - the answer is what the caller inspects
        return exc.response


def raw_post(subscription: dict, headers: dict[str, str], data: bytes = b"hello") -> requests.Response:
    """Encrypt with pywebpush but send hand-built headers, for faults
    pywebpush itself would never produce."""
    body = WebPusher(subscription).encode(data)["body"]
    return requests.post(
        subscription["endpoint"],
        data=body,
        headers={"Content-Encoding": "aes128gcm", **headers},
        timeout=10,
    )


def vapid_auth(sign_with: Vapid, claims: dict, k_of: Vapid | None = None) -> str:
    pem = sign_with.private_pem()
    token = jwt.encode(claims, pem, algorithm="ES256")
    return f"vapid t={token}, k={app_server_key(k_of or sign_with)}"


def good_claims(standin: WebPushStandin, **overrides) -> dict:
    return {"aud": standin.base_url, "exp": int(time.time()) + 3600, "sub": SUB_CLAIM, **overrides}


# -- accepted pushes ---------------------------------------------------------


def test_push_decrypts_to_the_bytes_sent(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    data = b'{"title": "Hello", "body": "caf\xc3\xa9"}'

    response = push(sub, data, vapid, ttl=300, headers={"Urgency": "high", "Topic": "order-42"})

    assert response.status_code == 201
    assert response.headers["TTL"] == "300"
    (message,) = standin.messages(sub)
    assert message.payload == data
    assert message.json() == {"title": "Hello", "body": "café"}
    assert (message.ttl, message.urgency, message.topic) == (300, "high", "order-42")
    assert message.vapid_claims["aud"] == standin.base_url
    assert message.vapid_claims["sub"] == SUB_CLAIM
    assert message.vapid_public_key == app_server_key(vapid)
    assert standin.attempts(sub) == 1

    location = response.headers["Location"]
    assert location == f"{standin.base_url}/_standin/messages/{message.id}"
    served = requests.get(location, timeout=10)
    assert served.status_code == 200
    assert served.json() == {
        "id": message.id,
        "payload": data.decode(),
        "ttl": 300,
        "urgency": "high",
        "topic": "order-42",
        "received_at": message.received_at,
    }


def test_largest_payload_fits_and_binary_is_served_as_base64(
    standin: WebPushStandin, vapid: Vapid
) -> None:
    sub = standin.new_subscription()
    data = os.urandom(3993)  # 4096 minus aes128gcm's 103 bytes of overhead

    response = push(sub, data, vapid)

    assert response.status_code == 201
    assert standin.messages(sub)[0].payload == data
    served = requests.get(response.headers["Location"], timeout=10).json()
    assert served["payload"] is None
    assert base64.b64decode(served["payload_b64"]) == data
    assert standin.messages(sub)[0].urgency is None and standin.messages(sub)[0].topic is None


def test_lookup_by_endpoint_or_id(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    push(sub, "x", vapid)
    sub_id = sub["endpoint"].rsplit("/", 1)[1]
    assert standin.messages(sub["endpoint"]) == standin.messages(sub_id) == standin.messages(sub)
    assert standin.attempts(sub_id) == 1


def test_keep_alive_reuses_one_connection(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    with requests.Session() as session:
        for n in range(3):
            assert push(sub, f"m{n}", vapid, requests_session=session).status_code == 201
    assert [m.payload for m in standin.messages(sub)] == [b"m0", b"m1", b"m2"]
    assert standin.connections_accepted == 1


def test_restricted_subscription_accepts_its_own_key(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription(application_server_key=app_server_key(vapid))
    assert push(sub, "ok", vapid).status_code == 201


# -- refusals ----------------------------------------------------------------


def test_signature_by_another_key_is_401(standin: WebPushStandin, vapid: Vapid) -> None:
    other = Vapid()
    other.generate_keys()
    sub = standin.new_subscription()
    auth = vapid_auth(sign_with=other, claims=good_claims(standin), k_of=vapid)
    assert raw_post(sub, {"TTL": "60", "Authorization": auth}).status_code == 401
    assert standin.messages(sub) == []
    assert standin.attempts(sub) == 1


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"aud": "https://fcm.googleapis.com"}, id="other-origin-aud"),
        pytest.param({"aud": "http://localhost:1"}, id="wrong-port-aud"),
        pytest.param({"exp": int(time.time()) + 25 * 3600}, id="exp-over-24h"),
    ],
)
def test_bad_vapid_claims_are_401(standin: WebPushStandin, vapid: Vapid, claims: dict) -> None:
    sub = standin.new_subscription()
    assert push_status(sub, "x", vapid, claims=claims).status_code == 401
    assert standin.messages(sub) == []


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"exp": int(time.time()) - 10}, id="expired"),
        pytest.param({"sub": "ops@pushq.example"}, id="sub-not-mailto"),
        pytest.param({"sub": None}, id="no-sub"),
        pytest.param({"aud": None}, id="no-aud"),
    ],
)
def test_hand_built_bad_tokens_are_401(standin: WebPushStandin, vapid: Vapid, overrides: dict) -> None:
    # py-vapid refuses to sign these, so sign with PyJWT directly.
    claims = {k: v for k, v in good_claims(standin, **overrides).items() if v is not None}
    sub = standin.new_subscription()
    response = raw_post(sub, {"TTL": "60", "Authorization": vapid_auth(vapid, claims)})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer abc", "vapid k=only-a-key", "vapid t=not.a.jwt, k=AAAA", "WebPush {token}"],
)
def test_missing_or_malformed_authorization_is_401(
    standin: WebPushStandin, vapid: Vapid, authorization: str | None
) -> None:
    sub = standin.new_subscription()
    headers = {"TTL": "60"}
    if authorization is not None:
        token = jwt.encode(good_claims(standin), vapid.private_pem(), algorithm="ES256")
        headers["Authorization"] = authorization.format(token=token)
    assert raw_post(sub, headers).status_code == 401


def test_authorization_params_parse_with_spaces_and_quotes(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    token = jwt.encode(good_claims(standin), vapid.private_pem(), algorithm="ES256")
    auth = f'vapid  k="{app_server_key(vapid)}" ,t={token}'
    assert raw_post(sub, {"TTL": "0", "Authorization": auth}).status_code == 201


def test_restricted_subscription_refuses_other_key_with_403(standin: WebPushStandin, vapid: Vapid) -> None:
    other = Vapid()
    other.generate_keys()
    sub = standin.new_subscription(application_server_key=app_server_key(other))
    assert push_status(sub, "x", vapid).status_code == 403
    assert standin.messages(sub) == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing-ttl"),
        pytest.param({"TTL": "-1"}, id="negative-ttl"),
        pytest.param({"TTL": "soon"}, id="text-ttl"),
        pytest.param({"TTL": "60", "Urgency": "urgent"}, id="bad-urgency"),
        pytest.param({"TTL": "60", "Topic": "x" * 33}, id="long-topic"),
        pytest.param({"TTL": "60", "Topic": "a.b"}, id="topic-not-base64url"),
    ],
)
def test_bad_push_headers_are_400(standin: WebPushStandin, vapid: Vapid, headers: dict) -> None:
    sub = standin.new_subscription()
    auth = vapid_auth(vapid, good_claims(standin))
    response = raw_post(sub, {"Authorization": auth, **headers})
    assert response.status_code == 400
    assert set(response.json()) >= {"error", "message"}


def test_body_over_4096_bytes_is_413(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    assert push_status(sub, os.urandom(3994), vapid).status_code == 413


def test_other_content_encoding_is_415(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    assert push_status(sub, "x", vapid, content_encoding="aesgcm").status_code == 415


def test_body_encrypted_for_another_subscription_is_400(standin: WebPushStandin, vapid: Vapid) -> None:
    sub, other = standin.new_subscription(), standin.new_subscription()
    auth = vapid_auth(vapid, good_claims(standin))
    body = WebPusher(other).encode(b"secret")["body"]
    response = requests.post(
        sub["endpoint"],
        data=body,
        headers={"TTL": "60", "Authorization": auth, "Content-Encoding": "aes128gcm"},
        timeout=10,
    )
    assert response.status_code == 400


def test_unknown_subscription_is_404(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    gone = {**sub, "endpoint": f"{standin.base_url}/push/no-such-id"}
    assert push_status(gone, "x", vapid).status_code == 404
    assert standin.attempts(sub) == 0
    with pytest.raises(KeyError):
        standin.attempts("no-such-id")


def test_reset_forgets_subscriptions(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    push(sub, "x", vapid)
    standin.reset()
    assert push_status(sub, "x", vapid).status_code == 404


# -- scripted behaviour ------------------------------------------------------


def test_behavior_410_stores_nothing(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    standin.set_behavior(sub, 410)
    for _ in range(2):
        assert push_status(sub, "x", vapid).status_code == 410
    assert standin.messages(sub) == []
    assert standin.attempts(sub) == 2


def test_behavior_429_sends_retry_after(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    standin.set_behavior(sub, 429, retry_after=7)
    with pytest.raises(WebPushException) as caught:
        push(sub, "x", vapid)
    assert caught.value.status_code == 429
    assert caught.value.retry_after == "7"


def test_behavior_times_then_back_to_201(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    standin.set_behavior(sub["endpoint"], 503, times=1)
    first = push_status(sub, "first", vapid)
    assert first.status_code == 503 and "Retry-After" not in first.headers
    assert push(sub, "second", vapid).status_code == 201
    assert [m.payload for m in standin.messages(sub)] == [b"second"]
    assert standin.attempts(sub) == 2


def test_behavior_delay_is_honoured(standin: WebPushStandin, vapid: Vapid) -> None:
    sub = standin.new_subscription()
    standin.set_behavior(sub, 201, delay=0.3, times=1)
    started = time.monotonic()
    assert push(sub, "slow", vapid).status_code == 201
    assert time.monotonic() - started >= 0.3
    assert standin.messages(sub)[0].payload == b"slow"


def test_set_behavior_rejects_nonsense(standin: WebPushStandin) -> None:
    sub = standin.new_subscription()
    with pytest.raises(ValueError):
        standin.set_behavior(sub, 42)
    with pytest.raises(ValueError):
        standin.set_behavior(sub, 500, times=0)
    with pytest.raises(KeyError):
        standin.set_behavior("no-such-id", 410)


# -- HTTP control endpoints --------------------------------------------------


def test_http_control_endpoints(standin: WebPushStandin, vapid: Vapid) -> None:
    base = f"{standin.base_url}/_standin"
    with requests.Session() as http:
        created = http.post(f"{base}/subscriptions", timeout=10)
        assert created.status_code == 201
        sub = created.json()
        assert set(sub) == {"id", "endpoint", "keys"}
        assert sub["endpoint"] == f"{standin.base_url}/push/{sub['id']}"

        assert push(sub, "over http", vapid).status_code == 201
        listed = http.get(f"{base}/subscriptions/{sub['id']}/messages", timeout=10)
        assert listed.status_code == 200
        assert [m["payload"] for m in listed.json()] == ["over http"]
        message_id = listed.json()[0]["id"]
        assert http.get(f"{base}/messages/{message_id}", timeout=10).json()["payload"] == "over http"
        assert http.get(f"{base}/messages/nope", timeout=10).status_code == 404

        behavior = {"status": 410, "retry_after": None, "times": 1, "delay": 0}
        assert http.put(f"{base}/subscriptions/{sub['id']}/behavior", json=behavior, timeout=10).status_code == 204
        assert push_status(sub, "x", vapid).status_code == 410
        assert http.put(f"{base}/subscriptions/nope/behavior", json=behavior, timeout=10).status_code == 404
        assert http.put(f"{base}/subscriptions/{sub['id']}/behavior", json={"status": "x"}, timeout=10).status_code == 400

        restricted = http.post(
            f"{base}/subscriptions", json={"application_server_key": app_server_key(vapid)}, timeout=10
        ).json()
        assert push(restricted, "mine", vapid).status_code == 201
        assert http.post(f"{base}/subscriptions", json={"application_server_key": "bad"}, timeout=10).status_code == 400


# -- lifecycle and CLI -------------------------------------------------------


def test_stop_is_idempotent_and_closes_open_connections(vapid: Vapid) -> None:
    service = WebPushStandin().start()
    sub = service.new_subscription()
    with requests.Session() as session:
        push(sub, "x", vapid, requests_session=session)  # leaves a kept-alive connection
        started = time.monotonic()
        service.stop()
        service.stop()
        assert time.monotonic() - started < 30  # a kept-alive connection lasts until closed: stop closed it
        with pytest.raises(requests.ConnectionError):
            requests.get(service.base_url, timeout=2)


def test_main_help_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--port" in out and "/_standin/subscriptions" in out


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGINT")
def test_module_runs_in_foreground_until_ctrl_c(vapid: Vapid) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "standins.webpush", "--port", "0"],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            base_url = line.split("listening on ", 1)[1].split()[0]
            sub = requests.post(f"{base_url}/_standin/subscriptions", timeout=10).json()
            assert push(sub, "cli", vapid).status_code == 201
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=60)  # bounded: a stand-in that ignores Ctrl-C fails, never hangs
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "push " in rest and "-> 201" in rest
    assert sub["keys"]["auth"] not in rest and sub["keys"]["p256dh"] not in rest
