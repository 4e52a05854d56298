"""The just-in-time role broker: one PostgreSQL role per client session.

``create_role`` makes a LOGIN role with a random password (sent only as a
SCRAM verifier), ``VALID UNTIL`` the session's deadline and ``CONNECTION LIMIT
1``, in one transaction. ``revoke_role`` locks it (NOLOGIN), terminates its
backends, hands what it created to the owner role and drops it. ``sweep``
removes roles a killed gateway left behind; it runs under a PostgreSQL
advisory lock so replicas take turns, and never touches a role that is
connected, live in this process, or younger than ``setup_grace``.

Security invariant #5: a JIT role never outlives its session by more than the
sweep interval (the sweeper), and never outlives its VALID UNTIL at all
(PostgreSQL refuses the login by itself; the sweeper also terminates sessions
of expired roles).

Every identifier and literal goes through :func:`~pgjit.jit.naming.quote_ident`
/ :func:`~pgjit.jit.naming.quote_literal`. The password is never logged, never
put in SQL in clear, and hidden from ``repr``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import trio

from pgjit import metrics
from pgjit.errors import InvalidAuthorization, UpstreamUnavailable
from pgjit.jit.admin import AdminConnection, AdminConnectionError, AdminSQLError
from pgjit.jit.naming import is_jit_role_name, like_escape, quote_ident, quote_literal, role_name
from pgjit.protocol.scram import make_verifier

log = logging.getLogger("pgjit.jit")

#: Role settings a session may get (``ALTER ROLE … SET``); nothing else.
ALLOWED_SETTINGS = frozenset({"statement_timeout", "idle_in_transaction_session_timeout", "default_transaction_read_only"})

#: The advisory lock key every pgjit sweeper takes (first 8 bytes of
#: sha256("pgjit-sweeper") as a signed bigint).
SWEEP_LOCK_KEY = int.from_bytes(hashlib.sha256(b"pgjit-sweeper").digest()[:8], "big", signed=True)

#: Pauses between revoke attempts (then give up until the next sweep).
REVOKE_BACKOFF = (0.1, 0.2, 0.4, 0.8)

#: Pauses while waiting for a terminated role's backends to exit (~1 s in all).
TERMINATE_POLL = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.2, 0.25, 0.25)

#: Of ``revoke_timeout``, the time kept for the final NOLOGIN after a timeout.
_LOCK_OUT_RESERVE = 1.0

UNDEFINED_OBJECT = "42704"  # role does not exist

_MAX_PERSON_IN_COMMENT = 1000
_CREATED = re.compile(r" created (\S+)\Z")


@dataclass(frozen=True, slots=True)
class JitRole:
    name: str
    password: str = field(repr=False)
    valid_until: float


@dataclass(slots=True)
class SweepReport:
    skipped: bool = False  # another sweeper holds the lock
    examined: int = 0  # JIT roles seen
    revoked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # left NOLOGIN for the next sweep
    aborted: bool = False  # the admin connection broke mid-sweep (lock lost)
    seconds: float = 0.0


class JitRoleError(UpstreamUnavailable):
    """The session's role could not be created (08006 FATAL to the client;
    the cause is logged, not shown)."""

    def __init__(self, message: str = "could not prepare the database session", **kw) -> None:
        super().__init__(message, **kw)


class JitSetupError(InvalidAuthorization):
    """The session's role cannot be made as the policy says, because of the
    database's setup (a granted role is missing, the admin may not grant it):
    28000 FATAL naming the role and the fix. Nothing of the client's ran."""


_NO_ROLE = re.compile(r'role "((?:[^"]|"")*)" does not exist')
_SETUP_FIX = "a DBA creates it once (pgjit/jit/SETUP.md); `pgjit check-config --connect` lists everything that is missing"


