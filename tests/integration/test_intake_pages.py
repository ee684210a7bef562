"""Fewer pages written per accepted event (migration 0015, SQLite's page size for new files): the change log's
tables are WITHOUT ROWID on SQLite, an index no query read is gone, and what was stored before stays readable
and ordered."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from service.notify.changes import record_change
from service.store.db import SQLITE_PAGE_SIZE, alembic_config, create_engine, upgrade
from service.store.uow import UnitOfWork

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def _change(engine, plan_id: str) -> int:
    with UnitOfWork(engine) as uow:
        sequence = record_change(
            uow,
            plan_id,
            "plan.updated",
            {"plan_version": 1, "source": "team", "change": {"paths": ["title"], "event_id": "msg_1"}},
            NOW,
        )
        uow.commit()
    return sequence


def _history(engine, plan_id: str) -> list[tuple[int, list[str]]]:
    with UnitOfWork(engine) as uow:
        return [(row.sequence, row.paths) for row in uow.history.page(plan_id)]


def _indexes(engine, table: str) -> set[str]:
    return {index["name"] for index in sa.inspect(engine).get_indexes(table)}


def _sqlite_table_sql(engine, table: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :t"), {"t": table}).scalar_one()


def test_the_change_log_keeps_its_numbers_and_rows_across_the_migration_both_ways(engine):
    command.downgrade(alembic_config(engine), "0014")
    assert "ix_inbound_events_plan_id" in _indexes(engine, "inbound_events")
    assert [_change(engine, "plan-a"), _change(engine, "plan-a"), _change(engine, "plan-b")] == [1, 2, 1]

    upgrade(engine, "0015")  # (0020 made plan_history a rowid table again: tests/integration/test_ingest_pages.py)
    assert "ix_inbound_events_plan_id" not in _indexes(engine, "inbound_events")
    assert _history(engine, "plan-a") == [(1, ["title"]), (2, ["title"])]
    assert _change(engine, "plan-a") == 3  # the sequence goes on from where it was, never back to 1
    assert _change(engine, "plan-b") == 2
    if engine.dialect.name == "sqlite":
        for table in ("plan_history", "plan_sequences"):
            assert "WITHOUT ROWID" in _sqlite_table_sql(engine, table)

    command.downgrade(alembic_config(engine), "0014")  # and back: rowid tables again, nothing lost
    assert "ix_inbound_events_plan_id" in _indexes(engine, "inbound_events")
    assert [s for s, _ in _history(engine, "plan-a")] == [1, 2, 3]
    if engine.dialect.name == "sqlite":
        assert "WITHOUT ROWID" not in _sqlite_table_sql(engine, "plan_history")
    assert _change(engine, "plan-a") == 4
    upgrade(engine)


def test_a_history_row_is_still_one_per_plan_and_sequence(engine):
    _change(engine, "plan-a")
    row = {
        "plan_id": "plan-a",
        "sequence": 1,
        "at": NOW,
        "source": "team",
        "event_type": "plan.updated",
        "plan_version": 1,
        "paths": "[]",
        "paths_total": 0,
    }
    columns = ", ".join(row)
    with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(sa.text(f"INSERT INTO plan_history ({columns}) VALUES (:{', :'.join(row)})"), row)


def test_a_new_sqlite_file_gets_the_smaller_pages_and_an_old_one_keeps_its_own(tmp_path):
    new = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    upgrade(new)
    old_file = tmp_path / "old.db"
    import sqlite3

    with sqlite3.connect(old_file) as raw:  # a database made before: 4 KiB pages, already in WAL mode
        raw.execute("PRAGMA page_size=4096")
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE made_before (x INTEGER)")
    old = create_engine(f"sqlite:///{old_file}")
    upgrade(old)
    try:
        with new.connect() as conn:
            assert conn.execute(sa.text("PRAGMA page_size")).scalar_one() == SQLITE_PAGE_SIZE == 2048
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(sa.text("PRAGMA synchronous")).scalar_one() == 2  # FULL
        with old.connect() as conn:
            assert conn.execute(sa.text("PRAGMA page_size")).scalar_one() == 4096
        assert _change(old, "plan-a") == 1 and _change(new, "plan-a") == 1
    finally:
        new.dispose()
        old.dispose()


def test_the_benchmarks_minimal_handler_uses_the_same_page_size():
    """bench/webhook_load.py compares the intake with a minimal handler "with the same SQLite settings"."""
    source = (ROOT / "bench" / "bare_app.py").read_text()
    assert f"SQLITE_PAGE_SIZE = {SQLITE_PAGE_SIZE} " in source
    assert "PRAGMA page_size={SQLITE_PAGE_SIZE}" in source
