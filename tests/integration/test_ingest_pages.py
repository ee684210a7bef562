"""The B-trees an accepted team event writes (migrations 0019 and 0020, issue #15).

On SQLite every B-tree a commit changes costs a page written to the WAL, under the writer lock both gunicorn
workers wait on, and copied to the database file by the checkpoint; and since the other worker's commits
empty a connection's page cache, each one is read again root to leaf. Two indexes no query reads are gone
(`ix_plans_patient_mrn`, `ix_outbox_next_attempt_at`), and plan_history is a rowid table again, its key in an
index of its own, so its ~135-byte rows no longer make a tree five levels deep. The WAL's frames name the pages
a commit wrote: these tests read them and name each page's B-tree."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from service.api.schemas import GoalProposedDataSchema
from service.console.listing import plans_page
from service.services.events import Envelope, handle_event
from service.store.db import alembic_config, create_engine, upgrade
from service.store.uow import UnitOfWork
from tests.support import Clock, goal_event

# What a goal.proposed event that opens a plan writes, and nothing else: the plan (its row, its key, its id
# folded to lower case), the event and its answer (row, key), the outbox entry (row, its plan and status
# indexes), the plan's sequence and history (row, key), the database header and the outbox's AUTOINCREMENT.
NEW_PLAN_WRITES = {
    "sqlite_schema",  # page 1: the header's change counter
    "sqlite_sequence",
    "plans",
    "sqlite_autoindex_plans_1",
    "ix_plans_id_folded",
    "inbound_events",
    "sqlite_autoindex_inbound_events_1",
    "outbox",
    "ix_outbox_plan_id",
    "ix_outbox_status",
    "plan_sequences",
    "plan_history",
    "sqlite_autoindex_plan_history_1",
}
UNREAD = {("plans", "ix_plans_patient_mrn"), ("outbox", "ix_outbox_next_attempt_at")}


def _send(engine, event: dict) -> None:
    raw = json.dumps(event).encode()
    envelope = Envelope(f"msg_{hashlib.sha256(raw).hexdigest()[:24]}", hashlib.sha256(raw).hexdigest(), event)
    outcome = handle_event(engine, envelope, event["type"], GoalProposedDataSchema().load(event["data"]), Clock())
    assert outcome.status == 202, outcome


def _btrees_written(path: Path, engine, events: list[dict]) -> dict[str, int]:
    """Send the events with the WAL emptied first; return each B-tree's frames in the WAL afterwards."""
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    for event in events:
        _send(engine, event)
    wal = Path(f"{path}-wal").read_bytes()
    page_size = struct.unpack(">I", wal[8:12])[0]
    pages = [struct.unpack(">I", wal[at : at + 4])[0] for at in range(32, len(wal), 24 + page_size)]
    with sqlite3.connect(path) as raw:
        owner = dict(raw.execute("SELECT pageno, name FROM dbstat"))
    written: dict[str, int] = {}
    for page in pages:
        written[owner.get(page, "?")] = written.get(owner.get(page, "?"), 0) + 1
    return written


def test_an_event_that_opens_a_plan_writes_only_the_btrees_a_query_reads(tmp_path):
    path = tmp_path / "intake.db"
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    try:
        for _ in range(40):  # trees with more than a root page, as a database in use has
            _send(engine, goal_event())
        written = _btrees_written(path, engine, [goal_event()])
    finally:
        engine.dispose()
    assert set(written) == NEW_PLAN_WRITES, written
    assert sum(written.values()) <= len(NEW_PLAN_WRITES) + 3, written  # one page each, and a split or so


def test_the_unread_indexes_are_gone_and_come_back_with_a_downgrade(engine):
    def indexes(table: str) -> set[str]:
        sqlite = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"
        postgres = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t"
        with engine.connect() as conn:
            return set(
                conn.execute(sa.text(sqlite if engine.dialect.name == "sqlite" else postgres), {"t": table}).scalars()
            )

    assert not {(table, index) for table, index in UNREAD if index in indexes(table)}
    command.downgrade(alembic_config(engine), "0018")
    assert all(index in indexes(table) for table, index in UNREAD)
    upgrade(engine)
    assert not {(table, index) for table, index in UNREAD if index in indexes(table)}


def test_the_console_still_finds_a_plan_by_its_patients_mrn_in_any_case(engine):
    _send(engine, goal_event(plan_id="plan-mrn-search", mrn="MRN-AbC-77"))
    _send(engine, goal_event(plan_id="plan-other", mrn="MRN-other"))
    with UnitOfWork(engine) as uow:
        found = plans_page(uow.session, limit=10, search="mrn-abc-77")
    assert [listed.plan.id for listed in found.rows] == ["plan-mrn-search"]


def _sqlite_table_sql(engine, table: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :t"), {"t": table}).scalar_one()


def _history(engine, plan_id: str) -> list[int]:
    with UnitOfWork(engine) as uow:
        return [row.sequence for row in uow.history.page(plan_id)]


def test_plan_history_is_a_rowid_table_read_through_its_key_in_order_and_kept_across_the_migration(engine):
    command.downgrade(alembic_config(engine), "0019")
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        assert "WITHOUT ROWID" in _sqlite_table_sql(engine, "plan_history")
    for n in range(3):
        _send(engine, goal_event(plan_id="plan-h", goal_id=f"goal-{n}", mrn="MRN-h"))
    _send(engine, goal_event(plan_id="plan-g"))

    upgrade(engine)
    assert _history(engine, "plan-h") == [1, 2, 3] and _history(engine, "plan-g") == [1]
    _send(engine, goal_event(plan_id="plan-h", goal_id="goal-3", mrn="MRN-h"))
    assert _history(engine, "plan-h") == [1, 2, 3, 4]  # the sequence goes on from where it was
    with UnitOfWork(engine) as uow:
        assert uow.history.last_sequence("plan-h") == 4
    if sqlite:
        assert "WITHOUT ROWID" not in _sqlite_table_sql(engine, "plan_history")
        query = "SELECT * FROM plan_history WHERE plan_id = 'plan-h' AND sequence > 1 ORDER BY sequence"
        with engine.connect() as conn:
            plan = " ".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query))
        assert "USING INDEX sqlite_autoindex_plan_history_1 (plan_id=? AND sequence>?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # the key's index gives the rows in order

    command.downgrade(alembic_config(engine), "0019")  # and back, nothing lost
    assert _history(engine, "plan-h") == [1, 2, 3, 4]
    if sqlite:
        assert "WITHOUT ROWID" in _sqlite_table_sql(engine, "plan_history")
    upgrade(engine)
