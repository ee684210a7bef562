"""`planbridge validate` and `convert` with other people's FHIR, black-box: the installed command on files and
stdin, the local FHIR server (which answers as HAPI / Medplum do) as the oracle of what is valid R4."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.cli_support import run_planbridge
from tests.support import MRN_SYSTEM

BIN = Path(sys.executable).parent / "planbridge"
BASE = "https://planbridge.test/blackbox-mapping/id"
EHR = "http://ehr.example.org/fhir"

PATIENT = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": MRN_SYSTEM, "value": "MRN-4711"}]}
GOAL = {
    "resourceType": "Goal",
    "id": "g1",
    "lifecycleStatus": "active",
    "description": {"text": "Walk to the park again"},
    "subject": {"reference": "Patient/p1"},
}
CAREPLAN = {
    "resourceType": "CarePlan",
    "id": "cp1",
    "status": "active",
    "intent": "plan",
    "subject": {"reference": "Patient/p1"},
    "goal": [{"reference": "Goal/g1"}],
}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"text": "Steps a day"},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-03-01T09:00:00Z",
    "valueInteger": 4200,
}
PRACTITIONER = {"resourceType": "Practitioner", "id": "pr1", "name": [{"text": "Dr Robin Lee"}]}
CARETEAM = {
    "resourceType": "CareTeam",
    "id": "ct1",
    "subject": {"reference": "Patient/p1"},
    "participant": [{"member": {"reference": "Practitioner/pr1"}}],
}


@pytest.fixture
def env():
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    values.update(PLANBRIDGE_IDENTIFIER_BASE=BASE, PLANBRIDGE_MRN_SYSTEM=MRN_SYSTEM)
    return values


def run(env, *args: str, document: object) -> subprocess.CompletedProcess:
    stdin = json.dumps(document, ensure_ascii=False)
    return run_planbridge([*args, "-"], env=env, input=stdin, timeout=60)


def searchset(*resources: dict) -> dict:
    """A search result as HAPI gives it: absolute fullUrls, relative references."""
    entries = [{"fullUrl": f"{EHR}/{r['resourceType']}/{r['id']}", "resource": copy.deepcopy(r)} for r in resources]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def with_(resource: dict, **changes) -> dict:
    return {**copy.deepcopy(resource), **changes}


def round_trip(env, bundle: dict) -> tuple[dict, dict]:
    """Return the plan `convert from-fhir` reads from the Bundle and the Bundle `convert to-fhir` writes for it."""
    read = run(env, "convert", "from-fhir", document=bundle)
    assert read.returncode == 0, read.stderr
    plan = json.loads(read.stdout)
    written = run(env, "convert", "to-fhir", document=plan)
    assert written.returncode == 0, written.stderr
    return plan, json.loads(written.stdout)


def resources(bundle: dict, rtype: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def server_accepts(base_url: str, document: dict) -> bool:
    """Whether the local FHIR server (HAPI's and Medplum's answers) takes the resource or Bundle, once it holds the
    EHR's Patient: planbridge names the Patient it read by the EHR's reference (`Patient/p1`) and never writes it,
    and the server refuses a reference to a resource it does not hold (HAPI-1094)."""
    headers = {"Content-Type": "application/fhir+json"}
    held = requests.put(f"{base_url}/Patient/{PATIENT['id']}", json=PATIENT, headers=headers, timeout=30)
    assert held.status_code in (200, 201), held.text
    kind = document.get("type") if document["resourceType"] == "Bundle" else None
    url = base_url if kind in ("transaction", "batch") else f"{base_url}/{document['resourceType']}"
    answer = requests.post(url, json=document, headers={"Content-Type": "application/fhir+json"}, timeout=30)
    assert answer.status_code < 500, answer.text
    return answer.status_code < 300


# ---- a Bundle entry that holds only its resource -------------------------------------------------------------


def test_a_bundle_whose_entries_hold_only_their_resource_is_valid_and_converts(env, fhir_base_url):
    """FHIR makes fullUrl optional: a hand-built collection of resources is valid, but planbridge took an entry
    with only a `resource` for an empty object and refused the Bundle (validate and convert alike)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": copy.deepcopy(r)} for r in (CAREPLAN, GOAL, PATIENT)],
    }
    assert server_accepts(fhir_base_url, bundle)
    checked = run(env, "validate", document=bundle)
    assert checked.returncode == 0, checked.stderr
    assert "empty object" not in checked.stdout
    plan, _ = round_trip(env, bundle)
    assert [g["description"]["text"] for g in plan["goals"]] == ["Walk to the park again"]
    assert plan["patient"]["mrn"] == "MRN-4711"


