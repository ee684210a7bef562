"""The sync engine: push, pull and conflict resolution behind one object the worker, CLI and API share."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.domain import codec
from service.domain.errors import Conflict, NotFound, RuleViolation
from service.domain.model import Plan
from service.domain.rules import Issue, check_plan, errors
from service.fhir.client import FhirClient
from service.notify.changes import record_change
from service.services.deliverable import Undeliverable, check_deliverable
from service.settings import Settings
from service.store.uow import UnitOfWork
from service.sync.adopt import Target
from service.sync.deletions import accept_removal, prune_goal_references, written_again
from service.sync.merge import get_path, set_path, strip_bookkeeping
from service.sync.pull import Puller, PullResult
from service.sync.push import Pusher, PushResult, sendable
from service.sync.push_bundle import held_references, references_on_configured_server

CHOICES = ("ours", "theirs", "value")


@dataclass(frozen=True)
class SyncStatus:
    """A plan's sync state for operators: status, last error, FHIR ids and versions, open conflicts."""

    plan_id: str
    status: str
    last_pushed_at: str | None
    last_pulled_at: str | None
    last_error: str | None
    last_outcome: dict[str, Any] | None  # the server's OperationOutcome for the last refusal
    resources: list[dict[str, Any]]
    conflicts: list[dict[str, Any]]


def conflict_dict(row: Any) -> dict[str, Any]:
    """Return a conflict as plain data."""
    return {
        "id": row.id,
        "plan_id": row.plan_id,
        "path": row.path,
        "base": row.base,
        "ours": row.ours,
        "theirs": row.theirs,
        "status": row.status,
        "resolution": row.resolution,
        "created_at": row.created_at.isoformat(),
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
        "ehr": _ehr_origin(row),
    }


def _ehr_origin(row: Any) -> dict[str, Any] | None:
    """Where the conflict's EHR side came from: `{resource, version, changed_at, changed_by}` (`resource`
    as `Type/id`; `changed_by` a reference or meta.source URI, never a name; any of them null when the
    server did not say); null when the conflict was recorded before planbridge kept this."""
    resource_type, resource_id = getattr(row, "ehr_resource_type", None), getattr(row, "ehr_resource_id", None)
    if resource_type is None or resource_id is None:
        return None
    changed_at = row.ehr_changed_at
    return {
        "resource": f"{resource_type}/{resource_id}",
        "version": row.ehr_version,
        "changed_at": changed_at.astimezone(UTC).isoformat().replace("+00:00", "Z") if changed_at else None,
        "changed_by": row.ehr_changed_by,
    }


