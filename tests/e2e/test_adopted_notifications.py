"""EHR edits to adopted plans are notified (issue #13's last gap), on the real local FHIR server (both profiles).

An adopted plan's resources carry no planbridge identifier, so the identifier criteria of `planbridge
subscribe` never match them. Adopting (the API, `plans adopt`, `sync pull --patient`) writes Subscriptions
by subject for the adopted plan's patient; the server then notifies planbridge of the EHR's edits over real
HTTP, and the notification queues a pull of that plan. Periodic resyncs are off and no pull is run by hand:
only the notification can explain what the plan shows.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
import requests
from click.testing import CliRunner
from werkzeug.serving import make_server

from service.api.app import create_app
from service.api.container import utcnow
from service.cli_plans import plans
from service.cli_sync import subscribe, sync
from service.fhir.client import FhirClient
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork
from service.sync import subscriptions
from service.sync.worker import OutboxWorker
from tests.e2e.test_adoption import OID, Ehr
from tests.support import settings

KEY = "adopted-notify-key-0123456789abcdef"
NOTIFY = "adopted-notify-setting-0123456789abcdef"


class Planbridge:
    """planbridge served over HTTP on its own SQLite database (its public URL is where it listens), with an
    outbox worker run by hand; no periodic resync."""

    def __init__(self, db_url: str, fhir_url: str, **overrides) -> None:
        self.db_url, self.engine = db_url, create_engine(db_url)
        values = {"fhir_notify_secret": NOTIFY, **overrides}
        config = settings(
            fhir_base_url=fhir_url, mrn_system=OID, api_keys=(KEY,), create_patients=False, resync_seconds=0, **values
        )
        app = create_app(config, self.engine)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.settings = replace(config, public_url=self.url)
        app.extensions["planbridge"].settings = self.settings
        self.fhir = FhirClient(fhir_url, timeout=10)
        self.worker = OutboxWorker(UnitOfWork(self.engine), self.fhir, self.settings, utcnow)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def adopt(self, body: dict) -> dict:
        answer = requests.post(f"{self.url}/plans/adopt", json=body, headers={"X-API-Key": KEY}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def cli(self, command, *args: str) -> dict | list:
        env = {
            "DATABASE_URL": self.db_url,
            "FHIR_BASE_URL": self.settings.fhir_base_url or "",
            "PLANBRIDGE_MRN_SYSTEM": OID,
            "PLANBRIDGE_CREATE_PATIENTS": "false",
            "PLANBRIDGE_IDENTIFIER_BASE": self.settings.identifier_base,
            "PLANBRIDGE_FHIR_NOTIFY_SECRET": NOTIFY,
            "PLANBRIDGE_PUBLIC_URL": self.url,
        }
        result = CliRunner().invoke(command, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def plan(self, plan_id: str):
        with UnitOfWork(self.engine) as uow:
            return uow.plans.get(plan_id)

    def pending(self) -> list[tuple[str, str]]:
        with UnitOfWork(self.engine) as uow:
            return [(row.kind, row.plan_id) for row in uow.outbox.list(status="pending")]

    def ours(self) -> list[dict]:
        return subscriptions._ours(self.fhir, self.settings)

    def wait_active(self, count: int) -> list[dict]:
        """Wait until the server activated `count` Subscriptions of ours (it does so right after the write)."""
        deadline = time.monotonic() + 5
        while True:
            held = self.ours()
            if [s["status"] for s in held] == ["active"] * count or time.monotonic() > deadline:
                assert [s["status"] for s in held] == ["active"] * count, held
                return held
            time.sleep(0.05)

    def settle(self) -> None:
        """Let the echoes of what planbridge itself did arrive and be handled, until nothing is waiting."""
        deadline, quiet = time.monotonic() + 5, 0
        while time.monotonic() < deadline and quiet < 3:
            quiet = quiet + 1 if not self.worker.run_until_idle() else 0
            time.sleep(0.1)

    def notified_pull(self, plan_id: str) -> None:
        """Wait for a notification to queue a pull of this plan (nothing else queues one here), then run it."""
        deadline = time.monotonic() + 10
        while ("pull_plan", plan_id) not in self.pending():
            assert time.monotonic() < deadline, f"no notification queued a pull of {plan_id}: {self.pending()}"
            time.sleep(0.05)
        self.worker.run_until_idle()

    def close(self) -> None:
        for held in self.ours():
            self.fhir.request("DELETE", f"Subscription/{held['id']}")
        self.server.shutdown()
        self.engine.dispose()


@pytest.fixture
def pb(tmp_path, fhir_profile_url):
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    service = Planbridge(url, fhir_profile_url)
    yield service
    service.close()


def test_ehr_edits_to_an_adopted_plan_are_notified_and_pulled_and_readoption_adds_no_subscription(pb):
    ehr = Ehr(pb.settings.fhir_base_url or "")
    plan_id, patient = f"careplan-{ehr.a['id']}", f"Patient/{ehr.patient['id']}"
    walk = f"goal-{ehr.walk['id']}"

    adopted = pb.adopt({"careplan": f"CarePlan/{ehr.a['id']}"})
    assert adopted["adopted"] == [{"plan_id": plan_id, "outcome": "new"}]
    followed = adopted["notifications"]
    assert (followed["subscribed"], followed["patients"], followed["detail"]) == (True, [patient], None)
    assert len(followed["subscriptions"]) == 4
    held = pb.wait_active(4)
    assert sorted(s["criteria"] for s in held) == sorted(
        f"{t}?subject={patient}" for t in ("CarePlan", "CareTeam", "Goal", "Observation")
    )
    assert {f"Subscription/{s['id']}" for s in held} == set(followed["subscriptions"])
    pb.settle()
    assert pb.pending() == []

    # The EHR puts the Goal on hold: the server notifies, the notification queues the plan's pull.
    ehr.edit(ehr.walk, lifecycleStatus="on-hold")
    pb.notified_pull(plan_id)
    assert pb.plan(plan_id).goal(walk).lifecycle_status == "on-hold"

    # A check-in Observation the EHR corrects (Observations are watched for adopted plans only).
    ehr.edit(ehr.steps[0], valueQuantity={"value": 4200, "unit": "/d"})
    pb.notified_pull(plan_id)
    values = [float(c.quantity.value) for c in pb.plan(plan_id).goal(walk).check_ins if c.quantity]
    assert 4200 in values

    # Adopting again, by every entry point, finds the Subscriptions: none is added, none rewritten.
    versions = {s["id"]: s["meta"]["versionId"] for s in pb.ours()}
    again = pb.adopt({"patient_mrn": ehr.mrn})
    assert again["notifications"]["subscriptions"] == followed["subscriptions"]
    by_cli = pb.cli(plans, "adopt", "--careplan", ehr.a["id"])
    assert by_cli["notifications"]["subscriptions"] == followed["subscriptions"]
    pulled = pb.cli(sync, "pull", "--patient", ehr.mrn)
    assert pulled["outcomes"][plan_id] == "unchanged" and pulled["notifications"]["subscribed"] is True
    assert {s["id"]: s["meta"]["versionId"] for s in pb.ours()} == versions

    # `planbridge subscribe --rotate` rewrites them with the others (new secrets); `--status` lists them.
    pb.settle()
    rotated = pb.cli(subscribe, "--rotate")
    assert {s["secret_generation"] for s in rotated} == {1}
    assert sorted(s["adopted_patient"] for s in rotated if s["adopted_patient"]) == [patient] * 4
    assert len(rotated) == 7 and {s["id"] for s in rotated} >= set(versions)
    shown = pb.cli(subscribe, "--status")
    assert sorted(s["criteria"] for s in shown if s["adopted_patient"] == patient) == sorted(
        s["criteria"] for s in held
    )
    assert {s["secret_generation"] for s in shown} == {1}
    pb.wait_active(7)
    with UnitOfWork(pb.engine) as uow:  # the previous generation's grace is over: only the new secrets open
        uow.sync.set_cursor(subscriptions.PREVIOUS, f"0|{utcnow().isoformat()}")
        uow.commit()

    ehr.edit(ehr.a, title="Cardiac rehabilitation, phase 2")
    pb.notified_pull(plan_id)
    assert pb.plan(plan_id).title == "Cardiac rehabilitation, phase 2"
    assert len(pb.ours()) == 7


def test_adoption_without_a_notify_secret_adopts_and_says_nothing_is_subscribed(tmp_path, fhir_base_url):
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    pb = Planbridge(url, fhir_base_url, fhir_notify_secret=None)
    try:
        ehr = Ehr(fhir_base_url)
        answer = pb.adopt({"patient_mrn": ehr.mrn})
        assert [a["outcome"] for a in answer["adopted"]] == ["new", "new"]
        followed = answer["notifications"]
        assert (followed["subscribed"], followed["subscriptions"]) == (False, [])
        assert "PLANBRIDGE_FHIR_NOTIFY_SECRET is not set" in followed["detail"]
        assert pb.ours() == []
    finally:
        pb.close()


def test_a_notification_for_an_adopted_observation_needs_the_observation_secret(tmp_path, fhir_base_url):
    """The new Subscriptions' secrets authenticate their own type only, Observation included."""
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    pb = Planbridge(url, fhir_base_url)
    try:
        ehr = Ehr(fhir_base_url)
        pb.adopt({"careplan": ehr.b["id"]})
        held = {s["criteria"].split("?")[0]: s["channel"]["header"][0].split(":", 1)[1].strip() for s in pb.ours()}
        assert set(held) == {"CarePlan", "CareTeam", "Goal", "Observation"}
        observation = ehr.read(ehr.weight[0])

        def put(secret: str) -> int:
            return requests.put(
                f"{pb.url}/fhir-notifications/Observation/{observation['id']}",
                data=json.dumps(observation),
                headers={"X-Planbridge-Notify-Secret": secret, "Content-Type": "application/fhir+json"},
                timeout=10,
            ).status_code

        assert put(held["Goal"]) == 401
        assert put(held["Observation"]) == 200
    finally:
        pb.close()


def test_a_server_that_refuses_the_subscriptions_leaves_the_adoption_done_and_says_why(tmp_path, fhir_base_url):
    """follow_adopted never raises: a FHIR error writing the Subscriptions is reported in the answer."""
    url = f"sqlite:///{tmp_path / 'planbridge.db'}"
    upgrade(create_engine(url))
    pb = Planbridge(url, fhir_base_url)
    try:
        ehr = Ehr(fhir_base_url)
        plan_id = f"careplan-{ehr.b['id']}"
        assert pb.cli(sync, "pull", "--patient", ehr.mrn)["outcomes"][plan_id] == "new"
        for held in pb.ours():  # made by the pull: start again without them
            pb.fhir.request("DELETE", f"Subscription/{held['id']}")
        refusing = FhirClient(f"{fhir_base_url}/not-a-base", timeout=10, max_retries=0)
        answer = subscriptions.follow_adopted(UnitOfWork(pb.engine), refusing, pb.settings, [plan_id])
        assert (answer["subscribed"], answer["subscriptions"]) == (False, [])
        assert answer["detail"].startswith("not every Subscription was written")
        assert pb.plan(plan_id) is not None and pb.ours() == []
    finally:
        pb.close()
