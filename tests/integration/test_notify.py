"""Notifications to team systems: record_change, the delivery worker against real HTTP receivers, the SSRF guard."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook

from service.domain.errors import RuleViolation
from service.notify import subscriptions as use
from service.notify.changes import EVENT_TYPES, TEAM_EVENT_TYPES, record_change
from service.notify.ssrf import OutboundGuard, OutboundRefused, system_resolver
from service.notify.worker import DeliveryWorker
from service.store.uow import UnitOfWork
from tests.support import Clock, settings

LATER = timedelta(hours=7)  # past any backoff of the first attempts
LOOPBACK = ("127.0.0.0/8",)


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records what arrives and answers from a script, then 200."""

    def __init__(self, port: int = 0, script: list[tuple[int, dict[str, str], float]] | None = None) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.script = list(script or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, headers, delay = receiver.script.pop(0) if receiver.script else (200, {}, 0.0)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hooks/planbridge"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def payloads(self) -> list[dict]:
        return [json.loads(body) for _, body in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Notify:
    """A database, a moved-by-hand clock and a delivery worker."""

    def __init__(self, engine, **overrides) -> None:
        values = {"outbound_allow": LOOPBACK, "delivery_timeout": 2.0, **overrides}
        self.engine, self.clock, self.settings = engine, Clock(), settings(**values)
        self.guard = OutboundGuard(self.settings.outbound_allow)
        self.worker = DeliveryWorker(UnitOfWork(engine), self.settings, self.clock, self.guard)

    def subscribe(self, url: str, event_types: tuple[str, ...] = ("*",)) -> dict:
        return use.subscribe(UnitOfWork(self.engine), self.guard, url, list(event_types), None, self.clock())

    def change(self, plan_id: str, event_type: str = "goal.proposed", version: int = 1, **change) -> int:
        with UnitOfWork(self.engine) as uow:
            payload = {"plan_version": version, "source": "team", "change": change}
            sequence = record_change(uow, plan_id, event_type, payload, self.clock())
            uow.commit()
        return sequence

    def deliveries(self, subscription_id: int, plan_id: str | None = None) -> list[dict]:
        with UnitOfWork(self.engine) as uow:
            return [use.delivery_dict(r) for r in uow.deliveries.list(subscription_id, plan_id=plan_id)]

    def subscription(self, subscription_id: int) -> dict:
        with UnitOfWork(self.engine) as uow:
            return use.subscription_dict(uow.subscriptions.get(subscription_id))

    def later(self, delta: timedelta = LATER) -> int:
        self.clock.now += delta
        return self.worker.run_until_idle()


def test_receiver_down_then_up_gets_each_change_once_in_order_and_signed(engine, receivers, caplog):
    caplog.set_level("DEBUG")
    notify = Notify(engine)
    port = free_port()
    sub = notify.subscribe(f"http://127.0.0.1:{port}/hooks/planbridge")
    for version in (1, 2, 3):
        notify.change("plan-a", version=version, description=f"Walk with Ana {version}")
    notify.change("plan-b", event_type="step.done", version=7)
    assert notify.worker.run_until_idle() == 2  # the first change of each plan; the rest wait behind them
    first, *held = notify.deliveries(sub["id"], "plan-a")
    assert (first["status"], first["attempts"], first["last_status_code"]) == ("failed", 1, None)
    assert first["last_error"] == "ConnectionRefusedError: connection refused"
    assert [(d["status"], d["attempts"]) for d in held] == [("pending", 0), ("pending", 0)]

    receiver = receivers(port=port)
    assert notify.later() == 4
    by_plan = {}
    for headers, body in receiver.received:
        Webhook(sub["secret"]).verify(body, headers)
        payload = json.loads(body)
        by_plan.setdefault(payload["data"]["plan_id"], []).append(payload["data"]["sequence"])
    assert by_plan == {"plan-a": [1, 2, 3], "plan-b": [1]}
    ids = [headers["webhook-id"] for headers, _ in receiver.received]
    assert len(set(ids)) == 4 and first["webhook_id"] in ids  # the retry kept its webhook-id
    payload = next(p for p in receiver.payloads() if p["data"]["plan_id"] == "plan-a")
    assert payload["type"] == "goal.proposed" and payload["timestamp"].endswith("Z")
    assert payload["data"] | {"change": None} == {
        "plan_id": "plan-a", "plan_version": 1, "sequence": 1, "source": "team", "change": None,
    }  # fmt: skip
    assert [d["status"] for d in notify.deliveries(sub["id"])] == ["delivered"] * 4
    assert notify.later() == 0 and len(receiver.received) == 4
    assert "Walk with Ana" not in caplog.text and "description" not in caplog.text


def test_gone_disables_the_subscription_and_later_changes_wait(engine, receivers):
    notify = Notify(engine)
    receiver = receivers(script=[(410, {}, 0.0)])
    sub = notify.subscribe(receiver.url)
    notify.change("plan-a", version=1)
    notify.change("plan-a", version=2)
    assert notify.worker.run_until_idle() == 1
    state = notify.subscription(sub["id"])
    assert state["status"] == "disabled" and "410" in state["disabled_reason"]
    assert notify.later() == 0 and len(receiver.received) == 1
    notify.change("plan-a", version=3)  # not queued for a disabled subscription
    assert len(notify.deliveries(sub["id"])) == 2
    use.set_enabled(UnitOfWork(engine), sub["id"], True, notify.clock())
    assert notify.worker.run_until_idle() == 2
    assert [p["data"]["sequence"] for p in receiver.payloads()] == [1, 1, 2]


def test_a_slow_receiver_times_out_and_the_retry_is_delivered(engine, receivers):
    notify = Notify(engine, delivery_timeout=0.3)
    receiver = receivers(script=[(200, {}, 1.0)])
    sub = notify.subscribe(receiver.url)
    notify.change("plan-a")
    notify.worker.run_until_idle()
    (delivery,) = notify.deliveries(sub["id"])
    assert delivery["status"] == "failed" and delivery["last_error"] == "ReadTimeoutError: timed out"
    assert notify.later() == 1
    (delivery,) = notify.deliveries(sub["id"])
    assert delivery["status"] == "delivered" and delivery["last_status_code"] == 200
    assert [e["status_code"] for e in delivery["attempt_log"]] == [None, 200]
    assert len({h["webhook-id"] for h, _ in receiver.received}) == 1  # both attempts: one id


def test_retry_after_is_honoured_in_seconds_and_as_a_date(engine, receivers):
    notify = Notify(engine)
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=300), usegmt=True)
    receiver = receivers(script=[(429, {"Retry-After": "120"}, 0.0), (503, {"Retry-After": when}, 0.0)])
    sub = notify.subscribe(receiver.url)
    notify.change("plan-a")
    notify.worker.run_until_idle()
    (delivery,) = notify.deliveries(sub["id"])
    assert delivery["last_status_code"] == 429
    assert datetime.fromisoformat(delivery["next_attempt_at"]) == notify.clock.now + timedelta(seconds=120)
    assert notify.later(timedelta(seconds=119)) == 0
    assert notify.later(timedelta(seconds=1)) == 1
    (delivery,) = notify.deliveries(sub["id"])
    wait = datetime.fromisoformat(delivery["next_attempt_at"]) - notify.clock.now
    assert delivery["last_status_code"] == 503 and abs(wait.total_seconds() - 300) < 5
    assert notify.later(timedelta(seconds=310)) == 1
    assert notify.deliveries(sub["id"])[0]["status"] == "delivered"


