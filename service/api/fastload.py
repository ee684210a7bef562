"""Precompiled loaders for marshmallow schemas: the same fields, validators and hooks, without the
per-load machinery.

`Schema.load` builds, for every field of every nested schema on every call, a getter closure, an error
store entry point and an `And` of the field's validators; for a team event that was ~15% of its CPU.
`compile_loader(schema)` walks the schema once and returns a function that runs, for each field, the
field's own `_deserialize` and validators, then the schema's `@validates_schema` and `@post_load`
hooks, exactly as `Schema.load` runs them on valid input.

It answers only for input it can vouch for. On anything else (an unknown key, a missing required
field, a `null`, a value of an unexpected JSON type, any error at all) it raises `Unsure`, and the
caller runs `schema.load`, whose answer (the value or the precise `ValidationError`) is the one given.
So a body is accepted with exactly the value marshmallow gives it, and refused with exactly
marshmallow's messages; the loader only decides how fast. Schemas using options it does not model
(`many`, `partial`, pre-load hooks, `@validates`, hooks with `pass_original`/`pass_collection`,
`unknown` other than RAISE, dotted attributes, field-level pre/post-load functions) are not compiled:
`load` then always goes through `schema.load`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES, VALIDATES_SCHEMA
from marshmallow.utils import missing

Loader = Callable[[Any], Any]


class Unsure(Exception):
    """The precompiled loader cannot vouch for this input: ask `schema.load`."""


class _NotCompilable(Exception):
    """The schema uses something the compiler does not model."""


def load(schema: Schema, loader: Loader | None, data: Any) -> Any:
    """Return what `schema.load(data)` returns (raising its ValidationError), through `loader` when it can."""
    if loader is not None:
        try:
            return loader(data)
        except Unsure:
            pass
    return schema.load(data)


def compile_loader(schema: Schema) -> Loader | None:
    """Return a precompiled loader for `schema`, or None when it uses options the compiler does not model."""
    try:
        return _schema_loader(schema)
    except _NotCompilable:
        return None


def _hooks(schema: Schema, tag: str) -> list[Callable[..., Any]]:
    hooks = []
    for attr_name, pass_collection, kwargs in schema._hooks[tag]:
        if pass_collection or kwargs.get("pass_original"):
            raise _NotCompilable(f"{type(schema).__name__}.{attr_name}")
        hooks.append(getattr(schema, attr_name))
    return hooks


def _schema_loader(schema: Schema) -> Loader:
    if schema.many or schema.partial or schema.unknown != RAISE or schema._hooks[PRE_LOAD] or schema._hooks[VALIDATES]:
        raise _NotCompilable(type(schema).__name__)
    validators = _hooks(schema, VALIDATES_SCHEMA)
    post_loads = _hooks(schema, POST_LOAD)
    plan: list[tuple[str, str, bool, Any, bool, Callable[[Any, str, Any], Any]]] = []
    for attr_name, field in schema.load_fields.items():
        key = field.data_key if field.data_key is not None else attr_name
        out = field.attribute or attr_name
        if "." in out:
            raise _NotCompilable(f"{type(schema).__name__}.{attr_name}: dotted attribute")
        plan.append((key, out, field.required, field.load_default, field.allow_none, _field_loader(field)))
    known = frozenset(key for key, *_ in plan)
    dict_class = schema.dict_class
    partial, unknown = schema.partial, schema.unknown  # what Schema.load hands its hooks

    def run(data: Any) -> Any:
        if type(data) is not dict or not known.issuperset(data):
            raise Unsure
        result = dict_class()
        try:
            for key, out, required, default, allow_none, field_load in plan:
                raw = data.get(key, missing)
                if raw is missing:
                    if required:
                        raise Unsure
                    if default is not missing:
                        result[out] = default() if callable(default) else default
                    continue
                if raw is None:
                    if not allow_none:
                        raise Unsure
                    result[out] = None
                    continue
                result[out] = field_load(raw, key, data)
            for validator in validators:
                validator(result, partial=partial, many=False, unknown=unknown)
            for post_load in post_loads:
                result = post_load(result, partial=partial, many=False, unknown=unknown)
        except Unsure:
            raise
        except Exception as exc:  # a ValidationError, or anything marshmallow should be the one to report
            raise Unsure from exc
        return result

    return run


def _checked(field: fields.Field, load: Callable[[Any, str | None, Any], Any]) -> Callable[[Any, str | None, Any], Any]:
    """Run the field's validators after `load`, as Field.deserialize does."""
    validators = tuple(field.validators)
    if not validators:
        return load

    def run(raw: Any, key: str | None, data: Any) -> Any:
        value = load(raw, key, data)
        for validator in validators:
            validator(value)  # raises ValidationError; Field._validate ignores what validators return
        return value

    return run


def _field_loader(field: fields.Field) -> Callable[[Any, str | None, Any], Any]:
    """Return (raw value, data key, parent data) -> value, as `field.deserialize` gives it for valid input."""
    if getattr(field, "pre_load", None) or getattr(field, "post_load", None):
        raise _NotCompilable(f"{field!r}: field-level load functions")
    if isinstance(field, fields.Nested):
        if field.many or field.only or field.exclude or field.unknown is not None or type(field) is not fields.Nested:
            raise _NotCompilable(f"{field!r}: nested options")
        nested = _schema_loader(field.schema)
        return _checked(field, lambda raw, key, data: nested(raw))
    if isinstance(field, fields.List):
        if type(field) is not fields.List:
            raise _NotCompilable(repr(field))
        inner = field.inner
        inner_load = _item_loader(inner)

        def load_list(raw: Any, key: str | None, data: Any) -> list[Any]:
            if type(raw) is not list:
                raise Unsure
            return [inner_load(each) for each in raw]

        return _checked(field, load_list)
    if isinstance(field, fields.Mapping):
        if type(field) is not fields.Dict:
            raise _NotCompilable(repr(field))
        key_load = _item_loader(field.key_field) if field.key_field is not None else None
        value_load = _item_loader(field.value_field) if field.value_field is not None else None

        def load_dict(raw: Any, key: str | None, data: Any) -> dict[Any, Any]:
            if type(raw) is not dict:
                raise Unsure
            if key_load is None and value_load is None:
                return dict(raw)
            return {
                (k if key_load is None else key_load(k)): (v if value_load is None else value_load(v))
                for k, v in raw.items()
            }

        return _checked(field, load_dict)
    if isinstance(field, fields.Raw | fields.Method | fields.Function | fields.Constant):
        raise _NotCompilable(repr(field))
    if type(field) is fields.String:  # most fields: String._deserialize gives a str back as it is
        validators = tuple(field.validators)

        def load_str(raw: Any, key: str | None, data: Any) -> str:
            if type(raw) is not str:
                raise Unsure
            for validator in validators:
                validator(raw)
            return raw

        return load_str
    return _checked(field, field._deserialize)  # String, Integer, Decimal, Date, DateTime and their kin


def _item_loader(field: fields.Field) -> Callable[[Any], Any]:
    """Return value -> value for a List's items or a Dict's keys and values (no data key, no parent data)."""
    load = _field_loader(field)

    def run(raw: Any) -> Any:
        if raw is None:
            if not field.allow_none:
                raise Unsure
            return None
        return load(raw, None, None)

    return run


__all__ = ["Loader", "Unsure", "ValidationError", "compile_loader", "load"]
