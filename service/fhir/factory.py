"""Build the FHIR client the settings describe."""

from __future__ import annotations

from pathlib import Path

from requests.auth import AuthBase

from service.domain.errors import ConfigurationError
from service.fhir.auth import BearerToken, SmartBackendAuth, SmartConfig, basic
from service.fhir.client import FhirClient
from service.settings import Settings


def auth_from_settings(settings: Settings, base_url: str) -> AuthBase | None:
    """Return the authentication the settings ask for (None for FHIR_AUTH=none)."""
    if settings.fhir_auth == "bearer":
        return BearerToken(settings.fhir_bearer_token or "")
    if settings.fhir_auth == "basic":
        return basic(settings.fhir_basic_user or "", settings.fhir_basic_password or "")
    if settings.fhir_auth == "smart":
        key_file = Path(settings.smart_private_key_file or "")
        try:
            key = key_file.read_text()
        except OSError as exc:
            raise ConfigurationError(
                f"SMART_PRIVATE_KEY_FILE cannot be read: {exc.strerror}", setting="SMART_PRIVATE_KEY_FILE"
            ) from None
        config = SmartConfig(
            client_id=settings.smart_client_id or "",
            private_key_pem=key,
            key_id=settings.smart_key_id or "",
            algorithm=settings.smart_algorithm,
            scope=settings.smart_scope,
            token_url=settings.smart_token_url,
        )
        return SmartBackendAuth(config, base_url, timeout=settings.fhir_timeout)
    return None


def client_from_settings(settings: Settings) -> FhirClient:
    """Return a client for FHIR_BASE_URL with the configured timeout and authentication."""
    if not settings.fhir_base_url:
        raise ConfigurationError("FHIR_BASE_URL is not set", setting="FHIR_BASE_URL")
    auth = auth_from_settings(settings, settings.fhir_base_url)
    return FhirClient(settings.fhir_base_url, settings.fhir_timeout, auth=auth)
