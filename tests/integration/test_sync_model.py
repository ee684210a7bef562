"""A model-based test of the sync: team events, EHR edits and planbridge's push, pull and worker, interleaved
in any order by hypothesis, against the real local FHIR server and the real databases (SQLite, PostgreSQL).

Each example is a fresh world (tests/sync_model_support.SyncWorld): one or two fixture plans under a fresh
identifier base, pushed once and read back. Then the rules run in any order:

- team events through the service layer (`handle_event`, with the real event schemas): goal.status_changed,
  goal.revised, step.added, step.done, checkin.recorded, member.joined, note.added, plan.updated;
- EHR writes with its own client: an edit of one field of any of the plan's resources (Goal lifecycleStatus,
  description, priority, note, statusReason, target due date; CarePlan title, description, status, note;
  CareTeam name; Observation value or note), saved with If-Match on the version read or without, from a
  fresh read or from a copy read earlier (stale); a Goal of the EHR's own added to the CarePlan; a Goal
  deleted;
- rest-hook notifications of every write (the EHR's and planbridge's own echoes) delivered through
  `receive_resource` in any order, duplicated, or lost; payload-less pings (`receive_ping`);
- planbridge: `SyncEngine.push`, `pull_plans`, `pull_changed`, one outbox entry run by the worker, a
  conflict resolved (ours, theirs, a value; a text over 2000 characters is refused, the conflict left open),
  a worker or a push killed right after its transaction reached the server (a fresh engine and worker carry
  on once the lease has run out), the clock moved on, and now and then everything settled (pushed, pulled
  and drained until nothing changes).

The server is read as the puller reads it and mapped back to plan JSON, so every check compares plan paths
as `service.sync.merge` names them. After every step (`SyncModel.planbridge` checks each planbridge action
against what it did to the server, `after_every_step` the rest, `check_agreement` rule 5):

1. no value the EHR wrote is replaced on the server by planbridge unless planbridge had pulled it and
   either merged it, or it was the value both sides last agreed on, or a conflict on it was resolved;
2. at most one resource on the server per planbridge identifier;
3. `conflicted` if and only if a conflict is open; a path with an open conflict is never changed on the
   server by planbridge; a conflict only closes without a resolution when both sides agree;
4. at most PUSH_REQUESTS requests per push or worker step, PULL_REQUESTS per pull of a plan (each plus one
   per read for every deleted Goal the CarePlan still names); no action raises or leaves an outbox entry
   failed;
5. (when settled, and at the end of each example) the plan and the server agree field by field, except
   under or over an open conflict's path (a step's reference to a goal a conflict holds off the server
   included: one on that goal, or one on the whole `goals` list, which holds every goal the team adds
   while it is open).

What is not a value of its own is left out of every comparison: a reference to a Goal the server no longer
holds (the EHR deleted the Goal, not the reference), and the mapping's note of where an EHR-authored
resource came from (planbridge re-creates such resources under its own identifier by design).

By default 15 examples of up to 25 steps per database (about 20 s each on two cores), not shrunk: a
failure prints its steps in words, which says more than hypothesis' shrunk rule calls, and shrinking
against a real server takes minutes. For a soak run, e.g. 200 examples of up to 60 steps per database:

    PLANBRIDGE_MODEL_EXAMPLES=200 PLANBRIDGE_MODEL_STEPS=60 .venv/bin/pytest tests/integration/test_sync_model.py -x -rA

(PLANBRIDGE_MODEL_SHRINK=1 shrinks a failure as well, within hypothesis' own time limit.) `-rA` shows the
examples and steps actually run, per database, and which rules ran how often (also in the JUnit XML as
properties `examples` and `steps`). A failure names the invariant, the plan path, the values and the
server versions, then the steps of the example in words; tests/integration/test_sync_regressions.py holds
the cases found so far, each reduced to a deterministic test.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from service.domain.errors import RuleViolation
from service.fhir.errors import FhirError
from service.store.uow import UnitOfWork
from service.sync.notifications import receive_ping
from tests.model_support import ModelRun
from tests.sync_model_support import (
    SyncWorld,
    diff_paths,
    get_at,
    held_out,
    plan_pulls,
    related,
    set_at,
    short,
    without_refs_to,
    without_removed,
)

# The suite's short run is derandomized (the same interleavings every run: CI is reproducible); a soak
# (PLANBRIDGE_MODEL_EXAMPLES set) or PLANBRIDGE_MODEL_RANDOM=1 explores new ones each time.
RUN = ModelRun.from_env("PLANBRIDGE_MODEL", examples=15, steps=25)
PUSH_REQUESTS = 8  # patient lookup, reconcile read (2), transaction, re-read (2) and one more transaction
PULL_REQUESTS = 3  # the CarePlan search with its includes, the check-ins (and a page more)
CHANGED_REQUESTS = 4  # the four "what changed" searches of an incremental pull
# ... and one more request per read of a plan for each Goal its CarePlan names that the server no longer
# holds (the pull reads that Goal's history to learn which goal it was)
SETTLE_ROUNDS = 6
PENDING_NOTIFICATIONS = 12  # notifications held back (to deliver late) at most; older ones are lost

FIXTURE_PLANS = [
    "knee-rehabilitation.json",
    "young-person-anxiety.json",
    "cardiac-rehab-checkins.json",
    "alcohol-disagreement.json",
    "depression-treatment-choice.json",
    "diabetes-revised-goal.json",
    "eating-disorder-recovery.json",
    "goal-setting-declined.json",
    "minimal.json",
]
GOAL_STATUSES = ["on-hold", "active", "completed", "cancelled", "accepted", "planned"]
EHR_GOAL_STATUSES = ["on-hold", "active", "completed", "cancelled", "accepted", "proposed"]
CAREPLAN_STATUSES = ["on-hold", "active", "completed"]
PRIORITIES = ["high-priority", "medium-priority", "low-priority"]
PRIORITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-priority"
EHR_TARGETS = ["Goal", "CarePlan", "Goal", "Observation", "CareTeam"]
SAVES = ["if-match", "no-if-match", "stale-if-match", "stale-no-if-match"]

plan_index = st.integers(0, 1)
pick = st.integers(0, 3)  # which goal, step, resource...: few, so team and EHR often meet on the same one
field_index = st.integers(0, 5)
seed = st.integers(0, 4)


def by_creation(key: str) -> tuple[str, int, str]:
    """Order `Type/id` keys by type, then by numeric id (the order the server created them in)."""
    rtype, _, rid = key.partition("/")
    return (rtype, int(rid) if rid.isdigit() else 0, rid)


def describe(logged: tuple[str, str, Any, str]) -> str:
    """Return a logged request as `METHOD path outcome`, without the query."""
    method, path, _, outcome = logged
    return f"{method} {path.split('?')[0] or '/'} {outcome}"


class ModelViolation(AssertionError):
    """An invariant of the sync does not hold."""


@dataclass
class Protected:
    """A value the EHR wrote at a plan path, still on the server."""

    value: Any
    step: int
    what: str
    version: str  # Type/id/_history/n of the write, for messages
    seen: bool = False  # planbridge pulled the plan while the value was on the server
    merged: bool = False  # ... and the plan took it
    resolved: bool = False  # a conflict on it was resolved since it was seen


def _ehr_edits(resource: dict[str, Any], n: int) -> list[tuple[str, Any]]:
    """Return (field, edit) pairs that change one field of a planbridge resource as a clinician would."""
    kind = resource["resourceType"]
    if kind == "Goal":

        def due(g: dict[str, Any]) -> None:
            targets = g.setdefault("target", [{}])
            targets[0].pop("dueDuration", None)
            targets[0]["dueDate"] = f"2027-0{n + 1}-15"

        return [
            ("lifecycleStatus", lambda g: g.update(lifecycleStatus=EHR_GOAL_STATUSES[n % len(EHR_GOAL_STATUSES)])),
            ("description", lambda g: g.update(description={"text": f"EHR wording {n}"})),
            (
                "priority",
                lambda g: g.update(priority={"coding": [{"system": PRIORITY_SYSTEM, "code": PRIORITIES[n % 3]}]}),
            ),
            (
                "note",
                lambda g: g.update(note=[*g.get("note", []), {"text": f"EHR note {n}", "authorString": "Dr Ward"}]),
            ),
            ("statusReason", lambda g: g.update(statusReason=f"EHR reason {n}")),
            ("target.dueDate", due),
        ]
    if kind == "CarePlan":
        return [
            ("title", lambda c: c.update(title=f"EHR title {n}")),
            ("description", lambda c: c.update(description=f"EHR description {n}")),
            ("status", lambda c: c.update(status=CAREPLAN_STATUSES[n % len(CAREPLAN_STATUSES)])),
            (
                "note",
                lambda c: c.update(
                    note=[*c.get("note", []), {"text": f"EHR plan note {n}", "authorString": "Dr Ward"}]
                ),
            ),
        ]
    if kind == "CareTeam":
        return [("name", lambda t: t.update(name=f"EHR team {n}"))]
    if kind == "Observation":

        def value(o: dict[str, Any]) -> None:
            if "valueQuantity" in o:
                o["valueQuantity"]["value"] = 100 + n
            elif "valueInteger" in o:
                o["valueInteger"] = 100 + n
            elif "valueString" in o:
                o["valueString"] = f"EHR value {n}"
            else:
                o["note"] = [*o.get("note", []), {"text": f"EHR reading note {n}"}]

        return [
            ("value", value),
            ("note", lambda o: o.update(note=[*o.get("note", []), {"text": f"EHR reading note {n}"}])),
        ]
    return []


def sync_machine(engine: Any, fhir_base_url: str, stats: Counter) -> type[RuleBasedStateMachine]:
    """Return the state machine class for one database and FHIR server, counting into `stats`."""

    class SyncModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            stats["examples"] += 1
            self.world = SyncWorld(engine, fhir_base_url)
            self.world.wipe_database()
            self.plans: list[str] = []
            self.names: dict[str, str] = {}
            self.server: dict[str, Any] = {}  # plan id -> ServerPlan at the end of the last step
            self.agreed: dict[str, dict[str, Any]] = {}  # plan id -> the values both sides last agreed on
            self.protected: dict[str, dict[str, Protected]] = {}
            self.notifications: list[dict[str, Any]] = []
            self.ehr_copies: dict[str, dict[str, Any]] = {}
            self.log: list[str] = []
            self.step = 0
            self.counter = 0
            self.clean = True
            self.server_changed = True  # the server changed since rule 2 was last checked

        # ------------------------------------------------------------------ helpers

        def note(self, text: str) -> None:
            self.log.append(f"#{self.step} {text}")

        def fail(self, message: str) -> None:
            self.clean = False
            steps = "\n".join(f"  {line}" for line in self.log[-60:])
            plans = ", ".join(f"{name} = {pid}" for pid, name in self.names.items())
            raise ModelViolation(f"{message}\n(plans: {plans}; identifier base {self.world.base})\nsteps:\n{steps}")

        def begin(self, what: str) -> None:
            self.step += 1
            stats["steps"] += 1
            stats[what] += 1
            self.clean = False

        def done(self) -> None:
            self.clean = True

        def pid(self, i: int) -> str:
            return self.plans[i % len(self.plans)]

        def fresh(self, prefix: str) -> str:
            self.counter += 1
            return f"{prefix}-m{self.counter}"

        def docs(self) -> dict[str, dict[str, Any]]:
            return {pid: self.world.plan_doc(pid) for pid in self.plans}

        def open_conflicts(self) -> dict[str, list[dict[str, Any]]]:
            found = self.world.all_open_conflicts()
            return {pid: found.get(pid, []) for pid in self.plans}

        def read_server(self) -> dict[str, Any]:
            return {pid: self.world.server(pid) for pid in self.plans}

        # ------------------------------------------------------------------ set-up

        @initialize(fixtures=st.lists(st.sampled_from(FIXTURE_PLANS), min_size=1, max_size=2))
        def start(self, fixtures: list[str]) -> None:
            self.begin("start")
            for n, fixture in enumerate(fixtures):
                plan_id = self.world.add_plan(fixture)
                self.plans.append(plan_id)
                self.names[plan_id] = "AB"[n]
                pushed = self.world.sync.push(plan_id)
                pulled = self.world.sync.pull_plans([plan_id])  # the plan as it maps back, the fixed point
                self.note(
                    f"plan {self.names[plan_id]} from {fixture}: pushed {pushed.status}, pulled {pulled.outcomes}"
                )
                self.protected[plan_id] = {}
            self.server = self.read_server()
            for plan_id in self.plans:
                if self.server[plan_id].doc is None:
                    self.fail(f"plan {self.names[plan_id]}: the first push left no CarePlan on the server")
                self.agreed[plan_id] = copy.deepcopy(self.server[plan_id].doc)
            self.check_agreement("after the first push and pull")
            self.done()

        # ------------------------------------------------------------------ team events

        def team(self, plan_id: str, event_type: str, **data: Any) -> None:
            status, detail = self.world.team(event_type, plan_id=plan_id, **data)
            stats[f"team {status}"] += 1
            if status == 400:  # refused as undeliverable (what FHIR would refuse): which, and why
                stats[f"team 400 {event_type}: {detail[:100]}"] += 1
            shown = " ".join(f"{k}={v}" for k, v in data.items())
            self.note(f"team {event_type} plan {self.names[plan_id]} {shown} -> {status} {detail[:80]}".rstrip())
            self.world.tick()

        def goal_id(self, plan_id: str, i: int) -> str:
            """The plan's i-th goal (round the list); a goal it does not have when it has none (refused: 404)."""
            goals = [g.id for g in self.world.plan(plan_id).goals]
            return goals[i % len(goals)] if goals else "goal-none"

        @rule(plan=plan_index, goal=pick, status=st.sampled_from(GOAL_STATUSES))
        def team_goal_status(self, plan: int, goal: int, status: str) -> None:
            self.begin("team goal.status_changed")
            plan_id = self.pid(plan)
            self.team(plan_id, "goal.status_changed", goal_id=self.goal_id(plan_id, goal), lifecycle_status=status)
            self.done()

        @rule(plan=plan_index, goal=pick, n=seed)
        def team_goal_revised(self, plan: int, goal: int, n: int) -> None:
            self.begin("team goal.revised")
            plan_id = self.pid(plan)
            new = {"id": self.fresh("goal"), "description": f"Team goal {n}", "priority": PRIORITIES[n % 3]}
            self.team(
                plan_id, "goal.revised", replaces=self.goal_id(plan_id, goal), goal=new, revised_by={"kind": "patient"}
            )
            self.done()

        @rule(plan=plan_index, goal=pick, n=seed)
        def team_step_added(self, plan: int, goal: int, n: int) -> None:
            self.begin("team step.added")
            plan_id = self.pid(plan)
            self.team(
                plan_id,
                "step.added",
                step_id=self.fresh("step"),
                title=f"Step {n}",
                goal_ids=[self.goal_id(plan_id, goal)],
            )
            self.done()

        @rule(plan=plan_index, step=pick)
        def team_step_done(self, plan: int, step: int) -> None:
            self.begin("team step.done")
            plan_id = self.pid(plan)
            steps = [s.id for s in self.world.plan(plan_id).steps]
            if steps:
                self.team(plan_id, "step.done", step_id=steps[step % len(steps)])
            else:
                self.note(f"team step.done plan {self.names[plan_id]}: no step")
            self.done()

        @rule(plan=plan_index, goal=pick, n=seed)
        def team_checkin(self, plan: int, goal: int, n: int) -> None:
            self.begin("team checkin.recorded")
            plan_id = self.pid(plan)
            self.team(
                plan_id,
                "checkin.recorded",
                goal_id=self.goal_id(plan_id, goal),
                checkin_id=self.fresh("ci"),
                at=self.world.clock().isoformat(),
                measure={"display": "How it went (0-10)"},
                integer=n,
            )
            self.done()

        @rule(plan=plan_index, n=seed)
        def team_member_joined(self, plan: int, n: int) -> None:
            self.begin("team member.joined")
            plan_id = self.pid(plan)
            member = self.fresh("member")
            self.team(plan_id, "member.joined", member_id=member, kind="practitioner", role="nurse", name=f"Nurse {n}")
            self.done()

        @rule(plan=plan_index, goal=st.none() | pick, n=seed)
        def team_note(self, plan: int, goal: int | None, n: int) -> None:
            self.begin("team note.added")
            plan_id = self.pid(plan)
            data: dict[str, Any] = {"text": f"Team note {n}", "author": "patient"}
            if goal is not None:
                data["goal_id"] = self.goal_id(plan_id, goal)
            self.team(plan_id, "note.added", **data)
            self.done()

        @rule(plan=plan_index, n=seed)
        def team_plan_title(self, plan: int, n: int) -> None:
            self.begin("team plan.updated")
            self.team(self.pid(plan), "plan.updated", title=f"Team title {n}")
            self.done()

        # ------------------------------------------------------------------ the EHR

        def ehr_write(self, plan_id: str, what: str, write: Any) -> None:
            """Run an EHR write and record what it changed on the server as the EHR's values."""
            before = self.server[plan_id]
            try:
                written = write()
            except FhirError as exc:
                self.note(f"{what} -> refused {type(exc).__name__} (HTTP {exc.status})")
                stats["ehr refused"] += 1
                return
            after = self.world.server(plan_id)
            self.server[plan_id] = after
            self.server_changed = True
            paths = diff_paths(before.doc, after.doc) if before.doc and after.doc else ["*"]
            version = ""
            if isinstance(written, dict) and "deleted" in written:
                version = f"{written['deleted']} deleted"
            if isinstance(written, dict) and "meta" in written:
                version = f"{written['resourceType']}/{written['id']}/_history/{written['meta']['versionId']}"
                self.queue_notification(written)
            shown = ", ".join(f"{p}={short(get_at(after.doc, p), 60)}" for p in paths[:4])
            self.note(f"{what} -> {version or 'done'}; plan paths changed: {shown or 'none'}")
            protected = self.protected[plan_id]
            for path in paths:
                for old in [p for p in protected if related(p, path)]:
                    del protected[old]
                protected[path] = Protected(get_at(after.doc, path), self.step, what, version)
            self.world.tick()

        @rule(
            plan=plan_index,
            kind=st.sampled_from(EHR_TARGETS),
            which=pick,
            field=field_index,
            n=seed,
            save=st.sampled_from(SAVES),
        )
        def ehr_edit(self, plan: int, kind: str, which: int, field: int, n: int, save: str) -> None:
            self.begin("ehr edit")
            plan_id = self.pid(plan)
            keys = sorted(self.server[plan_id].resources, key=by_creation)
            keys = [k for k in keys if k.startswith(f"{kind}/")] or keys
            key = keys[which % len(keys)]
            stale = save.startswith("stale") and key in self.ehr_copies
            if stale:
                read = self.ehr_copies[key]  # the screen the EHR opened earlier
            else:
                read = self.world.ehr.request("GET", key).json()
                self.ehr_copies[key] = copy.deepcopy(read)
            resource = copy.deepcopy(read)
            edits = _ehr_edits(resource, n)
            name, edit = edits[field % len(edits)]
            edit(resource)
            if_match = resource["meta"]["versionId"] if save in ("if-match", "stale-if-match") else None
            condition = "If-Match" if if_match else "no If-Match"
            how = f"{'stale copy of ' if stale else ''}v{resource['meta']['versionId']}, {condition}"
            what = f"EHR edits {key} {name} ({how}) of plan {self.names[plan_id]}"
            self.ehr_write(plan_id, what, lambda: self.world.ehr_put(resource, if_match))
            self.done()

        @rule(plan=plan_index, n=seed)
        def ehr_add_goal(self, plan: int, n: int) -> None:
            self.begin("ehr add goal")
            plan_id = self.pid(plan)

            def add() -> dict[str, Any]:
                goal = self.world.ehr_add_goal(plan_id, f"EHR goal {n}")
                self.queue_notification(goal)
                return self.world.find("CarePlan", "plan", plan_id) or {}

            self.ehr_write(plan_id, f"EHR adds a Goal to plan {self.names[plan_id]}'s CarePlan", add)
            self.done()

        @rule(plan=plan_index, which=pick)
        def ehr_delete_goal(self, plan: int, which: int) -> None:
            self.begin("ehr delete goal")
            plan_id = self.pid(plan)
            goals = sorted((k for k in self.server[plan_id].resources if k.startswith("Goal/")), key=by_creation)
            if not goals:
                self.note(f"EHR delete: plan {self.names[plan_id]} has no Goal on the server")
            else:
                key = goals[which % len(goals)]
                self.ehr_write(
                    plan_id,
                    f"EHR deletes {key} of plan {self.names[plan_id]}",
                    lambda: self.world.ehr_delete(key) or {"deleted": key},
                )
            self.done()

        # ------------------------------------------------------------------ notifications

        def queue_notification(self, resource: dict[str, Any]) -> None:
            self.notifications.append(copy.deepcopy(resource))
            del self.notifications[:-PENDING_NOTIFICATIONS]

        @rule(which=pick, again=st.booleans())
        def deliver_notification(self, which: int, again: bool) -> None:
            """Deliver one waiting notification, not necessarily the oldest; `again`: it is delivered twice."""
            self.begin("notification delivered")
            if not self.notifications:
                self.note("no notification to deliver")
                self.done()
                return
            resource = self.notifications[which % len(self.notifications)]
            if not again:
                self.notifications.remove(resource)
            queued = self.world.notify(resource)
            key = f"{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"
            self.note(f"notification of {key} delivered{' (it will come again)' if again else ''}: queued {queued}")
            self.done()

        @rule()
        def ping(self) -> None:
            """A payload-less rest-hook ping: something changed, planbridge is not told what."""
            self.begin("ping")
            queued = receive_ping(UnitOfWork(self.world.db), self.world.clock()).queued
            self.note(f"rest-hook ping: queued {queued}")
            self.done()

        @rule(which=pick)
        def lose_notification(self, which: int) -> None:
            self.begin("notification lost")
            if not self.notifications:
                self.note("no notification to lose")
                self.done()
                return
            resource = self.notifications.pop(which % len(self.notifications))
            self.note(f"notification of {resource['resourceType']}/{resource['id']} lost")
            self.done()

        # ------------------------------------------------------------------ planbridge

        def planbridge(
            self,
            what: str,
            action: Any,
            budget: str,
            resolving: int | None = None,
            plans: list[str] | None = None,
        ) -> Any:
            """Run a planbridge action and check what it did to the server against the model (rules 1, 3, 4).

            `plans`: the plans the action can touch (all when not given); `budget`: what kind of action it is
            ("push", "pull", "changed", "worker" or "none"), which bounds its requests (rule 4).
            """
            world = self.world
            touched = plans if plans is not None else self.plans
            plans_before = self.docs()
            open_before = self.open_conflicts()
            agreed_before = copy.deepcopy(self.agreed)
            log_start, sent_before = len(world.client.log), world.requests_sent
            outbox_before = {row.id: (row.attempts, row.status) for row in world.outbox()}
            try:
                result = action()
            except FhirError as exc:
                self.fail(f"{what} raised {type(exc).__name__}: {exc}")
            except Exception as exc:
                self.fail(f"{what} raised {type(exc).__name__}: {exc}")
            spent = world.requests_sent - sent_before
            new_log = world.client.log[log_start:]
            if any(method != "GET" for method, _, _, _ in new_log):
                self.server_changed = True
            server_after = {**self.server, **{pid: world.server(pid) for pid in touched}}
            plans_after = self.docs()
            open_after = self.open_conflicts()
            self.note(f"{what} -> {result} ({spent} requests: {', '.join(describe(r) for r in new_log)})")

            max_requests = self.request_budget(budget, touched)
            if spent > max_requests:
                shown = ", ".join(describe(r) for r in new_log)
                self.fail(f"rule 4: {what} sent {spent} requests (at most {max_requests}): {shown}")
            for row in world.outbox():
                attempts, status = outbox_before.get(row.id, (0, "pending"))
                if row.last_error and (row.attempts > attempts or row.status != status):
                    self.fail(
                        f"rule 4: {what}: outbox entry {row.id} ({row.kind} of {row.plan_id}) failed: {row.last_error}"
                    )

            for plan_id in touched:
                name = self.names[plan_id]
                before, after = self.server[plan_id], server_after[plan_id]
                if after.doc is None:
                    self.fail(f"plan {name}: its CarePlan is gone from the server after {what}")
                changed = diff_paths(before.doc, after.doc)
                pulled = plan_pulls(new_log, plan_id, world.base)
                versions = {k: f"v{v}->v{after.versions().get(k, 'gone')}" for k, v in before.versions().items()}
                moved = {k: v for k, v in versions.items() if v.split("->")[0] != v.split("->")[1]}
                # rule 3: a path with an open conflict keeps the server's value
                for conflict in open_before[plan_id] + open_after[plan_id]:
                    for path in changed:
                        if related(path, conflict["path"]):
                            self.fail(
                                f"rule 3: {what} changed {path} of plan {name} on the server while conflict "
                                f"{conflict['id']} on {conflict['path']} is open (base {short(conflict['base'])}, "
                                f"ours {short(conflict['ours'])}, theirs {short(conflict['theirs'])}): server "
                                f"{short(get_at(before.doc, path))} -> {short(get_at(after.doc, path))}; "
                                f"versions {moved}"
                            )
                # rule 3: a conflict closes by itself only when both sides agree. An item the plan records as
                # deleted in the EHR agrees with its absence on the server: the team took the value the conflict
                # showed, and then the EHR deleted the item (test_sync_regressions, "converged ... deleted").
                resolved_now = (
                    {c["id"] for c in open_before[plan_id]} - {c["id"] for c in open_after[plan_id]} - {resolving}
                )
                agreeing = without_removed(plans_after[plan_id])
                for conflict in (c for c in open_before[plan_id] if c["id"] in resolved_now):
                    mine, theirs = get_at(agreeing, conflict["path"]), get_at(after.doc, conflict["path"])
                    if mine != theirs:
                        self.fail(
                            f"rule 3: {what} closed conflict {conflict['id']} on {conflict['path']} of plan {name} "
                            f"though the plan has {short(mine)} and the server {short(theirs)}"
                        )
                # rule 1: an EHR value is replaced only once planbridge has taken it into account
                protected = self.protected[plan_id]
                for path, held in list(protected.items()):
                    if pulled and get_at(before.doc, path) == held.value:
                        held.seen = True
                    was, now = get_at(before.doc, path), get_at(after.doc, path)
                    if was != held.value or now == held.value:
                        continue
                    agreed = get_at(agreed_before[plan_id], path)
                    kept_links = path.endswith(".goal_ids") and keeps_link_changes(agreed, held.value, now)
                    if not (held.seen and (held.merged or held.resolved or held.value == agreed or kept_links)):
                        why = (
                            "never pulled"
                            if not held.seen
                            else f"pulled but neither merged into the plan (which has "
                            f"{short(get_at(plans_before[plan_id], path))}) nor the value both sides last agreed on "
                            f"({short(agreed)}), and no conflict on it was resolved"
                        )
                        self.fail(
                            f"rule 1: {what} replaced the EHR's value of {path} of plan {name} on the server: "
                            f"{short(held.value)} (written at step #{held.step} by '{held.what}', {held.version}) -> "
                            f"{short(now)}; the EHR's value was {why}; versions {moved}"
                        )
                    del protected[path]
                # merged: the plan holds the EHR's value, or sends it (items recorded as removed are never sent)
                sent_form = without_removed(plans_after[plan_id])
                for path, held in protected.items():
                    if held.seen and held.value in (get_at(plans_after[plan_id], path), get_at(sent_form, path)):
                        held.merged = True
                # what both sides agree on now is the merge base of what comes next
                for path in diff_paths(self.agreed[plan_id], after.doc):
                    if get_at(plans_after[plan_id], path) == get_at(after.doc, path):
                        set_at(self.agreed[plan_id], path, get_at(after.doc, path))
                for key in moved:
                    if key in after.resources:
                        self.queue_notification(after.resources[key])
            self.server = server_after
            world.tick()
            return result

        def request_budget(self, budget: str, plans: list[str]) -> int:
            """The most requests an action of this kind may send (rule 4)."""
            lookups = {pid: len(self.server[pid].dangling) for pid in self.plans}
            pull = max(PULL_REQUESTS + lookups[pid] for pid in plans) if plans else 0
            changed = CHANGED_REQUESTS + sum(PULL_REQUESTS + n for n in lookups.values())
            push = PUSH_REQUESTS + 2 * max((lookups[pid] for pid in plans), default=0)
            return {"push": push, "pull": pull, "changed": changed, "worker": max(push, changed), "none": 0}[budget]

        @rule(plan=plan_index)
        def push(self, plan: int) -> None:
            self.begin("push")
            plan_id = self.pid(plan)
            self.planbridge(
                f"push of plan {self.names[plan_id]}",
                lambda: self.world.sync.push(plan_id),
                "push",
                plans=[plan_id],
            )
            self.done()

        @rule(plan=plan_index)
        def pull_plan(self, plan: int) -> None:
            self.begin("pull_plans")
            plan_id = self.pid(plan)
            self.planbridge(
                f"pull of plan {self.names[plan_id]}",
                lambda: self.world.sync.pull_plans([plan_id]).outcomes,
                "pull",
                plans=[plan_id],
            )
            self.done()

        @rule()
        def pull_changed(self) -> None:
            self.begin("pull_changed")
            self.planbridge(
                "incremental pull",
                lambda: self.world.sync.pull_changed().outcomes,
                "changed",
            )
            self.done()

        @rule()
        def worker_step(self) -> None:
            self.begin("worker step")
            self.planbridge("worker: one outbox entry", self.world.worker.process_one, "worker")
            self.done()

        @rule()
        def worker_killed(self) -> None:
            self.begin("worker killed")
            sent = self.planbridge("worker killed right after sending a transaction", self.world.kill_worker, "worker")
            if sent is not None:
                self.world.lease_expires()
                stats["kills"] += 1
            self.done()

        @rule(plan=plan_index)
        def push_killed(self, plan: int) -> None:
            self.begin("push killed")
            plan_id = self.pid(plan)
            sent = self.planbridge(
                f"push of plan {self.names[plan_id]} killed right after sending its transaction",
                lambda: self.world.kill_push(plan_id),
                "push",
                plans=[plan_id],
            )
            if sent is not None:
                stats["kills"] += 1
            self.done()

        @rule(seconds=st.sampled_from([60, 1000, 4000]))
        def time_passes(self, seconds: int) -> None:
            self.begin("time passes")
            self.world.tick(seconds)
            self.note(f"{seconds} s pass")
            self.done()

        @rule(which=pick, choice=st.sampled_from(["ours", "theirs", "value"]))
        def resolve(self, which: int, choice: str) -> None:
            self.begin("resolve")
            conflicts = [c for found in self.open_conflicts().values() for c in found]
            if not conflicts:  # (not a precondition: what is open depends on the server, not only on the steps)
                self.note("resolve: no open conflict")
                self.done()
                return
            conflict = conflicts[which % len(conflicts)]
            value = conflict["base"] if conflict["base"] is not None else conflict["theirs"]

            def resolve() -> str:
                try:
                    self.world.sync.resolve(conflict["id"], choice, value if choice == "value" else None)
                except Exception as exc:  # a refusal (the value breaks a rule, ...) leaves the conflict open
                    return f"refused: {type(exc).__name__}: {exc}"
                return "resolved"

            plan_id = conflict["plan_id"]
            outcome = self.planbridge(
                f"resolve conflict {conflict['id']} on {conflict['path']} of plan {self.names[plan_id]} "
                f"taking {choice}{' ' + short(value, 60) if choice == 'value' else ''}",
                resolve,
                "none",
                resolving=conflict["id"],
                plans=[plan_id],
            )
            if outcome != "resolved":  # how often each choice is refused (a soak's counts show it)
                stats[f"resolve {choice} refused"] += 1
            if outcome == "resolved":
                stats["resolved"] += 1
                # Taking ours (or a value) for a goal the EHR deleted brings the goal back, and with it the
                # links to it the deletion took from the server's reading (a step's goal_ids) and the people
                # off the team whom only that goal named (its proposer, an agreement's author): resolved too.
                revived = re.fullmatch(r"goals\[id=(.+)\]", conflict["path"]) if choice != "theirs" else None
                plan_now = self.world.plan_doc(plan_id) if revived else {}
                goal_now = json.dumps(get_at(plan_now, conflict["path"])) if revived else ""
                for path, held in self.protected[plan_id].items():
                    person = re.fullmatch(r"team\[id=(.+)\]", path) if revived else None
                    if held.seen and (
                        related(path, conflict["path"])
                        or (revived and names_goal(get_at(plan_now, path), held.value, revived.group(1)))
                        or (person and held.value is None and f'"{person.group(1)}"' in goal_now)
                    ):
                        held.resolved = True
            self.done()

        @rule(which=pick)
        def resolve_overlong(self, which: int) -> None:
            """A conflict on a text resolved to a value no team event could give (over 2000 characters) is
            refused (the plan door) and changes nothing: the conflict stays open (and rules 1-4, as ever)."""
            self.begin("resolve overlong")
            conflicts = [
                c
                for found in self.open_conflicts().values()
                for c in found
                if re.search(r"(title|description|status_reason|name|text)$", c["path"])
                and isinstance(c["theirs"], str | dict)
                and isinstance(c["theirs"] if isinstance(c["theirs"], str) else c["theirs"].get("text"), str)
            ]
            if not conflicts:
                self.note("resolve overlong: no open conflict on a text")
                self.done()
                return
            conflict = conflicts[which % len(conflicts)]
            more = " and more" * 250
            theirs = conflict["theirs"]
            value = theirs + more if isinstance(theirs, str) else {**theirs, "text": theirs["text"] + more}

            def resolve() -> str:
                try:
                    self.world.sync.resolve(conflict["id"], "value", value)
                except RuleViolation as exc:
                    return f"refused: {exc}"
                return "resolved"

            outcome = self.planbridge(
                f"resolve conflict {conflict['id']} on {conflict['path']} taking a value {len(more)} characters longer",
                resolve,
                "none",
                plans=[conflict["plan_id"]],
            )
            still_open = conflict["id"] in {c["id"] for c in self.open_conflicts()[conflict["plan_id"]]}
            if outcome == "resolved" or not still_open:
                self.fail(
                    f"a value {len(more)} characters longer for {conflict['path']}: {outcome}, open: {still_open}"
                )
            stats["resolve overlong refused"] += 1
            self.done()

        @rule()
        def settle_now(self) -> None:
            self.begin("settle")
            self.settle()
            self.done()

        # ------------------------------------------------------------------ settling (rule 5)

        def fingerprint(self) -> Any:
            return (
                self.docs(),
                {pid: self.server[pid].versions() for pid in self.plans},
                self.world.sync_states(),
                # how many entries wait, not which: a pull may queue a push that then sends nothing (see
                # test_sync_regressions), which is waste, not a change
                sum(r.status == "pending" for r in self.world.outbox()),
            )

        def due(self) -> bool:
            now = self.world.clock()
            return any(r.status == "pending" and r.next_attempt_at <= now for r in self.world.outbox())

        def settle(self) -> None:
            """Push, pull and drain the outbox until nothing changes; then the plan and the server agree."""
            for _ in range(SETTLE_ROUNDS):
                before = self.fingerprint()
                self.world.tick(4000)  # every backoff and lease has run out
                busy = False
                for _entry in range(20):
                    if not self.due():
                        break
                    busy = True
                    self.planbridge("settling: worker", self.world.worker.process_one, "worker")
                for plan_id in self.plans:
                    pushed = self.planbridge(
                        f"settling: push of {self.names[plan_id]}",
                        lambda p=plan_id: self.world.sync.push(p),
                        "push",
                        plans=[plan_id],
                    )
                    busy = busy or pushed.requests > 0
                for plan_id in self.plans:
                    pulled = self.planbridge(
                        f"settling: pull of {self.names[plan_id]}",
                        lambda p=plan_id: self.world.sync.pull_plans([p]).outcomes,
                        "pull",
                        plans=[plan_id],
                    )
                    busy = busy or pulled.get(plan_id) != "unchanged" or self.due()
                if not busy or self.fingerprint() == before:
                    break
            else:
                self.fail(f"rule 5: pushing and pulling did not settle in {SETTLE_ROUNDS} rounds")
            self.check_agreement("settled")

        def check_agreement(self, when: str) -> None:
            for plan_id in self.plans:
                name = self.names[plan_id]
                status = self.world.sync.status(plan_id)
                open_ = [c for c in status.conflicts if c["status"] == "open"]
                open_paths = [c["path"] for c in open_]
                server_doc = self.server[plan_id].doc
                live = self.server[plan_id].resources
                plan_doc = self.world.plan_doc(plan_id)
                plan_doc = held_out(without_refs_to(plan_doc, live), holding_goals(open_, plan_doc), server_doc)
                for path in diff_paths(plan_doc, server_doc):
                    if not any(related(path, c) for c in open_paths):
                        self.fail(
                            f"rule 5 ({when}): plan {name} and the server differ at {path}, with no open conflict "
                            f"(open: {open_paths}): plan {short(get_at(plan_doc, path))}, server "
                            f"{short(get_at(server_doc, path))}; status {status.status}"
                        )
                expected = "conflicted" if open_paths else "in_sync"
                if status.status != expected:
                    self.fail(
                        f"rule 5 ({when}): plan {name} is {status.status}, expected {expected} (open: {open_paths})"
                    )

        # ------------------------------------------------------------------ after every step (rules 2, 3)

        @invariant()
        def after_every_step(self) -> None:
            if not self.plans:
                return
            self.clean = False
            if self.server_changed:
                duplicates = self.world.duplicates()
                if duplicates:
                    self.fail(f"rule 2: several resources carry one planbridge identifier: {duplicates}")
                self.server_changed = False
            for plan_id in self.plans:
                status = self.world.sync.status(plan_id)
                open_ = [c for c in status.conflicts if c["status"] == "open"]
                if (status.status == "conflicted") != bool(open_):
                    shown = [f"{c['id']} {c['path']}" for c in open_]
                    self.fail(f"rule 3: plan {self.names[plan_id]} is {status.status} with open conflicts {shown}")
            self.clean = True

        def teardown(self) -> None:
            if self.clean and self.plans:
                self.step += 1
                self.note("the end: settle")
                self.settle()

    return SyncModel


