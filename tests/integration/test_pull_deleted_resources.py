"""An incremental pull learns of the CareTeams, check-in Observations and CarePlans the EHR deleted since its
cursor, as it does of Goals (docs/sync.md, "Deletions"): a deleted resource is no match of the `_lastUpdated`
searches, so the pull reads each linked type's history (`<Type>/_history?_since=<cursor>`, the batch's last
entries) and pulls the plans whose links name a resource deleted there. Each reaches what a full pull of the plan
reaches (docs/sync.md, "Deletes in the EHR"); a plan whose CarePlan is gone is reported `not-on-server` once and
left as it is, its next push writing it again. On the real local FHIR server in both profiles, on SQLite."""

from __future__ import annotations

import pytest

from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.adopt import Target
from service.sync.pull import CURSOR
from tests.adoption_model_support import AdoptionWorld
from tests.sync_model_support import SyncWorld

FIXTURE = "knee-rehabilitation.json"


@pytest.fixture
def world(tmp_path, fhir_profile_url):
    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    yield SyncWorld(engine, fhir_profile_url)
    engine.dispose()


def _pushed(world: SyncWorld) -> str:
    plan_id = world.add_plan(FIXTURE)
    assert world.sync.push(plan_id).status == "in_sync"
    world.sync.pull_plans([plan_id])
    return plan_id


def _quiet(world: SyncWorld) -> None:
    """Pull until nothing is left to pull (the plans just pushed), so the next pull sees only what the test does."""
    assert world.sync.pull_changed().outcomes == {}


def _links(world: SyncWorld, plan_id: str) -> dict[str, tuple[str, str, str | None]]:
    with UnitOfWork(world.db) as uow:
        return uow.links.linked(plan_id)


def test_a_careteam_the_ehr_deletes_is_pulled_once_by_the_next_incremental_pull_as_a_full_pull_would(world):
    """The EHR deletes a plan's CareTeam and changes nothing else (the CarePlan still names it). Before, the
    incremental pull saw nothing; now it pulls the plan (the batch, the plan, its check-ins): the members are
    taken off the team as a full pull takes them, and the pull after it pulls nothing."""
    plan_id, other = _pushed(world), _pushed(world)
    _quiet(world)
    team = world.find("CareTeam", "careteam", plan_id)
    assert team is not None and "careteam" in _links(world, plan_id)
    world.ehr_delete(f"CareTeam/{team['id']}")

    pulled = world.sync.pull_changed()

    assert pulled.outcomes == {plan_id: "updated"}, pulled.outcomes
    assert other not in pulled.outcomes and pulled.requests <= 3, pulled.requests
    members = world.plan(plan_id).team
    assert members and not any(m.in_team for m in members), [(m.id, m.in_team) for m in members]
    # the same people, none renamed (`practitioner-<id>`); each is still named elsewhere on the server (the
    # CarePlan's author, a step's owner, a note's author...), so none is marked removed_in_ehr (docs/sync.md)
    assert sorted(m.id for m in members) == ["gp", "ot", "patient", "physio", "surgeon"]
    assert not any(m.removed_in_ehr for m in members)
    assert "careteam" not in _links(world, plan_id)
    assert world.sync.status(plan_id).status == "in_sync" and world.conflicts(plan_id) == []
    again = world.sync.pull_changed()
    assert (again.outcomes, again.requests) == ({}, 1), "the plan was pulled again for the same delete"
    assert world.sync.pull_plans([plan_id]).outcomes == {plan_id: "unchanged"}  # what a full pull reaches


def test_a_checkin_the_ehr_deletes_is_pulled_once_by_the_next_incremental_pull_as_a_full_pull_would(world):
    """The EHR deletes a check-in Observation (its Goal left as it is): the next incremental pull pulls the plan,
    which drops the check-in as a full pull does; the pull after it pulls nothing."""
    plan_id = _pushed(world)
    _quiet(world)
    checkin = world.find("Observation", "checkin", f"{plan_id}/goal-walk/dist-1")
    assert checkin is not None and "observation:goal-walk/dist-1" in _links(world, plan_id)
    world.ehr_delete(f"Observation/{checkin['id']}")

    pulled = world.sync.pull_changed()

    assert pulled.outcomes == {plan_id: "updated"}, pulled.outcomes
    assert pulled.requests <= 3, pulled.requests
    assert [c.id for c in world.plan(plan_id).goal("goal-walk").check_ins] == ["dist-2"]
    assert "observation:goal-walk/dist-1" not in _links(world, plan_id)
    assert world.sync.status(plan_id).status == "in_sync"
    again = world.sync.pull_changed()
    assert (again.outcomes, again.requests) == ({}, 1), "the plan was pulled again for the same delete"
    assert world.sync.pull_plans([plan_id]).outcomes == {plan_id: "unchanged"}


