"""Black-box checks of the command line and the reading/operating endpoints against the README: every bad
setting, argument or query ends in one line (CLI, documented exit code) or a problem+json answer, never a
traceback or a 500. Each bug found is a named regression test (`test_bug_...`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.api.app import create_app
from service.settings import Settings
from service.signing import new_secret
from tests.cli_support import run_planbridge
from tests.support import SECRET, goal_event, settings, signed

BIN = Path(sys.executable).parent / "planbridge"
KEY = "test-key-0123456789abcdef"
NO_FHIR = "http://127.0.0.1:9/fhir"  # nothing listens there; the commands below never reach it


def run(
    *args: str, env: dict[str, str], cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return run_planbridge(args, env=env, timeout=90, cwd=cwd, input=stdin)


def one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """Assert the command failed with `code` and a message, not a traceback; return stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "Error: " in result.stderr, result.stderr
    return result.stderr


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL", "WEB_"))}


@pytest.fixture
def env(database):
    """The environment of an operator's shell, on a migrated SQLite file and on PostgreSQL."""
    _, url = database
    return {**base_env(), "DATABASE_URL": url, "PLANBRIDGE_WEBHOOK_SECRET": SECRET, "FHIR_BASE_URL": NO_FHIR}


@pytest.fixture
def sqlite_env(tmp_path):
    """The same on a SQLite file nobody has migrated, for checks of settings and arguments alone."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    return {**base_env(), "DATABASE_URL": url, "PLANBRIDGE_WEBHOOK_SECRET": SECRET, "FHIR_BASE_URL": NO_FHIR}


# --- the command line: databases ------------------------------------------------------------------------------


def test_bug_db_upgrade_to_an_unknown_revision_is_one_line_not_a_traceback(sqlite_env):
    """Bug: `planbridge db upgrade --revision nonsense` printed alembic's CommandError as a traceback."""
    err = one_line_error(run("db", "upgrade", "--revision", "nonsense", env=sqlite_env))
    assert "cannot migrate" in err and "nonsense" in err


@pytest.mark.parametrize("url", ["nonsense", "mysql://user@db.example/planbridge", "http://example.org/db"])
def test_bug_a_database_url_planbridge_cannot_open_is_refused_by_name(sqlite_env, url):
    """Bug: a malformed DATABASE_URL (or one of a database planbridge has no driver for) ended `db upgrade` and
    `worker` in SQLAlchemy's ArgumentError / ModuleNotFoundError traceback."""
    for command in (("db", "upgrade"), ("worker", "--once"), ("outbox", "list")):
        err = one_line_error(run(*command, env={**sqlite_env, "DATABASE_URL": url}))
        assert "DATABASE_URL must be sqlite:///<file> or postgresql://user@host/db" in err
    with pytest.raises(Exception, match="DATABASE_URL must be"):
        Settings.from_env({"DATABASE_URL": url})


def test_every_documented_database_url_form_is_read():
    for url in ("sqlite:///var/x.db", "postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"):
        assert Settings.from_env({"DATABASE_URL": url}).database_url == url
    assert Settings.from_env({}).database_url == "sqlite:///var/planbridge.db"


def test_bug_an_unreachable_database_is_one_line_that_keeps_its_password(sqlite_env):
    """Bug: a PostgreSQL server that does not answer ended `db upgrade` and `worker --once` in a traceback."""
    unreachable = {**sqlite_env, "DATABASE_URL": "postgresql://planbridge:s3cret-pw@127.0.0.1:1/planbridge"}
    for command in (("db", "upgrade"), ("worker", "--once"), ("outbox", "list")):
        err = one_line_error(run(*command, env=unreachable))
        assert "cannot use the database (DATABASE_URL)" in err and "Connection refused" in err
        assert "s3cret-pw" not in err


