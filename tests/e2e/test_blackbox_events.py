"""Black-box checks of `POST /webhooks/team` against its documentation (README "Team events", docs/events.md).

What an outside integrator sends, from the documented interface only: each test posts signed events
through the app and, where the promise is about delivery ("a 202 is a promise"), pushes the plan to the
strict local FHIR server (medplum profile) and looks at what it holds. Every confirmed bug is a named
regression test here; the rest pin documented behaviour nothing else covers. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.api.app import create_app
from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.logs import configure
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from tests.support import FIXTURES, SECRET, signed
from tests.support import settings as make_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Intake:
    """A team system talking to planbridge: signed events in, plans pushed to the FHIR server, read back."""

    def __init__(self, engine, fhir_base_url: str) -> None:
        self.engine = engine
        self.config = make_settings(fhir_base_url=fhir_base_url)
        self.client = create_app(self.config, engine).test_client()
        self.fhir = FhirClient(fhir_base_url, timeout=30)
        self.sync = SyncEngine(UnitOfWork(engine), self.fhir, self.config, utcnow)

    def event(self, example: str, plan_id: str, mrn: str | None = None, **data) -> dict:
        event = copy.deepcopy(json.loads((FIXTURES / "events" / f"{example}.json").read_text()))
        event["data"]["plan_id"] = plan_id
        if "patient" in event["data"]:
            event["data"]["patient"]["mrn"] = mrn or f"MRN-{plan_id}"
        event["data"].update(data)
        return event

    def post(self, event: dict, msg_id: str | None = None):
        body = json.dumps(event).encode()
        return self.client.post("/webhooks/team", data=body, headers=signed(body, msg_id=msg_id))

    def accepted(self, event: dict) -> dict:
        answer = self.post(event)
        assert answer.status_code == 202, answer.get_data(as_text=True)
        return answer.json

    def new_plan(self, mrn: str | None = None) -> str:
        """A plan with its GP author, a dietitian and the patient's goal `goal-walk`."""
        plan_id = f"plan-{uuid.uuid4().hex[:10]}"
        for example in ("plan-created", "member-joined", "goal-proposed"):
            self.accepted(self.event(example, plan_id, mrn))
        return plan_id

    def plan(self, plan_id: str):
        with UnitOfWork(self.engine) as uow:
            return uow.plans.get(plan_id)

    def push(self, plan_id: str) -> str:
        return self.sync.push(plan_id).status

    def ours(self, resource_type: str, needle: str) -> list[dict]:
        """The resources of a type whose identifier values hold `needle` (exactly, case included)."""
        found = self.fhir.search(resource_type, {"_count": "1000"})
        return [r for r in found if any(needle in (i.get("value") or "") for i in r.get("identifier", []))]


@pytest.fixture
def intake(engine, fhir_base_url):
    return Intake(engine, fhir_base_url)


def data_event(event_type: str, plan_id: str, **data) -> dict:
    return {"type": event_type, "timestamp": "2026-11-22T09:30:00Z", "data": {"plan_id": plan_id, **data}}


def refused(answer, status: int, problem: str) -> dict:
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    assert answer.json["type"] == f"urn:planbridge:problem:{problem}"
    return answer.json


# ---- regressions: each was a bug, found from the documentation alone ----


def test_goal_ids_differing_only_in_case_are_a_conflict_not_a_plan_the_fhir_server_refuses_for_ever(intake):
    # Was 202: two Goals whose identifiers differ only in case, which the FHIR server matches alike, so
    # every push of the plan failed (400 "Resource ID did not match resolved ID") and the plan never synced.
    plan_id = intake.new_plan()
    twin = intake.event("goal-proposed", plan_id, goal={**intake.event("goal-proposed", plan_id)["data"]["goal"]})
    twin["data"]["goal"]["id"] = "GOAL-WALK"
    problem = refused(intake.post(twin), 409, "conflict")
    assert "goal-walk" in problem["detail"] and "case" in problem["detail"]
    revised = intake.event("goal-revised", plan_id)
    revised["data"]["goal"]["id"] = "Goal-Walk"
    refused(intake.post(revised), 409, "conflict")  # goal.revised names a new goal too
    assert [g.id for g in intake.plan(plan_id).goals] == ["goal-walk"]
    assert intake.push(plan_id) == "in_sync"
    assert len(intake.ours("Goal", f"{plan_id}/")) == 1


