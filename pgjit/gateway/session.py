"""One client session: startup, TLS, authentication, the JIT role, the
upstream login, then the relay, each phase with its own timeout; teardown
drops the role whatever happened.

The relay's logic on the bytes themselves is pgjit.gateway.relay (no I/O).
Two drivers feed it: the gateway's reactor for plain TCP both ways, and the
two tasks here (one per direction) when either side speaks TLS.
"""

from __future__ import annotations

import enum
import logging
import secrets
import os
import ssl
import time
from typing import TYPE_CHECKING

import trio

from pgjit import logs, metrics
from pgjit.errors import (
    AdminShutdown,
    FatalError,
    InvalidAuthorization,
    InvalidPassword,
    PgjitError,
    ProtocolViolation,
    TooManyConnections,
    UpstreamUnavailable,
)
from pgjit.gateway.clientauth import Principal
from pgjit.gateway.lexstate import lexer_state_problem
from pgjit.gateway.recording import SessionRecorder
from pgjit.gateway.relay import MAX_BACKEND_MESSAGE, Relay, lexer_error, pg_duration_seconds
from pgjit.gateway.transport import SocketTransport, TLSTransport, Transport, TransportClosed, start_tls
from pgjit.gateway.upstream import MessageStream, UpstreamConnection, connect_upstream, send_cancel
from pgjit.jit.naming import quote_ident, quote_literal
from pgjit.protocol import messages as m

if TYPE_CHECKING:  # pragma: no cover
    from pgjit.gateway.server import Gateway

log = logging.getLogger("pgjit.gateway.session")



# After a Terminate, how long the relay waits for the server to close once no
# reply is due any more.
_DRAIN_GRACE = 1.0


# A token must leave its JIT role at least this long to log in with.
_MIN_ROLE_SECONDS = 1.0

