"""The JIT role broker against a real PostgreSQL, as the non-superuser
CREATEROLE admin ``pgjit_admin``.

The one-time setup SQL is taken verbatim from ``pgjit/jit/SETUP.md`` (so the
document is tested too) and applied idempotently as the superuser.
"""

from __future__ import annotations

import logging
import statistics
import time

import psycopg

from pgjit.jit import setupsql
import pytest
import trio

from pgjit.jit.admin import AdminConnection, AdminConnectionError, AdminSQLError
from pgjit.jit.broker import SWEEP_LOCK_KEY, JitBroker, JitRole, JitRoleError, JitSetupError, parse_created
from pgjit.jit.naming import is_jit_role_name

pytestmark = pytest.mark.pg

ADMIN = "pgjit_admin"
ADMIN_PASSWORD = "adminpass"
DB = "appdb"


def setup_blocks(tag: str) -> list[str]:
    """The SQL statements of the ```sql block after ``<!-- setup:<tag> -->``."""
    return setupsql.statements(tag)


def run_idempotent(pg, statements: list[str], dbname: str) -> None:
    with pg.connect(dbname=dbname) as conn:
        for stmt in statements:
            try:
                conn.execute(stmt)
            except psycopg.errors.DuplicateObject:
                pass  # the role exists already (pgjit_admin comes from the fixture)


@pytest.fixture(scope="module")
def jit_pg(pg):
    """``pg`` with SETUP.md applied, a scratch schema session roles may create
    in, and pgjit_admin still a plain CREATEROLE non-superuser."""
    run_idempotent(pg, setup_blocks("cluster"), "postgres")
    if int(pg.execute("SHOW server_version_num")[0][0]) >= 160000:
        run_idempotent(pg, setup_blocks("pg16"), "postgres")
    run_idempotent(pg, setup_blocks("appdb"), DB)
    pg.execute_many(
        [
            "CREATE SCHEMA IF NOT EXISTS jit_scratch AUTHORIZATION app",
            "GRANT USAGE, CREATE ON SCHEMA jit_scratch TO pgjit_read",
        ],
        dbname=DB,
    )
    # The admin the tests use is exactly what SETUP.md asks for, no more.
    row = pg.execute("SELECT rolsuper, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = %s", (ADMIN,))[0]
    assert row == (False, True, True)
    yield pg
    # Leave no JIT role, scratch schema or database behind for other test modules.
    pg.execute("DROP SCHEMA IF EXISTS jit_scratch CASCADE", dbname=DB)
    pg.execute("DROP DATABASE IF EXISTS jit_otherdb")
    for (name,) in pg.execute(r"SELECT rolname FROM pg_roles WHERE rolname LIKE 'pgjit\_%'"):
        if is_jit_role_name(name):
            pg.execute_many([f'REASSIGN OWNED BY "{name}" TO pgjit_owner', f'DROP OWNED BY "{name}"', f'DROP ROLE "{name}"'], dbname=DB)


def connect_admin_factory(pg):
    async def connect_admin() -> AdminConnection:
        return await AdminConnection.connect("127.0.0.1", pg.port, DB, ADMIN, ADMIN_PASSWORD)

    return connect_admin


def make_broker(pg, **kw) -> JitBroker:
    return JitBroker(connect_admin_factory(pg), owner_role="pgjit_owner", **kw)


def run(fn, *args):
    return trio.run(fn, *args)


def login(pg, role: JitRole, **kw) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=pg.port, dbname=DB, user=role.name, password=role.password, autocommit=True, connect_timeout=5, **kw
    )


def role_row(pg, name: str):
    rows = pg.execute(
        "SELECT rolcanlogin, rolconnlimit, extract(epoch from rolvaliduntil)::float8, "
        "shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
        (name,),
    )
    return rows[0] if rows else None


def role_exists(pg, name: str) -> bool:
    return role_row(pg, name) is not None


# ---------------------------------------------------------------------------
# AdminConnection
# ---------------------------------------------------------------------------


