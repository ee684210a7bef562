"""The outbox lease and its renewal: a push slower than its lease keeps its entry (and its plan) while its
worker lives, and only while it lives.

Each worker is a real `OutboxWorker` whose sync engine is a stub: its push runs a step the test gives it while
the push is in flight (the clock moved by hand, the worker's renewal pass, a rival worker's claim), so what
happens during a push is deterministic. The renewal thread itself is exercised once, by `run_forever`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from service.store.uow import UnitOfWork
from service.sync.worker import OutboxWorker, _Slot
from tests.integration.test_outbox_model import LEASE, T0, Clock, entry, queue
from tests.support import settings as app_settings

BEAT = 50.0  # the test's step: more than a third of a lease (a renewal is due), less than a lease


class Killed(BaseException):
    """The worker's process dies mid-push: nothing after this runs (no outcome, no more renewals)."""


class StubPush:
    """A worker's sync engine: runs `during` while the push is in flight, then succeeds (recording the push
    and finishing the entry in one transaction, as the real push does) or raises what `during` raised."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.during: Callable[[], None] = lambda: None
        self.pushed: list[str] = []

    def push(self, plan_id: str, on_recorded: Any = None) -> None:
        self.pushed.append(plan_id)
        self.during()
        if on_recorded is not None:
            with UnitOfWork(self.engine) as uow:
                on_recorded(uow)
                uow.commit()


def worker(
    engine: sa.Engine, clock: Clock, concurrency: int = 1, lease: float = LEASE
) -> tuple[OutboxWorker, StubPush]:
    config = app_settings(outbox_lease_seconds=lease, worker_poll_seconds=0.05, retain_days=0, resync_seconds=0)
    made = OutboxWorker(UnitOfWork(engine), None, config, clock, concurrency=concurrency)  # type: ignore[arg-type]
    stub = StubPush(engine)
    made.engine = stub  # type: ignore[assignment]
    made._slot = lambda: _Slot(stub, UnitOfWork(engine))  # type: ignore[method-assign,arg-type]
    return made, stub


# ---------------------------------------------------------------------- the repository


def test_a_renewal_moves_the_lease_only_while_its_claim_holds_the_entry(engine):
    clock = Clock()
    first, second = queue(engine, "plan-a", 1, T0) + queue(engine, "plan-b", 1, T0)
    with UnitOfWork(engine) as uow:
        claimed = uow.outbox.claim(T0, LEASE)
        uow.commit()
    assert claimed is not None and claimed[0] == first
    token = claimed[4]

    def renew(entry_id: int, claimed_at: datetime) -> datetime | None:
        with UnitOfWork(engine) as uow:
            until = uow.outbox.renew(entry_id, claimed_at, clock.now, LEASE)
            uow.commit()
            return until

    clock.passes(BEAT)
    assert renew(first, token) == clock.now + timedelta(seconds=LEASE)
    # the token stays the claim's (what `finish` and `held_by` are given); only the lease's end moves
    assert entry(engine, first) == ("pending", 0, token, clock.now + timedelta(seconds=LEASE))
    assert renew(first, token + timedelta(seconds=1)) is None  # another claim's token
    assert renew(second, token) is None  # never claimed
    clock.passes(LEASE + 1)  # ran out, but no one claimed it since: still this claim's
    assert renew(first, token) == clock.now + timedelta(seconds=LEASE)
    with UnitOfWork(engine) as uow:
        assert uow.outbox.finish(first, clock.now, token)
        uow.commit()
    assert renew(first, token) is None  # finished
    with UnitOfWork(engine) as uow:
        uow.outbox.prune_done(clock.now + timedelta(seconds=1), 10)
        uow.commit()
    assert renew(first, token) is None  # gone: no NotFound, the claim is simply lost


# ---------------------------------------------------------------------- the worker


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_push_slower_than_its_lease_keeps_its_entry_while_its_worker_renews(engine, concurrency):
    clock = Clock()
    (slow, stub), (rival, _) = worker(engine, clock, concurrency), worker(engine, clock)
    first, second = queue(engine, "plan-a", 2, T0)
    seen: list[tuple[Any, ...]] = []

    def in_flight() -> None:
        for _ in range(5):  # 250 s in all, two leases and more
            clock.passes(BEAT)
            slow.renew_leases()  # what the renewal thread does a third of a lease after the last renewal
            seen.append(entry(engine, first))
            assert rival._claim() is None  # neither the entry nor its plan's next one

    stub.during = in_flight
    assert slow.run_until_idle(limit=1) == 1
    for beat, row in enumerate(seen, start=1):
        now = T0 + timedelta(seconds=BEAT * beat)
        assert row == ("pending", 0, T0, now + timedelta(seconds=LEASE)), beat
    assert entry(engine, first)[:3] == ("done", 1, None)  # finished with its token: renewals kept it
    after = rival._claim()
    assert after is not None and after[0] == second
    assert stub.pushed == ["plan-a"]


def test_without_renewals_a_slower_push_loses_its_entry_to_a_second_worker(engine):
    """The control for the test above: the same push, nobody renewing. The second worker takes the entry as
    soon as the lease runs out, and the first worker's outcome is then left out."""
    clock = Clock()
    (slow, stub), (rival, _) = worker(engine, clock), worker(engine, clock)
    (first,) = queue(engine, "plan-a", 1, T0)
    taken: list[Any] = []

    def in_flight() -> None:
        clock.passes(LEASE - 1)
        taken.append(rival._claim())
        clock.passes(1)
        taken.append(rival._claim())

    stub.during = in_flight
    assert slow.process_one()
    assert taken[0] is None and taken[1] is not None and taken[1][0] == first
    assert entry(engine, first) == ("pending", 0, clock.now, clock.now + timedelta(seconds=LEASE))


