"""One POST to a checked address: no proxy, no redirects, no retries, a total timeout, TLS checked by host name.

The connection goes to `Target.address` (the address the guard checked), while the Host header, TLS
SNI and certificate check use the URL's host name, so DNS is never asked a second time.
"""

from __future__ import annotations

from dataclasses import dataclass

import certifi
import urllib3

from service.notify.ssrf import Target

MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """What the receiver said: status and the headers a sender acts on (never the body)."""

    status: int
    retry_after: str | None


def _pool(target: Target, timeout: float) -> urllib3.HTTPConnectionPool:
    options = {"timeout": urllib3.Timeout(total=timeout), "retries": False, "maxsize": 1}
    if target.scheme == "https":
        named = target.host != target.address
        return urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            assert_hostname=target.host,
            server_hostname=target.host if named else None,
            **options,
        )
    return urllib3.HTTPConnectionPool(target.address, target.port, **options)


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST body to the target's pinned address; raise urllib3.exceptions.HTTPError on transport failure."""
    pool = _pool(target, timeout)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header},
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=False,
        )
        try:
            response.read(MAX_ANSWER_BYTES)  # read a little so the receiver is not cut off mid-answer
        finally:
            response.release_conn()
        return Answer(response.status, response.headers.get("Retry-After"))
    finally:
        pool.close()
