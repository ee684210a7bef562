"""Notifications to team systems checked from the documented interfaces only (README "HTTP API", "Errors",
"Commands"; docs/notifications.md), as an interface-engine team would: every bug found is a named
regression test here, beside the documented behaviour no other test pins down.

Bugs found (each test named after it):
- a subscription URL whose host `urlsplit` itself refuses (`http://[127.0.0.1]/`, `http://[zz]/`, an unclosed
  `http://[::1/`) was a 500 at `POST /subscriptions` (the guard let urlsplit's ValueError out);
- a body nested too deeply for the JSON parser was a 500 at `POST /subscriptions` and `PATCH` (RecursionError);
- `PLANBRIDGE_DELIVERY_TIMEOUT` bounded each read, not the attempt: a receiver that drips its answer (a header
  line now and then) held a sender for as long as it liked, past the worker's lease;
- a replayed delivery's retries backed off from the ceiling its earlier attempts had reached (up to 6 h after
  the first failure), not from the start of the "full set of attempts" a replay gives;
- `PLANBRIDGE_DELIVERY_TIMEOUT` / `PLANBRIDGE_WORKER_POLL_SECONDS` took `nan` and `inf` (every delivery then
  failed, or the worker crashed at its start) instead of refusing them by name;
- resolving a conflict changed the plan (a new version, the EHR's or a typed value) without a history row or
  a notification: subscribers kept the team's value for ever.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest
import requests
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook

from service.api.container import utcnow
from service.notify import subscriptions as use
from service.notify.ssrf import OutboundGuard, OutboundRefused
from service.notify.worker import BACKOFF_BASE, BACKOFF_FLOOR, RETRY_AFTER_CAP, DeliveryWorker
from service.store.uow import UnitOfWork
from tests.e2e.test_subscriptions_api import KEY, Api
from tests.integration.test_notify import Notify, Receiver
from tests.support import goal_event, signed

HOOK = {"event_types": ["*"]}


@pytest.fixture
def api(engine):
    service = Api(engine)
    yield service
    service.server.shutdown()


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def start(**kwargs) -> Receiver:
        started.append(Receiver(**kwargs))
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


# --- bugs found, kept as regression tests ---------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://[127.0.0.1]/hook", "http://[zz]/hook", "http://[::1/hook"])
def test_a_url_whose_host_cannot_be_read_is_a_400_not_a_500(api, url):
    answer = api.call("POST", "/subscriptions", {"url": url, **HOOK})
    assert answer.status_code == 400, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:planbridge:problem:invalid-input"
    assert "not a readable URL" in answer.json()["errors"]["url"][0]
    assert api.call("GET", "/subscriptions").json() == []
    # The guard, which checks the URL again before every delivery, refuses it too (never raises past it).
    with pytest.raises(OutboundRefused, match="the URL cannot be read"):
        OutboundGuard(("127.0.0.0/8",)).check(url)


@pytest.mark.parametrize(("method", "path"), [("POST", "/subscriptions"), ("PATCH", "/subscriptions/1")])
def test_a_body_nested_too_deeply_is_a_400_not_a_500(api, method, path):
    api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/hook", **HOOK})
    answer = requests.request(
        method,
        api.url + path,
        data=b"[" * 100_000 + b"]" * 100_000,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"] == "urn:planbridge:problem:invalid-input" and "body" in answer.json()["errors"]


class Dripper:
    """A receiver on 127.0.0.1 that answers its first request a header line every 0.2 s for `seconds` (or
    its body a byte at a time), and every later one at once with 200."""

    def __init__(self, seconds: float, where: str) -> None:
        self.seconds, self.where, self.requests = seconds, where, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                self.requests += 1
                if self.requests > 1:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    return
                end = time.monotonic() + self.seconds
                if self.where == "headers":
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    while time.monotonic() < end:
                        time.sleep(0.2)
                        conn.sendall(b"X-Still-Here: yes\r\n")
                    conn.sendall(b"Content-Length: 0\r\n\r\n")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                    while time.monotonic() < end:
                        time.sleep(0.2)
                        conn.sendall(b"x")
            except OSError:  # the sender hung up: what the deadline is for
                pass

    def stop(self) -> None:
        self.server.close()


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_delivery_timeout(engine, where):
    dripper = Dripper(seconds=6.0, where=where)
    try:
        notify = Notify(engine, delivery_timeout=0.5)
        sub = notify.subscribe(dripper.url)
        notify.change("plan-a")
        started = time.monotonic()
        assert notify.worker.run_until_idle() == 1
        took = time.monotonic() - started
        assert took < 2.5, f"the attempt took {took:.1f} s with PLANBRIDGE_DELIVERY_TIMEOUT=0.5"
        (delivery,) = notify.deliveries(sub["id"])
        assert (delivery["status"], delivery["last_status_code"]) == ("failed", None)
        assert delivery["last_error"] == "ReadTimeoutError: timed out"
        assert notify.later() == 1  # the retry, answered at once, is delivered
        assert notify.deliveries(sub["id"])[0]["status"] == "delivered"
    finally:
        dripper.stop()


def test_a_replayed_delivery_backs_off_from_the_start_again(engine, receivers, monkeypatch):
    # Full jitter drawn at its ceiling, so the wait after a failure is the ceiling itself.
    monkeypatch.setattr("service.notify.worker.random.uniform", lambda low, high: high)
    notify = Notify(engine, delivery_max_attempts=3)
    receiver = receivers(script=[(500, {}, 0.0)] * 4)
    sub = notify.subscribe(receiver.url)
    notify.change("plan-a")
    notify.worker.run_until_idle()
    notify.later()
    notify.later()
    (dead,) = notify.deliveries(sub["id"])
    assert (dead["status"], dead["attempts"]) == ("dead", 3)
    use.replay_delivery(UnitOfWork(engine), dead["id"], notify.clock())
    assert notify.worker.run_until_idle() == 1  # the replay's first attempt (the fourth in all) fails
    (failed,) = notify.deliveries(sub["id"])
    assert (failed["status"], failed["attempts"], failed["attempts_since_replay"]) == ("failed", 4, 1)
    wait = datetime.fromisoformat(failed["next_attempt_at"]) - notify.clock.now
    # A first retry waits at most BACKOFF_BASE, after a replay as before it (not 30 s * 2**3).
    assert wait == timedelta(seconds=BACKOFF_BASE)


@pytest.mark.parametrize("value", ["nan", "inf", "1e999"])
@pytest.mark.parametrize("name", ["PLANBRIDGE_DELIVERY_TIMEOUT", "PLANBRIDGE_WORKER_POLL_SECONDS"])
def test_a_delivery_setting_that_is_not_a_finite_number_is_refused_by_name(name, value):
    # Accepted, `nan` failed every delivery ("ValueError: unexpected error", a traceback each time) and `inf`
    # crashed the notification worker at its start (OverflowError): a setting's error names the setting.
    from service.domain.errors import ConfigurationError
    from service.settings import Settings

    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_a_finished_delivery_shows_no_next_attempt(api, receivers):
    # The log said a dead, delivered or skipped delivery would be tried again when its last lease ran out.
    receiver = receivers(script=[(500, {}, 0.0)])
    sub = api.call("POST", "/subscriptions", {"url": receiver.url, **HOOK}).json()
    for plan_id in ("plan-a", "plan-b", "plan-c"):
        api.change(plan_id, 1)
    api.worker.run_until_idle()  # the first to arrive is refused once (failed), the others are delivered
    log = api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()
    (failed,) = [d for d in log if d["status"] == "failed"]
    assert failed["next_attempt_at"] is not None
    assert sorted((d["status"], d["next_attempt_at"]) for d in log if d is not failed) == [("delivered", None)] * 2
    skipped = api.call("POST", f"/deliveries/{failed['id']}/skip").json()
    assert (skipped["status"], skipped["next_attempt_at"], skipped["claimed_at"]) == ("skipped", None, None)


# --- documented behaviour no other test pins down ---------------------------------------------------------


def test_a_team_event_reaches_the_subscriber_signed_with_exactly_the_documented_payload(api, receivers, caplog):
    caplog.set_level(logging.DEBUG)
    receiver = receivers(script=[(503, {"Retry-After": "5"}, 0.0)])
    sub = api.call("POST", "/subscriptions", {"url": receiver.url, **HOOK}).json()
    event = goal_event(mrn=f"MRN-{uuid.uuid4().hex[:8]}")
    body = json.dumps(event).encode()
    headers = signed(body)
    accepted = requests.post(f"{api.url}/webhooks/team", data=body, headers=headers, timeout=10)
    assert accepted.status_code == 202, accepted.text
    api.worker.run_until_idle()  # 503, Retry-After: 5
    api.clock.now += timedelta(seconds=5)
    api.worker.run_until_idle()
    assert len(receiver.received) == 2
    (first_headers, _), (sent_headers, sent) = receiver.received
    assert first_headers["webhook-id"] == sent_headers["webhook-id"]  # the same id on the retry
    # Any Standard Webhooks verifier takes it with the secret given once at registration.
    payload = Webhook(sub["secret"]).verify(sent, sent_headers)
    assert set(payload) == {"type", "timestamp", "data"} and payload["type"] == "goal.proposed"
    assert payload["timestamp"].endswith("Z")
    assert set(payload["data"]) == {"plan_id", "plan_version", "sequence", "source", "change"}
    assert payload["data"] | {"change": None} == {
        "plan_id": event["data"]["plan_id"], "plan_version": 1, "sequence": 1, "source": "team", "change": None,
    }  # fmt: skip
    change = payload["data"]["change"]
    assert set(change) == {"event_id", "sender", "data", "paths"}
    assert (change["event_id"], change["sender"], change["paths"]) == (headers["webhook-id"], "default", ["*"])
    assert change["data"] == event["data"]  # as received
    (delivery,) = api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()
    assert [e["status_code"] for e in delivery["attempt_log"]] == [503, 200] and "payload" not in delivery
    # Logs carry ids and codes: no MRN, no name, no free text of the event, no secret.
    for secret_or_phi in (event["data"]["patient"]["mrn"], "Sam Example", "Walk to the park", sub["secret"]):
        assert secret_or_phi not in caplog.text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://2130706433/hook", "host 2130706433 resolves to 127.0.0.1, a loopback"),  # decimal
        ("http://0177.0.0.1/hook", "resolves to 127.0.0.1, a loopback"),  # octal
        ("http://0x7f.1/hook", "resolves to 127.0.0.1, a loopback"),  # hex, short form
        ("http://127.1/hook", "resolves to 127.0.0.1, a loopback"),
        ("http://0/hook", "resolves to 0.0.0.0, an unspecified"),
        ("http://localhost./hook", "host localhost resolves to"),
        ("http://[::7f00:1]/hook", "reserved"),  # IPv4-compatible
        ("http://[0:0:0:0:0:ffff:127.0.0.1]/hook", "loopback (as 127.0.0.1"),
        ("http://[64:ff9b::a00:1]/hook", "private (as 10.0.0.1"),  # NAT64
        ("http://[2002:a9fe:a9fe::]/hook", "link-local (as 169.254.169.254"),  # 6to4
        ("http://[fe80::1%25eth0]/hook", "link-local"),  # with a zone
        ("http://[::1]:0/hook", "port 0"),
    ],
)
def test_other_spellings_of_private_addresses_are_refused_with_422(engine, url, reason):
    strict = Api(engine, allow=())
    try:
        answer = strict.call("POST", "/subscriptions", {"url": url, **HOOK})
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"] == "urn:planbridge:problem:url-refused" and reason in answer.json()["detail"]
        assert strict.call("GET", "/subscriptions").json() == []
    finally:
        strict.server.shutdown()


def test_an_allowed_ipv6_endpoint_is_reached_at_its_bracketed_host(engine):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    arrived: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            arrived.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    class Server6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    server = Server6(("::1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    api = Api(engine, allow=("::1/128",))
    try:
        port = server.server_address[1]
        assert api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/", **HOOK}).status_code == 422
        created = api.call("POST", "/subscriptions", {"url": f"http://[::1]:{port}/hook", **HOOK})
        assert created.status_code == 201, created.text
        api.change("plan-a", 1)
        assert api.worker.run_until_idle() == 1
        assert [h["host"] for h in arrived] == [f"[::1]:{port}"]
        (delivery,) = api.call("GET", f"/subscriptions/{created.json()['id']}/deliveries").json()
        assert (delivery["status"], delivery["last_status_code"]) == ("delivered", 204)
    finally:
        api.server.shutdown()
        server.shutdown()
        server.server_close()


def test_retry_after_zero_waits_the_floor_and_a_huge_one_is_capped(engine, receivers):
    notify = Notify(engine)
    receiver = receivers(script=[(429, {"Retry-After": "0"}, 0.0), (503, {"Retry-After": "99999999999"}, 0.0)])
    sub = notify.subscribe(receiver.url)
    notify.change("plan-a")

    def wait() -> timedelta:
        (delivery,) = notify.deliveries(sub["id"])
        return datetime.fromisoformat(delivery["next_attempt_at"]) - notify.clock.now

    notify.worker.run_until_idle()
    assert wait() == timedelta(seconds=BACKOFF_FLOOR)  # not at once: no retry storm
    assert notify.worker.run_until_idle() == 0
    assert notify.later(timedelta(seconds=BACKOFF_FLOOR)) == 1
    assert wait() == timedelta(seconds=RETRY_AFTER_CAP)
    assert notify.later(timedelta(seconds=RETRY_AFTER_CAP - 1)) == 0
    assert notify.later(timedelta(seconds=1)) == 1
    assert notify.deliveries(sub["id"])[0]["status"] == "delivered" and len(receiver.received) == 3


def test_switching_a_strict_subscription_to_best_effort_releases_what_a_dead_delivery_held(engine, receivers):
    api = Api(engine, delivery_max_attempts=1)
    try:
        receiver = receivers(script=[(500, {}, 0.0)])
        sub = api.call("POST", "/subscriptions", {"url": receiver.url, **HOOK, "ordering": "strict"}).json()
        for version in (1, 2, 3):
            api.change("plan-a", version)
        api.change("plan-b", 1)  # another plan never waits
        assert api.worker.run_until_idle() == 2
        log = api.call("GET", f"/subscriptions/{sub['id']}/deliveries?plan=plan-a").json()
        assert [d["status"] for d in log] == ["dead", "pending", "pending"]
        api.clock.now += timedelta(hours=7)
        assert api.worker.run_until_idle() == 0  # strict: held while the first is dead
        changed = api.call("PATCH", f"/subscriptions/{sub['id']}", {"ordering": "best-effort"})
        assert changed.status_code == 200 and changed.json()["ordering"] == "best-effort"
        assert api.worker.run_until_idle() == 2
        assert [p["data"]["sequence"] for p in receiver.payloads() if p["data"]["plan_id"] == "plan-a"] == [1, 2, 3]
        replayed = api.call("POST", f"/deliveries/{log[0]['id']}/replay")
        assert replayed.status_code == 200 and api.worker.run_until_idle() == 1
        # Replayed, the dead one arrives after the later ones; its sequence tells the receiver it is older.
        assert [p["data"]["sequence"] for p in receiver.payloads() if p["data"]["plan_id"] == "plan-a"] == [1, 2, 3, 1]
    finally:
        api.server.shutdown()


def test_the_ordering_and_skip_commands_act_as_the_api_does(database, receivers, monkeypatch):
    from service.cli_notify import notifications

    engine, url = database
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PLANBRIDGE_OUTBOUND_ALLOW", "127.0.0.0/8")
    monkeypatch.setenv("PLANBRIDGE_DELIVERY_MAX_ATTEMPTS", "1")
    receiver = receivers(script=[(500, {}, 0.0)])
    api = Api(engine)
    try:
        sub = api.call("POST", "/subscriptions", {"url": receiver.url, **HOOK}).json()
        api.change("plan-a", 1)
        api.change("plan-a", 2)
    finally:
        api.server.shutdown()
    runner = CliRunner()
    ordered = runner.invoke(notifications, ["ordering", str(sub["id"]), "strict"])
    assert ordered.exit_code == 0 and json.loads(ordered.output)["ordering"] == "strict"
    assert runner.invoke(notifications, ["ordering", str(sub["id"]), "loose"]).exit_code == 2
    assert '{"attempted": 1}' in runner.invoke(notifications, ["worker", "--once"]).output
    dead, held = json.loads(runner.invoke(notifications, ["deliveries", str(sub["id"])]).output)
    assert (dead["status"], held["status"]) == ("dead", "pending")
    assert runner.invoke(notifications, ["skip", str(held["id"])]).exit_code == 1  # pending: nothing to give up
    skipped = runner.invoke(notifications, ["skip", str(dead["id"])])
    assert skipped.exit_code == 0 and json.loads(skipped.output)["status"] == "skipped"
    assert runner.invoke(notifications, ["skip", "999999"]).exit_code == 1
    assert '{"attempted": 1}' in runner.invoke(notifications, ["worker", "--once"]).output
    assert [p["data"]["plan_version"] for p in receiver.payloads()] == [1, 2]


def test_the_delivery_log_keeps_its_filters_across_pages_and_ids_are_never_given_twice(api):
    first = api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/hook", **HOOK}).json()
    for version in range(1, 4):
        api.change("plan-a", version)
    assert api.call("DELETE", f"/subscriptions/{first['id']}").status_code == 204
    sub = api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/hook", **HOOK}).json()
    assert sub["id"] > first["id"]  # a request repeated after a lost answer finds its own row or 404
    for version in range(4, 9):
        api.change("plan-a", version)
    api.call("GET", f"/subscriptions/{sub['id']}/deliveries")
    seen, path = [], f"/subscriptions/{sub['id']}/deliveries?status=pending&limit=2"
    while path:
        answer = api.call("GET", path)
        assert answer.status_code == 200 and len(answer.json()) <= 2
        assert {d["status"] for d in answer.json()} <= {"pending"}
        seen += [d["sequence"] for d in answer.json()]
        path = answer.links.get("next", {}).get("url", "").removeprefix(api.url) or None
        assert path is None or ("status=pending" in path and "limit=2" in path)
    assert seen == [4, 5, 6, 7, 8]
    assert api.call("GET", f"/subscriptions/{first['id']}/deliveries").status_code == 404


def test_a_conflict_resolution_that_changes_the_plan_is_notified_and_in_its_history(database, fhir_base_url):
    """Docs: "every change to a plan ... is POSTed"; the history holds "every accepted change of the plan".
    Resolving a conflict with `theirs` changes the plan (the EHR's value replaces the team's, a new plan
    version): subscribers must hear of it, or their copy keeps the team's value for ever."""
    import copy
    from pathlib import Path

    from service.fhir.client import FhirClient
    from tests.live import Live

    engine, _ = database
    live = Live(engine, fhir_base_url, api_keys=(KEY,), outbound_allow=("127.0.0.0/8",))
    keyed = {"X-API-Key": KEY}
    try:
        sub = requests.post(
            f"{live.url}/subscriptions", json={"url": "http://127.0.0.1:9/hook", **HOOK}, headers=keyed, timeout=10
        ).json()
        plan_id = f"plan-{uuid.uuid4().hex[:10]}"
        assert live.post(goal_event(plan_id)).status_code == 202
        live.worker.run_until_idle()
        status = json.loads(
            (Path(__file__).resolve().parents[2] / "fixtures/events/goal-status-changed.json").read_text()
        )
        event = copy.deepcopy(status)
        event["data"].update(plan_id=plan_id, goal_id="goal-walk", lifecycle_status="active")
        assert live.post(event).status_code == 202  # the team's change, not pushed yet
        goal = live.fhir.find_one("Goal", {"identifier": f"{live.settings.identifier_base}/goal|{plan_id}/goal-walk"})
        FhirClient(fhir_base_url).request("PUT", f"Goal/{goal['id']}", json={**goal, "lifecycleStatus": "on-hold"})
        pulled = requests.post(
            f"{live.url}/plans/{plan_id}/sync", json={"direction": "pull"}, headers=keyed, timeout=30
        )
        assert pulled.status_code == 200, pulled.text
        (conflict,) = requests.get(f"{live.url}/conflicts?plan={plan_id}", headers=keyed, timeout=10).json()
        before = requests.get(f"{live.url}/plans/{plan_id}", headers=keyed, timeout=10).json()
        resolved = requests.post(
            f"{live.url}/conflicts/{conflict['id']}/resolve", json={"take": "theirs"}, headers=keyed, timeout=10
        )
        assert resolved.status_code == 200, resolved.text
        after = requests.get(f"{live.url}/plans/{plan_id}", headers=keyed, timeout=10).json()
        assert before["goals"][0]["lifecycle_status"] == "active" and after["goals"][0]["lifecycle_status"] == "on-hold"
        history = requests.get(f"{live.url}/plans/{plan_id}/history", headers=keyed, timeout=10).json()
        assert history[-1]["plan_version"] == after["version"], "the resolution is not in the plan's history"
        assert "goals[id=goal-walk].lifecycle_status" in history[-1]["paths"]
        with UnitOfWork(engine) as uow:
            payloads = [d.payload for d in uow.deliveries.list(sub["id"], plan_id=plan_id)]
        assert payloads[-1]["data"]["plan_version"] == after["version"], "subscribers never hear of the resolution"
        change = payloads[-1]["data"]["change"]
        assert "goals[id=goal-walk].lifecycle_status" in change["paths"] and change["outcome"] == "resolved"
        assert change["conflict"] == {"id": conflict["id"], "path": conflict["path"], "choice": "theirs"}
    finally:
        live.close()


