"""FHIR -> plan never crashes on FHIR that is structurally valid.

The fuzzer takes the EHR Bundles in fixtures/fhir and the transaction Bundles planbridge writes for
fixtures/plans, and applies a few random mutations that keep the JSON shape of FHIR: an element or
sub-extension deleted, an array item duplicated, dropped or moved, an object emptied, cut to one of
its elements or replaced by an extension alone (which the model cannot hold), a reference pointed
elsewhere, an extension's value[x] dropped or of another type, a code or URL swapped. When
`validate_bundle` accepts the result, `bundle_to_plan` returns a plan or raises a PlanbridgeError
naming the element: never a KeyError, TypeError, AttributeError, IndexError or ValueError. A plan
read that way is written back (`plan_to_bundle`) under the same rule, and what it writes passes
`validate_bundle` itself: planbridge never writes invalid FHIR.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappings import codes
from mappings.bundle import bundle_to_plan, plan_to_bundle
from mappings.fhir import validate_bundle
from service.domain import codec
from service.domain.errors import MappingError, PlanbridgeError
from service.domain.model import Plan
from tests.support import FIXTURES, MRN_SYSTEM

BASE = "https://planbridge.example.org/id"


def _sources() -> dict[str, dict]:
    out = {p.stem: json.loads(p.read_text()) for p in sorted((FIXTURES / "fhir").glob("ehr-*.json"))}
    for path in sorted((FIXTURES / "plans").glob("*.json")):
        plan = codec.from_dict(Plan, json.loads(path.read_text()))
        out[f"plan:{path.stem}"] = plan_to_bundle(plan, BASE, MRN_SYSTEM)
    return out


SOURCES = _sources()

# ---- mutations ----------------------------------------------------------------------------------

Path = tuple[Any, ...]
CODE_KEYS = {"code", "valueCode", "status", "lifecycleStatus", "intent", "use", "comparator"}
SUB_URLS = ["individual", "status", "priority", "type", "target", "every", "next", "date", "note", "other"]
EXTENSION_URLS = [
    codes.GOAL_ACCEPTANCE,
    codes.GOAL_RELATIONSHIP,
    codes.PERTAINS_TO_GOAL,
    codes.ACTIVITY_TITLE,
    codes.EXT_WHAT_MATTERS,
    codes.EXT_GOAL_SETTING,
    codes.EXT_REVIEW,
    codes.EXT_BARRIER,
]
VALUES: list[dict[str, Any]] = [
    {"valueString": "something else"},
    {"valueCode": "unknown-code"},
    {"valueBoolean": True},
    {"valueInteger": 3},
    {"valueDate": "2026-01-01"},
    {"valueReference": {"reference": "Organization/org-1"}},
    {"valueReference": {"display": "someone"}},
    {"valueCodeableConcept": {"text": "free text"}},
    {"valueDuration": {"value": 2, "unit": "wk"}},
    {"valueQuantity": {"unit": "kg"}},
]
OTHER_EXTENSION = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
OTHER_REFERENCES = [
    "Organization/org-1",
    "PractitionerRole/pr-1",
    "Goal/not-in-the-bundle",
    "Observation/not-in-the-bundle",
    "Practitioner/not-in-the-bundle",
    "CareTeam/not-in-the-bundle",
    "urn:uuid:0b7e4a52-5a32-4a43-9a8e-6c2a0e7f6a10",
    "#contained",
]


def _nodes(value: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    """Return (path, value) for the value and everything inside it."""
    out = [(path, value)]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _nodes(item, (*path, i))
    return out


def _at(root: Any, path: Path) -> Any:
    for step in path:
        root = root[step]
    return root


def _is_extension(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and "url" in value
        and ("extension" in value or any(k.startswith("value") for k in value))
    )


def _read_by_planbridge(bundle: dict, path: Path, ext: dict) -> bool:
    """Tell whether an extension is one planbridge reads, or a part of one."""
    parent = _at(bundle, path[:-2]) if len(path) > 2 and path[-2] == "extension" else {}
    return ext["url"] in EXTENSION_URLS or (isinstance(parent, dict) and parent.get("url") in EXTENSION_URLS)


def _value_key(ext: dict) -> str | None:
    return next((k for k in ext if k.startswith("value")), None)


def _spots(bundle: dict, kind: str) -> list[Path]:
    """Return the paths a mutation of this kind can apply to (paths inside entry resources)."""
    nodes = [(p, v) for p, v in _nodes(bundle) if len(p) >= 3 and p[0] == "entry" and p[2] == "resource"]
    if kind == "delete":
        return [p for p, _ in nodes if isinstance(p[-1], str) and p[-1] != "resourceType" and len(p) > 3]
    if kind in ("drop-item", "duplicate-item"):
        return [p for p, _ in nodes if isinstance(p[-1], int)]
    if kind == "reorder":
        return [p for p, v in nodes if isinstance(v, list) and len(v) > 1]
    if kind in ("empty-object", "only-extension"):
        return [p for p, v in nodes if isinstance(v, dict) and v and len(p) > 3]
    if kind == "keep-one-key":
        return [p for p, v in nodes if isinstance(v, dict) and len(v) > 1 and len(p) > 3]
    if kind in ("retarget", "drop-reference"):
        return [p for p, v in nodes if p[-1] == "reference" and isinstance(v, str)]
    if kind in ("drop-value", "retype-value"):  # planbridge's extensions and their parts, where it reads values
        return [p for p, v in nodes if _is_extension(v) and _read_by_planbridge(bundle, p, v)]
    if kind == "unknown-code":
        return [p for p, v in nodes if p[-1] in CODE_KEYS and isinstance(v, str)]
    if kind == "rename-url":
        return [p for p, v in nodes if p[-1] == "url" and len(p) > 4 and isinstance(v, str)]
    if kind == "drop-identifier-part":
        return [p for p, v in nodes if "identifier" in p[-3:-1] and p[-1] in ("value", "system")]
    raise AssertionError(kind)


KINDS = [
    "delete",
    "drop-item",
    "duplicate-item",
    "reorder",
    "empty-object",
    "only-extension",
    "keep-one-key",
    "retarget",
    "drop-reference",
    "drop-value",
    "retype-value",
    "unknown-code",
    "rename-url",
    "drop-identifier-part",
]


def _mutate(bundle: dict, kind: str, path: Path, draw: st.DrawFn) -> str:
    """Apply one mutation in place; return a description of it for the failure report."""
    parent, key = _at(bundle, path[:-1]), path[-1]
    where = "/".join(str(p) for p in path)
    if kind in ("delete", "drop-item", "drop-reference", "drop-identifier-part"):
        del parent[key]
    elif kind == "duplicate-item":
        parent.insert(key, copy.deepcopy(parent[key]))
    elif kind == "reorder":
        items = parent[key]
        parent[key] = draw(st.permutations(items))
    elif kind == "empty-object":
        parent[key] = {}
    elif kind == "only-extension":  # an element that says nothing planbridge reads (an EHR's data-absent-reason, say)
        parent[key] = {"extension": [copy.deepcopy(OTHER_EXTENSION)]}
    elif kind == "keep-one-key":
        kept = draw(st.sampled_from(sorted(parent[key])))
        parent[key] = {kept: parent[key][kept]}
    elif kind == "retarget":
        urls = [e.get("fullUrl") for e in bundle.get("entry", []) if isinstance(e, dict) and e.get("fullUrl")]
        parent[key] = draw(st.sampled_from(sorted(set(urls)) + OTHER_REFERENCES))
    elif kind in ("drop-value", "retype-value"):
        ext = parent[key]
        if _value_key(ext):
            del ext[_value_key(ext)]
        if kind == "retype-value":
            ext.update(copy.deepcopy(draw(st.sampled_from(VALUES))))
    elif kind == "unknown-code":
        parent[key] = "zz-unknown"
    elif kind == "rename-url":
        parent[key] = draw(st.sampled_from(SUB_URLS + EXTENSION_URLS))
    return f"{kind} {where}"


@st.composite
def mutated_bundles(draw: st.DrawFn) -> tuple[dict, list[str]]:
    bundle = copy.deepcopy(SOURCES[draw(st.sampled_from(sorted(SOURCES)))])
    done = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(KINDS))
        spots = _spots(bundle, kind)
        if spots:
            done.append(_mutate(bundle, kind, draw(st.sampled_from(spots)), draw))
    return bundle, done


def _read_and_write_back(bundle: dict) -> None:
    """Read a Bundle validate_bundle accepted; a refusal must be a PlanbridgeError naming what is wrong."""
    try:
        plan = bundle_to_plan(copy.deepcopy(bundle), BASE, MRN_SYSTEM)
    except PlanbridgeError as exc:
        assert exc.data.get("errors"), f"{exc.detail}: no element named"
        return
    try:
        written = plan_to_bundle(plan, BASE, MRN_SYSTEM)
    except PlanbridgeError as exc:
        assert exc.data.get("errors"), f"{exc.detail}: no element named"
        return
    try:
        validate_bundle(written)
    except MappingError as exc:
        raise AssertionError(f"planbridge wrote invalid FHIR: {exc.data['errors']}") from None


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_bundles())
def test_structurally_valid_fhir_never_crashes_the_mapping(case):
    bundle, done = case
    try:
        validate_bundle(bundle)
    except MappingError as exc:
        assert exc.data["errors"] and all(str(p).startswith("Bundle") for p in exc.data["errors"]), done
        return
    _read_and_write_back(bundle)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_unmutated_sources_read_and_write_back(name):
    bundle = copy.deepcopy(SOURCES[name])
    validate_bundle(bundle)
    _read_and_write_back(bundle)


# ---- regressions: one per kind of crash the fuzzer found ----------------------------------------

ORG = {"reference": "Organization/org-1"}


def _first(bundle: dict, rtype: str, n: int = 0) -> dict:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype][n]


def _ext(element: dict, url: str) -> dict:
    return next(e for e in element["extension"] if e["url"] == url)


def _contains(tree: Any, item: Any) -> bool:
    if tree == item:
        return True
    if isinstance(tree, dict):
        return any(_contains(v, item) for v in tree.values())
    return isinstance(tree, list) and any(_contains(v, item) for v in tree)


def _extension(bundle: dict, url: str) -> dict:
    """Return the first extension with this URL on any resource of the Bundle."""
    return next(e for entry in bundle["entry"] for e in entry["resource"].get("extension", []) if e["url"] == url)


def _sub(ext: dict, url: str) -> dict:
    return next(e for e in ext["extension"] if e["url"] == url)


def _value(element: dict, **value: Any) -> None:
    """Replace an extension's value[x] (by nothing when no value is given)."""
    for key in [k for k in element if k.startswith("value")]:
        del element[key]
    element.update(value)