# ---- invariants the server refuses and planbridge let through -------------------------------------------------


def _entry(resource: dict, **more) -> dict:
    return {"fullUrl": f"{EHR}/{resource['resourceType']}/{resource['id']}", "resource": resource, **more}


INVALID = {
    "bdl-1 total in a collection": (
        {"resourceType": "Bundle", "type": "collection", "total": 1, "entry": [_entry(GOAL)]},
        "Bundle.total",
    ),
    "bdl-2 search in a collection": (
        {"resourceType": "Bundle", "type": "collection", "entry": [_entry(GOAL, search={"mode": "match"})]},
        "Bundle.entry[0].search",
    ),
    "bdl-3 transaction entry without request": (
        {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": GOAL}]},
        "Bundle.entry[0].request",
    ),
    "bdl-3 request in a collection": (
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [_entry(GOAL, request={"method": "PUT", "url": "Goal/g1"})],
        },
        "Bundle.entry[0].request",
    ),
    "bdl-4 response in a collection": (
        {"resourceType": "Bundle", "type": "collection", "entry": [_entry(GOAL, response={"status": "201"})]},
        "Bundle.entry[0].response",
    ),
    "bdl-5 entry with only a link": (
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"link": [{"relation": "self", "url": f"{EHR}/Goal/g1"}]}],
        },
        "Bundle.entry[0]",
    ),
    "bdl-7 two entries with one fullUrl": (
        {"resourceType": "Bundle", "type": "collection", "entry": [_entry(GOAL), _entry(GOAL)]},
        "Bundle.entry[1].fullUrl",
    ),
    "bdl-8 version-specific fullUrl": (
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"fullUrl": f"{EHR}/Goal/g1/_history/2", "resource": GOAL}],
        },
        "Bundle.entry[0].fullUrl",
    ),
    "bdl-9 document without identifier": ({"resourceType": "Bundle", "type": "document"}, "Bundle.identifier"),
    "dom-2 contained in contained": (
        with_(
            GOAL,
            contained=[
                with_(GOAL, id="inner", contained=[{"resourceType": "Practitioner", "id": "p", "active": True}])
            ],
            addresses=[{"reference": "#inner"}],
        ),
        "Goal.contained[0].contained",
    ),
    "dom-4 contained with a versionId": (
        with_(
            GOAL,
            contained=[{"resourceType": "Practitioner", "id": "p", "meta": {"versionId": "3"}, "active": True}],
            expressedBy={"reference": "#p"},
        ),
        "Goal.contained[0].meta.versionId",
    ),
    "dom-5 contained with a security label": (
        with_(
            GOAL,
            contained=[{"resourceType": "Practitioner", "id": "p", "meta": {"security": [{"code": "R"}]}}],
            expressedBy={"reference": "#p"},
        ),
        "Goal.contained[0].meta.security",
    ),
    "obs-3 reference range with neither bound nor text": (
        with_(OBSERVATION, referenceRange=[{"type": {"text": "normal"}}]),
        "Observation.referenceRange[0]",
    ),
    "obs-6 a value and a dataAbsentReason": (
        with_(OBSERVATION, dataAbsentReason={"text": "asked, not answered"}),
        "Observation.dataAbsentReason",
    ),
    "pat-1 contact with no details": (
        with_(PATIENT, contact=[{"gender": "female"}]),
        "Patient.contact[0]",
    ),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_what_the_fhir_server_refuses_validate_refuses_and_names(env, fhir_base_url, name):
    document, path = INVALID[name]
    assert not server_accepts(fhir_base_url, copy.deepcopy(document)), "the oracle takes it: not invalid"
    checked = run(env, "validate", document=document)
    assert checked.returncode == 1, checked.stdout
    issues = json.loads(checked.stdout)["issue"]
    rule = name.split()[0]
    assert any(
        i["severity"] == "error" and i.get("expression") == [path] and rule in i["diagnostics"] for i in issues
    ), issues