def test_bug_an_unmigrated_database_says_to_run_db_upgrade(sqlite_env):
    """Bug: `worker --once` and `outbox list` on a database never migrated died with `no such table` in a
    traceback (with the SQL statement)."""
    for command in (("worker", "--once"), ("outbox", "list"), ("conflicts", "list")):
        err = one_line_error(run(*command, env=sqlite_env))
        assert "run `planbridge db upgrade`" in err
        assert "SELECT" not in err
    assert json.loads(run("db", "current", env=sqlite_env).stdout)["current"] is None


def test_db_upgrade_twice_and_from_an_older_revision(sqlite_env):
    older = run("db", "upgrade", "--revision", "0008", env=sqlite_env)
    assert older.returncode == 0 and "database at revision 0008" in older.stdout
    from service.store.db import head_revision

    for _ in range(2):
        again = run("db", "upgrade", env=sqlite_env)
        assert again.returncode == 0 and f"database at revision {head_revision()}" in again.stdout
    assert json.loads(run("db", "current", env=sqlite_env).stdout) == {
        "current": head_revision(),
        "head": head_revision(),
    }


# --- the command line: settings and arguments ------------------------------------------------------------------


def test_bug_an_unknown_log_level_is_refused_by_name(sqlite_env):
    """Bug: PLANBRIDGE_LOG_LEVEL=LOUD was accepted by the settings and crashed `worker` in logging's ValueError."""
    err = one_line_error(run("worker", "--once", env={**sqlite_env, "PLANBRIDGE_LOG_LEVEL": "LOUD"}))
    assert "PLANBRIDGE_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'" in err
    assert Settings.from_env({"PLANBRIDGE_LOG_LEVEL": " warning "}).log_level == "WARNING"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PLANBRIDGE_PORT", "abc", "PLANBRIDGE_PORT must be a whole number from 1 to 65535, got 'abc'"),
        ("PLANBRIDGE_PORT", "70000", "PLANBRIDGE_PORT must be a whole number from 1 to 65535, got '70000'"),
        ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY must be a whole number from 1 to 1024, got 'two'"),
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be a whole number from 1 to 1024, got '0'"),
    ],
)
def test_bug_malformed_port_and_concurrency_stop_serve_in_one_line(sqlite_env, variable, value, says):
    """Bug: PLANBRIDGE_PORT=abc or WEB_CONCURRENCY=two crashed `serve` (and `dev`) in int()'s ValueError
    traceback; WEB_CONCURRENCY=0 silently started 2 workers."""
    err = one_line_error(run("serve", env={**sqlite_env, variable: value}))
    assert says in err
    if variable == "PLANBRIDGE_PORT":
        assert says in one_line_error(run("dev", "--env", env={**sqlite_env, variable: value}))