class SyncEngine:
    """Keeps shared plans and their FHIR copies in step."""

    def __init__(self, uow: UnitOfWork, client: FhirClient, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.uow, self.clock = uow, clock
        self.puller = Puller(uow, client, settings, clock)
        self.pusher = Pusher(uow, client, settings, clock, on_conflict=self._merge_after_conflict)

    def _merge_after_conflict(self, plan_id: str) -> bool:
        outcome = self.puller.pull_plans([plan_id], queue_push=False).outcomes.get(plan_id)
        return outcome in ("merged", "updated", "unchanged", "conflicted")

    def push(self, plan_id: str, on_recorded: Callable[[UnitOfWork], None] | None = None) -> PushResult:
        """Push one plan (zero requests when unchanged); `on_recorded` as `Pusher.push` takes it."""
        return self.pusher.push(plan_id, on_recorded)

    def plan_ids(self) -> list[str]:
        """Return the id of every plan."""
        with self.uow:
            return self.uow.plans.ids()

    def pull_plans(self, plan_ids: list[str]) -> PullResult:
        """Pull named plans."""
        return self.puller.pull_plans(plan_ids)

    def pull_patient(self, mrn: str) -> PullResult:
        """Pull a patient's plans."""
        return self.puller.pull_patient(mrn)

    def adopt(self, target: Target) -> PullResult:
        """Adopt EHR-authored CarePlans (every one of a patient, or one by id) as shared plans, tracked by
        resource id from now on; adopting again is a pull ("unchanged" when nothing moved). Nothing found
        is NotFound."""
        if target.mrn is not None:
            result = self.puller.pull_patient(target.mrn)
            if not result.outcomes:
                raise NotFound(f"no CarePlan found for the patient with MRN {target.mrn}", mrn=target.mrn)
            return result
        assert target.careplan_id is not None
        result = self.puller.pull_careplans([target.careplan_id])
        if not result.outcomes:
            raise NotFound(f"CarePlan/{target.careplan_id} is not on the FHIR server", careplan=target.careplan_id)
        return result

    def pull_changed(self, since: str | None = None) -> PullResult:
        """Pull what changed since the last pull (or `since`)."""
        return self.puller.pull_changed(since)

    def status(self, plan_id: str) -> SyncStatus:
        """Return a plan's sync status."""
        return sync_status(self.uow, plan_id)

    def resolve(self, conflict_id: int, choice: str, value: Any = None) -> dict[str, Any]:
        """Resolve a conflict (see `resolve_conflict`)."""
        return resolve_conflict(self.uow, self.clock, conflict_id, choice, value, settings=self.pusher.settings)


def sync_status(uow: UnitOfWork, plan_id: str) -> SyncStatus:
    """Return a plan's sync status: state, FHIR ids and versions, last error, open conflicts."""
    with uow:
        state = uow.sync.state(plan_id)
        links = uow.links.for_plan(plan_id)
        status = state.status
        # A team event changes the plan and queues a push without touching the sync state (the
        # intake stays one short transaction), so a plan is `pending` again while a push waits in
        # the outbox and the plan differs from what the server was last given.
        if status == "in_sync" and uow.outbox.pending_exists(plan_id, "push_plan"):
            plan = uow.plans.get(plan_id)
            # (items recorded as removed in the EHR are never sent: sendable leaves them out)
            if plan is not None and strip_bookkeeping(sendable(codec.to_dict(plan), {})) != state.base_document:
                status = "pending"
        return SyncStatus(
            plan_id=plan_id,
            status=status,
            last_pushed_at=state.last_pushed_at.isoformat() if state.last_pushed_at else None,
            last_pulled_at=state.last_pulled_at.isoformat() if state.last_pulled_at else None,
            last_error=state.last_error,
            last_outcome=state.last_outcome,
            resources=[
                {"key": x.local_key, "type": x.resource_type, "id": x.fhir_id, "version": x.version_id} for x in links
            ],
            conflicts=[conflict_dict(c) for c in uow.sync.conflicts(plan_id)],
        )


_LAST_KEY = re.compile(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_]*)$")


def _on_configured_server(conflict: Any, value: Any, ours: Any, settings: Settings) -> Any:
    """Return a value given by hand with its references on the configured FHIR server made relative; refuse it
    when it names another server's resource, as an import is refused (docs/references.md): the push could never
    send it. A reference the plan (ours) or the server (theirs) already holds is let through: a pull keeps
    another server's reference the server accepted."""
    found = _LAST_KEY.search(conflict.path)
    key = found.group(1) if found else None
    held = held_references(ours, key) | held_references(conflict.theirs, key)
    rebased, foreign = references_on_configured_server(value, settings.fhir_base_url, conflict.path, key, held)
    if foreign:
        where, why = next(iter(foreign.items()))
        raise RuleViolation(f"that value names a resource on another FHIR server: {where}: {why}", errors=foreign)
    return rebased


def _door_introduced(before: Plan, after: Plan) -> list[Issue]:
    """The issues of the plan door (`door_issues`) the resolved plan has and the plan before did not: what the
    EHR put into a plan (a title longer than events allow) does not make every typed resolution a refusal."""
    from service.services.plan_door import door_issues

    # The door names elements by position (`notes[0].text`): a value that only moves what the EHR put in (a
    # note before it) is no new issue. Counted per path without positions: a second such value is one.
    def unplaced(issue: Issue) -> tuple[str, str]:
        return re.sub(r"\[\d+\]", "[]", issue.path), issue.message

    had = Counter(unplaced(issue) for issue in door_issues(before))
    introduced = []
    for issue in door_issues(after):
        if had[unplaced(issue)] > 0:
            had[unplaced(issue)] -= 1
        else:
            introduced.append(issue)
    return introduced


