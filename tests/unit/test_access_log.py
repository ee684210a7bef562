"""The access log: planbridge's lighter field builder writes the very line gunicorn's own would."""

import logging
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from service.gunicorn_app import ACCESS_LOG_FORMAT, AccessLogger


def _line(logger: glogging.Logger, resp: SimpleNamespace) -> str:
    environ = {
        "REMOTE_ADDR": "10.1.2.3",
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/webhooks/team",
        "QUERY_STRING": "mrn=MRN-000123",
        "RAW_URI": "/webhooks/team?mrn=MRN-000123",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_USER_AGENT": "engine/1.0",
    }
    req = SimpleNamespace(headers=[("CONTENT-TYPE", "application/json"), ("WEBHOOK-ID", "msg_1")])
    atoms = logger.atoms(resp, req, environ, timedelta(seconds=1, microseconds=2345))
    return ACCESS_LOG_FORMAT % logger.atoms_wrapper_class(atoms)


def test_the_access_line_is_gunicorns_own_without_the_query_string():
    cfg = Config()
    ours, theirs = AccessLogger(cfg), glogging.Logger(cfg)
    for resp in (
        SimpleNamespace(status="202 ACCEPTED", sent=187, headers=[("Content-Type", "application/json")]),
        SimpleNamespace(status=413, sent=None, headers=[]),
        SimpleNamespace(status="204 NO CONTENT", sent=0, headers=[]),
    ):
        assert _line(ours, resp) == _line(theirs, resp)
    assert _line(ours, SimpleNamespace(status="202 ACCEPTED", sent=187, headers=[])) == (
        '10.1.2.3 "POST /webhooks/team" 202 187 1.002345s'
    )


def _served(logger: AccessLogger, path: str) -> None:
    environ = {"REMOTE_ADDR": "10.1.2.3", "REQUEST_METHOD": "POST", "PATH_INFO": path}
    resp = SimpleNamespace(status="202 ACCEPTED", sent=187, headers=[])
    logger.access(resp, SimpleNamespace(headers=[]), environ, timedelta(seconds=0, microseconds=1500))


def _file_logger(tmp_path, name: str) -> tuple[AccessLogger, object]:
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / name))
    cfg.set("access_log_format", ACCESS_LOG_FORMAT)
    logger = AccessLogger(cfg)
    log = logger.access_log  # what a served process has: gunicorn's own handler, not pytest's capture ones
    log.handlers[:] = [handler for handler in log.handlers if getattr(handler, "_gunicorn", False)]
    return logger, tmp_path / name


@pytest.fixture
def records(monkeypatch) -> list[int]:
    """The levels of the LogRecords made while the test runs."""
    made: list[int] = []
    original = logging.Logger.makeRecord

    def counting(self, *args, **kwargs):
        made.append(args[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "makeRecord", counting)
    return made


@pytest.fixture
def access_log():
    """gunicorn's access logger is one per process: leave it as the test found it."""
    log = logging.getLogger("gunicorn.access")
    handlers, filters, level = list(log.handlers), list(log.filters), log.level
    yield log
    for handler in log.handlers:
        if handler not in handlers:
            handler.close()
    log.handlers[:], log.filters[:] = handlers, filters
    log.setLevel(level)


def test_the_direct_write_is_the_line_logging_writes(tmp_path, records, access_log):
    """The access line goes straight to the handler's stream, and it is byte for byte what the logging
    path writes, control characters escaped on both."""
    direct, direct_file = _file_logger(tmp_path, "direct.log")
    assert direct._plain_access_handler() is not None  # gunicorn's own set-up takes the direct write
    _served(direct, "/webhooks/team")
    _served(direct, "/plans/a\nb\x00c")
    assert records == []  # no LogRecord made
    through, through_file = _file_logger(tmp_path, "logging.log")  # the same logger, a new handler
    access_log.addFilter(lambda record: True)  # any filter: the logging path
    assert through._plain_access_handler() is None
    _served(through, "/webhooks/team")
    _served(through, "/plans/a\nb\x00c")
    assert records == [logging.INFO, logging.INFO]
    written = direct_file.read_text()
    assert written == through_file.read_text()
    assert written.splitlines() == [
        '10.1.2.3 "POST /webhooks/team" 202 187 0.001500s',
        '10.1.2.3 "POST /plans/a\\nb\\x00c" 202 187 0.001500s',
    ]


def test_an_access_log_that_is_not_gunicorns_plain_handler_goes_through_logging(tmp_path, access_log):
    logger, path = _file_logger(tmp_path, "a.log")
    access_log.setLevel("WARNING")  # access lines are INFO: none written, as logging decides
    assert logger._plain_access_handler() is None
    _served(logger, "/webhooks/team")
    assert path.read_text() == ""
