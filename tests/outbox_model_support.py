"""Constants, helpers and the closure-free rules and checks of the outbox model
(tests/integration/test_outbox_model.py), moved out of that file unchanged; it imports every name back.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    rule,
)

from service.fhir.errors import FhirMultipleMatches, FhirServerError
from service.store.repo_outbox import PUSH_KINDS
from service.store.uow import UnitOfWork
from service.sync.worker import OutboxWorker, _Slot
from tests.support import settings as app_settings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LEASE = 120.0
MAX_ATTEMPTS = 3
PLANS = ["plan-a", "plan-b", "plan-c"]
WORKERS = ["w1", "w2", "w3"]
SLOTS = 2  # claims one worker holds at most (its push pool)
KINDS = st.lists(st.sampled_from(["push_plan"] * 4 + ["push_goal", "pull_plan"]), min_size=1, max_size=3)
ERRORS = {
    "server error": lambda: FhirServerError("503 from the server"),  # retryable
    "refused": lambda: FhirMultipleMatches("412 multiple matches"),  # retrying cannot fix it
    "unexpected": lambda: RuntimeError("a bug in the push"),
}


class ModelViolation(AssertionError):
    """The outbox broke one of its promises."""


@dataclass
class Entry:
    """What the model knows of one outbox entry."""

    id: int
    plan: str
    kind: str
    status: str = "pending"
    attempts: int = 0
    due: datetime = T0
    claimed_at: datetime | None = None
    updated: datetime = T0


@dataclass
class Held:
    """A claim a worker believes it holds: the worker's claimed tuple, and its lease as granted."""

    claimed: tuple[Any, ...]
    since: datetime
    until: datetime

    @property
    def entry_id(self) -> int:
        return int(self.claimed[0])


