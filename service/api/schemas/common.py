"""Schemas and helpers the event schemas share: ids, texts, identifiers, codings, patients, proposers, notes."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.api.schemas.fhirtypes import ID, SEARCHABLE, FhirDateTime, FhirString, fhir_code, fhir_uri
from service.domain.changes import (
    ProposerSpec,
)
from service.domain.model import (
    MEMBER_KINDS,
    Patient,
)
from service.domain.terminology import ROLES
from service.domain.types import Coding, Concept, Identifier, Note

# Every string an event carries reaches a FHIR element: each is checked as that element's type.
TEXT = FhirString(2000)  # words: descriptions, notes, reasons, what matters
SHORT_TEXT = FhirString(200)  # titles, names, schedules
URI = fhir_uri(500)  # code and identifier systems
CODE = fhir_code(200)
UNIT = fhir_code(64)  # a UCUM unit is also the Quantity's code


class IdentifierSchema(Schema):
    system = fields.String(required=True, validate=[*URI, SEARCHABLE])  # searched as system|value
    value = fields.String(required=True, validate=[SHORT_TEXT, SEARCHABLE])

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Identifier:
        return Identifier(**data)


class CodingSchema(Schema):
    system = fields.String(validate=URI)
    code = fields.String(validate=CODE)
    display = fields.String(validate=FhirString(500))

    @validates_schema
    def code_or_text(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("code") and not data.get("display"):
            raise ValidationError("a code or a display text is required", "code")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Coding:
        return Coding(**data)


class PatientSchema(Schema):
    mrn = fields.String(required=True, validate=[FhirString(64), SEARCHABLE])  # the Patient is found by it
    display_name = fields.String(validate=SHORT_TEXT)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Patient:
        return Patient(**data)


class ProposerSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(MEMBER_KINDS))
    member_id = fields.String(validate=ID)
    identifier = fields.Nested(IdentifierSchema)
    display = fields.String(validate=SHORT_TEXT)
    role = fields.String(validate=validate.OneOf(sorted(ROLES)))

    @validates_schema
    def identified(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind") != "patient" and "identifier" not in data and "display" not in data:
            raise ValidationError("a practitioner or related person needs an identifier or a display", "identifier")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ProposerSpec:
        return ProposerSpec(**data)


def coded_or_text(coding: Coding | None) -> Concept | None:
    """Return a concept from a coding: coded when it has a code, else the display as words."""
    if coding is None:
        return None
    return Concept(codings=[coding]) if coding.code else Concept(text=coding.display)


def iso_date(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def at_least_one(data: dict[str, Any], names: tuple[str, ...]) -> None:
    if not any(n in data for n in names):
        raise ValidationError(f"give at least one of {', '.join(names)}", "_schema")


class NoteSchema(Schema):
    text = fields.String(required=True, validate=TEXT)
    author = fields.String(validate=ID)
    time = FhirDateTime()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Note:
        return Note(data["text"], author_member=data.get("author"), time=iso_date(data.get("time")))