def test_a_delivery_goes_dead_after_max_attempts_and_replays(engine, receivers):
    notify = Notify(engine, delivery_max_attempts=2)
    receiver = receivers(script=[(500, {}, 0.0)] * 3)
    sub = notify.subscribe(receiver.url)
    notify.change("plan-a", version=1)
    notify.change("plan-a", version=2)
    assert notify.worker.run_until_idle() == 1
    assert notify.later() == 2  # the first dies on its second attempt, and a dead one holds nothing back
    dead, second = notify.deliveries(sub["id"])
    assert (dead["status"], dead["attempts"]) == ("dead", 2)
    assert [e["status_code"] for e in dead["attempt_log"]] == [500, 500] and dead["last_error"] == "HTTP 500"
    assert (second["status"], second["attempts"]) == ("failed", 1)
    replayed = use.replay_delivery(UnitOfWork(engine), dead["id"], notify.clock())
    # The count goes on as the log does (a replay is not an attempt); the replay gives a full set of attempts.
    assert (replayed["status"], replayed["attempts"], len(replayed["attempt_log"])) == ("pending", 2, 2)
    assert replayed["attempts_since_replay"] == 0
    assert notify.worker.run_until_idle() == 1
    with pytest.raises(RuleViolation, match="only dead or failed"):
        use.replay_delivery(UnitOfWork(engine), dead["id"], notify.clock())
    assert notify.later() == 1
    assert [d["status"] for d in notify.deliveries(sub["id"])] == ["delivered", "delivered"]
    assert [p["data"]["plan_version"] for p in receiver.payloads()] == [1, 1, 2, 1, 2]


