"""Team events accepted per second (signature, validation, durable commit) vs a bare Flask endpoint.

Both run in-process through Flask's test client on one core, so the ratio shows what planbridge's
intake costs on top of Flask itself. Run: `.venv/bin/python bench/webhook_intake.py [N]`.

`--pages [--sizes 2000,40000] [--events 400] [--group 4]`: what an accepted event costs the SQLite file as it
grows, in counts rather than rates (issue #15). For each size, a new file is filled with that many new-plan
events, then `--events` more are sent through two engines in turn (two page caches, as the two gunicorn
workers: each one's commits empty the other's cache, so every transaction reads its pages again), `--group`
events to a transaction (as the group committer shares commits under load). Printed per event: WAL frames
(pages written at COMMIT, under the writer lock), pages copied (what a checkpoint every 48 events, ~50 ms of a
loaded intake as service/store/checkpoints.py runs it, copies to the file: each window's distinct pages), reads
(read(2)/pread(2) calls, /proc/self/io), CPU, and the frames and depth of each B-tree written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import struct
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from flask import Flask, request

from service.api import webhooks
from service.api.app import create_app
from service.services.events import Envelope, Outcome, handle_event
from service.settings import Settings
from service.signing import new_secret, sign_headers
from service.store import committer
from service.store.db import create_engine, sqlite_file, upgrade

EVENT = json.loads((Path(__file__).resolve().parent.parent / "fixtures/events/goal-proposed.json").read_text())


def bodies(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        EVENT["data"]["plan_id"] = f"bench-plan-{i}"
        out.append(json.dumps(EVENT).encode())
    return out


def rate(app: Flask, payloads: list[bytes], secret: str) -> float:
    client = app.test_client()
    signed = [(b, sign_headers(secret, b)) for b in payloads]
    start = time.perf_counter()
    for body, headers in signed:
        answer = client.post("/webhooks/team", data=body, headers=headers, content_type="application/json")
        assert answer.status_code == 202, answer.data
    return len(payloads) / (time.perf_counter() - start)


def bare_app() -> Flask:
    app = Flask("bare")

    @app.post("/webhooks/team")
    def accept() -> tuple[dict, int]:
        return {"status": "accepted", "type": json.loads(request.get_data())["type"]}, 202

    return app


class _Grouped(committer.GroupCommitter):
    """Commits every `size` works in one transaction, as the group committer does when that many wait (the
    caller gets a stand-in answer: only the pages are looked at here)."""

    def __init__(self, engine: sa.Engine, size: int) -> None:
        super().__init__(engine)
        self.size, self.waiting = size, []

    def run(self, work):  # type: ignore[no-untyped-def]
        self.waiting.append(committer._Queued(work))
        if len(self.waiting) >= self.size:
            group, self.waiting = self.waiting, []
            self._commit(group)
            errors = [item.error for item in group if item.error is not None]
            if errors:
                raise errors[0]
        return Outcome(202, {})


def _engine(path: Path, group: int, synchronous: str = "FULL") -> sa.Engine:
    engine = create_engine(f"sqlite:///{path}")
    sa.event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute(f"PRAGMA synchronous={synchronous}"))
    sqlite_file(engine).wal_autocheckpoint = 1_000_000  # the WAL holds the whole run: its frames are counted
    if group > 1:
        setattr(engine, committer._COMMITTER, _Grouped(engine, group))
    return engine


def _send(engine: sa.Engine, n: int) -> None:
    EVENT["data"]["plan_id"] = f"load-{uuid.uuid4().hex[:10]}"  # as bench/webhook_load.py sends them
    EVENT["data"]["patient"]["mrn"] = f"MRN-{n}"
    raw = json.dumps(EVENT, separators=(",", ":")).encode()
    body, event_type, command = webhooks.read_event(raw)
    envelope = Envelope(f"msg_{uuid.uuid4().hex}", hashlib.sha256(raw).hexdigest(), body)
    outcome = handle_event(engine, envelope, event_type, command, lambda: datetime.now(UTC))
    assert outcome.status == 202, outcome


def _reads() -> int:
    return int(
        next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("syscr")).split()[1]
    )


def _copied(headers: list[tuple[int, int]], commits: int) -> int:
    """The pages a checkpoint after every `commits` commits copies: each window's distinct pages, summed (a frame
    header's second word is nonzero on a commit's last frame)."""
    total, window, ended = 0, set(), 0
    for page, commit in headers:
        window.add(page)
        ended += commit != 0
        if ended == commits:
            total, window, ended = total + len(window), set(), 0
    return total + len(window)


def pages(size: int, events: int, group: int, window: int = 48) -> None:
    """Fill a new file with `size` events, then count what `events` more cost (see the module doc)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pages.db"
        filler = _engine(path, 1, "OFF")  # the fill need not be durable
        upgrade(filler)
        for n in range(size):
            _send(filler, n)
        filler.dispose()
        with sqlite3.connect(path) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        engines = [_engine(path, group), _engine(path, group)]
        for engine in engines:  # connections open and statements compiled before counting
            for n in range(group):
                _send(engine, n)
        with sqlite3.connect(path) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        reads, cpu = _reads(), time.process_time()
        for n in range(events):
            _send(engines[(n // group) % 2], n)
        reads, cpu = _reads() - reads, time.process_time() - cpu
        for engine in engines:
            engine.dispose()
        wal = (Path(tmp) / "pages.db-wal").read_bytes()
        page_size = struct.unpack(">I", wal[8:12])[0]
        headers = [struct.unpack(">II", wal[at : at + 8]) for at in range(32, len(wal), 24 + page_size)]
        frames = [page for page, _ in headers]
        with sqlite3.connect(path) as raw:
            owner = dict(raw.execute("SELECT pageno, name FROM dbstat"))
            depth = dict(
                raw.execute("SELECT name, max(length(path) - length(replace(path, '/', ''))) FROM dbstat GROUP BY name")
            )
    by_tree = Counter(owner.get(page, "?") for page in frames)
    copied = _copied(headers, window // group)
    print(
        f"{size:>7} rows: {len(frames) / events:5.2f} WAL frames/event, {copied / events:5.2f} pages copied/event, "
        f"{reads / events:5.1f} reads/event, CPU {cpu * 1000 / events:.2f} ms/event "
        f"({events} events, {group} a commit, a checkpoint every {window})"
    )
    for name, count in by_tree.most_common():
        print(f"    {name:36} {count / events:5.2f} frames/event, depth {depth.get(name, '?')}")


def main() -> None:
    if "--pages" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--pages", action="store_true")
        parser.add_argument("--sizes", default="2000,40000")
        parser.add_argument("--events", type=int, default=400)
        parser.add_argument("--group", type=int, default=4)
        args = parser.parse_args()
        for size in args.sizes.split(","):
            pages(int(size), args.events, args.group)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    secret = new_secret()
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/bench.db")
        upgrade(engine)
        ours = rate(create_app(Settings(webhook_secrets=(secret,)), engine), bodies(n), secret)
    bare = rate(bare_app(), bodies(n), secret)
    print(f"events accepted/s: planbridge {ours:,.0f}  bare Flask {bare:,.0f}  ratio {ours / bare:.3f}")
    print(f"({n} events, in-process test client, SQLite with fsync on every commit)")


if __name__ == "__main__":
    main()
