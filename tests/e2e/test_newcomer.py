"""What a newcomer meets first: the version, the help, a second shell beside `planbridge dev`, /docs, a
wrong method, the browser's favicon request (issue #14, "a newcomer and a container")."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from service.api.app import create_app
from tests.support import settings

BIN = Path(sys.executable).parent / "planbridge"
ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    values.update(extra)
    return values


def run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_version():
    from importlib.metadata import version

    result = run("--version", cwd=ROOT, env=_env())
    assert result.returncode == 0 and result.stdout.strip() == f"planbridge {version('planbridge')}"


def test_serve_help_names_no_internals_and_dev_port_is_described():
    serve = run("serve", "--help", cwd=ROOT, env=_env()).stdout
    assert "default_shape" not in serve and "_" not in re.sub(r"[A-Z_]{4,}", "", serve)  # settings only
    assert "2 worker processes" in serve and "PLANBRIDGE_PORT" in serve
    dev = run("dev", "--help", cwd=ROOT, env=_env()).stdout
    port = dev.split("--port", 1)[1].split("\n  -", 1)[0]
    assert "API listens on" in port and "PLANBRIDGE_PORT" in port


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory, fhir_base_url):
    """A directory where `planbridge dev` is running, as the second shell sees it: var/dev.json (one for the
    module: the commands run in it only read)."""
    tmp_path = tmp_path_factory.mktemp("dev-dir")
    (tmp_path / "var").mkdir()
    database = f"sqlite:///{tmp_path / 'var' / 'planbridge.db'}"
    assert run("db", "upgrade", cwd=tmp_path, env=_env(DATABASE_URL=database)).returncode == 0
    setup = {"api": "http://127.0.0.1:8000", "fhir_base_url": fhir_base_url, "database_url": database}
    (tmp_path / "var" / "dev.json").write_text(json.dumps(setup))
    (tmp_path / "var" / "notify-secret").write_text("dev-notify-secret-0123456789\n")
    return tmp_path


@pytest.mark.parametrize(
    "command", [("sync", "status"), ("conflicts", "list"), ("subscribe", "--status"), ("fhir", "check")]
)
def test_a_second_shell_finds_the_running_dev_setup(dev_dir, fhir_base_url, command):
    result = run(*command, cwd=dev_dir, env=_env())
    assert "FHIR_BASE_URL is not set" not in result.stderr
    assert "var/dev.json" in result.stderr and fhir_base_url in result.stderr  # and says where it looked
    if command != ("fhir", "check"):  # the local server may lack something planbridge wants (exit 1, listed)
        assert result.returncode == 0, result.stderr
    json.loads(result.stdout)


def test_without_a_dev_setup_the_message_says_where_to_look(tmp_path):
    result = run("sync", "status", cwd=tmp_path, env=_env())
    assert result.returncode != 0
    assert (
        "var/dev.json" in result.stderr and str(tmp_path) in result.stderr and "export FHIR_BASE_URL" in result.stderr
    )


def test_the_readmes_curl_works_as_written(dev_dir):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("From a second terminal", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    lines = [line for line in lines if line and "webhook send" not in line]  # no running API here
    assert any('curl "$FHIR_BASE_URL/Goal' in line for line in lines)
    script = "set -e\n" + "\n".join(line.replace(".venv/bin/planbridge", str(BIN)) for line in lines)
    result = subprocess.run(["bash", "-c", script], cwd=dev_dir, env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout[result.stdout.index("{") :])["resourceType"] == "Bundle"


@pytest.fixture
def client(engine):
    return create_app(settings(api_keys=("newcomer-key-0123456789",)), engine).test_client()


def test_docs_agree_with_the_readme_on_fhir_notifications_auth(client):
    page = client.get("/docs").get_data(as_text=True)
    for path in ("POST /fhir-notifications<", "PUT /fhir-notifications/{resource_type}/{resource_id}<"):
        row = page.split(path, 1)[1].split("</tr>", 1)[0]
        assert "notify secret" in row, row
    readme = (ROOT / "README.md").read_text()
    assert "| `POST /fhir-notifications`, `PUT /fhir-notifications/{type}/{id}` | notify secret |" in readme


def test_a_405_names_the_allowed_methods(client):
    for method, path, allowed in (
        ("DELETE", "/webhooks/team", {"POST", "OPTIONS"}),
        ("POST", "/healthz", {"GET", "HEAD", "OPTIONS"}),
        ("GET", "/fhir-notifications", {"POST", "OPTIONS"}),
    ):
        answer = client.open(path, method=method)
        assert answer.status_code == 405
        assert answer.mimetype == "application/problem+json" and answer.json["status"] == 405
        assert {m.strip() for m in answer.headers["Allow"].split(",")} == allowed


def test_favicon_is_no_404(client):
    answer = client.get("/favicon.ico")
    assert answer.status_code == 204 and not answer.data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_planbridge_dev_stops_at_once_on_ctrl_c_and_leaves_nothing_running(tmp_path):
    """Ctrl-C stops `planbridge dev` within seconds: the API, both workers and its FHIR server, and var/dev.json
    goes. (gunicorn's forked workers once ran dev's clean-up too and waited out its 10 s graceful timeout.)"""
    port = _free_port()
    dev = subprocess.Popen(
        [str(BIN), "dev", "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: what is left of it afterwards can be found
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert dev.poll() is None and time.monotonic() < deadline, "planbridge dev did not become ready"
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert (tmp_path / "var" / "dev.json").exists()
        stopping = time.monotonic()
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=30)
        took = time.monotonic() - stopping
        group = subprocess.run(["pgrep", "-g", str(dev.pid)], capture_output=True, text=True).stdout.split()
        assert took < 6, f"planbridge dev took {took:.1f} s to stop"
        assert group == [], f"left running: {group}"
        assert not (tmp_path / "var" / "dev.json").exists()
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
