"""Every team event type, signed and posted over HTTP, changes the plan and shows on a real FHIR server.

The examples in fixtures/events/ tell one collaborative story in order (docs/events.md); the scenario
test posts them all and checks the FHIR server after each. Runs on SQLite and on PostgreSQL.
"""

import copy
import json
import uuid

import pytest

from service.api.schemas import EVENT_DATA_SCHEMAS
from service.store.tables import OutboxRow
from service.store.uow import UnitOfWork
from tests.e2e.test_webhook_to_fhir import LiveService
from tests.support import FIXTURES

STORY = [
    "plan-created",
    "member-joined",
    "goal-proposed",
    "agreement-recorded",
    "goal-status-changed",
    "step-added",
    "checkin-recorded",
    "outcome-recorded",
    "step-updated",
    "note-added",
    "goal-revised",
    "step-done",
    "plan-reviewed",
    "plan-updated",
    "goal-setting-declined",
    "goal-setting-resumed",
    "member-left",
]
ACCEPTANCE = "http://hl7.org/fhir/StructureDefinition/goal-acceptance"
RELATIONSHIP = "http://hl7.org/fhir/StructureDefinition/goal-relationship"
EXT = "http://planbridge.org/fhir/StructureDefinition"


class Story:
    """One plan of the story: events from the examples, retargeted to a fresh plan id and MRN."""

    def __init__(self, live: LiveService) -> None:
        self.live = live
        self.plan_id = f"plan-{uuid.uuid4().hex[:10]}"
        self.mrn = f"MRN-{uuid.uuid4().hex[:10]}"

    def event(self, example: str, /, **data) -> dict:
        """Return the example event for this plan, with `data` fields replaced."""
        event = copy.deepcopy(json.loads((FIXTURES / "events" / f"{example}.json").read_text()))
        event["data"]["plan_id"] = self.plan_id
        if "patient" in event["data"]:
            event["data"]["patient"]["mrn"] = self.mrn
        event["data"].update(data)
        return event

    def post(self, example: str, /, expect: int = 202, msg_id: str | None = None, **data) -> dict:
        """Post an example event and return the answer's body, checking its status."""
        answer = self.live.post(self.event(example, **data), msg_id=msg_id)
        assert answer.status_code == expect, answer.text
        if expect >= 400:
            assert answer.headers["Content-Type"] == "application/problem+json"
        return answer.json()

    def push(self) -> None:
        """Drain the outbox to the FHIR server."""
        assert self.live.worker.run_until_idle() >= 1

    def find(self, resource_type: str, kind: str, value: str) -> dict:
        """Return the one resource with our identifier of this kind."""
        system = f"{self.live.settings.identifier_base}/{kind}"
        (resource,) = self.live.fhir.search(resource_type, {"identifier": f"{system}|{value}"})
        return resource

    def goal(self, goal_id: str) -> dict:
        return self.find("Goal", "goal", f"{self.plan_id}/{goal_id}")

    def careplan(self) -> dict:
        return self.find("CarePlan", "plan", self.plan_id)

    def careteam_roles(self) -> list[str]:
        team = self.find("CareTeam", "careteam", self.plan_id)
        return [p["role"][0]["coding"][0]["code"] for p in team["participant"]]

    def version(self) -> int:
        with UnitOfWork(self.live.engine) as uow:
            return uow.plans.get(self.plan_id).version

    def outbox_size(self) -> int:
        return self.live.row_counts()[OutboxRow.__tablename__]


@pytest.fixture
def live(engine, fhir_base_url):
    service = LiveService(engine, fhir_base_url)
    yield service
    service.server.shutdown()


def _extension(resource: dict, url: str) -> dict:
    return {e["url"]: e for e in resource.get("extension", [])}[url]


def _parts(extension: dict) -> dict:
    return {p["url"]: p for p in extension["extension"]}


def test_the_story_covers_the_whole_catalogue():
    types = {json.loads((FIXTURES / "events" / f"{name}.json").read_text())["type"] for name in STORY}
    assert types == set(EVENT_DATA_SCHEMAS)


