"""Apply a team event to its shared plan: idempotent by webhook id, durable before it is acknowledged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from service.domain import codec
from service.domain.changes import Command, ProposeGoal, ProposerSpec, apply_command
from service.domain.errors import Conflict, InvalidInput, NotFound, PlanbridgeError, RuleViolation
from service.domain.model import Plan
from service.notify.changes import record_change
from service.problems import problem
from service.services.deliverable import Undeliverable, check_deliverable
from service.settings import Settings
from service.signing import DEFAULT_SENDER
from service.store.committer import committer_for
from service.store.repo_plans import CommittedPlan, read_committed
from service.store.tables import InboundEventRow
from service.store.uow import StaleVersion, UnitOfWork

__all__ = [
    "Command",
    "Envelope",
    "FhirNames",
    "Outcome",
    "ProposeGoal",
    "ProposerSpec",
    "ReusedWebhookId",
    "check_webhook_id",
    "handle_event",
    "seen_answer",
]
log = logging.getLogger(__name__)
# The idempotency key's column: a longer webhook-id is refused (400) on every database, not cut or failed.
WEBHOOK_ID_MAX_LENGTH: int = InboundEventRow.__table__.c.webhook_id.type.length  # 256
REFUSALS: list[tuple[type[PlanbridgeError], int]] = [
    (Undeliverable, 400),
    (NotFound, 404),
    (Conflict, 409),
    (RuleViolation, 422),
]


@dataclass(frozen=True)
class FhirNames:
    """What the push names FHIR content with; the backstop maps the changed plan with the same."""

    identifier_base: str = Settings.identifier_base
    mrn_system: str = Settings.mrn_system


@dataclass(frozen=True)
class Envelope:
    """What arrived: the webhook id (with the sender, the idempotency key), a digest of the raw body, the
    parsed body, and the sender whose secret signed it."""

    webhook_id: str
    body_sha256: str
    body: dict[str, Any]
    sender: str = DEFAULT_SENDER


@dataclass(frozen=True)
class Outcome:
    """The answer to an event; replayed unchanged when the same event arrives again."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class ReusedWebhookId(Conflict):
    """The same webhook id arrived with a different body."""

    code = "webhook-id-reused"


def _refuse_a_twin_in_all_but_case(plan_id: str, twin: str | None) -> None:
    """Refuse (409) an event that opens a plan whose id equals another plan's (`twin`) but for case.

    Plan ids are case-sensitive, but FHIR servers such as Medplum (and the local server) match identifier
    values without case: the new plan's push would find the other plan's CarePlan, CareTeam and Goals by
    their identifiers and overwrite them, linking them to this event's patient.
    """
    if twin is not None:
        raise Conflict(
            f"plan {plan_id} differs from plan {twin} only in case, which FHIR identifier searches do not tell apart",
            plan_id=plan_id,
        )


def _apply(uow: UnitOfWork, command: Command, now: datetime, names: FhirNames) -> tuple[Plan, dict[str, Any]]:
    """Apply the command to its plan and save it; return the plan and the document stored."""
    before = uow.deliveries.plans_before[command.plan_id] = uow.plans.get(command.plan_id)  # for the change's paths
    plan = apply_command(command, before, now.isoformat())
    if before is None:
        _refuse_a_twin_in_all_but_case(plan.id, uow.plans.twin_in_all_but_case(plan.id))
    # Accepted only if the push can send it: what FHIR refuses would be refused on every retry.
    check_deliverable(before, plan, names.identifier_base, names.mrn_system)
    document = uow.plans.save(plan)
    uow.outbox.add(plan.id, "push_plan", None, None, now)
    return plan, document


@dataclass(frozen=True)
class _Draft:
    """An event applied to its plan as last committed, before any transaction: the new plan, or the refusal."""

    committed: CommittedPlan | None  # what it was applied to (None: no such plan)
    before: Plan | None
    now: datetime
    plan: Plan | None
    refusal: PlanbridgeError | None


