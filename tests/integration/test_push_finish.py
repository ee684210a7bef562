"""The outbox worker marks a pushed entry done in the transaction that records the push (no transaction of its
own), and an entry that vanished meanwhile never undoes that record."""

from __future__ import annotations

import json
import uuid

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
from service.sync.split import LEARNED
from service.sync.worker import OutboxWorker
from tests.support import FIXTURES, settings


def _plan() -> Plan:
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text()))
    plan.id, plan.patient.mrn = f"{plan.id}-{uuid.uuid4().hex[:6]}", f"MRN-{uuid.uuid4().hex[:8]}"
    plan.touch(utcnow().isoformat())
    return plan


def _store(path: str) -> tuple[sa.Engine, list[str]]:
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    statements: list[str] = []
    sa.event.listen(engine, "checkout", lambda dbapi, *_: dbapi.set_trace_callback(statements.append))
    return engine, statements


def _queued(engine: sa.Engine) -> Plan:
    plan = _plan()
    with UnitOfWork(engine) as uow:
        uow.plans.save(plan)
        uow.outbox.add(plan.id, "push_plan", None, None, utcnow())
        uow.commit()
    return plan


def test_a_pushed_entry_is_finished_in_the_push_record_transaction(tmp_path, fhir_hapi_url):
    LEARNED.remember_read(fhir_hapi_url, Limits())
    engine, statements = _store(str(tmp_path / "finish.db"))
    client = FhirClient(fhir_hapi_url, timeout=10)
    worker = OutboxWorker(UnitOfWork(engine), client, settings(), utcnow)
    first = _queued(engine)
    assert worker.process_one()  # finds (creates) the Patient: the snapshot takes two transactions here
    with UnitOfWork(engine) as uow:  # a change queues another push
        plan = uow.plans.get(first.id)
        plan.goals[0].status_reason = "reviewed in clinic"
        plan.touch(utcnow().isoformat())
        uow.plans.save(plan)
        uow.outbox.add(plan.id, "push_plan", None, None, utcnow())
        uow.commit()

    statements.clear()
    assert worker.process_one()
    begins = [i for i, s in enumerate(statements) if s.upper().startswith("BEGIN")]
    # the claim, the push's read, the push's record with the entry's finish: three, none for the finish alone
    assert len(begins) == 3, statements
    record = statements[begins[-1] :]
    assert any(s.startswith("UPDATE outbox") for s in record), record
    assert any("sync_state" in s and not s.startswith("SELECT") for s in record), record
    with UnitOfWork(engine) as uow:
        rows = uow.outbox.list(plan_id=first.id)
        assert [(r.status, r.attempts, r.claimed_at, r.last_error) for r in rows] == [("done", 1, None, None)] * 2
        assert uow.sync.state(first.id).status == "in_sync"
    engine.dispose()


def test_an_entry_gone_during_its_push_leaves_the_push_recorded(tmp_path, fhir_hapi_url):
    LEARNED.remember_read(fhir_hapi_url, Limits())
    engine, _ = _store(str(tmp_path / "gone.db"))
    plan = _queued(engine)
    worker = OutboxWorker(UnitOfWork(engine), FhirClient(fhir_hapi_url, timeout=10), settings(), utcnow)
    pushed = worker.engine.push

    def push_then_forget(plan_id: str, on_recorded=None):  # the entry is deleted while the push is on the wire
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM outbox WHERE plan_id = :p"), {"p": plan_id})
        return pushed(plan_id, on_recorded)

    worker.engine.push = push_then_forget
    with pytest.raises(NotFound):  # the entry's outcome cannot be recorded, as before
        worker.process_one()
    with UnitOfWork(engine) as uow:
        state = uow.sync.state(plan.id)
        assert (state.status, state.push_started_at) == ("in_sync", None)  # the push's record stands
        assert uow.links.for_plan(plan.id)
        assert uow.outbox.list(plan_id=plan.id) == []
    engine.dispose()