def test_check_in_and_rating_ids_differing_only_in_case_are_a_conflict(intake):
    # Was 202, then every push failed: each check-in and rating is an Observation identified by
    # plan/goal/id, and the server cannot tell `c1` from `C1`.
    plan_id = intake.new_plan()
    checkin = data_event(
        "checkin.recorded", plan_id, goal_id="goal-walk", checkin_id="c1", at="2026-11-29T18:00:00Z", integer=1
    )
    intake.accepted(checkin)
    assert intake.push(plan_id) == "in_sync"
    refused(intake.post({**checkin, "data": {**checkin["data"], "checkin_id": "C1"}}), 409, "conflict")
    rating = data_event(
        "outcome.recorded",
        plan_id,
        goal_id="goal-walk",
        scale="gbo",
        score=3,
        occasion="baseline",
        rated_by="patient",
        at="2026-11-29T18:05:00Z",
    )
    refused(intake.post({**rating, "data": {**rating["data"], "rating_id": "C1"}}), 409, "conflict")
    intake.accepted({**rating, "data": {**rating["data"], "rating_id": "GBO-1"}})
    answer = intake.accepted(rating)  # the default id skips gbo-1: GBO-1 holds it but for case
    goal = intake.plan(plan_id).goal("goal-walk")
    assert [r.id for r in goal.ratings] == ["GBO-1", "gbo-2"] and answer["plan_version"] == 6
    assert intake.push(plan_id) == "in_sync"
    assert len(intake.ours("Observation", f"{plan_id}/goal-walk/")) == 3


def test_a_check_in_reusing_a_rating_id_is_the_documented_409_not_a_422(intake):
    # docs/events.md: "an id used twice (... a check-in, rating ...)" is 409 conflict; it was 422.
    plan_id = intake.new_plan()
    intake.accepted(
        data_event(
            "outcome.recorded",
            plan_id,
            goal_id="goal-walk",
            scale="gbo",
            score=3,
            occasion="baseline",
            rated_by="patient",
            at="2026-11-29T18:05:00Z",
        )
    )
    answer = intake.post(
        data_event(
            "checkin.recorded", plan_id, goal_id="goal-walk", checkin_id="gbo-1", at="2026-11-29T18:00:00Z", integer=4
        )
    )
    assert refused(answer, 409, "conflict")["detail"] == "rating gbo-1 already exists on goal goal-walk"


