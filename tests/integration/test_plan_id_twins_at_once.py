"""Two plans whose ids differ only in case, opened at the same moment on PostgreSQL: one is refused.

FHIR servers such as Medplum match identifier values without case, so `plan-x` and `PLAN-X` would write the
same CarePlan, CareTeam and Goals. A new plan is refused when another's id equals it but for case; on
PostgreSQL two transactions opening the twins at once each probed before the other committed, found nothing,
and both plans were kept. The interleaving is forced here, step by step, from the database's own lock table.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa

from service.domain import codec
from service.domain.model import Plan
from service.store.uow import UnitOfWork
from tests.support import FIXTURES

MINIMAL = json.loads((FIXTURES / "plans" / "minimal.json").read_text())


def _plan(plan_id: str) -> Plan:
    plan = codec.from_dict(Plan, json.loads(json.dumps(MINIMAL)))
    plan.id = plan_id
    plan.touch("2026-12-06T00:00:00+00:00")
    return plan


def _waiting_on_a_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one())


@pytest.mark.postgres
@pytest.mark.parametrize("probe", ["twin_in_all_but_case", "still"])
def test_the_second_of_two_case_twins_opened_at_once_sees_the_first(postgres, probe: str) -> None:
    engine, _url = postgres

    def twin_of(uow: UnitOfWork, plan_id: str) -> str | None:
        if probe == "twin_in_all_but_case":  # the import's probe (and an event applied in the transaction)
            return uow.plans.twin_in_all_but_case(plan_id)
        assert uow.plans.still(plan_id, None)  # an event's draft kept: the probe that also says "still new"
        return uow.plans.twin_seen

    second: dict[str, object] = {}

    def open_the_second() -> None:
        with UnitOfWork(engine) as uow:
            second["twin"] = twin_of(uow, "PLAN-X")
            if second["twin"] is None:
                uow.plans.save(_plan("PLAN-X"))
                uow.commit()

    with UnitOfWork(engine) as first:
        assert twin_of(first, "plan-x") is None
        first.plans.save(_plan("plan-x"))
        thread = threading.Thread(target=open_the_second)
        thread.start()
        deadline = time.monotonic() + 20
        while thread.is_alive() and not _waiting_on_a_lock(engine):  # done already, or waiting for us
            assert time.monotonic() < deadline, "the second transaction neither finished nor waited"
            time.sleep(0.01)
        first.commit()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert second["twin"] == "plan-x"
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT id FROM plans WHERE lower(id) = 'plan-x'")).scalars().all()
    assert kept == ["plan-x"]