class StubPush:
    """The sync engine of a model worker: pushes nothing, records which plan it was asked to push and which
    entry of that plan was held at that moment, and succeeds or fails as told."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.outcome: str = "recorded"  # "recorded", "nothing", or a key of ERRORS
        self.failing_plans: set[str] = set()  # in a drain: plans whose pushes fail (server error)
        self.pushed: list[tuple[str, list[int]]] = []
        self.during: Any = None  # run while the push is in flight (a slow push)
        self.active: set[str] = set()
        self.overlaps: list[str] = []
        self.lock = threading.Lock()

    def _held(self, plan_id: str) -> list[int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id FROM outbox WHERE plan_id = :p AND status = 'pending' AND claimed_at IS NOT NULL"),
                {"p": plan_id},
            )
            return sorted(r[0] for r in rows)

    def _work(self, plan_id: str, on_recorded: Any) -> None:
        with self.lock:
            if plan_id in self.active:
                self.overlaps.append(plan_id)
            self.active.add(plan_id)
        try:
            held = self._held(plan_id)
            with self.lock:
                self.pushed.append((plan_id, held))
            if self.during is not None:
                self.during()
            outcome = "server error" if plan_id in self.failing_plans else self.outcome
            if outcome in ERRORS:
                raise ERRORS[outcome]()
            if outcome == "recorded" and on_recorded is not None:
                with UnitOfWork(self.engine) as uow:  # the push's record, the entry's finish in it
                    on_recorded(uow)
                    # The push ends with this commit, which lets the plan go (the next claim of it may
                    # start at once): it is no longer in flight from here.
                    self.done(plan_id)
                    uow.commit()
        finally:
            self.done(plan_id)

    def done(self, plan_id: str) -> None:
        with self.lock:
            self.active.discard(plan_id)

    def push(self, plan_id: str, on_recorded: Any = None) -> None:
        self._work(plan_id, on_recorded)

    def pull_plans(self, plan_ids: list[str]) -> None:
        self._work(plan_ids[0], None)

    def pull_changed(self) -> None:
        self._work("*", None)


def model_worker(engine: sa.Engine, clock: Any, concurrency: int = 1) -> tuple[OutboxWorker, StubPush]:
    """Return a real OutboxWorker on its own unit of work whose sync engine (and every slot's) is a stub."""
    config = app_settings(outbox_max_attempts=MAX_ATTEMPTS, outbox_lease_seconds=LEASE, retain_days=0)
    worker = OutboxWorker(UnitOfWork(engine), None, config, clock, concurrency=concurrency)  # type: ignore[arg-type]
    stub = StubPush(engine)
    worker.engine = stub  # type: ignore[assignment]
    worker._slot = lambda: _Slot(stub, UnitOfWork(engine))  # type: ignore[method-assign,arg-type]
    return worker, stub


def backoff_bounds(attempt: int) -> tuple[timedelta, timedelta]:
    """The range `worker.backoff(attempt)` draws from."""
    return timedelta(seconds=2.0**attempt / 2), timedelta(seconds=min(900.0, 2.0**attempt))


class Clock:
    """The workers' clock, moved by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def passes(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def queue(engine: sa.Engine, plan: str, count: int, now: datetime) -> list[int]:
    with UnitOfWork(engine) as uow:
        for _ in range(count):
            uow.outbox.add(plan, "push_plan", None, None, now)
        uow.commit()
        return [r.id for r in uow.outbox.list(plan)]


class OutboxModelRules:
    """Rules and checks that need neither the engine nor the counters; mixed into `OutboxModel`."""

    def note(self, text: str) -> None:
        self.log.append(f"#{self.step} t+{int((self.now - T0).total_seconds())}s {text}")

    def fail(self, message: str) -> None:
        steps = "\n".join(f"  {line}" for line in self.log[-50:])
        raise ModelViolation(f"{message}\nentries: {self.show()}\nsteps:\n{steps}")

    def show(self) -> str:
        return "; ".join(
            f"#{e.id} {e.plan} {e.kind} {e.status} a={e.attempts} due=t+{int((e.due - T0).total_seconds())}"
            + (" held" if e.claimed_at else "")
            for e in self.entries.values()
        )

    def claimable(self, e: Entry) -> bool:
        """The claim's rules, as `claim_next` and `_claim_next_query` document them."""
        now = self.now
        if e.status != "pending" or e.due > now:
            return False
        others = [o for o in self.entries.values() if o.plan == e.plan and o.id != e.id and o.status == "pending"]
        if any(o.claimed_at is not None for o in others):  # the plan is held
            return False
        push = e.kind in PUSH_KINDS
        for o in others:
            if o.id < e.id and o.due <= now and (push or o.kind not in PUSH_KINDS):
                return False  # an earlier due entry goes first
            if push and o.kind in PUSH_KINDS and o.id < e.id and o.attempts > 0 and o.due > now:
                return False  # an earlier push backs off: the plan's later pushes wait for it
        return True

    def expected_claim(self) -> Entry | None:
        due = [e for e in self.entries.values() if self.claimable(e)]
        return min(due, key=lambda e: e.id) if due else None

    def check_holds(self) -> None:
        """Rule 1 in the workers' view: valid leases never share an entry or a plan."""
        valid: dict[str, str] = {}
        plans: dict[str, str] = {}
        for name, claims in self.held.items():
            for held in claims:
                if held.until <= self.now:
                    continue
                entry = self.entries.get(held.entry_id)
                if entry is None:
                    self.fail(f"rule 2: #{held.entry_id}, which {name} holds with a valid lease, is gone")
                assert entry is not None
                key = f"#{held.entry_id}"
                if key in valid:
                    self.fail(f"rule 1: {valid[key]} and {name} both hold {key} with valid leases")
                valid[key] = name
                if entry.plan in plans:
                    self.fail(f"rule 1: {plans[entry.plan]} and {name} both hold an entry of {entry.plan}")
                plans[entry.plan] = name

    def pick(self, which: int) -> tuple[str, Held]:
        """One of the claims the workers hold (the rules that use it run only when there is one)."""
        claims = [(name, held) for name, held_list in self.held.items() for held in held_list]
        return claims[which % len(claims)]

    def holding(self) -> bool:
        return any(self.held.values())

    def release(self, name: str, held: Held) -> None:
        self.held[name].remove(held)

    def stale(self, held: Held) -> bool:
        """The claim is no longer the entry's current one: another worker claimed it since, or it is gone."""
        entry = self.entries.get(held.entry_id)
        return entry is None or entry.status != "pending" or entry.claimed_at != held.since

    @initialize(plans=st.lists(st.sampled_from(PLANS), min_size=1, max_size=3), kinds=KINDS)
    def queued(self, plans: list[str], kinds: list[str]) -> None:
        """Every example starts with work queued (so no example is all empty claims)."""
        self.begin("add")
        for plan in plans:
            self.produce(plan, kinds)

    @rule(plan=st.sampled_from(PLANS), kinds=KINDS)
    def add(self, plan: str, kinds: list[str]) -> None:
        self.begin("add")
        self.produce(plan, kinds)

    def outcome_recorded(self, held: Held, outcome: str, late: bool) -> None:
        """What the model expects of a worked claim's outcome (checked against the database after the step)."""
        entry = self.entries[held.entry_id]
        if late:
            # Rule 7: another worker holds the entry now (or it is finished): the late outcome leaves it alone.
            return
        if outcome in ERRORS:
            entry.attempts += 1
            entry.claimed_at = None
            entry.updated = self.now
            if entry.attempts >= MAX_ATTEMPTS:
                entry.status = "dead"
            else:
                row = self.db_rows()[entry.id]
                low, high = backoff_bounds(entry.attempts)
                if not self.now + low <= row.next_attempt_at <= self.now + high:
                    self.fail(
                        f"rule 5: #{entry.id} failed {entry.attempts} time(s) and is due at {row.next_attempt_at}, "
                        f"not within {low}..{high} of {self.now}"
                    )
                entry.due = row.next_attempt_at
        else:
            entry.status, entry.attempts, entry.claimed_at, entry.updated = (
                "done",
                entry.attempts + 1,
                None,
                self.now,
            )

    def crash(self, which: int) -> None:
        self.begin("crash")
        name, held = self.pick(which)
        self.release(name, held)
        self.note(f"{name} dies holding #{held.entry_id} (lease until t+{int((held.until - T0).total_seconds())}s)")

    @rule(
        action=st.sampled_from(["drain", "replay", "prune"]),
        concurrency=st.sampled_from([1, 3]),
        failing=st.sets(st.sampled_from(PLANS), max_size=1),
        which=st.integers(0, 20),
        dead_one=st.booleans(),
        age=st.sampled_from([0, 60, 600]),
        batch=st.integers(1, 3),
    )
    def now_and_then(
        self, action: str, concurrency: int, failing: set[str], which: int, dead_one: bool, age: int, batch: int
    ) -> None:
        """What happens less often than a claim: a worker drains the queue, the operator replays or prunes
        (one rule, so together they take the share of one)."""
        if action == "drain":
            self.drain(concurrency, failing)
        elif action == "replay":
            self.replay(which, dead_one)
        else:
            self.prune(age, batch)

    @rule(seconds=st.sampled_from([1, 3, 30, 119, 121, 600, 3600]))
    def time_passes(self, seconds: int) -> None:
        self.begin("time passes")
        self.now += timedelta(seconds=seconds)
        self.note(f"{seconds} s pass")

    @invariant()
    def database_matches_the_model(self) -> None:
        rows = self.db_rows()
        if set(rows) != set(self.entries):
            lost, extra = set(self.entries) - set(rows), set(rows) - set(self.entries)
            self.fail(f"rule 2: entries lost {sorted(lost)}, unknown {sorted(extra)}")
        held_plans: Counter = Counter()
        for entry_id, row in rows.items():
            entry = self.entries[entry_id]
            if row.status not in ("pending", "done", "dead"):
                self.fail(f"rule 2: #{entry_id} has status {row.status}")
            if row.status == "pending" and row.claimed_at is not None:
                held_plans[row.plan_id] += 1
            if row.attempts < self.attempts_seen.get(entry_id, 0):
                self.fail(f"rule 5: #{entry_id}'s attempts went down to {row.attempts} without a replay")
            self.attempts_seen[entry_id] = row.attempts
            seen = (
                row.status,
                row.attempts,
                row.claimed_at,
                row.next_attempt_at if row.status == "pending" else None,
            )
            want = (
                entry.status,
                entry.attempts,
                entry.claimed_at,
                entry.due if entry.status == "pending" else None,
            )
            if seen != want:
                self.fail(f"#{entry_id} is {seen} in the database, the model expected {want}")
        for plan, count in held_plans.items():
            if count > 1:
                self.fail(f"rule 1: {count} entries of {plan} are held at once")
        self.check_holds()
