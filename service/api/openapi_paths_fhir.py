"""The FHIR notification paths of the OpenAPI document: where the FHIR server tells planbridge of its changes."""

from __future__ import annotations

from apispec import APISpec

from service.api.openapi_schemas import _notification_schemas


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
