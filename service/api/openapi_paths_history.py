"""The history path of the OpenAPI document: a plan's accepted changes, a page at a time."""

from __future__ import annotations

from apispec import APISpec

from service.api.openapi_schemas import KEYED, _ok, _problem


def _history_paths(spec: APISpec) -> None:
    """GET /plans/{plan_id}/history (service.api.history): a plan's accepted changes, a page at a time."""
    from service.api.history import HistoryQuerySchema

    team = {
        "type": ["object", "null"],
        "properties": {
            "sender": {"type": ["string", "null"]},
            "event_id": {"type": ["string", "null"]},
            "members": {"type": "array", "items": {"type": "string"}},
        },
    }
    ehr = {
        "type": ["object", "null"],
        "properties": {
            "resource_type": {"type": ["string", "null"]},
            "resource_id": {"type": ["string", "null"]},
            "resource_version": {"type": ["string", "null"]},
            "outcome": {"type": ["string", "null"]},
        },
    }
    entry = {
        "type": "object",
        "required": ["sequence", "at", "plan_version", "source", "event_type", "paths", "paths_total"],
        "properties": {
            "sequence": {"type": "integer", "minimum": 1},
            "at": {"type": "string", "format": "date-time"},
            "plan_version": {"type": "integer"},
            "source": {"enum": ["team", "ehr"]},
            "event_type": {"type": "string"},
            "paths": {"type": "array", "items": {"type": "string"}, "maxItems": 50},
            "paths_total": {"type": "integer"},
            "team": team,
            "ehr": ehr,
        },
    }
    spec.path(
        "/plans/{plan_id}/history",
        operations={
            "get": {
                "summary": "Every accepted change of the plan, oldest first, a page at a time (Link: rel=next)",
                "description": "From the team (sender, event type and id, member ids named) or from the EHR "
                "(resource, version, outcome), with the plan paths each changed. `?after=<sequence>` and "
                "`?limit=` (1-1000, default 100). Ids, types and paths only: no value of the plan.",
                "security": KEYED,
                "parameters": [
                    {"name": "plan_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"in": "query", "schema": HistoryQuerySchema},
                ],
                "responses": {
                    "200": _ok("the changes", {"type": "array", "items": entry}),
                    "400": _problem("a limit or position out of range"),
                    "401": _problem("no valid API key"),
                    "404": _problem("no such plan"),
                },
            }
        },
    )
