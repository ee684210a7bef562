"""Every setting planbridge reads, each from one environment variable (listed in the README)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from service.domain.errors import ConfigurationError
from service.signing import DEFAULT_SENDER

DEFAULT_DATABASE_URL = "sqlite:///var/planbridge.db"


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}", setting=name)


def _choice(name: str, raw: str, allowed: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in allowed:
        raise ConfigurationError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}", setting=name)
    return value


def _number(name: str, raw: str, kind: type[int] | type[float], minimum: float) -> int | float:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}", setting=name) from None
    if not math.isfinite(value):  # float() reads "nan" and "inf": no timeout, wait or count is either
        raise ConfigurationError(f"{name} must be a finite number, got {raw!r}", setting=name)
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {raw!r}", setting=name)
    return value


def _cap(name: str, env: Mapping[str, str]) -> int | None:
    """Read an optional positive whole number (unset or empty: None, no cap)."""
    raw = env.get(name, "").strip()
    return int(_number(name, raw, int, 1)) if raw else None


AUTH_KINDS = ("none", "bearer", "basic", "smart")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The databases planbridge runs on (its drivers are installed): SQLite, PostgreSQL through psycopg 3.
_DATABASE_URL = re.compile(r"^(sqlite(\+pysqlite)?|postgres|postgresql(\+psycopg)?)://", re.IGNORECASE)


def _database_url(env: Mapping[str, str]) -> str:
    """Read DATABASE_URL, refusing what is not a SQLite or PostgreSQL URL (never echoed: it may hold a password)."""
    url = env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    if not _DATABASE_URL.match(url):
        raise ConfigurationError(
            "DATABASE_URL must be sqlite:///<file> or postgresql://user@host/db", setting="DATABASE_URL"
        )
    return url


# An absolute URI as FHIR R4 carries it in Identifier.system: a scheme, then no whitespace or control character.
_SYSTEM_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f\x7f]+")


def _system(env: Mapping[str, str], name: str, default: str) -> str:
    """Read an identifier system (or the base of several); one FHIR cannot carry would have every plan refused
    (each event 400 naming the FHIR element), so it is refused here, at start, by name."""
    value = env.get(name, default).strip()
    if not _SYSTEM_URI.fullmatch(value):
        raise ConfigurationError(
            f"{name} must be an absolute URI without spaces (e.g. {default}), got {value!r}", setting=name
        )
    return value


def _public_url(env: Mapping[str, str], default: str) -> str:
    """Read PLANBRIDGE_PUBLIC_URL: where the FHIR server reaches planbridge, so an http(s) URL."""
    value = env.get("PLANBRIDGE_PUBLIC_URL", default).strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ConfigurationError(
            f"PLANBRIDGE_PUBLIC_URL must be an http(s) URL, got {value!r}", setting="PLANBRIDGE_PUBLIC_URL"
        )
    return value


def _log_level(env: Mapping[str, str]) -> str:
    """Read PLANBRIDGE_LOG_LEVEL: one of Python's level names (any case)."""
    raw = env.get("PLANBRIDGE_LOG_LEVEL", "INFO")
    level = raw.strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigurationError(
            f"PLANBRIDGE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {raw!r}", setting="PLANBRIDGE_LOG_LEVEL"
        )
    return level


_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _outbound_allow(env: Mapping[str, str]) -> tuple[str, ...]:
    """Read the CIDRs and host names that outbound deliveries may reach although they are not public."""
    entries = tuple(e.lower() for e in env.get("PLANBRIDGE_OUTBOUND_ALLOW", "").replace(",", " ").split() if e)
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not _HOST_NAME.match(entry):
                raise ConfigurationError(
                    f"PLANBRIDGE_OUTBOUND_ALLOW entries must be CIDRs or host names, got {entry!r}",
                    setting="PLANBRIDGE_OUTBOUND_ALLOW",
                ) from None
    return entries


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """Read the keys that open the operating API; short keys are refused (they could be guessed)."""
    keys = tuple(k for k in env.get("PLANBRIDGE_API_KEYS", "").replace(",", " ").split() if k)
    if any(len(k) < 16 for k in keys):
        raise ConfigurationError(
            "PLANBRIDGE_API_KEYS entries must be at least 16 characters", setting="PLANBRIDGE_API_KEYS"
        )
    return keys


