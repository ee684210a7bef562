"""Which FhirError a refused request becomes: by HTTP status and OperationOutcome issue code.

The status alone is not enough. The spec answers a stale `If-Match` with 412
(https://hl7.org/fhir/R4/http.html#concurrency), HAPI with 409, and both statuses also carry
refusals that are not version conflicts: HAPI answers 412 when a conditional create/update/delete
matches several resources (HAPI-0958/0988/0962) and 409 when a delete is blocked by references
(HAPI-0550/0515). The issue codes are the R4 IssueType value set
(https://hl7.org/fhir/R4/valueset-issue-type.html). HAPI sends `processing` for nearly every
refusal, so for 409 and 412 the diagnostics (HAPI's message codes) are read first. Medplum refuses a
transaction over its caps with 400 `invalid` and a fixed message (TOO_LARGE), read before anything else.
A 400/422 that says the written resource names a resource the server does not hold (DANGLING: HAPI's
referential integrity on write, Medplum's `checkReferencesOnWrite`) is the EHR having deleted something
under us, not bad content: `FhirDanglingReference`, decision "merge".

The table, with each class's `decision`, is also in docs/fhir-refusals.md; keep the two in step.
"""

from __future__ import annotations

import re
from typing import Any

from service.fhir.errors import (
    Decision,
    FhirAuthError,
    FhirError,
    FhirGone,
    FhirMultipleMatches,
    FhirNotFound,
    FhirReferenceConflict,
    FhirRefused,
    FhirServerError,
    FhirTransactionTooLarge,
    FhirValidationFailed,
    FhirVersionConflict,
)

ErrorKind = type[FhirError]


class FhirDanglingReference(FhirValidationFailed):
    """400 (or 422): the written resource names a resource the server does not hold, deleted or never there
    (HAPI-1096 "Resource Goal/5 is deleted, specified in path: CarePlan.goal", HAPI-1094 "... not found ...";
    Medplum: "Invalid reference (Not found)" / "(Gone)"). The EHR deleted something the plan still names:
    re-read, merge (the pull drops references to Goals the server no longer holds), then one more try; refused
    so again after the re-read, it is a stop (the push sets `decision` to "stop" and records it)."""

    decision: Decision = "merge"


# (status, OperationOutcome issue code) -> error. Looked up with each error/fatal issue's code in turn.
BY_OUTCOME: dict[tuple[int, str], ErrorKind] = {
    (409, "conflict"): FhirVersionConflict,
    (412, "conflict"): FhirVersionConflict,
    (409, "processing"): FhirVersionConflict,  # HAPI's generic code (HAPI-0989); diagnostics may say more
    (412, "processing"): FhirVersionConflict,
    (409, "lock-error"): FhirVersionConflict,
    (412, "lock-error"): FhirVersionConflict,
    (409, "multiple-matches"): FhirMultipleMatches,
    (412, "multiple-matches"): FhirMultipleMatches,
    (409, "deleted"): FhirGone,
    (412, "deleted"): FhirGone,
    (404, "deleted"): FhirGone,
    (409, "not-found"): FhirNotFound,
    (412, "not-found"): FhirNotFound,
    (409, "duplicate"): FhirRefused,
    (412, "duplicate"): FhirRefused,
    (409, "business-rule"): FhirRefused,
    (412, "business-rule"): FhirRefused,
    (409, "too-costly"): FhirRefused,
    (412, "too-costly"): FhirRefused,
    (409, "invalid"): FhirRefused,
    (412, "invalid"): FhirRefused,
    (409, "not-supported"): FhirRefused,
    (412, "not-supported"): FhirRefused,
    (409, "security"): FhirRefused,
    (412, "security"): FhirRefused,
}

