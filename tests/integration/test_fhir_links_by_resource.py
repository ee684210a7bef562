"""Tracing a resource the server deleted to the plans linking it (`FhirLinkRepository.naming`, an incremental
pull's deletions) probes the (resource_type, fhir_id) index of migration 0018 instead of scanning every link;
the migration goes down and up again. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from service.store.db import alembic_config, upgrade
from service.store.tables import FhirLinkRow
from service.store.uow import UnitOfWork

AT = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def _links(engine: sa.Engine, count: int) -> None:
    with UnitOfWork(engine) as uow:
        for i in range(count):
            uow.links.record(f"plan-{i}", "careteam", "CareTeam", str(i), "1", AT)
            uow.links.record(f"plan-{i}", f"goal:g{i}", "Goal", str(count + i), "1", AT)
        uow.commit()


def _plan(engine: sa.Engine, query: sa.Select) -> str:
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE fhir_links" if engine.dialect.name == "postgresql" else "ANALYZE")
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")  # a small table may be scanned: ask what it would use
            return "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))
        return "\n".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))


def test_tracing_a_deleted_resource_to_its_plans_probes_the_resource_index(engine):
    _links(engine, 1000)
    with UnitOfWork(engine) as uow:
        assert [(r.plan_id, r.local_key) for r in uow.links.naming("CareTeam", ["7", "8", "7"])] == [
            ("plan-7", "careteam"),
            ("plan-8", "careteam"),
        ]
        assert uow.links.linked_types(["Goal", "CareTeam", "Observation"]) == {"Goal", "CareTeam"}
    query = sa.select(FhirLinkRow).where(FhirLinkRow.resource_type == "CareTeam", FhirLinkRow.fhir_id.in_(["7", "8"]))
    assert "ix_fhir_links_resource" in _plan(engine, query)


def test_the_resource_index_migration_goes_down_and_up(engine):
    _links(engine, 3)
    with UnitOfWork(engine) as uow:
        uow.links.mark_deleted("plan-1", {"careteam": ("1", "1", "2")})
        uow.commit()
    command.downgrade(alembic_config(engine), "0017")
    inspected = sa.inspect(engine)
    assert "ix_fhir_links_resource" not in {i["name"] for i in inspected.get_indexes("fhir_links")}
    assert "deleted_version" not in {c["name"] for c in inspected.get_columns("fhir_links")}
    upgrade(engine)
    inspected = sa.inspect(engine)
    assert "ix_fhir_links_resource" in {i["name"] for i in inspected.get_indexes("fhir_links")}
    with UnitOfWork(engine) as uow:
        link = uow.links.get("plan-1", "careteam")
        assert link is not None and (link.fhir_id, link.version_id, link.deleted_version) == ("1", "1", None)
        assert len(uow.links.naming("Goal", ["3", "4", "5"])) == 3
