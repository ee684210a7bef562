"""plan_history (every accepted change of a plan, in order) and sync_state.provenance_through

- `plan_history`: one row per accepted change, written in the change's transaction by
  `service.notify.changes.record_change`: its sequence (the change log's), when, the source (`team`:
  sender, event type, event id, member ids named; `ehr`: the resource pulled and its version) and the
  plan paths it changed. Ids, types and paths only, never a value. Served by `GET /plans/{id}/history`.
- `sync_state.provenance_through`: the last history sequence a successful push carried, so the next
  push's FHIR Provenance names the senders and members of the team changes after it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plan_history",
        sa.Column("plan_id", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=True),
        sa.Column("event_id", sa.String(length=256), nullable=True),
        sa.Column("members", sa.JSON(), nullable=True),
        sa.Column("resource_type", sa.String(length=64), nullable=True),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("resource_version", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("paths", sa.JSON(), nullable=False),
        sa.Column("paths_total", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("plan_id", "sequence", name=op.f("pk_plan_history")),
    )
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provenance_through", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_column("provenance_through")
    op.drop_table("plan_history")