# TLS sessions relay through the reactor (PGJIT_TLS_RELAY=tasks: through the
# two-task path, the reference the differential tests hold it equal to).
_REACTOR_TLS = os.environ.get("PGJIT_TLS_RELAY", "reactor") != "tasks"

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
        # The relay's state and logic, without I/O (pgjit.gateway.relay); the
        # one made here has no gate: the target's replaces it once it is known.
        self.relay = Relay(self.config.limits, gateway, session_id=self.id)
        self._client_mid_message = False
        self._tls_handshake = False  # between our "S" and a finished TLS handshake
        self.counted_starting = False  # counted in gateway.starting (set by the accept loop)
        self._relay_scope: trio.CancelScope | None = None
        self._relay_nursery: trio.Nursery | None = None
        self._relayed_by: str | None = None  # reactor | tasks, once relaying
        self._relay_core = False  # the reactor's C core relays (pgjit.gateway._relaycore)
        # Approvals: the event a CancelRequest sets while a statement is held,
        # the channel it is held on (reactor path), the grant's settings.
        self._hold_cancel: trio.Event | None = None
        self._hold_channel = None
        self._grant_settings: tuple[tuple[str, str], ...] = ()
        self._client_send_lock = trio.StrictFIFOLock()  # TLS path: the hold's NOTICE and the relayed bytes
        self._scope: trio.CancelScope | None = None
        self._terminate_error: PgjitError | None = None
        self.end_reason = "ok"
        self.started = time.monotonic()
        self.groups: frozenset[str] = frozenset()
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
        return self.relay.idle

    def terminate(self, error: PgjitError) -> None:
        """End the session with ``error`` (e.g. 57P01 at shutdown)."""
        if self._terminate_error is None:
            self._terminate_error = error
        if self._scope is not None:
            self._scope.cancel()

    # ------------------------------------------------------------------ main

    async def run(self) -> None:
        token = logs.session_id.set(self.id)
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
            self.relay.release_buffered()
            with trio.CancelScope(shield=True):
                await self._close()
            self.gateway.forget_session(self)
            self._record_end()
            metrics.SESSIONS_TOTAL.labels(self.database or "-", self.end_reason).inc()
            log.info(
                "session closed",
                extra={"reason": self.end_reason, "seconds": round(time.monotonic() - self.started, 3),
                       "tls": bool(getattr(self.client, "tls", False)), "relay": self._relayed_by,
                       "relay_core": self._relay_core,
                       "upstream_tls": bool(self.upstream is not None and self.upstream.transport.tls),
                       "upstream_auth": self.upstream.auth if self.upstream is not None else None},
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
        gate = self.gateway.gates.get(db)
        if gate is not None:
            await self._wait_for_catalog(db)
        self.groups = frozenset(self.principal.groups)
        recorder = None
        writer = self.gateway.writer
        if writer is not None:
            audit = self.config.audit
            recorder = SessionRecorder(writer, session_id=self.id, person=self._person, target=db,
                                       policy_hash=self.gateway.policy_hashes.get(db), redact_literals=audit.redact_literals,
                                       fail_open=audit.on_store_failure == "fail_open",
                                       bind_parameters=audit.bind_parameters)
        masker = None
        if gate is not None:
            profile = gate.policy.masking_profile(self.groups, self.gateway.masking_key)
            if profile is not None:
                from pgjit.masking.wire import Masker

                keeper = self.gateway.catalogs.get(db)
                masker = Masker(profile, lambda: gate.catalog, lambda: gate.resolver,
                                keeper.request_refresh if keeper is not None else (lambda: None))
        self.relay = Relay(self.config.limits, self.gateway, session_id=self.id, user=self.principal.user,
                           database=db, gate=gate, groups=self.groups, catalog=self.gateway.catalogs.get(db),
                           recorder=recorder, masker=masker)
        self.relay.arm_drain = self._arm_drain
        if self.gateway.approvals is not None and gate is not None:
            self.relay.enable_approvals()
        log.info("client authenticated", extra={"user": self.principal.user, "database": db})
        if gate is not None:
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
                max_size=MAX_BACKEND_MESSAGE,
            )
        up = self.upstream
        if up.backend_key is not None:
            # The server's own process id, pgjit's secret: pg_backend_pid(),
            # NotificationResponse pids and pg_terminate_backend agree with
            # what the client was told; a CancelRequest still needs the secret.
            self.key = m.BackendKeyData(up.backend_key.process_id, self.key.secret_key)
        self._check_lexer_settings(up.parameters)
        self.relay.ctr.txn_status = up.transaction_status
        await self.client_stream.send(
            m.AuthenticationOk(),
            *up.greeting,
            self.key,
            m.ReadyForQuery(up.transaction_status),
        )
        metrics.CONNECT_SECONDS.observe(time.monotonic() - connect_started)
        self._record_start(params)
        self.phase = Phase.RELAY
        await self._relay()

    # ----------------------------------------------------------------- audit

    @property
    def _person(self) -> str | None:
        p = self.principal
        return None if p is None else (p.subject or p.user)

    def _record_start(self, params: dict[str, str]) -> None:
        """The session's first record, before any statement of it runs. When
        it cannot be queued (store down, buffer full) the session is refused
        under fail_closed."""
        writer = self.gateway.writer
        if writer is None or self.principal is None:
            return
        from pgjit.audit import records
        from pgjit.audit.writer import AuditUnavailable

        tls = None
        stream = getattr(self.client, "stream", None)
        if self.client.tls and stream is not None:
            try:
                tls = stream.version()
            except Exception:
                tls = "TLS"
        peer = self.peer
        user = self.principal.user
        try:
            writer.submit(records.session_start(
                self.id, person=self._person or user, email=user if "@" in user else None, groups=self.groups,
                target=self.database or "", client_addr=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer),
                tls=tls, application_name=params.get("application_name"),
                jit_role=self.jit_role.name if self.jit_role is not None else None))
            self._recorded_start = True
        except AuditUnavailable as e:
            if self.config.audit.on_store_failure == "fail_open":
                log.warning("session starts unrecorded (audit.on_store_failure: fail_open)")
                return
            from pgjit.errors import AuditUnavailableError

            raise AuditUnavailableError(
                "pgjit cannot record this session, so it does not start: the audit store is unreachable and its buffer is full",
                detail=str(e), hint="try again when the audit store is back", severity="FATAL") from None

    def _record_end(self) -> None:
        writer = self.gateway.writer
        if writer is None or not getattr(self, "_recorded_start", False):
            return
        from pgjit.audit import records

        self.relay.finish_audit()
        writer.submit(records.session_end(self.id, person=self._person, target=self.database, reason=self.end_reason,
                                          seconds=time.monotonic() - self.started), force=True)

    def _record_role(self, event: str) -> None:
        writer = self.gateway.writer
        if writer is None or self.jit_role is None:
            return
        from pgjit.audit import records

        writer.submit(records.jit_role(event, self.jit_role.name, session_id=self.id, person=self._person,
                                       target=self.database or ""), force=True)

    def _check_lexer_settings(self, parameters: dict[str, str]) -> None:
        """Refuse the session when the server's greeting already reports a
        lexer state the gate does not model (e.g. ``ALTER ROLE ... SET
        client_encoding = 'SJIS'``): nothing of the client's has run yet."""
        if self.relay.gate is None:
            return
        for name, value in parameters.items():
            reason = lexer_state_problem(name, value)
            if reason is not None:
                log.warning("server lexer state not modelled", extra={"setting": name, "value": value, "phase": "greeting"})
                raise lexer_error(reason)

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
            error = self.relay.gate_statement(sql.encode("utf-8", "surrogateescape"), None, startup=True)
            if error is not None:
                raise FatalError(
                    f'startup setting "{name}" refused: {error.message}', sqlstate=error.sqlstate, hint=error.hint
                )

    async def _create_jit_role(self, target, broker) -> tuple[str, str]:
        """Create this session's role; returns (role name, password)."""
        principal = self.principal
        assert principal is not None
        grant = target.policy.access_for(principal.groups)
        if grant is not None:
            self._grant_settings = tuple(grant.settings)
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
        self._record_role("created")
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
                self._relay_nursery = nursery
                if self._terminate_error is not None:
                    nursery.cancel_scope.cancel()
                if self.ends_at is not None:
                    nursery.start_soon(self._expiry_watch)
                kinds = (SocketTransport, TLSTransport) if _REACTOR_TLS else (SocketTransport,)
                if reactor is not None and isinstance(self.client, kinds) and isinstance(up, kinds):
                    # The gateway's shared epoll reactor relays this session
                    # without a task wakeup per read (TLS records are made
                    # and read there too: in the C core when it is built).
                    self._relayed_by = "reactor"
                    channel = reactor.attach(self, self.client, up)
                    self._relay_core = channel.core is not None
                    try:
                        if leftover:
                            channel.feed_client(leftover)
                        await channel.finished()
                    finally:
                        # An error may follow only at a message boundary.
                        self._client_mid_message = channel.client_mid_message
                        channel.close()
                    nursery.cancel_scope.cancel()
                else:
                    self._relayed_by = "tasks"
                    nursery.start_soon(self._client_to_server, leftover)
                    nursery.start_soon(self._server_to_client)
        except BaseExceptionGroup as group:
            # One direction failed (and cancelled the other): report that
            # failure itself, e.g. a ProtocolViolation becomes 08P01.
            raise _first_error(group) from None
        if self.relay.halt_error is not None:
            self._terminate_error = self.relay.halt_error
        if self._terminate_error is not None:
            raise self._terminate_error

    # The relay's work, without I/O: each takes the bytes that arrived on one
    # side and returns what to send to the other. Both drivers (the two tasks
    # below for TLS, the reactor for plain TCP) call them.

    def _arm_drain(self) -> None:
        """After the client's Terminate the relay waits for the server to
        close its side — as long as a reply is due, and once none is, at most
        ``_DRAIN_GRACE`` more (a server that took the Terminate as stray bytes,
        e.g. in COPY FROM STDIN, would otherwise wait for the client forever)."""
        ctr = self.relay.ctr
        scope = self._relay_scope
        if scope is not None and ctr.rfq_sent == ctr.rfq_received:
            scope.deadline = min(scope.deadline, trio.current_time() + _DRAIN_GRACE)

    # ------------------------------------------------------------ approvals

    def start_hold(self, channel) -> None:  # type: ignore[no-untyped-def]
        """The reactor's channel holds a statement (relay.hold): wait for its
        decision in a task of the relay's nursery, then release it."""
        self._hold_channel = channel
        assert self._relay_nursery is not None
        self._relay_nursery.start_soon(self._hold_task, channel)

    async def _hold_task(self, channel) -> None:  # type: ignore[no-untyped-def]
        error = await self._decide_hold()
        self._hold_channel = None
        channel.release(error)

    async def _decide_hold(self) -> PgjitError | None:
        """Wait for the held statement's decision (pgjit.gateway.holds): None
        when it runs, else the error it is refused with. A CancelRequest
        meanwhile withdraws it (cancel_hold)."""
        from pgjit.gateway import holds

        self._hold_cancel = trio.Event()
        try:
            return await holds.hold(self, self.relay.hold, self._hold_cancel)
        finally:
            self._hold_cancel = None

    def cancel_hold(self) -> bool:
        """A CancelRequest: withdraw the held statement, if there is one."""
        if self._hold_cancel is None:
            return False
        self._hold_cancel.set()
        return True

    def statement_timeout_seconds(self) -> float | None:
        """The session's statement_timeout — as the client last set it, else as
        the policy's grant sets it (a hold never waits longer)."""
        if self.relay.client_statement_timeout:
            return self.relay.client_statement_timeout
        for key, value in self._grant_settings:
            if key == "statement_timeout":
                return pg_duration_seconds(value) or None  # 0: no limit
        return None

    async def notice(self, text: str) -> None:
        """A NOTICE to the client, between two of the server's messages."""
        data = m.NoticeResponse((("S", "NOTICE"), ("V", "NOTICE"), ("C", "01000"), ("M", text))).encode()
        channel = self._hold_channel
        if channel is not None:
            channel.send_between(data)
            return
        async with self._client_send_lock:
            if not self.relay._s_skip:
                with trio.move_on_after(5):
                    await self.client.send_all(data)

    def record_approval(self, rid: str, event: str, rule: str, req=None) -> None:  # type: ignore[no-untyped-def]
        writer = self.gateway.writer
        if writer is None:
            return
        from pgjit.audit import records

        writer.submit(records.approval(self.id, person=self._person, target=self.database or "", request=rid,
                                       event=event, rule=rule,
                                       decisions=[d.as_dict() for d in req.decisions] if req is not None else None),
                      force=True)

    def upstream_eof(self) -> None:
        """The upstream closed: if the client was not told why, say so."""
        relay = self.relay
        if relay.terminating:
            return  # the server's answer to the client's Terminate
        if (
            not self._client_mid_message
            and relay._s_skip == 0
            and relay._s_pending is None
            and not relay.ctr.last_was_error
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
                    out, stop = self.relay.from_client(data)
                    if out:
                        await up.send_all(out)
                    while self.relay.hold is not None and not stop:
                        error = await self._decide_hold()
                        out, stop = self.relay.from_client(self.relay.release(error))
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
            if not self.relay.terminating:
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
                out = self.relay.from_server(data)
                if self.relay.halted:
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
                    async with self._client_send_lock:
                        await client.send_all(out)
                    self._client_mid_message = self.relay._s_skip > 0
        finally:
            self._relay_scope.cancel()  # type: ignore[union-attr]

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
                if self.relay.ctr.rfq_sent != self.relay.ctr.rfq_received and self._terminate_error is not None:
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
                revoked = await self.broker.revoke_role(self.jit_role.name)
            self._record_role("revoked" if revoked else "revoke_failed")




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
