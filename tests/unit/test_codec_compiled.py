"""codec.to_dict and from_dict are compiled per dataclass: they must give exactly what walking the fields
one by one gives (the reference walk below is the codec as it was before it was compiled)."""

from __future__ import annotations

import dataclasses
import typing
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings

from service.domain import codec
from service.domain.model import Plan
from tests.strategies import plans

_AS_IS = frozenset({str, int, float, bool, type(None), dict})


def reference_to_dict(obj: Any) -> Any:
    if type(obj) in _AS_IS:
        return obj
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None or value == [] or (f.metadata.get("omit_empty") and not value):
                continue
            out[f.metadata.get("json", f.name)] = value if type(value) in _AS_IS else reference_to_dict(value)
        return out
    if isinstance(obj, list):
        return [reference_to_dict(v) for v in obj]
    if isinstance(obj, Decimal):
        return int(obj) if obj == obj.to_integral_value() and "E" not in str(obj) else float(obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    return obj


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_compiled_to_dict_and_from_dict_match_the_field_walk(plan: Plan) -> None:
    document = codec.to_dict(plan)
    assert document == reference_to_dict(plan)
    assert [type(v) for v in document.values()] == [type(v) for v in reference_to_dict(plan).values()]
    assert codec.from_dict(Plan, document) == plan


@dataclasses.dataclass
class _Inner:
    amount: Decimal | None = None
    when: date | None = None


@dataclasses.dataclass
class _Outer:
    name: str = ""
    keyword: str | None = dataclasses.field(default=None, metadata={"json": "if"})
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"omit_empty": True})
    kept: dict[str, Any] = dataclasses.field(default_factory=dict)
    zero: int = 0
    flag: bool = False
    items: list[_Inner] = dataclasses.field(default_factory=list)
    tags: list[str] = dataclasses.field(default_factory=list)
    inner: _Inner | None = None
    children: list[_Outer] = dataclasses.field(default_factory=list)


def test_edge_values_keep_their_meaning() -> None:
    """Empty string, zero and False are written; None, an empty list and an omit_empty {} are not; keys are
    renamed; decimals, dates and nested (even self-referring) dataclasses are converted both ways."""
    value = _Outer(
        keyword="x",
        items=[_Inner(Decimal("2.50"), date(2026, 1, 2)), _Inner(Decimal("3"))],
        tags=["a"],
        inner=_Inner(),
        children=[_Outer(name="child", extra={"a": 1})],
    )
    document = codec.to_dict(value)
    assert document == reference_to_dict(value)
    assert document == {
        "name": "",
        "if": "x",
        "kept": {},
        "zero": 0,
        "flag": False,
        "items": [{"amount": 2.5, "when": "2026-01-02"}, {"amount": 3}],
        "tags": ["a"],
        "inner": {},
        "children": [{"name": "child", "extra": {"a": 1}, "kept": {}, "zero": 0, "flag": False}],
    }
    assert type(document["items"][1]["amount"]) is int
    back = codec.from_dict(_Outer, {**document, "unknown": 1, "inner": None})
    assert back == dataclasses.replace(value, inner=None)
    assert typing.get_type_hints(_Outer)  # the hints the converters are built from resolve
