"""The named regressions of the notifications model (tests/integration/test_notify_model.py): cases found
by the model, made deterministic; moved out of that file unchanged."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy.engine import Engine

from tests.integration.test_notify_model import notify_machine
from tests.notify_model_endpoint import Endpoint


def replay(engine: Engine, steps: list[tuple[str, dict[str, Any]]]) -> None:
    """Run the model's steps in this order (after its initial plan and `["*"]` subscription), checked as
    hypothesis checks them, then settle: a failure found by the model, made deterministic."""
    endpoint = Endpoint(engine)
    try:
        machine = notify_machine(engine, endpoint, Counter())()
        machine.first_plan_and_subscription()
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            machine.checked_after_every_step()
        machine.teardown()
    finally:
        endpoint.stop()


def test_regression_an_answer_is_recorded_on_its_own_delivery_not_one_that_took_its_id(engine) -> None:
    # While the worker waited for the endpoint, the subscription was deleted (its deliveries with it), made
    # again, and the plan changed: on SQLite the new subscription and its new delivery took the freed ids,
    # and the worker recorded the old delivery's 200 on the new one, which was never sent (lost).
    replay(engine, [("worker_one_while", {"meanwhile": ["resubscribe", "change"]})])


def test_regression_retry_after_zero_is_not_a_retry_storm(engine) -> None:
    # An endpoint answering 503 with `Retry-After: 0` was retried at once: run_until_idle, with the clock
    # standing still, sent the delivery MAX_ATTEMPTS times in a row and it went dead within milliseconds.
    replay(engine, [("endpoint_answers", {"i": 0, "mode": "busy-now"}), ("worker_run_until_idle", {})])
