"""GET /metrics in the Prometheus text format.

Counts that must agree across gunicorn workers are read from the database at scrape time (events by
type and answer, outbox depth, conflicts, plans by sync state, sync lag); request counts and
latencies are per worker process, labelled with its pid.

Received events are never deleted, so the event counts are kept per process and each scrape reads only the
events its last one could not see (`EventCounts`): a scrape's cost follows what arrived since, not the table.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from service import logs
from service.api.throttle import AuthThrottle
from service.store.committer import committer_for
from service.store.tables import (
    ConflictRow,
    DeliveryRow,
    OutboxRow,
    PlanRow,
    SubscriptionRow,
    SyncStateRow,
)

bp = Blueprint("metrics", __name__)


def _age(instant: datetime | str | None) -> float:
    """Return seconds since an instant (0 when there is none); SQLite hands aggregates back as text."""
    if instant is None:
        return 0.0
    if isinstance(instant, str):
        instant = datetime.fromisoformat(instant)
    return max(0.0, time.time() - (instant if instant.tzinfo else instant.replace(tzinfo=UTC)).timestamp())


EventKey = tuple[str, str, int]  # sender, event type, HTTP answer


@dataclass(frozen=True)
class _Seen:
    """Which events a process's counts hold. SQLite: every row up to rowid `top` (and the key of that row, to
    notice a database file replaced under the process). PostgreSQL: every row a snapshot saw, told by that
    snapshot's `xmax` and running transactions `xip` (the rows it did not see are exactly those)."""

    top: int = 0
    key: tuple[str, str] | None = None
    xmax: int = 0
    xip: tuple[int, ...] = ()


# SQLite: one read transaction per this many rowids, so a first count of a large table never holds one reader
# (and so the WAL checkpoint) for long.
SQLITE_CHUNK = 50_000
_SQLITE_TOP = "SELECT max(rowid) FROM inbound_events"
_SQLITE_KEY = "SELECT sender, webhook_id FROM inbound_events WHERE rowid = ?"
_SQLITE_RANGE = (
    "SELECT sender, event_type, response_status, count(*) FROM inbound_events"
    " WHERE rowid > ? AND rowid <= ? GROUP BY sender, event_type, response_status"
)
_PG_COUNT = "SELECT sender, event_type, response_status, count(*) FROM inbound_events"
_PG_ALL = sa.text(f"{_PG_COUNT} GROUP BY 1, 2, 3")
# The values are written into the statement (literal_execute), not sent as parameters: the plan is made for
# them, never a generic one that may not take the index (psycopg prepares a statement run five times).
_PG_LATER = sa.text(f"{_PG_COUNT} WHERE intake_xid >= :xmax GROUP BY 1, 2, 3").bindparams(
    sa.bindparam("xmax", type_=sa.BigInteger, literal_execute=True)
)
_PG_UNSEEN = sa.text(f"{_PG_COUNT} WHERE intake_xid >= :xmax OR intake_xid IN :xip GROUP BY 1, 2, 3").bindparams(
    sa.bindparam("xmax", type_=sa.BigInteger, literal_execute=True),
    sa.bindparam("xip", type_=sa.BigInteger, expanding=True, literal_execute=True),
)


