"""An engine planbridge no longer references is freed, and its pool's connections with it.

The session factory and the committer of an engine were kept in module-level WeakKeyDictionaries whose values
refer to their engine, so every engine ever used stayed alive with its connections open: the test suite ran
PostgreSQL out of its 100 connections ("sorry, too many clients already"). They are now kept on the engine.
"""

import gc
import weakref

from service.store.committer import committer_for
from service.store.db import create_engine, upgrade
from service.store.uow import UnitOfWork


def _used_then_dropped(path) -> weakref.ref:
    """Use an engine for a unit of work and a commit, as a request does; return a weak reference to it."""
    engine = create_engine(f"sqlite:///{path / 'lifetime.db'}")
    upgrade(engine)
    with UnitOfWork(engine) as uow:
        uow.plans.get("nothing")
    committer_for(engine).run(lambda uow: uow.plans.get("nothing"))
    assert committer_for(engine) is committer_for(engine)  # one committer per engine, still
    return weakref.ref(engine)


def test_an_engine_used_for_units_of_work_and_commits_is_freed_once_unreferenced(tmp_path):
    gone = _used_then_dropped(tmp_path)
    gc.collect()
    assert gone() is None, "the engine was kept alive after its last use"
