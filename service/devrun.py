"""`planbridge dev`: the README's run command, everything on embedded defaults."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import click

from service.signing import new_secret, sign_headers

EXAMPLE_EVENT = Path(__file__).resolve().parent.parent / "fixtures" / "events" / "goal-proposed.json"


def _secret(var_dir: Path) -> str:
    path = var_dir / "webhook-secret"
    if not path.exists():
        path.write_text(new_secret() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _api_key(var_dir: Path) -> str:
    path = var_dir / "api-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _example(port: int, secret: str) -> str:
    body = EXAMPLE_EVENT.read_bytes()
    headers = sign_headers(secret, body)
    flags = " ".join(f"-H '{k}: {v}'" for k, v in headers.items())
    path = EXAMPLE_EVENT.relative_to(Path.cwd()) if EXAMPLE_EVENT.is_relative_to(Path.cwd()) else EXAMPLE_EVENT
    return (
        f"curl -i http://127.0.0.1:{port}/webhooks/team -H 'Content-Type: application/json' {flags} "
        f"--data-binary @{path}"
    )


def run_dev(root: Path, port: int) -> None:
    """Migrate, start what is missing, print how to use it, serve until interrupted."""
    from service.devfhir import LocalFhirServer
    from service.settings import Settings
    from service.store.db import create_engine, upgrade

    var_dir = root / "var"
    var_dir.mkdir(exist_ok=True)
    generated = not os.environ.get("PLANBRIDGE_WEBHOOK_SECRET")
    if generated:
        os.environ["PLANBRIDGE_WEBHOOK_SECRET"] = _secret(var_dir)
    if not os.environ.get("PLANBRIDGE_API_KEYS"):
        os.environ["PLANBRIDGE_API_KEYS"] = _api_key(var_dir)
    settings = Settings.from_env()
    upgrade(create_engine(settings.database_url))
    fhir = None
    if not settings.fhir_base_url:
        fhir = LocalFhirServer(log_path=var_dir / "fhir-server.log")
        os.environ["FHIR_BASE_URL"] = fhir.start()
        os.environ.setdefault("PLANBRIDGE_CREATE_PATIENTS", "true")
    worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"])
    base = os.environ["FHIR_BASE_URL"]
    event = EXAMPLE_EVENT.relative_to(root) if EXAMPLE_EVENT.is_relative_to(root) else EXAMPLE_EVENT
    env_prefix = "PLANBRIDGE_WEBHOOK_SECRET=$(cat var/webhook-secret) " if generated else ""
    click.echo(f"""
planbridge is starting
  API              http://127.0.0.1:{port}   (health: http://127.0.0.1:{port}/healthz)
  team webhooks    POST http://127.0.0.1:{port}/webhooks/team
  FHIR server      {base}{"   (local, in-memory)" if fhir else ""}
  database         {settings.database_url}
  webhook secret   {"var/webhook-secret (generated)" if generated else "from PLANBRIDGE_WEBHOOK_SECRET"}

Send a signed example event (from another terminal, in this directory):
  {env_prefix}.venv/bin/planbridge webhook send {event}
or with curl (the signature is valid for 5 minutes):
  {_example(port, os.environ["PLANBRIDGE_WEBHOOK_SECRET"])}
Then see the Goal on the FHIR server:
  curl '{base}/Goal?_count=5'
and the plan and its sync state through the API (key in var/api-key unless PLANBRIDGE_API_KEYS is set):
  curl -H "Authorization: Bearer $(cat var/api-key)" http://127.0.0.1:{port}/plans/plan-ed-0001/sync
API reference: http://127.0.0.1:{port}/docs
""")
    try:
        from service.gunicorn_app import run

        run("127.0.0.1", port, 2)
    finally:
        worker.terminate()
        worker.wait(timeout=10)
        if fhir:
            fhir.stop()
