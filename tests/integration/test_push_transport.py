"""The FHIR client's HTTP session (service.fhir.session._Session) against real sockets: it prepares a request in
fewer steps than requests and reads the environment and ~/.netrc once per host, and still does what requests
does: proxies from HTTP_PROXY / HTTPS_PROXY, hosts in NO_PROXY reached directly, netrc credentials, cookies
the server sets sent back, redirects followed, auth, hooks."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from requests.auth import HTTPBasicAuth

from service.fhir import session as session_module
from service.fhir.client import FhirClient
from service.fhir.errors import FhirTransportError
from service.fhir.session import _Session

BUNDLE = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request with a transaction-response Bundle and records its request line, headers and body;
    `/redirect` answers a 307 to `/baseR4`, `/cookie` sets a cookie. As an HTTP proxy it sees absolute URLs, and
    a CONNECT (an HTTPS proxy's tunnel), which it refuses."""

    protocol_version = "HTTP/1.1"

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        return body

    def _answer(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(BUNDLE).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self._record()
        if self.path.endswith("/redirect"):
            self._answer(307, {"Location": "/baseR4"})
        elif self.path.endswith("/cookie"):
            self._answer(200, {"Set-Cookie": "route=backend-2; Path=/"})
        else:
            self._answer()

    do_GET = do_PUT = do_DELETE = do_POST

    def do_CONNECT(self) -> None:
        self._record()
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    yield from _serve()


@pytest.fixture
def proxy() -> Iterator[ThreadingHTTPServer]:
    yield from _serve()


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Each test sets the proxy variables it means; none from the machine, and no ~/.netrc of the machine."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def _url(server: ThreadingHTTPServer, path: str = "/baseR4") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_push_transport_sends_through_http_proxy_from_the_environment(monkeypatch, proxy):
    monkeypatch.setenv("HTTP_PROXY", _url(proxy, ""))
    client = FhirClient("http://fhir.invalid/baseR4", timeout=5, max_retries=0)
    assert client.transaction({"resourceType": "Bundle", "type": "transaction"}, idempotent=True) == BUNDLE
    client.request("GET", "Goal", params={"identifier": "s|v"})
    (post, get) = proxy.seen
    assert post[:2] == ("POST", "http://fhir.invalid/baseR4")  # the absolute URL: a request to a proxy
    assert get[:2] == ("GET", "http://fhir.invalid/baseR4/Goal?identifier=s%7Cv")


def test_push_transport_tunnels_through_https_proxy_from_the_environment(monkeypatch, proxy):
    monkeypatch.setenv("HTTPS_PROXY", _url(proxy, ""))
    client = FhirClient("https://fhir.invalid/baseR4", timeout=5, max_retries=0)
    with pytest.raises(FhirTransportError):  # the stand-in proxy refuses the tunnel
        client.transaction({"resourceType": "Bundle", "type": "transaction"}, idempotent=True)
    assert [(method, path) for method, path, *_ in proxy.seen] == [("CONNECT", "fhir.invalid:443")]


def test_push_transport_reaches_hosts_in_no_proxy_directly(monkeypatch, proxy, server):
    monkeypatch.setenv("HTTP_PROXY", _url(proxy, ""))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client = FhirClient(_url(server), timeout=5, max_retries=0)
    assert client.transaction({"resourceType": "Bundle", "type": "transaction"}, idempotent=True) == BUNDLE
    assert proxy.seen == []
    assert [(method, path) for method, path, *_ in server.seen] == [("POST", "/baseR4")]


def test_push_transport_reads_netrc_once_per_host_and_sends_its_credentials(monkeypatch, tmp_path, server):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login fhir-user password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    looked_up: list[str] = []

    def counted(url: str, raise_errors: bool = False) -> Any:
        looked_up.append(url)
        return requests.utils.get_netrc_auth(url, raise_errors)

    # where requests looks it up itself, and where the client's session does
    monkeypatch.setattr(requests.sessions, "get_netrc_auth", counted)
    monkeypatch.setattr(session_module, "get_netrc_auth", counted, raising=False)
    client = FhirClient(_url(server), timeout=5, max_retries=0)
    for _ in range(3):
        client.transaction({"resourceType": "Bundle", "type": "transaction"}, idempotent=True)
    expected = "Basic " + base64.b64encode(b"fhir-user:s3cret").decode()
    assert [headers.get("Authorization") for _, _, headers, _ in server.seen] == [expected] * 3
    assert len(looked_up) == 1


def test_push_transport_prepares_no_request_through_requests_prepare_request(monkeypatch, server):
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Session.prepare_request was used")

    monkeypatch.setattr(requests.Session, "prepare_request", refused)
    client = FhirClient(_url(server), timeout=5, max_retries=0)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    assert client.transaction(bundle, idempotent=True) == BUNDLE
    method, path, headers, body = server.seen[0]
    assert (method, path, json.loads(body)) == ("POST", "/baseR4", bundle)
    assert headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert headers["Accept"] == "application/fhir+json" and headers["User-Agent"] == "planbridge"
    assert headers["Content-Length"] == str(len(body))


def test_push_transport_sends_back_cookies_the_server_set(server):
    client = FhirClient(_url(server), timeout=5, max_retries=0)
    client.request("POST", "cookie", json={})
    client.request("POST", "", json={})
    first, second = server.seen
    assert "Cookie" not in first[2]
    assert second[2]["Cookie"] == "route=backend-2"


def test_push_transport_follows_a_redirect_with_its_body(server):
    client = FhirClient(_url(server), timeout=5, max_retries=0)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    response = client.request("POST", "redirect", json=bundle)
    assert response.json() == BUNDLE and [r.status_code for r in response.history] == [307]
    assert [(method, path, json.loads(body)) for method, path, _, body in server.seen] == [
        ("POST", "/baseR4/redirect", bundle),
        ("POST", "/baseR4", bundle),
    ]


def test_push_transport_runs_session_auth_and_hooks(server):
    client = FhirClient(_url(server), timeout=5, max_retries=0, auth=HTTPBasicAuth("a", "b"))
    heard: list[int] = []
    client.session.hooks["response"].append(lambda response, **kwargs: heard.append(response.status_code))
    client.request("DELETE", "Goal/1")
    (method, path, headers, body) = server.seen[0]
    assert (method, path, body) == ("DELETE", "/baseR4/Goal/1", b"")
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"a:b").decode()
    assert headers["Content-Length"] == "0"  # as requests sends a DELETE without a body
    assert heard == [200]


