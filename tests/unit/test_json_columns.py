"""The JSON of the database columns and event bodies (orjson, service/store/db.py) reads and writes
exactly what the json module would: every value json.dumps takes round-trips to the same value, every
text json.loads reads gives the same value, and what json refuses is still refused."""

from __future__ import annotations

import datetime
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.store.db import json_dumps, json_loads

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # past 64 bits too
    st.floats(allow_nan=False),
    st.text(),  # lone surrogates too
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20
)


def _same(a: object, b: object) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_values_round_trip_as_with_json(value: object) -> None:
    assert _same(json_loads(json_dumps(value)), json.loads(json.dumps(value)))
    text = json.dumps(value)
    assert _same(json_loads(text), json.loads(text))
    assert _same(json_loads(text.encode()), json.loads(text))
    assert _same(json_loads(memoryview(text.encode())), json.loads(text))


@pytest.mark.parametrize(
    "text",
    ["1" * 30, "-" + "9" * 19, '{"a": 18446744073709551616}', "NaN", "[Infinity, -Infinity]", "1e400", '"\\ud800"'],
)
def test_texts_orjson_reads_differently_are_read_as_json_reads_them(text: str) -> None:
    expected, got = json.loads(text), json_loads(text)
    assert repr(got) == repr(expected) or (isinstance(got, float) and math.isnan(got) and math.isnan(expected))
    assert type(got) is type(expected)


@pytest.mark.parametrize("text", ["", "{", '{"a": 1,}', "\ufeff{}", "[" * 5000 + "]" * 5000])
def test_what_json_refuses_is_refused(text: str) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json.loads(text)
    with pytest.raises((ValueError, RecursionError)):
        json_loads(text)


@pytest.mark.parametrize(
    "value",
    [{"at": datetime.datetime(2026, 1, 1)}, {"id": {1, 2}}, {"x": object()}],
)
def test_what_json_cannot_write_is_still_refused(value: object) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        json_dumps(value)


def test_keys_json_turns_into_strings_are_written_as_json_writes_them() -> None:
    keys = {1: "a", 2.5: "b", None: "c", False: "d"}
    assert json.loads(json_dumps(keys)) == json.loads(json.dumps(keys))


@pytest.mark.parametrize(
    "value",
    [
        {"a": None, "b": [1, {"c": float("nan")}]},
        {"a": None, "t": (None, float("inf"))},
        [None, -float("inf")],
        {"a": None, "b": "null", "c": 1.5},
    ],
)
def test_a_value_with_a_null_and_a_nan_or_infinity_is_written_as_json_writes_it(value: object) -> None:
    """orjson writes NaN and infinities as null: wherever a null shows up in its text, the value is checked
    for them, and one found anywhere (however deep, in a tuple too) leaves the writing to the json module."""
    assert json_dumps(value) == json.dumps(value) or json.loads(json_dumps(value)) == json.loads(json.dumps(value))
    assert ("NaN" in json_dumps(value)) == ("NaN" in json.dumps(value))
    assert ("Infinity" in json_dumps(value)) == ("Infinity" in json.dumps(value))
