"""`planbridge fhir check`: what the configured FHIR server offers of what planbridge needs."""

from __future__ import annotations

from typing import Any

import click

from service.cli_sync import _emit, _engine, _run


@click.group()
def fhir() -> None:
    """Look at the configured FHIR server."""


@fhir.command("check")
@click.option(
    "--no-probe",
    is_flag=True,
    help="Only read the CapabilityStatement: write no scratch resources (features are then not probed).",
)
def fhir_check(no_probe: bool) -> None:
    """Probe the server for everything sync relies on and name what planbridge needs that it lacks (exit 1 if
    anything required is missing). Probes write scratch Basic resources with a probe identifier, then delete them."""
    from service.fhir.auth import SmartBackendAuth
    from service.fhir.capabilities import check_server, missing_capabilities

    engine = _engine()
    settings = engine.pusher.settings
    client = engine.pusher.client
    statement = _run(client.capabilities)  # with SMART, a token is fetched first: its failure is one line
    missing = missing_capabilities(statement, create_patients=settings.create_patients)
    checked = check_server(client, statement, probe=not no_probe)
    missing += [gap for gap in checked.missing() if gap not in missing]
    found: dict[str, Any] = {"server": settings.fhir_base_url, "fhirVersion": statement.get("fhirVersion")}
    found["software"] = (statement.get("software") or {}).get("name")
    found["missing"] = missing
    found["features"] = {
        name: {"ok": f.ok, "required": f.required, "probed": f.probed, "detail": f.detail, "without_it": f.without_it}
        for name, f in checked.features.items()
    }
    found["limits"] = {
        "max_strict_entries": checked.limits.max_strict_entries,
        "max_updates": checked.limits.max_updates,
        "stale_version_status": checked.stale_version_status,
    }
    transaction = checked.features.get("transaction")
    if transaction is not None and transaction.ok and transaction.probed:
        found["limits_remembered"] = _remember_limits(engine.pusher.uow, client.base_url, checked.limits)
    auth = client.session.auth
    if isinstance(auth, SmartBackendAuth):  # its key was checked against SMART_ALGORITHM when the client was made
        scope = auth.scope()
        found["smart"] = {"token_endpoint": auth.token_url(), "scopes": auth.scope_version, "scope": scope}
        found["smart"]["token_lifetime_seconds"] = auth.token_lifetime
    _emit(found)
    if missing:
        raise SystemExit(1)


def _remember_limits(uow: Any, base_url: str, limits: Any) -> bool:
    """Keep the transaction limits a probe measured where pushes look for what they learned of this server
    (replacing what a refusal taught earlier: the probe measured the server as it is now). False when the
    database cannot take it (not upgraded yet)."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.sync.split import LEARNED, encode_limits, limits_cursor

    try:
        with uow:
            uow.sync.set_cursor(limits_cursor(base_url), encode_limits(limits))
            uow.commit()
    except SQLAlchemyError:
        return False
    LEARNED.forget(base_url)
    return True
