"""Two indexes no query reads, dropped: each cost every team event a page written and read (issue #15)

Every accepted team event opens or changes a plan and queues an outbox entry in one transaction. On SQLite
each B-tree the transaction changes is read root to leaf again (another connection's commit empties a
connection's page cache: both gunicorn workers write) and its changed leaf is written whole to the WAL at
COMMIT, under the writer lock both workers wait on, then copied to the database file by the checkpoint:

- `ix_plans_patient_mrn`: the only query naming the column, the console's search, compares
  `lower(patient_mrn)`, which neither SQLite nor PostgreSQL can look up in an index of `patient_mrn`
  (and it is OR-ed with an `ILIKE` on the id, a scan of the plans whatever the indexes). MRNs are the
  hospital's own numbers, so each new plan put its entry on a leaf of its own: one more random page per event.
- `ix_outbox_next_attempt_at`: the claim keeps the planner off it on purpose (`coalesce(next_attempt_at,
  next_attempt_at)`, service/store/repo_outbox.py) and looks at a plan's other entries through the plan_id
  index; nothing else filters or sorts the outbox by it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from alembic import op


revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

DROPPED = (("ix_plans_patient_mrn", "plans", "patient_mrn"), ("ix_outbox_next_attempt_at", "outbox", "next_attempt_at"))


def upgrade() -> None:
    for index, table, _column in DROPPED:
        op.drop_index(index, table_name=table)


def downgrade() -> None:
    for index, table, column in DROPPED:
        op.create_index(index, table, [column], unique=False)