def test_a_careplan_the_ehr_deletes_is_reported_not_on_server_once_and_its_next_push_writes_it_again(world):
    """The EHR deletes a plan's CarePlan: the next incremental pull reports the plan `not-on-server`, as a full pull
    does, and leaves it as it is (its links kept, marked with the delete); the pulls after it do not pull it again
    though the cursor has not moved past the delete. The team's next change writes the CarePlan again."""
    plan_id = _pushed(world)
    _quiet(world)
    document = world.plan_doc(plan_id)
    careplan = world.find("CarePlan", "plan", plan_id)
    assert careplan is not None
    world.ehr_delete(f"CarePlan/{careplan['id']}")
    with UnitOfWork(world.db) as uow:
        cursor = uow.sync.cursor(CURSOR)

    pulled = world.sync.pull_changed()

    assert pulled.outcomes == {plan_id: "not-on-server"}, pulled.outcomes
    assert world.plan_doc(plan_id) == document
    assert _links(world, plan_id)["careplan"][1] == careplan["id"]
    for _ in range(2):
        again = world.sync.pull_changed()
        assert (again.outcomes, again.requests) == ({}, 1), "the plan was pulled again for the same delete"
    with UnitOfWork(world.db) as uow:
        assert uow.sync.cursor(CURSOR) == cursor  # nothing else changed: the history lists the delete each time

    assert world.team("plan.updated", plan_id=plan_id, title="After the EHR's delete")[0] == 202
    assert world.sync.push(plan_id).status == "in_sync"
    written = world.find("CarePlan", "plan", plan_id)
    assert written is not None and written["id"] != careplan["id"] and written["title"] == "After the EHR's delete"


def test_a_type_no_plan_links_has_no_history_read(world, monkeypatch):
    """The histories cost one batch entry per type some plan links: a plan without check-ins asks no
    `Observation/_history` (on a busy EHR, every Observation written since the cursor)."""
    plan_id = world.add_plan(FIXTURE)
    with UnitOfWork(world.db) as uow:
        plan = uow.plans.get(plan_id)
        for goal in plan.goals:
            goal.check_ins = []
        uow.plans.save(plan)
        uow.commit()
    assert world.sync.push(plan_id).status == "in_sync"
    _quiet(world)
    sent: list[str] = []
    batch = world.client.batch

    def recorded(requests, *args, **kwargs):
        sent.extend(r["url"].split("?")[0] for r in requests)
        return batch(requests, *args, **kwargs)

    monkeypatch.setattr(world.client, "batch", recorded)

    assert world.sync.pull_changed().outcomes == {}

    assert [url for url in sent if url.endswith("/_history")] == [
        "Goal/_history",
        "CareTeam/_history",
        "CarePlan/_history",
    ]


@pytest.mark.parametrize("deleted", ["CareTeam", "Observation", "CarePlan"])
def test_an_adopted_plans_careteam_checkin_or_careplan_the_ehr_deletes_reaches_it_on_the_next_pull(
    engine, fhir_base_url, deleted
):
    """The same for a plan adopted from the EHR (its resources carry no planbridge identifier; the links name
    them): the next incremental pull pulls it, once, and leaves it as a full pull of it would (that pull finds
    nothing more to change)."""
    world = AdoptionWorld(engine, fhir_base_url)
    mrn = world.ehr_patient()
    authored = world.ehr_careplan(mrn, goals=1, checkins=1, careteam=True, own_identifiers=False, created=True)
    plan_id = authored.plan_id
    assert world.sync.adopt(Target(careplan_id=authored.id)).outcomes == {plan_id: "new"}
    _quiet(world)
    goal = world.ehr.request("GET", authored.goals[0]).json()
    target = {
        "CareTeam": authored.careteam,
        "Observation": goal["outcomeReference"][0]["reference"],
        "CarePlan": f"CarePlan/{authored.id}",
    }[deleted]
    assert target and target.split("/")[1] in {fhir_id for _, fhir_id, _ in _links(world, plan_id).values()}
    world.ehr_delete(target)

    pulled = world.sync.pull_changed()

    expected = "not-on-server" if deleted == "CarePlan" else "updated"
    assert pulled.outcomes == {plan_id: expected}, pulled.outcomes
    again = world.sync.pull_changed()
    assert (again.outcomes, again.requests) == ({}, 1), "the plan was pulled again for the same delete"
    if deleted == "Observation":
        assert world.plan(plan_id).goals[0].check_ins == []
    if deleted == "CareTeam":
        assert "careteam" not in _links(world, plan_id)
    assert world.sync.pull_plans([plan_id]).outcomes == {plan_id: "unchanged" if expected == "updated" else expected}
