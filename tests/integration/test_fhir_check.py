"""`planbridge fhir check` against both profiles of the local FHIR server: it probes what sync relies on (with
scratch Basic resources it deletes), and reports each server's transaction caps and stale-If-Match status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from service.fhir.capabilities import FEATURES, Limits, check_server, probe_limits
from service.fhir.client import FhirClient
from tests.cli_support import run_planbridge

BIN = Path(sys.executable).parent / "planbridge"
EXPECTED = {
    "medplum": {"max_strict_entries": 8, "max_updates": 50, "stale_version_status": 412},
    "hapi": {"max_strict_entries": None, "max_updates": None, "stale_version_status": 409},
}
pytestmark = pytest.mark.skipif(
    bool(os.environ.get("FHIR_TEST_SERVER_URL")), reason="compares the local server's two profiles"
)


def basics(base: str) -> int:
    return requests.get(f"{base}/Basic", params={"_summary": "count"}, timeout=10).json()["total"]


def fhir_check(tmp_path: Path, base: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL", "SMART_"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'planbridge.db'}", FHIR_BASE_URL=base)
    return run_planbridge(["fhir", "check", *args], env=env, timeout=120)


def test_fhir_check_probes_everything_and_tells_the_profiles_apart(tmp_path, fhir_profile, fhir_profile_url):
    before = basics(fhir_profile_url)

    done = fhir_check(tmp_path, fhir_profile_url)

    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["server"] == fhir_profile_url and out["fhirVersion"] == "4.0.1" and out["missing"] == []
    assert f"{fhir_profile} profile" in out["software"]
    assert out["limits"] == EXPECTED[fhir_profile]
    assert list(out["features"]) == list(FEATURES)
    not_ok = {name for name, f in out["features"].items() if not f["ok"]}
    assert not_ok == {"subscriptions_backport"}  # the local server has R4 rest-hook Subscriptions only
    assert all(f["without_it"] and f["detail"] for f in out["features"].values())
    stale = out["features"]["versioned_update"]["detail"]
    assert stale == f"a stale If-Match answers {EXPECTED[fhir_profile]['stale_version_status']}"
    transaction = out["features"]["transaction"]["detail"]
    if fhir_profile == "medplum":
        assert (
            "9 refused (400: Transaction requires strict isolation but has too many entries): at most 8" in transaction
        )
        assert "51 refused (400: Transaction contains more update operations than allowed): at most 50" in transaction
    else:
        assert "no cap up to 9" in transaction and "no cap up to 51" in transaction
    assert basics(fhir_profile_url) == before  # every scratch resource was deleted


def next_id(base: str) -> int:
    """Create and delete a scratch Basic; return its id (the local server counts ids across all types)."""
    made = requests.post(f"{base}/Basic", json={"resourceType": "Basic", "code": {"text": "x"}}, timeout=10).json()
    requests.delete(f"{base}/Basic/{made['id']}", timeout=10)
    return int(made["id"])


def test_fhir_check_without_probing_writes_nothing_and_reads_the_published_limits(
    tmp_path, fhir_profile, fhir_profile_url
):
    before = next_id(fhir_profile_url)

    done = fhir_check(tmp_path, fhir_profile_url, "--no-probe")

    assert next_id(fhir_profile_url) == before + 1  # nothing was created in between
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    published = EXPECTED[fhir_profile] | {"stale_version_status": None}  # only the medplum profile publishes caps
    assert out["limits"] == published
    assert out["features"]["versioned_update"] == {
        "ok": False,
        "required": True,
        "probed": False,
        "detail": "not probed (--no-probe)",
        "without_it": FEATURES["versioned_update"][1],
    }
    assert out["features"]["subscriptions_rest_hook"]["ok"] is True


class IgnoringClient(FhirClient):
    """A client for a server that ignores If-Match and `_lastUpdated` (many do): it drops them before sending."""

    def request(self, method: str, path: str, **kwargs: Any):  # type: ignore[override]
        headers = {k: v for k, v in (kwargs.pop("headers", None) or {}).items() if k != "If-Match"}
        params = kwargs.pop("params", None)
        if isinstance(params, dict):
            params = {k: v for k, v in params.items() if k != "_lastUpdated"}
        return super().request(method, path, headers=headers, params=params, **kwargs)


def test_a_server_that_ignores_if_match_and_last_updated_is_named_missing_both(fhir_hapi_url):
    client = IgnoringClient(fhir_hapi_url, timeout=10)

    checked = check_server(client, client.capabilities())

    assert {m.split(":")[0] for m in checked.missing()} == {"versioned_update", "last_updated"}
    assert checked.features["versioned_update"].detail == "the server accepted an update with a stale If-Match"
    assert checked.stale_version_status is None


def test_probe_limits_learns_the_caps_from_the_refusals_alone(fhir_profile, fhir_profile_url):
    client = FhirClient(fhir_profile_url, timeout=10)
    before = basics(fhir_profile_url)

    learned = probe_limits(client)  # no CapabilityStatement: what real Medplum gives

    assert learned == (Limits(8, 50) if fhir_profile == "medplum" else Limits())
    assert basics(fhir_profile_url) == before


def test_fhir_check_keeps_the_measured_limits_where_pushes_look_for_them(tmp_path, fhir_profile, fhir_profile_url):
    import sqlalchemy as sa

    from service.sync.split import decode_limits, limits_cursor

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL", "SMART_"))}
    database = f"sqlite:///{tmp_path / 'planbridge.db'}"
    env.update(DATABASE_URL=database)
    not_upgraded = fhir_check(tmp_path, fhir_profile_url)
    assert not_upgraded.returncode == 0 and json.loads(not_upgraded.stdout)["limits_remembered"] is False
    run_planbridge(["db", "upgrade"], env=env, check=True, timeout=120, text=False)
    with sa.create_engine(database).begin() as db:  # an earlier refusal taught a tighter cap than the server has
        db.execute(
            sa.text("INSERT INTO sync_cursors (name, value) VALUES (:n, '3,7')"), {"n": limits_cursor(fhir_profile_url)}
        )

    out = json.loads(fhir_check(tmp_path, fhir_profile_url).stdout)

    assert out["limits_remembered"] is True
    with sa.create_engine(database).connect() as db:
        kept = db.execute(
            sa.text("SELECT value FROM sync_cursors WHERE name = :n"), {"n": limits_cursor(fhir_profile_url)}
        )
        expected = EXPECTED[fhir_profile]
        assert decode_limits(kept.scalar_one()) == Limits(expected["max_strict_entries"], expected["max_updates"])