def _activity_title(bundle: dict) -> dict:
    activity = next(a for a in _first(bundle, "CarePlan")["activity"] if "extension" in a)
    return _ext(activity, codes.ACTIVITY_TITLE)


def _our_plan_identifier(bundle: dict) -> dict:
    return next(i for i in _first(bundle, "CarePlan")["identifier"] if i["system"] == f"{BASE}/plan")


def _careplan(bundle: dict) -> dict:
    return _first(bundle, "CarePlan")


def _silent(bundle: dict, rtype: str, key: str) -> None:
    _first(bundle, rtype)[key] = {"extension": [{"url": "http://ehr.example/ext/x", "valueString": "y"}]}


def _unread_goal_reference(bundle: dict) -> dict:
    """The CarePlan's reference to a Goal the plan cannot hold is kept, but not as the `urn:uuid:` it came as: the
    written Bundle has no entry under it (a server refuses the transaction), so it names the Goal by its identifier."""
    return {"type": "Goal", "identifier": _first(bundle, "Goal")["identifier"][0]}


def _retarget_careteam(careplan: dict) -> dict:
    careplan["careTeam"] = [{"reference": careplan["goal"][0]["reference"]}]
    return careplan["careTeam"][0]


def _duplicate_participant(careteam: dict) -> dict:
    careteam["participant"].append(copy.deepcopy(careteam["participant"][0]))
    return careteam["participant"][-1]


