"""`planbridge sync`, `planbridge conflicts`, `planbridge outbox`, `subscribe` and `demo`: operating the FHIR sync by
hand (`planbridge fhir check` is in service/cli_fhir.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from service.domain.errors import PlanbridgeError
from service.settings import Settings

DEV_SETUP = Path("var") / "dev.json"  # written by `planbridge dev` while it runs, in the directory it runs in
NOT_SET = (
    "FHIR_BASE_URL is not set, and no running `planbridge dev` was found (no var/dev.json in {cwd}): "
    "export FHIR_BASE_URL (and DATABASE_URL, if not the default), or run this in the directory where "
    "`planbridge dev` runs"
)


def _recorded(root: Path | None = None) -> dict[str, Any] | None:
    """Return what `planbridge dev` recorded in var/dev.json under root (by default the current directory);
    None when there is no such file or it holds no JSON object."""
    try:
        recorded = json.loads(((root or Path.cwd()) / DEV_SETUP).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def dev_setup(root: Path | None = None) -> dict[str, str]:
    """Return the settings `planbridge dev` recorded in var/dev.json (under root, by default the current
    directory) for the variables the environment leaves unset; empty when there is no such file."""
    recorded = _recorded(root)
    if recorded is None:
        return {}
    found = {
        "FHIR_BASE_URL": recorded.get("fhir_base_url"),
        "DATABASE_URL": recorded.get("database_url"),
        "PLANBRIDGE_PUBLIC_URL": recorded.get("api"),
    }
    notify = (root or Path.cwd()) / DEV_SETUP.parent / "notify-secret"
    if notify.exists():
        found["PLANBRIDGE_FHIR_NOTIFY_SECRET"] = notify.read_text().strip()
    return {k: str(v) for k, v in found.items() if v and not os.environ.get(k)}


def _say_dev_setup(shown: str) -> None:
    click.echo(f"planbridge: using the running `planbridge dev` setup from {DEV_SETUP}: {shown}", err=True)


def _use_dev_setup() -> None:
    """When FHIR_BASE_URL is unset, take the running `planbridge dev`'s settings from var/dev.json, and say so."""
    if os.environ.get("FHIR_BASE_URL"):
        return
    found = dev_setup()
    if "FHIR_BASE_URL" not in found:
        return
    os.environ.update(found)
    _say_dev_setup(", ".join(f"{k}={v}" for k, v in found.items() if k != "PLANBRIDGE_FHIR_NOTIFY_SECRET"))


DEFAULT_API = "http://127.0.0.1:8000"  # where `planbridge dev` and `serve` listen unless told


def api_url(given: str | None, path: str = "") -> str:
    """Return the planbridge URL a client command posts to: `--url` when given, else the API of the running
    `planbridge dev` recorded in var/dev.json (said on stderr, as the other commands say it), else port 8000."""
    if given:
        return given
    api = (_recorded() or {}).get("api")
    if isinstance(api, str) and api.startswith(("http://", "https://")):
        url = api.rstrip("/") + path
        _say_dev_setup(f"--url {url}")
        return url
    return DEFAULT_API + path


def _engine() -> Any:
    from service.api.container import utcnow
    from service.fhir.factory import client_from_settings
    from service.store.db import create_engine
    from service.store.uow import UnitOfWork
    from service.sync.engine import SyncEngine

    _use_dev_setup()
    try:
        settings = Settings.from_env()
        if not settings.fhir_base_url:
            raise click.ClickException(NOT_SET.format(cwd=Path.cwd()))
        client = client_from_settings(settings)
    except PlanbridgeError as exc:
        raise click.ClickException(exc.detail) from None
    return SyncEngine(UnitOfWork(create_engine(settings.database_url)), client, settings, utcnow)


def _emit(value: Any) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    click.echo(json.dumps(value, indent=2, default=str))


def _run(action: Any) -> Any:
    try:
        return action()
    except PlanbridgeError as exc:
        raise click.ClickException(f"{exc.code}: {exc.detail}") from None


MAX_ROW_ID = 2**31 - 1  # row ids are INTEGER (32 bits on PostgreSQL): a larger one names nothing (as in the API)
ROW_IDS = click.IntRange(min=0, max=MAX_ROW_ID)


def _row_id(kind: str, value: int) -> int:
    """Return a row id, or stop with not-found for one no row can have (SQLite cannot even compare it)."""
    if not 0 < value <= MAX_ROW_ID:
        raise click.ClickException(f"not-found: {kind} {value} does not exist")
    return value


