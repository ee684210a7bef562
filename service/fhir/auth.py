"""How planbridge authenticates to a FHIR server: nothing, a static bearer token, HTTP basic, or
SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import jwt
import requests
from requests.auth import AuthBase, HTTPBasicAuth

from service.fhir.errors import FhirAuthError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SMART_ALGORITHMS = ("RS384", "ES384")


class BearerToken(AuthBase):
    """A static `Authorization: Bearer` token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


@dataclass(frozen=True)
class SmartConfig:
    """What a SMART Backend Services client needs: its id, its signing key and what it asks for."""

    client_id: str
    private_key_pem: str
    key_id: str
    algorithm: str = "RS384"
    scope: str = "system/*.read system/*.write"
    token_url: str | None = None


class SmartBackendAuth(AuthBase):
    """Fetches access tokens with a signed client assertion, caches them and renews before expiry."""

    RENEW_BEFORE = 60.0  # seconds: a token this close to expiry is replaced before use

    def __init__(
        self,
        config: SmartConfig,
        fhir_base_url: str,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
    ) -> None:
        if config.algorithm not in SMART_ALGORITHMS:
            raise FhirAuthError(f"SMART signing algorithm must be one of {SMART_ALGORITHMS}, not {config.algorithm}")
        self.config = config
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.session = session or requests.Session()
        self.clock = clock
        self.timeout = timeout
        self._token: str | None = None
        self._expires_at = 0.0
        self._token_url = config.token_url
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def token_url(self) -> str:
        """Return the token endpoint, discovered once from `.well-known/smart-configuration`."""
        if self._token_url is None:
            url = f"{self.fhir_base_url}/.well-known/smart-configuration"
            try:
                answer = self.session.get(url, headers={"Accept": "application/json"}, timeout=self.timeout)
                answer.raise_for_status()
                self._token_url = answer.json()["token_endpoint"]
            except (requests.RequestException, ValueError, KeyError) as exc:
                raise FhirAuthError(f"could not discover the token endpoint at {url}: {type(exc).__name__}") from None
        return self._token_url

    def assertion(self) -> str:
        """Return a fresh signed client assertion (valid 5 minutes, unique jti)."""
        now = int(time.time())  # the token endpoint checks these against its own wall clock
        claims = {
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": self.token_url(),
            "exp": now + 300,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.config.key_id, "typ": "JWT"}
        return jwt.encode(claims, self.config.private_key_pem, algorithm=self.config.algorithm, headers=headers)

    def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "scope": self.config.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        try:
            answer = self.session.post(self.token_url(), data=form, timeout=self.timeout)
        except requests.RequestException as exc:
            raise FhirAuthError(f"token endpoint unreachable: {type(exc).__name__}") from None
        if not answer.ok:
            raise FhirAuthError(f"token request refused: {answer.text[:200]}", status=answer.status_code)
        body = answer.json()
        self._token = body["access_token"]
        self._expires_at = self.clock() + float(body.get("expires_in", 300))
        self.tokens_fetched += 1

    def token(self) -> str:
        """Return a valid access token, fetching a new one when none is cached or it is about to expire."""
        with self._lock:
            if self._token is None or self.clock() >= self._expires_at - self.RENEW_BEFORE:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (the server refused it)."""
        with self._lock:
            self._token = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


def basic(user: str, password: str) -> AuthBase:
    """Return HTTP basic auth."""
    return HTTPBasicAuth(user, password)
