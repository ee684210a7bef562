"""Signed webhook ingest under gunicorn (verify, validate, apply, commit, 202), loaded by wrk on loopback,
next to a bare Flask endpoint under the same gunicorn settings measured in the same run.

Run: `.venv/bin/python bench/webhook_load.py [--seconds 10] [--connections 16] [--database postgres]
[--workers N] [--threads N] [--rounds 3]`; without --workers/--threads both servers get the shape `planbridge serve`
picks for the database (service.gunicorn_app.default_shape). Needs `wrk` (Debian package `wrk`).
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
from pathlib import Path

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.gunicorn_app import default_shape  # noqa: E402
from service.signing import new_secret, sign_headers  # noqa: E402
from service.store.db import create_engine  # noqa: E402
from service.store.tables import InboundEventRow  # noqa: E402

REQUESTS = 90_000  # signed events prepared per run, split between the rounds
EVENT = json.loads((ROOT / "fixtures/events/goal-proposed.json").read_text())
LUA = r"""
-- Every request carries its own signed event: each wrk thread takes every n-th line of the file,
-- starting from this round's offset, so no webhook-id is sent twice (a repeat would be a cheap replay).
local threads = 0
setup = function(thread)
  thread:set("thread_index", threads)
  threads = threads + 1
end
init = function(args)
  lines = {}
  for line in io.lines(args[1]) do lines[#lines + 1] = line end
  step = tonumber(args[2])
  i = tonumber(args[3]) + thread_index
end
request = function()
  local id, ts, sig, body = lines[i % #lines + 1]:match("([^\t]+)\t([^\t]+)\t([^\t]+)\t(.+)")
  i = i + step
  return wrk.format("POST", "/webhooks/team", {["Content-Type"] = "application/json", ["webhook-id"] = id,
    ["webhook-timestamp"] = ts, ["webhook-signature"] = sig}, body)
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


def run_wrk(
    port: int, script: Path, data: Path, seconds: int, connections: int, server: int, offset: int
) -> tuple[float, float, int, float, int]:
    """Return requests/s, p99 ms, non-2xx answers, the server's CPU ms per request and the requests sent."""
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
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_ms = (cpu_seconds(server) - cpu_before) * 1000 / max(total, 1)
    return rate, float(p99.group(1)) * scale, int(non2xx.group(1)) if non2xx else 0, cpu_ms, total


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
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    secret = new_secret()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        script, data = tmpdir / "sign.lua", tmpdir / "requests.tsv"
        script.write_text(LUA)
        requests_file(data, secret, REQUESTS)
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
        }
        env.pop("WEB_CONCURRENCY", None)
        workers, threads = default_shape(db_url)
        workers, threads = args.workers or workers, args.threads or threads
        shape = ["--workers", str(workers), "--threads", str(threads)]
        subprocess.run([str(bin_dir / "planbridge"), "db", "upgrade"], env=env, check=True, capture_output=True)
        port, bare_port = free_port(), free_port()
        ours = serve([str(bin_dir / "planbridge"), "serve", "--port", str(port), *shape], env, port)
        bare = serve(
            [
                *(str(bin_dir / "gunicorn"), "-w", str(workers), "-k", "gthread", "--threads", str(threads)),
                *("-b", f"127.0.0.1:{bare_port}", "--chdir", str(ROOT / "bench"), "bare_app:app"),
            ],
            env,
            bare_port,
        )
        # Both servers stay up and the runs alternate, so a change in the shared machine's speed
        # lands on both sides of each round's ratio rather than on one side of the comparison.
        rounds: list[dict[str, tuple[float, float, int, float, int]]] = []
        try:
            for n in range(args.rounds):
                offset = n * (REQUESTS // args.rounds)
                rounds.append(
                    {
                        "planbridge": run_wrk(port, script, data, args.seconds, args.connections, ours.pid, offset),
                        "bare Flask": run_wrk(
                            bare_port, script, data, args.seconds, args.connections, bare.pid, offset
                        ),
                    }
                )
        finally:
            for server in (ours, bare):
                server.terminate()
                server.wait(timeout=30)
        engine = create_engine(db_url)
        with engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(InboundEventRow)).scalar_one()
        engine.dispose()
        sent = sum(r["planbridge"][4] for r in rounds)
        # wrk counts only the answers it read; a request cut off at the end of a run may still be stored.
        print(f"events stored {stored} for {sent} requests answered (each carried a new webhook-id)")
        if args.database == "postgres":
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", f"DROP SCHEMA {schema} CASCADE"],
                check=True,
                env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"},
            )
    report(rounds, args, workers, threads)


def report(
    rounds: list[dict[str, tuple[float, float, int, float, int]]], args: argparse.Namespace, w: int, t: int
) -> None:
    print(
        f"signed webhook ingest under gunicorn ({w} gthread workers x {t} threads), wrk -t{WRK_THREADS} "
        f"-c{args.connections} -d{args.seconds}s, database {args.database}, {len(rounds)} alternating rounds"
    )
    print(f"{'round':>5} {'':12} {'requests/s':>11} {'p99 ms':>8} {'non-2xx':>8} {'server CPU ms/request':>22}")
    for n, results in enumerate(rounds, 1):
        for name, (rate, p99, bad, cpu_ms, _total) in results.items():
            print(f"{n:5d} {name:12} {rate:11.0f} {p99:8.1f} {bad:8d} {cpu_ms:22.2f}")
    best = max(rounds, key=lambda r: r["planbridge"][0])
    print(f"best round: planbridge {best['planbridge'][0]:.0f}/s, p99 {best['planbridge'][1]:.1f} ms")
    ratios = [r["planbridge"][0] / r["bare Flask"][0] for r in rounds]
    cpu = [r["planbridge"][3] / r["bare Flask"][3] for r in rounds]
    print(f"ratio planbridge / bare Flask (median of rounds): {statistics.median(ratios):.3f}")
    print(f"CPU per request, planbridge / bare Flask (median of rounds): {statistics.median(cpu):.1f}")


if __name__ == "__main__":
    main()
