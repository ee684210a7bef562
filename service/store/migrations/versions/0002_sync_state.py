"""sync state, conflicts and cursors

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op
import sqlalchemy as sa


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "sync_conflicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(length=128), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("base", sa.JSON(), nullable=True),
        sa.Column("ours", sa.JSON(), nullable=True),
        sa.Column("theirs", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_conflicts")),
    )
    with op.batch_alter_table("sync_conflicts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_conflicts_plan_id"), ["plan_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sync_conflicts_status"), ["status"], unique=False)

    op.create_table(
        "sync_cursors",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sync_cursors")),
    )
    op.create_table(
        "sync_state",
        sa.Column("plan_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("base_document", sa.JSON(), nullable=True),
        sa.Column("pushed_hash", sa.String(length=64), nullable=True),
        sa.Column("last_pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_pulled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_outcome", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("plan_id", name=op.f("pk_sync_state")),
    )
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_state_status"), ["status"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_state_status"))

    op.drop_table("sync_state")
    op.drop_table("sync_cursors")
    with op.batch_alter_table("sync_conflicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_conflicts_status"))
        batch_op.drop_index(batch_op.f("ix_sync_conflicts_plan_id"))

    op.drop_table("sync_conflicts")
