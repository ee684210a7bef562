"""An incremental pull in three requests against the real local FHIR server (both profiles): its `_lastUpdated`
searches in one `batch`, then the plans, then their check-ins. A search the batch answers only in part is
searched again on its own, following `next` links exactly; a server that refuses batches (simulated with
`responses` in front of the real server) is searched one type a request, remembered, and `fhir check` says so."""

from __future__ import annotations

import json
import logging
import urllib.request
import uuid
from typing import Any

import pytest
import responses
from responses import matchers

from service.api.container import utcnow
from service.devproxy import LatencyProxy
from service.domain import codec
from service.domain.model import Plan
from service.fhir.capabilities import check_server
from service.fhir.client import BatchUnsupported, FhirClient
from service.fhir.errors import FhirError
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.pull import BATCH_RETRY, CURSOR, batch_cursor
from tests.support import FIXTURES, Clock, settings

PLANS = sorted((FIXTURES / "plans").glob("*.json"))
BATCH = [matchers.json_params_matcher({"type": "batch"}, strict_match=False)]


class Logged(FhirClient):
    """planbridge's client, unchanged, noting each request it sends: (method, path, bundle type or None)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, str, str | None]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        body = kwargs.get("json")
        self.sent.append((method, path, body.get("type") if isinstance(body, dict) else None))
        return super().request(method, path, **kwargs)


class World:
    """Plans pushed to the server by one engine; pulls by another whose client goes through a counting proxy."""

    def __init__(self, tmp_path: Any, base_url: str, proxy: LatencyProxy | None = None) -> None:
        self.db = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
        upgrade(self.db)
        self.base_url = base_url
        self.settings = settings(fhir_base_url=base_url)
        self.clock = Clock(utcnow())
        self.pusher = SyncEngine(UnitOfWork(self.db), FhirClient(base_url, timeout=30), self.settings, utcnow)
        self.client = Logged(proxy.url(base_url) if proxy else base_url, timeout=30)
        self.sync = SyncEngine(UnitOfWork(self.db), self.client, self.settings, self.clock)
        self.ehr = FhirClient(base_url, timeout=30)
        self.plans: list[Plan] = []

    def add_plans(self, count: int) -> list[Plan]:
        added = []
        with UnitOfWork(self.db) as uow:
            for i in range(count):
                plan = codec.from_dict(Plan, json.loads(PLANS[(len(self.plans) + i) % len(PLANS)].read_text()))
                plan.id = f"{plan.id}-{uuid.uuid4().hex[:6]}"
                plan.patient.mrn = f"MRN-{uuid.uuid4().hex[:8]}"
                plan.touch(utcnow().isoformat())
                uow.plans.save(plan)
                added.append(plan)
            uow.commit()
        for plan in added:
            assert self.pusher.push(plan.id).status == "in_sync"
        self.plans += added
        return added

    def ehr_edit(self, plan: Plan, reason: str) -> None:
        """A clinician edits the plan's first goal in the EHR."""
        goal = self.ehr.find_one(
            "Goal", {"identifier": f"{self.settings.identifier_base}/goal|{plan.id}/{plan.goals[0].id}"}
        )
        goal["statusReason"] = reason
        self.ehr.request("PUT", f"Goal/{goal['id']}", json=goal)

    def reason(self, plan: Plan) -> str | None:
        with UnitOfWork(self.db) as uow:
            return uow.plans.get(plan.id).goals[0].status_reason

    def cursor(self, name: str) -> str | None:
        with UnitOfWork(self.db) as uow:
            return uow.sync.cursor(name)

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def proxy(fhir_profile_url):
    with LatencyProxy.for_url(fhir_profile_url, 0) as running:
        yield running


@pytest.fixture
def world(tmp_path, fhir_profile_url, proxy):
    made = World(tmp_path, fhir_profile_url, proxy)
    yield made
    made.close()