def test_admin_connection_basics(jit_pg):
    pg = jit_pg

    async def main():
        conn = await AdminConnection.connect("127.0.0.1", pg.port, DB, ADMIN, ADMIN_PASSWORD)
        try:
            assert await conn.execute("SELECT 1, NULL::text, 'é'") == [("1", None, "é")]
            # several statements: the last one's rows
            assert await conn.execute("SELECT 1; SELECT 2 UNION ALL SELECT 3") == [("2",), ("3",)]
            assert await conn.execute("SELECT 1; SET search_path = public") == []
            assert await conn.execute("") == []
            with pytest.raises(AdminSQLError) as ei:
                await conn.execute("SELECT * FROM no_such_table")
            assert ei.value.sqlstate == "42P01"
            # a failed explicit transaction is rolled back: the connection is usable
            with pytest.raises(AdminSQLError) as ei:
                await conn.execute("BEGIN; SELECT 1; SELECT 1/0; COMMIT")
            assert ei.value.sqlstate == "22012"
            assert conn.transaction_status == b"I"
            assert await conn.execute("SELECT current_user, current_setting('lock_timeout')") == [(ADMIN, "1s")]
            # concurrent users are serialised
            results = []

            async def q(i):
                results.append((i, await conn.execute(f"SELECT {i}, pg_sleep(0.01)")))

            async with trio.open_nursery() as n:
                for i in range(10):
                    n.start_soon(q, i)
            assert sorted(results) == [(i, [(str(i), "")]) for i in range(10)]
            # a timeout closes the connection (its state is unknown)
            with pytest.raises(AdminConnectionError):
                await conn.execute("SELECT pg_sleep(5)", timeout=0.2)
            assert conn.closed
            with pytest.raises(AdminConnectionError):
                await conn.execute("SELECT 1")
        finally:
            await conn.aclose()

    run(main)


def test_admin_connection_killed_by_server(jit_pg):
    pg = jit_pg

    async def main():
        conn = await AdminConnection.connect("127.0.0.1", pg.port, DB, ADMIN, ADMIN_PASSWORD)
        pid = conn.backend_pid
        await trio.to_thread.run_sync(pg.execute, "SELECT pg_terminate_backend(%s, 5000)", (pid,))
        with pytest.raises(AdminConnectionError):
            await conn.execute("SELECT 1")
        assert conn.closed

    run(main)


def test_admin_connection_tls(pg_factory):
    """verify-full TLS (SCRAM-SHA-256-PLUS channel binding) through the
    gateway's own TLS and SCRAM code."""
    from pgjit.gateway.upstream import make_upstream_tls_context

    tpg = pg_factory(ssl=True)
    ctx = make_upstream_tls_context("verify-full", str(tpg.ca_path))

    async def main():
        conn = await AdminConnection.connect("127.0.0.1", tpg.port, DB, ADMIN, ADMIN_PASSWORD, tls_mode="verify-full", tls_ctx=ctx)
        try:
            return await conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        finally:
            await conn.aclose()

    assert run(main) == [("t",)]


# ---------------------------------------------------------------------------
# create_role
# ---------------------------------------------------------------------------


