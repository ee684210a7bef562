"""The baseline for bench/webhook_load.py: a bare Flask endpoint that parses the body and answers 202."""

import json

from flask import Flask, request

app = Flask("bare")


@app.post("/webhooks/team")
def accept() -> tuple[dict, int]:
    """Parse and answer, nothing else."""
    return {"status": "accepted", "type": json.loads(request.get_data())["type"]}, 202
