"""Precise answers to imprecise requests on the operating API and `sync pull` (docaudit nits 15 and 19, and
`--since` with a named pull): a JSON body sent without its content type is 415 as on the webhook, an
adoption URL that names no CarePlan is an error on `url`, and `--since` never goes silently unused."""

from __future__ import annotations

import json
import os

import pytest

from service.api.app import create_app
from tests.e2e.test_cli_sync import run
from tests.e2e.test_cli_sync_inputs import fhir_recorder  # noqa: F401 (the fixture)
from tests.support import goal_event, settings, signed

KEY = "test-key-0123456789abcdef"
H = {"X-API-Key": KEY}
NO_FHIR = "http://127.0.0.1:9/fhir"  # nothing listens there; the requests below never reach it
PLAN = "plan-nits-0001"


@pytest.fixture
def client(engine):
    app = create_app(settings(fhir_base_url=NO_FHIR, api_keys=(KEY,)), engine)
    c = app.test_client()
    raw = json.dumps(goal_event(PLAN)).encode()
    assert c.post("/webhooks/team", data=raw, headers=signed(raw)).status_code == 202
    return c


BODIES = [
    ("post", f"/plans/{PLAN}/sync", {"direction": "push"}),
    ("post", "/plans/adopt", {"careplan": "CarePlan/1"}),
    ("post", "/conflicts/1/resolve", {"take": "ours"}),
    ("post", "/subscriptions", {"url": "https://example.org/hook", "event_types": ["*"]}),
    ("patch", "/subscriptions/1", {"ordering": "strict"}),
    ("post", "/subscriptions/1/rotate-secret", {"grace_seconds": 60}),
]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
@pytest.mark.parametrize(("method", "path", "body"), BODIES, ids=[f"{m} {p}" for m, p, _ in BODIES])
def test_a_json_body_without_its_content_type_is_415_not_invalid_json(client, method, path, body, content_type):
    """Nit 15: `curl -d '{"direction":"push"}'` (form content type) was `400 "the body is not valid JSON"`
    though it is valid JSON; the webhook answers 415 for the same thing, and so does the operating API now."""
    headers = {**H, "Content-Type": content_type} if content_type else H
    answer = getattr(client, method)(path, data=json.dumps(body).encode(), headers=headers)
    assert (answer.status_code, answer.mimetype) == (415, "application/problem+json"), answer.get_data(as_text=True)
    problem = answer.get_json()
    assert problem["type"] == "urn:planbridge:problem:unsupported-media-type"
    assert "Content-Type: application/json" in problem["detail"]


def test_bodiless_requests_and_json_with_a_charset_are_still_read(client):
    """What the 415 must not catch: a POST without a body (a push, as documented), a JSON body whose
    content type carries a charset, and JSON that is not JSON (still 400 "not JSON")."""
    pushed = client.post(f"/plans/{PLAN}/sync", headers=H)
    assert pushed.status_code == 202 and pushed.get_json() == {"plan_id": PLAN, "queued": "push"}
    with_charset = client.post(
        f"/plans/{PLAN}/sync", data=b'{"direction": "push"}', content_type="application/json; charset=utf-8", headers=H
    )
    assert with_charset.status_code == 202
    merge_patch = client.patch(  # a +json type, which Flask reads as JSON: still taken
        "/subscriptions/1", data=b'{"ordering": "strict"}', content_type="application/merge-patch+json", headers=H
    )
    assert merge_patch.status_code != 415, merge_patch.get_data(as_text=True)
    broken = client.post(f"/plans/{PLAN}/sync", data=b"{direction", content_type="application/json", headers=H)
    assert broken.status_code == 400 and broken.get_json()["errors"] == {"body": "not JSON"}
    required = client.post("/subscriptions", headers=H)  # a body that must be there and is not: still 400
    assert required.status_code == 400 and required.get_json()["errors"] == {"body": "not JSON"}


@pytest.mark.parametrize(
    "url", [f"{NO_FHIR}/CarePlan/174/_history/1", f"{NO_FHIR}/Goal/174", f"{NO_FHIR}/CarePlan/a_b"]
)
def test_adopt_by_a_url_that_names_no_careplan_is_an_error_on_url(client, url):
    """Nit 19: the URL is on the configured server but names no CarePlan (a version, another type, no id):
    the 400 named `errors.careplan`, a field the caller never sent."""
    answer = client.post("/plans/adopt", json={"url": url}, headers=H)
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert list(answer.get_json()["errors"]) == ["url"]


def test_adopt_by_a_reference_that_names_no_careplan_is_still_an_error_on_careplan(client):
    answer = client.post("/plans/adopt", json={"careplan": "Goal/174"}, headers=H)
    assert answer.status_code == 400 and list(answer.get_json()["errors"]) == ["careplan"]
    off_server = client.post("/plans/adopt", json={"careplan": "https://elsewhere.example/CarePlan/1"}, headers=H)
    assert off_server.status_code == 400 and list(off_server.get_json()["errors"]) == ["careplan"]


@pytest.mark.parametrize("named", [["--plan", "plan-a"], ["--plan", "plan-a", "--plan", "plan-b"], ["--patient", "M1"]])
def test_pull_since_with_a_named_pull_is_a_usage_error_and_nothing_is_sent(tmp_path, fhir_recorder, named):  # noqa: F811
    """`sync pull --since X --plan P` pulled P whole and dropped --since without a word."""
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    shell.update(DATABASE_URL=f"sqlite:///{tmp_path / 'planbridge.db'}", FHIR_BASE_URL=fhir_recorder.url)
    result = run("sync", "pull", "--since", "2026-12-01T00:00:00Z", *named, env=shell, check=False, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--since is for the incremental pull only" in result.stderr and "Traceback" not in result.stderr
    assert fhir_recorder.paths == []
