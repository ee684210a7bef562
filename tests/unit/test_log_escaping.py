"""No log line carries a control character: what a client sends (a path with %0A or %00) cannot forge a
line, hide text or drive a terminal, in the JSON and text formats and in gunicorn's access and error logs."""

import json
import logging
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from service import logs
from service.gunicorn_app import ACCESS_LOG_FORMAT, AccessLogger

HOSTILE = "x\nFORGED 2026-12-03 INFO planbridge granted\r\x00\x1b[2J\x7f\x85\u2028\\n"
RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def test_escape_controls_writes_each_control_character_as_an_escape():
    assert logs.escape_controls(HOSTILE) == (
        "x\\nFORGED 2026-12-03 INFO planbridge granted\\r\\x00\\x1b[2J\\x7f\\x85\\u2028\\\\n"
    )
    assert logs.escape_controls("plan-1 pushed, 3 goals") == "plan-1 pushed, 3 goals"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_record_with_control_characters_is_one_line_without_them(capsys, fmt):
    logs.configure("INFO", fmt)
    log = logging.getLogger("planbridge.test")
    log.warning("plan %s not found", HOSTILE)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        log.exception("refused %s", "y\nFORGED")
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 2
    assert not any(RAW_CONTROL.search(line) for line in lines)
    assert not any(line.startswith("FORGED") for line in lines)
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        # Even a reader that prints the decoded message gets one line.
        assert records[0]["msg"] == f"plan {logs.escape_controls(HOSTILE)} not found"
        assert not RAW_CONTROL.search(records[1]["msg"])
    else:
        assert "plan x\\nFORGED 2026-12-03 INFO planbridge granted\\r\\x00" in lines[0]
        assert "ValueError: x\\nFORGED" in lines[1]


def _access_environ(path: str) -> dict[str, str]:
    return {"REMOTE_ADDR": "10.1.2.3", "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""}


def test_the_access_log_escapes_the_path(capsys):
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", ACCESS_LOG_FORMAT)
    logger = AccessLogger(cfg)
    resp = SimpleNamespace(status="404 NOT FOUND", sent=120, headers=[])
    req = SimpleNamespace(headers=[])
    logger.access(resp, req, _access_environ("/plans/x\nFORGED\x00\x1b[2J"), timedelta(microseconds=1500))
    logger.access(resp, req, _access_environ("/plans/plan-1"), timedelta(microseconds=1500))
    lines = _lines(capsys.readouterr().out)
    assert lines == [
        '10.1.2.3 "GET /plans/x\\nFORGED\\x00\\x1b[2J" 404 120 0.001500s',
        '10.1.2.3 "GET /plans/plan-1" 404 120 0.001500s',
    ]


def test_gunicorns_error_log_escapes_too(capsys):
    cfg = Config()
    cfg.set("errorlog", "-")
    logger = AccessLogger(cfg)
    logger.error("Invalid request from ip=%s: %s", "10.1.2.3", "bad\nFORGED\x00")
    (line,) = _lines(capsys.readouterr().err)
    assert line.endswith("Invalid request from ip=10.1.2.3: bad\\nFORGED\\x00")
