"""Every setting planbridge reads, each from one environment variable (listed in the README)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from service.domain.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///var/planbridge.db"


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}", setting=name)


def _number(name: str, raw: str, kind: type[int] | type[float], minimum: float) -> int | float:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}", setting=name) from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {raw!r}", setting=name)
    return value


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with `Settings.from_env()`."""

    database_url: str = DEFAULT_DATABASE_URL
    fhir_base_url: str | None = None
    fhir_timeout: float = 30.0
    webhook_secrets: tuple[str, ...] = field(default_factory=tuple)
    mrn_system: str = "http://hospital.example.org/mrn"
    identifier_base: str = "https://planbridge.example.org/id"
    create_patients: bool = False
    max_body_bytes: int = 256 * 1024
    outbox_max_attempts: int = 8
    worker_poll_seconds: float = 1.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from environment variables, refusing malformed values."""
        env = os.environ if env is None else env
        secrets = tuple(s for s in env.get("PLANBRIDGE_WEBHOOK_SECRET", "").replace(",", " ").split() if s)
        for secret in secrets:
            if not secret.startswith("whsec_") or len(secret) < 16:
                raise ConfigurationError(
                    "PLANBRIDGE_WEBHOOK_SECRET must hold whsec_<base64> secrets", setting="PLANBRIDGE_WEBHOOK_SECRET"
                )
        base = env.get("FHIR_BASE_URL", "").strip().rstrip("/") or None
        if base and not base.startswith(("http://", "https://")):
            raise ConfigurationError("FHIR_BASE_URL must be an http(s) URL", setting="FHIR_BASE_URL")
        return cls(
            database_url=env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL,
            fhir_base_url=base,
            fhir_timeout=float(_number("FHIR_TIMEOUT", env.get("FHIR_TIMEOUT", "30"), float, 0.1)),
            webhook_secrets=secrets,
            mrn_system=env.get("PLANBRIDGE_MRN_SYSTEM", cls.mrn_system).strip(),
            identifier_base=env.get("PLANBRIDGE_IDENTIFIER_BASE", cls.identifier_base).strip().rstrip("/"),
            create_patients=_bool("PLANBRIDGE_CREATE_PATIENTS", env.get("PLANBRIDGE_CREATE_PATIENTS", "false")),
            max_body_bytes=int(
                _number("PLANBRIDGE_MAX_BODY_BYTES", env.get("PLANBRIDGE_MAX_BODY_BYTES", "262144"), int, 1024)
            ),
            outbox_max_attempts=int(
                _number("PLANBRIDGE_OUTBOX_MAX_ATTEMPTS", env.get("PLANBRIDGE_OUTBOX_MAX_ATTEMPTS", "8"), int, 1)
            ),
            worker_poll_seconds=float(
                _number("PLANBRIDGE_WORKER_POLL_SECONDS", env.get("PLANBRIDGE_WORKER_POLL_SECONDS", "1"), float, 0.05)
            ),
            log_level=env.get("PLANBRIDGE_LOG_LEVEL", "INFO").upper(),
        )
