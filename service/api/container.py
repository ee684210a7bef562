"""What the routes need, built once per app: settings, the database engine and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy.engine import Engine

from service.settings import Settings
from service.store.uow import UnitOfWork


def utcnow() -> datetime:
    """Return the current UTC instant."""
    return datetime.now(UTC)


@dataclass
class Container:
    """Dependencies of the API, kept in `app.extensions["planbridge"]`."""

    settings: Settings
    engine: Engine
    clock: Callable[[], datetime] = utcnow

    def uow(self) -> UnitOfWork:
        """Return a new unit of work."""
        return UnitOfWork(self.engine)


def container() -> Container:
    """Return the current app's container."""
    return current_app.extensions["planbridge"]
