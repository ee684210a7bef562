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
The cases found so far are the deterministic `test_regression_*` tests in test_notify_model_regressions.py.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import urllib3
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy.engine import Engine

from service.api.app import create_app
from service.domain.errors import RuleViolation
from service.notify import http
from service.notify import subscriptions as use
from service.notify.ssrf import OutboundGuard
from service.notify.worker import BACKOFF_BASE, BACKOFF_CAP, BACKOFF_FLOOR, RETRY_AFTER_CAP, DeliveryWorker
from service.store.retention import prune
from service.store.tables import Base
from service.store.uow import UnitOfWork
from tests.model_support import ModelRun
from tests.notify_model_endpoint import Endpoint
from tests.notify_model_support import (  # noqa: F401
    ANSWERS,
    CHANGES,
    DATA_KEYS,
    EVENT_TYPE_CHOICES,
    KEY,
    LATE,
    LEASE,
    MAX_ATTEMPTS,
    MAX_PLANS,
    MAX_SUBSCRIPTIONS,
    MODES,
    OPEN,
    PATH,
    PAYLOAD_KEYS,
    RETAIN_DAYS,
    SETTLE_ROUNDS,
    SLOW,
    TEAM_CHANGE_KEYS,
    TICKS,
    TIMEOUT,
    Arrival,
    Change,
    ModelViolation,
    NotifyModelRules,
    PlanModel,
    Seen,
    SubscriptionModel,
    event_body,
    pick,
)
from tests.support import Clock, signed
from tests.support import settings as planbridge_settings

RUN = ModelRun.from_env("PLANBRIDGE_NOTIFY_MODEL", examples=10, steps=30)


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

    class NotifyModel(NotifyModelRules, RuleBasedStateMachine):
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

        def begin(self, what: str) -> None:
            self.step += 1
            stats["steps"] += 1
            stats[what] += 1
            self.worker_step = False

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

        # ------------------------------------------------------------------ rules

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

        def _set_enabled(self, sub: SubscriptionModel, enabled: bool) -> None:
            use.set_enabled(UnitOfWork(engine), sub.id, enabled, self.clock())
            sub.become("active" if enabled else "disabled", len(endpoint.arrivals))
            self.note(f"{'enable' if enabled else 'disable'} subscription {sub.id}")

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
        def retention(self) -> None:
            self.begin("retention")
            removed = prune(UnitOfWork(engine), self.clock(), RETAIN_DAYS)
            self.note(f"retention: {removed}")
            self.check(pruned_before=self.clock() - timedelta(days=RETAIN_DAYS))

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
