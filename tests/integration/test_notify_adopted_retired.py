"""`planbridge subscribe` deletes the Subscriptions by subject of a patient no adopted plan names any more, on the
local FHIR server: without that they stayed there for ever, and the server went on notifying planbridge of that
patient's changes (and holding the secrets in their headers)."""

from __future__ import annotations

import uuid

import pytest

from service.fhir.client import FhirClient
from service.sync import subscriptions
from tests.support import settings

SETTING = "retire-notify-setting-0123456789"


@pytest.fixture
def fhir(fhir_base_url):
    return FhirClient(fhir_base_url)


@pytest.fixture
def config(fhir):
    # a public URL of its own, so this test's Subscriptions are told apart (nothing listens there)
    config = settings(fhir_notify_secret=SETTING, public_url=f"http://127.0.0.1:9/{uuid.uuid4().hex[:8]}")
    yield config
    for held in subscriptions._ours(fhir, config):
        fhir.request("DELETE", f"Subscription/{held['id']}")


def by_patient(fhir: FhirClient, config) -> dict[str | None, list[str]]:
    out: dict[str | None, list[str]] = {}
    for held in subscriptions._ours(fhir, config):
        out.setdefault(subscriptions.patient_of(held), []).append(held["id"])
    return {patient: sorted(ids) for patient, ids in out.items()}


def test_a_patient_no_adopted_plan_names_loses_its_subscriptions_on_the_next_subscribe(fhir, config):
    first = subscriptions.subscribe(fhir, config, 0, ["p1", "p2"])
    assert len(first) == 3 + 4 + 4
    before = by_patient(fhir, config)
    assert set(before) == {"Patient/p1", "Patient/p2", None}

    again = subscriptions.subscribe(fhir, config, 0, ["p2"])  # p1's adopted plan is adopted no more
    after = by_patient(fhir, config)
    assert "Patient/p1" not in after  # deleted from the server
    assert after == {None: before[None], "Patient/p2": before["Patient/p2"]}  # the others kept, same ids
    assert sorted(s["id"] for s in again) == sorted(before[None] + before["Patient/p2"])
    for gone in before["Patient/p1"]:
        assert not fhir.search("Subscription", {"_id": gone})

    subscriptions.subscribe(fhir, config, 0, [])  # no adopted plan at all: only planbridge's own three
    assert by_patient(fhir, config) == {None: before[None]}


def test_an_adoption_that_lands_while_subscribe_runs_keeps_its_subscriptions(fhir, config):
    """`patients` was read before the adoption committed; its Subscriptions were on the server when subscribe
    read them: asked again, the database names the patient, and nothing of it is deleted."""
    subscriptions.subscribe(fhir, config, 0, ["p1"])
    before = by_patient(fhir, config)
    asked: list[int] = []

    def still_adopted() -> list[str]:
        asked.append(1)
        return ["p1"]

    subscriptions.subscribe(fhir, config, 0, [], still_adopted=still_adopted)
    assert asked == [1]
    assert by_patient(fhir, config) == before
    subscriptions.subscribe(fhir, config, 0, ["p1"], still_adopted=still_adopted)
    assert asked == [1]  # nothing to retire: not asked


def test_a_subscription_the_server_will_not_delete_is_set_off(fhir, config, monkeypatch):
    subscriptions.subscribe(fhir, config, 0, ["p1"])
    real = fhir.request

    def no_delete(method: str, path: str, **kwargs):
        if method == "DELETE":
            from service.fhir.errors import FhirError

            raise FhirError("DELETE is not supported for Subscription", status=405)
        return real(method, path, **kwargs)

    monkeypatch.setattr(fhir, "request", no_delete)
    subscriptions.subscribe(fhir, config, 0, [])
    monkeypatch.undo()
    statuses = {subscriptions.patient_of(s): [] for s in subscriptions._ours(fhir, config)}
    for held in subscriptions._ours(fhir, config):
        statuses[subscriptions.patient_of(held)].append(held["status"])
    assert statuses["Patient/p1"] == ["off"] * 4
    assert set(statuses[None]) <= {"requested", "active"}
