"""Constants, the model's records, event bodies and the closure-free rules and checks of the notifications
model (tests/integration/test_notify_model.py), moved out of that file unchanged; it imports the names back.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule

from service.notify import subscriptions as use
from service.notify.changes import timestamp
from tests.support import FIXTURES

KEY = "notify-model-key-0123456789abcdef"
TIMEOUT = 0.3  # PLANBRIDGE_DELIVERY_TIMEOUT for the worker, seconds
SLOW = 0.03  # a slow endpoint's answer, well within the timeout
LATE = TIMEOUT + 0.25  # an endpoint whose 200 comes after the worker gave up: the answer is lost
MAX_ATTEMPTS = 4
RETAIN_DAYS = 1.0
LEASE = timedelta(seconds=120)  # the worker's lease (outbox_lease_seconds; 2 * TIMEOUT + 10 is less)
SETTLE_ROUNDS = 12
MAX_PLANS, MAX_SUBSCRIPTIONS = 3, 4

# The endpoint's answers: (status, headers, delay before answering)
ANSWERS: dict[str, tuple[int, dict[str, str], float]] = {
    "ok": (200, {}, 0.0),
    "no-content": (204, {}, 0.0),
    "slow": (200, {}, SLOW),
    "bad": (400, {}, 0.0),
    "gone": (410, {}, 0.0),
    "error": (500, {}, 0.0),
    "busy-now": (503, {"Retry-After": "0"}, 0.0),
    "busy-later": (429, {"Retry-After": "90"}, 0.0),
    "late": (200, {}, LATE),
}
MODES = list(ANSWERS)
# each sorted, as a subscription stores its event types
EVENT_TYPE_CHOICES = [["*"], ["*"], ["goal.proposed", "note.added"], ["plan.created", "plan.updated"]]
CHANGES = ["plan.updated", "note.added", "goal.proposed", "member.joined", "plan.reviewed"]
TICKS = [1, 20, 45, 200, 900, 3 * 3600, 7 * 3600, 2 * 86400]
PATH = re.compile(r"^(\*|[a-z_]+(\[id=[A-Za-z0-9_.-]+\])?(\.[a-z_]+(\[id=[A-Za-z0-9_.-]+\])?)*)$")
PAYLOAD_KEYS = {"type", "timestamp", "data"}
DATA_KEYS = {"plan_id", "plan_version", "sequence", "source", "change"}
TEAM_CHANGE_KEYS = {"event_id", "sender", "data", "paths"}
OPEN = ("pending", "failed")

pick = st.integers(0, 7)


class ModelViolation(AssertionError):
    """A promise of the notifications does not hold."""


@dataclass
class Arrival:
    """One request the endpoint received, and what it saw when it came."""

    index: int
    token: str
    webhook_id: str
    body: bytes
    signed: str | None  # None when the signature verified with the subscription's secret, else why not
    status: int
    retry_after: str | None
    subscription_status: str | None  # in the database when the request came (None: no such subscription)
    held_back_by: list[str]  # earlier deliveries of the plan to it that should have held this one back
    error: str | None = None  # the endpoint's own check failed (a bug of the test)

    @property
    def payload(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


# ---------------------------------------------------------------------------------------------- the model


@dataclass
class PlanModel:
    id: str
    mrn: str
    name: str
    last_sequence: int = 0
    goals: int = 0
    members: int = 0


@dataclass
class Change:
    plan_id: str
    sequence: int
    event_type: str
    data: dict[str, Any]
    event_id: str
    wanted_by: frozenset[str]  # the tokens of the subscriptions it was queued for


@dataclass
class SubscriptionModel:
    id: int
    token: str
    secret: str
    event_types: list[str]
    ordering: str
    status: str = "active"  # active, disabled (by hand or by a 410), deleted
    expected: set[tuple[str, int]] = field(default_factory=set)  # (plan, sequence) queued for it

    history: list[tuple[int, str]] = field(default_factory=list)  # (first request index, status) changes

    def become(self, status: str, first_request: int) -> None:
        self.status = status
        self.history.append((first_request, status))

    def status_at(self, request: int) -> str:
        """Its status when the endpoint's request number `request` came."""
        return next((s for n, s in reversed(self.history) if n <= request), "active")

    def wants(self, event_type: str) -> bool:
        return self.event_types == ["*"] or event_type in self.event_types


