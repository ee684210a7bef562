"""Notifications to team systems: the per-subscription ordering choice (strict or best-effort), skipping,
attempt counts that agree with the attempt log across replays, and the changed paths every notification
carries. On SQLite and PostgreSQL, against real loopback receivers, with a clock moved by hand."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from service.api.app import create_app
from service.domain.errors import InvalidInput, RuleViolation
from service.notify import subscriptions as use
from service.store.uow import UnitOfWork
from service.sync.merge import changed_paths, strip_bookkeeping
from tests.e2e.test_event_catalogue import STORY
from tests.integration.test_notify import Notify
from tests.support import FIXTURES, settings, signed

KEY = "ordering-key-0123456789abcdef"


def sent(receiver, plan_id: str) -> list[int]:
    """The sequences of one plan's changes the receiver was sent, in the order they came (retries too)."""
    return [p["data"]["sequence"] for p in receiver.payloads() if p["data"]["plan_id"] == plan_id]


@pytest.mark.parametrize("ordering", ["strict", "best-effort"])
def test_a_dead_delivery_holds_back_its_plans_later_ones_only_under_strict_ordering(engine, receivers, ordering):
    notify = Notify(engine, delivery_max_attempts=2)
    receiver = receivers(script=[(500, {}, 0.0)] * 2)  # the first change of plan-a fails twice: dead
    sub = use.subscribe(UnitOfWork(engine), notify.guard, receiver.url, ["*"], None, notify.clock(), ordering)
    assert sub["ordering"] == ordering
    notify.change("plan-a", version=1)
    notify.change("plan-a", version=2)
    notify.worker.run_until_idle()
    notify.later()
    notify.change("plan-b", version=1)
    notify.later()
    notify.later()
    first, second = notify.deliveries(sub["id"], "plan-a")
    assert first["status"] == "dead"
    assert sent(receiver, "plan-b") == [1]  # another plan never waits for plan-a
    if ordering == "best-effort":  # the dead one stops holding back: plan-a's second change went out
        assert second["status"] == "delivered" and sent(receiver, "plan-a") == [1, 1, 2]
        return
    assert (second["status"], second["attempts"]) == ("pending", 0) and sent(receiver, "plan-a") == [1, 1]
    use.replay_delivery(UnitOfWork(engine), first["id"], notify.clock())
    assert notify.worker.run_until_idle() == 2  # the replayed one, then the one it held back
    assert sent(receiver, "plan-a") == [1, 1, 1, 2]
    assert [d["status"] for d in notify.deliveries(sub["id"], "plan-a")] == ["delivered", "delivered"]


def test_under_strict_ordering_skipping_the_dead_delivery_lets_the_rest_go(engine, receivers):
    notify = Notify(engine, delivery_max_attempts=1)
    receiver = receivers(script=[(500, {}, 0.0)])
    sub = use.subscribe(UnitOfWork(engine), notify.guard, receiver.url, ["*"], None, notify.clock(), "strict")
    for version in (1, 2, 3):
        notify.change("plan-a", version=version)
    assert notify.worker.run_until_idle() == 1
    dead = notify.deliveries(sub["id"])[0]
    assert dead["status"] == "dead" and notify.later() == 0
    skipped = use.skip_delivery(UnitOfWork(engine), dead["id"], notify.clock())
    assert skipped["status"] == "skipped" and skipped["attempts"] == 1
    assert notify.worker.run_until_idle() == 2
    assert sent(receiver, "plan-a") == [1, 2, 3]
    assert [d["status"] for d in notify.deliveries(sub["id"])] == ["skipped", "delivered", "delivered"]
    for action in (use.skip_delivery, use.replay_delivery):  # a skipped one is closed; a delivered one too
        with pytest.raises(RuleViolation, match="only dead or failed"):
            action(UnitOfWork(engine), dead["id"], notify.clock())
    # Switching a subscription's ordering takes effect for what is waiting.
    best = use.set_ordering(UnitOfWork(engine), sub["id"], "best-effort", notify.clock())
    assert best["ordering"] == "best-effort"
    with pytest.raises(InvalidInput):
        use.set_ordering(UnitOfWork(engine), sub["id"], "loose", notify.clock())


def test_a_delivery_being_sent_is_neither_replayed_nor_skipped(engine):
    notify = Notify(engine)
    sub = notify.subscribe("http://127.0.0.1:9/hook")
    notify.change("plan-a")
    claimed = notify.worker._claim()
    assert claimed is not None
    with UnitOfWork(engine) as uow:
        row = uow.deliveries.get(claimed.delivery_id)
        row.status = "failed"  # as if an earlier attempt had failed and a worker took it again
        uow.commit()
    for action in (use.replay_delivery, use.skip_delivery):
        with pytest.raises(RuleViolation, match="being sent now"):
            action(UnitOfWork(engine), claimed.delivery_id, notify.clock())
    assert notify.deliveries(sub["id"])[0]["claimed_at"] is not None


