"""The console's conflict helpers: which EHR resource holds a conflict's path, who changed it there and when,
and the value typed for a conflict (how it is read and shown again)."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime
from typing import Any

from service.console.plan_words import _instant

PATH_ITEM = re.compile(r"(goals|steps|team)\[id=([^\]]+)\](?:\.(?:check_ins|ratings)\[id=([^\]]+)\])?")


def ehr_side(path: str, links: dict[str, Any]) -> Any | None:
    """Return the link (FHIR resource, version last read, when) holding a conflict's path on the EHR side:
    the check-in's Observation, the goal's Goal, the CareTeam for the team, else the CarePlan."""
    match = PATH_ITEM.match(path)
    keys = []
    if match and match.group(1) == "goals":
        keys += [f"observation:{match.group(2)}/{match.group(3)}"] if match.group(3) else []
        keys.append(f"goal:{match.group(2)}")
    elif match and match.group(1) == "team":
        keys.append("careteam")
    keys.append("careplan")
    return next((links[k] for k in keys if k in links), None)


def ehr_change(origin: dict[str, Any] | None) -> dict[str, str]:
    """Return who changed a conflict's EHR side and when, in words: the reference or meta.source URI the pull
    recorded (never a name) and the version's meta.lastUpdated; "not recorded" for what the server did not say."""
    origin = origin or {}
    at = origin.get("changed_at")
    when = None
    if isinstance(at, str):
        with contextlib.suppress(ValueError):
            when = _instant(datetime.fromisoformat(at))
    return {"by": origin.get("changed_by") or "not recorded", "at": when or "not recorded"}


def value_kind(conflict: dict[str, Any]) -> str:
    """Return how a typed value for a conflict is read: "text" when either side is a string (what_matters, a
    status, a note), else "json" (a number, a list, an object)."""
    return "text" if isinstance(conflict["ours"], str) or isinstance(conflict["theirs"], str) else "json"


def _value_text(value: Any, kind: str) -> str:
    if kind == "text":
        return value if isinstance(value, str) else ""
    return json.dumps(value, indent=2, ensure_ascii=False)


VALUE_MAX = 20_000  # characters of a typed value: far more than any field of a plan holds


def _typed_value(text: str, kind: str) -> Any:
    """Read the value typed for a conflict: the text itself, or JSON; ValueError says why not."""
    if len(text) > VALUE_MAX:
        raise ValueError(f"the value is longer than {VALUE_MAX} characters")
    if kind == "text":
        text = text.replace("\r\n", "\n").strip()  # a browser's line ends; FHIR strings have no outer blanks
        if not text:
            raise ValueError("enter the value to keep, or take ours or theirs")
        return text
    if not text.strip():
        raise ValueError("enter the value to keep as JSON, or take ours or theirs")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"that is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