def _draft(engine: Engine, command: Command, clock: Callable[[], datetime], names: FhirNames) -> _Draft | None:
    """Apply the command to the plan as last committed, outside the transaction.

    Applying an event (the domain rules, mapping and validating the changed plan as FHIR) is most of its
    CPU. Inside the transaction it would hold the database's one writer (SQLite: the writer lock every
    process waits on) for all that time; here it runs beside other processes' commits. The transaction
    keeps the draft only if the plan is still exactly what it was applied to (PlanRepository.still),
    and applies the event itself otherwise, so the outcome is the one the transaction's own reads give.
    None when anything unexpected happens here: the transaction then does it all, as it would.
    """
    try:
        committed = read_committed(engine, command.plan_id)
        before = codec.from_dict(Plan, committed[0]) if committed is not None else None
        now = clock()
        try:
            plan = apply_command(command, before, now.isoformat())
            check_deliverable(before, plan, names.identifier_base, names.mrn_system)
        except (NotFound, RuleViolation, Conflict, Undeliverable) as refusal:
            return _Draft(committed, before, now, None, refusal)
        return _Draft(committed, before, now, plan, None)
    except Exception:
        log.debug("event for plan %s: no draft, applied inside the transaction", command.plan_id, exc_info=True)
        return None


def _apply_draft(uow: UnitOfWork, draft: _Draft, plan_id: str, now: datetime) -> tuple[Plan, dict[str, Any]]:
    """Keep a draft the transaction found still valid: save its plan, or raise its refusal (as _apply would).

    Called right after `uow.plans.still` said so: for a plan that was not there, that probe also found
    any plan whose id equals it but for case (`twin_seen`), so the twin is refused without another read.
    """
    uow.deliveries.plans_before[plan_id] = draft.before  # for the change's paths
    if draft.refusal is not None:
        raise draft.refusal
    assert draft.plan is not None
    if draft.before is None:
        _refuse_a_twin_in_all_but_case(plan_id, uow.plans.twin_seen)
    document = uow.plans.save(draft.plan)
    uow.outbox.add(draft.plan.id, "push_plan", None, None, now)
    return draft.plan, document


def _record(
    uow: UnitOfWork, envelope: Envelope, event_type: str, plan_id: str, now: datetime, outcome: Outcome
) -> None:
    uow.events.record(
        sender=envelope.sender,
        webhook_id=envelope.webhook_id,
        event_type=event_type,
        plan_id=plan_id,
        body_sha256=envelope.body_sha256,
        body=envelope.body,
        received_at=now,
        response_status=outcome.status,
        response_body=outcome.body,
    )


def _replay(uow: UnitOfWork, envelope: Envelope) -> Outcome | None:
    seen = uow.events.answer(envelope.sender, envelope.webhook_id)
    if seen is None:
        return None
    if seen.body_sha256 != envelope.body_sha256:
        raise ReusedWebhookId(
            f"webhook-id {envelope.webhook_id} was already used for a different body", webhook_id=envelope.webhook_id
        )
    return Outcome(seen.response_status, seen.response_body, replayed=True)


def check_webhook_id(webhook_id: str) -> None:
    """Refuse (400) a webhook-id that cannot be the idempotency key: over 256 characters, or with a control
    character (PostgreSQL stores no NUL)."""
    if len(webhook_id) > WEBHOOK_ID_MAX_LENGTH:
        raise InvalidInput(
            f"the webhook-id is {len(webhook_id)} characters long, over the {WEBHOOK_ID_MAX_LENGTH} allowed",
            {"webhook-id": [f"at most {WEBHOOK_ID_MAX_LENGTH} characters"]},
        )
    if not webhook_id.isprintable():
        raise InvalidInput("the webhook-id holds a control character", {"webhook-id": ["printable characters only"]})


