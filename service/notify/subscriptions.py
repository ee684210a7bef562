"""Use cases for subscriptions and their delivery log (the API and the CLI call these)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from service.domain.errors import InvalidInput, RuleViolation
from service.notify.changes import EVENT_TYPES
from service.notify.ssrf import OutboundGuard
from service.signing import new_secret
from service.store.repo_notify import OPEN_DELIVERY
from service.store.uow import DeliveryRepository, UnitOfWork

ORDERINGS = DeliveryRepository.ORDERINGS
DEFAULT_ORDERING = "best-effort"
SECRET_GRACE = timedelta(hours=24)  # how long a rotated-out secret still signs deliveries, unless told otherwise
MAX_SECRET_GRACE = timedelta(days=7)


def iso_date(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def subscription_dict(row: Any) -> dict[str, Any]:
    """Return a subscription as plain data (without its secret)."""
    return {
        "id": row.id,
        "url": row.url,
        "event_types": row.event_types,
        "status": row.status,
        "disabled_reason": row.disabled_reason,
        "description": row.description,
        "ordering": row.ordering or DEFAULT_ORDERING,
        # until when deliveries are signed with the secret the latest rotation replaced as well (a time gone by: no
        # more); None before any rotation, or after one without a grace period
        "previous_secret_expires_at": iso_date(row.previous_secret_until) if row.previous_secret else None,
        "created_at": iso_date(row.created_at),
        "updated_at": iso_date(row.updated_at),
    }


def delivery_dict(row: Any) -> dict[str, Any]:
    """Return a delivery and its attempt log as plain data (without the payload)."""
    return {
        "id": row.id,
        "subscription_id": row.subscription_id,
        "plan_id": row.plan_id,
        "sequence": row.sequence,
        "event_type": row.event_type,
        "webhook_id": row.webhook_id,
        "status": row.status,
        "attempts": row.attempts,
        "attempts_since_replay": row.attempts - (row.attempts_before_replay or 0),
        # Only an open delivery has a next attempt (a finished one's column still holds its last lease's end).
        "next_attempt_at": iso_date(row.next_attempt_at) if row.status in OPEN_DELIVERY else None,
        "claimed_at": iso_date(row.claimed_at),  # set while a worker sends it (until next_attempt_at)
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "attempt_log": row.attempt_log or [],
        "created_at": iso_date(row.created_at),
        "delivered_at": iso_date(row.delivered_at),
    }


def check_event_types(event_types: list[str]) -> list[str]:
    """Return the event types, refusing unknown ones and "*" mixed with others."""
    if event_types == ["*"]:
        return event_types
    unknown = sorted(set(event_types) - EVENT_TYPES - {"*"})
    problems = [f"unknown: {', '.join(unknown)}; known: {', '.join(sorted(EVENT_TYPES))}"] if unknown else []
    if "*" in event_types:
        problems.append('"*" stands for every event type and must be alone: ["*"]')
    if not event_types:
        problems.append('give at least one event type, or ["*"]')
    if problems:
        raise InvalidInput('event_types must be known event types, or ["*"] alone', {"event_types": problems})
    return sorted(set(event_types))


def check_ordering(ordering: str) -> str:
    """Return the ordering, refusing one that is neither `best-effort` nor `strict`."""
    if ordering not in ORDERINGS:
        raise InvalidInput("ordering must be best-effort or strict", {"ordering": [f"one of {', '.join(ORDERINGS)}"]})
    return ordering


def subscribe(
    uow: UnitOfWork,
    guard: OutboundGuard,
    url: str,
    event_types: list[str],
    description: str | None,
    now: datetime,
    ordering: str = DEFAULT_ORDERING,
) -> dict[str, Any]:
    """Register a subscription after checking its URL; return it with its secret (shown this once)."""
    event_types = check_event_types(event_types)
    ordering = check_ordering(ordering)
    guard.check(url)
    secret = new_secret()
    with uow:
        row = uow.subscriptions.add(url.strip(), event_types, secret, description, now)
        row.ordering = ordering
        uow.commit()
        return {**subscription_dict(row), "secret": secret}


def set_ordering(uow: UnitOfWork, subscription_id: int, ordering: str, now: datetime) -> dict[str, Any]:
    """Change how a subscription's deliveries wait behind a dead one (`strict`) or not (`best-effort`)."""
    ordering = check_ordering(ordering)
    with uow:
        row = uow.subscriptions.get(subscription_id)
        row.ordering, row.updated_at = ordering, now
        uow.commit()
        return subscription_dict(row)


def set_enabled(uow: UnitOfWork, subscription_id: int, enabled: bool, now: datetime) -> dict[str, Any]:
    """Enable a subscription (its held deliveries become due now) or disable it by hand."""
    with uow:
        row = uow.subscriptions.get(subscription_id)
        if enabled:
            uow.subscriptions.set_status(row, "active", None, now)
            uow.deliveries.rearm(row.id, now)
        else:
            uow.subscriptions.set_status(row, "disabled", "disabled through the API", now)
        uow.commit()
        return subscription_dict(row)


def rotate_secret(
    uow: UnitOfWork, subscription_id: int, now: datetime, grace: timedelta = SECRET_GRACE
) -> dict[str, Any]:
    """Give a subscription a new signing secret and return the subscription with it (shown this once). Until
    `grace` has passed, every delivery (retries of earlier ones too) carries two signatures, by the new secret
    and by the one it replaces, so the receiver may switch at its own pace; then only the new one. A second
    rotation within the grace period retires the oldest secret at once (only two are ever used). The
    subscription keeps its id, ordering, state, queued deliveries and their log."""
    if not timedelta(0) <= grace <= MAX_SECRET_GRACE:
        limit = int(MAX_SECRET_GRACE.total_seconds())
        raise InvalidInput("grace_seconds must be between 0 and 7 days", {"grace_seconds": [f"0 to {limit}"]})
    secret = new_secret()
    with uow:
        row = uow.subscriptions.get(subscription_id)
        uow.subscriptions.rotate_secret(row, secret, now, now + grace)
        uow.commit()
        return {**subscription_dict(row), "secret": secret}


def unsubscribe(uow: UnitOfWork, subscription_id: int) -> None:
    """Delete a subscription and its delivery log."""
    with uow:
        uow.subscriptions.delete(uow.subscriptions.get(subscription_id))
        uow.commit()


def _closable(uow: UnitOfWork, delivery_id: int, now: datetime, doing: str) -> Any:
    row = uow.deliveries.get(delivery_id)
    if row.status not in ("dead", "failed"):
        raise RuleViolation(f"delivery {delivery_id} is {row.status}; only dead or failed ones are {doing}")
    if uow.deliveries.in_flight(row, now):
        raise RuleViolation(f"delivery {delivery_id} is being sent now; try again once the attempt is recorded")
    return row


def replay_delivery(uow: UnitOfWork, delivery_id: int, now: datetime) -> dict[str, Any]:
    """Queue a dead or failed delivery again, due now, with a full set of attempts (its count and log go on)."""
    with uow:
        row = _closable(uow, delivery_id, now, "replayed")
        uow.deliveries.replay(row, now)
        uow.commit()
        return delivery_dict(row)


def skip_delivery(uow: UnitOfWork, delivery_id: int, now: datetime) -> dict[str, Any]:
    """Give up on a dead or failed delivery: it is not sent again, and under `strict` ordering the plan's
    later deliveries to that subscription go on."""
    with uow:
        row = _closable(uow, delivery_id, now, "skipped")
        uow.deliveries.skip(row)
        uow.commit()
        return delivery_dict(row)
