"""Round trips over the realistic fixtures in fixtures/plans (plan JSON) and fixtures/fhir (EHR Bundles).

- plan JSON -> Plan -> plan JSON changes nothing, and the plan breaks no rule;
- Plan -> transaction Bundle (valid FHIR R4) -> Plan gives the same plan, but for `version` and
  `updated_at`, which are planbridge's own bookkeeping and never go to FHIR;
- EHR Bundle -> Plan -> transaction Bundle re-emits every CarePlan, Goal, CareTeam and Observation
  of the EHR unchanged, up to what is expected to change (see `Correspondence`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mappings.bundle import bundle_to_plan, plan_to_bundle
from mappings.fhir import validate_bundle
from service.domain import codec
from service.domain.model import Plan
from service.domain.rules import check_plan, errors
from tests.support import FIXTURES, MRN_SYSTEM

BASE = "https://planbridge.example.org/id"
PLAN_FILES = sorted((FIXTURES / "plans").glob("*.json"))
EHR_FILES = sorted((FIXTURES / "fhir").glob("ehr-*.json"))
COMPARED_TYPES = ("CarePlan", "Goal", "CareTeam", "Observation")
PEOPLE = ("Patient", "Practitioner", "RelatedPerson")


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_there_are_enough_fixtures():
    assert len(PLAN_FILES) >= 8 and len(EHR_FILES) >= 4


# ---- plan JSON ----------------------------------------------------------------------------------


def _contained(data: Any, out: Any, path: str = "$") -> None:
    """Assert every value in `data` is in `out` unchanged, at the same place (out may add defaults)."""
    if isinstance(data, dict):
        assert isinstance(out, dict), path
        for key, value in data.items():
            assert key in out, f"{path}.{key} was lost"
            _contained(value, out[key], f"{path}.{key}")
    elif isinstance(data, list):
        assert isinstance(out, list) and len(out) == len(data), path
        for i, (a, b) in enumerate(zip(data, out, strict=True)):
            _contained(a, b, f"{path}[{i}]")
    else:
        assert data == out and type(data) is type(out), f"{path}: {data!r} became {out!r}"


@pytest.mark.parametrize("path", PLAN_FILES, ids=ids(PLAN_FILES))
def test_plan_json_round_trips_unchanged_and_breaks_no_rule(path):
    data = load(path)
    plan = codec.from_dict(Plan, data)
    out = codec.to_dict(plan)
    _contained(data, out)
    assert codec.to_dict(codec.from_dict(Plan, out)) == out
    if "version" in data:  # written by codec.to_dict (it always writes `version`): must be byte-for-byte its output
        assert out == data
    assert errors(check_plan(plan)) == []


@pytest.mark.parametrize("path", PLAN_FILES, ids=ids(PLAN_FILES))
def test_plan_to_bundle_and_back_is_lossless(path):
    plan = codec.from_dict(Plan, load(path))
    bundle = plan_to_bundle(plan, BASE, MRN_SYSTEM)
    validate_bundle(bundle)
    assert bundle["type"] == "transaction"
    back = bundle_to_plan(copy.deepcopy(bundle), BASE, MRN_SYSTEM)
    assert (back.version, back.updated_at) == (0, None)  # bookkeeping is not carried to FHIR
    back.version, back.updated_at = plan.version, plan.updated_at
    assert codec.to_dict(back) == codec.to_dict(plan)
    assert back == plan


# ---- EHR Bundles --------------------------------------------------------------------------------


def index_of(bundle: dict) -> dict[str, dict]:
    """Return the Bundle's resources keyed by fullUrl and by `Type/id`."""
    index = {}
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if entry.get("fullUrl"):
            index[entry["fullUrl"]] = resource
        if resource.get("id"):
            index[f"{resource['resourceType']}/{resource['id']}"] = resource
    return index


