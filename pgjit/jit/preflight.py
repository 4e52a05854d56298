"""Pre-flight checks of a target database: is it set up the way pgjit needs?

``pgjit check-config --connect`` logs in to every target with the target's own
credential (the JIT admin in OIDC mode, the static user otherwise), reads the
catalog, and reports what is missing, each finding with the SQL a DBA runs to
fix it and the section of ``pgjit/jit/SETUP.md`` that explains it.

The work is split the way the rest of pgjit is: :func:`inspect` reads plain
facts over an :class:`~pgjit.jit.admin.AdminConnection` (read-only catalog
queries, nothing is changed), :func:`judge` is a pure function of those facts
and the target's config, and :func:`check_target` is the two together.
:func:`preflight` adds the connection itself, with a bounded timeout; a target
that cannot be reached is a finding, not an exception.

Role names come from policy files and are treated as untrusted: every name and
literal that goes into SQL, the SQL run here and the SQL shown as a fix alike,
goes through :func:`~pgjit.jit.naming.quote_ident` /
:func:`~pgjit.jit.naming.quote_literal`. Passwords are never part of a finding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from pgjit.errors import UpstreamUnavailable
from pgjit.jit.admin import AdminConnection, AdminConnectionError, AdminSQLError
from pgjit.jit.naming import quote_ident, quote_literal

if TYPE_CHECKING:  # the entry layer's type; never imported at run time
    from pgjit.config import TargetConfig

__all__ = ["ERROR", "INFO", "WARNING", "Finding", "RoleFacts", "ServerFacts", "check_target", "inspect", "judge", "preflight", "role_names"]

ERROR: Final = "error"
WARNING: Final = "warning"
INFO: Final = "info"

SETUP: Final = "pgjit/jit/SETUP.md"
SEE_ROLES: Final = f"{SETUP}, section 1 (Roles)"
SEE_PRIVILEGES: Final = f"{SETUP}, section 2 (Privileges)"
SEE_PG16: Final = f"{SETUP}, section 3 (PostgreSQL 16 and later)"
SEE_OWNER: Final = f"{SETUP}, \"Owner roles\""

#: server_version_num from which CREATEROLE no longer lets a role grant
#: membership in any role: it needs ADMIN OPTION on each.
PG16: Final = 160000

#: Bound on each catalog query once connected.
QUERY_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of a check: ``severity`` is error, warning or info;
    ``fix`` is the SQL (or the action) that mends it; ``see`` where it is explained."""

    severity: str
    message: str
    fix: str | None = None
    see: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"severity": self.severity, "message": self.message, "fix": self.fix, "see": self.see}


@dataclass(frozen=True, slots=True)
class RoleFacts:
    """What the catalog says about one role named in the config or a policy.
    The privilege fields are None when the role does not exist."""

    name: str
    exists: bool
    can_login: bool = False
    superuser: bool = False
    connect: bool | None = None  # has_database_privilege(role, current_database(), 'CONNECT')
    admin_uses: bool | None = None  # pg_has_role(current_user, role, 'USAGE'): admin has its privileges
    admin_option: bool | None = None  # pg_has_role(current_user, role, 'MEMBER WITH ADMIN OPTION')
    create_on_public: bool | None = None  # has_schema_privilege(role, 'public', 'CREATE'); None: no public schema


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """The login role and the server, as the connection sees them."""

    version_num: int
    version: str
    database: str
    user: str
    can_login: bool
    createrole: bool
    superuser: bool
    valid_until: str | None
    user_connect: bool  # the login role may CONNECT to this database
    public_connect: bool  # PUBLIC may CONNECT to this database
    public_schema: bool
    roles: dict[str, RoleFacts] = field(default_factory=dict)


# --------------------------------------------------------------------------
# reading the catalog


def _bool(v: str | None) -> bool | None:
    return None if v is None else v == "t"


def _valid_name(name: Any) -> str | None:
    """Why ``name`` cannot be a PostgreSQL role name, or None."""
    if not isinstance(name, str):
        return f"is not a string ({type(name).__name__})"
    try:
        quote_ident(name)
    except ValueError as e:
        return str(e)
    return None


