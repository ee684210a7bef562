"""Several outbox workers, and several pushes inside one worker: one plan is never worked twice at once,
its entries are handled in order, and nothing is lost.

Who handled what is read from the database: a trigger these tests install (on their own schema or file,
nothing in the product schema) writes a row for each claim of an outbox entry and each finish, numbered in
the order the database saw them. A claim of a plan numbered between another claim of that plan and its
finish would be two handlings of one plan at once. No assertion is about time.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from service.api.container import utcnow
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.worker import OutboxWorker
from tests.support import FIXTURES, settings

BIN = Path(sys.executable).parent / "planbridge"
MINIMAL = json.loads((FIXTURES / "plans" / "minimal.json").read_text())  # one small transaction, any profile

AUDIT_POSTGRES = """
CREATE TABLE claim_audit (id bigserial PRIMARY KEY, entry_id integer, plan_id text, event text,
                          worker text DEFAULT current_setting('application_name'));
CREATE FUNCTION claim_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.claimed_at IS NOT NULL AND NEW.claimed_at IS DISTINCT FROM OLD.claimed_at THEN
        INSERT INTO claim_audit (entry_id, plan_id, event) VALUES (NEW.id, NEW.plan_id, 'claim');
    ELSIF NEW.claimed_at IS NULL AND OLD.claimed_at IS NOT NULL THEN
        INSERT INTO claim_audit (entry_id, plan_id, event) VALUES (NEW.id, NEW.plan_id, 'finish');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER claim_audit AFTER UPDATE ON outbox FOR EACH ROW EXECUTE FUNCTION claim_audit();
"""
AUDIT_SQLITE = [
    """CREATE TABLE claim_audit (id INTEGER PRIMARY KEY AUTOINCREMENT, entry_id INTEGER, plan_id TEXT,
                                 event TEXT, worker TEXT DEFAULT 'this')""",
    """CREATE TRIGGER claim_audit_claim AFTER UPDATE OF claimed_at ON outbox FOR EACH ROW
       WHEN NEW.claimed_at IS NOT NULL AND (OLD.claimed_at IS NULL OR NEW.claimed_at <> OLD.claimed_at)
       BEGIN INSERT INTO claim_audit (entry_id, plan_id, event) VALUES (NEW.id, NEW.plan_id, 'claim'); END""",
    """CREATE TRIGGER claim_audit_finish AFTER UPDATE OF claimed_at ON outbox FOR EACH ROW
       WHEN NEW.claimed_at IS NULL AND OLD.claimed_at IS NOT NULL
       BEGIN INSERT INTO claim_audit (entry_id, plan_id, event) VALUES (NEW.id, NEW.plan_id, 'finish'); END""",
]


def install_audit(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(AUDIT_POSTGRES)
        else:
            for statement in AUDIT_SQLITE:
                conn.exec_driver_sql(statement)


def handlings(engine: sa.Engine) -> dict[str, list[tuple[int, int, int | None, str]]]:
    """Return each plan's handlings in order: (entry id, claim number, finish number or None, worker)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, entry_id, plan_id, event, worker FROM claim_audit ORDER BY id")).all()
    per_plan: dict[str, list[tuple[int, int, int | None, str]]] = defaultdict(list)
    open_claims: dict[int, tuple[str, int, str]] = {}
    for number, entry_id, plan_id, event, worker in rows:
        if event == "claim":
            if entry_id in open_claims:  # taken again before it finished: the first handling ends unfinished
                first_plan, first, first_worker = open_claims[entry_id]
                per_plan[first_plan].append((entry_id, first, None, first_worker))
            open_claims[entry_id] = (plan_id, number, worker)
        elif entry_id in open_claims:
            first_plan, first, first_worker = open_claims.pop(entry_id)
            per_plan[first_plan].append((entry_id, first, number, first_worker))
    for entry_id, (plan_id, first, worker) in open_claims.items():
        per_plan[plan_id].append((entry_id, first, None, worker))
    for spans in per_plan.values():
        spans.sort(key=lambda span: span[1])
    return per_plan


def assert_one_at_a_time_in_order(engine: sa.Engine, plans: dict[str, list[int]]) -> None:
    """Every queued entry was handled exactly once, one per plan at a time, in the order queued."""
    per_plan = handlings(engine)
    assert set(plans) <= set(per_plan)
    for plan_id in plans:
        spans = per_plan[plan_id]
        assert all(finish is not None for _, _, finish, _ in spans), f"{plan_id}: an entry never finished"
        assert [entry for entry, *_ in spans] == plans[plan_id], f"{plan_id}: handled out of order or twice"
        for (_, _, finished, _), (_, claimed, _, _) in itertools.pairwise(spans):
            assert finished < claimed, f"{plan_id}: claimed again while another handling was under way"


def queue_plans(engine: sa.Engine, count: int, pushes: int, tag: str, due_in: timedelta = timedelta()) -> dict:
    """Save `count` small plans, each with `pushes` queued pushes (all of the first plan, then the next...);
    return each plan's entry ids in the order queued."""
    plans: dict[str, list[int]] = {}
    with UnitOfWork(engine) as uow:
        for i in range(count):
            plan = codec.from_dict(Plan, json.loads(json.dumps(MINIMAL)))
            plan.id, plan.patient.mrn = f"{tag}-{i}-{uuid.uuid4().hex[:6]}", f"MRN-{uuid.uuid4().hex[:10]}"
            plan.touch(utcnow().isoformat())
            uow.plans.save(plan)
            for _ in range(pushes):
                uow.outbox.add(plan.id, "push_plan", None, None, utcnow() + due_in)
            plans[plan.id] = []
        uow.commit()
        for row in uow.outbox.list():
            if row.plan_id in plans:
                plans[row.plan_id].append(row.id)
    return plans


