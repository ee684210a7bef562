"""Prepared statements: stored exactly as the ORM stores, read back as it reads, errors as SQLAlchemy's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.store.prepared import Prepared
from service.store.tables import InboundEventRow
from service.store.uow import UnitOfWork

EVENTS = InboundEventRow.__table__
INSERT = Prepared(sa.insert(EVENTS).values({c.key: sa.bindparam(c.key, type_=c.type) for c in EVENTS.columns}))
READ = Prepared(sa.select(EVENTS.c.received_at, EVENTS.c.body).where(EVENTS.c.webhook_id == sa.bindparam("id")))


def row(webhook_id: str, received_at: datetime) -> dict:
    return {
        "sender": "default",
        "webhook_id": webhook_id,
        "event_type": "note.added",
        "plan_id": "plan-1",
        "body_sha256": "0" * 64,
        "body": {"data": {"text": "ünïcode", "n": [1, 2.5, None, True]}},
        "received_at": received_at,
        "response_status": 202,
        "response_body": {"status": "accepted"},
    }


def test_values_round_trip_and_read_the_same_through_the_orm(engine):
    at = datetime(2026, 11, 22, 10, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with UnitOfWork(engine) as uow:
        assert uow.session is not None
        assert INSERT.execute(uow.session, row("msg-1", at)) == 1
        uow.commit()
    with UnitOfWork(engine) as uow:
        assert uow.session is not None
        received_at, body = READ.first(uow.session, {"id": "msg-1"})
        orm = uow.session.get(InboundEventRow, ("default", "msg-1"))
        assert READ.first(uow.session, {"id": "nobody"}) is None
    assert received_at == at and received_at.tzinfo is not None and received_at.utcoffset() == timedelta(0)
    assert received_at == orm.received_at.astimezone(UTC)
    assert body == orm.body == row("x", at)["body"]


def test_a_duplicate_key_raises_sqlalchemys_integrity_error_and_the_transaction_rolls_back(engine):
    at = datetime(2026, 11, 22, tzinfo=UTC)
    with UnitOfWork(engine) as uow:
        assert uow.session is not None
        INSERT.execute(uow.session, row("msg-dup", at))
        with pytest.raises(IntegrityError):
            INSERT.execute(uow.session, row("msg-dup", at))
        uow.rollback()
    with UnitOfWork(engine) as uow:
        assert uow.session is not None
        assert READ.first(uow.session, {"id": "msg-dup"}) is None


def test_a_bind_carrying_a_value_is_refused_at_first_use(engine):
    literal = Prepared(sa.select(EVENTS.c.webhook_id).where(EVENTS.c.plan_id == "plan-1"))
    with UnitOfWork(engine) as uow, pytest.raises(ValueError, match="carries a value"):
        assert uow.session is not None
        literal.all(uow.session, {})


def test_statements_follow_the_sessions_transaction_across_commit_rollback_and_savepoints(engine):
    # The DB-API connection is kept per transaction (service.store.prepared.dbapi_connection): after a
    # commit or a rollback the next statement must open and join the session's new transaction, never
    # run on the old connection outside one (on SQLite that would commit on its own, and survive rollback).
    at = datetime(2026, 11, 22, tzinfo=UTC)
    with UnitOfWork(engine) as uow:
        session = uow.session
        assert session is not None
        INSERT.execute(session, row("kept", at))
        uow.commit()
        INSERT.execute(session, row("rolled-back", at))
        uow.rollback()
        INSERT.execute(session, row("outer", at))
        nested = session.begin_nested()
        INSERT.execute(session, row("in-savepoint", at))
        assert READ.first(session, {"id": "in-savepoint"}) is not None
        nested.rollback()
        assert READ.first(session, {"id": "outer"}) is not None
        uow.commit()
    with UnitOfWork(engine) as uow:
        assert uow.session is not None
        found = {i for i in ("kept", "rolled-back", "outer", "in-savepoint") if READ.first(uow.session, {"id": i})}
    assert found == {"kept", "outer"}
