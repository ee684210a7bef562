"""`planbridge serve` spreads keep-alive connections over its workers (service.gunicorn_app.ServiceWorker.accept).

Left to gunicorn's gthread worker, every worker polls the one listening socket and the kernel hands a burst of
connections mostly to one of them: 16 keep-alive connections from wrk came as 12/4 or 13/3, and each stays with
its worker, so one core carried three quarters of the load. A worker that already holds one connection per
thread now leaves a new one to the others for a few milliseconds, and takes it after if nobody did.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.test_cli import BIN, free_port
from tests.support import SECRET, wait_until_healthy

WORKERS, THREADS = 2, 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-balance")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'planbridge.db'}",
        PLANBRIDGE_API_KEYS="balance-key-0123456789abcdef",
        PLANBRIDGE_WEBHOOK_SECRET=SECRET,
    )
    subprocess.run([str(BIN), "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    log_path = tmp / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port), "--workers", str(WORKERS), "--threads", str(THREADS)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", server, 30, log_path.read_text)
        deadline = time.monotonic() + 30
        while not _serving(_children(server.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _serving(workers: list[int]) -> bool:
    """Every worker has loaded the app and polls the listening socket: its main thread waits in epoll (a worker
    still loading would leave a burst to the others, whatever `accept` does)."""
    if len(workers) < WORKERS:
        return False
    return all("epoll" in Path(f"/proc/{pid}/wchan").read_text() for pid in workers)


def _server_side_inodes(port: int) -> dict[int, int]:
    """{client port: inode of the server's socket of that connection}, from /proc/net/tcp (IPv4 loopback)."""
    inodes = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if int(local.split(":")[1], 16) == port and inode:
            inodes[int(remote.split(":")[1], 16)] = inode
    return inodes


def _owner_of_sockets(pids: list[int]) -> dict[int, int]:
    """{socket inode: pid} for the sockets the processes hold open."""
    owners = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[int(target[8:-1])] = pid
    return owners


def _burst(port: int, count: int) -> tuple[list[http.client.HTTPConnection], list[int]]:
    """Open `count` keep-alive connections at once, then ask each for /healthz; return them and their ports."""
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(count)]
    for connection in connections:
        connection.connect()
    for connection in connections:
        connection.request("GET", "/healthz")
    for connection in connections:
        answer = connection.getresponse()
        assert answer.status == 200
        answer.read()
    return connections, [c.sock.getsockname()[1] for c in connections]


def test_a_burst_of_keep_alive_connections_is_spread_one_per_thread_over_the_workers(served):
    port, master = served
    for _ in range(3):  # left to the kernel, a burst lands mostly on one worker: three in a row would not be even
        connections, ports = _burst(port, WORKERS * THREADS)
        try:
            inodes = _server_side_inodes(port)
            owners = _owner_of_sockets(_children(master))
            per_worker = Counter(owners[inodes[p]] for p in ports)
            assert sorted(per_worker.values()) == [THREADS] * WORKERS, per_worker
        finally:
            for connection in connections:
                connection.close()
        time.sleep(0.2)  # the workers see the connections closed


def test_a_connection_beyond_one_per_thread_is_still_answered_at_once(served):
    port, _master = served
    connections, _ports = _burst(port, WORKERS * THREADS)  # every worker holds one connection per thread, idle
    try:
        started = time.monotonic()
        extra = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        extra.request("GET", "/healthz")
        assert extra.getresponse().status == 200
        assert time.monotonic() - started < 0.5  # a deferral lasts 5 ms; the workers' idle wait is up to 1 s
        extra.close()
    finally:
        for connection in connections:
            connection.close()


def test_connections_come_and_go_without_one_left_waiting(served):
    port, _master = served
    for _ in range(40):  # a client that opens a connection per request, as some interface engines do
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
