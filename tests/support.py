"""Helpers shared by tests: settings, signed requests and a clock."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.settings import Settings
from service.signing import new_secret, sign_headers

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SECRET = new_secret()
MRN_SYSTEM = "http://hospital.example.org/mrn"


def settings(**overrides: Any) -> Settings:
    """Return test settings with a fresh identifier base so tests never see each other's FHIR data."""
    values: dict[str, Any] = {
        "webhook_secrets": (SECRET,),
        "identifier_base": f"https://planbridge.test/{uuid.uuid4().hex[:8]}/id",
        "mrn_system": MRN_SYSTEM,
        "create_patients": True,
    }
    values.update(overrides)
    return Settings(**values)


def goal_event(plan_id: str | None = None, goal_id: str = "goal-walk", mrn: str | None = None) -> dict[str, Any]:
    """Return the example goal.proposed event with its own plan id and MRN."""
    event = copy.deepcopy(json.loads((FIXTURES / "events" / "goal-proposed.json").read_text()))
    event["data"]["plan_id"] = plan_id or f"plan-{uuid.uuid4().hex[:10]}"
    event["data"]["patient"]["mrn"] = mrn or f"MRN-{uuid.uuid4().hex[:10]}"
    event["data"]["goal"]["id"] = goal_id
    return event


def signed(body: bytes, secret: str = SECRET, msg_id: str | None = None, at: datetime | None = None) -> dict[str, str]:
    """Return the headers of a signed JSON request."""
    return {**sign_headers(secret, body, msg_id, at), "Content-Type": "application/json"}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 22, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def wait_until_healthy(url: str, server: Any, seconds: float, why: Any = "the service did not come up") -> None:
    """Poll `url`/healthz until it answers OK; fail with `why` (a string, or a callable giving one) when
    `server` (a Popen) exits or `seconds` pass first."""
    import time

    import requests

    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline and server.poll() is None, why() if callable(why) else why
        time.sleep(0.1)