@pytest.mark.parametrize(
    "path",
    [("patient", "mrn"), ("author", "identifier", "value"), ("author", "identifier", "system")],
    ids=["mrn", "identifier-value", "identifier-system"],
)
def test_a_pipe_in_an_mrn_or_identifier_is_refused_not_duplicated_on_every_push(intake, path):
    # Was 202: the Patient (or Practitioner) is found again by the token `system|value`; the server splits
    # at every `|` (escaped or not), never found the one planbridge created, and each push made another.
    plan_id = f"plan-{uuid.uuid4().hex[:10]}"
    event = intake.event("plan-created", plan_id)
    target = event["data"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = target[path[-1]] + "|x"
    problem = refused(intake.post(event), 400, "invalid-input")
    found = problem["errors"]["data"]
    for key in path:
        found = found[key]
    assert found == ["must not contain '|': a FHIR token search (system|value) cannot find it on the server"]
    assert intake.plan(plan_id) is None


def test_an_mrn_with_search_characters_other_than_the_pipe_finds_one_patient_for_every_plan(intake):
    # What the pipe refusal leaves open works: `,`, `$` and `\` are escaped and found again.
    mrn = f"M-{uuid.uuid4().hex[:6]},$\\x"
    plans = [intake.new_plan(mrn) for _ in range(2)]
    assert [intake.push(p) for p in plans] == ["in_sync", "in_sync"]
    patients = [p for p in intake.fhir.search("Patient", {"_count": "1000"}) if any(
        i.get("value") == mrn for i in p.get("identifier", []))]  # fmt: skip
    assert len(patients) == 1


def test_a_plan_opened_by_a_goal_proposal_has_the_patient_on_its_team(intake):
    # Was: a plan opened by goal.proposed from a clinician had no patient on its team, so the patient's own
    # agreement (member `patient`, docs/events.md Conventions) was refused 422 "not on the team".
    plan_id = f"plan-{uuid.uuid4().hex[:10]}"
    event = intake.event("goal-proposed", plan_id)
    event["data"]["goal"]["proposed_by"] = {"kind": "practitioner", "member_id": "gp", "display": "Dr Lee"}
    intake.accepted(event)
    assert [(m.id, m.kind) for m in intake.plan(plan_id).team] == [("patient", "patient"), ("gp", "practitioner")]
    intake.accepted(intake.event("agreement-recorded", plan_id))
    clash = intake.event("goal-proposed", plan_id)
    clash["data"]["goal"].update(
        id="goal-2", proposed_by={"kind": "practitioner", "member_id": "patient", "display": "X"}
    )
    refused(intake.post(clash), 409, "conflict")  # member id `patient` is the patient's
    assert intake.push(plan_id) == "in_sync"
    (team,) = intake.ours("CareTeam", plan_id)
    assert any(p["member"]["reference"].startswith("Patient/") for p in team["participant"])


@pytest.mark.parametrize(
    ("example", "path", "value"),
    [
        ("checkin-recorded", ("value",), "3200"),
        ("checkin-recorded", ("value",), "\u0663\u0662\u0660\u0660"),  # Arabic-Indic digits were 3200
        ("goal-proposed", ("goal", "targets", 0, "value"), "4000"),
        ("goal-proposed", ("goal", "gas_weight"), "2"),
    ],
)
def test_numbers_are_json_numbers_never_digits_in_a_string(intake, example, path, value):
    # Was 202: `value` and `gas_weight` took "3200" (and "٣٢٠٠") as numbers, unlike every integer field.
    plan_id = intake.new_plan()
    event = intake.event(example, plan_id)
    if example == "goal-proposed":
        event["data"]["goal"]["id"] = "goal-2"
    target = event["data"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    found = refused(intake.post(event), 400, "invalid-input")["errors"]["data"]
    for key in path:
        found = found[str(key) if isinstance(key, int) else key]
    assert found == ["Not a valid number: give a JSON number, not a string."]
    target[path[-1]] = 3200 if path[-1] == "value" else 2.5
    intake.accepted(event)


def test_a_plan_update_with_an_empty_period_is_invalid_not_a_new_version(intake):
    # docs: "at least one field (400)"; `period: {}` names no bound, yet was 202 with a new plan version.
    plan_id = intake.new_plan()
    problem = refused(intake.post(data_event("plan.updated", plan_id, period={})), 400, "invalid-input")
    assert problem["errors"] == {"data": {"period": ["give start or end (end: null clears it)"]}}
    assert intake.plan(plan_id).version == 3
    intake.accepted(data_event("plan.updated", plan_id, period={"end": None}))
    assert intake.plan(plan_id).period_end is None


def test_plan_ids_differing_only_in_case_never_overwrite_each_other_on_the_fhir_server(intake):
    # Two patients' plans `plan-x` and `PLAN-X` are distinct in planbridge, but the FHIR server matches
    # identifiers without case: the second push overwrote the first patient's CarePlan, CareTeam and Goal
    # and linked them to the first patient (both pushes said in_sync).
    base = f"plan-{uuid.uuid4().hex[:8]}"
    intake.accepted(intake.event("goal-proposed", base, mrn=f"MRN-{base}-a"))
    assert intake.push(base) == "in_sync"
    answer = intake.post(intake.event("goal-proposed", base.upper(), mrn=f"MRN-{base}-b"))
    if answer.status_code == 202:
        intake.push(base.upper())
    careplans = [
        r
        for r in intake.fhir.search("CarePlan", {"_count": "1000"})
        if any((i.get("value") or "").lower() == base for i in r.get("identifier", []))
    ]
    values = sorted(i["value"] for r in careplans for i in r["identifier"])
    assert base in values, values  # the first patient's CarePlan still names their plan (was: PLAN-..., theirs lost)
    refused(answer, 409, "conflict")


def test_the_fhir_client_logs_no_mrn_even_at_debug_level(intake, capsys):
    # README: logs carry ids and codes, never MRNs, at every PLANBRIDGE_LOG_LEVEL. urllib3's DEBUG line
    # carries the whole URL, MRN included (`GET /Patient?identifier=...|MRN...`), so service/logs.py
    # keeps urllib3 at INFO or above.
    mrn = f"MRN-PHI-{uuid.uuid4().hex[:8]}"
    plan_id = intake.new_plan(mrn)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("urllib3", "urllib3.connectionpool")}
    try:
        configure("DEBUG", "json")
        assert intake.push(plan_id) == "in_sync"
    finally:
        root.handlers[:], root.level = handlers, level
        for name, was in levels.items():
            logging.getLogger(name).setLevel(was)
    logged = capsys.readouterr().err
    assert "fhir POST" in logged or '"fhir ' in logged  # the service's own DEBUG lines were written
    assert mrn not in logged


# ---- documented behaviour nothing else pins ----


def test_extreme_but_valid_instants_are_kept_ordered_and_taken_by_the_fhir_server(intake):
    """Years 0001 and 9999 at the widest zones FHIR allows are valid dateTimes: accepted, delivered, ordered."""
    plan_id = intake.new_plan()
    key = f"key-{uuid.uuid4().hex}"
    reader = create_app(dataclasses.replace(intake.config, api_keys=(key,)), intake.engine)
    for n, at in enumerate(("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2026-11-29T18:00:00Z")):
        intake.accepted(
            data_event(
                "outcome.recorded",
                plan_id,
                goal_id="goal-walk",
                scale="gbo",
                score=n + 2,
                occasion="session",
                rated_by="patient",
                at=at,
            )
        )
        intake.accepted(
            data_event("checkin.recorded", plan_id, goal_id="goal-walk", checkin_id=f"c{n}", at=at, integer=n)
        )
    outcomes = reader.test_client().get(f"/plans/{plan_id}/outcomes", headers={"X-API-Key": key})
    assert outcomes.status_code == 200
    (goal,) = outcomes.json["goals"]
    assert [r["score"] for r in goal["ratings"]] == [3, 4, 2]  # oldest first, whatever the zone
    assert intake.push(plan_id) == "in_sync"
    assert len(intake.ours("Observation", f"{plan_id}/goal-walk/")) == 6


@pytest.mark.parametrize(
    ("at", "problem"),
    [
        ("2026-02-30T10:00:00Z", "Not a valid"),
        ("2026-11-22T23:59:60Z", "Not a valid"),
        ("2026-11-22T10:00:00", "aware"),
    ],
    ids=["february-30", "leap-second", "no-zone"],
)
def test_impossible_or_zoneless_instants_are_invalid_input(intake, at, problem):
    plan_id = intake.new_plan()
    answer = intake.post(
        data_event("checkin.recorded", plan_id, goal_id="goal-walk", checkin_id="c1", at=at, integer=1)
    )
    (message,) = refused(answer, 400, "invalid-input")["errors"]["data"]["at"]
    assert problem in message


def test_a_webhook_id_refused_as_invalid_input_stores_nothing_so_a_fixed_body_can_use_it(intake):
    """docs/events.md step 1: a bad field is 400 and nothing is stored (unlike a refusal, which is replayed)."""
    plan_id = f"plan-{uuid.uuid4().hex[:10]}"
    broken = intake.event("goal-proposed", plan_id)
    broken["data"]["goal"]["description"] = " "
    refused(intake.post(broken, msg_id="msg_fixed_later"), 400, "invalid-input")
    fixed = intake.post(intake.event("goal-proposed", plan_id), msg_id="msg_fixed_later")
    assert fixed.status_code == 202 and "Idempotent-Replayed" not in fixed.headers
    again = intake.post(intake.event("goal-proposed", plan_id), msg_id="msg_fixed_later")
    assert (again.status_code, again.headers["Idempotent-Replayed"], again.json) == (202, "true", fixed.json)


def test_signatures_other_versions_and_timestamps_at_the_tolerance_edges(intake):
    """Standard Webhooks: several space-separated signatures, unknown versions ignored; 5 minutes either way."""
    body = json.dumps(intake.event("goal-proposed", f"plan-{uuid.uuid4().hex[:10]}")).encode()
    headers = signed(body)
    headers["webhook-signature"] = f"v1a,AAAA v1,AAAA {headers['webhook-signature']}"
    assert intake.client.post("/webhooks/team", data=body, headers=headers).status_code == 202
    now = datetime.now(UTC)
    for seconds, status in ((290, 202), (-290, 202), (310, 401), (-310, 401)):
        event = intake.event("goal-proposed", f"plan-{uuid.uuid4().hex[:10]}")
        body = json.dumps(event).encode()
        answer = intake.client.post(
            "/webhooks/team", data=body, headers=signed(body, SECRET, at=now - timedelta(seconds=seconds))
        )
        assert answer.status_code == status, (seconds, answer.get_data(as_text=True))
        if status == 401:
            assert answer.json["type"] == "urn:planbridge:problem:signature-invalid"
            assert intake.plan(event["data"]["plan_id"]) is None


def test_wrong_methods_and_paths_at_the_webhook_are_problems(intake):
    for method in ("get", "put", "patch", "delete"):
        answer = getattr(intake.client, method)("/webhooks/team")
        refused(answer, 405, "method-not-allowed")
        assert set(answer.headers["Allow"].split(", ")) >= {"POST"}
    body = json.dumps(intake.event("goal-proposed", "plan-x")).encode()
    refused(intake.client.post("/webhooks/team/", data=body, headers=signed(body)), 404, "not-found")
    refused(intake.client.post("/webhooks/teams", data=body, headers=signed(body)), 404, "not-found")


ENVELOPE = b'{"type": "member.left", "timestamp": "2026-11-22T09:30:00Z", "data": '


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (ENVELOPE + b'{"plan_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "body"),
        (ENVELOPE + b'{"plan_id": ' + b"9" * 5000 + b"}}", "body"),
        (b"\xef\xbb\xbf" + ENVELOPE + b"{}}", "body"),
        (ENVELOPE + b'{"plan_id": "p", "member_id": "m", "x": 1}}', "data"),
        (b'{"type": "member.left", "timestamp": 1764000000, "data": {"plan_id": "p", "member_id": "m"}}', "timestamp"),
    ],
    ids=["nested-100k-deep", "5000-digit-number", "utf8-bom", "unknown-field", "timestamp-as-number"],
)
def test_hostile_json_is_invalid_input_naming_where(intake, body, where):
    answer = intake.client.post("/webhooks/team", data=body, headers=signed(body))
    assert where in refused(answer, 400, "invalid-input")["errors"]
