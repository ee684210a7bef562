"""Error handlers: every error leaves as application/problem+json with a machine-readable type."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import psycopg
from flask import Flask, Response, json
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from service.api.auth import Unauthorized
from service.api.throttle import Throttled
from service.domain.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NotFound,
    PlanbridgeError,
    RuleViolation,
)
from service.fhir.errors import FhirError
from service.problems import PROBLEM_JSON, problem
from service.signing import SignatureInvalid
from service.store.db import UNMIGRATED

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[PlanbridgeError], int, str]] = [
    (InvalidInput, 400, "Invalid input"),
    (SignatureInvalid, 401, "Signature invalid"),
    (Unauthorized, 401, "Unauthorized"),
    (NotFound, 404, "Not found"),
    (Conflict, 409, "Conflict"),
    (RuleViolation, 422, "Rule violation"),
    (Throttled, 429, "Too many requests"),
    (ConfigurationError, 503, "Service misconfigured"),
    (FhirError, 502, "FHIR server error"),
]


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """Return a problem+json response for a problem body."""
    return Response(json.dumps(body), status=body["status"], mimetype=PROBLEM_JSON, headers=headers)


def _planbridge_error(error: PlanbridgeError) -> Response:
    status, title = next(((s, t) for kind, s, t in _STATUS if isinstance(error, kind)), (500, "Internal error"))
    title = getattr(error, "title", title)  # a problem type of its own may carry its own title (`url-refused`)
    extra: dict[str, Any] = {"errors": error.errors} if isinstance(error, InvalidInput) else {}
    if isinstance(error, FhirError) and error.outcome:
        extra["operationOutcome"] = error.outcome
    headers = None
    if isinstance(error, SignatureInvalid):
        headers = {"WWW-Authenticate": 'Signature realm="webhooks"'}
    elif isinstance(error, Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="planbridge"'}
    elif isinstance(error, Throttled):
        headers = {"Retry-After": str(error.retry_after)}
    return problem_response(problem(error.code, title, status, error.detail, **extra), headers)


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "-")
    headers = None
    allowed = getattr(error, "valid_methods", None)
    if status == 405 and allowed:  # RFC 9110: a 405 names the methods the resource has
        headers = {"Allow": ", ".join(sorted(set(allowed)))}
    return problem_response(problem(code, error.name, status, error.description or error.name), headers)


# The database does not answer (down, unreachable, locked past its timeout, no connection left in the pool):
# the request may succeed later, so 503 with Retry-After, not a 500. Logged by the error's type alone (a
# driver's message can quote a statement's values).
DATABASE_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sqlite3.OperationalError,  # the statements planbridge runs on the driver's own cursor raise these unwrapped
    psycopg.OperationalError,
)
DATABASE_RETRY_AFTER = "5"


def _database_unavailable(error: Exception) -> Response:
    cause = getattr(error, "orig", None) or error
    unmigrated = UNMIGRATED.search(str(cause)) is not None
    hint = " (not migrated to this revision: run `planbridge db upgrade`)" if unmigrated else ""
    log.error("database unavailable: %s%s", type(cause).__name__, hint)
    body = problem(
        "database-unavailable", "Database unavailable", 503, "the database did not answer; try again shortly"
    )
    return problem_response(body, {"Retry-After": DATABASE_RETRY_AFTER})


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled %s", type(error).__name__)
    return problem_response(problem("internal-error", "Internal error", 500, "the service failed; the error is logged"))


def init_app(app: Flask) -> None:
    """Register the handlers on the app."""
    app.register_error_handler(PlanbridgeError, _planbridge_error)
    app.register_error_handler(HTTPException, _http_error)
    for kind in DATABASE_UNAVAILABLE:
        app.register_error_handler(kind, _database_unavailable)
    app.register_error_handler(Exception, _unexpected)
