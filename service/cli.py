"""The `planbridge` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click
import requests

from service.domain.errors import PlanbridgeError
from service.settings import Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except PlanbridgeError as exc:
        raise click.ClickException(exc.detail) from None


def _logging(settings: Settings) -> None:
    from service.logs import configure

    configure(settings.log_level, settings.log_format)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("planbridge")
    except PackageNotFoundError:
        return "unknown"


def database_trouble(exc: BaseException) -> str | None:
    """Return one line for an error the database or a migration raised (unreachable, not migrated, an unknown
    revision), or None for any other error. Never the statement or its parameters (they may carry PHI), nor the
    URL (it may carry a password)."""
    from alembic.util.exc import CommandError
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, CommandError):
        return f"cannot migrate: {exc}"
    if isinstance(exc, sa_exc.ArgumentError | sa_exc.NoSuchModuleError):
        return "DATABASE_URL is not a URL planbridge can open: sqlite:///<file> or postgresql://user@host/db"
    import sqlite3

    import psycopg

    from service.store.db import UNMIGRATED

    if isinstance(exc, sa_exc.DBAPIError):
        cause, unavailable = exc.orig, isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    elif isinstance(exc, sqlite3.Error | psycopg.Error):  # raised by statements run on the driver's own cursor
        cause, unavailable = exc, isinstance(exc, sqlite3.OperationalError | psycopg.OperationalError)
    else:
        return None
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if UNMIGRATED.search(reason):
        return "the database is not migrated to this planbridge's revision: run `planbridge db upgrade`"
    if unavailable:
        return f"cannot use the database (DATABASE_URL): {reason}"
    return f"the database refused a statement: {type(cause).__name__}"


class _Commands(click.Group):
    """The planbridge command group: a database that cannot be reached or is not migrated ends a command in
    one line (exit 1), never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = database_trouble(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


def env_int(name: str, default: int | None, low: int, high: int) -> int | None:
    """Read a whole-number environment variable an option defaults to; a malformed one stops the command in one
    line naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise click.ClickException(f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


PORTS = click.IntRange(1, 65535)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=_version(), prog_name="planbridge", message="%(prog)s %(version)s")
def main() -> None:
    """planbridge: shared care plans between team systems and FHIR R4 servers."""


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Migrate up to this revision.")
def db_upgrade(revision: str) -> None:
    """Apply database migrations (creates the SQLite file under ./var/ by default)."""
    from service.store.db import create_engine, current_revision, upgrade

    engine = create_engine(_settings().database_url)
    upgrade(engine, revision)
    click.echo(f"database at revision {current_revision(engine)}")


@db.command("prune")
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Delete finished work older than this (default PLANBRIDGE_RETAIN_DAYS).",
)
def db_prune(days: float | None) -> None:
    """Delete done outbox entries and delivered notifications older than the retention (the worker does
    this hourly); waiting, failed and dead work and received events are kept."""
    from service.api.container import utcnow
    from service.store.db import create_engine
    from service.store.retention import prune
    from service.store.uow import UnitOfWork

    settings = _settings()
    days = days if days is not None else settings.retain_days
    if not days:
        raise click.ClickException("PLANBRIDGE_RETAIN_DAYS is 0 (keep everything): give --days to prune anyway")
    click.echo(json.dumps(prune(UnitOfWork(create_engine(settings.database_url)), utcnow(), days)))


@db.command("current")
def db_current() -> None:
    """Print the database's migration revision and the newest one."""
    from service.store.db import create_engine, current_revision, head_revision

    engine = create_engine(_settings().database_url)
    click.echo(json.dumps({"current": current_revision(engine), "head": head_revision()}))


@main.command()
@click.option(
    "--host",
    default=lambda: os.environ.get("PLANBRIDGE_HOST", "127.0.0.1"),
    show_default="PLANBRIDGE_HOST, else 127.0.0.1",
    help="Address to listen on.",
)
@click.option(
    "--port",
    type=PORTS,
    default=lambda: env_int("PLANBRIDGE_PORT", 8000, 1, 65535),
    show_default="PLANBRIDGE_PORT, else 8000",
    help="Port to listen on.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=lambda: env_int("WEB_CONCURRENCY", None, 1, 1024),
    show_default="WEB_CONCURRENCY, else 2",
    help="gunicorn worker processes.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    show_default="8 on SQLite, 4 on PostgreSQL",
    help="Threads per worker.",
)
def serve(host: str, port: int, workers: int | None, threads: int | None) -> None:
    """Serve the API under gunicorn: 2 worker processes, of 8 threads on SQLite and of 4 on PostgreSQL,
    unless told. Without PLANBRIDGE_SESSION_SECRET, the console's session key is made once and shared
    by the workers (on SQLite kept in `session-secret` beside the database file)."""
    from service.gunicorn_app import default_shape, run

    settings = _settings()
    _logging(settings)
    default_workers, default_threads = default_shape(settings.database_url)
    try:
        run(host, port, workers or default_workers, threads or default_threads)
    except PlanbridgeError as exc:
        raise click.ClickException(exc.detail) from None


@main.command()
@click.option("--once", is_flag=True, help="Process what is due, then exit.")
def worker(once: bool) -> None:
    """Push outbox entries to the FHIR server (FHIR_BASE_URL)."""
    from service.api.container import utcnow
    from service.fhir.factory import client_from_settings
    from service.store.db import create_engine
    from service.store.uow import UnitOfWork
    from service.sync.worker import OutboxWorker

    settings = _settings()
    _logging(settings)
    try:
        client = client_from_settings(settings)
    except PlanbridgeError as exc:
        raise click.ClickException(exc.detail) from None
    engine = create_engine(settings.database_url)
    runner = OutboxWorker(UnitOfWork(engine), client, settings, utcnow)
    if once:
        click.echo(json.dumps({"processed": runner.run_until_idle()}))
        return
    from service.store.checkpoints import start_background_checkpoints

    start_background_checkpoints(engine)  # SQLite: WAL checkpoints off the commits (none on PostgreSQL)
    from service.fhir.capabilities import startup_check

    startup_check(client, settings.create_patients, logging.getLogger("planbridge.worker"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runner.run_forever(stop)


@main.group()
def webhook() -> None:
    """Sign and send team events (for trying the API and for integration testers)."""


@webhook.command("secret")
def webhook_secret() -> None:
    """Print a new whsec_ secret."""
    from service.signing import new_secret

    click.echo(new_secret())


@webhook.command("send")
@click.argument("event_file", type=click.File("rb"))
@click.option(
    "--url",
    default=None,
    help="Where to POST it (default: /webhooks/team of the API a running `planbridge dev` recorded in var/dev.json "
    "here, else http://127.0.0.1:8000/webhooks/team).",
)
@click.option("--id", "msg_id", default=None, help="webhook-id to send (default: a new one).")
@click.option(
    "--sender", default="default", show_default=True, help="sign as this sender (PLANBRIDGE_WEBHOOK_SENDERS)."
)
def webhook_send(event_file: click.utils.LazyFile, url: str | None, msg_id: str | None, sender: str) -> None:
    """Sign EVENT_FILE with the sender's first secret and POST it; print the answer."""
    from service.cli_sync import api_url
    from service.signing import sign_headers

    secrets = [secret for name, secret in _settings().signing_secrets if name == sender]
    if not secrets:
        setting = "PLANBRIDGE_WEBHOOK_SECRET" if sender == "default" else "PLANBRIDGE_WEBHOOK_SENDERS"
        raise click.ClickException(f"{setting} holds no secret for the sender {sender!r}")
    body = event_file.read()
    headers = sign_headers(secrets[0], body, msg_id)
    url = api_url(url, "/webhooks/team")
    try:
        response = requests.post(url, data=body, headers={**headers, "Content-Type": "application/json"}, timeout=30)
    except requests.RequestException as exc:
        raise click.ClickException(f"could not reach {url}: {type(exc).__name__}") from None
    click.echo(f"{response.status_code} {response.text}")
    sys.exit(0 if response.ok else 1)


def _read_input(name: str) -> bytes:
    """Return the bytes of FILE, or of stdin for "-"; an unreadable file stops the command."""
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {name}: {exc.strerror or exc}") from None


def _report(issues: list, headline: str | None = None) -> None:
    from service.convert import describe

    if headline:
        click.echo(f"planbridge: {headline}", err=True)
    for issue in issues:
        click.echo(describe(issue), err=True)


def _convert(step: Callable[[object, Settings], tuple[dict, list]], name: str) -> None:
    from service.convert import ConversionRefused, dumps, parse_json

    settings, raw = _settings(), _read_input(name)
    try:
        result, warnings = step(parse_json(raw), settings)
    except ConversionRefused as refused:
        _report(refused.issues, f"{refused.detail} ({name})")
        sys.exit(1)
    except Exception as exc:  # a mapping bug must still end in a message, never a traceback
        raise click.ClickException(f"could not convert {name}: {type(exc).__name__}: {exc}") from None
    _report(warnings)
    click.echo(dumps(result))


@main.group()
def convert() -> None:
    """Convert between the plan JSON format and FHIR R4 transaction Bundles (FILE or - for stdin)."""


@convert.command("to-fhir")
@click.argument("plan_file", metavar="PLAN.json")
def convert_to_fhir(plan_file: str) -> None:
    """Print the transaction Bundle for a plan (checked against the plan's rules first)."""
    from service.convert import to_fhir

    _convert(to_fhir, plan_file)


@convert.command("from-fhir")
@click.argument("bundle_file", metavar="BUNDLE.json")
def convert_from_fhir(bundle_file: str) -> None:
    """Print the plan JSON held by a Bundle around one CarePlan."""
    from service.convert import from_fhir

    _convert(from_fhir, bundle_file)


@main.command()
@click.argument("file", metavar="FILE")
def validate(file: str) -> None:
    """Check a plan JSON, a FHIR resource or a FHIR Bundle; print an OperationOutcome (exit 1 on errors)."""
    from service.convert import ConversionRefused, dumps, operation_outcome, parse_json
    from service.convert import validate as validate_document
    from service.domain.rules import Issue, errors

    settings, raw = _settings(), _read_input(file)
    try:
        issues = validate_document(parse_json(raw), settings)
    except ConversionRefused as refused:
        issues = refused.issues
    except Exception as exc:  # a mapping bug must still end in an answer, never a traceback
        issues = [Issue("", f"planbridge could not check this input: {type(exc).__name__}: {exc}", code="exception")]
    click.echo(dumps(operation_outcome(issues)))
    found = errors(issues)
    if found:
        _report(found, f"{file}: {len(found)} error(s)")
        sys.exit(1)


@main.command()
def schema() -> None:
    """Print the JSON Schema (Draft 2020-12) of the plan format."""
    from service.convert import dumps
    from service.planschema import plan_schema

    click.echo(dumps(plan_schema()))


@main.command()
@click.option(
    "--port",
    type=PORTS,
    default=lambda: env_int("PLANBRIDGE_PORT", 8000, 1, 65535),
    show_default="PLANBRIDGE_PORT, else 8000",
    help="Port the API listens on (127.0.0.1); the local FHIR server notifies planbridge there.",
)
@click.option(
    "--env",
    "print_env",
    is_flag=True,
    help='Print the running dev setup (var/dev.json) as shell exports and exit: eval "$(planbridge dev --env)".',
)
def dev(port: int, print_env: bool) -> None:
    """Run everything locally: migrate, start a local FHIR server if none is set, the workers and the API."""
    if print_env:
        import shlex

        from service.cli_sync import DEV_SETUP, dev_setup

        found = dev_setup()
        if not found and not (Path.cwd() / DEV_SETUP).exists():
            raise click.ClickException(f"no running `planbridge dev` here: {Path.cwd() / DEV_SETUP} does not exist")
        for name, value in found.items():
            if name != "PLANBRIDGE_FHIR_NOTIFY_SECRET":
                click.echo(f"export {name}={shlex.quote(value)}")
        return
    from service.devrun import run_dev

    run_dev(Path.cwd(), port)


def _add_operations() -> None:
    from service.cli_fhir import fhir
    from service.cli_notify import notifications
    from service.cli_plans import plans
    from service.cli_sync import conflicts, demo, outbox, subscribe, sync

    for group in (sync, conflicts, outbox, fhir, subscribe, demo, notifications, plans):
        main.add_command(group)


_add_operations()

if __name__ == "__main__":
    main()
