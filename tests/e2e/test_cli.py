"""The `planbridge` command as an operator runs it: real processes, a real SQLite file, real gunicorn."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.cli_support import run_planbridge
from tests.support import FIXTURES, SECRET, wait_until_healthy

BIN = Path(sys.executable).parent / "planbridge"


def run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return run_planbridge(args, env=env, timeout=60, check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path, database):
    _, url = database
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    values.update(DATABASE_URL=url, PLANBRIDGE_WEBHOOK_SECRET=SECRET)
    return values


def test_help_lists_the_commands(env):
    out = run("--help", env=env).stdout
    for command in ("serve", "worker", "db", "dev", "webhook"):
        assert f"  {command}" in out
    assert "upgrade" in run("db", "--help", env=env).stdout


def test_db_upgrade_migrates_and_reports_the_revision(env):
    from service.store.db import head_revision

    head = head_revision()
    assert f"database at revision {head}" in run("db", "upgrade", env=env).stdout
    assert json.loads(run("db", "current", env=env).stdout) == {"current": head, "head": head}


def test_bad_settings_stop_the_command_with_a_clear_message(env):
    result = run("db", "upgrade", env={**env, "PLANBRIDGE_CREATE_PATIENTS": "perhaps"}, check=False)
    assert result.returncode != 0
    assert "PLANBRIDGE_CREATE_PATIENTS must be true or false" in result.stderr


def test_serve_refuses_to_start_without_a_webhook_secret(env):
    result = run("serve", "--port", str(free_port()), env={**env, "PLANBRIDGE_WEBHOOK_SECRET": ""}, check=False)
    assert result.returncode != 0
    assert "PLANBRIDGE_WEBHOOK_SECRET is not set" in result.stderr


def test_serve_and_worker_carry_a_sent_event_to_the_fhir_server(env, fhir_base_url, tmp_path):
    env = {
        **env,
        "FHIR_BASE_URL": fhir_base_url,
        "PLANBRIDGE_CREATE_PATIENTS": "true",
        "PLANBRIDGE_IDENTIFIER_BASE": f"https://planbridge.test/{os.getpid()}-{time.time_ns()}/id",
        "PLANBRIDGE_WEBHOOK_SENDERS": f"ehr-engine={run('webhook', 'secret', env=env).stdout.strip()}",
    }
    run("db", "upgrade", env=env)
    port = free_port()
    server = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", server, 20, "gunicorn did not come up")
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()["database"] == "ok"
        sent = run(
            "webhook",
            "send",
            str(FIXTURES / "events" / "goal-proposed.json"),
            "--url",
            f"http://127.0.0.1:{port}/webhooks/team",
            env=env,
        )
        assert sent.stdout.startswith("202 ") and json.loads(sent.stdout[4:])["sender"] == "default"
        other_plan = json.loads((FIXTURES / "events" / "goal-proposed.json").read_text())
        other_plan["data"]["plan_id"] = "plan-ed-0002"
        (tmp_path / "other.json").write_text(json.dumps(other_plan))
        fixture = str(tmp_path / "other.json")
        url = f"http://127.0.0.1:{port}/webhooks/team"
        by_engine = run("webhook", "send", fixture, "--url", url, "--sender", "ehr-engine", env=env)
        assert json.loads(by_engine.stdout[4:])["sender"] == "ehr-engine"
        nobody = run("webhook", "send", fixture, "--url", url, "--sender", "nobody", env=env, check=False)
        assert nobody.returncode != 0 and "no secret for the sender 'nobody'" in nobody.stderr
        assert json.loads(run("worker", "--once", env=env).stdout) == {"processed": 2}
        goals = requests.get(
            f"{fhir_base_url}/Goal",
            params={"identifier": f"{env['PLANBRIDGE_IDENTIFIER_BASE']}/goal|plan-ed-0001/goal-walk"},
            timeout=10,
        ).json()
        assert goals["entry"][0]["resource"]["description"]["text"].startswith("Walk to the park")
    finally:
        server.terminate()
        log, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "MRN-000123" not in log and "Sam Example" not in log  # no PHI in the service's log
    assert re.search(r'127\.0\.0\.1 "POST /webhooks/team" 202 \d+ \d+\.\d{6}s', log)  # the access log line
