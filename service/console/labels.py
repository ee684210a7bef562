"""Plain-language words for the FHIR codes the console shows (statuses, priorities), one mapping per kind.

Clinicians read the words; integrators still see the FHIR code beside them (`Label.code`, shown as
secondary text). A code the mapping does not know is shown as it is, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.domain.types import Concept

GOAL_STATUS = {
    "proposed": "Proposed, not yet agreed",
    "planned": "Planned",
    "accepted": "Agreed",
    "active": "Being worked on",
    "on-hold": "Paused",
    "completed": "Completed",
    "cancelled": "Stopped",
    "entered-in-error": "Recorded in error",
    "rejected": "Not taken up",
}
ACHIEVEMENT = {
    "in-progress": "In progress",
    "improving": "Improving",
    "worsening": "Getting worse",
    "no-change": "No change",
    "achieved": "Achieved",
    "sustaining": "Keeping it up",
    "not-achieved": "Not achieved",
    "no-progress": "No progress",
    "not-attainable": "Not attainable",
}
PRIORITY = {"high-priority": "High", "medium-priority": "Medium", "low-priority": "Low"}
STEP_STATUS = {
    "not-started": "Not started",
    "scheduled": "Scheduled",
    "in-progress": "Under way",
    "on-hold": "Paused",
    "completed": "Done",
    "cancelled": "Cancelled",
    "stopped": "Stopped",
    "unknown": "Not known",
    "entered-in-error": "Recorded in error",
}
PLAN_STATUS = {
    "draft": "Draft",
    "active": "Active",
    "on-hold": "Paused",
    "completed": "Completed",
    "revoked": "Withdrawn",
    "entered-in-error": "Recorded in error",
    "unknown": "Not known",
}
OCCASION = {"baseline": "Baseline", "session": "Session", "review": "Review", "end": "End of care"}
KINDS = {
    "goal_status": GOAL_STATUS,
    "achievement": ACHIEVEMENT,
    "priority": PRIORITY,
    "step_status": STEP_STATUS,
    "plan_status": PLAN_STATUS,
    "occasion": OCCASION,
}
# The code systems whose codes the mappings hold (a concept coded elsewhere is shown by its own words).
SYSTEMS = {
    "achievement": "http://terminology.hl7.org/CodeSystem/goal-achievement",
    "priority": "http://terminology.hl7.org/CodeSystem/goal-priority",
}


@dataclass(frozen=True)
class Label:
    """What the console shows for a code: the words, and the FHIR code behind them (None when there is none)."""

    text: str
    code: str | None = None

    @property
    def known(self) -> bool:
        """True when the words differ from the bare code (the code is then worth showing beside them)."""
        return self.code is not None and self.text != self.code


def label(kind: str, code: str | None, missing: str = "not recorded") -> Label:
    """Return the words for a code of this kind ("goal_status", "achievement", "priority", "step_status",
    "plan_status", "occasion"); an unknown code is its own words, no code is `missing`."""
    if not code:
        return Label(missing)
    return Label(KINDS[kind].get(code, code), code)


def concept_label(kind: str, concept: Concept | None, missing: str = "not recorded") -> Label:
    """Return the words for a coded concept (a goal's priority or achievement): the mapping's words for its
    FHIR code when it has one, else the concept's own text or display."""
    if concept is None:
        return Label(missing)
    system = SYSTEMS.get(kind)
    for coding in concept.codings:
        if coding.code and coding.code in KINDS[kind] and (coding.system in (None, system)):
            return Label(KINDS[kind][coding.code], coding.code)
    words = concept.text or next((c.display or c.code for c in concept.codings if c.display or c.code), None)
    return Label(words or missing)