def test_the_delivery_log_pages_200_by_default_and_keeps_the_latest_50_attempts(engine, receivers):
    api = Api(engine, delivery_max_attempts=100)
    try:
        receiver = receivers(script=[(500, {}, 0.0)] * 55)
        sub = api.call("POST", "/subscriptions", {"url": receiver.url, **HOOK}).json()
        for version in range(1, 202):
            api.change(f"plan-{version % 3}", version)
        page = api.call("GET", f"/subscriptions/{sub['id']}/deliveries")
        assert len(page.json()) == 200 and page.links["next"]["url"].endswith(f"after={page.json()[-1]['id']}")
        rest = api.call("GET", page.links["next"]["url"].removeprefix(api.url))
        assert len(rest.json()) == 1 and "next" not in rest.links
        assert api.call("DELETE", f"/subscriptions/{sub['id']}").status_code == 204
        sub = api.call("POST", "/subscriptions", {"url": receiver.url, **HOOK}).json()
        api.change("plan-log", 1)
        for _ in range(55):  # refused 55 times: the count goes on, the log keeps the latest 50
            assert api.worker.run_until_idle() == 1
            api.clock.now += timedelta(hours=7)
        (delivery,) = api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()
        assert (delivery["status"], delivery["attempts"], delivery["attempts_since_replay"]) == ("failed", 55, 55)
        assert [e["attempt"] for e in delivery["attempt_log"]] == list(range(6, 56))
        assert {e["status_code"] for e in delivery["attempt_log"]} == {500}
    finally:
        api.server.shutdown()


