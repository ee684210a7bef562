"""The committer: work runs in durable transactions; on an SQLite file, concurrent work shares commits."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.store.committer import Committer, GroupCommitter, TooBusy, committer_for
from service.store.db import create_engine, upgrade
from service.store.tables import DeliveryRow, OutboxRow
from service.store.uow import StaleVersion, UnitOfWork

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def queue_push(plan_id: str):
    def work(uow: UnitOfWork) -> str:
        uow.outbox.add(plan_id, "push_plan", None, None, NOW)
        return plan_id

    return work


def queued(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(OutboxRow.plan_id)).scalars())


def count_commits(engine) -> list[int]:
    commits = [0]

    @sa.event.listens_for(engine, "commit")
    def counted(_conn) -> None:
        commits[0] += 1

    return commits


def run_together(committer: Committer, works: list, threads: int = 16) -> tuple[list, list[BaseException]]:
    """Run the works from `threads` threads started together; return their results and errors."""
    results: list = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)
    lock = threading.Lock()
    pending = list(works)

    def worker() -> None:
        start.wait()
        while True:
            with lock:
                if not pending:
                    return
                work = pending.pop()
            try:
                result = committer.run(work)
                with lock:
                    results.append(result)
            except Exception as exc:  # collected for the assertions
                with lock:
                    errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    return results, errors


def test_an_sqlite_file_gets_a_group_committer_and_other_databases_one_transaction_per_run(engine, tmp_path):
    expected = GroupCommitter if engine.dialect.name == "sqlite" else Committer
    assert type(committer_for(engine)) is expected
    assert committer_for(engine) is committer_for(engine)
    memory = create_engine("sqlite://")
    assert type(committer_for(memory)) is Committer


def test_every_run_is_committed_and_answered_to_its_own_caller(engine):
    works = [queue_push(f"plan-{i}") for i in range(200)]
    results, errors = run_together(committer_for(engine), works)
    assert errors == []
    assert sorted(results) == sorted(f"plan-{i}" for i in range(200))
    assert queued(engine) == sorted(f"plan-{i}" for i in range(200))


def test_concurrent_runs_on_an_sqlite_file_share_commits(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'group.db'}")
    upgrade(engine)
    commits = count_commits(engine)

    def slow_push(plan_id: str):
        def work(uow: UnitOfWork) -> str:
            uow.outbox.add(plan_id, "push_plan", None, None, NOW)
            threading.Event().wait(0.002)  # long enough for the other threads to queue behind it
            return plan_id

        return work

    committer = committer_for(engine)
    results, errors = run_together(committer, [slow_push(f"p{i}") for i in range(160)])
    assert errors == [] and len(results) == 160
    assert len(queued(engine)) == 160
    assert commits[0] < 80, f"{commits[0]} commits for 160 runs: nothing was grouped"
    assert (committer.commits, committer.works) == (commits[0], 160)  # what /metrics reports


def test_a_failing_work_is_undone_alone_and_its_caller_gets_the_error(engine):
    class Refused(Exception):
        pass

    def half_then_fail(uow: UnitOfWork) -> None:
        uow.outbox.add("doomed", "push_plan", None, None, NOW)
        raise Refused("no")

    works = [queue_push(f"ok-{i}") for i in range(40)] + [half_then_fail] * 10
    results, errors = run_together(committer_for(engine), works)
    assert len(results) == 40
    assert len(errors) == 10 and all(isinstance(e, Refused) for e in errors)
    assert "doomed" not in queued(engine)
    assert len(queued(engine)) == 40


def test_a_lost_race_runs_the_work_again_and_a_hopeless_one_gives_up(engine):
    tries = {"flaky": 0, "hopeless": 0}

    def flaky(uow: UnitOfWork) -> str:
        tries["flaky"] += 1
        uow.outbox.add(f"flaky-{tries['flaky']}", "push_plan", None, None, NOW)
        if tries["flaky"] < 3:
            raise IntegrityError("INSERT", {}, Exception("duplicate key"))
        return "done"

    def hopeless(uow: UnitOfWork) -> None:
        tries["hopeless"] += 1
        raise StaleVersion("plan changed", plan_id="p")

    committer = committer_for(engine)
    assert committer.run(flaky) == "done"
    assert tries["flaky"] == 3
    assert queued(engine) == ["flaky-3"]  # the attempts that lost were rolled back
    with pytest.raises(TooBusy):
        committer.run(hopeless)
    assert tries["hopeless"] == 5


def test_a_failed_commit_answers_every_run_of_its_group_with_the_error_and_lets_the_next_in(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'failing.db'}")
    upgrade(engine)
    committer = committer_for(engine)
    assert isinstance(committer, GroupCommitter)
    deliveries = DeliveryRow.__table__

    def orphan_delivery(uow: UnitOfWork) -> None:
        # A foreign key checked only at COMMIT: the commit itself fails, as a full disk would make it.
        assert uow.session is not None
        uow.session.execute(sa.text("PRAGMA defer_foreign_keys = ON"))
        values = {"subscription_id": 999, "plan_id": "p", "sequence": 1, "event_type": "note.added", "payload": {}}
        values |= {"webhook_id": "msg_orphan", "status": "pending", "attempts": 0, "next_attempt_at": NOW}
        uow.session.execute(deliveries.insert().values(**values, attempt_log=[], created_at=NOW))

    def lead(uow: UnitOfWork) -> str:
        uow.outbox.add("lead", "push_plan", None, None, NOW)
        deadline = time.monotonic() + 30
        while len(committer._queue) < 10 and time.monotonic() < deadline:  # the rest queue up behind us
            time.sleep(0.01)
        return "lead"

    leader = threading.Thread(target=committer.run, args=(lead,))
    leader.start()
    time.sleep(0.05)
    results, errors = run_together(committer, [queue_push(f"p{i}") for i in range(9)] + [orphan_delivery], threads=10)
    leader.join(timeout=30)
    assert results == []
    assert len(errors) == 10 and all(isinstance(e, IntegrityError) for e in errors), {repr(e)[:200] for e in errors}
    assert queued(engine) == ["lead"]
    started = time.monotonic()
    assert committer.run(queue_push("after")) == "after"  # the writer lock was let go
    assert time.monotonic() - started < 5
    assert queued(engine) == ["after", "lead"]


def test_a_run_returns_only_once_its_change_is_visible_to_other_connections(engine):
    seen: list[list[str]] = []
    committer = committer_for(engine)

    def check_after(plan_id: str):
        def caller() -> None:
            committer.run(queue_push(plan_id))
            seen.append([p for p in queued(engine) if p == plan_id])

        return caller

    threads = [threading.Thread(target=check_after(f"p{i}")) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(seen) == 12 and all(len(found) == 1 for found in seen)


def test_works_queued_while_the_leader_waits_for_the_writer_lock_join_its_group(tmp_path):
    """The leader begins (waits for the writer lock another process or connection holds) before it takes its
    group, so the works queued during that wait share its commit instead of waiting for one more."""
    engine = create_engine(f"sqlite:///{tmp_path / 'waiting.db'}")
    upgrade(engine)
    committer = committer_for(engine)
    assert isinstance(committer, GroupCommitter)
    commits = count_commits(engine)
    holder = create_engine(f"sqlite:///{tmp_path / 'waiting.db'}")
    with UnitOfWork(holder) as held:
        held.outbox.add("held", "push_plan", None, None, NOW)  # BEGIN IMMEDIATE: the writer lock is taken
        works = [queue_push(f"p{i}") for i in range(3)]
        threads = [threading.Thread(target=committer.run, args=(work,)) for work in works]
        threads[0].start()
        deadline = time.monotonic() + 10
        while not committer._leading and time.monotonic() < deadline:  # p0 leads, and waits at BEGIN
            time.sleep(0.005)
        for thread in threads[1:]:
            thread.start()
        while time.monotonic() < deadline and sum(item.work in works[1:] for item in committer._queue) < 2:
            time.sleep(0.005)  # p1 and p2 queued behind the waiting leader
        time.sleep(0.05)
        held.commit()
    for thread in threads:
        thread.join(timeout=30)
    assert queued(engine) == ["held", "p0", "p1", "p2"]
    assert (committer.commits, committer.works) == (1, 3), "the works queued during the wait waited for a commit more"
    assert commits[0] == 1
    holder.dispose()
    engine.dispose()
