"""A FHIR R4 REST client (https://hl7.org/fhir/R4/http.html): one session, one request function.

Timeouts, headers, authentication and retries live in `FhirClient.request` and nowhere else; which
exception a refusal becomes (by status and OperationOutcome) is decided in `service.fhir.refusals`.
"""

from __future__ import annotations

import json as stdjson
import logging
import random
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import requests
import urllib3
from requests.auth import AuthBase

from mappings.codes import identifier_token
from service.fhir import errors, refusals
from service.fhir.auth import SmartBackendAuth
from service.fhir.session import _Session

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
BATCH_REFUSALS = frozenset({400, 404, 405, 501})  # a server that does not take `batch` Bundles answers so


class BatchUnsupported(errors.FhirError):
    """The server does not take a `batch` Bundle: it refused it (400/404/405/501) or answered something other
    than a `batch-response` with one entry per request."""


def search_url(resource_type: str, params: dict[str, str] | list[tuple[str, str]]) -> str:
    """Return a search as a relative URL (`Goal?identifier=s%7C&_count=200`), encoded as a GET's query is."""
    return f"{resource_type}?{urlencode(params)}"


def _matches(bundle: dict[str, Any]) -> int:
    return sum(
        1 for e in bundle.get("entry", []) if "resource" in e and e.get("search", {}).get("mode", "match") == "match"
    )


def _next_link(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)


def lookup_outcome(detail: str, code: str) -> dict[str, Any]:
    """Return the OperationOutcome planbridge writes for a search of its own that found what it must not (several
    matches: `code` an R4 issue type), so a plan stopped by one has a `last_outcome` though no server refused
    anything. `detail` names no identifier value."""
    issue = {"severity": "error", "code": code, "diagnostics": f"planbridge: {detail}"}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def ambiguous(detail: str, code: str) -> errors.FhirAmbiguous:
    """Return the FhirAmbiguous of a search planbridge made itself, with its `lookup_outcome`."""
    return errors.FhirAmbiguous(detail, status=None, outcome=lookup_outcome(detail, code))


def _target(method: str, path: str) -> str:
    """Name what a request addressed in messages: the path without its query, or the base itself."""
    bare = path.split("?")[0]
    if bare.strip("/"):
        return bare
    return "[base] (transaction)" if method == "POST" else "[base]"