_SERVER_SQL: Final = """
SELECT current_setting('server_version_num'),
       current_setting('server_version'),
       current_database(),
       current_user,
       r.rolcanlogin, r.rolcreaterole, r.rolsuper, r.rolvaliduntil::text,
       has_database_privilege(current_database(), 'CONNECT'),
       EXISTS (SELECT 1 FROM pg_database d,
                     aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
               WHERE d.datname = current_database() AND a.grantee = 0 AND a.privilege_type = 'CONNECT'),
       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')
FROM pg_roles r WHERE r.rolname = current_user
"""

_ROLES_SQL: Final = """
SELECT v.name, r.oid IS NOT NULL, r.rolcanlogin, r.rolsuper,
       CASE WHEN r.oid IS NOT NULL THEN has_database_privilege(r.oid, current_database(), 'CONNECT') END,
       CASE WHEN r.oid IS NOT NULL THEN pg_has_role(current_user, r.oid, 'USAGE') END,
       CASE WHEN r.oid IS NOT NULL THEN pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION') END,
       CASE WHEN r.oid IS NOT NULL AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')
            THEN has_schema_privilege(r.oid, 'public', 'CREATE') END
FROM (VALUES {values}) AS v(name) LEFT JOIN pg_roles r ON r.rolname = v.name
"""


async def inspect(conn: AdminConnection, role_names: Iterable[str], *, timeout: float = QUERY_TIMEOUT) -> ServerFacts:
    """Read the facts :func:`judge` needs (read-only queries). Names that
    cannot be role names are left out (``judge`` reports them)."""
    rows = await conn.execute(_SERVER_SQL, timeout=timeout)
    if not rows:  # pragma: no cover - current_user always has a pg_roles row
        raise AdminSQLError("XX000", "current_user has no row in pg_roles")
    (vnum, version, database, user, login, createrole, superuser, valid_until, uconnect, pconnect, public) = rows[0]
    names = [n for n in dict.fromkeys(role_names) if _valid_name(n) is None]
    roles: dict[str, RoleFacts] = {}
    if names:
        values = ", ".join(f"({quote_literal(n)})" for n in names)
        for name, exists, r_login, r_super, connect, uses, admin, create in await conn.execute(
            _ROLES_SQL.format(values=values), timeout=timeout
        ):
            assert name is not None
            roles[name] = RoleFacts(
                name=name,
                exists=exists == "t",
                can_login=r_login == "t",
                superuser=r_super == "t",
                connect=_bool(connect),
                admin_uses=_bool(uses),
                admin_option=_bool(admin),
                create_on_public=_bool(create),
            )
    return ServerFacts(
        version_num=int(vnum or 0),
        version=version or "?",
        database=database or "",
        user=user or "",
        can_login=login == "t",
        createrole=createrole == "t",
        superuser=superuser == "t",
        valid_until=valid_until,
        user_connect=uconnect == "t",
        public_connect=pconnect == "t",
        public_schema=public == "t",
        roles=roles,
    )


# --------------------------------------------------------------------------
# judging


@dataclass(frozen=True, slots=True)
class _Use:
    """Where a policy names a role: its file, line and access group."""

    filename: str
    line: int
    group: str

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}" if self.line else self.filename
        return f"{where} (access group {self.group!r})"


def _uses(uses: list[_Use]) -> str:
    shown = ", ".join(str(u) for u in uses[:3])
    return shown + (f" and {len(uses) - 3} more" if len(uses) > 3 else "")


def _names_in(target: "TargetConfig") -> tuple[dict[str, list[_Use]], dict[str, list[_Use]]]:
    """The grant roles and owner roles the target's policy names, with where."""
    grants: dict[str, list[_Use]] = {}
    owners: dict[str, list[_Use]] = {}
    policy = target.policy
    if policy is None:
        return grants, owners
    filename = getattr(policy, "filename", None) or target.policy_path or "<policy>"
    for entry in policy.access:
        use = _Use(filename, getattr(entry, "line", 0), entry.group)
        for role in entry.grant:
            grants.setdefault(role, []).append(use)
        # ``owner`` is optional on access entries (newer policy files).
        owner = getattr(entry, "owner", None)
        if owner:
            owners.setdefault(owner, []).append(use)
    return grants, owners


