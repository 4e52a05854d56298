"""The classifier: facts of statements, nested statements folded in."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.policy import facts as facts_mod
from pgjit.policy.catalogue import categories_for
from pgjit.policy.facts import KINDS, ParseFailure, analyze, analyze_uncached


def one(sql: str) -> facts_mod.Facts:
    analysis = analyze(sql)
    assert len(analysis.statements) == 1, analysis
    return analysis.statements[0]


# --------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "select"),
        ("VALUES (1)", "select"),
        ("TABLE t", "select"),
        ("INSERT INTO t VALUES (1)", "insert"),
        ("UPDATE t SET a = 1 WHERE b", "update"),
        ("DELETE FROM t WHERE a", "delete"),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1", "merge"),
        ("CREATE TABLE t (a int)", "create_table"),
        ("CREATE TEMP TABLE t (a int)", "create_table"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "create_function"),
        ("CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", "create_procedure"),
        ("CREATE RULE r AS ON INSERT TO t DO NOTHING", "create_rule"),
        ("CREATE TRIGGER tr AFTER INSERT ON t EXECUTE FUNCTION f()", "create_trigger"),
        ("ALTER TABLE t ADD COLUMN b int", "alter_table"),
        ("ALTER INDEX i RENAME TO j", "alter_index"),
        ("DROP TABLE t", "drop_table"),
        ("DROP FUNCTION f()", "drop_function"),
        ("DROP SCHEMA s CASCADE", "drop_schema"),
        ("DROP ROLE r", "drop_role"),
        ("TRUNCATE t", "truncate"),
        ("GRANT SELECT ON t TO r", "grant"),
        ("REVOKE SELECT ON t FROM r", "revoke"),
        ("GRANT r TO u", "grant"),
        ("COPY t FROM STDIN", "copy_from"),
        ("COPY t TO STDOUT", "copy_to"),
        ("SET search_path = a", "set"),
        ("RESET search_path", "reset"),
        ("RESET ALL", "reset"),
        ("SHOW search_path", "show"),
        ("DO $$ BEGIN END $$", "do"),
        ("CALL p()", "call"),
        ("PREPARE q AS SELECT 1", "prepare"),
        ("EXECUTE q", "execute"),
        ("DEALLOCATE q", "deallocate"),
        ("EXPLAIN SELECT 1", "explain"),
        ("VACUUM t", "vacuum"),
        ("ANALYZE t", "analyze"),
        ("LISTEN c", "listen"),
        ("NOTIFY c", "notify"),
        ("UNLISTEN *", "unlisten"),
        ("BEGIN", "begin"),
        ("START TRANSACTION", "begin"),
        ("COMMIT", "commit"),
        ("ROLLBACK", "rollback"),
        ("SAVEPOINT s", "savepoint"),
        ("RELEASE SAVEPOINT s", "release_savepoint"),
        ("ROLLBACK TO SAVEPOINT s", "rollback_to_savepoint"),
        ("PREPARE TRANSACTION 'x'", "prepare_transaction"),
        ("ALTER SYSTEM SET work_mem = '1MB'", "alter_system"),
        ("CREATE EXTENSION dblink", "create_extension"),
        ("LOCK TABLE t", "lock"),
        ("DISCARD ALL", "discard"),
        ("DECLARE c CURSOR FOR SELECT 1", "declare_cursor"),
        ("FETCH 10 FROM c", "fetch"),
        ("MOVE 10 IN c", "move"),
        ("CLOSE c", "close"),
        ("SELECT * INTO x FROM t", "select_into"),
        ("CREATE TABLE x AS SELECT 1", "create_table_as"),
        ("CREATE MATERIALIZED VIEW mv AS SELECT 1", "create_matview"),
        ("SET ROLE r", "set_role"),
        ("SET SESSION AUTHORIZATION r", "set_session_authorization"),
        ("SET TRANSACTION READ ONLY", "set_transaction"),
        ("LOAD 'x'", "load"),
        ("CHECKPOINT", "checkpoint"),
        ("REINDEX TABLE t", "reindex"),
        ("CLUSTER t", "cluster"),
        ("REFRESH MATERIALIZED VIEW mv", "refresh_matview"),
        ("COMMENT ON TABLE t IS 'x'", "comment"),
        ("SECURITY LABEL ON TABLE t IS 'x'", "security_label"),
        ("IMPORT FOREIGN SCHEMA s FROM SERVER f INTO l", "import_foreign_schema"),
        ("CREATE VIEW v AS SELECT 1", "create_view"),
        ("CREATE INDEX ON t (a)", "create_index"),
        ("CREATE SCHEMA s", "create_schema"),
        ("CREATE ROLE r", "create_role"),
        ("ALTER ROLE r SET work_mem = '1MB'", "alter_role"),
        ("CREATE AGGREGATE a (int) (sfunc = f, stype = int)", "create_aggregate"),
        ("CREATE DATABASE d", "create_database"),
        ("DROP DATABASE d", "drop_database"),
        ("SET CONSTRAINTS ALL DEFERRED", "set_constraints"),
        ("REASSIGN OWNED BY a TO b", "reassign_owned"),
    ],
)
def test_kind(sql: str, kind: str) -> None:
    f = one(sql)
    assert f.kind == kind
    assert kind in f.kinds
    assert kind in KINDS


@pytest.mark.parametrize(
    ("sql", "kinds"),
    [
        ("EXPLAIN ANALYZE DELETE FROM t", {"explain", "delete"}),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {"select", "delete"}),
        ("PREPARE x AS DELETE FROM t", {"prepare", "delete"}),
        ("CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u", {"create_rule", "delete"}),
        ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (1)",
         {"merge", "delete", "insert"}),
        ("CREATE VIEW v AS SELECT 1", {"create_view", "select"}),
        ("DECLARE c CURSOR FOR SELECT 1", {"declare_cursor", "select"}),
        ("COPY (SELECT 1) TO STDOUT", {"copy_to", "select"}),
        ("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'TRUNCATE t'", {"create_function", "truncate"}),
        ("CREATE FUNCTION f() RETURNS int BEGIN ATOMIC INSERT INTO t VALUES (1); SELECT 1; END",
         {"create_function", "insert", "select"}),
        ("DO $$ BEGIN DELETE FROM t; END $$", {"do", "delete"}),
        ("ALTER SYSTEM SET work_mem = '1MB'", {"alter_system", "set"}),
        ("CREATE SCHEMA s CREATE TABLE t (a int)", {"create_schema", "create_table"}),
    ],
)
def test_nested_kinds_are_folded(sql: str, kinds: set[str]) -> None:
    assert kinds <= one(sql).kinds


# --------------------------------------------------------------------------- relations


def test_reads_and_writes() -> None:
    f = one("INSERT INTO s.t (a) SELECT b FROM u JOIN v ON true WHERE EXISTS (SELECT 1 FROM w)")
    assert f.writes == {"s.t"}
    assert f.reads == {"u", "v", "w"}


def test_identifiers_fold_like_postgresql() -> None:
    f = one('SELECT * FROM Public.Orders, "Mixed"."Case", U&"\\0061ccounts"')
    assert f.reads == {"public.orders", "Mixed.Case", "accounts"}


def test_update_delete_merge_targets() -> None:
    assert one("UPDATE t SET a = 1 FROM u WHERE t.id = u.id").writes == {"t"}
    assert one("UPDATE t SET a = 1 FROM u WHERE t.id = u.id").reads == {"u"}
    assert one("DELETE FROM t USING u WHERE t.id = u.id").reads == {"u"}
    f = one("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE")
    assert f.writes == {"t"} and f.reads == {"s"}


def test_ctes_are_not_relations_but_shadowed_tables_are() -> None:
    assert one("WITH x AS (SELECT 1) SELECT * FROM x").reads == frozenset()
    # a non-recursive CTE's own query sees the real table of the same name
    assert one("WITH t AS (SELECT * FROM t) SELECT * FROM t").reads == {"t"}
    # a recursive one sees itself
    assert one("WITH RECURSIVE t AS (SELECT 1 UNION SELECT * FROM t) SELECT * FROM t").reads == frozenset()
    # later CTEs see earlier ones
    assert one("WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b").reads == frozenset()
    # earlier CTEs do not see later ones
    assert one("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a").reads == {"b"}
    # schema-qualified names are never CTEs
    assert one("WITH t AS (SELECT 1) SELECT * FROM public.t").reads == {"public.t"}
    # write targets are never CTEs
    assert one("WITH t AS (SELECT 1) DELETE FROM t").writes == {"t"}


def test_ddl_and_utility_targets_are_writes() -> None:
    assert one("TRUNCATE a, b.c").writes == {"a", "b.c"}
    assert one("DROP TABLE a, b.c").writes == {"a", "b.c"}
    assert one("LOCK TABLE a").writes == {"a"}
    assert one("ALTER TABLE a ADD b int").writes == {"a"}
    assert one("CREATE INDEX ON a (x)").writes == {"a"}
    assert one("VACUUM FULL a").writes == {"a"}
    f = one("CREATE VIEW v AS SELECT * FROM t")
    assert f.writes == {"v"} and f.reads == {"t"}


def test_select_into_and_ctas_targets() -> None:
    f = one("SELECT * INTO new_t FROM t")
    assert f.writes == {"new_t"} and f.reads == {"t"}
    assert one("SELECT * INTO TEMP new_t FROM t").writes == {"pg_temp.new_t"}
    assert one("CREATE TEMP TABLE x AS SELECT 1").writes == {"pg_temp.x"}
    assert one("CREATE TABLE s.x AS SELECT 1").writes == {"s.x"}
    assert one("CREATE TEMPORARY TABLE x (a int)").writes == {"pg_temp.x"}


def test_subqueries_everywhere() -> None:
    sql = (
        "SELECT (SELECT 1 FROM a), x FROM b, LATERAL (SELECT * FROM c) l "
        "WHERE y IN (SELECT z FROM d) AND f((SELECT 1 FROM e)) "
        "ORDER BY (SELECT 1 FROM g) "
    )
    assert one(sql).reads == {"a", "b", "c", "d", "e", "g"}
    assert one("VALUES ((SELECT 1 FROM a))").reads == {"a"}
    assert one("SELECT 1 UNION SELECT * FROM a EXCEPT SELECT * FROM b").reads == {"a", "b"}


# --------------------------------------------------------------------------- functions


def test_functions_are_lowercased_and_kept_qualified() -> None:
    f = one("SELECT Lower(x), pg_catalog.UPPER(y), count(*) FROM t")
    assert f.functions == {"lower", "pg_catalog.upper", "count"}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT PG_READ_FILE('/etc/passwd')",
        "SELECT pg_catalog.pg_read_file('/etc/passwd')",
        'SELECT "pg_read_file"(\'/etc/passwd\')',
        'SELECT "pg_catalog"."pg_read_file"(\'/etc/passwd\')',
        "SELECT U&\"pg_\\0072ead_file\"('/etc/passwd')",
        "SELECT U&\"pg_!0072ead_file\" UESCAPE '!' ('/etc/passwd')",
        "SELECT * FROM pg_read_file('/etc/passwd')",
        "SELECT * FROM ROWS FROM (pg_read_file('/etc/passwd'))",
        "SELECT ('/etc/passwd'::text).pg_read_file",
        "SELECT 1 WHERE length(pg_read_file('/etc/passwd')) > 0",
        "SELECT coalesce(null, (SELECT pg_read_file('/etc/passwd')))",
        "SELECT count(*) FILTER (WHERE pg_read_file('x') IS NULL) FROM t",
    ],
)
def test_dangerous_function_spellings(sql: str) -> None:
    f = one(sql)
    assert "file_access" in f.dangerous


def test_catalogue_categories() -> None:
    assert categories_for("query_to_xml") == {"sql_executor"}
    assert categories_for("DBLINK_EXEC") >= {"sql_executor"}
    assert categories_for("dblink_connect_u") >= {"sql_executor"}
    assert categories_for("lo_import") == {"file_access", "large_object"}
    assert categories_for("lo_unlink") == {"large_object"}
    assert categories_for("pg_ls_waldir") == {"file_access"}
    assert categories_for("pg_terminate_backend") == {"server_control"}
    assert categories_for("lower") == frozenset()
    assert categories_for("pg_sleep") == frozenset()
    assert categories_for("set_config") == frozenset()


def test_sql_executors_are_dynamic_and_read_unknown() -> None:
    f = one("SELECT query_to_xml('select * from secrets', true, true, '')")
    assert f.dynamic_sql and "sql_executor" in f.dangerous and "?" in f.reads
    assert one("SELECT * FROM dblink('x', 'select 1') AS t(a int)").dynamic_sql


def test_attribute_notation_is_checked_only_for_catalogue_names() -> None:
    assert one("SELECT t.name, t.id FROM t").functions == frozenset()
    assert one("SELECT ('x'::text).dblink_exec").dynamic_sql


# --------------------------------------------------------------------------- flags


def test_write_without_where() -> None:
    assert one("DELETE FROM t").write_without_where
    assert one("UPDATE t SET a = 1").write_without_where
    assert not one("DELETE FROM t WHERE id = 1").write_without_where
    assert one("WITH d AS (DELETE FROM t RETURNING 1) SELECT 1 FROM t WHERE true").write_without_where
    assert not one("INSERT INTO t VALUES (1)").write_without_where


@pytest.mark.parametrize(
    "sql",
    [
        "SET ROLE postgres",
        "SET LOCAL ROLE postgres",
        "SET role TO DEFAULT",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION postgres",
        "RESET SESSION AUTHORIZATION",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('Session_Authorization', 'postgres', false)",
        "SELECT set_config('role'::text, 'postgres', false)",
        "SELECT set_config(n, 'postgres', false) FROM v",
        "ALTER ROLE me SET role = 'postgres'",
        "ALTER DATABASE d SET role = 'postgres'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = postgres AS 'SELECT 1'",
        "DO $$ BEGIN SET ROLE postgres; END $$",
        "DO $$ BEGIN PERFORM set_config('role', 'postgres', false); END $$",
    ],
)
def test_role_change(sql: str) -> None:
    assert one(sql).role_change


def test_not_role_change() -> None:
    assert not one("SELECT set_config('search_path', 'x', false)").role_change
    assert not one("SET search_path = x").role_change
    assert not one("DISCARD ALL").role_change
    assert not one("RESET ALL").role_change


def test_settings() -> None:
    assert one("SET search_path = a").settings == {"search_path"}
    assert one("SET TIME ZONE 'UTC'").settings == {"timezone"}
    assert one("RESET ALL").settings == {"all"}
    assert one("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").settings == {"transaction_isolation"}
    assert one("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").settings == {
        "default_transaction_read_only"
    }
    assert one("SELECT set_config('work_mem', '1MB', true)").settings == {"work_mem"}
    assert one("SELECT set_config(x, '1MB', true) FROM t").settings == {"?"}
    assert one("ALTER SYSTEM SET wal_level = minimal").settings == {"wal_level"}


@pytest.mark.parametrize(
    ("sql", "changes"),
    [
        ("SET standard_conforming_strings = off", True),
        ("SET standard_conforming_strings TO false", True),
        ("SET standard_conforming_strings = on", False),
        ("SET standard_conforming_strings TO DEFAULT", False),
        ("RESET standard_conforming_strings", False),
        ("SET client_encoding = 'SJIS'", True),
        ("SET NAMES 'big5'", True),
        ("SET client_encoding TO 'Shift_JIS'", True),
        ("SET client_encoding = 'UTF8'", False),
        ("SET client_encoding = 'LATIN1'", False),
        ("SELECT set_config('standard_conforming_strings', 'off', false)", True),
        ("SELECT set_config('client_encoding', v, false) FROM t", True),
        ("SELECT set_config(n, 'x', false) FROM t", True),
        ("SELECT set_config('client_encoding', 'UTF8', false)", False),
        ("ALTER ROLE r SET standard_conforming_strings = off", True),
        ("ALTER SYSTEM SET standard_conforming_strings = off", True),
        ("DO $$ BEGIN SET standard_conforming_strings = off; END $$", True),
    ],
)
def test_changes_lexer(sql: str, changes: bool) -> None:
    assert one(sql).changes_lexer is changes


def test_copy_facts() -> None:
    f = one("COPY t TO PROGRAM 'gzip > /tmp/x'")
    assert f.copy is not None and f.copy.program and f.copy.target == "gzip > /tmp/x"
    assert f.copy_program and not f.copy_file and "file_access" in f.dangerous
    f = one("COPY t FROM '/etc/passwd'")
    assert f.copy_file and f.writes == {"t"} and f.copy.direction == "from"
    f = one("COPY (SELECT * FROM secrets) TO STDOUT")
    assert f.copy.query and not f.copy_file and not f.copy_program and f.reads == {"secrets"}
    assert one("COPY t TO STDOUT").reads == {"t"}
    assert one("COPY t FROM STDIN").writes == {"t"}


def test_explain_analyze_flag() -> None:
    assert one("EXPLAIN ANALYZE SELECT 1").explain_analyze
    assert one("EXPLAIN (ANALYZE, BUFFERS) SELECT 1").explain_analyze
    assert not one("EXPLAIN SELECT 1").explain_analyze


def test_prepare_execute_deallocate() -> None:
    assert one("PREPARE q(int) AS SELECT $1").prepares == "q"
    assert one("EXECUTE q(1)").executes_prepared == {"q"}
    assert one("EXPLAIN EXECUTE q").executes_prepared == {"q"}
    assert one("CREATE TABLE x AS EXECUTE q").executes_prepared == {"q"}
    assert one("DEALLOCATE q").deallocates == "q"
    assert one("DEALLOCATE ALL").deallocates == "*"


# --------------------------------------------------------------------------- bodies


def test_plpgsql_execute_is_dynamic() -> None:
    for sql in [
        "DO $$ BEGIN EXECUTE 'select 1'; END $$",
        "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'select 1' LOOP END LOOP; END $$",
        "DO $$ DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'select 1'; END $$",
        (
            "CREATE FUNCTION f() RETURNS SETOF int LANGUAGE plpgsql AS "
            "$$ BEGIN RETURN QUERY EXECUTE 'select 1'; END $$"
        ),
        (
            "CREATE FUNCTION f(t text) RETURNS void LANGUAGE plpgsql AS "
            "$f$ BEGIN EXECUTE format('DROP TABLE %I', t); END $f$"
        ),
    ]:
        f = one(sql)
        assert f.dynamic_sql, sql
        assert "plpgsql" in f.bodies
        assert not f.unknown_body


def test_plpgsql_statements_and_expressions_are_read() -> None:
    f = one(
        """CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS $$
        DECLARE x int := (SELECT count(*) FROM t1); c CURSOR FOR SELECT * FROM t2; arr int[];
        BEGIN
          x := (SELECT max(id) FROM t3 WHERE id = a);
          arr[1] := (SELECT 1 FROM t4);
          SELECT id INTO x FROM t5;
          UPDATE t6 SET v = x WHERE id = a;
          IF x > (SELECT 0 FROM t7) THEN PERFORM pg_read_file('/x'); END IF;
          RAISE NOTICE '%', (SELECT 1 FROM t8);
          RETURN x;
        END $$"""
    )
    assert {"t1", "t2", "t3", "t4", "t5", "t7", "t8"} <= f.reads
    assert f.writes == {"t6"}
    assert "update" in f.kinds
    assert "file_access" in f.dangerous
    assert not f.dynamic_sql and not f.unknown_body


def test_do_block_custom_tag_and_nested_dollar() -> None:
    f = one("DO $outer$ BEGIN PERFORM $$x$$; DELETE FROM t; END $outer$")
    assert "delete" in f.kinds and f.writes == {"t"}
    f = one("DO $$ BEGIN PERFORM '$pgjit$'; DELETE FROM t2; END $$")
    assert f.writes == {"t2"} and not f.unknown_body


@pytest.mark.parametrize(
    "sql",
    [
        "DO LANGUAGE plpython3u $$ import os $$",
        "DO $$ this is not plpgsql $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS 'return 1'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'sym'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE internal AS 'int4in'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELEC 1'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN undeclared := 1; RETURN 1; END $$",
    ],
)
def test_unreadable_bodies(sql: str) -> None:
    f = one(sql)
    assert f.unknown_body and f.unknown_reasons


def test_sql_function_body_containing_do_and_function() -> None:
    f = one(
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $body$ "
        "CREATE FUNCTION g() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'x'; END $$ "
        "$body$"
    )
    assert f.dynamic_sql
    assert {"create_function"} <= f.kinds


def test_trigger_function_is_recorded() -> None:
    f = one("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION s.evil()")
    assert f.functions == {"s.evil"} and f.writes == {"t"}


def test_function_parameter_defaults_are_walked() -> None:
    f = one("CREATE FUNCTION f(a text DEFAULT pg_read_file('x')) RETURNS text LANGUAGE sql AS 'SELECT a'")
    assert "file_access" in f.dangerous


# --------------------------------------------------------------------------- strings and errors


def test_multi_statement_and_locations() -> None:
    analysis = analyze("SELECT 1; DROP TABLE t;  SELECT 'é'; SELECT 2")
    assert [f.kind for f in analysis.statements] == ["select", "drop_table", "select", "select"]
    assert analysis.statements[1].text.strip() == "DROP TABLE t"
    third = analysis.statements[2]
    assert third.text.strip() == "SELECT 'é'"
    assert analysis.sql[third.location :].lstrip().startswith("SELECT 'é'")
    assert analysis.statements[3].text.strip() == "SELECT 2"


def test_empty_strings() -> None:
    assert analyze("").statements == ()
    assert analyze("  -- nothing\n").statements == ()
    assert len(analyze(";;SELECT 1;;").statements) == 1


def test_parse_failure_has_postgresql_cursorpos() -> None:
    with pytest.raises(ParseFailure) as info:
        analyze("SELECT * FROM WHERE")
    assert info.value.cursorpos == 15  # 1-based, like PostgreSQL's 'P' field
    assert "syntax error" in info.value.message
    with pytest.raises(ParseFailure) as info:
        analyze("SELECT 'é' FROM WHERE")
    assert info.value.cursorpos == len("SELECT 'é' FROM ") + 1


def test_nul_character_fails_closed() -> None:
    with pytest.raises(ParseFailure) as info:
        analyze("SELECT 1\x00; DROP TABLE t")
    assert info.value.cursorpos == 9


def test_deeply_nested_statement_fails_closed() -> None:
    sql = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    try:
        analysis = analyze(sql)
    except ParseFailure:
        return
    assert analysis.statements[0].kind == "select"


def test_cache_hits() -> None:
    facts_mod.clear_cache()
    analyze("SELECT 42")
    analyze("SELECT 42")
    info = facts_mod.cache_info()
    assert info.hits >= 1 and info.misses >= 1
    assert analyze("SELECT 42") is analyze("SELECT 42")


def test_benchmark_reports_miss_and_hit() -> None:
    miss, hit = facts_mod.benchmark("SELECT abalance FROM pgbench_accounts WHERE aid = 123", repeat=50)
    assert miss > hit > 0


def test_to_dict_is_json_friendly() -> None:
    import json

    d = one("COPY t TO PROGRAM 'x'").to_dict()
    assert json.loads(json.dumps(d))["copy_program"] is True


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("selctfromwhr ;()'$\"*,.0123456789_-/\\ UE&x")), max_size=80))
def test_fuzz_only_parse_failure_escapes(sql: str) -> None:
    try:
        analysis = analyze_uncached(sql)
    except ParseFailure:
        return
    for f in analysis.statements:
        assert f.kind in KINDS


def test_policy_package_does_not_import_io_libraries() -> None:
    code = (
        "import sys, pgjit.policy.facts, pgjit.policy.model, pgjit.policy.tool;"
        "bad = [m for m in ('trio', 'sqlalchemy', 'socket') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("", "socket"), out.stdout
    assert "trio" not in out.stdout and "sqlalchemy" not in out.stdout
