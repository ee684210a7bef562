"""The paths of the OpenAPI document: every route the API serves, with its parameters and answers."""

from __future__ import annotations

from apispec import APISpec

from service.api.openapi_schemas import JSON_BODY, KEYED, _notification_schemas, _ok, _problem
from service.services.events import WEBHOOK_ID_MAX_LENGTH


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
        "/plans/adopt",
        operations={
            "post": {
                "summary": "Adopt EHR-authored CarePlans (a patient's, or one by reference or URL) as shared plans",
                "description": "Give exactly one of patient_mrn, careplan (`CarePlan/123` or `123`) or url "
                "(`[base]/CarePlan/123` on the configured FHIR server). Each CarePlan becomes the plan "
                "`careplan-<id>`, tracked by resource id; adopting again re-reads it (`unchanged` when "
                "nothing moved). Answers `{adopted: [{plan_id, outcome}], requests, notifications}`; "
                "`notifications` (`{subscribed, patients, subscriptions, detail}`) says which FHIR Subscriptions "
                "notify planbridge of the EHR's edits to the adopted plans, or why none do.",
                "security": KEYED,
                "requestBody": {"required": True, "content": {JSON_BODY: {"schema": "AdoptSchema"}}},
                "responses": {
                    "200": _ok("adopted: each plan id and its outcome (new, unchanged, updated, merged, conflicted)"),
                    "400": _problem("not exactly one of patient_mrn, careplan, url; or a URL off the FHIR server"),
                    "401": _problem("no valid API key"),
                    "404": _problem("no such patient, or no CarePlan found"),
                    "502": _problem("the FHIR server failed"),
                },
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
    rating = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "scale": {"enum": ["gbo", "gas"]},
            "score": {"type": "integer"},
            "occasion": {"enum": ["baseline", "session", "review", "end"]},
            "rated_by": {"type": "string"},
            "at": {"type": "string"},
            "note": {"type": "string"},
        },
    }
    outcomes = {
        "type": "object",
        "properties": {
            "plan_id": {"type": "string"},
            "goals": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "goal_id": {"type": "string"},
                        "scale": {"enum": ["gbo", "gas"]},
                        "baseline": {"type": "integer"},
                        "latest": {"type": "integer"},
                        "change": {"type": ["integer", "null"]},
                        "reliable_change": {"type": ["boolean", "null"]},
                        "ratings": {"type": "array", "items": rating},
                    },
                },
            },
            "gas": {
                "type": ["object", "null"],
                "properties": {
                    "t_score": {"type": ["number", "null"]},
                    "baseline_t_score": {"type": ["number", "null"]},
                    "goals": {"type": "integer"},
                    "weights": {"type": "object", "additionalProperties": {"type": "number"}},
                    "rho": {"type": "number"},
                    "source": {"type": "string"},
                },
            },
            "reliable_change": {
                "type": "object",
                "properties": {"gbo": {"type": "number"}, "source": {"type": "string"}},
            },
        },
    }
    spec.path(
        "/plans/{plan_id}/outcomes",
        operations={
            "get": {
                "summary": "Outcome ratings per goal and scale (baseline, latest, change) and the GAS T-score",
                "security": KEYED,
                "parameters": [plan_id],
                "responses": {"200": _ok("the plan's outcomes", outcomes), **denied},
            }
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
