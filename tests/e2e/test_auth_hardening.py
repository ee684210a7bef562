"""Issue #14, security: failed keys are throttled (per client address and per key prefix, shared by every
process through the database), console sessions end server-side at sign-out, and numbers in paths and
query strings are ASCII digits only. Through Flask's test client, on SQLite and PostgreSQL; the same
under gunicorn with several processes is in test_serve_hardening.py."""

import re
import secrets

import pytest
import sqlalchemy as sa

from service.api.app import create_app
from service.store.tables import AuthFailureRow, ConsoleSessionRow, OutboxRow
from service.store.uow import UnitOfWork
from tests.support import Clock, settings

KEY = "hardening-key-0123456789abcdef"
SESSION_SECRET = "s" * 40
LIMIT = 3


def _app(engine, **overrides):
    values = {"api_keys": (KEY,), "auth_max_failures": LIMIT, "session_secret": SESSION_SECRET, **overrides}
    return create_app(settings(**values), engine)


def _get(client, path, key, address="203.0.113.7"):
    headers = {"X-API-Key": key} if key else {}
    return client.get(path, headers=headers, environ_base={"REMOTE_ADDR": address})


def _wrong() -> str:
    return secrets.token_hex(12)  # a new prefix each time: only the address is shared


def _rows(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# --- throttling ---------------------------------------------------------------------------------------


def test_wrong_keys_from_one_address_lock_it_out_with_429_and_retry_after(engine):
    client = _app(engine).test_client()
    answers = [_get(client, "/outbox", _wrong()) for _ in range(LIMIT + 3)]
    assert [a.status_code for a in answers] == [401] * LIMIT + [429] * 3
    refused = answers[-1]
    assert refused.mimetype == "application/problem+json"
    assert refused.json["type"] == "urn:planbridge:problem:too-many-requests" and refused.json["status"] == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # The right key from the locked-out address is refused too (else a guess would still be told apart) ...
    assert _get(client, "/outbox", KEY).status_code == 429
    # ... and works from another address.
    assert _get(client, "/outbox", KEY, address="198.51.100.20").status_code == 200


def test_wrong_keys_sharing_a_prefix_lock_the_prefix_out_from_every_address(engine):
    client = _app(engine).test_client()
    prefix = "abcdefgh"
    answers = [
        _get(client, "/outbox", prefix + secrets.token_hex(8), address=f"198.51.100.{i}") for i in range(1, LIMIT + 3)
    ]
    assert [a.status_code for a in answers] == [401] * LIMIT + [429] * 2
    assert _get(client, "/outbox", prefix + secrets.token_hex(8), address="192.0.2.99").status_code == 429
    assert _get(client, "/outbox", _wrong(), address="192.0.2.99").status_code == 401  # another prefix


def test_an_ipv6_client_is_counted_by_its_64(engine):
    client = _app(engine).test_client()
    statuses = [_get(client, "/outbox", _wrong(), address=f"2001:db8:1:2::{i:x}").status_code for i in range(LIMIT + 1)]
    assert statuses == [401] * LIMIT + [429]
    assert _get(client, "/outbox", KEY, address="2001:db8:1:2:ffff::1").status_code == 429
    assert _get(client, "/outbox", KEY, address="2001:db8:1:3::1").status_code == 200


def test_the_counts_are_shared_by_every_process(engine):
    one, other = _app(engine).test_client(), _app(engine).test_client()  # two apps: two gunicorn processes
    assert [_get(c, "/outbox", _wrong()).status_code for c in (one, other, one)] == [401] * LIMIT
    assert _get(other, "/outbox", _wrong()).status_code == 429
    assert _get(one, "/outbox", KEY).status_code == 429


def test_a_lockout_ends_after_the_lockout_seconds(engine):
    app = _app(engine, auth_lockout_seconds=30)
    client = app.test_client()
    for _ in range(LIMIT):
        _get(client, "/outbox", _wrong())
    refused = _get(client, "/outbox", KEY)
    assert refused.status_code == 429 and 29 <= int(refused.headers["Retry-After"]) <= 30
    throttle = app.extensions["planbridge"].throttle
    real = throttle.clock
    throttle.clock = lambda: real() + 31
    assert _get(client, "/outbox", KEY).status_code == 200
    assert _get(client, "/outbox", _wrong()).status_code == 401  # a new window: counting from 1 again


def test_valid_keys_and_missing_keys_write_nothing_and_the_setting_turns_it_off(engine):
    client = _app(engine).test_client()
    for _ in range(20):
        assert _get(client, "/outbox", KEY).status_code == 200
        assert _get(client, "/outbox", None).status_code == 401  # no key: not a guess, not counted
    assert _rows(engine, AuthFailureRow.__table__) == 0
    off = _app(engine, auth_max_failures=0).test_client()
    assert {_get(off, "/outbox", _wrong()).status_code for _ in range(LIMIT + 2)} == {401}
    assert _rows(engine, AuthFailureRow.__table__) == 0


def test_metrics_count_refusals_and_lockouts(engine):
    client = _app(engine).test_client()
    for _ in range(LIMIT + 2):
        _get(client, "/outbox", _wrong())
    text = client.get("/metrics").text
    assert re.search(r'planbridge_auth_refused_total\{pid="\d+",reason="invalid-key",via="api"\} 3\.0', text)
    assert re.search(r'planbridge_auth_refused_total\{pid="\d+",reason="throttled",via="api"\} 2\.0', text)
    assert 'planbridge_auth_lockouts{scope="address"} 1.0' in text
    assert 'planbridge_auth_lockouts{scope="key"} 0.0' in text


def _csrf(page_text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page_text).group(1)


def _sign_in(client, key, address="203.0.113.7"):
    token = _csrf(client.get("/console/sign-in", follow_redirects=True).text)  # signed in: the plans page
    return client.post(
        "/console/sign-in", data={"api_key": key, "csrf_token": token}, environ_base={"REMOTE_ADDR": address}
    )


def test_console_sign_ins_are_throttled_like_keys(engine):
    client = _app(engine).test_client()
    statuses = [_sign_in(client, _wrong()).status_code for _ in range(LIMIT + 1)]
    assert statuses == [401] * LIMIT + [429]
    refused = _sign_in(client, KEY)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "Too many keys that were not valid" in refused.text
    assert _sign_in(client, KEY, address="198.51.100.20").status_code == 302
    # the API and the console count against the same address
    assert _get(client, "/outbox", KEY).status_code == 429
    text = client.get("/metrics").text
    assert re.search(r'planbridge_auth_refused_total\{pid="\d+",reason="throttled",via="console"\} 2\.0', text)


# --- console sessions end at sign-out ------------------------------------------------------------------


def test_a_copied_session_cookie_opens_nothing_after_sign_out_in_any_process(engine):
    one, other = _app(engine), _app(engine)  # two gunicorn processes sharing the session secret
    browser = one.test_client()
    assert _sign_in(browser, KEY).status_code == 302
    cookie = browser.get_cookie("planbridge_console", path="/console").value
    assert browser.get("/console/").status_code == 200
    assert _rows(engine, ConsoleSessionRow.__table__) == 1

    thief = other.test_client()
    thief.set_cookie("planbridge_console", cookie, path="/console")
    assert thief.get("/console/").status_code == 200  # a copy works while the session is open ...

    token = _csrf(browser.get("/console/").text)
    assert browser.post("/console/sign-out", data={"csrf_token": token}).status_code == 302
    assert _rows(engine, ConsoleSessionRow.__table__) == 0
    for client in (thief, one.test_client()):  # ... and not after, in either process
        client.set_cookie("planbridge_console", cookie, path="/console")
        answer = client.get("/console/")
        assert answer.status_code == 302 and answer.headers["Location"].endswith("/console/sign-in")
        token = _csrf(client.get("/console/sign-in").text)
        assert client.post("/console/outbox/1/replay", data={"csrf_token": token}).status_code == 302


def test_signing_in_again_closes_the_session_the_browser_held(engine):
    browser = _app(engine).test_client()
    _sign_in(browser, KEY)
    first = browser.get_cookie("planbridge_console", path="/console").value
    _sign_in(browser, KEY)
    assert browser.get_cookie("planbridge_console", path="/console").value != first
    assert _rows(engine, ConsoleSessionRow.__table__) == 1
    stale = _app(engine).test_client()
    stale.set_cookie("planbridge_console", first, path="/console")
    assert stale.get("/console/").status_code == 302


# --- ASCII digits only ---------------------------------------------------------------------------------

# Arabic-Indic 1 and 12, full-width 12, NKo 1, mathematical bold 1, superscript 1
NOT_ASCII = ["\u0661", "\u0661\u0662", "\uff11\uff12", "\u07c1", "\U0001d7cf", "\u00b9"]


def test_every_int_route_matches_ascii_digits_only(engine):
    app = _app(engine)
    client = app.test_client()
    rules = [r for r in app.url_map.iter_rules() if "<int:" in r.rule]
    assert len(rules) >= 9  # the API's and the console's
    for rule in rules:
        method = sorted(rule.methods - {"HEAD", "OPTIONS"})[0]
        for digits in NOT_ASCII:
            path = re.sub(r"<int:\w+>", digits, rule.rule)
            answer = client.open(path, method=method, headers={"X-API-Key": KEY})
            assert answer.status_code == 404, (rule.rule, digits, answer.status_code)
            assert answer.json["type"] == "urn:planbridge:problem:not-found"
        matched = client.open(re.sub(r"<int:\w+>", "1", rule.rule), method=method, headers={"X-API-Key": KEY})
        assert matched.status_code != 405 and not (matched.json or {}).get("title") == "Not Found", rule.rule


def test_replaying_outbox_entry_arabic_one_acts_on_nothing(engine):
    with UnitOfWork(engine) as uow:
        uow.outbox.add("plan-digits", "push_plan", None, None, Clock()())
        uow.flush()
        (entry,) = uow.outbox.list("plan-digits")
        entry.status = "dead"
        uow.commit()
        entry_id = entry.id
    client = _app(engine).test_client()
    arabic = "".join(chr(0x0660 + int(d)) for d in str(entry_id))
    assert client.post(f"/outbox/{arabic}/replay", headers={"X-API-Key": KEY}).status_code == 404
    with engine.connect() as conn:
        assert conn.execute(sa.select(OutboxRow.status).where(OutboxRow.id == entry_id)).scalar_one() == "dead"
    assert client.post(f"/outbox/{entry_id}/replay", headers={"X-API-Key": KEY}).status_code == 200


@pytest.mark.parametrize("path", ["/outbox", "/conflicts", "/subscriptions/1/deliveries"])
@pytest.mark.parametrize("parameter", ["limit", "after"])
def test_query_numbers_are_ascii_digits_only(engine, path, parameter):
    client = _app(engine).test_client()
    if path.startswith("/subscriptions"):
        with UnitOfWork(engine) as uow:
            uow.subscriptions.add("https://team.example.org/hook", ["*"], "whsec_" + "A" * 32, None, Clock()())
            uow.commit()
    for digits in NOT_ASCII:
        answer = client.get(path, query_string={parameter: digits}, headers={"X-API-Key": KEY})
        assert answer.status_code == 400, (digits, answer.json)
        assert parameter in answer.json["errors"]
    assert client.get(path, query_string={parameter: "12"}, headers={"X-API-Key": KEY}).status_code == 200


def test_the_throttle_settings_are_read_and_checked():
    from service.domain.errors import ConfigurationError
    from service.settings import Settings

    read = Settings.from_env({"PLANBRIDGE_AUTH_MAX_FAILURES": "0", "PLANBRIDGE_AUTH_LOCKOUT_SECONDS": "300"})
    assert (read.auth_max_failures, read.auth_lockout_seconds) == (0, 300.0)
    assert (Settings.from_env({}).auth_max_failures, Settings.from_env({}).auth_lockout_seconds) == (10, 60.0)
    for bad in ({"PLANBRIDGE_AUTH_MAX_FAILURES": "-1"}, {"PLANBRIDGE_AUTH_LOCKOUT_SECONDS": "0"}):
        with pytest.raises(ConfigurationError):
            Settings.from_env(bad)
