"""`planbridge notifications`: subscriptions of team systems, their delivery log, and the delivery worker."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from service.domain.errors import PlanbridgeError
from service.settings import Settings

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except PlanbridgeError as exc:
        raise click.ClickException(exc.detail) from None


def _uow(settings: Settings) -> Any:
    from service.store.db import create_engine
    from service.store.uow import UnitOfWork

    return UnitOfWork(create_engine(settings.database_url))


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except PlanbridgeError as exc:
        raise click.ClickException(f"{exc.code}: {exc.detail}") from None


def _emit(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group()
def notifications() -> None:
    """Subscriptions of team systems to plan changes, their delivery log, and the delivery worker."""


@notifications.command("list")
@click.option("--status", type=click.Choice(["active", "disabled"]), help="Only subscriptions in this state.")
def notifications_list(status: str | None) -> None:
    """List subscriptions (without their secrets), oldest first."""
    from service.notify.subscriptions import subscription_dict

    with _uow(_settings()) as uow:
        _emit([subscription_dict(r) for r in uow.subscriptions.list(status)])


@notifications.command("deliveries")
@click.argument("subscription_id", type=int)
@click.option(
    "--status", type=click.Choice(["pending", "failed", "delivered", "dead", "skipped"]), help="Only this state."
)
@click.option("--plan", "plan_id", help="Only this plan's deliveries.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=200, show_default=True)
@click.option("--after", type=click.IntRange(min=0), default=0, help="Only deliveries with ids above this one.")
def notifications_deliveries(
    subscription_id: int, status: str | None, plan_id: str | None, limit: int, after: int
) -> None:
    """Print a subscription's delivery log, oldest first (--after the last id shown for the next page)."""
    from service.notify.subscriptions import delivery_dict

    with _uow(_settings()) as uow:
        _run(lambda: uow.subscriptions.get(subscription_id))
        _emit([delivery_dict(r) for r in uow.deliveries.list(subscription_id, status, plan_id, limit, after)])


@notifications.command("replay")
@click.argument("delivery_id", type=int)
def notifications_replay(delivery_id: int) -> None:
    """Queue a dead or failed delivery again (due now, with a full set of attempts)."""
    from service.api.container import utcnow
    from service.notify.subscriptions import replay_delivery

    uow = _uow(_settings())
    _emit(_run(lambda: replay_delivery(uow, delivery_id, utcnow())))


@notifications.command("skip")
@click.argument("delivery_id", type=int)
def notifications_skip(delivery_id: int) -> None:
    """Give up on a dead or failed delivery (under strict ordering, the plan's later ones go on)."""
    from service.api.container import utcnow
    from service.notify.subscriptions import skip_delivery

    uow = _uow(_settings())
    _emit(_run(lambda: skip_delivery(uow, delivery_id, utcnow())))


@notifications.command("ordering")
@click.argument("subscription_id", type=int)
@click.argument("ordering", type=click.Choice(["best-effort", "strict"]))
def notifications_ordering(subscription_id: int, ordering: str) -> None:
    """Set a subscription's ordering: strict (a dead delivery holds back its plan's later ones) or best-effort."""
    from service.api.container import utcnow
    from service.notify.subscriptions import set_ordering

    uow = _uow(_settings())
    _emit(_run(lambda: set_ordering(uow, subscription_id, ordering, utcnow())))


@notifications.command("rotate-secret")
@click.argument("subscription_id", type=int)
@click.option(
    "--grace-seconds",
    type=click.IntRange(0, 7 * 24 * 3600),
    default=24 * 3600,
    show_default=True,
    help="How long the replaced secret still signs deliveries (beside the new one).",
)
def notifications_rotate_secret(subscription_id: int, grace_seconds: int) -> None:
    """Give a subscription a new signing secret, printed this once; the replaced one signs deliveries too
    until the grace period ends (two signatures in webhook-signature), then no more."""
    from datetime import timedelta

    from service.api.container import utcnow
    from service.notify.subscriptions import rotate_secret

    uow = _uow(_settings())
    _emit(_run(lambda: rotate_secret(uow, subscription_id, utcnow(), timedelta(seconds=grace_seconds))))


@notifications.command("worker")
@click.option("--once", is_flag=True, help="Attempt what is due, then exit.")
def notifications_worker(once: bool) -> None:
    """Deliver plan changes to subscribed team systems (signed, in order, retried; several subscribers at
    once: PLANBRIDGE_DELIVERY_CONCURRENCY)."""
    from service.api.container import utcnow
    from service.logs import configure
    from service.notify.worker import DeliveryWorker

    settings = _settings()
    configure(settings.log_level, settings.log_format)
    runner = DeliveryWorker(_uow(settings), settings, utcnow)
    if once:
        click.echo(json.dumps({"attempted": runner.run_until_idle()}))
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runner.run_forever(stop)
