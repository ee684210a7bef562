"""Issue #14 against `planbridge serve` as users run it (gunicorn, 2 processes, SQLite): /readyz while the
FHIR server hangs, 413 and the connection it leaves, control characters in the access log, failed keys
counted across processes, and sign-out ending a session in every process. Real sockets throughout."""

import errno
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from service.store.db import create_engine, upgrade
from tests.e2e.test_cli import BIN, free_port
from tests.live import Live
from tests.support import SECRET, goal_event, signed, wait_until_healthy

KEY = "serve-hardening-key-0123456789"
LIMIT = 4


class HangingServer:
    """A TCP server that accepts connections and never answers (a FHIR server that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # kept open, never read from, never written to

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class Served:
    def __init__(self, url: str, log_path, hang: HangingServer) -> None:
        self.url, self.log_path, self.hang = url, log_path, hang
        self.host, self.port = "127.0.0.1", int(url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    hang = HangingServer()
    tmp = tmp_path_factory.mktemp("serve-hardening")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'planbridge.db'}",
        PLANBRIDGE_WEBHOOK_SECRET=SECRET,
        FHIR_BASE_URL=f"http://127.0.0.1:{hang.port}/fhir",
        PLANBRIDGE_API_KEYS=KEY,
        PLANBRIDGE_AUTH_MAX_FAILURES=str(LIMIT),
        PLANBRIDGE_SESSION_SECRET="x" * 40,
        PLANBRIDGE_CREATE_PATIENTS="true",
    )
    subprocess.run([str(BIN), "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    log_path = tmp / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port), "--workers", "2", "--threads", "4"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, 30, log_path.read_text)
        yield Served(url, log_path, hang)
    finally:
        server.terminate()
        server.wait(timeout=30)
        hang.close()


def test_readyz_answers_within_2_s_while_the_fhir_server_hangs_and_the_intake_goes_on(served):
    def readyz(_):
        started = time.monotonic()
        answer = requests.get(f"{served.url}/readyz", timeout=15)
        return answer, time.monotonic() - started

    def webhook():
        time.sleep(0.3)  # every request thread of both processes is asked for readiness by now
        body = json.dumps(goal_event()).encode()
        started = time.monotonic()
        answer = requests.post(f"{served.url}/webhooks/team", data=body, headers=signed(body), timeout=15)
        return answer, time.monotonic() - started

    with ThreadPoolExecutor(21) as pool:
        intake = pool.submit(webhook)
        probes = list(pool.map(readyz, range(20)))
        accepted, intake_took = intake.result()
    assert accepted.status_code == 202 and intake_took < 3.0, intake_took
    assert max(took for _, took in probes) < 3.0, sorted(took for _, took in probes)
    for answer, _ in probes:
        assert answer.status_code == 503
        assert answer.json()["database"] in ("ok", "pending")
        assert answer.json()["fhir"] in ("FhirTransportError", "pending")
    assert len(served.hang.accepted) <= 2  # one probe per process, no retries
    time.sleep(0.5)
    started = time.monotonic()
    again = requests.get(f"{served.url}/readyz", timeout=15)
    assert time.monotonic() - started < 2.5
    assert again.status_code == 503 and again.json() in (
        {"status": "unavailable", "database": "ok", "fhir": "FhirTransportError"},
        {"status": "unavailable", "database": "pending", "fhir": "pending"},  # the other process, first time
    )


def _read_head(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, headers, rest[length:]


def _after_a_refused_body(served, request: bytes, expected: tuple[str, ...]) -> None:
    """Send a request whose body the service refuses, then use the connection as its answer says."""
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before all of a body it refuses is sent
        status, headers, _ = _read_head(sock)
        assert status.split(" ", 2)[1] in expected, status
        if headers.get("connection", "").lower() == "close":
            sock.settimeout(5)
            try:
                sock.shutdown(socket.SHUT_WR)  # as a client does once told: nothing more comes from it
                assert sock.recv(65536) == b""  # and the server closes, as it said it would
            except OSError as closed:  # reset, or already gone
                assert closed.errno in (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE), closed
            return
        # keep-alive was promised: the next request on this connection must be answered
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: planbridge\r\n\r\n")
        status, _, _ = _read_head(sock)
        assert status.split(" ", 2)[1] == "200"


def _post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: planbridge\r\nContent-Type: {content_type}\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def _chunked(path: str, body: bytes) -> bytes:
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    head = f"POST {path} HTTP/1.1\r\nHost: planbridge\r\nContent-Type: application/json\r\n"
    return head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


REFUSED_BODIES = [
    (_post("/webhooks/team", b"x" * 300_000), ("413",)),
    (_post("/webhooks/team", b"x" * (256 * 1024 + 1)), ("413",)),
    # werkzeug hands a chunked body over the limit back cut at the limit, so the signature fails first
    (_chunked("/webhooks/team", b"x" * 400_000), ("413", "401")),
    (_post("/webhooks/team", b"x" * 200_000, "text/plain"), ("415",)),
    (_post("/subscriptions", b"x" * 200_000), ("401",)),
]
REFUSED_IDS = ["413-content-length", "413-one-byte-over", "413-chunked", "415-unread-body", "401-unread-body"]


@pytest.mark.parametrize(("request_bytes", "expected"), REFUSED_BODIES, ids=REFUSED_IDS)
def test_a_connection_is_usable_as_the_answer_says_after_a_refused_body(served, request_bytes, expected):
    _after_a_refused_body(served, request_bytes, expected)


@pytest.fixture
def werkzeug_served(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'planbridge.db'}")
    upgrade(engine)
    live = Live(engine, "http://127.0.0.1:9/fhir", api_keys=(KEY,))  # the FHIR server is never asked here
    yield Served(live.url, None, None)
    live.close()
    engine.dispose()


@pytest.mark.parametrize(("request_bytes", "expected"), REFUSED_BODIES, ids=REFUSED_IDS)
def test_the_same_under_the_werkzeug_server_the_tests_use(werkzeug_served, request_bytes, expected):
    _after_a_refused_body(werkzeug_served, request_bytes, expected)


def test_keep_alive_still_works_when_the_body_was_read(served):
    body = json.dumps(goal_event()).encode()
    conn = http.client.HTTPConnection(served.host, served.port, timeout=10)
    conn.request("POST", "/webhooks/team", body=body, headers=signed(body))
    first = conn.getresponse()
    first.read()
    assert first.status == 202 and first.getheader("Connection") == "keep-alive"
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()


def test_the_access_log_escapes_control_characters_from_the_path(served):
    assert requests.get(f"{served.url}/plans/x%0AFORGED%00%1b[2J", timeout=10).status_code == 401
    time.sleep(0.3)
    log = served.log()
    assert '"GET /plans/x\\nFORGED\\x00\\x1b[2J" 401 ' in log
    assert "\x00" not in log and "\x1b" not in log
    assert not any(line.startswith("FORGED") for line in log.splitlines())


def _status_from(served, address: str, key: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection(served.host, served.port, timeout=10, source_address=(address, 0))
    try:
        conn.request("GET", "/outbox", headers={"X-API-Key": key})
        answer = conn.getresponse()
        answer.read()
        return answer.status, answer.getheader("Retry-After")
    finally:
        conn.close()


def test_failed_keys_are_counted_across_processes(served):
    address = "127.0.0.2"  # its own client address: the other tests are not locked out
    answers = [_status_from(served, address, secrets.token_hex(12)) for _ in range(LIMIT + 6)]
    assert [status for status, _ in answers] == [401] * LIMIT + [429] * 6
    assert all(1 <= int(retry) <= 60 for _, retry in answers[LIMIT:])
    assert _status_from(served, address, KEY)[0] == 429
    assert _status_from(served, "127.0.0.3", KEY)[0] == 200
    pids = set(re.findall(r"Booting worker with pid: (\d+)", served.log()))
    assert len(pids) == 2
    metrics = requests.get(f"{served.url}/metrics", timeout=10).text
    assert 'planbridge_auth_lockouts{scope="address"} 1.0' in metrics


def test_sign_out_ends_the_session_in_every_process(served):
    browser = requests.Session()
    page = browser.get(f"{served.url}/console/sign-in", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    signed_in = browser.post(
        f"{served.url}/console/sign-in", data={"api_key": KEY, "csrf_token": token}, allow_redirects=False, timeout=10
    )
    assert signed_in.status_code == 302
    cookie = browser.cookies["planbridge_console"]

    def with_copy() -> int:  # a new connection each time: either process answers
        return requests.get(
            f"{served.url}/console/", cookies={"planbridge_console": cookie}, allow_redirects=False, timeout=10
        ).status_code

    assert {with_copy() for _ in range(6)} == {200}
    page = browser.get(f"{served.url}/console/", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert browser.post(f"{served.url}/console/sign-out", data={"csrf_token": token}, timeout=10).ok
    assert {with_copy() for _ in range(10)} == {302}


UNPARSED = [
    (b"GET /plans/MRN-IN-A-PATH-" + b"x" * 5000 + b" HTTP/1.1\r\nHost: planbridge\r\n\r\n", 414, "uri-too-long"),
    (
        b"GET /healthz HTTP/1.1\r\nHost: planbridge\r\n"
        + b"".join(b"X-Many-%d: MRN-IN-A-HEADER\r\n" % i for i in range(120))
        + b"\r\n",
        431,
        "header-fields-too-large",
    ),
    (b"GET /plans/MRN-IN-A-PATH HTTP/9\r\nHost: planbridge\r\n\r\n", 400, "invalid-request"),
    (b"G@T /plans/MRN-IN-A-PATH HTTP/1.1\r\nHost: planbridge\r\n\r\n", 400, "invalid-request"),
]


@pytest.mark.parametrize(("request_bytes", "status", "code"), UNPARSED, ids=["414", "431", "version", "method"])
def test_a_request_gunicorn_cannot_parse_is_answered_as_problem_json(served, request_bytes, status, code):
    """Audit nit: a request line over 4094 bytes got gunicorn's HTML 414 page (and its log line repeated the
    request line). Every refusal is problem+json; the log names the error's class, never the request."""
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    assert status_line.split(" ", 2)[1] == str(status), answer[:300]
    assert headers["content-type"] == "application/problem+json" and headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["type"] == f"urn:planbridge:problem:{code}" and problem["status"] == status
    assert "MRN-IN-A" not in body.decode() and "MRN-IN-A" not in served.log()
