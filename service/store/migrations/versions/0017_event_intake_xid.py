"""inbound_events.intake_xid on PostgreSQL: `GET /metrics` counts only the events received since its last scrape

The event families of `GET /metrics` (`planbridge_events`, `planbridge_events_by_sender`) are exact counts of
every event ever received, and received events are never deleted. Each process keeps the counts it has read and
adds only the rows a later scrape can see that an earlier one could not:
- On SQLite nothing changes: writers take turns, so an event committed after a scrape always has a rowid above
  the highest that scrape saw (inbound_events is a rowid table and no row is deleted).
- On PostgreSQL transactions commit in any order, so neither a sequence nor a timestamp tells which rows a
  snapshot saw. Each row now records the id of the transaction that inserted it (the column's default,
  `pg_current_xact_id()`, computed by the server in the same INSERT: no statement is added to the intake). The
  rows a snapshot did not see are exactly those whose transaction was running when it was taken (its list of
  running transactions) or began after (ids from its xmax on), and this index finds them: new ids are the
  highest, so each event appends to its right edge. Rows received before this migration have no id (NULL, not in
  the partial index): every snapshot from now on sees them.
The column is not in the ORM model on purpose: the intake's INSERT names every column of the model, and would
store NULL over the default.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Nullable with no default first (no table rewrite), then the default, which only new rows get.
    op.add_column("inbound_events", sa.Column("intake_xid", sa.BigInteger(), nullable=True))
    op.execute("ALTER TABLE inbound_events ALTER COLUMN intake_xid SET DEFAULT (pg_current_xact_id()::text::bigint)")
    op.create_index(
        "ix_inbound_events_intake_xid",
        "inbound_events",
        ["intake_xid"],
        postgresql_where=sa.text("intake_xid IS NOT NULL"),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_inbound_events_intake_xid", table_name="inbound_events")
    op.drop_column("inbound_events", "intake_xid")
