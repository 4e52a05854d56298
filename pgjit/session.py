"""One client session: startup, authentication, upstream login, then the relay.

The relay runs two tasks, one per direction. Each reads what its socket has,
finds frame boundaries with the codec's ``scan_watched``, looks only at the few
message types it must (everything else is forwarded as raw bytes), and sends
the whole batch with one write.

Replies the gateway makes up itself (refusing a FunctionCall now; policy
denials later) must reach the client in order with the server's replies and
leave the upstream transaction exactly as an error would. pgjit therefore never
writes such a reply itself mid-stream: it replaces the refused message by a
``Bind`` to a prepared statement that does not exist, whose name is a random
marker. The server answers with its own 26000 error at exactly the right place
(and aborts the transaction or skips to Sync, as for any error); the
server-to-client task swaps that error for pgjit's. The pending markers are the
session's queue of made-up replies.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import secrets
import ssl
import struct
import time
from typing import TYPE_CHECKING

import trio

from pgjit import logs, metrics
from pgjit.clientauth import Principal
from pgjit.errors import (
    AdminShutdown,
    FatalError,
    FeatureNotSupported,
    InsufficientPrivilege,
    InvalidAuthorization,
    InvalidPassword,
    PgjitError,
    ProtocolViolation,
    SyntaxErrorSQL,
    TooManyConnections,
    UpstreamUnavailable,
)
from pgjit.jit.naming import quote_ident, quote_literal
from pgjit.lexstate import lexer_state_problem
from pgjit.policy import ParseFailure
from pgjit.policy.facts import merge_facts
from pgjit.policy.gate import statement_fingerprint
from pgjit.policy.model import prepared_facts
from pgjit.protocol import messages as m
from pgjit.protocol.framing import scan_watched
from pgjit.transport import SocketTransport, Transport, TransportClosed, start_tls
from pgjit.upstream import MessageStream, UpstreamConnection, connect_upstream, send_cancel

if TYPE_CHECKING:  # pragma: no cover
    from pgjit.server import Gateway

log = logging.getLogger("pgjit.session")

_U32 = struct.Struct("!I")

# Frontend tags.
F_QUERY, F_SYNC, F_FUNCTION_CALL, F_TERMINATE, F_PARSE = b"Q"[0], b"S"[0], b"F"[0], b"X"[0], b"P"[0]
F_EXECUTE, F_COPY_DONE, F_COPY_FAIL = b"E"[0], b"c"[0], b"f"[0]
# Backend tags.
B_READY, B_ERROR, B_DATA_ROW, B_COPY_DATA = b"Z"[0], b"E"[0], b"D"[0], b"d"[0]
B_PARAMETER_STATUS = b"S"[0]
B_COPY_IN = b"G"[0]

# Backend messages that may stream through unbuffered when split across reads.
_STREAMABLE = frozenset((B_DATA_ROW, B_COPY_DATA))
_STREAM_THRESHOLD = 64 * 1024
# Upstream messages may be as large as PostgreSQL allows (1 GB field + header).
_MAX_BACKEND_MESSAGE = (1 << 30) + (1 << 20)

# After a Terminate, how long the relay waits for the server to close once no
# reply is due any more.
_DRAIN_GRACE = 1.0

# Statements deallocated (perhaps: the server may have refused it) whose facts
# are kept, most recent first out last.
_DEALLOCATED_KEPT = 64

# A token must leave its JIT role at least this long to log in with.
_MIN_ROLE_SECONDS = 1.0

# Startup parameters that are not server settings (or are checked otherwise).
_STARTUP_NOT_SETTINGS = frozenset(("user", "database", "replication", "options", "application_name"))

# Startup parameters pgjit sets itself or refuses; never forwarded as given.
_NOT_FORWARDED = frozenset(("user", "database", "replication"))


class Phase(enum.Enum):
    STARTUP = "startup"
    AUTH = "auth"
    UPSTREAM = "upstream"
    RELAY = "relay"
    CLOSED = "closed"


class Session:
    def __init__(self, gateway: "Gateway", client: Transport, peer: object) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.id = secrets.token_hex(8)
        self.peer = peer
        self.client = client
        self.client_stream = MessageStream(client, self.config.limits.max_message_size, startup=True)
        self.phase = Phase.STARTUP
        self.principal: Principal | None = None
        self.database: str | None = None
        self.upstream: UpstreamConnection | None = None
        # The cancel key the client gets: pgjit's own secret, and (once
        # connected) the upstream's process id.
        self.key = gateway.new_cancel_key(self)
        # ReadyForQuery accounting and transaction status. The reactor swaps
        # in its C core's counters (same fields) while it relays the session.
        self.ctr: RelayCounters = RelayCounters()
        # Relay state (see from_client / from_server).
        self._c_pending: bytearray | None = None  # an incomplete client frame
        self._c_buffered = 0  # its bytes, as counted in gateway.buffered
        # COPY FROM STDIN and the Syncs it swallows (see _count): CopyInResponses
        # whose CopyDone has not come, and CopyDones not yet known to end a COPY
        # (the ReadyForQuery count before their run of Syncs, its length).
        self._copy_ins = 0
        self._copy_ends: collections.deque[tuple[int, int]] = collections.deque()
        self._c_watch = _FRONTEND_WATCH
        self._s_pending: bytearray | None = None  # an incomplete server frame
        self._s_skip = 0  # bytes of a large streamable message still to pass through
        # marker -> (error to show, index of the ReadyForQuery that ends its pipeline)
        self._rewrites: dict[str, tuple[PgjitError, int]] = {}
        self._client_mid_message = False
        self._tls_handshake = False  # between our "S" and a finished TLS handshake
        self.counted_starting = False  # counted in gateway.starting (set by the accept loop)
        self._relay_scope: trio.CancelScope | None = None
        self._scope: trio.CancelScope | None = None
        self._terminate_error: PgjitError | None = None
        # Set when the server reported a lexer state the gate does not model:
        # nothing more of the client's goes upstream (see from_server).
        self.halted = False
        # Set when the client's Terminate went upstream: the client is not read
        # again, and the relay ends when the server closes its side.
        self.terminating = False
        self.end_reason = "ok"
        self.started = time.monotonic()
        self.gate = None  # pgjit.policy.gate.Gate of the target, when it has a policy
        self.groups: frozenset[str] = frozenset()
        self.prepared: dict[str, object] = {}  # prepared-statement name -> Analysis/Facts
        self._deallocated: collections.OrderedDict[str, None] = collections.OrderedDict()  # see _track_prepared
        # Functions and operators this session created, which the target's
        # catalog snapshot may not show yet (or, inside its transaction, ever).
        self.overlay: dict[str, object] = {}
        self.jit_role = None  # pgjit.jit.JitRole of this session, once created
        self.broker = None
        self.ends_at: float | None = None  # wall-clock end (token expiry / max_session)
        self.end_message = ""

    # ------------------------------------------------------------------ state

    @property
    def idle(self) -> bool:
        """At rest between transactions: nothing in flight, no open transaction."""
        if self.phase is not Phase.RELAY:
            return True  # nothing of the client's is running yet (or any more)
        ctr = self.ctr
        return ctr.rfq_sent == ctr.rfq_received and ctr.txn_status == b"I"

    def terminate(self, error: PgjitError) -> None:
        """End the session with ``error`` (e.g. 57P01 at shutdown)."""
        if self._terminate_error is None:
            self._terminate_error = error
        if self._scope is not None:
            self._scope.cancel()

    # ------------------------------------------------------------------ main

    async def run(self) -> None:
        token = logs.session_id.set(self.id)
        metrics.SESSIONS_ACTIVE.inc()
        try:
            with trio.CancelScope() as self._scope:
                if self._terminate_error is not None:
                    self._scope.cancel()
                await self._run()
            if self._terminate_error is not None:
                raise self._terminate_error
        except PgjitError as e:
            self.end_reason = _outcome(e)
            if e.fatal:
                log.info(
                    "session refused",
                    extra={
                        "sqlstate": e.sqlstate,
                        "reason": e.message,
                        "phase": self.phase.value,
                        "user": self.principal.user if self.principal is not None else None,
                    },
                )
            await self._send_error(e)
        except (EOFError, TransportClosed):
            self.end_reason = "client_gone" if self.phase is not Phase.RELAY else self.end_reason
        except trio.TooSlowError:
            err = _timeout_error(self.phase)
            self.end_reason = "timeout"
            log.info("phase timed out", extra={"phase": self.phase.value})
            await self._send_error(err)
        except Exception:
            self.end_reason = "internal_error"
            log.exception("internal error")
            await self._send_error(
                FatalError(f"internal error in pgjit (session {self.id})", sqlstate="XX000")
            )
        finally:
            self.phase = Phase.CLOSED
            self.gateway.startup_done(self)
            self.release_buffered()
            with trio.CancelScope(shield=True):
                await self._close()
            self.gateway.forget_session(self)
            metrics.SESSIONS_ACTIVE.dec()
            metrics.SESSIONS_TOTAL.labels(self.end_reason).inc()
            log.info(
                "session closed",
                extra={"reason": self.end_reason, "seconds": round(time.monotonic() - self.started, 3)},
            )
            logs.session_id.reset(token)

    async def _run(self) -> None:
        t = self.config.timeouts
        with trio.fail_after(t.startup):
            startup = await self._startup()
        if startup is None:
            return  # a CancelRequest connection
        self.phase = Phase.AUTH
        with trio.fail_after(t.auth):
            self.principal = await self.gateway.authenticator.authenticate(self, startup)
        # Authenticated: from now on the session counts against max_clients,
        # no longer against max_startup.
        self.gateway.startup_done(self)
        if self.gateway.over_client_limit(self):
            raise TooManyConnections("sorry, too many clients already")
        params = startup.parameters
        db = params.get("database") or params.get("user", "")
        target = self.config.targets.get(db)
        if target is None:
            raise FatalError(f'database "{db}" does not exist', sqlstate="3D000",
                             hint="the databases this gateway serves are its configured targets")
        self.database = db
        self.gate = self.gateway.gates.get(db)
        if self.gate is not None:
            await self._wait_for_catalog(db)
        if self.gate is not None:
            self._c_watch = _FRONTEND_WATCH_GATED
        self.groups = frozenset(self.principal.groups)
        log.info("client authenticated", extra={"user": self.principal.user, "database": db})
        if self.gate is not None:
            self._gate_startup_settings(params)
        self.phase = Phase.UPSTREAM
        connect_started = time.monotonic()
        forwarded = {k: v for k, v in params.items() if k not in _NOT_FORWARDED and not k.startswith("_pq_.")}
        user, password = target.user, target.password
        broker = self.gateway.brokers.get(db)
        if broker is not None:
            user, password = await self._create_jit_role(target, broker)
            # The server's own logs (log_line_prefix %a, pgAudit) name the person.
            forwarded["application_name"] = f"pgjit:{self.principal.user}:{self.id}"
        with trio.fail_after(t.upstream_connect):
            self.upstream = await connect_upstream(
                host=target.host,
                port=target.port,
                database=target.database,
                user=user,
                password=password,
                parameters=forwarded,
                tls_mode=target.tls.mode,
                tls_ctx=self.gateway.upstream_tls_context(target),
                server_name=target.tls.server_name,
                max_size=_MAX_BACKEND_MESSAGE,
            )
        up = self.upstream
        if up.backend_key is not None:
            # The server's own process id, pgjit's secret: pg_backend_pid(),
            # NotificationResponse pids and pg_terminate_backend agree with
            # what the client was told; a CancelRequest still needs the secret.
            self.key = m.BackendKeyData(up.backend_key.process_id, self.key.secret_key)
        self._check_lexer_settings(up.parameters)
        self.ctr.txn_status = up.transaction_status
        await self.client_stream.send(
            m.AuthenticationOk(),
            *up.greeting,
            self.key,
            m.ReadyForQuery(up.transaction_status),
        )
        metrics.CONNECT_SECONDS.observe(time.monotonic() - connect_started)
        self.phase = Phase.RELAY
        await self._relay()

    def _check_lexer_settings(self, parameters: dict[str, str]) -> None:
        """Refuse the session when the server's greeting already reports a
        lexer state the gate does not model (e.g. ``ALTER ROLE ... SET
        client_encoding = 'SJIS'``): nothing of the client's has run yet."""
        if self.gate is None:
            return
        for name, value in parameters.items():
            reason = lexer_state_problem(name, value)
            if reason is not None:
                log.warning("server lexer state not modelled", extra={"setting": name, "value": value, "phase": "greeting"})
                raise _lexer_error(reason)

    async def _wait_for_catalog(self, db: str) -> None:
        """The gate decides what names mean from the target's catalog: wait
        for the first snapshot, and fail closed if it cannot be read."""
        keeper = self.gateway.catalogs.get(db)
        if keeper is None:
            return
        if not await keeper.ensure_fresh(self.config.timeouts.upstream_connect):
            raise UpstreamUnavailable(
                f'pgjit cannot check statements for "{db}": it could not read the catalog of the upstream server',
                detail=keeper.last_error or "still loading",
            )

    def _gate_startup_settings(self, params: dict[str, str]) -> None:
        """Settings a client puts in its startup packet (as parameters or as
        ``options=-c name=value``) are decided as ``SET name = value``
        statements, so ``-c role=postgres`` cannot do what ``SET ROLE`` may not."""
        settings = {k: v for k, v in params.items() if k not in _STARTUP_NOT_SETTINGS and not k.startswith("_pq_.")}
        try:
            settings.update(parse_options(params.get("options", "")))
        except ValueError as e:
            raise FatalError(f"invalid options in the startup packet: {e}", sqlstate="08P01") from None
        for name, value in settings.items():
            sql = f"SET {quote_ident(name.lower())} = {quote_literal(value)}"
            error = self._gate_statement(sql.encode("utf-8", "surrogateescape"), None)
            if error is not None:
                raise FatalError(
                    f'startup setting "{name}" refused: {error.message}', sqlstate=error.sqlstate, hint=error.hint
                )

    async def _create_jit_role(self, target, broker) -> tuple[str, str]:
        """Create this session's role; returns (role name, password)."""
        principal = self.principal
        assert principal is not None
        grant = target.policy.access_for(principal.groups)
        if grant is None:
            raise InvalidAuthorization(
                f'no access to database "{target.name}" for {principal.user}',
                detail=f"groups: {', '.join(sorted(principal.groups)) or '(none)'}",
                hint=f"the access section of {target.policy_path} lists the groups that may connect",
            )
        now = time.time()
        valid_until = now + grant.jit_lifetime
        if principal.expires_at is not None:
            valid_until = min(valid_until, principal.expires_at)
            if principal.expires_at - now < _MIN_ROLE_SECONDS:
                # Its role would be past VALID UNTIL before it logged in.
                raise InvalidPassword(
                    f"token expired at {_utc(principal.expires_at)}, or expires too soon to start a session",
                    hint="get a fresh token from your identity provider and reconnect",
                )
        # The session ends when the token expires (plus grace) or at max_session.
        ends = now + grant.max_session
        reason = f"the maximum session length ({grant.max_session} s) was reached"
        if principal.expires_at is not None and principal.expires_at + self.gateway.expiry_grace < ends:
            ends = principal.expires_at + self.gateway.expiry_grace
            reason = f"the token expired at {_utc(principal.expires_at)}"
        self.ends_at, self.end_message = ends, reason
        with trio.fail_after(self.config.timeouts.upstream_connect):
            role = await broker.create_role(
                principal.user, self.id, grant.grant, valid_until, grant.settings, owner=grant.owner
            )
        self.jit_role, self.broker = role, broker
        log.info(
            "jit role created",
            extra={"role": role.name, "valid_until": _utc(valid_until), "grants": ",".join(grant.grant), "owner": grant.owner or ""},
        )
        return role.name, role.password

    async def _expiry_watch(self) -> None:
        """End the session when its token expires or max_session is reached."""
        assert self.ends_at is not None
        await trio.sleep(max(0.0, self.ends_at - time.time()))
        log.info("session expired", extra={"reason": self.end_message})
        self.end_reason = "expired"
        self.terminate(FatalError(f"terminating connection: {self.end_message}", sqlstate="57P01",
                                  hint="reconnect with a fresh token"))

    # --------------------------------------------------------------- startup

    async def _startup(self) -> m.StartupMessage | None:
        while True:
            body = await self.client_stream.read_startup_packet()
            msg = m.decode_startup_packet(body)
            if isinstance(msg, m.SSLRequest):
                await self._negotiate_tls()
                continue
            if isinstance(msg, m.GSSENCRequest):
                await self.client.send_all(b"N")
                continue
            if isinstance(msg, m.CancelRequest):
                self.end_reason = "cancel_request"
                await self.gateway.handle_cancel(msg)
                return None
            assert isinstance(msg, m.StartupMessage)
            if msg.major != 3:
                raise ProtocolViolation(f"unsupported frontend protocol {msg.major}.{msg.minor}")
            self.client_stream.buf.end_startup()
            unrecognized = tuple(k for k in msg.parameters if k.startswith("_pq_."))
            if msg.minor > 0 or unrecognized:
                # Ask for 3.0: the client downgrades (or gives up) cleanly.
                await self.client_stream.send(m.NegotiateProtocolVersion(0, unrecognized))
            repl = msg.parameters.get("replication")
            if repl is not None and repl.lower() not in ("false", "off", "no", "0"):
                raise FatalError(
                    "replication connections are not supported through pgjit",
                    sqlstate="0A000",
                    hint="connect to the database server directly for replication",
                )
            if "user" not in msg.parameters:
                raise FatalError("no PostgreSQL user name specified in startup packet", sqlstate="28000")
            for key, value in msg.parameters.items():
                if not _is_utf8(key) or not _is_utf8(value):
                    # The codec keeps such bytes as surrogates; nothing after
                    # this point (the gate, SQL quoting, the logs) has to.
                    raise ProtocolViolation(
                        f"invalid UTF-8 in the startup packet (parameter {_printable(key)!r})",
                        hint="parameter names and values must be UTF-8",
                    )
            return msg

    async def _negotiate_tls(self) -> None:
        if self.client.tls:
            raise ProtocolViolation("SSLRequest received on an encrypted connection")
        ctx = self.gateway.client_tls_context
        if ctx is None:
            await self.client.send_all(b"N")
            return
        if self.client_stream.buf.buffered:
            # Data pipelined after SSLRequest could be injected by a
            # man in the middle (CVE-2021-23222's server-side twin).
            raise ProtocolViolation("unexpected data after SSLRequest")
        await self.client.send_all(b"S")
        assert hasattr(self.client, "to_trio_stream")
        # Agreed to TLS: until the handshake is done no plaintext may follow
        # (not even an error), and a failed one closes the socket (start_tls).
        self._tls_handshake = True
        try:
            self.client = await start_tls(self.client, ctx, server_side=True)  # type: ignore[arg-type]
        except (ssl.SSLError, trio.BrokenResourceError, OSError) as e:
            raise EOFError(f"TLS handshake failed: {e}") from None
        self._tls_handshake = False
        self.client_stream = MessageStream(self.client, self.config.limits.max_message_size, startup=True)

    # ------------------------------------------------------------------ relay

    async def _relay(self) -> None:
        leftover = self.client_stream.buf.take_raw()
        up = self.upstream.transport  # type: ignore[union-attr]
        reactor = self.gateway.reactor
        try:
            async with trio.open_nursery() as nursery:
                self._relay_scope = nursery.cancel_scope
                if self._terminate_error is not None:
                    nursery.cancel_scope.cancel()
                if self.ends_at is not None:
                    nursery.start_soon(self._expiry_watch)
                if reactor is not None and isinstance(self.client, SocketTransport) and isinstance(up, SocketTransport):
                    # Plain TCP both ways: the gateway's shared epoll reactor
                    # relays this session without a task wakeup per read.
                    relay = reactor.relay(self, self.client, up)
                    try:
                        if leftover:
                            relay.feed_client(leftover)
                        await relay.finished()
                    finally:
                        # An error may follow only at a message boundary.
                        self._client_mid_message = relay.client_mid_message
                        relay.close()
                    nursery.cancel_scope.cancel()
                else:
                    nursery.start_soon(self._client_to_server, leftover)
                    nursery.start_soon(self._server_to_client)
        except BaseExceptionGroup as group:
            # One direction failed (and cancelled the other): report that
            # failure itself, e.g. a ProtocolViolation becomes 08P01.
            raise _first_error(group) from None
        if self._terminate_error is not None:
            raise self._terminate_error

    # The relay's work, without I/O: each takes the bytes that arrived on one
    # side and returns what to send to the other. Both drivers (the two tasks
    # below for TLS, the reactor for plain TCP) call them.

    def relay_profile(self) -> tuple[frozenset[int], frozenset[int], int, int]:
        """For the reactor's C path: the client frame types this session
        watches, those of them that only move the ReadyForQuery count, and
        the largest client and server message allowed."""
        count_only = _COUNT_ONLY_GATED if self.gate is not None else _COUNT_ONLY
        return self._c_watch, count_only, self.config.limits.max_message_size, _MAX_BACKEND_MESSAGE

    def from_client(self, data: bytes | bytearray) -> tuple[bytes | bytearray | memoryview | None, bool]:
        """Bytes from the client -> (bytes for the upstream, stop after sending)."""
        if self.halted:
            return None, True  # the server's lexer state left the gate's: nothing more goes up
        pending = self._c_pending
        if pending is not None:
            pending += data
            data = pending
        frames, end = scan_watched(data, 0, len(data), self.config.limits.max_message_size, self._c_watch)
        self._c_pending = carried = _carry(data, end, pending)
        if carried is not None or self._c_buffered:
            self._account_buffered(len(carried) if carried is not None else 0)
        if not end:
            return None, False
        stop = False
        if frames:
            simple = _COUNT_ONLY_GATED if self.gate is not None else _COUNT_ONLY
            for tag, _, _ in frames:
                if tag not in simple:
                    simple = None
                    break
            if simple is not None:
                for tag, _, _ in frames:
                    self._count(tag)
            elif len(frames) == 1 and frames[0][0] == F_QUERY:
                # The common gated case, one simple Query: no rebuild
                # unless it is refused.
                _, qs, qe = frames[0]
                self._count(F_QUERY)
                error = self._gate_statement(bytes(data[qs + 5 : qe - 1]), None)
                if error is not None:
                    return bytes(data[:qs]) + self._refuse(error) + bytes(data[qe:end]), False
            else:
                rebuilt, stop = self._frontend_frames(data, frames, end)
                if rebuilt is not None:
                    return rebuilt, stop
        if end == len(data):
            return data, stop
        return bytes(data[:end]), stop

    def _account_buffered(self, held: int) -> None:
        """Keep the gateway-wide count of incomplete client messages' bytes
        (``limits.max_buffered``); the session whose growth passes it ends
        with 53200, so that many clients each holding a message just under
        ``max_message_size`` cannot multiply it into the gateway's memory."""
        gateway = self.gateway
        grew = held - self._c_buffered
        gateway.buffered += grew
        self._c_buffered = held
        if grew > 0 and gateway.buffered > self.config.limits.max_buffered:
            # This session ends: its incomplete message is dropped and its
            # bytes leave the budget now, not when its socket has closed (a
            # client slow to take the error must not get others refused too).
            self._c_pending = None
            self.release_buffered()
            raise FatalError(
                "out of memory: pgjit's buffer for incomplete messages is full",
                detail=f"limits.max_buffered is {self.config.limits.max_buffered} bytes over all sessions",
                hint="send large statements one at a time, or ask for a larger limits.max_buffered",
                sqlstate="53200",
            )

    def release_buffered(self) -> None:
        if self._c_buffered:
            self.gateway.buffered -= self._c_buffered
            self._c_buffered = 0

    def from_server(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview | None:
        """Bytes from the upstream -> bytes for the client. Sets
        ``_s_skip`` while a large message is streaming through. ``data``
        may be a view of a receive buffer; the result may be a view of it
        too, and nothing here keeps a reference to it past the call."""
        skip = self._s_skip
        head = b""
        if skip:
            if len(data) <= skip:
                self._s_skip = skip - len(data)
                return data
            head, data = data[:skip], data[skip:]
            self._s_skip = 0
        pending = self._s_pending
        if pending is not None:
            pending += data
            data = pending
        n = len(data)
        frames, end = scan_watched(data, 0, n, _MAX_BACKEND_MESSAGE, _BACKEND_WATCH)
        if frames:
            rewrite = False
            ctr = self.ctr
            for i, (tag, start, stop) in enumerate(frames):
                if tag == B_READY:
                    if stop - start != 6:
                        raise ProtocolViolation("malformed ReadyForQuery message from the server")
                    ctr.rfq_received += 1
                    ctr.txn_status = bytes(data[start + 5 : start + 6])
                    if self._copy_ends or self._copy_ins:
                        self._copy_ready()
                elif tag == B_COPY_IN:
                    self._copy_started()
                elif tag == B_PARAMETER_STATUS:
                    if self.gate is not None and self._lexer_report(data, start, stop):
                        return self._halt_before(data, frames[:i], start, head)
                elif self._rewrites:
                    rewrite = True
            last = frames[-1]
            ctr.last_was_error = last[0] == B_ERROR and last[2] == end
            if self.terminating:
                self._arm_drain()
            if rewrite or self._rewrites:
                out = self._backend_frames(data, frames, end)
            else:
                out = data if end == n else data[:end]
        elif end:
            self.ctr.last_was_error = False
            out = data if end == n else data[:end]
        else:
            out = b""
        tail = n - end
        if tail >= 5 and data[end] in _STREAMABLE and _U32.unpack_from(data, end + 1)[0] + 1 - tail >= _STREAM_THRESHOLD:
            # A large row: pass what we have through now and the rest as it
            # arrives, instead of buffering it whole.
            self._s_skip = _U32.unpack_from(data, end + 1)[0] + 1 - tail
            out = data if end == 0 and not out else bytes(out) + bytes(data[end:])
            self._s_pending = None
        else:
            self._s_pending = _carry(data, end, pending)
        if head:
            return bytes(head) + bytes(out)
        return out

    def _lexer_report(self, data: bytes | bytearray | memoryview, start: int, stop: int) -> bool:
        """Does the ParameterStatus at ``data[start:stop]`` leave the lexer
        state the gate models? Then the session is halted: ``halted`` is
        set and the FATAL to send is the terminate error."""
        try:
            ps = m.ParameterStatus.decode(bytes(data[start + 5 : stop]))
        except Exception:
            raise ProtocolViolation("malformed ParameterStatus message from the server") from None
        reason = lexer_state_problem(ps.name, ps.value)
        if reason is None:
            return False
        log.warning("server lexer state not modelled", extra={"session": self.id, "setting": ps.name, "value": ps.value, "phase": "relay"})
        self.halted = True
        self._terminate_error = _lexer_error(reason)
        return True

    def _halt_before(self, data, frames: list[tuple[int, int, int]], cut: int, head) -> bytes | bytearray | memoryview:
        """The server's bytes before the ParameterStatus at ``cut`` (the
        watched ``frames`` before it handled as usual): the client gets them,
        then the FATAL; the rest of the read is dropped."""
        ctr = self.ctr
        ctr.last_was_error = bool(frames) and frames[-1][0] == B_ERROR and frames[-1][2] == cut
        out = self._backend_frames(data, frames, cut) if self._rewrites else data[:cut]
        self._s_pending = None
        self._s_skip = 0
        if head:
            return bytes(head) + bytes(out)
        return out

    def _arm_drain(self) -> None:
        """After the client's Terminate the relay waits for the server to
        close its side — as long as a reply is due, and once none is, at most
        ``_DRAIN_GRACE`` more (a server that took the Terminate as stray bytes,
        e.g. in COPY FROM STDIN, would otherwise wait for the client forever)."""
        ctr = self.ctr
        scope = self._relay_scope
        if scope is not None and ctr.rfq_sent == ctr.rfq_received:
            scope.deadline = min(scope.deadline, trio.current_time() + _DRAIN_GRACE)

    def upstream_eof(self) -> None:
        """The upstream closed: if the client was not told why, say so."""
        if self.terminating:
            return  # the server's answer to the client's Terminate
        if (
            not self._client_mid_message
            and self._s_skip == 0
            and self._s_pending is None
            and not self.ctr.last_was_error
        ):
            self.end_reason = "upstream_closed"
            self._terminate_error = UpstreamUnavailable("the upstream server closed the connection unexpectedly")
        elif self.end_reason == "ok":
            self.end_reason = "upstream_closed"

    async def _client_to_server(self, leftover: bytes) -> None:
        client = self.client
        up = self.upstream.transport  # type: ignore[union-attr]
        try:
            data: bytes | bytearray = leftover
            while True:
                if data:
                    out, stop = self.from_client(data)
                    if out:
                        await up.send_all(out)
                    if stop:
                        # A Terminate that went upstream (``terminating``): the
                        # server's side closes first, after anything it still
                        # sends the client. Otherwise (halted) the relay ends now.
                        self.end_reason = "ok"
                        return
                data = await client.receive()
                if not data:
                    self.end_reason = "client_gone"
                    return
        finally:
            if not self.terminating:
                self._relay_scope.cancel()  # type: ignore[union-attr]

    async def _server_to_client(self) -> None:
        up = self.upstream.transport  # type: ignore[union-attr]
        client = self.client
        try:
            while True:
                data = await up.receive()
                if not data:
                    self.upstream_eof()
                    return
                out = self.from_server(data)
                if self.halted:
                    # Stop the client task first (it forwards nothing more,
                    # not even bytes it holds), then hand on what came before.
                    self._relay_scope.cancel()  # type: ignore[union-attr]
                    if out:
                        with trio.move_on_after(5) as cs:
                            cs.shield = True
                            self._client_mid_message = True
                            await client.send_all(out)
                            self._client_mid_message = False
                    return
                if out:
                    self._client_mid_message = True
                    await client.send_all(out)
                    self._client_mid_message = self._s_skip > 0
        finally:
            self._relay_scope.cancel()  # type: ignore[union-attr]

    def _frontend_frames(self, buf: bytes | bytearray, frames: list[tuple[int, int, int]], end: int) -> tuple[bytes | None, bool]:
        """``buf[:end]`` with the watched frames handled, in order; returns
        (bytes to send upstream or None when ``buf[:end]`` goes unchanged,
        stop after sending)."""
        out: list[bytes] = []
        seg = 0
        for tag, start, stop in frames:
            if tag in _COUNT_ONLY:
                self._count(tag)
                if tag != F_QUERY or self.gate is None:
                    continue
            if tag not in _FRONTEND_KNOWN:
                raise ProtocolViolation(f"invalid frontend message type {tag}")
            if tag == F_TERMINATE:
                out.append(bytes(buf[seg:stop]))
                # The relay ends when the server has closed its side, after
                # whatever it still sends the client (see reactor/_client_to_server).
                self.terminating = True
                self._arm_drain()
                return b"".join(out), True
            replacement: bytes | None = None
            if tag == F_QUERY:
                if self.gate is not None:
                    error = self._gate_statement(bytes(buf[start + 5 : stop - 1]), None)
                    if error is not None:
                        replacement = self._refuse(error)
            elif tag == F_PARSE:
                name, query = _parse_name_and_query(buf, start + 5, stop)
                error = self._gate_statement(query, name)
                if error is not None:
                    replacement = self._refuse(error, sync=False)
            elif tag == F_FUNCTION_CALL:
                self.ctr.rfq_sent += 1
                self._log_refusal("pgjit:function-call", "deny", "function-call", stop - start)
                replacement = self._refuse(
                    FeatureNotSupported(
                        "the FunctionCall protocol message is not allowed through pgjit",
                        hint="call the function with a SQL statement, so that it can be checked",
                    )
                )
            if replacement is not None:
                out.append(bytes(buf[seg:start]))
                out.append(replacement)
                seg = stop
        if seg == 0:
            return None, False  # nothing replaced: forward the bytes as they came
        out.append(bytes(buf[seg:end]))
        return b"".join(out), False

    def _count(self, tag: int) -> None:
        """Keep count of the ReadyForQuery replies the server owes us.

        Each Query and Sync is answered by one ReadyForQuery, except that the
        server ignores Sync while it is in COPY FROM STDIN: a client running
        COPY through the extended protocol sends Execute, Sync, then CopyData
        ... CopyDone, Sync, and gets one ReadyForQuery for the two Syncs. So
        the Syncs between an Execute and a CopyDone/CopyFail are uncounted
        when the server shows (CopyInResponse) that they fell into a copy; a
        CopyDone/CopyFail outside COPY, which the server ignores, changes
        nothing."""
        ctr = self.ctr
        if tag == F_SYNC:
            ctr.rfq_sent += 1
            ctr.syncs_since_execute += 1
        elif tag == F_QUERY:
            ctr.copy_base = ctr.rfq_sent  # the replies owed before this Query's (a COPY's key)
            ctr.rfq_sent += 1
            ctr.syncs_since_execute = 0
        elif tag == F_EXECUTE:
            ctr.copy_base = ctr.rfq_sent
            ctr.syncs_since_execute = 0
        else:  # CopyDone, CopyFail
            syncs = ctr.syncs_since_execute
            ctr.syncs_since_execute = 0
            if self._copy_ins:
                # The server said it is in COPY FROM STDIN: this ends it, and
                # the Syncs since its Execute fell into it.
                self._copy_ins -= 1
                ctr.rfq_sent -= syncs
            else:
                # Not known yet (the client did not wait for CopyInResponse),
                # or no COPY at all (the server ignores a stray CopyDone): the
                # server's next replies decide (_copy_started, _copy_ready).
                # Kept even with no Sync to uncount: it ends the COPY that the
                # server has yet to announce, which must then not count as
                # running (a later stray CopyDone would uncount real Syncs).
                self._copy_ends.append((ctr.copy_base, syncs))

    def _copy_started(self) -> None:
        """A CopyInResponse: the server entered COPY FROM STDIN."""
        ends = self._copy_ends
        if ends and self.ctr.rfq_received == ends[0][0]:
            # The CopyDone already seen ends this copy: its Syncs were swallowed.
            self.ctr.rfq_sent -= ends.popleft()[1]
        else:
            self._copy_ins += 1

    def _copy_ready(self) -> None:
        """A ReadyForQuery: no COPY is running any more (one that ended by an
        error has no CopyDone to come), and a CopyDone whose run of Syncs got
        an answer without a CopyInResponse before it was outside any COPY."""
        self._copy_ins = 0
        ends = self._copy_ends
        while ends and self.ctr.rfq_received > ends[0][0]:
            ends.popleft()

    def gate_allows(self, raw: bytes) -> bool:
        """For the reactor's C path: may this Query's SQL go upstream with
        nothing more from Python? True only for an allowed statement that
        needs no bookkeeping (prepared statements) and no log line (shadow
        rules). Anything else is False, and the read takes the Python path,
        which decides again and does the rest. No side effects."""
        try:
            analysis, decision = self.gate.verdict(raw, self.groups, self.prepared, self.overlay)  # type: ignore[union-attr]
        except Exception:
            return False
        return (decision.allowed and not decision.shadow and not _changes_prepared(analysis)
                and not _changes_catalog(analysis))

    def _gate_statement(self, raw: bytes, parse_name: str | None) -> PgjitError | None:
        """Check one Query or Parse (its SQL as UTF-8 bytes) against the
        policy: None when allowed, else the error the client must see (the
        statement is not forwarded)."""
        gate = self.gate
        assert gate is not None
        try:
            analysis, decision = gate.verdict(raw, self.groups, self.prepared, self.overlay)
        except UnicodeDecodeError:
            self._log_refusal("pgjit:not-utf8", "deny", "not-utf8", len(raw))
            return FeatureNotSupported(
                "pgjit could not read the statement: it is not valid UTF-8",
                hint="use client_encoding UTF8",
            )
        except ParseFailure as e:
            self._log_refusal("pgjit:unparsable", "deny", "unparsable", len(raw), position=e.cursorpos)
            return SyntaxErrorSQL(
                f"pgjit could not parse the statement: {e.message}",
                position=e.cursorpos if e.cursorpos and e.cursorpos > 0 else None,
                hint="pgjit refuses statements it cannot parse",
            )
        if decision.shadow:
            log.info("audit rule matched (shadow mode)", extra={"session": self.id, "rules": ",".join(decision.shadow)})
        if decision.allowed:
            if _changes_catalog(analysis):
                self._note_ddl(analysis)
            if parse_name or _changes_prepared(analysis):
                self._track_prepared(analysis, parse_name)
            return None
        rule = decision.rule or "default"
        if decision.message and "catalog yet" in decision.message:
            keeper = self.gateway.catalogs.get(self.database or "")
            if keeper is not None:
                keeper.request_refresh()  # a name created since the last snapshot
        metrics.STATEMENTS_DENIED.labels(decision.action).inc()
        self._log_refusal(rule, decision.action, statement_fingerprint(raw) or "unparsable", len(raw))
        if decision.needs_approval:
            return InsufficientPrivilege(
                f'statement needs approval under policy rule "{rule}"',
                detail=decision.message,
                hint="approvals are not available in this version of pgjit; ask a DBA to run it",
            )
        return InsufficientPrivilege(
            f'statement denied by policy rule "{rule}"' + (f": {decision.message}" if decision.message else ""),
            hint=decision.hint or "ask a DBA if you need this",
        )

    def _log_refusal(self, rule: str, action: str, fingerprint: str, size: int, *, position: int | None = None) -> None:
        """One line per refused statement: who, which rule, and the statement
        by its fingerprint (PostgreSQL's, constants left out; or what kept it
        from having one) — never its text."""
        principal = self.principal
        extra: dict[str, object] = {
            # Named here: in the reactor's callbacks the log context is not the session's.
            "session": self.id,
            "user": principal.user if principal is not None else None,
            "database": self.database,
            "rule": rule,
            "action": action,
            "fingerprint": fingerprint,
            "statement_bytes": size,
        }
        if position:
            extra["error_position"] = position
        log.info("statement refused", extra=extra)

    def _note_ddl(self, analysis) -> None:
        """DDL let through: the catalog snapshot is out of date. Remember the
        functions and operators it creates (their facts were just checked) until
        a fresh snapshot has them, and ask for one."""
        for f in analysis.statements:
            for name in f.created:
                facts = _created_facts(f, name)
                self.overlay[name] = facts
                if "." in name and not name.startswith(("operator ", "relation ")):
                    self.overlay[name.rsplit(".", 1)[1]] = facts
        keeper = self.gateway.catalogs.get(self.database or "")
        if keeper is not None:
            keeper.request_refresh()

    def _track_prepared(self, analysis, parse_name: str | None) -> None:
        """Keep the map from prepared-statement names to what they run, so that
        EXECUTE is decided as the statement it runs (SQL PREPARE and named
        protocol-level statements share one namespace in PostgreSQL)."""
        if parse_name:
            self._remember_prepared(parse_name, analysis)
        for f in analysis.statements:
            if f.prepares:
                self._remember_prepared(f.prepares, f)
            if f.deallocates == "*" or f.kind == "discard":
                self.prepared.clear()
                self._deallocated.clear()
            elif f.deallocates and f.deallocates in self.prepared:
                # The server may refuse the DEALLOCATE (in a failed transaction,
                # 25P02) and keep the statement: pgjit keeps knowing what it
                # runs, for the last _DEALLOCATED_KEPT names deallocated.
                self._deallocated[f.deallocates] = None
                self._deallocated.move_to_end(f.deallocates)
                while len(self._deallocated) > _DEALLOCATED_KEPT:
                    gone, _ = self._deallocated.popitem(last=False)
                    self.prepared.pop(gone, None)

    def _remember_prepared(self, name: str, target) -> None:  # type: ignore[no-untyped-def]
        """``name`` now prepares ``target``. If pgjit knew the name already,
        the server may still hold the old statement (the new PREPARE refused
        as a duplicate, or in a failed transaction; a DEALLOCATE refused):
        EXECUTE is then decided as both, the strictest way."""
        old = self.prepared.get(name)
        self._deallocated.pop(name, None)
        if old is not None and old is not target:
            a, b = prepared_facts({name: target}, name), prepared_facts({name: old}, name)
            if a is not None and b is not None:
                target = merge_facts(a, b)
        self.prepared[name] = target

    def _refuse(self, error: PgjitError, *, sync: bool = True) -> bytes:
        """Bytes that stand in, upstream, for a refused client message: a Bind
        to a statement that does not exist, named by a marker, so that the
        server fails exactly there (aborting the transaction or skipping to
        Sync as for any error) and the reply is swapped for ``error``. With
        ``sync`` (Query, FunctionCall: they are answered by a ReadyForQuery of
        their own) a Sync follows; a refused Parse waits for the client's."""
        marker = "pgjit_refused_" + secrets.token_hex(8)
        due = self.ctr.rfq_sent if sync else self.ctr.rfq_sent + 1
        self._rewrites[marker] = (error, due)
        return m.Bind("", marker).encode() + (m.Sync().encode() if sync else b"")

    def _backend_frames(self, buf: bytearray, frames: list[tuple[int, int, int]], end: int) -> bytes:
        out: list[bytes] = []
        seg = 0
        # rfq_received already counts this batch; replay the count frame by frame.
        received = self.ctr.rfq_received - sum(1 for f in frames if f[0] == B_READY)
        for tag, start, stop in frames:
            if tag == B_READY:
                received += 1
                if self._rewrites:
                    for marker in [k for k, (_, due) in self._rewrites.items() if due <= received]:
                        del self._rewrites[marker]
            elif tag == B_ERROR and self._rewrites:
                replacement = self._rewrite_error(bytes(buf[start + 5 : stop]))
                if replacement is not None:
                    out.append(bytes(buf[seg:start]))
                    out.append(replacement)
                    seg = stop
        out.append(bytes(buf[seg:end]))
        return b"".join(out)

    def _rewrite_error(self, body: bytes) -> bytes | None:
        err = m.ErrorResponse.decode(body)
        if err.sqlstate != "26000":
            return None
        text = err.message or ""
        for marker, (error, _) in self._rewrites.items():
            if marker in text:
                del self._rewrites[marker]
                return m.ErrorResponse.from_error(error).encode()
        return None

    # ------------------------------------------------------------- teardown

    async def _send_error(self, error: PgjitError) -> None:
        if self._client_mid_message or self._tls_handshake:
            return
        try:
            with trio.move_on_after(2):
                await self.client.send_all(m.ErrorResponse.from_error(error).encode())
        except (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _close(self) -> None:
        up = self.upstream
        if up is not None:
            try:
                if self.ctr.rfq_sent != self.ctr.rfq_received and self._terminate_error is not None:
                    # A query is still running upstream: stop it, do not leave it
                    # to finish for nobody.
                    await send_cancel(up, timeout=2)
                with trio.move_on_after(1):
                    await up.transport.send_all(m.Terminate().encode())
            except Exception:
                pass
            await up.transport.aclose()
        await self.client.aclose()
        if self.jit_role is not None and self.broker is not None:
            # Drop the role whatever happened; the broker retries and leaves
            # it NOLOGIN for the sweeper if it cannot.
            with trio.move_on_after(30):
                await self.broker.revoke_role(self.jit_role.name)


# Every frontend message type there is after startup; anything else is a
# protocol violation the gateway answers itself (08P01), not the server.
_FRONTEND_KNOWN = frozenset(t[0] for t in m.FRONTEND)
# Frames that only move the ReadyForQuery count (Query too, when no gate reads it).
_COUNT_ONLY = frozenset((F_QUERY, F_SYNC, F_EXECUTE, F_COPY_DONE, F_COPY_FAIL))
_COUNT_ONLY_GATED = _COUNT_ONLY - {F_QUERY}
_FRONTEND_WATCH = _COUNT_ONLY | frozenset((F_FUNCTION_CALL, F_TERMINATE)) | (
    frozenset(range(256)) - _FRONTEND_KNOWN
)
# Statement kinds that change the session's prepared statements.
_PREPARED_KINDS = frozenset(("prepare", "deallocate", "discard"))
_FRONTEND_WATCH_GATED = _FRONTEND_WATCH | frozenset((F_PARSE,))
# ParameterStatus: a report of a lexer setting may end the session (lexstate).
_BACKEND_WATCH = frozenset((B_READY, B_ERROR, B_PARAMETER_STATUS, B_COPY_IN))


def _lexer_error(reason: str) -> FatalError:
    return FatalError(
        f"terminating connection: {reason}, which pgjit cannot check statements under",
        sqlstate="0A000",
        hint="use a UTF-8 compatible client_encoding and keep standard_conforming_strings on",
    )


_DDL_PREFIXES = ("create_", "alter_", "drop_")


def _changes_catalog(analysis) -> bool:
    """Does the statement create, change or drop objects (functions, views,
    rules, triggers, operators …) that the gate resolves names through?"""
    return any(k.startswith(_DDL_PREFIXES) for f in analysis.statements for k in f.kinds)


def _created_facts(facts, name: str):
    """What calling a function (or using an operator) this session created does:
    the facts of the statement that created it, as a user function."""
    kinds = frozenset(k for k in facts.kinds if not k.startswith(_DDL_PREFIXES))
    if name.startswith("relation "):  # a view: what reading it reads
        writes = facts.writes - {name.removeprefix("relation ")}
        if "create_foreign_table" in facts.kinds:
            writes = writes | {"?"}  # a foreign table's rows live wherever its server points
        return dataclasses.replace(facts, kinds=kinds, created=(), prepares=None, writes=writes)
    qualified = name.removeprefix("operator ")
    return dataclasses.replace(
        facts, kinds=kinds, created=(), prepares=None,
        user_functions=facts.user_functions | ({qualified} if not name.startswith("operator ") else frozenset()),
        calls_user_function=True if not name.startswith("operator ") else facts.calls_user_function,
    )


def _changes_prepared(analysis) -> bool:
    """Does the statement create or drop prepared statements (PREPARE,
    DEALLOCATE, DISCARD)? Then the session's map of them must follow."""
    return any(f.kind in _PREPARED_KINDS for f in analysis.statements)


class RelayCounters:
    """The ReadyForQuery accounting of one session: client messages that
    the server answers with a ReadyForQuery (``rfq_sent``), ReadyForQuery
    frames relayed back (``rfq_received``), the last transaction status, and
    whether the last server frame was an ErrorResponse. The C relay core
    (pgjit._relaycore.Core) has the same fields."""

    __slots__ = ("rfq_sent", "rfq_received", "syncs_since_execute", "copy_base", "txn_status", "last_was_error")

    def __init__(self) -> None:
        self.rfq_sent = 0
        self.rfq_received = 0
        self.syncs_since_execute = 0
        self.copy_base = 0
        self.txn_status = b"I"
        self.last_was_error = False


def parse_options(options: str) -> dict[str, str]:
    """The ``-c name=value`` / ``--name=value`` settings in a startup packet's
    ``options`` (backslash escapes a space, as in libpq's PGOPTIONS)."""
    words: list[str] = []
    cur: list[str] = []
    it = iter(options)
    for ch in it:
        if ch == "\\":
            cur.append(next(it, ""))
        elif ch.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        words.append("".join(cur))
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c":
            if i + 1 >= len(words):
                raise ValueError("-c without a setting")
            w = words[i + 1]
            i += 1
        elif w.startswith("-c"):
            w = w[2:]
        elif w.startswith("--"):
            w = w[2:]
        else:
            raise ValueError(f"unsupported option {w!r}; only -c name=value settings are allowed")
        name, eq, value = w.partition("=")
        if not eq or not name:
            raise ValueError(f"expected name=value, got {w!r}")
        out[name.replace("-", "_")] = value
        i += 1
    return out


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _parse_name_and_query(buf: bytes | bytearray, pos: int, stop: int) -> tuple[str, bytes]:
    """A Parse message's statement name and query bytes, without decoding the rest."""
    name_end = buf.find(b"\x00", pos, stop)
    query_end = buf.find(b"\x00", name_end + 1, stop) if name_end >= 0 else -1
    if query_end < 0:
        raise ProtocolViolation("malformed Parse message")
    return bytes(buf[pos:name_end]).decode("utf-8", "surrogateescape"), bytes(buf[name_end + 1 : query_end])


def _carry(data: bytes | bytearray, end: int, pending: bytearray | None) -> bytearray | None:
    """The incomplete tail of ``data`` after ``end``, without copying a
    message that is still accumulating in ``pending``."""
    if end == len(data):
        return None
    if end == 0 and data is pending:
        return pending
    return bytearray(memoryview(data)[end:])


def _first_error(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_error(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group.exceptions[0]


def _outcome(e: PgjitError) -> str:
    if isinstance(e, AdminShutdown):
        return "shutdown"
    if isinstance(e, UpstreamUnavailable):
        return "upstream_error"
    if isinstance(e, ProtocolViolation):
        return "client_error"
    return "refused"


def _timeout_error(phase: Phase) -> PgjitError:
    if phase is Phase.UPSTREAM:
        return UpstreamUnavailable("timed out connecting to the upstream server")
    if phase is Phase.AUTH:
        return FatalError("canceling authentication due to timeout", sqlstate="28000")
    return FatalError("canceling startup due to timeout", sqlstate="08P01")


def _is_utf8(text: str) -> bool:
    """False for text decoded with surrogateescape from bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:64]
