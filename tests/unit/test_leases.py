"""The lease keeper both workers share (service.leases), by itself: what a renewal that finds its claim gone
does, with a hand-moved clock and a stand-in for the repository's token-checked renewal."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from service.leases import Hold, LeaseKeeper, Renew
from service.store.uow import UnitOfWork

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = 300.0  # long: the keeper's own thread never comes due during a test


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def keeper(clock: Clock, renew: Renew) -> LeaseKeeper:
    return LeaseKeeper(
        sa.create_engine("sqlite://"),
        renew,
        lease_seconds=lambda: LEASE,
        poll_seconds=lambda: 0.05,
        clock=clock,
        kind="outbox",
        thread_name="test-lease",
        log=logging.getLogger("test.leases"),
    )


@pytest.fixture
def stop() -> Iterator[list[LeaseKeeper]]:
    keepers: list[LeaseKeeper] = []
    yield keepers
    for k in keepers:
        k.stop()


def lost_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "no longer renewing" in r.getMessage()]


def test_a_claim_found_lost_is_logged_by_its_ids_and_renewed_no_more(clock, stop, caplog) -> None:
    calls: list[tuple[int, datetime]] = []

    def renew(uow: UnitOfWork, hold: Hold, now: datetime) -> bool:
        calls.append((hold.id, now))
        return len(calls) == 1  # the first renewal keeps the claim, the second finds it lost

    leases = keeper(clock, renew)
    stop.append(leases)
    hold = leases.hold(7, T0, label="plan p-1")
    assert leases.renew_due(by_clock=True) == 0  # not a third of a lease old yet
    clock.now += timedelta(seconds=LEASE / 3)
    assert leases.renew_due(by_clock=True) == 1
    assert hold.renewed == clock.now and not hold.lost
    clock.now += timedelta(seconds=LEASE / 3)
    with caplog.at_level(logging.WARNING, logger="test.leases"):
        assert leases.renew_due(by_clock=True) == 0
    assert hold.lost
    assert lost_lines(caplog) == [
        "outbox 7 plan p-1: its lease ran out and another worker claimed it (or it went); no longer renewing it"
    ]
    clock.now += timedelta(seconds=LEASE)
    assert leases.renew_due(by_clock=True) == 0
    assert [c[0] for c in calls] == [7, 7]  # a lost claim is tried no more
    assert leases.renewals == 1


def test_regression_a_claim_settled_while_its_renewal_runs_is_no_loss(clock, stop, caplog) -> None:
    # The outbox worker's push records its outcome setting `settled` without the hold's lock (it must not wait
    # for a renewal that may wait for its transaction): the renewal then finds the entry finished. That is the
    # claim's own outcome, not another worker's claim: no loss, no warning.
    def renew(uow: UnitOfWork, hold: Hold, now: datetime) -> bool:
        hold.settled = True  # what OutboxWorker's finish() does meanwhile
        return False

    leases = keeper(clock, renew)
    stop.append(leases)
    hold = leases.hold(8, T0)
    clock.now += timedelta(seconds=LEASE / 3)
    with caplog.at_level(logging.WARNING, logger="test.leases"):
        assert leases.renew_due(by_clock=True) == 0
    assert hold.settled and not hold.lost
    assert lost_lines(caplog) == []
