"""Fixtures for integration tests."""

from tests.db_fixtures import database, engine, postgres  # noqa: F401