def seen_answer(engine: Engine, sender: str, webhook_id: str, body_sha256: str) -> Outcome | None:
    """Return the recorded answer to this sender's webhook-id, None when it is new; raise ReusedWebhookId
    when it came with another body. Asked when a body is refused before it reaches `handle_event`, so that
    the reuse of an id (409), or the replay of its first answer, wins over the body's own fault."""
    with UnitOfWork(engine) as uow:
        return _replay(uow, Envelope(webhook_id, body_sha256, {}, sender))


def handle_event(
    engine: Engine,
    envelope: Envelope,
    event_type: str,
    command: Command,
    clock: Callable[[], datetime],
    names: FhirNames | None = None,
) -> Outcome:
    """Apply the event once; answer 202 only after the plan change, event and outbox entry are committed."""
    names = names or FhirNames()
    draft = _draft(engine, command, clock, names)
    tries = 0

    def work(uow: UnitOfWork) -> Outcome:
        nonlocal tries
        tries += 1
        # The first try takes the webhook id for new, as nearly every one is, and reads no answer: a used one
        # makes recording the event fail (IntegrityError on its key, which undoes the try), and every later
        # try looks for the recorded answer first, to replay it (or refuse a reused id).
        if tries > 1:
            replay = _replay(uow, envelope)
            if replay is not None:
                return replay
        drafted = draft is not None and uow.plans.still(command.plan_id, draft.committed)
        now = draft.now if drafted and draft is not None else clock()
        try:
            # Refusals come from the domain, before anything is written, so a refused event leaves
            # only its recorded answer behind.
            if drafted and draft is not None:
                plan, _document = _apply_draft(uow, draft, command.plan_id, now)
            else:
                plan, _document = _apply(uow, command, now, names)
            # Subscribed team systems hear of the change; numbered and queued in this transaction.
            record_change(
                uow,
                plan.id,
                event_type,
                {
                    "plan_version": plan.version,
                    "source": "team",
                    "change": {
                        "event_id": envelope.webhook_id,
                        "sender": envelope.sender,
                        "data": envelope.body.get("data", {}),
                    },
                },
                now,
                # the plan as saved (the document stored is its JSON): the change log need not read it back,
                # and with the plan before it a Plan too, its paths compare the two as objects, not as JSON
                after=plan,
            )
            outcome = Outcome(
                202,
                {
                    "status": "accepted",
                    "event_id": envelope.webhook_id,
                    "sender": envelope.sender,
                    "type": event_type,
                    "plan_id": plan.id,
                    "plan_version": plan.version,
                },
            )
        except (NotFound, RuleViolation, Conflict, Undeliverable) as refusal:
            if isinstance(refusal, StaleVersion):
                raise  # the plan changed under us: the committer runs this again on fresh reads
            outcome = _refusal(refusal, envelope, event_type)
        # The answer is recorded with the change, so a repeat of the webhook id gets it back unchanged.
        _record(uow, envelope, event_type, command.plan_id, now, outcome)
        return outcome

    # A duplicate webhook id committed first by another request raises IntegrityError at _record;
    # the committer then runs `work` again, which finds and replays that request's answer.
    outcome = committer_for(engine).run(work)
    if not outcome.replayed:
        log.info(
            "event %s sender=%s type=%s plan=%s status=%s",
            envelope.webhook_id,
            envelope.sender,
            event_type,
            command.plan_id,
            outcome.status,
        )
    return outcome


def _refusal(error: PlanbridgeError, envelope: Envelope, event_type: str) -> Outcome:
    status = next(s for kind, s in REFUSALS if isinstance(error, kind))
    extra: dict[str, Any] = {"event_id": envelope.webhook_id, "event_type": event_type}
    if isinstance(error.data.get("errors"), dict):
        extra["errors"] = error.data["errors"]
    return Outcome(status, problem(error.code, "Event refused", status, error.detail, **extra))
