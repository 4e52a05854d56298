"""The default fetcher for OIDC discovery documents and JWKS.

:class:`pgjit.identity.oidc.TokenVerifier` never does I/O itself; it calls a
``fetch(url) -> bytes`` function. This module provides one built on urllib:

* ``https://`` URLs, with certificate verification;
* ``http://`` only for loopback hosts (``127.0.0.1``, ``localhost``, ``::1``),
  for a developer issuer on the same machine; never through a proxy;
* ``file://`` URLs for a JWKS kept in a local file;
* a timeout on every request, a cap on the body size, and redirects only to
  URLs that obey the same rules (so an https endpoint cannot redirect to http).

It is synchronous and blocking; the gateway calls it from a worker thread.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

__all__ = ["FetchError", "LOOPBACK_HOSTS", "check_url", "fetch_url", "make_fetcher"]

LOOPBACK_HOSTS: Final[frozenset[str]] = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_MAX_BYTES: Final = 1 << 20


class FetchError(Exception):
    """A URL could not be fetched; the message says why (and never holds secrets)."""


def check_url(url: str) -> urllib.parse.SplitResult:
    """Parse ``url`` and refuse schemes and hosts the fetcher will not use."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "https":
        if not host:
            raise FetchError(f"URL {url!r} has no host")
        return parts
    if scheme == "http":
        if host not in LOOPBACK_HOSTS:
            raise FetchError(
                f"refusing to fetch {url!r} over plain http; use https "
                "(http is allowed only for 127.0.0.1 / localhost)"
            )
        return parts
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"file URL {url!r} must name a local path")
        return parts
    raise FetchError(f"refusing to fetch {url!r}: only https, loopback http and file URLs are supported")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only if its target passes :func:`check_url`."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        target = urllib.parse.urljoin(req.full_url, newurl)
        if urllib.parse.urlsplit(target).scheme.lower() == "file":
            raise FetchError(f"{req.full_url} redirected to a file URL; refused")
        check_url(target)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_limited(stream: IO[bytes], url: str, max_bytes: int) -> bytes:
    body = stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise FetchError(f"{url} returned more than {max_bytes} bytes")
    return body


def _fetch_file(parts: urllib.parse.SplitResult, url: str, max_bytes: int) -> bytes:
    path = Path(urllib.request.url2pathname(urllib.parse.unquote(parts.path)))
    try:
        with path.open("rb") as stream:
            return _read_limited(stream, url, max_bytes)
    except OSError as exc:
        raise FetchError(f"could not read {path}: {exc.strerror or exc}") from None


def fetch_url(url: str, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Fetch ``url`` and return its body, or raise :class:`FetchError`."""
    parts = check_url(url)
    if parts.scheme.lower() == "file":
        return _fetch_file(parts, url, max_bytes)
    handlers: list[urllib.request.BaseHandler] = [_CheckedRedirects()]
    if parts.hostname in LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))  # never send loopback traffic to a proxy
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "pgjit-oidc"}, method="GET"
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            status = getattr(response, "status", 200)
            if status != 200:
                raise FetchError(f"{url} answered HTTP {status}")
            return _read_limited(response, url, max_bytes)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise FetchError(f"{url} did not answer within {timeout:g}s") from None
        raise FetchError(f"could not reach {url}: {reason}") from None
    except TimeoutError:
        raise FetchError(f"{url} did not answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"could not fetch {url}: {exc or type(exc).__name__}") from None


def make_fetcher(
    *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES
) -> Callable[[str], bytes]:
    """A ``fetch(url) -> bytes`` for :class:`~pgjit.identity.oidc.TokenVerifier`."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")

    def fetch(url: str) -> bytes:
        return fetch_url(url, timeout=timeout, max_bytes=max_bytes)

    return fetch
