"""A world for sync tests against the real local FHIR server: team events through the service layer, an
EHR editing the server with its own client, planbridge's engine and outbox worker, and a reader that
maps the server's copy of a plan back to plan JSON exactly as the puller does.

Used by tests/integration/test_sync_model.py (the model-based test) and test_sync_regressions.py (the
deterministic cases it found). Nothing of planbridge is replaced: the FHIR client subclasses below only
record what they send, or die after sending, as a killed worker would.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from mappings.bundle import careplan_from_fhir, index_entries
from service.api.schemas import EVENT_DATA_SCHEMAS
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.services.events import Envelope, handle_event
from service.store.tables import Base, ConflictRow, OutboxRow, SyncStateRow
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.notifications import receive_resource
from service.sync.pull_links import known_people
from service.sync.worker import OutboxWorker
from tests.support import FIXTURES, Clock, settings
from tests.sync_model_helpers import (  # noqa: F401
    BOOKKEEPING,
    IDENTITY_KEYS,
    KINDS,
    REMOVED,
    SOURCE_KEY,
    KilledAfterSending,
    RecordingClient,
    ServerPlan,
    WorkerKilled,
    _identity,
    _names_goal_not_in,
    diff_paths,
    get_at,
    held_out,
    plan_document,
    plan_pulls,
    related,
    set_at,
    short,
    split_path,
    under,
    without_dangling_extensions,
    without_dangling_goals,
    without_refs_to,
    without_removed,
    without_source,
)


class SyncWorld:
    """Plans in a database, planbridge (engine + outbox worker) and an EHR, all on one real FHIR server.

    The clock is a hand-moved test clock; the identifier base is fresh, so nothing on the server from
    another world is visible to this one.
    """

    def __init__(self, engine: Any, fhir_base_url: str, clock: Clock | None = None) -> None:
        self.db = engine
        self.base_url = fhir_base_url
        self.clock = clock or Clock()
        self.settings = settings(fhir_base_url=fhir_base_url)
        self.base = self.settings.identifier_base
        self.client = RecordingClient(fhir_base_url, timeout=10, max_retries=1, sleep=lambda _s: None)
        self.ehr = FhirClient(fhir_base_url, timeout=10)
        self.reader = FhirClient(fhir_base_url, timeout=10)
        self.sent_elsewhere = 0  # requests of clients that died with their process
        self.fresh_planbridge()

    def fresh_planbridge(self) -> None:
        """Start planbridge afresh (as after a crash): new engine and worker over the same database and client."""
        self.sync = SyncEngine(UnitOfWork(self.db), self.client, self.settings, self.clock)
        self.worker = OutboxWorker(UnitOfWork(self.db), self.client, self.settings, self.clock)

    @property
    def requests_sent(self) -> int:
        return self.client.requests_sent + self.sent_elsewhere

    def wipe_database(self) -> None:
        """Delete every row (a fresh world on the same migrated database)."""
        with self.db.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.now += timedelta(seconds=seconds)

    # ---- plans ----

    def add_plan(self, fixture: str) -> str:
        """Store a fixture plan under a fresh id and MRN; return its id."""
        plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / fixture).read_text()))
        plan.id = f"{plan.id}-{uuid.uuid4().hex[:6]}"
        plan.patient.mrn = f"MRN-{uuid.uuid4().hex[:8]}"
        plan.touch(self.clock().isoformat())
        with UnitOfWork(self.db) as uow:
            uow.plans.save(plan)
            uow.commit()
        return plan.id

    def plan(self, plan_id: str) -> Plan:
        with UnitOfWork(self.db) as uow:
            plan = uow.plans.get(plan_id)
        assert plan is not None, plan_id
        return plan

    def plan_doc(self, plan_id: str) -> dict[str, Any]:
        return plan_document(self.plan(plan_id))

    def conflicts(self, plan_id: str) -> list[dict[str, Any]]:
        return self.sync.status(plan_id).conflicts

    def open_conflicts(self, plan_id: str) -> list[dict[str, Any]]:
        return [c for c in self.conflicts(plan_id) if c["status"] == "open"]

    def all_open_conflicts(self) -> dict[str, list[dict[str, Any]]]:
        """Every open conflict by plan, in one query (the model reads them around every action)."""
        found: dict[str, list[dict[str, Any]]] = {}
        with self.db.connect() as conn:
            rows = conn.execute(
                sa.select(ConflictRow.__table__).where(ConflictRow.status == "open").order_by(ConflictRow.id)
            ).mappings()
            for row in rows:
                found.setdefault(row["plan_id"], []).append(
                    {k: row[k] for k in ("id", "plan_id", "path", "base", "ours", "theirs", "status")}
                )
        return found

    def sync_states(self) -> dict[str, str]:
        """Every plan's sync state as stored, in one query."""
        with self.db.connect() as conn:
            table = SyncStateRow.__table__
            return dict(conn.execute(sa.select(table.c.plan_id, table.c.status)).all())

    # ---- team events, through the service layer ----

    def team(self, event_type: str, **data: Any) -> tuple[int, str]:
        """Apply a team event as POST /webhooks/team does after verifying it; return (status, detail)."""
        body = {"type": event_type, "timestamp": self.clock().isoformat(), "data": data}
        command = EVENT_DATA_SCHEMAS[event_type]().load(data)
        raw = json.dumps(body, sort_keys=True).encode()
        envelope = Envelope(f"msg_{uuid.uuid4().hex}", hashlib.sha256(raw).hexdigest(), body)
        outcome = handle_event(self.db, envelope, event_type, command, self.clock)
        return outcome.status, str(outcome.body.get("detail", ""))

    # ---- the server, as the puller reads it ----

    def find(self, resource_type: str, kind: str, value: str) -> dict[str, Any] | None:
        found = self.reader.search(resource_type, {"identifier": f"{self.base}/{kind}|{value}"})
        return found[0] if found else None

    def server(self, plan_id: str) -> ServerPlan:
        """Read the plan's CarePlan with everything it names and map it back to plan JSON, as a pull would."""
        entries = self.reader.search_entries(
            "CarePlan",
            [
                ("identifier", f"{self.base}/plan|{plan_id}"),
                ("_include", "CarePlan:goal"),
                ("_include", "CarePlan:care-team"),
                ("_include", "CarePlan:subject"),
                ("_include:iterate", "CareTeam:participant"),
                ("_count", "200"),
            ],
        )
        index = index_entries(entries)
        wanted = sorted(
            {
                ref["reference"].split("/")[1]
                for e in entries
                if e["resource"].get("resourceType") == "Goal"
                for ref in e["resource"].get("outcomeReference", [])
                if ref.get("reference", "").startswith("Observation/") and ref["reference"] not in index
            }
        )
        if wanted:
            index.update(
                index_entries(self.reader.search_entries("Observation", {"_id": ",".join(wanted), "_count": "500"}))
            )
        careplans = [
            e["resource"]
            for e in entries
            if e["resource"].get("resourceType") == "CarePlan" and e.get("search", {}).get("mode", "match") == "match"
        ]
        assert len(careplans) <= 1, f"{len(careplans)} CarePlans carry plan {plan_id}'s identifier"
        if not careplans:
            return ServerPlan(None)
        dangling = sorted(
            {
                r["reference"]
                for r in careplans[0].get("goal", [])
                if isinstance(r, dict)
                and str(r.get("reference", "")).startswith("Goal/")
                and r["reference"] not in index
            }
        )
        careplan = without_dangling_goals(careplans[0], index)
        index = {k: without_dangling_extensions(r, index) if k.startswith("Goal/") else r for k, r in index.items()}
        with UnitOfWork(self.db) as uow:  # the people a pull does not read, named as the plan knows them
            stored = uow.plans.get(plan_id)
            people = known_people(stored, uow.links.for_plan(plan_id), self.base) if stored is not None else {}
        plan = careplan_from_fhir(careplan, index, self.base, self.settings.mrn_system, people=people)
        resources = {
            f"{r['resourceType']}/{r['id']}": r
            for r in [careplan, *index.values()]
            if r.get("resourceType") in ("CarePlan", "CareTeam", "Goal", "Observation")
        }
        return ServerPlan(plan_document(plan), resources, dangling)

    def duplicates(self) -> list[str]:
        """Name every planbridge identifier that more than one resource on the server carries."""
        found = []
        for resource_type, kind in KINDS:
            system = f"{self.base}/{kind}"
            holders: dict[str, list[str]] = {}
            for r in self.reader.search(resource_type, {"identifier": f"{system}|", "_count": "1000"}):
                for i in r.get("identifier", []):
                    if i.get("system") == system:
                        holders.setdefault(i.get("value", ""), []).append(f"{resource_type}/{r['id']}")
            found += [f"{system}|{value}: {', '.join(ids)}" for value, ids in holders.items() if len(ids) > 1]
        return found

    # ---- the EHR ----

    def ehr_put(self, resource: dict[str, Any], if_match: str | None) -> dict[str, Any]:
        headers = {"If-Match": f'W/"{if_match}"'} if if_match else None
        path = f"{resource['resourceType']}/{resource['id']}"
        return self.ehr.request("PUT", path, json=resource, headers=headers).json()

    def ehr_edit(self, key: str, edit: Any, if_match: bool = True) -> dict[str, Any]:
        """Read `Type/id`, change it with `edit(resource)` and save it, with If-Match on the version read or without."""
        resource = self.ehr.request("GET", key).json()
        version = resource["meta"]["versionId"]
        edit(resource)
        return self.ehr_put(resource, version if if_match else None)

    def ehr_goal(self, plan_id: str, goal_id: str) -> dict[str, Any]:
        goal = self.find("Goal", "goal", f"{plan_id}/{goal_id}")
        assert goal is not None, f"no Goal {plan_id}/{goal_id} on the server"
        return goal

    def ehr_add_goal(self, plan_id: str, text: str) -> dict[str, Any]:
        """A clinician writes a Goal of their own and adds it to the CarePlan's goals."""
        careplan = self.find("CarePlan", "plan", plan_id)
        assert careplan is not None
        goal = self.ehr.request(
            "POST",
            "Goal",
            json={
                "resourceType": "Goal",
                "lifecycleStatus": "proposed",
                "description": {"text": text},
                "subject": careplan["subject"],
            },
        ).json()
        self.ehr_drop_deleted_goals(careplan)
        careplan["goal"] = [*careplan.get("goal", []), {"reference": f"Goal/{goal['id']}"}]
        self.ehr_put(careplan, careplan["meta"]["versionId"])
        return goal

    def ehr_drop_deleted_goals(self, careplan: dict[str, Any]) -> None:
        """Take out of the CarePlan (in place) its references to Goals the server no longer holds, as an EHR must
        before it saves the CarePlan again: a server that checks references on write (HAPI's default, Medplum's
        `checkReferencesOnWrite`, the local server) refuses a CarePlan naming a deleted Goal (400 HAPI-1096).
        One search (`Goal?_id=`) for the Goals it names; none when it names none."""
        named = {
            r["reference"]
            for r in [
                *careplan.get("goal", []),
                *(g for a in careplan.get("activity", []) for g in a.get("detail", {}).get("goal", [])),
            ]
            if str(r.get("reference", "")).startswith("Goal/")
        }
        if not named:
            return
        ids = sorted(ref.split("/", 1)[1] for ref in named)
        found = self.ehr.request("GET", "Goal", params={"_id": ",".join(ids), "_count": str(len(ids))}).json()
        held = {f"Goal/{e['resource']['id']}" for e in found.get("entry", []) if "resource" in e}
        gone = named - held
        if not gone:
            return
        careplan["goal"] = [r for r in careplan.get("goal", []) if r.get("reference") not in gone]
        if not careplan["goal"]:
            del careplan["goal"]
        for activity in careplan.get("activity", []):
            detail = activity.get("detail", {})
            if "goal" in detail:
                detail["goal"] = [r for r in detail["goal"] if r.get("reference") not in gone]
                if not detail["goal"]:
                    del detail["goal"]

    def ehr_delete(self, key: str) -> None:
        self.ehr.request("DELETE", key)

    # ---- notifications and the worker ----

    def notify(self, resource: dict[str, Any]) -> list[str]:
        """Deliver a rest-hook notification carrying `resource`, as POST /fhir-notifications would."""
        return receive_resource(UnitOfWork(self.db), resource, self.base, self.clock()).queued

    def outbox(self) -> list[OutboxRow]:
        with UnitOfWork(self.db) as uow:
            return list(uow.session.scalars(sa.select(OutboxRow).order_by(OutboxRow.id)))

    def kill_worker(self) -> str | None:
        """Run one outbox entry in a worker whose process dies right after sending a transaction (if it sends one);
        then planbridge restarts with a fresh engine and worker. Return what the server answered the
        transaction, or None when the entry sent none (it then finished normally)."""
        killer = KilledAfterSending(self.base_url, timeout=10, max_retries=1, sleep=lambda _s: None)
        worker = OutboxWorker(UnitOfWork(self.db), killer, self.settings, self.clock)
        try:
            worker.process_one()
        except WorkerKilled:
            pass
        finally:
            self.sent_elsewhere += killer.requests_sent
            self.client.log.extend(killer.log)
        self.fresh_planbridge()
        return killer.sent

    def kill_push(self, plan_id: str) -> str | None:
        """Push a plan from an engine whose process dies right after sending the transaction."""
        killer = KilledAfterSending(self.base_url, timeout=10, max_retries=1, sleep=lambda _s: None)
        engine = SyncEngine(UnitOfWork(self.db), killer, self.settings, self.clock)
        try:
            engine.push(plan_id)
        except WorkerKilled:
            pass
        finally:
            self.sent_elsewhere += killer.requests_sent
            self.client.log.extend(killer.log)
        self.fresh_planbridge()
        return killer.sent

    def lease_expires(self) -> None:
        """Move the clock past the outbox lease, so an entry a dead worker held comes due again."""
        self.tick(self.settings.outbox_lease_seconds + 1)
