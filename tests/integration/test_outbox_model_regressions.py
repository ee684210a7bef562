"""Deterministic cases found by the outbox model (tests/integration/test_outbox_model.py), kept as plain tests."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.store.uow import UnitOfWork
from tests.integration.test_outbox_model import entry
from tests.outbox_model_support import (
    LEASE,
    Clock,
    model_worker,
    queue,
)

# ---------------------------------------------------------------------- regressions found by the model
#
# A worker's lease ran out while it was still working (a slow push, not a dead worker); another worker
# claimed the entry again, as the lease promises. Then the first worker's late outcome was written over the
# newer claim: its finish marked the entry done (and a second finish counted a second attempt), its failure
# cleared the newer claim's hold and set a backoff, and either let a third worker claim the plan's next entry
# while the newer claim was still pushing the plan. Fixed: a claim carries its token (claimed_at), and an
# outcome is recorded only while that claim still holds the entry (`OutboxRepository.finish(...,
# claimed_at)`, `held_by`).


@pytest.mark.parametrize("outcome", ["recorded", "nothing", "server error", "unexpected"])
def test_a_late_outcome_leaves_the_entry_and_its_plan_to_the_newer_claim(engine, outcome):
    clock = Clock()
    (w1, slow), (w2, _), (w3, _) = (model_worker(engine, clock) for _ in range(3))
    first, second = queue(engine, "plan-a", 2, clock.now)
    taken = w1._claim()
    assert taken is not None and taken[0] == first
    clock.passes(LEASE + 1)  # w1 is still pushing; its lease has run out
    again = w2._claim()
    assert again is not None and again[0] == first
    slow.outcome = outcome
    w1._handle(taken, w1.uow)  # w1 finishes late
    # the entry is still w2's, and so is the plan: w3 does not take the plan's next push
    assert entry(engine, first) == ("pending", 0, clock.now, clock.now + timedelta(seconds=LEASE))
    assert w3._claim() is None
    w2._handle(again, w2.uow)
    assert entry(engine, first)[:3] == ("done", 1, None)
    after = w3._claim()
    assert after is not None and after[0] == second


def test_a_late_finish_of_an_entry_finished_meanwhile_changes_nothing(engine):
    clock = Clock()
    (w1, _), (w2, _) = (model_worker(engine, clock) for _ in range(2))
    (only,) = queue(engine, "plan-a", 1, clock.now)
    taken = w1._claim()
    clock.passes(LEASE + 1)
    again = w2._claim()
    assert taken is not None and again is not None and again[0] == only
    w2._handle(again, w2.uow)
    finished_at = clock.now
    clock.passes(30)
    w1._handle(taken, w1.uow)  # counted a second attempt and moved updated_at (so a prune came later)
    with UnitOfWork(engine) as uow:
        row = uow.outbox.get(only)
        assert (row.status, row.attempts, row.claimed_at, row.updated_at) == ("done", 1, None, finished_at)
