"""Fixtures for integration tests."""

import pytest

from tests.db_fixtures import database, engine, postgres  # noqa: F401
from tests.integration.test_notify import Receiver


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
