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

from service.api.schemas import EVENT_DATA_SCHEMAS, EventSchema
from service.planschema import plan_schema
from service.services.events import WEBHOOK_ID_MAX_LENGTH

bp = Blueprint("openapi", __name__)

PROBLEM = {"$ref": "#/components/schemas/Problem"}
JSON_BODY = "application/json"
KEYED = [{"bearer": []}, {"apiKey": []}]


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": PROBLEM}}}


def _ok(description: str, schema: dict[str, Any] | None = None, media: str = JSON_BODY) -> dict[str, Any]:
    return {"description": description, **({"content": {media: {"schema": schema}}} if schema else {})}


def _plan_components(spec: APISpec) -> None:
    document = json.loads(json.dumps(plan_schema()).replace("#/$defs/", "#/components/schemas/"))
    for name, schema in document.pop("$defs", {}).items():
        spec.components.schema(name, schema)
    document.pop("$schema", None)
    spec.components.schema("Plan", document)


def _paths(spec: APISpec, event_refs: list[dict[str, str]]) -> None:
    # Read here, not at import: the API's modules import this one's neighbours.
    from service.api.plans import ConflictQuerySchema, OutboxQuerySchema
    from service.api.subscriptions import DeliveryQuerySchema

    plan_id = {"name": "plan_id", "in": "path", "required": True, "schema": {"type": "string"}}
    entry_id = {"name": "entry_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    conflict_id = {"name": "conflict_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    denied = {"401": _problem("no valid API key"), "404": _problem("no such plan / entry")}
    webhook_headers = [
        {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
        for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
    ]
    webhook_headers[0]["schema"] = {"type": "string", "minLength": 1, "maxLength": WEBHOOK_ID_MAX_LENGTH}
    spec.path(
        "/webhooks/team",
        operations={
            "post": {
                "summary": "A signed team event (Standard Webhooks); 202 once the change is durable",
                "parameters": webhook_headers,
                "requestBody": {"required": True, "content": {JSON_BODY: {"schema": {"oneOf": event_refs}}}},
                "responses": {
                    "202": _ok("accepted", {"$ref": "#/components/schemas/Accepted"}),
                    "400": _problem("malformed body, or a webhook-id over 256 characters"),
                    "401": _problem("missing or bad signature"),
                    "404": _problem("unknown plan or goal"),
                    "409": _problem("conflicts with what is recorded"),
                    "413": _problem("body too large"),
                    "415": _problem("not application/json"),
                    "422": _problem("the plan's state does not allow it"),
                },
            }
        },
    )
    spec.path("/healthz", operations={"get": {"summary": "Alive", "responses": {"200": _ok("alive")}}})
    spec.path(
        "/readyz",
        operations={
            "get": {
                "summary": "Database and FHIR server reachable",
                "responses": {"200": _ok("ready"), "503": _ok("not ready")},
            }
        },
    )
    spec.path(
        "/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": _ok("metrics", {"type": "string"}, "text/plain")},
            }
        },
    )
    spec.path(
        "/plans/{plan_id}",
        operations={
            "get": {
                "summary": "The shared plan",
                "security": KEYED,
                "parameters": [plan_id],
                "responses": {"200": _ok("the plan", {"$ref": "#/components/schemas/Plan"}), **denied},
            }
        },
    )
    spec.path(
        "/plans/{plan_id}/fhir",
        operations={
            "get": {
                "summary": "The plan as a FHIR transaction Bundle",
                "security": KEYED,
                "parameters": [plan_id],
                "responses": {"200": _ok("Bundle", {"type": "object"}, "application/fhir+json"), **denied},
            }
        },
    )
    spec.path(
        "/plans/{plan_id}/sync",
        operations={
            "get": {
                "summary": "Sync state, FHIR ids and versions, last error, open conflicts",
                "security": KEYED,
                "parameters": [plan_id],
                "responses": {"200": _ok("status", {"type": "object"}), **denied},
            },
            "post": {
                "summary": "Queue a push (202) or pull now (200)",
                "security": KEYED,
                "parameters": [plan_id],
                "requestBody": {"content": {JSON_BODY: {"schema": "SyncRequestSchema"}}},
                "responses": {
                    "200": _ok("pulled"),
                    "202": _ok("push queued"),
                    **denied,
                    "502": _problem("the FHIR server failed"),
                },
            },
        },
    )
    spec.path(
        "/conflicts",
        operations={
            "get": {
                "summary": "Conflicts, oldest first, a page at a time (Link: rel=next for the next page)",
                "security": KEYED,
                "parameters": [{"in": "query", "schema": ConflictQuerySchema}],
                "responses": {
                    "200": _ok("conflicts", {"type": "array", "items": {"type": "object"}}),
                    "400": _problem("a bad filter, limit or position"),
                    "401": denied["401"],
                },
            }
        },
    )
    spec.path(
        "/conflicts/{conflict_id}/resolve",
        operations={
            "post": {
                "summary": "Take ours, theirs or a value",
                "security": KEYED,
                "parameters": [conflict_id],
                "requestBody": {"required": True, "content": {JSON_BODY: {"schema": "ResolveSchema"}}},
                "responses": {
                    "200": _ok("resolved"),
                    **denied,
                    "409": _problem("already resolved"),
                    "422": _problem("the value breaks a rule"),
                },
            }
        },
    )
    spec.path(
        "/outbox",
        operations={
            "get": {
                "summary": "Outbox entries, oldest first, a page at a time (Link: rel=next for the next page)",
                "security": KEYED,
                "parameters": [{"in": "query", "schema": OutboxQuerySchema}],
                "responses": {
                    "200": _ok("entries", {"type": "array", "items": {"type": "object"}}),
                    "400": _problem("a bad filter, limit or position"),
                    "401": denied["401"],
                },
            }
        },
    )
    spec.path(
        "/outbox/{entry_id}/replay",
        operations={
            "post": {
                "summary": "Queue a dead entry again",
                "security": KEYED,
                "parameters": [entry_id],
                "responses": {"200": _ok("queued again"), **denied, "422": _problem("not dead")},
            }
        },
    )
    row_id = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
    subscription_id = {"name": "subscription_id", "in": "path", "required": True, "schema": row_id}
    delivery_id = {"name": "delivery_id", "in": "path", "required": True, "schema": row_id}
    subscription = {
        "type": "object",
        "description": "id, url, event_types, status, disabled_reason, description, ordering (strict|best-effort)",
    }
    ordering = {"type": "string", "enum": ["best-effort", "strict"]}
    subscribe_body = {
        "type": "object",
        "required": ["url", "event_types"],
        "properties": {
            "url": {"type": "string", "format": "uri", "maxLength": 2048},
            "event_types": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "description": {"type": ["string", "null"], "maxLength": 512},
            "ordering": {**ordering, "default": "best-effort"},
        },
    }
    spec.path(
        "/subscriptions",
        operations={
            "get": {
                "summary": "Subscriptions of team systems to plan changes (?status=active|disabled)",
                "security": KEYED,
                "responses": {"200": _ok("subscriptions", {"type": "array", "items": subscription}), **denied},
            },
            "post": {
                "summary": "Subscribe a URL to plan changes; the answer shows its signing secret once",
                "security": KEYED,
                "requestBody": {"required": True, "content": {JSON_BODY: {"schema": subscribe_body}}},
                "responses": {
                    "201": _ok("subscribed, with its whsec_ secret", subscription),
                    "400": _problem("invalid body or unknown event type"),
                    "401": denied["401"],
                    "422": _problem("the URL is refused (not http(s), or not a public address)"),
                },
            },
        },
    )
    spec.path(
        "/subscriptions/{subscription_id}",
        operations={
            "get": {
                "summary": "One subscription",
                "security": KEYED,
                "parameters": [subscription_id],
                "responses": {"200": _ok("the subscription", subscription), **denied},
            },
            "patch": {
                "summary": "Change a subscription's ordering: strict (a dead delivery holds back its plan's later "
                "ones until replayed or skipped) or best-effort",
                "security": KEYED,
                "parameters": [subscription_id],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON_BODY: {
                            "schema": {"type": "object", "required": ["ordering"], "properties": {"ordering": ordering}}
                        }
                    },
                },
                "responses": {"200": _ok("the subscription", subscription), "400": _problem("bad ordering"), **denied},
            },
            "delete": {
                "summary": "Delete a subscription and its delivery log",
                "security": KEYED,
                "parameters": [subscription_id],
                "responses": {"204": _ok("deleted"), **denied},
            },
        },
    )
    for action, summary in (("enable", "Enable again; held deliveries become due"), ("disable", "Disable")):
        spec.path(
            f"/subscriptions/{{subscription_id}}/{action}",
            operations={
                "post": {
                    "summary": summary,
                    "security": KEYED,
                    "parameters": [subscription_id],
                    "responses": {"200": _ok("the subscription", subscription), **denied},
                }
            },
        )
    spec.path(
        "/subscriptions/{subscription_id}/deliveries",
        operations={
            "get": {
                "summary": "The delivery log, oldest first, a page at a time (Link: rel=next for the next page)",
                "security": KEYED,
                "parameters": [subscription_id, {"in": "query", "schema": DeliveryQuerySchema}],
                "responses": {
                    "200": _ok("deliveries", {"type": "array", "items": {"type": "object"}}),
                    "400": _problem("bad filter"),
                    **denied,
                },
            }
        },
    )
    spec.path(
        "/deliveries/{delivery_id}/replay",
        operations={
            "post": {
                "summary": "Queue a dead or failed delivery again",
                "security": KEYED,
                "parameters": [delivery_id],
                "responses": {"200": _ok("queued again"), **denied, "422": _problem("not dead or failed")},
            }
        },
    )
    spec.path(
        "/deliveries/{delivery_id}/skip",
        operations={
            "post": {
                "summary": "Give up on a dead or failed delivery (under strict ordering, its plan's later ones go on)",
                "security": KEYED,
                "parameters": [delivery_id],
                "responses": {"200": _ok("skipped"), **denied, "422": _problem("not dead or failed")},
            }
        },
    )


