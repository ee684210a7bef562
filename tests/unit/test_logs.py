import json
import logging

from service import logs


def test_records_are_json_lines_carrying_the_request_and_event_ids(capsys):
    logs.configure("INFO", "json")
    token_r, token_e = logs.request_id.set("req-1"), logs.event_id.set("msg_1")
    try:
        logging.getLogger("planbridge.test").info("plan %s pushed", "plan-1")
    finally:
        logs.request_id.reset(token_r)
        logs.event_id.reset(token_e)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["msg"] == "plan plan-1 pushed"
    assert (record["request_id"], record["event_id"], record["level"]) == ("req-1", "msg_1", "INFO")


def test_text_format_names_the_ids_too(capsys):
    logs.configure("INFO", "text")
    logging.getLogger("planbridge.test").warning("outbox 3 failed")
    assert "[req=None event=None] outbox 3 failed" in capsys.readouterr().err
