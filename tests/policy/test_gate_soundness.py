"""The text-level fixes of the gate-soundness issue, as pure policy checks.

The live red-team suite (tests/redteam) proves each class against a real
server; these pin the mechanism: encoding names read as PostgreSQL reads them,
writes to pg_settings, functions bound to new names, database-qualified and
schema-wide names, unbounded writes, and the false denials of real tools.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgjit.policy import Policy
from pgjit.policy.encodings import ALIASES, canonical_encoding, clean_encoding_name, encoding_is_modelled
from pgjit.policy.facts import analyze_uncached

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = Policy.load(ROOT / "policies" / "default.yaml")
GUARDRAILS = Policy.load(ROOT / "policies" / "examples" / "guardrails.yaml")


def facts(sql: str):
    return analyze_uncached(sql).statements[0]


@pytest.mark.parametrize("name", ["S.JIS", "Shift JIS", "shift_jis", "SJIS", "ms-kanji", "win 932", "Windows-932",
                                  "Big-5", "big5", "GB 18030", "g.b.k", "UHC", "win949", "johab", "shift_jis_2004",
                                  "Shift-JIS-2004", "windows950", "w i n 9 3 6", "", "nonsense", "utf-9"])
def test_encodings_pgjit_cannot_lex_are_refused(name):
    assert not encoding_is_modelled(name)
    for sql in (f"SET client_encoding = '{name}'", f"SET LOCAL client_encoding TO '{name}'",
                f"SET SESSION client_encoding = '{name}'", f"SELECT set_config('client_encoding', '{name}', false)",
                f"ALTER ROLE CURRENT_USER SET client_encoding = '{name}'",
                f"ALTER DATABASE appdb SET client_encoding = '{name}'",
                f"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET client_encoding = '{name}' AS 'SELECT 1'"):
        assert facts(sql).changes_lexer, sql
        assert GUARDRAILS.decide(sql, ["x"]).rule == "pgjit:lexer-change", sql


@pytest.mark.parametrize("name", ["UTF8", "utf-8", "Unicode", "LATIN1", "iso-8859-1", "WIN1252", "euc_jp", "SQL_ASCII",
                                  "koi8-r", "ISO_8859_5"])
def test_server_encodings_are_fine(name):
    assert encoding_is_modelled(name)
    assert not facts(f"SET client_encoding = '{name}'").changes_lexer


def test_alias_table_cleaned_and_client_only_set():
    assert all(clean_encoding_name(k) == k for k in ALIASES)
    assert canonical_encoding("S.JIS") == "SJIS" and canonical_encoding("Shift JIS") == "SJIS"


@pytest.mark.parametrize("sql", [
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    "UPDATE pg_catalog.pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    "UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'",
    "UPDATE pg_settings SET setting = 'x' WHERE name LIKE 'standard%'",
    "WITH u AS (UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings' RETURNING 1) SELECT 1",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name LIKE 'standard_conforming%'",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'standard_conforming_strings'",
    "SET standard_conforming_strings = off",
    "SET standard_conforming_strings = 0",
])
def test_settings_changes_through_pg_settings(sql):
    assert facts(sql).changes_lexer, sql


def test_pg_dump_preamble_is_that_setting():
    sql = ("SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
           "WHERE name = 'restrict_nonsystem_relation_kind'")
    f = facts(sql)
    assert f.settings == {"restrict_nonsystem_relation_kind"} and not f.changes_lexer and not f.role_change
    assert DEFAULT.decide(sql, ["agents"]).allowed


def test_prepare_and_execute_in_one_string():
    assert DEFAULT.decide("PREPARE p AS SELECT 1; EXECUTE p;", ["agents"]).allowed
    assert DEFAULT.decide("PREPARE p AS DELETE FROM t WHERE id = 1; EXECUTE p;", ["agents"]).denied
    assert DEFAULT.decide("PREPARE p AS SELECT 1; DEALLOCATE p; EXECUTE p;", ["agents"]).rule == "pgjit:unknown-prepared"


@pytest.mark.parametrize("sql", [
    "CREATE OPERATOR ### (FUNCTION = pg_read_file, RIGHTARG = text)",
    "CREATE OPERATOR ### (PROCEDURE = pg_catalog.pg_read_file, RIGHTARG = text)",
    "CREATE AGGREGATE a(text) (SFUNC = pg_read_file, STYPE = text)",
    "CREATE AGGREGATE a(text) (SFUNC = textcat, STYPE = text, FINALFUNC = pg_read_file)",
    "CREATE AGGREGATE a(text) (SFUNC = textcat, STYPE = text, MSFUNC = pg_read_file, MINVFUNC = textcat, MSTYPE = text)",
    "CREATE CAST (text AS int) WITH FUNCTION pg_read_file(text)",
    "CREATE TRANSFORM FOR int LANGUAGE sql (FROM SQL WITH FUNCTION pg_read_file(internal))",
    "ALTER FUNCTION pg_read_file(text) RENAME TO harmless",
    "ALTER FUNCTION pg_catalog.pg_read_file(text) SET SCHEMA public",
    "ALTER ROUTINE pg_read_file(text) RENAME TO harmless",
    "ALTER FUNCTION pg_read_file(text) OWNER TO public",
    "CREATE TYPE t (INPUT = pg_read_file, OUTPUT = textout)",
    "CREATE OPERATOR CLASS c FOR TYPE text USING btree AS FUNCTION 1 pg_read_file(text)",
    "ALTER OPERATOR = (text, text) SET (RESTRICT = pg_read_file)",
    "CREATE FOREIGN TABLE ft (a text) SERVER files OPTIONS (filename '/etc/passwd')",
    "CREATE FOREIGN TABLE ft (a text) SERVER files OPTIONS (program 'id')",
])
def test_functions_bound_to_new_names_carry_their_facts(sql):
    f = facts(sql)
    assert "file_access" in f.dangerous, (sql, f.dangerous)
    assert GUARDRAILS.decide(sql, ["x"]).denied


def test_binding_set_config_or_an_executor():
    f = facts("CREATE AGGREGATE a(text, text) (SFUNC = set_config, STYPE = text)")
    assert f.role_change and f.changes_lexer
    f = facts("CREATE OPERATOR ### (FUNCTION = crosstab, RIGHTARG = text)")
    assert f.dynamic_sql and "?" in f.writes


def test_renaming_a_catalog_function_is_a_catalog_change():
    assert "catalog_change" in facts("ALTER FUNCTION pg_catalog.lower(text) RENAME TO x").dangerous
    assert "catalog_change" in facts("ALTER FUNCTION pg_read_file(text) RENAME TO x").dangerous


@pytest.mark.parametrize("sql", [
    "DELETE FROM appdb.public.victim WHERE id = 1",
    "UPDATE appdb.public.victim SET v = 'x' WHERE id = 1",
    "DELETE FROM public.victim WHERE id = 1",
    "DELETE FROM victim WHERE id = 1",
    'DELETE FROM "victim" WHERE id = 1',
    'DELETE FROM U&"\\0076ictim" WHERE id = 1',
    "ALTER SCHEMA public RENAME TO elsewhere",
    "ALTER SCHEMA public OWNER TO nobody",
    "DROP SCHEMA public CASCADE",
    "ALTER TABLE victim RENAME TO v2",
    "ALTER TABLE public.victim SET SCHEMA other",
    "DROP OWNED BY CURRENT_USER",
    "REASSIGN OWNED BY CURRENT_USER TO nobody",
    "DO $$ BEGIN EXECUTE 'select 1'; END $$",
])
def test_no_writes_to_victim_by_any_name(sql):
    policy = Policy.from_text(
        "version: 1\nrules:\n  - {name: protect, match: {writes: [public.victim]}, action: deny}\ndefault: allow\n")
    assert policy.decide(sql, ["x"]).rule == "protect", sql
    bare = Policy.from_text(
        "version: 1\nrules:\n  - {name: protect, match: {writes: [victim]}, action: deny}\ndefault: allow\n")
    assert bare.decide(sql, ["x"]).rule == "protect", sql


def test_catalog_relations_by_any_name():
    policy = Policy.from_text(
        "version: 1\nrules:\n  - {name: authid, match: {reads: [pg_catalog.pg_authid]}, action: deny}\ndefault: allow\n")
    for sql in ("SELECT * FROM pg_authid", "SELECT * FROM appdb.pg_catalog.pg_authid", "SELECT * FROM pg_catalog.pg_authid"):
        assert policy.decide(sql, ["x"]).denied, sql
    # allow rules still read names narrowly: a relation in another schema is not covered
    allow = Policy.from_text(
        "version: 1\nrules:\n  - {name: ok, match: {reads: [public.orders]}, action: allow}\ndefault: deny\n")
    assert allow.decide("SELECT * FROM orders", ["x"]).allowed
    assert allow.decide("SELECT * FROM secret.orders", ["x"]).denied


@pytest.mark.parametrize("sql", [
    "DELETE FROM t WHERE true", "DELETE FROM t WHERE 1 = 1", "DELETE FROM t WHERE NOT false",
    "DELETE FROM t WHERE 'a' = 'a'", "DELETE FROM t WHERE true OR id = 1", "DELETE FROM t WHERE id = id",
    "DELETE FROM t WHERE EXISTS (SELECT 1)", "DELETE FROM t WHERE (SELECT true)", "DELETE FROM t WHERE 2 > 1",
    "DELETE FROM t WHERE NULL IS NULL", "DELETE FROM t WHERE coalesce(true, false)", "UPDATE t SET a = 1 WHERE 1 IN (1)",
    "UPDATE t SET a = 1 WHERE id = 1 OR 1 = 1", "DELETE FROM t WHERE id IN (SELECT id FROM t) OR true",
    "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.x = 1)",
    "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
    "MERGE INTO t USING s ON 1 = 1 WHEN MATCHED THEN UPDATE SET a = 1",
    "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
    "INSERT INTO t SELECT * FROM t ON CONFLICT (id) DO UPDATE SET a = 0",
    "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET a = excluded.a WHERE true",
])
def test_unbounded_writes(sql):
    f = facts(sql)
    assert f.write_without_where, sql
    assert GUARDRAILS.decide(sql, ["x"]).rule == "no-unbounded-writes", sql


@pytest.mark.parametrize("sql", [
    "DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id > 0 AND true", "UPDATE t SET a = 1 WHERE deleted_at IS NOT NULL",
    "DELETE FROM t WHERE id IN (SELECT id FROM u)", "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.x = t.id)",
    "UPDATE t SET a = u.a FROM u WHERE t.id = u.id", "DELETE FROM t WHERE CURRENT OF c",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "MERGE INTO t USING s ON true WHEN MATCHED AND t.a > 1 THEN DELETE",
    "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 0",
    "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET a = excluded.a WHERE t.a < excluded.a",
])
def test_bounded_writes(sql):
    assert not facts(sql).write_without_where, sql


def test_upsert_is_also_an_update():
    assert "update" in facts("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 0").kinds


@pytest.mark.parametrize("view", ["pg_hba_file_rules", "pg_file_settings", "pg_ident_file_mappings", "pg_config",
                                  "pg_catalog.pg_hba_file_rules", "appdb.pg_catalog.pg_file_settings"])
def test_system_views_over_server_files(view):
    f = facts(f"SELECT * FROM {view}")
    assert "file_access" in f.dangerous
    assert DEFAULT.decide(f"SELECT * FROM {view}", ["agents"]).rule == "no-dangerous-functions"


@pytest.mark.parametrize("sql", [
    "SELECT * FROM crosstab('select pg_read_file(''/etc/passwd'')') AS t(a text, b text)",
    "SELECT * FROM public.crosstab3('select 1')", "SELECT connectby('victim', 'id', 'pid', '1', 0)",
    "SELECT xpath_table('id', 'x', 'victim', '/a', 'true')",
    "CREATE TRIGGER t BEFORE DELETE ON parent FOR EACH ROW EXECUTE FUNCTION check_foreign_key(1, 'cascade', 'id', 'victim', 'pid')",
    "SELECT cron.schedule('x', '* * * * *', 'DELETE FROM victim')",
    "SELECT dblink_exec('dbname=appdb', 'DELETE FROM victim')",
])
def test_extension_functions_that_run_sql(sql):
    f = facts(sql)
    assert f.dynamic_sql and "?" in f.writes, sql
    assert DEFAULT.decide(sql, ["agents"]).denied and GUARDRAILS.decide(sql, ["x"]).denied


def test_pg_dump_locks_are_reads():
    for sql in ("LOCK TABLE public.orders IN ACCESS SHARE MODE", "LOCK TABLE public.orders IN ACCESS SHARE MODE NOWAIT"):
        assert DEFAULT.decide(sql, ["agents"]).allowed, sql
    assert DEFAULT.decide("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE", ["agents"]).denied
