"""A TCP proxy for development and tests that adds latency and simulates outages (stdlib only).

`LatencyProxy(host, port, latency_s)` listens on a free local port and forwards every connection to
the target. Latency is added once per request/response round trip: the first bytes a client sends
after the previous response (or on a fresh connection) wait `latency_s` before they go upstream, so
each request on a keep-alive connection is delayed exactly once, however many chunks its body spans.
`cut()` drops every open connection and resets new ones until `restore()`, as a server or network
outage would; `cut_after(n)` lets the n-th next request reach the server and then cuts before its
response comes back (the nastiest moment for a client: the work was done, the answer is lost).
`cpu_seconds()` tells how much CPU the proxy's own threads used, so a benchmark running it in its process can
count it apart from the client's.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 * 1024


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close a socket with an RST rather than a FIN, as a refusing or crashed peer would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Link:
    """One proxied connection: the client's socket, the upstream socket and the two pumps between them."""

    def __init__(self, proxy: LatencyProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.closed = threading.Event()
        self.new_request = True  # the next bytes from the client start a request
        self.doomed = False  # cut the proxy when this request's response arrives
        self._pending = 2
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._to_server, name="devproxy-up", daemon=True),
            threading.Thread(target=self._to_client, name="devproxy-down", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        """Wake both pumps; the last one to leave closes the sockets."""
        self.closed.set()
        _shutdown(self.client)
        _shutdown(self.upstream)

    def _to_server(self) -> None:
        self.proxy._thread_started()
        try:
            while not self.closed.is_set():
                data = self.client.recv(CHUNK)
                if not data:  # the client is done sending: pass the half-close on, let the answer come back
                    self.upstream.shutdown(socket.SHUT_WR)
                    break
                if self.new_request:
                    self.new_request = False
                    self.proxy._count_request(self)
                    if self.proxy.latency_s > 0 and self.closed.wait(self.proxy.latency_s):
                        break
                self.upstream.sendall(data)
        except OSError:
            self.close()
        finally:
            self._leave()
            self.proxy._thread_ended()

    def _to_client(self) -> None:
        self.proxy._thread_started()
        try:
            while not self.closed.is_set():
                data = self.upstream.recv(CHUNK)
                if not data:  # the server closed: everything it sent has been passed on
                    break
                if self.doomed:
                    self.proxy.cut()
                    break
                self.new_request = True
                self.client.sendall(data)
        except OSError:
            pass
        finally:
            self.close()
            self._leave()
            self.proxy._thread_ended()

    def _leave(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self.client.close()
            self.upstream.close()
            self.proxy._forget(self)


class LatencyProxy:
    """Forwards TCP connections to (target_host, target_port), adding latency and outages on demand."""

    def __init__(self, target_host: str, target_port: int, latency_s: float = 0.0, host: str = "127.0.0.1") -> None:
        """Configure the proxy; nothing listens until start()."""
        self.target = (target_host, target_port)
        self.latency_s = latency_s
        self.host = host
        self.address: tuple[str, int] | None = None
        self.requests = 0  # requests (client turns) forwarded upstream
        self.connections = 0  # client connections accepted while not cut
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []
        self._cut = False
        self._cut_at: int | None = None
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._live_threads: set[int] = set()  # native ids of the proxy's running threads
        self._ended_cpu = 0.0  # CPU seconds of its threads that ended

    def _thread_started(self) -> None:
        with self._lock:
            self._live_threads.add(threading.get_native_id())

    def _thread_ended(self) -> None:
        with self._lock:
            self._live_threads.discard(threading.get_native_id())
            self._ended_cpu += time.thread_time()

    def cpu_seconds(self) -> float:
        """Return the CPU seconds (user and system) the proxy's threads have used so far: those that ended, and
        on Linux those running (/proc/self/task/*/schedstat, in nanoseconds); a thread ending while this reads
        may be left out of that reading."""
        with self._lock:
            total, live = self._ended_cpu, list(self._live_threads)
        for tid in live:
            try:
                total += int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):  # ended meanwhile, or no /proc
                continue
        return total

    @classmethod
    def for_url(cls, url: str, latency_s: float = 0.0) -> LatencyProxy:
        """Return a proxy for the host and port of an http URL (e.g. a FHIR base URL)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, latency_s)

    def url(self, url: str) -> str:
        """Return `url` with its host and port replaced by the proxy's (start() first)."""
        if self.address is None:
            raise RuntimeError("the proxy is not started")
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, f"{self.address[0]}:{self.address[1]}", parts.path, parts.query, ""))

    def start(self) -> tuple[str, int]:
        """Listen on a free port and return (host, port)."""
        if self.address is not None:
            return self.address
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(128)
        listener.settimeout(0.5)  # a safety net: shutdown() below wakes accept() at once on Linux
        self._listener = listener
        self._stopping.clear()
        self.address = (self.host, listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept_loop, name="devproxy-accept", daemon=True)
        self._acceptor.start()
        return self.address

    def _accept_loop(self) -> None:
        assert self._listener is not None
        self._thread_started()
        try:
            self._accept_until_stopped(self._listener)
        finally:
            self._thread_ended()

    def _accept_until_stopped(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if self._cut or self._stopping.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
                self.connections += 1
                self._threads = [t for t in self._threads if t.is_alive()] + link.threads
            link.start()

    def _count_request(self, link: _Link) -> None:
        with self._lock:
            self.requests += 1
            if self._cut_at is not None and self.requests >= self._cut_at:
                link.doomed, self._cut_at = True, None

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def cut(self) -> None:
        """Simulate an outage: close every open connection and reset new ones until restore()."""
        with self._lock:
            self._cut = True
            self._cut_at = None
            links = list(self._links)
        for link in links:
            link.close()

    def cut_after(self, requests: int) -> None:
        """Cut once the `requests`-th request from now has reached the server, before its response returns."""
        with self._lock:
            self._cut_at = self.requests + requests

    def restore(self) -> None:
        """End a simulated outage: new connections are forwarded again."""
        with self._lock:
            self._cut = False

    @property
    def is_cut(self) -> bool:
        """Tell whether the proxy is simulating an outage."""
        return self._cut

    def open_connections(self) -> int:
        """Return how many client connections are being forwarded now."""
        with self._lock:
            return len(self._links)

    def stop(self) -> None:
        """Stop listening, close every connection and wait for every thread of the proxy to end."""
        self._stopping.set()
        if self._listener is not None:
            _shutdown(self._listener)
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        with self._lock:
            links, threads = list(self._links), list(self._threads)
        for link in links:
            link.close()
        for thread in threads:
            thread.join(timeout=5)
        self._threads = []
        self._listener, self._acceptor, self.address = None, None, None

    def __enter__(self) -> LatencyProxy:
        """Start the proxy and return it."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the proxy."""
        self.stop()
