"""Launcher for the local development FHIR server in ``fhir-server/`` (Node, Medplum packages)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

SERVER_DIR: Path = Path(
    os.environ.get("PLANBRIDGE_FHIR_SERVER_DIR") or Path(__file__).resolve().parent.parent / "fhir-server"
)
LISTENING_PREFIX = "planbridge-fhir listening on "
PROFILES = ("medplum", "hapi")  # fhir-server/lib/app.mjs PROFILES; medplum (its transaction limits) is the default
PROFILE_ENV = "PLANBRIDGE_FHIR_PROFILE"


def default_profile() -> str:
    """The profile named by PLANBRIDGE_FHIR_PROFILE, else "medplum"; a RuntimeError names a wrong value."""
    profile = (os.environ.get(PROFILE_ENV) or "medplum").strip().lower()
    if profile not in PROFILES:
        raise RuntimeError(f"{PROFILE_ENV}={profile!r} is not a local FHIR server profile: use medplum or hapi")
    return profile


def _require(tool: str) -> str:
    """Return the path of a required executable or raise a RuntimeError naming it."""
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(
            f"'{tool}' was not found on PATH: the local FHIR server needs Node.js 20+ and npm (https://nodejs.org/)"
        )
    return path


STAMP = "node_modules/.planbridge-installed"  # written after npm ci succeeds; scripts/setup.sh uses it too


def _needs_install(server_dir: Path) -> bool:
    """Tell whether no finished install is recorded, or it is older than package-lock.json."""
    stamp = server_dir / STAMP
    lock = server_dir / "package-lock.json"
    return not stamp.exists() or (lock.exists() and stamp.stat().st_mtime < lock.stat().st_mtime)


def ensure_installed(server_dir: Path = SERVER_DIR) -> None:
    """Run ``npm ci`` in server_dir when its node_modules is missing or stale."""
    server_dir = Path(server_dir)
    if not (server_dir / "package.json").exists():
        raise RuntimeError(f"no FHIR server found at {server_dir} (package.json missing)")
    _require("node")
    if not _needs_install(server_dir):
        return
    npm = _require("npm")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=server_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm ci failed in {server_dir} (exit {result.returncode}):\n{result.stderr[-4000:]}")
    (server_dir / STAMP).touch()


class LocalFhirServer:
    """A local FHIR R4 server process (``node fhir-server/server.mjs``) for development and tests."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        server_dir: Path = SERVER_DIR,
        log_path: Path | None = None,
        profile: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        """Configure the server; nothing starts until start(). profile is "medplum" (Medplum's transaction
        limits, 412 on a stale If-Match) or "hapi" (no limits, 409); by default PLANBRIDGE_FHIR_PROFILE or medplum.
        options: more of server.mjs's flags (`--referential-integrity-on-delete`, `--allow-external-references`)."""
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown local FHIR server profile {profile!r}: use medplum or hapi")
        self.profile = profile or default_profile()
        self.host = host
        self.port = port
        self.options = tuple(options)
        self.server_dir = Path(server_dir)
        self.log_path = Path(log_path) if log_path is not None else None
        self.base_url: str = ""
        self.process: subprocess.Popen[str] | None = None
        self.returncode: int | None = None
        self._log_file: IO[str] | None = None
        self._drainer: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> str:
        """Install if needed, start the server, wait for it to listen and return its base URL."""
        if self.process is not None and self.process.poll() is None:
            return self.base_url
        ensure_installed(self.server_dir)
        node = _require("node")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("a", encoding="utf-8")
        args = [node, "server.mjs", "--profile", self.profile, "--host", self.host, "--port", str(self.port)]
        args += ["--exit-on-stdin-close", *self.options]
        if self._log_file is None:
            args.append("--quiet")
        self.process = subprocess.Popen(
            args,
            cwd=self.server_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file if self._log_file is not None else subprocess.DEVNULL,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=self._read_first_line, args=(lines,), daemon=True)
        reader.start()
        reader.join(timeout)
        line = lines[0] if lines else ""
        if not line.startswith(LISTENING_PREFIX):
            code = self.process.poll()
            self.stop()
            where = f"; see {self.log_path}" if self.log_path else ""
            state = f"exited with {code}" if code is not None else f"did not listen within {timeout}s"
            raise RuntimeError(f"local FHIR server {state}{where} (first output: {line!r})")
        self.base_url = line[len(LISTENING_PREFIX) :].strip()
        # Keep draining stdout so the child can never block on a full pipe.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        return self.base_url

    def _read_first_line(self, lines: list[str]) -> None:
        """Read the server's first stdout line into lines."""
        assert self.process is not None and self.process.stdout is not None
        lines.append(self.process.stdout.readline())

    def _drain(self) -> None:
        """Discard any further stdout output."""
        process = self.process
        if process is not None and process.stdout is not None:
            for _ in process.stdout:
                pass

    def stop(self) -> None:
        """Stop the server: SIGTERM, wait, then kill if it lingers."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            self.returncode = process.returncode
            if self._drainer is not None:
                self._drainer.join(timeout=2)
                self._drainer = None
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except (OSError, ValueError):
                        pass
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalFhirServer:
        """Start the server and return it."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the server."""
        self.stop()