def test_create_role(jit_pg, caplog):
    pg = jit_pg
    caplog.set_level(logging.DEBUG, logger="pgjit.jit")
    until = time.time() + 3600
    broker = make_broker(pg)

    async def main():
        try:
            return await broker.create_role(
                "Alice.O'Brien@example.com",
                "sess-123",
                ["pgjit_read"],
                until,
                {"statement_timeout": "30s", "idle_in_transaction_session_timeout": "60s"},
            )
        finally:
            await broker.aclose()

    role = run(main)
    assert role.name.startswith("pgjit_alice_o_brien_")
    assert role.password not in repr(role)
    assert len(role.password) >= 43
    assert role.name in broker.live

    canlogin, connlimit, validuntil, comment = role_row(pg, role.name)
    assert canlogin and connlimit == 1
    assert abs(validuntil - until) < 1.5
    assert comment.startswith("pgjit session sess-123 for Alice.O'Brien@example.com created ")
    assert abs(parse_created(comment) - time.time()) < 60
    members = pg.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
        (role.name,),
    )
    assert members == [("pgjit_read",)]
    settings = pg.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = %s",
        (role.name,),
    )
    assert sorted(settings[0][0]) == ["idle_in_transaction_session_timeout=60s", "statement_timeout=30s"]
    secret = pg.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role.name,))[0][0]
    assert secret.startswith("SCRAM-SHA-256$4096:")
    assert role.password not in secret
    # the password never reached the server's statement log nor our logs
    assert role.password not in pg.server_log()
    assert all(role.password not in r.getMessage() and role.password not in str(r.__dict__) for r in caplog.records)
    assert any(getattr(r, "role", None) == role.name and getattr(r, "session_id", None) == "sess-123" for r in caplog.records)

    with login(pg, role) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role.name
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] > 0
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "30s"
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            conn.execute("INSERT INTO customers (name, email) VALUES ('x', 'y')")
        assert ei.value.sqlstate == "42501"
        # CONNECTION LIMIT 1: a second login is refused while the first is open
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            login(pg, role)
    run(_revoke, broker, role.name)


async def _revoke(broker: JitBroker, name: str) -> bool:
    try:
        return await broker.revoke_role(name)
    finally:
        await broker.aclose()


def test_create_role_read_only_setting_and_no_grants(jit_pg):
    pg = jit_pg
    broker = make_broker(pg)

    async def main():
        try:
            return await broker.create_role("bob", "s2", [], time.time() + 60, {"default_transaction_read_only": "on"})
        finally:
            await broker.aclose()

    role = run(main)
    assert pg.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (role.name,)) == [(0,)]
    with login(pg, role) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 1 FROM customers LIMIT 1")  # no grants at all
    assert run(_revoke, broker, role.name)


def test_create_role_rejects_bad_input_and_leaves_nothing(jit_pg):
    pg = jit_pg
    broker = make_broker(pg)
    before = pg.execute(r"SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgjit\_%'")

    async def main():
        try:
            with pytest.raises(ValueError):
                await broker.create_role("eve", "s", [], time.time() + 60, {"search_path": "evil"})
            with pytest.raises(ValueError):
                await broker.create_role("eve", "s", [], time.time() + 60, {"log_statement": "none"})
            with pytest.raises(ValueError):
                await broker.create_role("eve", "s", ["x\x00y"], time.time() + 60, {})
            # PostgreSQL refuses (unknown group role, bad setting value):
            # the transaction leaves nothing behind.
            # A granted role that does not exist: 28000 naming it and the fix.
            with pytest.raises(JitSetupError) as ei:
                await broker.create_role("eve", "s", ["no_such_group"], time.time() + 60, {})
            assert ei.value.sqlstate == "28000" and ei.value.fatal
            assert '"no_such_group"' in ei.value.message and "CREATE ROLE" in ei.value.hint
            with pytest.raises(JitSetupError) as ei:
                await broker.create_role("eve", "s", ["pgjit_read"], time.time() + 60, {}, owner="no_such_owner")
            assert 'owner role "no_such_owner"' in ei.value.message
            with pytest.raises(JitRoleError):
                await broker.create_role("eve", "s", ["pgjit_read"], time.time() + 60, {"statement_timeout": "'; drop table customers; --"})
            # the admin connection is still usable afterwards
            role = await broker.create_role("eve", "s", ["pgjit_read"], time.time() + 60, {})
            assert await broker.revoke_role(role.name)
        finally:
            await broker.aclose()

    run(main)
    assert not broker.live
    assert pg.execute(r"SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgjit\_%'") == before


MALICIOUS = [
    "x'; drop table customers; --",
    '"',
    "\\",
    "\\'; drop table customers; --",
    "Zoë 名前 🙂 <script>",
    "q" * 300,
    "x created 2999-01-01T00:00:00Z",
    "line1\nline2\ttab",
    "$$; DROP TABLE customers; $$",
]