def test_a_whole_collaborative_story_reaches_the_fhir_server_event_by_event(live):
    s = Story(live)
    first = s.post("plan-created")
    assert first == {
        "status": "accepted",
        "event_id": first["event_id"],
        "sender": "default",
        "type": "plan.created",
        "plan_id": s.plan_id,
        "plan_version": 1,
    }
    s.push()
    careplan = s.careplan()
    assert (careplan["status"], careplan["title"]) == ("active", "Getting back to everyday life")
    assert s.careteam_roles() == ["116154003", "62247001"]  # the patient and the author (GP)

    s.post("member-joined")
    s.push()
    assert s.careteam_roles() == ["116154003", "62247001", "159033005"]

    s.post("goal-proposed")
    s.push()
    assert s.goal("goal-walk")["lifecycleStatus"] == "proposed"

    s.post("agreement-recorded")
    s.push()
    acceptance = _parts(_extension(s.goal("goal-walk"), ACCEPTANCE))
    assert acceptance["status"]["valueCode"] == "agree"
    assert acceptance["priority"]["valueCodeableConcept"]["coding"][0]["code"] == "high-priority"

    s.post("goal-status-changed")
    s.push()
    walk = s.goal("goal-walk")
    assert (walk["lifecycleStatus"], walk["achievementStatus"]["coding"][0]["code"]) == ("active", "in-progress")

    s.post("step-added")
    s.push()
    (activity,) = s.careplan()["activity"]
    assert (activity["detail"]["status"], activity["detail"]["scheduledString"]) == (
        "not-started",
        "Every Saturday morning",
    )
    assert activity["detail"]["goal"][0]["reference"] == f"Goal/{walk['id']}"

    s.post("checkin-recorded")
    s.push()
    observation = s.find("Observation", "checkin", f"{s.plan_id}/goal-walk/steps-week-1")
    assert observation["valueQuantity"]["value"] == 3200
    assert observation["code"]["coding"][0]["code"] == "41950-7"  # the goal's target measure, by default
    assert s.goal("goal-walk")["outcomeReference"] == [{"reference": f"Observation/{observation['id']}"}]

    s.post("outcome-recorded")
    s.push()
    rating = s.find("Observation", "checkin", f"{s.plan_id}/goal-walk/gbo-1")  # the rating's id: its scale, then n
    assert (rating["status"], rating["valueInteger"], rating["code"]["coding"][0]["code"]) == ("final", 3, "gbo")
    assert rating["focus"] == [{"reference": f"Goal/{walk['id']}"}]
    assert _extension(rating, f"{EXT}/outcome-occasion")["valueCode"] == "baseline"
    assert s.goal("goal-walk")["outcomeReference"][1] == {"reference": f"Observation/{rating['id']}"}

    s.post("step-updated")
    s.push()
    (activity,) = s.careplan()["activity"]
    assert activity["detail"]["status"] == "in-progress"
    assert activity["progress"][0]["text"] == "Went twice this week, once with my daughter."

    s.post("note-added")
    s.push()
    assert s.goal("goal-walk")["note"][0]["text"] == "A banana before the walk helps with energy."

    s.post("goal-revised")
    s.push()
    old, new = s.goal("goal-walk"), s.goal("goal-walk-2")
    assert (old["lifecycleStatus"], new["lifecycleStatus"]) == ("cancelled", "proposed")
    assert old["statusReason"] == "Saturdays are taken by football now; Sam prefers Sunday walks"
    relationship = _parts(_extension(old, RELATIONSHIP))
    assert relationship["target"]["valueReference"]["reference"] == f"Goal/{new['id']}"
    assert s.careplan()["activity"][0]["detail"]["goal"][0]["reference"] == f"Goal/{new['id']}"
    plan_b = _parts(_extension(new, f"{EXT}/goal-contingency"))
    assert (plan_b["if"]["valueString"], plan_b["then"]["valueString"]) == (
        "It rains on Sunday",
        "Walk round the shopping centre instead",
    )
    assert _extension(new, f"{EXT}/goal-barrier")["valueString"] == "Sunday afternoons are busy with family visits"

    s.post("step-done")
    s.push()
    assert s.careplan()["activity"][0]["detail"]["status"] == "completed"

    s.post("plan-reviewed")
    s.push()
    careplan = s.careplan()
    assert _parts(_extension(careplan, f"{EXT}/plan-review"))["next"]["valueDate"] == "2027-05-20"
    assert careplan["note"][-1]["text"] == "Reviewed with Sam and the dietitian; walking goal on track."

    s.post("plan-updated")
    s.push()
    assert s.careplan()["title"] == "Getting back to everyday life and work"

    s.post("goal-setting-declined")
    s.push()
    assert _parts(_extension(s.careplan(), f"{EXT}/goal-setting"))["status"]["valueCode"] == "declined"
    assert s.goal("goal-walk-2")["lifecycleStatus"] == "on-hold"

    s.post("goal-setting-resumed")
    s.push()
    assert _parts(_extension(s.careplan(), f"{EXT}/goal-setting"))["status"]["valueCode"] == "open"

    s.post("member-left")
    s.push()
    assert s.careteam_roles() == ["116154003", "62247001"]  # the dietitian's agreements and notes stay

    # The story goes on: Sam agrees to the revised goal and it becomes active again.
    s.post("agreement-recorded", goal_id="goal-walk-2")
    last = s.post("goal-status-changed", goal_id="goal-walk-2", reason="Picked up again after the move")
    assert last["plan_version"] == len(STORY) + 2
    s.push()
    assert s.goal("goal-walk-2")["lifecycleStatus"] == "active"
    with UnitOfWork(live.engine) as uow:
        assert {e.status for e in uow.outbox.list(s.plan_id)} == {"done"}


