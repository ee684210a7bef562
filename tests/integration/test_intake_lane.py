"""The intake's fast lane (service/api/intake_lane.py) answers exactly as Flask's view does.

Two apps on two SQLite files get the same requests in the same order: one with the lane in front, one
with Flask's own wsgi_app only. Every answer must match (status, body bytes, headers but X-Request-ID's
generated value), the stored events must match, and so must the request metrics. The lane must also
really take the requests it is for: a signed, well-formed event never reaches Flask's view.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.api import intake_lane
from service.api.app import create_app
from service.settings import Settings
from service.signing import sign_headers
from service.store.db import create_engine, upgrade

SECRET = "whsec_" + "B" * 32
EVENTS = Path(__file__).resolve().parents[2] / "fixtures" / "events"
_GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)")


def _event(name: str, **data: object) -> dict:
    event = json.loads((EVENTS / f"{name}.json").read_text())
    event["data"].update(data)
    return event


def _app(tmp_path: Path, name: str, lane: bool):
    engine = create_engine(f"sqlite:///{tmp_path / name}.db")
    upgrade(engine)
    app = create_app(Settings(webhook_secrets=(SECRET,), max_body_bytes=4096), engine)
    if not lane:
        assert isinstance(app.wsgi_app, intake_lane.IntakeLane)
        app.wsgi_app = app.wsgi_app.inner
    return app, engine


def _signed(body: bytes, msg_id: str, **extra: str) -> dict[str, str]:
    return {**sign_headers(SECRET, body, msg_id), **extra}


def _requests() -> list[tuple[str, bytes, dict[str, str]]]:
    """(label, body, headers) in the order sent; the same bytes and signatures go to both apps."""
    proposed = json.dumps(_event("goal-proposed", plan_id="lane-1")).encode()
    other = json.dumps(_event("goal-proposed", plan_id="lane-2")).encode()
    agreement = json.dumps(_event("agreement-recorded", plan_id="lane-1")).encode()
    unknown_plan = json.dumps(_event("agreement-recorded", plan_id="lane-none")).encode()
    bad_goal = copy.deepcopy(_event("goal-proposed", plan_id="lane-3"))
    bad_goal["data"]["goal"]["targets"][0]["value"] = "4000"  # a number as a string: 400 from the schema
    bad_system = _event("goal-proposed", plan_id="lane-4")
    bad_system["data"]["goal"]["targets"][0]["measure"]["system"] = "not a uri"
    again = json.dumps(_event("goal-proposed", plan_id="lane-1")).encode()  # the goal is there: refused, recorded
    stale = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    ctype = {"Content-Type": "application/json"}
    requests = [
        ("new plan", proposed, _signed(proposed, "msg_lane_1", **ctype)),
        ("replay", proposed, _signed(proposed, "msg_lane_1", **ctype)),
        ("reused id, other body", other, _signed(other, "msg_lane_1", **ctype)),
        ("agreement", agreement, _signed(agreement, "msg_lane_2", **ctype, **{"X-Request-ID": "trace-42"})),
        ("unknown plan (404 recorded)", unknown_plan, _signed(unknown_plan, "msg_lane_3", **ctype)),
        ("404 replayed", unknown_plan, _signed(unknown_plan, "msg_lane_3", **ctype)),
        (
            "schema refusal",
            json.dumps(bad_goal).encode(),
            _signed(json.dumps(bad_goal).encode(), "msg_lane_4", **ctype),
        ),
        ("bad uri", json.dumps(bad_system).encode(), _signed(json.dumps(bad_system).encode(), "msg_lane_5", **ctype)),
        ("goal there (recorded)", again, _signed(again, "msg_lane_12", **ctype)),
        ("not JSON", b"{not json", _signed(b"{not json", "msg_lane_6", **ctype)),
        ("bad signature", proposed, {**_signed(proposed, "msg_lane_7", **ctype), "webhook-signature": "v1,AAAA"}),
        ("no signature", proposed, ctype),
        ("old timestamp", proposed, {**sign_headers(SECRET, proposed, "msg_lane_8", at=stale), **ctype}),
        ("long webhook-id", proposed, _signed(proposed, "m" * 300, **ctype)),
        ("text/plain", proposed, {**_signed(proposed, "msg_lane_9"), "Content-Type": "text/plain"}),
        ("charset", other, _signed(other, "msg_lane_10", **{"Content-Type": "application/json; charset=utf-8"})),
        ("too large", b" " * 5000 + proposed, _signed(b" " * 5000 + proposed, "msg_lane_11", **ctype)),
        ("reused id, bad body", b"{not json", _signed(b"{not json", "msg_lane_1", **ctype)),
    ]
    return requests


def _untimed(rows: list) -> list:
    """Rows with each instant the clock gave written as `<now>`: the two apps ran a few ms apart."""
    return [tuple(_INSTANT.sub("<now>", v) if isinstance(v, str) else v for v in row) for row in rows]


def _answer(app, body: bytes, headers: dict[str, str]):
    response = app.test_client().post("/webhooks/team", data=body, headers=headers)
    return response.status_code, response.get_data(), dict(response.headers)


def test_the_lane_answers_every_kind_of_request_as_flask_does(tmp_path):
    with_lane, lane_engine = _app(tmp_path, "lane", lane=True)
    without, flask_engine = _app(tmp_path, "flask", lane=False)
    for label, body, headers in _requests():
        lane_status, lane_body, lane_headers = _answer(with_lane, body, headers)
        flask_status, flask_body, flask_headers = _answer(without, body, headers)
        assert (label, lane_status, lane_body) == (label, flask_status, flask_body)
        lane_id, flask_id = lane_headers.pop("X-Request-ID"), flask_headers.pop("X-Request-ID")
        if "X-Request-ID" in headers:
            assert lane_id == flask_id == headers["X-Request-ID"], label
        else:
            assert _GENERATED_ID.match(lane_id) and _GENERATED_ID.match(flask_id), label
        assert (label, lane_headers) == (label, flask_headers)
    query = sa.text(
        "SELECT sender, webhook_id, event_type, plan_id, body_sha256, response_status, response_body"
        " FROM inbound_events ORDER BY webhook_id"
    )
    with lane_engine.connect() as a, flask_engine.connect() as b:
        stored = a.execute(query).all()
        assert stored == b.execute(query).all()
        plans = sa.text("SELECT id, version, document FROM plans ORDER BY id")
        assert _untimed(a.execute(plans).all()) == _untimed(b.execute(plans).all())
    # Recorded: the new plan, the agreement, the 404, the refused goal and the charset one.
    assert [row.webhook_id for row in stored] == [
        "msg_lane_1",
        "msg_lane_10",
        "msg_lane_12",
        "msg_lane_2",
        "msg_lane_3",
    ]


def _request_metrics(app) -> dict[str, float]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    samples = re.findall(r"^planbridge_http_requests_total\{([^}]*)\} (\S+)$", text, re.MULTILINE)
    counts = {re.sub(r',?pid="\d+"', "", labels): float(value) for labels, value in samples}
    timed = re.findall(
        r'^planbridge_http_request_seconds_count\{endpoint="webhooks.team_event",pid="\d+"\} (\S+)$', text, re.MULTILINE
    )
    return {
        **{k: v for k, v in counts.items() if "webhooks.team_event" in k},
        "timed": float(timed[0]) if timed else 0.0,
    }


def test_the_lane_counts_and_times_requests_as_the_apps_hooks_do(tmp_path):
    with_lane, _ = _app(tmp_path, "lane", lane=True)
    without, _ = _app(tmp_path, "flask", lane=False)
    for _label, body, headers in _requests():
        _answer(with_lane, body, headers)
        _answer(without, body, headers)
    lane, flask = _request_metrics(with_lane), _request_metrics(without)
    assert lane == flask
    assert lane['endpoint="webhooks.team_event",method="POST",status="202"'] == 4.0  # new, replay, agreement, charset
    assert lane["timed"] == float(len(_requests()))


@pytest.mark.parametrize("lane", [True, False])
def test_a_signed_event_skips_flasks_view_and_a_refused_one_reaches_it(tmp_path, lane):
    app, _ = _app(tmp_path, "app", lane=lane)
    calls: list[str] = []
    view = app.view_functions["webhooks.team_event"]

    def counted():
        calls.append("view")
        return view()

    app.view_functions["webhooks.team_event"] = counted
    body = json.dumps(_event("goal-proposed", plan_id="lane-9")).encode()
    assert _answer(app, body, _signed(body, "msg_lane_20", **{"Content-Type": "application/json"}))[0] == 202
    assert calls == ([] if lane else ["view"])
    assert _answer(app, b"[]", _signed(b"[]", "msg_lane_21", **{"Content-Type": "application/json"}))[0] == 400
    assert calls == (["view"] if lane else ["view", "view"])
