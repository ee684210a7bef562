"""Value types the plan is built from. They mirror FHIR R4 datatypes closely enough that nothing
is lost between the two (https://hl7.org/fhir/R4/datatypes.html).

Dates and instants are kept as the ISO 8601 strings they arrived as, so FHIR's partial dates
("2027", "2027-03") and time zones survive untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class Identifier:
    """A business identifier: a namespace URI and a value within it."""

    system: str
    value: str


@dataclass(frozen=True)
class Coding:
    """One code from a code system."""

    system: str | None = None
    code: str | None = None
    display: str | None = None
    version: str | None = None
    user_selected: bool | None = None


@dataclass(frozen=True)
class Concept:
    """A concept: codes from one or more systems and/or the words a person used."""

    codings: list[Coding] = field(default_factory=list)
    text: str | None = None

    def code_in(self, system: str) -> str | None:
        """Return the code this concept has in `system`, or None."""
        return next((c.code for c in self.codings if c.system == system and c.code), None)


@dataclass(frozen=True)
class Quantity:
    """A measured amount with a UCUM unit (also used for durations)."""

    value: Decimal | None = None
    comparator: str | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class Range:
    """A low and/or high bound."""

    low: Quantity | None = None
    high: Quantity | None = None


@dataclass(frozen=True)
class Ratio:
    """A numerator over a denominator."""

    numerator: Quantity | None = None
    denominator: Quantity | None = None


@dataclass(frozen=True)
class Ref:
    """A reference to something outside the plan (a Condition, an Observation...)."""

    reference: str | None = None
    identifier: Identifier | None = None
    display: str | None = None
    type: str | None = None


@dataclass
class Note:
    """A note: what was said, by which team member (or a named author), and when."""

    text: str
    author_member: str | None = None
    author_name: str | None = None
    time: str | None = None
