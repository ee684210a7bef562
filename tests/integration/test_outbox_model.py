"""A model-based test of the outbox and its workers: producers, several workers and an operator, interleaved
in any order by hypothesis, on the real databases (SQLite file, PostgreSQL).

The outbox is what is modelled, not the FHIR server: each worker is a real `OutboxWorker` (its own unit of
work, as a separate `planbridge worker` process has) whose sync engine is a stub that records which plan it
pushes and succeeds or fails as the step says. The rules:

- producers queue entries (push_plan, push_goal, now and then a pull_plan) for three plans, through
  `OutboxRepository.add` in a unit of work, as the event intake does;
- each of three workers claims (`OutboxWorker._claim`, the claim `run_until_idle` makes), renews the lease
  of a claim it holds, or held once (`OutboxRepository.renew`, token-checked), finishes it (`_handle`: the
  push recorded with the entry's finish in its transaction, or nothing to record), fails it (a retryable
  server error, a refusal retrying cannot fix, an unexpected exception: each backs off, the last allowed
  attempt parks it dead), or crashes holding it (never finished: the lease runs out);
- a slow push: while a worker's `_handle` is in flight the clock moves in beats (10 s to more than a lease),
  with or without the worker's renewals (`OutboxWorker.renew_leases`, what its renewal thread does), and
  then another worker tries to claim;
- on PostgreSQL, two claims overlap: one worker's claim transaction is open while another worker claims;
- one worker drains the queue (`run_until_idle`, one push at a time or three plans at once);
- the clock moves (backoff, lease expiry); the operator replays an entry (`replay_outbox_entry`: dead
  ones only) and prunes done entries (`prune_done`, oldest first, in batches).

The model knows every entry (plan, kind, status, attempts, due time, the claim holding it) and which
worker holds which claim; from the claim's documented rules (`OutboxRepository.claim_next`, `_claim_next_query`)
it predicts which entry each claim takes. After every step the database must hold exactly the model's
entries, and:

1. no entry is held by two workers whose leases are valid, and no plan has two entries held at once (by
   valid leases in the workers' view, and by `claimed_at` in the database);
2. nothing is lost: every entry added is pending, held, done or dead; only a prune removes one, and only a
   done one last touched before the cutoff;
3. per-plan order: each claim takes the entry the model predicts, the oldest one the claim may take: a push
   not while an earlier entry of its plan is due, the plan is held, or an earlier push of it backs off; a
   re-read (pull_plan) not while the plan is held or an earlier re-read is due (a re-read may pass a push,
   documented in `_claim_next_query`). A drain pushes each plan's entries in that order, never one plan twice
   at once, and each push runs while its plan holds exactly that one entry;
4. a claim whose worker crashed is claimed again only once its lease has run out, and then once;
5. a failed entry is not claimed before its `next_attempt_at`, which is one backoff (`worker.backoff`) ahead;
   attempts never decrease except by a replay (which resets them to 0, documented);
6. a dead entry is never claimed (until replayed);
7. a worker whose lease ran out and whose entry another worker claimed since leaves that entry alone when it
   finishes or fails late: the newer claim keeps its hold on the plan (see the regression tests below); a late
   outcome for an entry pruned meanwhile raises NotFound (as test_push_finish has it) and writes nothing;
8. a renewal moves the lease's end (never the token, claimed_at) exactly while its claim still holds the entry
   (a lease that ran out with no claim since included); a superseded, finished or pruned claim's renewal is
   refused and writes nothing. The worker renews an in-flight push a third of a lease after its last renewal,
   stops at the first refusal, and a push whose worker renews is never claimed by another worker meanwhile.

Allowed, and counted: SQLite gives a new entry the id of a pruned one when that was the newest (the table has
no AUTOINCREMENT); ids stay in the order entries were added, which is what the claim orders by.

By default 60 examples of up to 30 steps per database (about 10 s each); derandomized, so CI runs the same
interleavings every time. A soak, e.g.:

    PLANBRIDGE_OUTBOX_MODEL_EXAMPLES=300 PLANBRIDGE_OUTBOX_MODEL_STEPS=60 \\
        .venv/bin/pytest tests/integration/test_outbox_model.py -x -rA

(`PLANBRIDGE_OUTBOX_MODEL_EXAMPLES` set, or PLANBRIDGE_OUTBOX_MODEL_RANDOM=1, explores new interleavings each
run; PLANBRIDGE_OUTBOX_MODEL_SHRINK=1 shrinks a failure.) A failure names the invariant and prints the steps
in words; each failure found so far is a plain test at the end of this file.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    rule,
)

from service.api.plans import replay_outbox_entry
from service.domain.errors import NotFound, RuleViolation
from service.store.uow import UnitOfWork
from service.sync.worker import OutboxWorker
from tests.model_support import ModelRun
from tests.outbox_model_support import (  # noqa: F401
    ERRORS,
    KINDS,
    LEASE,
    MAX_ATTEMPTS,
    PLANS,
    SLOTS,
    T0,
    WORKERS,
    Clock,
    Entry,
    Held,
    ModelViolation,
    OutboxModelRules,
    StubPush,
    backoff_bounds,
    model_worker,
    queue,
)

RUN = ModelRun.from_env("PLANBRIDGE_OUTBOX_MODEL", examples=60, steps=30)


def outbox_machine(engine: sa.Engine, stats: Counter) -> type[RuleBasedStateMachine]:
    """Return the state machine class for one database, counting into `stats`."""
    postgres = engine.dialect.name == "postgresql"

    class OutboxModel(OutboxModelRules, RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            stats["examples"] += 1
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM outbox"))
            self.now = T0
            self.entries: dict[int, Entry] = {}
            self.pruned: set[int] = set()
            self.workers: dict[str, tuple[OutboxWorker, StubPush]] = {
                name: model_worker(engine, lambda: self.now) for name in WORKERS
            }
            self.held: dict[str, list[Held]] = {name: [] for name in WORKERS}
            self.attempts_seen: dict[int, int] = {}
            self.violation: ModelViolation | None = None  # raised inside a push, which would record it as a failure
            self.log: list[str] = []
            self.step = 0

        # ------------------------------------------------------------------ helpers

        def begin(self, what: str) -> None:
            self.step += 1
            stats["steps"] += 1
            stats[what] += 1

        def db_rows(self) -> dict[int, Any]:
            with UnitOfWork(engine) as uow:
                return {r.id: r for r in uow.outbox.list()}

        def took(self, name: str, claimed: tuple[Any, ...] | None, how: str) -> None:
            """Check a claim against the model (rules 3-6) and record it."""
            expected = self.expected_claim()
            got = f"#{claimed[0]}" if claimed else "nothing"
            self.note(f"{name} {how} -> {got} (model: {f'#{expected.id}' if expected else 'nothing'})")
            stats["claims that took an entry" if claimed else "claims that found nothing"] += 1
            if claimed is None:
                if expected is not None:
                    self.fail(f"{name} claimed nothing, but #{expected.id} ({expected.plan}) was due and free")
                return
            entry = self.entries.get(claimed[0])
            if entry is None:
                self.fail(f"{name} claimed #{claimed[0]}, which the model does not know")
            assert entry is not None
            if entry.status == "dead":
                self.fail(f"rule 6: {name} claimed dead entry #{entry.id}")
            if entry.status == "done":
                self.fail(f"rule 2: {name} claimed done entry #{entry.id}")
            if entry.due > self.now:
                what = "its lease" if entry.claimed_at else "its backoff"
                self.fail(f"rule 4/5: {name} claimed #{entry.id} before {what} ran out ({entry.due})")
            if expected is None or expected.id != entry.id:
                self.fail(
                    f"rule 1/3: {name} claimed #{entry.id} ({entry.plan} {entry.kind}); by the claim's rules the "
                    f"next was {f'#{expected.id}' if expected else 'none'}"
                )
            if (claimed[1], claimed[2]) != (entry.plan, entry.kind):
                self.fail(f"{name} claimed #{entry.id} as {claimed[1:3]}, it is {entry.plan} {entry.kind}")
            if entry.claimed_at is not None:
                stats["claims after a lease ran out"] += 1
            entry.claimed_at, entry.due = self.now, self.now + timedelta(seconds=LEASE)
            self.held[name].append(Held(claimed, self.now, entry.due))
            self.check_holds()

        def learn_new(self, plan_id: str, kinds: list[str]) -> None:
            rows = self.db_rows()
            new = sorted(i for i in rows if i not in self.entries)
            if len(new) != len(kinds):
                self.fail(f"rule 2: {len(kinds)} entries added, {len(new)} new rows ({new})")
            if self.entries and new and min(new) < max(self.entries):
                self.fail(f"rule 3: new entries {new} sort before older ones (max {max(self.entries)})")
            # SQLite reuses the id of a pruned entry when it was the newest (no AUTOINCREMENT): counted, allowed.
            stats["ids reused after a prune"] += len(self.pruned.intersection(new))
            for entry_id, kind in zip(new, kinds, strict=True):
                self.entries[entry_id] = Entry(entry_id, plan_id, kind, due=self.now, updated=self.now)

        # ------------------------------------------------------------------ producers

        def produce(self, plan: str, kinds: list[str]) -> None:
            with UnitOfWork(engine) as uow:
                for kind in kinds:
                    uow.outbox.add(plan, kind, None, f"event-{self.step}", self.now)
                uow.commit()
            self.learn_new(plan, kinds)
            self.note(f"add {plan}: {kinds} -> {sorted(self.entries)[-len(kinds) :]}")

        # ------------------------------------------------------------------ workers

        @rule(
            action=st.sampled_from(["claim", "claim", "work", "work", "slow", "crash", "renew", "overlap"]),
            name=st.sampled_from(WORKERS),
            other=st.sampled_from(WORKERS),
            which=st.integers(0, 5),
            outcome=st.sampled_from(["recorded", "nothing", *sorted(ERRORS)]),
            beats=st.lists(st.sampled_from([10, 41, 80, 121]), min_size=1, max_size=3),
            heartbeat=st.booleans(),
        )
        def worker(
            self, action: str, name: str, other: str, which: int, outcome: str, beats: list[int], heartbeat: bool
        ) -> None:
            """A worker claims, or one holding a claim works it (`outcome`: done, or failed with an error), works it
            slowly (time passes in `beats` while the push is in flight, renewed by its worker or not, then `other`
            claims), dies holding it, or renews its lease; on PostgreSQL two workers' claims overlap. (One rule:
            hypothesis' swarm testing leaves whole rules out of an example, which would leave claims without
            outcomes, or outcomes without claims.)"""
            if action == "overlap" and postgres and name != other:
                self.overlapping_claims(name, other)
            elif action in ("claim", "overlap") or not self.holding():
                self.begin("claim")
                if len(self.held[name]) >= SLOTS:
                    self.note(f"{name} has no free slot")
                    return
                worker, _ = self.workers[name]
                self.took(name, worker._claim(), "claims")
            elif action == "crash":
                self.crash(which)
            elif action == "renew":
                self.renew(which)
            elif action == "slow":
                self.begin("slow push")
                self.run_claim(*self.pick(which), outcome, beats, heartbeat, other)
            else:
                self.begin("fail" if outcome in ERRORS else "finish")
                self.run_claim(*self.pick(which), outcome)

        def run_claim(
            self,
            name: str,
            held: Held,
            outcome: str,
            beats: list[int] | None = None,
            heartbeat: bool = False,
            rival: str | None = None,
        ) -> None:
            worker, stub = self.workers[name]
            stub.outcome = outcome
            if held.entry_id in self.entries and beats:
                self.slow_push(name, held, outcome, beats, heartbeat, rival)
                return
            self.release(name, held)
            if held.entry_id not in self.entries:  # finished by a newer claim and pruned since
                stats[f"outcome {outcome} (entry gone)"] += 1
                self.note(f"{name} works #{held.entry_id}: {outcome}, but the entry was pruned")
                try:
                    worker._handle(held.claimed, worker.uow)
                except NotFound:
                    return
                self.fail(f"{name}'s outcome for #{held.entry_id}, pruned, was recorded somewhere")
            entry = self.entries[held.entry_id]
            late = self.stale(held)
            stats[f"outcome {outcome}{' (late)' if late else ''}"] += 1
            self.note(f"{name} works #{entry.id} ({entry.plan}): {outcome}{' (its claim is stale)' if late else ''}")
            worker._handle(held.claimed, worker.uow)
            self.outcome_recorded(held, outcome, late)

        def slow_push(
            self, name: str, held: Held, outcome: str, beats: list[int], heartbeat: bool, rival: str | None
        ) -> None:
            """`name` works its claim while time passes in `beats`; after each, with `heartbeat`, its worker renews
            what is due (rule 8). Then `rival` claims, still during the push. The outcome is recorded as usual,
            left out if the claim went stale meanwhile (rule 7)."""
            worker, stub = self.workers[name]
            entry = self.entries[held.entry_id]
            was_late = self.stale(held)
            last, lost = held.since, False  # the worker's own record of its last renewal (it starts at the claim)
            self.note(
                f"{name} starts a slow push of #{entry.id} ({entry.plan}), "
                f"{'renewing' if heartbeat else 'not renewing'}{' (its claim is stale)' if was_late else ''}"
            )

            def in_flight() -> None:
                nonlocal last, lost
                try:
                    for seconds in beats:
                        self.now += timedelta(seconds=seconds)
                        if not heartbeat:
                            self.note(f"{seconds} s pass while {name} pushes #{entry.id}")
                            continue
                        got = worker.renew_leases()
                        want = 0
                        if not lost and self.now - last >= timedelta(seconds=LEASE / 3):
                            if self.stale(held):
                                lost = True
                                stats["worker renewals refused (claim lost)"] += 1
                            else:
                                entry.due = held.until = self.now + timedelta(seconds=LEASE)
                                last, want = self.now, 1
                                stats["worker renewals"] += 1
                        self.note(f"{seconds} s pass while {name} pushes #{entry.id}; it renews {got} (model {want})")
                        if got != want:
                            self.fail(f"rule 8: {name}'s worker renewed {got} lease(s), the model expected {want}")
                        self.check_holds()
                    if rival is not None and rival != name and len(self.held[rival]) < SLOTS:
                        rival_worker, _ = self.workers[rival]
                        claimed = rival_worker._claim()
                        self.took(rival, claimed, f"claims while {name} pushes #{entry.id}")
                        if heartbeat and not was_late and claimed is not None and claimed[0] == entry.id:
                            self.fail(f"rule 8: {rival} claimed #{entry.id} while {name}'s worker renewed its lease")
                        stats[
                            "slow push: the rival took it"
                            if claimed and claimed[0] == entry.id
                            else "slow push: the rival did not"
                        ] += 1
                except ModelViolation as exc:
                    self.violation = exc
                    raise

            stub.during = in_flight
            try:
                worker._handle(held.claimed, worker.uow)
            finally:
                stub.during = None
                self.release(name, held)
            if self.violation is not None:
                raise self.violation
            late = self.stale(held)
            stats[f"slow push outcome {outcome}{' (late)' if late else ''}"] += 1
            self.note(f"{name} ends its push of #{entry.id}: {outcome}{' (its claim is stale)' if late else ''}")
            self.outcome_recorded(held, outcome, late)

        def renew(self, which: int) -> None:
            """A worker renews a claim it holds, or held once: it must hold the entry still (rule 8)."""
            self.begin("renew")
            name, held = self.pick(which)
            with UnitOfWork(engine) as uow:
                until = uow.outbox.renew(held.entry_id, held.since, self.now, LEASE)  # since: the claim's token
                uow.commit()
            entry = self.entries.get(held.entry_id)
            if entry is None:
                how = "pruned"
            elif self.stale(held):
                how = "superseded" if entry.status == "pending" else entry.status
            else:
                how = "held" if held.until > self.now else "held, its lease ran out"
            stats[f"renewals ({how})"] += 1
            self.note(f"{name} renews #{held.entry_id} ({how}) -> {'refused' if until is None else 'renewed'}")
            if how.startswith("held"):
                assert entry is not None
                want = self.now + timedelta(seconds=LEASE)
                if until != want:
                    self.fail(f"rule 8: {name}'s renewal of #{entry.id}, which it holds, gave {until}, not {want}")
                entry.due = held.until = want  # the token (claimed_at) stays
            elif until is not None:
                self.fail(f"rule 8: {name}'s renewal of #{held.entry_id} ({how}) was accepted")

        def overlapping_claims(self, first: str, second: str) -> None:
            """`first` has claimed in a transaction not yet committed while `second` claims: SKIP LOCKED passes
            over the locked entry, and a claim of the same plan waits for the first and is refused by the
            held-plan index (the worker claims again)."""
            self.begin("overlapping claims")
            if len(self.held[first]) >= SLOTS or len(self.held[second]) >= SLOTS:
                return
            second_worker, _ = self.workers[second]
            result: dict[str, Any] = {}
            uow = UnitOfWork(engine)
            with uow:
                claimed_first = uow.outbox.claim(self.now, LEASE)
                pid = uow.session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

                def run() -> None:
                    try:
                        result["claimed"] = second_worker._claim()
                    except Exception as exc:  # reported below
                        result["error"] = exc

                thread = threading.Thread(target=run)
                thread.start()
                deadline = time.monotonic() + 20
                while thread.is_alive() and not self.waits_on(pid):
                    if time.monotonic() > deadline:
                        self.fail("the second claim neither finished nor waited for the first")
                    thread.join(0.005)
                blocked = thread.is_alive()
                uow.commit()
            thread.join(20)
            if thread.is_alive() or "error" in result:
                self.fail(f"the overlapping claim of {second} failed: {result.get('error')}")
            stats["overlapping claims (waited)" if blocked else "overlapping claims"] += 1
            self.took(first, claimed_first, "claims (transaction open)")
            self.took(second, result["claimed"], f"claims meanwhile{' (waited)' if blocked else ''}")

        def waits_on(self, pid: int) -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND :pid = ANY(pg_blocking_pids(pid))"
                        ),
                        {"pid": pid},
                    ).scalar_one()
                )

        def drain(self, concurrency: int, failing: set[str]) -> None:
            """A fresh worker runs `run_until_idle` (pushes of plans in `failing` fail): it takes every entry the
            claim's rules allow, each plan's in order, one at a time per plan."""
            self.begin(f"drain x{concurrency}")
            worker, stub = model_worker(engine, lambda: self.now, concurrency)
            stub.failing_plans = failing
            expected: list[Entry] = []
            while (entry := self.expected_claim()) is not None:  # what the drain takes, in the claim's order
                expected.append(entry)
                entry.attempts += 1
                entry.claimed_at, entry.updated = None, self.now
                if entry.plan not in failing:
                    entry.status = "done"
                elif entry.attempts >= MAX_ATTEMPTS:
                    entry.status = "dead"
                else:
                    entry.due = self.now + backoff_bounds(entry.attempts)[0]  # read back below
            taken = worker.run_until_idle()
            self.note(
                f"drain by a new worker x{concurrency}{f' ({sorted(failing)} failing)' if failing else ''}: "
                f"took {taken}, model {[e.id for e in expected]}"
            )
            if stub.overlaps:
                self.fail(f"rule 1: the drain pushed {stub.overlaps} twice at once")
            pushed = list(stub.pushed)
            if any(len(ids) != 1 for _, ids in pushed):
                self.fail(f"rule 1: a push ran while its plan did not hold exactly one entry: {pushed}")
            for plan in PLANS:
                got = [ids[0] for p, ids in pushed if p == plan]
                want = [e.id for e in expected if e.plan == plan]
                if got != want:
                    self.fail(f"rule 3: the drain worked {plan}'s entries {got}, the model expected {want}")
            if taken != len(expected):
                self.fail(f"the drain took {taken} entries, the model expected {len(expected)}")
            rows = self.db_rows()
            for entry in expected:
                if entry.status == "pending":
                    entry.due = rows[entry.id].next_attempt_at
                    low, high = backoff_bounds(entry.attempts)
                    if not self.now + low <= entry.due <= self.now + high:
                        self.fail(f"rule 5: #{entry.id} backs off to {entry.due}, not {low}..{high} after {self.now}")
            # Any claim a model worker held on these entries ran out: theirs are stale now.

        # ------------------------------------------------------------------ time and the operator

        def replay(self, which: int, dead_one: bool) -> None:
            self.begin("replay")
            pool = [e for e in self.entries.values() if e.status == "dead"] if dead_one else list(self.entries.values())
            if not pool:
                return
            entry = pool[which % len(pool)]
            try:
                replay_outbox_entry(UnitOfWork(engine), entry.id, self.now)
            except RuleViolation:
                self.note(f"operator replays #{entry.id} ({entry.status}): refused")
                if entry.status == "dead":
                    self.fail(f"a replay of dead entry #{entry.id} was refused")
                return
            self.note(f"operator replays #{entry.id} ({entry.status})")
            if entry.status != "dead":
                self.fail(f"a replay of #{entry.id}, {entry.status}, was accepted (only dead entries are replayed)")
            entry.status, entry.attempts, entry.due, entry.claimed_at, entry.updated = (
                "pending",
                0,
                self.now,
                None,
                self.now,
            )
            self.attempts_seen[entry.id] = 0
            stats["replayed"] += 1

        def prune(self, age: int, batch: int) -> None:
            self.begin("prune")
            before = self.now - timedelta(seconds=age)
            with UnitOfWork(engine) as uow:
                count = uow.outbox.prune_done(before, batch)
                uow.commit()
            old = sorted(e.id for e in self.entries.values() if e.status == "done" and e.updated < before)[:batch]
            self.note(f"operator prunes done entries older than {age} s, {batch} at most: {count} (model {old})")
            if count != len(old):
                self.fail(f"rule 2: prune removed {count} entries, the model expected {old}")
            for entry_id in old:
                del self.entries[entry_id]
                del self.attempts_seen[entry_id]
                self.pruned.add(entry_id)
            stats["pruned"] += count

        # ------------------------------------------------------------------ after every step

    return OutboxModel


def test_the_outbox_keeps_its_promises_whatever_the_interleaving(engine, record_property):
    stats: Counter = Counter()
    RUN.run(outbox_machine(engine, stats), stats, record_property, f"outbox model on {engine.url.get_backend_name()}")


def entry(engine: sa.Engine, entry_id: int) -> tuple[str, int, datetime | None, datetime]:
    with UnitOfWork(engine) as uow:
        row = uow.outbox.get(entry_id)
        return row.status, row.attempts, row.claimed_at, row.next_attempt_at
