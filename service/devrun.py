"""`planbridge dev`: the README's run command, everything on embedded defaults."""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import requests

from service.signing import new_secret, sign_headers

WORKERS = (["worker"], ["notifications", "worker"])  # what runs beside the API: FHIR sync, team deliveries
EXAMPLE_EVENT = Path(__file__).resolve().parent.parent / "fixtures" / "events" / "goal-proposed.json"


def _example(port: int, secret: str) -> str:
    body = EXAMPLE_EVENT.read_bytes()
    headers = sign_headers(secret, body)
    flags = " ".join(f"-H '{k}: {v}'" for k, v in headers.items())
    path = EXAMPLE_EVENT.relative_to(Path.cwd()) if EXAMPLE_EVENT.is_relative_to(Path.cwd()) else EXAMPLE_EVENT
    return (
        f"curl -i http://127.0.0.1:{port}/webhooks/team -H 'Content-Type: application/json' {flags} "
        f"--data-binary @{path}"
    )


def _kept(var_dir: Path, name: str, make: Callable[[], str]) -> str:
    """Return a generated value kept in var/<name> (made on first use, readable only by us)."""
    path = var_dir / name
    if not path.exists():
        path.write_text(make() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _subscribe_when_up(port: int) -> None:
    """Once the API answers, ask the local FHIR server to notify it of changes (rest-hook)."""
    from service.fhir.factory import client_from_settings
    from service.settings import Settings
    from service.store.db import create_engine
    from service.store.uow import UnitOfWork
    from service.sync.subscriptions import adopted_patient_ids, current_generation, subscribe

    for _ in range(100):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                settings = Settings.from_env()
                uow = UnitOfWork(create_engine(settings.database_url))
                # planbridge's own Subscriptions, and those watching the patients of adopted plans
                subscribe(
                    client_from_settings(settings),
                    settings,
                    current_generation(uow),
                    adopted_patient_ids(uow),
                    still_adopted=functools.partial(adopted_patient_ids, uow),
                )
                return
        except requests.RequestException:
            time.sleep(0.2)


def run_dev(root: Path, port: int) -> None:
    """Migrate, start what is missing, print how to use it, serve until interrupted."""
    from service.devfhir import LocalFhirServer
    from service.settings import Settings
    from service.store.db import create_engine, upgrade

    var_dir = root / "var"
    var_dir.mkdir(exist_ok=True)
    generated = not os.environ.get("PLANBRIDGE_WEBHOOK_SECRET")
    if generated:
        os.environ["PLANBRIDGE_WEBHOOK_SECRET"] = _kept(var_dir, "webhook-secret", new_secret)
    os.environ.setdefault("PLANBRIDGE_API_KEYS", _kept(var_dir, "api-key", lambda: secrets.token_urlsafe(24)))
    os.environ.setdefault(
        "PLANBRIDGE_FHIR_NOTIFY_SECRET", _kept(var_dir, "notify-secret", lambda: secrets.token_urlsafe(24))
    )
    os.environ.setdefault(
        "PLANBRIDGE_SESSION_SECRET", _kept(var_dir, "session-secret", lambda: secrets.token_urlsafe(48))
    )
    os.environ.setdefault("PLANBRIDGE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    os.environ.setdefault("PLANBRIDGE_OUTBOUND_ALLOW", "127.0.0.0/8")  # local team endpoints, for the demo
    settings = Settings.from_env()
    upgrade(create_engine(settings.database_url))
    fhir = None
    if not settings.fhir_base_url:
        fhir = LocalFhirServer(log_path=var_dir / "fhir-server.log")
        os.environ["FHIR_BASE_URL"] = fhir.start()
        os.environ.setdefault("PLANBRIDGE_CREATE_PATIENTS", "true")
    base = os.environ["FHIR_BASE_URL"]
    setup = {"api": f"http://127.0.0.1:{port}", "fhir_base_url": base, "database_url": settings.database_url}
    (var_dir / "dev.json").write_text(json.dumps(setup))  # read by the CLI in a second shell, and `dev --env`
    workers = [subprocess.Popen([sys.executable, "-m", "service.cli", *args]) for args in WORKERS]
    if fhir:
        threading.Thread(target=_subscribe_when_up, args=(port,), daemon=True).start()
    event = EXAMPLE_EVENT.relative_to(root) if EXAMPLE_EVENT.is_relative_to(root) else EXAMPLE_EVENT
    env_prefix = "PLANBRIDGE_WEBHOOK_SECRET=$(cat var/webhook-secret) " if generated else ""
    api = f"http://127.0.0.1:{port}"
    # the commands' own default is port 8000: elsewhere the printed commands name the API (as var/dev.json does)
    send_url, demo_url = ("", "") if port == 8000 else (f" --url {api}/webhooks/team", f" --url {api}")
    click.echo(f"""
planbridge is starting
  API              http://127.0.0.1:{port}   (health: http://127.0.0.1:{port}/healthz, docs: /docs)
  team webhooks    POST http://127.0.0.1:{port}/webhooks/team
  FHIR server      {base}{f"   (local, in-memory, {fhir.profile} profile; notifies planbridge)" if fhir else ""}
  database         {settings.database_url}
  webhook secret   {"var/webhook-secret (generated)" if generated else "from PLANBRIDGE_WEBHOOK_SECRET"}
  API key          var/api-key unless PLANBRIDGE_API_KEYS is set
  console          http://127.0.0.1:{port}/console/   (sign in with the API key)

Send a signed example event (from another terminal, in this directory):
  {env_prefix}.venv/bin/planbridge webhook send {event}{send_url}
or with curl (the signature is valid for 5 minutes):
  {_example(port, os.environ["PLANBRIDGE_WEBHOOK_SECRET"])}
Then see the Goal on the FHIR server, and the plan and its sync state through the API:
  eval "$(.venv/bin/planbridge dev --env)"    # FHIR_BASE_URL={base}, DATABASE_URL, ...
  curl "$FHIR_BASE_URL/Goal?_count=5"
  curl -H "Authorization: Bearer $(cat var/api-key)" http://127.0.0.1:{port}/plans/plan-ed-0001/sync
Or watch a whole collaborative story, EHR edit and team notification included:
  .venv/bin/planbridge demo{demo_url}
""")
    owner = os.getpid()
    try:
        from service.gunicorn_app import default_shape, run

        run("127.0.0.1", port, *default_shape(settings.database_url))
    finally:
        # gunicorn's workers are forks of this process and leave through here too (their SystemExit): only
        # the process that started the workers and the FHIR server stops them. A fork that tried waited on
        # processes that are not its children until gunicorn's graceful timeout ran out.
        if os.getpid() == owner:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=10)
            if fhir:
                fhir.stop()
            (var_dir / "dev.json").unlink(missing_ok=True)  # nothing runs any more: a second shell must not find it