def _story_up_to(live: LiveService, last: str) -> Story:
    s = Story(live)
    for name in STORY[: STORY.index(last) + 1]:
        s.post(name)
    return s


def test_a_check_in_on_a_cancelled_goal_is_refused_and_changes_nothing(live):
    s = _story_up_to(live, "goal-revised")  # goal-walk is now cancelled, replaced by goal-walk-2
    version, queued = s.version(), s.outbox_size()
    problem = s.post("checkin-recorded", expect=422, checkin_id="late")
    assert problem["type"] == "urn:planbridge:problem:rule-violation"
    assert "goal goal-walk is cancelled" in problem["detail"]
    assert (problem["event_type"], problem["status"]) == ("checkin.recorded", 422)
    assert (s.version(), s.outbox_size()) == (version, queued)


@pytest.mark.parametrize(
    ("name", "data", "status", "code", "detail"),
    [
        ("agreement-recorded", {"member_id": "stranger"}, 422, "rule-violation", "member stranger is not on the team"),
        ("agreement-recorded", {"goal_id": "goal-nope"}, 404, "not-found", "goal goal-nope does not exist"),
        ("checkin-recorded", {"goal_id": "goal-nope"}, 404, "not-found", "goal goal-nope does not exist"),
        ("step-done", {"step_id": "step-nope"}, 404, "not-found", "step step-nope does not exist"),
        ("plan-created", {}, 409, "conflict", "already exists"),
        ("member-joined", {}, 409, "conflict", "already named"),
    ],
)
def test_events_that_do_not_fit_the_plan_are_refused_with_a_problem(live, name, data, status, code, detail):
    s = _story_up_to(live, "goal-proposed")
    version = s.version()
    problem = s.post(name, expect=status, **data)
    assert problem["type"] == f"urn:planbridge:problem:{code}"
    assert detail in problem["detail"]
    assert s.version() == version


def test_an_event_for_an_unknown_plan_is_not_found(live):
    problem = Story(live).post("note-added", expect=404)
    assert problem["type"] == "urn:planbridge:problem:not-found"
    assert live.row_counts()["plans"] == 0 and live.row_counts()["outbox"] == 0


def test_a_change_that_would_break_a_collaboration_rule_is_refused_naming_the_path(live):
    s = _story_up_to(live, "goal-proposed")
    s.post("agreement-recorded", status="disagree")
    problem = s.post("goal-status-changed", expect=422)
    assert problem["errors"] == {"goals[0].lifecycle_status": "the patient disagrees with this goal"}
    with UnitOfWork(live.engine) as uow:
        assert uow.plans.get(s.plan_id).goals[0].lifecycle_status == "proposed"


def test_a_refusal_is_replayed_with_the_same_answer(live):
    s = _story_up_to(live, "goal-proposed")
    msg_id = f"msg_{uuid.uuid4().hex}"
    event = s.event("agreement-recorded", member_id="stranger")
    first = live.post(event, msg_id=msg_id)
    s.post("member-joined", member_id="stranger", name="Now on the team", identifier={"system": "urn:x", "value": "1"})
    again = live.post(event, msg_id=msg_id)  # the same event again: answered as the first time, not re-applied
    assert (first.status_code, again.status_code) == (422, 422)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    with UnitOfWork(live.engine) as uow:
        assert uow.plans.get(s.plan_id).goals[0].agreements == []
