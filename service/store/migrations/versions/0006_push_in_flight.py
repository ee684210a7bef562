"""sync_state.push_started_at: a push whose outcome was never recorded

A worker killed after its transaction reached the FHIR server but before it recorded the outcome
leaves the plan's links and merge base behind the server. The next push must first re-read the
plan (so nothing the EHR wrote in between is overwritten by a conditional update); this column says
a push was sent and its outcome is unknown.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("push_started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_column("push_started_at")
