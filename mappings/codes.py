"""Code systems, value sets and identifier systems used on the FHIR side."""

from __future__ import annotations

GOAL_PRIORITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-priority"
UCUM = "http://unitsofmeasure.org"

# https://hl7.org/fhir/R4/valueset-goal-status.html (required binding)
GOAL_LIFECYCLE = frozenset(
    {"proposed", "planned", "accepted", "active", "on-hold", "completed", "cancelled", "entered-in-error", "rejected"}
)
GOAL_PRIORITY = frozenset({"high-priority", "medium-priority", "low-priority"})

# Which FHIR resource type an internal proposer kind is.
PROPOSER_RESOURCE = {"patient": "Patient", "practitioner": "Practitioner", "related-person": "RelatedPerson"}
RESOURCE_PROPOSER = {v: k for k, v in PROPOSER_RESOURCE.items()}


def identifier_system(base: str, kind: str) -> str:
    """Return our identifier system for a kind of thing ("goal", "plan"), under the configured base URL."""
    return f"{base.rstrip('/')}/{kind}"


def goal_identifier_value(plan_id: str, goal_id: str) -> str:
    """Return the identifier value of a goal: goal ids are unique within their plan only."""
    return f"{plan_id}/{goal_id}"