def test_a_renewal_that_finds_the_claim_lost_stops_and_the_outcome_is_left_out(engine, caplog):
    clock = Clock()
    (slow, stub), (rival, _) = worker(engine, clock), worker(engine, clock)
    (first,) = queue(engine, "plan-a", 1, T0)
    renewed: list[int] = []
    again: list[Any] = []

    def in_flight() -> None:
        clock.passes(BEAT)
        renewed.append(slow.renew_leases())  # until t+170
        clock.passes(LEASE + 1)  # the worker stalls past its lease (no renewal): another claims it
        again.append(rival._claim())
        clock.passes(BEAT)
        renewed.append(slow.renew_leases())  # finds the claim lost
        clock.passes(BEAT)
        renewed.append(slow.renew_leases())  # and tries no more

    stub.during = in_flight
    with caplog.at_level(logging.WARNING, logger="service.sync.worker"):
        assert slow.process_one()
    assert renewed == [1, 0, 0]
    assert again[0] is not None and again[0][0] == first
    rival_token = T0 + timedelta(seconds=BEAT + LEASE + 1)
    # the rival's claim and lease are untouched by the late renewal and by the late finish
    assert entry(engine, first) == ("pending", 0, rival_token, rival_token + timedelta(seconds=LEASE))
    lost = [r.getMessage() for r in caplog.records if "no longer renewing" in r.getMessage()]
    assert lost == [
        f"outbox {first} plan plan-a: its lease ran out and another worker claimed it (or it went); "
        "no longer renewing it"
    ]
    assert any("outcome is left out" in r.getMessage() for r in caplog.records)
    rival._handle(again[0], rival.uow)
    assert entry(engine, first)[:3] == ("done", 1, None)


def test_when_its_worker_dies_the_entry_comes_due_again_one_lease_after_the_last_renewal(engine):
    clock = Clock()
    (dying, stub), (rival, _) = worker(engine, clock), worker(engine, clock)
    (first,) = queue(engine, "plan-a", 1, T0)

    def in_flight() -> None:
        clock.passes(BEAT)
        dying.renew_leases()
        clock.passes(BEAT)
        dying.renew_leases()  # the last renewal: until t+220
        raise Killed

    stub.during = in_flight
    with pytest.raises(Killed):
        dying.process_one()
    assert dying.renew_leases() == 0  # nothing in flight: the dead push is renewed no more
    clock.now = T0 + timedelta(seconds=2 * BEAT + LEASE) - timedelta(microseconds=1)
    assert rival._claim() is None
    clock.passes(0.000001)
    again = rival._claim()
    assert again is not None and again[0] == first
    rival._handle(again, rival.uow)
    assert entry(engine, first)[:3] == ("done", 1, None)


def test_the_renewal_thread_renews_in_flight_pushes_and_stops_with_the_worker(engine):
    """run_forever's renewal thread paces itself by real time (never by the clock the tests move), so here the
    lease is short: 0.3 s, renewed every 0.1 s. The test waits for renewals to show, not for time to pass."""
    clock = Clock()
    slow, stub = worker(engine, clock, concurrency=2, lease=0.3)
    rival, _ = worker(engine, clock)
    (first,) = queue(engine, "plan-a", 1, T0)
    started, release = threading.Event(), threading.Event()

    def in_flight() -> None:
        started.set()
        assert release.wait(30)

    def until(what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline, what
            release.wait(0.01)

    stub.during = in_flight
    stop = threading.Event()
    runner = threading.Thread(target=slow.run_forever, args=(stop,))
    runner.start()
    try:
        assert started.wait(30)
        thread = slow._leases._thread
        assert thread is not None and thread.is_alive()
        until("renewed by the thread", lambda: slow._leases.renewals >= 2)
        for _ in range(3):  # past the first lease, each step short of the lease last renewed
            clock.passes(0.2)
            lease_end = clock.now + timedelta(seconds=0.3)
            until(f"renewed by the thread until {lease_end}", lambda: entry(engine, first)[3] == lease_end)  # noqa: B023
            assert entry(engine, first)[:3] == ("pending", 0, T0)
            assert rival._claim() is None
        stop.set()
    finally:
        stop.set()
        release.set()
        runner.join(30)
    assert not runner.is_alive()
    assert entry(engine, first)[:3] == ("done", 1, None)  # stopping let the push under way finish
    assert slow._leases._thread is None and not thread.is_alive()
