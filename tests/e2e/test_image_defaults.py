"""The Docker image with its defaults, where no Docker engine runs: the test does what the Dockerfile does.

It copies what the Dockerfile COPYs into a fresh directory (its WORKDIR), installs it the way `RUN pip
install .` does (not editable: the installed package's templates and migrations are what run), sets the
Dockerfile's ENV, and starts its CMD: `planbridge db upgrade && exec planbridge serve`, 2 gunicorn
workers, no PLANBRIDGE_SESSION_SECRET. The fresh venv reaches planbridge's dependencies through a .pth
line naming the project venv's site-packages (the editable install there is not loaded: a .pth line that
is a path adds the directory, it does not run the .pth files in it).
"""

import json
import os
import re
import shlex
import shutil
import signal
import site
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.support import SECRET

ROOT = Path(__file__).resolve().parents[2]
KEY = "image-test-key-0123456789abcdef"


def _dockerfile() -> dict:
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    found: dict = {"copy": [], "env": {}, "volume": [], "workdir": None, "cmd": None, "healthcheck": None}
    for line in logical.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "COPY":
            found["copy"].append(rest.split())
        elif word == "ENV":
            found["env"].update(dict(part.split("=", 1) for part in shlex.split(rest)))
        elif word == "VOLUME":
            found["volume"] += json.loads(rest) if rest.lstrip().startswith("[") else rest.split()
        elif word == "WORKDIR":
            found["workdir"] = rest.strip()
        elif word == "CMD":
            found["cmd"] = json.loads(rest)
        elif word == "HEALTHCHECK":
            found["healthcheck"] = json.loads(rest.split(" CMD ", 1)[1])
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if re.search(rf"^PPid:\s+{pid}$", text, re.M):
            out.append(int(status.parent.name))
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The image's /app (WORKDIR) and its Python, installed as `RUN pip install .` does."""
    spec = _dockerfile()
    assert spec["workdir"] == "/app"
    top = tmp_path_factory.mktemp("image")
    app, venv = top / "app", top / "venv"
    app.mkdir()
    for *sources, dest in spec["copy"]:
        target = app / dest.removeprefix("./").removeprefix("/app/")
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, target if dest.endswith("/") and target.is_dir() else target / path.name)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    fresh_site = next((venv / "lib").glob("python*/site-packages"))
    deps = next(p for p in site.getsitepackages() if p.endswith("site-packages"))
    (fresh_site / "planbridge-deps.pth").write_text(deps + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", str(app)],
        check=True,
        timeout=300,
        cwd=top,
    )
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import service; print(service.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=top,
    ).stdout.strip()
    assert where.startswith(str(fresh_site)), where  # the installed package, not the source tree
    (app / "var").mkdir()  # RUN ... mkdir -p /app/var
    return spec, app, venv


@pytest.fixture(scope="module")
def container(image):
    spec, app, venv = image
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL", "WEB_"))}
    env.update({k: v.replace("/app/", f"{app}/") for k, v in spec["env"].items()})
    env.update(
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
        # what `docker run -e ...` gives, as the README says; the session secret is not among them
        PLANBRIDGE_WEBHOOK_SECRET=SECRET,
        PLANBRIDGE_API_KEYS=KEY,
        PLANBRIDGE_HOST="127.0.0.1",  # the image listens on 0.0.0.0; here the loopback is enough
        PLANBRIDGE_PORT=str(port),  # the port is a setting: the health check must follow it
        PLANBRIDGE_AUTH_MAX_FAILURES="0",
    )
    log = (app / "serve.log").open("w")
    process = subprocess.Popen(
        spec["cmd"], cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (app / "serve.log").read_text()
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (app / "serve.log").read_text()
            time.sleep(0.2)
        yield {"url": url, "process": process, "env": env, "app": app, "spec": spec}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_console_sign_in_works_across_the_images_two_workers(container):
    deadline = time.monotonic() + 10
    while len(_children(container["process"].pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_children(container["process"].pid)) == 2  # the image's default: 2 gunicorn workers
    url, close = container["url"], {"Connection": "close"}  # each request a new connection, to either worker
    for _ in range(12):
        http = requests.Session()
        page = http.get(f"{url}/console/sign-in", headers=close, timeout=10)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        answer = http.post(
            f"{url}/console/sign-in",
            data={"api_key": KEY, "csrf_token": token},
            headers=close,
            allow_redirects=False,
            timeout=10,
        )
        assert answer.status_code == 302 and answer.headers["Location"].endswith("/console/"), answer.text[:300]
        for _ in range(3):
            home = http.get(f"{url}/console/", headers=close, allow_redirects=False, timeout=10)
            assert home.status_code == 200, home.headers.get("Location")
    kept = container["app"] / "var" / "session-secret"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600  # kept in the volume, readable by planbridge only


def test_the_health_check_reads_the_port_from_the_setting(container):
    check = container["spec"]["healthcheck"]
    assert subprocess.run(check, env=container["env"], timeout=10).returncode == 0


def test_the_sqlite_database_is_in_a_declared_volume(image):
    spec, _, _ = image
    database = spec["env"]["DATABASE_URL"].removeprefix("sqlite:///")
    assert any(database.startswith(volume.rstrip("/") + "/") for volume in spec["volume"]), spec["volume"]


def test_the_compose_file_runs_both_workers_as_their_own_containers_with_postgresql():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    commands = {name: service.get("command") for name, service in services.items()}
    assert ["planbridge", "worker"] in commands.values()
    assert ["planbridge", "notifications", "worker"] in commands.values()
    assert any(service.get("image", "").startswith("postgres") for service in services.values())
    for name, service in services.items():
        if service.get("image") == "planbridge":
            assert service["environment"]["DATABASE_URL"].startswith("postgresql://"), name
    docker = (ROOT / "README.md").read_text().split("## Docker", 1)[1].split("\n## ", 1)[0]
    assert "compose.yaml" in docker and "notifications worker" in docker
