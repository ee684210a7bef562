"""`GET /metrics` event families at scale: a scrape reads only the events received since the process's last
one (not every event ever received), and its counts stay exact while events commit beside it, in any order."""

from __future__ import annotations

import re
import threading
from collections import Counter

import sqlalchemy as sa

from service.api.app import create_app
from service.api.metrics import EventCounts
from service.settings import Settings
from tests.db_fixtures import migrated_database

SECRET = "whsec_" + "A" * 32
_INSERT = sa.text(
    "INSERT INTO inbound_events (sender, webhook_id, event_type, plan_id, body_sha256, body, received_at,"
    " response_status, response_body) VALUES (:sender, :webhook_id, :event_type, 'plan-1', 'x', '{}',"
    " '2026-12-05 00:00:00', :status, '{}')"
)
_SAMPLE = re.compile(r"^(planbridge_events(?:_by_sender)?)\{(.*)\} (\S+)$")


def _rows(prefix: str, n: int, sender: str = "default", event_type: str = "goal.proposed", status: int = 202):
    return [
        {"sender": sender, "webhook_id": f"{prefix}-{i}", "event_type": event_type, "status": status} for i in range(n)
    ]


def _insert(engine, rows) -> None:
    with engine.begin() as conn:
        conn.execute(_INSERT, rows)


