"""A world for adoption tests: the sync model's world (tests/sync_model_support.SyncWorld) whose plans are the EHR's
own CarePlans, adopted by planbridge, rather than fixture plans planbridge pushed.

Used by tests/integration/test_adoption_model.py and test_adoption_regressions.py. What differs from SyncWorld:

- the EHR authors Patients (MRN under a hospital OID), CarePlans with Goals, check-in Observations and maybe a
  CareTeam, each with the EHR's own identifiers or none, with its own FHIR client, and remembers every id it
  created (so what planbridge created on the server is told apart);
- an adopted plan (`careplan-<id>`) is read back from the server by its CarePlan's id (`CarePlan?_id=`), as
  planbridge pulls it, whether or not planbridge has written its identifier on it yet;
- planbridge's HTTP API (`POST /plans/adopt`) runs on the same database, FHIR client and clock as the engine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from service.api.app import create_app
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.worker import OutboxWorker
from tests.support import Clock, settings
from tests.sync_model_support import SyncWorld, plan_pulls

OID = "urn:oid:1.2.36.146.595.217.0.1"  # the hospital's MRN system
EHR_SYSTEM = "urn:oid:1.2.36.146.595.217.0.9"  # the EHR's own identifiers of its resources
API_KEY = "adoption-model-key-0123456789abcdef"
PREFIX = "careplan-"
NPI = "http://hl7.org/fhir/sid/us-npi"
COUNTED = ("CarePlan", "CareTeam", "Goal", "Observation")


def careplan_id_of(plan_id: str) -> str:
    """The server id of the CarePlan an adopted plan was read from."""
    assert plan_id.startswith(PREFIX), plan_id
    return plan_id[len(PREFIX) :]


class AdoptedReader(FhirClient):
    """A plain FHIR client that reads an adopted plan's CarePlan by its id where SyncWorld searches by planbridge's
    identifier (which an adopted CarePlan carries only once planbridge wrote it): so SyncWorld.server() and
    SyncWorld.find() read adopted plans as the puller does."""

    def __init__(self, base_url: str, identifier_base: str) -> None:
        super().__init__(base_url, timeout=10)
        self.plan_system = f"{identifier_base}/plan|{PREFIX}"

    def search_entries(
        self, resource_type: str, params: dict[str, str] | list[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        items = list(params.items()) if isinstance(params, dict) else list(params)
        if resource_type == "CarePlan":
            items = [
                ("_id", value[len(self.plan_system) :])
                if name == "identifier" and str(value).startswith(self.plan_system)
                else (name, value)
                for name, value in items
            ]
        return super().search_entries(resource_type, items)


@dataclass
class EhrCarePlan:
    """A CarePlan the EHR authored, and what it named when authored."""

    id: str
    patient: str  # Patient/<id>
    mrn: str
    careteam: str | None  # CareTeam/<id> it named, None when it had none
    goals: list[str] = field(default_factory=list)  # Goal/<id>

    @property
    def plan_id(self) -> str:
        return f"{PREFIX}{self.id}"


class AdoptionWorld(SyncWorld):
    """SyncWorld whose plans are adopted from the EHR (see the module docstring)."""

    def __init__(self, engine: Any, fhir_base_url: str, clock: Clock | None = None) -> None:
        super().__init__(engine, fhir_base_url, clock)
        self.settings = settings(
            fhir_base_url=fhir_base_url, mrn_system=OID, create_patients=False, api_keys=(API_KEY,)
        )
        self.base = self.settings.identifier_base
        self.reader = AdoptedReader(fhir_base_url, self.base)
        self.fresh_planbridge()
        self.created: dict[str, set[str]] = {t: set() for t in (*COUNTED, "Patient", "Practitioner")}
        self.deleted: set[str] = set()  # Type/id the EHR deleted
        self.npis: set[str] = set()  # the NPIs of the EHR's Practitioners
        self.careplans: dict[str, EhrCarePlan] = {}  # CarePlan id -> what the EHR authored
        self.patients: dict[str, str] = {}  # MRN -> Patient/<id>
        self.app = create_app(self.settings, self.db)
        container = self.app.extensions["planbridge"]
        container._fhir, container.clock = self.client, self.clock  # the engine's client (logged) and clock
        self.http = self.app.test_client()

    def fresh_planbridge(self) -> None:
        self.sync = SyncEngine(UnitOfWork(self.db), self.client, self.settings, self.clock)
        self.worker = OutboxWorker(UnitOfWork(self.db), self.client, self.settings, self.clock)

    # ---- the EHR authoring ----

    def ehr_create(self, resource: dict[str, Any], own_identifier: bool) -> dict[str, Any]:
        """POST a resource as the EHR (with an identifier of the EHR's own, or none); remember its id."""
        if own_identifier:
            resource = {**resource, "identifier": [{"system": EHR_SYSTEM, "value": uuid.uuid4().hex[:12]}]}
        created = self.ehr.request("POST", resource["resourceType"], json=resource).json()
        self.created[created["resourceType"]].add(created["id"])
        return created

    def ehr_patient(self) -> str:
        """A Patient the EHR knows by MRN; return the MRN."""
        mrn = f"MRN-{uuid.uuid4().hex[:10]}"
        patient = self.ehr_create(
            {"resourceType": "Patient", "identifier": [{"system": OID, "value": mrn}], "name": [{"text": "Pat Doe"}]},
            own_identifier=False,
        )
        self.patients[mrn] = f"Patient/{patient['id']}"
        return mrn

    def ehr_goal_resource(self, subject: str, n: int, checkins: int, own_identifier: bool) -> dict[str, Any]:
        """A Goal of the EHR's, with `checkins` Observations named in its outcomeReference."""
        observations = [
            self.ehr_create(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": f"Steps per day {n}"},
                    "subject": {"reference": subject},
                    "effectiveDateTime": f"2026-02-0{k + 1}T10:00:00Z",
                    "valueQuantity": {"value": 3000 + 500 * k, "unit": "/d"},
                },
                own_identifier,
            )
            for k in range(checkins)
        ]
        goal: dict[str, Any] = {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": f"EHR goal {n}"},
            "subject": {"reference": subject},
        }
        if observations:
            goal["outcomeReference"] = [{"reference": f"Observation/{o['id']}"} for o in observations]
        return self.ehr_create(goal, own_identifier)

    def ehr_careplan(
        self,
        mrn: str,
        goals: int,
        checkins: int,
        careteam: bool,
        own_identifiers: bool,
        created: bool,
        shared_team: str | None = None,
        shared_goal: str | None = None,
        activities: bool = False,
    ) -> EhrCarePlan:
        """The EHR authors a CarePlan for the patient: `goals` Goals (each with `checkins` check-ins), maybe a
        CareTeam with a Practitioner, the EHR's own identifiers on everything or none. `shared_team`: it names
        that CareTeam (of another CarePlan of the patient) instead; `shared_goal`: it names that Goal as well;
        `activities`: a step per Goal (one when it has none), each naming its Goal."""
        subject = self.patients[mrn]
        team_ref = shared_team
        author = None
        if careteam and not shared_team:
            doctor: dict[str, Any] = {"resourceType": "Practitioner", "name": [{"text": "Dr Ames"}]}
            if own_identifiers:  # else a person known by reference only
                npi = uuid.uuid4().hex[:10]
                doctor["identifier"] = [{"system": NPI, "value": npi}]
                self.npis.add(npi)
            doctor = self.ehr_create(doctor, own_identifier=False)
            author = f"Practitioner/{doctor['id']}"
            team = self.ehr_create(
                {
                    "resourceType": "CareTeam",
                    "status": "active",
                    "subject": {"reference": subject},
                    "participant": [{"member": {"reference": author, "display": "Dr Ames"}}],
                },
                own_identifiers,
            )
            team_ref = f"CareTeam/{team['id']}"
        goal_rows = [self.ehr_goal_resource(subject, n, checkins, own_identifiers) for n in range(goals)]
        if shared_goal:
            goal_rows.append({"id": shared_goal.split("/")[1]})
        careplan: dict[str, Any] = {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "title": f"EHR plan {len(self.careplans) + 1}",
            "subject": {"reference": subject},
        }
        if created:
            careplan["created"] = "2026-01-05"
        if author:
            careplan["author"] = {"reference": author}
        if team_ref:
            careplan["careTeam"] = [{"reference": team_ref}]
        if goal_rows:
            careplan["goal"] = [{"reference": f"Goal/{g['id']}"} for g in goal_rows]
        if activities:
            careplan["activity"] = [
                {
                    "detail": {
                        "status": "not-started",
                        "description": f"EHR step {n}",
                        **({"goal": [{"reference": f"Goal/{goal_rows[n]['id']}"}]} if n < len(goal_rows) else {}),
                    }
                }
                for n in range(max(1, len(goal_rows)))
            ]
        written = self.ehr_create(careplan, own_identifiers)
        authored = EhrCarePlan(written["id"], subject, mrn, team_ref, [f"Goal/{g['id']}" for g in goal_rows])
        self.careplans[written["id"]] = authored
        return authored

    def ehr_add_goal(self, plan_id: str, text: str) -> dict[str, Any]:
        """A clinician writes a Goal of their own and adds it to the CarePlan's goals (the CarePlan by id)."""
        careplan = self.ehr.request("GET", f"CarePlan/{careplan_id_of(plan_id)}").json()
        goal = self.ehr_create(
            {
                "resourceType": "Goal",
                "lifecycleStatus": "proposed",
                "description": {"text": text},
                "subject": careplan["subject"],
            },
            own_identifier=False,
        )
        self.ehr_drop_deleted_goals(careplan)  # as a real EHR must: the server refuses a CarePlan naming them
        careplan["goal"] = [*careplan.get("goal", []), {"reference": f"Goal/{goal['id']}"}]
        self.ehr_put(careplan, careplan["meta"]["versionId"])
        return goal

    def ehr_delete(self, key: str) -> None:
        super().ehr_delete(key)
        self.deleted.add(key)

    # ---- the server, per patient ----

    def patient_resources(self, patient: str) -> dict[str, list[dict[str, Any]]]:
        """Every CarePlan, CareTeam, Goal and Observation of the patient on the server, by type."""
        return {t: self.reader.search(t, {"subject": patient, "_count": "1000"}) for t in COUNTED}

    def people(self) -> dict[str, list[str]]:
        """The identifier values of the Practitioners with an NPI of the EHR's, by NPI, and of those planbridge
        created for its members (`{base}/member|<plan>/<member>`), under "planbridge"."""
        found: dict[str, list[str]] = {npi: [] for npi in self.npis}
        for npi in self.npis:
            found[npi] = [p["id"] for p in self.reader.search("Practitioner", {"identifier": f"{NPI}|{npi}"})]
        system = f"{self.base}/member"
        found["planbridge"] = [
            i["value"]
            for p in self.reader.search("Practitioner", {"identifier": f"{system}|", "_count": "1000"})
            for i in p.get("identifier", [])
            if i.get("system") == system
        ]
        return found

    def pulls(self, log: list[tuple[str, str, Any, str]], plan_id: str, base: str) -> bool:
        """True when a logged request read the plan's CarePlan: by planbridge's identifier (tests/sync_model_support.
        plan_pulls), by its id (`CarePlan?_id=`) or by its patient (`CarePlan?subject=`, a pull of the patient)."""
        if plan_pulls(log, plan_id, base):
            return True
        careplan_id = plan_id[len(PREFIX) :] if plan_id.startswith(PREFIX) else None
        authored = self.careplans.get(careplan_id or "")
        for method, path, params, outcome in log:
            if method != "GET" or not path.startswith("CarePlan") or not outcome.startswith("2"):
                continue
            items = params.items() if isinstance(params, dict) else (params or [])
            for name, value in items:
                if name == "_id" and careplan_id in str(value).split(","):
                    return True
                if name == "subject" and authored is not None and str(value) == authored.patient:
                    return True
        return False