def test_a_bundle_around_a_careplan_breaking_an_invariant_is_not_converted(env, fhir_base_url):
    bundle = searchset(CAREPLAN, GOAL, PATIENT)
    bundle["total"] = 1
    bundle["entry"].append(_entry(with_(OBSERVATION, dataAbsentReason={"text": "x"})))
    assert not server_accepts(fhir_base_url, with_(bundle, type="collection", total=None) | {"total": 1})
    read = run(env, "convert", "from-fhir", document=bundle)
    assert read.returncode == 1
    assert "obs-6" in read.stderr and "Bundle.entry[3].resource.dataAbsentReason" in read.stderr


def test_a_valid_searchset_with_total_and_search_modes_stays_valid(env, fhir_base_url):
    """The other side of the invariants: what a HAPI search answers (total, search.mode) is valid."""
    bundle = searchset(CAREPLAN, GOAL, PATIENT)
    bundle["total"] = 1
    for i, entry in enumerate(bundle["entry"]):
        entry["search"] = {"mode": "match" if i == 0 else "include"}
    checked = run(env, "validate", document=bundle)
    assert checked.returncode == 0, checked.stderr


# ---- the same Observation named twice by a Goal ----------------------------------------------------------------


def test_a_goal_naming_one_observation_twice_converts_to_a_transaction_the_server_takes(env, fhir_base_url):
    """Goal.outcomeReference may name one Observation twice (valid FHIR). planbridge read it as two check-ins
    with one id: convert refused the Bundle with a rule about the plan's check-in ids the user never wrote,
    and the mapping wrote two Observation entries under one fullUrl (bdl-7), which servers refuse."""
    twice = [{"reference": "Observation/o1"}, {"reference": "Observation/o1"}]
    bundle = searchset(CAREPLAN, with_(GOAL, outcomeReference=twice), PATIENT, OBSERVATION)
    assert run(env, "validate", document=bundle).returncode == 0
    plan, written = round_trip(env, bundle)
    assert [c["id"] for c in plan["goals"][0]["check_ins"]] == ["obs-o1"]
    assert len(resources(written, "Observation")) == 1
    full_urls = [e["fullUrl"] for e in written["entry"]]
    assert len(full_urls) == len(set(full_urls))
    (goal,) = resources(written, "Goal")
    (observation_url,) = [e["fullUrl"] for e in written["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert [r["reference"] for r in goal["outcomeReference"]] == [observation_url, observation_url]
    assert server_accepts(fhir_base_url, written)


# ---- references that carry a display ---------------------------------------------------------------------------


def test_a_careplan_goal_reference_with_a_display_is_read_as_the_goal(env, fhir_base_url):
    """EHRs put a `display` on references. CarePlan.goal `{"reference": "Goal/g1", "display": ...}` left the
    Goal out of the plan altogether (no goals to agree on), though the Goal was in the Bundle."""
    careplan = with_(CAREPLAN, goal=[{"reference": "Goal/g1", "display": "Walk to the park"}])
    plan, written = round_trip(env, searchset(careplan, GOAL, PATIENT))
    assert [g["description"]["text"] for g in plan["goals"]] == ["Walk to the park again"]
    assert "goal" not in plan.get("careplan_extra", {})
    (goal_url,) = [e["fullUrl"] for e in written["entry"] if e["resource"]["resourceType"] == "Goal"]
    (written_careplan,) = resources(written, "CarePlan")
    assert written_careplan["goal"] == [{"reference": goal_url, "display": "Walk to the park"}]
    assert server_accepts(fhir_base_url, written)


def test_a_careplan_careteam_reference_with_a_display_is_read_as_the_team(env):
    careplan = with_(CAREPLAN, careTeam=[{"reference": "CareTeam/ct1", "display": "Knee team"}])
    plan, written = round_trip(env, searchset(careplan, GOAL, PATIENT, CARETEAM, PRACTITIONER))
    assert [m["kind"] for m in plan["team"] if m["in_team"]] == ["patient", "practitioner"]
    (team,) = resources(written, "CareTeam")
    (team_url,) = [e["fullUrl"] for e in written["entry"] if e["resource"]["resourceType"] == "CareTeam"]
    assert [p["member"]["reference"] for p in team["participant"]] == ["Practitioner/pr1"]
    (written_careplan,) = resources(written, "CarePlan")
    assert written_careplan["careTeam"] == [{"reference": team_url, "display": "Knee team"}]


# ---- a CarePlan about a Group ----------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["Group/gr1", f"{EHR}/Group/gr1"])
def test_a_careplan_about_a_group_is_refused_not_read_as_a_patient(env, subject):
    """CarePlan.subject may be a Group. planbridge took the Group's identifier for the patient's MRN (so a push
    would create a Patient under the Group's identifier); a plan is about one Patient: refused, by its path."""
    group = {
        "resourceType": "Group",
        "id": "gr1",
        "type": "person",
        "actual": True,
        "identifier": [{"system": "http://example.org/groups", "value": "G-7"}],
    }
    careplan = with_(CAREPLAN, subject={"reference": subject})
    bundle = searchset(careplan, with_(GOAL, subject={"reference": "Group/gr1"}), group)
    for command in (("validate",), ("convert", "from-fhir")):
        result = run(env, *command, document=bundle)
        assert result.returncode == 1, result.stdout
        assert "CarePlan.subject" in result.stderr and "Group" in result.stderr
        assert "G-7" not in result.stdout


# ---- one person named by two forms of reference ------------------------------------------------------------------


def test_one_practitioner_named_two_ways_is_one_member_and_one_entry(env, fhir_base_url):
    """In a transaction (Synthea's shape) the CareTeam names the Practitioner by its `urn:uuid:` fullUrl and the
    Goal by `Practitioner/{id}`. planbridge made two members of the one person, and `convert to-fhir` wrote two
    conditional creates under one fullUrl (bdl-7), exit 0: a Bundle servers refuse."""
    urn = {name: f"urn:uuid:9b2f4c1e-0000-4000-8000-00000000000{i}" for i, name in enumerate("pactx", start=1)}
    practitioner = {
        "resourceType": "Practitioner",
        "id": "pr9",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1093817465"}],
        "name": [{"text": "Dr Robin Lee"}],
    }
    team = {
        "resourceType": "CareTeam",
        "subject": {"reference": urn["p"]},
        "participant": [{"role": [{"text": "GP"}], "member": {"reference": urn["a"]}}],
    }
    goal = {**GOAL, "subject": {"reference": urn["p"]}, "expressedBy": {"reference": "Practitioner/pr9"}}
    goal.pop("id")
    careplan = {
        **CAREPLAN,
        "subject": {"reference": urn["p"]},
        "careTeam": [{"reference": urn["c"]}],
        "goal": [{"reference": urn["t"]}],
    }
    careplan.pop("id")
    patient = {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": "MRN-two-ways"}]}
    entries = [(urn["p"], patient), (urn["a"], practitioner), (urn["c"], team), (urn["t"], goal), (urn["x"], careplan)]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": url, "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for url, r in entries
        ],
    }
    plan, written = round_trip(env, bundle)
    (member,) = [m for m in plan["team"] if m["kind"] == "practitioner"]
    assert member["in_team"] is True and plan["goals"][0]["proposed_by"] == member["id"]
    full_urls = [e["fullUrl"] for e in written["entry"]]
    assert len(full_urls) == len(set(full_urls))
    assert len(resources(written, "Practitioner")) == 1
    assert run(env, "validate", document=written).returncode == 0
    assert server_accepts(fhir_base_url, written)


# ---- a transaction's urn:uuid references to what planbridge writes again --------------------------------------


def _references(element: object) -> list[str]:
    if isinstance(element, dict):
        own = [element["reference"]] if isinstance(element.get("reference"), str) else []
        return own + [r for v in element.values() for r in _references(v)]
    if isinstance(element, list):
        return [r for v in element for r in _references(v)]
    return []


def test_a_kept_urn_reference_follows_the_goal_to_its_new_full_url(env, fhir_base_url):
    """A transaction (Synthea's shape) names its Goal by `urn:uuid:` placeholders. A reference planbridge keeps
    as it came (an activity's goal with a display) stayed the input's placeholder, which the written Bundle
    no longer holds: a dangling `urn:uuid:` that HAPI refuses ("Unable to satisfy placeholder ID")."""
    urn = {name: f"urn:uuid:5e1d0c7a-0000-4000-8000-00000000000{i}" for i, name in enumerate("pgc", start=1)}
    patient = {**PATIENT, "identifier": [{"system": MRN_SYSTEM, "value": "MRN-urn-goal"}]}
    goal = {**GOAL, "subject": {"reference": urn["p"]}}
    careplan = {
        **CAREPLAN,
        "subject": {"reference": urn["p"]},
        "goal": [{"reference": urn["g"]}],
        "activity": [{"detail": {"status": "in-progress", "goal": [{"reference": urn["g"], "display": "Walk"}]}}],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urn[k], "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for k, r in (("p", patient), ("g", goal), ("c", careplan))
        ],
    }
    _, written = round_trip(env, bundle)
    full_urls = {e["fullUrl"] for e in written["entry"]}
    (goal_url,) = [e["fullUrl"] for e in written["entry"] if e["resource"]["resourceType"] == "Goal"]
    (written_careplan,) = resources(written, "CarePlan")
    assert written_careplan["activity"][0]["detail"]["goal"] == [{"reference": goal_url, "display": "Walk"}]
    dangling = [r for r in _references(written) if r.startswith("urn:") and r not in full_urls]
    assert dangling == []
    assert server_accepts(fhir_base_url, written)


