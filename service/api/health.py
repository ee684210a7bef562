"""Liveness and readiness probes."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from service.api.container import container
from service.fhir.errors import FhirError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Answer 200 when the database and the FHIR server (if one is configured) answer, 503 otherwise."""
    c = container()
    checks: dict[str, str] = {}
    try:
        with c.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except sa.exc.SQLAlchemyError as exc:
        checks["database"] = type(exc).__name__
    if c.settings.fhir_base_url:
        try:
            c.fhir().request("GET", "metadata", params={"_summary": "true"})
            checks["fhir"] = "ok"
        except FhirError as exc:
            checks["fhir"] = type(exc).__name__
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "unavailable", **checks), 200 if ready else 503
