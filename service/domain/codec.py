"""Turn domain dataclasses into JSON-ready dicts and back, guided by their type hints.

This is the plan JSON format's single source: keys are the dataclass field names, dates are ISO
8601 strings, decimals are JSON numbers, and absent optional values are left out.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """Return the JSON-ready form of a domain object (dataclass, list or scalar)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None or value == []:
                continue
            out[f.name] = to_dict(value)
        return out
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Decimal):
        return int(obj) if obj == obj.to_integral_value() and "E" not in str(obj) else float(obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    return obj


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: Any) -> T:
    """Build a domain object of type `cls` from its JSON-ready form."""
    return _convert(cls, data)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(item, v) for v in value]
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        return tp(**{k: _convert(hints[k], v) for k, v in value.items() if k in names})
    if tp is Decimal:
        return Decimal(str(value))
    if tp is datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if tp is date:
        return value if isinstance(value, date) else date.fromisoformat(value)
    return value