class EventCounts:
    """Received team events by sender, type and answer, exact at each scrape, counted once per row per process.

    Events are only ever inserted (never updated nor deleted: they are the idempotency keys), so the counts a
    scrape returned stay true and the next adds only the rows that scrape could not see:
    - SQLite: writers take turns, so a row committed after a read has a rowid above the highest that read saw
      (`max(rowid)`, which no later row goes under: no row is ever deleted). The new rows are a rowid range,
      read in autocommit reads of their own (deferred: they take no writer lock and never wait for the intake).
    - PostgreSQL: transactions commit in any order, so each row records the id of the transaction that inserted
      it (`intake_xid`, migration 0017). The rows a snapshot did not see are those whose transaction was running
      when it was taken (its xip list) or began later (ids from its xmax on); the next scrape reads just those,
      in one REPEATABLE READ snapshot, through the column's index.
    The first scrape of a process counts every row once. Concurrent scrapes each return exact counts for their
    own snapshot; the one that read from the current state keeps its result.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._seen: _Seen | None = None
        self._counts: dict[EventKey, int] = {}

    def read(self) -> dict[EventKey, int]:
        """Return the counts of every event received up to now (one snapshot's worth)."""
        with self._lock:
            seen, counts = self._seen, dict(self._counts)
        if self.engine.dialect.name == "sqlite":
            new_seen = self._advance_sqlite(seen, counts)
        else:
            new_seen = self._advance_postgres(seen, counts)
        with self._lock:
            if self._seen == seen:
                self._seen, self._counts = new_seen, dict(counts)
        return counts

    def _advance_sqlite(self, seen: _Seen | None, counts: dict[EventKey, int]) -> _Seen:
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            top = cursor.execute(_SQLITE_TOP).fetchone()[0] or 0
            if seen is not None and (
                seen.top > top or (seen.top and _key(cursor.execute(_SQLITE_KEY, (seen.top,)).fetchone()) != seen.key)
            ):  # not the rows counted before (a database file restored or rebuilt): count afresh
                seen = None
                counts.clear()
            done = seen.top if seen is not None else 0
            while done < top:
                upto = min(top, done + SQLITE_CHUNK)
                for sender, event_type, status, n in cursor.execute(_SQLITE_RANGE, (done, upto)).fetchall():
                    _add(counts, (sender, event_type, int(status)), n)
                done = upto
            key = _key(cursor.execute(_SQLITE_KEY, (top,)).fetchone()) if top else None
            return _Seen(top=top, key=key)
        finally:
            raw.close()

    def _advance_postgres(self, seen: _Seen | None, counts: dict[EventKey, int]) -> _Seen:
        with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            # The first statement of a REPEATABLE READ transaction takes its snapshot: the one returned here.
            _xmin, xmax, xip = conn.scalar(sa.text("SELECT pg_current_snapshot()::text")).split(":")
            now = _Seen(xmax=int(xmax), xip=tuple(int(x) for x in xip.split(",") if x))
            if seen is None or now.xmax < seen.xmax:  # first scrape, or another cluster: count afresh
                counts.clear()
                query, seen = _PG_ALL, None
            else:
                query = _PG_UNSEEN if seen.xip else _PG_LATER
                # Never a scan of the table: without statistics (a table not yet analysed) the planner takes
                # the few new rows for a third of the table and would read it all.
                conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            params = {"xmax": seen.xmax, "xip": list(seen.xip)} if seen is not None else {}
            for sender, event_type, status, n in conn.execute(query, params):
                _add(counts, (sender, event_type, int(status)), n)
            conn.rollback()
        return now


def _key(row: Any) -> tuple[str, str] | None:
    return (row[0], row[1]) if row is not None else None


def _add(counts: dict[EventKey, int], key: EventKey, n: int) -> None:
    counts[key] = counts.get(key, 0) + int(n)


class StoreCollector(Collector):
    """Reads the durable counts from the database on every scrape (the event counts incrementally)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.events = EventCounts(engine)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield one family per durable count."""
        events = GaugeMetricFamily(
            "planbridge_events", "Team events received, by type and HTTP answer", labels=["type", "status"]
        )
        outbox = GaugeMetricFamily("planbridge_outbox_entries", "Outbox entries by status", labels=["status"])
        conflicts = GaugeMetricFamily("planbridge_conflicts_open", "Open sync conflicts")
        plans = GaugeMetricFamily("planbridge_plans", "Plans by sync status", labels=["status"])
        lag = GaugeMetricFamily("planbridge_outbox_oldest_pending_seconds", "Age of the oldest pending outbox entry")
        sync_lag = GaugeMetricFamily(
            "planbridge_sync_lag_seconds", "How long the oldest plan change not yet on the FHIR server has waited"
        )
        failed = GaugeMetricFamily(
            "planbridge_plans_failed",
            "Plans whose last push failed, by the kind of failure (e.g. FhirMultipleMatches, FhirTransportError)",
            labels=["reason"],
        )
        by_sender = GaugeMetricFamily(
            "planbridge_events_by_sender",
            "Team events received, by sender and HTTP answer",
            labels=["sender", "status"],
        )
        counts: dict[tuple[str, str], int] = {}
        senders: dict[tuple[str, str], int] = {}
        for (sender, event_type, status), n in self.events.read().items():  # both families from one count
            counts[(event_type, str(status))] = counts.get((event_type, str(status)), 0) + n
            senders[(sender, str(status))] = senders.get((sender, str(status)), 0) + n
        for labels, n in sorted(counts.items()):
            events.add_metric(list(labels), n)
        for labels, n in sorted(senders.items()):
            by_sender.add_metric(list(labels), n)
        with self.engine.connect() as conn:
            for status, n in conn.execute(sa.select(OutboxRow.status, sa.func.count()).group_by(OutboxRow.status)):
                outbox.add_metric([status], n)
            conflicts.add_metric(
                [],
                conn.execute(
                    sa.select(sa.func.count()).select_from(ConflictRow).where(ConflictRow.status == "open")
                ).scalar_one(),
            )
            for status, n in conn.execute(
                sa.select(SyncStateRow.status, sa.func.count()).group_by(SyncStateRow.status)
            ):
                plans.add_metric([status], n)
            reasons: dict[str, int] = {}
            for (error,) in conn.execute(sa.select(SyncStateRow.last_error).where(SyncStateRow.status == "failed")):
                reason = (error or "unknown").split(":", 1)[0][:64]
                reasons[reason] = reasons.get(reason, 0) + 1
            for reason, n in sorted(reasons.items()):
                failed.add_metric([reason], n)
            oldest = conn.execute(sa.select(sa.func.min(OutboxRow.created_at)).where(OutboxRow.status == "pending"))
            lag.add_metric([], _age(oldest.scalar_one_or_none()))
            synced = sa.select(SyncStateRow.plan_id).where(SyncStateRow.status.in_(("in_sync", "conflicted")))
            unsynced = conn.execute(sa.select(sa.func.min(PlanRow.updated_at)).where(PlanRow.id.not_in(synced)))
            sync_lag.add_metric([], _age(unsynced.scalar_one_or_none()))
        yield from (events, by_sender, outbox, conflicts, plans, failed, lag, sync_lag)


class DeliveryCollector(Collector):
    """Notifications to team systems, per subscription: how far behind each is, what is in flight, by status."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the per-subscription lag, in-flight and status counts (one grouped scan each)."""
        lag = GaugeMetricFamily(
            "planbridge_delivery_lag_seconds",
            "Age of the oldest plan change not yet delivered to the subscription (pending or failed; 0 when none)",
            labels=["subscription"],
        )
        in_flight = GaugeMetricFamily(
            "planbridge_deliveries_in_flight", "Deliveries being sent now", labels=["subscription"]
        )
        by_status = GaugeMetricFamily(
            "planbridge_deliveries",
            "Deliveries by subscription and status (pending, failed, delivered, dead, skipped)",
            labels=["subscription", "status"],
        )
        row, now = DeliveryRow, datetime.now(UTC)
        with self.engine.connect() as conn:
            subscriptions = list(conn.scalars(sa.select(SubscriptionRow.id).order_by(SubscriptionRow.id)))
            open_ = row.status.in_(("pending", "failed"))
            per_subscription = sa.select(row.subscription_id).group_by(row.subscription_id)
            oldest = dict(conn.execute(per_subscription.add_columns(sa.func.min(row.created_at)).where(open_)).all())
            sending = sa.and_(open_, row.claimed_at.is_not(None), row.next_attempt_at > now)
            flying = dict(conn.execute(per_subscription.add_columns(sa.func.count()).where(sending)).all())
            for sub_id, status, n in conn.execute(
                sa.select(row.subscription_id, row.status, sa.func.count()).group_by(row.subscription_id, row.status)
            ):
                by_status.add_metric([str(sub_id), status], n)
        for sub_id in subscriptions:
            lag.add_metric([str(sub_id)], _age(oldest.get(sub_id)))
            in_flight.add_metric([str(sub_id)], flying.get(sub_id, 0))
        yield from (lag, in_flight, by_status)


class CommitCollector(Collector):
    """How many team events this process's commits carried (more than one each when grouped)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pid = str(os.getpid())

    def collect(self) -> Iterator[CounterMetricFamily]:
        """Yield the commit and committed-work counts of this process."""
        committer = committer_for(self.engine)
        commits = CounterMetricFamily(
            "planbridge_event_commits", "Transactions that committed team events, in this process", labels=["pid"]
        )
        commits.add_metric([self.pid], committer.commits)
        works = CounterMetricFamily(
            "planbridge_event_commit_works", "Team events those transactions carried, in this process", labels=["pid"]
        )
        works.add_metric([self.pid], committer.works)
        yield from (commits, works)


class AuthCollector(Collector):
    """Refused keys and sign-ins (per process) and the lockouts in force (from the database)."""

    def __init__(self, throttle: AuthThrottle) -> None:
        self.throttle = throttle
        self.pid = str(os.getpid())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Yield the refusal counts of this process and the lockouts now in force."""
        refused = CounterMetricFamily(
            "planbridge_auth_refused",
            "API keys and console sign-ins refused by this process: a wrong key (invalid-key) or a lockout (throttled)",
            labels=["via", "reason", "pid"],
        )
        for via in ("api", "console"):
            for reason in ("invalid-key", "throttled"):
                refused.add_metric([via, reason, self.pid], self.throttle.refused[(via, reason)])
        lockouts = GaugeMetricFamily(
            "planbridge_auth_lockouts",
            "Client addresses and key prefixes locked out now after too many failed keys",
            labels=["scope"],
        )
        counts = self.throttle.blocked_counts()
        for scope in ("address", "key"):
            lockouts.add_metric([scope], counts.get(scope, 0))
        yield from (refused, lockouts)


def new_request_id() -> str:
    """Return a new request id: a random (version 4) UUID's 32 hex digits, as `uuid.uuid4().hex` gives them,
    built from the random bytes directly (the UUID object cost ~4 us of every request that came without one)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


def request_id_for(incoming: str) -> str:
    """Return the request's id: the caller's X-Request-ID when it is 1-64 printable characters, else a new one."""
    return incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else new_request_id()


class RequestRecorder:
    """Counts and times the requests this process serves (planbridge_http_requests, _request_seconds).

    Each label set's child is kept: `labels()` validates and locks on every call, and the same few
    (method, endpoint, status) sets recur on every request. A child is the one `labels()` returns.
    """

    def __init__(self, requests_total: Counter, latency: Histogram, pid: str) -> None:
        self._requests_total, self._latency, self._pid = requests_total, latency, pid
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    def observe(self, method: str, endpoint: str, status: int, started: float | None) -> None:
        """Count one answered request; time it when its start is known (a perf_counter reading)."""
        key = (method, endpoint, status)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self._requests_total.labels(method, endpoint, str(status), self._pid)
        counter.inc()
        if started is not None:
            timer = self._timed.get(endpoint)
            if timer is None:
                timer = self._timed[endpoint] = self._latency.labels(endpoint, self._pid)
            timer.observe(time.perf_counter() - started)


def init_app(app: Flask, engine: Engine) -> None:
    """Register the registry, per-process request metrics and the /metrics route."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(engine))
    registry.register(CommitCollector(engine))
    registry.register(DeliveryCollector(engine))
    registry.register(AuthCollector(app.extensions["planbridge"].throttle))
    requests_total = Counter(
        "planbridge_http_requests",
        "HTTP requests served by this process",
        ["method", "endpoint", "status", "pid"],
        registry=registry,
    )
    latency = Histogram(
        "planbridge_http_request_seconds",
        "HTTP request latency in this process",
        ["endpoint", "pid"],
        registry=registry,
    )
    app.extensions["planbridge.metrics"] = registry
    recorder = app.extensions["planbridge.requests"] = RequestRecorder(requests_total, latency, str(os.getpid()))

    @app.before_request
    def _start() -> None:
        g.planbridge_started = time.perf_counter()
        g.planbridge_request_id = request_id_for(request.headers.get("X-Request-ID", ""))
        g.planbridge_token = logs.request_id.set(g.planbridge_request_id)

    @app.after_request
    def _count(response: Response) -> Response:
        recorder.observe(
            request.method, request.endpoint or "unmatched", response.status_code, g.get("planbridge_started")
        )
        if g.get("planbridge_request_id"):
            response.headers["X-Request-ID"] = g.planbridge_request_id
        return response

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        token = g.pop("planbridge_token", None)
        if token is not None:
            logs.request_id.reset(token)  # threads are reused: the next request starts clean

    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics() -> Response:
    """Serve the metrics."""
    from flask import current_app

    # content_type, not mimetype: CONTENT_TYPE_LATEST has its charset already (Flask would add a second)
    return Response(generate_latest(current_app.extensions["planbridge.metrics"]), content_type=CONTENT_TYPE_LATEST)
