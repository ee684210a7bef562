"""Outcome ratings (GBO, GAS) and contingency plans: the event's checks, the command, the summary and
T-score, and the FHIR mapping (no database, no HTTP)."""

from __future__ import annotations

import copy
import json
import math

import pytest
from marshmallow import ValidationError

from mappings import codes
from mappings.bundle import bundle_to_plan, plan_to_bundle
from mappings.fhir import validate_bundle
from service.api.schemas import EVENT_DATA_SCHEMAS
from service.domain import codec
from service.domain.changes import RecordOutcome, apply_command
from service.domain.errors import Conflict, NotFound, RuleViolation
from service.domain.model import Contingency, Goal, Member, OutcomeRating, Patient, Plan
from service.domain.rules import check_plan, errors
from service.domain.types import Concept
from service.planschema import shape_issues
from service.services.outcomes import summarize, t_score
from service.settings import Settings
from tests.support import FIXTURES, MRN_SYSTEM

AT = "2026-11-22T09:00:00+00:00"
BASE = "https://planbridge.example.org/id"
EVENT = json.loads((FIXTURES / "events" / "outcome-recorded.json").read_text())["data"]


def load(name: str) -> Plan:
    return codec.from_dict(Plan, json.loads((FIXTURES / "plans" / f"{name}.json").read_text()))


def team_plan() -> Plan:
    return Plan(
        id="plan-ed-0001",
        patient=Patient(mrn="MRN-1"),
        status="active",
        team=[Member("patient", "patient"), Member("gp", "practitioner", name="Dr Lee"), Member("old", "practitioner")],
        goals=[Goal(id="goal-walk", description=Concept(text="Walk to the park"))],
    )


def outcome_errors(**changes) -> dict:
    data = {**EVENT, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValidationError) as raised:
        EVENT_DATA_SCHEMAS["outcome.recorded"]().load(data)
    return raised.value.normalized_messages()


# -- the event's data: each bad field is named --------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"score": 11}, "score"),
        ({"score": -1}, "score"),  # below GBO's 0
        ({"scale": "gas", "score": 3}, "score"),  # above GAS's +2
        ({"scale": "gas", "score": -3}, "score"),
        ({"score": 2.5}, "score"),  # whole numbers only
        ({"score": "4"}, "score"),  # a JSON number, not a string
        ({"score": True}, "score"),
        ({"scale": "phq9"}, "scale"),
        ({"occasion": "sometime"}, "occasion"),
        ({"at": "2026-11-29"}, "at"),  # an instant: a date alone is refused
        ({"at": "2026-11-29T18:05:00"}, "at"),  # ... and so is one without a zone
        ({"at": "2026-11-29T18:05:00+15:00"}, "at"),  # FHIR zones are -14:00..+14:00
        ({"rated_by": "not an id"}, "rated_by"),
        ({"note": "bell\x07"}, "note"),
        ({"rating_id": "a/b"}, "rating_id"),
        ({"goal_id": None}, "goal_id"),
    ],
)
def test_bad_outcome_data_is_refused_naming_the_field(changes, field):
    assert field in outcome_errors(**changes)


def test_the_score_range_is_per_scale():
    load_event = EVENT_DATA_SCHEMAS["outcome.recorded"]().load
    for scale, low, high in (("gbo", 0, 10), ("gas", -2, 2)):
        for score in (low, high):
            assert load_event({**EVENT, "scale": scale, "score": score}).score == score
    assert outcome_errors(score=11)["score"] == ["a score is a whole number: GBO 0 to 10, GAS -2 to +2"]
    assert outcome_errors(score=-1)["score"] == ["a gbo score is a whole number from 0 to 10"]
    assert outcome_errors(scale="gas", score=3)["score"] == ["a gas score is a whole number from -2 to 2"]


def test_goal_fields_take_gas_levels_a_weight_barriers_and_contingencies():
    event = json.loads((FIXTURES / "events" / "goal-proposed.json").read_text())["data"]
    event["goal"] |= {
        "gas_levels": {"-2": "Indoors only", "0": "To the park and back", "2": "Round the lake"},
        "gas_weight": 2,
        "barriers": ["A sore knee"],
        "contingencies": [{"if": "It rains", "then": "Walk in the shopping centre", "owner": "patient"}],
    }
    goal = EVENT_DATA_SCHEMAS["goal.proposed"]().load(event).goal
    assert goal.gas_levels == {"-2": "Indoors only", "0": "To the park and back", "2": "Round the lake"}
    assert (goal.gas_weight, goal.barriers) == (2.0, ["A sore knee"])
    assert goal.contingencies == [Contingency("It rains", "Walk in the shopping centre", "patient")]
    for bad, field in (
        ({"gas_levels": {"3": "x"}}, "gas_levels"),
        ({"gas_weight": 0}, "gas_weight"),
        ({"contingencies": [{"if": "It rains"}]}, "contingencies"),
        ({"contingencies": [{"if": " ", "then": "x"}]}, "contingencies"),
    ):
        broken = copy.deepcopy(event)
        broken["goal"] |= bad
        with pytest.raises(ValidationError) as raised:
            EVENT_DATA_SCHEMAS["goal.proposed"]().load(broken)
        assert field in raised.value.normalized_messages()["goal"]


