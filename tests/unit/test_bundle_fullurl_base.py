"""A relative reference in a Bundle entry is resolved against that entry's fullUrl, as R4 resolves it.

https://hl7.org/fhir/R4/bundle.html#references: in an entry whose fullUrl is `https://other.example/fhir/CarePlan/1`,
`Patient/123` means `https://other.example/fhir/Patient/123`, the other server's Patient 123. `plans import` read it
as our `Patient/123` (some other patient, or none) and stored it; now the import sees the reference to the other
server it is and refuses it at the door, naming the field, exactly as it refuses the absolute form. A reference
between the Bundle's own entries still resolves to the entry; an entry on the configured base, under a urn:uuid
or without a fullUrl keeps today's meaning; `convert from-fhir` offline (no FHIR_BASE_URL) converts as before.
See docs/references.md and mappings/bundle_base.py.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from mappings.bundle_base import absolute_references
from service.cli import main
from service.convert import ConversionRefused, from_fhir
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.adopt import import_document
from tests.support import settings

OURS = "https://fhir.hospital.example/baseR4"
ELSEWHERE = "https://other.example/fhir"
MRN = "http://hospital.example/mrn"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
IDENTIFIER_BASE = "https://planbridge.test/fullurl/id"


def _bundle(base: str | None, *, patient_entry: bool = False, author: str | None = None) -> dict[str, Any]:
    """An EHR's collection Bundle: a CarePlan naming its Patient `Patient/123`, its Goal `Goal/g1` (an entry) and a
    practitioner with an identifier `Practitioner/p1` (an entry) on its CareTeam, every reference relative. Each
    entry's fullUrl is `{base}/Type/id` (None: no fullUrl)."""
    subject = {"reference": "Patient/123"}
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "CarePlan",
            "id": "cp1",
            "identifier": [{"system": "http://hospital.example/careplans", "value": "cp-1"}],
            "status": "active",
            "intent": "plan",
            "title": "Walking",
            "subject": subject,
            "careTeam": [{"reference": "CareTeam/ct1"}],
            "goal": [{"reference": "Goal/g1"}],
        },
        {
            "resourceType": "Goal",
            "id": "g1",
            "lifecycleStatus": "active",
            "description": {"text": "walk to the lake"},
            "subject": subject,
        },
        {
            "resourceType": "CareTeam",
            "id": "ct1",
            "subject": subject,
            "participant": [{"member": {"reference": "Practitioner/p1", "display": "Dr Who"}}],
        },
        {
            "resourceType": "Practitioner",
            "id": "p1",
            "identifier": [{"system": "http://hospital.example/staff", "value": "S-1"}],
        },
    ]
    if author is not None:
        resources[0]["author"] = {"reference": author}
    if patient_entry:
        resources.append({"resourceType": "Patient", "id": "123", "identifier": [{"system": MRN, "value": "MRN-7"}]})
    entries = []
    for resource in resources:
        entry: dict[str, Any] = {"resource": resource}
        if base is not None:
            entry["fullUrl"] = f"{base}/{resource['resourceType']}/{resource['id']}"
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _absolute_form(bundle: dict[str, Any], base: str) -> dict[str, Any]:
    """The same Bundle with every relative reference written out absolute on `base`, by hand."""
    text = json.dumps(bundle)
    for rtype in ("Patient", "Goal", "CareTeam", "Practitioner"):
        text = text.replace(f'"reference": "{rtype}/', f'"reference": "{base}/{rtype}/')
    return json.loads(text)


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'pb.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _import(engine, document: dict[str, Any], server_base: str | None):
    return import_document(UnitOfWork(engine), document, _settings(server_base), NOW)


def _settings(server_base: str | None):
    return settings(fhir_base_url=server_base, mrn_system=MRN, identifier_base=IDENTIFIER_BASE)


# ---- the pre-pass --------------------------------------------------------------------------------------------


