"""POST /webhooks/team: signed team events in, 202 once the change is durable."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, request
from marshmallow import ValidationError

from service.api import fastload
from service.api.bodies import error_paths
from service.api.container import Container, container
from service.api.errors import problem_response
from service.api.schemas import EVENT_DATA_SCHEMAS, EventSchema
from service.domain.errors import InvalidInput
from service.services.events import Envelope, FhirNames, Outcome, check_webhook_id, handle_event, seen_answer
from service.signing import verify_sender
from service.store.db import json_loads

bp = Blueprint("webhooks", __name__)
# Schema instances are built once: building one per request cost more than the load itself, and
# marshmallow schemas hold no per-load state, so threads can share them.
_ENVELOPE = EventSchema()
_DATA = {event_type: schema() for event_type, schema in EVENT_DATA_SCHEMAS.items()}
# Each with its precompiled loader (service/api/fastload.py): the same result as schema.load for the
# input it vouches for, marshmallow itself for the rest, so every refusal keeps marshmallow's messages.
_ENVELOPE_LOADER = fastload.compile_loader(_ENVELOPE)
_DATA_LOADERS = {event_type: fastload.compile_loader(schema) for event_type, schema in _DATA.items()}


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")  # JSON between systems is UTF-8 (RFC 8259), never guessed UTF-16 or -32
    except UnicodeDecodeError as exc:
        raise InvalidInput("the body is not UTF-8", {"body": f"invalid UTF-8 at byte {exc.start}"}) from None
    try:
        body = json_loads(text)  # orjson, or json where orjson would read differently or refuse
    except (ValueError, RecursionError) as exc:
        raise InvalidInput("the body is not valid JSON", {"body": str(exc)[:200]}) from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", {"body": "not an object"})
    return body


def _command(body: dict[str, Any]) -> tuple[str, Any]:
    try:
        envelope = fastload.load(_ENVELOPE, _ENVELOPE_LOADER, body)
    except ValidationError as exc:
        raise InvalidInput("the event envelope is invalid", error_paths(exc.normalized_messages())) from None
    schema = _DATA.get(envelope["type"])
    if schema is None:
        raise InvalidInput(
            f"unknown event type {envelope['type']!r}", {"type": [f"must be one of {sorted(EVENT_DATA_SCHEMAS)}"]}
        )
    try:
        return envelope["type"], fastload.load(schema, _DATA_LOADERS[envelope["type"]], envelope["data"])
    except ValidationError as exc:
        messages = error_paths({"data": exc.normalized_messages()})
        raise InvalidInput(f"{envelope['type']} data is invalid", messages) from None


def _ascii_webhook_id(headers: Mapping[str, str]) -> None:
    """Refuse (400) a `webhook-id` holding a character beyond ASCII before checking its signature: HTTP carries
    header bytes, which the server reads as Latin-1, so whether the sender signed the id's UTF-8 or its Latin-1
    bytes, no signature over it ever matches (a 401 that tells the sender nothing)."""
    webhook_id = next((value for name, value in headers.items() if name.lower() == "webhook-id"), "")
    if not webhook_id.isascii():
        raise InvalidInput(
            "the webhook-id holds a character that is not ASCII: no signature over it can be verified",
            {"webhook-id": ["printable ASCII characters only"]},
        )


def read_signed(c: Container, raw: bytes, headers: Mapping[str, str]) -> tuple[str, str]:
    """Return (sender, webhook-id) of a body whose signature verifies; raise Unauthorized or InvalidInput.

    The first step of both ways in: Flask's view below and the intake lane (service/api/intake_lane.py)."""
    _ascii_webhook_id(headers)
    sender, webhook_id = verify_sender(c.settings.signing_secrets, raw, headers)
    check_webhook_id(webhook_id)
    return sender, webhook_id


def read_event(raw: bytes) -> tuple[dict[str, Any], str, Any]:
    """Return the body, its event type and its command; raise InvalidInput naming what is wrong."""
    body = _parse(raw)
    event_type, command = _command(body)
    return body, event_type, command


def apply_event(
    c: Container, sender: str, webhook_id: str, digest: str, body: dict[str, Any], event_type: str, command: Any
) -> Outcome:
    """Apply a signed, well-formed event (`handle_event`) with the container's settings; the last step of both
    ways in."""
    names = FhirNames(c.settings.identifier_base, c.settings.mrn_system)
    envelope = Envelope(webhook_id, digest, body, sender)
    return handle_event(c.engine, envelope, event_type, command, c.clock, names)


@bp.post("/webhooks/team")
def team_event() -> Response:
    """Verify, validate and apply one team event."""
    if request.mimetype != "application/json":
        return problem_response(
            {
                "type": "urn:planbridge:problem:unsupported-media-type",
                "title": "Unsupported Media Type",
                "status": 415,
                "detail": "send the event as application/json",
            }
        )
    c = container()
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    sender, webhook_id = read_signed(c, raw, request.headers)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        body, event_type, command = read_event(raw)
    except InvalidInput:
        seen = seen_answer(c.engine, sender, webhook_id, digest)  # a reused id is 409 whatever the body
        if seen is None:
            raise
        return _answer(seen)
    return _answer(apply_event(c, sender, webhook_id, digest, body, event_type, command))


def _answer(outcome: Outcome) -> Response:
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    if outcome.status >= 400:
        return problem_response(outcome.body, headers)
    return Response(json.dumps(outcome.body), status=outcome.status, mimetype="application/json", headers=headers)