def _unknown_plans(engine: Any, plan_ids: list[str]) -> list[str]:
    """Return those of plan_ids planbridge does not hold (as GET /plans/{id}/sync answers 404 for them)."""
    from service.api.schemas.fhirtypes import ID as PLAN_ID

    with engine.uow as uow:
        return [p for p in plan_ids if not (PLAN_ID.regex.fullmatch(p) and uow.plans.get(p) is not None)]


def _known_plan(engine: Any, plan_id: str) -> None:
    """Stop with not-found unless planbridge holds the plan (as GET /plans/{id}/sync answers 404)."""
    if _unknown_plans(engine, [plan_id]):
        raise click.ClickException(f"not-found: plan {plan_id} does not exist")


@click.group()
def sync() -> None:
    """Push plans to FHIR_BASE_URL, pull what changed there, and show where each plan stands."""


@sync.command("push")
@click.option("--plan", "plan_ids", multiple=True, help="A plan id (repeatable).")
@click.option("--all", "push_all", is_flag=True, help="Every plan.")
def sync_push(plan_ids: tuple[str, ...], push_all: bool) -> None:
    """Push plans: one transaction per changed plan, nothing for an unchanged one."""
    if bool(plan_ids) == push_all:
        raise click.UsageError("give --plan ID (one or more) or --all")
    engine = _engine()
    results: list[dict[str, Any]] = []
    failures = []
    for plan_id in _run(engine.plan_ids) if push_all else plan_ids:
        try:
            results.append(dataclasses.asdict(engine.push(plan_id)))
        except PlanbridgeError as exc:  # recorded on the plan as its last_error; the other plans go on
            failures.append(f"{plan_id}: {exc.code}: {exc.detail}")
            results.append({"plan_id": plan_id, "status": "failed", "error": f"{exc.code}: {exc.detail}"})
    _emit(results)
    if failures:
        raise click.ClickException("; ".join(failures)[:4000])