def test_a_relative_reference_in_an_entry_on_another_server_is_made_absolute_on_that_server() -> None:
    bundle = _bundle(ELSEWHERE)
    original = copy.deepcopy(bundle)

    read = absolute_references(bundle, OURS)

    careplan = read["entry"][0]["resource"]
    assert careplan["subject"] == {"reference": f"{ELSEWHERE}/Patient/123"}  # not in the Bundle: theirs
    assert careplan["goal"] == [{"reference": f"{ELSEWHERE}/Goal/g1"}]  # the Goal entry's own fullUrl
    assert read["entry"][2]["resource"]["participant"][0]["member"]["reference"] == f"{ELSEWHERE}/Practitioner/p1"
    assert bundle == original  # the input is never changed


def test_a_reference_naming_another_entry_is_written_as_that_entry_s_fullurl_exactly() -> None:
    """The reader finds an entry by its fullUrl as written: a base spelled differently is still that entry."""
    bundle = _bundle(ELSEWHERE)
    bundle["entry"][1]["fullUrl"] = "HTTPS://Other.Example:443/fhir/Goal/g1"

    read = absolute_references(bundle, OURS)

    assert read["entry"][0]["resource"]["goal"] == [{"reference": "HTTPS://Other.Example:443/fhir/Goal/g1"}]


@pytest.mark.parametrize(
    "base",
    [OURS, "HTTPS://FHIR.Hospital.Example:443/baseR4/", "urn:uuid", None],
    ids=["configured-base", "configured-base-spelled-otherwise", "urn-uuid", "no-fullurl"],
)
def test_an_entry_on_the_configured_base_under_a_urn_or_without_fullurl_keeps_its_references(base) -> None:
    bundle = _bundle(None)
    for i, entry in enumerate(bundle["entry"]):
        if base == "urn:uuid":
            entry["fullUrl"] = f"urn:uuid:9b7c0f3e-0000-4000-8000-00000000000{i}"
        elif base is not None:
            entry["fullUrl"] = f"{base.rstrip('/')}/{entry['resource']['resourceType']}/{entry['resource']['id']}"
    assert absolute_references(bundle, OURS) is bundle


def test_contained_urn_and_conditional_references_are_never_touched() -> None:
    bundle = _bundle(ELSEWHERE)
    careplan = bundle["entry"][0]["resource"]
    careplan["contained"] = [{"resourceType": "Practitioner", "id": "pr1"}]
    careplan["author"] = {"reference": "#pr1"}
    careplan["addresses"] = [
        {"reference": "urn:uuid:4d2c8e10-0000-4000-8000-000000000001"},
        {"reference": "Condition?identifier=http://x|1"},
    ]
    read = absolute_references(bundle, OURS)["entry"][0]["resource"]
    assert read["author"] == {"reference": "#pr1"}
    assert read["addresses"] == careplan["addresses"]
    assert read["subject"] == {"reference": f"{ELSEWHERE}/Patient/123"}


# ---- plans import: the door -------------------------------------------------------------------------------------


def test_an_import_whose_entries_are_on_another_server_naming_its_patient_relative_is_refused(engine) -> None:
    """Bug fixed: `Patient/123` in a CarePlan at `https://other.example/fhir/CarePlan/cp1` (the other server's
    Patient 123, R4) was stored as our `Patient/123`, and the push named someone else, or no one."""
    with pytest.raises(ConversionRefused) as refused:
        _import(engine, _bundle(ELSEWHERE), OURS)

    paths = {issue.path: issue.message for issue in refused.value.issues}
    assert list(paths) == ["patient.fhir_reference"]
    assert f"another FHIR server ({ELSEWHERE}/)" in paths["patient.fhir_reference"]
    assert "123" not in paths["patient.fhir_reference"]  # only the base is named, never the id
    with UnitOfWork(engine) as uow:
        assert uow.plans.ids() == []


