"""The catalog cache and name resolution against a real PostgreSQL.

Objects a DBA made directly on the server (a SECURITY DEFINER function, a view,
a rule, a trigger, a cascading foreign key, an operator over a dangerous
function, a row-security policy) are loaded with the gateway's own catalog
queries, and the gate must see through each of them: "no writes to
public.victim" holds whichever name the statement uses.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio
import pytest

from pgjit.catalog import QUERIES, Catalog, load
from pgjit.policy import Policy
from pgjit.policy.gate import Gate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUARDRAILS = (ROOT / "policies" / "examples" / "guardrails.yaml").read_text()

pytestmark = pytest.mark.pg

SETUP = r"""
drop schema if exists res cascade;
create schema res;
create table res.victim(id int primary key, v text);
insert into res.victim values (1, 'a'), (2, 'b');
create table res.parent(id int primary key);
insert into res.parent values (1);
create table res.child(id int, parent int references res.parent on delete cascade);
alter table res.victim add column pid int references res.parent on delete cascade;
create table res.other(id int);
create function res.purge_old() returns int language sql security definer
  as $$ delete from res.victim where id > 0 returning 1 $$;
create table res.defaulted(id int, at text default res.purge_old()::text);
create function res.harmless() returns int language sql as $$ select 1 $$;
create procedure res.proc() language plpgsql as $$ begin update res.victim set v = 'x' where id = 1; end $$;
create view res.v as select * from res.victim;
create view res.files as select pg_read_file('/etc/hostname') as f;
create rule r_other as on insert to res.other do also delete from res.victim where id = 1;
create function res.trg() returns trigger language plpgsql as $$ begin delete from res.victim where id = new.id; return new; end $$;
create trigger t_other after update on res.other for each row execute function res.trg();
create function res.rd(text) returns text language sql as $$ select pg_read_file($1) $$;
create operator res.### (function = pg_read_file, rightarg = text);
create function res.c_fn(int) returns int language internal as 'int4inc';
"""


def _text(value):
    if value is None:
        return None
    if value is True:
        return "t"
    if value is False:
        return "f"
    return str(value)


@pytest.fixture(scope="module")
def catalog(pg) -> Iterator[Catalog]:
    pg.psql(SETUP, dbname="appdb")
    try:
        rows = {name: [tuple(_text(v) for v in row) for row in pg.execute(sql, dbname="appdb")]
                for name, sql in QUERIES.items()}
        yield Catalog.from_rows(rows, generation=1)
    finally:
        # Other modules dump or inspect appdb: leave nothing behind.
        pg.psql("drop schema if exists res cascade", dbname="appdb")


def _gate(catalog: Catalog, text: str) -> Gate:
    gate = Gate(Policy.from_text(text))
    gate.set_catalog(catalog)
    return gate


PROTECT = GUARDRAILS.replace("public.victim", "res.victim")


@pytest.mark.parametrize(
    "sql",
    [
        "select res.purge_old()",
        "select purge_old()",
        "call res.proc()",
        "delete from res.v where id = 1",
        "update res.v set v = 'y' where id = 2",
        "insert into res.other values (1)",
        "update res.other set id = 2 where id = 1",
        "delete from res.parent where id = 1",
        "delete from appdb.res.v where id = 1",
        "insert into res.defaulted(id) values (1)",
    ],
)
def test_writes_to_victim_through_code_in_the_database_are_denied(catalog, sql):
    decision = _gate(catalog, PROTECT).check(sql, ["devs"])[1]
    assert decision.denied, (sql, decision)
    assert decision.rule in ("no-writes-to-victim", "pgjit:unreadable"), decision


@pytest.mark.parametrize(
    "sql",
    [
        "select * from res.files",
        "select res.rd('/etc/hostname')",
        "set search_path = res, public; select ### '/etc/hostname'",
        "select operator(res.###) '/etc/hostname'",
    ],
)
def test_server_files_through_views_functions_and_operators(catalog, sql):
    decision = _gate(catalog, PROTECT).check(sql, ["devs"])[1]
    assert decision.denied and decision.rule == "no-server-files", (sql, decision)


def test_facts_from_the_catalog(catalog):
    gate = _gate(catalog, PROTECT)
    facts = gate.check("select res.purge_old()", ["x"])[0].statements[0]
    assert facts.calls_user_function and facts.security_definer
    assert "res.purge_old" in facts.user_functions and "res.victim" in facts.writes
    assert "delete" in facts.kinds
    plain = gate.check("select res.harmless()", ["x"])[0].statements[0]
    assert plain.calls_user_function and not plain.security_definer and not plain.writes
    # reads are allowed, and a system function called by name adds nothing
    assert gate.check("select * from res.victim where id = 1", ["x"])[1].allowed
    assert gate.check("select now(), lower('A')", ["x"])[1].allowed
    assert gate.check("select * from pg_stat_activity", ["x"])[1].allowed


def test_unreadable_and_unknown_fail_closed(catalog):
    gate = _gate(catalog, PROTECT)
    c_call = gate.check("select res.c_fn(1)", ["x"])[1]
    assert c_call.denied and c_call.rule == "pgjit:unreadable" and "written in internal" in c_call.message
    unknown = gate.check("select made_after_the_snapshot()", ["x"])[1]
    assert unknown.denied and unknown.rule == "pgjit:unreadable" and "catalog yet" in unknown.message
    op = gate.check("select 1 #### 2", ["x"])[1]
    assert op.denied and "operator" in op.message


def test_default_policy_denies_user_functions_unless_listed(catalog):
    default = (ROOT / "policies" / "default.yaml").read_text()
    gate = _gate(catalog, default)
    assert gate.check("select res.harmless()", ["agents"])[1].rule == "no-user-functions"
    listed = default.replace(
        "      calls_user_function: true\n    action: deny",
        "      calls_user_function: true\n    unless:\n      user_functions: [res.harmless]\n    action: deny",
    )
    gate = _gate(catalog, listed)
    assert gate.check("select res.harmless()", ["agents"])[1].allowed
    assert gate.check("select res.purge_old()", ["agents"])[1].denied


def test_renaming_a_system_function_is_a_catalog_change(catalog):
    gate = _gate(catalog, PROTECT)
    facts = gate.check("alter function pg_catalog.lower(text) rename to lowr", ["x"])[0].statements[0]
    assert "catalog_change" in facts.dangerous
    facts = gate.check("alter function lower(text) set schema public", ["x"])[0].statements[0]
    assert "catalog_change" in facts.dangerous


def test_load_over_the_gateways_admin_connection(pg, catalog):
    """pgjit.catalog.load through pgjit's own protocol client: timing and size."""
    from pgjit.jit.admin import AdminConnection

    async def main():
        conn = await AdminConnection.connect("127.0.0.1", pg.port, "appdb", "app", "apppass")
        try:
            return await load(conn.execute, 1)
        finally:
            await conn.aclose()

    cat = trio.run(main)
    assert cat.size["functions"] > 2000 and cat.size["relations"] > 50
    assert cat.knows_function("pg_read_file") and cat.knows_operator("=")
    victim = cat.relations_named("res.victim")[0]
    assert victim.columns == ("id", "v", "pid") and victim.cascades_to == ()


def test_is_not_null_on_a_not_null_column_is_no_bound(catalog):
    gate = _gate(catalog, PROTECT)
    assert gate.check("delete from res.parent where id is not null", ["x"])[0].statements[0].write_without_where
    nullable = gate.check("delete from res.other where id is not null", ["x"])[0].statements[0]
    assert not nullable.write_without_where  # res.other.id may be NULL: the test bounds the rows