@pytest.mark.parametrize("person", MALICIOUS)
def test_malicious_person(jit_pg, person):
    pg = jit_pg
    broker = make_broker(pg)
    count = pg.execute("SELECT count(*) FROM customers", dbname=DB)

    async def main():
        try:
            return await broker.create_role(person, "s'\"\\", ["pgjit_read"], time.time() + 60, {})
        finally:
            await broker.aclose()

    role = run(main)
    assert is_jit_role_name(role.name)
    comment = role_row(pg, role.name)[3]
    assert comment.startswith(f"pgjit session s'\"\\ for {person} created ")
    assert abs(parse_created(comment) - time.time()) < 60  # not the forged 2999 date
    with login(pg, role) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role.name
    assert pg.execute("SELECT count(*) FROM customers", dbname=DB) == count
    assert run(_revoke, broker, role.name)
    assert not role_exists(pg, role.name)


def test_person_with_nul_and_surrogate(jit_pg):
    pg = jit_pg
    broker = make_broker(pg)

    async def main():
        try:
            return [await broker.create_role(p, "s", [], time.time() + 60, {}) for p in ("a\x00b", "c\ud800d")]
        finally:
            await broker.aclose()

    roles = run(main)
    assert [role_row(pg, r.name)[3].split(" for ")[1].split(" created ")[0] for r in roles] == ["a\ufffdb", "c?d"]
    for r in roles:
        assert run(_revoke, broker, r.name)


# ---------------------------------------------------------------------------
# revoke_role
# ---------------------------------------------------------------------------


def test_revoke_terminates_and_reassigns(jit_pg):
    pg = jit_pg
    broker = make_broker(pg)

    async def create():
        try:
            return await broker.create_role("carol@example.com", "s3", ["pgjit_read"], time.time() + 600, {})
        finally:
            await broker.aclose()

    role = run(create)
    conn = login(pg, role)
    table = f"jit_scratch.t_{role.name[-8:]}"
    conn.execute(f"CREATE TABLE {table} (a int)")
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    conn.execute("CREATE TEMP TABLE tmp_x (a int)")
    pid = conn.info.backend_pid

    assert run(_revoke, broker, role.name) is True
    assert role.name not in broker.live
    assert not role_exists(pg, role.name)
    assert pg.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == [(0,)]
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    owner = pg.execute(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'jit_scratch' AND tablename = %s", (table.split(".")[1],), dbname=DB
    )
    assert owner == [("pgjit_owner",)]
    assert pg.execute(f"SELECT a FROM {table}", dbname=DB) == [(1,)]
    pg.execute(f"DROP TABLE {table}", dbname=DB)


def test_revoke_missing_role_and_refusals(jit_pg):
    pg = jit_pg
    broker = make_broker(pg)

    async def main():
        try:
            assert await broker.revoke_role("pgjit_ghost_abcdefghijklmnop") is True
            for bad in ["pgjit_read", "pgjit_owner", "pgjit_admin", "app", "postgres", "other_x_abcdefghijklmnop", 'pgjit_"; drop_abcdefghijklmnop']:
                with pytest.raises(ValueError):
                    await broker.revoke_role(bad)
        finally:
            await broker.aclose()

    run(main)
    assert role_exists(pg, "pgjit_read") and role_exists(pg, "pgjit_owner") and role_exists(pg, "pgjit_admin")