def role_names(target: "TargetConfig", *, jit: bool) -> list[str]:
    """Every role :func:`judge` asks about for ``target``."""
    if not jit:
        return []
    grants, owners = _names_in(target)
    return list(dict.fromkeys([*grants, *owners, target.jit.owner_role]))


def judge(facts: ServerFacts, target: "TargetConfig", *, jit: bool) -> list[Finding]:
    """The findings for ``target`` given what :func:`inspect` read. ``jit``:
    the gateway runs in OIDC mode (the credential is the JIT broker's admin)."""
    out: list[Finding] = [
        Finding(INFO, f"connected to PostgreSQL {facts.version}, database {facts.database!r}, as {facts.user!r}")
    ]
    user = quote_ident(facts.user)
    pg16 = facts.version_num >= PG16
    if facts.valid_until is not None and facts.valid_until != "infinity":
        out.append(Finding(
            WARNING,
            f"the password of {facts.user!r} stops working at {facts.valid_until} (VALID UNTIL)",
            f"ALTER ROLE {user} VALID UNTIL 'infinity';",
        ))
    if not facts.user_connect:
        # Only a superuser gets here without CONNECT.
        out.append(Finding(
            WARNING,
            f"{facts.user!r} has no CONNECT privilege on database {facts.database!r} (it got in as a superuser)",
            f"GRANT CONNECT ON DATABASE {quote_ident(facts.database)} TO {user};",
            SEE_PRIVILEGES,
        ))
    if not jit:
        if facts.superuser:
            out.append(Finding(
                WARNING,
                f"every session runs as {facts.user!r}, a superuser: only the policy stands between clients and the whole server",
                "log in as a role with just the privileges clients need: targets.<name>.user",
            ))
        return out

    # ---- the JIT admin
    if not facts.createrole:
        out.append(Finding(
            ERROR,
            f"the JIT admin {facts.user!r} lacks CREATEROLE: it cannot create session roles",
            f"ALTER ROLE {user} CREATEROLE;",
            SEE_ROLES,
        ))
    if facts.superuser:
        out.append(Finding(
            WARNING,
            f"the JIT admin {facts.user!r} is a superuser; it needs only CREATEROLE",
            "CREATE ROLE pgjit_admin LOGIN CREATEROLE PASSWORD '…';  -- and use it as targets.<name>.user",
            SEE_ROLES,
        ))

    policy = target.policy
    if policy is None:
        out.append(Finding(ERROR, "no policy: in OIDC mode the policy's access section says what sessions are granted",
                           "set targets.<name>.policy"))
        return out
    grants, owners = _names_in(target)
    if not policy.access:
        out.append(Finding(
            WARNING,
            f"{getattr(policy, 'filename', target.policy_path)}: the policy has no access entries: nobody can log in",
            "add an access entry (group, grant) to the policy",
        ))

    def admin_option_fix(role: str) -> str:
        return f"GRANT {quote_ident(role)} TO {user} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;"

    def named(kind: str, role: str, uses) -> tuple[RoleFacts, str] | None:  # type: ignore[no-untyped-def]
        """The role's facts and quoted name, or None (and an error) for a name
        PostgreSQL could not accept."""
        why = _valid_name(role)
        if why is not None:
            out.append(Finding(ERROR, f"{kind} role {role!r} named at {_uses(uses)} is not a valid role name: {why}",
                               "fix the name in the policy"))
            return None
        return facts.roles.get(role) or RoleFacts(role, False), quote_ident(role)

    # ---- roles sessions are granted
    for role, uses in grants.items():
        if (got := named("grant", role, uses)) is None:
            continue
        r, ident = got
        if not r.exists:
            fix = f"CREATE ROLE {ident} NOLOGIN;"
            if pg16:
                fix += "\n" + admin_option_fix(role)
            out.append(Finding(
                ERROR,
                f"role {role!r} does not exist; it is granted at {_uses(uses)}",
                fix + "\n-- then grant it what the group may reach (GRANT USAGE ON SCHEMA …, GRANT SELECT ON …)",
                SEE_ROLES + " and " + SEE_PRIVILEGES.split(", ", 1)[1],
            ))
            continue
        if r.superuser:
            out.append(Finding(
                ERROR,
                f"grant role {role!r} ({_uses(uses)}) is a superuser: sessions given it would be superusers, "
                f"and a CREATEROLE admin cannot grant it",
                f"ALTER ROLE {ident} NOSUPERUSER;",
                SEE_ROLES,
            ))
        if r.can_login:
            out.append(Finding(
                WARNING,
                f"grant role {role!r} ({_uses(uses)}) can log in; a group role should be NOLOGIN",
                f"ALTER ROLE {ident} NOLOGIN;",
                SEE_ROLES,
            ))
        if pg16 and not r.admin_option:
            out.append(Finding(
                ERROR,
                f"the JIT admin {facts.user!r} has no ADMIN OPTION on {role!r} ({_uses(uses)}): "
                f"since PostgreSQL 16 it cannot put session roles in it",
                admin_option_fix(role),
                SEE_PG16,
            ))

    # ---- CONNECT: a session gets the union of one access entry's grants
    for entry in policy.access:
        present = [g for g in entry.grant if (facts.roles.get(g) or RoleFacts(g, False)).exists]
        if entry.grant and not present:
            continue  # already reported as missing
        if facts.public_connect or any(facts.roles[g].connect for g in present):
            continue
        use = _Use(getattr(policy, "filename", None) or target.policy_path or "<policy>", getattr(entry, "line", 0), entry.group)
        to = quote_ident(present[0]) if present else "<a role of this entry>"
        out.append(Finding(
            ERROR,
            f"sessions of {use} cannot connect: neither PUBLIC nor "
            + (f"any of {', '.join(repr(g) for g in present)}" if present else "any granted role")
            + f" has CONNECT on database {facts.database!r}",
            f"GRANT CONNECT ON DATABASE {quote_ident(facts.database)} TO {to};",
            SEE_PRIVILEGES,
        ))

    # ---- owner roles (access entries' optional ``owner``)
    for role, uses in owners.items():
        if (got := named("owner", role, uses)) is None:
            continue
        r, ident = got
        if not r.exists:
            fix = f"CREATE ROLE {ident} NOLOGIN;\nGRANT USAGE, CREATE ON SCHEMA public TO {ident};"
            if pg16:
                fix += "\n" + admin_option_fix(role)
            out.append(Finding(ERROR, f"owner role {role!r} does not exist; it is named at {_uses(uses)}", fix, SEE_OWNER))
            continue
        if r.superuser:
            out.append(Finding(
                ERROR,
                f"owner role {role!r} ({_uses(uses)}) is a superuser: sessions would act as a superuser, "
                f"and a CREATEROLE admin cannot grant it",
                f"ALTER ROLE {ident} NOSUPERUSER;",
                SEE_OWNER,
            ))
        if r.can_login:
            out.append(Finding(
                WARNING,
                f"owner role {role!r} ({_uses(uses)}) can log in; it should be NOLOGIN (sessions act as it, nobody logs in as it)",
                f"ALTER ROLE {ident} NOLOGIN;",
                SEE_OWNER,
            ))
        if pg16 and not r.admin_option:
            out.append(Finding(
                ERROR,
                f"the JIT admin {facts.user!r} has no ADMIN OPTION on owner role {role!r} ({_uses(uses)}): "
                f"since PostgreSQL 16 it cannot grant it to session roles",
                admin_option_fix(role),
                SEE_PG16,
            ))
        if r.create_on_public is False:
            out.append(Finding(
                WARNING,
                f"owner role {role!r} ({_uses(uses)}) has no CREATE on schema public: migrations run as it cannot create there",
                f"GRANT USAGE, CREATE ON SCHEMA public TO {ident};  -- and on every other schema it migrates",
                SEE_OWNER,
            ))

    # ---- jit.owner_role: receives what session roles created (REASSIGN OWNED)
    owner_role = target.jit.owner_role
    why = _valid_name(owner_role)
    if why is not None:
        out.append(Finding(ERROR, f"jit.owner_role {owner_role!r} is not a valid role name: {why}",
                           "fix targets.<name>.jit.owner_role"))
        return out
    r = facts.roles.get(owner_role) or RoleFacts(owner_role, False)
    ident = quote_ident(owner_role)
    if not r.exists:
        out.append(Finding(
            ERROR,
            f"jit.owner_role {owner_role!r} does not exist: dropping a session role that created anything would fail",
            f"CREATE ROLE {ident} NOLOGIN;\nGRANT {ident} TO {user};",
            SEE_ROLES,
        ))
        return out
    if not r.admin_uses:
        out.append(Finding(
            ERROR,
            f"the JIT admin {facts.user!r} is not a member of jit.owner_role {owner_role!r}: "
            f"REASSIGN OWNED … TO {owner_role} would be refused",
            f"GRANT {ident} TO {user};",
            SEE_ROLES,
        ))
    if r.superuser:
        out.append(Finding(
            WARNING,
            f"jit.owner_role {owner_role!r} is a superuser: what session roles created would belong to a superuser",
            f"ALTER ROLE {ident} NOSUPERUSER;",
            SEE_ROLES,
        ))
    if r.can_login:
        out.append(Finding(WARNING, f"jit.owner_role {owner_role!r} can log in; it should be NOLOGIN",
                           f"ALTER ROLE {ident} NOLOGIN;", SEE_ROLES))
    return out


