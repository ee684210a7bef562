"""Turn domain dataclasses into JSON-ready dicts and back, guided by their type hints.

This is the plan JSON format's single source: keys are the dataclass field names, dates are ISO
8601 strings, decimals are JSON numbers, and absent optional values are left out. A field's
metadata may rename its key (`{"json": "if"}`: a Python keyword as a field name) or leave it out
when empty (`{"omit_empty": True}`: an empty dict is not written).

Both directions are compiled once per dataclass (storing and reading a plan runs them on every event):
`to_dict` runs a function generated from the class's fields, `from_dict` a table of each key's field
name and converter, each giving exactly what walking the fields one by one would.
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
_ToDict = Callable[[Any], Any]


@functools.cache
def _field_names(cls: type) -> tuple[tuple[str, str, bool], ...] | None:
    """Return (field name, JSON key, omit when empty) of a dataclass's fields, None for any other class
    (looked up once per class)."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(
        (f.name, f.metadata.get("json", f.name), bool(f.metadata.get("omit_empty"))) for f in dataclasses.fields(cls)
    )


_COMPILED: dict[type, _ToDict] = {}


def _compile_to_dict(cls: type, names: tuple[tuple[str, str, bool], ...]) -> _ToDict:
    """Generate the to_dict of one dataclass: each field read once, its value kept as-is (str, int, float,
    bool, dict), a list's items each converted, anything else converted by to_dict; None, an empty list
    and (omit_empty) an empty value left out, as the loop over the fields does."""
    lines = ["def to_dict_of(obj):", "    out = {}"]
    for name, key, omit_empty in names:
        lines += [f"    v = obj.{name}", "    if v is not None:", "        t = type(v)"]
        guard = " and v" if omit_empty else ""
        lines += [
            "        if t is str or t is int or t is dict or t is bool or t is float:",
            f"            if True{guard}:",
            f"                out[{key!r}] = v",
            "        elif t is list:",
            "            if v:",
            f"                out[{key!r}] = [x if type(x) in _AS_IS else to_dict(x) for x in v]",
            f"        elif v != []{guard}:",
            f"            out[{key!r}] = to_dict(v)",
        ]
    lines.append("    return out")
    namespace: dict[str, Any] = {"_AS_IS": _AS_IS, "to_dict": to_dict}
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from the dataclass's own field names
    return typing.cast(_ToDict, namespace["to_dict_of"])


def to_dict(obj: Any) -> Any:
    """Return the JSON-ready form of a domain object (dataclass, list or scalar)."""
    cls = type(obj)
    compiled = _COMPILED.get(cls)
    if compiled is not None:
        return compiled(obj)
    if cls in _AS_IS:
        return obj
    names = _field_names(cls)
    if names is not None:
        compiled = _COMPILED[cls] = _compile_to_dict(cls, names)
        return compiled(obj)
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
        convert = _converter(item)
        return lambda value: [None if v is None else convert(v) for v in value]
    if dataclasses.is_dataclass(tp):
        return _builder(tp)
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


def _builder(cls: type) -> Callable[[dict[str, Any]], Any]:
    """Return the function building a `cls` from its JSON form: each known key's value converted to its
    field's type (None stays None), unknown keys ignored. Its table of keys is made on the first call, so
    a dataclass that refers to itself does not recurse here."""
    table: dict[str, tuple[str, Callable[[Any], Any]]] = {}

    def build(value: dict[str, Any]) -> Any:
        if not table:
            table.update({key: (name, _converter(tp)) for key, (name, tp) in _field_types(cls).items()})
        known = table.get
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            entry = known(key)
            if entry is not None:
                kwargs[entry[0]] = None if item is None else entry[1](item)
        return cls(**kwargs)

    return build
