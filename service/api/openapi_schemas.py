"""Pieces of the OpenAPI document: response objects, and component schemas derived from the plan's JSON
Schema, the marshmallow schemas and the FHIR notifications planbridge reads."""

from __future__ import annotations

import json
from typing import Any

from apispec import APISpec

from service.planschema import plan_schema

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


def _schema_name(schema: Any) -> str:
    """Name nested marshmallow schemas apart from the plan's own components (Event*)."""
    cls = schema if isinstance(schema, type) else type(schema)
    return "Event" + cls.__name__.removesuffix("Schema")