def setup_error(sqlstate: str, message: str, grants: Sequence[str], owner: str | None) -> JitSetupError | None:
    """The client-facing error for a CREATE ROLE that failed because of the
    database's setup, or None when the failure is something else."""
    if sqlstate == UNDEFINED_OBJECT:
        mo = _NO_ROLE.search(message)
        missing = mo.group(1) if mo else None
        what = "owner role" if missing is not None and missing == owner else "role"
        if missing is None:
            return JitSetupError(
                "the policy grants a role that does not exist on the database server",
                detail=f"roles granted: {', '.join([*grants, *([owner] if owner else [])])}",
                hint=_SETUP_FIX,
            )
        return JitSetupError(
            f'the policy grants {what} "{missing}", which does not exist on the database server',
            hint=f"a DBA runs CREATE ROLE {quote_ident(missing)} NOLOGIN and grants it what sessions need (pgjit/jit/SETUP.md); "
            "`pgjit check-config --connect` lists everything that is missing",
        )
    if sqlstate == "42501" and "grant" in message.lower():
        return JitSetupError(
            "pgjit's admin role may not grant the roles this policy grants",
            detail=message,
            hint="on PostgreSQL 16 and later the admin needs ADMIN OPTION on each granted role (pgjit/jit/SETUP.md, section 3)",
        )
    return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _comment_text(text: str) -> str:
    """Attacker-controlled text made storable: no NUL, valid UTF-8, bounded."""
    text = text.replace("\x00", "\ufffd")
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > _MAX_PERSON_IN_COMMENT:
        text = text[:_MAX_PERSON_IN_COMMENT] + "…"
    return text


