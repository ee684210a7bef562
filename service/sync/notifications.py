"""What the FHIR server tells us: R4 rest-hook pings and payloads, and Subscriptions Backport bundles.

A notification is never trusted as the new state of a plan: it only says *which* plan to re-read. The
re-read is queued in the outbox (durable, retried) and done by the worker with a normal pull, so a
notification that is lost, duplicated or forged changes nothing by itself.
https://hl7.org/fhir/R4/subscription.html, https://hl7.org/fhir/uv/subscriptions-backport/
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mappings import codes, fhirtext
from mappings.reference_parse import parse_reference
from service.domain.errors import InvalidInput
from service.store.tables import SyncCursorRow
from service.store.uow import UnitOfWork
from service.sync.adopt import links_to
from service.sync.push import local_key

log = logging.getLogger(__name__)
EVERYTHING = "*"  # the outbox's plan_id for "pull what changed", not one plan
HEARD = "backport-heard:"  # cursor prefix: when a Backport subscription was last heard from
KINDS = ("plan", "careteam", "goal", "checkin")
# What a notification may carry, read strictly: anything else is a 400 OperationOutcome, never a 500.
MAX_COUNT = 2**63 - 1  # event numbers and counts are integer64 (Backport R4B/R5); ASCII digits in R4's strings
_COUNT = re.compile(r"[0-9]{1,19}")
_PLAN_ID = re.compile(fhirtext.ID)
# A Backport subscription's cursors are named after its reference; one too long for the column is named
# after its digest instead, so every reference gets its cursors.
_KEY_ROOM = SyncCursorRow.__table__.c.name.type.length - len(HEARD)


@dataclass
class Received:
    """What a notification led to: its kind and the re-reads queued (plan ids, or "*" for all changes)."""

    kind: str
    queued: list[str] = field(default_factory=list)


def plan_ids_of(resource: dict[str, Any], base: str) -> set[str]:
    """Return the plans a resource belongs to, by planbridge's identifiers on it (ids of the plan id's shape)."""
    systems = {codes.identifier_system(base, k) for k in KINDS}
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return set()
    values = [
        i.get("value")
        for i in identifiers
        if isinstance(i, dict) and isinstance(i.get("system"), str) and i["system"] in systems
    ]
    plans = {v.split("/", 1)[0] for v in values if isinstance(v, str)}
    return {p for p in plans if _PLAN_ID.fullmatch(p)}


def _text(value: Any, path: str) -> str | None:
    """A string from a notification, or None; one FHIR would not carry (control characters...) is refused."""
    if value is None:
        return None
    if not isinstance(value, str) or fhirtext.string_problem(value) is not None:
        raise InvalidInput(f"{path} is not a valid string", {path: "a FHIR string"})
    return value


def check_notified_resource(resource: dict[str, Any]) -> None:
    """Refuse (InvalidInput) a rest-hook resource whose id, version or identifiers are not FHIR's shapes:
    they become lookup keys."""
    for key in ("id", "meta"):
        if key in resource and not isinstance(resource[key], str if key == "id" else dict):
            raise InvalidInput(f"{resource.get('resourceType')}.{key} is malformed", {key: "wrong JSON type"})
    for path, value in (("id", resource.get("id")), ("meta.versionId", (resource.get("meta") or {}).get("versionId"))):
        if value is not None and not (isinstance(value, str) and _PLAN_ID.fullmatch(value)):
            raise InvalidInput(f"{path} is not a FHIR id", {path: "1-64 of [A-Za-z0-9-.]"})
    identifiers = resource.get("identifier", [])
    if not isinstance(identifiers, list) or not all(isinstance(i, dict) for i in identifiers):
        raise InvalidInput("identifier is not a list of Identifiers", {"identifier": "a list of objects"})
    for n, identifier in enumerate(identifiers):
        for key in ("system", "value"):
            _text(identifier.get(key), f"identifier[{n}].{key}")


def _count(value: Any, path: str) -> int | None:
    """An event number or count: a JSON integer or a string of ASCII digits, 0 to 2^63-1."""
    if value is None:
        return None
    if isinstance(value, str) and _COUNT.fullmatch(value):
        value = int(value)
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise InvalidInput(f"{path} is not a count", {path: "ASCII digits, 0 to 2^63-1"})
    return value


def _subscription_key(reference: Any) -> str:
    """Name a Backport subscription for its cursors: its reference, or a digest of one too long."""
    text = _text(reference, "subscription")
    if text is None:
        return "unknown"
    if len(text) <= _KEY_ROOM:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[: _KEY_ROOM - len("sha256:")]


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
        # An adopted plan's resources may carry no identifier of ours: their plans are known by link.
        linked = {link.plan_id: link for link in links_to(uow, resource.get("resourceType"), resource.get("id"))}
        if not plans and not linked:
            _queue(uow, EVERYTHING, now, result.queued)  # not ours by identifier: look at what changed
        for plan_id in sorted(plans | set(linked)):
            link = linked.get(plan_id) or uow.links.get(plan_id, local_key(resource, base))
            if link is not None and version is not None and link.version_id == version:
                continue  # the echo of our own push, or a version already pulled
            _queue(uow, plan_id, now, result.queued)
        uow.commit()
    return result


def _objects(value: Any, path: str) -> list[dict[str, Any]]:
    """A JSON array of objects (absent: empty)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidInput(f"{path} is not a list of objects", {path: "a list of objects"})
    return value


