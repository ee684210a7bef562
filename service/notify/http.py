"""One POST to a checked address: no proxy, no redirects, no retries, a total timeout, TLS checked by host name.

The connection goes to `Target.address` (the address the guard checked), while the Host header, TLS
SNI and certificate check use the URL's host name, so DNS is never asked a second time.

The timeout bounds the whole attempt, not each read: a socket timeout alone lets a receiver that sends a
byte now and then (a header line a second, a body a byte at a time) hold a sender for as long as it
likes, past the worker's lease. A watchdog cuts the connection when the attempt's time is up.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

import certifi
import urllib3
import urllib3.connection

from service.notify.ssrf import Target

MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """What the receiver said: status and the headers a sender acts on (never the body)."""

    status: int
    retry_after: str | None


class _Deadline:
    """Shuts the attempt's sockets down once its time is up, which ends any read blocked on them."""

    def __init__(self, seconds: float) -> None:
        self.expired = self._finished = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Cut this socket too when the time is up (at once if it already is)."""
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._cut(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            for sock in self._sockets:
                self._cut(sock)

    @staticmethod
    def _cut(sock: socket.socket) -> None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: under TLS too, same descriptor
        except OSError:
            pass

    def finish(self) -> bool:
        """The attempt is over: no cut from now on; return whether its time had run out first."""
        with self._lock:
            self._finished = True
        self._timer.cancel()
        return self.expired


def _watched(base: type[urllib3.connection.HTTPConnection], deadline: _Deadline) -> type:
    """A connection class of `base` whose socket the deadline watches from the moment it connects (before TLS)."""

    class Watched(base):  # type: ignore[misc, valid-type]
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            deadline.watch(sock)
            return sock

    return Watched


def _pool(target: Target, timeout: float, deadline: _Deadline) -> urllib3.HTTPConnectionPool:
    options = {"timeout": urllib3.Timeout(total=timeout), "retries": False, "maxsize": 1}
    if target.scheme == "https":
        named = target.host != target.address
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            assert_hostname=target.host,
            server_hostname=target.host if named else None,
            **options,
        )
        pool.ConnectionCls = _watched(urllib3.connection.HTTPSConnection, deadline)
        return pool
    pool = urllib3.HTTPConnectionPool(target.address, target.port, **options)
    pool.ConnectionCls = _watched(urllib3.connection.HTTPConnection, deadline)
    return pool


def _os_cause(exc: BaseException) -> OSError | None:
    """Return the socket error under a urllib3 error (`raise ... from`), if any."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, OSError) and not isinstance(seen, urllib3.exceptions.HTTPError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _strerror(error: OSError, otherwise: str) -> str:
    """Return the system's words for a socket error ("connection refused"), or `otherwise` without an errno."""
    return os.strerror(error.errno).lower() if isinstance(error.errno, int) and error.errno > 0 else otherwise


def transport_error(exc: urllib3.exceptions.HTTPError) -> str:
    """Say why an attempt got no answer, as `Kind: reason` for the delivery log and the worker's log line.

    Kind is the socket's own error when there is one (`ConnectionRefusedError: connection refused`), else
    urllib3's (`ReadTimeoutError: timed out`). urllib3 2 makes a failed connection a ConnectTimeoutError
    whatever the cause, so its class alone would call a refused connection a timeout. Never the URL (it
    may hold a secret), the address, nor anything the receiver sent.
    """
    cause = _os_cause(exc)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        if cause is None:
            return f"{type(exc).__name__}: could not connect"
        if isinstance(cause, TimeoutError):  # socket.timeout: the connection was not made in time
            return f"{type(exc).__name__}: timed out connecting"
        return f"{type(cause).__name__}: {_strerror(cause, 'could not connect')}"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"{type(exc).__name__}: timed out"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"{type(exc).__name__}: TLS failed" + (f" ({type(cause).__name__})" if cause is not None else "")
    if isinstance(cause, ConnectionError):  # reset, or closed without an answer
        return f"{type(cause).__name__}: {_strerror(cause, 'connection closed')}"
    return f"{type(exc).__name__}: transport error"


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST body to the target's pinned address within `timeout` seconds in all; raise
    urllib3.exceptions.HTTPError on transport failure (ReadTimeoutError when the time ran out)."""
    deadline = _Deadline(timeout)
    pool = _pool(target, timeout, deadline)
    try:
        answer = _post(pool, target, body, headers)
    except urllib3.exceptions.HTTPError:
        if deadline.finish():
            raise urllib3.exceptions.ReadTimeoutError(pool, target.path, "timed out") from None
        raise
    finally:
        deadline.finish()
        pool.close()
    if deadline.expired:  # cut off mid-answer: what was read of it (a status line, say) is no answer
        raise urllib3.exceptions.ReadTimeoutError(pool, target.path, "timed out")
    return answer


def _post(pool: urllib3.HTTPConnectionPool, target: Target, body: bytes, headers: dict[str, str]) -> Answer:
    response = pool.urlopen(
        "POST",
        target.path,
        body=body,
        headers={**headers, "Host": target.host_header},
        redirect=False,
        retries=False,
        assert_same_host=False,
        preload_content=False,
    )
    try:
        response.read(MAX_ANSWER_BYTES)  # read a little so the receiver is not cut off mid-answer
    finally:
        response.release_conn()
    return Answer(response.status, response.headers.get("Retry-After"))