SENDER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _webhook_secret_list(name: str, raw: str) -> tuple[str, ...]:
    secrets = tuple(s for s in raw.replace(",", " ").split() if s)
    for secret in secrets:
        if not secret.startswith("whsec_") or len(secret) < 16 or not _key_of(secret):
            raise ConfigurationError(f"{name} must hold whsec_<base64> secrets", setting=name)
    return secrets


def _key_of(secret: str) -> bytes:
    """Return the key a whsec_ secret holds, decoded as the standardwebhooks package decodes it (b"" when it
    cannot be: such a secret would verify no signature, and every event would be refused as unsigned)."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"))
    except binascii.Error:
        return b""


def _webhook_senders(env: Mapping[str, str], default: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Read PLANBRIDGE_WEBHOOK_SENDERS, `name=whsec_..,whsec_..; other=whsec_..`: each sender's active secrets.

    A sender is known by the secret that verifies its request, so no secret may belong to two senders.
    """
    setting = "PLANBRIDGE_WEBHOOK_SENDERS"
    senders: list[tuple[str, tuple[str, ...]]] = []
    for entry in (e.strip() for e in env.get(setting, "").split(";")):
        if not entry:
            continue
        name, sep, raw = (part.strip() for part in entry.partition("="))
        if not sep or not SENDER_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{setting} entries are name=whsec_..[,whsec_..] with a name of lower-case letters, digits, . _ -",
                setting=setting,
            )
        secrets = _webhook_secret_list(setting, raw)
        if not secrets:
            raise ConfigurationError(f"{setting}: sender {name} has no secret", setting=setting)
        senders.append((name, secrets))
    names = [n for n, _ in senders] + ([DEFAULT_SENDER] if default else [])
    if len(set(names)) != len(names):
        raise ConfigurationError(
            f"{setting} names a sender twice (or 'default' beside PLANBRIDGE_WEBHOOK_SECRET)", setting=setting
        )
    every = [s for _, secrets in senders for s in secrets] + list(default)
    if len(set(every)) != len(every):
        raise ConfigurationError(f"{setting}: a secret belongs to two senders", setting=setting)
    return tuple(senders)


def _session_secret(env: Mapping[str, str]) -> str | None:
    """Read the key that signs console session cookies; short ones are refused (they could be guessed)."""
    secret = env.get("PLANBRIDGE_SESSION_SECRET", "").strip() or None
    if secret is not None and len(secret) < 32:
        raise ConfigurationError(
            "PLANBRIDGE_SESSION_SECRET must be at least 32 characters", setting="PLANBRIDGE_SESSION_SECRET"
        )
    return secret


def _auth(env: Mapping[str, str]) -> dict[str, str | None]:
    """Read the FHIR server's authentication settings, refusing incomplete ones by name."""
    kind = env.get("FHIR_AUTH", "none").strip().lower() or "none"
    if kind not in AUTH_KINDS:
        raise ConfigurationError(f"FHIR_AUTH must be one of {', '.join(AUTH_KINDS)}, got {kind!r}", setting="FHIR_AUTH")
    values = {
        "fhir_auth": kind,
        "fhir_bearer_token": env.get("FHIR_BEARER_TOKEN") or None,
        "fhir_basic_user": env.get("FHIR_BASIC_USER") or None,
        "fhir_basic_password": env.get("FHIR_BASIC_PASSWORD") or None,
        "smart_client_id": env.get("SMART_CLIENT_ID") or None,
        "smart_private_key_file": env.get("SMART_PRIVATE_KEY_FILE") or None,
        "smart_key_id": env.get("SMART_KEY_ID") or None,
        "smart_algorithm": (env.get("SMART_ALGORITHM") or "RS384").upper(),
        "smart_token_url": env.get("SMART_TOKEN_URL") or None,
    }
    if env.get("SMART_SCOPE"):
        values["smart_scope"] = env["SMART_SCOPE"]
    required = {
        "bearer": ["FHIR_BEARER_TOKEN"],
        "basic": ["FHIR_BASIC_USER", "FHIR_BASIC_PASSWORD"],
        "smart": ["SMART_CLIENT_ID", "SMART_PRIVATE_KEY_FILE", "SMART_KEY_ID"],
    }.get(kind, [])
    for name in required:
        if not env.get(name):
            raise ConfigurationError(f"FHIR_AUTH={kind} needs {name}", setting=name)
    if kind == "smart" and values["smart_algorithm"] not in ("RS384", "ES384"):
        raise ConfigurationError("SMART_ALGORITHM must be RS384 or ES384", setting="SMART_ALGORITHM")
    return values


@dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with `Settings.from_env()`."""

    database_url: str = DEFAULT_DATABASE_URL
    fhir_base_url: str | None = None
    fhir_timeout: float = 30.0
    webhook_secrets: tuple[str, ...] = field(default_factory=tuple)  # the "default" sender's
    webhook_senders: tuple[tuple[str, tuple[str, ...]], ...] = field(default_factory=tuple)  # (name, secrets)
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    mrn_system: str = "http://hospital.example.org/mrn"
    identifier_base: str = "https://planbridge.example.org/id"
    create_patients: bool = False
    max_body_bytes: int = 256 * 1024
    outbox_max_attempts: int = 8
    outbox_lease_seconds: float = 120.0
    fhir_notify_secret: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    resync_seconds: float = 900.0
    retain_days: float = 30.0  # done outbox entries and delivered notifications are kept this long (0: always)
    heartbeat_timeout_seconds: float = 600.0
    worker_poll_seconds: float = 1.0
    push_concurrency: int = 8  # outbox entries one worker pushes at once, one per plan
    log_level: str = "INFO"
    log_format: str = "json"
    fhir_auth: str = "none"
    fhir_bearer_token: str | None = None
    fhir_basic_user: str | None = None
    fhir_basic_password: str | None = None
    smart_client_id: str | None = None
    smart_private_key_file: str | None = None
    smart_key_id: str | None = None
    smart_algorithm: str = "RS384"
    smart_scope: str = "system/Patient.read system/Goal.* system/CarePlan.* system/CareTeam.* system/Observation.*"
    smart_token_url: str | None = None
    outbound_allow: tuple[str, ...] = field(default_factory=tuple)
    delivery_timeout: float = 10.0
    delivery_max_attempts: int = 10
    delivery_concurrency: int = 8  # deliveries a notification worker sends at once (one per subscription)
    session_secret: str | None = None
    console_show_names: bool = False
    auth_max_failures: int = 10  # failed API keys per client address or key prefix before a lockout (0: off)
    auth_lockout_seconds: float = 60.0  # the counting window, and how long a lockout lasts
    fhir_max_transaction_entries: int | None = None  # a transaction with conditional entries: most entries
    fhir_max_transaction_updates: int | None = None  # most PUT entries in one transaction
    gbo_reliable_change: float = 2.45  # GBO points of change that count as reliable (GET /plans/{id}/outcomes)

    @cached_property
    def signing_secrets(self) -> tuple[tuple[str, str], ...]:
        """Return every (sender, secret) pair that may sign a team event, the default sender first."""
        pairs = [(DEFAULT_SENDER, s) for s in self.webhook_secrets]
        return tuple(pairs + [(name, s) for name, secrets in self.webhook_senders for s in secrets])

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from environment variables, refusing malformed values."""
        env = os.environ if env is None else env
        secrets = _webhook_secret_list("PLANBRIDGE_WEBHOOK_SECRET", env.get("PLANBRIDGE_WEBHOOK_SECRET", ""))
        base = env.get("FHIR_BASE_URL", "").strip().rstrip("/") or None
        if base and not base.startswith(("http://", "https://")):
            raise ConfigurationError("FHIR_BASE_URL must be an http(s) URL", setting="FHIR_BASE_URL")
        return cls(
            database_url=_database_url(env),
            fhir_base_url=base,
            fhir_timeout=float(_number("FHIR_TIMEOUT", env.get("FHIR_TIMEOUT", "30"), float, 0.1)),
            webhook_secrets=secrets,
            webhook_senders=_webhook_senders(env, secrets),
            api_keys=_api_keys(env),
            mrn_system=_system(env, "PLANBRIDGE_MRN_SYSTEM", cls.mrn_system),
            identifier_base=_system(env, "PLANBRIDGE_IDENTIFIER_BASE", cls.identifier_base).rstrip("/"),
            create_patients=_bool("PLANBRIDGE_CREATE_PATIENTS", env.get("PLANBRIDGE_CREATE_PATIENTS", "false")),
            max_body_bytes=int(
                _number("PLANBRIDGE_MAX_BODY_BYTES", env.get("PLANBRIDGE_MAX_BODY_BYTES", "262144"), int, 1024)
            ),
            outbox_max_attempts=int(
                _number("PLANBRIDGE_OUTBOX_MAX_ATTEMPTS", env.get("PLANBRIDGE_OUTBOX_MAX_ATTEMPTS", "8"), int, 1)
            ),
            fhir_notify_secret=env.get("PLANBRIDGE_FHIR_NOTIFY_SECRET") or None,
            public_url=_public_url(env, cls.public_url),
            resync_seconds=float(
                _number("PLANBRIDGE_RESYNC_SECONDS", env.get("PLANBRIDGE_RESYNC_SECONDS", "900"), float, 0)
            ),
            retain_days=float(_number("PLANBRIDGE_RETAIN_DAYS", env.get("PLANBRIDGE_RETAIN_DAYS", "30"), float, 0)),
            heartbeat_timeout_seconds=float(
                _number(
                    "PLANBRIDGE_HEARTBEAT_TIMEOUT_SECONDS",
                    env.get("PLANBRIDGE_HEARTBEAT_TIMEOUT_SECONDS", "600"),
                    float,
                    1,
                )
            ),
            outbox_lease_seconds=float(
                _number("PLANBRIDGE_OUTBOX_LEASE_SECONDS", env.get("PLANBRIDGE_OUTBOX_LEASE_SECONDS", "120"), float, 1)
            ),
            worker_poll_seconds=float(
                _number("PLANBRIDGE_WORKER_POLL_SECONDS", env.get("PLANBRIDGE_WORKER_POLL_SECONDS", "1"), float, 0.05)
            ),
            push_concurrency=int(
                _number("PLANBRIDGE_PUSH_CONCURRENCY", env.get("PLANBRIDGE_PUSH_CONCURRENCY", "8"), int, 1)
            ),
            log_level=_log_level(env),
            log_format=_choice("PLANBRIDGE_LOG_FORMAT", env.get("PLANBRIDGE_LOG_FORMAT", "json"), ("json", "text")),
            outbound_allow=_outbound_allow(env),
            delivery_timeout=float(
                _number("PLANBRIDGE_DELIVERY_TIMEOUT", env.get("PLANBRIDGE_DELIVERY_TIMEOUT", "10"), float, 0.1)
            ),
            delivery_max_attempts=int(
                _number("PLANBRIDGE_DELIVERY_MAX_ATTEMPTS", env.get("PLANBRIDGE_DELIVERY_MAX_ATTEMPTS", "10"), int, 1)
            ),
            delivery_concurrency=int(
                _number("PLANBRIDGE_DELIVERY_CONCURRENCY", env.get("PLANBRIDGE_DELIVERY_CONCURRENCY", "8"), int, 1)
            ),
            session_secret=_session_secret(env),
            console_show_names=_bool(
                "PLANBRIDGE_CONSOLE_SHOW_NAMES", env.get("PLANBRIDGE_CONSOLE_SHOW_NAMES", "false")
            ),
            auth_max_failures=int(
                _number("PLANBRIDGE_AUTH_MAX_FAILURES", env.get("PLANBRIDGE_AUTH_MAX_FAILURES", "10"), int, 0)
            ),
            fhir_max_transaction_entries=_cap("PLANBRIDGE_FHIR_MAX_TRANSACTION_ENTRIES", env),
            fhir_max_transaction_updates=_cap("PLANBRIDGE_FHIR_MAX_TRANSACTION_UPDATES", env),
            auth_lockout_seconds=float(
                _number("PLANBRIDGE_AUTH_LOCKOUT_SECONDS", env.get("PLANBRIDGE_AUTH_LOCKOUT_SECONDS", "60"), float, 1)
            ),
            gbo_reliable_change=float(
                _number("PLANBRIDGE_GBO_RELIABLE_CHANGE", env.get("PLANBRIDGE_GBO_RELIABLE_CHANGE", "2.45"), float, 0)
            ),
            **_auth(env),
        )
