"""The latency proxy counts its own threads' CPU (LatencyProxy.cpu_seconds), so bench/sync.py (d) can print the
proxy's share of its process apart from the worker's: read while its pumps run, and kept when they end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from service.devproxy import LatencyProxy


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b"x" * 20_000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_push_proxy_counts_its_own_threads_cpu(upstream):
    proxy = LatencyProxy("127.0.0.1", upstream.server_address[1])
    proxy.start()
    assert proxy.cpu_seconds() < 0.05  # the acceptor, idle
    session = requests.Session()
    url = f"http://{proxy.address[0]}:{proxy.address[1]}/"
    before, process = proxy.cpu_seconds(), time.process_time()
    for _ in range(300):
        assert session.post(url, data=b"y" * 20_000, timeout=5).status_code == 200
    during, process = proxy.cpu_seconds() - before, time.process_time() - process
    assert 0 < during < process  # its pumps' share of this process's CPU, read while they run
    session.close()
    proxy.stop()  # the pumps end: what they used stays counted
    assert proxy.cpu_seconds() >= before + during * 0.99
