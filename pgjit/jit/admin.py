"""A small async SQL client for the JIT broker's admin connection.

It runs on pgjit's own protocol client (:func:`pgjit.gateway.upstream.connect_upstream`)
rather than a second driver: no thread pool, every await is trio-cancellable,
and login reuses the gateway's SCRAM / channel binding / TLS code.

Only the simple Query protocol with text results is spoken. ``execute`` reads
everything up to ReadyForQuery; an ErrorResponse becomes :class:`AdminSQLError`
after the server is ready again (and an aborted transaction block is rolled
back, so the connection is always left idle). Anything that leaves the
protocol state unknown — EOF, a transport error, bytes we do not understand,
or the caller being cancelled mid-exchange — closes the connection and raises
:class:`AdminConnectionError` (cancellation re-raises itself); reconnecting is
the caller's job.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping

import trio

from pgjit.protocol import messages as m
from pgjit.protocol.errors import ProtocolError
from pgjit.gateway.transport import TransportClosed
from pgjit.gateway.upstream import UpstreamConnection, connect_upstream, make_upstream_tls_context

log = logging.getLogger("pgjit.jit")

#: Startup parameters of every admin connection. lock_timeout keeps a DROP
#: OWNED that waits on somebody else's lock from holding the admin connection
#: (and so every session's role creation) for long.
DEFAULT_PARAMETERS: dict[str, str] = {
    "application_name": "pgjit-jit-admin",
    "client_encoding": "UTF8",
    "lock_timeout": "1s",
    "statement_timeout": "15s",
}

# Rows of the admin queries are small; this bounds one frame, not the result.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

Row = tuple[str | None, ...]


class AdminSQLError(Exception):
    """PostgreSQL answered a statement with an ErrorResponse."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


class AdminConnectionError(Exception):
    """The admin connection is broken (or was never made); it is closed now."""