def assert_all_done_once(engine: sa.Engine, plans: dict[str, list[int]], fhir_base_url: str, base: str) -> None:
    with UnitOfWork(engine) as uow:
        assert {(row.status, row.attempts) for row in uow.outbox.list()} == {("done", 1)}
    reader = FhirClient(fhir_base_url, timeout=30)
    careplans = reader.search("CarePlan", {"identifier": f"{base}/plan|", "_count": "200"})
    names = sorted(i["value"] for c in careplans for i in c["identifier"] if i["system"] == f"{base}/plan")
    assert names == sorted(plans)  # every plan on the server, each once


def wait_for(what: str, ready, seconds: float = 120) -> None:
    """Poll `ready` until it holds (a deadline against hanging, not a measurement)."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM outbox WHERE status = 'pending'")).scalar_one()


def test_two_then_four_worker_processes_on_postgres_never_work_one_plan_at_once_and_lose_nothing(
    postgres, fhir_base_url, tmp_path
):
    engine, url = postgres
    install_audit(engine)
    config = settings(fhir_base_url=fhir_base_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(
        FHIR_BASE_URL=fhir_base_url,
        PLANBRIDGE_CREATE_PATIENTS="true",
        PLANBRIDGE_IDENTIFIER_BASE=config.identifier_base,
        PLANBRIDGE_MRN_SYSTEM=config.mrn_system,
        PLANBRIDGE_PUSH_CONCURRENCY="3",  # several pushes inside each worker too
        PLANBRIDGE_WORKER_POLL_SECONDS="0.05",
        PLANBRIDGE_RESYNC_SECONDS="0",
        PLANBRIDGE_LOG_FORMAT="text",
    )
    logs: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    everything: dict[str, list[int]] = {}
    try:
        for workers in (2, 4):  # two `planbridge worker` processes, then two more beside them
            # 12 plans, 3 pushes each, not yet due: every worker is running before any can be taken
            plans = queue_plans(engine, 12, 3, f"w{workers}", due_in=timedelta(days=1))
            while len(procs) < workers:
                logs.append(tmp_path / f"worker-{len(procs)}.log")
                with logs[-1].open("wb") as out:  # application_name tells the audit which worker claimed
                    worker_env = {**env, "DATABASE_URL": f"{url}&application_name=worker-{len(procs)}"}
                    procs.append(subprocess.Popen([str(BIN), "worker"], env=worker_env, stdout=out, stderr=out))
            for proc, log in zip(procs, logs, strict=True):
                wait_for("a worker did not start", lambda log=log: "outbox worker started" in log.read_text())
                assert proc.poll() is None, log.read_text()[-2000:]
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE outbox SET next_attempt_at = now() WHERE status = 'pending'"))
            wait_for("entries still pending", lambda: pending(engine) == 0)
            assert_one_at_a_time_in_order(engine, plans)
            seen = {worker for plan_id in plans for *_, worker in handlings(engine)[plan_id]}
            assert len(seen) >= 2, seen  # the work was shared, so the hold was put to the test
            everything |= plans
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert_all_done_once(engine, everything, fhir_base_url, config.identifier_base)
    assert all("Traceback" not in log.read_text() for log in logs)


class HeldAtTheServer(FhirClient):
    """The real client, except that its first `parties` transactions wait until all of them are sent:
    they get through only if that many pushes are in flight at once."""

    def __init__(self, base_url: str, parties: int) -> None:
        super().__init__(base_url, timeout=30)
        self.barrier = threading.Barrier(parties, timeout=20)
        self.held = parties
        self.lock = threading.Lock()

    def transaction(self, bundle, *, idempotent):
        with self.lock:
            wait, self.held = self.held > 0, self.held - 1
        if wait:
            self.barrier.wait()
        return super().transaction(bundle, idempotent=idempotent)


def test_one_worker_pushes_several_plans_at_once_and_each_plans_entries_in_order(engine, fhir_base_url):
    install_audit(engine)
    config = settings(fhir_base_url=fhir_base_url, push_concurrency=4)
    plans = queue_plans(engine, 6, 3, "pool")
    client = HeldAtTheServer(fhir_base_url, parties=4)  # four plans' transactions in flight together
    worker = OutboxWorker(UnitOfWork(engine), client, config, utcnow)
    assert worker.run_until_idle() == 18
    assert_one_at_a_time_in_order(engine, plans)
    assert_all_done_once(engine, plans, fhir_base_url, config.identifier_base)
    # each plan's first push looks its Patient up and sends one transaction; the others find it unchanged
    assert client.requests_sent == 6 * 2


def test_the_pool_stops_taking_work_when_told_and_leaves_the_rest_queued(engine, fhir_base_url):
    config = settings(fhir_base_url=fhir_base_url, push_concurrency=3)
    plans = queue_plans(engine, 6, 1, "stop")
    stop = threading.Event()

    class StopAfterFirst(FhirClient):
        def transaction(self, bundle, *, idempotent):
            stop.set()  # SIGTERM arrives while the first pushes are in flight
            return super().transaction(bundle, idempotent=idempotent)

    worker = OutboxWorker(UnitOfWork(engine), StopAfterFirst(fhir_base_url, timeout=30), config, utcnow)
    taken = worker.run_until_idle(stop=stop)
    assert 1 <= taken <= 3  # what was in flight finished; nothing more was taken
    with UnitOfWork(engine) as uow:
        rows = uow.outbox.list()
    assert sorted(r.status for r in rows) == ["done"] * taken + ["pending"] * (6 - taken)
    assert all(r.claimed_at is None for r in rows)  # nothing left held: the rest is due for the next run
    assert worker.run_until_idle() == 6 - taken
    assert_all_done_once(engine, plans, fhir_base_url, config.identifier_base)
