"""Run `planbridge` commands as the tests' black-box runs do, for a fraction of the cost.

A `planbridge` process spends ~1.2 s of CPU importing (SQLAlchemy, the FHIR models, the mappings) before a
command does anything, and the end-to-end tests run hundreds of commands. So each test process keeps one
zygote: a Python process that has imported what the commands import and forks a fresh process per command.
That process gets the command's argv, environment, working directory and stdin/stdout/stderr, then runs
exactly what the `planbridge` console script runs (`sys.exit(main())`) and ends as any Python process does
(atexit, thread joins, its own exit status). The zygote starts with none of planbridge's settings in its
environment, so nothing read at import takes the tests' values.

`run_planbridge` returns a `subprocess.CompletedProcess` as `subprocess.run(..., capture_output=True)` does.
With PLANBRIDGE_TEST_CLI=spawn every command is a new `planbridge` process instead (as before);
tests/e2e/test_cli_zygote.py holds both ways to the same outputs and exit statuses.

This file is also the zygote's program: only the standard library is imported at its top.
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "planbridge"
# What the commands import, loaded once in the zygote (the rest each command imports itself, as it would).
PRELOAD = ("service.cli", "service.cli_sync", "service.api.plans", "service.store.uow", "service.sync.engine")
_OWN_SETTINGS = ("PLANBRIDGE_", "FHIR_", "DATABASE_URL")
_HEADER = struct.Struct("!I")


class _Zygote:
    """The zygote of this test process: started when first needed, ended with the process."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="planbridge-zygote-")
        self.address = os.path.join(self.directory, "socket")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_SETTINGS)}
        code = (
            f"import sys, runpy; sys.path[0] = {str(BIN.parent)!r}; runpy.run_path({__file__!r}, run_name='__zygote__')"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, self.address],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        ready = self.process.stdout.readline()
        if ready != b"ready\n":
            self.process.kill()
            raise RuntimeError(f"the planbridge zygote did not start: {ready!r}")
        self.pid = os.getpid()
        atexit.register(self.stop)

    def stop(self) -> None:
        if os.getpid() == self.pid and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if os.getpid() == self.pid:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)


_zygotes: dict[int, _Zygote] = {}
_zygotes_guard = threading.Lock()


def _zygote() -> _Zygote:
    with _zygotes_guard:
        zygote = _zygotes.get(os.getpid())
        if zygote is None or zygote.process.poll() is not None:
            zygote = _zygotes[os.getpid()] = _Zygote()
        return zygote


class _Lines:
    """The lines a zygote's child answers (the command's pid, then its exit status)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def next(self) -> str:
        while b"\n" not in self.buffer:
            more = self.conn.recv(64)
            if not more:
                raise RuntimeError("the planbridge zygote ended the command without an exit status")
            self.buffer += more
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def _text(data: bytes) -> str:
    # what subprocess.run(..., text=True) makes of a child's output
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def run_planbridge(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    input: str | bytes | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60,
    text: bool = True,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """Run `planbridge *args` with exactly `env` in `cwd` (stdin: `input`, else empty) and return its exit
    status and output; raise subprocess.TimeoutExpired (the command killed) past `timeout` seconds, and
    subprocess.CalledProcessError for a non-zero exit with `check`."""
    argv = [str(BIN), *map(str, args)]
    if os.environ.get("PLANBRIDGE_TEST_CLI") == "spawn":
        stdin = subprocess.DEVNULL if input is None else None
        return subprocess.run(
            argv, env=dict(env), input=input, stdin=stdin, cwd=cwd, capture_output=True, text=text, timeout=timeout,
            check=check,
        )  # fmt: skip
    request = json.dumps({"argv": argv, "env": dict(env), "cwd": os.fspath(cwd) if cwd else os.getcwd()}).encode()
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        if input is not None:
            stdin.write(input.encode(locale.getpreferredencoding(False)) if isinstance(input, str) else input)
            stdin.seek(0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(_zygote().address)
            socket.send_fds(conn, [_HEADER.pack(len(request)) + request], [f.fileno() for f in (stdin, stdout, stderr)])
            conn.settimeout(max(timeout, 30))  # the pid comes at once: the command's process is forked
            answer = _Lines(conn)
            pid = int(answer.next())
            conn.settimeout(timeout)
            try:
                returncode = int(answer.next())
            except TimeoutError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                conn.settimeout(30)
                answer.next()  # the command's end, once killed
                stdout.seek(0)
                stderr.seek(0)
                raise subprocess.TimeoutExpired(argv, timeout, stdout.read(), stderr.read()) from None
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    result = subprocess.CompletedProcess(argv, returncode, _text(out) if text else out, _text(err) if text else err)
    if check:
        result.check_returncode()
    return result


# ---- the zygote's side ----------------------------------------------------------------------------------------


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    while len(data) < _HEADER.size or len(data) < _HEADER.size + _HEADER.unpack_from(data)[0]:
        more = conn.recv(65536)
        if not more:
            raise EOFError("the request ended early")
        data += more
    (size,) = _HEADER.unpack_from(data)
    return json.loads(data[_HEADER.size : _HEADER.size + size]), fds


def _command(listener: socket.socket, conn: socket.socket) -> dict[str, Any]:
    """In a child of the zygote: fork the command's process, tell the caller its pid and then its exit status.
    Returns only in the command's process, its argv, environment, directory and standard streams in place."""
    listener.close()
    request, fds = _receive(conn)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        return request
    try:
        for fd in fds:
            os.close(fd)
        try:
            conn.sendall(f"{pid}\n".encode())
        except OSError:  # the caller is gone: so is the command
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    finally:
        os._exit(0)


def _serve(address: str) -> dict[str, Any]:
    """The zygote: import what the commands import, then fork a process per request, until the test process
    that started it is gone. Returns only in a command's process."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except BaseException:  # only a head start: each command imports it again and fails as it would
            pass
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)
    listener.settimeout(1)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while os.getppid() == parent:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # the children whose command ended
                pass
        except ChildProcessError:
            pass
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        if os.fork() == 0:
            return _command(listener, conn)
        conn.close()
    os._exit(0)


if __name__ == "__zygote__":
    _serve(sys.argv[1])
    from service.cli import main  # as the planbridge console script does

    sys.argv[0] = sys.argv[0].removesuffix(".exe")
    sys.exit(main())
