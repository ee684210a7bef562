"""`planbridge plans`: adopting the EHR's own CarePlans, and importing plans from files."""

from __future__ import annotations

import sys

import click

from service.cli_sync import _emit, _engine, _run, _use_dev_setup
from service.domain.errors import PlanbridgeError


@click.group()
def plans() -> None:
    """Adopt CarePlans the EHR authored as shared plans, or import a plan from a file."""


@plans.command("adopt")
@click.option("--patient", "mrn", help="Every CarePlan of the patient with this MRN (PLANBRIDGE_MRN_SYSTEM).")
@click.option("--careplan", "careplan", help="One CarePlan by server id: 123 or CarePlan/123.")
@click.option("--url", "url", help="One CarePlan by its absolute URL on FHIR_BASE_URL: [base]/CarePlan/123.")
def plans_adopt(mrn: str | None, careplan: str | None, url: str | None) -> None:
    """Adopt EHR-authored CarePlans: each becomes a shared plan (`careplan-<id>`), tracked by resource id.

    Adopting again re-reads them ("unchanged" when nothing moved). Prints each plan id and its outcome, and
    (`notifications`) the Subscriptions that tell planbridge of the EHR's edits to them, or why there are none.
    A CarePlan that cannot be a plan (its subject is no Patient...) is not adopted: the reason and the element
    go to stderr and the exit status is 1 (what was adopted beside it is still printed).
    """
    from service.cli_sync import _follow_adopted
    from service.sync.adopt import Target, adoption_answer, careplan_target, refusal_line

    if sum(x is not None for x in (mrn, careplan, url)) != 1:
        raise click.UsageError("give one of --patient MRN, --careplan ID or --url URL")
    engine = _engine()
    base_url = engine.puller.client.base_url
    target = _run(lambda: Target(mrn=mrn) if mrn is not None else careplan_target(careplan or url or "", base_url))
    result = _run(lambda: engine.adopt(target))
    adopted = _run(lambda: adoption_answer(result.outcomes, result.refusals))  # none adoptable: exit 1
    _emit({"adopted": adopted, "requests": result.requests, "notifications": _follow_adopted(engine, result)})
    refused = [item for item in adopted if item["outcome"] == "invalid"]
    for item in refused:
        click.echo(f"Error: not-adoptable: {refusal_line(item)}", err=True)
    if refused:
        sys.exit(1)


@plans.command("import")
@click.argument("file", metavar="FILE")
@click.option("--replace", is_flag=True, help="Replace a stored plan with the same id.")
def plans_import(file: str, replace: bool) -> None:
    """Store the plan in FILE (plan JSON, or a FHIR Bundle around one CarePlan; - for stdin) and queue its push.

    Checked as `planbridge convert` checks it. Prints the plan id.
    """
    from service.api.container import utcnow
    from service.cli import _read_input, _report, _settings
    from service.convert import ConversionRefused, parse_json
    from service.store.db import create_engine
    from service.store.uow import UnitOfWork
    from service.sync.adopt import import_document

    _use_dev_setup()
    settings, raw = _settings(), _read_input(file)
    try:
        plan = import_document(
            UnitOfWork(create_engine(settings.database_url)), parse_json(raw), settings, utcnow(), replace
        )
    except ConversionRefused as refused:
        _report(refused.issues, f"{refused.detail} ({file})")
        sys.exit(1)
    except PlanbridgeError as exc:
        raise click.ClickException(f"{exc.code}: {exc.detail}") from None
    click.echo(plan.id)
