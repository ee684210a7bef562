"""What the intake's cheaper paths promise: the same answers as the longer ones they stand in for."""

from __future__ import annotations

import copy
import json
import random
import re
import threading
import uuid
from pathlib import Path

from mappings import primitives
from mappings.bundle import plan_to_bundle
from mappings.fhir import _STRUCTURE
from mappings.refs import urn_for
from service.domain import codec
from service.domain.model import Plan
from service.notify.changes import named_members
from service.store.committer import _held_lock, _Queued

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures"


def test_urn_for_is_the_uuid5_of_the_identifier_in_the_url_namespace():
    rnd = random.Random(15)
    alphabet = "ab/|:-. é€😀\u00a0"
    for _ in range(2000):
        system = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
        value = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
        assert urn_for(system, value) == f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{system}|{value}')}"
        assert urn_for(system, value) == urn_for(system, value)  # the cached answer is the same


def _plan() -> Plan:
    return codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text()))


def _nodes(value: object, out: list[object]) -> list[object]:
    if isinstance(value, dict | list):
        out.append(value)
        for child in value.values() if isinstance(value, dict) else value:
            _nodes(child, out)
    return out


STRANGE = [None, "", " ", "  x", "x  y", "a\tb", "\x00", "a\x01", "\ud800", "\u00a0", "\ufeff", "é", 1, 1.5, True]
STRANGE += [[], {}, [None], [1], {"id": "x"}, {"bogus": 1}, "2026-13-01", "2026-02-30", "no spaces in uris", [{}]]
KEYS = ["valueString", "valueCode", "extension", "url", "id", "bogus", "resourceType", "detailQuantity"]
KEYS += ["detailString", "dueDate", "dueDuration", "_status", "fhir_comments", "display", "system", "code"]


def test_a_resource_is_clean_exactly_when_the_structure_check_finds_no_error():
    # The quick yes/no pass must agree with the full walk on every input, clean or not: the full walk
    # runs only when the quick pass says no, so a wrong "yes" would let an invalid plan through.
    bundle = plan_to_bundle(_plan(), "https://planbridge.example/id", "urn:mrn")
    bundle["entry"][0]["resource"]["extension"] = [
        {"url": "http://x", "valueString": "a"},
        {"url": "http://y", "extension": [{"url": "z", "valueCode": "c"}]},
    ]
    assert _STRUCTURE._resource_clean(bundle) and not _STRUCTURE._check_resource(bundle)
    rnd = random.Random(4)
    cleans = 0
    for _ in range(3000):
        changed = copy.deepcopy(bundle)
        for _ in range(rnd.randint(1, 3)):
            node = rnd.choice(_nodes(changed, []))
            if isinstance(node, dict) and node:
                key, roll = rnd.choice(list(node)), rnd.random()
                if roll < 0.4:
                    node[key] = copy.deepcopy(rnd.choice(STRANGE))
                elif roll < 0.6:
                    del node[key]
                else:
                    node[rnd.choice(KEYS)] = copy.deepcopy(rnd.choice([*STRANGE, "ok", "http://a"]))
            elif isinstance(node, list) and node:
                index = rnd.randrange(len(node))
                if rnd.random() < 0.5:
                    node[index] = copy.deepcopy(rnd.choice(STRANGE))
                else:
                    node.append(copy.deepcopy(node[index]))
        clean = _STRUCTURE._resource_clean(changed)
        assert clean == (not _STRUCTURE._check_resource(changed)), json.dumps(changed, default=str)[:500]
        cleans += clean
    assert 0 < cleans < 3000  # both answers were exercised


def test_the_quick_string_answers_never_pass_what_the_patterns_refuse():
    uri = re.compile(primitives._PATTERNS["uri"]).fullmatch
    code = re.compile(primitives._PATTERNS["code"]).fullmatch
    rnd = random.Random(7)
    alphabet = [chr(c) for c in range(0x80)] + ["\u00a0", "\u2028", "\ufeff", "\ud800", "é", "\u3000", "\x85"]
    for _ in range(20000):
        pool = alphabet if rnd.random() < 0.3 else [" ", "a", "\t", "/", ":"]
        text = "".join(rnd.choice(pool) for _ in range(rnd.randint(0, 6)))
        assert not primitives._surely_uri(text) or uri(text)
        assert not primitives._surely_code(text) or code(text)
        assert primitives._plain_string_clean(text) == (primitives._plain_string(text) is None)


def test_a_proposer_is_found_the_same_on_a_plan_and_on_its_document():
    plan = _plan()
    document = codec.to_dict(plan)
    people: list[dict[str, object]] = [{"kind": "patient"}, {"kind": "practitioner", "display": "nobody"}]
    for member in plan.team:
        people.append({"kind": member.kind, "display": member.name})
        if member.identifier is not None:
            system, value = member.identifier.system, member.identifier.value
            people.append({"kind": member.kind, "identifier": {"system": system}})
            people.append({"kind": member.kind, "identifier": {"system": system, "value": value}})
    people.append({"kind": "practitioner", "identifier": {}})  # matches a member with no identifier
    for who in people:
        data = {"goal": {"proposed_by": who}}
        assert named_members(data, plan) == named_members(data, document), who


def test_a_queued_work_is_woken_by_a_release_made_before_it_waits():
    item: _Queued[None] = _Queued(lambda uow: None)
    assert item.wake.locked()  # made held: acquiring waits for a waker
    item.wake.release()  # woken before it waits
    woke = threading.Event()
    waiter = threading.Thread(target=lambda: (item.wake.acquire(), woke.set()))
    waiter.start()
    waiter.join(5)
    assert woke.is_set()
    assert _held_lock().locked()