def test_ten_changed_plans_among_sixty_are_pulled_in_three_requests_on_the_wire(world, proxy):
    world.add_plans(60)
    world.sync.pull_changed()  # the cursor moves past the pushes (planbridge's own versions: nothing to pull)
    changed = world.plans[::6]
    for plan in changed:
        world.ehr_edit(plan, "changed in the EHR")
    world.client.sent.clear()
    wire = proxy.requests

    result = world.sync.pull_changed()

    assert result.outcomes == {plan.id: "updated" for plan in changed}
    assert all(world.reason(plan) == "changed in the EHR" for plan in changed)
    assert (result.requests, proxy.requests - wire) == (3, 3)
    (batch, plans, checkins) = world.client.sent
    assert batch == ("POST", "", "batch")
    assert plans[:2] == ("GET", "CarePlan") and checkins[:2] == ("GET", "Observation")
    # nothing changed since: the batch alone, and the cursor stays where the server's clock left it
    cursor = world.cursor(CURSOR)
    world.client.sent.clear()
    again = world.sync.pull_changed()
    assert (again.outcomes, again.requests, world.client.sent) == ({}, 1, [("POST", "", "batch")])
    assert world.cursor(CURSOR) == cursor


def test_a_search_in_the_batch_that_pages_has_its_next_links_followed_exactly(world):
    """A page size smaller than the changes: the server answers a search inside a batch with its first
    page, its total and a `next` link to the rest (as HAPI does), and the pull follows those links exactly,
    without searching again; nothing is missed and the cursor moves past every change."""
    world.add_plans(6)
    world.sync.pull_changed()
    changed = world.plans[:5]
    for plan in changed:
        world.ehr_edit(plan, "paged")
    world.sync.puller.page_size = 2
    world.client.sent.clear()

    result = world.sync.pull_changed()

    assert result.outcomes == {plan.id: "updated" for plan in changed}
    assert world.client.sent[0] == ("POST", "", "batch")
    later_pages = [path for method, path, _ in world.client.sent if method == "GET" and "_getpages=" in path]
    searched_again = [path for method, path, _ in world.client.sent if method == "GET" and path == "Goal"]
    assert searched_again == []
    # 5 changed Goals, 2 a page: the batch carries the first page, its `next` links the other two
    assert [path.split("_getpagesoffset=")[1].split("&")[0] for path in later_pages] == ["2", "4"]
    assert result.requests == len(world.client.sent) == 1 + 2 + 1 + 1  # batch, 2 pages, plans, check-ins
    assert world.sync.pull_changed().outcomes == {}  # the cursor is past all five


