"""Team events accepted per second (signature, validation, durable commit) vs a bare Flask endpoint.

Both run in-process through Flask's test client on one core, so the ratio shows what planbridge's
intake costs on top of Flask itself. Run: `.venv/bin/python bench/webhook_intake.py [N]`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from flask import Flask, request

from service.api.app import create_app
from service.settings import Settings
from service.signing import new_secret, sign_headers
from service.store.db import create_engine, upgrade

EVENT = json.loads((Path(__file__).resolve().parent.parent / "fixtures/events/goal-proposed.json").read_text())


def bodies(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        EVENT["data"]["plan_id"] = f"bench-plan-{i}"
        out.append(json.dumps(EVENT).encode())
    return out


def rate(app: Flask, payloads: list[bytes], secret: str) -> float:
    client = app.test_client()
    signed = [(b, sign_headers(secret, b)) for b in payloads]
    start = time.perf_counter()
    for body, headers in signed:
        answer = client.post("/webhooks/team", data=body, headers=headers, content_type="application/json")
        assert answer.status_code == 202, answer.data
    return len(payloads) / (time.perf_counter() - start)


def bare_app() -> Flask:
    app = Flask("bare")

    @app.post("/webhooks/team")
    def accept() -> tuple[dict, int]:
        return {"status": "accepted", "type": json.loads(request.get_data())["type"]}, 202

    return app


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    secret = new_secret()
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/bench.db")
        upgrade(engine)
        ours = rate(create_app(Settings(webhook_secrets=(secret,)), engine), bodies(n), secret)
    bare = rate(bare_app(), bodies(n), secret)
    print(f"events accepted/s: planbridge {ours:,.0f}  bare Flask {bare:,.0f}  ratio {ours / bare:.3f}")
    print(f"({n} events, in-process test client, SQLite with fsync on every commit)")


if __name__ == "__main__":
    main()
