"""What can go wrong talking to a FHIR server; each error keeps the status and OperationOutcome.

Every class says what a sync client should do about it in `decision`:

- ``"merge"``: the server holds something we have not seen (a newer version, or the target is gone):
  re-read it, merge, then maybe try again.
- ``"retry"``: transient (no answer, 5xx): the same request may succeed later.
- ``"stop"``: a data or configuration problem that sending the request again never fixes.
- ``"split"``: the transaction was too big for the server: send it again as smaller transactions.

Which class a refusal becomes is decided in `service.fhir.refusals` (status and outcome issue code).
"""

from __future__ import annotations

from typing import Any, Literal

from service.domain.errors import PlanbridgeError

Decision = Literal["merge", "retry", "stop", "split"]


class FhirError(PlanbridgeError):
    """The FHIR server refused or failed a request, or could not be reached."""

    code = "fhir-error"
    decision: Decision = "stop"

    def __init__(self, detail: str, status: int | None = None, outcome: dict[str, Any] | None = None) -> None:
        super().__init__(detail, status=status)
        self.status = status
        self.outcome = outcome

    def __str__(self) -> str:
        return f"{self.detail} (HTTP {self.status})" if self.status else self.detail

    @property
    def issue_codes(self) -> list[str]:
        """The `issue.code` of every issue in the OperationOutcome, in order (empty without one)."""
        issues = (self.outcome or {}).get("issue") or []
        return [i["code"] for i in issues if isinstance(i, dict) and isinstance(i.get("code"), str)]


class FhirTransportError(FhirError):
    """No answer: connection refused, reset or timed out.

    `sent` is False only when no attempt reached the server (the connection was never made), so
    the request was certainly not applied; otherwise the server may have applied it.
    """

    decision: Decision = "retry"
    sent: bool = True


class FhirNotFound(FhirError):
    """404 (or issue code `not-found`): the target does not exist, so re-read before writing again."""

    decision: Decision = "merge"


class FhirGone(FhirNotFound):
    """410 (or issue code `deleted`): the target existed and was deleted."""


class FhirVersionConflict(FhirError):
    """The resource changed since the version we named: 412 per the spec, 409 from HAPI (HAPI-0989)."""

    decision: Decision = "merge"


class FhirMultipleMatches(FhirError):
    """A conditional create/update/delete matched several resources (412 on HAPI): never retry."""


class FhirReferenceConflict(FhirError):
    """A delete refused because other resources reference the target (409 HAPI-0550/HAPI-0515 on HAPI)."""


class FhirRefused(FhirError):
    """A 409/412 refusal that is not a version conflict (`duplicate`, `business-rule`, `too-costly`, ...)."""


class FhirValidationFailed(FhirError):
    """400 or 422: the server found the resource or request invalid."""


class FhirTransactionTooLarge(FhirValidationFailed):
    """400 from Medplum: a transaction over its caps (strict isolation with more than 8 entries, or more
    than 50 updates). Sent again split into smaller transactions, once; refused again, it is a stop."""

    decision: Decision = "split"


class FhirAuthError(FhirError):
    """401 or 403."""


class FhirServerError(FhirError):
    """5xx, or an answer that is not FHIR."""

    decision: Decision = "retry"


class FhirAmbiguous(FhirError):
    """A search that must find at most one resource found several."""
