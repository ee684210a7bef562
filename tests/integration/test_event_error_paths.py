"""What a refused team event says: each error under its path, a non-number named by its JSON type, and a
`webhook-id` that cannot be verified refused as such.

- An "at least one of" rule (`goal.status_changed` with neither `lifecycle_status` nor `achievement`) was
  keyed `_schema`, marshmallow's own key, under the object (`{"data": {"_schema": [...]}}`); the docs promise
  paths, so it is keyed by the object's path (`{"data": [...]}`).
- `"value": true` for a target was "give a JSON number, not a string": it names the type given now.
- A `webhook-id` holding a character beyond ASCII (printable, so taken by the id rule) can never verify, as
  HTTP carries header bytes (read as Latin-1): it was `401 No matching signature`, whatever the sender signed.
  It is `400` naming `webhook-id` now, on Flask's view and on the intake lane alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.api.app import create_app
from service.api.bodies import error_paths
from tests.support import FIXTURES, settings, signed


@pytest.fixture
def client(engine):
    return create_app(settings(), engine).test_client()


def event(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "events" / f"{name}.json").read_text())


def post(client, body: dict[str, Any], msg_id: str | None = None):
    raw = json.dumps(body).encode()
    return client.post("/webhooks/team", data=raw, headers=signed(raw, msg_id=msg_id))


def test_an_at_least_one_of_rule_is_keyed_by_the_objects_path(client):
    body = event("goal-status-changed")
    del body["data"]["lifecycle_status"], body["data"]["achievement"]

    answer = post(client, body)

    assert answer.status_code == 400, answer.text
    assert answer.get_json()["errors"] == {"data": ["give at least one of lifecycle_status, achievement"]}


def test_an_empty_plan_update_is_keyed_data_too(client):
    body = event("plan-updated")
    body["data"] = {"plan_id": body["data"]["plan_id"]}

    answer = post(client, body)

    assert answer.status_code == 400, answer.text
    (messages,) = answer.get_json()["errors"].values()
    assert list(answer.get_json()["errors"]) == ["data"] and messages[0].startswith("give at least one of")


def test_folding_keeps_every_other_message_where_it_was():
    targets = {0: {"_schema": ["a"]}, 1: {"value": ["b"]}}
    messages = {"data": {"goal": {"targets": targets}}, "_schema": ["c"]}
    assert error_paths(messages) == {"data": {"goal": {"targets": {0: ["a"], 1: {"value": ["b"]}}}}, "body": ["c"]}


@pytest.mark.parametrize(
    ("value", "given"),
    [(True, "a boolean"), ("4000", "a string"), ({"value": 4000}, "an object"), ([4000], "an array")],
)
def test_a_target_value_that_is_not_a_number_is_named_by_its_type(client, value, given):
    body = event("goal-proposed")
    body["data"]["goal"]["targets"][0]["value"] = value

    answer = post(client, body)

    assert answer.status_code == 400, answer.text
    found = answer.get_json()["errors"]["data"]["goal"]["targets"]["0"]["value"]
    assert found == [f"Not a valid number: give a JSON number, not {given}."]


@pytest.mark.parametrize("webhook_id", ["msg-café-1", "msg-\u00a0-1", "msg-\u2603-1"])
def test_a_webhook_id_beyond_ascii_is_a_400_naming_it(client, webhook_id):
    raw = json.dumps(event("plan-created")).encode()
    headers = signed(raw, msg_id="placeholder")
    # What a sender's HTTP library sends for such an id: its UTF-8 bytes, which the server reads as Latin-1.
    headers["webhook-id"] = webhook_id.encode().decode("latin-1")

    answer = client.post("/webhooks/team", data=raw, headers=headers)

    assert answer.status_code == 400, answer.text
    problem = answer.get_json()
    assert problem["type"] == "urn:planbridge:problem:invalid-input"
    assert problem["errors"] == {"webhook-id": ["printable ASCII characters only"]}


def test_a_printable_ascii_webhook_id_still_verifies(client):
    answer = post(client, event("plan-created"), msg_id="msg ~!@#$%^&*()_+{}|:<>?-1")
    assert answer.status_code == 202, answer.text
