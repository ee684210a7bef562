"""The access log: planbridge's lighter field builder writes the very line gunicorn's own would."""

from datetime import timedelta
from types import SimpleNamespace

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
