"""What the routes need, built once per app: settings, the database engine and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy.engine import Engine

from service.api.throttle import AuthThrottle
from service.fhir.client import FhirClient
from service.fhir.factory import client_from_settings
from service.settings import Settings
from service.store.security import ConsoleSessions
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine


def utcnow() -> datetime:
    """Return the current UTC instant."""
    return datetime.now(UTC)


@dataclass
class Container:
    """Dependencies of the API, kept in `app.extensions["planbridge"]`."""

    settings: Settings
    engine: Engine
    clock: Callable[[], datetime] = utcnow

    _fhir: FhirClient | None = None
    throttle: AuthThrottle = field(init=False)  # failed API keys and console sign-ins
    console_sessions: ConsoleSessions = field(init=False)

    def __post_init__(self) -> None:
        self.throttle = AuthThrottle(self.engine, self.settings)
        self.console_sessions = ConsoleSessions(self.engine)

    def uow(self) -> UnitOfWork:
        """Return a new unit of work."""
        return UnitOfWork(self.engine)

    def fhir(self) -> FhirClient:
        """Return the FHIR client for FHIR_BASE_URL (ConfigurationError when none is set)."""
        if self._fhir is None:
            self._fhir = client_from_settings(self.settings)
        return self._fhir

    def sync_engine(self) -> SyncEngine:
        """Return a sync engine on this app's database and FHIR server."""
        return SyncEngine(self.uow(), self.fhir(), self.settings, self.clock)


def container() -> Container:
    """Return the current app's container."""
    return current_app.extensions["planbridge"]
