"""Scale-out: plans pushed per second by 1, 2 and 4 `planbridge worker` processes sharing PostgreSQL.

The local FHIR server (hapi profile: no transaction size limit, so every plan is one transaction) sits
behind a LatencyProxy adding 20 ms per request. For each worker count, a fresh PostgreSQL schema gets N
plans whose Patients are already on the server and linked, each with one push queued but not yet due;
the workers are started as real `planbridge worker` subprocesses (env settings only) and, once every one
has logged that it started, all pushes are made due in one UPDATE. Plans/s runs from that UPDATE to the
last entry finished; the worker processes are then stopped with SIGTERM.

Double handling is read from the database, not from logs: a trigger the bench installs on its own schema
(nothing in the product schema) records each claim of an outbox entry (claimed_at set) and each finish
(claimed_at cleared) with the server's clock_timestamp(). An entry claimed more than once, and two claims
of one plan whose intervals overlap, each count as one double handling. Nothing lost: every entry must be
done and the proxy must have forwarded one request (the transaction) per plan, plus at most one
CapabilityStatement read per worker process.

Run: `.venv/bin/python bench/scale.py [--plans 400] [--workers 1,2,4] [--concurrency 1] [--latency-ms 20]`.
The last line is `scale-out: 2 workers <r2>x, 4 workers <r4>x, double handling <n>`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync import Bench, make_plans, now, seed_ehr_world  # bench/sync.py, beside this file

from service.devfhir import LocalFhirServer
from service.devproxy import LatencyProxy
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "planbridge"
POSTGRES_URL = os.environ.get("PLANBRIDGE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

AUDIT = """
CREATE TABLE bench_claims (
    id bigserial PRIMARY KEY,
    entry_id integer NOT NULL,
    plan_id varchar(128) NOT NULL,
    event varchar(8) NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    backend integer NOT NULL DEFAULT pg_backend_pid()
);
CREATE FUNCTION bench_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.claimed_at IS NOT NULL AND NEW.claimed_at IS DISTINCT FROM OLD.claimed_at THEN
        INSERT INTO bench_claims (entry_id, plan_id, event) VALUES (NEW.id, NEW.plan_id, 'claim');
    ELSIF NEW.claimed_at IS NULL AND OLD.claimed_at IS NOT NULL THEN
        INSERT INTO bench_claims (entry_id, plan_id, event) VALUES (NEW.id, NEW.plan_id, 'finish');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER bench_audit AFTER UPDATE ON outbox FOR EACH ROW EXECUTE FUNCTION bench_audit();
"""


def install_audit(engine: sa.Engine) -> None:
    """Record every claim and finish of an outbox entry in bench_claims (this schema only)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(AUDIT)


def double_handling(engine: sa.Engine) -> tuple[int, int]:
    """Return (entries claimed more than once, overlapping pairs of claims of one plan) from bench_claims."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT entry_id, plan_id, event, at FROM bench_claims ORDER BY at, id")).all()
    claims: dict[int, int] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    open_at: dict[int, float] = {}
    for entry_id, plan_id, event, at in rows:
        stamp = at.timestamp()
        if event == "claim":
            claims[entry_id] = claims.get(entry_id, 0) + 1
            if entry_id in open_at:  # claimed again before it finished (its lease ran out): one span ends here
                spans.setdefault(plan_id, []).append((open_at[entry_id], stamp))
            open_at[entry_id] = stamp
        elif entry_id in open_at:
            spans.setdefault(plan_id, []).append((open_at.pop(entry_id), stamp))
    for entry_id, started in open_at.items():  # never finished: held to the end
        plan_id = next(p for e, p, _, _ in rows if e == entry_id)
        spans.setdefault(plan_id, []).append((started, float("inf")))
    overlaps = 0
    for intervals in spans.values():
        reach = -float("inf")  # the latest end of the claims begun so far
        for start, end in sorted(intervals):
            overlaps += start < reach
            reach = max(reach, end)
    return sum(n - 1 for n in claims.values() if n > 1), overlaps


def fresh_schema(admin: sa.Engine) -> tuple[sa.Engine, str, str]:
    """Create a schema of its own in the bench database; return its engine, URL and name."""
    schema = f"pb_scale_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    return engine, f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", schema


def wait_started(logs: list[Path], procs: list[subprocess.Popen[bytes]], seconds: float = 60) -> None:
    """Wait until every worker logged that it started (its startup check done)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if all("outbox worker started" in log.read_text() for log in logs):
            return
        time.sleep(0.05)
    raise RuntimeError("the workers did not start in time")