def _absent(element: dict) -> dict:
    """Give a datatype an extension the model cannot hold (planbridge used to drop it, or write `{}`)."""
    element.setdefault("extension", []).append(copy.deepcopy(OTHER_EXTENSION))
    return element


def _only_absent(element: dict) -> None:
    """Make a datatype hold nothing but an extension."""
    element.clear()
    _absent(element)


def _first_coding(concept: dict) -> dict:
    return concept["coding"][0]


ACCEPTANCE, RELATIONSHIP, REVIEW = codes.GOAL_ACCEPTANCE, codes.GOAL_RELATIONSHIP, codes.EXT_REVIEW
# case: (source Bundle, find an element, change it in place); the changed element (or the one `change`
# returns) must be written back as it is
KEPT: dict[str, tuple[str, Any, Any]] = {
    "goal-acceptance individual without valueReference": (
        "plan:minimal",
        lambda b: _extension(b, ACCEPTANCE),
        lambda e: _value(_sub(e, "individual"), valueString="the patient"),
    ),
    "goal-acceptance individual an Organization": (
        "ehr-mcc-careplan",
        lambda b: _extension(b, ACCEPTANCE),
        lambda e: _value(_sub(e, "individual"), valueReference=ORG),
    ),
    "goal-acceptance priority without valueCodeableConcept": (
        "ehr-mcc-careplan",
        lambda b: _extension(b, ACCEPTANCE),
        lambda e: _value(_sub(e, "priority"), valueCode="high"),
    ),
    "goal-acceptance with an unknown part": (
        "plan:minimal",
        lambda b: _extension(b, ACCEPTANCE),
        lambda e: e["extension"].append({"url": "reason", "valueString": "x"}),
    ),
    "goal-relationship to a Goal not in the Bundle": (
        "plan:diabetes-revised-goal",
        lambda b: _extension(b, RELATIONSHIP),
        lambda e: _sub(e, "target")["valueReference"].update(reference="Goal/elsewhere"),
    ),
    "goal-relationship to a Practitioner": (
        "plan:diabetes-revised-goal",
        lambda b: _extension(b, RELATIONSHIP),
        lambda e: _sub(e, "target")["valueReference"].update(reference="Practitioner/p-1"),
    ),
    "goal-barrier with an element id": (
        "plan:alcohol-disagreement",
        lambda b: _extension(b, codes.EXT_BARRIER),
        lambda e: e.update(id="b1"),
    ),
    "CarePlan identifier of ours without value": (
        "plan:minimal",
        _our_plan_identifier,
        lambda i: i.__delitem__("value"),
    ),
    "activity title without valueString": (
        "plan:goal-setting-declined",
        _activity_title,
        lambda e: _value(e, valueMarkdown="*walk*"),
    ),
    "plan-review every without valueDuration": (
        "plan:goal-setting-declined",
        lambda b: _extension(b, REVIEW),
        lambda e: _value(_sub(e, "every"), valueString="monthly"),
    ),
    "goal-setting without status": (
        "plan:goal-setting-declined",
        lambda b: _extension(b, codes.EXT_GOAL_SETTING),
        lambda e: e.update(extension=[s for s in e["extension"] if s["url"] != "status"]),
    ),
    "what-matters without valueString": (
        "plan:goal-setting-declined",
        lambda b: _extension(b, codes.EXT_WHAT_MATTERS),
        lambda e: _value(e, valueMarkdown="*family*"),
    ),
    "Goal whose description has neither text nor coding": (
        "plan:minimal",
        lambda b: _silent(b, "Goal", "description") or _unread_goal_reference(b),
        lambda ref: None,
    ),
    "Observation whose code has neither text nor coding": (
        "ehr-checkins",
        lambda b: _silent(b, "Observation", "code") or _first(b, "Goal")["outcomeReference"][0],
        lambda ref: None,
    ),
    "Goal.target whose measure has an extension": (
        "plan:knee-rehabilitation",
        lambda b: _first(b, "Goal")["target"][0],
        lambda t: _absent(t["measure"]),
    ),
    "Goal.target whose measure is only an extension": (
        "plan:knee-rehabilitation",
        lambda b: _first(b, "Goal")["target"][0],
        lambda t: _only_absent(t["measure"]),
    ),
    "Goal.target whose dueDuration has an element id": (
        "ehr-targets-and-extensions",
        lambda b: next(t for t in _first(b, "Goal")["target"] if "dueDuration" in t),
        lambda t: t["dueDuration"].update(id="d1"),
    ),
    "Goal.priority with an extension": ("plan:knee-rehabilitation", lambda b: _first(b, "Goal")["priority"], _absent),
    "Goal.category coding only an extension": (
        "plan:knee-rehabilitation",
        lambda b: _first(b, "Goal")["category"][0],
        lambda c: _only_absent(_first_coding(c)),
    ),
    "CarePlan.category with an element id": (
        "plan:knee-rehabilitation",
        lambda b: _careplan(b)["category"][0],
        lambda c: c.update(id="c1"),
    ),
    "activity detail code with an extension": (
        "plan:knee-rehabilitation",
        lambda b: next(a["detail"]["code"] for a in _careplan(b)["activity"] if "code" in a["detail"]),
        _absent,
    ),
    "CareTeam role coding only an extension": (
        "ehr-mcc-careplan",
        lambda b: next(p["role"] for p in _first(b, "CareTeam")["participant"] if "role" in p),
        lambda roles: _only_absent(_first_coding(roles[0])),
    ),
    "check-in valueQuantity with an extension": (
        "plan:knee-rehabilitation",
        lambda b: _first(b, "Observation")["valueQuantity"],
        _absent,
    ),
    "check-in rating with an element id": (
        "plan:young-person-anxiety",
        lambda b: _first(b, "Observation")["valueCodeableConcept"],
        lambda c: c.update(id="r1"),
    ),
    "goal-acceptance priority with an extension": (
        "ehr-mcc-careplan",
        lambda b: _extension(b, ACCEPTANCE),
        lambda e: _absent(_sub(e, "priority")["valueCodeableConcept"]),
    ),
    "plan-review every with an extension": (
        "plan:goal-setting-declined",
        lambda b: _extension(b, REVIEW),
        lambda e: _absent(_sub(e, "every")["valueDuration"]),
    ),
    "CarePlan.careTeam naming a Goal": ("plan:minimal", _careplan, _retarget_careteam),
    "a person on the CareTeam twice": ("ehr-mcc-careplan", lambda b: _first(b, "CareTeam"), _duplicate_participant),
}


