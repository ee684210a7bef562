"""The delivery worker's lease and its renewal: an attempt that outlives its lease keeps its delivery (and its
subscription's turn) while its worker lives, so a second worker never sends the same change at once nor lets
the next change overtake it; a worker that stalled past its lease, whose delivery another worker claimed
since, leaves its outcome out.

What is slow is the URL's check before the POST (a DNS answer: `OutboundGuard.check` resolves the host, and
nothing bounds that by PLANBRIDGE_DELIVERY_TIMEOUT), given by the test's own resolver, which runs a step while
the attempt is in flight (the clock moved by hand, the worker's renewal pass, a rival worker's claim).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

from service.notify.ssrf import OutboundGuard
from service.notify.worker import DeliveryWorker
from service.store.uow import UnitOfWork
from tests.integration.test_notify import LOOPBACK, Notify
from tests.support import Clock

HOST = "hooks.team.test"


class SlowDns:
    """A resolver that answers 127.0.0.1 after running `during` (once per lookup)."""

    def __init__(self) -> None:
        self.during: Callable[[], None] = lambda: None

    def __call__(self, host: str, port: int) -> list[str]:
        during, self.during = self.during, (lambda: None)
        during()
        return ["127.0.0.1"]


def worker(notify: Notify, clock: Clock, resolver: SlowDns | None = None) -> DeliveryWorker:
    guard = OutboundGuard(LOOPBACK, resolver=resolver or (lambda host, port: ["127.0.0.1"]))
    return DeliveryWorker(UnitOfWork(notify.engine), notify.settings, clock, guard, concurrency=1)


def world(engine, receivers) -> tuple[Notify, object, dict]:
    """A database, a clock, a receiver and a subscription to it by host name (resolved by the test)."""
    notify = Notify(engine)
    notify.guard = OutboundGuard(LOOPBACK, resolver=lambda host, port: ["127.0.0.1"])
    receiver = receivers()
    return notify, receiver, notify.subscribe(f"http://{HOST}:{receiver.port}/hook")


def row(notify: Notify, delivery_id: int) -> tuple:
    with UnitOfWork(notify.engine) as uow:
        found = uow.deliveries.get(delivery_id)
        return found.status, found.attempts, found.claimed_at, found.next_attempt_at


def test_an_attempt_slower_than_its_lease_keeps_its_delivery_while_its_worker_renews(engine, receivers):
    notify, receiver, sub = world(engine, receivers)
    for version in (1, 2):
        notify.change("plan-a", version=version)
    clock, dns = notify.clock, SlowDns()
    slow, rival = worker(notify, clock, dns), worker(notify, clock)
    lease = slow.lease
    first, second = (d["id"] for d in notify.deliveries(sub["id"]))
    start = clock.now
    seen: list[tuple] = []
    rival_claims: list[object] = []

    def in_flight() -> None:
        for _ in range(5):  # well past two leases in all
            clock.now += lease / 2
            slow.renew_leases()  # what the renewal thread does a third of a lease after the last renewal
            seen.append(row(notify, first))
            rival_claims.append(rival._claim())  # neither the delivery nor the subscription's next one

    dns.during = in_flight
    assert slow.process_one()
    assert rival_claims == [None] * 5
    for beat, (status, attempts, claimed_at, until) in enumerate(seen, start=1):
        assert (status, attempts, claimed_at) == ("pending", 0, start), beat
        assert until == start + beat * lease / 2 + lease, beat  # renewed from each beat's now
    assert row(notify, first)[:3] == ("delivered", 1, None)  # recorded with its token: the renewals kept it
    assert [p["data"]["sequence"] for p in receiver.payloads()] == [1]  # sent once, by the one worker
    assert rival.run_until_idle() == 1  # then the next change, in order
    assert [p["data"]["sequence"] for p in receiver.payloads()] == [1, 2]
    assert row(notify, second)[:2] == ("delivered", 1)


def test_a_stalled_worker_whose_delivery_was_claimed_again_leaves_its_outcome_out(engine, receivers, caplog):
    """Without the claim's token, the stalled worker's outcome ended the newer claim: a third worker then sent
    the subscription's next change while the newer claim was still sending the first."""
    notify, receiver, sub = world(engine, receivers)
    for version in (1, 2):
        notify.change("plan-a", version=version)
    clock, dns = notify.clock, SlowDns()
    stalled, second, third = worker(notify, clock, dns), worker(notify, clock), worker(notify, clock)
    first = notify.deliveries(sub["id"])[0]["id"]
    newer: list = []

    def stall() -> None:  # no renewal: the process stood still past its lease (swapped out, paused, ...)
        clock.now += stalled.lease + timedelta(seconds=1)
        newer.append(second._claim())

    dns.during = stall
    assert stalled.process_one()
    (claim,) = newer
    assert claim is not None and claim.delivery_id == first and claim.claimed_at == clock.now
    status, attempts, claimed_at, _until = row(notify, first)
    assert (status, attempts, claimed_at) == ("pending", 0, clock.now)  # still the newer claim's
    assert "this attempt's outcome is left out" in caplog.text
    assert third._claim() is None  # the next change waits while the first is in flight
    second.deliver(claim)
    assert row(notify, first)[:3] == ("delivered", 1, None)
    assert third.run_until_idle() == 1
    assert [p["data"]["sequence"] for p in receiver.payloads()] == [1, 1, 2]  # at least once, in order


def test_the_renewal_thread_holds_the_delivery_by_real_time(engine, receivers):
    """run_until_idle with the real clock and a short lease: a rival polling all along never gets a claim."""
    from service.api.container import utcnow

    notify, receiver, sub = world(engine, receivers)
    notify.change("plan-a")
    dns = SlowDns()
    slow, rival = worker(notify, utcnow, dns), worker(notify, utcnow)
    slow.lease = slow._leases.lease = timedelta(seconds=0.6)
    taken: list[object] = []
    done = threading.Event()

    def in_flight() -> None:
        deadline = time.monotonic() + 2.0  # more than three leases
        while time.monotonic() < deadline:
            taken.append(rival._claim())
            time.sleep(0.05)
        done.set()

    dns.during = in_flight
    assert slow.run_until_idle() == 1
    assert done.is_set() and len(taken) > 10
    assert [t for t in taken if t is not None] == []
    assert slow._leases.renewals >= 3
    assert notify.deliveries(sub["id"])[0]["status"] == "delivered"
    assert len(receiver.received) == 1
