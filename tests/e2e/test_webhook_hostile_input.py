"""Hostile input at the team-event door: the same documented answer on SQLite and PostgreSQL, never a 5xx."""

import hashlib
import json

import pytest
import sqlalchemy as sa

from service.api.app import create_app
from service.api.container import utcnow
from service.services.events import WEBHOOK_ID_MAX_LENGTH
from service.store.tables import InboundEventRow, PlanRow
from service.store.uow import UnitOfWork
from tests.support import goal_event, settings, signed


@pytest.fixture
def client(engine):
    return create_app(settings(), engine).test_client()


def post(client, body: bytes, **sign):
    return client.post("/webhooks/team", data=body, headers=signed(body, **sign))


def stored(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table.__table__)).scalar_one()


def test_a_webhook_id_over_256_characters_is_refused_alike_on_every_database(engine, client):
    assert WEBHOOK_ID_MAX_LENGTH == 256 == InboundEventRow.__table__.c.webhook_id.type.length
    body = json.dumps(goal_event()).encode()
    for length in (257, 7000):
        answer = post(client, body, msg_id="m" * length)
        assert answer.status_code == 400, answer.get_data(as_text=True)[:300]  # was 202 on SQLite, 500 on PostgreSQL
        assert answer.mimetype == "application/problem+json"
        assert answer.json["type"] == "urn:planbridge:problem:invalid-input"
        assert answer.json["errors"] == {"webhook-id": ["at most 256 characters"]}
    assert stored(engine, InboundEventRow) == 0 and stored(engine, PlanRow) == 0
    assert post(client, body, msg_id="m" * 256).status_code == 202


def test_a_webhook_id_with_a_control_character_is_refused(engine, client):
    body = json.dumps(goal_event()).encode()
    answer = post(client, body, msg_id="msg_\x01x")
    assert answer.status_code == 400 and answer.json["errors"] == {"webhook-id": ["printable characters only"]}
    assert stored(engine, InboundEventRow) == 0


def test_a_signed_body_that_is_not_utf8_is_invalid_input_not_an_unsigned_request(engine, client):
    body = b'{"type": "goal.proposed", "timestamp": "2026-11-22T09:30:00Z", "data": {"plan_id": "p\xff"}}'
    answer = post(client, body)
    assert answer.status_code == 400, answer.json  # was 401: the signature was never checked
    assert answer.json["type"] == "urn:planbridge:problem:invalid-input"
    assert answer.json["detail"] == "the body is not UTF-8"
    forged = client.post("/webhooks/team", data=body, headers={**signed(b"{}"), "Content-Type": "application/json"})
    assert forged.status_code == 401  # unsigned stays unsigned, whatever the body
    utf16 = json.dumps(goal_event()).encode("utf-16")
    assert post(client, utf16).status_code == 400  # JSON between systems is UTF-8 only (RFC 8259)
    assert stored(engine, InboundEventRow) == 0


@pytest.mark.parametrize(
    "other",
    [b"{oops", b'{"type": "goal.proposed", "x": "\xff"}', b'{"type": "goal.proposed", "timestamp": "now", "data": {}}'],
    ids=["not-json", "not-utf8", "not-the-schema"],
)
def test_a_reused_webhook_id_wins_over_what_is_wrong_with_the_other_body(engine, client, other):
    first = post(client, json.dumps(goal_event()).encode(), msg_id="msg_reused")
    assert first.status_code == 202
    answer = post(client, other, msg_id="msg_reused")
    assert answer.status_code == 409, answer.json  # was 400
    assert answer.json["type"] == "urn:planbridge:problem:webhook-id-reused"
    fresh = post(client, other, msg_id="msg_fresh")
    assert fresh.status_code == 400  # a new id with that body is what it always was


def test_a_body_accepted_before_the_schemas_tightened_is_still_replayed(engine, client):
    # An event recorded (202) when its body was valid gets its answer again, not a 400, if sent again.
    event = goal_event()
    event["data"]["goal"]["description"] = "walk\x01"  # accepted before the schemas refused control characters
    body = json.dumps(event).encode()
    answer = {"status": "accepted", "event_id": "msg_old", "plan_id": "p", "plan_version": 1}
    with UnitOfWork(engine) as uow:
        uow.events.record(
            sender="default",
            webhook_id="msg_old",
            event_type="goal.proposed",
            plan_id="p",
            body_sha256=hashlib.sha256(body).hexdigest(),
            body=event,
            received_at=utcnow(),
            response_status=202,
            response_body=answer,
        )
        uow.commit()
    again = post(client, body, msg_id="msg_old")
    assert (again.status_code, again.json, again.headers["Idempotent-Replayed"]) == (202, answer, "true")
