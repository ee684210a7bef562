"""Reading and operating: plans, their FHIR form and sync state, conflicts and the outbox (API key needed)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields, validate

from mappings.bundle import plan_to_bundle
from service.api.auth import require_api_key
from service.api.bodies import (
    MAX_ID,
    PLAN_ID,
    PageQuerySchema,
    json_response,
    load_body,
    load_query,
    page_response,
)
from service.api.container import container
from service.api.errors import problem_response
from service.domain import codec
from service.domain.errors import InvalidInput, NotFound, RuleViolation
from service.domain.model import Plan
from service.problems import problem
from service.store.uow import UnitOfWork
from service.sync.adopt import NotAdoptable, Target, adoption_answer, careplan_target
from service.sync.engine import conflict_dict, resolve_conflict, sync_status
from service.sync.subscriptions import follow_adopted

bp = Blueprint("plans", __name__)
MAX_REFERENCE = 2048  # an MRN, a CarePlan reference or URL


def _plan(uow: UnitOfWork, plan_id: str) -> Plan:
    """Return the plan, or raise NotFound; what is not a plan id (a FHIR id) is not looked up (PostgreSQL
    refuses a NUL in a query)."""
    plan = uow.plans.get(plan_id) if PLAN_ID.regex.fullmatch(plan_id) else None
    if plan is None:
        raise NotFound(f"plan {plan_id} does not exist", plan_id=plan_id)
    return plan


def _bounded(kind: str, value: int) -> int:
    if not 0 < value <= MAX_ID:
        raise NotFound(f"{kind} {value} does not exist")
    return value


def outbox_dict(row: Any) -> dict[str, Any]:
    """Return an outbox entry as plain data."""
    return {
        "id": row.id,
        "plan_id": row.plan_id,
        "kind": row.kind,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat(),
        # When a worker took it, while one holds it (its lease runs to next_attempt_at); null otherwise.
        "claimed_at": row.claimed_at.isoformat() if row.claimed_at else None,
        "last_error": row.last_error,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def replay_outbox_entry(uow: UnitOfWork, entry_id: int, now: datetime) -> dict[str, Any]:
    """Put a dead outbox entry back in the queue, due now, with its attempts reset (the API and console use this)."""
    with uow:
        row = uow.outbox.get(entry_id)
        if row.status != "dead":
            raise RuleViolation(f"outbox entry {entry_id} is {row.status}; only dead entries are replayed")
        uow.outbox.replay(row, now)
        uow.commit()
        return outbox_dict(row)


@bp.get("/plans/<plan_id>")
@require_api_key
def get_plan(plan_id: str) -> ResponseReturnValue:
    """Return the shared plan in the plan JSON format."""
    with container().uow() as uow:
        plan = _plan(uow, plan_id)
    return json_response(codec.to_dict(plan))


@bp.get("/plans/<plan_id>/fhir")
@require_api_key
def get_plan_fhir(plan_id: str) -> ResponseReturnValue:
    """Return the plan as the FHIR transaction Bundle planbridge would send."""
    c = container()
    with c.uow() as uow:
        plan = _plan(uow, plan_id)
        patient = uow.links.get(plan_id, "patient")
    ref = f"Patient/{patient.fhir_id}" if patient else None
    bundle = plan_to_bundle(plan, c.settings.identifier_base, c.settings.mrn_system, ref)
    return json_response(bundle, content_type="application/fhir+json")


@bp.get("/plans/<plan_id>/sync")
@require_api_key
def get_plan_sync(plan_id: str) -> ResponseReturnValue:
    """Return where the plan stands with the FHIR server."""
    c = container()
    with c.uow() as uow:
        _plan(uow, plan_id)
    return json_response(sync_status(c.uow(), plan_id).__dict__)


class SyncRequestSchema(Schema):
    direction = fields.String(load_default="push", validate=validate.OneOf(["push", "pull"]))


@bp.post("/plans/<plan_id>/sync")
@require_api_key
def post_plan_sync(plan_id: str) -> ResponseReturnValue:
    """Queue a push of the plan (202), or pull it from the FHIR server now (200)."""
    direction = load_body(SyncRequestSchema())["direction"]
    c = container()
    with c.uow() as uow:
        _plan(uow, plan_id)
        if direction == "push":
            uow.outbox.add(plan_id, "push_plan", None, None, c.clock())
            uow.commit()
            return json_response({"plan_id": plan_id, "queued": "push"}, 202)
    result = c.sync_engine().pull_plans([plan_id])
    return json_response({"plan_id": plan_id, "outcome": result.outcomes.get(plan_id), "requests": result.requests})


class AdoptSchema(Schema):
    """POST /plans/adopt's body: one of a patient's MRN, a CarePlan (`CarePlan/123`, `123`) or its URL."""

    patient_mrn = fields.String(validate=validate.Length(min=1, max=MAX_REFERENCE))
    careplan = fields.String(validate=validate.Length(min=1, max=MAX_REFERENCE))
    url = fields.String(validate=validate.Length(min=1, max=MAX_REFERENCE))


@bp.post("/plans/adopt")
@require_api_key
def post_adopt() -> ResponseReturnValue:
    """Adopt EHR-authored CarePlans as shared plans, tracked by resource id; again, it is a pull."""
    body = load_body(AdoptSchema())
    given = [key for key in ("patient_mrn", "careplan", "url") if key in body]
    if len(given) != 1:
        raise InvalidInput(
            "give exactly one of patient_mrn, careplan or url",
            {"patient_mrn": "an MRN", "careplan": "CarePlan/<id>", "url": "[base]/CarePlan/<id>"},
        )
    c = container()
    if given == ["patient_mrn"]:
        target = Target(mrn=body["patient_mrn"])
    else:
        try:
            target = careplan_target(body[given[0]], c.settings.fhir_base_url or "")
        except InvalidInput as bad:  # named by the field the caller sent (`url`), whatever the reader called it
            raise InvalidInput(bad.detail, {given[0]: next(iter(bad.errors.values()), "")}) from None
    result = c.sync_engine().adopt(target)
    try:
        adopted = adoption_answer(result.outcomes, result.refusals)  # an "invalid" one says why
    except NotAdoptable as none:  # not one CarePlan can be a plan: 422, each named with its reason and element
        return problem_response(problem(none.code, none.title, 422, none.detail, refused=none.refused))
    # The Subscriptions that notify planbridge of the EHR's edits to them (never an error: said when absent).
    notifications = follow_adopted(c.uow(), c.fhir(), c.settings, result.outcomes)
    return json_response({"adopted": adopted, "requests": result.requests, "notifications": notifications})


@bp.get("/conflicts")
@require_api_key
def list_conflicts() -> ResponseReturnValue:
    """List conflicts, oldest first, a page at a time (open by default; ?status=resolved|all; ?plan=ID)."""
    query = load_query(ConflictQuerySchema())
    status = None if query["status"] == "all" else query["status"]
    with container().uow() as uow:
        rows = uow.sync.conflicts(query.get("plan"), status, after=query["after"], limit=query["limit"] + 1)
        return page_response([conflict_dict(r) for r in rows], query["limit"], "plans.list_conflicts")


class ResolveSchema(Schema):
    take = fields.String(validate=validate.OneOf(["ours", "theirs"]))
    value = fields.Raw(allow_none=True)


@bp.post("/conflicts/<int:conflict_id>/resolve")
@require_api_key
def post_conflict_resolution(conflict_id: int) -> ResponseReturnValue:
    """Resolve a conflict with {"take": "ours"|"theirs"} or {"value": ...}; the plan is queued for a push."""
    body = load_body(ResolveSchema())
    if ("take" in body) == ("value" in body):
        raise InvalidInput("give either take or value", {"take": "ours|theirs", "value": "any JSON"})
    c = container()
    _bounded("conflict", conflict_id)
    choice, value = body.get("take", "value"), body.get("value")
    return json_response(resolve_conflict(c.uow(), c.clock, conflict_id, choice, value, settings=c.settings))


class OutboxQuerySchema(PageQuerySchema):
    """GET /outbox's query."""

    status = fields.String(validate=validate.OneOf(["pending", "done", "dead"]))


class ConflictQuerySchema(PageQuerySchema):
    """GET /conflicts' query."""

    status = fields.String(load_default="open", validate=validate.OneOf(["open", "resolved", "all"]))


@bp.get("/outbox")
@require_api_key
def list_outbox() -> ResponseReturnValue:
    """List outbox entries oldest first, a page at a time; a Link header (rel="next") points to the next page."""
    query = load_query(OutboxQuerySchema())
    with container().uow() as uow:
        rows = uow.outbox.list(query.get("plan"), query.get("status"), after=query["after"], limit=query["limit"] + 1)
        return page_response([outbox_dict(r) for r in rows], query["limit"], "plans.list_outbox")


@bp.post("/outbox/<int:entry_id>/replay")
@require_api_key
def replay_outbox(entry_id: int) -> ResponseReturnValue:
    """Put a dead entry back in the queue, due now, with its attempts reset."""
    c = container()
    _bounded("outbox entry", entry_id)
    return json_response(replay_outbox_entry(c.uow(), entry_id, c.clock()))
