"""The paths of the OpenAPI document: every route the API serves, with its parameters and answers."""

from __future__ import annotations

from apispec import APISpec

from service.api.openapi_paths_fhir import _fhir_notification_paths  # noqa: F401  (re-exported)
from service.api.openapi_paths_history import _history_paths  # noqa: F401  (re-exported)
from service.api.openapi_paths_subscriptions import _subscription_paths
from service.api.openapi_schemas import JSON_BODY, KEYED, _ok, _problem
from service.services.events import WEBHOOK_ID_MAX_LENGTH


def _paths(spec: APISpec, event_refs: list[dict[str, str]]) -> None:
    # Read here, not at import: the API's modules import this one's neighbours.
    from service.api.plans import ConflictQuerySchema, OutboxQuerySchema

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
                "nothing moved). Answers `{adopted: [{plan_id, outcome}], requests, notifications}`; a CarePlan "
                "that cannot be a plan is an item `outcome: invalid` with `careplan`, `reason` and `errors`, or, "
                "when no CarePlan found can be one, a 422 problem `not-adoptable` listing them in `refused`; "
                "`notifications` (`{subscribed, patients, subscriptions, detail}`) says which FHIR Subscriptions "
                "notify planbridge of the EHR's edits to the adopted plans, or why none do.",
                "security": KEYED,
                "requestBody": {"required": True, "content": {JSON_BODY: {"schema": "AdoptSchema"}}},
                "responses": {
                    "200": _ok("adopted: each plan id and its outcome (new, unchanged, updated, merged, conflicted)"),
                    "400": _problem("not exactly one of patient_mrn, careplan, url; or a URL off the FHIR server"),
                    "401": _problem("no valid API key"),
                    "404": _problem("no such patient, or no CarePlan found"),
                    "415": _problem("a body sent without Content-Type: application/json"),
                    "422": _problem("no CarePlan found can be a plan (e.g. a Group subject): `refused` says why"),
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
                "summary": "Queue a push (202) or pull now (200); no body, or no `direction`, is a push",
                "description": '`{"direction": "push"}` queues a push (202), `{"direction": "pull"}` pulls the plan '
                "now (200). The body is optional: a request without one, or without `direction` (`{}`), queues "
                "a push.",
                "security": KEYED,
                "parameters": [plan_id],
                "requestBody": {"required": False, "content": {JSON_BODY: {"schema": "SyncRequestSchema"}}},
                "responses": {
                    "200": _ok("pulled"),
                    "202": _ok("push queued"),
                    "400": _problem("a body that is not JSON, or a direction other than push or pull"),
                    **denied,
                    "415": _problem("a body sent without Content-Type: application/json"),
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
                    "400": _problem("not exactly one of take (ours or theirs) and value, or a body that is not JSON"),
                    **denied,
                    "409": _problem("already resolved"),
                    "415": _problem("a body sent without Content-Type: application/json"),
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
                "summary": "Queue a dead entry again; its attempts start again from 0",
                "security": KEYED,
                "parameters": [entry_id],
                "responses": {"200": _ok("queued again"), **denied, "422": _problem("not dead")},
            }
        },
    )
    _subscription_paths(spec, denied)
