"""On SQLite, plan_history back to a rowid table (its key in an index of its own): fewer pages per team event

Migration 0015 made plan_history WITHOUT ROWID, to store each row once. But a WITHOUT ROWID table is a B-tree
whose interior pages hold whole rows, and a history row (~135 bytes: ids, the event type and id, members,
paths) leaves ~12 of them on a 2 KiB page: by 40,000 changes the tree was five levels deep, and each team
event, whose row lands at a random plan id, read all five and, as full leaves split, wrote 2.15 pages of it
(`bench/webhook_intake.py --pages`, 4 events a commit, 30,000 rows; issue #15). As a rowid table, rows are
appended in insertion order (0.37 pages an event: one page per commit, shared by a group commit's events)
and the key (plan_id, sequence), ~25 bytes, goes into an index of its own: ~70 entries a page, three levels
at 30,000, 1.30 pages an event. Every query of the table asks by plan_id and sequence, which that index
answers in order, as the table's own key did. PostgreSQL has no rowid: nothing changes there.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from alembic import op


revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def _rowid(with_rowid: bool) -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("plan_history", recreate="always", table_kwargs={"sqlite_with_rowid": with_rowid}):
            pass


def upgrade() -> None:
    _rowid(True)


def downgrade() -> None:
    _rowid(False)