# -- the command: the plan's state --------------------------------------------------------------------


def rate(plan: Plan, **changes) -> Plan:
    values = dict(
        plan_id=plan.id, goal_id="goal-walk", scale="gbo", score=3, occasion="baseline", rated_by="patient", at=AT
    )
    return apply_command(RecordOutcome(**{**values, **changes}), plan, AT)


def test_ratings_get_an_id_per_scale_and_bump_the_version():
    plan = rate(team_plan())
    plan = rate(plan, score=6, occasion="review", rated_by="gp")
    plan = rate(plan, scale="gas", score=-1)
    assert [(r.id, r.scale, r.score, r.rated_by) for r in plan.goals[0].ratings] == [
        ("gbo-1", "gbo", 3, "patient"),
        ("gbo-2", "gbo", 6, "gp"),
        ("gas-1", "gas", -1, "patient"),
    ]
    assert plan.version == 3


def test_ratings_the_plan_cannot_take_are_refused():
    plan = team_plan()
    plan.team[2].in_team = False  # "old" has left the team
    with pytest.raises(NotFound, match="goal goal-nope does not exist"):
        rate(plan, goal_id="goal-nope")
    with pytest.raises(RuleViolation, match="rated_by stranger is not on the team"):
        rate(plan, rated_by="stranger")
    with pytest.raises(RuleViolation, match="rated_by old is not on the team"):
        rate(plan, rated_by="old")
    rated = rate(plan, rating_id="first")
    with pytest.raises(Conflict, match="rating first already exists"):
        rate(rated, rating_id="first")
    with pytest.raises(RuleViolation) as raised:
        rate(plan, scale="gas", score=5)  # past the schema (a command built in code): the rule still holds
    assert raised.value.data["errors"] == {"rating.score": "a gas score is from -2 to 2"}
    plan.goals[0].lifecycle_status = "cancelled"
    with pytest.raises(RuleViolation, match="is cancelled"):
        rate(plan)


def test_check_plan_names_every_bad_rating_and_contingency():
    plan = team_plan()
    goal = plan.goals[0]
    goal.ratings = [
        OutcomeRating("r1", "gbo", 12, "baseline", "patient", AT),
        OutcomeRating("r1", "sdq", 1, "later", "ghost", AT),
    ]
    goal.gas_levels, goal.gas_weight = {"3": "x"}, math.nan
    goal.contingencies = [Contingency("x", "y", "ghost")]
    found = {i.path: i.message for i in errors(check_plan(plan))}
    assert found == {
        "goals[0].ratings[0].score": "a gbo score is from 0 to 10",
        "goals[0].ratings[1].scale": "'sdq' is not one of gbo, gas",
        "goals[0].ratings[1].occasion": "'later' is not one of baseline, session, review, end",
        "goals[0].ratings[1].rated_by": "'ghost' is not in the team",
        "goals[0].ratings": "id 'r1' is used 2 times",
        "goals[0].gas_levels.3": "a GAS level is one of -2, -1, 0, 1, 2",
        "goals[0].gas_weight": "a GAS weight is a positive number",
        "goals[0].contingencies[0].owner": "'ghost' is not in the team",
    }


def test_the_plan_schema_knows_ratings_gas_levels_and_contingencies():
    document = codec.to_dict(load("gas-rehab"))
    assert shape_issues(document) == []
    assert document["goals"][1]["contingencies"][0] == {
        "if": "It is icy",
        "then": "Walk the hallway circuit twice instead",
        "owner": "patient",
    }
    document["goals"][0]["ratings"][0]["score"] = 40
    document["goals"][0]["gas_levels"]["5"] = "off the scale"
    document["goals"][0]["contingencies"][0] = {"then": "x"}
    assert {i.path for i in shape_issues(document)} == {
        "goals[0].ratings[0].score",
        "goals[0].gas_levels.5",
        "goals[0].contingencies[0].if",
    }


# -- the summary ---------------------------------------------------------------------------------------


