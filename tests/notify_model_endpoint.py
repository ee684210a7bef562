"""The subscribers' side of the notifications model (tests/integration/test_notify_model.py): one HTTP
server on 127.0.0.1, moved out of that file unchanged."""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy.engine import Engine
from standardwebhooks.webhooks import Webhook

from service.store.uow import UnitOfWork
from tests.notify_model_support import ANSWERS, OPEN, Arrival


class Endpoint:
    """The subscribers' side: one HTTP server on 127.0.0.1, a path per subscription, answers set by the model."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.modes: dict[str, str] = {}
        self.secrets: dict[str, str] = {}
        self.previous: dict[str, tuple[str, datetime]] = {}  # the secret a rotation replaced, and its grace's end
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # the model's (set by each example)
        self.subscriptions: dict[str, int] = {}
        self.arrivals: list[Arrival] = []
        # Connections accepted whose request is not recorded yet (nor found empty), under `lock`.
        self.unheard: set[Any] = set()
        self.heard = threading.Condition(self.lock)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                token = self.path.rsplit("/", 1)[-1]
                status, extra, delay = ANSWERS[endpoint.modes.get(token, "ok")]
                arrival = endpoint.arrived(token, {k.lower(): v for k, v in self.headers.items()}, body, status, extra)
                with endpoint.lock:
                    arrival.index = len(endpoint.arrivals)
                    endpoint.arrivals.append(arrival)
                    endpoint.unheard.discard(self.request)
                    endpoint.heard.notify_all()
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the worker gave up waiting
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def get_request(self) -> tuple[Any, Any]:
                with endpoint.lock:  # accepted and unheard at once, as `wait_heard` sees it
                    request = super().get_request()
                    endpoint.unheard.add(request[0])
                return request

            def shutdown_request(self, request: Any) -> None:
                with endpoint.lock:
                    endpoint.unheard.discard(request)
                    endpoint.heard.notify_all()
                super().shutdown_request(request)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def rotated(self, token: str, secret: str, previous_until: datetime | None) -> None:
        """The subscription's secret was rotated: the one replaced signs too until `previous_until` (None: no more)."""
        if previous_until is None:
            self.previous.pop(token, None)
        else:
            self.previous[token] = (self.secrets[token], previous_until)
        self.secrets[token] = secret

    def signers(self, token: str) -> list[str]:
        """The secrets whose signatures a request to this subscription must carry now, and no other."""
        previous = self.previous.get(token)
        return [self.secrets[token], *([previous[0]] if previous and self.clock() < previous[1] else [])]

    def url(self, token: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/{token}"

    def arrived(self, token: str, headers: dict[str, str], body: bytes, status: int, extra: dict[str, str]) -> Arrival:
        """Verify the request and read, as the worker left the database when it sent it, whether an
        earlier delivery of the same plan to the same subscription should still be holding it back."""
        arrival = Arrival(
            -1, token, headers.get("webhook-id", ""), body, None, status, extra.get("Retry-After"), None, []
        )
        try:
            signers = self.signers(token)
            for secret in signers:
                Webhook(secret).verify(body, headers)
            count = len(headers.get("webhook-signature", "").split(" "))
            if count != len(signers):
                raise AssertionError(f"{count} signatures, where {len(signers)} secret(s) sign now")
        except Exception as exc:
            arrival.signed = f"{type(exc).__name__}: {exc}"
        try:
            data = json.loads(body)["data"]
            with UnitOfWork(self.engine) as uow:
                subscription_id = self.subscriptions[token]
                found = uow.subscriptions.list()
                row = next((s for s in found if s.id == subscription_id), None)
                arrival.subscription_status = None if row is None else row.status
                strict = row is not None and row.ordering == "strict"
                for earlier in uow.deliveries.list(subscription_id, plan_id=data["plan_id"], limit=10_000):
                    holding = earlier.status in OPEN or (earlier.status == "dead" and strict)
                    if earlier.sequence < data["sequence"] and holding:
                        arrival.held_back_by.append(f"sequence {earlier.sequence} ({earlier.status})")
        except Exception as exc:
            arrival.error = f"{type(exc).__name__}: {exc}"
        return arrival

    def wait_heard(self, seconds: float = 30.0) -> bool:
        """Wait until every connection made to the endpoint so far is accepted and its request recorded
        (or found to carry none); return False if that takes more than `seconds`."""
        deadline = time.monotonic() + seconds
        with self.heard:
            while self.unheard or select.select([self.server.socket], [], [], 0)[0]:
                if time.monotonic() > deadline:
                    return False
                self.heard.wait(0.01)
        return True

    def received(self, webhook_id: str) -> int:
        """How many requests with this webhook id the endpoint recorded."""
        with self.lock:
            return sum(a.webhook_id == webhook_id for a in self.arrivals)

    def since(self, start: int) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals[start:])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
