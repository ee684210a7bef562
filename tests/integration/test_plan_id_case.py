"""A new plan whose id equals another plan's but for case is refused (the FHIR server would match their
identifiers alike, see migration 0014); the lookup is one probe of the folded-id index, not a scan of every
plan on each new plan. The refusal through the intake, pushed to a real server, is in
tests/e2e/test_blackbox_events.py."""

from __future__ import annotations

import sqlalchemy as sa

from service.api.container import utcnow
from service.store.tables import PlanRow
from service.store.uow import UnitOfWork


def _plans(engine: sa.Engine, ids: list[str]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(PlanRow),
            [
                {"id": i, "patient_mrn": f"MRN-{i}", "version": 1, "document": {}, "created_at": utcnow(),
                 "updated_at": utcnow()}
                for i in ids
            ],
        )  # fmt: skip


def test_the_twin_of_a_plan_id_is_found_ignoring_case_and_never_the_plan_itself(engine):
    _plans(engine, ["plan-x", "Plan-Y", "other"])
    with UnitOfWork(engine) as uow:
        assert uow.plans.twin_in_all_but_case("PLAN-X") == "plan-x"
        assert uow.plans.twin_in_all_but_case("plan-y") == "Plan-Y"
        assert uow.plans.twin_in_all_but_case("plan-x") is None  # the plan itself is no twin
        assert uow.plans.twin_in_all_but_case("plan-z") is None


def test_the_twin_lookup_probes_the_folded_id_index(engine):
    _plans(engine, [f"plan-{i}" for i in range(2000)])
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE plans" if engine.dialect.name == "postgresql" else "ANALYZE")
        conn.commit()
        query = sa.select(PlanRow.id).where(sa.func.lower(PlanRow.id) == "plan-7", PlanRow.id != "PLAN-7").limit(1)
        sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")  # a tiny table may be scanned: ask what it would use
            plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))
            assert "ix_plans_id_folded" in plan, plan
        else:
            plan = "\n".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "USING INDEX ix_plans_id_folded" in plan, plan
