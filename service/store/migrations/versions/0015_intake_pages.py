"""Fewer pages written per team event: an unused index dropped; on SQLite, the change log's tables WITHOUT ROWID

Every accepted team event inserts a row into inbound_events, plan_sequences and plan_history (with the plan and
its outbox entry), in one transaction. On SQLite each B-tree page a commit changes is written whole to the WAL
(and later copied to the database file), and rows keyed by a plan or webhook id land on pages of their own, so the
pages a row touches, more than the row, make the commit's cost (bench/webhook_load.py, issue #15):
- `ix_inbound_events_plan_id` was never read by any query: it only cost one more page per event.
- `plan_history` and `plan_sequences` are read and written only by their primary keys; as rowid tables each row
  was stored twice (the table and its primary key's index). WITHOUT ROWID stores it once, in the key's own
  B-tree (https://www.sqlite.org/withoutrowid.html); their rows are small, as that layout wants. PostgreSQL
  has no rowid: nothing changes there but the index.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from alembic import op


revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

WITHOUT_ROWID = ("plan_history", "plan_sequences")


def upgrade() -> None:
    op.drop_index("ix_inbound_events_plan_id", table_name="inbound_events")
    if op.get_bind().dialect.name == "sqlite":
        for table in WITHOUT_ROWID:
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_with_rowid": False}):
                pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in WITHOUT_ROWID:
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_with_rowid": True}):
                pass
    op.create_index("ix_inbound_events_plan_id", "inbound_events", ["plan_id"], unique=False)