def _object(value: Any, path: str) -> dict[str, Any]:
    """A JSON object (absent: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{path} is not an object", {path: "an object"})
    return value


def _reference(value: Any, path: str) -> str | None:
    return _text(_object(value, path).get("reference"), f"{path}.reference")


def _value(part: dict[str, Any]) -> Any:
    return next((v for k, v in part.items() if k.startswith("value")), None)


def _status_parameters(bundle: dict[str, Any]) -> dict[str, Any]:
    """Read the status of a Backport notification: its type, subscription key, count and events (each with an
    event number and a focus reference), every one checked for shape."""
    entries = _objects(bundle.get("entry"), "Bundle.entry")
    first = entries[0].get("resource") if entries else None
    if not isinstance(first, dict) or first.get("resourceType") not in ("Parameters", "SubscriptionStatus"):
        raise InvalidInput("a notification Bundle starts with a SubscriptionStatus", {"Bundle.entry[0]": "missing"})
    if first["resourceType"] == "SubscriptionStatus":  # R4B/R5 shape
        raw = {
            "type": first.get("type"),
            "subscription": _reference(first.get("subscription"), "SubscriptionStatus.subscription"),
            "events-since-subscription-start": first.get("eventsSinceSubscriptionStart"),
        }
        events = [
            (e.get("eventNumber"), e.get("focus"))
            for e in _objects(first.get("notificationEvent"), "SubscriptionStatus.notificationEvent")
        ]
    else:
        raw, events = {}, []
        for n, p in enumerate(_objects(first.get("parameter"), "Parameters.parameter")):
            if p.get("name") == "notification-event":
                path = f"Parameters.parameter[{n}].part"
                part = {
                    q.get("name"): _value(q) for q in _objects(p.get("part"), path) if isinstance(q.get("name"), str)
                }
                events.append((part.get("event-number"), part.get("focus")))
            elif isinstance(p.get("name"), str):
                raw[p["name"]] = _value(p)
        if isinstance(raw.get("subscription"), dict):
            raw["subscription"] = _reference(raw["subscription"], "subscription")
    kind = raw.get("type")
    if kind is not None and not isinstance(kind, str):
        raise InvalidInput("the notification type is not a code", {"type": "a code"})
    return {
        "type": _text(kind, "type"),
        "subscription": _subscription_key(raw.get("subscription")),
        "events-since-subscription-start": _count(
            raw.get("events-since-subscription-start"), "events-since-subscription-start"
        ),
        "notification-event": [_event(n, number, focus) for n, (number, focus) in enumerate(events)],
    }


def _event(n: int, number: Any, focus: Any) -> dict[str, Any]:
    reference = _reference(focus, f"notification-event[{n}].focus")
    return {
        "eventNumber": _count(number, f"notification-event[{n}].event-number"),
        "focus": {"reference": reference} if reference else None,
    }


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


def _type_id(reference: object) -> str:
    """Return `Type/id` from a relative or absolute reference, with or without `_history`; "" for any other
    (a urn:uuid, #contained or malformed focus names nothing a plan is linked to: everything is re-read)."""
    parsed = parse_reference(reference.rstrip("/") if isinstance(reference, str) else reference)
    return (parsed.type_id if parsed is not None else None) or ""


def _queue_focus(
    uow: UnitOfWork, bundle: dict[str, Any], status: dict[str, Any], base: str, now: datetime, result: Received
) -> None:
    carried = {
        f"{r['resourceType']}/{r.get('id')}": r
        for e in (bundle.get("entry") or [])[1:]
        if isinstance(e, dict) and isinstance((r := e.get("resource")), dict) and "resourceType" in r
    }
    for event in status["notification-event"]:
        focus = _type_id((event.get("focus") or {}).get("reference", ""))
        resource = carried.get(focus)
        plans = plan_ids_of(resource, base) if resource else set()
        plans |= {link.plan_id for link in links_to(uow, *focus.split("/"))} if focus.count("/") == 1 else set()
        if not plans:
            _queue(uow, EVERYTHING, now, result.queued)  # id-only or empty payload: ask what changed
        for plan_id in sorted(plans):
            _queue(uow, plan_id, now, result.queued)
