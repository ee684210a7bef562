"""A deep copy of a plan, as `copy.deepcopy` makes it, without deepcopy's general machinery.

Every event on an existing plan changes a copy of it (`apply_command`), keeping the plan as read for the
change's paths and the deliverability check. `copy.deepcopy` goes through `__reduce_ex__`, a memo entry
and `_reconstruct` for each of the plan's dataclasses, lists and dicts: on a plan the fixture events made,
about 3.4M of a check-in event's 11.9M instructions (callgrind, 2026-12-06), more than mapping and
validating the plan. A plan is plain dataclasses, lists, dicts and immutable scalars, which `deep_copy`
copies directly (3-5x faster).

`deep_copy(value)` returns what `copy.deepcopy(value)` returns: a new instance of each dataclass, list and
dict, built the way deepcopy builds it (`cls.__new__(cls)`, then its `__dict__` updated with copies of the
values), and the immutable scalars themselves. Whatever it does not know how to copy (any other type, or
a class with its own copy or pickle hooks or slots) makes it hand the whole value to `copy.deepcopy`. An
object met twice (shared, or a cycle) has one copy, as deepcopy's memo keeps it, each container entered in
the memo before its contents are copied, as deepcopy enters it.
"""

from __future__ import annotations

import copy
import copyreg
import dataclasses
from decimal import Decimal
from typing import Any, TypeVar

T = TypeVar("T")

_ATOMIC = frozenset({type(None), bool, int, float, str, Decimal})  # deepcopy returns these themselves
_PLAIN: dict[type, bool] = {}  # class -> whether deepcopy copies it as `__new__` + `__dict__` update
_HOOKS = ("__deepcopy__", "__setstate__", "__getnewargs__", "__getnewargs_ex__")
_DEFAULT_GETSTATE = getattr(object, "__getstate__", None)  # Python 3.11 gave object a default one


class _Unsure(Exception):
    """The value holds something deep_copy does not copy the way deepcopy does."""


def _plain(cls: type) -> bool:
    """Tell whether deepcopy copies an instance of `cls` as `cls.__new__(cls)` and a copy of its `__dict__`:
    a dataclass with a `__dict__`, no slots, and none of the hooks deepcopy would call instead."""
    known = _PLAIN.get(cls)
    if known is None:
        known = _PLAIN[cls] = (
            dataclasses.is_dataclass(cls)
            and not any("__slots__" in vars(k) for k in cls.__mro__[:-1])
            and not any(hasattr(cls, hook) for hook in _HOOKS)
            and getattr(cls, "__getstate__", _DEFAULT_GETSTATE) is _DEFAULT_GETSTATE
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and cls.__new__ is object.__new__
            and copy._deepcopy_dispatch.get(cls) is None  # type: ignore[attr-defined]
            and copyreg.dispatch_table.get(cls) is None
        )
    return known


def _copy(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMIC:
        return value
    done = memo.get(id(value))
    if done is not None:
        return done  # met before (shared, or a cycle): its one copy, as deepcopy's memo gives it
    if kind is list:
        items: list[Any] = []
        memo[id(value)] = items
        for item in value:
            items.append(_copy(item, memo))
        return items
    if kind is dict:
        out: dict[Any, Any] = {}
        memo[id(value)] = out
        for key, item in value.items():
            if type(key) not in _ATOMIC:
                raise _Unsure
            out[key] = _copy(item, memo)
        return out
    if _plain(kind):
        new = object.__new__(kind)
        memo[id(value)] = new
        new.__dict__.update({name: _copy(item, memo) for name, item in value.__dict__.items()})
        return new
    raise _Unsure


def deep_copy(value: T) -> T:
    """Return `copy.deepcopy(value)` (see the module doc)."""
    try:
        return _copy(value, {})
    except _Unsure:
        return copy.deepcopy(value)