def _never_connected(exc: requests.RequestException) -> bool:
    """Tell whether the request failed before a connection was made (so the server never saw it)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    cause: BaseException | None = exc
    for _ in range(8):  # requests wraps urllib3's MaxRetryError(reason=NewConnectionError(...))
        if cause is None:
            break
        if isinstance(cause, urllib3.exceptions.NewConnectionError):
            return True
        cause = getattr(cause, "reason", None) or cause.__context__
    return False


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Return the wait a Retry-After header asks for (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _encode(body: Any) -> bytes:
    """Serialise a request body as JSON (orjson: several times faster than json.dumps on a plan's Bundle)."""
    try:
        return orjson.dumps(body)
    except TypeError:  # beyond what orjson takes (e.g. an int over 64 bits): the standard library's answer
        return stdjson.dumps(body, allow_nan=False).encode()


class FhirClient:
    """Talks to one FHIR server over one keep-alive session."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        auth: AuthBase | None = None,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or _Session()
        self.session.headers.update({"Accept": FHIR_JSON, "User-Agent": "planbridge"})
        self.session.auth = auth
        self.max_retries, self.backoff_base, self.max_wait, self.sleep = max_retries, backoff_base, max_wait, sleep
        self.requests_sent = 0  # every attempt, whichever thread sent it (a worker pushes from several)
        self._count_lock = threading.Lock()

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}" if path.strip("/") else self.base_url

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.max_wait, random.uniform(0, self.backoff_base * 2**attempt))

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """Send one request and return the 2xx response, or raise the matching FhirError.

        Requests that are safe to repeat (GET, PUT, DELETE, a conditional create, or a caller's
        `idempotent=True` such as an all-conditional transaction) are retried on 429/502/503/504 and on
        connection errors, waiting as `Retry-After` says or with exponential backoff and full jitter.
        A 401 with SMART auth renews the token once.
        """
        send_headers = dict(headers or {})
        body = None
        if json is not None:
            send_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
            body = _encode(json)
        safe = idempotent if idempotent is not None else method in SAFE_METHODS or "If-None-Exist" in send_headers
        refreshed = reached = False
        for attempt in range(self.max_retries + 1):
            try:
                with self._count_lock:
                    self.requests_sent += 1
                response = self.session.request(
                    method, self._url(path), data=body, params=params, headers=send_headers, timeout=self.timeout
                )
            except requests.RequestException as exc:
                reached = reached or not _never_connected(exc)
                if safe and attempt < self.max_retries:
                    self.sleep(self._backoff(attempt, None))
                    continue
                error = errors.FhirTransportError(f"{method} {_target(method, path)}: {type(exc).__name__}")
                error.sent = reached
                raise error from exc
            log.debug("fhir %s %s -> %s", method, path.split("?")[0], response.status_code)
            if response.status_code == 401 and isinstance(self.session.auth, SmartBackendAuth) and not refreshed:
                self.session.auth.invalidate()
                refreshed = True
                continue
            if response.status_code in RETRY_STATUSES and safe and attempt < self.max_retries:
                self.sleep(
                    self._backoff(attempt, retry_after_seconds(response.headers.get("Retry-After"), time.time()))
                )
                continue
            return self._check(method, path, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, method: str, path: str, response: requests.Response) -> requests.Response:
        if response.ok:
            return response
        outcome = None
        try:
            body = response.json()
            if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
                outcome = body
        except ValueError:
            pass
        kind = refusals.classify(response.status_code, outcome)
        detail = f"{method} {_target(method, path)} failed: {refusals.diagnostics(outcome) or response.reason}"
        raise kind(detail, status=response.status_code, outcome=outcome)

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Return every match, following `next` links exactly as the server gives them."""
        return [
            e["resource"]
            for e in self.search_entries(resource_type, params)
            if e.get("search", {}).get("mode", "match") == "match"
        ]

    def search_entries(
        self, resource_type: str, params: dict[str, str] | list[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        """Return every entry (matches and `_include`d resources) of a search, page after page."""
        return self.pages_from(self.request("GET", resource_type, params=params).json())

    def pages_from(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        """Return every entry of a search from its first page on, following `next` links exactly as given."""
        found: list[dict[str, Any]] = []
        while True:
            found.extend(e for e in bundle.get("entry", []) if "resource" in e)
            next_url = _next_link(bundle)
            if not next_url:
                return found
            bundle = self.request("GET", next_url).json()

    def batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST a `batch` Bundle of read-only entries (`{"method": "GET", "url": ...}`); return the answer's
        entries, one per request, in order. Retried like a GET (reads only). A server without batch raises
        BatchUnsupported; any other refusal of the whole Bundle raises as `request` does."""
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": r} for r in requests]}
        try:
            answer = self.request("POST", "", json=bundle, idempotent=True).json()
        except errors.FhirError as exc:
            if exc.status in BATCH_REFUSALS:
                raise BatchUnsupported(exc.detail, status=exc.status, outcome=exc.outcome) from exc
            raise
        except ValueError:
            answer = None
        entries = answer.get("entry") if isinstance(answer, dict) else None
        if (
            not isinstance(answer, dict)
            or answer.get("type") != "batch-response"
            or not isinstance(entries, list)
            or len(entries) != len(requests)
            or not all(isinstance(e, dict) for e in entries)
        ):
            kind = answer.get("type") if isinstance(answer, dict) else "no JSON object"
            raise BatchUnsupported(f"POST [base] (batch) answered {kind!s:.40}, not a batch-response", status=200)
        return entries

    def search_batch(
        self, searches: list[tuple[str, dict[str, str] | list[tuple[str, str]]]]
    ) -> list[list[dict[str, Any]] | None]:
        """Run several searches in one `batch` request; return, per search, every entry (a `next` link in its
        answer is followed exactly, page after page), or None where the batch did not answer it completely:
        an error status for that entry, no searchset, or a page short of its `total` (or as full as `_count`
        asks, with no total) that gives no `next` link. Search those on their own. Raises BatchUnsupported
        when the server does not take batches."""
        requests = [{"method": "GET", "url": search_url(rtype, params)} for rtype, params in searches]
        out: list[list[dict[str, Any]] | None] = []
        for (_, params), entry in zip(searches, self.batch(requests), strict=True):
            status = str((entry.get("response") or {}).get("status", ""))
            bundle = entry.get("resource")
            if not status.startswith("2") or not isinstance(bundle, dict) or bundle.get("type") != "searchset":
                out.append(None)
                continue
            if not _next_link(bundle):
                asked = dict(params)
                count, ids = asked.get("_count"), asked.get("_id")
                total, matched = bundle.get("total"), _matches(bundle)
                short = isinstance(total, int) and total > matched
                full = total is None and count is not None and count.isdigit() and matched >= int(count)
                full = full and not (ids and matched >= len(ids.split(",")))  # every id asked for: nothing more
                if short or full:
                    out.append(None)
                    continue
            out.append(self.pages_from(bundle))
        return out

    def find_one(self, resource_type: str, params: dict[str, str]) -> dict[str, Any] | None:
        """Return the single match, None when there is none; several raise FhirAmbiguous."""
        matches = self.search(resource_type, params)
        if len(matches) > 1:
            raise ambiguous(f"{resource_type} search matched {len(matches)} resources", "multiple-matches")
        return matches[0] if matches else None

    def find_by_identifier(self, resource_type: str, system: str, value: str) -> dict[str, Any] | None:
        """Return the one resource holding the identifier `system|value` exactly, None when the server holds none.

        Servers such as Medplum match a token's value without regard to case (`identifier=urn:mrn|ABC-1` finds a
        Patient whose MRN is `abc-1`), so a match is kept only when one of its identifiers is exactly the one
        sought. A server matching only such case twins raises FhirAmbiguous (a stop): taking the twin would name
        another patient's record, and creating one on the server's own conditional terms would find the twin
        again. Several exact matches raise FhirAmbiguous too. No identifier value is put in a message.
        """
        matches = self.search(resource_type, {"identifier": identifier_token(system, value)})
        exact = [m for m in matches if _holds_identifier(m, system, value)]
        if len(exact) > 1:
            raise ambiguous(f"{resource_type} search matched {len(exact)} resources", "multiple-matches")
        if not exact and matches:
            raise ambiguous(
                f"{resource_type} search by an identifier of system {system} matched {len(matches)} resource(s) "
                "whose identifier equals it only without regard to case",
                "business-rule",
            )
        return exact[0] if exact else None

    def create_if_none_exist(self, resource: dict[str, Any], condition: str) -> dict[str, Any]:
        """Conditional create: POST with If-None-Exist, so a resource matching `condition` is reused."""
        response = self.request(
            "POST",
            resource["resourceType"],
            json=resource,
            headers={"If-None-Exist": condition, "Prefer": "return=representation"},
        )
        return response.json()

    def update_by_identifier(self, resource: dict[str, Any], system: str, value: str) -> dict[str, Any]:
        """Conditional update on an identifier: the one match is updated, none means create."""
        condition = quote(identifier_token(system, value), safe="")
        response = self.request(
            "PUT",
            f"{resource['resourceType']}?identifier={condition}",
            json=resource,
            headers={"Prefer": "return=representation"},
        )
        return response.json()

    def transaction(self, bundle: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """POST a transaction Bundle; pass idempotent=True only when every entry is conditional."""
        return orjson.loads(self.request("POST", "", json=bundle, idempotent=idempotent).content)

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """Read the current version of a resource."""
        return self.request("GET", f"{resource_type}/{resource_id}").json()

    def capabilities(self) -> dict[str, Any]:
        """Return the server's CapabilityStatement."""
        return self.request("GET", "metadata").json()


def _holds_identifier(resource: dict[str, Any], system: str, value: str) -> bool:
    """Tell whether one of the resource's identifiers is exactly `system|value` (case and all)."""
    identifiers = resource.get("identifier")
    return isinstance(identifiers, list) and any(
        isinstance(i, dict) and i.get("system") == system and i.get("value") == value for i in identifiers
    )
