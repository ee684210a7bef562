"""Property: `plans import` stores a plan only if the push can deliver it; everything else is a refusal naming
its element, with nothing stored. The import door's promise, as team events' (test_event_poison_property.py).

Hypothesis makes valid plans (tests/strategies.py) and poisons one leaf of their plan JSON (a control
character, whitespace-only or over-long text, odd Unicode, an id with a newline, a case twin of another id of
the plan, an MRN holding `|`, a number out of range, an impossible date) or none. Each goes through
`import_document`, what `planbridge plans import` runs. A refusal is a ConversionRefused naming at least one
element, or a PlanbridgeError with a code, and stores nothing. An accepted plan's whole Bundle passes
`validate_bundle`, and every PUSH_EVERY-th accepted plan is pushed to the real (strict) local FHIR server,
which must take it. The run prints its tally (PLANBRIDGE_PROPERTY_EXAMPLES plans).
"""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappings.bundle import plan_to_bundle
from mappings.fhir import validate_bundle
from service.api.container import utcnow
from service.convert import ConversionRefused
from service.domain import codec
from service.domain.errors import PlanbridgeError
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync.adopt import import_document
from service.sync.engine import SyncEngine
from tests.ehr_world import EHR_PATIENT
from tests.event_strategies import bad_ids, poison_texts
from tests.strategies import plans
from tests.support import settings as make_settings

EXAMPLES = int(os.environ.get("PLANBRIDGE_PROPERTY_EXAMPLES", "40"))
PUSH_EVERY = 3
_BAD_NUMBERS = st.sampled_from([10**13, -(10**13), 1e300, 2**31, -1, 0.5])
_BAD_DATES = st.sampled_from(["2026-02-30", "2026-13-01", "2026-1-1x", "0000-01-01", "", "2026-12-01T25:00:00Z"])


def _leaves(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every (path, value) of a string or number in a plan document."""
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, (*path, key))]
    if isinstance(node, list):
        return [leaf for at, value in enumerate(node) for leaf in _leaves(value, (*path, at))]
    if isinstance(node, (str, int, float)) and not isinstance(node, bool):
        return [(path, node)]
    return []


def _put(document: dict[str, Any], path: tuple, value: Any) -> None:
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


@st.composite
def poisoned(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid plan's JSON with one leaf poisoned (or none), and what was done, for the tally."""
    document = codec.to_dict(draw(plans()))
    document["id"] = f"p-{uuid.uuid4().hex[:12]}"  # fresh, so examples never meet (the poison may follow it)
    document["patient"]["mrn"] = f"MRN-{uuid.uuid4().hex[:10]}"
    kind = draw(st.sampled_from(["none", "text", "id", "twin", "mrn", "number", "date"]))
    leaves = _leaves(document)
    if kind == "mrn":
        document["patient"]["mrn"] += draw(st.sampled_from(["|x", "\n", " ", "\x00"]))
    elif kind == "twin":
        named = [(p, v) for p, v in leaves if p[-1] == "id" and isinstance(v, str) and v.lower() != v.upper()]
        if len(named) < 2:
            return document, "none"
        (first, value), (second, _) = draw(st.permutations(named))[:2]
        _put(document, second, value.swapcase() if value.swapcase() != value else value.upper())
        _put(document, first, value)
    elif kind != "none":
        choices = [(p, v) for p, v in leaves if (isinstance(v, str)) != (kind == "number")]
        if not choices:
            return document, "none"
        path, _ = draw(st.sampled_from(choices))
        strategy = {"text": poison_texts(), "id": bad_ids, "number": _BAD_NUMBERS, "date": _BAD_DATES}[kind]
        _put(document, path, draw(strategy))
    return document, kind


# what tests/strategies.py's plans name (Goal.addresses, a member's resource), with what each type needs
_EHR_OWN = re.compile(r"^(Condition|Observation|Practitioner|RelatedPerson)/([A-Za-z0-9\-.]{1,64})$")
_PATIENT = {"reference": f"Patient/{EHR_PATIENT}"}
_MINIMAL: dict[str, dict[str, Any]] = {
    "Condition": {"subject": _PATIENT},
    "Observation": {"status": "final", "code": {"text": "seeded"}, "subject": _PATIENT},
    "RelatedPerson": {"patient": _PATIENT},
}


def _seed_named(base_url: str, node: Any, seeded: set[str]) -> None:
    """Put on the server the EHR's own resources a plan names (`Goal.addresses` a Condition, a member's
    Practitioner): a server with referential integrity refuses a plan naming one it does not hold, however
    good its content, which is the EHR's data and no door's business."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and (found := _EHR_OWN.match(value)):
                if found[2].isdigit():  # HAPI refuses a client-assigned numeric id (HAPI-0960): the EHR's own POST
                    seeded.add("unseedable")
                elif value not in seeded:
                    body = {"resourceType": found[1], "id": found[2], **_MINIMAL.get(found[1], {})}
                    requests.put(f"{base_url}/{value}", json=body, timeout=30).raise_for_status()
                    seeded.add(value)
            else:
                _seed_named(base_url, value, seeded)
    elif isinstance(node, list):
        for value in node:
            _seed_named(base_url, value, seeded)


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _stored(engine: Any, plan_id: str | None) -> tuple[int, dict[str, Any] | None]:
    """How many plans are stored, and the document stored under `plan_id` (read only for an id a plan can have:
    PostgreSQL cannot even be asked for one holding NUL or a lone surrogate)."""
    with UnitOfWork(engine) as uow:
        count = len(uow.plans.ids())
        plan = uow.plans.get(plan_id) if plan_id and _FHIR_ID.fullmatch(plan_id) else None
    return count, None if plan is None else codec.to_dict(plan)


def test_every_imported_plan_is_one_the_fhir_server_takes(engine, fhir_base_url, capsys) -> None:
    config = make_settings(fhir_base_url=fhir_base_url)
    sync = SyncEngine(UnitOfWork(engine), FhirClient(fhir_base_url, timeout=30), config, utcnow)
    tally: Counter = Counter()
    seeded: set[str] = set()

    @given(example=poisoned())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(example: tuple[dict[str, Any], str]) -> None:
        document, kind = example
        tally[kind] += 1
        plan_id = document.get("id") if isinstance(document.get("id"), str) else None
        before = _stored(engine, plan_id)
        try:
            plan = import_document(UnitOfWork(engine), document, config, utcnow())
        except ConversionRefused as refused:
            assert refused.issues, (kind, refused.detail)
            assert all(issue.path for issue in refused.issues), refused.issues
            tally["refused"] += 1
        except PlanbridgeError as exc:
            assert exc.code, exc
            tally["refused"] += 1
        else:
            tally["accepted"] += 1
            bundle = plan_to_bundle(plan, config.identifier_base, config.mrn_system)
            validate_bundle(bundle)
            if tally["accepted"] % PUSH_EVERY == 0:
                seeded.discard("unseedable")
                _seed_named(fhir_base_url, bundle, seeded)
                if "unseedable" in seeded:
                    tally["not pushed: names a numeric EHR id"] += 1
                    return
                assert sync.push(plan.id).status == "in_sync", (kind, plan.id)
                tally["pushed"] += 1
            return
        # a refusal stores nothing: no plan, or the one stored before (a poisoned id may repeat an earlier one)
        assert _stored(engine, plan_id) == before, (kind, plan_id)

    check()
    with capsys.disabled():
        print(f"\n[{engine.dialect.name}] import poison: {dict(sorted(tally.items()))}")
    assert tally["accepted"] and tally["refused"], tally  # both sides of the door were reached
