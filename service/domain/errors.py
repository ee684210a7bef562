"""One exception tree for planbridge; each error carries data and becomes HTTP only at the edge."""

from __future__ import annotations


class PlanbridgeError(Exception):
    """Base of every error planbridge raises on purpose."""

    code = "planbridge-error"

    def __init__(self, detail: str, **data: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data = data


class InvalidInput(PlanbridgeError):
    """Input that does not have the right shape; `errors` maps field paths to messages."""

    code = "invalid-input"

    def __init__(self, detail: str, errors: dict[str, object] | None = None) -> None:
        super().__init__(detail, errors=errors or {})
        self.errors = errors or {}


class RuleViolation(PlanbridgeError):
    """A well-formed change that the plan's current state does not allow."""

    code = "rule-violation"


class Conflict(PlanbridgeError):
    """A change that contradicts something already recorded (a duplicate, a reused id)."""

    code = "conflict"


class NotFound(PlanbridgeError):
    """Something named by the caller does not exist."""

    code = "not-found"


class ConfigurationError(PlanbridgeError):
    """A setting is missing or malformed."""

    code = "configuration-error"


class MappingError(PlanbridgeError):
    """A value cannot be carried between the internal model and FHIR."""

    code = "mapping-error"
