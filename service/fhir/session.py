"""The FHIR client's HTTP session: requests' Session, with per host what requests does per request.

Moved out of service/fhir/client.py, which sends through it (`FhirClient.session`).
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.cookies import RequestsCookieJar
from requests.hooks import default_hooks
from requests.sessions import merge_hooks
from requests.structures import CaseInsensitiveDict
from requests.utils import get_netrc_auth


class _Session(requests.Session):
    """A requests Session that does per host what requests does per request, and prepares a request in fewer steps.

    requests re-reads os.environ and the proxy bypass list (~0.2 ms), and looks for a ~/.netrc, on every request;
    this session reads the environment's proxy and CA settings once per scheme and host, and the netrc entry once
    per scheme and host (a change to either is seen by a new process). `request` prepares a call such as
    FhirClient makes (a bytes body or none, headers, params, a timeout) itself, with requests' own steps for
    what it keeps (method, URL, headers, body, auth, hooks), none for what is empty (no cookies), and the URL of
    a (url, params) prepared once: what `Session.prepare_request` builds, in about a third of its time. Any other
    call, or a session holding cookies or params of its own, goes through requests as it comes. Either way the
    request is sent by `Session.send` (redirects, hooks, cookies from the answer, the mounted adapter)."""

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[str, str, bool | None], dict[str, Any]] = {}
        self._netrc: dict[tuple[str, str], tuple[str, str] | None] = {}

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if proxies or verify is not None or cert is not None or not isinstance(url, str):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream)
        found = self._environment.get(key)
        if found is None:
            found = self._environment[key] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        return {**found, "proxies": dict(found["proxies"])}

    def netrc_auth(self, url: str) -> tuple[str, str] | None:
        """Return the ~/.netrc (or $NETRC) credentials for the URL's host, as requests finds them; read once per
        scheme and host."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._netrc:
            self._netrc[key] = get_netrc_auth(url)
        return self._netrc[key]

    def request(  # type: ignore[override]  # the same call; what it does not take goes to requests
        self,
        method: str,
        url: Any,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        *args: Any,
        timeout: Any = None,
        **more: Any,
    ) -> requests.Response:
        """Send a request as `requests.Session.request` does (see the class's docstring)."""
        if (
            args
            or more
            or not isinstance(url, str)
            or not (data is None or isinstance(data, bytes))
            or not (headers is None or isinstance(headers, dict))
            or self.params
            or len(self.cookies)
        ):
            return super().request(method, url, params, data, headers, *args, timeout=timeout, **more)
        prepared = self._prepare(method, url, params, data, headers)
        settings = self.merge_environment_settings(prepared.url, {}, None, None, None)
        return self.send(prepared, timeout=timeout, allow_redirects=True, **settings)

    def _prepare(
        self, method: str, url: str, params: Any, data: bytes | None, headers: dict[str, Any] | None
    ) -> requests.PreparedRequest:
        """What `prepare_request` makes of this call, in the order it makes it, for a session without cookies."""
        prepared = requests.PreparedRequest()
        prepared.prepare_method(method.upper())
        prepared.url, userinfo = _prepared_url(url, params)
        merged = CaseInsensitiveDict(self.headers)
        merged.update(headers or {})
        for name in [name for name, value in merged.items() if value is None]:
            del merged[name]
        prepared.prepare_headers(merged)
        prepared._cookies = RequestsCookieJar()  # type: ignore[attr-defined]  # what a redirect copies; no Cookie
        prepared.prepare_body(data or {}, None)
        auth = self.auth
        if not auth and self.trust_env:
            auth = self.netrc_auth(url) or auth
        if auth or userinfo:  # with neither, prepare_auth finds nothing to do
            prepared.prepare_auth(auth, url)
        prepared.prepare_hooks(merge_hooks(default_hooks(), self.hooks))
        return prepared


def _url_of(url: str, params: Any) -> tuple[str, bool]:
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, params)
    assert prepared.url is not None
    return prepared.url, "@" in urlsplit(prepared.url).netloc


@functools.lru_cache(maxsize=512)
def _prepared_url_of(url: str, params: tuple[tuple[str, str], ...] | None) -> tuple[str, bool]:
    return _url_of(url, list(params) if params is not None else None)


def _prepared_url(url: str, params: Any) -> tuple[str, bool]:
    """Return the URL requests sends for (url, params) and whether it carries user info (prepare_url's answer
    depends on nothing else, so the last 512 are kept)."""
    if not params:
        return _prepared_url_of(url, None)
    items = tuple(params.items()) if isinstance(params, dict) else params
    if isinstance(items, (list, tuple)) and all(
        type(item) is tuple and len(item) == 2 and type(item[0]) is str and type(item[1]) is str for item in items
    ):
        return _prepared_url_of(url, tuple(items))
    return _url_of(url, params)  # anything else, as requests takes it, each time