def test_gbo_outcomes_per_goal_with_reliable_change():
    summary = summarize(load("gbo-three-goals"))
    assert summary["plan_id"] == "plan-gbo-0010" and summary["gas"] is None
    assert summary["reliable_change"]["gbo"] == 2.45 and "Edbrooke-Childs" in summary["reliable_change"]["source"]
    rows = [
        (g["goal_id"], g["scale"], g["baseline"], g["latest"], g["change"], g["reliable_change"])
        for g in summary["goals"]
    ]
    assert rows == [
        ("goal-sleep", "gbo", 2, 6, 4, True),  # 4 >= 2.45
        ("goal-school", "gbo", 3, 5, 2, False),  # 2 < 2.45
        ("goal-friends", "gbo", 5, 4, -1, False),
    ]
    sleep = summary["goals"][0]["ratings"]
    assert [r["id"] for r in sleep] == ["gbo-1", "gbo-2", "gbo-3"] and "fhir_extra" not in sleep[0]
    assert sleep[0] == {
        "id": "gbo-1",
        "scale": "gbo",
        "score": 2,
        "occasion": "baseline",
        "rated_by": "patient",
        "at": "2026-09-01T16:00:00+01:00",
        "note": "Most nights it takes hours.",
    }
    stricter = summarize(load("gbo-three-goals"), Settings(gbo_reliable_change=5))
    assert [g["reliable_change"] for g in stricter["goals"]] == [False, False, False]
    assert Settings.from_env({"PLANBRIDGE_GBO_RELIABLE_CHANGE": "2"}).gbo_reliable_change == 2.0


def test_ratings_are_ordered_by_instant_and_the_baseline_is_the_baseline_occasion():
    plan = team_plan()
    plan.goals[0].ratings = [
        OutcomeRating("late", "gbo", 7, "review", "gp", "2026-12-01T09:00:00+01:00"),  # 08:00Z
        OutcomeRating("early", "gbo", 5, "session", "gp", "2026-12-01T08:30:00+05:00"),  # 03:30Z: earlier
        OutcomeRating("base", "gbo", 4, "baseline", "gp", "2026-12-01T07:00:00Z"),  # after the session
    ]
    (entry,) = summarize(plan)["goals"]
    assert [r["id"] for r in entry["ratings"]] == ["early", "base", "late"]
    assert (entry["baseline"], entry["latest"], entry["change"], entry["reliable_change"]) == (4, 7, 3, True)
    plan.goals[0].ratings = plan.goals[0].ratings[:1]
    (single,) = summarize(plan)["goals"]
    assert (single["baseline"], single["latest"], single["change"], single["reliable_change"]) == (7, 7, None, None)


def test_the_gas_t_score_worked_by_hand():
    # fixtures/plans/gas-rehab.json, latest levels x and weights w (breakfast weighs 2, the others 1):
    #   breakfast x=+1 w=2, shop x=0 w=1, stairs x=-1 w=1
    #   sum(w*x) = 2 + 0 - 1 = 1;  sum(w^2) = 4 + 1 + 1 = 6;  (sum w)^2 = 4^2 = 16
    #   T = 50 + 10 * 1 / sqrt(0.7 * 6 + 0.3 * 16) = 50 + 10 / sqrt(9) = 50 + 3.333... = 53.33
    # at baseline: x = -2, -1, -2:  sum(w*x) = -4 - 1 - 2 = -7;  T = 50 - 70 / 3 = 26.67
    gas = summarize(load("gas-rehab"))["gas"]
    assert (gas["t_score"], gas["baseline_t_score"], gas["goals"]) == (53.33, 26.67, 3)
    assert gas["weights"] == {"goal-breakfast": 2, "goal-shop": 1.0, "goal-stairs": 1.0}
    # one goal at the expected level is 50; equal weights, every goal one level up, n=1: 50 + 10/sqrt(0.7+0.3)
    assert t_score([(0, 1.0)]) == 50 and t_score([(1, 1.0)]) == 60 and t_score([]) is None
    # three goals, equal weights, all +1: 50 + 10*3/sqrt(0.7*3 + 0.3*9) = 50 + 30/sqrt(4.8)
    assert t_score([(1, 1.0)] * 3) == pytest.approx(50 + 30 / math.sqrt(4.8))
    assert all(e["reliable_change"] is None for e in summarize(load("gas-rehab"))["goals"])


# -- FHIR ----------------------------------------------------------------------------------------------


def observations(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]


