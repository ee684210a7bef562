"""How planbridge authenticates to a FHIR server: nothing, a static bearer token, HTTP basic, or
SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from requests.auth import AuthBase, HTTPBasicAuth

from service.domain.errors import ConfigurationError
from service.fhir.errors import FhirAuthError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SMART_ALGORITHMS = ("RS384", "ES384")
MIN_RSA_BITS = 2048  # RFC 7518 section 3.3: RS384 keys are 2048 bits or more
_V1_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.(read|write|\*)$")
_V2_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([cruds]+)$")
_V1_TO_V2 = {"read": "rs", "write": "cud", "*": "cruds"}


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


def _describe(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA key of {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC key on the curve {key.curve.name}"
    return f"a {type(key).__name__.removeprefix('_').replace('PrivateKey', '')} key"


def check_signing_key(private_key_pem: str, algorithm: str) -> None:
    """Refuse, in one sentence, a key that cannot sign with `algorithm`: RS384 needs an RSA private key of
    2048 bits or more, ES384 an EC private key on P-384 (RFC 7518); the PEM must be unencrypted."""
    if algorithm not in SMART_ALGORITHMS:
        raise ConfigurationError(
            f"SMART_ALGORITHM must be one of {', '.join(SMART_ALGORITHMS)}, not {algorithm}", setting="SMART_ALGORITHM"
        )
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except TypeError:
        raise ConfigurationError(
            "SMART_PRIVATE_KEY_FILE holds an encrypted private key; planbridge needs it unencrypted (PKCS#8 PEM)",
            setting="SMART_PRIVATE_KEY_FILE",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            "SMART_PRIVATE_KEY_FILE is not a PEM private key (a public key or a certificate will not sign)",
            setting="SMART_PRIVATE_KEY_FILE",
        ) from None
    if algorithm == "RS384":
        fits = isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS
        needs = f"an RSA private key of {MIN_RSA_BITS} bits or more"
        other = " (or set SMART_ALGORITHM=ES384)" if isinstance(key, ec.EllipticCurvePrivateKey) else ""
    else:
        fits = isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
        needs = "an EC private key on the curve P-384 (secp384r1)"
        other = " (or set SMART_ALGORITHM=RS384)" if isinstance(key, rsa.RSAPrivateKey) else ""
    if not fits:
        raise ConfigurationError(
            f"SMART_ALGORITHM={algorithm} needs {needs}, but SMART_PRIVATE_KEY_FILE holds {_describe(key)}{other}",
            setting="SMART_PRIVATE_KEY_FILE",
        )


def scopes_for(scope: str, v2: bool) -> str:
    """Return the scopes in the syntax the server speaks: SMART v2 (`system/Goal.cruds`) when it
    advertises `permission-v2`, v1 (`system/Goal.*`) otherwise. Scopes already in that syntax, and
    those with no counterpart (v2 scopes with a query), are left as they are."""
    out: list[str] = []
    for token in scope.split():
        v1, v2_match = _V1_SCOPE.match(token), _V2_SCOPE.match(token)
        if v2 and v1:
            token = f"{v1[1]}/{v1[2]}.{_V1_TO_V2[v1[3]]}"
        elif not v2 and v2_match:
            letters = set(v2_match[3])
            reads, writes = bool(letters & set("rs")), bool(letters & set("cud"))
            token = f"{v2_match[1]}/{v2_match[2]}.{'*' if reads and writes else 'read' if reads else 'write'}"
        if token not in out:
            out.append(token)
    return " ".join(out)


class SmartBackendAuth(AuthBase):
    """Fetches access tokens with a signed client assertion, caches them and renews them before expiry.

    The key is checked against the algorithm when the client is made (a mismatch is one clear sentence at
    start-up, not a failure on every request). A token is renewed when what is left of its lifetime falls
    under RENEW_BEFORE seconds or RENEW_SHARE of the lifetime, whichever is less: a 300 s token 60 s
    before it expires, a 60 s token 12 s before, so short-lived tokens are reused, not fetched per request.
    """

    RENEW_BEFORE = 60.0  # seconds: at most this close to expiry a token is replaced before use...
    RENEW_SHARE = 0.2  # ...and at most this share of its lifetime before
    DEFAULT_LIFETIME = 300.0  # when the token answer does not say (`expires_in` is RECOMMENDED)

    def __init__(
        self,
        config: SmartConfig,
        fhir_base_url: str,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
    ) -> None:
        check_signing_key(config.private_key_pem, config.algorithm)
        self.config = config
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.session = session or requests.Session()
        self.clock = clock
        self.timeout = timeout
        self._token: str | None = None
        self._renew_at = 0.0
        self._token_url = config.token_url
        self._discovery: dict[str, Any] | None = None
        self._scope: str | None = None
        self._lock = threading.Lock()
        self.tokens_fetched = 0
        self.scope_version: str | None = None  # "v1" or "v2" once the server's configuration has been read
        self.token_lifetime: float | None = None

    def configuration(self) -> dict[str, Any]:
        """Return the server's `.well-known/smart-configuration`, read once; FhirAuthError when unreadable."""
        if self._discovery is None:
            url = f"{self.fhir_base_url}/.well-known/smart-configuration"
            try:
                answer = self.session.get(url, headers={"Accept": "application/json"}, timeout=self.timeout)
                answer.raise_for_status()
                document = answer.json()
                if not isinstance(document, dict):
                    raise ValueError("not a JSON object")
            except (requests.RequestException, ValueError) as exc:
                raise FhirAuthError(f"could not read the SMART configuration at {url}: {type(exc).__name__}") from None
            self._discovery = document
        return self._discovery

    def token_url(self) -> str:
        """Return the token endpoint: SMART_TOKEN_URL, else discovered once from `.well-known/smart-configuration`."""
        if self._token_url is None:
            endpoint = self.configuration().get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint:
                url = f"{self.fhir_base_url}/.well-known/smart-configuration"
                raise FhirAuthError(f"could not discover the token endpoint at {url}: KeyError")
            self._token_url = endpoint
        return self._token_url

    def scope(self) -> str:
        """Return the scopes to ask for, in v2 syntax when the server advertises `permission-v2`, else v1.

        With SMART_TOKEN_URL set, a server without a readable configuration is asked in v1 syntax."""
        if self._scope is None:
            try:
                capabilities = self.configuration().get("capabilities")
            except FhirAuthError:
                if self.config.token_url is None:
                    raise
                capabilities = None
            v2 = isinstance(capabilities, list) and "permission-v2" in capabilities
            self._scope, self.scope_version = scopes_for(self.config.scope, v2), "v2" if v2 else "v1"
        return self._scope

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
        try:
            return jwt.encode(claims, self.config.private_key_pem, algorithm=self.config.algorithm, headers=headers)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:  # checked at start-up; never a traceback here
            kind, algorithm = type(exc).__name__, self.config.algorithm
            raise FhirAuthError(f"the client assertion could not be signed with {algorithm} ({kind})") from None

    def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope(),
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        try:
            answer = self.session.post(self.token_url(), data=form, timeout=self.timeout)
        except requests.RequestException as exc:
            raise FhirAuthError(f"token endpoint unreachable: {type(exc).__name__}") from None
        if not answer.ok:
            raise FhirAuthError(f"token request refused: {answer.text[:200]}", status=answer.status_code)
        try:
            body = answer.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", self.DEFAULT_LIFETIME))
            if not isinstance(token, str) or not token or not lifetime > 0:
                raise ValueError("no usable token")
        except (ValueError, TypeError, KeyError) as exc:
            raise FhirAuthError(f"the token endpoint's answer holds no usable token: {type(exc).__name__}") from None
        fetched = self.clock()
        self._token, self.token_lifetime = token, lifetime
        self._renew_at = fetched + lifetime - min(self.RENEW_BEFORE, lifetime * self.RENEW_SHARE)
        self.tokens_fetched += 1

    def token(self) -> str:
        """Return a valid access token, fetching a new one when none is cached or it is about to expire."""
        with self._lock:
            if self._token is None or self.clock() >= self._renew_at:
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
