"""How a client proves who it is: the one seam the OIDC issue replaces.

A ``ClientAuthenticator`` runs the authentication exchange with the client
(on the session's client stream) and returns a :class:`Principal`, or raises a
28000/28P01 FATAL error. Nothing reaches the upstream server before it returns.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pgjit.errors import InvalidAuthorization, ProtocolViolation
from pgjit.protocol import messages as m

if TYPE_CHECKING:  # pragma: no cover
    from pgjit.session import Session


@dataclass(frozen=True)
class Principal:
    """Who is behind a session, as far as pgjit knows."""

    user: str
    groups: frozenset[str] = field(default_factory=frozenset)
    subject: str | None = None


class ClientAuthenticator(Protocol):
    async def authenticate(self, session: "Session", startup: m.StartupMessage) -> Principal: ...


def is_loopback(peer: object) -> bool:
    host = peer[0] if isinstance(peer, tuple) and peer else None
    if host is None:
        return isinstance(peer, str)  # a unix socket path is local
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def request_password(session: "Session") -> str:
    """Ask the client for a cleartext password and return it."""
    await session.client_stream.send(m.AuthenticationCleartextPassword())
    tag, body = await session.client_stream.read_frame()
    if tag != b"p":
        raise ProtocolViolation(f"expected a password message, got {tag!r}")
    return m.PasswordMessage(body).password


class LoopbackAnyPassword:
    """Development mode: accept any password, from loopback clients only."""

    async def authenticate(self, session: "Session", startup: m.StartupMessage) -> Principal:
        if not is_loopback(session.peer):
            raise InvalidAuthorization(
                "pgjit accepts password logins without OIDC only from loopback clients",
                hint="configure the oidc section to accept remote clients",
            )
        await request_password(session)  # any password; never logged
        return Principal(user=startup.parameters.get("user", ""))
