"""Constants, helpers and the end-of-step checks of the sync model (tests/integration/test_sync_model.py).

Moved out of that file unchanged; it imports every name back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    invariant,
    rule,
)

from tests.sync_model_support import (
    diff_paths,
    get_at,
    held_out,
    related,
    short,
    without_refs_to,
)

# The suite's short run is derandomized (the same interleavings every run: CI is reproducible); a soak
# (PLANBRIDGE_MODEL_EXAMPLES set) or PLANBRIDGE_MODEL_RANDOM=1 explores new ones each time.

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


class SyncModelChecks:
    """Settling and the checks after every step; mixed into `SyncModel`."""

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
                self.fail(f"rule 5 ({when}): plan {name} is {status.status}, expected {expected} (open: {open_paths})")

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
