"""A byte-exact protocol client for the red-team suite.

The same client talks to the bare PostgreSQL (SCRAM-SHA-256 login as the
superuser) and to the gateway (cleartext password), so an attack is sent the
same way on both sides: each statement as a simple Query, or as
Parse/Bind/Describe/Execute/Sync, with its bytes untouched (the lexer attacks
need bytes that no client library would send as they are).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import scramp

from pgjit.protocol import messages as m
from tests.rawclient import RawClient

REFUSAL_SQLSTATES = ("42501", "42601", "0A000")


@dataclass
class StatementResult:
    statement: bytes
    errors: list[m.ErrorResponse] = field(default_factory=list)
    data: bytes = b""  # every DataRow value and CopyData payload, joined
    closed: bool = False  # the peer closed the connection (FATAL or otherwise)

    @property
    def refused(self) -> bool:
        """An error with one of the SQLSTATEs a refusal carries, or a FATAL/closed session."""
        if self.closed:
            return True
        return any(e.sqlstate in REFUSAL_SQLSTATES or e.severity in ("FATAL", "PANIC") for e in self.errors)

    @property
    def denied_before_server(self) -> bool:
        """pgjit refused it (an ERROR of its own, or a refused login): it never reached the server.
        A FATAL after the fact (pgjit closing a session whose lexer state changed) does not count."""
        if self.statement.startswith(b"<login"):
            return self.closed
        return bool(self.errors) and all(
            e.severity == "ERROR" and e.sqlstate in REFUSAL_SQLSTATES and "policy rule" in (e.message or "")
            for e in self.errors)

    @property
    def by_pgjit(self) -> bool:
        return any("pgjit" in (e.message or "") or "policy rule" in (e.message or "") for e in self.errors)

    def describe(self) -> str:
        errs = "; ".join(f"{e.severity} {e.sqlstate}: {e.message}" for e in self.errors)
        return f"{self.statement[:70]!r} -> {'closed ' if self.closed else ''}{errs or 'ok'}"


class WireClient(RawClient):
    """RawClient with a SCRAM login, statement runners and result collection."""

    def login_any(self, user: str, database: str, password: str, **params: str) -> list[m.Message]:
        """Log in with cleartext, MD5-less SCRAM-SHA-256 or trust; returns the messages up to
        ReadyForQuery or the first ErrorResponse."""
        self.send(m.StartupMessage({"user": user, "database": database, **params}, m.PROTOCOL_3_0))
        out: list[m.Message] = []
        scram = None
        while True:
            msg = self.read_message()
            out.append(msg)
            if isinstance(msg, m.AuthenticationCleartextPassword):
                self.send(m.frame(b"p", password.encode() + b"\x00"))
            elif isinstance(msg, m.AuthenticationSASL):
                client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
                first = client.get_client_first().encode()
                self.send(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
                scram = client
            elif isinstance(msg, m.AuthenticationSASLContinue):
                assert scram is not None
                scram.set_server_first(msg.data.decode())
                self.send(m.frame(b"p", scram.get_client_final().encode()))
            elif isinstance(msg, m.AuthenticationSASLFinal):
                assert scram is not None
                scram.set_server_final(msg.data.decode())
            elif isinstance(msg, (m.ReadyForQuery, m.ErrorResponse)):
                return out

    def _collect(self, stmt: bytes, timeout: float) -> StatementResult:
        res = StatementResult(stmt)
        chunks: list[bytes] = []
        try:
            while True:
                msg = self.read_message(timeout)
                if isinstance(msg, m.ErrorResponse):
                    res.errors.append(msg)
                    if msg.severity in ("FATAL", "PANIC"):
                        res.closed = True
                        break
                elif isinstance(msg, m.DataRow):
                    chunks.extend(v for v in msg.values if v is not None)
                elif isinstance(msg, m.CopyData):
                    chunks.append(msg.data)
                elif isinstance(msg, m.CopyInResponse):
                    self.send(m.frame(b"f", b"red team: no data\x00"))  # CopyFail
                elif isinstance(msg, m.ReadyForQuery):
                    break
        except (EOFError, ConnectionError, OSError):
            res.closed = True
        res.data = b"\n".join(chunks)
        return res

    def simple(self, stmt: bytes, timeout: float = 20) -> StatementResult:
        try:
            self.send(m.frame(b"Q", stmt + b"\x00"))
        except OSError:
            return StatementResult(stmt, closed=True)
        return self._collect(stmt, timeout)

    def extended(self, stmt: bytes, timeout: float = 20) -> StatementResult:
        parse = m.frame(b"P", b"\x00" + stmt + b"\x00" + b"\x00\x00")
        try:
            self.send(parse, m.Bind("", ""), m.Describe(b"P", ""), m.Execute(""), m.Sync())
        except OSError:
            return StatementResult(stmt, closed=True)
        return self._collect(stmt, timeout)
