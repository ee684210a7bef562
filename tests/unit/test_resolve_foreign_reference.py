"""A conflict resolved to a value given by hand passes the import's door: no reference to another FHIR server.

`planbridge conflicts resolve ID --value JSON` and `POST /conflicts/{id}/resolve {"value": ...}` put the value into
the plan as it is. The check of the import (`service.sync.push_bundle.on_configured_server`, docs/references.md)
was not run on it, so a value naming `https://other.example/fhir/Condition/1` was taken (exit 0 / 200), the
conflict closed and the plan queued for a push the server refuses for ever (HAPI-0507; Medplum with reference
checks). Now it is refused as the API and the CLI refuse a value that breaks a rule (422 problem+json / exit 1),
naming the field; a reference on the configured server is stored relative, as an import stores it; one the plan
or the server already holds (a pull keeps another server's reference the server accepted) is let through.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from service.api.app import create_app
from service.cli import main
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.adopt import import_document
from tests.support import FIXTURES, settings

OURS = "https://fhir.hospital.example/baseR4"
ELSEWHERE = "https://other.example/fhir"
KEY = "test-key-0123456789abcdef"
H = {"X-API-Key": KEY}
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ADDRESSES = "goals[id=goal-walk].addresses"


@pytest.fixture
def world(tmp_path):
    url = f"sqlite:///{tmp_path / 'pb.db'}"
    engine = create_engine(url)
    upgrade(engine)
    conf = settings(fhir_base_url=OURS, api_keys=(KEY,))
    plan = json.loads((FIXTURES / "plans" / "knee-rehabilitation.json").read_text())
    import_document(UnitOfWork(engine), plan, conf, NOW)
    yield engine, url, conf, plan["id"]
    engine.dispose()


def _conflict(engine, plan_id: str, path: str, theirs: object = None) -> int:
    with UnitOfWork(engine) as uow:
        row = uow.sync.add_conflict(plan_id, path, None, None, theirs, NOW)
        uow.commit()
        return row.id


def _plan(engine, plan_id: str):
    with UnitOfWork(engine) as uow:
        return uow.plans.get(plan_id)


def _open(engine, plan_id: str) -> list[int]:
    with UnitOfWork(engine) as uow:
        return [c.id for c in uow.sync.conflicts(plan_id, status="open")]


def _cli(url: str, conf, *args: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=url,
        FHIR_BASE_URL=OURS,
        PLANBRIDGE_IDENTIFIER_BASE=conf.identifier_base,
        PLANBRIDGE_MRN_SYSTEM=conf.mrn_system,
    )
    return CliRunner().invoke(main, list(args), env=env)


def test_api_resolve_to_a_value_naming_another_server_is_refused_naming_the_field(world) -> None:
    """Bug fixed: 200, the conflict closed, and the plan held the other server's Condition for a push that
    could never be sent."""
    engine, _, conf, plan_id = world
    conflict_id = _conflict(engine, plan_id, ADDRESSES)
    before = _plan(engine, plan_id)
    client = create_app(conf, engine).test_client()

    answer = client.post(
        f"/conflicts/{conflict_id}/resolve", json={"value": [{"reference": f"{ELSEWHERE}/Condition/1"}]}, headers=H
    )

    assert (answer.status_code, answer.mimetype) == (422, "application/problem+json"), answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["type"] == "urn:planbridge:problem:rule-violation"
    assert f"{ADDRESSES}[0].reference" in body["detail"] and f"another FHIR server ({ELSEWHERE}/)" in body["detail"]
    assert "Condition/1" not in body["detail"]  # only the base is named
    assert _plan(engine, plan_id) == before
    assert _open(engine, plan_id) == [conflict_id]


def test_cli_resolve_to_a_reference_string_naming_another_server_exits_1_naming_the_field(world) -> None:
    """The value is the reference itself (`patient.fhir_reference`): refused as the import refuses it."""
    engine, url, conf, plan_id = world
    conflict_id = _conflict(engine, plan_id, "patient.fhir_reference")

    result = _cli(url, conf, "conflicts", "resolve", str(conflict_id), "--value", json.dumps(f"{ELSEWHERE}/Patient/9"))

    assert result.exit_code == 1, result.output
    assert "rule-violation" in result.output and "patient.fhir_reference" in result.output
    assert f"another FHIR server ({ELSEWHERE}/)" in result.output
    assert _plan(engine, plan_id).patient.fhir_reference is None
    assert _open(engine, plan_id) == [conflict_id]


def test_resolve_to_a_reference_on_the_configured_server_stores_it_relative(world) -> None:
    engine, url, conf, plan_id = world
    conflict_id = _conflict(engine, plan_id, ADDRESSES)
    value = [{"reference": f"{OURS}/Condition/1/_history/2", "display": "knee"}]

    result = _cli(url, conf, "conflicts", "resolve", str(conflict_id), "--value", json.dumps(value))

    assert result.exit_code == 0, result.output
    goal = next(g for g in _plan(engine, plan_id).goals if g.id == "goal-walk")
    assert [(a.reference, a.display) for a in goal.addresses] == [("Condition/1/_history/2", "knee")]
    assert _open(engine, plan_id) == []


def test_resolve_to_another_server_s_reference_the_server_already_holds_is_taken(world) -> None:
    """A pulled plan may hold another server's reference the server accepted (docs/references.md): writing the
    EHR's own value back by hand is no new reference from outside."""
    engine, _, conf, plan_id = world
    theirs = [{"reference": f"{ELSEWHERE}/Condition/1"}]
    conflict_id = _conflict(engine, plan_id, ADDRESSES, theirs)
    client = create_app(conf, engine).test_client()

    answer = client.post(f"/conflicts/{conflict_id}/resolve", json={"value": theirs}, headers=H)

    assert answer.status_code == 200, answer.get_data(as_text=True)
    goal = next(g for g in _plan(engine, plan_id).goals if g.id == "goal-walk")
    assert [a.reference for a in goal.addresses] == [f"{ELSEWHERE}/Condition/1"]