def test_the_relative_form_is_refused_exactly_as_the_absolute_form(engine) -> None:
    """R4 says the two Bundles say the same; the door answers them the same (here: a member pinned to its
    reference, `author` naming a PractitionerRole not in the Bundle, kept in careplan_extra)."""
    relative = _bundle(ELSEWHERE, patient_entry=True, author="PractitionerRole/r9")
    answers = []
    for document in (relative, _absolute_form(relative, ELSEWHERE)):
        with pytest.raises(ConversionRefused) as refused:
            _import(engine, document, OURS)
        answers.append([(issue.path, issue.message) for issue in refused.value.issues])
    assert answers[0] == answers[1]
    assert [path for path, _ in answers[0]] == ["patient.fhir_reference", "careplan_extra.author.reference"]


def test_references_between_the_entries_still_resolve_to_the_entries(engine) -> None:
    """The Goal, the CareTeam's practitioner (by identifier) and the Patient (by MRN) are read from their entries,
    as from the same Bundle on the configured server; nothing of the other server's is left in the plan."""
    bundle = _bundle(ELSEWHERE, patient_entry=True)
    # a plan of planbridge's (not the EHR's own CarePlan): its Patient is named by the MRN
    bundle["entry"][0]["resource"]["identifier"] = [{"system": f"{IDENTIFIER_BASE}/plan", "value": "plan-walk"}]
    ours = copy.deepcopy(bundle)
    for entry in ours["entry"]:
        entry["fullUrl"] = entry["fullUrl"].replace(ELSEWHERE, OURS)

    plan = _import(engine, bundle, OURS)

    assert plan.patient.mrn == "MRN-7" and plan.patient.fhir_reference is None
    assert [g.description.text for g in plan.goals] == ["walk to the lake"]
    (member,) = [m for m in plan.team if m.kind == "practitioner"]
    assert member.identifier is not None and member.identifier.value == "S-1" and member.fhir_reference is None
    read = from_fhir(bundle, _settings(OURS))[0]
    assert ELSEWHERE not in json.dumps(read)
    assert read == from_fhir(ours, _settings(OURS))[0]


@pytest.mark.parametrize("where", ["configured-base", "urn-uuid", "no-fullurl"])
def test_an_import_on_the_configured_base_a_urn_or_no_fullurl_keeps_today_s_meaning(engine, where) -> None:
    bundle = _bundle(OURS if where == "configured-base" else None)
    if where == "urn-uuid":
        for i, entry in enumerate(bundle["entry"]):
            entry["fullUrl"] = f"urn:uuid:9b7c0f3e-0000-4000-8000-00000000000{i}"
    plan = _import(engine, bundle, OURS)
    assert plan.patient.fhir_reference == "Patient/123"


# ---- convert from-fhir: no door ------------------------------------------------------------------------------


def _convert(bundle: dict[str, Any], server_base: str | None, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(PLANBRIDGE_MRN_SYSTEM=MRN, PLANBRIDGE_IDENTIFIER_BASE="https://planbridge.test/base/id")
    if server_base:
        env["FHIR_BASE_URL"] = server_base
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps(bundle))
    return CliRunner().invoke(main, ["convert", "from-fhir", str(source)], env=env)


def test_convert_offline_converts_as_before(tmp_path) -> None:
    """With no FHIR_BASE_URL nothing tells ours from theirs: the references are kept as written (as the R4
    spec's own examples convert: tests/e2e/test_patient_identity_sync.py)."""
    result = _convert(_bundle(ELSEWHERE), None, tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["patient"]["fhir_reference"] == "Patient/123"


def test_convert_with_a_configured_server_names_the_other_server_s_resource_and_refuses_nothing(tmp_path) -> None:
    """Bug fixed: the plan JSON named our `Patient/123`; importing it later stored that."""
    result = _convert(_bundle(ELSEWHERE), OURS, tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["patient"]["fhir_reference"] == f"{ELSEWHERE}/Patient/123"