def holding_goals(open_conflicts: list[dict[str, Any]], document: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the open conflicts, with one on each goal of the plan when one is open on the whole `goals` list.

    Such a conflict (e.g. after a lost push, when the two readings of the server merge the list differently)
    holds every goal in it: a goal the team adds while it is open (a revision) is not written to the server,
    so a step's link to it cannot be either (`held_out` leaves out such links for the goals the server lacks).
    """
    if not any(c["path"] == "goals" for c in open_conflicts):
        return open_conflicts
    goals = [g for g in document.get("goals", []) if isinstance(g, dict) and "id" in g]
    return [*open_conflicts, *({"path": f"goals[id={g['id']}]"} for g in goals)]


def keeps_link_changes(agreed: Any, ehr_value: Any, written: Any) -> bool:
    """True when a written list of goal ids keeps every change the EHR made to the agreed one: no goal it
    dropped (a link its deletion of that goal took) is named again, and every goal it added is still named.
    A step the team moved from a goal the EHR deleted to that goal's revision writes over no EHR decision."""

    def ids(value: Any) -> set[str]:
        return set(value) if isinstance(value, list) else set()

    dropped, added = ids(agreed) - ids(ehr_value), ids(ehr_value) - ids(agreed)
    return not (dropped & ids(written)) and added <= ids(written)


def names_goal(plan_value: Any, server_value: Any, goal_id: str) -> bool:
    """True when a list of goal ids in the plan names `goal_id` and the server's reading of it does not."""
    listed = plan_value if isinstance(plan_value, list) else []
    return goal_id in listed and goal_id not in (server_value if isinstance(server_value, list) else [])


def test_the_sync_keeps_its_promises_whatever_the_interleaving(engine, fhir_base_url, record_property, request):
    # Both server profiles at no extra cost: SQLite against the medplum profile (transaction limits, so
    # split pushes; 412 on a stale If-Match), PostgreSQL against the hapi one (one transaction, 409).
    # With $FHIR_TEST_SERVER_URL both run against that server.
    profile = "hapi" if engine.url.get_backend_name() == "postgresql" else "medplum"
    if not os.environ.get("FHIR_TEST_SERVER_URL"):
        fhir_base_url = request.getfixturevalue(f"fhir_{profile}_url")
    stats: Counter = Counter()
    label = f"sync model on {engine.url.get_backend_name()}, {profile} profile"
    RUN.run(sync_machine(engine, fhir_base_url, stats), stats, record_property, label)
