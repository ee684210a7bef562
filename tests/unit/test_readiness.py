"""Readiness: one probe at a time, a short wait for the caller that started it, a cached answer for the rest."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from service.api.health import PENDING, Readiness

OK = {"database": "ok", "fhir": "ok"}


class Probe:
    """A probe that blocks until released, counting its calls."""

    def __init__(self, answer=OK) -> None:
        self.answer, self.calls, self.release = answer, 0, threading.Event()

    def __call__(self):
        self.calls += 1
        self.release.wait(10)
        return self.answer


def _timed(readiness: Readiness):
    started = time.monotonic()
    return readiness.checks(), time.monotonic() - started


def test_twenty_callers_start_one_probe_and_none_waits_longer_than_the_bound():
    probe = Probe()
    readiness = Readiness(("database", "fhir"), probe, answer_within=0.5)
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: _timed(readiness), range(20)))
    assert probe.calls == 1 and readiness.probes_started == 1
    assert all(checks == {"database": PENDING, "fhir": PENDING} for checks, _ in answers)
    assert max(elapsed for _, elapsed in answers) < 1.5
    assert sum(elapsed >= 0.4 for _, elapsed in answers) == 1  # only the caller that started it waited
    probe.release.set()
    deadline = time.monotonic() + 5
    while readiness.checks() != OK:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(50):
        assert readiness.checks() == OK
    assert probe.calls == 1  # the answer is kept


def test_a_quick_probe_answers_its_caller_and_a_stale_answer_is_given_while_the_next_probe_is_out():
    now = [100.0]
    probe = Probe({"database": "ok", "fhir": "FhirTransportError"})
    probe.release.set()
    readiness = Readiness(
        ("database", "fhir"), probe, fresh_for=5, answer_within=2, stale_after=30, clock=lambda: now[0]
    )
    assert readiness.checks() == {"database": "ok", "fhir": "FhirTransportError"}
    now[0] += 10  # no longer fresh: the next caller starts a probe, which now hangs
    probe.release.clear()
    probe.answer = OK
    hung = threading.Thread(target=readiness.checks)
    hung.start()
    time.sleep(0.1)
    checks, elapsed = _timed(readiness)  # another caller: the last answer, at once
    assert checks == {"database": "ok", "fhir": "FhirTransportError"} and elapsed < 0.2
    now[0] += 30  # too old to give out while the probe hangs
    assert readiness.checks() == {"database": PENDING, "fhir": PENDING}
    assert probe.calls == 2
    probe.release.set()
    hung.join(5)


def test_a_probe_that_raises_is_an_answer():
    def broken():
        raise RuntimeError("boom")

    readiness = Readiness(("database",), broken)
    assert readiness.checks() == {"database": "RuntimeError"}