class Correspondence:
    """Compares an EHR's resources with the ones planbridge re-emits for them.

    The two Bundles name the same things differently: the EHR by literal ids (`Goal/2001`), the
    transaction by `urn:uuid`s (and people the server can find by identifier, conditionally). So
    references are not compared as strings. Instead, comparing two resources side by side pairs
    each reference in the original with the one at the same place in the re-emitted resource, and
    the pairing must be one-to-one across the whole Bundle: `Goal/2001` always becomes the same urn,
    and no urn stands for two originals. A reference that does not resolve inside the EHR Bundle
    (a Condition, a Task, an Organization on the server) must come back as exactly the same string.
    A reference kept verbatim though the EHR Bundle holds its target (inside an unmodelled element,
    kept in fhir_extra) still names that resource on the EHR: it is allowed, and recorded in
    `verbatim`. A paired reference that resolves on both sides must point at the same resource type; paired
    Goals, CareTeams and Observations are then compared in turn, paired people must carry the
    original's identifier (the MRN for the Patient) so the server finds the same person.

    Besides reference strings, only these may differ: the resources' `id` and `meta`, planbridge's
    own identifiers (systems under the identifier base), and the order of `extension` arrays
    (planbridge writes the extensions it models first). Everything else, including unknown
    elements, codes, extensions and element ids, must be identical.
    """

    def __init__(self, original: dict, emitted: dict) -> None:
        self.old = index_of(original)
        self.new = index_of(emitted)
        self.pairs: dict[str, str] = {}
        self.back: dict[str, str] = {}
        self.compared: set[str] = set()
        self.verbatim: list[tuple[str, str]] = []

    def pair(self, old: str, new: str, path: str) -> None:
        if new == old and old in self.old:
            self.verbatim.append((path, old))  # kept as it came (fhir_extra), where the EHR has it
            return
        assert self.pairs.setdefault(old, new) == new, f"{path}: {old} is emitted as two references"
        assert self.back.setdefault(new, old) == old, f"{path}: {new} stands for two originals"
        if old not in self.old or new not in self.new:
            assert new == old, f"{path}: reference {old} was rewritten to {new}"
            return
        assert self.old[old]["resourceType"] == self.new[new]["resourceType"], path

    def kind(self, index: dict[str, dict], reference: str) -> str:
        return index[reference]["resourceType"] if reference in index else reference.split("/")[0]

    def sort_key(self, index: dict[str, dict], element: Any) -> str:
        def mask(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: self.kind(index, v) if k == "reference" else mask(v) for k, v in value.items()}
            if isinstance(value, list):
                return [mask(v) for v in value]
            return value

        return json.dumps(mask(element), sort_keys=True)

    def compare(self, old: Any, new: Any, path: str) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            assert set(old) == set(new), f"{path}: keys {sorted(old)} became {sorted(new)}"
            for key in old:
                if key == "reference" and isinstance(old[key], str):
                    self.pair(old[key], new[key], f"{path}.reference")
                elif key == "extension":
                    olds = sorted(old[key], key=lambda e: self.sort_key(self.old, e))
                    news = sorted(new[key], key=lambda e: self.sort_key(self.new, e))
                    self.compare(olds, news, f"{path}.extension")
                else:
                    self.compare(old[key], new[key], f"{path}.{key}")
        elif isinstance(old, list) and isinstance(new, list):
            assert len(old) == len(new), f"{path}: {len(old)} items became {len(new)}: {new}"
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                self.compare(a, b, f"{path}[{i}]")
        else:
            assert old == new and type(old) is type(new), f"{path}: {old!r} became {new!r}"

    def compare_resources(self, old_ref: str, new_ref: str) -> None:
        self.compared.add(old_ref)
        old, new = self.old[old_ref], copy.deepcopy(self.new[new_ref])
        ours = [i for i in new.get("identifier", []) if i.get("system", "").startswith(BASE)]
        assert len(ours) == 1, f"{new_ref} should carry exactly one planbridge identifier"
        new["identifier"] = [i for i in new["identifier"] if i not in ours]
        if not new["identifier"]:
            del new["identifier"]
        strip = ("id", "meta")
        self.compare(
            {k: v for k, v in old.items() if k not in strip}, {k: v for k, v in new.items() if k not in strip}, old_ref
        )

    def run(self, old_careplan: str, new_careplan: str) -> None:
        """Compare from the CarePlans outwards until every paired resource has been compared."""
        self.pair(old_careplan, new_careplan, "CarePlan")
        pending = True
        while pending:
            pending = False
            for old, new in list(self.pairs.items()):
                if old in self.compared or old not in self.old or new not in self.new:
                    continue
                rtype = self.old[old]["resourceType"]
                if rtype in COMPARED_TYPES:
                    self.compare_resources(old, new)
                    pending = True
                elif rtype in PEOPLE:
                    self.compared.add(old)
                    self.check_person(self.old[old], self.new[new])

    def check_person(self, old: dict, new: dict) -> None:
        if old["resourceType"] == "Patient":
            mrns = [i for i in new.get("identifier", []) if i["system"] == MRN_SYSTEM]
            assert mrns and mrns == [i for i in old["identifier"] if i["system"] == MRN_SYSTEM]
        elif old.get("identifier"):
            assert new["identifier"][0] == {k: old["identifier"][0][k] for k in ("system", "value")}


