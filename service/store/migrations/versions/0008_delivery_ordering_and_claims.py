"""subscriptions.ordering, deliveries.claimed_at and deliveries.attempts_before_replay

- `subscriptions.ordering`: `best-effort` (a dead delivery stops holding back the plan's later ones, as
  before) or `strict` (it holds them back until it is replayed or skipped). Existing subscriptions keep
  `best-effort`, the behaviour they were registered under.
- `deliveries.claimed_at`: set while a notification worker is sending the delivery (its lease runs to
  `next_attempt_at`), so one subscription has one delivery in flight at a time across workers and
  `/metrics` can count what is in flight.
- `deliveries.attempts_before_replay`: attempts made before the latest replay. `attempts` now counts
  every attempt ever made (as the attempt log does); a replay gives a full set of attempts again by
  moving this mark instead of resetting the count.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ordering", sa.String(length=16), nullable=False, server_default="best-effort"))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("attempts_before_replay", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("attempts_before_replay")
        batch_op.drop_column("claimed_at")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("ordering")
