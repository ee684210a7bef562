"""`conditional_references` finds every conditional reference of a Bundle once, in document order, wherever it
is nested: checked against a plain recursive oracle on generated JSON, and on a plan's Bundle."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from service.sync.conditional_refs import conditional_references, conditional_search

REFERENCES = st.sampled_from(
    [
        "Patient?identifier=http://hospital.example.org/mrn|123",
        "Practitioner/?identifier=x|1",
        "Patient/1",
        "urn:uuid:8c1f7c5e-7a52-4c35-9e6c-0c8f1d0c8a11",
        "#contained",
        "http://other.example/fhir/Patient/1?x=1",
        "?identifier=x|1",
        "",
        "Patient?identifier=x|2",
    ]
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), REFERENCES),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(["reference", "entry", "resource", "subject", "x"]), children, max_size=4),
    ),
    max_leaves=30,
)


def oracle(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if conditional_search(value) is not None:
                    out.append(value)
            else:
                out.extend(oracle(value))
    elif isinstance(node, list):
        for value in node:
            out.extend(oracle(value))
    return list(dict.fromkeys(out))


@given(JSON)
def test_conditional_references_match_a_plain_walk(document: Any) -> None:
    assert conditional_references(document) == oracle(document)


def test_conditional_references_in_order_once_and_nested() -> None:
    bundle = {
        "entry": [
            {"resource": {"subject": {"reference": "Patient?identifier=s|1"}, "reference": 3}},
            {"resource": {"author": [{"reference": "Practitioner?identifier=s|9"}, {"reference": "Patient/2"}]}},
            {"resource": {"subject": {"reference": "Patient?identifier=s|1"}, "note": "reference?"}},
            {"resource": {"deep": [[{"x": {"reference": "Group/?identifier=s|3"}}]]}},
        ]
    }
    assert conditional_references(bundle) == [
        "Patient?identifier=s|1",
        "Practitioner?identifier=s|9",
        "Group/?identifier=s|3",
    ]
