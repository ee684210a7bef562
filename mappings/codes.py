"""Code systems, extension URLs, identifier systems and the team-role table."""

from __future__ import annotations

from service.domain.errors import MappingError
from service.domain.terminology import (  # noqa: F401  (re-exported for the mappings)
    GOAL_ACHIEVEMENT_SYSTEM,
    GOAL_PRIORITY_SYSTEM,
    PLANBRIDGE_ROLE_SYSTEM,
    ROLES,
    SNOMED,
    UCUM,
)
from service.domain.types import Concept

GOAL_RELATIONSHIP_TYPE_SYSTEM = "http://hl7.org/fhir/goal-relationship-type"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"

# HL7 extensions (https://hl7.org/fhir/R4/extensibility-registry.html)
GOAL_ACCEPTANCE = "http://hl7.org/fhir/StructureDefinition/goal-acceptance"
GOAL_RELATIONSHIP = "http://hl7.org/fhir/StructureDefinition/goal-relationship"
PERTAINS_TO_GOAL = "http://hl7.org/fhir/StructureDefinition/resource-pertainsToGoal"
ACTIVITY_TITLE = "http://hl7.org/fhir/StructureDefinition/careplan-activity-title"

# planbridge's own extensions, for what no HL7 extension carries (documented in docs/mapping.md)
PLANBRIDGE_EXT = "http://planbridge.org/fhir/StructureDefinition"
EXT_WHAT_MATTERS = f"{PLANBRIDGE_EXT}/what-matters"
EXT_GOAL_SETTING = f"{PLANBRIDGE_EXT}/goal-setting"
EXT_REVIEW = f"{PLANBRIDGE_EXT}/plan-review"
EXT_BARRIER = f"{PLANBRIDGE_EXT}/goal-barrier"
EXT_GAS_LEVEL = f"{PLANBRIDGE_EXT}/goal-gas-level"  # on a Goal: what one GAS level (-2..+2) means for it
EXT_GAS_WEIGHT = f"{PLANBRIDGE_EXT}/goal-gas-weight"  # on a Goal: its weight in the GAS T-score
EXT_CONTINGENCY = f"{PLANBRIDGE_EXT}/goal-contingency"  # on a Goal: an "if ..., then ..." plan for a setback
EXT_OUTCOME_OCCASION = f"{PLANBRIDGE_EXT}/outcome-occasion"  # on a rating's Observation: baseline, review...

# planbridge's own CodeSystems (published in docs/mapping.md)
PLANBRIDGE_CS = "http://planbridge.org/fhir/CodeSystem"
OUTCOME_SCALE_SYSTEM = f"{PLANBRIDGE_CS}/outcome-scale"
OUTCOME_SCALE_DISPLAY = {"gbo": "Goal-Based Outcome rating (0-10)", "gas": "Goal Attainment Scaling level (-2..+2)"}

# Which FHIR resource type holds a member of each kind.
MEMBER_RESOURCE = {"patient": "Patient", "practitioner": "Practitioner", "related-person": "RelatedPerson"}
RESOURCE_MEMBER = {v: k for k, v in MEMBER_RESOURCE.items()}


def role_concept(role: str) -> Concept:
    """Return the concept for a role shorthand; an unknown shorthand is an error, never a guess."""
    try:
        return Concept(codings=[ROLES[role]])
    except KeyError:
        raise MappingError(f"unknown team role {role!r}", errors={"role": sorted(ROLES)}) from None


def identifier_system(base: str, kind: str) -> str:
    """Return our identifier system for a kind of thing ("goal", "plan", "careteam"...)."""
    return f"{base.rstrip('/')}/{kind}"


def scoped_value(plan_id: str, *ids: str) -> str:
    """Return the identifier value of something inside a plan: its ids are unique within the plan only."""
    return "/".join((plan_id, *ids))


def goal_identifier_value(plan_id: str, goal_id: str) -> str:
    """Return the identifier value of a goal."""
    return scoped_value(plan_id, goal_id)


def search_escape(text: str) -> str:
    """Escape FHIR search's special characters in a parameter value (R4 search §3.1.1.1.3 "escaping"):
    `\\`, `|`, `,` and `$` get a backslash, so an MRN like `12,34` is one value, not `12` OR `34`."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")


def identifier_token(system: str, value: str) -> str:
    """Return the token search value `system|value` for an identifier, each part escaped (not URL-encoded)."""
    return f"{search_escape(system)}|{search_escape(value)}"
