"""Every fixture plan, pushed to the real local FHIR server and pulled straight back, comes back unchanged.

docs/sync.md and docs/mapping.md promise a lossless round trip: a push followed by a pull of the same plan,
with nobody else writing, changes nothing (the pull's outcome is `unchanged`, the stored plan is the plan that
was pushed, bookkeeping aside, and there is nothing to push again).

The knee plan broke it. Its surgeon is no team member (`in_team: false`), only the author of a goal's note. A
pull reads the CareTeam's participants (`_include:iterate=CareTeam:participant`), not every person the plan
names, so the note's `authorReference` (`Practitioner/5`, the Practitioner the push created for the surgeon)
resolved to nothing the pull carried, and the mapping read it as a new member `practitioner-5` pinned to that
reference: the pull reported `updated` and renamed the surgeon everywhere in the plan. Now the pull names the
people it does not read as the plan knows them, by the links the push recorded (`person:<plan>/surgeon` ->
`Practitioner/5`) or the member's own literal reference (service.sync.pull_links.known_people).
"""

import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner

from service.api.container import utcnow
from service.cli import main
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from tests.support import FIXTURES, settings

PLANS = sorted(path.name for path in (FIXTURES / "plans").glob("*.json"))
KNEE = "knee-rehabilitation.json"
NPI = "http://hl7.org/fhir/sid/us-npi"
BOOKKEEPING = ("version", "updated_at")


class RoundTrip:
    """A database, the real local FHIR server, and a sync engine between them."""

    def __init__(self, database, fhir_url: str) -> None:
        self.engine, self.url = database
        self.settings = settings(fhir_base_url=fhir_url)
        self.ehr = FhirClient(fhir_url, timeout=10)
        self.sync = SyncEngine(UnitOfWork(self.engine), FhirClient(fhir_url, timeout=10), self.settings, utcnow)

    @staticmethod
    def fixture(name: str) -> dict[str, Any]:
        """A fixture plan under an id and MRN of its own (the server is shared by the session's tests)."""
        document = json.loads((FIXTURES / "plans" / name).read_text())
        document["id"] = f"{document['id']}-{uuid.uuid4().hex[:6]}"
        if document["patient"].get("mrn"):
            document["patient"]["mrn"] = f"MRN-{uuid.uuid4().hex[:8]}"
        return document

    def save(self, document: dict[str, Any]) -> str:
        """Store the plan through the UnitOfWork, as an event or the API does."""
        plan = codec.from_dict(Plan, document)
        plan.touch(utcnow().isoformat())
        with UnitOfWork(self.engine) as uow:
            uow.plans.save(plan)
            uow.commit()
        return plan.id

    def cli_import(self, document: dict[str, Any]) -> str:
        """Store the plan with `planbridge plans import -`, as the operator does."""
        env = {
            "DATABASE_URL": self.url,
            "FHIR_BASE_URL": self.settings.fhir_base_url,
            "PLANBRIDGE_IDENTIFIER_BASE": self.settings.identifier_base,
            "PLANBRIDGE_MRN_SYSTEM": self.settings.mrn_system,
        }
        result = CliRunner().invoke(main, ["plans", "import", "-"], input=json.dumps(document), env=env)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    def document(self, plan_id: str) -> dict[str, Any]:
        """The stored plan, bookkeeping aside."""
        with UnitOfWork(self.engine) as uow:
            document = codec.to_dict(uow.plans.get(plan_id))
        return {key: value for key, value in document.items() if key not in BOOKKEEPING}

    def practitioner(self, name: str) -> str:
        """A Practitioner of the EHR's own; return its literal reference."""
        created = self.ehr.request(
            "POST", "Practitioner", json={"resourceType": "Practitioner", "name": [{"text": name}]}
        )
        return f"Practitioner/{created.json()['id']}"

    def assert_round_trip(self, plan_id: str) -> None:
        """Push the plan, pull it straight back (by name and incrementally): nothing changes."""
        before = self.document(plan_id)
        assert self.sync.push(plan_id).status == "in_sync"

        pulled = self.sync.pull_plans([plan_id])

        assert pulled.outcomes == {plan_id: "unchanged"}
        assert self.document(plan_id) == before
        assert self.sync.status(plan_id).status == "in_sync"
        assert self.sync.push(plan_id).requests == 0  # nothing to send back
        # the incremental pull skips what planbridge wrote itself: this plan is not even pulled
        assert self.sync.pull_changed().outcomes.get(plan_id, "unchanged") == "unchanged"
        assert self.document(plan_id) == before


@pytest.fixture
def world(database, fhir_profile_url):
    return RoundTrip(database, fhir_profile_url)


@pytest.mark.parametrize("fixture", PLANS)
def test_every_fixture_plan_pushed_and_pulled_straight_back_is_unchanged(world, fixture):
    world.assert_round_trip(world.save(world.fixture(fixture)))


def test_the_knee_plan_imported_with_the_cli_round_trips_unchanged(world):
    plan_id = world.cli_import(world.fixture(KNEE))

    world.assert_round_trip(plan_id)

    surgeon = next(m for m in world.document(plan_id)["team"] if m["id"] == "surgeon")
    assert surgeon["in_team"] is False and "fhir_reference" not in surgeon


@pytest.mark.parametrize("known_by", ["own identifier", "EHR reference"])
def test_a_person_off_the_team_known_by_an_identifier_or_reference_round_trips_unchanged(world, known_by):
    """The surgeon of the knee plan, known by an NPI (created by the push, found again by it) or by the EHR's
    own Practitioner (referenced, never created): either way the pull reads only the reference the note holds."""
    document = world.fixture(KNEE)
    surgeon = next(m for m in document["team"] if m["id"] == "surgeon")
    if known_by == "own identifier":
        surgeon["identifier"] = {"system": NPI, "value": uuid.uuid4().hex[:10]}
    else:
        surgeon["fhir_reference"] = world.practitioner("Idris Vaughan")

    world.assert_round_trip(world.save(document))
