"""Liveness and readiness probes.

Readiness asks the database and the FHIR server, which may hang: the question is put by one probe at a
time per process, in a thread of its own, with a short timeout and no retries, and its answer is kept
for a few seconds. A request waits for the probe only when it started it, and then at most
ANSWER_WITHIN seconds; while a probe is out, other requests get the last answer at once (or "pending"
before there is one). So a hanging FHIR server costs each /readyz at most ~2 s, many /readyz at once
hold no request thread longer, and the event intake is never starved of threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy.engine import Engine

from service.api.container import Container
from service.domain.errors import PlanbridgeError
from service.fhir.client import FhirClient
from service.fhir.errors import FhirError

bp = Blueprint("health", __name__)

PROBE_TIMEOUT = 1.5  # seconds for the FHIR request (connect, then each read); no retries
ANSWER_WITHIN = 2.0  # the longest a /readyz waits for the probe it started
FRESH_FOR = 5.0  # an answer is given again, without asking, this long
STALE_AFTER = 30.0  # an older answer is not given while a probe is still out: "pending" instead
PENDING = "pending"

Checks = dict[str, str]


class Readiness:
    """One process's readiness: a cached answer and at most one probe in flight."""

    def __init__(
        self,
        names: tuple[str, ...],
        probe: Callable[[], Checks],
        fresh_for: float = FRESH_FOR,
        answer_within: float = ANSWER_WITHIN,
        stale_after: float = STALE_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names, self.probe = names, probe
        self.fresh_for, self.answer_within, self.stale_after, self.clock = fresh_for, answer_within, stale_after, clock
        self._lock = threading.Lock()
        self._answer: tuple[float, Checks] | None = None  # (when it came, the checks)
        self._in_flight: threading.Event | None = None  # set when the probe out finishes
        self.probes_started = 0

    def _run(self, finished: threading.Event) -> None:
        try:
            checks = self.probe()
        except Exception as exc:  # a probe that fails is an answer, not a crash
            checks = dict.fromkeys(self.names, type(exc).__name__)
        with self._lock:
            self._answer = (self.clock(), checks)
            self._in_flight = None
        finished.set()

    def checks(self) -> Checks:
        """Return the checks: the fresh answer, else the one a new probe gives within ANSWER_WITHIN, else
        the last answer (while younger than STALE_AFTER), else every check "pending"."""
        with self._lock:
            if self._answer is not None and self.clock() - self._answer[0] < self.fresh_for:
                return self._answer[1]
            finished = None
            if self._in_flight is None:
                finished = self._in_flight = threading.Event()
                self.probes_started += 1
                threading.Thread(target=self._run, args=(finished,), name="readiness-probe", daemon=True).start()
        if finished is not None:
            finished.wait(self.answer_within)
        with self._lock:
            if self._answer is not None and self.clock() - self._answer[0] < self.stale_after:
                return self._answer[1]
        return dict.fromkeys(self.names, PENDING)


def probe_for(c: Container) -> Callable[[], Checks]:
    """Return the probe of an app: SELECT 1 on the database, GET [base]/metadata on the FHIR server."""
    fhir: list[FhirClient] = []

    def probe() -> Checks:
        checks: Checks = {}
        checks["database"] = _database(c.engine)
        if c.settings.fhir_base_url:
            try:
                if not fhir:  # its own client: a short timeout, no retries, the service's authentication
                    auth = c.fhir().session.auth
                    fhir.append(FhirClient(c.settings.fhir_base_url, PROBE_TIMEOUT, auth=auth, max_retries=0))
                fhir[0].request("GET", "metadata", params={"_summary": "true"})
                checks["fhir"] = "ok"
            except (FhirError, PlanbridgeError) as exc:
                checks["fhir"] = type(exc).__name__
        return checks

    return probe


def _database(engine: Engine) -> str:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "ok"
    except sa.exc.SQLAlchemyError as exc:
        return type(exc).__name__


@bp.record_once
def _setup(state: object) -> None:
    app = state.app  # type: ignore[attr-defined]
    c: Container = app.extensions["planbridge"]
    names = ("database", "fhir") if c.settings.fhir_base_url else ("database",)
    app.extensions["planbridge.readiness"] = Readiness(names, probe_for(c))


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Answer 200 when the database and the FHIR server (if one is configured) answer, 503 otherwise."""
    checks = current_app.extensions["planbridge.readiness"].checks()
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "unavailable", **checks), 200 if ready else 503


@bp.get("/favicon.ico")
def favicon() -> Response:
    """No icon: a browser asking for one gets 204 (cached for a day), not a 404 problem in the logs."""
    return Response(status=204, headers={"Cache-Control": "public, max-age=86400"})