# Status -> error when the outcome is missing or none of its codes is in BY_OUTCOME. A 409/412 that
# says nothing stays a version conflict: that is what the spec uses them for.
BY_STATUS: dict[int, ErrorKind] = {
    400: FhirValidationFailed,
    422: FhirValidationFailed,
    401: FhirAuthError,
    403: FhirAuthError,
    404: FhirNotFound,
    410: FhirGone,
    409: FhirVersionConflict,
    412: FhirVersionConflict,
    408: FhirServerError,
    429: FhirServerError,
}

# For 409 and 412 only, checked first: HAPI's message codes and wording, which say more than `processing`.
BY_DIAGNOSTICS: tuple[tuple[re.Pattern[str], ErrorKind], ...] = (
    (
        re.compile(
            r"HAPI-09(58|62|72|88)\b|search matched \d+ resources|\b(multiple|several) (resources|matches)\b", re.I
        ),
        FhirMultipleMatches,
    ),
    (re.compile(r"HAPI-0515\b|has a reference to this resource|\bis referenced by\b", re.I), FhirReferenceConflict),
    (re.compile(r"HAPI-(0824|1093)\b|duplicate (value for a )?unique index|duplicate index", re.I), FhirRefused),
    (re.compile(r"HAPI-(0989|0961)\b|is not the current version", re.I), FhirVersionConflict),
)
REFUSAL_STATUSES = frozenset({409, 412})

# Medplum's refusals of a transaction over its caps (@medplum/fhir-router BatchProcessor.preprocess, 400
# `invalid`): strict isolation (any conditional entry) with more than 8 entries; more than 50 updates.
TOO_LARGE = re.compile(
    r"Transaction requires strict isolation but has too many entries"
    r"|Transaction contains more update operations than allowed",
    re.I,
)


# A write naming what the server does not hold: HAPI's referential integrity on write (its JPA server's default,
# `enforce_referential_integrity_on_write`: HAPI-1094 "Resource X/1 not found, specified in path: ...", HAPI-1096
# "Resource X/1 is deleted, specified in path: ...", inside a transaction after "HAPI-0550: "), and Medplum's
# reference check (project setting `checkReferencesOnWrite`: 400 `structure`, details "Invalid reference (Not
# found)" or "Invalid reference (Gone)"). Read for 400 and 422 only; any error issue saying so is enough.
DANGLING = re.compile(r"HAPI-109[46]\b|\bInvalid reference \((not found|gone|deleted)\b", re.I)
DANGLING_STATUSES = frozenset({400, 422})


def _issues(outcome: dict[str, Any] | None) -> list[dict[str, Any]]:
    issues = [i for i in (outcome or {}).get("issue") or [] if isinstance(i, dict)]
    errors = [i for i in issues if i.get("severity") in ("error", "fatal")]
    return errors or issues


def _text(issue: dict[str, Any]) -> str:
    return f"{issue.get('diagnostics') or ''} {(issue.get('details') or {}).get('text') or ''}"


def diagnostics(outcome: dict[str, Any] | None) -> str:
    """Join every issue's diagnostics (or details.text, or code) with '; '."""
    return "; ".join(
        i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
        for i in (outcome or {}).get("issue") or []
        if isinstance(i, dict)
    )


def classify(status: int, outcome: dict[str, Any] | None) -> ErrorKind:
    """Return the FhirError subclass for a non-2xx answer with this status and OperationOutcome."""
    issues = _issues(outcome)
    if 400 <= status < 500 and any(TOO_LARGE.search(_text(i)) for i in issues):
        return FhirTransactionTooLarge
    if status in DANGLING_STATUSES and any(DANGLING.search(_text(i)) for i in issues):
        return FhirDanglingReference
    if status in REFUSAL_STATUSES:
        text = " ".join(str(i.get("diagnostics") or (i.get("details") or {}).get("text") or "") for i in issues)
        for pattern, kind in BY_DIAGNOSTICS:
            if pattern.search(text):
                return kind
    for issue in issues:
        kind = BY_OUTCOME.get((status, str(issue.get("code"))))
        if kind is not None:
            return kind
    if status in BY_STATUS:
        return BY_STATUS[status]
    return FhirServerError if status >= 500 else FhirRefused
