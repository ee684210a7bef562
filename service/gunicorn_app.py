"""Run the Flask app under gunicorn from Python, so `planbridge serve` needs no extra config file."""

from __future__ import annotations

import gc
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from gunicorn import glogging
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker

from service.api.app import create_app
from service.api.digits import is_ascii_integer
from service.domain.errors import ConfigurationError
from service.logs import EscapingFormatter, escape_controls
from service.problems import problem_type
from service.settings import Settings
from service.store.checkpoints import start_background_checkpoints


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # newer gunicorn releases add settings; older ones lack them
                self.cfg.set(key, value)

    def load(self) -> Any:
        return CloseWhenBodyUnread(create_app())


# Requests gunicorn refuses before planbridge sees them (its parser), answered as problem+json instead of its
# HTML page: (status, reason, problem code, detail). The detail never repeats the request (it may carry ids).
_UNPARSED = (
    (http_errors.LimitRequestLine, 414, "URI Too Long", "uri-too-long", "the request line is over 4094 bytes"),
    (
        http_errors.LimitRequestHeaders,
        431,
        "Request Header Fields Too Large",
        "header-fields-too-large",
        "over 100 header fields, or one over 8190 bytes",
    ),
    (
        (
            http_errors.InvalidRequestLine,
            http_errors.InvalidRequestMethod,
            http_errors.InvalidHTTPVersion,
            http_errors.InvalidHeader,
            http_errors.InvalidHeaderName,
            http_errors.ObsoleteFolding,
        ),
        400,
        "Bad Request",
        "invalid-request",
        "not a valid HTTP/1.1 request",
    ),
)


DEFER_ACCEPT_S = 0.005  # how long a worker with no thread free leaves a new connection to the others


class ServiceWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, with three changes.

    It quits once however many quit signals reach it. Ctrl-C in a terminal sends SIGINT to the whole process
    group, and gunicorn's master answers its own SIGINT by sending each worker SIGQUIT: two quit signals within
    milliseconds. gthread's `handle_quit` shuts its thread pool down holding the pool's lock, which is not
    reentrant; a second signal handled while the first held it ran `handle_quit` again inside the first and
    waited on that lock for ever, until the master SIGKILLed the worker at the graceful timeout (1 in 6
    Ctrl-Cs of `scripts/run.sh`).

    And a request gunicorn's parser refuses (a request line over 4094 bytes, too many or too large headers, a
    malformed line) is answered with a problem+json body, as everything else planbridge refuses, not gunicorn's
    HTML page; its log line names the error's class, never the request line.

    And connections are spread over the workers (`accept`).
    """

    quitting = False
    _defer_until = 0.0  # monotonic time until which this worker leaves new connections to the others
    _connections_cap = 1000

    @property
    def worker_connections(self) -> int:
        """gthread's cap on open connections, which its loop compares with `nr_conns` to decide whether to poll
        the listening socket: while deferring, the cap is what this worker holds, so it does not accept."""
        if self._defer_until and time.monotonic() < self._defer_until:
            return int(self.nr_conns)
        return self._connections_cap

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._connections_cap = value

    def accept(self, listener: Any) -> None:
        """Accept a connection, unless this worker already holds one per thread: then leave it DEFER_ACCEPT_S to
        a worker with a thread free (every worker polls the one listening socket) and take it after, if still
        waiting. Keep-alive clients stay with the worker that accepted them, and left alone the kernel hands a
        burst of connections mostly to one worker (16 of wrk's came as 12/4 or 13/3): one core then carried
        three quarters of the load while the other idled. Balanced, bench/webhook_load.py's p99 fell from
        26.8-32.3 to 23.4-24.0 ms. A deferral ends DEFER_ACCEPT_S later and the next comes no sooner than
        DEFER_ACCEPT_S after it, so a connection waits at most that long when every worker is full."""
        now = time.monotonic()
        if self.nr_conns >= self.cfg.threads and now >= self._defer_until + DEFER_ACCEPT_S:
            self._defer_until = now + DEFER_ACCEPT_S
            return
        super().accept(listener)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """Wait as gthread does, but no longer than a deferral lasts: its loop polls the listening socket
        again only after a wait, which is up to a second with idle connections."""
        left = self._defer_until - time.monotonic()
        super().wait_for_and_dispatch_events(min(timeout, left) if left > 0 else timeout)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """Quit on the first quit signal; one arriving while quitting changes nothing."""
        if self.quitting:
            return
        self.quitting = True
        super().handle_quit(sig, frame)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer a request the parser refused as problem+json; anything else as gunicorn does."""
        found = next((row[1:] for row in _UNPARSED if isinstance(exc, row[0])), None)
        if found is None:
            super().handle_error(req, client, addr, exc)
            return
        status, reason, code, detail = found
        self.log.warning("refused a request gunicorn could not parse: %s (%d)", type(exc).__name__, status)
        body = orjson.dumps({"type": problem_type(code), "title": reason, "status": status, "detail": detail})
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            gunicorn_util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:
            self.log.debug("could not send the refusal: the client is gone")


class _CountingInput:
    """The request body as the application reads it, counting what it took and noticing its end."""

    def __init__(self, stream: Any, length: int | None) -> None:
        self._stream, self._length = stream, length
        self.taken, self.ended = 0, False

    def _note(self, data: bytes, to_the_end: bool) -> bytes:
        self.taken += len(data)
        if to_the_end or not data or (self._length is not None and self.taken >= self._length):
            self.ended = True
        return data

    def read(self, size: int | None = None) -> bytes:
        """Read as the WSGI input does (all of it without a size)."""
        return self._note(self._stream.read(size), size is None or size < 0)

    def readline(self, size: int | None = None) -> bytes:
        """Read a line as the WSGI input does."""
        return self._note(self._stream.readline(size), False)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        """Read lines (all of them without a hint)."""
        lines = self._stream.readlines(hint)
        for line in lines:
            self._note(line, False)
        if hint is None or hint <= 0:
            self.ended = True
        return lines

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class CloseWhenBodyUnread:
    """WSGI middleware: a response to a request whose body the app did not read to its end says
    `Connection: close`, and gunicorn closes the connection after it.

    gunicorn answers such a request with `Connection: keep-alive`, then drains at most 64 KiB of the
    unread body and, past that, closes the socket: a client that took it at its word sends its next
    request into a closed connection. The unread bytes cannot be skipped cheaply (a 413 is sent
    precisely because there are too many), so the connection is closed, and said to be.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Serve the request; mark gunicorn's response to close when the body was left unread."""
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and not (is_ascii_integer(length) and int(length) > 0):
            return self.app(environ, start_response)
        body = environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], None if chunked else int(length))
        result = self.app(environ, start_response)
        if not body.ended:
            # gunicorn's start_response is its Response's method; headers go out at the first write.
            response = getattr(start_response, "__self__", None)
            if response is not None and hasattr(response, "force_close"):
                response.force_close()
        return result


ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'  # client, method, path, status, bytes, seconds


class AccessLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, building only the access-log fields that ACCESS_LOG_FORMAT uses.

    gunicorn's own builds some sixty for every request (each request and response header, each WSGI
    environ entry), about 8% of a signed webhook's CPU under load; the line it writes is the same.
    Never the query string or headers: no PHI reaches the access log. Every line it writes, access and
    error log alike, has its control characters escaped (service.logs.escape_controls): a path with
    `%0A` or `%00` in it stays on its one line.
    """

    def setup(self, cfg: Any) -> None:
        """Set gunicorn's handlers up, then make each one's formatter escape control characters."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not isinstance(handler.formatter, EscapingFormatter):
                    handler.setFormatter(EscapingFormatter(handler.formatter))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Write one access-log line: straight to the stream when the access log is gunicorn's own plain
        handler (`accesslog` set to "-" or a file), through `logging` as gunicorn does otherwise.

        Through `logging`, each line costs a LogRecord, the logger's and the handler's checks and two
        formatters: ~3% of a signed event's CPU under load (py-spy, bench/webhook_load.py). The line
        written, and its escaping, are the same.
        """
        handler = self._plain_access_handler()
        if handler is None:
            super().access(resp, req, environ, request_time)
            return
        atoms = self.atoms_wrapper_class(self.atoms(resp, req, environ, request_time))
        line = escape_controls(self.cfg.access_log_format % atoms)
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.stream.flush()
        except Exception:  # as logging does: say so on stderr, never fail the request
            handler.handleError(logging.makeLogRecord({"msg": line, "name": self.access_log.name}))
        finally:
            handler.release()

    def _plain_access_handler(self) -> logging.StreamHandler | None:  # type: ignore[type-arg]
        """Return the access log's one handler when a line written to its stream is exactly what logging
        would write (gunicorn's StreamHandler or FileHandler, the escaping "%(message)s" formatter, no
        filters, INFO on); None otherwise (a logging config file, syslog, a level set higher)."""
        log = self.access_log
        if not self.access_log_enabled or log.disabled or log.filters or len(log.handlers) != 1:
            return None
        handler = log.handlers[0]
        if type(handler) not in (logging.StreamHandler, logging.FileHandler) or handler.filters:
            return None
        formatter = handler.formatter
        if not isinstance(formatter, EscapingFormatter) or type(formatter.inner) is not logging.Formatter:
            return None
        if formatter.inner._fmt != self.access_fmt or not log.isEnabledFor(logging.INFO):
            return None
        if handler.level > logging.INFO or getattr(handler, "stream", None) is None:
            return None
        return handler

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        """Return the fields of one access-log line."""
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "m": environ.get("REQUEST_METHOD"),
            "U": environ.get("PATH_INFO"),
            "s": status,
            "b": str(sent) if sent is not None else "-",
            "L": f"{request_time.seconds}.{request_time.microseconds:06d}",
        }


def default_shape(database_url: str) -> tuple[int, int]:
    """Return (workers, threads) for a database: two processes of 8 threads on SQLite, of 4 on PostgreSQL.

    A process serves requests on one core at a time (the GIL), and a signed event costs a few
    milliseconds of CPU, so two processes use a 2-core machine. On SQLite, writes are serialised by
    the writer lock and each process groups the events that queue behind it into one commit (see
    service/store/committer.py), so more threads per process means larger groups, not more waiting.
    Measured with bench/webhook_load.py: 2 x 8 beat 1 x 8 by ~1.7x and matched 3 x 8 and 4 x 4.
    """
    return (2, 8) if database_url.startswith("sqlite") else (2, 4)


def start_checkpoints(worker: Any) -> None:
    """Start the worker's background WAL checkpointer for the app's SQLite file (none on PostgreSQL).

    gunicorn forks each worker from the master, then the worker loads the app (its engine) and calls
    post_worker_init: the thread starts there, in the worker, which inherits no half-started one
    (service/store/checkpoints.py), and before the worker takes its first request.
    """
    app = getattr(worker.wsgi, "app", None)  # CloseWhenBodyUnread around the Flask app
    container = getattr(app, "extensions", {}).get("planbridge")
    if container is not None:
        start_background_checkpoints(container.engine)


def _worker_ready(worker: Any) -> None:
    start_checkpoints(worker)
    _freeze_loaded_objects(worker)


def _freeze_loaded_objects(_worker: Any) -> None:
    # The app, its schemas and fhir.resources' models are a few hundred thousand objects that live as
    # long as the worker; left in the collected generations, every full collection walks them all and
    # stalls each thread for ~100 ms, which is the p99 of a loaded server. Freezing takes them out.
    gc.collect()
    gc.freeze()


SESSION_SECRET_FILE = "session-secret"  # noqa: S105  (a file name, not a secret)


def _sqlite_dir(database_url: str) -> Path | None:
    """Return the directory of a SQLite database file (the data volume in the image), or None."""
    if not database_url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).parent


def _kept_secret(path: Path) -> str:
    """Return the secret kept in `path`, creating it (mode 0600) if no process has yet; concurrent starts agree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it this instant
            kept = path.read_text().strip()
            if len(kept) >= 32:
                return kept
            time.sleep(0.02)
        raise ConfigurationError(
            f"{path} does not hold a session secret of 32+ characters: remove it or set PLANBRIDGE_SESSION_SECRET",
            setting="PLANBRIDGE_SESSION_SECRET",
        ) from None
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value


