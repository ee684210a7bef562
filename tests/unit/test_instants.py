"""One reading of FHIR dates and instants (service.domain.instants), and the history cursor built on it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.domain.instants import parse_instant, zoned_instant
from service.sync.pull_search import history_newest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-09", datetime(2026, 9, 1, tzinfo=UTC)),
        ("2026-09-13", datetime(2026, 9, 13, tzinfo=UTC)),
        ("2026-09-13T19:00:00Z", datetime(2026, 9, 13, 19, tzinfo=UTC)),
        (" 2026-09-13T19:00:00 ", datetime(2026, 9, 13, 19, tzinfo=UTC)),
        ("2026-09-13T19:00:00+02:00", datetime(2026, 9, 13, 17, tzinfo=UTC)),
        ("", None),
        (None, None),
        ("soon", None),
        ("2026-13", None),
    ],
)
def test_parse_instant_reads_partial_dates_and_zone_less_times_as_utc(text: str | None, expected: datetime) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize("value", [None, 12, "", "soon", "2026-09-13T19:00:00", "2026-09-13"])
def test_zoned_instant_takes_only_instants_with_a_zone(value: object) -> None:
    assert zoned_instant(value) is None


def test_zoned_instant_keeps_the_offset() -> None:
    assert zoned_instant("2026-09-13T19:00:00+02:00") == datetime(2026, 9, 13, 19, tzinfo=timezone(timedelta(hours=2)))


def _version(updated: object) -> dict[str, object]:
    return {"resource": {"resourceType": "Goal", "id": "1", "meta": {"lastUpdated": updated}}}


def test_history_newest_compares_instants_not_strings() -> None:
    entries = [_version("2026-12-01T10:00:00+01:00"), _version("2026-12-01T09:30:00Z")]
    assert history_newest(entries) == "2026-12-01T09:30:00Z"


def test_history_newest_passes_over_a_lastupdated_without_a_zone() -> None:
    """It used to compare a zone-less instant with a zoned one: TypeError, and the pull failed."""
    entries = [_version("2026-12-01T10:00:00"), _version("2026-12-01T09:00:00Z")]
    assert history_newest(entries) == "2026-12-01T09:00:00Z"


def test_history_newest_never_makes_a_cursor_of_a_malformed_lastupdated() -> None:
    """It used to return "garbage" as the cursor: sent back as `_since`, every later history read was refused."""
    assert history_newest([_version("garbage")]) is None
    assert history_newest([_version("garbage"), _version("2026-12-01T09:00:00Z")]) == "2026-12-01T09:00:00Z"


@pytest.mark.parametrize("entry", [{"resource": {"meta": "x"}}, {"resource": "x"}, "x", {"request": {}}, _version(5)])
def test_history_newest_reads_past_entries_of_the_wrong_shape(entry: object) -> None:
    assert history_newest([entry, _version("2026-12-01T09:00:00Z")]) == "2026-12-01T09:00:00Z"
