"""Nothing accepted is lost, nothing is pushed twice: FHIR outages, killed workers, racing workers, duplicates."""

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.store.tables import InboundEventRow, OutboxRow
from service.store.uow import UnitOfWork
from service.sync.worker import OutboxWorker
from tests.cli_support import run_planbridge
from tests.live import Live
from tests.support import goal_event, signed

BIN = Path(sys.executable).parent / "planbridge"
DEAD_FHIR = "http://127.0.0.1:9/baseR4"  # nothing listens on the discard port


def goals_on_server(client: FhirClient, base: str) -> list[str]:
    found = client.search("Goal", {"identifier": f"{base}/goal|", "_count": "500"})
    return [i["value"] for g in found for i in g["identifier"] if i["system"] == f"{base}/goal"]


def make_due(engine) -> None:
    """Let backoff pass: every pending entry is due now."""
    with engine.begin() as conn:
        conn.execute(sa.update(OutboxRow).where(OutboxRow.status == "pending").values(next_attempt_at=utcnow()))


@pytest.fixture
def live(engine, fhir_base_url):
    service = Live(engine, fhir_base_url)
    yield service
    service.close()


def test_events_arriving_while_the_fhir_server_is_down_are_all_synced_once_when_it_is_back(live, fhir_base_url):
    live.worker.client = FhirClient(DEAD_FHIR, timeout=2, max_retries=0)
    live.worker.engine.pusher.client = live.worker.engine.puller.client = live.worker.client
    plans = [f"plan-{uuid.uuid4().hex[:8]}" for _ in range(100)]
    with requests.Session() as session:
        for i in range(500):  # 500 events: 5 goals on each of 100 plans
            answer = live.post(
                goal_event(plan_id=plans[i % 100], goal_id=f"g{i // 100}", mrn=f"MRN-{plans[i % 100]}"), session=session
            )
            assert answer.status_code == 202, answer.text
    frozen = utcnow()
    live.worker.clock = lambda: frozen  # no backoff runs out while the server is down
    # Each plan's first push is tried once and kept; its later pushes wait out that push's backoff
    # instead of meeting the outage once per event.
    assert live.worker.run_until_idle() == 100
    with UnitOfWork(live.engine) as uow:
        entries = uow.outbox.list(limit=1000)
    assert Counter((e.status, e.attempts) for e in entries) == {("pending", 1): 100, ("pending", 0): 400}
    assert all("FhirTransportError" in e.last_error for e in entries if e.attempts)

    back = FhirClient(fhir_base_url, timeout=10)
    live.worker.client = live.worker.engine.pusher.client = live.worker.engine.puller.client = back
    live.worker.clock = utcnow
    make_due(live.engine)
    live.worker.run_until_idle()
    with UnitOfWork(live.engine) as uow:
        assert {e.status for e in uow.outbox.list()} == {"done"}
    values = goals_on_server(back, live.settings.identifier_base)
    assert len(values) == 500 and len(set(values)) == 500  # all there, none twice


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(live, database, fhir_base_url):
    _, url = database
    for _ in range(40):
        assert live.post(goal_event(plan_id=f"plan-{uuid.uuid4().hex[:8]}")).status_code == 202
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=url,
        FHIR_BASE_URL=fhir_base_url,
        PLANBRIDGE_CREATE_PATIENTS="true",
        PLANBRIDGE_IDENTIFIER_BASE=live.settings.identifier_base,
        PLANBRIDGE_OUTBOX_LEASE_SECONDS="1",
        PLANBRIDGE_WORKER_POLL_SECONDS="0.1",
        PLANBRIDGE_MRN_SYSTEM=live.settings.mrn_system,
    )
    worker = subprocess.Popen([str(BIN), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    done = 0
    while done < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
        with live.engine.connect() as conn:
            done = conn.execute(sa.select(sa.func.count()).where(OutboxRow.status == "done")).scalar_one()
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    with live.engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).where(OutboxRow.status == "pending")).scalar_one()
    assert done >= 5 and left > 0, "the worker should have been killed part way"
    time.sleep(1.1)  # the lease of an entry taken at the moment of the kill runs out
    restarted = run_planbridge(["worker", "--once"], env=env, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    with UnitOfWork(live.engine) as uow:
        assert {e.status for e in uow.outbox.list()} == {"done"}
    values = goals_on_server(FhirClient(fhir_base_url), live.settings.identifier_base)
    assert len(values) == 40 and len(set(values)) == 40


def test_two_workers_on_postgres_never_take_the_same_entry(postgres, fhir_base_url):
    """SQLite runs one worker (documented); several workers share PostgreSQL through SKIP LOCKED."""
    engine, _ = postgres
    live = Live(engine, fhir_base_url)
    try:
        for _ in range(40):
            live.post(goal_event(plan_id=f"plan-{uuid.uuid4().hex[:8]}"))
        taken: list[list[int]] = [[], []]

        def drain(n: int) -> None:
            worker = OutboxWorker(UnitOfWork(engine), FhirClient(fhir_base_url, timeout=10), live.settings, utcnow)
            original = worker._claim

            def claim():
                claimed = original()
                if claimed is not None:
                    taken[n].append(claimed[0])
                return claimed

            worker._claim = claim
            worker.run_until_idle()

        threads = [threading.Thread(target=drain, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert taken[0] and taken[1], "both workers should have had work"
        assert not set(taken[0]) & set(taken[1])
        assert sorted(taken[0] + taken[1]) == sorted(set(taken[0] + taken[1]))
        with UnitOfWork(engine) as uow:
            assert {(e.status, e.attempts) for e in uow.outbox.list()} == {("done", 1)}
    finally:
        live.close()


def test_two_workers_on_postgres_never_work_on_one_plan_at_once(postgres, fhir_base_url):
    engine, _ = postgres
    live = Live(engine, fhir_base_url)
    try:
        plans = [(f"plan-{uuid.uuid4().hex[:8]}", f"MRN-{uuid.uuid4().hex[:8]}") for _ in range(3)]
        for n in range(8):  # eight goals for each of three plans: 24 pushes queued
            for plan_id, mrn in plans:
                assert live.post(goal_event(plan_id=plan_id, goal_id=f"goal-{n}", mrn=mrn)).status_code == 202
        spans: list[tuple[str, float, float]] = []

        def drain() -> None:
            worker = OutboxWorker(UnitOfWork(engine), FhirClient(fhir_base_url, timeout=10), live.settings, utcnow)
            run = worker._run

            def timed(kind: str, plan_id: str, on_recorded=None) -> None:
                started = time.monotonic()
                run(kind, plan_id, on_recorded)
                spans.append((plan_id, started, time.monotonic()))

            worker._run = timed
            worker.run_until_idle()

        threads = [threading.Thread(target=drain) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(spans) >= 3
        for plan_id, _mrn in plans:
            mine = sorted((a, b) for p, a, b in spans if p == plan_id)
            assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(mine))
        with UnitOfWork(engine) as uow:
            assert {e.status for e in uow.outbox.list()} == {"done"}
            assert all(len(uow.plans.get(p).goals) == 8 for p, _ in plans)
        for plan_id, _mrn in plans:  # and the server has every goal of every plan, once
            found = FhirClient(fhir_base_url).search("Goal", {"identifier": f"{live.settings.identifier_base}/goal|"})
            assert len([g for g in found if any(plan_id in i.get("value", "") for i in g["identifier"])]) == 8
    finally:
        live.close()


def test_fifty_concurrent_duplicates_are_applied_once(live):
    event = goal_event()
    body = json.dumps(event).encode()
    headers = signed(body, msg_id=f"msg_{uuid.uuid4().hex}")
    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(
            pool.map(
                lambda _: requests.post(f"{live.url}/webhooks/team", data=body, headers=headers, timeout=60), range(50)
            )
        )
    assert {a.status_code for a in answers} == {202}
    assert len({a.text for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 49
    assert live.count(InboundEventRow.__table__) == 1
    assert live.count(OutboxRow.__table__) == 1


def test_a_stale_or_future_signature_is_refused_and_stores_nothing(live):
    body = json.dumps(goal_event()).encode()
    for offset in (timedelta(minutes=-6), timedelta(minutes=6)):
        answer = requests.post(
            f"{live.url}/webhooks/team", data=body, headers=signed(body, at=utcnow() + offset), timeout=10
        )
        assert answer.status_code == 401
    assert {live.count(t) for t in live.tables()} == {0}
