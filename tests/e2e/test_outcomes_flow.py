"""Outcome ratings end to end, on SQLite and PostgreSQL, against the strict (medplum) local FHIR server:
signed events -> the plan -> GET /plans/{id}/outcomes -> rating Observations on the server -> pulled back
unchanged (and an EHR's edit of a rating read back as a rating); an out-of-range score is refused."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from service.fhir.client import FhirClient
from tests.e2e.test_api_operate import Api
from tests.support import FIXTURES

OUTCOME_SCALE = "http://planbridge.org/fhir/CodeSystem/outcome-scale"
EXT = "http://planbridge.org/fhir/StructureDefinition"


@pytest.fixture
def api(engine, fhir_base_url):
    service = Api(engine, fhir_base_url)
    yield service
    service.server.shutdown()


def example(name: str, plan_id: str, mrn: str, **data) -> dict:
    event = copy.deepcopy(json.loads((FIXTURES / "events" / f"{name}.json").read_text()))
    event["data"]["plan_id"] = plan_id
    if "patient" in event["data"]:
        event["data"]["patient"]["mrn"] = mrn
    event["data"].update(data)
    return event


def rating(plan_id: str, **data) -> dict:
    values = {"goal_id": "goal-walk", "scale": "gbo", "occasion": "baseline", "rated_by": "patient"}
    return example("outcome-recorded", plan_id, "", **{**values, **data})


def test_ratings_from_events_to_outcomes_to_fhir_and_back(api, fhir_base_url):
    plan_id, mrn = f"plan-{uuid.uuid4().hex[:10]}", f"MRN-{uuid.uuid4().hex[:10]}"
    sleep = {
        "id": "goal-sleep",
        "description": "Sleep through most nights",
        "proposed_by": {"kind": "patient"},
        "gas_levels": {"-2": "Awake most nights", "0": "Asleep by midnight 4 nights a week", "2": "Every night"},
        "gas_weight": 2,
        "contingencies": [{"if": "A bad night", "then": "No screens the next evening", "owner": "patient"}],
    }
    for event in (
        example("plan-created", plan_id, mrn),
        example("member-joined", plan_id, mrn),
        example("goal-proposed", plan_id, mrn),
        example("goal-proposed", plan_id, mrn, goal=sleep),
        rating(plan_id, score=3, at="2026-11-29T18:05:00Z"),
        rating(plan_id, score=6, occasion="review", rated_by="gp", at="2027-01-10T10:00:00+01:00", note="Better"),
        rating(plan_id, goal_id="goal-sleep", scale="gas", score=-1, rated_by="dietitian", at="2026-11-29T18:10:00Z"),
        rating(plan_id, goal_id="goal-sleep", scale="gas", score=1, occasion="review", at="2027-01-10T10:05:00Z"),
    ):
        answer = api.event(event)
        assert answer.status_code == 202, answer.text
    version = answer.json()["plan_version"]

    # Out of range: refused at the door with the path, nothing stored or queued.
    queued = len(api.get(f"/outbox?plan={plan_id}").json())
    for bad, message in (({"score": 11}, "GBO 0 to 10"), ({"scale": "gas", "score": 3}, "from -2 to 2")):
        refused = api.event(rating(plan_id, at="2027-01-11T10:00:00Z", **bad))
        assert refused.status_code == 400 and refused.headers["Content-Type"] == "application/problem+json"
        assert message in refused.json()["errors"]["data"]["score"][0]
    stored = api.get(f"/plans/{plan_id}").json()
    assert stored["version"] == version and len(api.get(f"/outbox?plan={plan_id}").json()) == queued
    assert [len(g.get("ratings", [])) for g in stored["goals"]] == [2, 2]

    # The outcomes: GBO baseline 3 -> 6 (reliable at 2.45), and the GAS T-score of the one GAS goal.
    outcomes = api.get(f"/plans/{plan_id}/outcomes")
    assert outcomes.status_code == 200
    body = outcomes.json()
    walk, sleeping = body["goals"]
    assert (walk["goal_id"], walk["scale"], walk["baseline"], walk["latest"], walk["change"]) == (
        "goal-walk",
        "gbo",
        3,
        6,
        3,
    )
    assert walk["reliable_change"] is True and [r["rated_by"] for r in walk["ratings"]] == ["patient", "gp"]
    assert (sleeping["scale"], sleeping["baseline"], sleeping["latest"], sleeping["reliable_change"]) == (
        "gas",
        -1,
        1,
        None,
    )
    # one goal, weight 2, level +1: 50 + 10 * 2 / sqrt(0.7 * 4 + 0.3 * 4) = 50 + 20 / 2 = 60
    assert body["gas"]["t_score"] == 60.0 and body["gas"]["weights"] == {"goal-sleep": 2}
    assert api.get(f"/plans/{plan_id}/outcomes", key=None).status_code == 401
    missing = api.get("/plans/plan-nope/outcomes")
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/problem+json"

    # On the FHIR server: one final Observation per rating, coded, focused on the Goal, by the rater.
    assert api.worker.run_until_idle() >= 1
    fhir = FhirClient(fhir_base_url)
    base = api.settings.identifier_base
    (goal,) = fhir.search("Goal", {"identifier": f"{base}/goal|{plan_id}/goal-walk"})
    (observation,) = fhir.search("Observation", {"identifier": f"{base}/checkin|{plan_id}/goal-walk/gbo-2"})
    assert observation["status"] == "final" and observation["valueInteger"] == 6
    assert (
        observation["code"]["coding"][0]["system"] == OUTCOME_SCALE
        and observation["code"]["coding"][0]["code"] == "gbo"
    )
    assert observation["focus"] == [{"reference": f"Goal/{goal['id']}"}]
    assert observation["performer"][0]["reference"].startswith("Practitioner/")
    assert observation["effectiveDateTime"] == "2027-01-10T10:00:00+01:00" and observation["note"] == [
        {"text": "Better"}
    ]
    assert {"reference": f"Observation/{observation['id']}"} in goal["outcomeReference"]
    (sleep_goal,) = fhir.search("Goal", {"identifier": f"{base}/goal|{plan_id}/goal-sleep"})
    urls = [e["url"] for e in sleep_goal["extension"]]
    assert urls.count(f"{EXT}/goal-gas-level") == 3 and f"{EXT}/goal-contingency" in urls

    # Pulled back: nothing changed.
    before = api.get(f"/plans/{plan_id}").json()
    pulled = api.post(f"/plans/{plan_id}/sync", {"direction": "pull"})
    assert pulled.status_code == 200 and pulled.json()["outcome"] == "unchanged", pulled.text
    assert api.get(f"/plans/{plan_id}").json() == before

    # A clinician corrects a rating's note in the EHR: the pull reads it back as the same rating.
    edited = {**observation, "note": [{"text": "Better, says the GP"}]}
    fhir.request("PUT", f"Observation/{observation['id']}", json=edited)
    pulled = api.post(f"/plans/{plan_id}/sync", {"direction": "pull"})
    assert pulled.status_code == 200 and pulled.json()["outcome"] != "unchanged", pulled.text
    after = api.get(f"/plans/{plan_id}").json()
    ratings = after["goals"][0]["ratings"]
    assert [(r["id"], r["score"], r.get("note")) for r in ratings] == [
        ("gbo-1", 3, "A long way to go, but I have started."),
        ("gbo-2", 6, "Better, says the GP"),
    ]
    assert "check_ins" not in after["goals"][0] or len(after["goals"][0]["check_ins"]) == 0
    assert after["goals"][1]["gas_levels"] == before["goals"][1]["gas_levels"]
    assert after["goals"][1]["contingencies"] == before["goals"][1]["contingencies"]
