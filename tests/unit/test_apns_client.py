"""The APNs wire client (workers/vendors/apns_client.py) against the APNs stand-in over real TLS + HTTP/2.

pushq once ran APNs on aioapns 4.0 with fixes of its own; each test below is
named after what one of those fixes fixed, and now holds the wire client
(workers/vendors/wire) to it: late answers, acknowledged DATA, no re-sends, one
provider token, silent connections dropped, waiting for a free stream.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from shared.message import compact_json
from standins.apns import ApnsStandin
from tests.support.keys import ec_key_pair
from workers.vendors.apns_client import ApnsAnswer, ApnsClient, ApnsCredentials, ApnsFailure, PushRequest

TEAM_ID, KEY_ID, BUNDLE_ID = "TEAM123456", "KEY7654321", "com.example.pushq"
KEYS = ec_key_pair()


def token() -> str:
    return os.urandom(32).hex()


def request(device_token: str) -> PushRequest:
    message = {"aps": {"alert": {"title": "Hi", "body": "there"}}}
    return PushRequest(device_token=device_token, payload=compact_json(message), notification_id=str(uuid.uuid4()),
                       time_to_live=3600, priority=10, push_type="alert")


def credentials() -> ApnsCredentials:
    return ApnsCredentials(str(uuid.uuid4()), KEYS.private_pem, KEY_ID, TEAM_ID, BUNDLE_ID, sandbox=False)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def sent(answers) -> bool:
    return all(isinstance(a, ApnsAnswer) and a.status == "200" for a in answers)


@pytest.fixture(scope="module")
def standin() -> Iterator[ApnsStandin]:
    with ApnsStandin() as server:
        server.register_key(TEAM_ID, KEY_ID, KEYS.public_pem)
        yield server


@pytest.fixture(autouse=True)
def _fresh(standin: ApnsStandin) -> None:
    standin.reset()


@pytest.fixture
def make_client(standin: ApnsStandin) -> Iterator[Callable[..., ApnsClient]]:
    made: list[ApnsClient] = []

    def make(connect_timeout: float = 5.0, read_timeout: float = 10.0, **options) -> ApnsClient:
        options = {"host": "127.0.0.1", "port": standin.port, "ca_file": standin.certificate.ca_path, **options}
        client = ApnsClient(connect_timeout, read_timeout, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.mark.parametrize("late_reason", [None, "BadDeviceToken"])
def test_a_late_answer_after_a_timeout_keeps_the_connection(standin, make_client, late_reason):
    """(aioapns set a result on the timed-out future; the InvalidStateError killed the connection
    and aioapns re-sent what was in flight on it.)"""
    client = make_client(connect_timeout=0.5, read_timeout=0.5)  # each request: 1 s in all
    creds = credentials()
    slow, fast = token(), token()
    standin.set_behavior(slow, late_reason, delay=1.2, times=1)

    timed_out, answered = client.push_many(creds, [request(slow), request(fast)])
    assert timed_out == ApnsFailure("APNs timed out")
    assert sent([answered])
    wait_until(lambda: client.late_answers == 1)  # the late answer reached the client
    assert sent(client.push_many(creds, [request(slow), request(fast)]))
    assert standin.connections_accepted == 1  # the late answer did not kill the connection
    assert standin.attempts(slow) == 2 and standin.attempts(fast) == 2  # nothing re-sent


def test_received_data_is_acknowledged_so_error_answers_never_stall(standin, make_client):
    """(aioapns never acknowledged received DATA: after ~64 KiB of error bodies the
    connection window was spent and later error answers hung.)"""
    client = make_client(max_connections=1)
    creds, bad = credentials(), token()
    standin.set_behavior(bad, "BadDeviceToken")
    for _ in range(6):  # 3000 error bodies, ~80 KiB: a stalled answer would end as a timeout here
        answers = client.push_many(creds, [request(bad) for _ in range(500)])
        assert {(a.status, a.reason) for a in answers} == {("400", "BadDeviceToken")}
    fine = token()
    assert sent(client.push_many(creds, [request(fine)]))
    assert standin.connections_accepted == 1


def test_a_request_whose_connection_died_after_writing_is_not_resent(standin, make_client):
    """(aioapns' pool re-sent a request whose connection died after it was written: a second push.)"""
    client, creds, device = make_client(), credentials(), token()
    standin.set_behavior(device, None, delay=3600)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.push_many, creds, [request(device)])
        wait_until(lambda: standin.attempts(device) == 1)
        standin.drop_connections()  # the server drops the connection while the request is in flight
        (answer,) = pending.result(timeout=10)
    assert answer == ApnsFailure("connection lost")
    assert standin.attempts(device) == 1


def test_a_clients_connections_share_one_provider_token(standin, make_client):
    """(aioapns made a provider token per connection; Apple refuses refreshes more often than every 20 min.)"""
    client, creds = make_client(max_connections=3), credentials()
    standin.set_behavior("*", None, delay=0.3)  # keep streams busy so the pool opens more connections
    answers = client.push_many(creds, [request(token()) for _ in range(30)])
    standin.clear_behavior("*")
    assert sent(answers)
    assert standin.provider_token_count == 1


def test_a_silent_connection_is_dropped_after_a_timeout(standin, make_client):
    """A half-open connection would keep every later push timing out; a connection that says
    nothing while a request on it times out, not even to a PING, is dropped."""
    client, creds = make_client(connect_timeout=0.5, read_timeout=0.5), credentials()
    assert sent(client.push_many(creds, [request(token())]))  # a connection is open
    standin.freeze(3.0)  # from now on the server says nothing for a while (PINGs included)
    answers = client.push_many(creds, [request(token()) for _ in range(5)])
    assert set(answers) == {ApnsFailure("APNs timed out")}
    wait_until(lambda: sent(client.push_many(creds, [request(token())])), timeout=10)  # once the server wakes
    assert standin.connections_accepted == 2  # the silent connection was dropped, not reused


def test_requests_wait_for_a_free_stream_instead_of_failing(make_client):
    """With every connection at the server's stream limit, a request waits for a stream
    (aioapns polled every 10 ms, or failed when out of stream ids)."""
    with ApnsStandin(max_concurrent_streams=5) as narrow:
        narrow.register_key(TEAM_ID, KEY_ID, KEYS.public_pem)
        client = make_client(port=narrow.port, ca_file=narrow.certificate.ca_path, max_connections=1)
        creds = credentials()
        # One push first, so the server's SETTINGS (5 streams) are known: before them, HTTP/2 lets a
        # client open more streams than the server will take, which is not what this fix is about.
        assert sent(client.push_many(creds, [request(token())]))
        answers = client.push_many(creds, [request(token()) for _ in range(60)])
        assert sent(answers)
        assert narrow.connections_accepted == 1