def run(workers: int, args: argparse.Namespace, base_url: str, proxy: LatencyProxy, tmp: Path) -> dict[str, float]:
    """Push args.plans plans with `workers` worker processes; return plans/s and the checks."""
    admin = create_engine(POSTGRES_URL)
    engine, url, schema = fresh_schema(admin)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(engine)
        install_audit(engine)
        bench = Bench(engine, base_url, proxy)
        plans = make_plans(args.plans, f"s{workers}")
        bench.save(plans)
        bench.create_patients(plans, link=True)  # so a push is one transaction, as in bench/sync.py (b)
        later = now() + timedelta(days=1)
        with UnitOfWork(engine) as uow:
            for plan in plans:
                uow.outbox.add(plan.id, "push_plan", None, None, later)
            uow.commit()
        with engine.begin() as conn:  # statistics, as autovacuum keeps them for a table in use
            conn.exec_driver_sql("ANALYZE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
        env.update(
            DATABASE_URL=url,
            FHIR_BASE_URL=proxy.url(base_url),
            PLANBRIDGE_IDENTIFIER_BASE=bench.settings.identifier_base,
            PLANBRIDGE_MRN_SYSTEM=bench.settings.mrn_system,
            PLANBRIDGE_PUSH_CONCURRENCY=str(args.concurrency),
            PLANBRIDGE_WORKER_POLL_SECONDS="0.05",
            PLANBRIDGE_RESYNC_SECONDS="0",  # no periodic pull: the workers only push
            PLANBRIDGE_LOG_FORMAT="text",
        )
        logs = [tmp / f"worker-{workers}-{n}.log" for n in range(workers)]
        for log in logs:
            with log.open("wb") as out:
                procs.append(subprocess.Popen([str(BIN), "worker"], env=env, stdout=out, stderr=out, cwd=ROOT))
        wait_started(logs, procs)
        wire = proxy.requests
        with engine.begin() as conn:
            released = conn.execute(
                sa.text("UPDATE outbox SET next_attempt_at = now() RETURNING clock_timestamp()")
            ).scalar()
        deadline = time.monotonic() + args.timeout
        done = 0
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                done = conn.execute(sa.text("SELECT count(*) FROM outbox WHERE status <> 'pending'")).scalar_one()
            if done >= args.plans:
                break
            time.sleep(0.02)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        with engine.connect() as conn:
            finished = conn.execute(sa.text("SELECT max(at) FROM bench_claims WHERE event = 'finish'")).scalar()
            statuses = dict(conn.execute(sa.text("SELECT status, count(*) FROM outbox GROUP BY status")).all())
        twice, overlaps = double_handling(engine)
        seconds = (finished - released).total_seconds()
        return {
            "rate": args.plans / seconds,
            "seconds": seconds,
            "done": statuses.get("done", 0),
            "not_done": sum(n for s, n in statuses.items() if s != "done"),
            "wire": proxy.requests - wire,
            "twice": twice,
            "overlaps": overlaps,
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    """Measure each worker count and print one row per count, then the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--plans",
        type=int,
        default=1000,
        help="plans queued for each worker count (1,000: a run long enough for steady ratios)",
    )
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure, comma-separated")
    parser.add_argument("--concurrency", type=int, default=1, help="PLANBRIDGE_PUSH_CONCURRENCY of each worker")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="latency the proxy adds per request")
    parser.add_argument("--profile", default="hapi", choices=("hapi", "medplum"), help="local FHIR server profile")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one count to finish")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    started = time.perf_counter()
    results: dict[int, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalFhirServer(log_path=Path(tmp) / "fhir.log", profile=args.profile) as server,
    ):
        seed_ehr_world(server.base_url)  # what the fixture plans name: the server refuses dangling references
        with LatencyProxy.for_url(server.base_url, args.latency_ms / 1000) as proxy:
            for workers in counts:
                results[workers] = run(workers, args, server.base_url, proxy, Path(tmp))
    one = results[counts[0]]["rate"]
    print(
        f"PostgreSQL, local FHIR server ({args.profile} profile) +{args.latency_ms:g} ms per request, "
        f"{args.plans} plans (one transaction each), push concurrency {args.concurrency} per worker"
    )
    print(f"{'workers':>7}  {'plans/s':>8}  {'ratio':>6}  {'seconds':>7}  {'done':>5}  {'requests':>8}  double")
    double = 0
    for workers, r in results.items():
        n = int(r["twice"] + r["overlaps"])
        double += n
        # one transaction per plan; each worker process may read the CapabilityStatement once besides
        ok = r["done"] == args.plans and r["not_done"] == 0 and 0 <= r["wire"] - args.plans <= workers
        print(
            f"{workers:>7}  {r['rate']:>8.1f}  {r['rate'] / one:>5.2f}x  {r['seconds']:>7.2f}  {int(r['done']):>5}  "
            f"{int(r['wire']):>8}  {n}{'' if ok else '  LOST OR REPEATED WORK'}"
        )
    print(f"whole run: {time.perf_counter() - started:.0f} s")
    ratio = {w: results[w]["rate"] / one if w in results else float("nan") for w in (2, 4)}
    print(f"scale-out: 2 workers {ratio[2]:.2f}x, 4 workers {ratio[4]:.2f}x, double handling {double}")


if __name__ == "__main__":
    main()
