"""What the outbox worker and the delivery worker share: drain what is due, then poll until stopped."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class PollingWorker:
    """A worker that processes one due item at a time; subclasses give `process_one` and a `name`."""

    name = "worker"
    poll_seconds: float = 1.0

    def process_one(self) -> bool:
        """Process one due item; return False when nothing was due."""
        raise NotImplementedError

    def before_pass(self) -> None:
        """Run before each pass over what is due (e.g. queue a periodic resync)."""

    def run_until_idle(self, limit: int = 10_000) -> int:
        """Process due items until none is left; return how many were processed."""
        count = 0
        while count < limit and self.process_one():
            count += 1
        return count

    def run_forever(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; a failed pass (a database hiccup, say) is logged and retried."""
        log.info("%s started", self.name)
        while not stop.is_set():
            try:
                self.before_pass()
                busy = self.run_until_idle(limit=100)
            except Exception:  # the worker must outlive any single failure; the next poll retries
                log.exception("%s pass failed", self.name)
                busy = 0
            if not busy:
                stop.wait(self.poll_seconds)
        log.info("%s stopped", self.name)
