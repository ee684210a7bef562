"""fhir_links: an index by (resource_type, fhir_id), and deleted_version, to trace the EHR's deletes to plans

An incremental pull reads the type-level history of Goals, CareTeams, check-in Observations and CarePlans since
its cursor, and traces each resource the server shows deleted to the plans whose links name it
(`FhirLinkRepository.naming`: `resource_type = ? AND fhir_id IN (...)`). The table's only index was its key,
(plan_id, local_key), so each trace scanned every link; `ix_fhir_links_resource` makes it one probe per id.

`deleted_version` notes, on a link the pull keeps (its plan's CarePlan was gone: the pull said `not-on-server`),
which delete of the resource a pull was already made for, so later pulls, whose history may list that delete
again until the cursor passes it, do not pull the plan for it again. Nullable: every existing link has none.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_fhir_links_resource", "fhir_links", ["resource_type", "fhir_id"])
    with op.batch_alter_table("fhir_links", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleted_version", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fhir_links", schema=None) as batch_op:
        batch_op.drop_column("deleted_version")
    op.drop_index("ix_fhir_links_resource", table_name="fhir_links")
