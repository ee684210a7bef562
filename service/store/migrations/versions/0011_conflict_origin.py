"""sync_conflicts: where the EHR's side of a conflict came from

- `ehr_resource_type`, `ehr_resource_id`, `ehr_version`: the FHIR resource and version that carried the
  conflict's `theirs` when the pull read it (a deleted Goal: its id, no version);
- `ehr_changed_at`: that version's `meta.lastUpdated` (when the EHR changed it);
- `ehr_changed_by`: who, as FHIR tells it: the version's `meta.source` (a URI, never a name).

All nullable: conflicts recorded before this revision keep them null ("not recorded").

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-10
"""

from alembic import op
import sqlalchemy as sa


revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_conflicts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ehr_resource_type", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ehr_resource_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ehr_version", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ehr_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("ehr_changed_by", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_conflicts", schema=None) as batch_op:
        batch_op.drop_column("ehr_changed_by")
        batch_op.drop_column("ehr_changed_at")
        batch_op.drop_column("ehr_version")
        batch_op.drop_column("ehr_resource_id")
        batch_op.drop_column("ehr_resource_type")
