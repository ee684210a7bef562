"""Reading FHIR dates and instants as timezone-aware datetimes, one way everywhere.

`parse_instant` is lenient, for showing and ordering what people wrote: partial dates ("2026", "2026-09") are
their first day and a time without a zone is read as UTC. `zoned_instant` is strict, for what a server stamps
(`meta.lastUpdated`, a FHIR `instant`, always has a zone): a value without one is not an instant, and is not
taken as a cursor or a time of change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_instant(value: str | None) -> datetime | None:
    """Parse an ISO date or instant ("2026", "2026-09", "2026-09-13", "2026-09-13T19:00:00Z") as UTC."""
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    for candidate in (text, f"{text}-01" if len(text) == 7 else None, f"{text}-01-01" if len(text) == 4 else None):
        if candidate is None:
            continue
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def zoned_instant(value: Any) -> datetime | None:
    """Read a FHIR instant (`meta.lastUpdated`); None when it is absent, not a string, malformed or zone-less."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
