"""A world for sync tests against the real local FHIR server: team events through the service layer, an
EHR editing the server with its own client, planbridge's engine and outbox worker, and a reader that
maps the server's copy of a plan back to plan JSON exactly as the puller does.

Used by tests/integration/test_sync_model.py (the model-based test) and test_sync_regressions.py (the
deterministic cases it found). Nothing of planbridge is replaced: the FHIR client subclasses below only
record what they send, or die after sending, as a killed worker would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from dataclasses import dataclass, field
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

SOURCE_KEY = "_planbridge_source"  # mappings.datatypes.SOURCE: where an EHR-authored resource came from
KINDS = (("CarePlan", "plan"), ("CareTeam", "careteam"), ("Goal", "goal"), ("Observation", "checkin"))
BOOKKEEPING = ("version", "updated_at")


# ---------------------------------------------------------------------------------------------- paths


def split_path(path: str) -> list[str | tuple[str, str]]:
    """Split a plan path as service.sync.merge names them.

    `goals[id=g.1].notes` -> ["goals", ("id", "g.1"), "notes"] (ids may hold dots).
    """
    parts: list[str | tuple[str, str]] = []
    name, i = "", 0
    while i < len(path):
        c = path[i]
        if c == ".":
            if name:
                parts.append(name)
            name = ""
        elif c == "[":
            if name:
                parts.append(name)
            name = ""
            end = path.index("]", i)
            key, _, ident = path[i + 1 : end].partition("=")
            parts.append((key, ident))
            i = end
        else:
            name += c
        i += 1
    if name:
        parts.append(name)
    return parts


def get_at(document: Any, path: str) -> Any:
    """Return the value at a plan path, None when it (or anything above it) is absent."""
    target = document
    for part in split_path(path):
        if isinstance(part, tuple):
            key, ident = part
            if not isinstance(target, list):
                return None
            target = next((i for i in target if isinstance(i, dict) and str(i.get(key)) == ident), None)
        elif isinstance(target, dict):
            target = target.get(part)
        else:
            return None
        if target is None:
            return None
    return target


def set_at(document: dict[str, Any], path: str, value: Any) -> None:
    """Set (None: remove) the value at a plan path; missing parents are made, as far as they can be."""
    parts = split_path(path)
    target: Any = document
    for n, part in enumerate(parts[:-1]):
        nxt = parts[n + 1]
        if isinstance(part, tuple):
            key, ident = part
            found = next((i for i in target if str(i.get(key)) == ident), None)
            if found is None:
                found = {key: ident}
                target.append(found)
            target = found
        else:
            if target.get(part) is None:
                target[part] = [] if isinstance(nxt, tuple) else {}
            target = target[part]
    last = parts[-1]
    if isinstance(last, tuple):
        key, ident = last
        at = next((n for n, i in enumerate(target) if str(i.get(key)) == ident), None)
        if value is None:
            if at is not None:
                del target[at]
        elif at is None:
            target.append(copy.deepcopy(value))
        else:
            target[at] = copy.deepcopy(value)
    elif value is None:
        target.pop(last, None)
    else:
        target[last] = copy.deepcopy(value)


IDENTITY_KEYS = ("id", "member_id")  # what identifies the items of a list, as service.sync.merge has it


def _identity(items: Any) -> str | None:
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        return None
    return next((k for k in IDENTITY_KEYS if all(k in i for i in items)), None)


def diff_paths(before: Any, after: Any, path: str = "") -> list[str]:
    """Return the paths whose values differ, named as service.sync.merge names them, item by item.

    Like `changed_paths`, except that a list of items with an identity that is absent on one side (plan JSON
    leaves empty lists out) is compared item by item with an empty one, not as one value: the EHR deleting a
    plan's last goal changes `goals[id=g]`, not `goals`.
    """
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for k in [*before, *(k for k in after if k not in before)]:
            out += diff_paths(before.get(k), after.get(k), f"{path}.{k}" if path else k)
        return out
    key = _identity(before) or _identity(after)
    if key is not None and isinstance(before or [], list) and isinstance(after or [], list):
        b = {i[key]: i for i in before or []}
        a = {i[key]: i for i in after or []}
        out = []
        for k in [*b, *(k for k in a if k not in b)]:
            out += diff_paths(b.get(k), a.get(k), f"{path}[{key}={k}]")
        return out
    return [path]


def under(path: str, other: str) -> bool:
    """True when `path` is `other` or lies inside it."""
    return path == other or path.startswith((f"{other}.", f"{other}["))


def related(a: str, b: str) -> bool:
    """True when one path lies under (or is) the other."""
    return under(a, b) or under(b, a)


def without_source(value: Any) -> Any:
    """Return a copy without the mapping's note of where an EHR-authored resource came from: planbridge
    re-creates such resources under its own identifier by design (docs/plan-format.md), which moves it."""
    if isinstance(value, dict):
        return {k: without_source(v) for k, v in value.items() if k != SOURCE_KEY}
    if isinstance(value, list):
        return [without_source(v) for v in value]
    return value


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan as the sync compares it: plan JSON without planbridge's own counters."""
    return without_source({k: v for k, v in codec.to_dict(plan).items() if k not in BOOKKEEPING})


