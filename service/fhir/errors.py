"""What can go wrong talking to a FHIR server; each error keeps the status and OperationOutcome."""

from __future__ import annotations

from typing import Any

from service.domain.errors import PlanbridgeError


class FhirError(PlanbridgeError):
    """The FHIR server refused or failed a request, or could not be reached."""

    code = "fhir-error"

    def __init__(self, detail: str, status: int | None = None, outcome: dict[str, Any] | None = None) -> None:
        super().__init__(detail, status=status)
        self.status = status
        self.outcome = outcome

    def __str__(self) -> str:
        return f"{self.detail} (HTTP {self.status})" if self.status else self.detail


class FhirTransportError(FhirError):
    """No answer: connection refused, reset or timed out."""


class FhirNotFound(FhirError):
    """404, or 410 for a deleted resource."""


class FhirVersionConflict(FhirError):
    """The resource changed since the version we named: 412 per the spec, 409 from HAPI."""


class FhirValidationFailed(FhirError):
    """400 or 422: the server found the resource or request invalid."""


class FhirAuthError(FhirError):
    """401 or 403."""


class FhirServerError(FhirError):
    """5xx, or an answer that is not FHIR."""


class FhirAmbiguous(FhirError):
    """A search that must find at most one resource found several."""
