"""The subscription paths of the OpenAPI document: team systems' subscriptions to plan changes and their deliveries."""

from __future__ import annotations

from typing import Any

from apispec import APISpec

from service.api.openapi_schemas import JSON_BODY, KEYED, _ok, _problem


def _subscription_paths(spec: APISpec, denied: dict[str, Any]) -> None:
    # Read here, not at import: the API's modules import this one's neighbours.
    from service.api.subscriptions import DeliveryQuerySchema

    row_id = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
    subscription_id = {"name": "subscription_id", "in": "path", "required": True, "schema": row_id}
    delivery_id = {"name": "delivery_id", "in": "path", "required": True, "schema": row_id}
    subscription = {
        "type": "object",
        "description": "id, url, event_types, status, disabled_reason, description, ordering (strict|best-effort), "
        "previous_secret_expires_at (until when deliveries are signed with the secret the latest rotation replaced "
        "as well: a time gone by, no more; null before any rotation, or after one without a grace period)",
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
                "parameters": [
                    {"in": "query", "name": "status", "schema": {"type": "string", "enum": ["active", "disabled"]}}
                ],
                "responses": {
                    "200": _ok("subscriptions", {"type": "array", "items": subscription}),
                    "400": _problem("a status other than active or disabled"),
                    **{code: answer for code, answer in denied.items() if code != "404"},  # a listing: no 404
                },
            },
            "post": {
                "summary": "Subscribe a URL to plan changes; the answer shows its signing secret once",
                "security": KEYED,
                "requestBody": {"required": True, "content": {JSON_BODY: {"schema": subscribe_body}}},
                "responses": {
                    "201": _ok("subscribed, with its whsec_ secret", subscription),
                    "400": _problem("invalid body or unknown event type"),
                    "401": denied["401"],
                    "415": _problem("a body sent without Content-Type: application/json"),
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
                "responses": {
                    "200": _ok("the subscription", subscription),
                    "400": _problem("bad ordering"),
                    **denied,
                    "415": _problem("a body sent without Content-Type: application/json"),
                },
            },
            "delete": {
                "summary": "Delete a subscription and its delivery log",
                "security": KEYED,
                "parameters": [subscription_id],
                "responses": {"204": _ok("deleted"), **denied},
            },
        },
    )
    rotate_body = {
        "type": "object",
        "properties": {
            "grace_seconds": {
                "type": "integer",
                "minimum": 0,
                "maximum": 7 * 24 * 3600,
                "default": 24 * 3600,
                "description": "how long the replaced secret still signs deliveries, beside the new one",
            }
        },
    }
    spec.path(
        "/subscriptions/{subscription_id}/rotate-secret",
        operations={
            "post": {
                "summary": "Give the subscription a new signing secret, shown once; until the grace period ends, "
                "deliveries carry two signatures (new and replaced secret) in webhook-signature",
                "security": KEYED,
                "parameters": [subscription_id],
                "requestBody": {"required": False, "content": {JSON_BODY: {"schema": rotate_body}}},
                "responses": {
                    "200": _ok("the subscription, with its new whsec_ secret", subscription),
                    "400": _problem("grace_seconds not an integer from 0 to 604800"),
                    **denied,
                    "415": _problem("a body sent without Content-Type: application/json"),
                },
            }
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