def short(value: Any, limit: int = 160) -> str:
    """Return a value as compact JSON, cut to `limit` characters."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- clients


class WorkerKilled(BaseException):
    """The process running planbridge died: nothing after this point runs, nothing is recorded."""


class RecordingClient(FhirClient):
    """planbridge's FHIR client, unchanged, keeping a log of what it sent (method, path, params, outcome)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[str, str, Any, str]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = super().request(method, path, **kwargs)
        except Exception as exc:
            self.log.append((method, path, kwargs.get("params"), type(exc).__name__))
            raise
        self.log.append((method, path, kwargs.get("params"), str(response.status_code)))
        return response


class KilledAfterSending(RecordingClient):
    """A client whose process dies right after its first transaction reached the server (and was applied, or
    refused), before the answer is read: what a worker killed between sending and recording leaves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: str | None = None  # the server's status for the transaction that was sent

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        body = kwargs.get("json")
        is_transaction = method == "POST" and isinstance(body, dict) and body.get("type") == "transaction"
        if not is_transaction:
            return super().request(method, path, **kwargs)
        try:
            response = super().request(method, path, **kwargs)
            self.sent = str(response.status_code)
        except Exception as exc:  # refused: it still reached the server; the process dies all the same
            self.sent = type(exc).__name__
        raise WorkerKilled(f"killed after sending a transaction (server answered {self.sent})")


def plan_pulls(log: list[tuple[str, str, Any, str]], plan_id: str, base: str) -> bool:
    """True when a logged request read the plan's CarePlan by planbridge's identifier (a pull of it)."""
    wanted = f"{base}/plan|{plan_id}"
    for method, path, params, outcome in log:
        if method != "GET" or not path.startswith("CarePlan") or not outcome.startswith("2"):
            continue
        items = params.items() if isinstance(params, dict) else (params or [])
        for name, value in items:
            if name == "identifier" and wanted in str(value).split(","):
                return True
    return False


# ---------------------------------------------------------------------------------------------- server


@dataclass
class ServerPlan:
    """A plan's copy on the server, read as the puller reads it."""

    doc: dict[str, Any] | None  # the plan JSON the CarePlan maps to (None: no CarePlan)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Goal/12" -> the resource
    dangling: list[str] = field(default_factory=list)  # Goals the CarePlan names that the server does not hold

    def versions(self) -> dict[str, str]:
        return {key: r.get("meta", {}).get("versionId", "?") for key, r in self.resources.items()}


def without_dangling_goals(careplan: dict[str, Any], index: dict[str, Any]) -> dict[str, Any]:
    """Return the CarePlan without its references to Goals the server no longer holds.

    A reference to a Goal the EHR deleted is no value of its own: the EHR deleted the Goal, not the
    reference, and planbridge may drop such references when it next writes the CarePlan.
    """

    def kept(refs: list[Any]) -> list[Any]:
        return [
            r
            for r in refs
            if not (
                isinstance(r, dict) and str(r.get("reference", "")).startswith("Goal/") and r["reference"] not in index
            )
        ]

    out = copy.deepcopy(careplan)
    if "goal" in out:
        out["goal"] = kept(out["goal"])
        if not out["goal"]:
            del out["goal"]
    for activity in out.get("activity", []):
        detail = activity.get("detail")
        if isinstance(detail, dict) and "goal" in detail:
            detail["goal"] = kept(detail["goal"])
            if not detail["goal"]:
                del detail["goal"]
    return out


def _names_goal_not_in(value: Any, live: set[str] | dict[str, Any]) -> bool:
    """Tell whether `value` names, anywhere inside, a `Goal/id` that `live` does not hold."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("Goal/") and ref not in live:
            return True
        return any(_names_goal_not_in(v, live) for v in value.values())
    if isinstance(value, list):
        return any(_names_goal_not_in(v, live) for v in value)
    return False


def without_dangling_extensions(resource: dict[str, Any], live: set[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a Goal (or a goal's `fhir_extra`) without its extensions naming a Goal the server no longer holds (a
    replacement by a Goal the EHR deleted): like a CarePlan's reference to one, no value of its own, which
    planbridge drops when it reads it (a server checking every reference refuses a write naming it)."""
    extensions = resource.get("extension")
    if not isinstance(extensions, list) or not _names_goal_not_in(extensions, live):
        return resource
    out = dict(resource)
    out["extension"] = [e for e in extensions if not _names_goal_not_in(e, live)]
    if not out["extension"]:
        del out["extension"]
    return out


