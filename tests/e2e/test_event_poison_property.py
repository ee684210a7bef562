"""Property: an event is accepted only if the plan it makes maps to valid FHIR, and nothing is a 5xx.

Hypothesis writes stories of signed events (every type of the catalogue, poison mixed into any field:
tests/event_strategies.py) and posts them through the app, on SQLite and on PostgreSQL. Every 202
leaves a plan whose whole Bundle passes `validate_bundle`; one story in PUSH_EVERY is also pushed to
the real (strict) local FHIR server, which must take it. Every refusal is a 400, 404, 409 or 422
problem+json. The run prints how many events it generated (PLANBRIDGE_PROPERTY_EXAMPLES stories).
"""

import json
import os
import uuid
from collections import Counter

from hypothesis import HealthCheck, given, settings

from mappings.bundle import plan_to_bundle
from mappings.fhir import validate_bundle
from service.api.app import create_app
from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from tests.event_strategies import MRN, PLAN, stories
from tests.support import settings as make_settings
from tests.support import signed

STORIES = int(os.environ.get("PLANBRIDGE_PROPERTY_EXAMPLES", "100"))
PUSH_EVERY = 3
REFUSALS = {400, 404, 409, 422}


def _retarget(event: dict, plan_id: str, mrn: str) -> bytes:
    """Put this story's plan id and MRN in (keeping what poison follows them), and sign-ready bytes out."""
    data = event["data"]
    data["plan_id"] = plan_id + data["plan_id"][len(PLAN) :]
    if "patient" in data:
        data["patient"]["mrn"] = mrn + data["patient"]["mrn"][len(MRN) :]
    return json.dumps(event).encode()  # ASCII: a lone surrogate travels as its \\u escape


def test_every_accepted_event_makes_a_plan_the_fhir_server_takes(engine, fhir_base_url, capsys, record_property):
    config = make_settings(fhir_base_url=fhir_base_url)
    client = create_app(config, engine).test_client()
    sync = SyncEngine(UnitOfWork(engine), FhirClient(fhir_base_url, timeout=30), config, utcnow)
    tally: Counter = Counter()

    @given(story=stories())
    @settings(max_examples=STORIES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(story: list[dict]) -> None:
        plan_id, mrn = f"p-{uuid.uuid4().hex[:12]}", f"MRN-{uuid.uuid4().hex[:10]}"
        tally["stories"] += 1
        for event in story:
            body = _retarget(event, plan_id, mrn)
            answer = client.post("/webhooks/team", data=body, headers=signed(body))
            tally["events"] += 1
            tally[answer.status_code] += 1
            assert answer.status_code == 202 or answer.status_code in REFUSALS, (
                event,
                answer.status_code,
                answer.get_data(as_text=True)[:500],
            )
            if answer.status_code in REFUSALS:
                assert answer.mimetype == "application/problem+json"
                assert answer.json["type"].startswith("urn:planbridge:problem:")
                continue
            with UnitOfWork(engine) as uow:
                plan = uow.plans.get(plan_id)
            validate_bundle(plan_to_bundle(plan, config.identifier_base, config.mrn_system))  # the whole plan
        with UnitOfWork(engine) as uow:
            exists = uow.plans.get(plan_id) is not None
        if exists and tally["stories"] % PUSH_EVERY == 0:
            assert sync.push(plan_id).status == "in_sync"
            tally["pushed"] += 1

    check()
    answers = ", ".join(f"{status}: {tally[status]}" for status in sorted(k for k in tally if isinstance(k, int)))
    with capsys.disabled():
        print(
            f"\n[{engine.dialect.name}] {tally['events']} generated events in {tally['stories']} stories "
            f"({answers}); {tally['pushed']} plans pushed to the FHIR server"
        )
    record_property("examples", tally["stories"])
    record_property("events", tally["events"])
    assert tally[202] and tally[400] and tally["pushed"]