def test_event_type_filters_are_respected(engine):
    notify = Notify(engine)
    goals = notify.subscribe("http://127.0.0.1:9/goals", ("goal.proposed", "goal.revised"))
    everything = notify.subscribe("http://127.0.0.1:9/all", ("*",))
    ehr = notify.subscribe("http://127.0.0.1:9/ehr", ("ehr.plan_changed",))
    notify.change("plan-a", "goal.proposed")
    notify.change("plan-a", "step.done")
    with UnitOfWork(engine) as uow:
        record_change(uow, "plan-a", "ehr.plan_changed", {"plan_version": 3, "source": "ehr"}, notify.clock())
        uow.commit()
    assert [d["sequence"] for d in notify.deliveries(goals["id"])] == [1]
    assert [d["event_type"] for d in notify.deliveries(everything["id"])] == [
        "goal.proposed", "step.done", "ehr.plan_changed",
    ]  # fmt: skip
    assert [d["sequence"] for d in notify.deliveries(ehr["id"])] == [3]
    with pytest.raises(ValueError):
        notify.change("plan-a", "goal.teleported")


def test_sequences_stay_unique_under_concurrent_writers(engine):
    notify = Notify(engine)
    notify.subscribe("http://127.0.0.1:9/all")

    def write() -> None:
        for _ in range(8):
            notify.change("plan-busy")

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with UnitOfWork(engine) as uow:
        assert sorted(d.sequence for d in uow.deliveries.list(plan_id="plan-busy")) == list(range(1, 33))


