"""Errors a client can see.

Every error pgjit reports to a client is one of these exceptions. Each carries
its SQLSTATE and severity; :func:`pgjit.protocol.messages.ErrorResponse.from_error`
turns it into the wire message in exactly one place (the session), so a client
never sees a Python traceback.
"""

from __future__ import annotations


class PgjitError(Exception):
    """An error with a SQLSTATE, shown to the client as an ErrorResponse."""

    sqlstate = "XX000"
    severity = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
        severity: str | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        self.position = position  # 1-based character offset in the statement
        if sqlstate is not None:
            self.sqlstate = sqlstate
        if severity is not None:
            self.severity = severity

    @property
    def fatal(self) -> bool:
        return self.severity in ("FATAL", "PANIC")


class FatalError(PgjitError):
    """Ends the session after the error is sent."""

    severity = "FATAL"


class ProtocolViolation(FatalError):
    """Malformed bytes from a peer (08P01)."""

    sqlstate = "08P01"


class InvalidAuthorization(FatalError):
    """Bad credentials or no access (28000)."""

    sqlstate = "28000"


class InvalidPassword(FatalError):
    """The password (token) was refused (28P01)."""

    sqlstate = "28P01"


class UpstreamUnavailable(FatalError):
    """The upstream server could not be reached or refused us (08006)."""

    sqlstate = "08006"


class AdminShutdown(FatalError):
    """The gateway is shutting down (57P01)."""

    sqlstate = "57P01"


class TooManyConnections(FatalError):
    """The gateway's client limit is reached (53300)."""

    sqlstate = "53300"


class FeatureNotSupported(PgjitError):
    """A protocol feature pgjit refuses to relay (0A000)."""

    sqlstate = "0A000"


class InsufficientPrivilege(PgjitError):
    """A policy denial (42501)."""

    sqlstate = "42501"


class QueryCanceled(PgjitError):
    """A statement that waited and was not run: its approval hold timed out or was withdrawn (57014)."""

    sqlstate = "57014"


class SyntaxErrorSQL(PgjitError):
    """A statement pgjit cannot parse (42601); it is never forwarded."""

    sqlstate = "42601"


class AuditUnavailableError(PgjitError):
    """A statement that cannot be recorded does not run (audit.on_store_failure: fail_closed)."""

    sqlstate = "58000"
