"""The precompiled event loaders (service/api/fastload.py) give exactly what marshmallow gives.

Whatever a precompiled loader returns must equal `schema.load` on the same input, and whatever it is
unsure of must go to marshmallow (so a refusal keeps marshmallow's messages). Checked on every
fixture event, on hypothesis stories of every type with poison in any field, and on mutations of
the fixtures (keys dropped or added, values swapped for other JSON types, nulls).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, post_load, validates, validates_schema

from service.api import fastload
from service.api.webhooks import _DATA, _DATA_LOADERS, _ENVELOPE, _ENVELOPE_LOADER
from tests.event_strategies import stories

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "fixtures/events").glob("*.json"))
EVENTS = {path.name: json.loads(path.read_text()) for path in FIXTURES}


def _outcome(load: Any) -> tuple[str, Any]:
    try:
        return "ok", load()
    except ValidationError as exc:
        return "refused", exc.normalized_messages()


def _agrees(schema: Schema, loader: fastload.Loader | None, data: Any) -> bool:
    """Assert the precompiled loader agrees with marshmallow; return whether it answered itself."""
    assert loader is not None, f"{type(schema).__name__} was not compiled"
    expected = _outcome(lambda: schema.load(copy.deepcopy(data)))
    try:
        fast = loader(copy.deepcopy(data))
    except fastload.Unsure:
        assert _outcome(lambda: fastload.load(schema, loader, copy.deepcopy(data))) == expected
        return False
    assert expected == ("ok", fast), f"precompiled {fast!r} but marshmallow {expected!r}"
    return True


def test_every_event_type_is_compiled() -> None:
    assert _ENVELOPE_LOADER is not None
    assert {t for t, loader in _DATA_LOADERS.items() if loader is None} == set()


@pytest.mark.parametrize("name", list(EVENTS))
def test_fixture_events_load_the_same_and_fast(name: str) -> None:
    event = EVENTS[name]
    assert _agrees(_ENVELOPE, _ENVELOPE_LOADER, event)
    assert _agrees(_DATA[event["type"]], _DATA_LOADERS[event["type"]], event["data"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stories(max_events=6))
def test_stories_with_poison_load_the_same(story: list[dict[str, Any]]) -> None:
    for event in story:
        _agrees(_ENVELOPE, _ENVELOPE_LOADER, event)
        if event.get("type") in _DATA and isinstance(event.get("data"), dict):
            _agrees(_DATA[event["type"]], _DATA_LOADERS[event["type"]], event["data"])


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*path, index))
    return found


REPLACEMENTS = [None, 0, 1.5, True, "", " ", "x", "2026-13-45", [], {}, ["x"], {"x": 1}, "a\x00b", 10**20]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(EVENTS)), st.data())
def test_mutated_fixtures_load_the_same(name: str, data: st.DataObject) -> None:
    event = copy.deepcopy(EVENTS[name])
    body = event["data"]
    path = data.draw(st.sampled_from(_paths(body)))
    *parent_path, last = path
    parent = body
    for step in parent_path:
        parent = parent[step]
    action = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "replace":
        parent[last] = data.draw(st.sampled_from(REPLACEMENTS))
    elif action == "drop":
        del parent[last]
    elif isinstance(parent, dict):
        parent["unexpected"] = "x"
    else:
        parent.append(data.draw(st.sampled_from(REPLACEMENTS)))
    _agrees(_DATA[event["type"]], _DATA_LOADERS[event["type"]], body)


class _Inner(Schema):
    n = fields.Integer(required=True)
    tag = fields.String(load_default="none", data_key="label")

    @validates_schema
    def small(self, data: dict[str, Any], **_: Any) -> None:
        if data["n"] > 10:
            raise ValidationError("too big", "n")

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> tuple[int, str]:
        return data["n"], data["tag"]


class _Outer(Schema):
    items = fields.List(fields.Nested(_Inner), required=True)
    names = fields.Dict(keys=fields.String(), values=fields.Integer(allow_none=True))
    when = fields.AwareDateTime(allow_none=True)


@pytest.mark.parametrize(
    "data",
    [
        {"items": [{"n": 1}, {"n": 2, "label": "b"}], "names": {"a": 1, "b": None}, "when": "2026-01-01T00:00:00Z"},
        {"items": [], "when": None},
        {"items": [{"n": 11}]},  # a schema validator refuses
        {"items": [{"n": "3"}]},  # marshmallow coerces; the loader may run it or defer
        {"items": [{"n": 1, "tag": "x"}]},  # the attribute name is not the data key: unknown
        {"items": [{"n": 1}], "names": {"a": "x"}},
        {"items": [{"n": 1}], "when": "2026-01-01T00:00:00"},  # naive
        {"items": [{"n": 1}], "other": 1},
        {"items": None},
        {},
        [],
    ],
)
def test_a_schema_with_defaults_keys_hooks_and_nulls_loads_the_same(data: Any) -> None:
    schema = _Outer()
    _agrees(schema, fastload.compile_loader(schema), data)


def test_schemas_using_options_it_does_not_model_are_left_to_marshmallow() -> None:
    class WithFieldValidator(Schema):
        n = fields.Integer()

        @validates("n")
        def positive(self, value: int, **_: Any) -> None:
            if value < 0:
                raise ValidationError("negative")

    class WithOriginal(Schema):
        n = fields.Integer()

        @validates_schema(pass_original=True)
        def check(self, data: dict[str, Any], original: Any, **_: Any) -> None:
            pass

    for schema in (WithFieldValidator(), WithOriginal(), _Inner(many=True), _Inner(partial=True)):
        assert fastload.compile_loader(schema) is None
        with pytest.raises(ValidationError):
            fastload.load(schema, None, {"n": "x"})
