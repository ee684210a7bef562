"""Subscriptions and their delivery log over real HTTP: auth, validation, SSRF refusals, replay, enable/disable."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import requests
from openapi_spec_validator import validate as validate_openapi
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.serving import make_server

from service.api.app import create_app
from service.api.container import utcnow
from service.notify.changes import record_change
from service.notify.worker import DeliveryWorker
from service.store.uow import UnitOfWork
from tests.integration.test_notify import Receiver
from tests.support import Clock, settings

KEY = "test-key-0123456789abcdef"


class Api:
    def __init__(self, engine, allow: tuple[str, ...] = ("127.0.0.0/8",), **overrides) -> None:
        self.engine, self.clock = engine, Clock()
        self.settings = settings(api_keys=(KEY,), outbound_allow=allow, **overrides)
        app = create_app(self.settings, engine)
        app.extensions["planbridge"].clock = self.clock
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.worker = DeliveryWorker(UnitOfWork(engine), self.settings, self.clock)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def call(self, method: str, path: str, body=None, key: str | None = KEY) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.request(method, self.url + path, json=body, headers=headers, timeout=10)

    def change(self, plan_id: str, version: int) -> None:
        with UnitOfWork(self.engine) as uow:
            record_change(uow, plan_id, "goal.proposed", {"plan_version": version, "source": "team"}, self.clock())
            uow.commit()


@pytest.fixture
def api(engine):
    service = Api(engine)
    yield service
    service.server.shutdown()


@pytest.fixture
def receiver():
    endpoint = Receiver(script=[(500, {}, 0.0)])
    yield endpoint
    endpoint.stop()


ROUTES = [
    ("POST", "/subscriptions"),
    ("GET", "/subscriptions"),
    ("GET", "/subscriptions/1"),
    ("DELETE", "/subscriptions/1"),
    ("POST", "/subscriptions/1/enable"),
    ("POST", "/subscriptions/1/disable"),
    ("GET", "/subscriptions/1/deliveries"),
    ("POST", "/deliveries/1/replay"),
    ("PATCH", "/subscriptions/1"),
    ("POST", "/deliveries/1/skip"),
]


def test_every_subscription_route_needs_an_api_key(api):
    for method, path in ROUTES:
        refused = api.call(method, path, {"url": "http://127.0.0.1:9/", "event_types": ["*"]}, key=None)
        assert refused.status_code == 401, (method, path)
        assert refused.json()["type"] == "urn:planbridge:problem:unauthorized"
        assert api.call(method, path, key=KEY[:-1] + "X").status_code == 401


def test_subscribe_deliver_and_read_the_log(api, receiver):
    created = api.call("POST", "/subscriptions", {"url": receiver.url, "event_types": ["goal.proposed"]})
    assert created.status_code == 201
    sub = created.json()
    assert sub["secret"].startswith("whsec_") and sub["status"] == "active" and sub["event_types"] == ["goal.proposed"]
    listed = api.call("GET", "/subscriptions").json()
    assert [s["id"] for s in listed] == [sub["id"]] and "secret" not in listed[0]
    assert "secret" not in api.call("GET", f"/subscriptions/{sub['id']}").json()
    api.change("plan-a", 1)
    api.worker.run_until_idle()  # the receiver answers 500 once
    api.clock.now += api.worker.lease * 100
    api.worker.run_until_idle()
    (delivery,) = api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()
    assert (delivery["status"], delivery["attempts"], delivery["sequence"]) == ("delivered", 2, 1)
    assert [e["status_code"] for e in delivery["attempt_log"]] == [500, 200] and "payload" not in delivery
    assert api.call("GET", f"/subscriptions/{sub['id']}/deliveries?status=dead").json() == []
    assert api.call("GET", f"/subscriptions/{sub['id']}/deliveries?status=lost").status_code == 400
    assert api.call("POST", f"/deliveries/{delivery['id']}/replay").status_code == 422  # delivered
    assert api.call("POST", "/deliveries/999999/replay").status_code == 404
    assert api.call("GET", "/subscriptions/999999/deliveries").status_code == 404


def test_a_dead_delivery_is_replayed_and_a_subscription_disabled_enabled_and_deleted(engine, receiver):
    api = Api(engine, delivery_max_attempts=1)
    try:
        sub = api.call("POST", "/subscriptions", {"url": receiver.url, "event_types": ["*"]}).json()
        api.change("plan-a", 1)
        api.worker.run_until_idle()
        (dead,) = api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()
        assert (dead["status"], dead["last_status_code"], dead["last_error"]) == ("dead", 500, "HTTP 500")
        replayed = api.call("POST", f"/deliveries/{dead['id']}/replay")
        # The attempt count goes on, as the attempt log does; the replay gives a full set of attempts.
        assert replayed.status_code == 200 and (replayed.json()["status"], replayed.json()["attempts"]) == (
            "pending",
            1,
        )
        assert replayed.json()["attempts_since_replay"] == 0 and len(replayed.json()["attempt_log"]) == 1
        disabled = api.call("POST", f"/subscriptions/{sub['id']}/disable").json()
        assert disabled["status"] == "disabled" and disabled["disabled_reason"]
        assert api.worker.run_until_idle() == 0
        assert api.call("GET", "/subscriptions?status=disabled").json()[0]["id"] == sub["id"]
        enabled = api.call("POST", f"/subscriptions/{sub['id']}/enable").json()
        assert (enabled["status"], enabled["disabled_reason"]) == ("active", None)
        assert api.worker.run_until_idle() == 1
        assert api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()[0]["status"] == "delivered"
        assert api.call("DELETE", f"/subscriptions/{sub['id']}").status_code == 204
        assert api.call("GET", f"/subscriptions/{sub['id']}").status_code == 404
        assert api.call("DELETE", f"/subscriptions/{sub['id']}").status_code == 404
    finally:
        api.server.shutdown()


@pytest.mark.parametrize(
    "body",
    [
        {"event_types": ["*"]},
        {"url": "http://127.0.0.1:9/", "event_types": []},
        {"url": "http://127.0.0.1:9/", "event_types": ["goal.teleported"]},
        {"url": "http://127.0.0.1:9/", "event_types": ["*", "goal.proposed"]},
        {"url": 42, "event_types": ["*"]},
        {"url": "http://127.0.0.1:9/", "event_types": ["*"], "colour": "red"},
        ["not", "an", "object"],
    ],
)
def test_invalid_subscriptions_are_refused_with_400(api, body):
    answer = api.call("POST", "/subscriptions", body)
    assert answer.status_code == 400 and answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:planbridge:problem:invalid-input" and answer.json()["errors"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[::1]:8080/hook", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback (as 127.0.0.1"),
        ("gopher://127.0.0.1/", "only http and https"),
    ],
)
def test_urls_that_are_not_public_are_refused_with_422_naming_why(api, url, reason):
    answer = api.call("POST", "/subscriptions", {"url": url, "event_types": ["*"]})
    assert answer.status_code == 422 and answer.json()["type"] == "urn:planbridge:problem:url-refused"
    assert reason in answer.json()["detail"]
    assert api.call("GET", "/subscriptions").json() == []


def test_localhost_is_refused_without_the_allow_list(engine):
    strict = Api(engine, allow=())
    try:
        answer = strict.call("POST", "/subscriptions", {"url": "http://localhost:8080/hook", "event_types": ["*"]})
        assert answer.status_code == 422 and "host localhost resolves to" in answer.json()["detail"]
    finally:
        strict.server.shutdown()


def test_the_openapi_document_lists_the_subscription_routes(api):
    document = api.call("GET", "/openapi.json", key=None).json()
    validate_openapi(document)
    assert {
        "/subscriptions",
        "/subscriptions/{subscription_id}",
        "/subscriptions/{subscription_id}/enable",
        "/subscriptions/{subscription_id}/disable",
        "/subscriptions/{subscription_id}/deliveries",
        "/deliveries/{delivery_id}/replay",
    } <= set(document["paths"])
    assert set(document["paths"]["/subscriptions/{subscription_id}"]) == {"get", "patch", "delete"}
    assert "/deliveries/{delivery_id}/skip" in document["paths"]
    rotate = document["paths"]["/subscriptions/{subscription_id}/rotate-secret"]["post"]
    assert {"200", "400", "401", "404"} <= set(rotate["responses"])


def test_the_notifications_commands_list_show_replay_and_work(database, receiver, monkeypatch):
    from click.testing import CliRunner

    from service.cli_notify import notifications

    engine, url = database
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PLANBRIDGE_OUTBOUND_ALLOW", "127.0.0.0/8")
    monkeypatch.setenv("PLANBRIDGE_DELIVERY_MAX_ATTEMPTS", "1")
    api = Api(engine)
    try:
        sub = api.call("POST", "/subscriptions", {"url": receiver.url, "event_types": ["*"]}).json()
    finally:
        api.server.shutdown()
    with UnitOfWork(engine) as uow:
        record_change(uow, "plan-a", "plan.updated", {"plan_version": 2, "source": "team"}, utcnow())
        uow.commit()
    runner = CliRunner()
    listed = runner.invoke(notifications, ["list"])
    assert listed.exit_code == 0 and f'"id": {sub["id"]}' in listed.output and "whsec_" not in listed.output
    worked = runner.invoke(notifications, ["worker", "--once"])
    assert worked.exit_code == 0 and '"attempted": 1' in worked.output  # the receiver answers 500: dead
    log = runner.invoke(notifications, ["deliveries", str(sub["id"]), "--status", "dead"])
    assert log.exit_code == 0 and '"last_status_code": 500' in log.output
    delivery_id = log.output.split('"id": ')[1].split(",")[0]
    replayed = runner.invoke(notifications, ["replay", delivery_id])
    assert replayed.exit_code == 0 and '"status": "pending"' in replayed.output
    assert runner.invoke(notifications, ["replay", delivery_id]).exit_code == 1  # pending now, not dead
    again = runner.invoke(notifications, ["worker", "--once"])
    assert '{"attempted": 1}' in again.output and "delivered (200)" in again.output
    assert runner.invoke(notifications, ["deliveries", "999"]).exit_code == 1


def test_the_delivery_log_goes_a_page_at_a_time(api):
    sub = api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}).json()
    for version in range(1, 6):
        api.change("plan-log", version)
    sequences, path = [], f"/subscriptions/{sub['id']}/deliveries?plan=plan-log&limit=2"
    while path:
        answer = api.call("GET", path)
        assert answer.status_code == 200 and len(answer.json()) <= 2
        sequences += [d["sequence"] for d in answer.json()]
        path = answer.links.get("next", {}).get("url", "").removeprefix(api.url) or None
        assert path is None or "plan=plan-log" in path
    assert sequences == [1, 2, 3, 4, 5]
    for bad in ("after=-1", "after=²", "limit=²", f"after={2**31}"):
        refused = api.call("GET", f"/subscriptions/{sub['id']}/deliveries?{bad}")
        assert refused.status_code == 400, bad


def test_the_ordering_is_chosen_at_subscription_changed_later_and_a_dead_delivery_skipped(engine, receiver):
    api = Api(engine, delivery_max_attempts=1)
    try:
        default = api.call("POST", "/subscriptions", {"url": receiver.url, "event_types": ["*"]}).json()
        assert default["ordering"] == "best-effort"
        body = {"url": receiver.url, "event_types": ["*"], "ordering": "strict"}
        sub = api.call("POST", "/subscriptions", body).json()
        assert (
            sub["ordering"] == "strict"
            and api.call("GET", f"/subscriptions/{sub['id']}").json()["ordering"] == "strict"
        )
        refused = api.call("POST", "/subscriptions", {**body, "ordering": "loose"})
        assert refused.status_code == 400 and "ordering" in refused.json()["errors"]
        api.call("DELETE", f"/subscriptions/{default['id']}")
        api.change("plan-a", 1)
        api.change("plan-a", 2)
        api.worker.run_until_idle()  # the receiver answers 500 once: the first is dead, the second held back
        dead, held = api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()
        assert (dead["status"], held["status"]) == ("dead", "pending")
        assert api.call("GET", f"/subscriptions/{sub['id']}/deliveries?status=skipped").json() == []
        skipped = api.call("POST", f"/deliveries/{dead['id']}/skip")
        assert skipped.status_code == 200 and skipped.json()["status"] == "skipped"
        assert api.call("POST", f"/deliveries/{dead['id']}/skip").status_code == 422
        assert api.call("POST", f"/deliveries/{held['id']}/skip").status_code == 422  # pending: not dead or failed
        assert api.worker.run_until_idle() == 1
        assert [d["status"] for d in api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()] == [
            "skipped",
            "delivered",
        ]
        changed = api.call("PATCH", f"/subscriptions/{sub['id']}", {"ordering": "best-effort"})
        assert changed.status_code == 200 and changed.json()["ordering"] == "best-effort"
        assert api.call("PATCH", f"/subscriptions/{sub['id']}", {"url": "http://127.0.0.1:9/"}).status_code == 400
        assert api.call("PATCH", "/subscriptions/999999", {"ordering": "strict"}).status_code == 404
    finally:
        api.server.shutdown()


@pytest.fixture
def receivers():
    """Receivers answering 200, started on demand; all stopped after the test."""
    started: list[Receiver] = []

    def start() -> Receiver:
        started.append(Receiver())
        return started[-1]

    yield start
    for endpoint in started:
        endpoint.stop()


def signatures(received: tuple[dict[str, str], bytes]) -> list[str]:
    return received[0]["webhook-signature"].split(" ")


def verifies(secret: str, received: tuple[dict[str, str], bytes]) -> bool:
    headers, body = received
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


def test_a_subscription_rotates_its_secret_and_signs_with_both_through_the_grace_period(api, receivers):
    """Before, the only way to a new secret was deleting the subscription (its id, delivery log, queued deliveries
    and ordering with it) and subscribing again."""
    receiver = receivers()
    sub = api.call("POST", "/subscriptions", {"url": receiver.url, "event_types": ["*"], "ordering": "strict"}).json()
    old = sub["secret"]
    assert sub["previous_secret_expires_at"] is None
    api.change("plan-a", 1)
    assert api.worker.run_until_idle() == 1
    assert signatures(receiver.received[0]) and len(signatures(receiver.received[0])) == 1

    api.change("plan-a", 2)  # queued before the rotation, sent after it
    rotated = api.call("POST", f"/subscriptions/{sub['id']}/rotate-secret", {"grace_seconds": 3600})
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new.startswith("whsec_") and new != old
    until = (api.clock.now + timedelta(hours=1)).isoformat()
    assert {k: v for k, v in rotated.json().items() if k not in ("secret", "updated_at")} == {
        **{k: v for k, v in sub.items() if k not in ("secret", "updated_at")},
        "previous_secret_expires_at": until,
    }
    shown = api.call("GET", f"/subscriptions/{sub['id']}").json()
    assert "secret" not in shown and shown["previous_secret_expires_at"] == until
    assert api.worker.run_until_idle() == 1
    during = receiver.received[1]
    assert len(signatures(during)) == 2  # the new secret's first, then the replaced one's
    assert verifies(new, during) and verifies(old, during)

    api.clock.now += timedelta(hours=1)  # the grace period is over: the old secret signs nothing more
    api.change("plan-a", 3)
    assert api.worker.run_until_idle() == 1
    after = receiver.received[2]
    assert len(signatures(after)) == 1 and verifies(new, after) and not verifies(old, after)
    assert api.call("GET", f"/subscriptions/{sub['id']}").json()["previous_secret_expires_at"] == until  # gone by
    log = api.call("GET", f"/subscriptions/{sub['id']}/deliveries").json()
    assert [(d["sequence"], d["status"]) for d in log] == [(1, "delivered"), (2, "delivered"), (3, "delivered")]


def test_a_second_rotation_within_the_grace_period_retires_the_oldest_secret_at_once(api, receivers):
    receiver = receivers()
    sub = api.call("POST", "/subscriptions", {"url": receiver.url, "event_types": ["*"]}).json()
    first = sub["secret"]
    second = api.call("POST", f"/subscriptions/{sub['id']}/rotate-secret").json()["secret"]  # default: 24 h
    assert (
        api.call("GET", f"/subscriptions/{sub['id']}").json()["previous_secret_expires_at"]
        == (api.clock.now + timedelta(hours=24)).isoformat()
    )
    third = api.call("POST", f"/subscriptions/{sub['id']}/rotate-secret").json()["secret"]
    api.change("plan-a", 1)
    assert api.worker.run_until_idle() == 1
    (sent,) = receiver.received
    assert len(signatures(sent)) == 2 and verifies(third, sent) and verifies(second, sent)
    assert not verifies(first, sent)
    none = api.call("POST", f"/subscriptions/{sub['id']}/rotate-secret", {"grace_seconds": 0}).json()
    assert none["previous_secret_expires_at"] is None  # no grace: the replaced secret stops at once
    api.change("plan-a", 2)
    assert api.worker.run_until_idle() == 1
    assert len(signatures(receiver.received[1])) == 1 and verifies(none["secret"], receiver.received[1])


def test_rotating_a_secret_needs_an_api_key(api):
    # (a test of its own: the auth throttle answers 429 after as many refusals as the other routes make)
    sub = api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}).json()
    refused = api.call("POST", f"/subscriptions/{sub['id']}/rotate-secret", key=None)
    assert refused.status_code == 401 and refused.json()["type"] == "urn:planbridge:problem:unauthorized"
    assert api.call("POST", f"/subscriptions/{sub['id']}/rotate-secret", key=KEY[:-1] + "X").status_code == 401
    assert api.call("GET", f"/subscriptions/{sub['id']}").json() == {k: v for k, v in sub.items() if k != "secret"}


@pytest.mark.parametrize("body", [{"grace_seconds": -1}, {"grace_seconds": 604801}, {"grace_seconds": "60"},
                                  {"grace_seconds": 1.5}, {"grace": 60}, ["x"]])  # fmt: skip
def test_a_rotation_with_a_bad_grace_period_is_refused_and_changes_nothing(api, body):
    sub = api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}).json()
    refused = api.call("POST", f"/subscriptions/{sub['id']}/rotate-secret", body)
    assert refused.status_code == 400 and refused.json()["type"] == "urn:planbridge:problem:invalid-input"
    assert api.call("GET", f"/subscriptions/{sub['id']}").json() == {k: v for k, v in sub.items() if k != "secret"}
    assert api.call("POST", "/subscriptions/999999/rotate-secret").status_code == 404


def test_the_rotate_secret_command_acts_as_the_api_does(database, monkeypatch):
    import json

    from click.testing import CliRunner

    from service.cli_notify import notifications

    engine, url = database
    monkeypatch.setenv("DATABASE_URL", url)
    api = Api(engine)
    try:
        sub = api.call("POST", "/subscriptions", {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}).json()
    finally:
        api.server.shutdown()
    runner = CliRunner()
    rotated = runner.invoke(notifications, ["rotate-secret", str(sub["id"]), "--grace-seconds", "60"])
    assert rotated.exit_code == 0, rotated.output
    answer = json.loads(rotated.output)
    assert answer["id"] == sub["id"] and answer["secret"].startswith("whsec_") and answer["secret"] != sub["secret"]
    assert answer["previous_secret_expires_at"] is not None
    assert runner.invoke(notifications, ["rotate-secret", "999999"]).exit_code == 1
    assert runner.invoke(notifications, ["rotate-secret", str(sub["id"]), "--grace-seconds", "-1"]).exit_code == 2
    with UnitOfWork(engine) as uow:
        row = uow.subscriptions.get(sub["id"])
        assert (row.secret, row.previous_secret) == (answer["secret"], sub["secret"])