def resolve_conflict(
    uow: UnitOfWork,
    clock: Callable[[], datetime],
    conflict_id: int,
    choice: str,
    value: Any = None,
    *,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Resolve a conflict by taking ours, theirs, or a given value; the plan is queued for a push when none is left.

    With `settings`, a plan resolved to a typed value must map to FHIR the push can send, as a team event's
    must (service.services.deliverable): a value FHIR cannot carry (a NUL, an infinite number) is refused,
    not accepted and then pushed for ever in vain. So is a value naming a resource on another FHIR server than
    the configured one (as an import is: docs/references.md); one on the configured server is stored relative."""
    if choice not in CHOICES:
        raise RuleViolation(f"choose one of {', '.join(CHOICES)}", choice=choice)
    now = clock()
    with uow:
        conflict = uow.sync.conflict(conflict_id)
        if conflict.status != "open":
            raise Conflict(f"conflict {conflict_id} is already {conflict.status}", conflict_id=conflict_id)
        plan = uow.plans.get(conflict.plan_id)
        assert plan is not None
        document = codec.to_dict(plan)
        # "ours" is the plan's value now: the team may have changed it again since the conflict arose.
        chosen = {"ours": get_path(document, conflict.path), "theirs": conflict.theirs, "value": value}[choice]
        if settings is not None and choice == "value":
            chosen = _on_configured_server(conflict, chosen, get_path(document, conflict.path), settings)
        again: list[str] = []
        try:
            # Accepting the EHR's deletion of a whole goal, step or member keeps the item, marked as removed.
            if not (choice == "theirs" and accept_removal(document, conflict.path, chosen, now.isoformat())):
                set_path(document, conflict.path, chosen)
                if choice != "theirs":  # a goal the EHR deleted, written again: a new Goal
                    again = written_again(document, conflict.path, conflict.theirs)
            resolved = codec.from_dict(Plan, prune_goal_references(document))  # a goal given up leaves no links
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RuleViolation(f"that value does not fit {conflict.path}: {type(exc).__name__}") from None
        problems = errors(check_plan(resolved))
        if problems:
            raise RuleViolation(f"that value breaks a rule: {problems[0].path}: {problems[0].message}")
        if settings is not None and choice == "value":  # ours was accepted as deliverable; theirs, the server holds
            try:
                check_deliverable(plan, resolved, settings.identifier_base, settings.mrn_system)
            except Undeliverable as refused:
                fhir = refused.errors.get("fhir") or {}
                where = next(iter(fhir), conflict.path) if isinstance(fhir, dict) else conflict.path
                raise RuleViolation(f"that value could never be sent to FHIR: {where}") from None
        if choice == "value":  # a typed value is held to what a team event could give (service.services.plan_door)
            introduced = _door_introduced(plan, resolved)
            if introduced:
                found = introduced[0]
                raise RuleViolation(f"that value breaks a rule team events are held to: {found.path}: {found.message}")
        resolved.touch(now.isoformat())
        uow.plans.save(resolved)
        # ... created anew by the push: never written by id onto the Goal the EHR deleted
        uow.links.forget(conflict.plan_id, [f"goal:{goal_id}" for goal_id in again])
        uow.sync.close_conflict(conflict, choice, now)
        uow.flush()
        # The plan changed (a new version; under `theirs` or `value`, the value too): its history and the
        # subscribed team systems hear of it, as of every other change (docs/notifications.md).
        careplan = uow.links.get(conflict.plan_id, "careplan")
        record_change(
            uow,
            conflict.plan_id,
            "ehr.plan_changed",
            {
                "plan_version": resolved.version,
                "source": "ehr",
                "change": {
                    "outcome": "resolved",
                    "careplan_id": careplan.fhir_id if careplan else None,
                    "conflict": {"id": conflict.id, "path": conflict.path, "choice": choice},
                },
            },
            now,
            before=plan,
            after=resolved,
        )
        # The resolved path is no longer held: the next push sends it (with If-Match on the
        # versions last seen, so a newer EHR edit is a new conflict rather than overwritten).
        uow.sync.state(conflict.plan_id).status = "conflicted" if uow.sync.conflicts(conflict.plan_id) else "pending"
        uow.outbox.add(conflict.plan_id, "push_plan", None, None, now)
        uow.commit()
        return conflict_dict(conflict)