@pytest.mark.parametrize("case", sorted(KEPT))
def test_what_the_model_cannot_hold_is_written_back_as_it_came(case):
    source, find, change = KEPT[case]
    bundle = copy.deepcopy(SOURCES[source])
    element = find(bundle)
    kept = copy.deepcopy(change(element) or element)
    validate_bundle(bundle)
    plan = bundle_to_plan(copy.deepcopy(bundle), BASE, MRN_SYSTEM)
    written = plan_to_bundle(plan, BASE, MRN_SYSTEM)
    assert _contains(written, kept)
    validate_bundle(written)


def test_an_extension_with_neither_value_nor_parts_is_refused():
    bundle = copy.deepcopy(SOURCES["plan:minimal"])
    _value(_sub(_extension(bundle, ACCEPTANCE), "individual"))  # ext-1: a value[x] or sub-extensions
    with pytest.raises(MappingError) as err:
        validate_bundle(bundle)
    assert any(path.endswith(".extension[0].extension[0]") for path in err.value.data["errors"])


def test_a_replacement_by_a_goal_outside_the_plan_stays_on_the_old_goal():
    bundle = copy.deepcopy(SOURCES["plan:diabetes-revised-goal"])
    careplan = _first(bundle, "CarePlan")
    new_goal = _sub(_extension(bundle, RELATIONSHIP), "target")["valueReference"]["reference"]
    careplan["goal"] = [g for g in careplan["goal"] if g["reference"] != new_goal]
    plan = bundle_to_plan(bundle, BASE, MRN_SYSTEM)
    assert [g.replaces for g in plan.goals] == [None]
    assert [e["url"] for e in plan.goals[0].fhir_extra["extension"]] == [codes.GOAL_RELATIONSHIP]


