"""subscriptions.previous_secret and subscriptions.previous_secret_until: a team subscription's signing secret
can be rotated

`POST /subscriptions/{id}/rotate-secret` (`planbridge notifications rotate-secret ID`) gives a subscription a new
secret and keeps the one it replaces until `previous_secret_until`: until then every delivery is signed with
both (two signatures in `webhook-signature`, as Standard Webhooks allows), so the receiver may move to the new
secret at its own pace. Existing subscriptions have no previous secret.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


# Plain ALTER TABLE both ways, never a batch copy of the table: on SQLite a copy would lose the AUTOINCREMENT that
# migration 0013 gave `subscriptions` (ids never reused). SQLite drops a column in place since 3.35.


def upgrade() -> None:
    op.add_column("subscriptions", sa.Column("previous_secret", sa.String(length=128), nullable=True))
    op.add_column("subscriptions", sa.Column("previous_secret_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("subscriptions", "previous_secret_until")
    op.drop_column("subscriptions", "previous_secret")
