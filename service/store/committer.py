"""Run units of work in durable transactions; on an SQLite file, many threads' work shares one commit.

`committer_for(engine).run(work)` calls `work(uow)` inside an open transaction, commits, and returns
what `work` returned, only once the commit is durable. A `work` that raises `IntegrityError` or
`StaleVersion` (someone else wrote the same key or plan first) is run again on fresh reads; any other
exception undoes that work alone and is raised to its caller.

On an SQLite file every commit is an fsync of the WAL, and only one writer runs at a time, so the
commit, not the work, limits how many events a second the intake accepts. The group committer lets
threads that arrive while a transaction is running queue their work; the next leader runs everything
queued in one transaction, each work in its own savepoint, and commits once (the group commit of
database servers). On PostgreSQL, where concurrent transactions commit in parallel, each run is its
own transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from service.domain.errors import Conflict
from service.store.uow import StaleVersion, UnitOfWork

T = TypeVar("T")
MAX_TRIES = 5
MAX_GROUP = 64  # works per shared transaction; bounds how long the first of them waits for its answer


class TooBusy(Conflict):
    """The same keys kept changing under this work; the caller may retry."""

    code = "too-busy"


class Committer:
    """One transaction per run (PostgreSQL, in-memory SQLite)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.commits = 0  # transactions committed, and the works they carried (read by /metrics)
        self.works = 0
        self._counting = threading.Lock()

    def _count(self, works: int) -> None:
        with self._counting:
            self.commits += 1
            self.works += works

    def run(self, work: Callable[[UnitOfWork], T]) -> T:
        """Run `work` in a transaction, retrying on a lost race; return its result once committed."""
        return _retrying(lambda: self._once(work))

    def _once(self, work: Callable[[UnitOfWork], T]) -> T:
        with UnitOfWork(self.engine) as uow:  # leaving the block without a commit rolls back
            result = work(uow)
            uow.commit()
        self._count(1)
        return result


def _retrying(attempt: Callable[[], T]) -> T:
    """Make the attempt again while it loses a race (someone wrote the same key or plan first)."""
    for _ in range(MAX_TRIES):
        try:
            return attempt()
        except (IntegrityError, StaleVersion):
            continue
    raise TooBusy("the data this change depends on kept changing; retry")


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class _Queued(Generic[T]):
    # `wake` is a lock made held: its waiter blocks acquiring it until a waker releases it. Cheaper than a
    # threading.Event (a Condition, a lock per wait) and enough here: an item is woken at most once before
    # it waits again (to lead a group, which the item alone then does, or with its answer).
    work: Callable[[UnitOfWork], T]
    wake: threading.Lock = field(default_factory=_held_lock)
    lead: bool = False  # woken to lead the next group rather than with an answer
    done: bool = False
    result: T | None = None
    error: BaseException | None = None


class GroupCommitter(Committer):
    """Works from many threads share transactions and commits (SQLite files)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._mutex = threading.Lock()
        self._queue: list[_Queued[object]] = []
        self._leading = False

    def run(self, work: Callable[[UnitOfWork], T]) -> T:
        """Queue `work`; lead a group if nobody is, else wait for the group it joins to commit."""
        item: _Queued[T] = _Queued(work)
        with self._mutex:
            self._queue.append(item)  # type: ignore[arg-type]
            leader = not self._leading
            self._leading = True
        if leader:
            self._lead()
        while not item.done:
            item.wake.acquire()
            if item.lead and not item.done:
                item.lead = False
                self._lead()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def _lead(self) -> None:
        group: list[_Queued[object]] = []
        try:
            self._commit(group)
        finally:
            with self._mutex:
                if self._queue:  # hand over: the oldest waiter leads the next group
                    self._queue[0].lead = True
                    self._queue[0].wake.release()
                else:
                    self._leading = False
            for item in group:
                item.done = True
                item.wake.release()

    def _take(self, group: list[_Queued[object]]) -> None:
        with self._mutex:
            group[:], self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]

    def _commit(self, group: list[_Queued[object]]) -> None:
        """Begin, then take the group (into `group`), run it and commit. The transaction begins first: BEGIN
        waits for the writer lock while the other process commits, and the works queued meanwhile join this
        group rather than wait for the next one (2 gunicorn workers: ~1 commit in 2 held by the other)."""
        try:
            with ExitStack() as stack:
                try:
                    uow = stack.enter_context(UnitOfWork(self.engine))
                    assert uow.session is not None
                    uow.session.connection()  # BEGIN IMMEDIATE: the writer lock
                finally:
                    self._take(group)  # taken even if BEGIN failed: the group's works get its error
                for item in group:
                    self._apply(uow, item)
                uow.commit()
            self._count(len(group))
        except BaseException as exc:  # the shared transaction failed: nothing in it is durable
            for item in group:
                item.result, item.error = None, exc
            if not isinstance(exc, Exception):
                raise

    @staticmethod
    def _apply(uow: UnitOfWork, item: _Queued[object]) -> None:
        def in_savepoint() -> object:
            with uow.savepoint():
                return item.work(uow)

        try:
            item.result = _retrying(in_savepoint)
        except Exception as exc:  # this work alone is undone; the group goes on
            item.error = exc


_COMMITTER = "_planbridge_committer"  # the engine's attribute holding its committer
_COMMITTERS_GUARD = threading.Lock()


def committer_for(engine: Engine) -> Committer:
    """Return the engine's committer: grouping on an SQLite file, one transaction per run otherwise.

    Kept on the engine itself: a committer refers to its engine, so a module-level WeakKeyDictionary entry
    would keep every engine ever used alive, with its pool's connections open."""
    committer: Committer | None = getattr(engine, _COMMITTER, None)
    if committer is not None:
        return committer
    with _COMMITTERS_GUARD:
        committer = getattr(engine, _COMMITTER, None)
        if committer is None:
            url = engine.url
            on_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
            committer = GroupCommitter(engine) if on_file else Committer(engine)
            setattr(engine, _COMMITTER, committer)
        return committer
