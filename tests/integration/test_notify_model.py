"""A model-based test of the notifications to team systems: team changes, subscriptions coming and going,
the delivery worker and the clock, interleaved in any order by hypothesis, on the real databases (SQLite,
PostgreSQL) and over real HTTP to a subscriber endpoint of the test's own.

Each example is a fresh world (the database emptied, a moved-by-hand clock). Then the rules run in any order:

- team changes to up to three plans through the real intake path: signed events POSTed to the Flask app's
  `/webhooks/team` (plan.created first, then plan.updated, note.added, goal.proposed, member.joined,
  plan.reviewed), numbered the way production numbers them (read back from `GET /plans/{id}/history`);
- subscriptions created (some event types or `["*"]`, `strict` or `best-effort` ordering), disabled,
  enabled again and deleted through the use cases the API and the CLI call (`service.notify.subscriptions`);
  dead or failed deliveries replayed or skipped the same way; a subscription's secret rotated
  (`rotate_secret`, with a grace period of 0, 60 or 3600 s);
- the endpoint's answer changed per subscription: 200, 204, 200 slowly, 400, 410, 500, 429/503 with a
  `Retry-After` (0 or 90 s), or 200 after the worker's timeout (the answer is lost);
- the delivery worker: one delivery (`process_one`), everything due (`run_until_idle`), or a worker killed
  after sending and before recording (its lease runs out);
- the clock moved on (backoff, leases), and the retention (`service.store.retention.prune`);
- now and then, and at the end of every example, everything settled: every endpoint answers 200, dead
  deliveries are replayed and the clock moves past every backoff until nothing active is left to send.

The endpoint is one `ThreadingHTTPServer` on 127.0.0.1 (the worker's HTTP layer is urllib3 to a pinned
address, so a real server costs nothing and tests the real transport, timeouts included). On every
request it verifies the signature and reads the database as the worker left it when it sent the request.
After every step (`check`):

1. order: when a change of a plan reaches a subscriber, no earlier delivery of that plan to it is pending
   or failed, nor dead under `strict` ordering (docs/notifications.md, "Order, and a dead delivery"; the
   check runs in the endpoint, at the moment of the request);
2. at least once, duplicates only when an answer was lost: every request matches an attempt in the
   delivery's log (or a killed worker's send); nothing is sent again after an attempt recorded a 2xx; once
   settled, every change made while an active subscription wanted it is delivered;
3. a change is queued for exactly the subscriptions that were active and wanted its type when it was
   made (none created after it, none disabled or deleted); nothing is sent to a subscription that is
   disabled or deleted, or after it answered 410;
4. every request is signed (Standard Webhooks) with its subscription's current secret and, while the grace
   period of its latest rotation lasts (by the clock when the request comes), with the secret that rotation
   replaced: exactly those signatures, so no secret rotated out earlier, or past its grace period, signs;
5. backoff, not a retry storm: no attempt before the delivery's next attempt time, at most one attempt per
   delivery per worker step, every retry at least BACKOFF_FLOOR later, within the exponential ceiling for
   its attempt number, or exactly as long as the endpoint's `Retry-After` asked (capped);
6. the payload is exactly the documented shape (changes.py, docs/notifications.md): type, timestamp and
   plan_id, plan_version, sequence, source, change = {event_id, sender, data, paths}, the event's `data`
   as received and paths that are plan paths; no value of the plan (the patient's MRN or name) that the
   event did not carry itself.

By default 10 examples of up to 30 steps per database, derandomized (the same interleavings every run), not
shrunk; a failure prints its steps in words. A soak, e.g.:

    PLANBRIDGE_NOTIFY_MODEL_EXAMPLES=60 PLANBRIDGE_NOTIFY_MODEL_STEPS=60 \
        .venv/bin/pytest tests/integration/test_notify_model.py -x -rA

(random interleavings whenever PLANBRIDGE_NOTIFY_MODEL_EXAMPLES is set, or PLANBRIDGE_NOTIFY_MODEL_RANDOM=1).
The cases found so far are the deterministic `test_regression_*` tests at the end of this file.
"""

from __future__ import annotations

import copy
import json
import re
import select
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import urllib3
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy.engine import Engine
from standardwebhooks.webhooks import Webhook

