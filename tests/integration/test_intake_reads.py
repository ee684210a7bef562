"""The intake reads less per event (issue #15) and answers the same: a new webhook id is not looked up before the
event is recorded (a used one fails on its key, and the retry replays), and the active subscriptions are read
once per transaction, however many changes of a group commit ask."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.notify import subscriptions as use
from service.notify.ssrf import OutboundGuard
from service.services.events import ReusedWebhookId
from service.store import repo_notify
from service.store.repo_plans import InboundEventRepository, PlanRepository
from service.store.tables import DeliveryRow, OutboxRow, PlanHistoryRow, PlanRow
from service.store.uow import UnitOfWork
from tests.integration.test_event_service import apply, count
from tests.support import Clock, goal_event

URL = "https://team.example.org/hooks/planbridge"


def _answers_read(monkeypatch) -> list[str]:
    asked: list[str] = []
    real = InboundEventRepository.answer

    def answer(self, sender: str, webhook_id: str):
        asked.append(webhook_id)
        return real(self, sender, webhook_id)

    monkeypatch.setattr(InboundEventRepository, "answer", answer)
    return asked


def _subscribe(engine, event_types: list[str]) -> int:
    guard = OutboundGuard(("team.example.org",))
    guard.check = lambda url: None  # no DNS here: the URL is never called
    return use.subscribe(UnitOfWork(engine), guard, URL, event_types, None, Clock()())["id"]


def test_a_new_webhook_id_is_recorded_without_being_looked_up_first(engine, monkeypatch):
    asked = _answers_read(monkeypatch)
    first = apply(engine, goal_event(plan_id="plan-a"), "msg_new")
    assert first.status == 202 and not first.replayed
    assert asked == []  # one statement fewer per event


def test_a_used_webhook_id_fails_on_its_key_and_the_retry_replays_leaving_nothing_of_the_try(engine, monkeypatch):
    event = goal_event(plan_id="plan-b", mrn="MRN-B")
    first = apply(engine, event, "msg_1")
    _subscribe(engine, ["*"])  # the try would queue a delivery, and take a change number
    asked = _answers_read(monkeypatch)
    again = apply(engine, event, "msg_1")
    assert again.replayed and (again.status, again.body) == (first.status, first.body)
    assert asked == ["msg_1"]
    # The try applied the event once more (a second goal-walk is refused: 409) and recorded it; the key refused
    # the record, and all of the try went: one outbox entry, one history row, no delivery, the next number 2.
    assert count(engine, OutboxRow.__table__) == 1
    assert count(engine, PlanHistoryRow.__table__) == 1
    assert count(engine, DeliveryRow.__table__) == 0
    apply(engine, goal_event(plan_id="plan-b", goal_id="goal-swim", mrn="MRN-B"), "msg_2")
    with engine.connect() as conn:
        sequences = conn.execute(sa.select(PlanHistoryRow.sequence).order_by(PlanHistoryRow.sequence)).scalars()
        assert list(sequences) == [1, 2]
    assert count(engine, DeliveryRow.__table__) == 1


def test_a_reused_webhook_id_whose_try_opened_a_plan_leaves_no_trace_of_it(engine):
    apply(engine, goal_event(plan_id="plan-d", mrn="MRN-D"), "msg_1")
    _subscribe(engine, ["*"])
    # Another body under the same id: the try opens plan-x (plan, outbox entry, change number, history row,
    # delivery), then recording the event fails on its key; the retry finds the id used for another body.
    with pytest.raises(ReusedWebhookId):
        apply(engine, goal_event(plan_id="plan-x", mrn="MRN-X"), "msg_1")
    with UnitOfWork(engine) as uow:
        assert uow.plans.get("plan-x") is None
    assert count(engine, OutboxRow.__table__) == 1
    assert count(engine, PlanHistoryRow.__table__) == 1
    assert count(engine, DeliveryRow.__table__) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM plan_sequences WHERE plan_id = 'plan-x'")).scalar() == 0


def test_the_active_subscriptions_are_read_once_per_transaction_and_again_after_a_change(engine, monkeypatch):
    first = _subscribe(engine, ["goal.proposed"])
    reads: list[int] = []
    real = repo_notify._ACTIVE_SUBSCRIPTIONS.all
    monkeypatch.setattr(
        repo_notify._ACTIVE_SUBSCRIPTIONS, "all", lambda session, params: reads.append(1) or real(session, params)
    )
    with UnitOfWork(engine) as uow:
        assert uow.subscriptions.wanting("goal.proposed") == [first]
        assert uow.subscriptions.wanting("plan.updated") == []
        assert uow.subscriptions.wanting("goal.proposed") == [first]
        assert len(reads) == 1
        second = uow.subscriptions.add(URL, ["*"], "whsec_" + "A" * 32, None, Clock()())
        assert uow.subscriptions.wanting("plan.updated") == [second.id]  # this transaction's own change
        uow.subscriptions.set_status(second, "disabled", "test", Clock()())
        uow.flush()
        assert uow.subscriptions.wanting("plan.updated") == []
        uow.commit()
    with UnitOfWork(engine) as uow:  # another transaction reads them again
        assert uow.subscriptions.wanting("goal.proposed") == [first]
    assert len(reads) == 4


def test_a_subscription_made_between_two_events_hears_the_second(engine):
    apply(engine, goal_event(plan_id="plan-c", mrn="MRN-C"), "msg_1")
    _subscribe(engine, ["*"])
    apply(engine, goal_event(plan_id="plan-c", goal_id="goal-swim", mrn="MRN-C"), "msg_2")
    with engine.connect() as conn:
        assert conn.execute(sa.select(DeliveryRow.sequence)).scalars().all() == [2]


def test_a_new_plan_is_probed_once_for_itself_and_for_a_twin_in_all_but_case(engine, monkeypatch):
    """A drafted event that opens a plan learns from one probe of the folded-id index both that the plan is
    still not there and whether another plan's id equals it but for case: no second read, same refusal."""
    asked: list[str] = []
    real = PlanRepository.twin_in_all_but_case

    def twin_in_all_but_case(self, plan_id: str):
        asked.append(plan_id)
        return real(self, plan_id)

    monkeypatch.setattr(PlanRepository, "twin_in_all_but_case", twin_in_all_but_case)
    assert apply(engine, goal_event(plan_id="plan-Case"), "msg_a").status == 202
    twin = apply(engine, goal_event(plan_id="plan-case"), "msg_b")
    assert twin.status == 409
    assert "plan plan-case differs from plan plan-Case only in case" in twin.body["detail"]
    assert asked == []  # each draft's probe answered it
    assert count(engine, PlanRow) == 1
