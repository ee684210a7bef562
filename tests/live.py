"""The service over real HTTP for end-to-end tests: the app on a free port and a worker to drain it."""

from __future__ import annotations

import json
import threading

import requests
import sqlalchemy as sa
from werkzeug.serving import make_server

from service.api.app import create_app
from service.api.container import utcnow
from service.fhir.client import FhirClient
from service.store.tables import Base
from service.store.uow import UnitOfWork
from service.sync.worker import OutboxWorker
from tests.support import settings, signed


class Live:
    """The app served on 127.0.0.1, with an outbox worker whose FHIR client can be swapped."""

    def __init__(self, engine, fhir_base_url: str, **overrides) -> None:
        self.engine = engine
        self.settings = settings(fhir_base_url=fhir_base_url, **overrides)
        self.server = make_server("127.0.0.1", 0, create_app(self.settings, engine), threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.fhir = FhirClient(fhir_base_url, timeout=10)
        self.worker = OutboxWorker(UnitOfWork(engine), self.fhir, self.settings, utcnow)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def post(self, event: dict, session: requests.Session | None = None, **kwargs) -> requests.Response:
        body = json.dumps(event).encode()
        sender = session or requests
        return sender.post(f"{self.url}/webhooks/team", data=body, headers=signed(body, **kwargs), timeout=30)

    def count(self, table: sa.Table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    def tables(self) -> list[sa.Table]:
        return list(Base.metadata.sorted_tables)

    def close(self) -> None:
        self.server.shutdown()