def test_a_server_without_batch_is_searched_one_type_a_request_and_that_is_remembered(
    tmp_path, fhir_profile_url, caplog
):
    world = World(tmp_path, fhir_profile_url)
    try:
        world.add_plans(3)
        world.sync.pull_changed()
        with responses.RequestsMock(assert_all_requests_are_fired=False) as server:
            server.add_passthru(fhir_profile_url)
            refused = server.add(
                responses.POST,
                fhir_profile_url,
                status=405,
                json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]},
                match=BATCH,
            )
            world.ehr_edit(world.plans[1], "no batch here")
            world.client.sent.clear()
            with caplog.at_level(logging.INFO, logger="service.sync.pull"):
                first = world.sync.pull_changed()

            assert first.outcomes == {world.plans[1].id: "updated"}
            assert refused.call_count == 1
            searches = [path for method, path, _ in world.client.sent if method == "GET"]
            # the four searches, what was deleted since (`<Type>/_history`, one a type the plans link), then the
            # plan and its check-ins
            assert searches == [
                "CarePlan",
                "CareTeam",
                "Goal",
                "Observation",
                "Goal/_history",
                "CareTeam/_history",
                "Observation/_history",
                "CarePlan/_history",
                "CarePlan",
                "Observation",
            ]
            assert first.requests == 1 + 4 + 4 + 2
            stored = world.cursor(batch_cursor(fhir_profile_url))
            assert stored is not None and stored.startswith("refused ")
            warned = [r.getMessage() for r in caplog.records if "batch" in r.getMessage()]
            assert warned and "405" in warned[0]
            assert not any(plan.id in m or plan.patient.mrn in m for plan in world.plans for m in warned)

            # remembered: a fresh engine (another process) sends no batch, and pulls the next change
            world.sync = SyncEngine(UnitOfWork(world.db), world.client, world.settings, world.clock)
            world.ehr_edit(world.plans[2], "still no batch")
            second = world.sync.pull_changed()
            assert second.outcomes == {world.plans[2].id: "updated"}
            assert (refused.call_count, second.requests) == (1, 4 + 4 + 2)

            # `fhir check` names the gap and what pulls do without it
            checked = check_server(world.client, world.client.capabilities())
            batch = checked.features["batch"]
            assert (batch.ok, batch.required) == (False, False) and "405" in batch.detail
            assert "one `batch` request" in batch.without_it and "search of its own" in batch.without_it
            assert not any(gap.startswith("batch") for gap in checked.missing())

            # a day later a pull tries a batch again; the server takes it now, and that is remembered too
            server.remove(refused)
            world.clock.now += BATCH_RETRY
            world.client.sent.clear()
            third = world.sync.pull_changed()
            assert (third.outcomes, third.requests, world.client.sent) == ({}, 1, [("POST", "", "batch")])
            assert world.cursor(batch_cursor(fhir_profile_url)).startswith("accepted ")
    finally:
        world.close()


def _forward(base_url: str, body: bytes) -> dict[str, Any]:
    """POST a Bundle to the real server past `responses` (urllib, not requests)."""
    sent = urllib.request.Request(base_url, data=body, headers={"Content-Type": "application/fhir+json"})
    with urllib.request.urlopen(sent, timeout=30) as answer:
        return json.loads(answer.read())


def test_a_search_the_batch_answers_with_an_error_is_never_taken_for_no_changes(tmp_path, fhir_profile_url):
    world = World(tmp_path, fhir_profile_url)
    try:
        world.add_plans(2)
        world.sync.pull_changed()
        cursor = world.cursor(CURSOR)
        world.ehr_edit(world.plans[0], "behind an error")

        def goal_search_fails(request: Any) -> tuple[int, dict[str, str], str]:
            body = request.body if isinstance(request.body, bytes) else request.body.encode()
            answer = _forward(fhir_profile_url, body)
            asked = json.loads(request.body)["entry"]
            for entry, result in zip(asked, answer["entry"], strict=True):
                if entry["request"]["url"].startswith("Goal?"):
                    outcome = {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "too-costly"}],
                    }
                    result.clear()
                    result["response"] = {"status": "400 Bad Request", "outcome": outcome}
            return 200, {"Content-Type": "application/fhir+json"}, json.dumps(answer)

        with responses.RequestsMock(assert_all_requests_are_fired=False) as server:
            server.add_passthru(fhir_profile_url)
            server.add_callback(responses.POST, fhir_profile_url, callback=goal_search_fails, match=BATCH)
            # the Goal search on its own fails too: the pull fails, nothing is merged, the cursor stays
            server.add(responses.GET, f"{fhir_profile_url}/Goal", status=400, json={"resourceType": "OperationOutcome"})
            with pytest.raises(FhirError):
                world.sync.pull_changed()
            assert world.cursor(CURSOR) == cursor and world.reason(world.plans[0]) != "behind an error"

            # on its own the Goal search works: the change is found, though the batch still fails that entry
            server.remove(responses.GET, f"{fhir_profile_url}/Goal")
            world.client.sent.clear()
            result = world.sync.pull_changed()
        assert result.outcomes == {world.plans[0].id: "updated"}
        assert world.reason(world.plans[0]) == "behind an error" and world.cursor(CURSOR) != cursor
        assert [(m, p) for m, p, _ in world.client.sent][:2] == [("POST", ""), ("GET", "Goal")]
        assert world.cursor(batch_cursor(fhir_profile_url)) is None  # the server takes batches: nothing to remember
    finally:
        world.close()


