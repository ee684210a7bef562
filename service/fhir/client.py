"""A FHIR R4 REST client (https://hl7.org/fhir/R4/http.html) with one request function."""

from __future__ import annotations

import logging
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from service.fhir import errors

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"

_STATUS_ERRORS: dict[int, type[errors.FhirError]] = {
    400: errors.FhirValidationFailed,
    422: errors.FhirValidationFailed,
    401: errors.FhirAuthError,
    403: errors.FhirAuthError,
    404: errors.FhirNotFound,
    410: errors.FhirNotFound,
    409: errors.FhirVersionConflict,
    412: errors.FhirVersionConflict,
}


def _diagnostics(outcome: dict[str, Any] | None) -> str:
    if not outcome:
        return ""
    return "; ".join(
        i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
        for i in outcome.get("issue", [])
    )


class FhirClient:
    """Talks to one FHIR server over one keep-alive session."""

    def __init__(self, base_url: str, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        # Only idempotent methods are retried; a conditional PUT is idempotent, a plain POST is not.
        retry = Retry(
            total=3,
            backoff_factor=0.5,
            backoff_jitter=0.25,
            status_forcelist=(429, 502, 503, 504),
            allowed_methods=frozenset({"GET", "HEAD", "PUT", "DELETE"}),
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        self.session.headers.update({"Accept": FHIR_JSON, "User-Agent": "planbridge"})

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """Send one request; return the response for 2xx, raise the matching FhirError otherwise."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"
        send_headers = dict(headers or {})
        if json is not None:
            send_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
        try:
            response = self.session.request(
                method, url, json=json, params=params, headers=send_headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise errors.FhirTransportError(f"{method} {path}: {type(exc).__name__}") from exc
        log.debug("fhir %s %s -> %s", method, path.split("?")[0], response.status_code)
        if response.ok:
            return response
        outcome = None
        try:
            body = response.json()
            if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
                outcome = body
        except ValueError:
            pass
        kind = _STATUS_ERRORS.get(response.status_code, errors.FhirServerError)
        detail = f"{method} {path.split('?')[0]} failed: {_diagnostics(outcome) or response.reason}"
        raise kind(detail, status=response.status_code, outcome=outcome)

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Return every match, following `next` links exactly as the server gives them."""
        found: list[dict[str, Any]] = []
        bundle = self.request("GET", resource_type, params=params).json()
        while True:
            found.extend(
                e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"
            )
            next_url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            if not next_url:
                return found
            bundle = self.request("GET", next_url).json()

    def find_one(self, resource_type: str, params: dict[str, str]) -> dict[str, Any] | None:
        """Return the single match, None when there is none; several raise FhirAmbiguous."""
        matches = self.search(resource_type, params)
        if len(matches) > 1:
            raise errors.FhirAmbiguous(f"{resource_type} search matched {len(matches)} resources", status=None)
        return matches[0] if matches else None

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
        response = self.request(
            "PUT",
            f"{resource['resourceType']}?identifier={requests.utils.quote(f'{system}|{value}', safe='')}",
            json=resource,
            headers={"Prefer": "return=representation"},
        )
        return response.json()

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """Read the current version of a resource."""
        return self.request("GET", f"{resource_type}/{resource_id}").json()