def test_attempt_counts_agree_with_the_attempt_log_across_replays(engine, receivers):
    notify = Notify(engine, delivery_max_attempts=3)
    receiver = receivers(script=[(500, {}, 0.0)] * 5)
    sub = notify.subscribe(receiver.url)
    notify.change("plan-a")

    def delivery() -> dict:
        (found,) = notify.deliveries(sub["id"])
        assert found["attempts"] == len(found["attempt_log"]) == found["attempt_log"][-1]["attempt"]
        assert [e["attempt"] for e in found["attempt_log"]] == list(range(1, found["attempts"] + 1))
        return found

    notify.worker.run_until_idle()
    notify.later()
    notify.later()
    dead = delivery()
    assert (dead["status"], dead["attempts"], dead["attempts_since_replay"]) == ("dead", 3, 0 + 3)
    replayed = use.replay_delivery(UnitOfWork(engine), dead["id"], notify.clock())
    assert (replayed["status"], replayed["attempts"], replayed["attempts_since_replay"]) == ("pending", 3, 0)
    notify.worker.run_until_idle()
    again = delivery()
    # The replay's first attempt is the fourth in all; it has two more before it is dead again.
    assert (again["status"], again["attempts"], again["attempts_since_replay"]) == ("failed", 4, 1)
    notify.later()
    assert delivery()["status"] == "failed"
    notify.later()
    final = delivery()
    assert (final["status"], final["attempts"]) == ("delivered", 6)
    assert [e["status_code"] for e in final["attempt_log"]] == [500] * 5 + [200]


class Intake:
    """The app through Flask's test client: signed team events in, the plan read back."""

    def __init__(self, engine) -> None:
        self.app = create_app(settings(api_keys=(KEY,)), engine)
        self.client = self.app.test_client()
        self.plan_id, self.mrn = f"plan-{uuid.uuid4().hex[:10]}", f"MRN-{uuid.uuid4().hex[:10]}"

    def post(self, example: str) -> str:
        event = copy.deepcopy(json.loads((FIXTURES / "events" / f"{example}.json").read_text()))
        event["data"]["plan_id"] = self.plan_id
        if "patient" in event["data"]:
            event["data"]["patient"]["mrn"] = self.mrn
        body = json.dumps(event).encode()
        answer = self.client.post("/webhooks/team", data=body, headers=signed(body))
        assert answer.status_code == 202, answer.get_json()
        return event["type"]

    def plan(self) -> dict | None:
        answer = self.client.get(f"/plans/{self.plan_id}", headers={"Authorization": f"Bearer {KEY}"})
        return answer.get_json() if answer.status_code == 200 else None


def test_every_team_notification_carries_the_paths_of_the_plan_that_changed(engine):
    notify = Notify(engine)
    everything = notify.subscribe("http://127.0.0.1:9/all")
    goals_only = notify.subscribe("http://127.0.0.1:9/goals", ("goal.status_changed",))
    intake = Intake(engine)
    expected: dict[str, list[str]] = {}
    types = []
    for example in STORY:
        before = intake.plan()
        types.append(intake.post(example))
        after = intake.plan()
        # The oracle: the same function the pull uses, on the plan as the API shows it before and after.
        expected[example] = (
            ["*"] if before is None else changed_paths(strip_bookkeeping(before), strip_bookkeeping(after))
        )
    with UnitOfWork(engine) as uow:
        payloads = [d.payload for d in uow.deliveries.list(everything["id"], plan_id=intake.plan_id)]
        (status_changed,) = [d.payload for d in uow.deliveries.list(goals_only["id"])]
    assert [p["type"] for p in payloads] == types
    for example, payload in zip(STORY, payloads, strict=True):
        change = payload["data"]["change"]
        assert sorted(change["paths"]) == sorted(expected[example]), example  # (the API's JSON sorts keys)
        assert change["paths"], example  # every event of the story changes something
        assert {"event_id", "sender", "data", "paths"} <= set(change)
    by_type = {p["type"]: p["data"]["change"]["paths"] for p in payloads}
    assert by_type["plan.created"] == ["*"]
    assert by_type["goal.proposed"] == ["goals"]  # the plan's first goal: the list it starts
    assert by_type["member.joined"] == ["team[id=dietitian]"]
    assert by_type["plan.updated"] == ["title", "what_matters"]
    assert "goals[id=goal-walk].lifecycle_status" in by_type["goal.status_changed"]
    assert status_changed["data"]["change"]["paths"] == by_type["goal.status_changed"]
