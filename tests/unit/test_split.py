"""service.sync.split: a plan Bundle cut into transactions within a server's limits, in dependency order.

Each fixture plan is split under several limits and "sent" to a tiny simulated server that assigns ids,
refuses a chunk over the limits or naming a `urn:uuid` it cannot resolve, and keeps the last version of
each resource: what it ends up holding must be exactly what the one Bundle says."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mappings.bundle import plan_to_bundle
from service.domain import codec
from service.domain.model import Plan
from service.fhir import refusals
from service.fhir.capabilities import Limits
from service.fhir.errors import FhirTransactionTooLarge, FhirValidationFailed
from service.settings import Settings
from service.sync.split import (
    MEDPLUM_LIMITS,
    LearnedLimits,
    Split,
    _without,
    decode_limits,
    encode_limits,
    fits,
    is_strict,
    landed,
    limits_cursor,
    location_of,
    realize,
    split_bundle,
    tightest,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "plans"
BASE, MRN = "https://planbridge.test/id", "http://hospital.example.org/mrn"


def _bundle(fixture: str, patient_ref: str | None = None) -> dict[str, Any]:
    plan = codec.from_dict(Plan, json.loads((FIXTURES / fixture).read_text()))
    return plan_to_bundle(plan, BASE, MRN, patient_ref)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolved(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: ids.get(v, v) if k == "reference" else _resolved(v, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolved(v, ids) for v in node]
    return node


class Server:
    """Holds resources by `Type/id` with versions; applies one transaction at a time, all or nothing."""

    def __init__(self, limits: Limits) -> None:
        self.limits, self.held, self.versions, self.next_id = limits, {}, {}, 1

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        entries = bundle["entry"]
        assert fits(entries, self.limits), f"over the limits: {len(entries)} entries"
        ids: dict[str, str] = {}
        for entry in entries:
            request = entry["request"]
            if "?" in request["url"] or request["method"] == "POST":
                ids[entry["fullUrl"]] = f"{entry['resource']['resourceType']}/{self.next_id}"
                self.next_id += 1
            else:
                ids[entry["fullUrl"]] = request["url"]
                held = self.versions.get(request["url"])
                assert request.get("ifMatch") in (None, f'W/"{held}"'), (request, held)
        out = []
        for entry in entries:
            unresolved = [r for r in _refs(entry["resource"]) if r.startswith("urn:uuid:") and r not in ids]
            assert not unresolved, f"{entry['request']['url']} names {unresolved}, neither on the server nor here"
            key = ids[entry["fullUrl"]]
            self.held[key] = _resolved(entry["resource"], ids)
            self.versions[key] = self.versions.get(key, 0) + 1
            out.append({"response": {"status": "200 OK", "location": f"{key}/_history/{self.versions[key]}"}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}


def _send(split: Split, server: Server) -> dict[str, tuple[str, str, str | None]]:
    known = dict(split.known)
    for steps in split.chunks:
        chunk = realize(steps, known)
        known.update(landed(chunk, server.transaction(chunk)))
    return known


LIMITS = [MEDPLUM_LIMITS, Limits(3, 50), Limits(1, 1), Limits(None, 2), Limits(5, None)]


@pytest.mark.parametrize("limits", LIMITS, ids=str)
@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_every_plan_split_under_any_limits_lands_as_the_one_bundle_says(fixture, limits):
    bundle = _bundle(fixture)
    split = split_bundle(bundle, limits)
    assert all(fits([s.entry for s in steps if not s.follow_up], limits) for steps in split.chunks)
    server = Server(limits)
    known = _send(split, server)
    ids = {url: f"{rtype}/{rid}" for url, (rtype, rid, _v) in known.items()}
    assert len(server.held) == len(bundle["entry"])  # nothing created twice
    for entry in bundle["entry"]:
        held = {k: v for k, v in server.held[ids[entry["fullUrl"]]].items() if k != "id"}  # a follow-up names it
        assert held == _resolved(entry["resource"], ids), entry["fullUrl"]


def test_a_bundle_within_the_limits_is_one_chunk_as_it_is():
    bundle = _bundle("minimal.json")
    split = split_bundle(bundle, MEDPLUM_LIMITS)
    assert len(split.chunks) == 1 and [s.entry for s in split.chunks[0]] == bundle["entry"]


def test_new_resources_go_first_in_create_order():
    bundle = _bundle("knee-rehabilitation.json")  # 13 entries, all conditional
    chunks = split_bundle(bundle, MEDPLUM_LIMITS).chunks
    order = [s.entry["resource"]["resourceType"] for steps in chunks for s in steps]
    assert order[:5] == ["Patient", "Practitioner", "Practitioner", "Practitioner", "Practitioner"]
    assert order[-1] == "CarePlan" and order.index("CareTeam") < order.index("Goal")
    assert [len(steps) for steps in chunks] == [6, 7]  # a Goal and its check-ins stay together


def test_a_cycle_too_big_for_a_transaction_is_created_without_its_forward_references_then_written_whole():
    bundle = _bundle("cardiac-rehab-checkins.json", "Patient/7")  # a Goal and its 8 check-ins name each other
    split = split_bundle(bundle, MEDPLUM_LIMITS)
    steps = [s for chunk in split.chunks for s in chunk]
    goal_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"].get("outcomeReference"))
    stub = next(s for s in steps if s.entry["fullUrl"] == goal_url and not s.follow_up)
    (follow_up,) = [s for s in steps if s.follow_up]
    assert "outcomeReference" not in stub.entry["resource"]
    assert len(follow_up.entry["resource"]["outcomeReference"]) == 8
    where = {id(s): n for n, chunk in enumerate(split.chunks) for s in chunk}
    assert where[id(follow_up)] > where[id(stub)]  # after the chunk that returns the version it names
    sent = realize(
        [follow_up],
        {goal_url: ("Goal", "42", "1"), **{u: ("Observation", u[-4:], "1") for u in _refs(follow_up.entry)}},
    )
    (entry,) = sent["entry"]
    assert entry["request"] == {"method": "PUT", "url": "Goal/42", "ifMatch": 'W/"1"'}
    assert entry["resource"]["id"] == "42"
    assert not any(r.startswith("urn:uuid:") for r in _refs(entry["resource"]))


def test_resources_the_server_holds_go_last_by_fifty_updates():
    entries = [
        {
            "fullUrl": f"urn:uuid:{n}",
            "resource": {"resourceType": "Goal", "id": str(n)},
            "request": {"method": "PUT", "url": f"Goal/{n}", "ifMatch": 'W/"3"'},
        }
        for n in range(60)
    ]
    split = split_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries}, MEDPLUM_LIMITS)
    assert [len(c) for c in split.chunks] == [50, 10]
    assert split.known["urn:uuid:7"] == ("Goal", "7", "3")


def test_strict_entries_and_fits():
    create = {"request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=s|v"}}
    plain_create = {"request": {"method": "POST", "url": "Practitioner"}}
    cond_put = {"request": {"method": "PUT", "url": "Goal?identifier=s|v"}}
    put = {"request": {"method": "PUT", "url": "Goal/1"}}
    delete = {"request": {"method": "DELETE", "url": "Goal?identifier=s|v"}}
    assert [is_strict(e) for e in (create, plain_create, cond_put, put, delete)] == [True, False, True, False, True]
    assert fits([put] * 50, MEDPLUM_LIMITS) and not fits([put] * 51, MEDPLUM_LIMITS)
    assert fits([put] * 9, MEDPLUM_LIMITS) and not fits([put] * 8 + [create], MEDPLUM_LIMITS)
    assert fits([put] * 7 + [cond_put], MEDPLUM_LIMITS) and fits([put] * 99, Limits())


def test_tightest_takes_the_smallest_cap_of_each_kind():
    assert tightest(Limits(8, None), None, Limits(10, 40)) == Limits(8, 40)
    assert tightest() == Limits()


def test_references_are_dropped_with_the_element_or_extension_holding_them():
    gone = "urn:uuid:gone"
    resource = {
        "resourceType": "Goal",
        "outcomeReference": [{"reference": gone}],
        "extension": [
            {
                "url": "rel",
                "extension": [
                    {"url": "type", "valueCode": "x"},
                    {"url": "target", "valueReference": {"reference": gone}},
                ],
            },
            {"url": "barrier", "valueString": "ice"},
        ],
        "subject": {"reference": "Patient/1"},
        "note": [{"authorReference": {"reference": gone}, "text": "kept"}],
    }
    assert _without(resource, {gone}.__contains__) == {
        "resourceType": "Goal",
        "extension": [{"url": "barrier", "valueString": "ice"}],
        "subject": {"reference": "Patient/1"},
        "note": [{"text": "kept"}],
    }


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"response": {"location": "Goal/5/_history/2"}}, ("Goal", "5", "2")),
        ({"response": {"location": "https://x/fhir/Goal/5/_history/2"}}, ("Goal", "5", "2")),
        ({"response": {"location": "Goal/5", "etag": 'W/"4"'}}, ("Goal", "5", "4")),
        ({"response": {"location": "Goal/5"}, "resource": {"meta": {"versionId": "3"}}}, ("Goal", "5", "3")),
        ({"response": {"location": "Goal/5"}}, ("Goal", "5", None)),
        ({"response": {"status": "400"}}, None),
    ],
)
def test_where_a_transaction_entry_landed(result, expected):
    assert location_of(result) == expected


def test_limits_kept_as_a_cursor():
    assert len(limits_cursor("https://" + "x" * 300)) <= 64
    assert limits_cursor("https://a") != limits_cursor("https://b")
    for limits in (MEDPLUM_LIMITS, Limits(8, None), Limits(None, 3), Limits()):
        assert decode_limits(encode_limits(limits)) == limits
    assert decode_limits(None) is None and decode_limits("x,1") is None and decode_limits("8") is None


def test_learned_limits_are_per_server_and_only_tighten():
    book = LearnedLimits()
    assert book.refused("https://a") is None and book.read("https://a") is None
    book.learn("https://a", Limits(8, None))
    assert book.learn("https://a", Limits(10, 50)) == Limits(8, 50)
    book.remember_read("https://b", Limits())
    assert book.read("https://b") == Limits() and book.refused("https://b") is None
    book.forget("https://a")
    assert book.refused("https://a") is None and book.read("https://b") == Limits()


@pytest.mark.parametrize(
    "text",
    [
        "Transaction requires strict isolation but has too many entries",
        "Transaction contains more update operations than allowed",
    ],
)
@pytest.mark.parametrize("field", ["diagnostics", "details"])
def test_medplums_size_refusals_mean_split(text, field):
    issue = {"severity": "error", "code": "invalid"}
    issue.update({"diagnostics": text} if field == "diagnostics" else {"details": {"text": text}})
    kind = refusals.classify(400, {"resourceType": "OperationOutcome", "issue": [issue]})
    assert kind is FhirTransactionTooLarge and kind.decision == "split"
    assert issubclass(kind, FhirValidationFailed)
    other = refusals.classify(
        400, {"resourceType": "OperationOutcome", "issue": [dict(issue, diagnostics="bad", details={})]}
    )
    assert other is FhirValidationFailed


def test_the_limit_settings():
    env = {"PLANBRIDGE_FHIR_MAX_TRANSACTION_ENTRIES": "8", "PLANBRIDGE_FHIR_MAX_TRANSACTION_UPDATES": " 50 "}
    configured = Settings.from_env(env)
    assert (configured.fhir_max_transaction_entries, configured.fhir_max_transaction_updates) == (8, 50)
    assert Settings.from_env({}).fhir_max_transaction_entries is None
    with pytest.raises(Exception, match="PLANBRIDGE_FHIR_MAX_TRANSACTION_UPDATES must be at least 1"):
        Settings.from_env({"PLANBRIDGE_FHIR_MAX_TRANSACTION_UPDATES": "0"})


def test_split_does_not_change_the_bundle_it_is_given():
    bundle = _bundle("cardiac-rehab-checkins.json")
    before = copy.deepcopy(bundle)
    split = split_bundle(bundle, Limits(2, 2))
    _send(split, Server(Limits(2, 2)))
    assert bundle == before
