"""A conflict resolved to a typed value is held to the plan door only for what the value brings
(service/sync/engine.py `_door_introduced`), found while soaking the sync model.

The door names each issue by position (`notes[0].text`). What the EHR put into the plan (a note longer than a
team event's 2000 characters) stays acceptable; but a resolution that only moves it (a team note before it)
named it at another position, `notes[1].text`, and refused the value as if it brought the long note.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from service.domain import codec
from service.domain.errors import RuleViolation
from service.domain.model import Plan
from service.store.uow import UnitOfWork
from service.sync.engine import resolve_conflict
from tests.support import FIXTURES

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LONG = "The EHR's long note. " * 120  # 2520 characters: more than a team event's note may hold


def _stored(engine, notes: list[dict]) -> tuple[str, int]:
    document = json.loads((FIXTURES / "plans" / "minimal.json").read_text())
    document["notes"] = notes
    plan = codec.from_dict(Plan, document)
    plan.touch(NOW.isoformat())
    with UnitOfWork(engine) as uow:
        uow.plans.save(plan)
        conflict = uow.sync.add_conflict(plan.id, "notes", notes, notes, [], NOW)
        uow.commit()
        return plan.id, conflict.id


def _notes(engine, plan_id: str) -> list[str]:
    with UnitOfWork(engine) as uow:
        plan = uow.plans.get(plan_id)
        assert plan is not None
        return [note.text for note in plan.notes]


def test_a_resolution_that_moves_the_ehrs_long_note_is_not_refused_for_it(engine) -> None:
    plan_id, conflict_id = _stored(engine, [{"text": LONG}])

    resolve_conflict(UnitOfWork(engine), lambda: NOW, conflict_id, "value", [{"text": "Team note"}, {"text": LONG}])

    assert _notes(engine, plan_id) == ["Team note", LONG]


def test_a_resolution_that_adds_a_second_long_note_is_still_refused(engine) -> None:
    plan_id, conflict_id = _stored(engine, [{"text": LONG}])

    with pytest.raises(RuleViolation, match=r"notes\[\d\]\.text"):
        resolve_conflict(UnitOfWork(engine), lambda: NOW, conflict_id, "value", [{"text": LONG}, {"text": LONG + "!"}])

    assert _notes(engine, plan_id) == [LONG]
