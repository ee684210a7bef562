"""The development proxy: latency per request on keep-alive connections, outages, clean shutdown."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from service.devproxy import LatencyProxy
from service.fhir.client import FhirClient
from service.fhir.errors import FhirTransportError


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:
        self._answer(b"ok")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(str(len(body)).encode())

    def _answer(self, body: bytes) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.hits = 0
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _timed(session: requests.Session, url: str, **kwargs) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    response = session.request("POST" if "data" in kwargs else "GET", url, timeout=5, **kwargs)
    return time.perf_counter() - started, response


def test_each_request_on_a_keep_alive_connection_is_delayed_once(upstream):
    host, port = upstream.server_address[:2]
    with requests.Session() as direct_session:
        direct = min(_timed(direct_session, f"http://{host}:{port}/")[0] for _ in range(5))
    with LatencyProxy(host, port, latency_s=0.05) as proxy, requests.Session() as session:
        url = f"http://{proxy.address[0]}:{proxy.address[1]}/"
        delayed = [_timed(session, url) for _ in range(5)]
        assert [r.text for _, r in delayed] == ["ok"] * 5
        assert min(t for t, _ in delayed) >= 0.05
        assert max(t for t, _ in delayed) < 0.05 + 0.5
        assert (proxy.connections, proxy.requests) == (1, 5)  # one connection, five delayed requests
    assert direct < 0.05


def test_a_large_body_is_delayed_once_not_per_chunk(upstream):
    with LatencyProxy(*upstream.server_address[:2], latency_s=0.1) as proxy, requests.Session() as session:
        body = b"x" * (2 * 1024 * 1024)  # dozens of chunks
        elapsed, response = _timed(session, proxy.url("http://h/upload"), data=body)
        assert response.text == str(len(body))
        assert 0.1 <= elapsed < 0.5
        assert proxy.requests == 1


def test_cut_fails_requests_with_a_connection_error_and_restore_heals(upstream):
    with LatencyProxy(*upstream.server_address[:2]) as proxy, requests.Session() as session:
        url = proxy.url("http://h/")
        assert session.get(url, timeout=5).text == "ok"
        proxy.cut()
        assert proxy.is_cut
        for _ in range(2):  # the pooled connection is gone, and a new one is reset
            with pytest.raises(requests.ConnectionError):
                session.get(url, timeout=5)
        deadline = time.monotonic() + 2
        while proxy.open_connections() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.open_connections() == 0
        hits = upstream.hits
        proxy.restore()
        assert session.get(url, timeout=5).text == "ok"
        assert upstream.hits == hits + 1


def test_cut_after_lets_the_request_reach_the_server_and_loses_its_response(upstream):
    with LatencyProxy(*upstream.server_address[:2]) as proxy, requests.Session() as session:
        url = proxy.url("http://h/")
        session.get(url, timeout=5)
        proxy.cut_after(2)
        session.get(url, timeout=5)
        with pytest.raises(requests.ConnectionError):
            session.get(url, timeout=5)
        assert upstream.hits == 3  # the server did the work
        assert proxy.is_cut


def test_a_client_that_half_closes_still_gets_the_whole_answer(upstream):
    with LatencyProxy(*upstream.server_address[:2], latency_s=0.01) as proxy:
        with socket.create_connection(proxy.address, timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
            raw.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nok")


def test_stop_leaves_no_threads_or_listening_socket(upstream):
    before = {t for t in threading.enumerate() if t.name.startswith("devproxy")}
    proxy = LatencyProxy(*upstream.server_address[:2], latency_s=0.2)
    host, port = proxy.start()
    session = requests.Session()
    session.get(proxy.url("http://h/"), timeout=5)
    outcome: list[object] = []

    def wait_in_proxy() -> None:
        try:
            outcome.append(session.get(f"http://{host}:{port}/", timeout=5))
        except requests.RequestException as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=wait_in_proxy)
    waiting.start()
    time.sleep(0.05)  # a request sits in the proxy's latency wait
    started = time.perf_counter()
    proxy.stop()
    assert time.perf_counter() - started < 1.0
    waiting.join(5)
    session.close()
    assert isinstance(outcome[0], requests.ConnectionError)  # the delayed request was dropped, not hung
    assert {t for t in threading.enumerate() if t.name.startswith("devproxy")} == before
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()


def test_the_fhir_client_sees_latency_and_outages(fhir_base_url):
    with LatencyProxy.for_url(fhir_base_url, latency_s=0.02) as proxy:
        client = FhirClient(proxy.url(fhir_base_url), timeout=5, max_retries=1, sleep=lambda _s: None)
        started = time.perf_counter()
        for _ in range(5):
            client.request("GET", "Patient", params={"_count": "1"})
        assert time.perf_counter() - started >= 5 * 0.02
        assert proxy.requests == 5
        proxy.cut()
        with pytest.raises(FhirTransportError):
            client.request("GET", "Patient", params={"_count": "1"})
        assert client.requests_sent == 7  # five, then one attempt and one retry against the outage
        proxy.restore()
        assert client.request("GET", "Patient", params={"_count": "1"}).json()["resourceType"] == "Bundle"
