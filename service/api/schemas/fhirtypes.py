"""Validators that keep event fields to what their FHIR R4 element can carry, so nothing is accepted
that the push would have to send and the server refuse (https://hl7.org/fhir/R4/datatypes.html).

Each subclasses marshmallow's own Length or Regexp, so the OpenAPI document still shows its limits.
Regexes are kept in the ECMA-262 form (`^...$`) for the document, and applied with `fullmatch`:
`$` alone also matches before a final newline, which let `"plan-nl\\n"` through.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, ClassVar

from marshmallow import ValidationError, fields, validate

from mappings import fhirtext
from service.planschema import json_type

MAX_ZONE = dt.timedelta(hours=14)  # FHIR's dateTime zones run from -14:00 to +14:00, in whole minutes


class FhirString(validate.Length):
    """A FHIR `string` of 1 to `max_length` characters: no control character but tab, CR and LF, and
    more than whitespace."""

    def __init__(self, max_length: int) -> None:
        super().__init__(min=1, max=max_length)

    def __call__(self, value: Any) -> Any:
        value = super().__call__(value)
        problem = fhirtext.string_problem(value)
        if problem is not None:
            raise ValidationError(f"not a valid FHIR string: {problem}")
        return value


class FullMatch(validate.Regexp):
    """A regex the whole value matches (shown as `^pattern$` in the OpenAPI document)."""

    def __init__(self, pattern: str, error: str) -> None:
        super().__init__(f"^{pattern}$", error=error)

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


ID = FullMatch(fhirtext.ID, "must be 1-64 letters, digits, '-' or '.'")


def fhir_code(max_length: int) -> list[validate.Validator]:
    """A FHIR `code` of at most `max_length` characters: no leading, trailing or doubled whitespace."""
    return [
        validate.Length(min=1, max=max_length),
        FullMatch(fhirtext.CODE, "must be a FHIR code: no whitespace but single spaces inside"),
    ]


def fhir_uri(max_length: int) -> list[validate.Validator]:
    """A FHIR `uri` of at most `max_length` characters: no whitespace, no control characters."""
    return [
        validate.Length(min=1, max=max_length),
        FullMatch(fhirtext.URI, "must be a FHIR uri: no whitespace or control characters"),
    ]


class Searchable(validate.Validator):
    """A value planbridge finds again with a FHIR token search (`identifier=system|value`): no `|`.

    FHIR escapes a `|` inside a token as `\\|`, but Medplum (fhir-server/, and its hosted server) splits
    the token at every `|`, so a Patient or Practitioner whose MRN or identifier holds one is never
    found: each push would create it again (a duplicate per push) instead of finding the one it made.
    """

    error = "must not contain '|': a FHIR token search (system|value) cannot find it on the server"

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str) and "|" in value:
            raise ValidationError(self.error)
        return value


SEARCHABLE = Searchable()


class _JsonNumber:
    """Mixin: the value is a JSON number, never digits in a string ("12", "١٢") and never a boolean."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "not_a_number": "Not a valid number: give a JSON number, not {given}."
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise self.make_error("not_a_number", given=_json_kind(value))  # type: ignore[attr-defined]
        return super()._deserialize(value, attr, data, **kwargs)  # type: ignore[misc]


def _json_kind(value: Any) -> str:
    """Name the JSON type of a value that is not a number, as an error message says it ("a boolean")."""
    return _KINDS.get(json_type(value), "that")


_KINDS = {"boolean": "a boolean", "string": "a string", "object": "an object", "array": "an array", "null": "null"}


class JsonDecimal(_JsonNumber, fields.Decimal):
    """A decimal given as a JSON number."""


class JsonFloat(_JsonNumber, fields.Float):
    """A float given as a JSON number."""


class FhirDateTime(fields.AwareDateTime):
    """An ISO 8601 instant with a zone FHIR can write: -14:00 to +14:00, in whole minutes."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        offset = parsed.utcoffset()
        if offset is not None and (abs(offset) > MAX_ZONE or offset % dt.timedelta(minutes=1)):
            raise ValidationError("the zone must be whole minutes between -14:00 and +14:00")
        return parsed


__all__ = [
    "ID",
    "SEARCHABLE",
    "FhirDateTime",
    "FhirString",
    "FullMatch",
    "JsonDecimal",
    "JsonFloat",
    "Searchable",
    "fhir_code",
    "fhir_uri",
]
