"""Conditional references in a plan's Bundle (`Type?params`, https://hl7.org/fhir/R4/http.html#trules): found,
and resolved by the push as HAPI and Medplum resolve them on a write (service.sync.push `Pusher._find_one`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from mappings.reference_parse import parse_reference
from service.domain.errors import NotFound

# A conditional reference (https://hl7.org/fhir/R4/http.html#trules): `Type?params`, also `Type/?params` (HAPI).
_CONDITIONAL = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/?\?(?P<query>.*)", re.DOTALL)


def conditional_search(reference: str | None) -> tuple[str, list[tuple[str, str]]] | None:
    """Return (type, search parameters) of a conditional reference (`Patient?identifier=system|value`), None
    for any other: a literal, `urn:` or `#contained` reference (mappings.reference_parse), or none at all."""
    if not reference or parse_reference(reference) is not None:
        return None
    found = _CONDITIONAL.fullmatch(reference)
    return (found["type"], parse_qsl(found["query"], keep_blank_values=True)) if found else None


def conditional_references(element: Any) -> list[str]:
    """Return the conditional references (`conditional_search`) an element (a Bundle) holds, each once, in order."""
    found: dict[str, None] = {}
    _collect(element, found)
    return list(found)


def _collect(node: Any, found: dict[str, None]) -> None:
    # One walk adding to one dict: every push walks its whole Bundle, so no list is built per element, and only
    # a `reference` string holding a `?` (which every conditional reference has) is parsed.
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if key == "reference" and "?" in value and value not in found and conditional_search(value):
                    found[value] = None
            elif isinstance(value, (dict, list)):
                _collect(value, found)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, (dict, list)):
                _collect(value, found)


class ReferenceNotOnServer(NotFound):
    """A conditional reference of the plan other than its patient's (a team member's
    `Practitioner?identifier=system|value`, as an imported Bundle may hold) matches nothing on the server."""

    code = "reference-not-found"


@dataclass(frozen=True)
class Lookup:
    """`Pusher._prepare`'s answer for a Bundle with conditional references but the patient's (a team member's
    `Practitioner?identifier=system|value` an imported Bundle had): each is resolved as the patient's is
    (`Pusher._find_one`), one search each per push that sends something. Left to the server, HAPI would keep the
    Reference's `display` and Medplum put its own, and no match would refuse the Bundle quoting the identifier."""

    references: list[str]

    def resolve(self, find: Callable[[str], str]) -> dict[str, str]:
        return {reference: find(reference) for reference in self.references}