def test_concurrent_workers_keep_each_plans_order(engine, receivers):
    notify = Notify(engine)
    receiver = receivers()
    notify.subscribe(receiver.url)
    for plan in ("p1", "p2", "p3"):
        for version in range(1, 5):
            notify.change(plan, version=version)
    workers = [DeliveryWorker(UnitOfWork(engine), notify.settings, notify.clock, notify.guard) for _ in range(3)]
    threads = [threading.Thread(target=w.run_until_idle) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen: dict[str, list[int]] = {}
    for payload in receiver.payloads():
        seen.setdefault(payload["data"]["plan_id"], []).append(payload["data"]["sequence"])
    assert seen == {"p1": [1, 2, 3, 4], "p2": [1, 2, 3, 4], "p3": [1, 2, 3, 4]}


def test_delivery_checks_the_address_again_and_connects_to_the_one_checked(engine, receivers):
    receiver = receivers()
    dns = {"hooks.team.test": "127.0.0.1"}
    notify = Notify(engine)
    notify.guard = OutboundGuard(LOOPBACK, resolver=lambda host, port: [dns[host]])
    notify.worker = DeliveryWorker(UnitOfWork(engine), notify.settings, notify.clock, notify.guard)
    sub = notify.subscribe(f"http://hooks.team.test:{receiver.port}/hook")
    notify.change("plan-a", version=1)
    notify.worker.run_until_idle()
    # The name exists only in the guard's resolver: the request reached the address the guard checked.
    assert [h["host"] for h, _ in receiver.received] == [f"hooks.team.test:{receiver.port}"]
    dns["hooks.team.test"] = "10.0.0.1"  # DNS changes after registration
    notify.change("plan-a", version=2)
    notify.worker.run_until_idle()
    second = notify.deliveries(sub["id"])[1]
    assert second["status"] == "failed" and second["last_status_code"] is None
    assert second["last_error"] == (
        "refused: host hooks.team.test resolves to 10.0.0.1, a private address, which is not allowed"
    )
    assert len(receiver.received) == 1


@pytest.mark.parametrize("location", ["http://169.254.169.254/latest/meta-data/", "internal"])
def test_a_redirect_is_a_failed_attempt_and_is_not_followed(engine, receivers, location):
    inside = receivers()
    location = inside.url if location == "internal" else location
    outside = receivers(script=[(302, {"Location": location}, 0.0), (307, {"Location": location}, 0.0)])
    notify = Notify(engine)
    sub = notify.subscribe(outside.url)
    notify.change("plan-a")
    notify.worker.run_until_idle()
    notify.later()
    (delivery,) = notify.deliveries(sub["id"])
    assert [(e["status_code"], e["error"]) for e in delivery["attempt_log"]] == [
        (302, "redirect 302 not followed"), (307, "redirect 307 not followed"),
    ]  # fmt: skip
    assert inside.received == [] and len(outside.received) == 2


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[::1]:8080/hook", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback (as 127.0.0.1 inside ::ffff:7f00:1)"),
        ("http://[::ffff:10.1.2.3]/hook", "private (as 10.1.2.3 inside"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fd00::1]/hook", "private"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://100.64.0.1/hook", "non-global"),
        ("ftp://hooks.example.org/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://user:pw@hooks.example.org/", "credentials"),
        ("http:///nohost", "no host"),
    ],
)
def test_the_guard_refuses_what_is_not_public(url, reason):
    with pytest.raises(OutboundRefused) as refused:
        OutboundGuard(LOOPBACK).check(url)
    assert reason in refused.value.detail


def test_host_names_are_judged_by_every_address_they_resolve_to():
    with pytest.raises(OutboundRefused, match=r"host localhost resolves to .* loopback"):
        OutboundGuard(resolver=system_resolver).check("http://localhost:8080/hook")  # no allow-list
    mixed = OutboundGuard(resolver=lambda host, port: ["93.184.215.14", "192.168.1.10"])
    with pytest.raises(OutboundRefused, match=r"resolves to 192\.168\.1\.10, a private address"):
        mixed.check("https://hooks.example.org/x")
    public = OutboundGuard(resolver=lambda host, port: ["93.184.215.14"]).check("https://hooks.example.org:8443/x?y=1")
    assert (public.address, public.port, public.path, public.host_header) == (
        "93.184.215.14", 8443, "/x?y=1", "hooks.example.org:8443",
    )  # fmt: skip
    named = OutboundGuard(("hooks.internal",), resolver=lambda host, port: ["10.9.8.7"]).check("http://hooks.internal/")
    assert named.address == "10.9.8.7"  # an allowed host name admits whatever it resolves to
    with pytest.raises(OutboundRefused, match="does not resolve"):
        OutboundGuard(resolver=lambda host, port: []).check("http://nowhere.test/")


def test_the_event_types_cover_every_team_event():
    from service.api.schemas import EVENT_DATA_SCHEMAS

    assert set(TEAM_EVENT_TYPES) == set(EVENT_DATA_SCHEMAS) and EVENT_TYPES > set(TEAM_EVENT_TYPES)
