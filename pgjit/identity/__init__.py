"""Who the client is: OIDC token verification, the JWKS cache, a developer issuer.

This package never opens sockets on its own: fetching discovery documents and
JWKS is done by a ``fetch(url) -> bytes`` callable handed to
:class:`TokenVerifier` (see :func:`pgjit.identity.http.make_fetcher` for the
default one).
"""

from pgjit.identity.oidc import (
    DEFAULT_ALGORITHMS,
    FetchFn,
    Identity,
    JWKSFetchError,
    OIDCConfig,
    OIDCConfigError,
    TokenVerifier,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "FetchFn",
    "Identity",
    "JWKSFetchError",
    "OIDCConfig",
    "OIDCConfigError",
    "TokenVerifier",
]