# A FHIR instant (https://hl7.org/fhir/R4/datatypes.html#instant): date, time to the second and a zone.
INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})", re.ASCII)


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Take --since only as a FHIR instant the server's `_lastUpdated` and `_since` searches can take: an
    input error stops here, as a usage error, and is never sent to the server."""
    from service.api.schemas.fhirtypes import MAX_ZONE

    try:
        parsed = datetime.fromisoformat(value) if value is not None and INSTANT.fullmatch(value) else None
    except ValueError:  # a day or hour that does not exist
        parsed = None
    if value is not None and (parsed is None or abs(parsed.utcoffset() or MAX_ZONE) > MAX_ZONE):
        raise click.BadParameter(
            f"{value!r} is not a FHIR instant: give e.g. 2026-12-01T00:00:00Z or 2026-12-01T09:30:00+01:00"
        )
    return value


@sync.command("pull")
@click.option("--plan", "plan_ids", multiple=True, help="A plan id (repeatable).")
@click.option("--patient", "mrn", help="Every CarePlan of the patient with this MRN.")
@click.option(
    "--since",
    callback=_instant,
    help="Pull what changed after this FHIR instant, e.g. 2026-12-01T00:00:00Z (default: since the last pull).",
)
def sync_pull(plan_ids: tuple[str, ...], mrn: str | None, since: str | None) -> None:
    """Pull plans and merge them into the shared plans (incremental when no plan or patient is named)."""
    if plan_ids and mrn:
        raise click.UsageError("give --plan or --patient, not both")
    if since is not None and (plan_ids or mrn):  # a named pull reads the whole plan: --since would be ignored
        raise click.UsageError("--since is for the incremental pull only: give it without --plan or --patient")
    engine = _engine()
    if plan_ids:
        result = _run(lambda: engine.pull_plans(list(plan_ids)))
    elif mrn:
        from service.sync.subscriptions import NOTHING_ADOPTED

        result = _run(lambda: engine.pull_patient(mrn))
        followed = _follow_adopted(engine, result)
        if followed["detail"] != NOTHING_ADOPTED:  # the patient's CarePlans included some the EHR authored
            _emit({**dataclasses.asdict(result), "notifications": followed})
            return
    else:
        result = _run(lambda: engine.pull_changed(since))
    _emit(result)


def _follow_adopted(engine: Any, result: Any) -> dict[str, Any]:
    """After an adoption: the Subscriptions that notify planbridge of EHR edits to the adopted plans
    (service.sync.subscriptions.follow_adopted); what is not subscribed is said, never an error."""
    from service.sync.subscriptions import follow_adopted

    return follow_adopted(engine.uow, engine.puller.client, engine.puller.settings, result.outcomes)


@sync.command("repair")
@click.option("--plan", "plan_ids", multiple=True, help="A plan id (repeatable).")
@click.option("--all", "repair_all", is_flag=True, help="Every plan.")
def sync_repair(plan_ids: tuple[str, ...], repair_all: bool) -> None:
    """Put back plans the server lost (a restored backup, a purge, a restarted in-memory server).

    Checks each plan's linked CarePlan (one search per 50 plans); a plan whose CarePlan is gone is
    relinked by planbridge's identifier or, when nothing carries it, its links are forgotten and it is
    pushed again at once. Prints {plan id: "present" | "relinked" | "recreated" | "not-linked" | "failed" |
    "not-found"}; a named plan planbridge does not hold is "not-found" (exit 1, the others repaired).
    """
    from service.sync.recovery import repair_plans

    if bool(plan_ids) == repair_all:
        raise click.UsageError("give --plan ID (one or more) or --all")
    engine = _engine()
    ids = _run(engine.plan_ids) if repair_all else list(plan_ids)
    unknown = [] if repair_all else _unknown_plans(engine, ids)
    held = [p for p in ids if p not in unknown]
    puller = engine.puller
    summary = _run(lambda: repair_plans(engine.uow, puller.client, puller.settings, engine.clock, held, engine.push))
    _emit(dict(sorted({**summary, **dict.fromkeys(unknown, "not-found")}.items())))
    if unknown:
        raise click.ClickException("; ".join(f"not-found: plan {p} does not exist" for p in sorted(set(unknown))))


@sync.command("status")
@click.option("--plan", "plan_id", help="One plan (default: every plan).")
def sync_status(plan_id: str | None) -> None:
    """Show sync state, FHIR ids and versions, last error and open conflicts."""
    engine = _engine()
    if plan_id is not None:
        _known_plan(engine, plan_id)
        _emit(_run(lambda: engine.status(plan_id)))
        return
    with engine.uow as uow:
        plan_ids = uow.plans.ids()
    _emit([dataclasses.asdict(engine.status(p)) for p in plan_ids])


@click.group()
def conflicts() -> None:
    """List and resolve fields both sides changed."""


@conflicts.command("list")
@click.option("--plan", "plan_id", help="Only this plan's conflicts.")
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too.")
def conflicts_list(plan_id: str | None, show_all: bool) -> None:
    """List open conflicts (base, ours, theirs)."""
    from service.sync.engine import conflict_dict

    engine = _engine()
    with engine.uow as uow:
        rows = uow.sync.conflicts(plan_id, status=None if show_all else "open")
        _emit([conflict_dict(r) for r in rows])


@conflicts.command("resolve")
@click.argument("conflict_id", type=int)
@click.option("--take", type=click.Choice(["ours", "theirs"]), help="Keep our value or theirs.")
@click.option("--value", "value_json", help="Set this JSON value instead.")
def conflicts_resolve(conflict_id: int, take: str | None, value_json: str | None) -> None:
    """Resolve a conflict; when a plan has none left it is queued for a push."""
    if bool(take) == (value_json is not None):
        raise click.UsageError("give --take ours|theirs or --value JSON")
    value = None
    if value_json is not None:
        from service.convert import ConversionRefused, parse_json  # JSON proper: no NaN, no nesting past the stack

        try:
            value = parse_json(value_json.encode())
        except ConversionRefused:
            raise click.UsageError("--value must be JSON, e.g. '\"on-hold\"'") from None
    engine = _engine()
    _row_id("conflict", conflict_id)
    _emit(_run(lambda: engine.resolve(conflict_id, take or "value", value)))


@click.group()
def outbox() -> None:
    """Look at and replay the pushes waiting for the FHIR server."""


def _uow() -> Any:
    from service.store.db import create_engine
    from service.store.uow import UnitOfWork

    _use_dev_setup()
    try:
        settings = Settings.from_env()
    except PlanbridgeError as exc:
        raise click.ClickException(exc.detail) from None
    return UnitOfWork(create_engine(settings.database_url))


@outbox.command("list")
@click.option("--status", type=click.Choice(["pending", "done", "dead"]), help="Only entries in this state.")
@click.option("--plan", "plan_id", help="Only this plan's entries.")
@click.option("--after", type=ROW_IDS, default=0, help="Only entries with ids above this one.")
@click.option(
    "--limit", type=click.IntRange(min=1, max=MAX_ROW_ID), default=100, show_default=True, help="At most this many."
)
def outbox_list(status: str | None, plan_id: str | None, after: int, limit: int) -> None:
    """List outbox entries, oldest first, a page at a time (--after the last id shown for the next)."""
    from service.api.plans import outbox_dict

    with _uow() as uow:
        _emit([outbox_dict(r) for r in uow.outbox.list(plan_id, status, after=after, limit=limit)])


@outbox.command("replay")
@click.argument("entry_ids", nargs=-1, type=int)
@click.option("--all-dead", is_flag=True, help="Every dead entry.")
def outbox_replay(entry_ids: tuple[int, ...], all_dead: bool) -> None:
    """Queue dead entries again (due now, attempts reset)."""
    from service.api.container import utcnow
    from service.api.plans import outbox_dict

    if bool(entry_ids) == all_dead:
        raise click.UsageError("give entry ids or --all-dead")
    with _uow() as uow:
        if all_dead:
            rows = uow.outbox.list(status="dead")
        else:
            rows = [_run(lambda i=i: uow.outbox.get(_row_id("outbox entry", i))) for i in entry_ids]
        not_dead = [r.id for r in rows if r.status != "dead"]
        if not_dead:
            raise click.ClickException(f"only dead entries are replayed; not dead: {not_dead}")
        for row in rows:
            uow.outbox.replay(row, utcnow())
        uow.commit()
        _emit([outbox_dict(r) for r in rows])


@click.command()
@click.option("--status", "show_status", is_flag=True, help="Show the Subscriptions' state instead of writing them.")
@click.option(
    "--rotate",
    is_flag=True,
    help="Give every Subscription a new secret; the previous ones are accepted for one more hour, then refused.",
)
def subscribe(show_status: bool, rotate: bool) -> None:
    """Create or update the FHIR Subscriptions that notify planbridge of changes (rest-hook to our public URL),
    those watching the patients of adopted plans included.

    Each carries a secret of its own in channel.header (derived from PLANBRIDGE_FHIR_NOTIFY_SECRET, readable
    by whoever may read Subscriptions on the server); --rotate replaces them."""
    from service.api.container import utcnow
    from service.sync import subscriptions

    if show_status and rotate:
        raise click.UsageError("give --status or --rotate, not both")
    engine = _engine()
    client, settings = engine.pusher.client, engine.pusher.settings
    if show_status:
        _emit(_run(lambda: subscriptions.status(client, settings)))
        return
    if rotate and not settings.fhir_notify_secret:
        _run(lambda: subscriptions.desired(settings))  # names the missing setting
    if rotate:
        state = subscriptions.rotate(engine.uow, utcnow())
        click.echo(
            f"planbridge: notify secrets now generation {state.current}; generation {state.previous} is accepted "
            f"until {state.previous_until:%Y-%m-%dT%H:%M:%SZ}",
            err=True,
        )
    generation = subscriptions.current_generation(engine.uow)
    patients = _run(lambda: subscriptions.adopted_patient_ids(engine.uow))  # those of adopted plans
    try:
        # those of patients no adopted plan names any more are deleted; the database is asked again just before
        held = subscriptions.subscribe(
            client, settings, generation, patients, still_adopted=lambda: subscriptions.adopted_patient_ids(engine.uow)
        )
    except PlanbridgeError as exc:
        hint = " (run `planbridge subscribe` again before the previous secrets expire)" if rotate else ""
        raise click.ClickException(f"{exc.code}: {exc.detail}{hint}") from None
    _emit(
        [
            {
                "id": s.get("id"),
                "criteria": s.get("criteria"),
                "status": s.get("status"),
                "secret_generation": generation,
                "adopted_patient": subscriptions.patient_of(s),
            }
            for s in held
        ]
    )


@click.command()
@click.option(
    "--url",
    default=None,
    help=f"The running planbridge (default: the API a running `planbridge dev` recorded in var/dev.json here, "
    f"else {DEFAULT_API}).",
)
def demo(url: str | None) -> None:
    """Run a short collaborative story against the running service and its FHIR server, printing each step."""
    from pathlib import Path

    from service.demo import run_demo

    var = Path("var")

    def from_var(name: str) -> str | None:
        path = var / name
        return path.read_text().strip() if path.exists() else None

    dev = json.loads(from_var("dev.json") or "{}")
    settings = Settings.from_env()
    secret = (settings.webhook_secrets or (from_var("webhook-secret"),))[0]
    api_key = (settings.api_keys or (from_var("api-key"),))[0]
    fhir_base = settings.fhir_base_url or dev.get("fhir_base_url")
    if not (secret and api_key and fhir_base):
        raise click.ClickException("start the service first (bash scripts/run.sh), from this directory")
    run_demo(api_url(url), fhir_base, secret, api_key, settings.identifier_base, click.echo)
