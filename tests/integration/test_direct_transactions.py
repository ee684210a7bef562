"""`UnitOfWork.direct()`: a transaction for the repositories' prepared statements on a Core connection, without
an ORM Session (service/store/prepared.py `DirectTransaction`), as a push reads and records a plan and the outbox
worker claims an entry. It commits, rolls back and lets go of SQLite's writer lock as `with uow:` does."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.api.container import utcnow
from service.domain import codec
from service.domain.model import Plan
from service.fhir.capabilities import Limits
from service.fhir.client import FhirClient
from service.store.prepared import DirectTransaction
from service.store.uow import UnitOfWork
from service.sync.split import LEARNED
from service.sync.worker import OutboxWorker
from tests.db_fixtures import migrated_database
from tests.support import FIXTURES, settings


@pytest.fixture
def engine(tmp_path):
    for engine, _url in migrated_database("sqlite", tmp_path):
        yield engine


def _entries(engine: sa.Engine) -> list[str]:
    with UnitOfWork(engine) as uow:
        return [row.plan_id for row in uow.outbox.list()]


def test_a_direct_unit_of_work_commits_then_begins_again_and_rolls_back_what_it_did_not_commit(engine):
    uow = UnitOfWork(engine)
    with uow.direct():
        assert isinstance(uow.session, DirectTransaction)
        uow.outbox.add("kept", "push_plan", None, None, utcnow())
        uow.commit()
        uow.outbox.add("dropped", "push_plan", None, None, utcnow())  # a second transaction, never committed
    assert uow.session is None
    assert _entries(engine) == ["kept"]
    with pytest.raises(RuntimeError), uow.direct():
        uow.outbox.add("failed", "push_plan", None, None, utcnow())
        raise RuntimeError("the work failed")
    assert _entries(engine) == ["kept"]


def test_a_direct_unit_of_work_lets_go_of_the_writer_lock_however_it_ends(engine):
    """Another thread's write does not wait for it (a held lock would stall it for the busy timeout)."""
    uow = UnitOfWork(engine)
    with uow.direct():
        uow.sync.push_view("plan-a")
        uow.commit()
    with pytest.raises(RuntimeError), uow.direct():
        uow.sync.push_view("plan-a")
        raise RuntimeError("the work failed")
    written: list[float] = []

    def write() -> None:
        with UnitOfWork(engine) as other:
            other.outbox.add("other", "push_plan", None, None, utcnow())
            other.commit()
        written.append(1.0)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(timeout=5)
    assert written == [1.0]


def test_a_session_method_in_a_direct_unit_of_work_is_refused_by_name(engine):
    uow = UnitOfWork(engine)
    with pytest.raises(AttributeError, match=r"prepared statements only, not Session\.get"), uow.direct():
        uow.sync.state("plan-a")  # an ORM read


def _queued(engine: sa.Engine) -> Plan:
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text()))
    plan.id, plan.patient.mrn = f"{plan.id}-{uuid.uuid4().hex[:6]}", f"MRN-{uuid.uuid4().hex[:8]}"
    plan.touch(utcnow().isoformat())
    with UnitOfWork(engine) as uow:
        uow.plans.save(plan)
        uow.outbox.add(plan.id, "push_plan", None, None, utcnow())
        uow.commit()
    return plan


def test_the_worker_claims_pushes_and_records_a_plan_without_an_orm_session(engine, fhir_hapi_url, monkeypatch):
    LEARNED.remember_read(fhir_hapi_url, Limits())
    LEARNED.learn(fhir_hapi_url, Limits())  # what this server refused is known (else read once per process)
    worker = OutboxWorker(UnitOfWork(engine), FhirClient(fhir_hapi_url, timeout=10), settings(), utcnow)
    plan = _queued(engine)
    sessions: list[Session] = []
    made = Session.__init__

    def counted(self: Session, *args: object, **kwargs: object) -> None:
        sessions.append(self)
        made(self, *args, **kwargs)

    monkeypatch.setattr(Session, "__init__", counted)
    assert worker.process_one()  # the claim, the read (two: the Patient is found first), the record
    assert sessions == []
    monkeypatch.undo()
    with UnitOfWork(engine) as uow:
        assert [(r.status, r.attempts) for r in uow.outbox.list(plan_id=plan.id)] == [("done", 1)]
        state = uow.sync.state(plan.id)
        assert (state.status, state.last_error, state.push_started_at) == ("in_sync", None, None)
        assert {link.local_key for link in uow.links.for_plan(plan.id)} >= {"patient", "careplan", "careteam"}
