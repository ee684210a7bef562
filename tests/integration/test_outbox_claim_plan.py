"""The outbox claim reads the queue in order and stops at the first entry it may take: it never reads
every pending entry and sorts them, so a claim costs the same with 10 or 10,000 entries queued (with
thousands queued on PostgreSQL, a claim through the status index took tens of ms, on every worker).

Checked on the database's own plan for the claim statement, with done and pending entries in the table and
statistics gathered as autovacuum would."""

from __future__ import annotations

import sqlalchemy as sa

from service.api.container import utcnow
from service.store import repo_outbox
from service.store.uow import UnitOfWork


def test_the_claim_walks_the_pending_entries_in_order_without_sorting_them(engine):
    with engine.begin() as conn:
        for i in range(600):
            conn.execute(
                sa.insert(repo_outbox.OutboxRow).values(
                    plan_id=f"plan-{i % 300}", kind="push_plan", status="done" if i < 300 else "pending",
                    attempts=0, next_attempt_at=utcnow(), created_at=utcnow(), updated_at=utcnow(),
                )
            )  # fmt: skip
        conn.exec_driver_sql("ANALYZE outbox" if engine.dialect.name == "postgresql" else "ANALYZE")
    sql = str(repo_outbox._claim_next_query(repo_outbox.OutboxRow.id).compile(dialect=engine.dialect))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql, {"now": utcnow()}))
            outer = next(line for line in plan.splitlines() if "on outbox " in line and "outbox_1" not in line)
            assert "Index Scan using ix_outbox_pending on outbox" in outer, plan
            assert "Sort" not in plan, plan
        else:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, (utcnow().isoformat(),) * 3).all()
            plan = "\n".join(row[3] for row in rows)
            assert "SEARCH outbox USING INDEX ix_outbox_status (status=?)" in plan, plan
            assert "TEMP B-TREE" not in plan, plan  # equal statuses come in rowid order: no sort
        assert "USING INDEX uq_outbox_held_plan" in plan or "uq_outbox_held_plan on outbox outbox_1" in plan, plan
    with UnitOfWork(engine) as uow:  # and the claim takes the oldest pending entry
        claimed = uow.outbox.claim(utcnow(), 60)
        uow.commit()
    assert claimed is not None and claimed[1] == "plan-0"