def emitted_careplan_url(bundle: dict) -> str:
    (url,) = [e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan"]
    return url


@pytest.mark.parametrize("path", EHR_FILES, ids=ids(EHR_FILES))
def test_ehr_fixture_is_valid_fhir_with_one_careplan_and_an_mrn(path):
    bundle = load(path)
    validate_bundle(bundle)
    assert bundle["type"] in ("searchset", "collection")
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types.count("CarePlan") == 1
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"http://ehr.example.org/fhir/{resource['resourceType']}/{resource['id']}"
    patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert [i["system"] for p in patients for i in p["identifier"]] == [MRN_SYSTEM]


@pytest.mark.parametrize("path", EHR_FILES, ids=ids(EHR_FILES))
def test_ehr_bundle_is_written_back_without_loss(path):
    original = load(path)
    plan = bundle_to_plan(copy.deepcopy(original), BASE, MRN_SYSTEM)
    assert errors(check_plan(plan)) == []
    (careplan,) = [e["resource"] for e in original["entry"] if e["resource"]["resourceType"] == "CarePlan"]
    old_careplan, patient_ref = f"CarePlan/{careplan['id']}", careplan["subject"]["reference"]
    # Written back to the EHR, whose Patient is known: references kept as they came (in fhir_extra) then agree.
    emitted = plan_to_bundle(plan, BASE, MRN_SYSTEM, patient_ref=patient_ref)
    match = Correspondence(original, emitted)
    match.run(old_careplan, emitted_careplan_url(emitted))
    for entry in original["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in COMPARED_TYPES:
            assert f"{resource['resourceType']}/{resource['id']}" in match.compared, f"{entry['fullUrl']} was lost"
    # and the plan read back from the re-emitted Bundle (with its Patient) writes the same Bundle again
    with_patient = plan_to_bundle(plan, BASE, MRN_SYSTEM)
    assert (
        plan_to_bundle(bundle_to_plan(copy.deepcopy(with_patient), BASE, MRN_SYSTEM), BASE, MRN_SYSTEM) == with_patient
    )


@pytest.mark.parametrize("path", EHR_FILES, ids=ids(EHR_FILES))
def test_ehr_bundle_written_back_is_valid(path):
    plan = bundle_to_plan(load(path), BASE, MRN_SYSTEM)
    validate_bundle(plan_to_bundle(plan, BASE, MRN_SYSTEM))


def test_ehr_specifics_are_read_into_the_model():
    """Spot checks that the round trip above is not carried by fhir_extra alone."""
    mcc = bundle_to_plan(load(FIXTURES / "fhir" / "ehr-mcc-careplan.json"), BASE, MRN_SYSTEM)
    steady, old = mcc.goals
    assert steady.replaces == old.id and old.lifecycle_status == "cancelled"
    assert [(mcc.member(a.member_id).kind, a.status) for a in steady.agreements] == [
        ("patient", "agree"),
        ("related-person", "agree"),
        ("practitioner", "pending"),
    ]
    assert [str(c.quantity.value) for c in steady.check_ins] == ["81.2", "79.6"]
    assert mcc.steps == [] and len(mcc.careplan_extra["activity"]) == 2
    targets = bundle_to_plan(load(FIXTURES / "fhir" / "ehr-targets-and-extensions.json"), BASE, MRN_SYSTEM)
    kinds = [t.details()[0] for t in targets.goals[0].targets]
    assert kinds == ["quantity", "range", "concept", "text", "boolean", "integer", "ratio"]
    assert targets.goals[1].proposed_by is None and targets.goals[1].fhir_extra["expressedBy"]["reference"] == (
        "PractitionerRole/pr-2002"
    )
    assert targets.goals[0].notes[0].author_name == "Dr A. Ferreira (locum)"
    checkins = bundle_to_plan(load(FIXTURES / "fhir" / "ehr-checkins.json"), BASE, MRN_SYSTEM)
    got = checkins.goals[0].check_ins
    assert [c.id for c in got] == [f"obs-obs-400{i}" for i in range(1, 6)]
    assert got[1].recorded_by is None and got[1].fhir_extra["performer"] == [{"reference": "CareTeam/ct-4001"}]
    assert got[2].rating.codings[0].code == "better" and got[3].integer == 6 and got[4].text.startswith("Walked")


@pytest.mark.parametrize("path", EHR_FILES, ids=ids(EHR_FILES))
def test_kept_references_follow_the_resources_planbridge_re_emits(path):
    """A reference kept in fhir_extra to a CareTeam, Goal or Observation the Bundle re-emits under a
    new reference (a conditional PUT by planbridge's identifier) follows it to its new fullUrl."""
    original = load(path)
    plan = bundle_to_plan(copy.deepcopy(original), BASE, MRN_SYSTEM)
    (careplan,) = [e["resource"] for e in original["entry"] if e["resource"]["resourceType"] == "CarePlan"]
    emitted = plan_to_bundle(plan, BASE, MRN_SYSTEM, patient_ref=careplan["subject"]["reference"])
    match = Correspondence(original, emitted)
    match.run(f"CarePlan/{careplan['id']}", emitted_careplan_url(emitted))
    stale = [(p, ref) for p, ref in match.verbatim if match.kind(match.old, ref) in COMPARED_TYPES]
    assert stale == []
