"""The gateway: listeners, the session registry, cancel routing and shutdown.

Listeners and sessions live in separate nurseries, so shutdown stops accepting
first and then gives open sessions a grace period before ending them with
57P01. A third, background nursery holds what outlives the drain: the relay
reactor, the JIT sweepers and the JWKS refresher. ``Gateway.serve`` is started with ``nursery.start`` and reports the
bound addresses through ``task_status.started()``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import socket
import ssl

import trio

from pgjit import metrics
from pgjit.api import server as api_server
from pgjit.gateway.clientauth import ClientAuthenticator, LoopbackAnyPassword, OIDCAuthenticator
from pgjit.config import Config, TargetConfig
from pgjit.errors import AdminShutdown, TooManyConnections
from pgjit.jit.admin import AdminConnection
from pgjit.jit.broker import JitBroker
from pgjit.gateway.catalogkeeper import CatalogKeeper
from pgjit.policy.gate import Gate
from pgjit.protocol import messages as m
from pgjit.gateway.reactor import Reactor
from pgjit.gateway.session import Session
from pgjit.gateway.transport import SocketTransport
from pgjit.gateway.upstream import make_upstream_tls_context, send_cancel

log = logging.getLogger("pgjit.gateway.server")

# Clients beyond max_clients still get a proper 53300 error; this many of them
# at once at most, after which excess connections are closed at once.
_EXCESS_ALLOWANCE = 64


def open_audit(config: Config):  # type: ignore[no-untyped-def]
    """The audit writer for ``config`` (audit section present), started: a
    process of its own (pgjit.audit.process), off the relay's GIL.
    An SQLite store (this gateway's own file) is created or migrated here; a
    PostgreSQL one must be current already (``pgjit store upgrade``: a
    migration of a shared store is an operator's step). Raises
    pgjit.audit.store.StoreError when the store cannot be used."""
    from pgjit.audit.process import ProcessWriter
    from pgjit.audit.store import Store, upgrade

    assert config.store is not None and config.audit is not None
    url = config.store.url
    if url.startswith("sqlite:"):
        upgrade(url)
    Store(url).close()  # usable, at the right revision: StoreError here, before anything listens
    a = config.audit
    writer = ProcessWriter(url, a.checkpoint_key, capacity=a.buffer, checkpoint_every=a.checkpoint_every,
                           checkpoint_seconds=a.checkpoint_seconds, sink=a.sink, log_level=config.log.level,
                           log_file=config.log.file)
    writer.on_error = metrics.AUDIT_STORE_ERRORS.inc
    return writer.start()


def policy_hashes(config: Config) -> dict[str, str]:
    out = {}
    for t in config.targets.values():
        if t.policy_path:
            try:
                out[t.name] = hashlib.sha256(open(t.policy_path, "rb").read()).hexdigest()
            except OSError:
                out[t.name] = "unreadable"
    return out


def masking_key(config: Config) -> bytes:
    import hashlib
    import hmac
    import os
    import secrets

    env = os.environ.get("PGJIT_MASKING_KEY")
    if env:
        return env.encode("utf-8")
    if config.audit is not None and config.audit.checkpoint_key:
        return hmac.new(config.audit.checkpoint_key, b"pgjit masking hash key", hashlib.sha256).digest()
    return secrets.token_bytes(32)


class Gateway:
    def __init__(self, config: Config, authenticator: ClientAuthenticator | None = None, *, writer=None) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        # The audit trail's writer (pgjit.audit.writer), when the config has an audit section.
        self.writer = writer
        if writer is None and config.audit is not None:
            self.writer = open_audit(config)
        self.policy_hashes = policy_hashes(config)
        self.verifier = None
        self.brokers: dict[str, JitBroker] = {}
        self.expiry_grace = 0.0
        if config.oidc is not None:
            from pgjit.identity import TokenVerifier
            from pgjit.identity.http import make_fetcher

            self.verifier = TokenVerifier(config.oidc.verifier, make_fetcher())
            self.expiry_grace = config.oidc.expiry_grace
            authenticator = authenticator or OIDCAuthenticator(
                self.verifier, allow_insecure_loopback=config.oidc.allow_insecure_loopback
            )
        self.authenticator = authenticator or LoopbackAnyPassword()
        self.sessions: set["Session"] = set()
        self.starting = 0  # sessions still in startup or authentication
        # Bytes of incomplete client messages held by all sessions (limits.max_buffered).
        self.buffered = 0
        self._turning_away = 0  # tasks telling excess connections 53300
        # Cancel routing: sessions by the secret of the key pgjit gave them
        # (their process id is the upstream's real one, so not unique here).
        self._by_secret: dict[bytes, "Session"] = {}
        self._shutdown = trio.Event()
        self._draining = False
        self.client_tls_context = self._make_client_tls_context()
        self._upstream_tls: dict[str, ssl.SSLContext] = {}
        for t in config.targets.values():
            if t.tls.mode != "disable":
                self._upstream_tls[t.name] = make_upstream_tls_context(t.tls.mode, t.tls.ca)
        if config.oidc is not None:
            for t in config.targets.values():
                self.brokers[t.name] = JitBroker(
                    functools.partial(
                        AdminConnection.connect, t.host, t.port, t.database, t.user, t.password,
                        t.tls.mode, self._upstream_tls.get(t.name), t.tls.server_name,
                        parameters={"application_name": "pgjit:jit-broker"},
                    ),
                    owner_role=t.jit.owner_role,
                    sweep_interval=t.jit.sweep_interval,
                    setup_grace=max(t.jit.setup_grace, config.timeouts.upstream_connect * 2),
                    scram_iterations=t.jit.scram_iterations,
                )
        if self.writer is not None:
            for name, broker in self.brokers.items():
                broker.on_revoked = functools.partial(self._record_sweep, name)
        self.addresses: list[tuple[str, int]] = []
        # One statement gate per target with a policy; shared by its sessions
        # so that their caches warm each other.
        self.gates = {t.name: Gate(t.policy) for t in config.targets.values() if t.policy is not None}
        # The key of masking's keyed hash (HMAC): PGJIT_MASKING_KEY, else one
        # derived from the audit checkpoint key, else random per process (the
        # hashes then stay joinable within one gateway process only).
        self.masking_key = masking_key(config)
        # Each gate decides with a snapshot of its target's catalog.
        self.catalogs: dict[str, CatalogKeeper] = {
            name: CatalogKeeper(config.targets[name], gate, self._catalog_connect(config.targets[name]))
            for name, gate in self.gates.items()
        }
        # Relays plain-TCP sessions (TLS sessions use a task per direction).
        self.reactor: Reactor | None = Reactor()
        if self.writer is not None:
            writer = self.writer
            self.reactor.audit_degraded = lambda: writer.degraded
            self.reactor.audit_pump = getattr(writer, "pump", None)
        # Each target's server at the last probe (None: not probed yet); the
        # probes run with the API, for /readyz and pgjit_upstream_up.
        self.upstream_up: dict[str, bool | None] = {name: None for name in config.targets}
        self.upstream_detail: dict[str, str] = {name: "not probed yet" for name in config.targets}
        self.api_addresses: list[tuple[str, int]] = []
        # Statements held for approval (pgjit.gateway.holds): with an approvals
        # section, require_approval holds instead of refusing.
        self.approvals = None
        if config.approvals is not None and config.store is not None:
            from pgjit.approvals.store import ApprovalStore
            from pgjit.gateway.holds import Approvals

            self.approvals = Approvals(config.approvals, ApprovalStore(config.store.url), self.verifier)
        metrics.watch_gateway(self.metrics_state)

    def _catalog_connect(self, t: TargetConfig):  # type: ignore[no-untyped-def]
        return functools.partial(
            AdminConnection.connect, t.host, t.port, t.database, t.user, t.password,
            t.tls.mode, self._upstream_tls.get(t.name), t.tls.server_name,
            parameters={"application_name": "pgjit:catalog"},
        )

    # ----------------------------------------------------------- contexts

    def _make_client_tls_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if not tls.enabled:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls.cert, tls.key)  # type: ignore[arg-type]
        return ctx

    def upstream_tls_context(self, target: TargetConfig) -> ssl.SSLContext | None:
        return self._upstream_tls.get(target.name)

    # ----------------------------------------------------------- sessions

    def new_cancel_key(self, session: "Session") -> m.BackendKeyData:
        """A key with a secret unique in this gateway. Its process id is a
        placeholder until the session has its upstream connection, whose real
        process id replaces it (:meth:`Session` sends the client that one, so
        ``pg_backend_pid()`` and notification pids match what it was told)."""
        while True:
            secret = secrets.token_bytes(4)
            if secret not in self._by_secret:
                break
        self._by_secret[secret] = session
        return m.BackendKeyData(0, secret)

    def forget_session(self, session: "Session") -> None:
        self.sessions.discard(session)
        if self._by_secret.get(session.key.secret_key) is session:
            del self._by_secret[session.key.secret_key]

    def over_client_limit(self, session: "Session") -> bool:
        """After authentication: does this session make one too many? Only
        authenticated sessions count against ``max_clients``; connections still
        in startup have their own, smaller budget (``max_startup``), so that
        unauthenticated sockets cannot take the places of real clients."""
        return len(self.sessions) - self.starting > self.config.listen.max_clients

    def startup_done(self, session: "Session") -> None:
        """The session left startup/authentication (or ended in it)."""
        if session.counted_starting:
            session.counted_starting = False
            self.starting -= 1

    async def handle_cancel(self, req: m.CancelRequest) -> None:
        session = self._by_secret.get(req.secret_key)
        if (
            session is None
            or session.upstream is None
            or not hmac.compare_digest(session.key.secret_key, req.secret_key)
            or session.key.process_id != req.process_id
        ):
            metrics.CANCEL_REQUESTS.labels("unknown").inc()
            log.info("cancel request for an unknown session")
            return
        if session.cancel_hold():
            # The statement waiting for an approval never reached the server:
            # the request is withdrawn and the client gets 57014.
            metrics.CANCEL_REQUESTS.labels("withdrew").inc()
            log.info("cancel request withdrew a held statement", extra={"target_session": session.id})
            return
        metrics.CANCEL_REQUESTS.labels("forwarded").inc()
        log.info("forwarding cancel request", extra={"target_session": session.id})
        await send_cancel(session.upstream)

    # ------------------------------------------------------------ serving

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def serve(self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config.listen
        listeners = await self._bind(cfg.host, cfg.port, cfg.reuse_port, cfg.backlog)
        self.addresses = [s.getsockname()[:2] for s in listeners]
        if self.writer is not None:
            from pgjit.audit import records

            try:
                raw = open(self.config.source, "rb").read()
            except OSError:
                raw = b""  # a config given as text (tests)
            self.writer.submit(records.config_load(hashlib.sha256(raw).hexdigest(), self.policy_hashes), force=True)
        async with trio.open_nursery() as background:
            # Housekeeping lives apart from sessions: it outlasts the drain,
            # so sessions ending during shutdown can still revoke their roles.
            if self.reactor is not None:
                background.start_soon(self.reactor.run)
                background.start_soon(self.reactor.keep_tracked)
            for broker in self.brokers.values():
                background.start_soon(broker.run_sweeper)
            for keeper in self.catalogs.values():
                background.start_soon(keeper.run)
            if self.verifier is not None:
                background.start_soon(self._refresh_jwks)
            if self.approvals is not None:
                background.start_soon(self.approvals.watch)
            if self.config.api is not None:
                await background.start(self._probe_upstreams)
                api_cfg = self.config.api
                self.api_addresses = await background.start(
                    api_server.serve, api_server.Api(self.readiness, self.approvals.api if self.approvals is not None else None),
                    api_cfg.host, api_cfg.port
                )
            async with trio.open_nursery() as session_nursery:
                async with trio.open_nursery() as listen_nursery:
                    for lsock in listeners:
                        listen_nursery.start_soon(self._accept_loop, lsock, session_nursery, Session)
                    log.info("listening", extra={
                        "addresses": ",".join(f"{h}:{p}" for h, p in self.addresses),
                        "relay": "off" if self.reactor is None else "c" if self.reactor.use_core else "python",
                    })
                    task_status.started(self.addresses)
                    _tune_gc()
                    await self._shutdown.wait()
                    listen_nursery.cancel_scope.cancel()
                for lsock in listeners:
                    lsock.close()
                self._draining = True
                await self._drain()
            background.cancel_scope.cancel()
        for broker in self.brokers.values():
            with trio.CancelScope(shield=True):
                await broker.aclose()
        if self.writer is not None:
            with trio.CancelScope(shield=True):
                written = await trio.to_thread.run_sync(self.writer.close, 30.0)
            if not written:
                log.error("audit records could not all be written", extra={"queued": self.writer.depth,
                                                                         "error": self.writer.last_error})
        log.info("stopped")

    def _record_sweep(self, target: str, role: str, reason: str) -> None:
        """A role the sweeper dropped (expired, orphaned): the session's own
        revocations are recorded by the session."""
        if reason == "session ended" or self.writer is None:
            return
        from pgjit.audit import records

        self.writer.submit(records.jit_role(f"swept:{reason}", role, session_id=None, person=None, target=target),
                           force=True)

    # ------------------------------------------------------ health, metrics

    def metrics_state(self) -> dict[str, object]:
        sessions: dict[str, int] = {name: 0 for name in self.config.targets}
        sessions["-"] = 0
        for s in self.sessions:
            sessions[s.database or "-"] = sessions.get(s.database or "-", 0) + 1
        return {
            "sessions": sessions,
            "jit_roles": {name: len(b.live) for name, b in self.brokers.items()},
            "upstream_up": {name: bool(up) for name, up in self.upstream_up.items()},
            "buffered": self.buffered,
            "gate_reused": self.reactor.gate_reused if self.reactor is not None else 0,
            **({"audit_queue": self.writer.depth + (self.reactor.tracked_records if self.reactor is not None else 0),
                "audit_store_up": not self.writer.failing}
               if self.writer is not None else {}),
            **({"approvals_held": self.approvals.held} if self.approvals is not None else {}),
        }

    def readiness(self) -> dict[str, tuple[bool, str]]:
        """/readyz: accepting, every target's server reachable, and every
        gated target's catalog loaded (its sessions fail closed without it)."""
        checks: dict[str, tuple[bool, str]] = {}
        if self.shutdown_requested:
            checks["listening"] = (False, "shutting down")
        else:
            checks["listening"] = (bool(self.addresses), ",".join(f"{h}:{p}" for h, p in self.addresses) or "not yet")
        for name, up in self.upstream_up.items():
            checks[f"upstream:{name}"] = (bool(up), self.upstream_detail[name])
        if self.writer is not None:
            w = self.writer
            # Not ready while writes fail, the store has not answered for a
            # while, or the buffer is full (statements are being refused).
            failing, depth = w.failing, w.depth
            detail = f"{depth} records queued"
            if failing:
                detail += f"; writes failing: {w.last_error}"
            elif depth >= w.capacity:
                detail += f"; the buffer is full ({w.capacity}): writes are behind"
            checks["store"] = (not failing and depth < w.capacity, detail)
        for name, keeper in self.catalogs.items():
            loaded = keeper.loaded.is_set()
            checks[f"catalog:{name}"] = (loaded, "loaded" if loaded else (keeper.last_error or "loading"))
        return checks

    async def _probe_upstreams(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """A TCP connect to each target's server, closed at once (PostgreSQL
        logs nothing for a connection that sends no bytes)."""
        assert self.config.api is not None
        interval = self.config.api.probe_interval
        started = False
        while True:
            async with trio.open_nursery() as probes:
                for target in self.config.targets.values():
                    probes.start_soon(self._probe_one, target)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(interval)

    async def _probe_one(self, target: TargetConfig) -> None:
        try:
            with trio.fail_after(min(2.0, self.config.timeouts.upstream_connect)):
                stream = await trio.open_tcp_stream(target.host, target.port)
            await stream.aclose()
        except (OSError, trio.TooSlowError) as e:
            if self.upstream_up[target.name] is not False:
                log.warning("upstream unreachable", extra={"target": target.name, "error": str(e) or type(e).__name__})
            self.upstream_up[target.name] = False
            self.upstream_detail[target.name] = f"{target.host}:{target.port}: {str(e) or 'timed out'}"
            return
        if self.upstream_up[target.name] is False:
            log.info("upstream reachable again", extra={"target": target.name})
        self.upstream_up[target.name] = True
        self.upstream_detail[target.name] = f"{target.host}:{target.port}"

    async def _refresh_jwks(self) -> None:
        """Keep the issuer's keys warm so that logins do not wait on the IdP."""
        assert self.config.oidc is not None and self.verifier is not None
        while True:
            try:
                n = await trio.to_thread.run_sync(self.verifier.prefetch, abandon_on_cancel=True)
                log.debug("jwks refreshed", extra={"keys": n})
            except Exception as e:  # the IdP being down must not stop the gateway
                log.warning("jwks refresh failed", extra={"error": str(e)})
            await trio.sleep(self.config.oidc.jwks_refresh_interval)

    async def _bind(self, host: str, port: int, reuse_port: bool, backlog: int) -> list[trio.socket.SocketType]:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        out = []
        seen = set()
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = trio.socket.socket(family, type_, proto)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await s.bind(addr)
            s.listen(backlog)
            out.append(s)
            if port == 0:
                # Bind every other address to the same kernel-chosen port.
                port = s.getsockname()[1]
                break
        return out

    async def _accept_loop(self, lsock: trio.socket.SocketType, nursery: trio.Nursery, session_cls: type) -> None:
        while True:
            try:
                tsock, peer = await lsock.accept()
            except OSError as e:
                # EMFILE and friends: back off instead of spinning.
                log.warning("accept failed", extra={"error": str(e)})
                await trio.sleep(0.1)
                continue
            transport = SocketTransport.from_trio_socket(tsock)
            cfg = self.config.listen
            if self._draining or len(self.sessions) > cfg.max_clients + cfg.max_startup + _EXCESS_ALLOWANCE:
                await transport.aclose()
                continue
            if self.starting >= cfg.max_startup:
                # Too many connections not yet authenticated: this one is told
                # so (53300), before anything is read from it, and closed.
                metrics.SESSIONS_TOTAL.labels("-", "too_many_starting").inc()
                if self._turning_away < _EXCESS_ALLOWANCE:
                    self._turning_away += 1
                    nursery.start_soon(self._turn_away, transport)
                else:
                    await transport.aclose()
                continue
            session = session_cls(self, transport, peer)
            self.sessions.add(session)
            self.starting += 1
            session.counted_starting = True
            nursery.start_soon(session.run)

    async def _turn_away(self, transport: SocketTransport) -> None:
        try:
            err = TooManyConnections(
                "sorry, too many clients are connecting at once",
                hint=f"more than listen.max_startup ({self.config.listen.max_startup}) connections are still "
                "authenticating; try again",
            )
            with trio.move_on_after(1):
                await transport.send_all(m.ErrorResponse.from_error(err).encode())
        except Exception:
            pass
        finally:
            self._turning_away -= 1
            await transport.aclose()

    async def _drain(self) -> None:
        grace = self.config.timeouts.shutdown_grace
        log.info("shutting down", extra={"sessions": len(self.sessions), "grace_seconds": grace})
        with trio.move_on_after(grace):
            while self.sessions and not all(s.idle for s in self.sessions):
                await trio.sleep(0.05)
        for s in list(self.sessions):
            s.terminate(AdminShutdown("terminating connection due to administrator command"))


#: Allocations between two young-generation collections (CPython: 700).
GC_YOUNG_THRESHOLD = 10_000
SWITCH_INTERVAL = 0.0005  # seconds (Python's default: 0.005)


def _tune_gc() -> None:
    """Once the gateway is up: what it loaded (modules, the policy, pglast,
    SQLAlchemy) moves out of the collector's view (gc.freeze), and young
    collections come every 10,000 allocations instead of 700. A statement
    allocates a few tracked objects (its record, its statement object), and
    each collection of the older generations walked every object the gateway
    holds: in a benchmark of the audited path, 21 -> 8.5 us of the relay's
    CPU per statement. Cycles are still collected, only less often.

    And the interpreter's switch interval drops to SWITCH_INTERVAL: a thread
    that wants the GIL (the audit writer's, trio's workers) waits that long
    before it asks the relaying thread to let go, and the relaying thread
    then waits as long for it back. At the default 5 ms every session
    stalled that long whenever the writer ran Python while the relay had
    work (audited pgbench -S, 8 clients: 26.5 -> 21.6 % of TPS for the audit)."""
    import gc
    import sys

    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, g1, g2)