@dataclass(frozen=True)
class Seen:
    """A delivery as the database held it after a step."""

    id: int
    subscription_id: int
    plan_id: str
    sequence: int
    webhook_id: str
    status: str
    attempts: int
    next_attempt_at: datetime
    claimed_at: datetime | None
    delivered_at: datetime | None
    codes: tuple[int | None, ...]
    token: str  # the subscription's, in the model


def event_body(kind: str, plan: PlanModel, n: int) -> dict[str, Any]:
    """Return a team event of `kind` for the plan, accepted whatever the plan's state (after plan.created)."""
    name = {"plan.created": "plan-created", "goal.proposed": "goal-proposed", "member.joined": "member-joined"}
    name |= {"plan.reviewed": "plan-reviewed"}
    if kind == "plan.updated":
        return {"type": kind, "data": {"plan_id": plan.id, "title": f"Title {n}", "what_matters": f"Matters {n}"}}
    if kind == "note.added":
        data = {"plan_id": plan.id, "text": f"Note {n}", "author": "gp", "time": "2026-12-08T10:00:00Z"}
        return {"type": kind, "data": data}
    event = copy.deepcopy(json.loads((FIXTURES / "events" / f"{name[kind]}.json").read_text()))
    event["data"]["plan_id"] = plan.id
    if kind == "plan.created":
        event["data"]["patient"] = {"mrn": plan.mrn, "display_name": plan.name}
    elif kind == "goal.proposed":
        plan.goals += 1
        event["data"]["patient"] = {"mrn": plan.mrn, "display_name": plan.name}
        event["data"]["goal"]["id"] = f"goal-{plan.goals}"
        event["data"]["goal"]["description"] = f"Goal {n}"
    elif kind == "member.joined":
        plan.members += 1
        event["data"]["member_id"] = f"member-{plan.members}"
        event["data"]["name"] = f"Member {n}"
        event["data"].pop("identifier", None)
    return event