@responses.activate
def test_search_batch_follows_next_links_exactly_and_flags_what_it_cannot_trust():
    base = "http://fhir.example.test/r4"
    page2 = f"{base}?_getpages=b1e2&_getpagesoffset=2&_count=2&_bundletype=searchset"
    goal = {"resourceType": "Goal", "id": "g"}
    first_page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 3,
        "link": [{"relation": "next", "url": page2}],
        "entry": [{"resource": goal | {"id": "1"}, "search": {"mode": "match"}}] * 2,
    }
    short = {"resourceType": "Bundle", "type": "searchset", "total": 9, "entry": [{"resource": goal}]}
    full = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": goal}] * 2}
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    batch = responses.post(
        base,
        json={
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                {"response": {"status": "200 OK"}, "resource": first_page},
                {"response": {"status": "400 Bad Request"}},
                {"response": {"status": "200 OK"}, "resource": short},
                {"response": {"status": "200"}, "resource": full},
                {"response": {"status": "200 OK"}, "resource": empty},
                {"response": {"status": "200 OK"}, "resource": full},
            ],
        },
    )
    last = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": goal | {"id": "3"}}]}
    followed = responses.get(page2, json=last, match=[matchers.query_string_matcher(page2.split("?")[1])])
    client = FhirClient(base, sleep=lambda _: None)

    found = client.search_batch(
        [
            ("Goal", {"identifier": "https://x.test/id/goal|", "_lastUpdated": "gt2026-01-01T00:00:00+01:00"}),
            ("CarePlan", {"_id": "1,2"}),
            ("CareTeam", {"_count": "1"}),
            ("Observation", {"_count": "2"}),
            ("Goal", {"_id": "7", "_count": "1"}),
            ("Goal", {"_id": "7,8", "_count": "2"}),  # as full as `_count`, but every id asked for is there
        ]
    )

    assert [len(f) if f is not None else None for f in found] == [3, None, None, None, 0, 2]
    assert followed.call_count == 1 and client.requests_sent == 2
    sent = json.loads(batch.calls[0].request.body)
    assert sent["type"] == "batch"
    # the query is encoded as a GET's would be: `|`, `:` and `+` survive the trip
    assert sent["entry"][0]["request"] == {
        "method": "GET",
        "url": "Goal?identifier=https%3A%2F%2Fx.test%2Fid%2Fgoal%7C&_lastUpdated=gt2026-01-01T00%3A00%3A00%2B01%3A00",
    }


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 405, "json": {"resourceType": "OperationOutcome"}},
        {"status": 501, "body": "not implemented"},
        {"status": 200, "json": {"resourceType": "Bundle", "type": "transaction-response", "entry": [{}]}},
        {"status": 200, "json": {"resourceType": "Bundle", "type": "batch-response", "entry": []}},
    ],
    ids=["405", "501", "not-a-batch-response", "entries-missing"],
)
@responses.activate
def test_a_server_that_does_not_do_batch_is_told_apart_from_one_that_failed(answer):
    base = "http://fhir.example.test/r4"
    responses.post(base, **answer)
    with pytest.raises(BatchUnsupported):
        FhirClient(base, sleep=lambda _: None).search_batch([("Goal", {"_count": "1"})])


@responses.activate
def test_a_batch_the_server_fails_for_another_reason_fails_the_pull():
    base = "http://fhir.example.test/r4"
    responses.post(base, status=403, json={"resourceType": "OperationOutcome"})
    with pytest.raises(FhirError) as raised:
        FhirClient(base, sleep=lambda _: None).search_batch([("Goal", {"_count": "1"})])
    assert raised.value.status == 403 and not isinstance(raised.value, BatchUnsupported)
