"""Fixtures for e2e tests."""

from tests.db_fixtures import database, engine, postgres  # noqa: F401