class NotifyModelRules:
    """The rules and checks of NotifyModel that need nothing of `notify_machine`'s closure."""

    def note(self, text: str) -> None:
        self.log.append(f"#{self.step} {text}")

    def fail(self, message: str) -> None:
        self.clean = False
        steps = "\n".join(f"  {line}" for line in self.log[-80:])
        subs = ", ".join(f"sub {s.id}: {s.status} {s.ordering} {s.event_types}" for s in self.subs.values())
        raise ModelViolation(f"{message}\n(at {self.clock().isoformat()}; {subs})\nsteps:\n{steps}")

    def live(self) -> list[SubscriptionModel]:
        return [s for s in self.subs.values() if s.status != "deleted"]

    def token_of(self, subscription_id: int) -> str:
        found = [s.token for s in self.live() if s.id == subscription_id]
        return found[0] if found else f"unknown subscription {subscription_id}"

    def owner(self, d: Seen) -> SubscriptionModel | None:
        return self.subs.get(d.token)

    def sub(self, i: int) -> SubscriptionModel | None:
        found = self.live()
        return found[i % len(found)] if found else None

    def change(self, plan: PlanModel, kind: str) -> None:
        event = {**event_body(kind, plan, self.counter), "timestamp": timestamp(self.clock())}
        wanted_by = frozenset(s.token for s in self.subs.values() if s.status == "active" and s.wants(kind))
        event_id = self.post(event)
        entries = self.history_after(plan)
        expected = plan.last_sequence + 1
        if [(e["sequence"], e["event_type"]) for e in entries] != [(expected, kind)]:
            self.fail(f"{kind} on {plan.id}: history after {plan.last_sequence} is {entries}, expected {expected}")
        plan.last_sequence = expected
        self.changes[(plan.id, expected)] = Change(plan.id, expected, kind, event["data"], event_id, wanted_by)
        for token in wanted_by:
            self.subs[token].expected.add((plan.id, expected))
        whom = sorted(self.subs[t].id for t in wanted_by)
        self.note(f"{kind} on {plan.id}: sequence {expected}, for subscriptions {whom}")

    def meanwhile_actions(self, todo: list[str], delivery: Seen | None) -> None:
        for what in todo:
            if delivery is None:
                return
            sub, plan = self.subs[delivery.token], next(p for p in self.plans if p.id == delivery.plan_id)
            if sub.status == "deleted" and what != "change":
                continue
            self.note(f"while delivery {delivery.id} (sub {sub.id}, {plan.id} #{delivery.sequence}) is sent:")
            if what == "delete":
                self._unsubscribe(sub)
            elif what == "disable":
                self._set_enabled(sub, False)
            elif what == "resubscribe":
                self._unsubscribe(sub)
                self._subscribe(EVENT_TYPE_CHOICES.index(sub.event_types), use.ORDERINGS.index(sub.ordering))
            elif what == "change":
                self.change(plan, "plan.updated")

    def run_worker(self, how: str) -> int:
        self.worker_step = True
        if how == "one":
            done = int(self.worker.process_one())
        else:
            done = self.worker.run_until_idle()
        self.note(f"worker {how}: {done} attempt(s)")
        if self.meanwhile_error is not None:
            raise self.meanwhile_error
        self.check()
        return done

    @initialize()
    def first_plan_and_subscription(self) -> None:
        self.begin("initialize")
        self._subscribe(0, 0)
        self._plan()
        self.check()

    def _plan(self) -> None:
        n = len(self.plans) + 1
        plan = PlanModel(f"plan-{uuid.uuid4().hex[:8]}-{n}", f"MRN-{uuid.uuid4().hex[:10]}", f"Patient {n} Zyx")
        self.plans.append(plan)
        self.change(plan, "plan.created")

    @rule()
    def new_plan(self) -> None:
        self.begin("new_plan")
        if len(self.plans) < MAX_PLANS:
            self._plan()
        self.check()

    @rule(i=pick, kind=st.sampled_from(CHANGES))
    def team_change(self, i: int, kind: str) -> None:
        self.begin("team_change")
        self.change(self.plans[i % len(self.plans)], kind)
        self.check()

    @rule(types=pick, ordering=pick)
    def subscribe(self, types: int, ordering: int) -> None:
        self.begin("subscribe")
        self._subscribe(types, ordering)
        self.check()

    @rule(i=pick, enabled=st.booleans())
    def set_enabled(self, i: int, enabled: bool) -> None:
        self.begin("set_enabled")
        sub = self.sub(i)
        if sub is not None:
            self._set_enabled(sub, enabled)
        self.check()

    @rule(i=pick)
    def unsubscribe(self, i: int) -> None:
        self.begin("unsubscribe")
        sub = self.sub(i)
        if sub is not None:
            self._unsubscribe(sub)
        self.check()

    @rule()
    def worker_process_one(self) -> None:
        self.begin("worker_process_one")
        self.run_worker("one")

    @rule(meanwhile=st.lists(st.sampled_from(["delete", "disable", "resubscribe", "change"]), max_size=3))
    def worker_one_while(self, meanwhile: list[str]) -> None:
        """One delivery, during whose POST (before its answer is recorded) subscriptions change and
        team changes come in, as they may while an endpoint takes its time to answer."""
        self.begin("worker_one_while")
        self.meanwhile = list(meanwhile)
        self.run_worker("one")
        self.meanwhile = []

    @rule()
    def worker_run_until_idle(self) -> None:
        self.begin("worker_run_until_idle")
        self.run_worker("until idle")

    @rule()
    def worker_killed_after_sending(self) -> None:
        """A worker claims a delivery and sends it, then dies before it records how it went."""
        self.begin("worker_killed")
        claimed = self.worker._claim()
        if claimed is not None:
            self.killed[claimed.webhook_id] += 1
            attempt = self.worker.attempt(claimed)
            if self.meanwhile_error is not None:
                raise self.meanwhile_error
            self.note(
                f"worker killed after sending delivery {claimed.delivery_id} "
                f"(sub {claimed.subscription_id}, {claimed.plan_id} #{claimed.sequence}): {attempt.status_code}"
            )
        self.check()

    @rule(seconds=st.sampled_from(TICKS))
    def tick(self, seconds: int) -> None:
        self.begin("tick")
        self.clock.now += timedelta(seconds=seconds)
        self.note(f"the clock moves {seconds} s")
        self.check()

    @rule()
    def settle_rule(self) -> None:
        self.begin("settle")
        self.settle()

    def delivery_of(self, token: str, sub_id: int, plan_id: str, sequence: int) -> Seen | None:
        for d in [*self.seen.values(), *self.gone.values()]:
            if (d.subscription_id, d.plan_id, d.sequence) == (sub_id, plan_id, sequence) and d.token == token:
                return d
        return None

    def check_arrival(self, arrival: Arrival, sub: SubscriptionModel | None, gone_at: dict[str, int]) -> None:
        what = f"request {arrival.index} ({arrival.webhook_id}) to "
        if sub is None:
            self.fail(f"{what} an endpoint of no subscription of this example ({arrival.token})")
        assert sub is not None
        what += f"sub {sub.id}"
        self.requests[arrival.webhook_id] += 1
        if arrival.error:
            self.fail(f"{what}: the endpoint could not check it: {arrival.error}")
        if arrival.signed is not None:
            self.fail(f"rule 4: {what} is not signed with its subscription's secret: {arrival.signed}")
        if not self.worker_step and not self.killed[arrival.webhook_id]:
            self.fail(f"{what} came outside a worker step")
        model = sub.status_at(arrival.index)
        if arrival.subscription_status != "active" or model != "active":
            self.fail(f"rule 3: {what} sent while it was {arrival.subscription_status} (model: {model})")
        if sub.token in gone_at and arrival.index > gone_at[sub.token]:
            self.fail(f"rule 3: {what} sent after its endpoint answered 410 (request {gone_at[sub.token]})")
        if arrival.held_back_by:
            self.fail(f"rule 1: {what} sent while earlier deliveries were waiting: {arrival.held_back_by}")
        self.check_payload(arrival, sub, what)

    def check_payload(self, arrival: Arrival, sub: SubscriptionModel, what: str) -> None:
        payload = arrival.payload
        if not isinstance(payload, dict) or set(payload) != PAYLOAD_KEYS or set(payload["data"]) != DATA_KEYS:
            self.fail(f"rule 6: {what}: the payload is not the documented shape: {arrival.body[:300]!r}")
        data = payload["data"]
        key = (data["plan_id"], data["sequence"])
        change = self.changes.get(key)
        if change is None or key not in sub.expected or sub.token not in change.wanted_by:
            self.fail(f"rule 3: {what}: {key} was never queued for it")
        assert change is not None
        if payload["type"] != change.event_type or data["source"] != "team" or not sub.wants(payload["type"]):
            self.fail(f"rule 6: {what}: {payload['type']} {data['source']} for {change.event_type}")
        body = data["change"]
        if set(body) != TEAM_CHANGE_KEYS or body["data"] != change.data or body["event_id"] != change.event_id:
            self.fail(f"rule 6: {what}: the change is not the event as received: {body}")
        if body["sender"] != "default" or not isinstance(data["plan_version"], int):
            self.fail(f"rule 6: {what}: sender {body['sender']!r}, plan_version {data['plan_version']!r}")
        paths = body["paths"]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and PATH.match(p) for p in paths):
            self.fail(f"rule 6: {what}: paths that are not plan paths: {paths}")
        text = arrival.body.decode()
        carried = json.dumps(change.data)
        for plan in self.plans:
            for value in (plan.mrn, plan.name):
                if value in text and value not in carried:
                    self.fail(f"rule 6: {what}: the payload carries {value!r}, which its event did not")

    def teardown(self) -> None:
        if self.clean and self.plans:
            self.step += 1
            self.note("the end: settle")
            self.settle()
