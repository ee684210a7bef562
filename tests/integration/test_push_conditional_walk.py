"""A push looks for conditional references (`Type?params`) other than the patient's only in a Bundle whose text
holds a `?`: the digest's JSON text tells, and without one the walk of the whole Bundle is skipped."""

from __future__ import annotations

import json
import uuid

import pytest

from mappings.bundle import plan_to_bundle
from service.api.container import utcnow
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync import push as push_module
from service.sync.conditional_refs import conditional_references
from service.sync.engine import SyncEngine
from service.sync.push_bundle import bundle_digest, bundle_digest_and_question
from tests.support import FIXTURES, MRN_SYSTEM, settings


def _plan(name: str) -> Plan:
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / name).read_text()))
    plan.id, plan.patient.mrn = f"{plan.id}-{uuid.uuid4().hex[:6]}", f"MRN-{uuid.uuid4().hex[:8]}"
    plan.touch(utcnow().isoformat())
    return plan


@pytest.mark.parametrize("fixture", ["knee-rehabilitation.json", "young-person-anxiety.json"])
def test_push_walks_for_conditional_references_only_with_a_question_mark(tmp_path, fhir_hapi_url, monkeypatch, fixture):
    walked: list[int] = []
    find = push_module.conditional_references

    def counted(bundle):
        walked.append(1)
        return find(bundle)

    monkeypatch.setattr(push_module, "conditional_references", counted)
    engine = create_engine(f"sqlite:///{tmp_path}/push.db")
    upgrade(engine)
    sync = SyncEngine(UnitOfWork(engine), FhirClient(fhir_hapi_url, timeout=10), settings(), utcnow)
    plan = _plan(fixture)
    with UnitOfWork(engine) as uow:
        uow.plans.save(plan)
        uow.commit()
    assert sync.push(plan.id).status == "in_sync"
    assert walked == []  # (the anxiety plan's text holds a `?`, none of its references)


def _bundle(patient: str | None = "Patient/1") -> dict:
    return plan_to_bundle(_plan("knee-rehabilitation.json"), "https://planbridge.test/x/id", MRN_SYSTEM, patient)


def _with_reference(bundle: dict, reference: str) -> dict:
    """The Bundle with its first reference to an EHR resource (a Practitioner, a Condition) made `reference`."""
    done: list[bool] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if not done and isinstance(ref, str) and ref.startswith(("Practitioner/", "Condition/")):
                node["reference"] = reference
                done.append(True)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(bundle)
    assert done
    return bundle


@pytest.mark.parametrize(
    ("bundle", "question"),
    [
        (_bundle(), False),  # `?` in every request URL (conditional updates), none in a reference
        (_bundle(None), False),  # the Patient created by the Bundle: a urn:uuid reference
        (_bundle("Patient?identifier=urn:mrn|MRN-1"), True),  # named by a search
        (_with_reference(_bundle(), "Practitioner?identifier=urn:npi|123"), True),
        (_with_reference(_bundle(), "Practitioner/?identifier=urn:npi|123"), True),
        (_with_reference(_bundle(), 'Practitioner/a"b'), True),  # an escape: left to the walk
        (_with_reference(_bundle(), "Practitioner/gp-4411"), False),
    ],
)
def test_push_digest_and_question_mark_come_from_one_text(bundle, question):
    digest, found = bundle_digest_and_question(bundle)
    assert digest == bundle_digest(bundle)
    assert found is question
    if not found:  # what the walk would find, found without it
        assert conditional_references(bundle) == []