CALLS: list[tuple[str, str, Any, bytes | None, dict[str, Any] | None]] = [
    ("post", "http://fhir.test/baseR4", None, b'{"resourceType":"Bundle"}', {"Content-Type": "application/fhir+json"}),
    ("GET", "http://fhir.test/baseR4/Goal", {"identifier": "urn:x|A b", "_count": "200"}, None, {}),
    ("GET", "http://fhir.test/baseR4/Goal", [("_include", "CarePlan:goal"), ("_id", "1,2")], None, None),
    ("GET", "http://fhir.test/baseR4/Goal?identifier=s%7C&_count=200", None, None, {"Accept": None}),
    ("GET", "http://fhir.test/baseR4/Goal?x=1", {"y": "2", "z": None}, None, {}),
    ("DELETE", "http://fhir.test/baseR4/Goal/1", None, None, {"If-Match": 'W/"3"'}),
    ("PUT", "http://user:pw@fhir.test/baseR4/Goal/1", None, b"{}", {"Prefer": "return=representation"}),
    ("GET", "http://fhir.test/baseR4/Patient?name=J%C3%B6rg|x y", None, None, {}),
]


@pytest.mark.parametrize(("method", "url", "params", "data", "headers"), CALLS)
def test_push_transport_prepares_what_requests_prepares(method, url, params, data, headers):
    session = _Session()
    session.headers.update({"Accept": "application/fhir+json", "User-Agent": "planbridge"})
    ours = session._prepare(method, url, params, data, headers)
    theirs = requests.Session.prepare_request(
        session, requests.Request(method.upper(), url, headers=headers, data=data or {}, params=params or {})
    )
    assert (ours.method, ours.url, ours.body) == (theirs.method, theirs.url, theirs.body)
    assert list(ours.headers.items()) == list(theirs.headers.items())
    assert ours.hooks == theirs.hooks
