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
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
)

from service.domain.errors import RuleViolation
from service.fhir.errors import FhirError
from tests.model_support import ModelRun

# The suite's short run is derandomized (the same interleavings every run: CI is reproducible); a soak
# (PLANBRIDGE_MODEL_EXAMPLES set) or PLANBRIDGE_MODEL_RANDOM=1 explores new ones each time.
from tests.sync_model_acts import SyncModelActs
from tests.sync_model_checks import (  # noqa: F401
    CAREPLAN_STATUSES,
    CHANGED_REQUESTS,
    EHR_GOAL_STATUSES,
    EHR_TARGETS,
    FIXTURE_PLANS,
    GOAL_STATUSES,
    PENDING_NOTIFICATIONS,
    PRIORITIES,
    PRIORITY_SYSTEM,
    PULL_REQUESTS,
    PUSH_REQUESTS,
    SAVES,
    SETTLE_ROUNDS,
    ModelViolation,
    Protected,
    SyncModelChecks,
    _ehr_edits,
    by_creation,
    describe,
    field_index,
    holding_goals,
    keeps_link_changes,
    names_goal,
    pick,
    plan_index,
    seed,
)
from tests.sync_model_support import (
    SyncWorld,
    diff_paths,
    get_at,
    related,
    short,
)

RUN = ModelRun.from_env("PLANBRIDGE_MODEL", examples=15, steps=25)


def sync_machine(engine: Any, fhir_base_url: str, stats: Counter) -> type[RuleBasedStateMachine]:
    """Return the state machine class for one database and FHIR server, counting into `stats`."""

    class SyncModel(SyncModelActs, SyncModelChecks, RuleBasedStateMachine):
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

    return SyncModel


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
