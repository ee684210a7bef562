"""Fixtures for integration tests."""

import pytest

from service.sync.split import LEARNED
from tests.db_fixtures import database, engine, postgres  # noqa: F401
from tests.integration.test_notify import Receiver


@pytest.fixture(autouse=True)
def _unlearned_fhir_limits():
    """What a process learns of a FHIR server's transaction limits lasts the process (service.sync.split);
    every test starts as a fresh process, so the requests a push costs do not depend on the test order."""
    LEARNED.forget()
    yield


@pytest.fixture
def receivers():
    """Start webhook receivers on demand (`receivers(**kwargs)`); all are stopped after the test."""
    started: list[Receiver] = []

    def start(**kwargs) -> Receiver:
        started.append(Receiver(**kwargs))
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()
