"""Adopting a CarePlan that cannot be a plan is a clear refusal, on the real local FHIR server (both profiles).

A black-box audit adopted a CarePlan whose subject is a Group: `POST /plans/adopt` answered 200 and
`plans adopt` exited 0, both with an undocumented `"outcome": "invalid"`, no reason, and a plan id that
does not exist. Now the API answers a 422 problem `not-adoptable` naming the CarePlan, the reason and the
element (`CarePlan.subject`), and the command exits 1 with that on stderr; nothing is stored.
"""

from __future__ import annotations

import json

import pytest

from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from tests.e2e.test_adoption import KEY, World


@pytest.fixture
def world(tmp_path, fhir_profile_url):
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    return World(url, fhir_profile_url)


def _group_careplan(world: World) -> str:
    group = world.ehr.create({"resourceType": "Group", "type": "person", "actual": True})
    careplan = world.ehr.create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": f"Group/{group['id']}"},
        }
    )
    return careplan["id"]


def _plan_ids(world: World) -> list[str]:
    with UnitOfWork(world.db) as uow:
        return uow.plans.ids()


def test_adopting_a_careplan_about_a_group_is_a_422_naming_the_reason_and_the_element(world):
    careplan_id = _group_careplan(world)

    answer = world.app.post("/plans/adopt", json={"careplan": careplan_id}, headers={"X-API-Key": KEY})

    assert answer.status_code == 422, answer.get_json()
    assert answer.mimetype == "application/problem+json"
    body = answer.get_json()
    assert body["type"] == "urn:planbridge:problem:not-adoptable"
    assert f"CarePlan/{careplan_id} cannot be adopted: a plan is about one Patient" in body["detail"]
    assert "CarePlan.subject" in body["detail"]
    assert body["refused"] == [
        {
            "plan_id": f"careplan-{careplan_id}",
            "careplan": f"CarePlan/{careplan_id}",
            "reason": "a plan is about one Patient",
            "errors": {"CarePlan.subject": "a Group, not a Patient"},
        }
    ]
    assert _plan_ids(world) == []


def test_plans_adopt_of_a_careplan_about_a_group_exits_1_with_the_reason_on_stderr(world):
    careplan_id = _group_careplan(world)

    done = world.cli("plans", "adopt", "--careplan", careplan_id, check=False)

    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    assert (
        f"Error: not-adoptable: CarePlan/{careplan_id} cannot be adopted: a plan is about one Patient "
        "(CarePlan.subject: a Group, not a Patient)"
    ) in done.stderr
    assert _plan_ids(world) == []


def test_adopting_a_valid_careplan_still_answers_the_documented_shape(world):
    answer = world.app.post("/plans/adopt", json={"careplan": world.ehr.b["id"]}, headers={"X-API-Key": KEY})

    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["adopted"] == [{"plan_id": world.b, "outcome": "new"}]
    assert json.loads(world.cli("plans", "adopt", "--careplan", world.ehr.b["id"]).stdout)["adopted"] == [
        {"plan_id": world.b, "outcome": "unchanged"}
    ]