def test_revoke_failure_leaves_nologin(jit_pg, caplog, monkeypatch):
    """When DROP keeps failing (here: the role owns an object in another
    database), revoke gives up within the backoff budget, returns False and
    leaves the role NOLOGIN."""
    pg = jit_pg
    broker = make_broker(pg)
    if not pg.execute("SELECT 1 FROM pg_database WHERE datname = 'jit_otherdb'"):
        pg.execute("CREATE DATABASE jit_otherdb")

    async def create():
        try:
            return await broker.create_role("dave", "s4", [], time.time() + 600, {})
        finally:
            await broker.aclose()

    role = run(create)
    other = f"public.owned_elsewhere_{role.name[-6:]}"
    pg.execute_many([f"CREATE TABLE {other} (a int)", f'ALTER TABLE {other} OWNER TO "{role.name}"'], dbname="jit_otherdb")
    started = time.monotonic()
    assert run(_revoke, broker, role.name) is False
    elapsed = time.monotonic() - started
    assert elapsed < 5
    assert role_row(pg, role.name)[0] is False  # NOLOGIN
    with pytest.raises(psycopg.OperationalError):
        login(pg, role)
    assert role.password not in caplog.text
    # clean up, then the next revoke succeeds
    pg.execute(f"DROP TABLE {other}", dbname="jit_otherdb")
    assert run(_revoke, broker, role.name) is True
    assert not role_exists(pg, role.name)


def test_admin_reconnects(jit_pg):
    """A broken admin connection is replaced on the next call."""
    pg = jit_pg
    broker = make_broker(pg)

    async def main():
        try:
            r1 = await broker.create_role("erin", "s5", [], time.time() + 60, {})
            pid = broker._admin.backend_pid
            await trio.to_thread.run_sync(pg.execute, "SELECT pg_terminate_backend(%s, 5000)", (pid,))
            r2 = await broker.create_role("erin", "s6", [], time.time() + 60, {})
            assert broker._admin.backend_pid != pid
            pid = broker._admin.backend_pid
            await trio.to_thread.run_sync(pg.execute, "SELECT pg_terminate_backend(%s, 5000)", (pid,))
            assert await broker.revoke_role(r1.name)
            assert await broker.revoke_role(r2.name)
            return r1, r2
        finally:
            await broker.aclose()

    r1, r2 = run(main)
    assert not role_exists(pg, r1.name) and not role_exists(pg, r2.name)


# ---------------------------------------------------------------------------
# sweep
# ---------------------------------------------------------------------------


async def _create(broker: JitBroker, person: str, valid_until: float) -> JitRole:
    return await broker.create_role(person, "sweep-test", ["pgjit_read"], valid_until, {})


def test_sweep(jit_pg):
    pg = jit_pg
    creator = make_broker(pg)  # plays a gateway process that died

    async def setup():
        try:
            expired = await _create(creator, "expired", time.time() - 10)
            orphan = await _create(creator, "orphan", time.time() + 600)
            live = await _create(creator, "live", time.time() + 600)
            young = await _create(creator, "young", time.time() + 600)
            connected = await _create(creator, "connected", time.time() + 600)
            connected_expired = await _create(creator, "connexp", time.time() + 600)
            return expired, orphan, live, young, connected, connected_expired
        finally:
            await creator.aclose()

    expired, orphan, live, young, connected, connected_expired = run(setup)
    # VALID UNTIL in the past: PostgreSQL already refuses the login
    with pytest.raises(psycopg.OperationalError):
        login(pg, expired)
    conn1 = login(pg, connected)
    conn2 = login(pg, connected_expired)
    # the role expires while its session is open
    pg.execute(f"ALTER ROLE \"{connected_expired.name}\" VALID UNTIL '2000-01-01'")

    # "young" was created a moment ago: a sweeper with a long grace keeps it
    # and everything that is not expired.
    graceful = make_broker(pg, setup_grace=3600)
    told: list[tuple[str, str]] = []
    graceful.on_revoked = lambda name, reason: told.append((name, reason))  # the audit trail's hook

    async def sweep(b):
        try:
            return await b.sweep()
        finally:
            await b.aclose()

    rep = run(sweep, graceful)
    assert not rep.skipped and not rep.failed, rep
    assert rep.examined >= 6, rep
    assert set(rep.revoked) == {expired.name, connected_expired.name}
    assert sorted(told) == sorted([(expired.name, "expired"), (connected_expired.name, "expired")])
    assert not role_exists(pg, expired.name) and not role_exists(pg, connected_expired.name)
    for r in (orphan, live, young, connected):
        assert role_exists(pg, r.name)
    with pytest.raises(psycopg.OperationalError):
        conn2.execute("SELECT 1")  # an expired role's open session is ended
    conn2.close()

    # setup_grace=0: every disconnected role not live in this process is old
    sweeper = make_broker(pg, setup_grace=0)
    sweeper.live.add(live.name)
    rep = run(sweep, sweeper)
    assert not rep.failed
    assert orphan.name in rep.revoked and young.name in rep.revoked
    assert live.name not in rep.revoked and connected.name not in rep.revoked
    assert not role_exists(pg, orphan.name) and not role_exists(pg, young.name)
    assert role_exists(pg, live.name) and role_exists(pg, connected.name)
    assert conn1.execute("SELECT 1").fetchone() == (1,)
    for r in ("pgjit_read", "pgjit_owner", "pgjit_write", ADMIN):
        assert role_exists(pg, r)
    conn1.close()
    sweeper.live.clear()
    # after the session closed, the role goes too (poll: the backend exit is asynchronous)
    deadline = time.monotonic() + 5
    while role_exists(pg, connected.name) and time.monotonic() < deadline:
        run(sweep, sweeper)
    assert not role_exists(pg, connected.name) and not role_exists(pg, live.name)


