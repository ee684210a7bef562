"""GET /openapi.json (OpenAPI 3.1, built with apispec from the marshmallow schemas that validate input)
and GET /docs, a plain HTML page of the same document (no scripts, nothing fetched from elsewhere)."""

from __future__ import annotations

import html
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app

from service.api.openapi_paths import _fhir_notification_paths, _history_paths, _paths
from service.api.openapi_schemas import KEYED, _plan_components, _problem, _schema_name
from service.api.schemas import EVENT_DATA_SCHEMAS, EventSchema

bp = Blueprint("openapi", __name__)


def build_spec() -> dict[str, Any]:
    """Return the OpenAPI document."""
    from service.api.plans import AdoptSchema, ResolveSchema, SyncRequestSchema

    try:
        release = version("planbridge")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        release = "0"
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(title="planbridge", version=release, openapi_version="3.1.0", plugins=[plugin])
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    spec.components.schema(
        "Problem",
        {
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {"type": "object"},
            },
        },
    )
    spec.components.schema(
        "Accepted",
        {
            "type": "object",
            "properties": {
                "status": {"const": "accepted"},
                "event_id": {"type": "string"},
                "sender": {"type": "string"},
                "type": {"type": "string"},
                "plan_id": {"type": "string"},
                "plan_version": {"type": "integer"},
            },
        },
    )
    spec.components.schema("SyncRequestSchema", schema=SyncRequestSchema)
    spec.components.schema("ResolveSchema", schema=ResolveSchema)
    spec.components.schema("AdoptSchema", schema=AdoptSchema)
    _plan_components(spec)
    event_refs = []
    for event_type, schema in sorted(EVENT_DATA_SCHEMAS.items()):
        name = "".join(part.capitalize() for part in event_type.replace("_", ".").split(".")) + "Event"
        spec.components.schema(f"{name}Data", schema=schema)
        envelope = {
            "type": "object",
            "required": ["type", "timestamp", "data"],
            "additionalProperties": False,
            "properties": {
                "type": {"const": event_type},
                "timestamp": {"type": "string", "format": "date-time"},
                "data": {"$ref": f"#/components/schemas/{name}Data"},
            },
        }
        spec.components.schema(name, envelope)
        event_refs.append({"$ref": f"#/components/schemas/{name}"})
    _paths(spec, event_refs)
    _fhir_notification_paths(spec)
    _history_paths(spec)
    document = json.loads(json.dumps(spec.to_dict(), default=float))  # Decimal bounds become JSON numbers
    throttled = _problem("too many failed API keys from this client address or with this key prefix (Retry-After)")
    throttled["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    for operations in document["paths"].values():
        for operation in operations.values():
            if operation.get("security") == KEYED:
                operation["responses"].setdefault("429", throttled)
    document["info"]["description"] = "Shared care plans between team systems and FHIR R4 servers. " + (
        f"Event envelope fields: {', '.join(sorted(EventSchema().fields))}."
    )
    return document


def spec() -> dict[str, Any]:
    """Return the OpenAPI document, built once per app."""
    if "planbridge.openapi" not in current_app.extensions:
        current_app.extensions["planbridge.openapi"] = build_spec()
    return current_app.extensions["planbridge.openapi"]


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """Serve the OpenAPI document."""
    return Response(json.dumps(spec(), indent=1), mimetype="application/json")


def _auth_needed(path: str, operation: dict[str, Any]) -> str:
    """Name what an operation needs to be let in, as the README's table does."""
    if operation.get("security"):
        return "API key"
    if path.startswith("/webhooks"):
        return "signature"
    headers = {p.get("name", "").lower() for p in operation.get("parameters", []) if p.get("in") == "header"}
    if "x-planbridge-notify-secret" in headers:
        return "notify secret (X-Planbridge-Notify-Secret)"
    return "none"


@bp.get("/docs")
def docs() -> Response:
    """Serve a readable page of the API: operations, security and the event types."""
    document = spec()
    rows = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            needs = _auth_needed(path, op)
            codes = ", ".join(sorted(op.get("responses", {})))
            rows.append(
                f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}</td><td>{needs}</td><td>{codes}</td></tr>"
            )
    events = "".join(f"<li><code>{html.escape(t)}</code></li>" for t in sorted(EVENT_DATA_SCHEMAS))
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>planbridge API</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#111}}
table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.3rem .5rem;text-align:left}}
.scroll{{overflow-x:auto}}code{{overflow-wrap:anywhere}}</style></head>
<body><main><h1>planbridge API {html.escape(document["info"]["version"])}</h1>
<p>The machine-readable document is <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
<div class="scroll" role="region" aria-label="Operations" tabindex="0">
<table><thead><tr><th scope="col">Operation</th><th scope="col">What it does</th><th scope="col">Auth</th>
<th scope="col">Answers</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>
<h2>Team event types</h2><ul>{events}</ul></main></body></html>"""
    return Response(page, mimetype="text/html")