from service.api.app import create_app
from service.domain.errors import RuleViolation
from service.notify import http
from service.notify import subscriptions as use
from service.notify.changes import timestamp
from service.notify.ssrf import OutboundGuard
from service.notify.worker import BACKOFF_BASE, BACKOFF_CAP, BACKOFF_FLOOR, RETRY_AFTER_CAP, DeliveryWorker
from service.store.retention import prune
from service.store.tables import Base
from service.store.uow import UnitOfWork
from tests.model_support import ModelRun
from tests.support import FIXTURES, Clock, signed
from tests.support import settings as planbridge_settings

RUN = ModelRun.from_env("PLANBRIDGE_NOTIFY_MODEL", examples=10, steps=30)
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


# ---------------------------------------------------------------------------------------------- endpoint


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


class Endpoint:
    """The subscribers' side: one HTTP server on 127.0.0.1, a path per subscription, answers set by the model."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.modes: dict[str, str] = {}
        self.secrets: dict[str, str] = {}
        self.previous: dict[str, tuple[str, datetime]] = {}  # the secret a rotation replaced, and its grace's end
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # the model's (set by each example)
        self.subscriptions: dict[str, int] = {}
        self.arrivals: list[Arrival] = []
        # Connections accepted whose request is not recorded yet (nor found empty), under `lock`.
        self.unheard: set[Any] = set()
        self.heard = threading.Condition(self.lock)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                token = self.path.rsplit("/", 1)[-1]
                status, extra, delay = ANSWERS[endpoint.modes.get(token, "ok")]
                arrival = endpoint.arrived(token, {k.lower(): v for k, v in self.headers.items()}, body, status, extra)
                with endpoint.lock:
                    arrival.index = len(endpoint.arrivals)
                    endpoint.arrivals.append(arrival)
                    endpoint.unheard.discard(self.request)
                    endpoint.heard.notify_all()
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the worker gave up waiting
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def get_request(self) -> tuple[Any, Any]:
                with endpoint.lock:  # accepted and unheard at once, as `wait_heard` sees it
                    request = super().get_request()
                    endpoint.unheard.add(request[0])
                return request

            def shutdown_request(self, request: Any) -> None:
                with endpoint.lock:
                    endpoint.unheard.discard(request)
                    endpoint.heard.notify_all()
                super().shutdown_request(request)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def rotated(self, token: str, secret: str, previous_until: datetime | None) -> None:
        """The subscription's secret was rotated: the one replaced signs too until `previous_until` (None: no more)."""
        if previous_until is None:
            self.previous.pop(token, None)
        else:
            self.previous[token] = (self.secrets[token], previous_until)
        self.secrets[token] = secret

    def signers(self, token: str) -> list[str]:
        """The secrets whose signatures a request to this subscription must carry now, and no other."""
        previous = self.previous.get(token)
        return [self.secrets[token], *([previous[0]] if previous and self.clock() < previous[1] else [])]

    def url(self, token: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/{token}"

    def arrived(self, token: str, headers: dict[str, str], body: bytes, status: int, extra: dict[str, str]) -> Arrival:
        """Verify the request and read, as the worker left the database when it sent it, whether an
        earlier delivery of the same plan to the same subscription should still be holding it back."""
        arrival = Arrival(
            -1, token, headers.get("webhook-id", ""), body, None, status, extra.get("Retry-After"), None, []
        )
        try:
            signers = self.signers(token)
            for secret in signers:
                Webhook(secret).verify(body, headers)
            count = len(headers.get("webhook-signature", "").split(" "))
            if count != len(signers):
                raise AssertionError(f"{count} signatures, where {len(signers)} secret(s) sign now")
        except Exception as exc:
            arrival.signed = f"{type(exc).__name__}: {exc}"
        try:
            data = json.loads(body)["data"]
            with UnitOfWork(self.engine) as uow:
                subscription_id = self.subscriptions[token]
                found = uow.subscriptions.list()
                row = next((s for s in found if s.id == subscription_id), None)
                arrival.subscription_status = None if row is None else row.status
                strict = row is not None and row.ordering == "strict"
                for earlier in uow.deliveries.list(subscription_id, plan_id=data["plan_id"], limit=10_000):
                    holding = earlier.status in OPEN or (earlier.status == "dead" and strict)
                    if earlier.sequence < data["sequence"] and holding:
                        arrival.held_back_by.append(f"sequence {earlier.sequence} ({earlier.status})")
        except Exception as exc:
            arrival.error = f"{type(exc).__name__}: {exc}"
        return arrival

    def wait_heard(self, seconds: float = 30.0) -> bool:
        """Wait until every connection made to the endpoint so far is accepted and its request recorded
        (or found to carry none); return False if that takes more than `seconds`."""
        deadline = time.monotonic() + seconds
        with self.heard:
            while self.unheard or select.select([self.server.socket], [], [], 0)[0]:
                if time.monotonic() > deadline:
                    return False
                self.heard.wait(0.01)
        return True

    def received(self, webhook_id: str) -> int:
        """How many requests with this webhook id the endpoint recorded."""
        with self.lock:
            return sum(a.webhook_id == webhook_id for a in self.arrivals)

    def since(self, start: int) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals[start:])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def notify_machine(engine: Engine, endpoint: Endpoint, stats: Counter) -> type[RuleBasedStateMachine]:
    """Return the state machine class for one database and endpoint, counting into `stats`."""
    config = planbridge_settings(
        api_keys=(KEY,),
        outbound_allow=("127.0.0.0/8",),
        delivery_timeout=TIMEOUT,
        delivery_max_attempts=MAX_ATTEMPTS,
        delivery_concurrency=3,
        outbox_lease_seconds=LEASE.total_seconds(),
        retain_days=RETAIN_DAYS,
    )
    app = create_app(config, engine)
    client = app.test_client()
    guard = OutboundGuard(config.outbound_allow)

    class NotifyModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            stats["examples"] += 1
            with engine.begin() as conn:
                for table in reversed(Base.metadata.sorted_tables):
                    conn.execute(table.delete())
            self.clock = Clock()
            app.extensions["planbridge"].clock = self.clock
            endpoint.clock = self.clock
            self.worker = DeliveryWorker(UnitOfWork(engine), config, self.clock, guard, send=self.sending)
            self.plans: list[PlanModel] = []
            self.changes: dict[tuple[str, int], Change] = {}
            # By token (the endpoint's path): SQLite gives a deleted subscription's id to the next one made.
            self.subs: dict[str, SubscriptionModel] = {}
            # Deliveries by webhook id (unique for ever; a delivery's row id may be reused on SQLite too).
            self.seen: dict[str, Seen] = {}
            self.gone: dict[str, Seen] = {}  # deliveries pruned (delivered, and older than the retention)
            self.meanwhile: list[str] = []  # what happens while the worker waits for the endpoint's answer
            self.meanwhile_error: BaseException | None = None
            self.killed: Counter[str] = Counter()  # sends by killed workers, by webhook id
            # sends that got no answer and whose request never reached the endpoint, by webhook id
            self.unsent: Counter[str] = Counter()
            self.requests: Counter[str] = Counter()  # requests the endpoint received, by webhook id
            self.answered_2xx: set[str] = set()  # webhook ids whose 2xx the worker recorded
            self.start = len(endpoint.arrivals)
            self.checked = self.start
            self.log: list[str] = []
            self.step = 0
            self.counter = 0
            self.worker_step = False  # the step ran the worker (attempts may be recorded)
            self.clean = True

        # ------------------------------------------------------------------ helpers

        def note(self, text: str) -> None:
            self.log.append(f"#{self.step} {text}")

        def fail(self, message: str) -> None:
            self.clean = False
            steps = "\n".join(f"  {line}" for line in self.log[-80:])
            subs = ", ".join(f"sub {s.id}: {s.status} {s.ordering} {s.event_types}" for s in self.subs.values())
            raise ModelViolation(f"{message}\n(at {self.clock().isoformat()}; {subs})\nsteps:\n{steps}")

        def begin(self, what: str) -> None:
            self.step += 1
            stats["steps"] += 1
            stats[what] += 1
            self.worker_step = False

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

        def post(self, event: dict[str, Any]) -> str:
            """POST a signed team event to /webhooks/team; return its webhook id."""
            self.counter += 1
            webhook_id = f"msg_{uuid.uuid4().hex}"
            body = json.dumps(event).encode()
            answer = client.post("/webhooks/team", data=body, headers=signed(body, msg_id=webhook_id))
            if answer.status_code != 202:
                self.fail(f"the event {event['type']} was refused: {answer.status_code} {answer.get_json()}")
            return webhook_id

        def history_after(self, plan: PlanModel) -> list[dict[str, Any]]:
            answer = client.get(
                f"/plans/{plan.id}/history?after={plan.last_sequence}", headers={"Authorization": f"Bearer {KEY}"}
            )
            assert answer.status_code == 200, answer.get_json()
            return answer.get_json()

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

        def deliveries(self) -> dict[int, Seen]:
            with UnitOfWork(engine) as uow:
                rows = uow.deliveries.list(limit=100_000)
                return {
                    r.webhook_id: Seen(
                        r.id,
                        r.subscription_id,
                        r.plan_id,
                        r.sequence,
                        r.webhook_id,
                        r.status,
                        r.attempts,
                        r.next_attempt_at,
                        r.claimed_at,
                        r.delivered_at,
                        tuple(e["status_code"] for e in r.attempt_log or []),
                        self.token_of(r.subscription_id),
                    )
                    for r in rows
                }

        def subscription_statuses(self) -> dict[int, tuple[str, str | None]]:
            with UnitOfWork(engine) as uow:
                return {s.id: (s.status, s.disabled_reason) for s in uow.subscriptions.list()}

        def sending(self, target: Any, body: bytes, headers: dict[str, str], timeout: float) -> http.Answer:
            """The worker's real POST; then, before the worker records the answer, what `meanwhile` says."""
            webhook_id = headers["webhook-id"]
            before = endpoint.received(webhook_id)
            try:
                answer = http.post(target, body, headers, timeout)
            except urllib3.exceptions.HTTPError:
                # No answer within the timeout. On a loaded machine the endpoint may not even have read the
                # request yet, or the worker cut the connection before it was sent: wait (before the worker
                # records the attempt, so the endpoint still sees the database as it was when it was sent)
                # until the endpoint has read every connection made to it, and count a request that never came.
                if not endpoint.wait_heard():
                    self.meanwhile_error = ModelViolation(f"the endpoint did not read {webhook_id}'s request in 30 s")
                elif endpoint.received(webhook_id) == before:
                    with endpoint.lock:
                        self.unsent[webhook_id] += 1
                raise
            todo, self.meanwhile = self.meanwhile, []
            try:
                self.meanwhile_actions(todo, self.seen.get(headers["webhook-id"]))
            except BaseException as exc:  # the worker would take it for a failed POST: fail the step instead
                self.meanwhile_error = exc
            return answer

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

        # ------------------------------------------------------------------ rules

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

        def _subscribe(self, types: int, ordering: int) -> None:
            if len(self.live()) >= MAX_SUBSCRIPTIONS:
                return
            token = uuid.uuid4().hex
            event_types = EVENT_TYPE_CHOICES[types % len(EVENT_TYPE_CHOICES)]
            chosen = use.ORDERINGS[ordering % 2]
            url = endpoint.url(token)
            made = use.subscribe(UnitOfWork(engine), guard, url, event_types, None, self.clock(), chosen)
            endpoint.secrets[token], endpoint.subscriptions[token] = made["secret"], made["id"]
            endpoint.modes[token] = "ok"
            self.subs[token] = SubscriptionModel(made["id"], token, made["secret"], made["event_types"], chosen)
            self.note(f"subscribe {made['id']} to {event_types}, {chosen}")

        @rule(types=pick, ordering=pick)
        def subscribe(self, types: int, ordering: int) -> None:
            self.begin("subscribe")
            self._subscribe(types, ordering)
            self.check()

        @rule(i=pick, grace=st.sampled_from([0, 60, 3600]))
        def rotate_secret(self, i: int, grace: int) -> None:
            self.begin("rotate_secret")
            sub = self.sub(i)
            if sub is not None:
                made = use.rotate_secret(UnitOfWork(engine), sub.id, self.clock(), timedelta(seconds=grace))
                endpoint.rotated(sub.token, made["secret"], self.clock() + timedelta(seconds=grace) if grace else None)
                sub.secret = made["secret"]
                self.note(f"rotate subscription {sub.id}'s secret, the replaced one signing {grace} s more")
            self.check()

        @rule(i=pick, mode=st.sampled_from(MODES))
        def endpoint_answers(self, i: int, mode: str) -> None:
            self.begin("endpoint_answers")
            sub = self.sub(i)
            if sub is not None:
                endpoint.modes[sub.token] = mode
                self.note(f"subscription {sub.id}'s endpoint answers {mode}")
            self.check()

        @rule(i=pick, enabled=st.booleans())
        def set_enabled(self, i: int, enabled: bool) -> None:
            self.begin("set_enabled")
            sub = self.sub(i)
            if sub is not None:
                self._set_enabled(sub, enabled)
            self.check()

        def _set_enabled(self, sub: SubscriptionModel, enabled: bool) -> None:
            use.set_enabled(UnitOfWork(engine), sub.id, enabled, self.clock())
            sub.become("active" if enabled else "disabled", len(endpoint.arrivals))
            self.note(f"{'enable' if enabled else 'disable'} subscription {sub.id}")

        @rule(i=pick)
        def unsubscribe(self, i: int) -> None:
            self.begin("unsubscribe")
            sub = self.sub(i)
            if sub is not None:
                self._unsubscribe(sub)
            self.check()

        def _unsubscribe(self, sub: SubscriptionModel) -> None:
            use.unsubscribe(UnitOfWork(engine), sub.id)
            sub.become("deleted", len(endpoint.arrivals))
            self.note(f"delete subscription {sub.id}")

        @rule(i=pick, skip=st.booleans())
        def replay_or_skip(self, i: int, skip: bool) -> None:
            self.begin("replay_or_skip")
            closable = [d for d in self.seen.values() if d.status in ("dead", "failed")]
            if closable:
                delivery = sorted(closable, key=lambda d: d.id)[i % len(closable)]
                action = use.skip_delivery if skip else use.replay_delivery
                try:
                    action(UnitOfWork(engine), delivery.id, self.clock())
                except RuleViolation as refused:  # only for one a (killed) worker holds, until its lease ends
                    if not (delivery.claimed_at is not None and delivery.next_attempt_at > self.clock()):
                        self.fail(f"{'skip' if skip else 'replay'} of delivery {delivery.id} refused: {refused}")
                    self.note(f"{'skip' if skip else 'replay'} of delivery {delivery.id} refused: being sent")
                    self.check()
                    return
                self.note(
                    f"{'skip' if skip else 'replay'} delivery {delivery.id} "
                    f"(sub {delivery.subscription_id}, {delivery.plan_id} #{delivery.sequence}, was {delivery.status})"
                )
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
        def retention(self) -> None:
            self.begin("retention")
            removed = prune(UnitOfWork(engine), self.clock(), RETAIN_DAYS)
            self.note(f"retention: {removed}")
            self.check(pruned_before=self.clock() - timedelta(days=RETAIN_DAYS))

        @rule()
        def settle_rule(self) -> None:
            self.begin("settle")
            self.settle()

        # ------------------------------------------------------------------ settling (rule 2)

        def settle(self) -> None:
            """Every endpoint answers 200, dead deliveries are replayed, time passes every backoff: every
            change an active subscription wanted must then be delivered."""
            for sub in self.live():
                endpoint.modes[sub.token] = "ok"
            self.note("settle: every endpoint answers 200")
            for _ in range(SETTLE_ROUNDS):
                active = {s.id for s in self.live() if s.status == "active"}
                waiting = [d for d in self.seen.values() if d.subscription_id in active and d.status in OPEN]
                dead = [d for d in self.seen.values() if d.subscription_id in active and d.status == "dead"]
                if not waiting and not dead:
                    break
                for delivery in dead:
                    use.replay_delivery(UnitOfWork(engine), delivery.id, self.clock())
                    self.note(f"settle: replay delivery {delivery.id}")
                self.clock.now += timedelta(seconds=BACKOFF_CAP) + LEASE
                self.note("settle: the clock moves past every backoff and lease")
                self.check()
                self.run_worker("until idle")
            else:
                self.fail(f"rule 2: not settled after {SETTLE_ROUNDS} rounds: {waiting + dead}")
            for sub in self.subs.values():
                if sub.status != "active":
                    continue
                for plan_id, sequence in sorted(sub.expected):
                    delivery = self.delivery_of(sub.token, sub.id, plan_id, sequence)
                    if delivery is None:
                        self.fail(f"rule 2: sub {sub.id} has no delivery of {plan_id} #{sequence}")
                    elif delivery.status == "skipped":
                        continue
                    elif delivery.status != "delivered" or delivery.webhook_id not in self.answered_2xx:
                        self.fail(f"rule 2: sub {sub.id}: {plan_id} #{sequence} not delivered: {delivery}")
                    elif self.requests[delivery.webhook_id] < 1:
                        self.fail(f"rule 2: sub {sub.id}: {plan_id} #{sequence} delivered without a request")

        def delivery_of(self, token: str, sub_id: int, plan_id: str, sequence: int) -> Seen | None:
            for d in [*self.seen.values(), *self.gone.values()]:
                if (d.subscription_id, d.plan_id, d.sequence) == (sub_id, plan_id, sequence) and d.token == token:
                    return d
            return None

        # ------------------------------------------------------------------ checks after every step

        def check(self, pruned_before: datetime | None = None) -> None:
            self.clean = False
            now = self.clock()
            current = self.deliveries()
            arrivals = endpoint.since(self.checked)
            self.checked += len(arrivals)
            statuses = self.subscription_statuses()
            gone_at: dict[str, int] = {}  # token -> index of the 410 answer a recorded attempt got, this step

            # a subscription the worker disabled (410), as the model expects
            for sub in self.subs.values():
                db = statuses.get(sub.id)
                if sub.status == "deleted":
                    if db is not None and not any(s.id == sub.id for s in self.live()):
                        self.fail(f"rule 3: deleted subscription {sub.id} is still there: {db}")
                    continue
                if db is None:
                    self.fail(f"subscription {sub.id} vanished")
                elif db[0] != sub.status:
                    gone = [a for a in arrivals if a.token == sub.token and a.status == 410]
                    if not (self.worker_step and sub.status == "active" and db[0] == "disabled" and gone):
                        self.fail(f"subscription {sub.id} is {db}, the model says {sub.status}")
                    sub.become("disabled", gone[0].index + 1)
                    gone_at[sub.token] = gone[0].index
                    self.note(f"subscription {sub.id} disabled by its endpoint's 410")

            for arrival in arrivals:
                self.check_arrival(arrival, self.subs.get(arrival.token), gone_at)

            # deliveries: queued for exactly whom the model expects; attempts agree with the requests
            for d in current.values():
                sub = self.owner(d)
                if sub is None:
                    self.fail(f"rule 3: delivery {d.id} of unknown or deleted subscription {d.subscription_id}")
                assert sub is not None
                if (d.plan_id, d.sequence) not in sub.expected:
                    self.fail(f"rule 3: delivery {d.id} ({d.plan_id} #{d.sequence}) queued for sub {sub.id}")
                # a killed worker's sends are not logged; an attempt whose request never came is
                sent = self.requests[d.webhook_id] - self.killed[d.webhook_id] + self.unsent[d.webhook_id]
                if sent != d.attempts:
                    self.fail(f"rule 2: delivery {d.id}: {sent} recorded request(s), {d.attempts} attempt(s) logged")
                twoxx = [n for n, code in enumerate(d.codes) if code is not None and 200 <= code < 300]
                if twoxx and (twoxx != [len(d.codes) - 1] or d.status != "delivered"):
                    self.fail(f"rule 2: delivery {d.id} was sent again after a 2xx: {d.codes} ({d.status})")
                if d.status == "delivered":
                    self.answered_2xx.add(d.webhook_id)
                    if not twoxx:
                        self.fail(f"delivery {d.id} is delivered without a 2xx: {d.codes}")
                self.check_attempts(d, self.seen.get(d.webhook_id), now)
            # what left the database: a deleted subscription's log, or delivered and old enough to prune
            for webhook_id, before in self.seen.items():
                if webhook_id in current:
                    continue
                owner = self.subs.get(before.token)
                if owner is None or owner.status != "deleted":
                    old = before.delivered_at is not None and pruned_before is not None
                    if not (before.status == "delivered" and old and before.delivered_at < pruned_before):
                        self.fail(f"retention: delivery {before.id} went, it was {before}")
                    self.gone[webhook_id] = before
            for sub in self.subs.values():
                if sub.status == "deleted":
                    continue
                queued = {(d.plan_id, d.sequence) for d in current.values() if d.subscription_id == sub.id}
                pruned = {(d.plan_id, d.sequence) for d in self.gone.values() if d.token == sub.token}
                missing = sub.expected - queued - pruned
                if missing:
                    self.fail(f"rule 3: sub {sub.id} has no delivery of {sorted(missing)}")
            if pruned_before is not None:
                kept = [d for d in current.values() if d.status == "delivered" and d.delivered_at < pruned_before]
                if kept:
                    self.fail(f"retention: delivered deliveries older than the retention were kept: {kept}")
            self.seen = current
            self.worker_step = False
            self.clean = True

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

        def check_attempts(self, d: Seen, before: Seen | None, now: datetime) -> None:
            """Rule 5: attempts only when due, one per delivery per worker step, then backoff."""
            made = d.attempts - (before.attempts if before else 0)
            if made <= 0:
                return
            what = f"rule 5: delivery {d.id} (sub {d.subscription_id}, {d.plan_id} #{d.sequence})"
            if not self.worker_step:
                self.fail(f"{what}: {made} attempt(s) outside a worker step")
            if made > 1:
                self.fail(f"{what}: {made} attempts in one worker step (codes {d.codes}): a retry storm")
            if before is not None and before.next_attempt_at > now:
                self.fail(f"{what}: attempted at {now}, before its next attempt time {before.next_attempt_at}")
            if d.status != "failed":
                return
            delay = (d.next_attempt_at - now).total_seconds()
            latest = [a for a in endpoint.since(self.start) if a.webhook_id == d.webhook_id][-1]
            if d.codes[-1] in (429, 503) and latest.retry_after is not None:
                asked = min(float(latest.retry_after), RETRY_AFTER_CAP)
                low, high = max(BACKOFF_FLOOR, asked), max(BACKOFF_FLOOR, asked)
            else:
                low, high = BACKOFF_FLOOR, max(BACKOFF_FLOOR, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (d.attempts - 1)))
            if not low - 1e-3 <= delay <= high + 1e-3:
                self.fail(f"{what}: retried {delay} s after attempt {d.attempts} ({d.codes}), not in [{low}, {high}]")

        @invariant()
        def checked_after_every_step(self) -> None:
            # Every rule calls check() itself (the settle between its worker runs too); this only makes sure.
            if self.checked != len(endpoint.arrivals):
                self.check()

        def teardown(self) -> None:
            if self.clean and self.plans:
                self.step += 1
                self.note("the end: settle")
                self.settle()

    return NotifyModel


