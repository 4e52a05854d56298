"""The statement gate in the live gateway.

Every attack of the bypass corpus (tests/policy/attacks.py) is sent through
the gateway by a real client, with the default policy, logged in upstream as
``app`` — the owner of every table, so only the gate stands in the way. After
each one the real database is checked: tables and rows intact, no new
functions, rules, triggers, roles or large objects, same role, nothing in the
server's statement log. The realistic corpus and real tools' catalog queries
must pass the same gate untouched.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from pgjit.protocol import messages as m
from tests.gateway_fixtures import start_gateway
from tests.rawclient import RawClient, errors

sys.path.insert(0, str(Path(__file__).resolve().parent / "policy"))
from attacks import ATTACKS  # noqa: E402
from realistic import REALISTIC  # noqa: E402

pytestmark = pytest.mark.pg

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"

SETUP = """
create table if not exists accounts(id int primary key, bal int, owner text);
insert into accounts values (1, 100, 'a'), (2, 200, 'b') on conflict do nothing;
create table if not exists audit_copy(id int, bal int, owner text);
create sequence if not exists accounts_id_seq;
create schema if not exists payroll;
create table if not exists payroll.salaries(id int, amount int);
insert into payroll.salaries select 1, 1000 where not exists (select 1 from payroll.salaries);
"""

STATE_SQL = r"""
select json_build_object(
  'tables', (select json_agg(c.oid::regclass::text order by 1) from pg_class c
             join pg_namespace n on n.oid = c.relnamespace
             where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')),
  'rows', (select json_build_array((select count(*) from accounts), (select sum(bal) from accounts),
                                   (select count(*) from audit_copy), (select count(*) from customers),
                                   (select count(*) from orders), (select count(*) from payroll.salaries))),
  'functions', (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                where n.nspname not in ('pg_catalog', 'information_schema')),
  'rules', (select count(*) from pg_rules where schemaname not in ('pg_catalog')),
  'triggers', (select count(*) from pg_trigger where not tgisinternal),
  'roles', (select json_agg(rolname order by 1) from pg_roles),
  'memberships', (select count(*) from pg_auth_members),
  'largeobjects', (select count(*) from pg_largeobject_metadata),
  'extensions', (select json_agg(extname order by 1) from pg_extension),
  'seq', (select last_value from accounts_id_seq),
  'settings', (select count(*) from pg_db_role_setting),
  'grants', (select md5(coalesce(string_agg(relacl::text, ',' order by oid), '')) from pg_class)
)::text
"""


def db_state(pg) -> str:
    return pg.execute(STATE_SQL, dbname="appdb")[0][0]


@pytest.fixture(scope="module")
def gated(pg, tmp_path_factory):
    pg.psql(SETUP, dbname="appdb", user="app", password="apppass")
    gw = start_gateway(
        tmp_path_factory.mktemp("gated"),
        pg,
        targets={"appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app",
                            "password": "apppass", "policy": str(DEFAULT_POLICY)}},
    )
    yield gw
    gw.stop()


def test_bypass_attacks_are_denied_and_nothing_happens(gated, pg):
    """Every attack, through psycopg's simple protocol and its extended one."""
    before = db_state(pg)
    log_before = len(pg.server_log())
    results = []
    # Extended protocol (Parse/Bind/Execute) through psycopg.
    with psycopg.connect(gated.dsn(), autocommit=True) as conn:
        for attack in ATTACKS:
            if "\x00" in attack.sql:
                continue  # libpq cannot send it; the raw client below does
            try:
                conn.execute(attack.sql, prepare=True)
                results.append((attack.name, "extended", "not refused"))
            except psycopg.Error as e:
                msg = e.diag.message_primary or ""
                by_pgjit = e.diag.sqlstate in ("42501", "42601", "0A000") and ("pgjit" in msg or "policy rule" in msg)
                results.append((attack.name, "extended", "refused" if by_pgjit else f"server error {e.diag.sqlstate}: {msg}"))
    # Simple protocol (Query), byte for byte.
    with RawClient(gated.port) as c:
        c.login()
        for attack in ATTACKS:
            c.send(m.frame(b"Q", attack.sql.encode() + b"\x00"))  # raw: NULs included
            msgs = c.read_until_ready()
            errs = errors(msgs)
            ok = bool(errs) and errs[0].sqlstate in ("42501", "42601") and "pgjit" in (errs[0].message or "") or (
                bool(errs) and "policy rule" in (errs[0].message or "")
            )
            results.append((attack.name, "simple", "refused" if ok else f"got {[e.sqlstate for e in errs] or 'success'}"))
            assert isinstance(msgs[-1], m.ReadyForQuery) and msgs[-1].status == b"I"
    not_refused = [r for r in results if r[2] != "refused"]
    assert not not_refused, not_refused
    assert db_state(pg) == before
    # Nothing of it reached the server: its statement log shows none of them.
    log = pg.server_log()[log_before:]
    leaked = [a.name for a in ATTACKS if a.sql.strip() and a.sql.strip()[:40] in log]
    assert not leaked, leaked
    print(f"attacks refused: {len(results)} / {len(results)} ({len(ATTACKS)} attacks x simple and extended protocol)")


def test_denial_inside_transaction_and_pipeline(gated, pg):
    with RawClient(gated.port) as c:
        c.login()
        # In a transaction block, a denial aborts the transaction as an error would.
        c.send(m.Query("begin"))
        c.read_until_ready()
        c.send(m.Query("select 1"))
        c.read_until_ready()
        c.send(m.Query("drop table accounts"))
        msgs = c.read_until_ready()
        assert errors(msgs)[0].sqlstate == "42501" and msgs[-1].status == b"E"
        c.send(m.Query("select 1"))
        assert errors(c.read_until_ready())[0].sqlstate == "25P02"  # in failed transaction
        c.send(m.Query("rollback"))
        assert c.read_until_ready()[-1].status == b"I"

        # A denied Parse hidden between allowed ones in one pipeline: the
        # messages before it run, the rest up to Sync are skipped, as the
        # server itself would do after an error.
        c.send(
            m.Parse("", "select 1"), m.Bind("", ""), m.Execute(""),
            m.Parse("evil", "delete from accounts"), m.Bind("", "evil"), m.Execute(""),
            m.Parse("", "select 2"), m.Bind("", ""), m.Execute(""),
            m.Sync(),
        )
        msgs = c.read_until_ready()
        rows = [x.values for x in msgs if isinstance(x, m.DataRow)]
        assert rows == [(b"1",)]
        errs = errors(msgs)
        assert [e.sqlstate for e in errs] == ["42501"] and "policy rule" in errs[0].message
        assert msgs[-1].status == b"I"
        # The denied statement was never prepared upstream: Bind to it fails there.
        c.send(m.Bind("", "evil"), m.Execute(""), m.Sync())
        assert errors(c.read_until_ready())[0].sqlstate == "26000"
        # A statement pgjit cannot parse is refused by pgjit (42601), not sent.
        c.send(m.Query("selec 1 frm"))
        err = errors(c.read_until_ready())[0]
        assert err.sqlstate == "42601" and "pgjit" in err.message and err.get("P")
        # Multi-statement smuggling: the whole string is refused, nothing runs.
        c.send(m.Query("commit; delete from accounts; select 1"))
        msgs = c.read_until_ready()
        assert errors(msgs)[0].sqlstate == "42501" and not [x for x in msgs if isinstance(x, m.DataRow)]
    assert pg.execute("select count(*) from accounts", dbname="appdb")[0][0] == 2


def test_sql_prepare_execute(gated):
    with RawClient(gated.port) as c:
        c.login()
        c.send(m.Query("prepare ok(int) as select $1 + 1"))
        assert not errors(c.read_until_ready())
        c.send(m.Query("execute ok(41)"))
        assert [x.values for x in c.read_until_ready() if isinstance(x, m.DataRow)] == [(b"42",)]
        c.send(m.Query("prepare bad as delete from accounts"))
        assert errors(c.read_until_ready())[0].sqlstate == "42501"
        c.send(m.Query("execute bad"))
        assert errors(c.read_until_ready())[0].sqlstate == "42501"  # unknown to pgjit: fail closed


def test_startup_role_option_is_refused(gated):
    with RawClient(gated.port) as c:
        err = errors(c.login(options="-c role=postgres"))[0]
        assert err.severity == "FATAL" and err.sqlstate == "42501" and "role" in err.message
    with RawClient(gated.port) as c:
        err = errors(c.login(session_authorization="postgres"))[0]
        assert err.severity == "FATAL"
    with RawClient(gated.port) as c:  # harmless settings are fine
        assert isinstance(c.login(options="-c search_path=public -c statement_timeout=5s")[-1], m.ReadyForQuery)


def test_realistic_statements_are_not_denied(gated):
    """The no-false-denial corpus through the live gate: pgjit must refuse
    none of them (the server may still fail some, e.g. a missing relation)."""
    denied = []
    with RawClient(gated.port) as c:
        c.login()
        for st in REALISTIC:
            c.send(m.Query(st.sql))
            msgs = c.read_until_ready()
            for e in errors(msgs):
                if "pgjit" in (e.message or "") or "policy rule" in (e.message or ""):
                    denied.append((st.name, e.message))
            if msgs[-1].status != b"I":
                c.send(m.Query("rollback"))
                c.read_until_ready()
    assert not denied, denied
    print(f"realistic statements allowed: {len(REALISTIC)} / {len(REALISTIC)}")


@pytest.mark.parametrize("command", [r"\d", r"\dt", r"\d customers", r"\df", r"\l", r"\dn", r"\du", r"\dv", r"\di", r"\x on"])
def test_psql_meta_commands_pass_the_gate(gated, command):
    r = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", command],
        env=gated.env(), capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "policy rule" not in r.stderr


def test_sqlalchemy_reflection_and_jdbc_style_metadata(gated):
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"postgresql+psycopg://alice:x@127.0.0.1:{gated.port}/appdb?sslmode=disable")
    try:
        insp = sqlalchemy.inspect(engine)
        assert "customers" in insp.get_table_names()
        cols = {c["name"] for c in insp.get_columns("customers")}
        assert {"id", "name", "email"} <= cols
        insp.get_pk_constraint("customers")
        insp.get_foreign_keys("orders")
        insp.get_indexes("orders")
        md = sqlalchemy.MetaData()
        md.reflect(engine, only=["customers", "orders"])
        with engine.connect() as conn:
            n = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(md.tables["orders"])).scalar()
            assert n > 0
    finally:
        engine.dispose()