def test_a_rating_is_a_final_observation_coded_from_the_outcome_scale_codesystem():
    plan = load("gbo-three-goals")
    bundle = plan_to_bundle(plan, BASE, MRN_SYSTEM)
    validate_bundle(bundle)
    entries = {e["resource"].get("identifier", [{}])[-1].get("value"): e for e in bundle["entry"]}
    entry = entries["plan-gbo-0010/goal-sleep/gbo-1"]
    goal_url = entries["plan-gbo-0010/goal-sleep"]["fullUrl"]
    rating = entry["resource"]
    assert entry["request"]["url"] == f"Observation?identifier={BASE}/checkin|plan-gbo-0010/goal-sleep/gbo-1"
    assert rating["status"] == "final" and rating["valueInteger"] == 2
    assert rating["code"] == {
        "coding": [
            {
                "system": "http://planbridge.org/fhir/CodeSystem/outcome-scale",
                "code": "gbo",
                "display": "Goal-Based Outcome rating (0-10)",
            }
        ]
    }
    assert rating["focus"] == [{"reference": goal_url}]
    assert rating["performer"][0]["reference"] == rating["subject"]["reference"]  # rated by the patient
    assert rating["effectiveDateTime"] == "2026-09-01T16:00:00+01:00"
    assert {"url": codes.EXT_OUTCOME_OCCASION, "valueCode": "baseline"} in rating["extension"]
    assert rating["note"] == [{"text": "Most nights it takes hours."}]
    sleep = entries["plan-gbo-0010/goal-sleep"]["resource"]
    assert len(sleep["outcomeReference"]) == 3 and {"reference": entry["fullUrl"]} in sleep["outcomeReference"]
    assert len(observations(bundle)) == 9


def test_gas_levels_weight_and_contingencies_travel_in_the_goal():
    bundle = plan_to_bundle(load("gas-rehab"), BASE, MRN_SYSTEM)
    validate_bundle(bundle)
    goal = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"].get("description", {}).get("text") == "Make my own breakfast"
    )
    levels = [e for e in goal["extension"] if e["url"] == codes.EXT_GAS_LEVEL]
    assert [[p["url"] for p in e["extension"]] for e in levels] == [["level", "description"]] * 5
    assert levels[2]["extension"] == [
        {"url": "level", "valueInteger": 0},
        {"url": "description", "valueString": "Makes toast and a hot drink alone, with adapted equipment"},
    ]
    assert {"url": codes.EXT_GAS_WEIGHT, "valueDecimal": 2} in goal["extension"]
    (contingency,) = [e for e in goal["extension"] if e["url"] == codes.EXT_CONTINGENCY]
    assert [p["url"] for p in contingency["extension"]] == ["if", "then", "owner"]


@pytest.mark.parametrize("name", ["gbo-three-goals", "gas-rehab"])
def test_rated_plans_round_trip_through_fhir(name):
    plan = load(name)
    back = bundle_to_plan(json.loads(json.dumps(plan_to_bundle(plan, BASE, MRN_SYSTEM))), BASE, MRN_SYSTEM)
    assert [g.ratings for g in back.goals] == [g.ratings for g in plan.goals]
    assert [(g.gas_levels, g.gas_weight, g.contingencies, g.barriers) for g in back.goals] == [
        (g.gas_levels, g.gas_weight, g.contingencies, g.barriers) for g in plan.goals
    ]


def test_an_observation_an_ehr_changed_beyond_a_rating_is_read_as_a_check_in_and_kept():
    plan = load("gbo-three-goals")
    bundle = json.loads(json.dumps(plan_to_bundle(plan, BASE, MRN_SYSTEM)))
    first = observations(bundle)[0]
    first["status"] = "amended"  # no longer what planbridge writes for a rating
    first["category"] = [{"text": "survey"}]
    back = bundle_to_plan(bundle, BASE, MRN_SYSTEM)
    sleep = back.goals[0]
    assert [r.id for r in sleep.ratings] == ["gbo-2", "gbo-3"]
    (check_in,) = sleep.check_ins
    assert (check_in.id, check_in.integer, check_in.status) == ("gbo-1", 2, "amended")
    again = next(
        o
        for o in observations(plan_to_bundle(back, BASE, MRN_SYSTEM))
        if o["identifier"][0]["value"].endswith("/goal-sleep/gbo-1")
    )
    for key in ("status", "category", "code", "valueInteger", "effectiveDateTime", "note"):
        assert again[key] == first[key], key
    assert {"url": codes.EXT_OUTCOME_OCCASION, "valueCode": "baseline"} in again["extension"]


def test_an_ehrs_extra_elements_on_a_rating_are_kept():
    bundle = json.loads(json.dumps(plan_to_bundle(load("gbo-three-goals"), BASE, MRN_SYSTEM)))
    first = observations(bundle)[0]
    first["method"] = {"text": "asked at the start of the session"}
    first["identifier"].append({"system": "urn:ehr", "value": "obs-9"})
    back = bundle_to_plan(bundle, BASE, MRN_SYSTEM)
    rating = back.goals[0].ratings[0]
    assert rating.score == 2 and rating.fhir_extra == {
        "method": first["method"],
        "identifier": [{"system": "urn:ehr", "value": "obs-9"}],
    }
    again = observations(plan_to_bundle(back, BASE, MRN_SYSTEM))[0]
    assert again["method"] == first["method"] and {"system": "urn:ehr", "value": "obs-9"} in again["identifier"]
