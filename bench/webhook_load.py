"""Signed webhook ingest under gunicorn (verify, validate, apply, commit, 202), loaded by wrk on loopback,
next to the minimal signed-commit handler (bench/bare_app.py `signed:app`: verify with `standardwebhooks`,
one INSERT, COMMIT on SQLite with the same settings, 202) under the same gunicorn shape, in the same run.

Run: `.venv/bin/python bench/webhook_load.py [--seconds 10] [--connections 16] [--database postgres]
[--workers N] [--threads N] [--rounds 3] [--rate 500] [--bare]`; without --workers/--threads every server
gets the shape `planbridge serve` picks for the database (service.gunicorn_app.default_shape). `--bare`
also runs the bare Flask endpoint (parse and answer, no signature, no database) in each round. Needs `wrk`
(Debian package `wrk`, built with LuaJIT, whose ffi gives the paced round its clock).

Rounds 1..n load each server as fast as it answers (16 connections, closed loop: the p99 then includes
queueing behind the other 15); the servers take turns within each round, so a change in the shared
machine's speed lands on both sides of a round's ratio. The paced round offers a fixed rate, the issue's
500 events/s by default, and reports the p99 at that rate. The ratio printed is planbridge's events/s over
the minimal handler's, the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.gunicorn_app import default_shape  # noqa: E402
from service.signing import new_secret, sign_headers  # noqa: E402
from service.store.db import create_engine  # noqa: E402
from service.store.tables import InboundEventRow  # noqa: E402

GOAL_RATE, GOAL_P99_MS = 500, 50  # issue #5's target for SQLite
GOAL_RATIO, GOAL_RATIO_P99_MS = 0.5, 25  # issue #15's: half the minimal handler's rate, p99 < 25 ms saturated
MINIMAL, BARE = "minimal", "bare Flask"
PER_ROUND = 40_000  # signed events prepared per round (a block of 20,000 per wrk thread), none sent twice
EVENT = json.loads((ROOT / "fixtures/events/goal-proposed.json").read_text())
LUA = r"""
-- Every request carries its own signed event: each wrk thread walks a block of lines of its own
-- (this round's offset, then `block` lines per thread), so no webhook-id is sent twice (a repeat would
-- be a cheap replay for planbridge and a refused duplicate for the minimal handler). A thread that runs
-- out of its block starts it again and counts each reused line: the bench reports them.
-- With a rate (events/s over all threads), each thread sends on a fixed schedule: a connection that
-- finishes picks the next free slot and waits for it. A slot taken after its time is counted as late
-- (the server fell behind), since the time spent waiting for a connection is not in wrk's latency.
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } timespec; int clock_gettime(int, timespec *); ]]
local ts = ffi.new("timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local threads = {}
setup = function(thread)
  thread:set("thread_index", #threads)
  threads[#threads + 1] = thread
end
init = function(args)
  local nthreads, block = tonumber(args[2]), tonumber(args[5])
  local first = tonumber(args[3]) + thread_index * block  -- 0-based line number of this thread's block
  lines, n = {}, 0
  for line in io.lines(args[1]) do
    if n >= first and n < first + block then lines[#lines + 1] = line end
    n = n + 1
  end
  i, reused = 0, 0
  local rate = tonumber(args[4])
  interval = rate > 0 and 1000 * nthreads / rate or 0
  slots, late, start = 0, 0, nil
  if interval > 0 then delay = paced_delay end  -- wrk looks for delay() once init has run
end
function paced_delay()
  local now = now_ms()
  start = start or now
  slots = slots + 1
  local wait = start + slots * interval - now
  if wait < -5 then late = late + 1 end
  return wait > 0 and wait or 0
end
request = function()
  if i >= #lines then reused = reused + 1 end
  local id, ts, sig, body = lines[i % #lines + 1]:match("([^\t]+)\t([^\t]+)\t([^\t]+)\t(.+)")
  i = i + 1
  return wrk.format("POST", "/webhooks/team", {["Content-Type"] = "application/json", ["webhook-id"] = id,
    ["webhook-timestamp"] = ts, ["webhook-signature"] = sig}, body)
end
done = function(summary, latency, requests)
  local late_sends, reused_lines = 0, 0
  for _, thread in ipairs(threads) do
    late_sends = late_sends + thread:get("late")
    reused_lines = reused_lines + thread:get("reused")
  end
  io.write(string.format("p99.9 %.3f ms\nlate sends %d\nreused %d\n", latency:percentile(99.9) / 1000,
    late_sends, reused_lines))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_file(path: Path, secret: str, count: int) -> None:
    with path.open("w") as out:
        for i in range(count):
            EVENT["data"]["plan_id"] = f"load-{uuid.uuid4().hex[:10]}"
            EVENT["data"]["patient"]["mrn"] = f"MRN-{i}"
            body = json.dumps(EVENT, separators=(",", ":"))
            h = sign_headers(secret, body.encode())
            out.write(f"{h['webhook-id']}\t{h['webhook-timestamp']}\t{h['webhook-signature']}\t{body}\n")


def wait_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise SystemExit("server did not come up")


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) used so far by a process and its children that are still running."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == root or int(fields[1]) == root:  # fields[1] is the parent pid
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


WRK_THREADS = 2


@dataclass(frozen=True)
class Reading:
    """One wrk run against one server."""

    rate: float  # answers per second
    p99: float  # ms
    p999: float  # ms
    non2xx: int
    cpu_ms: float  # the server's CPU per request
    total: int  # answers read
    late: int  # paced runs: sends that left more than 5 ms after their slot
    reused: int  # requests that repeated a webhook-id (a wrk thread ran out of its block)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    port: int,
    script: Path,
    data: Path,
    seconds: int,
    connections: int,
    server: int,
    offset: int,
    rate: int = 0,
    block: int = PER_ROUND // 2,
) -> Reading:
    """Load one server for `seconds`: as fast as it answers, or at `rate` events/s when rate > 0."""
    cpu_before = cpu_seconds(server)
    out = subprocess.run(
        [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
            "--",
            str(data),
            str(WRK_THREADS),
            str(offset),
            str(rate),
            str(block),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return Reading(
        rate=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p99=_ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()),
        p999=float(re.search(r"p99.9 ([\d.]+) ms", out).group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        cpu_ms=(cpu_seconds(server) - cpu_before) * 1000 / max(total, 1),
        total=total,
        late=int(re.search(r"late sends (\d+)", out).group(1)),
        reused=int(re.search(r"reused (\d+)", out).group(1)),
    )


def commit_grouping(port: int) -> tuple[int, int] | None:
    """Return (commits, events they carried) summed over planbridge's processes, from /metrics (each
    scrape reaches one process, so it is scraped 40 times), None when there are none (PostgreSQL)."""
    seen: dict[str, dict[str, int]] = {}
    for _ in range(40):
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for name, pid, value in re.findall(r'planbridge_event_commit(s|_works)_total\{pid="(\d+)"\} ([\d.e+]+)', text):
            seen.setdefault(pid, {})[name] = int(float(value))
    if not seen:
        return None
    return sum(v.get("s", 0) for v in seen.values()), sum(v.get("_works", 0) for v in seen.values())


def serve(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wait_up(port, proc)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=500, help="events/s offered in the paced round (0: none)")
    parser.add_argument("--bare", action="store_true", help="also run the bare Flask endpoint in each round")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    secret = new_secret()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        script, data = tmpdir / "sign.lua", tmpdir / "requests.tsv"
        script.write_text(LUA)
        round_count = args.rounds + (1 if args.rate else 0)
        requests_file(data, secret, PER_ROUND * round_count)
        if args.database == "sqlite":
            db_url = f"sqlite:///{tmpdir / 'load.db'}"
        else:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", f"CREATE SCHEMA {schema}"],
                check=True,
            )
            db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "PLANBRIDGE_WEBHOOK_SECRET": secret,
            "PLANBRIDGE_LOG_LEVEL": "WARNING",
            "BARE_DATABASE": str(tmpdir / "minimal.db"),  # the minimal handler's own SQLite file
        }
        env.pop("WEB_CONCURRENCY", None)
        workers, threads = default_shape(db_url)
        workers, threads = args.workers or workers, args.threads or threads
        shape = ["--workers", str(workers), "--threads", str(threads)]
        subprocess.run([str(bin_dir / "planbridge"), "db", "upgrade"], env=env, check=True, capture_output=True)

        def gunicorn(app: str, port: int) -> subprocess.Popen:
            return serve(
                [
                    *(str(bin_dir / "gunicorn"), "-w", str(workers), "-k", "gthread", "--threads", str(threads)),
                    *("-b", f"127.0.0.1:{port}", "--chdir", str(ROOT / "bench"), app),
                ],
                env,
                port,
            )

        servers: dict[str, tuple[int, subprocess.Popen]] = {}
        try:
            port = free_port()
            servers["planbridge"] = (
                port,
                serve([str(bin_dir / "planbridge"), "serve", "--port", str(port), *shape], env, port),
            )
            port = free_port()
            servers[MINIMAL] = (port, gunicorn("bare_app:signed", port))
            if args.bare:
                port = free_port()
                servers[BARE] = (port, gunicorn("bare_app:app", port))
            # All servers stay up and the runs alternate, so a change in the shared machine's speed
            # lands on both sides of each round's ratio rather than on one side of the comparison.
            rounds: list[dict[str, Reading]] = []
            paced: dict[str, Reading] = {}
            for n in range(args.rounds + (1 if args.rate else 0)):
                # The last round, when a rate is given, offers that rate instead of all it can take.
                rate = args.rate if n == args.rounds else 0
                # Who goes first swaps each round: the second run of a round meets a warmer machine.
                order = list(servers.items()) if n % 2 == 0 else list(reversed(servers.items()))
                results = {
                    name: run_wrk(
                        sp,
                        script,
                        data,
                        args.seconds,
                        args.connections,
                        proc.pid,
                        n * PER_ROUND,
                        rate,
                        PER_ROUND // WRK_THREADS,
                    )
                    for name, (sp, proc) in order
                }
                results = {name: results[name] for name in servers}
                (rounds.append(results) if not rate else paced.update(results))
            grouping = commit_grouping(servers["planbridge"][0])
        finally:
            for _port, server in servers.values():
                server.terminate()
                server.wait(timeout=30)
        if grouping:
            commits, works = grouping
            print(f"planbridge commits {commits} carried {works} events ({works / max(commits, 1):.1f} per commit)")
        engine = create_engine(db_url)
        with engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(InboundEventRow)).scalar_one()
        engine.dispose()
        sent = sum(r["planbridge"].total for r in [*rounds, paced] if r)
        # wrk counts only the answers it read; a request cut off at the end of a run may still be stored.
        print(f"events stored {stored} for {sent} requests answered (each carried a new webhook-id)")
        if args.database == "postgres":
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", f"DROP SCHEMA {schema} CASCADE"],
                check=True,
                env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"},
            )
    report(rounds, paced, args, workers, threads)


def report(
    rounds: list[dict[str, Reading]], paced: dict[str, Reading], args: argparse.Namespace, w: int, t: int
) -> None:
    print(
        f"signed webhook ingest under gunicorn ({w} gthread workers x {t} threads), wrk -t{WRK_THREADS} "
        f"-c{args.connections} -d{args.seconds}s, database {args.database}, {len(rounds)} alternating rounds; "
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )
    head = f"{'round':>9} {'':12} {'events/s':>9} {'p99 ms':>8} {'p99.9 ms':>9} {'non-2xx':>8} {'CPU ms/event':>13}"
    print(head)
    named = [(str(n), results) for n, results in enumerate(rounds, 1)]
    for label, results in named + ([(f"@{args.rate}/s", paced)] if paced else []):
        for name, r in results.items():
            print(f"{label:>9} {name:12} {r.rate:9.0f} {r.p99:8.1f} {r.p999:9.1f} {r.non2xx:8d} {r.cpu_ms:13.2f}")
    reused = sum(r.reused for results in [*rounds, paced] for r in results.values())
    verdict = "must be 0: ok" if not reused else "NOT 0: a wrk thread ran out of its block, raise PER_ROUND"
    print(f"requests that repeated a webhook-id: {reused} ({verdict})")
    if rounds:  # --rounds 0 runs the paced round alone
        for name in rounds[0]:
            rate = statistics.median(r[name].rate for r in rounds)
            p99 = statistics.median(r[name].p99 for r in rounds)
            cpu = statistics.median(r[name].cpu_ms for r in rounds)
            print(f"{name} (median of rounds): {rate:.0f} events/s, p99 {p99:.1f} ms, CPU {cpu:.2f} ms/event")
        best = max(rounds, key=lambda r: r["planbridge"].rate)["planbridge"]
        print(f"as fast as it answers: best round planbridge {best.rate:.0f}/s, p99 {best.p99:.1f} ms")
        median_rate = statistics.median(r["planbridge"].rate for r in rounds)
        median_p99 = statistics.median(r["planbridge"].p99 for r in rounds)
        met = median_rate >= GOAL_RATE and median_p99 < GOAL_P99_MS
        print(f"goal >= {GOAL_RATE}/s with p99 < {GOAL_P99_MS} ms, median of rounds: {'met' if met else 'NOT met'}")
        ratio = statistics.median(r["planbridge"].rate / r[MINIMAL].rate for r in rounds)
        cpu = statistics.median(r["planbridge"].cpu_ms / r[MINIMAL].cpu_ms for r in rounds)
        print(f"ratio to the minimal signed-commit handler (median of rounds): {ratio:.3f}")
        print(f"CPU per event, planbridge / minimal handler (median of rounds): {cpu:.2f}")
        met = ratio >= GOAL_RATIO and median_p99 < GOAL_RATIO_P99_MS
        print(
            f"goal ratio >= {GOAL_RATIO} with p99 < {GOAL_RATIO_P99_MS} ms in the saturating rounds: "
            f"{'met' if met else 'NOT met'}"
        )
        if BARE in rounds[0]:
            ratio = statistics.median(r["planbridge"].rate / r[BARE].rate for r in rounds)
            print(f"ratio planbridge / bare Flask (median of rounds): {ratio:.3f}")
    if paced:
        ours, minimal = paced["planbridge"], paced[MINIMAL]
        print(
            f"offered {args.rate}/s: planbridge answered {ours.rate:.0f}/s, p99 {ours.p99:.1f} ms "
            f"(minimal handler {minimal.p99:.1f} ms, ratio {ours.p99 / minimal.p99:.1f}); sends more than 5 ms "
            f"late: {ours.late} (a late send's wait is not in the latency)"
        )


if __name__ == "__main__":
    main()
