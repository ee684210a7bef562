"""The notify secret on the FHIR server: each Subscription carries a secret of its own (never the setting),
which opens only its own resource type, and `planbridge subscribe --rotate` replaces them all, the previous
generation accepted for its grace period (or until the next rotation), then refused."""

import json
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from service.api.app import create_app
from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.store.uow import UnitOfWork
from service.sync import subscriptions
from tests.cli_support import run_planbridge
from tests.support import settings

SETTING = "rotation-notify-setting-0123456789"
BIN = Path(sys.executable).parent / "planbridge"


@pytest.fixture
def fhir(fhir_base_url):
    return FhirClient(fhir_base_url)


@pytest.fixture
def setup(engine, fhir):
    # a public URL of its own, so this test's Subscriptions are told apart (nothing listens there)
    config = settings(fhir_notify_secret=SETTING, public_url=f"http://127.0.0.1:9/{uuid.uuid4().hex[:8]}")
    client = create_app(config, engine).test_client()
    yield config, client
    for held in subscriptions._ours(fhir, config):
        fhir.request("DELETE", f"Subscription/{held['id']}")


def headers_on_the_server(fhir, config) -> dict[str, str]:
    out = {}
    for held in subscriptions._ours(fhir, config):
        (header,) = held["channel"]["header"]
        name, _, value = header.partition(":")
        assert name == "X-Planbridge-Notify-Secret"
        out[held["criteria"].split("?", 1)[0]] = value.strip()
    return out


def ping(client, secret: str) -> int:
    return client.post("/fhir-notifications", headers={"X-Planbridge-Notify-Secret": secret}).status_code


def put(client, resource_type: str, secret: str) -> int:
    return client.put(
        f"/fhir-notifications/{resource_type}/1",
        data=json.dumps({"resourceType": resource_type, "id": "1"}),
        headers={"X-Planbridge-Notify-Secret": secret, "Content-Type": "application/fhir+json"},
    ).status_code


def test_each_subscription_carries_a_secret_of_its_own_not_the_setting(setup, fhir):
    config, client = setup
    subscriptions.subscribe(fhir, config)
    secrets = headers_on_the_server(fhir, config)
    assert set(secrets) == {"CarePlan", "Goal", "CareTeam"}
    assert len(set(secrets.values())) == 3 and not any(SETTING in s for s in secrets.values())
    for resource_type, secret in secrets.items():
        assert ping(client, secret) == 200
        assert put(client, resource_type, secret) != 401
        for other in {"CarePlan", "Goal", "CareTeam"} - {resource_type}:
            assert put(client, other, secret) == 401  # a secret read from one Subscription opens only its type
    assert ping(client, secrets["Goal"][:-2] + "xx") == 401
    assert ping(client, "pbn7.Goal." + secrets["Goal"].rsplit(".", 1)[1]) == 401  # not a generation in force


def test_rotation_replaces_every_secret_and_retires_the_old_after_its_grace(setup, fhir, engine):
    config, client = setup
    subscriptions.subscribe(fhir, config, subscriptions.current_generation(UnitOfWork(engine)))
    old = headers_on_the_server(fhir, config)
    assert ping(client, SETTING) == 200  # never rotated: the setting itself, as sent before, still works

    state = subscriptions.rotate(UnitOfWork(engine), utcnow())
    assert (state.current, state.previous) == (1, 0)
    subscriptions.subscribe(fhir, config, subscriptions.current_generation(UnitOfWork(engine)))
    new = headers_on_the_server(fhir, config)
    assert set(new) == set(old) and not set(new.values()) & set(old.values())
    assert [s["secret_generation"] for s in subscriptions.status(fhir, config)] == [1, 1, 1]
    for resource_type in new:
        assert put(client, resource_type, new[resource_type]) != 401
        assert put(client, resource_type, old[resource_type]) != 401  # within the grace period
    assert ping(client, SETTING) == 401  # rotated once: the setting itself is no longer a secret

    with UnitOfWork(engine) as uow:  # the grace period is over
        uow.sync.set_cursor(subscriptions.PREVIOUS, f"0|{(utcnow() - timedelta(seconds=1)).isoformat()}")
        uow.commit()
    assert all(ping(client, s) == 401 for s in old.values())
    assert all(ping(client, s) == 200 for s in new.values())

    subscriptions.rotate(UnitOfWork(engine), utcnow())  # a second rotation retires generation 0 at once...
    subscriptions.subscribe(fhir, config, 2)
    newest = headers_on_the_server(fhir, config)
    assert all(ping(client, s) == 200 for s in list(new.values()) + list(newest.values()))  # ...and keeps 1
    subscriptions.rotate(UnitOfWork(engine), utcnow())  # and the next one retires 1, within its grace
    assert all(ping(client, s) == 401 for s in new.values())


def test_subscribe_rotate_from_the_command_line(database, fhir_base_url, fhir, tmp_path):
    _, url = database
    public = f"http://127.0.0.1:9/{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=url,
        FHIR_BASE_URL=fhir_base_url,
        PLANBRIDGE_FHIR_NOTIFY_SECRET=SETTING,
        PLANBRIDGE_PUBLIC_URL=public,
        PLANBRIDGE_IDENTIFIER_BASE=settings().identifier_base,
    )

    def run(*args):
        result = run_planbridge(args, env=env, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result

    config = settings(fhir_notify_secret=SETTING, public_url=public, identifier_base=env["PLANBRIDGE_IDENTIFIER_BASE"])
    try:
        assert {s["secret_generation"] for s in json.loads(run("subscribe").stdout)} == {0}
        before = headers_on_the_server(fhir, config)
        rotated = run("subscribe", "--rotate")
        assert "generation 1" in rotated.stderr and "generation 0 is accepted until" in rotated.stderr
        assert {s["secret_generation"] for s in json.loads(rotated.stdout)} == {1}
        after = headers_on_the_server(fhir, config)
        assert set(after) == set(before) and not set(after.values()) & set(before.values())
        shown = json.loads(run("subscribe", "--status").stdout)
        assert {s["secret_generation"] for s in shown} == {1} and SETTING not in json.dumps(shown)
    finally:
        for held in subscriptions._ours(fhir, config):
            fhir.request("DELETE", f"Subscription/{held['id']}")