def test_notifications_keep_their_promises_whatever_the_interleaving(engine, record_property) -> None:
    """Hypothesis interleaves changes, subscriptions, answers, the worker and the clock; every step is checked."""
    stats: Counter = Counter()
    endpoint = Endpoint(engine)
    try:
        label = f"notify model on {engine.url.get_backend_name()}"
        RUN.run(notify_machine(engine, endpoint, stats), stats, record_property, label)
    finally:
        endpoint.stop()


# ---------------------------------------------------------------------------------------------- regressions


def replay(engine: Engine, steps: list[tuple[str, dict[str, Any]]]) -> None:
    """Run the model's steps in this order (after its initial plan and `["*"]` subscription), checked as
    hypothesis checks them, then settle: a failure found by the model, made deterministic."""
    endpoint = Endpoint(engine)
    try:
        machine = notify_machine(engine, endpoint, Counter())()
        machine.first_plan_and_subscription()
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            machine.checked_after_every_step()
        machine.teardown()
    finally:
        endpoint.stop()


def test_regression_an_answer_is_recorded_on_its_own_delivery_not_one_that_took_its_id(engine) -> None:
    # While the worker waited for the endpoint, the subscription was deleted (its deliveries with it), made
    # again, and the plan changed: on SQLite the new subscription and its new delivery took the freed ids,
    # and the worker recorded the old delivery's 200 on the new one, which was never sent (lost).
    replay(engine, [("worker_one_while", {"meanwhile": ["resubscribe", "change"]})])


def test_regression_retry_after_zero_is_not_a_retry_storm(engine) -> None:
    # An endpoint answering 503 with `Retry-After: 0` was retried at once: run_until_idle, with the clock
    # standing still, sent the delivery MAX_ATTEMPTS times in a row and it went dead within milliseconds.
    replay(engine, [("endpoint_answers", {"i": 0, "mode": "busy-now"}), ("worker_run_until_idle", {})])
