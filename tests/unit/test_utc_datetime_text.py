"""UTCDateTime's one-step SQLite bind writes exactly the text SQLAlchemy's two steps (process_bind_param, then
SQLite's DATETIME) write, for any aware instant; a naive one is still refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from service.store.tables import UTCDateTime

DIALECT = sqlite.dialect()
ONE_STEP = UTCDateTime().bind_processor(DIALECT)
SQLITE_DATETIME = sa.DateTime(timezone=True).dialect_impl(DIALECT).bind_processor(DIALECT)


def two_steps(value: datetime) -> str:
    return SQLITE_DATETIME(UTCDateTime().process_bind_param(value, DIALECT))


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_the_one_step_text_is_sqlalchemys_two_step_text(instant, offset_minutes):
    zone = timezone(timedelta(minutes=offset_minutes))
    value = instant.astimezone(zone)
    assert ONE_STEP(value) == two_steps(value)


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 5, 4, 17, 19, 0, tzinfo=UTC),  # no microseconds: still written, .000000
        datetime(2026, 12, 5, 1, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(999, 1, 1, tzinfo=UTC),  # a year below 1000: four digits
    ],
)
def test_edge_instants(value):
    assert ONE_STEP(value) == two_steps(value)


def test_none_and_naive():
    assert ONE_STEP(None) is None
    with pytest.raises(ValueError, match="naive"):
        ONE_STEP(datetime(2026, 12, 5))
    assert ONE_STEP(datetime(2026, 12, 5, 4, 17, 19, 5, tzinfo=UTC)) == "2026-12-05 04:17:19.000005"