def _notification_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The shapes planbridge reads from the FHIR server: a resource (its id, version and identifiers) and a
    Subscriptions Backport `history` Bundle (R4 Parameters or R4B/R5 SubscriptionStatus first)."""
    text = {"type": "string"}
    reference = {"type": "object", "properties": {"reference": text}}
    count = {"type": "string", "pattern": "^[0-9]{1,19}$"}  # ASCII digits, up to 2^63-1
    resource = {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"enum": ["Goal", "CarePlan", "CareTeam", "Observation"]},
            "id": text,
            "meta": {"type": "object", "properties": {"versionId": text}},
            "identifier": {"type": "array", "items": {"type": "object", "properties": {"system": text, "value": text}}},
        },
    }
    part = {
        "type": "object",
        "properties": {"name": {"enum": ["event-number", "focus"]}, "valueString": count, "valueReference": reference},
    }
    names = ["subscription", "topic", "type", "events-since-subscription-start", "notification-event"]
    parameter = {
        "type": "object",
        "properties": {
            "name": {"enum": names},
            "valueString": text,
            "valueCode": {"enum": ["handshake", "heartbeat", "event-notification", "query-status"]},
            "valueReference": reference,
            "part": {"type": "array", "items": part},
        },
    }
    parameters = {
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"const": "Parameters"}, "parameter": {"type": "array", "items": parameter}},
    }
    status = {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"const": "SubscriptionStatus"},
            "type": {"enum": ["handshake", "heartbeat", "event-notification"]},
            "subscription": reference,
            "eventsSinceSubscriptionStart": count,
            "notificationEvent": {
                "type": "array",
                "items": {"type": "object", "properties": {"eventNumber": count, "focus": reference}},
            },
        },
    }
    entry = {"type": "object", "properties": {"resource": {"anyOf": [parameters, status, resource]}}}
    bundle = {
        "type": "object",
        "required": ["resourceType", "type", "entry"],
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"const": "history"},
            "entry": {"type": "array", "items": entry},
        },
    }
    return resource, bundle


def _fhir_notification_paths(spec: APISpec) -> None:
    outcome = {"description": "OperationOutcome", "content": {"application/fhir+json": {"schema": {"type": "object"}}}}
    secret = [{"name": "X-Planbridge-Notify-Secret", "in": "header", "required": True, "schema": {"type": "string"}}]
    answers = {"200": outcome, "400": outcome, "401": outcome}
    resource, bundle = _notification_schemas()
    spec.path(
        "/fhir-notifications",
        operations={
            "post": {
                "summary": "From the FHIR server: an empty rest-hook ping, or a Backport notification Bundle",
                "parameters": secret,
                "responses": answers,
                "requestBody": {"content": {"application/fhir+json": {"schema": bundle}}},
            }
        },
    )
    spec.path(
        "/fhir-notifications/{resource_type}/{resource_id}",
        operations={
            "put": {
                "summary": "From the FHIR server: a rest-hook notification carrying the changed resource",
                "parameters": [
                    *secret,
                    {
                        "name": "resource_type",
                        "in": "path",
                        "required": True,
                        "schema": resource["properties"]["resourceType"],
                    },
                    {"name": "resource_id", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": answers,
                "requestBody": {"content": {"application/fhir+json": {"schema": resource}}},
            }
        },
    )


def _schema_name(schema: Any) -> str:
    """Name nested marshmallow schemas apart from the plan's own components (Event*)."""
    cls = schema if isinstance(schema, type) else type(schema)
    return "Event" + cls.__name__.removesuffix("Schema")


def build_spec() -> dict[str, Any]:
    """Return the OpenAPI document."""
    from service.api.plans import ResolveSchema, SyncRequestSchema

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
