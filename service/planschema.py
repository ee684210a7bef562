"""The plan JSON format as a JSON Schema (Draft 2020-12), generated from the model's dataclasses.

The schema is walked out of the type hints the way `service.domain.codec` reads them, so the two
cannot disagree: keys are field names, `X | None` may be null or absent, fields without a default
are required, and unknown keys are refused. `shape_issues` checks a document against it without a
schema library (planbridge does not depend on one at run time); it knows only the keywords
`plan_schema()` writes. The committed copy is `fixtures/plan.schema.json` (`planbridge schema`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import types
import typing
from decimal import Decimal
from typing import Any

from service.domain import model
from service.domain.model import Agreement, Goal, Member, OutcomeRating, Plan, Removal, Step
from service.domain.rules import Issue
from service.domain.types import Quantity

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# The fields bound to one of the model's value tuples. Keep this explicit: a new binding is a decision.
ENUMS: dict[tuple[type, str], tuple[str, ...]] = {
    (Plan, "status"): model.PLAN_STATUSES,
    (Plan, "intent"): model.PLAN_INTENTS,
    (Plan, "goal_setting"): model.GOAL_SETTING,
    (Member, "kind"): model.MEMBER_KINDS,
    (Agreement, "status"): model.AGREEMENT_STATUSES,
    (Goal, "lifecycle_status"): model.GOAL_LIFECYCLE_STATUSES,
    (Step, "status"): model.STEP_STATUSES,
    (Removal, "how"): model.REMOVAL_KINDS,
    (Quantity, "comparator"): model.COMPARATORS,
    (OutcomeRating, "scale"): model.OUTCOME_SCALES,
    (OutcomeRating, "occasion"): model.OUTCOME_OCCASIONS,
}
# Maps whose keys are a closed set: each key a string property, no other key allowed.
KEYED_MAPS: dict[tuple[type, str], tuple[str, ...]] = {(Goal, "gas_levels"): model.GAS_LEVELS}
# Integers bound to a range (the widest: a score's range per scale is checked by `check_plan`).
INT_RANGES: dict[tuple[type, str], tuple[int, int]] = {(OutcomeRating, "score"): (-2, 10)}
# Objects that need at least one of some optional fields (an `anyOf` of `required`s).
AT_LEAST_ONE: dict[type, tuple[str, ...]] = {model.Patient: ("mrn", "fhir_reference")}
SCALARS: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", Decimal: "number", float: "number"}
EXTRA_DESCRIPTION = (
    "FHIR content the model does not name, kept as it came so it can be written back unchanged; "
    "planbridge never reads it."
)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "type" in schema:
        out = {**schema, "type": [schema["type"], "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"no JSON Schema for the union {tp!r}")
        return _nullable(_type_schema(inner[0], defs))
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": _type_schema(item, defs)}
    if origin is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # reserve the name first, so a recursive type would terminate
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if tp in SCALARS:
        return {"type": SCALARS[tp]}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _field_schema(cls: type, name: str, tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    allowed = ENUMS.get((cls, name))
    if (cls, name) in KEYED_MAPS:
        keys = KEYED_MAPS[(cls, name)]
        properties = {k: {"type": "string"} for k in keys}
        return {"type": "object", "properties": properties, "required": [], "additionalProperties": False}
    if (cls, name) in INT_RANGES:
        low, high = INT_RANGES[(cls, name)]
        return {**_type_schema(tp, defs), "minimum": low, "maximum": high}
    if allowed is None:
        schema = _type_schema(tp, defs)
        return {**schema, "description": EXTRA_DESCRIPTION} if typing.get_origin(tp) is dict else schema
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    schema = {**_type_schema(inner[0], defs), "enum": list(allowed)}
    return _nullable(schema) if type(None) in typing.get_args(tp) else schema


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    one_of = {"anyOf": [{"required": [name]} for name in AT_LEAST_ONE[cls]]} if cls in AT_LEAST_ONE else {}
    return {
        "title": cls.__name__,
        "description": inspect.cleandoc(cls.__doc__ or ""),
        "type": "object",
        "properties": {f.metadata.get("json", f.name): _field_schema(cls, f.name, hints[f.name], defs) for f in fields},
        "required": [
            f.metadata.get("json", f.name)
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ],
        "additionalProperties": False,
        **one_of,
    }


@functools.cache
def _cached_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    root = _object_schema(Plan, defs)
    return {"$schema": DRAFT, **root, "$defs": dict(sorted(defs.items()))}


def plan_schema() -> dict[str, Any]:
    """Return the JSON Schema of the plan format (a fresh copy: callers may change it)."""
    return copy.deepcopy(_cached_schema())


def json_type(value: Any) -> str:
    """The JSON Schema type name of a value as json.loads gives it ("boolean", "integer", "object"...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float | Decimal):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _is(value: Any, wanted: str) -> bool:
    found = json_type(value)
    return found == wanted or (wanted == "number" and found == "integer")


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _check(value: Any, schema: dict[str, Any], path: str, out: list[Issue]) -> None:
    if "$ref" in schema:
        schema = _cached_schema()["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        tried: list[list[Issue]] = []
        for branch in schema["anyOf"]:
            tried.append([])
            _check(value, branch, path, tried[-1])
            if not tried[-1]:
                break
        else:
            out += tried[0]
            return
        if "properties" not in schema:
            return
    allowed = schema.get("type")
    allowed = [allowed] if isinstance(allowed, str) else allowed or []
    if allowed and not any(_is(value, t) for t in allowed):
        out.append(Issue(path, f"expected {' or '.join(allowed)}, got {json_type(value)}", code="structure"))
        return
    if "minimum" in schema and isinstance(value, int) and not schema["minimum"] <= value <= schema["maximum"]:
        out.append(Issue(path, f"{value} is not between {schema['minimum']} and {schema['maximum']}", code="value"))
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(str(v) for v in schema["enum"] if v is not None)
        out.append(Issue(path, f"{value!r} is not one of {choices}", code="code-invalid"))
    if isinstance(value, dict) and "required" in schema and "properties" not in schema:  # an anyOf branch
        out += [Issue(_at(path, k), f"needs {k!r}", code="required") for k in schema["required"] if k not in value]
    if isinstance(value, dict) and "properties" in schema:
        properties = schema["properties"]
        what = schema.get("title", "this object")
        missing = [k for k in schema["required"] if k not in value]
        out += [Issue(_at(path, k), f"{what} needs {k!r}", code="required") for k in missing]
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], _at(path, key), out)
            elif schema.get("additionalProperties") is False:
                out.append(Issue(_at(path, key), f"{key!r} is not a field of {what}", code="structure"))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], _at(path, i), out)


def shape_issues(document: Any) -> list[Issue]:
    """Return where a JSON document departs from the plan schema (paths as in `check_plan`); [] when it fits."""
    out: list[Issue] = []
    _check(document, _cached_schema(), "", out)
    return out
