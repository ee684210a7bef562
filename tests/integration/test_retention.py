"""Finished work is let go after PLANBRIDGE_RETAIN_DAYS; waiting, failed and dead work and events stay."""

from datetime import UTC, datetime, timedelta

from service.store.retention import prune
from service.store.tables import DeliveryRow, InboundEventRow, OutboxRow
from service.store.uow import UnitOfWork
from service.sync.worker import OutboxWorker
from tests.support import settings

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OLD, RECENT = NOW - timedelta(days=40), NOW - timedelta(days=3)


def _fill(engine) -> None:
    with UnitOfWork(engine) as uow:
        assert uow.session is not None
        for n, (status, at) in enumerate(
            [("done", OLD), ("done", OLD), ("done", OLD), ("done", RECENT), ("pending", OLD), ("dead", OLD)]
        ):
            uow.session.add(
                OutboxRow(
                    plan_id=f"plan-{n}",
                    kind="push_plan",
                    status=status,
                    attempts=1,
                    next_attempt_at=at,
                    created_at=at,
                    updated_at=at,
                )
            )
        sub = uow.subscriptions.add("https://team.example.org/hook", ["*"], "whsec_" + "A" * 32, None, OLD)
        for n, (status, delivered_at) in enumerate([("delivered", OLD), ("delivered", RECENT), ("pending", None)]):
            uow.session.add(
                DeliveryRow(
                    subscription_id=sub.id,
                    plan_id="plan-0",
                    sequence=n + 1,
                    event_type="goal.proposed",
                    payload={},
                    webhook_id=f"msg_{n}",
                    status=status,
                    attempts=1,
                    next_attempt_at=OLD,
                    attempt_log=[],
                    created_at=OLD,
                    delivered_at=delivered_at,
                )
            )
        uow.events.record(
            sender="default",
            webhook_id="msg-old",
            event_type="goal.proposed",
            plan_id="plan-0",
            body_sha256="0",
            body={},
            received_at=OLD,
            response_status=202,
            response_body={},
        )
        uow.commit()


def _left(engine) -> tuple[list[str], list[str], int]:
    with UnitOfWork(engine) as uow:
        assert uow.session is not None
        outbox = sorted(f"{r.status}@{r.updated_at.date()}" for r in uow.session.query(OutboxRow))
        deliveries = sorted(r.status for r in uow.session.query(DeliveryRow))
        return outbox, deliveries, uow.session.query(InboundEventRow).count()


def test_done_work_older_than_the_retention_goes_in_batches_and_nothing_else(engine):
    _fill(engine)
    assert prune(UnitOfWork(engine), NOW, days=30, batch=2) == {"outbox": 3, "deliveries": 1}
    outbox, deliveries, events = _left(engine)
    assert outbox == sorted([f"done@{RECENT.date()}", f"pending@{OLD.date()}", f"dead@{OLD.date()}"])
    assert deliveries == ["delivered", "pending"] and events == 1  # received events are kept
    assert prune(UnitOfWork(engine), NOW, days=30) == {"outbox": 0, "deliveries": 0}


def test_the_worker_prunes_unless_retention_is_off(engine):
    _fill(engine)
    keep = OutboxWorker(UnitOfWork(engine), None, settings(retain_days=0, resync_seconds=0), lambda: NOW)
    keep.before_pass()
    assert len(_left(engine)[0]) == 6
    worker = OutboxWorker(UnitOfWork(engine), None, settings(retain_days=30, resync_seconds=0), lambda: NOW)
    worker.before_pass()
    assert len(_left(engine)[0]) == 3