def _families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The two event families of a scrape: {family: {sorted labels: value}}."""
    out: dict[str, dict] = {"planbridge_events": {}, "planbridge_events_by_sender": {}}
    for line in text.splitlines():
        if match := _SAMPLE.match(line):
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match[2])))
            out[match[1]][labels] = float(match[3])
    return out


def _full_count(engine) -> dict[str, dict]:
    """What the families must say: one GROUP BY over every event (the old scrape)."""
    events: Counter = Counter()
    senders: Counter = Counter()
    with engine.connect() as conn:
        for sender, event_type, status, n in conn.execute(
            sa.text("SELECT sender, event_type, response_status, count(*) FROM inbound_events GROUP BY 1, 2, 3")
        ):
            events[(("status", str(status)), ("type", event_type))] += n
            senders[(("sender", sender), ("status", str(status)))] += n
    return {
        "planbridge_events": {k: float(v) for k, v in events.items()},
        "planbridge_events_by_sender": {k: float(v) for k, v in senders.items()},
    }


def _client(engine):
    return create_app(Settings(webhook_secrets=(SECRET,)), engine).test_client()


def _scrape(client) -> dict[str, dict]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return _families(response.get_data(as_text=True))


def _events_rows_read(engine, scrape) -> int:
    """Run `scrape`; return what it cost in reading inbound_events. SQLite: the virtual-machine steps of every
    statement the scrape ran (a row read is several; the other families' tables are empty here). PostgreSQL: the
    rows the scrape's statements on inbound_events read, from EXPLAIN ANALYZE of each, run again as it ran (in one
    transaction, after the settings it made)."""
    if engine.dialect.name == "sqlite":
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        def watch(dbapi_connection, _record, _proxy) -> None:
            dbapi_connection.set_progress_handler(count, 1)

        sa.event.listen(engine, "checkout", watch)
        try:
            scrape()
        finally:
            sa.event.remove(engine, "checkout", watch)
        engine.dispose()  # no pooled connection keeps the handler
        return steps[0]
    statements: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if "inbound_events" in statement or statement.startswith("SET "):  # the scrape's settings too
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        scrape()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert statements
    read = 0
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in statements:
            if statement.startswith("SET "):
                cursor.execute(statement)
                continue
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters or None)
            plans = [cursor.fetchone()[0][0]["Plan"]]
            while plans:
                node = plans.pop()
                plans.extend(node.get("Plans", []))
                if node.get("Relation Name") == "inbound_events":  # a scan of its rows (not a bitmap of them)
                    read += node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
        raw.rollback()
    finally:
        raw.close()
    return read


def test_a_scrape_reads_only_the_events_received_since_the_last_one(engine):
    """Regression: every scrape ran one GROUP BY over every event ever received (events are never deleted),
    so its cost grew with the table without bound (~30 s a scrape at a month of 10 events/s)."""
    table = 4000
    _insert(engine, _rows("old", table))
    client = _client(engine)
    assert _scrape(client) == _full_count(engine)  # the process's first scrape counts them all, once
    _insert(engine, _rows("new", 10, sender="lab", status=409))

    cost = _events_rows_read(engine, lambda: _scrape(client))

    # Fewer than the table's rows: no scan of the table. (The old scrape: ~9x the table in SQLite VM steps,
    # and every row on PostgreSQL.)
    bound = table if engine.dialect.name == "sqlite" else 10
    assert cost <= bound, cost
    assert _scrape(client) == _full_count(engine)


def test_counts_are_exact_at_every_scrape_while_writers_commit_beside_it(engine):
    """Three writers commit batches of 1, 2, 3, ... events (each its own sender) while /metrics is scraped: every
    scrape shows, for each writer, a whole number of its batches (a prefix: a writer commits in order), and the
    last scrape agrees with a full count. On PostgreSQL the writers' transactions commit out of order."""
    client = _client(engine)
    batches, writers = 25, 3
    prefixes = {0.0} | {float(k * (k + 1) // 2) for k in range(1, batches + 1)}
    done = threading.Event()
    failures: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for k in range(1, batches + 1):
                _insert(engine, _rows(f"w{w}-b{k}", k, sender=f"writer-{w}", event_type=f"type-{k % 2}"))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    scrapes = 0
    try:
        while any(thread.is_alive() for thread in threads) or scrapes < 3:
            families = _scrape(client)
            scrapes += 1
            by_sender = families["planbridge_events_by_sender"]
            for w in range(writers):
                seen = by_sender.get((("sender", f"writer-{w}"), ("status", "202")), 0.0)
                assert seen in prefixes, (w, seen)
            assert sum(families["planbridge_events"].values()) == sum(by_sender.values())
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not failures
    assert _scrape(client) == _full_count(engine)
    assert sum(_scrape(client)["planbridge_events_by_sender"].values()) == writers * max(prefixes)


def test_an_event_an_older_transaction_commits_after_a_scrape_is_counted_once(postgres):
    """PostgreSQL commits transactions out of order: an event inserted by a transaction that began before a
    later one, but commits after it and after a scrape, is above no high-water mark; it is counted at the next
    scrape (its transaction was running at the last one), and only once."""
    engine, _url = postgres
    counts = EventCounts(engine)
    _insert(engine, _rows("before", 3))
    assert counts.read() == {("default", "goal.proposed", 202): 3}
    with engine.connect() as older:
        older.execute(_INSERT, _rows("older", 1, sender="older"))  # its transaction has an id, open
        _insert(engine, _rows("newer", 2, sender="newer"))  # a later transaction, committed first
        assert counts.read() == {("default", "goal.proposed", 202): 3, ("newer", "goal.proposed", 202): 2}
        older.commit()
    expected = {
        ("default", "goal.proposed", 202): 3,
        ("newer", "goal.proposed", 202): 2,
        ("older", "goal.proposed", 202): 1,
    }
    assert counts.read() == expected
    assert counts.read() == expected  # not twice
    _insert(engine, _rows("later", 1, sender="newer"))
    assert counts.read() == {**expected, ("newer", "goal.proposed", 202): 3}


def test_a_rowid_an_open_writer_rolls_back_is_counted_when_another_event_takes_it(tmp_path):
    """SQLite: a scrape does not wait for a writer (its reads take no writer lock) and reads below the highest
    committed rowid; the rowid an open transaction took and then rolled back goes to the next event, which the
    next scrape counts."""
    from tests.db_fixtures import migrated_database

    for engine, _url in migrated_database("sqlite", tmp_path):
        counts = EventCounts(engine)
        _insert(engine, _rows("before", 2))
        assert counts.read() == {("default", "goal.proposed", 202): 2}
        with engine.connect() as writer:
            writer.execute(_INSERT, _rows("rolled-back", 1, sender="gone"))
            assert counts.read() == {("default", "goal.proposed", 202): 2}  # answers while the writer is open
            writer.rollback()
        _insert(engine, _rows("after", 1, sender="lab"))
        assert counts.read() == {("default", "goal.proposed", 202): 2, ("lab", "goal.proposed", 202): 1}


def test_counts_start_afresh_when_the_sqlite_file_under_the_process_is_not_the_one_counted(tmp_path):
    """An SQLite file restored from a backup (or rebuilt) under a running process: its rows are not the ones the
    process counted (the row at the highest rowid counted is another or gone), and it counts them all again
    rather than adding to the old counts. SQLite only: PostgreSQL tells another cluster by its transaction ids
    going back, and a restore into the same cluster is not told apart (EventCounts; a restart counts afresh)."""
    engine, _url = next(migrated_database("sqlite", tmp_path))
    counts = EventCounts(engine)
    _insert(engine, _rows("first", 5))
    assert counts.read() == {("default", "goal.proposed", 202): 5}
    with engine.begin() as conn:  # stands in for the restore: other rows, as many or fewer
        conn.execute(sa.text("DELETE FROM inbound_events"))
    _insert(engine, _rows("restored", 5, sender="lab"))
    assert counts.read() == {("lab", "goal.proposed", 202): 5}


def test_the_event_families_keep_their_names_labels_and_values(engine):
    """The documented families (README `GET /metrics`): by type and answer, and by sender and answer."""
    _insert(engine, _rows("a", 2, event_type="goal.proposed", status=202))
    _insert(engine, _rows("b", 1, sender="lab", event_type="plan.updated", status=409))
    text = _client(engine).get("/metrics").get_data(as_text=True)
    for line in (
        'planbridge_events{status="202",type="goal.proposed"} 2.0',
        'planbridge_events{status="409",type="plan.updated"} 1.0',
        'planbridge_events_by_sender{sender="default",status="202"} 2.0',
        'planbridge_events_by_sender{sender="lab",status="409"} 1.0',
    ):
        assert line in text.splitlines()
    assert _families(text) == _full_count(engine)