def test_sweep_keeps_roles_being_set_up_with_unparseable_comment_counted_old(jit_pg):
    pg = jit_pg
    b = make_broker(pg, setup_grace=3600)

    async def main():
        try:
            young = await _create(b, "young2", time.time() + 600)
            b.live.discard(young.name)
            return young
        finally:
            await b.aclose()

    young = run(main)
    pg.execute(f"COMMENT ON ROLE \"{young.name}\" IS 'garbage'")

    async def sweep():
        try:
            return await b.sweep()
        finally:
            await b.aclose()

    rep = run(sweep)
    assert young.name in rep.revoked  # no parseable "created": counts as old


def test_sweep_skipped_while_lock_held(jit_pg):
    pg = jit_pg
    b = make_broker(pg, setup_grace=0)
    with pg.connect(dbname=DB) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (SWEEP_LOCK_KEY,))

        async def main():
            try:
                return await b.sweep()
            finally:
                await b.aclose()

        assert run(main).skipped


def test_concurrent_sweepers(jit_pg):
    pg = jit_pg
    creator = make_broker(pg)

    async def setup():
        try:
            return [await _create(creator, f"stale{i}", time.time() + 600) for i in range(8)]
        finally:
            await creator.aclose()

    stale = run(setup)
    brokers = [make_broker(pg, setup_grace=0) for _ in range(3)]
    reports = []

    async def main():
        async def one(b):
            try:
                reports.append(await b.sweep())
            finally:
                await b.aclose()

        async with trio.open_nursery() as n:
            for b in brokers:
                n.start_soon(one, b)

    run(main)
    assert len(reports) == 3
    ran = [r for r in reports if not r.skipped]
    assert ran, reports
    revoked = [name for r in ran for name in r.revoked]
    assert not any(r.failed for r in reports)
    for role in stale:
        assert not role_exists(pg, role.name)
        assert revoked.count(role.name) >= 1
    if len(ran) == 1:
        assert sorted(revoked) == sorted(set(revoked))


def test_run_sweeper_survives_errors(jit_pg):
    """run_sweeper sweeps at start, then every interval; a database it cannot
    reach is logged and retried, never raised."""
    pg = jit_pg
    calls = {"n": 0}
    real = connect_admin_factory(pg)

    async def flaky_connect():
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("connection refused (simulated)")
        return await real()

    b = JitBroker(flaky_connect, owner_role="pgjit_owner", sweep_interval=0.05, setup_grace=0)

    async def setup():
        c = make_broker(pg)
        try:
            return await _create(c, "runsweeper", time.time() + 600)
        finally:
            await c.aclose()

    stale = run(setup)

    async def main():
        async with trio.open_nursery() as n:
            await n.start(b.run_sweeper)
            with trio.fail_after(10):
                while role_exists(pg, stale.name):
                    await trio.sleep(0.05)
            n.cancel_scope.cancel()
        await b.aclose()

    run(main)
    assert calls["n"] >= 2