def share_session_secret(settings: Settings) -> None:
    """Give every gunicorn worker the same console session key when PLANBRIDGE_SESSION_SECRET is unset.

    Each worker would otherwise sign cookies with a random key of its own, and a sign-in would work only
    when the next request happened to reach the same process. On SQLite the key is kept in
    `session-secret` beside the database file (the image's volume), so it outlives restarts; otherwise it
    is made once for this `serve` (its workers share it through the environment), and said so.
    """
    if settings.session_secret:
        return
    directory = _sqlite_dir(settings.database_url)
    if directory is not None:
        os.environ["PLANBRIDGE_SESSION_SECRET"] = _kept_secret(directory / SESSION_SECRET_FILE)
        return
    os.environ["PLANBRIDGE_SESSION_SECRET"] = secrets.token_urlsafe(48)
    print(
        "planbridge: PLANBRIDGE_SESSION_SECRET is not set: console sessions are signed with a key made for this "
        "process, shared by its workers; they end when it restarts and do not work across replicas",
        file=sys.stderr,
    )


def run(host: str, port: int, workers: int, threads: int = 4) -> None:
    """Serve the API on host:port with `workers` gthread workers of `threads` threads each."""
    share_session_secret(Settings.from_env())  # fail fast on bad settings, before forking
    create_app()  # and on a missing secret
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": ServiceWorker,
            "threads": threads,
            "post_worker_init": _worker_ready,
            "accesslog": "-",
            "access_log_format": ACCESS_LOG_FORMAT,
            "logger_class": AccessLogger,
            "timeout": 60,
            "graceful_timeout": 10,
            # A control socket shared per user would collide between instances (tests, dev, a second
            # service on one host); planbridge does not use it.
            "control_socket_disable": True,
        }
    ).run()
