"""A command run through the tests' zygote (tests/cli_support.py) is the command run as its own process.

The end-to-end tests run `planbridge` commands forked from a process that has already imported what they
import. These tests run the same commands both ways, the zygote's and a new `planbridge` process
(PLANBRIDGE_TEST_CLI=spawn), and hold them to the same exit status, stdout and stderr: output, refusals,
usage errors, stdin, the working directory, and an environment that is exactly the one given.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.cli_support import BIN, run_planbridge
from tests.support import FIXTURES

MINIMAL = (FIXTURES / "plans" / "minimal.json").read_text()


def both(monkeypatch, args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """Run the command both ways on the same input; assert they agree and return the result."""
    monkeypatch.delenv("PLANBRIDGE_TEST_CLI", raising=False)
    forked = run_planbridge(args, env=env, **kwargs)
    monkeypatch.setenv("PLANBRIDGE_TEST_CLI", "spawn")
    spawned = run_planbridge(args, env=env, **kwargs)
    monkeypatch.delenv("PLANBRIDGE_TEST_CLI")
    assert (forked.returncode, forked.stdout, forked.stderr) == (spawned.returncode, spawned.stdout, spawned.stderr)
    assert forked.args == spawned.args == [str(BIN), *args]
    return forked


@pytest.fixture
def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    return {**env, "FHIR_BASE_URL": "http://127.0.0.1:9/fhir"}


def test_help_usage_errors_and_unknown_commands_are_the_same(monkeypatch, base_env):
    assert "Usage: planbridge" in both(monkeypatch, ["--help"], base_env).stdout
    assert both(monkeypatch, ["nonsense"], base_env).returncode == 2
    assert both(monkeypatch, ["plans", "import"], base_env).returncode == 2


def test_the_working_directory_stdin_and_a_refusal_are_the_same(monkeypatch, base_env, tmp_path):
    env = {**base_env, "DATABASE_URL": "sqlite:///relative/planbridge.db"}
    for where in ("forked", "spawned"):
        (tmp_path / where).mkdir()
    monkeypatch.delenv("PLANBRIDGE_TEST_CLI", raising=False)
    forked = run_planbridge(["db", "upgrade"], env=env, cwd=tmp_path / "forked")
    monkeypatch.setenv("PLANBRIDGE_TEST_CLI", "spawn")
    spawned = run_planbridge(["db", "upgrade"], env=env, cwd=tmp_path / "spawned")
    monkeypatch.delenv("PLANBRIDGE_TEST_CLI")
    assert (forked.returncode, forked.stdout, forked.stderr) == (spawned.returncode, spawned.stdout, spawned.stderr)
    assert forked.returncode == 0 and "database at revision" in forked.stdout
    assert (tmp_path / "forked" / "relative" / "planbridge.db").exists()
    assert (tmp_path / "spawned" / "relative" / "planbridge.db").exists()

    # the same database for both: the first import stores the plan; then both are refused the same way
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'forked' / 'relative' / 'planbridge.db'}"
    stored = run_planbridge(["plans", "import", "-"], env=env, input=MINIMAL)
    assert stored.returncode == 0, stored.stderr
    refused = both(monkeypatch, ["plans", "import", "-"], env, input=MINIMAL)
    assert refused.returncode == 1 and "already exists" in refused.stderr
    listed = both(monkeypatch, ["outbox", "list"], env)
    assert [entry["plan_id"] for entry in json.loads(listed.stdout)] == ["plan-minimal-0001"]


def test_a_command_sees_exactly_the_environment_it_is_given(monkeypatch, base_env, tmp_path):
    # set in the test process, not in the env given: the command must not see it
    monkeypatch.setenv("PLANBRIDGE_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'not-this.db'}")
    worked = both(monkeypatch, ["db", "upgrade"], {**base_env, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert worked.returncode == 0 and not (tmp_path / "not-this.db").exists()
    refused = both(monkeypatch, ["worker", "--once"], {**base_env, "PLANBRIDGE_LOG_LEVEL": "LOUD"})
    assert refused.returncode == 1 and "PLANBRIDGE_LOG_LEVEL must be one of" in refused.stderr


def test_a_command_past_its_timeout_is_killed_and_the_next_one_runs(base_env):
    with pytest.raises(subprocess.TimeoutExpired):
        run_planbridge(["--help"], env=base_env, timeout=0.001)  # no command ends within a millisecond
    assert run_planbridge(["--help"], env=base_env).returncode == 0
