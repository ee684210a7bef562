"""The EHR, notification and planbridge rules of the sync model (tests/integration/test_sync_model.py).

Moved out of that file unchanged; mixed into its `SyncModel`.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    rule,
)

from service.fhir.errors import FhirError
from service.store.uow import UnitOfWork
from service.sync.notifications import receive_ping

# The suite's short run is derandomized (the same interleavings every run: CI is reproducible); a soak
# (PLANBRIDGE_MODEL_EXAMPLES set) or PLANBRIDGE_MODEL_RANDOM=1 explores new ones each time.
from tests.sync_model_checks import (
    CHANGED_REQUESTS,
    EHR_TARGETS,
    PENDING_NOTIFICATIONS,
    PULL_REQUESTS,
    PUSH_REQUESTS,
    SAVES,
    _ehr_edits,
    by_creation,
    describe,
    field_index,
    keeps_link_changes,
    pick,
    plan_index,
    seed,
)
from tests.sync_model_support import (
    diff_paths,
    get_at,
    plan_pulls,
    related,
    set_at,
    short,
    without_removed,
)


class SyncModelActs:
    """EHR edits, notifications, pushes, pulls and the worker; mixed into `SyncModel`."""

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
