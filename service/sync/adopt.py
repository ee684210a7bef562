"""Adopting a CarePlan the EHR authored: reading it into a shared plan and tracking it by resource id.

An EHR-authored CarePlan carries no planbridge identifier, so the searches by identifier that pulls,
incremental pulls and notifications use for planbridge's own plans never find it. An adopted plan is
named `careplan-<server id>` (see `mappings.bundle.careplan_from_fhir`) and its CarePlan link
(`fhir_links`, key `careplan`) names that same server id: that is what marks it as adopted, from the
first read on, whether or not planbridge has written to it since. Its resources are found by `_id`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from mappings import datatypes as dt
from service.domain import codec
from service.domain.errors import Conflict, InvalidInput, RuleViolation
from service.domain.model import Plan
from service.settings import Settings
from service.store.repo_history import history_row
from service.store.tables import FhirLinkRow
from service.store.uow import UnitOfWork
from service.sync.merge import changed_paths, strip_bookkeeping

PREFIX = "careplan-"  # an adopted plan's id: this and its CarePlan's server id
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TRACKED = ("CarePlan", "CareTeam", "Goal", "Observation")
MAX_HISTORY_PATHS = 50  # paths one history entry names (service.notify.changes.MAX_PATHS)


def adopted_plan_id(careplan_id: str) -> str:
    """Return the id of the plan adopted from `CarePlan/<careplan_id>`."""
    return f"{PREFIX}{careplan_id}"


def is_adopted(plan_id: str, careplan_link_id: str | None) -> bool:
    """Tell whether a plan was adopted: its id names the server id of the CarePlan it is linked to."""
    return careplan_link_id is not None and plan_id == adopted_plan_id(careplan_link_id)


def _adopted_plan_ids(plan_ids: Iterable[str] | None) -> sa.Select[tuple[str]] | None:
    """Return a query for the ids of adopted plans (those whose CarePlan link names the EHR's own CarePlan),
    all of them or those among `plan_ids`; None when `plan_ids` names none."""
    careplans = sa.select(FhirLinkRow.plan_id).where(
        FhirLinkRow.local_key == "careplan", FhirLinkRow.plan_id == sa.literal(PREFIX) + FhirLinkRow.fhir_id
    )
    if plan_ids is None:
        return careplans
    wanted = sorted(set(plan_ids))
    return careplans.where(FhirLinkRow.plan_id.in_(wanted)) if wanted else None


def adopted_links(uow: UnitOfWork, plan_ids: Iterable[str] | None = None) -> dict[str, list[FhirLinkRow]]:
    """Return the links of adopted plans (all of them, or those among `plan_ids`), by plan id.

    One query, however many plans there are; none when no plan was ever adopted.
    """
    assert uow.session is not None
    careplans = _adopted_plan_ids(plan_ids)
    if careplans is None:
        return {}
    rows = uow.session.scalars(sa.select(FhirLinkRow).where(FhirLinkRow.plan_id.in_(careplans)))
    found: dict[str, list[FhirLinkRow]] = {}
    for row in rows:
        found.setdefault(row.plan_id, []).append(row)
    return found


def adopted_patients(uow: UnitOfWork, plan_ids: Iterable[str] | None = None) -> dict[str, str | None]:
    """Return the server id of each adopted plan's Patient (all adopted plans, or those among `plan_ids`),
    by plan id: the `patient` link a pull records from the CarePlan's subject; None when there is none (a
    subject that is not a `Patient/<id>` on the server). One query for the plans, one for their patients."""
    assert uow.session is not None
    careplans = _adopted_plan_ids(plan_ids)
    if careplans is None:
        return {}
    found: dict[str, str | None] = dict.fromkeys(uow.session.scalars(careplans))
    if not found:
        return {}
    patients = sa.select(FhirLinkRow.plan_id, FhirLinkRow.fhir_id).where(
        FhirLinkRow.local_key == "patient",
        FhirLinkRow.resource_type == "Patient",
        FhirLinkRow.plan_id.in_(careplans),
    )
    for plan_id, fhir_id in uow.session.execute(patients):
        found[plan_id] = fhir_id if FHIR_ID.fullmatch(fhir_id) else None
    return found


def links_to(uow: UnitOfWork, resource_type: Any, fhir_id: Any) -> list[FhirLinkRow]:
    """Return the links naming `resource_type/fhir_id`, whatever their plan (how an EHR resource that
    carries no identifier of planbridge's is traced to the plans holding it); none for a malformed id."""
    assert uow.session is not None
    if not (isinstance(resource_type, str) and isinstance(fhir_id, str) and FHIR_ID.fullmatch(fhir_id)):
        return []
    if resource_type not in TRACKED:
        return []
    query = sa.select(FhirLinkRow).where(FhirLinkRow.resource_type == resource_type, FhirLinkRow.fhir_id == fhir_id)
    return list(uow.session.scalars(query))


def source_keys(plan: Plan) -> dict[str, str]:
    """Return `Type/id` -> link key for the plan's parts read from resources without planbridge's identifier.

    A check-in is keyed by its goal and its own id (`observation:goal-7/obs-12`), as the key of the
    Observation a push builds for it; so the EHR's Observation is written by id, never copied.
    """
    keys: dict[str, str] = {}
    if plan.careplan_extra.get(dt.SOURCE):
        keys[plan.careplan_extra[dt.SOURCE]] = "careplan"
    if plan.careteam_extra.get(dt.SOURCE):
        keys[plan.careteam_extra[dt.SOURCE]] = "careteam"
    for goal in plan.goals:
        if goal.fhir_extra.get(dt.SOURCE):
            keys[goal.fhir_extra[dt.SOURCE]] = f"goal:{goal.id}"
        for check_in in goal.check_ins:
            if check_in.fhir_extra.get(dt.SOURCE):
                keys[check_in.fhir_extra[dt.SOURCE]] = f"observation:{goal.id}/{check_in.id}"
    return keys


def carry_sources(theirs: Plan, ours: Plan, reached: set[str]) -> bool:
    """Keep on the pulled plan the EHR resource each adopted part was read from, as the stored plan has it.

    The mark (`_planbridge_source`) is set when a part is read from a resource without planbridge's
    identifier; once a push wrote that resource (adding the identifier) a read no longer sets it. Without
    carrying it over, the pull after such a push would take the lost mark for an EHR change: outcome
    "updated" where nothing moved, a new plan version and an `ehr.plan_changed` naming the bookkeeping
    key. Only a mark naming a resource this CarePlan still reaches is carried. Return whether any was.
    """
    carried = False

    def carry(mine: dict[str, Any], pulled: dict[str, Any]) -> None:
        nonlocal carried
        source = mine.get(dt.SOURCE)
        if source and dt.SOURCE not in pulled and source in reached:
            pulled[dt.SOURCE] = source
            carried = True

    carry(ours.careplan_extra, theirs.careplan_extra)
    carry(ours.careteam_extra, theirs.careteam_extra)
    for goal in theirs.goals:
        mine = ours.goal(goal.id)
        if mine is None:
            continue
        carry(mine.fhir_extra, goal.fhir_extra)
        for check_in in goal.check_ins:
            kept = next((c for c in mine.check_ins if c.id == check_in.id), None)
            if kept is not None:
                carry(kept.fhir_extra, check_in.fhir_extra)
    return carried


def reachable(careplan: dict[str, Any], index: dict[str, Any]) -> set[str]:
    """Return `Type/id` of what a CarePlan reaches: its Goals and CareTeams, and the Goals' outcomes."""
    refs = {r.get("reference", "") for r in [*careplan.get("goal", []), *careplan.get("careTeam", [])]}
    for ref in list(refs):
        goal = index.get(ref)
        if isinstance(goal, dict) and goal.get("resourceType") == "Goal":
            refs.update(r.get("reference", "") for r in goal.get("outcomeReference", []) if isinstance(r, dict))
    return {r for r in refs if r.count("/") == 1}


@dataclass(frozen=True)
class Target:
    """What to adopt: every CarePlan of a patient (by MRN), or one CarePlan (by server id)."""

    mrn: str | None = None
    careplan_id: str | None = None


def careplan_target(value: str, base_url: str) -> Target:
    """Read `CarePlan/123`, `123` or `[base]/CarePlan/123` (on the configured server) as a CarePlan to adopt.

    Anything else is InvalidInput naming what was expected.
    """
    text = value.strip()
    if "://" in text:
        parts, base = urlsplit(text), urlsplit(base_url.rstrip("/"))
        path = parts.path.rstrip("/")
        same_server = (parts.scheme, parts.netloc) == (base.scheme, base.netloc) and path.startswith(
            base.path.rstrip("/") + "/"
        )
        rest = path[len(base.path.rstrip("/")) + 1 :] if same_server else ""
        if not same_server or parts.query or parts.fragment:
            raise InvalidInput(
                f"{text} is not a CarePlan on the configured FHIR server {base_url}",
                {"url": f"{base_url.rstrip('/')}/CarePlan/<id>"},
            )
        text = rest
    rtype, _, fhir_id = text.rpartition("/")
    if rtype not in ("", "CarePlan") or not FHIR_ID.fullmatch(fhir_id):
        raise InvalidInput(f"{value!r} does not name a CarePlan", {"careplan": "CarePlan/<id>, <id> or its URL"})
    return Target(careplan_id=fhir_id)


class NotAdoptable(RuleViolation):
    """No CarePlan the adoption found can be a plan (its subject is no Patient, ...): 422, each one named in
    `refused` ({"careplan": "CarePlan/<id>", "reason", "errors": {FHIR element path: why}})."""

    code = "not-adoptable"
    title = "CarePlan not adoptable"

    def __init__(self, refused: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(refusal_line(item) for item in refused), refused=refused)
        self.refused = refused


def refusal_line(item: dict[str, Any]) -> str:
    """One line saying why a CarePlan was not adopted, naming each element (`CarePlan.subject`)."""
    where = "; ".join(f"{path}: {why}" for path, why in item.get("errors", {}).items())
    return f"{item['careplan']} cannot be adopted: {item['reason']}" + (f" ({where})" if where else "")


def adoption_answer(outcomes: dict[str, str], refusals: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the `adopted` list of an adoption: `{"plan_id", "outcome"}` per plan, by plan id; a CarePlan that
    cannot be a plan has outcome "invalid" and says why (`careplan`, `reason`, `errors`), nothing stored for it.
    Raise NotAdoptable when that is so of every CarePlan found: then nothing was adopted."""
    answer: list[dict[str, Any]] = []
    for plan_id, outcome in sorted(outcomes.items()):
        item: dict[str, Any] = {"plan_id": plan_id, "outcome": outcome}
        if outcome == "invalid":
            why = refusals.get(plan_id) or {"careplan": f"CarePlan of {plan_id}", "reason": "does not map"}
            item.update({"careplan": why["careplan"], "reason": why["reason"], "errors": why.get("errors", {})})
        answer.append(item)
    refused = [{k: v for k, v in item.items() if k != "outcome"} for item in answer if item["outcome"] == "invalid"]
    if answer and len(refused) == len(answer):
        raise NotAdoptable(refused)
    return answer


def import_document(uow: UnitOfWork, document: Any, settings: Settings, now: datetime, replace: bool = False) -> Plan:
    """Store the plan in a plan JSON document or a FHIR Bundle around one CarePlan (told apart by content),
    checked as `convert` checks it (ConversionRefused with every issue), and queue its push.

    Plan JSON is mapped to FHIR as `convert to-fhir` maps it, and refused as that refuses it; a Bundle is
    checked as `convert from-fhir` checks it. Either way the plan must then pass the push's own check
    (service.services.deliverable): a plan the push could never send is refused, naming each bad element,
    and nothing is stored. So is one naming a resource on another FHIR server than the configured one
    (FHIR_BASE_URL), naming its field (`patient.fhir_reference`); so is one that breaks a rule team events are
    held to (service.services.plan_door: ids that are FHIR ids, unique ignoring case where the server cannot tell
    them apart, an MRN without `|`, the events' lengths and ranges), naming each element (`goals[0].id`). A
    reference to a resource of the configured server is stored relative, `Patient/123` (docs/references.md).
    In a Bundle, a relative reference in an entry whose fullUrl is on another server names that server's
    resource (R4), and is refused so too. A plan id already stored is a Conflict unless `replace`: then the
    stored plan is replaced (its version and creation time go on). A plan id equal to a stored plan's but
    for case is a Conflict, `replace` or not.
    """
    from service.convert import ConversionRefused, from_fhir, load_plan, to_fhir
    from service.domain.rules import Issue
    from service.services.deliverable import Undeliverable, check_deliverable
    from service.services.plan_door import door_issues
    from service.sync.push_bundle import on_configured_server

    if isinstance(document, dict) and "resourceType" in document:
        # a relative reference in an entry on another server names that server's resource (R4), refused below
        plan = codec.from_dict(Plan, from_fhir(document, settings, door=True)[0])
    else:
        to_fhir(document, settings)  # the mapping and the checks of `convert to-fhir`: the same refusals
        plan = load_plan(document)[0]
    # what a team event could not put into a plan (an id that is no FHIR id, ids equal but for case, an MRN
    # with `|`, a text over its length...), a whole plan cannot bring either
    door = door_issues(plan)
    if door:
        raise ConversionRefused("the plan breaks a rule team events are held to (docs/events.md)", door)
    # a reference on the configured server is stored relative; one on another server could never be pushed
    plan, foreign = on_configured_server(plan, settings.fhir_base_url)
    if foreign:
        issues = [Issue(path, why, code="invalid") for path, why in foreign.items()]
        raise ConversionRefused("the plan names resources on another FHIR server than the configured one", issues)
    try:
        check_deliverable(None, plan, settings.identifier_base, settings.mrn_system)
    except Undeliverable as refused:
        found = refused.errors.get("fhir")
        issues = [Issue(str(path), str(why)) for path, why in (found if isinstance(found, dict) else {}).items()]
        raise ConversionRefused(refused.detail, issues or [Issue("", refused.detail)]) from None
    with uow:
        existing = uow.plans.get(plan.id)
        if existing is not None and not replace:
            raise Conflict(f"plan {plan.id} already exists; import with --replace to replace it", plan_id=plan.id)
        twin = uow.plans.twin_in_all_but_case(plan.id)  # replaced or not: the two would share FHIR resources
        if twin is not None:
            raise Conflict(
                f"plan {plan.id} differs from plan {twin} only in case, which FHIR identifier searches do not "
                "tell apart: the two plans would write the same resources",
                plan_id=plan.id,
            )
        plan.version = existing.version if existing is not None else 0
        if existing is not None and plan.created_at is None:
            plan.created_at = existing.created_at
        plan.touch(now.isoformat())
        uow.plans.save(plan)
        record_import(uow, plan, existing, now)
        uow.outbox.add(plan.id, "push_plan", None, None, now)
        uow.commit()
    return plan


IMPORTED = "plan.imported"  # a plan's history entry for `plans import`: history only, never a team notification


def record_import(uow: UnitOfWork, plan: Plan, before: Plan | None, now: datetime) -> int:
    """Add the import to the plan's history (plan_history), so its timeline starts with it; return its sequence.

    It takes the plan's next change number like any change, but no subscription hears of it: an import is no
    team event and no EHR change (a subscriber sees a gap in `sequence`, as for a type it filters out). The
    entry is `source` "team" with no sender, event id or members; `paths` `["*"]` for a new plan, else what
    the replacement changed.
    """
    if before is None:
        every = ["*"]
    else:
        every = changed_paths(strip_bookkeeping(codec.to_dict(before)), strip_bookkeeping(codec.to_dict(plan)))
    sequence = uow.deliveries.next_sequence(plan.id)
    uow.history.add(
        history_row(
            plan_id=plan.id,
            sequence=sequence,
            at=now,
            source="team",
            event_type=IMPORTED,
            plan_version=plan.version,
            paths=every[:MAX_HISTORY_PATHS],
            paths_total=len(every),
        )
    )
    return sequence
