"""A push records its links as one batch (FhirLinkRepository.write, a Prepared executemany): the timestamp all
its rows share is converted to its stored text once, not once per row, and every row stores that same text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from service.store import tables
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork

NOW = datetime(2026, 12, 6, 7, 30, 1, 250000, tzinfo=UTC)


def test_push_link_batch_converts_a_shared_timestamp_once(tmp_path, monkeypatch):
    converted: list[datetime] = []
    convert = tables._sqlite_utc_text

    def counted(value: datetime | None) -> str | None:
        converted.append(value)
        return convert(value)

    monkeypatch.setattr(tables, "_sqlite_utc_text", counted)
    engine = create_engine(f"sqlite:///{tmp_path}/links.db")  # a new dialect: its statements compiled afresh
    upgrade(engine)
    links = [(f"goal:g{i}", "Goal", str(100 + i), "1") for i in range(20)]
    with UnitOfWork(engine).direct() as uow:
        uow.links.write("plan-1", links, NOW)
        uow.commit()
    assert converted == [NOW]
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT local_key, fhir_id, synced_at FROM fhir_links ORDER BY fhir_id")).all()
    assert [(key, fhir_id) for key, fhir_id, _ in stored] == [(key, fhir_id) for key, _, fhir_id, _ in links]
    assert {synced for _, _, synced in stored} == {"2026-12-06 07:30:01.250000"}


def test_push_link_batch_converts_each_distinct_value(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/links.db")
    upgrade(engine)
    with UnitOfWork(engine).direct() as uow:
        for i in range(3):  # one row per batch: each its own time, the same key later updated
            uow.links.write(
                "plan-1", [("goal:g1", "Goal", "7", str(i)), ("goal:g2", "Goal", "8", None)], NOW + timedelta(seconds=i)
            )
        uow.commit()
    with UnitOfWork(engine) as uow:
        rows = sorted(uow.links.for_plan("plan-1"), key=lambda row: row.local_key)
    assert [(row.local_key, row.version_id, row.synced_at) for row in rows] == [
        ("goal:g1", "2", NOW + timedelta(seconds=2)),
        ("goal:g2", None, NOW + timedelta(seconds=2)),
    ]
