"""A delivery that got no answer says why: a refused connection is not a timeout.

urllib3 2 makes every failed connection a `NewConnectionError`, a subclass of its `ConnectTimeoutError`, so the
delivery log and the worker's log line said `NewConnectionError: timed out` for an endpoint that refused the
connection at once (a closed port). The error now names the socket's own error, still without the URL (it may
hold a secret) or the address.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading

from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from service.notify.http import transport_error
from service.notify.worker import DeliveryWorker
from tests.integration.test_notify import Notify, free_port

SECRET = "tok3n-in-the-query"


def test_a_refused_connection_is_logged_as_refused_not_as_a_timeout(engine, caplog):
    caplog.set_level("INFO")
    notify = Notify(engine)
    sub = notify.subscribe(f"http://127.0.0.1:{free_port()}/hook?key={SECRET}")  # nothing listens there
    notify.change("plan-a")

    assert notify.worker.run_until_idle() == 1

    (delivery,) = notify.deliveries(sub["id"])
    assert delivery["status"] == "failed"
    assert delivery["last_error"] == "ConnectionRefusedError: connection refused"
    assert [e["error"] for e in delivery["attempt_log"]] == ["ConnectionRefusedError: connection refused"]
    logged = [r.getMessage() for r in caplog.records if r.name == DeliveryWorker.__module__]
    assert any(line.endswith(": failed (ConnectionRefusedError)") for line in logged), logged
    assert SECRET not in caplog.text and "127.0.0.1" not in delivery["last_error"]


def test_a_receiver_closing_the_connection_without_answering_is_not_a_timeout(engine):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def close_each() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            connection.recv(65536)
            connection.close()

    threading.Thread(target=close_each, daemon=True).start()
    try:
        notify = Notify(engine)
        sub = notify.subscribe(f"http://127.0.0.1:{port}/hook")
        notify.change("plan-a")
        notify.worker.run_until_idle()
    finally:
        listener.close()

    (delivery,) = notify.deliveries(sub["id"])
    assert delivery["status"] == "failed"
    assert delivery["last_error"] in {
        "RemoteDisconnected: connection closed",
        "ConnectionResetError: connection reset by peer",
    }, delivery["last_error"]


def _raised(error: Exception, cause: BaseException | None) -> Exception:
    """Return `error` as urllib3 raises it: `raise error from cause`."""
    try:
        raise error from cause
    except Exception as raised:
        return raised


def test_each_cause_is_named_and_timeouts_stay_timeouts():
    unreachable = OSError(errno.EHOSTUNREACH, "No route to host")
    untrusted, reset = ssl.SSLCertVerificationError(1, "bad"), ConnectionResetError(errno.ECONNRESET, "reset")
    cases = [
        (NewConnectionError(None, "Failed to establish a new connection"), unreachable, "OSError: no route to host"),
        (NewConnectionError(None, "Failed"), TimeoutError("timed out"), "NewConnectionError: timed out connecting"),
        (NewConnectionError(None, "Failed"), None, "NewConnectionError: could not connect"),
        (ConnectTimeoutError(None, "connect timed out"), TimeoutError("timed out"), "ConnectTimeoutError: timed out"),
        (ReadTimeoutError(None, "/hook?key=x", "timed out"), None, "ReadTimeoutError: timed out"),
        (SSLError("certificate verify failed"), untrusted, "SSLError: TLS failed (SSLCertVerificationError)"),
        (ProtocolError("Connection aborted."), reset, "ConnectionResetError: connection reset by peer"),
        (ProtocolError("Connection aborted."), None, "ProtocolError: transport error"),
    ]  # fmt: skip
    for error, cause, said in cases:
        assert transport_error(_raised(error, cause)) == said
