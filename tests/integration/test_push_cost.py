"""What a push costs the store: few statements, in two short transactions, no merge base decoded; and the
batched statements it uses (link upserts, the sync-state writes, the outbox finish) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from service.api.container import utcnow
from service.domain import codec
from service.domain.errors import NotFound
from service.domain.model import Plan
from service.fhir.capabilities import Limits
from service.fhir.client import FhirClient
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.split import LEARNED
from service.sync.worker import OutboxWorker
from tests.support import FIXTURES, settings

KNEE = "knee-rehabilitation.json"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _plan() -> Plan:
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / KNEE).read_text()))
    plan.id, plan.patient.mrn = f"{plan.id}-{uuid.uuid4().hex[:6]}", f"MRN-{uuid.uuid4().hex[:8]}"
    plan.touch(utcnow().isoformat())
    return plan


class Traced:
    """An SQLite file store whose every statement is recorded (sqlite3's trace callback)."""

    def __init__(self, path: str) -> None:
        self.engine = create_engine(f"sqlite:///{path}")
        upgrade(self.engine)
        self.statements: list[str] = []
        sa.event.listen(self.engine, "checkout", lambda dbapi, *_: dbapi.set_trace_callback(self.statements.append))

    def during(self, action) -> list[str]:
        self.statements.clear()
        action()
        return [s.strip() for s in self.statements]


def test_a_changed_plan_is_pushed_in_two_transactions_of_few_statements(tmp_path, fhir_hapi_url):
    LEARNED.remember_read(fhir_hapi_url, Limits())  # it publishes no limits: no CapabilityStatement read here
    store = Traced(str(tmp_path / "push.db"))
    sync = SyncEngine(UnitOfWork(store.engine), FhirClient(fhir_hapi_url, timeout=10), settings(), utcnow)
    plan = _plan()
    with UnitOfWork(store.engine) as uow:
        uow.plans.save(plan)
        uow.commit()
    assert sync.push(plan.id).status == "in_sync"  # finds (creates) the Patient, links everything
    with UnitOfWork(store.engine) as uow:
        changed = uow.plans.get(plan.id)
        changed.goals[0].status_reason = "reviewed in clinic"
        changed.touch(utcnow().isoformat())
        uow.plans.save(changed)
        uow.commit()

    results = []
    statements = store.during(lambda: results.append(sync.push(plan.id)))
    (pushed,) = results
    assert (pushed.status, pushed.requests) == ("in_sync", 1)

    transactions = [s for s in statements if s.upper().startswith("BEGIN")]
    work = [s for s in statements if s.split()[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE")]
    # one to read the plan and mark the push in flight, one to record what landed; no read of the merge base
    assert len(transactions) == 2, statements
    assert not [s for s in work if s.startswith("SELECT") and "base_document" in s], work
    links = [s.split()[0] for s in work if "fhir_links" in s]
    # read once; written as one batch (sqlite3 traces each row of an executemany), one row per resource
    assert links[0] == "SELECT" and set(links[1:]) == {"INSERT"} and len(links) - 1 == pushed.resources, links
    others = [s for s in work if "fhir_links" not in s]
    assert len(others) <= 8, others  # plan, sync state, conflicts, history, mark; conflicts+version, record
    with UnitOfWork(store.engine) as uow:
        state = uow.sync.state(plan.id)
        assert (state.status, state.push_started_at, state.push_sent_document) == ("in_sync", None, None)
        assert state.base_document["goals"][0]["status_reason"] == "reviewed in clinic"
    assert sync.push(plan.id).requests == 0  # the digest recorded is the one the next push builds
    store.engine.dispose()


def test_a_worker_finishes_an_entry_in_one_statement(tmp_path, fhir_hapi_url):
    LEARNED.remember_read(fhir_hapi_url, Limits())
    store = Traced(str(tmp_path / "worker.db"))
    plan = _plan()
    with UnitOfWork(store.engine) as uow:
        uow.plans.save(plan)
        uow.outbox.add(plan.id, "push_plan", None, None, utcnow())
        uow.commit()
    worker = OutboxWorker(UnitOfWork(store.engine), FhirClient(fhir_hapi_url, timeout=10), settings(), utcnow)
    statements = store.during(worker.process_one)
    assert [s for s in statements if "outbox" in s and not s.startswith("SELECT")][-1].startswith("UPDATE outbox")
    assert len([s for s in statements if s.startswith("SELECT") and "FROM outbox" in s]) == 1  # the claim only
    with UnitOfWork(store.engine) as uow:
        (row,) = uow.outbox.list(plan_id=plan.id)
        assert (row.status, row.attempts, row.claimed_at, row.last_error) == ("done", 1, None, None)
    store.engine.dispose()


def test_links_are_upserted_in_one_batch(engine):
    with UnitOfWork(engine) as uow:
        uow.links.record("p1", "goal:g1", "Goal", "11", "1", T0)
        uow.commit()
    with UnitOfWork(engine) as uow:
        later = T0 + timedelta(minutes=1)
        uow.links.write("p1", [("goal:g1", "Goal", "11", "2"), ("checkin:c1", "Observation", "12", "1")], later)
        uow.links.write("p1", [], later)
        uow.commit()
    with UnitOfWork(engine) as uow:
        rows = {row.local_key: (row.fhir_id, row.version_id, row.synced_at) for row in uow.links.for_plan("p1")}
    assert rows == {"goal:g1": ("11", "2", later), "checkin:c1": ("12", "1", later)}


def test_push_state_writes_keep_their_promises(engine):
    with UnitOfWork(engine) as uow:  # no sync state yet: a push's first write creates it
        assert uow.sync.push_view("p1").status == "pending"
        uow.sync.mark_in_flight("p1", T0, {"id": "p1", "title": "sent"})
        uow.commit()
    with UnitOfWork(engine) as uow:
        view = uow.sync.push_view("p1")
        assert (view.status, view.push_started_at) == ("pending", T0)
        assert uow.sync.state("p1").push_sent_document == {"id": "p1", "title": "sent"}
        uow.sync.record_push("p1", "in_sync", {"id": "p1"}, "d" * 64, T0, through=7)
        uow.commit()
    with UnitOfWork(engine) as uow:
        uow.sync.record_push("p1", "pending", {"id": "p1", "v": 2}, "e" * 64, T0, through=3)  # never goes back
        uow.commit()
    with UnitOfWork(engine) as uow:
        state = uow.sync.state("p1")
        assert (state.status, state.pushed_hash, state.provenance_through) == ("pending", "e" * 64, 7)
        assert (state.base_document, state.push_started_at, state.push_sent_document) == (
            {"id": "p1", "v": 2},
            None,
            None,
        )
        assert uow.sync.base_document("p1") == {"id": "p1", "v": 2}
        assert uow.sync.after_push("p1") == (0, None)  # no such plan: no version
        uow.sync.add_conflict("p1", "title", "a", "b", "c", T0)
        uow.sync.add_conflict("p1", "goals[0].status", "a", "b", "c", T0)
        uow.commit()
    plan = _plan()
    with UnitOfWork(engine) as uow:
        uow.plans.save(plan)
        assert uow.sync.after_push("p1") == (2, None)
        assert uow.sync.after_push(plan.id) == (0, plan.version)
        uow.commit()


def test_finishing_an_entry_that_is_gone_is_not_found(engine):
    with UnitOfWork(engine) as uow, pytest.raises(NotFound):
        uow.outbox.finish(987654, T0)
