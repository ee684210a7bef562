"""A plan's history (`GET /plans/{id}/history`) and the FHIR Provenance every writing push leaves, end to end:
signed team events, pushes and an EHR edit on the real local FHIR server, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest

from service.api.app import create_app
from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.signing import new_secret
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.provenance import PARTICIPANT_TYPE
from tests.support import FIXTURES, SECRET, settings, signed

KEY = "history-key-0123456789abcdef"
DIETETICS = new_secret()


class Recording(FhirClient):
    """The FHIR client, keeping every transaction Bundle it sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bundles: list[dict[str, Any]] = []

    def transaction(self, bundle: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        self.bundles.append(copy.deepcopy(bundle))
        return super().transaction(bundle, idempotent=idempotent)


class Team:
    """planbridge on one database and FHIR server, and the team systems (`default`, `dietetics`) that post to it."""

    def __init__(self, engine: Any, base_url: str) -> None:
        self.engine = engine
        self.settings = settings(
            fhir_base_url=base_url, api_keys=(KEY,), webhook_senders=(("dietetics", (DIETETICS,)),)
        )
        self.http = create_app(self.settings, engine).test_client()
        self.client = Recording(base_url, timeout=10)
        self.sync = SyncEngine(UnitOfWork(engine), self.client, self.settings, utcnow)
        self.ehr = FhirClient(base_url, timeout=10)
        self.plan_id = f"plan-{uuid.uuid4().hex[:10]}"
        self.mrn = f"MRN-{uuid.uuid4().hex[:10]}"
        self.npi = {"gp": uuid.uuid4().hex[:10], "dietitian": uuid.uuid4().hex[:10]}

    def post(self, event_type: str, data: dict[str, Any], secret: str = SECRET) -> str:
        event_id = f"msg_{uuid.uuid4().hex}"
        raw = json.dumps({"type": event_type, "timestamp": utcnow().isoformat(), "data": data}).encode()
        answer = self.http.post("/webhooks/team", data=raw, headers=signed(raw, secret, event_id))
        assert answer.status_code == 202, answer.get_json()
        return event_id

    def fixture(self, name: str) -> dict[str, Any]:
        data = copy.deepcopy(json.loads((FIXTURES / "events" / name).read_text())["data"])
        data["plan_id"] = self.plan_id
        if "patient" in data:
            data["patient"]["mrn"] = self.mrn
        return data

    def start(self) -> list[str]:
        """Post plan.created (default), member.joined and agreement (dietetics), goal.proposed (default)."""
        created = self.fixture("plan-created.json")
        created["author"]["identifier"]["value"] = self.npi["gp"]
        joined = self.fixture("member-joined.json")
        joined["identifier"]["value"] = self.npi["dietitian"]
        goal = self.fixture("goal-proposed.json")
        agreement = self.fixture("agreement-recorded.json") | {"member_id": "dietitian"}
        return [
            self.post("plan.created", created),
            self.post("member.joined", joined, DIETETICS),
            self.post("goal.proposed", goal),
            self.post("agreement.recorded", agreement, DIETETICS),
        ]

    def history(self, query: str = "", plan_id: str | None = None) -> Any:
        return self.http.get(f"/plans/{plan_id or self.plan_id}/history{query}", headers={"X-API-Key": KEY})

    def links(self) -> dict[str, str]:
        with UnitOfWork(self.engine) as uow:
            return {link.local_key: f"{link.resource_type}/{link.fhir_id}" for link in uow.links.for_plan(self.plan_id)}

    def provenances(self) -> list[dict[str, Any]]:
        """The Provenances on the server naming this plan's CarePlan, oldest first."""
        found = self.ehr.search("Provenance", {"target": self.links()["careplan"]})
        return sorted(found, key=lambda p: int(p["id"]))


def _devices(provenance: dict[str, Any], kind: str) -> list[str]:
    return [
        a["who"]["identifier"]["value"]
        for a in provenance["agent"]
        if a["who"].get("type") == "Device" and a["who"]["identifier"]["system"].endswith(f"/{kind}")
    ]


def _authors(provenance: dict[str, Any]) -> set[str]:
    return {
        a["who"]["reference"]
        for a in provenance["agent"]
        if a["type"]["coding"] == [{"system": PARTICIPANT_TYPE, "code": "author"}]
    }


def test_history_lists_team_events_and_an_ehr_edit_in_order_with_the_paths_they_changed(database, fhir_base_url):
    engine, _url = database
    team = Team(engine, fhir_base_url)
    events = team.start()
    assert team.sync.push(team.plan_id).status == "in_sync"

    # A clinician retitles the CarePlan in the EHR; the pull brings it back as a change of the plan.
    careplan_ref = team.links()["careplan"]
    careplan = team.ehr.read(*careplan_ref.split("/"))
    careplan["title"] = "Back to everyday life, step by step"
    team.ehr.request("PUT", careplan_ref, json=careplan, headers={"If-Match": f'W/"{careplan["meta"]["versionId"]}"'})
    pulled = team.http.post(f"/plans/{team.plan_id}/sync", json={"direction": "pull"}, headers={"X-API-Key": KEY})
    assert pulled.status_code == 200 and pulled.get_json()["outcome"] == "updated", pulled.get_json()

    answer = team.history()
    assert answer.status_code == 200 and "Link" not in answer.headers
    entries = answer.get_json()
    assert [(e["sequence"], e["source"], e["event_type"]) for e in entries] == [
        (1, "team", "plan.created"),
        (2, "team", "member.joined"),
        (3, "team", "goal.proposed"),
        (4, "team", "agreement.recorded"),
        (5, "ehr", "ehr.plan_changed"),
    ]
    assert [e["plan_version"] for e in entries] == [1, 2, 3, 4, 5]
    assert [e["team"] and e["team"]["event_id"] for e in entries[:4]] == events
    assert [e["team"]["sender"] for e in entries[:4]] == ["default", "dietetics", "default", "dietetics"]
    # The members each event named: the plan's author, the one who joined, the patient proposing, the one agreeing.
    assert [e["team"]["members"] for e in entries[:4]] == [["gp"], ["dietitian"], ["patient"], ["dietitian"]]
    assert entries[0]["paths"] == ["*"]
    assert "team[id=dietitian]" in entries[1]["paths"]
    assert entries[2]["paths"] == ["goals"]  # the first goal: the list was empty
    assert entries[3]["paths"] == ["goals[id=goal-walk].agreements"]  # its first agreement
    ehr = entries[4]
    assert ehr["team"] is None and ehr["paths"] == ["title"] and ehr["paths_total"] == 1
    version = team.ehr.read(*careplan_ref.split("/"))["meta"]["versionId"]
    assert ehr["ehr"] == {
        "resource_type": "CarePlan",
        "resource_id": careplan_ref.split("/")[1],
        "resource_version": version,
        "outcome": "updated",
    }
    assert all(e["at"].endswith("Z") for e in entries)
    # No value of the plan is in the history: not the title, the patient's MRN or the goal's words.
    text = json.dumps(entries)
    assert careplan["title"] not in text and team.mrn not in text and "Walk to the park" not in text

    # A page at a time: Link rel=next carries the cursor.
    first = team.history("?limit=2")
    assert [e["sequence"] for e in first.get_json()] == [1, 2]
    assert first.headers["Link"] == f'</plans/{team.plan_id}/history?limit=2&after=2>; rel="next"'
    assert [e["sequence"] for e in team.history("?limit=2&after=2").get_json()] == [3, 4]
    last = team.history("?limit=2&after=4")
    assert [e["sequence"] for e in last.get_json()] == [5] and "Link" not in last.headers
    assert team.history("?after=5").get_json() == []
    assert [e["sequence"] for e in team.history("?limit=1000").get_json()] == [1, 2, 3, 4, 5]  # the largest page

    for bad in ("?limit=0", "?limit=1001", "?after=-1", "?limit=x", "?after=%D9%A1"):
        refused = team.history(bad)
        assert refused.status_code == 400 and refused.mimetype == "application/problem+json", bad
        assert refused.get_json()["type"] == "urn:planbridge:problem:invalid-input"
        assert set(refused.get_json()["errors"]) <= {"limit", "after"}
    missing = team.history(plan_id="plan-nobody-has")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert missing.get_json()["type"] == "urn:planbridge:problem:not-found"
    assert team.http.get(f"/plans/{team.plan_id}/history").status_code == 401


def test_every_writing_push_leaves_one_provenance_naming_what_it_wrote_and_who_said_it(tmp_path, fhir_profile_url):
    from service.store.db import create_engine, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    team = Team(engine, fhir_profile_url)
    team.start()
    first = team.sync.push(team.plan_id)
    assert first.status == "in_sync" and first.requests == 2  # the Patient lookup, one transaction
    assert len(team.client.bundles) == 1

    links = team.links()
    [provenance] = team.provenances()
    # Its targets are every resource the push wrote (the Patient, both people, the CareTeam, the Goal, the
    # CarePlan), by the ids the server gave them.
    assert sorted(t["reference"] for t in provenance["target"]) == sorted(links.values())
    assert _devices(provenance, "device") == ["planbridge"]
    assert _devices(provenance, "sender") == ["default", "dietetics"]
    people = {key: ref for key, ref in links.items() if key.startswith("person:")}
    assert _authors(provenance) == {links["patient"], people[f"person:{team.npi['gp']}"]} | {
        people[f"person:{team.npi['dietitian']}"]
    }
    assert "display" not in json.dumps(provenance["agent"])  # references and identifiers only

    # The next change, from dietetics alone, naming nobody: its push's Provenance says just that.
    team.post("goal.status_changed", team.fixture("goal-status-changed.json"), DIETETICS)
    assert team.sync.push(team.plan_id).status == "in_sync"
    older, newer = team.provenances()
    assert older["id"] == provenance["id"]
    assert _devices(newer, "sender") == ["dietetics"] and _authors(newer) == set()
    assert links["goal:goal-walk"] in {t["reference"] for t in newer["target"]}

    # A push that writes nothing writes no Provenance.
    assert team.sync.push(team.plan_id).requests == 0
    assert len(team.provenances()) == 2


def test_a_split_push_puts_its_provenance_in_the_last_transaction_naming_earlier_writes_by_id(database, fhir_base_url):
    engine, _url = database
    team = Team(engine, fhir_base_url)
    team.start()
    for n in range(6):  # 2 people, the Patient, the CareTeam, 7 Goals and the CarePlan: over Medplum's 8
        goal = team.fixture("goal-proposed.json")
        npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": team.npi["dietitian"]}
        goal["goal"] |= {"id": f"goal-{n}", "proposed_by": {"kind": "practitioner", "identifier": npi}}
        team.post("goal.proposed", goal, DIETETICS)
    assert team.sync.push(team.plan_id).status == "in_sync"

    bundles = team.client.bundles
    assert len(bundles) > 1
    kinds = [[e["resource"]["resourceType"] for e in b["entry"]] for b in bundles]
    assert all("Provenance" not in k for k in kinds[:-1]) and kinds[-1].count("Provenance") == 1
    sent = next(e["resource"] for e in bundles[-1]["entry"] if e["resource"]["resourceType"] == "Provenance")
    in_last = {e["fullUrl"] for e in bundles[-1]["entry"]}
    for target in sent["target"]:  # by urn:uuid only what the same transaction writes, else by Type/id
        assert target["reference"] in in_last or not target["reference"].startswith("urn:")

    [provenance] = team.provenances()
    assert sorted(t["reference"] for t in provenance["target"]) == sorted(team.links().values())
    assert len(provenance["target"]) == 12
    assert _devices(provenance, "sender") == ["default", "dietetics"]
    assert len(_authors(provenance)) == 3  # the plan's author, the dietitian, the patient


@pytest.mark.parametrize("path", ["/plans/%00/history", "/plans/x%20y/history"])
def test_history_of_what_is_not_a_plan_id_is_a_404_problem(tmp_path, path):
    from service.store.db import create_engine, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    http = create_app(settings(api_keys=(KEY,)), engine).test_client()
    answer = http.get(path, headers={"X-API-Key": KEY})
    assert answer.status_code == 404 and answer.mimetype == "application/problem+json"