# --------------------------------------------------------------------------
# together


async def check_target(conn: AdminConnection, target: "TargetConfig", *, jit: bool, timeout: float = QUERY_TIMEOUT) -> list[Finding]:
    """Inspect the target over ``conn`` and judge it (see :func:`judge`)."""
    facts = await inspect(conn, role_names(target, jit=jit), timeout=timeout)
    return judge(facts, target, jit=jit)


def _connect_fix(target: "TargetConfig", jit: bool, detail: str | None = None) -> str:
    """What to do about a failed login; ``detail`` is the server's
    ``SQLSTATE: message`` when it answered."""
    user, database = target.user, target.database
    try:
        uid, did = quote_ident(user), quote_ident(database)
    except ValueError:
        uid, did = repr(user), repr(database)
    sqlstate = (detail or "").split(":", 1)[0]
    if sqlstate == "42501":  # no CONNECT privilege
        return f"GRANT CONNECT ON DATABASE {did} TO {uid};"
    if sqlstate == "3D000":
        return f"check targets.{target.name}.database: database {database!r} does not exist on that server"
    if sqlstate == "28P01" and jit:
        return (f"check targets.{target.name}.password (or password_file); a DBA resets it with "
                f"ALTER ROLE {uid} PASSWORD '…';  -- the role needs LOGIN CREATEROLE")
    if sqlstate in ("28P01", "28000"):
        return (f"check targets.{target.name}.user and password, that the role exists with LOGIN, and that "
                f"pg_hba.conf lets it in to {database!r} with scram-sha-256 or md5")
    who = "the JIT admin (LOGIN CREATEROLE)" if jit else "the user"
    return (
        f"check targets.{target.name}: host, port, database, user and password; that PostgreSQL is running "
        f"and that pg_hba.conf lets {who} in with scram-sha-256 or md5"
    )


