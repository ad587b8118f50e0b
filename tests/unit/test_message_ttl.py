"""The TTL a vendor gets is computed at the push: 0 only when the sender asked for 0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.message import Message

ACCEPTED = datetime(2026, 1, 1, tzinfo=UTC)


def message(ttl: int) -> Message:
    return Message.accepted(ACCEPTED, ttl, title="t", body="b")


def test_ttl_0_is_always_0():
    assert [message(0).remaining_ttl(ACCEPTED + timedelta(seconds=s)) for s in (0, 1, 60)] == [0, 0, 0]


def test_a_short_ttl_that_waited_in_the_queue_is_still_pushed_with_a_positive_ttl():
    """Time in pushq's queue never turns a short ttl into the vendors' special 0 ("now or never")."""
    short = message(2)
    assert short.remaining_ttl(ACCEPTED) == 2
    assert short.remaining_ttl(ACCEPTED + timedelta(seconds=1.2)) == 1  # 0.8 s left: rounded up
    assert short.remaining_ttl(ACCEPTED + timedelta(seconds=1.999)) == 1
    assert short.remaining_ttl(ACCEPTED + timedelta(seconds=2.5)) == 1  # ran out between claim and push


def test_a_long_ttl_counts_down_from_acceptance():
    assert message(3600).remaining_ttl(ACCEPTED + timedelta(seconds=100)) == 3500
    assert message(3600).remaining_ttl(ACCEPTED + timedelta(seconds=100.5)) == 3500
