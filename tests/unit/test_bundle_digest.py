"""A plan's Bundle digest (service.sync.push_bundle.bundle_digest) is the SHA-256 of the json module's sorted,
compact text, byte for byte, whichever encoder writes it: every `pushed_hash` stored before orjson wrote the
text must still match the Bundle of an unchanged plan after an upgrade (else every plan is pushed again)."""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mappings.bundle import plan_to_bundle
from service.domain import codec
from service.domain.model import Plan
from service.sync import push_bundle
from service.sync.push_bundle import bundle_digest
from tests.support import FIXTURES

BASE, MRN = "https://planbridge.example.org/id", "http://hospital.example.org/mrn"
PLANS = sorted((FIXTURES / "plans").glob("*.json"))


def digest_as_stored(value: Any) -> str:
    """How every stored `pushed_hash` was computed (planbridge up to this change)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fixture_bundles() -> list[dict[str, Any]]:
    bundles = []
    for path in PLANS:
        plan = codec.from_dict(Plan, json.loads(path.read_text()))
        for patient_ref in (None, "Patient/123"):
            bundles.append(plan_to_bundle(plan, BASE, MRN, patient_ref))
    return bundles


def test_every_fixture_bundle_digests_as_stored() -> None:
    bundles = fixture_bundles()
    assert len(bundles) == 2 * len(PLANS) >= 20
    for bundle in bundles:
        assert bundle_digest(bundle) == digest_as_stored(bundle)


def test_fixture_bundles_are_digested_without_the_json_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is the one taken for plans as they are: no fixture Bundle falls back to json.dumps."""
    expected = [digest_as_stored(bundle) for bundle in fixture_bundles()]

    def refused(*_args: Any, **_kwargs: Any) -> str:
        raise AssertionError("json.dumps was called")

    monkeypatch.setattr(push_bundle.json, "dumps", refused)
    assert [bundle_digest(bundle) for bundle in fixture_bundles()] == expected


def test_a_pinned_digest_is_unchanged() -> None:
    """A literal Bundle with non-ASCII text, floats and a DEL, and the digest planbridge stored for it."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "note": [{"text": "Zoë walked 2 km \u2014 \u00e9t\u00e9 \x7f\U0001f600"}],
                    "valueQuantity": {"value": 72.5, "unit": "kg"},
                    "component": [{"valueQuantity": {"value": 1e-7}}, {"valueQuantity": {"value": 0.00001}}],
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    assert bundle_digest(bundle) == digest_as_stored(bundle)
    assert bundle_digest(bundle) == "516344397e2e70a4819380afc621ded34d46df1f8d2519a2ed038fce36ff3696"


FLOATS = [
    0.0,
    -0.0,
    0.1,
    72.5,
    1.0,
    1e15,
    1e16,
    1.5e300,
    5e-324,
    1e-4,
    1e-5,
    1.5e-5,
    9.999999e-5,
    1e-7,
    -2.5e-10,
    123456.789,
    1 / 3,
    math.nan,
    math.inf,
    -math.inf,
]


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        *FLOATS,
        *[[f] for f in FLOATS],
        *[{"value": f, "unit": "kg"} for f in FLOATS],
        {"text": "caf\u00e9", "ascii": "cafe"},
        {"\u00e9": 1, "e": 2, "z": 3, "\U0001f600": 4, "A": 5},  # non-ASCII keys: sorted by code point
        {"text": "".join(chr(c) for c in range(0x80))},  # every control character, and DEL
        {"text": "null", "n": None, "t": True, "f": False},
        {"text": "urn:uuid:1e5,0.00001]", "v": [1, 2, 3]},  # number-like text inside strings
        {"big": 2**64, "small": -(2**63) - 1, "u64": 2**64 - 1, "i64": -(2**63)},
        {"tuple": (1, "a", 2.5)},
        {"sub": Text("x"), "enum": Colour.RED},
        OrderedDict([("b", 1), ("a", 2)]),
        {1: "int keys", 2: "json writes them as text"},
        {"a": {"b": {"c": []}}, "d": {}},
        {"lone": "\ud800"},
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    ],
)
def test_values_the_encoders_write_differently_digest_as_stored(value: Any) -> None:
    assert bundle_digest(value) == digest_as_stored(value)


def test_nesting_deeper_than_orjson_takes_digests_as_stored() -> None:
    value: Any = "leaf"
    for _ in range(300):  # orjson refuses more than 255 levels
        value = {"x": [value]}
    assert bundle_digest(value) == digest_as_stored(value)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # past 64 bits too
    st.floats(),  # NaN and the infinities too
    st.text(),  # non-ASCII, control characters, lone surrogates
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=25
)


@settings(max_examples=500, deadline=None)
@given(VALUES)
def test_any_json_value_digests_as_stored(value: Any) -> None:
    assert bundle_digest(value) == digest_as_stored(value)
