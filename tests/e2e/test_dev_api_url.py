"""The commands `planbridge dev` prints, and the client commands (`webhook send`, `demo`) beside it, reach the API
on the port it runs on: with `PLANBRIDGE_PORT=8300` they used to post to port 8000 (docaudit finding 5)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.e2e.test_newcomer import BIN, ROOT, _env, run
from tests.support import SECRET

EVENT = ROOT / "fixtures" / "events" / "goal-proposed.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """A stand-in for a running planbridge: records each request's method and path, answers `status`."""

    def __init__(self, status: int) -> None:
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append(("POST", self.path))
                body = b'{"recorded": true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    found = Recorder(202)
    yield found
    found.server.shutdown()


def _dev_dir(root: Path, api: str, fhir_base_url: str) -> Path:
    """A directory where a `planbridge dev` with its API at `api` runs, as a second shell sees it."""
    (root / "var").mkdir()
    setup = {"api": api, "fhir_base_url": fhir_base_url, "database_url": f"sqlite:///{root / 'var' / 'x.db'}"}
    (root / "var" / "dev.json").write_text(json.dumps(setup))
    (root / "var" / "api-key").write_text("dev-api-key-0123456789\n")
    (root / "var" / "webhook-secret").write_text(SECRET + "\n")
    return root


def test_webhook_send_without_url_posts_to_the_running_dev_api(tmp_path, recorder, fhir_base_url):
    where = _dev_dir(tmp_path, recorder.url, fhir_base_url)
    sent = run("webhook", "send", str(EVENT), cwd=where, env=_env(PLANBRIDGE_WEBHOOK_SECRET=SECRET))
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("202 ")
    assert recorder.requests == [("POST", "/webhooks/team")]
    assert f"var/dev.json: --url {recorder.url}/webhooks/team" in sent.stderr  # and says so, as `sync` does
    # --url still wins over var/dev.json
    other = Recorder(202)
    try:
        given = f"{other.url}/webhooks/team"
        sent = run("webhook", "send", str(EVENT), "--url", given, cwd=where, env=_env(PLANBRIDGE_WEBHOOK_SECRET=SECRET))
        assert sent.returncode == 0 and other.requests == [("POST", "/webhooks/team")]
        assert len(recorder.requests) == 1 and "var/dev.json" not in sent.stderr
    finally:
        other.server.shutdown()


def test_demo_without_url_talks_to_the_running_dev_api(tmp_path, fhir_base_url):
    refusing = Recorder(403)  # the demo's first step (subscribing its team endpoint) is refused: it stops there
    try:
        where = _dev_dir(tmp_path, refusing.url, fhir_base_url)
        result = run("demo", cwd=where, env=_env())
        assert result.returncode == 1 and "subscription refused: 403" in result.stderr
        assert refusing.requests == [("POST", "/subscriptions")]
        assert f"var/dev.json: --url {refusing.url}" in result.stderr
    finally:
        refusing.server.shutdown()


def test_demo_against_nothing_is_one_line_not_a_traceback(tmp_path, fhir_base_url):
    where = _dev_dir(tmp_path, f"http://127.0.0.1:{_free_port()}", fhir_base_url)  # nothing listens there
    api = json.loads((where / "var" / "dev.json").read_text())["api"]
    result = run("demo", cwd=where, env=_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Error: could not reach {api}: ConnectionError" in result.stderr


def _banner(out: list[str], port: int, dev: subprocess.Popen) -> str:
    """Wait until the API answers and the banner (printed before it serves) has been read; return the banner."""
    deadline = time.monotonic() + 90
    while True:
        assert dev.poll() is None and time.monotonic() < deadline, "planbridge dev did not become ready"
        try:
            ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            ready = False
        banner = "".join(out)
        if ready and "planbridge demo" in banner:
            return banner
        time.sleep(0.2)


def test_the_dev_banner_names_the_port_in_the_commands_it_prints(tmp_path):
    """`planbridge dev` on a port other than 8000 prints `webhook send` and `demo` with `--url` to that port, and
    the printed `webhook send` works as copied (from another directory too, where no var/dev.json is)."""
    port = _free_port()
    dev = subprocess.Popen(
        [str(BIN), "dev"],
        cwd=tmp_path,
        env=_env(PLANBRIDGE_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(dev.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        banner = _banner(out, port, dev)
        api = f"http://127.0.0.1:{port}"
        (send,) = [line.strip() for line in banner.splitlines() if "planbridge webhook send" in line]
        (demo,) = [
            line.strip() for line in banner.splitlines() if line.strip().endswith(f"planbridge demo --url {api}")
        ]
        assert send.endswith(f" --url {api}/webhooks/team"), send
        assert demo
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        secret = (tmp_path / "var" / "webhook-secret").read_text().strip()
        command = shlex.split(send.replace("PLANBRIDGE_WEBHOOK_SECRET=$(cat var/webhook-secret) ", ""))
        assert command[0] == ".venv/bin/planbridge"
        sent = subprocess.run(
            [str(BIN), *command[1:]],
            cwd=elsewhere,
            env=_env(PLANBRIDGE_WEBHOOK_SECRET=secret),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0 and sent.stdout.startswith("202 "), (sent.stdout, sent.stderr)
        assert "var/dev.json" not in sent.stderr  # the printed --url took it there
        assert requests.get(
            f"{api}/plans/plan-ed-0001",
            headers={"X-API-Key": (tmp_path / "var" / "api-key").read_text().strip()},
            timeout=10,
        ).ok
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGINT)
            try:
                dev.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait(timeout=10)
