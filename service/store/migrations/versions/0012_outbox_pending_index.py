"""outbox: a partial index of the pending entries by id, for the claim

The claim takes the oldest pending entry it may (see `OutboxRepository.claim_next`). On PostgreSQL,
through the status index (equal statuses in heap order), it read every pending entry, checked each
against the plan's other entries and sorted them, for each claim: a few ms a claim with 400 queued,
tens of ms with thousands, on every worker. `ix_outbox_pending` holds only pending entries, in id
order, so the claim stops at the first entry it may take. SQLite's status index already keeps equal
statuses in rowid order: there the index is not made (it would only cost every event an index write).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa


revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_outbox_pending", "outbox", ["id"], postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_outbox_pending", table_name="outbox")
