"""R4 Subscription rest-hook notifications from the FHIR server the tests run against.

Each test starts its own small HTTP receiver (http.server in a thread) and its own Subscriptions, with
unique identifiers in the criteria, and deletes its Subscriptions at the end. The expectations are
HAPI FHIR's (JPA server, rest-hook channel), so they can also run against a real HAPI: set
FHIR_TEST_SERVER_URL, and FHIR_TEST_CALLBACK_HOST to an address of this machine that HAPI can reach
(the receiver then listens on all interfaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

FHIR_JSON = "application/fhir+json"
HEADERS = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
SYSTEM = "urn:planbridge:test:subscriptions"
SEND_DELETES = "http://hapifhir.io/fhir/StructureDefinition/subscription-send-delete-messages"
CALLBACK_HOST = os.environ.get("FHIR_TEST_CALLBACK_HOST", "127.0.0.1")
BIND_HOST = "127.0.0.1" if CALLBACK_HOST == "127.0.0.1" else "0.0.0.0"
SERVER_DIR = Path(__file__).resolve().parents[2] / "fhir-server"

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("FHIR_TEST_SERVER_URL")) and not os.environ.get("FHIR_TEST_CALLBACK_HOST"),
    reason="an external FHIR server needs FHIR_TEST_CALLBACK_HOST to reach the test receiver",
)
local_only = pytest.mark.skipif(
    bool(os.environ.get("FHIR_TEST_SERVER_URL")), reason="needs its own local server with short retry delays"
)
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


# ---------------------------------------------------------------- receiver


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP endpoint that records every request and answers with the next status in `statuses`."""

    port: int = 0
    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{CALLBACK_HOST}:{self.port}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append(Received(self.command, self.path, dict(self.headers.items()), body))
                    receiver._lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_DELETE = _record

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((BIND_HOST, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least `count` requests arrived; return them all."""
        with self._lock:
            self._lock.wait_for(lambda: len(self.requests) >= count, timeout=timeout)
            assert len(self.requests) >= count, f"expected {count} notification(s), got {self.requests}"
            return list(self.requests)

    def wait_for_path(self, path: str, timeout: float = 5.0) -> Received:
        with self._lock:
            self._lock.wait_for(lambda: any(r.path == path for r in self.requests), timeout=timeout)
            found = [r for r in self.requests if r.path == path]
            assert found, f"no notification for {path}; got {[(r.method, r.path) for r in self.requests]}"
            return found[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((BIND_HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- FHIR helpers


@pytest.fixture(scope="module")
def http(fhir_base_url):
    with requests.Session() as session:
        session.headers.update(HEADERS)
        put_subject(session, fhir_base_url)
        yield session


def put_subject(http, base: str) -> None:
    """Put the Patient the Goals name: the server refuses a reference to a resource it does not hold (HAPI-1094)."""
    patient = {"resourceType": "Patient", "id": "subscription-test"}
    http.put(f"{base}/Patient/subscription-test", json=patient).raise_for_status()


def unique() -> str:
    return uuid.uuid4().hex


def goal(value: str, text: str = "Walk 30 minutes a day") -> dict:
    return {
        "resourceType": "Goal",
        "identifier": [{"system": SYSTEM, "value": value}],
        "lifecycleStatus": "active",
        "description": {"text": text},
        "subject": {"reference": "Patient/subscription-test"},
    }


def create(http, base: str, resource: dict) -> dict:
    response = http.post(f"{base}/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()


def wait_until_active(http, base: str, sub_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = http.get(f"{base}/Subscription/{sub_id}").json()
        if current.get("status") == "active" or time.monotonic() > deadline:
            return current
        time.sleep(0.05)


@contextlib.contextmanager
def subscription(
    http,
    base: str,
    endpoint: str,
    criteria: str,
    payload: str | None = None,
    headers: list[str] | None = None,
    send_deletes: bool = False,
) -> Iterator[dict]:
    """Create a `requested` rest-hook Subscription, wait until the server activated it, delete it after."""
    channel: dict = {"type": "rest-hook", "endpoint": endpoint}
    if payload:
        channel["payload"] = payload
    if headers:
        channel["header"] = headers
    if send_deletes:
        channel["extension"] = [{"url": SEND_DELETES, "valueBoolean": True}]
    created = create(
        http,
        base,
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "planbridge subscription test",
            "criteria": criteria,
            "channel": channel,
        },
    )
    try:
        active = wait_until_active(http, base, created["id"])
        assert active["status"] == "active", active
        yield active
    finally:
        http.delete(f"{base}/Subscription/{created['id']}")


def by_identifier(value: str) -> str:
    return f"Goal?identifier={SYSTEM}|{value}"


# ---------------------------------------------------------------- tests


def test_requested_subscription_is_activated_in_a_new_version(http, fhir_base_url, receiver):
    created = create(
        http,
        fhir_base_url,
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "activation test",
            "criteria": by_identifier(unique()),
            "channel": {"type": "rest-hook", "endpoint": receiver.url},
        },
    )
    try:
        assert created["status"] == "requested"  # HAPI activates after the create has committed
        active = wait_until_active(http, fhir_base_url, created["id"])
        assert active["status"] == "active"
        assert int(active["meta"]["versionId"]) > int(created["meta"]["versionId"])
    finally:
        http.delete(f"{fhir_base_url}/Subscription/{created['id']}")


def test_create_sends_an_empty_post_with_the_channel_headers(http, fhir_base_url, receiver):
    value = unique()
    with subscription(
        http, fhir_base_url, f"{receiver.url}/hook", by_identifier(value), headers=["X-Planbridge-Secret: s3cr3t"]
    ):
        create(http, fhir_base_url, goal(value))
        [note] = receiver.wait_for(1)
    assert note.method == "POST" and note.path == "/hook"
    assert note.body == b""
    assert note.headers["X-Planbridge-Secret"] == "s3cr3t"


def test_payload_subscription_puts_the_resource_under_the_endpoint_as_base(http, fhir_base_url, receiver):
    value = unique()
    with subscription(
        http,
        fhir_base_url,
        f"{receiver.url}/fhir/",
        by_identifier(value),
        payload=FHIR_JSON,
        headers=["Authorization: Bearer t0ken"],
    ):
        created = create(http, fhir_base_url, goal(value))
        updated = http.put(f"{fhir_base_url}/Goal/{created['id']}", json={**created, "lifecycleStatus": "completed"})
        assert updated.status_code == 200, updated.text
        first, second = receiver.wait_for(2)
    for note, version, status in ((first, "1", "active"), (second, "2", "completed")):  # in order
        assert note.method == "PUT" and note.path == f"/fhir/Goal/{created['id']}"
        assert note.headers["Content-Type"].startswith(FHIR_JSON)
        assert note.headers["Authorization"] == "Bearer t0ken"
        assert note.headers["If-Match"] == f'"{version}"'  # HAPI's client sends the version it delivers
        body = note.json()
        assert body["resourceType"] == "Goal" and body["id"] == created["id"]
        assert body["meta"]["versionId"] == version and body["lifecycleStatus"] == status


def test_criteria_parameters_select_the_resources(http, fhir_base_url, receiver):
    wanted, other = unique(), unique()
    by_id_target = create(http, fhir_base_url, goal(unique()))
    by_id_other = create(http, fhir_base_url, goal(unique()))
    with (
        subscription(http, fhir_base_url, f"{receiver.url}/ident", by_identifier(wanted), payload=FHIR_JSON),
        subscription(http, fhir_base_url, f"{receiver.url}/byid", f"Goal?_id={by_id_target['id']}", payload=FHIR_JSON),
    ):
        create(http, fhir_base_url, goal(other))
        match = create(http, fhir_base_url, goal(wanted))
        http.put(f"{fhir_base_url}/Goal/{by_id_other['id']}", json={**by_id_other, "lifecycleStatus": "on-hold"})
        http.put(f"{fhir_base_url}/Goal/{by_id_target['id']}", json={**by_id_target, "lifecycleStatus": "on-hold"})
        receiver.wait_for_path(f"/ident/Goal/{match['id']}")
        receiver.wait_for_path(f"/byid/Goal/{by_id_target['id']}")
        time.sleep(0.3)  # anything else would have been sent by now
    assert sorted(r.path for r in receiver.requests) == sorted(
        [f"/ident/Goal/{match['id']}", f"/byid/Goal/{by_id_target['id']}"]
    )


def test_criteria_are_validated_like_hapi(http, fhir_base_url, receiver):
    for criteria in ("Goal", "Goal?no-such-param=1", "NoSuchType?"):
        response = http.post(
            f"{fhir_base_url}/Subscription",
            json={
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "invalid",
                "criteria": criteria,
                "channel": {"type": "rest-hook", "endpoint": receiver.url},
            },
        )
        assert response.status_code == 422, (criteria, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"


def transaction(*resources: dict) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": r,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for r in resources
        ],
    }


def test_transaction_notifies_once_per_matching_entry_after_commit(http, fhir_base_url, receiver):
    a, b, c = unique(), unique(), unique()
    criteria = f"Goal?identifier={SYSTEM}|{a},{SYSTEM}|{b}"
    with subscription(http, fhir_base_url, f"{receiver.url}/fhir", criteria, payload=FHIR_JSON):
        response = http.post(fhir_base_url, json=transaction(goal(a), goal(b), goal(c)))
        assert response.status_code == 200, response.text
        locations = [e["response"]["location"] for e in response.json()["entry"]]
        expected = {f"/fhir/{loc.split('/_history')[0]}" for loc in locations[:2]}
        receiver.wait_for(2)
        time.sleep(0.3)
    assert sorted(r.path for r in receiver.requests) == sorted(expected)
    for note in receiver.requests:
        body = note.json()
        assert f"Goal/{body['id']}/_history/{body['meta']['versionId']}" in locations


def test_rolled_back_transaction_notifies_nobody(http, fhir_base_url, receiver):
    value = unique()
    with subscription(http, fhir_base_url, f"{receiver.url}/fhir", by_identifier(value), payload=FHIR_JSON):
        bad = goal(value)
        bad["lifecycleStatus"] = "banana"
        response = http.post(fhir_base_url, json=transaction(goal(value), bad))
        assert response.status_code == 400, response.text
        # A later matching write is delivered; nothing from the failed bundle came before it.
        later = create(http, fhir_base_url, goal(value))
        receiver.wait_for(1)
        time.sleep(0.2)
    assert [r.path for r in receiver.requests] == [f"/fhir/Goal/{later['id']}"]


def test_delete_is_not_notified_by_default(http, fhir_base_url, receiver):
    value = unique()
    created = create(http, fhir_base_url, goal(value))
    with subscription(http, fhir_base_url, f"{receiver.url}/fhir", by_identifier(value), payload=FHIR_JSON):
        assert http.delete(f"{fhir_base_url}/Goal/{created['id']}").status_code in (200, 204)
        later = create(http, fhir_base_url, goal(value))
        receiver.wait_for(1)
        time.sleep(0.2)
    assert [(r.method, r.path) for r in receiver.requests] == [("PUT", f"/fhir/Goal/{later['id']}")]


def test_delete_is_notified_with_hapis_send_delete_messages_extension(http, fhir_base_url, receiver):
    value = unique()
    created = create(http, fhir_base_url, goal(value))
    with (
        subscription(
            http, fhir_base_url, f"{receiver.url}/fhir", by_identifier(value), payload=FHIR_JSON, send_deletes=True
        ),
        subscription(http, fhir_base_url, f"{receiver.url}/ping", by_identifier(value), send_deletes=True),
    ):
        assert http.delete(f"{fhir_base_url}/Goal/{created['id']}").status_code in (200, 204)
        deleted = receiver.wait_for_path(f"/fhir/Goal/{created['id']}")
        ping = receiver.wait_for_path("/ping")
    assert deleted.method == "DELETE" and deleted.body == b""
    assert ping.method == "POST" and ping.body == b""


def test_payload_delivery_is_retried_after_an_http_error(http, fhir_base_url, receiver):
    value = unique()
    receiver.statuses = [503]
    with subscription(http, fhir_base_url, f"{receiver.url}/fhir", by_identifier(value), payload=FHIR_JSON):
        created = create(http, fhir_base_url, goal(value))
        first, second = receiver.wait_for(2, timeout=10)
    assert first.path == second.path == f"/fhir/Goal/{created['id']}"
    assert first.body == second.body


def test_receiver_down_then_up_within_the_retry_window_gets_the_notification(http, fhir_base_url):
    value = unique()
    late = Receiver(port=free_port())  # nothing listens there yet: connection refused
    try:
        with subscription(http, fhir_base_url, f"{late.url}/fhir", by_identifier(value), payload=FHIR_JSON):
            created = create(http, fhir_base_url, goal(value))
            time.sleep(0.3)
            late.start()
            note = late.wait_for_path(f"/fhir/Goal/{created['id']}", timeout=10)
    finally:
        late.stop()
    assert note.json()["id"] == created["id"]


@needs_node
@local_only
def test_delivery_gives_up_after_the_retries_and_the_subscription_stays_active(http, tmp_path):
    """HAPI drops a notification after its retries and keeps the Subscription active (hapi-fhir #6002)."""
    log_path = tmp_path / "fhir-server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["node", "server.mjs", "--port", "0", "--subscription-retry-delays", "0.1,0.1", "--exit-on-stdin-close"],
            cwd=SERVER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            line = process.stdout.readline()
            assert line.startswith("planbridge-fhir listening on "), line
            base = line.split(" on ", 1)[1].strip()
            put_subject(http, base)
            value = unique()
            late = Receiver(port=free_port())
            try:
                with subscription(http, base, f"{late.url}/fhir", by_identifier(value), payload=FHIR_JSON) as sub:
                    lost = create(http, base, goal(value))
                    deadline = time.monotonic() + 5
                    while "giving up" not in log_path.read_text() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    late.start()
                    assert http.get(f"{base}/Subscription/{sub['id']}").json()["status"] == "active"
                    kept = create(http, base, goal(value))
                    late.wait_for_path(f"/fhir/Goal/{kept['id']}")
                    time.sleep(0.2)
            finally:
                late.stop()
            assert [r.path for r in late.requests] == [f"/fhir/Goal/{kept['id']}"]
            text = log_path.read_text()
            assert (
                f"PUT Goal/{lost['id']}/_history/1 -> 127.0.0.1:{late.port} ECONNREFUSED (attempt 3/3); giving up"
                in text
            )
            assert no_bodies_logged(text)
        finally:
            process.stdin.close()
            process.wait(timeout=5)
            process.stdout.close()


def no_bodies_logged(log_text: str) -> bool:
    """Bodies are never logged: no resource JSON in the server log."""
    return '"resourceType"' not in log_text
