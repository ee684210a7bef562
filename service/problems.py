"""RFC 9457 problem details: the one shape of every error planbridge's own API answers with."""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"


def problem_type(code: str) -> str:
    """Return the problem type URI for an error code (the codes are listed in the README)."""
    return f"urn:planbridge:problem:{code}"


def problem(code: str, title: str, status: int, detail: str, **extra: Any) -> dict[str, Any]:
    """Return a problem+json body."""
    return {"type": problem_type(code), "title": title, "status": status, "detail": detail, **extra}
