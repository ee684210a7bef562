"""What the model-based tests (sync, outbox, notifications) share: their size and randomness from the
environment, and how a state machine is run and its counts reported."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


@dataclass(frozen=True)
class ModelRun:
    """How many examples of how many steps, whether they are new each run (a soak) and whether a failure is
    shrunk. Read from `<PREFIX>_EXAMPLES`, `_STEPS`, `_RANDOM` and `_SHRINK`: setting the examples makes a soak,
    which explores new interleavings each time; otherwise the same derandomized examples run every time (CI)."""

    examples: int
    steps: int
    random: bool
    shrink: bool

    @classmethod
    def from_env(cls, prefix: str, examples: int, steps: int) -> ModelRun:
        def flag(name: str) -> bool:
            return os.environ.get(f"{prefix}_{name}", "") not in ("", "0")

        return cls(
            examples=int(os.environ.get(f"{prefix}_EXAMPLES", str(examples))),
            steps=int(os.environ.get(f"{prefix}_STEPS", str(steps))),
            random=f"{prefix}_EXAMPLES" in os.environ or flag("RANDOM"),
            shrink=flag("SHRINK"),
        )

    def run(
        self,
        machine: type[RuleBasedStateMachine],
        stats: Counter,
        record_property: Callable[[str, object], None],
        label: str,
    ) -> None:
        """Run the machine; print `<label>: N examples, M steps (counts)` and record the totals, pass or fail."""
        phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if self.shrink else [])
        try:
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=self.examples,
                    stateful_step_count=self.steps,
                    deadline=None,
                    database=None,
                    derandomize=not self.random,
                    phases=phases,
                    suppress_health_check=list(HealthCheck),
                    print_blob=True,
                ),
            )
        finally:
            rules = ", ".join(f"{k}: {v}" for k, v in sorted(stats.items()) if k not in ("examples", "steps"))
            print(f"{label}: {stats['examples']} examples, {stats['steps']} steps ({rules})")
            record_property("examples", stats["examples"])
            record_property("steps", stats["steps"])