class AdminConnection:
    def __init__(self, upstream: UpstreamConnection) -> None:
        self._upstream = upstream
        self._stream = upstream.stream
        self._lock = trio.Lock()
        self._closed = False
        self.transaction_status: bytes = upstream.transaction_status
        self.parameters: dict[str, str] = dict(upstream.parameters)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        database: str,
        user: str,
        password: str | None,
        tls_mode: str = "disable",
        tls_ctx: ssl.SSLContext | None = None,
        server_name: str | None = None,
        *,
        parameters: Mapping[str, str] | None = None,
    ) -> "AdminConnection":
        """Log in (SCRAM/MD5/cleartext/trust, TLS as ``tls_mode`` says).

        Raises :class:`pgjit.errors.UpstreamUnavailable` if the server cannot be
        reached or refuses the login. Wrap in ``trio.fail_after`` for a bound."""
        params = dict(DEFAULT_PARAMETERS)
        if parameters:
            params.update(parameters)
        if tls_mode != "disable" and tls_ctx is None:
            tls_ctx = make_upstream_tls_context(tls_mode, None)  # system CAs for verify-full
        upstream = await connect_upstream(
            host=host,
            port=port,
            database=database,
            user=user,
            password=password,
            parameters=params,
            tls_mode=tls_mode,
            tls_ctx=tls_ctx,
            server_name=server_name,
            max_size=MAX_MESSAGE_SIZE,
        )
        return cls(upstream)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backend_pid(self) -> int | None:
        key = self._upstream.backend_key
        return key.process_id if key is not None else None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self._stream.transport
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(1):
                    await transport.send_all(m.Terminate().encode())
            except Exception:
                pass
            try:
                await transport.aclose()
            except Exception:
                pass

    async def _abandon(self) -> None:
        """Close without saying goodbye (the protocol state is unknown).
        Shielded: this runs in ``finally`` blocks of cancelled exchanges."""
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                await self._stream.transport.aclose()  # bounded for TLS, immediate for TCP
            except Exception:
                pass

    async def execute(self, sql: str, *, timeout: float | None = None) -> list[Row]:
        """Run ``sql`` (one or several statements) with the simple Query
        protocol; return the rows of the last statement (text values, None for
        NULL; ``[]`` if it returns no rows). ``timeout`` bounds the exchange
        once the connection is ours (waiting for the lock is not counted);
        when it expires the connection is closed and AdminConnectionError is
        raised."""
        async with self._lock:
            if self._closed:
                raise AdminConnectionError("the admin connection is closed")
            if timeout is None:
                return await self._exchange(sql)
            with trio.move_on_after(timeout) as scope:
                return await self._exchange(sql)
            assert scope.cancelled_caught
            raise AdminConnectionError(f"the admin statement did not finish within {timeout:g} s")

    async def _exchange(self, sql: str) -> list[Row]:
        try:
            query = m.Query(sql).encode()
        except UnicodeEncodeError as e:
            raise ValueError("SQL text is not valid Unicode") from e
        done = False
        try:
            await self._stream.send(query)
            rows, error = await self._read_results()
            if error is not None:
                if self.transaction_status != b"I":
                    # "BEGIN; …; COMMIT" failed half-way: the statements after
                    # the error (COMMIT included) were skipped.
                    await self._rollback()
                raise error
            done = True
            return rows
        except AdminSQLError:
            done = True
            raise
        except (EOFError, TransportClosed, ProtocolError) as e:
            raise AdminConnectionError(f"the admin connection broke: {e}") from None
        finally:
            if not done:
                # Cancelled or broken mid-exchange: the protocol state is unknown.
                await self._abandon()

    async def _rollback(self) -> None:
        await self._stream.send(m.Query("ROLLBACK").encode())
        _rows, error = await self._read_results()
        if error is not None:  # pragma: no cover - ROLLBACK does not fail
            raise error

    async def _read_results(self) -> tuple[list[Row], AdminSQLError | None]:
        rows: list[Row] = []
        last: list[Row] = []
        in_result = False
        error: AdminSQLError | None = None
        fatal = False
        while True:
            try:
                tag, body = await self._stream.read_frame()
            except EOFError:
                if error is not None and fatal:
                    # The server said why before hanging up (e.g. terminated).
                    raise AdminConnectionError(f"the admin connection was closed by the server: {error}") from None
                raise
            if tag == b"D":
                if in_result:
                    values = m.DataRow.decode(body).values
                    rows.append(tuple(None if v is None else v.decode("utf-8", "replace") for v in values))
            elif tag == b"T":
                rows = []
                in_result = True
            elif tag == b"C":
                last = rows if in_result else []
                rows = []
                in_result = False
            elif tag == b"I":  # EmptyQueryResponse
                last = []
            elif tag == b"E":
                err = m.ErrorResponse.decode(body)
                sev = err.severity or "ERROR"
                fatal = sev in ("FATAL", "PANIC")
                if error is None:
                    error = AdminSQLError(err.sqlstate or "XX000", err.message or "", err.get("D"))
            elif tag == b"Z":
                self.transaction_status = m.ReadyForQuery.decode(body).status
                if error is not None and fatal:
                    await self._abandon()
                return last, error
            elif tag == b"N":
                notice = m.NoticeResponse.decode(body)
                log.debug("admin notice", extra={"sqlstate": notice.sqlstate, "notice": notice.message})
            elif tag == b"S":
                ps = m.ParameterStatus.decode(body)
                self.parameters[ps.name] = ps.value
            elif tag == b"A":
                continue
            elif tag == b"G":  # CopyInResponse: we never send COPY data
                await self._stream.send(m.CopyFail("pgjit admin connection does not do COPY").encode())
            elif tag in (b"H", b"W", b"d", b"c"):  # COPY out: drain
                continue
            else:
                raise ProtocolError(f"unexpected message {tag!r} on the admin connection")


__all__ = ["AdminConnection", "AdminConnectionError", "AdminSQLError", "DEFAULT_PARAMETERS"]
