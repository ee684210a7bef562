"""Where the FHIR server notifies planbridge: R4 rest-hook (empty POST, or PUT [endpoint]/[type]/[id]) and
Subscriptions Backport bundles. Authenticated by the secret header planbridge puts in `channel.header`.
Answers are OperationOutcomes: this endpoint speaks FHIR."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from service.api.container import container
from service.domain.errors import InvalidInput
from service.fhir.client import FHIR_JSON
from service.sync.notifications import (
    Received,
    check_notified_resource,
    receive_backport,
    receive_ping,
    receive_resource,
)
from service.sync.subscriptions import SECRET_HEADER, is_accepted, rotation

bp = Blueprint("fhir_notifications", __name__)


def _outcome(status: int, severity: str, code: str, diagnostics: str, expression: list[str] | None = None) -> Response:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON)


def _invalid(error: InvalidInput) -> Response:
    """A 400 OperationOutcome naming the bad elements."""
    return _outcome(400, "error", "invalid", error.detail, [str(path) for path in error.errors])


def _refusal(resource_type: str | None = None) -> Response | None:
    """Refuse a notification without a secret planbridge gave one of its Subscriptions (for `resource_type`,
    when the notification carries one): the current generation's, or the previous one's within its grace."""
    c = container()
    secret = c.settings.fhir_notify_secret
    presented = request.headers.get(SECRET_HEADER, "")
    if not secret:
        return _outcome(
            401, "error", "security", "FHIR notifications are off: PLANBRIDGE_FHIR_NOTIFY_SECRET is not set"
        )
    if presented:
        with c.uow() as uow:
            state = rotation(uow)
        if is_accepted(secret, presented, state, c.clock(), resource_type):
            return None
    return _outcome(401, "error", "security", f"the {SECRET_HEADER} header is missing, wrong or retired")


def _answer(received: Received) -> Response:
    text = f"{received.kind}: re-read queued for {', '.join(received.queued)}" if received.queued else received.kind
    return _outcome(200, "information", "informational", text)


def _body() -> Any:
    raw = request.get_data()
    if not raw.strip():
        return None
    try:
        return json.loads(raw.decode("utf-8"))  # FHIR JSON is UTF-8
    except UnicodeDecodeError:
        raise InvalidInput("the body is not UTF-8") from None
    except ValueError:
        raise InvalidInput("the body is not JSON") from None
    except RecursionError:
        raise InvalidInput("the body nests too deeply to be a FHIR resource") from None


@bp.post("/fhir-notifications")
def notified() -> Response:
    """An empty rest-hook ping, or a Subscriptions Backport notification Bundle."""
    refused = _refusal()
    if refused is not None:
        return refused
    c = container()
    try:
        body = _body()
        if body is None:
            return _answer(receive_ping(c.uow(), c.clock()))
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise InvalidInput("expected an empty body or a notification Bundle")
        return _answer(receive_backport(c.uow(), body, c.settings.identifier_base, c.clock()))
    except InvalidInput as exc:
        return _invalid(exc)


@bp.put("/fhir-notifications/<resource_type>/<resource_id>")
def notified_with_resource(resource_type: str, resource_id: str) -> Response:
    """A rest-hook notification carrying the resource (payload application/fhir+json)."""
    refused = _refusal(resource_type)
    if refused is not None:
        return refused
    c = container()
    try:
        body = _body()
        if not isinstance(body, dict) or body.get("resourceType") != resource_type:
            raise InvalidInput(f"expected a {resource_type} resource")
        check_notified_resource(body)
        if body.get("id") not in (None, resource_id):
            raise InvalidInput(f"the resource's id is not {resource_id}")
        return _answer(receive_resource(c.uow(), body, c.settings.identifier_base, c.clock()))
    except InvalidInput as exc:
        return _invalid(exc)
