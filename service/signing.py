"""Standard Webhooks signing and verification (https://www.standardwebhooks.com/), via `standardwebhooks`."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.domain.errors import PlanbridgeError

DEFAULT_SENDER = "default"  # the sender whose secrets are PLANBRIDGE_WEBHOOK_SECRET
TOLERANCE = timedelta(minutes=5)  # how far off a timestamp may be, as the standardwebhooks package has it


class SignatureInvalid(PlanbridgeError):
    """The request is not signed by any of the configured secrets (or its timestamp is off)."""

    code = "signature-invalid"


def new_secret() -> str:
    """Return a fresh `whsec_` secret (24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _signature_of_bytes(secret: str, msg_id: str, timestamp: int, body: bytes) -> bytes:
    """HMAC-SHA256 of `{id}.{timestamp}.{body}` over the raw bytes, keyed as the package keys it."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign_headers(secret: str, body: bytes, msg_id: str | None = None, at: datetime | None = None) -> dict[str, str]:
    """Return the three webhook-* headers that sign `body` (any bytes: a body that is not UTF-8 too)."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    try:
        signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body.decode("utf-8"))
    except UnicodeDecodeError:
        raw = _signature_of_bytes(secret, msg_id, math.floor(at.timestamp()), body)
        signature = f"v1,{base64.b64encode(raw).decode()}"
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


def _verify_bytes(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Verify a body that is not UTF-8 (which the package cannot take) the way the package verifies text:
    a valid signature then lets the body be refused for what it is (400), not as unsigned (401)."""
    try:
        at = datetime.fromtimestamp(float(headers["webhook-timestamp"]), tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise WebhookVerificationError("Invalid Signature Headers") from None
    now = datetime.now(UTC)
    if not now - TOLERANCE <= at <= now + TOLERANCE:
        raise WebhookVerificationError(f"Message timestamp too {'old' if at < now else 'new'}")
    expected = _signature_of_bytes(secret, headers["webhook-id"], math.floor(at.timestamp()), body)
    for versioned in headers["webhook-signature"].split(" "):
        version, signature = versioned.split(",")
        if version == "v1" and hmac.compare_digest(expected, base64.b64decode(signature)):
            return
    raise WebhookVerificationError("No matching signature found")


@functools.lru_cache(maxsize=256)
def _webhook(secret: str) -> Webhook:
    """The package's verifier for a secret, built once (it decodes the secret's base64 each time it is built)."""
    return Webhook(secret)


def verify(secrets_: Iterable[str], body: bytes, headers: Mapping[str, str]) -> str:
    """Return the webhook id if any secret's signature matches; raise SignatureInvalid otherwise."""
    return verify_sender(((DEFAULT_SENDER, s) for s in secrets_), body, headers)[1]


def verify_sender(senders: Iterable[tuple[str, str]], body: bytes, headers: Mapping[str, str]) -> tuple[str, str]:
    """Return (sender, webhook id) for the first (sender, secret) pair whose signature matches.

    A sender may have several active secrets (so keys can rotate); the secret that verifies names the
    sender, since no two senders share one. Raise SignatureInvalid when none matches.
    """
    wanted = {k.lower(): v for k, v in headers.items() if k.lower().startswith("webhook-")}
    if not {"webhook-id", "webhook-timestamp", "webhook-signature"} <= wanted.keys():
        raise SignatureInvalid("webhook-id, webhook-timestamp and webhook-signature headers are required")
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None  # verified over the bytes; the caller refuses the body itself (400)
    reason = "no signature matches"
    for sender, secret in senders:
        try:
            if text is None:
                _verify_bytes(secret, body, wanted)
            else:
                _webhook(secret).verify(text, wanted, json_parse=False)
            return sender, wanted["webhook-id"]
        except WebhookVerificationError as exc:
            reason = str(exc)
            if "timestamp" in reason.lower() or "headers" in reason.lower():
                break  # the same for every secret
        except (ValueError, TypeError):  # malformed signature list or base64
            reason = "malformed webhook-signature header"
            break
    raise SignatureInvalid(f"signature rejected: {reason}")
