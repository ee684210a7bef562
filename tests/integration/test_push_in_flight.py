"""A push marks itself in flight (SyncRepository.mark_in_flight) in one statement, on SQLite and PostgreSQL: an
upsert, so a plan's first push (no sync state yet) neither runs an UPDATE that finds nothing nor converts its
document to JSON twice; the row it leaves is the one the UPDATE or the INSERT left before."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from service.domain import codec
from service.domain.model import Plan
from service.store import prepared
from service.store.tables import SyncStateRow
from service.store.uow import UnitOfWork
from tests.support import FIXTURES

T0 = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)


def _saved(engine: sa.Engine) -> str:
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text()))
    plan.id = f"{plan.id}-{uuid.uuid4().hex[:6]}"
    with UnitOfWork(engine) as uow:
        uow.plans.save(plan)
        uow.commit()
    return plan.id


def _state(engine: sa.Engine, plan_id: str) -> SyncStateRow:
    with UnitOfWork(engine) as uow:
        return uow.sync.state(plan_id)


def test_push_in_flight_mark_is_one_statement_first_and_after(engine, monkeypatch):
    plan_id = _saved(engine)
    statements: list[str] = []
    run = prepared.Prepared._run

    def counted(self: prepared.Prepared, *args: Any) -> Any:
        statements.append(str(self.statement).split()[0])
        return run(self, *args)

    monkeypatch.setattr(prepared.Prepared, "_run", counted)

    def mark(started: datetime | None, document: dict | None) -> list[str]:
        statements.clear()
        with UnitOfWork(engine).direct() as uow:
            uow.sync.mark_in_flight(plan_id, started, document)
            uow.commit()
        return list(statements)

    sent = {"id": plan_id, "title": "what went"}
    assert mark(T0, sent) == ["INSERT"]  # the plan's first push: no sync state yet
    state = _state(engine, plan_id)
    assert (state.status, state.push_started_at, state.push_sent_document) == ("pending", T0, sent)
    assert (state.base_document, state.pushed_hash, state.last_error) == (None, None, None)

    with UnitOfWork(engine) as uow:  # pushed since: its status and merge base are not the mark's to change
        row = uow.sync.state(plan_id)
        row.status, row.base_document, row.pushed_hash = "in_sync", {"base": 1}, "h1"
        uow.commit()
    again = {"id": plan_id, "title": "sent again"}
    assert mark(T0 + timedelta(seconds=5), again) == ["INSERT"]
    state = _state(engine, plan_id)
    assert (state.status, state.base_document, state.pushed_hash) == ("in_sync", {"base": 1}, "h1")
    assert (state.push_started_at, state.push_sent_document) == (T0 + timedelta(seconds=5), again)

    assert mark(None, None) == ["INSERT"]  # cleared
    state = _state(engine, plan_id)
    assert (state.status, state.push_started_at, state.push_sent_document) == ("in_sync", None, None)
