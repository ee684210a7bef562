"""One slow team system does not stall the others: real signed team events over HTTP, real loopback
subscribers, the notification worker running as in production (its pool of senders, the wall clock), on
SQLite and PostgreSQL; and, on PostgreSQL, several notification workers at once (no delivery sent twice,
each plan's order kept, one delivery in flight per subscriber across the workers)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from standardwebhooks.webhooks import Webhook
from werkzeug.serving import make_server

from service.api.app import create_app
from service.api.container import utcnow
from service.notify.changes import record_change
from service.notify.worker import DeliveryWorker
from service.store.uow import UnitOfWork
from tests.support import goal_event, settings, signed

KEY = "fanout-key-0123456789abcdef"
LOOPBACK = ("127.0.0.0/8",)


class Subscriber:
    """A team system on 127.0.0.1 that takes `delay` seconds to answer 200, and records what arrives, when,
    and how many requests it was serving at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.arrived, self.active, self.most_at_once = delay, [], 0, 0
        self.lock = threading.Lock()
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with subscriber.lock:
                    subscriber.active += 1
                    subscriber.most_at_once = max(subscriber.most_at_once, subscriber.active)
                    subscriber.arrived.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(subscriber.delay)
                with subscriber.lock:
                    subscriber.active -= 1
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def payloads(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for _, _, body in self.arrived]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def subscribers():
    started: list[Subscriber] = []

    def start(delay: float = 0.0) -> Subscriber:
        started.append(Subscriber(delay))
        return started[-1]

    yield start
    for subscriber in started:
        subscriber.stop()


def wait_for(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


def running(worker: DeliveryWorker) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_a_slow_subscriber_delays_only_itself(engine, subscribers):
    config = settings(api_keys=(KEY,), outbound_allow=LOOPBACK, worker_poll_seconds=0.05, delivery_timeout=10.0)
    app = create_app(config, engine)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fast, slow = subscribers(), subscribers(delay=4.0)  # slow: 4 s an answer, well inside the 10 s timeout
    keyed = {"Authorization": f"Bearer {KEY}"}
    secrets = {}
    for who in (fast, slow):
        created = requests.post(f"{url}/subscriptions", json={"url": who.url, "event_types": ["*"]}, headers=keyed)
        assert created.status_code == 201
        secrets[who] = (created.json()["id"], created.json()["secret"])
    stop, thread = running(DeliveryWorker(UnitOfWork(engine), config, utcnow))
    try:
        plan_id, mrn = f"plan-{uuid.uuid4().hex[:8]}", f"MRN-{uuid.uuid4().hex[:8]}"
        with requests.Session() as http:
            for n in range(10):  # the burst: ten signed team events, one after the other
                body = json.dumps(goal_event(plan_id, goal_id=f"goal-{n}", mrn=mrn)).encode()
                answer = http.post(f"{url}/webhooks/team", data=body, headers=signed(body), timeout=10)
                assert answer.status_code == 202, answer.text
        burst_done = time.monotonic()

        assert wait_for(lambda: len(fast.arrived) >= 10, 3.0), f"the fast subscriber got {len(fast.arrived)} of 10"
        assert fast.arrived[-1][0] - burst_done < 3.0
        payloads = fast.payloads()
        assert [p["data"]["sequence"] for p in payloads] == list(range(1, 11))  # every one, in order, once
        assert {p["data"]["plan_id"] for p in payloads} == {plan_id}
        fast_id, fast_secret = secrets[fast]
        for _, headers, body in fast.arrived:
            Webhook(fast_secret).verify(body, headers)
        assert payloads[0]["data"]["change"]["paths"] == ["*"]  # the plan's first event made it
        assert [p["data"]["change"]["paths"] for p in payloads[2:]] == [[f"goals[id=goal-{n}]"] for n in range(2, 10)]
        assert len(slow.arrived) <= 1  # meanwhile the slow one is on its first

        # /metrics: the slow subscription has one delivery in flight and lags; the fast one is caught up.
        slow_id = secrets[slow][0]
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert f'planbridge_deliveries_in_flight{{subscription="{slow_id}"}} 1.0' in metrics
        assert f'planbridge_deliveries_in_flight{{subscription="{fast_id}"}} 0.0' in metrics
        assert f'planbridge_delivery_lag_seconds{{subscription="{fast_id}"}} 0.0' in metrics
        lag = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith(f'planbridge_delivery_lag_seconds{{subscription="{slow_id}"}}')
        )
        assert lag > 0
        assert f'planbridge_deliveries{{status="delivered",subscription="{fast_id}"}} 10.0' in metrics
    finally:
        stop.set()
        thread.join(timeout=15)
        server.shutdown()
    assert not thread.is_alive()
    # The slow subscriber's order is kept too: what it got so far is a prefix of the sequence.
    got = [p["data"]["sequence"] for p in slow.payloads()]
    assert got == list(range(1, len(got) + 1))


def test_several_workers_on_postgres_send_each_delivery_once_in_order_one_at_a_time_per_subscriber(
    postgres, subscribers
):
    engine, _url = postgres
    config = settings(outbound_allow=LOOPBACK, worker_poll_seconds=0.02, delivery_concurrency=4)
    fast, other, slow = subscribers(), subscribers(delay=0.05), subscribers(delay=0.6)
    from service.notify import subscriptions as use
    from service.notify.ssrf import OutboundGuard

    guard = OutboundGuard(LOOPBACK)
    for who in (fast, other, slow):
        use.subscribe(UnitOfWork(engine), guard, who.url, ["*"], None, utcnow())
    plans = [f"plan-{n}" for n in range(4)]
    for version in range(1, 6):
        for plan_id in plans:
            with UnitOfWork(engine) as uow:
                record_change(uow, plan_id, "plan.updated", {"plan_version": version, "source": "team"}, utcnow())
                uow.commit()
    started = [running(DeliveryWorker(UnitOfWork(engine), config, utcnow)) for _ in range(3)]
    try:
        assert wait_for(lambda: len(fast.arrived) == 20 and len(other.arrived) == 20, 5.0)
        assert len(slow.arrived) < 20  # the fast ones did not wait for it
        assert wait_for(lambda: len(slow.arrived) == 20, 30.0)
    finally:
        for stop, _ in started:
            stop.set()
        for _, thread in started:
            thread.join(timeout=15)
    for who in (fast, other, slow):
        ids = [headers["webhook-id"] for _, headers, _ in who.arrived]
        assert len(ids) == len(set(ids)) == 20  # none sent twice
        by_plan: dict[str, list[int]] = {}
        for payload in who.payloads():
            by_plan.setdefault(payload["data"]["plan_id"], []).append(payload["data"]["plan_version"])
        assert by_plan == {plan_id: [1, 2, 3, 4, 5] for plan_id in plans}
        assert who.most_at_once == 1  # one delivery in flight per subscriber, across the three workers
    with UnitOfWork(engine) as uow:
        assert {d.status for d in uow.deliveries.list(limit=1000)} == {"delivered"}
