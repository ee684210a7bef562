"""deep_copy (service/domain/clone.py) gives what copy.deepcopy gives: the same tree of new objects."""

from __future__ import annotations

import copy
import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from service.api import webhooks
from service.domain import clone, codec
from service.domain.changes import apply_command
from service.domain.clone import deep_copy
from service.domain.model import Concept, Goal, Plan
from tests.strategies import plans

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures" / "plans"


def _same_tree(mine: Any, theirs: Any, original: Any) -> None:
    """`mine` is built as `theirs` (deepcopy's copy of `original`): the same types and values at every node,
    the immutable scalars the original's own, and every container new."""
    assert type(mine) is type(theirs) is type(original)
    if type(original) in (list, dict) or dataclasses.is_dataclass(original):
        assert mine is not original
        if type(original) is list:
            assert len(mine) == len(theirs) == len(original)
            for a, b, c in zip(mine, theirs, original, strict=True):
                _same_tree(a, b, c)
            return
        items = original if type(original) is dict else vars(original)
        ours = mine if type(original) is dict else vars(mine)
        deep = theirs if type(original) is dict else vars(theirs)
        assert list(ours) == list(deep) == list(items)  # the same keys in the same order
        for key in items:
            _same_tree(ours[key], deep[key], items[key])
        return
    assert mine is theirs is original  # str, int, float, bool, None, Decimal: deepcopy keeps them


def test_deep_copy_of_every_fixture_plan_is_deepcopys_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    deepcopy = copy.deepcopy
    for path in sorted(FIXTURES.glob("*.json")):
        plan = codec.from_dict(Plan, json.loads(path.read_text()))
        with monkeypatch.context() as patched:  # copied by deep_copy itself, never handed to deepcopy
            patched.setattr(clone.copy, "deepcopy", lambda *_: pytest.fail("went to copy.deepcopy"))
            copied = deep_copy(plan)
        assert copied == deepcopy(plan) == plan, path.name
        _same_tree(copied, deepcopy(plan), plan)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_deep_copy_of_generated_plans_is_deepcopys_copy(plan: Plan) -> None:
    plan.careplan_extra = {"extension": [{"url": "x", "valueDecimal": Decimal("1.5")}], "n": [1, None, "a"]}
    _same_tree(deep_copy(plan), copy.deepcopy(plan), plan)


def test_a_change_to_the_copy_leaves_the_original_as_it_was() -> None:
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "cardiac-rehab-checkins.json").read_text()))
    before = codec.to_dict(plan)
    copied = deep_copy(plan)
    copied.goals[0].check_ins.clear()
    copied.goals[0].lifecycle_status = "cancelled"
    copied.careplan_extra["changed"] = True
    copied.team[0].fhir_extra["changed"] = [1]
    assert codec.to_dict(plan) == before


def test_an_object_met_twice_is_copied_once_as_deepcopy_copies_it() -> None:
    shared = Concept(text="shared")
    plan = Plan(id="p", patient=codec.from_dict(Plan, {"id": "p", "patient": {"mrn": "1"}}).patient)
    plan.goals = [Goal(id="a", description=shared), Goal(id="b", description=shared)]
    copied = deep_copy(plan)
    assert copied == plan
    assert copied.goals[0].description is copied.goals[1].description is not shared
    cycle: list[Any] = [1]
    cycle.append(cycle)
    looped = deep_copy(cycle)
    assert looped[1] is looped and looped is not cycle


def test_what_it_does_not_know_goes_to_deepcopy() -> None:
    class Hooked:
        def __deepcopy__(self, memo: dict[int, Any]) -> str:
            return "deepcopy's answer"

    value = {"a": [Hooked()], "t": (1, [2])}
    copied = deep_copy(value)
    assert copied == {"a": ["deepcopy's answer"], "t": (1, [2])}
    assert copied["t"][1] is not value["t"][1]


def test_a_plan_the_events_made_is_copied_without_deepcopy_sharing_as_it_shares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events share objects inside a plan (a check-in's measure is its goal's target's Concept): each is copied
    once and shared in the copy, as deepcopy's memo does it, and the plan is still never handed to deepcopy."""
    plan = None
    for name in ("plan-created", "goal-proposed", "agreement-recorded", "step-added", "checkin-recorded"):
        raw = (FIXTURES.parent / "events" / f"{name}.json").read_bytes()
        plan = apply_command(webhooks.read_event(raw)[2], plan, "2026-12-06T04:00:00+00:00")
    assert plan is not None
    goal = plan.goals[0]
    assert goal.check_ins[0].measure is goal.targets[0].measure  # shared in the plan the events made
    expected = copy.deepcopy(plan)
    with monkeypatch.context() as patched:
        patched.setattr(clone.copy, "deepcopy", lambda *_: pytest.fail("went to copy.deepcopy"))
        copied = deep_copy(plan)
    assert copied == expected == plan
    measure = copied.goals[0].check_ins[0].measure
    assert measure is copied.goals[0].targets[0].measure and measure is not goal.targets[0].measure
    assert expected.goals[0].check_ins[0].measure is expected.goals[0].targets[0].measure
