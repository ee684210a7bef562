"""Schemas for events on the plan's team: member.joined and member.left."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.api.schemas.common import (
    ID,
    SHORT_TEXT,
    IdentifierSchema,
)
from service.domain.changes import (
    JoinMember,
    LeaveMember,
)
from service.domain.model import (
    MEMBER_KINDS,
)
from service.domain.terminology import ROLES


class MemberJoinedDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    member_id = fields.String(required=True, validate=ID)
    kind = fields.String(required=True, validate=validate.OneOf(MEMBER_KINDS))
    role = fields.String(validate=validate.OneOf(sorted(ROLES)))
    name = fields.String(validate=SHORT_TEXT)
    identifier = fields.Nested(IdentifierSchema)

    @validates_schema
    def identified(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind") != "patient" and "identifier" not in data and "name" not in data:
            raise ValidationError("a practitioner or related person needs an identifier or a name", "identifier")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> JoinMember:
        return JoinMember(**data)


class MemberLeftDataSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    member_id = fields.String(required=True, validate=ID)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> LeaveMember:
        return LeaveMember(**data)