async def preflight(
    connect: Callable[[], Awaitable[AdminConnection]],
    target: "TargetConfig",
    *,
    jit: bool,
    connect_timeout: float = 10.0,
    query_timeout: float = QUERY_TIMEOUT,
) -> list[Finding]:
    """Connect with ``connect()`` (bounded by ``connect_timeout``), check, close.
    Failing to connect, or a query failing, is an error finding."""
    see = SEE_ROLES if jit else None
    try:
        with trio.fail_after(connect_timeout):
            conn = await connect()
    except trio.TooSlowError:
        return [Finding(ERROR, f"cannot connect: no answer within {connect_timeout:g} s", _connect_fix(target, jit), see)]
    except UpstreamUnavailable as e:
        reason = e.message + (f": {e.detail}" if e.detail else "")
        return [Finding(ERROR, f"cannot connect: {reason}", _connect_fix(target, jit, e.detail), see)]
    except Exception as e:  # TLS, protocol or OS errors: the reason, never a traceback
        return [Finding(ERROR, f"cannot connect: {type(e).__name__}: {e}", _connect_fix(target, jit), see)]
    try:
        return await check_target(conn, target, jit=jit, timeout=query_timeout)
    except (AdminSQLError, AdminConnectionError) as e:
        return [Finding(ERROR, f"a catalog query failed: {e}", "run check-config again; if it persists, report it")]
    finally:
        await conn.aclose()