# ---- CarePlans with no id --------------------------------------------------------------------------------------


def _new_careplan_transaction(mrn: str, words: str, number: int) -> dict:
    urn = {k: f"urn:uuid:7a3c{number:04d}-0000-4000-8000-00000000000{i}" for i, k in enumerate("pgc", start=1)}
    patient = {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": mrn}]}
    goal = {**GOAL, "description": {"text": words}, "subject": {"reference": urn["p"]}}
    goal.pop("id")
    careplan = {**CAREPLAN, "subject": {"reference": urn["p"]}, "goal": [{"reference": urn["g"]}]}
    careplan.pop("id")
    entries = (("p", patient), ("g", goal), ("c", careplan))
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urn[k], "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for k, r in entries
        ],
    }


def test_two_new_careplans_of_two_patients_are_two_plans(env, tmp_path):
    """A transaction creating a CarePlan gives it no id. Every such CarePlan was read as the plan
    `careplan-new`, so `plans import` of a second patient's plan was refused as existing, and with
    `--replace` it replaced the first patient's plan with the second's."""
    first = _new_careplan_transaction("MRN-first", "Walk to the park", 1)
    second = _new_careplan_transaction("MRN-second", "Swim on Fridays", 2)
    ids = [json.loads(run(env, "convert", "from-fhir", document=b).stdout)["id"] for b in (first, second)]
    assert ids[0] != ids[1]
    assert ids[0] == json.loads(run(env, "convert", "from-fhir", document=first).stdout)["id"]  # the same again
    db = {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'planbridge.db'}"}
    assert run_planbridge(["db", "upgrade"], env=db, timeout=120, text=False).returncode == 0
    imported = [run(db, "plans", "import", document=b) for b in (first, second)]
    assert [r.returncode for r in imported] == [0, 0], [r.stderr for r in imported]
    assert [r.stdout.strip() for r in imported] == ids
