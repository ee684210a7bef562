"""Code systems and value-set tables the domain and the mappings share (plain data)."""

from __future__ import annotations

from service.domain.types import Coding

UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
GOAL_PRIORITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-priority"
GOAL_ACHIEVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-achievement"
PLANBRIDGE_ROLE_SYSTEM = "http://planbridge.org/fhir/CodeSystem/team-role"

# Team roles: the shorthand team systems send, and the code planbridge writes to CareTeam.participant.role.
ROLES: dict[str, Coding] = {
    "psychiatrist": Coding(SNOMED, "80584001", "Psychiatrist"),
    "general-practitioner": Coding(SNOMED, "62247001", "General practitioner"),
    "nurse": Coding(SNOMED, "106292003", "Professional nurse"),
    "dietitian": Coding(SNOMED, "159033005", "Dietitian"),
    "physiotherapist": Coding(SNOMED, "36682004", "Physiotherapist"),
    "occupational-therapist": Coding(SNOMED, "80546007", "Occupational therapist"),
    "psychologist": Coding(SNOMED, "59944000", "Psychologist"),
    "social-worker": Coding(SNOMED, "106328005", "Social worker"),
    "peer-specialist": Coding(PLANBRIDGE_ROLE_SYSTEM, "peer-specialist", "Peer support specialist"),
    "patient": Coding(SNOMED, "116154003", "Patient"),
    "family-caregiver": Coding(SNOMED, "133932002", "Caregiver"),
}
