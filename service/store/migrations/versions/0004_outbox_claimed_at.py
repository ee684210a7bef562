"""outbox.claimed_at: when a worker took the entry it is working on (null while it waits)

A notification that arrives while its plan is being re-read must queue a new re-read: the one in
flight may already have read the server. Telling in-flight entries from waiting ones needs this.
The partial unique index lets one worker at a time hold an entry of a given plan.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    held = sa.text("status = 'pending' AND claimed_at IS NOT NULL")
    op.create_index("uq_outbox_held_plan", "outbox", ["plan_id"], unique=True, sqlite_where=held, postgresql_where=held)


def downgrade() -> None:
    op.drop_index("uq_outbox_held_plan", table_name="outbox")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("claimed_at")
