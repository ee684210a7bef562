"""What the FHIR server tells us: R4 rest-hook pings and payloads, and Subscriptions Backport bundles.

A notification is never trusted as the new state of a plan: it only says *which* plan to re-read. The
re-read is queued in the outbox (durable, retried) and done by the worker with a normal pull, so a
notification that is lost, duplicated or forged changes nothing by itself.
https://hl7.org/fhir/R4/subscription.html, https://hl7.org/fhir/uv/subscriptions-backport/
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mappings import codes
from service.domain.errors import InvalidInput
from service.store.uow import UnitOfWork
from service.sync.push import local_key

log = logging.getLogger(__name__)
EVERYTHING = "*"  # the outbox's plan_id for "pull what changed", not one plan
HEARD = "backport-heard:"  # cursor prefix: when a Backport subscription was last heard from
KINDS = ("plan", "careteam", "goal", "checkin")


@dataclass
class Received:
    """What a notification led to: its kind and the re-reads queued (plan ids, or "*" for all changes)."""

    kind: str
    queued: list[str] = field(default_factory=list)


def plan_ids_of(resource: dict[str, Any], base: str) -> set[str]:
    """Return the plans a resource belongs to, by planbridge's identifiers on it."""
    systems = {codes.identifier_system(base, k) for k in KINDS}
    values = [i.get("value", "") for i in resource.get("identifier", []) if i.get("system") in systems]
    return {v.split("/", 1)[0] for v in values if v}


def _queue(uow: UnitOfWork, target: str, now: datetime, queued: list[str]) -> None:
    kind = "pull_changed" if target == EVERYTHING else "pull_plan"
    # One waiting re-read is enough; one already under way may have read the server before this change.
    if not uow.outbox.pending_exists(target, kind, waiting_only=True):
        uow.outbox.add(target, kind, None, None, now)
    queued.append(target)


def receive_ping(uow: UnitOfWork, now: datetime) -> Received:
    """An empty rest-hook POST: something matching our Subscription changed; pull what changed."""
    result = Received("ping")
    with uow:
        _queue(uow, EVERYTHING, now, result.queued)
        uow.commit()
    return result


def receive_resource(uow: UnitOfWork, resource: dict[str, Any], base: str, now: datetime) -> Received:
    """A rest-hook PUT of a resource: re-read its plan, unless this version is one we wrote or read."""
    result = Received("resource")
    plans = plan_ids_of(resource, base)
    version = resource.get("meta", {}).get("versionId")
    with uow:
        if not plans:
            _queue(uow, EVERYTHING, now, result.queued)  # not ours by identifier: look at what changed
        for plan_id in sorted(plans):
            link = uow.links.get(plan_id, local_key(resource, base))
            if link is not None and version is not None and link.version_id == version:
                continue  # the echo of our own push, or a version already pulled
            _queue(uow, plan_id, now, result.queued)
        uow.commit()
    return result


def _status_parameters(bundle: dict[str, Any]) -> dict[str, Any]:
    entries = bundle.get("entry") or []
    first = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
    if not isinstance(first, dict) or first.get("resourceType") not in ("Parameters", "SubscriptionStatus"):
        raise InvalidInput("a notification Bundle starts with a SubscriptionStatus", {"Bundle.entry[0]": "missing"})
    if first["resourceType"] == "SubscriptionStatus":  # R4B/R5 shape
        return {
            "type": first.get("type"),
            "subscription": (first.get("subscription") or {}).get("reference"),
            "events-since-subscription-start": first.get("eventsSinceSubscriptionStart"),
            "notification-event": first.get("notificationEvent", []),
        }
    params: dict[str, Any] = {"notification-event": []}
    for p in first.get("parameter", []):
        name = p.get("name")
        if name == "notification-event":
            part = {
                q.get("name"): next((v for k, v in q.items() if k.startswith("value")), None) for q in p.get("part", [])
            }
            params["notification-event"].append({"eventNumber": part.get("event-number"), "focus": part.get("focus")})
        else:
            params[name] = next((v for k, v in p.items() if k.startswith("value")), None)
    if isinstance(params.get("subscription"), dict):
        params["subscription"] = params["subscription"].get("reference")
    return params


def receive_backport(uow: UnitOfWork, bundle: dict[str, Any], base: str, now: datetime) -> Received:
    """A Subscriptions Backport `history` Bundle: handshake, heartbeat, event-notification or query-*.

    Event numbers are tracked per subscription; a gap (or a heartbeat whose count is ahead of what we
    saw) means notifications were lost, and everything that changed is pulled.
    """
    status = _status_parameters(bundle)
    kind = str(status.get("type") or "unknown")
    result = Received(kind)
    cursor = f"backport:{status.get('subscription') or 'unknown'}"
    with uow:
        seen = int(uow.sync.cursor(cursor) or 0)
        numbers = [
            int(e["eventNumber"]) for e in status["notification-event"] if str(e.get("eventNumber", "")).isdigit()
        ]
        total = (
            int(status["events-since-subscription-start"])
            if str(status.get("events-since-subscription-start", "")).isdigit()
            else None
        )
        expected_first = seen + 1
        gap = (numbers and min(numbers) > expected_first) or (not numbers and total is not None and total > seen)
        if kind == "handshake":
            gap = False
        if gap:
            log.warning("notifications from %s missed (had %s): resyncing", cursor, seen)
            _queue(uow, EVERYTHING, now, result.queued)
        if kind == "event-notification":
            _queue_focus(uow, bundle, status, base, now, result)
        high = max([seen, *numbers, *([total] if total is not None and kind != "handshake" else [])])
        uow.sync.set_cursor(cursor, str(high))
        uow.sync.set_cursor(f"{HEARD}{status.get('subscription') or 'unknown'}", now.isoformat())
        uow.commit()
    return result


def silent_subscriptions(uow: UnitOfWork, now: datetime, timeout_seconds: float) -> list[str]:
    """Return Backport subscriptions not heard from (not even a heartbeat) for `timeout_seconds`, and queue a
    resync for them; each is then counted as heard, so a silent server costs one resync per timeout."""
    silent = []
    with uow:
        for name, value in uow.sync.cursors(HEARD).items():
            if (now - datetime.fromisoformat(value)).total_seconds() >= timeout_seconds:
                silent.append(name.removeprefix(HEARD))
                uow.sync.set_cursor(name, now.isoformat())
        if silent:
            log.warning("no heartbeat from %s: resyncing", ", ".join(silent))
            _queue(uow, EVERYTHING, now, [])
        uow.commit()
    return silent


def _type_id(reference: str) -> str:
    """Return `Type/id` from a relative or absolute reference, with or without `_history`."""
    return "/".join(reference.split("/_history")[0].rstrip("/").split("/")[-2:])


def _queue_focus(
    uow: UnitOfWork, bundle: dict[str, Any], status: dict[str, Any], base: str, now: datetime, result: Received
) -> None:
    carried = {
        f"{r['resourceType']}/{r.get('id')}": r
        for e in (bundle.get("entry") or [])[1:]
        if isinstance(e, dict) and isinstance((r := e.get("resource")), dict) and "resourceType" in r
    }
    for event in status["notification-event"]:
        resource = carried.get(_type_id((event.get("focus") or {}).get("reference", "")))
        plans = plan_ids_of(resource, base) if resource else set()
        if not plans:
            _queue(uow, EVERYTHING, now, result.queued)  # id-only or empty payload: ask what changed
        for plan_id in sorted(plans):
            _queue(uow, plan_id, now, result.queued)