def test_two_people_with_one_element_id_stay_two_members():
    bundle = copy.deepcopy(SOURCES["ehr-mcc-careplan"])
    participants = _first(bundle, "CareTeam")["participant"]
    for p in participants:
        p["id"] = "patient"
    plan = bundle_to_plan(bundle, BASE, MRN_SYSTEM)
    assert len({m.id for m in plan.team}) == len(plan.team) == len(participants)
    assert len([m for m in plan.team if m.kind == "patient"]) == 1


def test_an_mrn_identifier_without_value_is_no_mrn():
    bundle = copy.deepcopy(SOURCES["ehr-minimal-goal"])
    del _first(bundle, "Patient")["identifier"][0]["value"]
    validate_bundle(bundle)
    # the EHR's literal reference still names the Patient: kept, the MRN unknown (looked up when syncing)
    plan = bundle_to_plan(copy.deepcopy(bundle), BASE, MRN_SYSTEM)
    assert plan.patient.mrn is None
    assert plan.patient.fhir_reference == _first(bundle, "CarePlan")["subject"]["reference"]
    # named by nothing but a urn (inside a transaction), the Patient has no MRN and no reference: refused
    old = _first(bundle, "CarePlan")["subject"]["reference"]
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["fullUrl"] = "urn:uuid:9a0b6a52-2a1b-4c47-9b1c-6d2f7c0e5a11"
    for entry in bundle["entry"]:
        if entry["resource"].get("subject", {}).get("reference") == old:
            entry["resource"]["subject"]["reference"] = "urn:uuid:9a0b6a52-2a1b-4c47-9b1c-6d2f7c0e5a11"
    with pytest.raises(MappingError, match="no MRN") as err:
        bundle_to_plan(bundle, BASE, MRN_SYSTEM)
    assert "CarePlan.subject" in err.value.data["errors"]


