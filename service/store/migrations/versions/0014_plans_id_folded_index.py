"""plans: an index of the ids folded to lower case, to refuse a new plan whose id differs from another's only in case

Plan ids are case-sensitive, but FHIR servers may match identifier values without case (Medplum and the
local server do): the push of `PLAN-X` would find `plan-x`'s CarePlan, CareTeam and Goals by their
identifiers and overwrite them. An event that would open such a plan is refused (409); this index keeps
that lookup to one probe. Plan ids are FHIR ids (ASCII), which lower() folds alike on SQLite and PostgreSQL.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa


revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_plans_id_folded", "plans", [sa.text("lower(id)")])


def downgrade() -> None:
    op.drop_index("ix_plans_id_folded", table_name="plans")
