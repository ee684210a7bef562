"""Helpers the intake runs on every event, made cheaper: the same answers as the code they replaced."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter

from hypothesis import HealthCheck, given, settings

from service.api import webhooks
from service.api.metrics import new_request_id, request_id_for
from service.domain import codec
from service.domain.changes import apply_command
from service.domain.errors import PlanbridgeError
from service.domain.model import Plan
from service.domain.rules import Issue, _duplicates
from service.notify.changes import named_members, plan_paths
from tests.event_strategies import MRN, PLAN, stories


def _duplicates_as_before(ids: list[str], path: str) -> list[Issue]:
    return [Issue(path, f"id {i!r} is used {n} times", code="duplicate") for i, n in Counter(ids).items() if n > 1]


def test_duplicates_name_the_same_ids_in_the_same_order_as_the_counter_did() -> None:
    rnd = random.Random(15)
    for _ in range(3000):
        ids = [rnd.choice("abcdefgh") for _ in range(rnd.randint(0, 9))]
        assert _duplicates(ids, "goals") == _duplicates_as_before(ids, "goals"), ids
    assert _duplicates(["a", "b", "a", "c", "b", "a"], "team") == [
        Issue("team", "id 'a' is used 3 times", code="duplicate"),
        Issue("team", "id 'b' is used 2 times", code="duplicate"),
    ]


def test_a_new_request_id_is_a_random_uuid4_in_32_hex_digits() -> None:
    made = {new_request_id() for _ in range(2000)}
    assert len(made) == 2000
    for request_id in made:
        assert len(request_id) == 32 and request_id == request_id.lower()
        parsed = uuid.UUID(hex=request_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == request_id
    # every other bit is random: each of the 122 shows both values
    bits = [int(r, 16) for r in made]
    fixed = {76, 77, 78, 79, 62, 63}  # the version nibble and the variant's two bits
    for bit in set(range(128)) - fixed:
        assert {(b >> bit) & 1 for b in bits} == {0, 1}, bit


def test_request_id_for_keeps_a_good_incoming_id_and_makes_one_otherwise() -> None:
    assert request_id_for("abc-123") == "abc-123"
    for bad in ("", "x" * 65, "a\nb"):
        made = request_id_for(bad)
        assert uuid.UUID(hex=made).version == 4 and len(made) == 32


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(story=stories())
def test_the_change_log_names_the_same_paths_and_members_from_the_saved_plan_as_from_its_document(story) -> None:
    """handle_event hands record_change the saved Plan, not the document stored (its JSON): the history row's
    paths and members are the same either way, for every event of any story."""
    plan: Plan | None = None
    for event in story:
        event = json.loads(json.dumps(event).replace(PLAN, "plan-x").replace(MRN, "mrn-x"))
        try:
            body, _, command = webhooks.read_event(json.dumps(event).encode())
            after = apply_command(command, plan, "2026-12-06T04:00:00+00:00")
        except PlanbridgeError:
            continue
        document = codec.to_dict(after)
        assert plan_paths(plan, after) == plan_paths(plan, document)
        assert named_members(body.get("data"), after) == named_members(body.get("data"), document)
        plan = after