def parse_created(comment: str | None) -> float | None:
    """The epoch of ``… created <iso>`` at the very end of a role comment.

    Anchored at the end: the person (attacker-controlled) sits before it and
    may itself contain " created 2999-…"."""
    if not comment or not comment.startswith("pgjit session "):
        return None
    mo = _CREATED.search(comment)
    if not mo:
        return None
    try:
        dt = datetime.fromisoformat(mo.group(1).replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()


class JitBroker:
    """Creates, revokes and sweeps JIT roles over one admin connection.

    ``connect_admin`` returns a fresh :class:`AdminConnection` (the broker calls
    it lazily and again after the connection breaks). ``live`` holds the names
    of roles this process has created and not yet revoked; the sweeper never
    touches them (unless expired)."""

    def __init__(
        self,
        connect_admin: Callable[[], Awaitable[AdminConnection]],
        *,
        owner_role: str,
        prefix: str = "pgjit_",
        sweep_interval: float = 60.0,
        setup_grace: float = 120.0,
        scram_iterations: int = 4096,
        admin_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        revoke_timeout: float = 5.0,
    ) -> None:
        quote_ident(owner_role)  # validate early
        role_name("x", prefix)  # validates the prefix
        if scram_iterations < 4096:
            # PostgreSQL accepts fewer, but a verifier is only as strong as this.
            raise ValueError("scram_iterations must be at least 4096")
        self._connect_admin = connect_admin
        self.owner_role = owner_role
        self.prefix = prefix
        self.sweep_interval = sweep_interval
        self.setup_grace = setup_grace
        self.scram_iterations = scram_iterations
        self.admin_timeout = admin_timeout
        self.connect_timeout = connect_timeout
        if revoke_timeout <= _LOCK_OUT_RESERVE:
            raise ValueError(f"revoke_timeout must be more than {_LOCK_OUT_RESERVE} s")
        self.revoke_timeout = revoke_timeout
        self.live: set[str] = set()
        # Called with (role, reason) after each role this broker dropped (the audit trail's hook).
        self.on_revoked: Callable[[str, str], None] | None = None
        self._admin: AdminConnection | None = None
        self._generation = 0  # bumped on every (re)connect
        self._connect_lock = trio.Lock()
        self._sweep_lock = trio.Lock()

    # -- the admin connection -------------------------------------------------

    async def _connection(self) -> AdminConnection:
        async with self._connect_lock:
            if self._admin is None or self._admin.closed:
                try:
                    with trio.fail_after(self.connect_timeout):
                        self._admin = await self._connect_admin()
                except trio.TooSlowError:
                    raise AdminConnectionError("connecting the admin connection timed out") from None
                except UpstreamUnavailable as e:
                    raise AdminConnectionError(f"{e.message}: {e.detail}" if e.detail else e.message) from None
                except OSError as e:
                    raise AdminConnectionError(str(e)) from None
                self._generation += 1
            return self._admin

    async def _execute(self, sql: str, *, retry: bool = True) -> list[tuple[str | None, ...]]:
        """Run ``sql``; if the connection is broken, reconnect once and run it
        again (only for statements that are safe to repeat)."""
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            conn = await self._connection()
            try:
                return await conn.execute(sql, timeout=self.admin_timeout)
            except AdminConnectionError:
                if attempt + 1 >= attempts:
                    raise
                log.warning("admin connection broken, reconnecting")
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        async with self._connect_lock:
            if self._admin is not None:
                await self._admin.aclose()
                self._admin = None

    # -- create ---------------------------------------------------------------

    def _create_sql(
        self,
        name: str,
        verifier: str,
        person: str,
        session_id: str,
        grants: Sequence[str],
        valid_until: float,
        settings: Mapping[str, str],
        created: float,
        owner: str | None = None,
    ) -> str:
        role = quote_ident(name)
        create = f"CREATE ROLE {role} LOGIN PASSWORD {quote_literal(verifier)} VALID UNTIL {quote_literal(_iso(valid_until))} CONNECTION LIMIT 1"
        members_of = list(dict.fromkeys([*grants, *([owner] if owner else [])]))
        if members_of:
            create += " IN ROLE " + ", ".join(quote_ident(g) for g in members_of)
        comment = f"pgjit session {_comment_text(session_id)} for {_comment_text(person)} created {_iso(created)}"
        stmts = ["BEGIN", create, f"COMMENT ON ROLE {role} IS {quote_literal(comment)}"]
        if owner:
            # The server applies this at login, before the client's first
            # byte: current_user is the owner for the whole session, so what
            # it creates belongs to the owner. RESET ROLE and DISCARD ALL come
            # back to it; only SET ROLE / set_config('role') leave it, and the
            # gate refuses those (role_change).
            stmts.append(f"ALTER ROLE {role} SET role = {quote_literal(owner)}")
        for key in sorted(settings):
            stmts.append(f"ALTER ROLE {role} SET {key} = {quote_literal(str(settings[key]))}")
        stmts.append("COMMIT")
        return ";\n".join(stmts)

    async def create_role(
        self,
        person: str,
        session_id: str,
        grants: Sequence[str],
        valid_until: float,
        settings: Mapping[str, str],
        *,
        owner: str | None = None,
    ) -> JitRole:
        """Create the session's role. Raises ValueError for settings outside
        :data:`ALLOWED_SETTINGS` or unusable grant names, and
        :class:`JitRoleError` if PostgreSQL refuses or cannot be reached (the
        cause is logged). Nothing is left behind on failure.

        ``owner``: a stable role the session acts as — the role is made a
        member of it and its ``role`` setting names it."""
        bad = set(settings) - ALLOWED_SETTINGS
        if bad:
            raise ValueError(f"role settings not allowed: {', '.join(sorted(bad))}")
        for value in settings.values():
            quote_literal(str(value))
        for g in grants:
            quote_ident(g)
        if owner is not None:
            quote_ident(owner)
            if is_jit_role_name(owner, self.prefix) or owner == self.owner_role:
                raise ValueError(f"owner {owner!r} cannot be a JIT role or the reassign target {self.owner_role!r}")
        if not math.isfinite(valid_until):
            raise ValueError("valid_until must be a finite epoch time")
        started = time.monotonic()
        last_error: Exception | None = None
        # Two attempts, each with a fresh name: if the connection broke after
        # COMMIT reached the server, the first role exists but nobody knows
        # its password; it is not in ``live`` and the sweeper removes it.
        for attempt in range(2):
            name = role_name(person, self.prefix)
            password = secrets.token_urlsafe(32)
            # PBKDF2 (~1.5 ms at 4096 iterations) releases the GIL: keep it
            # off the event loop that relays every other session.
            verifier = await trio.to_thread.run_sync(make_verifier, password, None, self.scram_iterations)
            created = time.time()
            sql = self._create_sql(name, verifier, person, session_id, grants, valid_until, settings, created, owner)
            self.live.add(name)
            try:
                await self._execute(sql, retry=False)
            except AdminConnectionError as e:
                self.live.discard(name)
                last_error = e
                log.warning(
                    "admin connection broken while creating a role",
                    extra={"role": name, "session_id": session_id, "attempt": attempt + 1, "error": str(e)},
                )
                continue
            except AdminSQLError as e:
                self.live.discard(name)
                log.error(
                    "creating a role failed",
                    extra={"role": name, "session_id": session_id, "sqlstate": e.sqlstate, "error": e.message},
                )
                refusal = setup_error(e.sqlstate, e.message, grants, owner)
                if refusal is not None:
                    raise refusal from e
                raise JitRoleError() from e
            except BaseException:
                self.live.discard(name)
                raise
            log.info(
                "role created",
                extra={
                    "role": name,
                    "session_id": session_id,
                    "valid_until": _iso(valid_until),
                    "grants": ",".join(grants),
                    "owner": owner or "",
                    "ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
            metrics.JIT_CONNECT_SECONDS.observe(time.monotonic() - started)
            metrics.JIT_ROLE_EVENTS.labels("created").inc()
            return JitRole(name, password, valid_until)
        raise JitRoleError() from last_error

    # -- revoke ---------------------------------------------------------------

    def _check_revocable(self, name: str) -> None:
        if not isinstance(name, str) or not is_jit_role_name(name, self.prefix):
            raise ValueError(f"refusing to revoke {name!r}: not a JIT role name with prefix {self.prefix!r}")
        if name == self.owner_role:
            raise ValueError(f"refusing to revoke the owner role {name!r}")

    async def _revoke_once(self, name: str) -> None:
        role = quote_ident(name)
        who = quote_literal(name)
        # 1. No new logins, committed on its own so it sticks whatever follows.
        await self._execute(f"ALTER ROLE {role} NOLOGIN")
        # 2. Take the role's privileges (PostgreSQL 15: a CREATEROLE role may
        #    grant non-superuser roles) — needed to signal its backends and
        #    for REASSIGN/DROP OWNED — and end its sessions.
        signalled = await self._execute(
            f"GRANT {role} TO CURRENT_USER;\n"
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {who}"
        )
        if signalled:
            # Wait for them to exit (their temporary objects and locks go with
            # them). Polled here rather than with pg_terminate_backend's own
            # timeout, which sleeps in 100 ms steps while holding the admin
            # connection that every session's create_role needs.
            waited = 0.0
            for pause in TERMINATE_POLL:
                await trio.sleep(pause)
                waited += pause
                left = await self._execute(f"SELECT count(*) FROM pg_stat_activity WHERE usename = {who}")
                if left and left[0][0] == "0":
                    break
            else:
                log.warning("backends of a revoked role still running", extra={"role": name, "waited_s": round(waited, 3)})
        # 3. Hand over what it created, drop the rest (its grants), drop it.
        await self._execute(
            f"BEGIN;\n"
            f"REASSIGN OWNED BY {role} TO {quote_ident(self.owner_role)};\n"
            f"DROP OWNED BY {role};\n"
            f"DROP ROLE {role};\n"
            f"COMMIT"
        )

    async def revoke_role(self, name: str, *, reason: str = "session ended") -> bool:
        """Lock, disconnect and drop a JIT role. True when the role is gone
        (also if it did not exist); False when it could only be made NOLOGIN
        (or not even that) — the sweeper retries. Never raises for database
        trouble; raises ValueError for a name that is not a JIT role.

        Shielded from cancellation and bounded by ``revoke_timeout`` seconds,
        so it can be awaited from a cancelled session's ``finally``."""
        self._check_revocable(name)
        self.live.discard(name)
        with trio.CancelScope(shield=True):
            deadline = trio.current_time() + self.revoke_timeout
            with trio.move_on_after(self.revoke_timeout - _LOCK_OUT_RESERVE):
                return await self._revoke_with_retries(name, reason, deadline - _LOCK_OUT_RESERVE)
            log.warning("revoking a role timed out", extra={"role": name, "reason": reason})
            with trio.move_on_after(_LOCK_OUT_RESERVE):
                return await self._lock_out(name, reason, "timed out")
            return False

    async def _revoke_with_retries(self, name: str, reason: str, deadline: float) -> bool:
        started = time.monotonic()
        error = ""
        for attempt, pause in enumerate((*REVOKE_BACKOFF, None)):
            try:
                await self._revoke_once(name)
            except AdminSQLError as e:
                if e.sqlstate == UNDEFINED_OBJECT:
                    log.info("role already gone", extra={"role": name, "reason": reason})
                    return True
                error = f"{e.sqlstate}: {e.message}"
            except AdminConnectionError as e:
                error = str(e)
            else:
                metrics.JIT_ROLE_EVENTS.labels("revoked" if reason == "session ended" else "swept").inc()
                if self.on_revoked is not None:
                    self.on_revoked(name, reason)
                log.info(
                    "role revoked",
                    extra={"role": name, "reason": reason, "attempts": attempt + 1, "ms": round((time.monotonic() - started) * 1000, 1)},
                )
                return True
            log.warning("revoking a role failed", extra={"role": name, "attempt": attempt + 1, "error": error})
            if pause is None or trio.current_time() + pause >= deadline:
                break
            await trio.sleep(pause)
        return await self._lock_out(name, reason, error)

    async def _lock_out(self, name: str, reason: str, error: str) -> bool:
        """Give up for now, but make sure the role cannot log in."""
        locked = False
        try:
            await self._execute(f"ALTER ROLE {quote_ident(name)} NOLOGIN")
            locked = True
        except AdminSQLError as e:
            if e.sqlstate == UNDEFINED_OBJECT:
                return True
        except AdminConnectionError:
            pass
        log.error(
            "role not dropped; the sweeper will retry",
            extra={"role": name, "reason": reason, "nologin": locked, "error": error},
        )
        return False

    # -- sweep ----------------------------------------------------------------

    def _sweep_sql(self) -> str:
        pattern = quote_literal(like_escape(self.prefix) + "%")
        return (
            "SELECT r.rolname,\n"
            "       (r.rolvaliduntil IS NOT NULL AND r.rolvaliduntil < now()) AS expired,\n"
            "       EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.usename = r.rolname) AS connected,\n"
            "       shobj_description(r.oid, 'pg_authid') AS comment\n"
            "FROM pg_roles r\n"
            f"WHERE r.rolname LIKE {pattern}\n"
            "  AND NOT r.rolsuper\n"
            "  AND r.rolname <> current_user\n"
            f"  AND r.rolname <> {quote_literal(self.owner_role)}\n"
            "ORDER BY r.rolname"
        )

    async def sweep(self) -> SweepReport:
        """Revoke JIT roles that are expired, or disconnected, not live here
        and older than ``setup_grace``. Skipped (``report.skipped``) when
        another sweeper — in this process or any replica — is running."""
        report = SweepReport()
        started = time.monotonic()
        if self._sweep_lock.locked():
            report.skipped = True
            return report
        async with self._sweep_lock:
            got = await self._execute(f"SELECT pg_try_advisory_lock({SWEEP_LOCK_KEY})")
            generation = self._generation
            if not got or got[0][0] != "t":
                report.skipped = True
                log.debug("sweep skipped: another sweeper holds the lock")
                return report
            try:
                await self._sweep_locked(report, generation)
            finally:
                if self._generation == generation and self._admin is not None and not self._admin.closed:
                    with trio.CancelScope(shield=True), trio.move_on_after(self.admin_timeout):
                        try:
                            await self._execute(f"SELECT pg_advisory_unlock({SWEEP_LOCK_KEY})", retry=False)
                        except (AdminSQLError, AdminConnectionError) as e:
                            log.warning("releasing the sweep lock failed", extra={"error": str(e)})
        report.seconds = time.monotonic() - started
        if report.revoked or report.failed or report.aborted:
            log.info(
                "sweep done",
                extra={"examined": report.examined, "revoked": len(report.revoked), "failed": len(report.failed), "aborted": report.aborted},
            )
        return report

    async def _sweep_locked(self, report: SweepReport, generation: int) -> None:
        rows = await self._execute(self._sweep_sql(), retry=False)
        now = time.time()
        for name, expired, connected, comment in rows:
            if name is None or not is_jit_role_name(name, self.prefix):
                continue
            report.examined += 1
            if expired == "t":
                reason = "expired"
            elif connected == "t" or name in self.live:
                continue
            else:
                created = parse_created(comment)
                if created is not None and now - created < self.setup_grace:
                    continue
                reason = "orphaned"
            if self._generation != generation:
                # Reconnected: the advisory lock went with the old connection.
                report.aborted = True
                return
            if await self.revoke_role(name, reason=reason):
                report.revoked.append(name)
            else:
                report.failed.append(name)

    async def run_sweeper(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Sweep now, then every ``sweep_interval`` seconds, forever. Errors
        are logged and the sweep retried next time; never raises (except
        Cancelled)."""
        task_status.started()
        while True:
            try:
                await self.sweep()
            except Exception as e:  # noqa: BLE001 - the sweeper must not crash the gateway
                log.warning("sweep failed", extra={"error": f"{type(e).__name__}: {e}"})
            await trio.sleep(self.sweep_interval)


__all__ = [
    "ALLOWED_SETTINGS",
    "JitBroker",
    "JitRole",
    "JitRoleError",
    "JitSetupError",
    "SWEEP_LOCK_KEY",
    "SweepReport",
    "parse_created",
]