def test_the_openapi_document_lists_every_answer_the_subscription_routes_give(api):
    documented = api.call("GET", "/openapi.json", key=None).json()["paths"]
    sub = api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/hook", **HOOK}).json()
    api.change("plan-a", 1)
    (delivery,) = api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()
    s, d = sub["id"], delivery["id"]
    calls = [
        ("GET", "/subscriptions", "/subscriptions?status=bogus", None),
        ("POST", "/subscriptions", "/subscriptions", {"url": "http://10.0.0.1/", **HOOK}),
        ("POST", "/subscriptions", "/subscriptions", {"url": "http://[127.0.0.1]/", **HOOK}),
        ("GET", "/subscriptions/{subscription_id}", "/subscriptions/999999", None),
        ("PATCH", "/subscriptions/{subscription_id}", f"/subscriptions/{s}", {"ordering": "loose"}),
        ("PATCH", "/subscriptions/{subscription_id}", f"/subscriptions/{s}", {"ordering": "strict"}),
        ("GET", "/subscriptions/{subscription_id}/deliveries", f"/subscriptions/{s}/deliveries?limit=0", None),
        ("GET", "/subscriptions/{subscription_id}/deliveries", "/subscriptions/999999/deliveries", None),
        ("POST", "/deliveries/{delivery_id}/replay", f"/deliveries/{d}/replay", None),  # pending: 422
        ("POST", "/deliveries/{delivery_id}/skip", "/deliveries/999999/skip", None),
        ("POST", "/subscriptions/{subscription_id}/rotate-secret", f"/subscriptions/{s}/rotate-secret", None),
        (
            "POST",
            "/subscriptions/{subscription_id}/rotate-secret",
            f"/subscriptions/{s}/rotate-secret",
            {"grace_seconds": -1},
        ),
        ("POST", "/subscriptions/{subscription_id}/rotate-secret", "/subscriptions/999999/rotate-secret", None),
        ("POST", "/subscriptions/{subscription_id}/disable", f"/subscriptions/{s}/disable", None),
        ("DELETE", "/subscriptions/{subscription_id}", f"/subscriptions/{s}", None),
        ("POST", "/subscriptions/{subscription_id}/enable", f"/subscriptions/{s}/enable", None),  # gone: 404
    ]
    seen = set()
    for method, template, path, body in calls:
        status = api.call(method, path, body).status_code
        seen.add(status)
        assert str(status) in documented[template][method.lower()]["responses"], (method, path, status)
    assert seen == {200, 204, 400, 404, 422}
    assert {"in": "query", "name": "status", "schema": {"type": "string", "enum": ["active", "disabled"]}} in (
        documented["/subscriptions"]["get"]["parameters"]
    )


