"""sync_state.push_sent_document: what a push whose outcome is unknown sent

When a push's answer is lost, the server may or may not hold what it sent. The re-read that follows
merges against both possibilities, and a field they disagree on becomes a conflict rather than a
guess (see service/sync/pull.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("push_sent_document", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_column("push_sent_document")
