"""inbound_events.sender: who signed the event; the idempotency key becomes (sender, webhook_id)

Webhook ids are chosen by each sender, so two team systems may send the same one; events recorded
before this revision belong to the "default" sender (PLANBRIDGE_WEBHOOK_SECRET).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sender", sa.String(length=64), server_default="default", nullable=False))
        batch_op.drop_constraint(batch_op.f("pk_inbound_events"), type_="primary")
        batch_op.create_primary_key(batch_op.f("pk_inbound_events"), ["sender", "webhook_id"])


def downgrade() -> None:
    # Refuses (a duplicate key) when two senders have used the same webhook id.
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("pk_inbound_events"), type_="primary")
        batch_op.create_primary_key(batch_op.f("pk_inbound_events"), ["webhook_id"])
        batch_op.drop_column("sender")