def test_everyday_analytics_pass(gated):
    queries = [
        "select status, count(*), sum(amount) over () from orders group by status, amount order by 1 limit 5",
        "select percentile_cont(0.5) within group (order by amount) from orders",
        "with a as (select customer_id, sum(amount) s from orders group by 1), b as (select * from a where s > 10) select count(*) from b",
        "select c.name, o.* from customers c cross join lateral (select amount from orders where customer_id = c.id order by amount desc limit 1) o limit 3",
        "select '{\"a\": {\"b\": 1}}'::jsonb -> 'a' ->> 'b', jsonb_path_query_first('{\"x\": [1,2]}', '$.x[1]')",
        "select * from customers where id = 1 for share",
        "select rank() over (partition by status order by amount) from orders limit 5",
    ]
    with psycopg.connect(gated.dsn()) as conn:
        for q in queries:
            conn.execute(q).fetchall()
        conn.rollback()


def test_shadow_mode_logs_and_lets_run(pg, tmp_path):
    policy = tmp_path / "shadow.yaml"
    policy.write_text(
        """version: 1
rules:
  - name: would-block-deletes
    match: {kind: [delete]}
    action: audit
    message: "deletes will be denied next month"
  - name: everything
    match: {kind: ["*"]}
    action: allow
default: deny
"""
    )
    table = f"shadow_{uuid.uuid4().hex[:6]}"
    pg.psql(f"create table {table}(a int); insert into {table} values (1)", dbname="appdb", user="app", password="apppass")
    gw = start_gateway(tmp_path / "gw", pg, targets={"appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb",
                                                               "user": "app", "password": "apppass", "policy": str(policy)}})
    try:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            conn.execute(f"delete from {table}")
        assert pg.execute(f"select count(*) from {table}", dbname="appdb")[0][0] == 0
        assert any(r.get("rules") == "would-block-deletes" for r in gw.logs())
    finally:
        gw.stop()