@pytest.mark.parametrize("args", [("--port", "99999"), ("--port", "0"), ("--workers", "0"), ("--threads", "0")])
def test_bug_serve_options_out_of_range_are_usage_errors(sqlite_env, args):
    """Bug: `serve --port 99999` ended in gunicorn's OverflowError traceback."""
    result = run("serve", *args, env=sqlite_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"Invalid value for '{args[0]}'" in result.stderr


def test_bug_a_webhook_secret_that_is_not_base64_is_refused_at_start(sqlite_env):
    """Bug: `whsec_` + text that is not base64 passed the settings check, then `webhook send` died in a
    binascii traceback, and `serve` answered every correctly signed event 401 ("malformed signature")."""
    for bad in ("whsec_notbase64!!!!!!!!", "whsec_================"):
        err = one_line_error(
            run("webhook", "send", "-", env={**sqlite_env, "PLANBRIDGE_WEBHOOK_SECRET": bad}, stdin="{}")
        )
        assert "PLANBRIDGE_WEBHOOK_SECRET must hold whsec_<base64> secrets" in err
        with pytest.raises(Exception, match="must hold whsec_<base64>"):
            Settings.from_env({"PLANBRIDGE_WEBHOOK_SENDERS": f"ehr={bad}"})
    assert Settings.from_env({"PLANBRIDGE_WEBHOOK_SECRET": new_secret()}).webhook_secrets


def test_webhook_send_to_nothing_or_a_bad_url_is_one_line(sqlite_env):
    event = str(Path(__file__).resolve().parents[2] / "fixtures" / "events" / "goal-proposed.json")
    for url in ("http://127.0.0.1:9/webhooks/team", "ftp://example.org/x", "not a url", "http://[::1"):
        err = one_line_error(run("webhook", "send", event, "--url", url, env=sqlite_env))
        assert f"could not reach {url}" in err
    err = one_line_error(run("webhook", "send", event, "--sender", "nobody", env=sqlite_env))
    assert "PLANBRIDGE_WEBHOOK_SENDERS holds no secret for the sender 'nobody'" in err


# --- the command line: ids and plans that name nothing ---------------------------------------------------------


def test_bug_outbox_and_conflict_ids_no_row_can_have_are_not_found(env):
    """Bug: `outbox list --after 99999999999999999999999`, `outbox replay <that>` and `conflicts resolve <that>`
    ended in `OverflowError: Python int too large to convert to SQLite INTEGER` tracebacks."""
    huge = "99999999999999999999999"
    for option in ("--after", "--limit"):
        usage = run("outbox", "list", option, huge, env=env)
        assert usage.returncode == 2 and "Traceback" not in usage.stderr
        assert f"Invalid value for '{option}'" in usage.stderr
    assert "not-found: outbox entry " + huge + " does not exist" in one_line_error(
        run("outbox", "replay", huge, env=env)
    )
    err = one_line_error(run("conflicts", "resolve", huge, "--take", "ours", env=env))
    assert f"not-found: conflict {huge} does not exist" in err
    for entry in ("0", "2147483647"):
        assert f"not-found: outbox entry {entry} does not exist" in one_line_error(
            run("outbox", "replay", entry, env=env)
        )
    assert json.loads(run("outbox", "list", "--after", "2147483647", env=env).stdout) == []


def test_bug_sync_status_of_a_plan_planbridge_does_not_hold_is_not_found(env):
    """Bug: `planbridge sync status --plan nope` printed a made-up "pending" status and exited 0, where
    GET /plans/nope/sync answers 404."""
    for plan_id in ("nope", "a%b", ""):
        err = one_line_error(run("sync", "status", "--plan", plan_id, env=env))
        assert f"not-found: plan {plan_id} does not exist" in err
    assert json.loads(run("sync", "status", env=env).stdout) == []


# --- the HTTP API ------------------------------------------------------------------------------------------------


@pytest.fixture
def client(engine):
    app = create_app(settings(fhir_base_url=NO_FHIR, api_keys=(KEY,)), engine)
    c = app.test_client()
    raw = json.dumps(goal_event("plan-bb-0001", mrn="MRN-BB-SECRET-77")).encode()
    assert c.post("/webhooks/team", data=raw, headers=signed(raw)).status_code == 202
    return c


H = {"X-API-Key": KEY}


def test_bug_metrics_name_their_charset_once(client):
    """Bug: GET /metrics said `Content-Type: text/plain; version=1.0.0; charset=utf-8; charset=utf-8`
    (Flask added a second charset to prometheus_client's), a duplicate parameter strict scrapers refuse."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
    assert "MRN-BB-SECRET-77" not in answer.get_data(as_text=True)


@pytest.mark.parametrize(
    "path", ["/plans/{}", "/plans/{}/fhir", "/plans/{}/sync", "/plans/{}/outcomes", "/plans/{}/history"]
)
def test_every_plan_read_is_a_404_problem_for_what_is_no_plan(client, path):
    for plan_id in ("nope", "%00", "a" * 70, "%C3%A9"):
        answer = client.get(path.format(plan_id), headers=H)
        assert answer.status_code == 404 and answer.mimetype == "application/problem+json"
        assert answer.get_json()["type"] == "urn:planbridge:problem:not-found"
    assert client.get(path.format("plan-bb-0001"), headers=H).status_code == 200
    assert client.get(path.format("plan-bb-0001")).status_code == 401


@pytest.mark.parametrize("path", ["/outbox", "/conflicts", "/plans/plan-bb-0001/history"])
@pytest.mark.parametrize(
    "query",
    ["limit=", "limit=%2B5", "limit=1.0", "limit=1e2", "limit=99999999999999999999999", "after=", "after=0x10"],
)
def test_listing_numbers_at_their_edges_are_400_problems(client, path, query):
    answer = client.get(f"{path}?{query}", headers=H)
    assert answer.status_code == 400 and answer.mimetype == "application/problem+json"
    body = answer.get_json()
    assert body["type"] == "urn:planbridge:problem:invalid-input" and set(body["errors"]) == {query.split("=")[0]}


@pytest.mark.parametrize("path", ["/outbox", "/plans/plan-bb-0001/history"])
def test_a_repeated_parameter_counts_once_and_an_unknown_one_is_ignored(client, path):
    answer = client.get(f"{path}?limit=1&limit=1000&color=blue", headers=H)
    assert answer.status_code == 200 and len(answer.get_json()) == 1


def test_operate_bodies_and_ids_that_name_nothing_are_problems(client):
    cases = [
        ("/plans/plan-bb-0001/sync", {"direction": "sideways"}, 400),
        ("/plans/plan-bb-0001/sync", [1, 2], 400),
        ("/plans/plan-bb-0001/sync", {"direction": "push", "extra": 1}, 400),
        ("/plans/nope/sync", {"direction": "push"}, 404),
        ("/conflicts/0/resolve", {"take": "ours"}, 404),
        ("/conflicts/99999999999999/resolve", {"take": "ours"}, 404),
        ("/conflicts/1/resolve", {"take": "mine"}, 400),
        ("/conflicts/1/resolve", {"take": "ours", "value": 1}, 400),
        ("/outbox/1/replay", None, 422),  # pending, not dead
        ("/outbox/99999999999999999999999/replay", None, 404),
    ]
    for path, body, status in cases:
        answer = client.post(path, json=body, headers=H) if body is not None else client.post(path, headers=H)
        assert (answer.status_code, answer.mimetype) == (status, "application/problem+json"), (path, body)
    not_json = client.post("/plans/plan-bb-0001/sync", data=b"\xff{", content_type="application/json", headers=H)
    assert not_json.status_code == 400 and not_json.get_json()["errors"] == {"body": "not JSON"}
    pull = client.post("/plans/plan-bb-0001/sync", json={"direction": "pull"}, headers=H)
    assert pull.status_code == 502 and pull.get_json()["type"] == "urn:planbridge:problem:fhir-error"
    assert "MRN-BB-SECRET-77" not in pull.get_data(as_text=True)


def test_methods_and_paths_that_do_not_exist_are_problems(client):
    for method, path, status in [
        ("delete", "/outbox", 405),
        ("put", "/plans/plan-bb-0001", 405),
        ("post", "/healthz", 405),
    ]:
        answer = getattr(client, method)(path, headers=H)
        assert (answer.status_code, answer.mimetype) == (status, "application/problem+json")
        assert "GET" in answer.headers["Allow"]
    missing = client.get("/no-such-thing")
    assert missing.status_code == 404 and missing.get_json()["type"] == "urn:planbridge:problem:not-found"


def test_bug_a_database_that_does_not_answer_is_a_503_problem_not_a_500(tmp_path, caplog):
    """Bug: with DATABASE_URL's server down, every operating endpoint and /metrics answered 500
    `internal-error` (and logged the driver's traceback) instead of saying the database is unavailable."""
    from service.store.db import create_engine

    down = create_engine("postgresql://planbridge@127.0.0.1:1/planbridge")
    c = create_app(settings(fhir_base_url=NO_FHIR, api_keys=(KEY,)), down).test_client()
    for path in ("/outbox", "/conflicts", "/plans/plan-bb-0001", "/plans/plan-bb-0001/history", "/metrics"):
        answer = c.get(path, headers=H)
        assert (answer.status_code, answer.mimetype) == (503, "application/problem+json"), path
        assert answer.get_json()["type"] == "urn:planbridge:problem:database-unavailable"
        assert answer.headers["Retry-After"] == "5"
    assert c.get("/healthz").status_code == 200
    ready = c.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["database"] == "OperationalError"
    assert "database unavailable: OperationalError" in caplog.text


def test_bug_an_unmigrated_database_is_a_503_problem_whose_log_says_db_upgrade(tmp_path, caplog):
    from service.store.db import create_engine

    bare = create_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    c = create_app(settings(fhir_base_url=NO_FHIR, api_keys=(KEY,)), bare).test_client()
    answer = c.get("/outbox", headers=H)
    assert answer.status_code == 503 and answer.get_json()["type"] == "urn:planbridge:problem:database-unavailable"
    assert "run `planbridge db upgrade`" in caplog.text


def test_bug_openapi_lists_every_status_the_operate_endpoints_answer(client):
    """Bug: POST /plans/{id}/sync and POST /conflicts/{id}/resolve answer 400 for a bad body, which the OpenAPI
    document did not list."""
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "400" in paths["/plans/{plan_id}/sync"]["post"]["responses"]
    assert "400" in paths["/conflicts/{conflict_id}/resolve"]["post"]["responses"]
    assert client.post("/plans/plan-bb-0001/sync", json={"direction": "up"}, headers=H).status_code == 400
    assert client.post("/conflicts/1/resolve", json={}, headers=H).status_code == 400
    for path, operations in paths.items():
        for method, operation in operations.items():
            if operation.get("security"):
                assert {"401", "429"} <= set(operation["responses"]), (method, path)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PLANBRIDGE_MRN_SYSTEM", "", "PLANBRIDGE_MRN_SYSTEM must be an absolute URI without spaces"),
        ("PLANBRIDGE_MRN_SYSTEM", "hospital mrn", "PLANBRIDGE_MRN_SYSTEM must be an absolute URI without spaces"),
        ("PLANBRIDGE_IDENTIFIER_BASE", "", "PLANBRIDGE_IDENTIFIER_BASE must be an absolute URI without spaces"),
        ("PLANBRIDGE_IDENTIFIER_BASE", "our ids", "PLANBRIDGE_IDENTIFIER_BASE must be an absolute URI without spaces"),
        ("PLANBRIDGE_PUBLIC_URL", "planbridge.internal", "PLANBRIDGE_PUBLIC_URL must be an http(s) URL"),
    ],
)
def test_bug_identifier_systems_and_the_public_url_fhir_cannot_carry_are_refused_at_start(
    sqlite_env, variable, value, says
):
    """Bug: PLANBRIDGE_MRN_SYSTEM="" (or with a space) and a malformed PLANBRIDGE_IDENTIFIER_BASE were accepted,
    then every team event was refused 400 (or 500 for an empty base) for FHIR the operator's setting made
    invalid; a PLANBRIDGE_PUBLIC_URL that is no URL went into the FHIR Subscriptions' endpoint."""
    with pytest.raises(Exception, match=says.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env({variable: value})
    assert says in one_line_error(run("db", "upgrade", env={**sqlite_env, variable: value}))


def test_identifier_systems_and_public_urls_of_every_documented_form_are_read():
    read = Settings.from_env(
        {
            "PLANBRIDGE_MRN_SYSTEM": "urn:oid:2.16.840.1.113883.2.1.4.1",
            "PLANBRIDGE_IDENTIFIER_BASE": "https://pb.example/id/",
            "PLANBRIDGE_PUBLIC_URL": "https://pb.example/base/",
        }
    )
    assert (read.mrn_system, read.identifier_base, read.public_url) == (
        "urn:oid:2.16.840.1.113883.2.1.4.1",
        "https://pb.example/id",
        "https://pb.example/base",
    )


def _resolve_a_new_conflict(client, engine, path: str, raw_value: bytes):
    """Open a conflict on plan-bb-0001's `path` and resolve it to `raw_value` (JSON text) through the API; return
    the answer, the conflict's id and the plan as it was before."""
    from service.api.container import utcnow
    from service.store.uow import UnitOfWork

    with UnitOfWork(engine) as uow:
        conflict = uow.sync.add_conflict("plan-bb-0001", path, "base", "ours", "theirs", utcnow())
        uow.commit()
        conflict_id = conflict.id
    before = client.get("/plans/plan-bb-0001", headers=H).get_json()
    answer = client.post(
        f"/conflicts/{conflict_id}/resolve",
        data=b'{"value": ' + raw_value + b"}",
        headers={**H, "Content-Type": "application/json"},
    )
    return answer, conflict_id, before


@pytest.mark.parametrize(
    ("path", "raw_value", "named"),
    [
        ("title", b'"' + b"t" * 201 + b'"', "title"),  # a team event's title is at most 200 characters
        ("patient.mrn", b'"A|B"', "patient.mrn"),  # Medplum splits the token at `|`: a new Patient per push
        ("review_every", b'{"value": 121, "unit": "mo"}', "review_every.value"),  # events take 1-120
    ],
)
def test_a_conflict_resolved_to_a_value_no_team_event_could_give_is_refused(client, engine, path, raw_value, named):
    """Audit finding: a typed resolution took a 201-character title (and an MRN with `|`...), which the team
    event setting the same field is refused for; a resolution is held to the same rules (the plan door)."""
    answer, conflict_id, before = _resolve_a_new_conflict(client, engine, path, raw_value)
    assert (answer.status_code, answer.mimetype) == (422, "application/problem+json"), answer.get_data(as_text=True)
    assert named in answer.get_json()["detail"]
    assert client.get("/plans/plan-bb-0001", headers=H).get_json() == before
    still = client.get("/conflicts?plan=plan-bb-0001", headers=H).get_json()
    assert [c["id"] for c in still if c["status"] == "open"] == [conflict_id]


@pytest.mark.parametrize(
    ("path", "raw_value"),
    [
        ("title", b'"Walking plan\\u0000"'),  # a NUL: no FHIR string holds one (and PostgreSQL refuses it)
        ("goals[id=goal-walk].description.text", b"Infinity"),  # Python's json reads it; JSON and FHIR do not
        ("goals[id=goal-walk].description.text", b'"  "'),  # only whitespace: not a FHIR string
    ],
)
def test_bug_a_conflict_resolved_to_a_value_fhir_cannot_carry_is_refused(client, engine, path, raw_value):
    """Bug (service/sync/engine.py, patch in /tmp/patches/h5-resolve-fhir-check.diff): POST
    /conflicts/{id}/resolve with {"value": ...} checked the plan's rules but not that it still maps to FHIR the
    push can send, so a NUL, Infinity or a blank text was accepted (200), the conflict closed and the plan
    queued for a push the FHIR server can never take; a team event carrying the same value is refused 400."""
    answer, conflict_id, before = _resolve_a_new_conflict(client, engine, path, raw_value)
    assert (answer.status_code, answer.mimetype) == (422, "application/problem+json"), answer.get_data(as_text=True)
    assert answer.get_json()["type"] == "urn:planbridge:problem:rule-violation"
    assert client.get("/plans/plan-bb-0001", headers=H).get_json() == before
    still = client.get("/conflicts?plan=plan-bb-0001", headers=H).get_json()
    assert [c["id"] for c in still if c["status"] == "open"] == [conflict_id]


@pytest.mark.parametrize("value", ["NaN", "-Infinity", "[" * 50000 + "]" * 50000, "{bad"])
def test_bug_conflicts_resolve_value_that_is_not_json_is_a_usage_error(sqlite_env, value):
    """Bug: `conflicts resolve 1 --value <50,000 nested brackets>` died in a RecursionError traceback, and
    `--value NaN` was taken as a value (Python's json reads NaN and Infinity; JSON has neither)."""
    result = run("conflicts", "resolve", "1", "--value", value, env=sqlite_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--value must be JSON" in result.stderr