GARBAGE = {
    "a list": [],
    "a string": "Bundle",
    "entries not a list": {"resourceType": "Bundle", "entry": "x"},
    "an entry not an object": {"resourceType": "Bundle", "entry": [1]},
    "a resource without resourceType": {"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]},
    "a resource not an object": {"resourceType": "Bundle", "entry": [{"resource": "CarePlan"}]},
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_is_a_mapping_error(case):
    with pytest.raises(MappingError) as err:
        bundle_to_plan(copy.deepcopy(GARBAGE[case]), BASE, MRN_SYSTEM)
    assert err.value.data["errors"]
    with pytest.raises(MappingError) as err:
        validate_bundle(copy.deepcopy(GARBAGE[case]))
    assert err.value.data["errors"]


@pytest.mark.parametrize(
    ("resource", "path"),
    [
        ({"resourceType": "Goal"}, "Bundle.entry[0].resource.subject"),
        ({"id": "x"}, "Bundle.entry[0].resource.resourceType"),
        ({"resourceType": "Goal", "lifecycleStatus": 7}, "Bundle.entry[0].resource.lifecycleStatus"),
    ],
)
def test_a_bundle_that_is_not_valid_fhir_is_refused_with_a_path(resource, path):
    with pytest.raises(MappingError) as err:
        validate_bundle({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]})
    assert path in err.value.data["errors"]
