"""What `planbridge sync` does with a plan it does not hold and a `--since` that is no instant (docaudit findings 7
and 8), and `POST /plans/{id}/sync` without a direction (finding 9)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service.api.app import create_app
from service.domain.model import Plan
from service.store.uow import UnitOfWork
from tests.e2e.test_cli_sync import add_plan as add_knee_plan
from tests.e2e.test_cli_sync import env, run  # noqa: F401 (env: the fixture)
from tests.support import goal_event, settings, signed


def add_plan(url: str) -> Plan:
    """The knee plan (as test_cli_sync adds it) under an id and MRN of its own."""
    return add_knee_plan(url, f"plan-{uuid.uuid4().hex[:10]}")


def test_repair_of_a_plan_it_does_not_hold_is_not_found_and_the_others_are_repaired(env):  # noqa: F811
    pushed = add_plan(env["DATABASE_URL"])
    never_pushed = add_plan(env["DATABASE_URL"])
    assert json.loads(run("sync", "push", "--plan", pushed.id, env=env).stdout)[0]["status"] == "in_sync"
    args = ["--plan", pushed.id, "--plan", "nope", "--plan", never_pushed.id, "--plan", "not a plan id"]
    result = run("sync", "repair", *args, env=env, check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert json.loads(result.stdout) == {
        pushed.id: "present",
        never_pushed.id: "not-linked",
        "nope": "not-found",
        "not a plan id": "not-found",
    }
    assert "not-found: plan nope does not exist" in result.stderr
    assert "not-found: plan not a plan id does not exist" in result.stderr
    # as `sync status` answers the same plan
    status = run("sync", "status", "--plan", "nope", env=env, check=False)
    assert status.returncode == 1 and "not-found: plan nope does not exist" in status.stderr
    # only held plans: exit 0, as before
    held = run("sync", "repair", "--plan", pushed.id, "--plan", never_pushed.id, env=env)
    assert json.loads(held.stdout) == {pushed.id: "present", never_pushed.id: "not-linked"}


class _FhirRecorder:
    """A FHIR server stand-in that records every request (and answers 500: none should come)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fhir_recorder() -> Iterator[_FhirRecorder]:
    found = _FhirRecorder()
    yield found
    found.server.shutdown()


@pytest.mark.parametrize(
    "since",
    [
        "yesterday",
        "2026-12-01",  # a date: FHIR's `_since` takes only an instant
        "2026-12-01T10:00",  # no seconds
        "2026-12-01T10:00:00",  # no zone
        "2026-02-30T10:00:00Z",  # no such day
        "2026-12-01T10:00:00+15:00",  # a zone FHIR cannot write
        "2026-12-01 10:00:00Z",
        "",
    ],
)
def test_pull_since_that_is_no_fhir_instant_is_a_usage_error_and_nothing_is_sent(tmp_path, fhir_recorder, since):
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    shell.update(DATABASE_URL=f"sqlite:///{tmp_path / 'planbridge.db'}", FHIR_BASE_URL=fhir_recorder.url)
    result = run("sync", "pull", "--since", since, env=shell, check=False, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Invalid value for '--since'" in result.stderr and "FHIR instant" in result.stderr
    assert "Traceback" not in result.stderr and "fhir-error" not in result.stderr
    assert fhir_recorder.paths == []


def test_pull_since_an_instant_goes_to_the_server(env):  # noqa: F811
    for since in ("2026-12-01T00:00:00Z", "2026-12-01T09:30:00.123+01:00"):
        assert json.loads(run("sync", "pull", "--since", since, env=env).stdout)["outcomes"] == {}


@pytest.mark.parametrize("body", [None, {}], ids=["no body", "empty object"])
def test_post_plan_sync_without_a_direction_queues_a_push(engine, body):
    """Documented in the README: `{"direction": ...}` may be left out (or the body), and then a push is queued."""
    key = "test-key-0123456789abcdef"
    client = create_app(settings(api_keys=(key,)), engine).test_client()
    event = goal_event()
    raw = json.dumps(event).encode()
    assert client.post("/webhooks/team", data=raw, headers=signed(raw)).status_code == 202
    plan_id = event["data"]["plan_id"]
    with UnitOfWork(engine) as uow:
        before = len(uow.outbox.list(plan_id, "pending"))
    headers = {"X-API-Key": key}
    answer = (
        client.post(f"/plans/{plan_id}/sync", headers=headers)
        if body is None
        else client.post(f"/plans/{plan_id}/sync", json=body, headers=headers)
    )
    assert answer.status_code == 202 and answer.get_json() == {"plan_id": plan_id, "queued": "push"}
    with UnitOfWork(engine) as uow:
        queued = uow.outbox.list(plan_id, "pending")
    assert len(queued) == before + 1 and queued[-1].kind == "push_plan"