def without_refs_to(document: dict[str, Any], live: set[str] | dict[str, Any]) -> dict[str, Any]:
    """Return the plan document without the references to Goals the server does not hold that it keeps as they
    came (`careplan_extra.goal`, a step's `detail_extra.goal`): the counterpart of `without_dangling_goals`."""

    def kept(refs: Any) -> Any:
        if not isinstance(refs, list):
            return refs
        return [
            r
            for r in refs
            if not (
                isinstance(r, dict) and str(r.get("reference", "")).startswith("Goal/") and r["reference"] not in live
            )
        ]

    out = copy.deepcopy(document)
    for holder in [out.get("careplan_extra"), *(s.get("detail_extra") for s in out.get("steps", []))]:
        if isinstance(holder, dict) and "goal" in holder:
            holder["goal"] = kept(holder["goal"])
            if not holder["goal"]:
                del holder["goal"]
    for goal in out.get("goals", []):
        if isinstance(goal, dict) and isinstance(goal.get("fhir_extra"), dict):
            goal["fhir_extra"] = without_dangling_extensions(goal["fhir_extra"], live)
    return out


REMOVED = "removed_in_ehr"  # service.domain.model.Removal: an item the plan records as deleted in the EHR


def without_removed(document: dict[str, Any]) -> dict[str, Any]:
    """Return the plan document without the items it records as deleted or removed in the EHR (`removed_in_ehr`),
    and without references to such goals: they stay in the plan, and are by design never on the server.

    A member so marked who is still named elsewhere in the plan stays, off the team (as the server names them);
    someone off the team whom only the removed items named is not on the server either.
    """
    marked = {
        key: {i.get("id") for i in document.get(key, []) if isinstance(i, dict) and i.get(REMOVED)}
        for key in ("goals", "steps", "team")
    }
    if not any(marked.values()):
        return document
    out = copy.deepcopy(document)
    for key in ("goals", "steps"):
        kept = [i for i in out.get(key, []) if i.get("id") not in marked[key]]
        if kept:
            out[key] = kept
        else:
            out.pop(key, None)
    rest = json.dumps({k: v for k, v in out.items() if k != "team"})
    named_before = json.dumps({k: v for k, v in document.items() if k != "team"})
    team = []
    for member in out.get("team", []):
        named = f'"{member["id"]}"'
        if member.get("in_team") is False and named in named_before and named not in rest:
            continue  # off the team and named only by what the EHR removed: nothing on the server names them
        if member.get("id") in marked["team"]:
            if f'"{member["id"]}"' not in rest:
                continue
            member = {k: v for k, v in member.items() if k != REMOVED}
            member["in_team"] = False
        team.append(member)
    if team:
        out["team"] = team
    else:
        out.pop("team", None)
    for step in out.get("steps", []):
        kept = [g for g in step.get("goal_ids", []) if g not in marked["goals"]]
        if kept:
            step["goal_ids"] = kept
        else:
            step.pop("goal_ids", None)
    for goal in out.get("goals", []):
        if goal.get("replaces") in marked["goals"]:
            del goal["replaces"]
    return out


def held_out(document: dict[str, Any], open_conflicts: list[dict[str, Any]], server: dict[str, Any]) -> dict[str, Any]:
    """Return the plan document without references to goals an open conflict holds off the server, and without
    the items the plan records as removed in the EHR (`without_removed`).

    A goal the EHR deleted stays in the plan while its conflict (`goals[id=g]`) is open, and cannot be
    named on the server: what refers to it there (a step's goals, a revision's `replaces`) lies under
    that conflict too.
    """
    document = without_removed(document)
    held = {
        c["path"][len("goals[id=") : -1]
        for c in open_conflicts
        if c["path"].startswith("goals[id=") and c["path"].endswith("]") and "]." not in c["path"]
    }
    held = {g for g in held if get_at(server, f"goals[id={g}]") is None}
    if not held:
        return document
    out = copy.deepcopy(document)
    for step in out.get("steps", []):
        kept = [g for g in step.get("goal_ids", []) if g not in held]
        if kept:
            step["goal_ids"] = kept
        else:
            step.pop("goal_ids", None)
    for goal in out.get("goals", []):
        if goal.get("replaces") in held:
            del goal["replaces"]
    # People off the team whom only a held goal names (its proposer, an agreement's author...): the plan keeps
    # them with the goal, the server cannot name them any more. They lie under that goal's conflict too.
    rest = json.dumps(
        {
            **{k: v for k, v in out.items() if k != "team"},
            "goals": [g for g in out.get("goals", []) if g["id"] not in held],
        }
    )
    on_server = {m.get("id") for m in (server or {}).get("team", [])}
    team = [
        m for m in out.get("team", []) if m.get("in_team", True) or m.get("id") in on_server or f'"{m["id"]}"' in rest
    ]
    if team:
        out["team"] = team
    else:
        out.pop("team", None)
    return out


# ---------------------------------------------------------------------------------------------- world


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
