"""How a client proves who it is: the one seam the OIDC issue replaces.

A ``ClientAuthenticator`` runs the authentication exchange with the client
(on the session's client stream) and returns a :class:`Principal`, or raises a
28000/28P01 FATAL error. Nothing reaches the upstream server before it returns.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pgjit.errors import InvalidAuthorization, ProtocolViolation
from pgjit.protocol import messages as m

if TYPE_CHECKING:  # pragma: no cover
    from pgjit.gateway.transport import Transport
    from pgjit.gateway.upstream import MessageStream


class ClientSide(Protocol):
    """What authenticating needs of a session: its client's connection."""

    client: "Transport"
    client_stream: "MessageStream"
    peer: object


@dataclass(frozen=True)
class Principal:
    """Who is behind a session, as far as pgjit knows."""

    user: str
    groups: frozenset[str] = field(default_factory=frozenset)
    subject: str | None = None
    expires_at: float | None = None  # when the credential (token) stops being valid


class ClientAuthenticator(Protocol):
    async def authenticate(self, session: ClientSide, startup: m.StartupMessage) -> Principal: ...


def is_loopback(peer: object) -> bool:
    host = peer[0] if isinstance(peer, tuple) and peer else None
    if host is None:
        return isinstance(peer, str)  # a unix socket path is local
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def request_password(session: ClientSide) -> str:
    """Ask the client for a cleartext password and return it."""
    await session.client_stream.send(m.AuthenticationCleartextPassword())
    tag, body = await session.client_stream.read_frame()
    if tag != b"p":
        raise ProtocolViolation(f"expected a password message, got {tag!r}")
    return m.PasswordMessage(body).password


class LoopbackAnyPassword:
    """Development mode: accept any password, from loopback clients only."""

    async def authenticate(self, session: ClientSide, startup: m.StartupMessage) -> Principal:
        if not is_loopback(session.peer):
            raise InvalidAuthorization(
                "pgjit accepts password logins without OIDC only from loopback clients",
                hint="configure the oidc section to accept remote clients",
            )
        await request_password(session)  # any password; never logged
        return Principal(user=startup.parameters.get("user", ""))


log = logging.getLogger("pgjit.auth")


class OIDCAuthenticator:
    """The password is an OIDC token: verified (signature through JWKS, iss,
    aud, exp, nbf, iat) before anything else happens for the session.

    The token travels as a cleartext password, so it is only asked for over
    TLS, or from loopback when ``allow_insecure_loopback`` is set.
    """

    def __init__(self, verifier, *, allow_insecure_loopback: bool = False) -> None:
        self.verifier = verifier  # pgjit.identity.TokenVerifier
        self.allow_insecure_loopback = allow_insecure_loopback

    async def authenticate(self, session: ClientSide, startup: m.StartupMessage) -> Principal:
        import trio

        if not session.client.tls and not (self.allow_insecure_loopback and is_loopback(session.peer)):
            raise InvalidAuthorization(
                "pgjit accepts tokens only over TLS",
                hint="connect with sslmode=require (or verify-full)",
            )
        token = await request_password(session)
        startup_user = startup.parameters.get("user", "")
        # The verifier may fetch the issuer's JWKS: keep that off the event loop.
        identity = await trio.to_thread.run_sync(self.verifier.verify, token, startup_user)
        log.info("token verified", extra={"user": identity.user, "groups": ",".join(sorted(identity.groups))})
        return Principal(
            user=identity.user,
            groups=identity.groups,
            subject=identity.subject,
            expires_at=identity.expires_at,
        )