# ---------------------------------------------------------------------------
# timing (reported, loosely asserted)
# ---------------------------------------------------------------------------


def test_timing(jit_pg, capsys):
    pg = jit_pg
    b = make_broker(pg)
    create_ms, revoke_ms = [], []

    async def main():
        try:
            for i in range(20):
                t0 = time.perf_counter()
                r = await b.create_role(f"timing{i}@example.com", f"t{i}", ["pgjit_read"], time.time() + 600, {"statement_timeout": "30s"})
                t1 = time.perf_counter()
                assert await b.revoke_role(r.name)
                t2 = time.perf_counter()
                create_ms.append((t1 - t0) * 1000)
                revoke_ms.append((t2 - t1) * 1000)
        finally:
            await b.aclose()

    run(main)

    # revoke while the role's session is still open (terminate + wait)
    connected_ms = []

    async def connected():
        try:
            for i in range(10):
                r = await b.create_role(f"timingc{i}", "t", ["pgjit_read"], time.time() + 600, {})
                conn = await trio.to_thread.run_sync(login, pg, r)
                t0 = time.perf_counter()
                assert await b.revoke_role(r.name)
                connected_ms.append((time.perf_counter() - t0) * 1000)
                conn.close()
        finally:
            await b.aclose()

    run(connected)

    with capsys.disabled():
        print(
            f"\ncreate_role median {statistics.median(create_ms):.1f} ms, "
            f"revoke_role median {statistics.median(revoke_ms):.1f} ms (n=20), "
            f"revoke_role with an open session median {statistics.median(connected_ms):.1f} ms (n=10)"
        )
    assert statistics.median(create_ms) < 1000
    assert statistics.median(revoke_ms) < 2000
    assert statistics.median(connected_ms) < 2000


def test_revoke_is_shielded_from_cancellation(jit_pg):
    """A session's ``finally: await broker.revoke_role(...)`` runs even when
    the session is being cancelled."""
    pg = jit_pg
    broker = make_broker(pg)

    async def main():
        try:
            role = await broker.create_role("frank", "s7", [], time.time() + 600, {})
            with trio.CancelScope() as scope:
                scope.cancel()
                try:
                    await trio.sleep(1)
                finally:
                    assert await broker.revoke_role(role.name) is True
            return role
        finally:
            await broker.aclose()

    role = run(main)
    assert not role_exists(pg, role.name)


def test_concurrent_creates_with_a_busy_sweeper(jit_pg):
    """Many sessions set up at once on one admin connection while this
    process's sweeper runs continuously with no grace: roles in ``live`` are
    never touched, and all of them work."""
    pg = jit_pg
    b = make_broker(pg, sweep_interval=0.01, setup_grace=0)
    roles: list[JitRole] = []

    async def main():
        try:
            async with trio.open_nursery() as n:
                await n.start(b.run_sweeper)

                async def one(i):
                    roles.append(await b.create_role(f"conc{i}", f"c{i}", ["pgjit_read"], time.time() + 600, {}))

                async with trio.open_nursery() as inner:
                    for i in range(20):
                        inner.start_soon(one, i)
                await trio.sleep(0.2)  # a few more sweeps
                assert {r.name for r in roles} <= b.live
                for r in roles:
                    conn = await trio.to_thread.run_sync(login, pg, r)
                    conn.close()
                n.cancel_scope.cancel()
            async with trio.open_nursery() as n:
                for r in roles:
                    n.start_soon(b.revoke_role, r.name)
        finally:
            await b.aclose()

    run(main)
    assert len({r.name for r in roles}) == 20
    assert not b.live
    for r in roles:
        assert not role_exists(pg, r.name)
