"""A chunk interrupted by the task's soft time limit keeps the answers that came back (issue 16 item 4).

Celery's prefork pool raises SoftTimeLimitExceeded in the task's thread from a
signal handler; here a real timer signal does the same while each adapter waits
for a chunk whose one push stalls at its local stand-in. The adapters used to
catch it like any error and report every push of the chunk as a retry, so the
accepted ones were pushed again.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from shared.outcomes import OutcomeKind
from shared.vapid import generate_vapid_key_pair
from standins.apns import ApnsStandin
from standins.fcm import FcmStandin
from standins.webpush import WebPushStandin
from tests.support.helpers import claimed_delivery
from tests.support.keys import ec_key_pair
from workers.adapters.apns import ApnsAdapter
from workers.adapters.base import AppCredentials, ChunkInterrupted
from workers.adapters.fcm import FcmAdapter
from workers.adapters.webpush import WebPushAdapter

STALL, DEADLINE, SOFT_LIMIT = 30.0, 20.0, 1.5  # the soft limit fires long before the push deadline


@contextmanager
def soft_time_limit(seconds: float) -> Iterator[None]:
    """SoftTimeLimitExceeded raised in this thread after ``seconds``, as billiard's signal handler does."""

    def fire(signum, frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# (run the chunk, what the stand-in received per delivery, close)
Case = tuple[Callable[[], list], Callable[[], list[int]], Callable[[], object]]


def expires() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def web_case() -> Case:
    service = WebPushStandin().start()
    adapter = WebPushAdapter(connect_timeout=5.0, deadline=DEADLINE, allow_http_loopback=True)
    keys = generate_vapid_key_pair()
    app = AppCredentials(app_id=uuid.uuid4(), vapid_private_key=keys.private_pem, vapid_public_key=keys.public_key,
                         vapid_subject="mailto:ops@example.com")
    subscriptions = [service.new_subscription() for _ in range(3)]
    service.set_behavior(subscriptions[0], 201, delay=STALL)

    def run():
        return adapter.send_many(app, [claimed_delivery(json.dumps(s), "web", expires_at=expires()) for s in subscriptions])

    return run, lambda: [len(service.messages(s)) for s in subscriptions], lambda: (adapter.close(), service.stop())


def apns_case() -> Case:
    service = ApnsStandin().start()
    pair = ec_key_pair()
    service.register_key("TEAM123456", "KEY1234567", pair.public_pem)
    adapter = ApnsAdapter(5.0, DEADLINE, host="127.0.0.1", port=service.port, ca_file=service.certificate.ca_path,
                          deadline=DEADLINE)
    app = AppCredentials(app_id=uuid.uuid4(), vapid_private_key="-", vapid_public_key="-", vapid_subject="-",
                         apns_team_id="TEAM123456", apns_key_id="KEY1234567", apns_private_key=pair.private_pem,
                         apns_bundle_id="com.example.pushq")
    tokens = [os.urandom(32).hex() for _ in range(3)]
    service.set_behavior(tokens[0], None, delay=STALL)

    def run():
        return adapter.send_many(app, [claimed_delivery(t, "ios", expires_at=expires()) for t in tokens])

    return run, lambda: [len(service.messages(t)) for t in tokens], lambda: (adapter.close(), service.stop())


def fcm_case() -> Case:
    service = FcmStandin().start()
    adapter = FcmAdapter(5.0, DEADLINE, base_url=service.base_url, deadline=DEADLINE)
    app = AppCredentials(app_id=uuid.uuid4(), vapid_private_key="-", vapid_public_key="-", vapid_subject="-",
                         fcm_project_id="proj", fcm_service_account=json.dumps(service.new_service_account("proj")))
    tokens = [f"fcm-{uuid.uuid4().hex}" for _ in range(3)]
    service.set_behavior(tokens[0], None, delay=STALL)

    def run():
        return adapter.send_many(app, [claimed_delivery(t, "android", expires_at=expires()) for t in tokens])

    return run, lambda: [len(service.messages(t)) for t in tokens], lambda: (adapter.close(), service.stop())


@pytest.mark.parametrize("case", [web_case, apns_case, fcm_case], ids=["web", "ios", "android"])
def test_the_answers_of_an_interrupted_chunk_are_kept(case):
    run, received, close = case()
    try:
        with soft_time_limit(SOFT_LIMIT), pytest.raises(ChunkInterrupted) as interrupted:
            run()
        stalled, *answered = interrupted.value.partial
        assert received() == [0, 1, 1]
    finally:
        close()
    assert [outcome.kind for outcome in answered] == [OutcomeKind.SENT, OutcomeKind.SENT]
    assert all(outcome.vendor_message_id for outcome in answered)
    assert stalled.kind is OutcomeKind.RETRY
    assert stalled.reason == "no answer before the chunk was interrupted (SoftTimeLimitExceeded)"