def test_an_ehr_change_reaches_the_subscriber_with_exactly_the_documented_change(database, fhir_base_url, receivers):
    """`ehr.plan_changed`: `change` is `{outcome, careplan_id, paths}` (`conflicts`, `removed` only when there
    are some); `merged` when the EHR's change sits beside a team change the server has not had yet."""
    import copy
    from pathlib import Path

    from service.fhir.client import FhirClient
    from tests.live import Live

    engine, _ = database
    live = Live(engine, fhir_base_url, api_keys=(KEY,), outbound_allow=("127.0.0.0/8",))
    keyed = {"X-API-Key": KEY}
    receiver = receivers()
    try:
        body = {"url": receiver.url, "event_types": ["ehr.plan_changed"]}
        sub = requests.post(f"{live.url}/subscriptions", json=body, headers=keyed, timeout=10).json()
        plan_id = f"plan-{uuid.uuid4().hex[:10]}"
        assert live.post(goal_event(plan_id)).status_code == 202
        live.worker.run_until_idle()
        status = json.loads(
            (Path(__file__).resolve().parents[2] / "fixtures/events/goal-status-changed.json").read_text()
        )
        event = copy.deepcopy(status)
        event["data"].update(plan_id=plan_id, goal_id="goal-walk", lifecycle_status="active")
        assert live.post(event).status_code == 202  # the team's change, not pushed yet
        careplan = live.fhir.find_one("CarePlan", {"identifier": f"{live.settings.identifier_base}/plan|{plan_id}"})
        FhirClient(fhir_base_url).request("PUT", f"CarePlan/{careplan['id']}", json={**careplan, "title": "Renamed"})
        pulled = requests.post(
            f"{live.url}/plans/{plan_id}/sync", json={"direction": "pull"}, headers=keyed, timeout=30
        )
        assert pulled.status_code == 200, pulled.text
        worker = DeliveryWorker(UnitOfWork(engine), live.settings, utcnow)
        assert worker.run_until_idle() == 1  # the team's events are filtered out
        ((headers, sent),) = receiver.received
        payload = Webhook(sub["secret"]).verify(sent, headers)
        assert payload["type"] == "ehr.plan_changed" and payload["data"]["source"] == "ehr"
        assert payload["data"]["sequence"] == 3 and payload["data"]["plan_version"] == 3
        assert payload["data"]["change"] == {"outcome": "merged", "careplan_id": careplan["id"], "paths": ["title"]}
    finally:
        live.close()
