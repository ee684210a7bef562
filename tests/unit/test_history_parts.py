"""The history's pure parts: the paths a change touched (object diff == JSON diff), the members an event
names, and where a split push puts its Provenance."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import codec
from service.domain.model import Plan
from service.fhir.capabilities import Limits
from service.notify.changes import named_members, object_paths, plan_paths
from service.sync.merge import changed_paths, strip_bookkeeping
from service.sync.split import Step, fits, split_bundle, with_last
from tests.strategies import plans
from tests.support import FIXTURES


def _json_paths(before: Plan, after: Plan) -> list[str]:
    return changed_paths(strip_bookkeeping(codec.to_dict(before)), strip_bookkeeping(codec.to_dict(after)))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(before=plans(), other=plans(), data=st.data())
def test_the_object_diff_names_exactly_what_the_json_diff_names_in_the_same_order(before, other, data):
    after = copy.deepcopy(before)
    # Move some of the plan's fields to another plan's values: goals, team, steps, scalars, lists.
    for name in data.draw(st.lists(st.sampled_from([f for f in vars(before) if f != "id"]), max_size=5)):
        setattr(after, name, copy.deepcopy(getattr(other, name)))
    if after.goals and data.draw(st.booleans()):
        after.goals[0].description = "changed"
        after.goals[-1].agreements = []
    assert object_paths(before, after) == _json_paths(before, after)
    assert object_paths(before, other) == _json_paths(before, other)
    assert object_paths(before, copy.deepcopy(before)) == []


def test_plan_paths_of_plans_and_documents_agree_and_a_new_plan_is_everything():
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text()))
    after = copy.deepcopy(plan)
    after.goals[1].lifecycle_status = "on-hold"
    after.version += 1
    assert (
        plan_paths(plan, after)
        == plan_paths(plan, codec.to_dict(after))
        == [f"goals[id={after.goals[1].id}].lifecycle_status"]
    )
    assert plan_paths(None, after) == ["*"]


def test_named_members_finds_ids_and_proposers_in_order_once():
    plan = {"team": [{"id": "pt", "kind": "patient"}, {"id": "rd", "kind": "practitioner", "name": "R D"}]}
    plan["team"].append({"id": "gp", "kind": "practitioner", "identifier": {"system": "s", "value": "v"}})
    data = {
        "goal": {"proposed_by": {"kind": "patient"}, "id": "g"},
        "progress": {"author": "rd"},
        "by": "rd",
        "revised_by": {"kind": "practitioner", "identifier": {"system": "s", "value": "v"}},
        "owner": "nobody-known",
    }
    assert named_members(data, plan) == ["pt", "rd", "gp", "nobody-known"]
    assert named_members({"goal": {"proposed_by": {"kind": "practitioner", "display": "R D"}}}, plan) == ["rd"]
    assert named_members({"goal": {"proposed_by": {"kind": "practitioner", "display": "X"}}}, plan) == []
    assert named_members({"note": "by the way"}, None) == []
    # plan.created's author: by member id, or found on the team like a proposer.
    assert named_members({"author": {"kind": "practitioner", "member_id": "gp"}}, plan) == ["gp"]
    assert named_members({"author": {"kind": "practitioner", "identifier": {"system": "s", "value": "v"}}}, plan) == [
        "gp"
    ]


def _entry(n: int, conditional: bool) -> dict:
    request = {"method": "POST", "url": "Goal", **({"ifNoneExist": f"identifier=s|{n}"} if conditional else {})}
    return {"fullUrl": f"urn:uuid:{n}", "resource": {"resourceType": "Goal"}, "request": request}


PROVENANCE = {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Provenance"}, "request": {"method": "POST"}}


def test_the_provenance_goes_in_the_last_chunk_or_one_of_its_own_after_it():
    medplum = Limits(max_strict_entries=8, max_updates=50)
    room = with_last(split_bundle({"entry": [_entry(n, True) for n in range(10)]}, medplum), PROVENANCE, medplum)
    assert [len(c) for c in room.chunks] == [8, 3] and room.chunks[-1][-1] == Step(PROVENANCE)
    full = with_last(split_bundle({"entry": [_entry(n, True) for n in range(8)]}, medplum), PROVENANCE, medplum)
    assert [len(c) for c in full.chunks] == [8, 1] and full.chunks[-1] == [Step(PROVENANCE)]
    assert all(fits([s.entry for s in c], medplum) for c in room.chunks + full.chunks)
