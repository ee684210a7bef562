"""Turn domain dataclasses into JSON-ready dicts and back, guided by their type hints.

This is the plan JSON format's single source: keys are the dataclass field names, dates are ISO
8601 strings, decimals are JSON numbers, and absent optional values are left out. A field's
metadata may rename its key (`{"json": "if"}`: a Python keyword as a field name) or leave it out
when empty (`{"omit_empty": True}`: an empty dict is not written).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

T = TypeVar("T")


_AS_IS = frozenset({str, int, float, bool, type(None), dict})


@functools.cache
def _field_names(cls: type) -> tuple[tuple[str, str, bool], ...] | None:
    """Return (field name, JSON key, omit when empty) of a dataclass's fields, None for any other class
    (looked up once per class)."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(
        (f.name, f.metadata.get("json", f.name), bool(f.metadata.get("omit_empty"))) for f in dataclasses.fields(cls)
    )


def to_dict(obj: Any) -> Any:
    """Return the JSON-ready form of a domain object (dataclass, list or scalar)."""
    cls = type(obj)
    if cls in _AS_IS:
        return obj
    names = _field_names(cls)
    if names is not None:
        out: dict[str, Any] = {}
        for name, key, omit_empty in names:
            value = getattr(obj, name)
            if value is None or value == [] or (omit_empty and not value):
                continue
            out[key] = value if type(value) in _AS_IS else to_dict(value)
        return out
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Decimal):
        return int(obj) if obj == obj.to_integral_value() and "E" not in str(obj) else float(obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    return obj


def from_dict(cls: type[T], data: Any) -> T:
    """Build a domain object of type `cls` from its JSON-ready form."""
    return _convert(cls, data)


def _convert(tp: Any, value: Any) -> Any:
    return None if value is None else _converter(tp)(value)


def _as_is(value: Any) -> Any:
    return value


@functools.cache
def _converter(tp: Any) -> Callable[[Any], Any]:
    """Return the function that builds a value of type `tp` (worked out once per type)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _converter(inner[0])
    if origin is list:
        (item,) = typing.get_args(tp)
        return lambda value: [_convert(item, v) for v in value]
    if dataclasses.is_dataclass(tp):
        return functools.partial(_build, tp)
    if tp is Decimal:
        return lambda value: Decimal(str(value))
    if tp is datetime:
        return lambda value: value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if tp is date:
        return lambda value: value if isinstance(value, date) else date.fromisoformat(value)
    return _as_is


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[str, Any]]:
    """Map each JSON key of a dataclass to (field name, type)."""
    hints = typing.get_type_hints(cls)
    return {f.metadata.get("json", f.name): (f.name, hints[f.name]) for f in dataclasses.fields(cls)}


def _build(cls: type, value: dict[str, Any]) -> Any:
    fields = _field_types(cls)
    return cls(**{fields[k][0]: _convert(fields[k][1], v) for k, v in value.items() if k in fields})
