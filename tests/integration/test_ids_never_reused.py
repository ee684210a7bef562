"""Ids in the API are never given to a second row (migration 0013): a client that repeats a request whose
answer it lost (`DELETE /subscriptions/{id}`, `POST /deliveries/{id}/skip`, `POST /outbox/{id}/replay`)
finds the row it meant or nothing, never a newer one. PostgreSQL's sequences never went back; SQLite, without
AUTOINCREMENT, gave the next row the id of the newest one deleted."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from service.domain.errors import NotFound
from service.notify import subscriptions as use
from service.notify.ssrf import OutboundGuard
from service.store.db import alembic_config, upgrade
from service.store.uow import UnitOfWork

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
URL = "https://team.example.org/hooks/planbridge"


def _subscribe(engine) -> int:
    guard = OutboundGuard(("team.example.org",))
    guard.check = lambda url: None  # no DNS here: the URL is never called
    return use.subscribe(UnitOfWork(engine), guard, URL, ["*"], None, NOW)["id"]


def _subscribe_at_0012(engine) -> int:
    """Subscribe as the schema of migration 0012 holds a subscription (the ORM's row has columns added since)."""
    columns = "url, event_types, secret, status, created_at, updated_at, ordering"
    values = ":url, '[\"*\"]', 'whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3', 'active', :at, :at, 'best-effort'"
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO subscriptions ({columns}) VALUES ({values})"), {"url": URL, "at": NOW})
        return conn.execute(sa.text("SELECT max(id) FROM subscriptions")).scalar_one()


def _delivery(uow: UnitOfWork, subscription_id: int, webhook_id: str) -> int:
    row = {
        "subscription_id": subscription_id,
        "plan_id": "plan-1",
        "sequence": 1,
        "event_type": "plan.updated",
        "payload": {},
        "webhook_id": webhook_id,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": NOW,
        "attempt_log": [],
        "created_at": NOW,
        "attempts_before_replay": 0,
    }
    uow.deliveries.queue([row])
    return uow.session.execute(sa.text("SELECT id FROM deliveries WHERE webhook_id = :w"), {"w": webhook_id}).scalar()


def test_a_deleted_subscription_and_its_deliveries_keep_their_ids_to_themselves(engine):
    first = _subscribe(engine)
    with UnitOfWork(engine) as uow:
        old_delivery = _delivery(uow, first, "msg_first")
        uow.commit()
    use.unsubscribe(UnitOfWork(engine), first)

    second = _subscribe(engine)
    with UnitOfWork(engine) as uow:
        new_delivery = _delivery(uow, second, "msg_second")
        uow.commit()
    assert second > first and new_delivery > old_delivery
    with pytest.raises(NotFound):  # the repeated DELETE finds nothing, and leaves the new subscription alone
        use.unsubscribe(UnitOfWork(engine), first)
    with UnitOfWork(engine) as uow:
        assert uow.subscriptions.get(second).url == URL
        assert uow.deliveries.find(old_delivery) is None


def test_a_pruned_outbox_entrys_id_is_never_given_again(engine):
    with UnitOfWork(engine) as uow:
        uow.outbox.add("plan-1", "push_plan", None, None, NOW)
        uow.commit()
    with UnitOfWork(engine) as uow:
        (entry,) = uow.outbox.list()
        uow.outbox.finish(entry.id, NOW)
        uow.commit()
    with UnitOfWork(engine) as uow:
        assert uow.outbox.prune_done(NOW + timedelta(days=1), batch=10) == 1
        uow.commit()
    with UnitOfWork(engine) as uow:
        uow.outbox.add("plan-2", "push_plan", None, None, NOW)
        uow.commit()
    with UnitOfWork(engine) as uow:
        (newer,) = uow.outbox.list()
    assert newer.id > entry.id


def test_the_migration_keeps_every_row_and_its_foreign_keys(engine):
    """0013 makes the four tables again on SQLite (on PostgreSQL it changes nothing): their rows and ids stay,
    a delivery still belongs to its subscription (deleting one deletes the other) and ids go on upwards."""
    command.downgrade(alembic_config(engine), "0012")
    first = _subscribe_at_0012(engine)
    with UnitOfWork(engine) as uow:
        delivery = _delivery(uow, first, "msg_kept")
        uow.outbox.add("plan-1", "push_plan", None, None, NOW)
        uow.commit()
    upgrade(engine)

    with UnitOfWork(engine) as uow:
        assert uow.subscriptions.get(first).url == URL
        assert uow.deliveries.get(delivery).webhook_id == "msg_kept"
        assert [e.plan_id for e in uow.outbox.list()] == ["plan-1"]
    use.unsubscribe(UnitOfWork(engine), first)  # foreign keys are on again: the delivery goes with it
    with UnitOfWork(engine) as uow:
        assert uow.deliveries.find(delivery) is None
    assert _subscribe(engine) > first
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.text(
                "INSERT INTO deliveries (subscription_id, plan_id, sequence, event_type, payload, webhook_id, "
                "status, attempts, next_attempt_at, attempt_log, created_at, attempts_before_replay) "
                "VALUES (987654, 'p', 1, 'x', '{}', 'msg_orphan', 'pending', 0, :at, '[]', :at, 0)"
            ),
            {"at": NOW},
        )
