"""Result masking, end to end: no sensitive value reaches a masked group in clear.

A real PostgreSQL (tests/conftest.py), a real OIDC issuer and a real gateway in
JIT mode (tests/oidc_fixtures.py) with a policy that masks the PII columns of
``public.customers`` (and ``*secret*`` columns anywhere) for everyone but the
``dbas`` group, with ``function: partial, keep: 4`` and ``computed: refuse``.

Every client of the leak suite connects through a recording TCP forwarder
(tests/masking/leakcheck.py) that keeps every byte the gateway sends. After
each interaction, those bytes are searched for every sensitive value, in
clear and hex (either case), base64, reversed, md5/sha256, and split into
characters (by any delimiter, or one per DataRow / CopyData message).

Three checks per case:

* no sensitive value in any received byte (refused or masked are both fine);
* "oracle" cases (a masked column in WHERE / JOIN / ORDER BY / GROUP BY /
  DISTINCT / HAVING / window / FILTER / LIMIT / set-operation dedupe, row-count
  probes, ...) must be refused with SQLSTATE 42501;
* differential: each single SQL statement is also run as the superuser on the
  real data (A) and on a shadow database with the same non-sensitive data and
  other sensitive values (B). When A != B the answer depends on sensitive data,
  and a gateway answer equal to A is a leak (lengths, booleans, counts, sort
  orders, casts to bigint in binary format... which no byte search can see).

Positive checks keep the suite from passing vacuously: an analyst gets masked
values (ending in the real last 4 characters) for the right rows, a DBA gets
the clear values and the search does find them (in every form) in the DBA's
recorded bytes. A control suite runs queries on non-sensitive columns through
the gateway and directly, and compares rows and column types.

Run: ``.venv/bin/python -m pytest -q tests/masking/test_leaks_live.py``.
``PGJIT_LEAK_REPORT=FILE`` appends one JSON line per leak case (its outcome
in each protocol: refused with what, or ran). ``PGJIT_LEAK_UNMASKED=1`` writes the same policy without its ``masking:``
section (a harness self-test against a gateway that masks nothing: the leak
cases then fail, the DBA and control checks pass).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

import psycopg
import pytest
import yaml
from psycopg import pq

from tests.gateway_fixtures import start_gateway
from tests.masking.leakcheck import Needles, RecordingProxy, luhn_complete, luhn_ok, ssn as make_ssn
from tests.oidc_fixtures import apply_setup_sql, issuer, oidc_sections  # noqa: F401 (issuer is a fixture)

pytestmark = pytest.mark.pg

CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}
SHADOW_DB = "pgjit_leak_shadow"
SAVED_SCHEMA = "pgjit_leak_saved"
ANALYST = "analyst@example.com"
DBA = "dba@example.com"
REFUSED = "42501"
CONNECT_TIMEOUT = 10
STATEMENT_TIMEOUT = "20s"
N_CUSTOMERS = 20
N_ORDERS = 60
CITIES = ["Paris", "Lyon", "Oslo", "Rome", "Lima"]
STATUSES = ["new", "paid", "shipped", "cancelled"]


def need(what: str, exc: BaseException | None = None) -> None:
    """A missing client fails under CI=true and skips otherwise."""
    msg = f"{what} is not available" + (f": {exc}" if exc else "")
    if CI:
        pytest.fail(msg + " (CI=true forbids skipping)", pytrace=False)
    pytest.skip(msg)


# --------------------------------------------------------------------------
# the data: random per run, recognisable
# --------------------------------------------------------------------------


@dataclass
class Dataset:
    customers: list[dict[str, Any]]
    orders: list[tuple[int, int, Decimal, str]]
    integrations: list[dict[str, Any]]


def make_dataset(shadow: bool) -> Dataset:
    hx = secrets.token_hex
    customers = []
    for i in range(1, N_CUSTOMERS + 1):
        if not shadow:
            email = f"u{hx(4)}@leak-{hx(3)}.example"
            s = make_ssn("1" if i <= 6 else None)  # some start with 1: the LIKE '1%' oracle has rows
            card = luhn_complete("4")
            nid = "NI" + hx(5).upper()
        else:  # other values, other lengths, other first characters
            email = f"vv{hx(6)}@shadow-{hx(4)}.example.org"
            s = make_ssn("9")
            card = luhn_complete("5")
            nid = "NX" + hx(7).upper()
        customers.append(
            {
                "id": i,
                "name": f"Customer {i:02d}",
                "email": email,
                "ssn": s,
                "card_number": card,
                "national_id": nid,
                "city": CITIES[i % len(CITIES)],
                "notes": f"note {i}: prefers {'mail' if i % 2 else 'phone'}",
            }
        )
    orders = [(i, 1 + (i * 7) % N_CUSTOMERS, Decimal((i * 3701) % 10000) / 100, STATUSES[i % 4]) for i in range(1, N_ORDERS + 1)]
    integrations = [
        {"id": i, "label": f"integration {i}", "client_secret": (f"pk_test_{hx(14)}" if shadow else f"sk_live_{hx(12)}")}
        for i in range(1, 6)
    ]
    return Dataset(customers, orders, integrations)


DATA = make_dataset(shadow=False)
SHADOW = make_dataset(shadow=True)

# Content-detector bait in free text (notes is not a masked column): only the
# detector test searches for these, the leak suite does not.
DETECT = {
    "email": f"backup-{secrets.token_hex(4)}@detect-{secrets.token_hex(3)}.example",
    "payment_card": luhn_complete("5"),
    "acme_regex": f"ACME-{secrets.randbelow(900000) + 100000}",
}
DETECT_NOTES = {
    19: f"reach me at {DETECT['email']} after 6",
    20: f"paid with {DETECT['payment_card']} ref {DETECT['acme_regex']}",
}
for _c in DATA.customers + SHADOW.customers:
    if _c["id"] in DETECT_NOTES:
        _c["notes"] = DETECT_NOTES[_c["id"]]

MASKED_COLS = ("email", "ssn", "card_number", "national_id")
assert all(luhn_ok(c["card_number"]) for c in DATA.customers + SHADOW.customers)
assert len({c["email"] for c in DATA.customers}) == N_CUSTOMERS


def cust(i: int) -> dict[str, Any]:
    return DATA.customers[i - 1]


def sensitive_values() -> list[tuple[str, str]]:
    out = [(f"customers.{col}[id={c['id']}]", c[col]) for c in DATA.customers for col in MASKED_COLS]
    out += [(f"integrations.client_secret[id={r['id']}]", r["client_secret"]) for r in DATA.integrations]
    return out


def sensitive_parts() -> list[tuple[str, str]]:
    """Pieces of values that are secret on their own (the masked form shows only
    the last 4 characters): an email's local part and domain, everything but
    the last 4 characters of the others."""
    out = []
    for c in DATA.customers:
        local, domain = c["email"].split("@")
        out += [(f"customers.email[id={c['id']}] local part", local), (f"customers.email[id={c['id']}] domain", domain[:-4])]
        out += [(f"customers.{col}[id={c['id']}] all but the last 4", c[col][:-4]) for col in ("ssn", "card_number", "national_id")]
    return out


NEEDLES = Needles(sensitive_values())
NEEDLES.add_parts(sensitive_parts())
DETECT_NEEDLES = Needles([(f"notes detector bait {k}", v) for k, v in DETECT.items()])


# --------------------------------------------------------------------------
# schema objects (appdb and the shadow database)
# --------------------------------------------------------------------------

DDL = [
    """CREATE TABLE public.customers (
           id int PRIMARY KEY, name text NOT NULL, email text UNIQUE, ssn text,
           card_number text, national_id text, city text CHECK (city <> ''), notes text)""",
    "CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int, amount numeric(10, 2), status text)",
    "CREATE TABLE public.integrations (id int PRIMARY KEY, label text, client_secret text)",
    "CREATE VIEW public.customer_contacts AS SELECT id, name, email FROM public.customers",
    "CREATE VIEW public.customer_contacts_public AS SELECT id, email AS contact FROM public.customer_contacts",
    "CREATE STATISTICS public.customers_email_city (mcv) ON email, city FROM public.customers",
    "CREATE STATISTICS public.customers_lower_email ON (lower(email)) FROM public.customers",
    "ALTER TABLE public.customers OWNER TO app",
    "ALTER TABLE public.orders OWNER TO app",
    "ALTER TABLE public.integrations OWNER TO app",
    "ALTER VIEW public.customer_contacts OWNER TO app",
    "ALTER VIEW public.customer_contacts_public OWNER TO app",
]
GRANTS = [
    "GRANT SELECT ON public.customers, public.orders, public.integrations, public.customer_contacts, public.customer_contacts_public TO pgjit_read",
    "GRANT INSERT, UPDATE, DELETE ON public.customers, public.orders, public.integrations TO pgjit_write",
]
DROP_MINE = [
    "DROP VIEW IF EXISTS public.customer_contacts_public, public.customer_contacts",
    "DROP TABLE IF EXISTS public.integrations",
]


def fill(conn: psycopg.Connection, ds: Dataset) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO public.customers (id, name, email, ssn, card_number, national_id, city, notes)"
            " VALUES (%(id)s, %(name)s, %(email)s, %(ssn)s, %(card_number)s, %(national_id)s, %(city)s, %(notes)s)",
            ds.customers,
        )
        cur.executemany("INSERT INTO public.orders (id, customer_id, amount, status) VALUES (%s, %s, %s, %s)", ds.orders)
        cur.executemany("INSERT INTO public.integrations (id, label, client_secret) VALUES (%(id)s, %(label)s, %(client_secret)s)", ds.integrations)
    conn.execute("ANALYZE public.customers, public.orders, public.integrations")


DIGEST_SQL = (
    "SELECT (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM public.customers t)"
    " || (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM public.orders t)"
    " || (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM public.integrations t)"
)


def restore_data(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM public.customers")
    conn.execute("DELETE FROM public.orders")
    conn.execute("DELETE FROM public.integrations")
    fill(conn, DATA)


def _regclass(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


@pytest.fixture(scope="module")
def leakdb(pg):
    """The leak suite's tables in appdb (the session's sample customers/orders
    are moved aside to a schema and put back at the end) and in a shadow
    database with other sensitive values."""
    apply_setup_sql(pg)
    with pg.connect(dbname="appdb") as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SAVED_SCHEMA}")
        for stmt in DROP_MINE:
            conn.execute(stmt)
        for t in ("orders", "customers"):
            if _regclass(conn, f"{SAVED_SCHEMA}.{t}"):  # saved already: what is in public is ours
                conn.execute(f"DROP TABLE IF EXISTS public.{t} CASCADE")
            elif _regclass(conn, f"public.{t}"):
                conn.execute(f"ALTER TABLE public.{t} SET SCHEMA {SAVED_SCHEMA}")
        for stmt in DDL + GRANTS:
            conn.execute(stmt)
        fill(conn, DATA)
        digest = conn.execute(DIGEST_SQL).fetchone()[0]
    with pg.connect(dbname="postgres") as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SHADOW_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SHADOW_DB} OWNER app")
    with pg.connect(dbname=SHADOW_DB) as conn:
        for stmt in DDL:
            conn.execute(stmt)
        fill(conn, SHADOW)
    try:
        yield digest
    finally:
        with pg.connect(dbname="postgres") as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {SHADOW_DB} WITH (FORCE)")
        with pg.connect(dbname="appdb") as conn:
            for stmt in DROP_MINE:
                conn.execute(stmt)
            conn.execute("DROP TABLE IF EXISTS public.customers, public.orders CASCADE")
            for t in ("customers", "orders"):
                if _regclass(conn, f"{SAVED_SCHEMA}.{t}"):
                    conn.execute(f"ALTER TABLE {SAVED_SCHEMA}.{t} SET SCHEMA public")
            conn.execute(f"DROP SCHEMA IF EXISTS {SAVED_SCHEMA}")


# --------------------------------------------------------------------------
# the policy, the gateway, the forwarder
# --------------------------------------------------------------------------

MASKING_RULE = {
    "name": "customer-pii",
    "groups": ["*"],
    "except_groups": ["dbas"],
    "columns": [f"public.customers.{c}" for c in MASKED_COLS],
    "column_names": ["*secret*"],
    "detect": ["email", "payment_card", "us_ssn", "iban", "phone", "jwt", "api_key", "private_key"],
    "regex": ["ACME-[0-9]{6}"],
    "function": "partial",
    "keep": 4,
    "computed": "refuse",
}


def policy_doc(masking: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "description": "masking leak suite",
        "access": [
            {"group": "analysts", "grant": ["pgjit_write"]},
            {"group": "dbas", "grant": ["pgjit_write"]},
        ],
        "rules": [
            {
                "name": "no-ddl",
                "match": {"kind": ["create_*", "drop_*", "alter_*"]},
                "action": "deny",
                "message": "DDL is not allowed through the gateway",
            }
        ],
        "default": "allow",
    }
    if masking:
        doc["masking"] = [MASKING_RULE]
    return doc


@dataclass
class Env:
    pg: Any
    issuer: Any
    gw: Any
    proxy: RecordingProxy
    digest: str
    truth_a: psycopg.Connection
    truth_b: psycopg.Connection

    def dsn(self, sub: str, groups: list[str], **kw: Any) -> str:
        token = self.issuer.token(sub, groups=groups, ttl=900)
        parts = {
            "host": self.proxy.host,
            "port": str(self.proxy.port),
            "dbname": "appdb",
            "user": sub,
            "password": token,
            "sslmode": "disable",
            "gssencmode": "disable",
            "connect_timeout": str(CONNECT_TIMEOUT),
        }
        parts.update(kw)
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def connect(self, sub: str = ANALYST, groups: list[str] | None = None, autocommit: bool = True) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn(sub, groups or ["analysts"]), autocommit=autocommit)
        try:
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        except psycopg.Error:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.rollback()
        return conn

    def analyst(self) -> psycopg.Connection:
        return self.connect(ANALYST, ["analysts"])

    def dba(self) -> psycopg.Connection:
        return self.connect(DBA, ["dbas"])

    def client_env(self, sub: str = ANALYST, groups: list[str] | None = None) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        e.update(
            PGHOST=self.proxy.host,
            PGPORT=str(self.proxy.port),
            PGUSER=sub,
            PGPASSWORD=self.issuer.token(sub, groups=groups or ["analysts"], ttl=900),
            PGDATABASE="appdb",
            PGSSLMODE="disable",
            PGGSSENCMODE="disable",
            PGCONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
            PGOPTIONS="",
            PGCLIENTENCODING="UTF8",
        )
        return e


@pytest.fixture(scope="module")
def env(pg, issuer, leakdb, tmp_path_factory):  # noqa: F811 (issuer is the fixture)
    work = tmp_path_factory.mktemp("masking-leaks")
    policy = work / "masking-policy.yaml"
    policy.write_text(yaml.safe_dump(policy_doc(masking=os.environ.get("PGJIT_LEAK_UNMASKED") != "1"), sort_keys=False))
    gw = start_gateway(work / "gw", pg, **oidc_sections(pg, issuer, policy=policy))
    proxy = RecordingProxy(gw.port)
    truth_a = pg.connect(dbname="appdb", autocommit=False)
    truth_b = pg.connect(dbname=SHADOW_DB, autocommit=False)
    for c in (truth_a, truth_b):
        c.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        c.commit()
    try:
        yield Env(pg, issuer, gw, proxy, leakdb, truth_a, truth_b)
    finally:
        truth_a.close()
        truth_b.close()
        proxy.close()
        gw.stop()


def psql_path(pg) -> str:
    try:
        return pg.tool("psql")
    except Exception as exc:  # noqa: BLE001
        need("psql", exc)
        raise


# --------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    sql: str | None = None  # one statement: run in the simple, extended and binary protocols
    script: list[str] | None = None  # several statements, in order, simple protocol, one connection
    func: Callable[["Ctx"], None] | None = None  # any other interaction
    oracle: bool = False  # must be refused with 42501 (see refuse_at for scripts)
    refuse_at: tuple[int, ...] = ()  # script: these statement indexes; one of them 42501, the last fails
    tx: bool = False  # sql: inside BEGIN ... ROLLBACK
    truth: bool = True  # sql: run the differential check

    @property
    def kind(self) -> str:
        return "sql" if self.sql is not None else "script" if self.script is not None else "func"


CASES: list[Case] = []


def C(id: str, sql: str, **kw: Any) -> None:
    CASES.append(Case(id, sql=sql, **kw))


def O(id: str, sql: str, **kw: Any) -> None:  # noqa: E743 - an oracle: must be refused
    CASES.append(Case(id, sql=sql, oracle=True, **kw))


def S(id: str, script: list[str], **kw: Any) -> None:
    CASES.append(Case(id, script=script, **kw))


def F(id: str, **kw: Any) -> Callable[[Callable[["Ctx"], None]], Callable[["Ctx"], None]]:
    def deco(fn: Callable[["Ctx"], None]) -> Callable[["Ctx"], None]:
        CASES.append(Case(id, func=fn, **kw))
        return fn

    return deco


E1, E2, E3 = cust(1)["email"], cust(2)["email"], cust(3)["email"]
S1, S3 = cust(1)["ssn"], cust(3)["ssn"]

# ---- plain columns, aliases, spellings
C("plain-email", "SELECT email FROM customers")
C("plain-all-masked", "SELECT id, email, ssn, card_number, national_id FROM customers")
C("select-star", "SELECT * FROM customers")
C("table-command", "TABLE customers")
C("alias", "SELECT email AS e, ssn AS \"s s\" FROM customers")
C("table-alias", "SELECT c.email, c.ssn FROM customers c WHERE c.id < 10")
C("qualified", "SELECT public.customers.email FROM public.customers")
C("quoted-upper", 'SELECT "email", CARD_NUMBER FROM "public"."customers"')
C("comments", "/* x */ SELECT -- y\n national_id /* z */ FROM customers")
C("from-column-aliases", "SELECT e, s FROM customers AS t(i, n, e, s)")
C("only", "SELECT email FROM ONLY customers")
C("tablesample", "SELECT ssn FROM customers TABLESAMPLE SYSTEM (100)")
C("parenthesised", "SELECT (email), ((ssn)) FROM customers")
C("derived-table", "SELECT * FROM (SELECT * FROM customers) s")
C("for-update", "SELECT email FROM customers WHERE id = 1 FOR UPDATE", tx=True)
C("secret-column", "SELECT * FROM integrations")
C("values-scalar", "VALUES ((SELECT email FROM customers WHERE id = 1))")
# ---- expressions and functions
C("lower-upper", "SELECT lower(email), upper(ssn) FROM customers")
C("substr", "SELECT substr(email, 1, 12), substr(card_number, 1, 12) FROM customers")
C("left-right", "SELECT left(email, 10), right(email, 10) FROM customers")
C("concat", "SELECT concat(email, '|', ssn), concat_ws(',', card_number, national_id) FROM customers")
C("concat-op", "SELECT email || '' , '' || ssn FROM customers")
C("format", "SELECT format('%s/%s', email, ssn) FROM customers")
C("md5", "SELECT md5(email), md5(ssn) FROM customers")
C("sha256", "SELECT sha256(convert_to(national_id, 'UTF8')) FROM customers")
C("replace", "SELECT replace(email, '@', ' at '), replace(ssn, '-', '') FROM customers")
C("reverse", "SELECT reverse(email), reverse(card_number) FROM customers")
C("translate", "SELECT translate(email, 'abcdef0123456789', 'bcdefa1234567890') FROM customers")
C("encode-hex", "SELECT encode(convert_to(email, 'UTF8'), 'hex') FROM customers")
C("encode-base64", "SELECT encode(convert_to(email, 'UTF8'), 'base64'), encode(convert_to(ssn, 'UTF8'), 'base64') FROM customers")
C("encode-escape", "SELECT encode(convert_to(card_number, 'UTF8'), 'escape') FROM customers")
C("cast-bytea", "SELECT email::bytea, convert_to(ssn, 'UTF8') FROM customers")
C("cast-json", "SELECT to_json(email), to_jsonb(ssn), to_json(card_number)::text FROM customers")
C("cast-varchar-name-char", "SELECT email::varchar(8), ssn::name, card_number::char(30) FROM customers")
C("cast-bigint", "SELECT card_number::bigint, replace(ssn, '-', '')::bigint FROM customers")
C("collate", 'SELECT email COLLATE "C" FROM customers')
C("case", "SELECT CASE WHEN id > 0 THEN email ELSE 'x' END FROM customers")
C("coalesce-nullif-greatest", "SELECT coalesce(email, 'x'), nullif(ssn, ''), greatest(card_number, '') FROM customers")
C("split-part", "SELECT split_part(email, '@', 1), split_part(email, '@', 2) FROM customers")
C("overlay-repeat", "SELECT overlay(email placing '#' from 1 for 1), repeat(ssn, 2) FROM customers")
C("quote", "SELECT quote_literal(email), quote_ident(ssn) FROM customers")
C("length-ascii-position", "SELECT id, length(email), ascii(email), position('@' in email) FROM customers")
C("comparison-in-select", "SELECT id, email ~ '^u', ssn > '5', card_number LIKE '4%' FROM customers")
C("string-to-array", "SELECT string_to_array(ssn, NULL), regexp_split_to_array(email, '') FROM customers")
C("regexp-split-rows", "SELECT regexp_split_to_table(email, '') FROM customers WHERE id = 1")
C("chars-per-row", "SELECT substr(c.national_id, g, 1) FROM customers c, generate_series(1, 20) g WHERE c.id = 2 ORDER BY g")
C("array-subscript", "SELECT (ARRAY[email, ssn])[1], (ARRAY[card_number])[1] FROM customers")
C("row-field", "SELECT (ROW(email, ssn)).f1 FROM customers")
C("json-build", "SELECT json_build_object('e', email), jsonb_build_array(ssn, card_number) FROM customers")
C("xmlelement", "SELECT xmlelement(name e, email) FROM customers")
C("unnest-array", "SELECT unnest(ARRAY[email, ssn, card_number, national_id]) FROM customers")
C("param-free-concat-lit", "SELECT 'mailto:' || email FROM customers WHERE id = 1")
# ---- subqueries, CTEs, set operations, views
C("scalar-subquery", "SELECT (SELECT email FROM customers WHERE id = 1) AS e")
C("correlated-scalar", "SELECT o.id, (SELECT c.ssn FROM customers c WHERE c.id = o.customer_id) FROM orders o")
C("subquery-from", "SELECT x.e FROM (SELECT email AS e FROM customers) x")
C("array-subquery", "SELECT ARRAY(SELECT card_number FROM customers)")
C("cte-hops", "WITH a AS (SELECT email AS x FROM customers), b AS (SELECT x AS y FROM a), c AS (SELECT y AS z FROM b) SELECT z FROM c")
C("cte-column-list", "WITH a(i, x) AS (SELECT id, ssn FROM customers), b(y) AS (SELECT x FROM a) SELECT y FROM b")
C("cte-materialized", "WITH m AS MATERIALIZED (SELECT national_id FROM customers) SELECT * FROM m")
C("cte-recursive", "WITH RECURSIVE r(n, s) AS (SELECT 1, email FROM customers WHERE id = 1 UNION ALL SELECT n + 1, s FROM r WHERE n < 3) SELECT n, s FROM r")
C(
    "cte-recursive-peel",
    "WITH RECURSIVE r(i, ch) AS (SELECT 1, substr(email, 1, 1) FROM customers WHERE id = 3"
    " UNION ALL SELECT r.i + 1, substr(c.email, r.i + 1, 1) FROM r JOIN customers c ON c.id = 3 WHERE r.i < 40)"
    " SELECT ch FROM r",
)
C("union-all", "SELECT email FROM customers UNION ALL SELECT ssn FROM customers")
C("union-all-mixed", "SELECT id, email FROM customers UNION ALL SELECT 0, 'x'")
C("view", "SELECT * FROM customer_contacts")
C("view-over-view", "SELECT * FROM customer_contacts_public")
C("view-expression", "SELECT upper(contact) FROM customer_contacts_public")
# ---- whole-row references
C("whole-row", "SELECT c FROM customers c")
C("row-to-json", "SELECT row_to_json(c) FROM customers c")
C("to-jsonb-row", "SELECT to_jsonb(c) FROM customers c")
C("row-text", "SELECT c::text FROM customers c")
C("table-star", "SELECT customers.* FROM customers")
C("row-constructor", "SELECT ROW(c.email), ROW(c.ssn, c.id) FROM customers c")
C("json-agg-row", "SELECT json_agg(c) FROM customers c")
C("row-field-select", "SELECT (c).email, (c.*).ssn FROM customers c")
C("jsonb-each", "SELECT (jsonb_each_text(to_jsonb(c))).* FROM customers c")
C("json-to-record", "SELECT x.* FROM customers c, json_to_record(row_to_json(c)) AS x(email text, ssn text)")
C("view-whole-row", "SELECT v FROM customer_contacts v")
C("secret-whole-row", "SELECT row_to_json(i) FROM integrations i")
# ---- aggregates
C("string-agg", "SELECT string_agg(email, ',') FROM customers")
C("string-agg-ordered", "SELECT string_agg(ssn, ';' ORDER BY id) FROM customers")
C("array-agg", "SELECT array_agg(card_number), array_agg(national_id ORDER BY id) FROM customers")
C("max-min", "SELECT max(email), min(ssn), max(card_number), min(national_id) FROM customers")
C("json-object-agg", "SELECT json_object_agg(id, email) FROM customers")
C("jsonb-agg-col", "SELECT jsonb_agg(ssn), json_agg(email) FROM customers")
C("xmlagg", "SELECT xmlagg(xmlelement(name s, ssn)) FROM customers")
C("agg-group-by-city", "SELECT city, max(email), string_agg(ssn, ',') FROM customers GROUP BY city")
C("ordered-set-agg", "SELECT mode() WITHIN GROUP (ORDER BY email), percentile_disc(0.5) WITHIN GROUP (ORDER BY ssn) FROM customers")
C("array-to-string", "SELECT array_to_string(array_agg(email), ' ') FROM customers")
# ---- window functions (values)
C("window-lag", "SELECT id, lag(email) OVER (ORDER BY id), first_value(ssn) OVER (ORDER BY id) FROM customers")
# ---- LATERAL
C("lateral", "SELECT c.id, x.e FROM customers c, LATERAL (SELECT lower(c.email) AS e) x")
C("lateral-left", "SELECT * FROM customers c LEFT JOIN LATERAL (SELECT d.ssn FROM customers d WHERE d.id = c.id) x ON true")
# ---- RETURNING and writes (rolled back)
C("update-returning", "UPDATE customers SET city = city WHERE id = 1 RETURNING email", tx=True)
C("delete-returning-star", "DELETE FROM customers WHERE id = 2 RETURNING *", tx=True)
C("update-returning-expr", "UPDATE customers SET city = city WHERE id = 3 RETURNING lower(ssn), card_number || ''", tx=True)
C("insert-select-returning", "INSERT INTO orders (id, customer_id, amount, status) SELECT 100000 + id, id, 0, 'x' FROM customers RETURNING (SELECT email FROM customers c WHERE c.id = customer_id)", tx=True)
C("update-from-returning", "UPDATE orders o SET status = c.ssn FROM customers c WHERE c.id = o.customer_id RETURNING o.status", tx=True)
C("cte-update-returning", "WITH u AS (UPDATE customers SET city = city WHERE id = 4 RETURNING email, ssn) SELECT * FROM u", tx=True)
C("cte-delete-returning", "WITH d AS (DELETE FROM customers WHERE id = 5 RETURNING *) SELECT * FROM d", tx=True)
C("secret-update-returning", "UPDATE integrations SET label = label WHERE id = 1 RETURNING client_secret", tx=True)
# ---- error and notice text
C("err-ssn-int", "SELECT ssn::int FROM customers")
C("err-email-int", "SELECT email::int FROM customers")
C("err-card-int", "SELECT card_number::int FROM customers")
C("err-nid-numeric", "SELECT national_id::numeric FROM customers")
C("err-email-date", "SELECT email::date FROM customers")
C("err-email-json", "SELECT email::json FROM customers")
C("err-ssn-inet", "SELECT ssn::inet FROM customers")
C("err-email-bool", "SELECT email::boolean FROM customers WHERE id = 2")
C("err-regclass", "SELECT email::regclass FROM customers WHERE id = 1")
C("err-where-cast", "SELECT id FROM customers WHERE id = 1 AND card_number::int > 0")
C("err-xmlparse", "SELECT xmlparse(document national_id) FROM customers")
C("err-secret-int", "SELECT client_secret::int FROM integrations")
C("err-not-null-failing-row", "UPDATE customers SET name = NULL WHERE id = 1", tx=True)
C("err-check-failing-row", "UPDATE customers SET city = '' WHERE id = 2", tx=True)
C("err-unique-literal", f"INSERT INTO customers (id, name, email) VALUES (9001, 'dup', '{E1}')", tx=True)
C("err-unique-insert-select", "INSERT INTO customers (id, name, email) SELECT 9000 + id, 'dup', email FROM customers WHERE id = 2", tx=True)
C("err-unique-update", "UPDATE customers SET email = (SELECT email FROM customers WHERE id = 3) WHERE id = 4", tx=True)
C("err-pk-insert-select-row", "INSERT INTO customers SELECT * FROM customers WHERE id = 6", tx=True)
# ---- dynamic SQL and opaque code
C("query-to-xml", "SELECT query_to_xml('select email, ssn from customers', true, false, '')")
C("table-to-xml", "SELECT table_to_xml('public.customers'::regclass, true, false, '')")
C("schema-to-xml", "SELECT schema_to_xml('public', true, false, '')")
C("do-notice", "DO $$ BEGIN RAISE NOTICE '%', (SELECT string_agg(email, ',') FROM customers); END $$", truth=False)
C("do-notice-loop", "DO $$ DECLARE r record; BEGIN FOR r IN SELECT ssn FROM customers LOOP RAISE NOTICE 'x %', r.ssn; END LOOP; END $$", truth=False)
C("do-exception", "DO $$ BEGIN RAISE EXCEPTION 'boom %', (SELECT max(card_number) FROM customers); END $$", truth=False)
C(
    "do-execute-obfuscated",
    "DO $$ DECLARE v text; BEGIN EXECUTE 'SELECT national_id FROM cust' || 'omers WHERE id = 1' INTO v; RAISE NOTICE '%', v; END $$",
    truth=False,
)
C("create-function-denied", "CREATE FUNCTION public.leak_fn() RETURNS text LANGUAGE sql AS 'SELECT string_agg(email, '','') FROM customers'", tx=True, truth=False)
# ---- catalogs and statistics
O("pg-stats", "SELECT * FROM pg_stats WHERE tablename = 'customers'", truth=False)
O("pg-stats-histogram", "SELECT attname, histogram_bounds::text, most_common_vals::text FROM pg_catalog.pg_stats WHERE schemaname = 'public'", truth=False)
O("pg-stats-ext", "SELECT * FROM pg_stats_ext WHERE tablename = 'customers'", truth=False)
C("pg-stats-ext-exprs", "SELECT * FROM pg_stats_ext_exprs WHERE tablename = 'customers'", truth=False)
O("pg-stat-activity", "SELECT pid, usename, query FROM pg_stat_activity", truth=False)
C("explain-costs-off", "EXPLAIN (COSTS OFF, VERBOSE) SELECT lower(email) FROM customers", truth=False)
O("explain-analyze-oracle", "EXPLAIN ANALYZE SELECT * FROM customers WHERE ssn LIKE '1%'", truth=False)
O("explain-analyze-update-oracle", "EXPLAIN (ANALYZE, COSTS OFF) UPDATE customers SET city = city WHERE ssn LIKE '1%'", tx=True, truth=False)
# ---- oracles: WHERE
O("where-like-star", "SELECT * FROM customers WHERE ssn LIKE '1%'")
O("where-like-id", "SELECT id FROM customers WHERE email LIKE 'a%'")
O("where-eq-literal", f"SELECT id FROM customers WHERE ssn = '{S3}'")
O("where-is-not-null", "SELECT id, name FROM customers WHERE email IS NOT NULL")
O("where-length", "SELECT id FROM customers WHERE length(email) > 28")
O("where-and-id", "SELECT id FROM customers WHERE id = 1 AND ssn LIKE '1%'")
O("where-case", "SELECT id FROM customers WHERE CASE WHEN ssn LIKE '1%' THEN true ELSE false END")
O("where-in-subquery", "SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE ssn LIKE '1%')")
O("where-exists", "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM customers d WHERE d.id = c.id AND d.email LIKE 'u%')")
O("where-scalar-count", "SELECT (SELECT count(*) FROM customers WHERE ssn LIKE '1%')")
O("where-view", "SELECT id FROM customer_contacts WHERE email LIKE 'u%'")
O("where-view-over-view", "SELECT id FROM customer_contacts_public WHERE contact LIKE 'u%'")
O("where-cte", "WITH x AS (SELECT id, email AS e FROM customers) SELECT id FROM x WHERE e LIKE 'u%'")
O("where-lateral", "SELECT c.id FROM customers c, LATERAL (SELECT 1 AS one WHERE c.ssn LIKE '1%') l")
O("where-secret", "SELECT id FROM integrations WHERE client_secret LIKE 'sk%'")
O("update-where-rowcount", "UPDATE customers SET city = city WHERE ssn LIKE '1%'", tx=True)
O("delete-where-eq", f"DELETE FROM customers WHERE email = '{E2}'", tx=True)
O("upsert-conflict-oracle", f"INSERT INTO customers (id, name, email) VALUES (5000, 'x', '{E1}') ON CONFLICT (email) DO UPDATE SET city = 'Oslo' RETURNING id", tx=True)
# ---- oracles: JOIN
O("join-on", "SELECT a.id, b.id FROM customers a JOIN customers b ON a.email = b.email")
O("join-on-other-table", "SELECT c.id, o.id FROM customers c JOIN orders o ON o.status = c.ssn")
O("join-using", "SELECT c.id FROM customers c JOIN (SELECT email FROM customer_contacts) v USING (email)")
O("join-natural", "SELECT id FROM customers NATURAL JOIN customer_contacts")
O("join-on-constant", "SELECT c.id, o.id FROM customers c JOIN orders o ON o.customer_id = c.id AND c.ssn LIKE '1%'")
# ---- oracles: ORDER BY, GROUP BY, DISTINCT, HAVING, window, FILTER
O("order-by", "SELECT id FROM customers ORDER BY email")
O("order-by-position", "SELECT id, ssn FROM customers ORDER BY 2 DESC")
O("order-by-expr", "SELECT id FROM customers ORDER BY lower(card_number)")
O("order-by-alias", "SELECT id, national_id AS n FROM customers ORDER BY n LIMIT 3")
O("group-by", "SELECT email, count(*) FROM customers GROUP BY email")
O("group-by-expr", "SELECT substr(ssn, 1, 1), count(*) FROM customers GROUP BY 1")
O("group-by-rollup", "SELECT count(*) FROM customers GROUP BY ROLLUP (card_number)")
O("having", "SELECT city, count(*) FROM customers GROUP BY city HAVING max(ssn) LIKE '1%'")
O("distinct", "SELECT DISTINCT email FROM customers")
O("distinct-on", "SELECT DISTINCT ON (ssn) id FROM customers")
O("count-distinct", "SELECT count(DISTINCT substr(email, 1, 2)) FROM customers")
O("window-partition", "SELECT id, count(*) OVER (PARTITION BY substr(ssn, 1, 1)) FROM customers")
O("window-order", "SELECT id, row_number() OVER (ORDER BY email) FROM customers")
O("window-rank", "SELECT id, rank() OVER (ORDER BY card_number DESC) FROM customers")
O("filter", "SELECT count(*) FILTER (WHERE ssn LIKE '1%') FROM customers")
# ---- oracles: LIMIT probes, set-operation dedupe
O("limit-probe", "SELECT id FROM customers ORDER BY id LIMIT (SELECT length(email) - 20 FROM customers WHERE id = 1)")
O("offset-probe", "SELECT id FROM customers ORDER BY id OFFSET (SELECT ascii(email) - 100 FROM customers WHERE id = 1)")
O("fetch-first-probe", "SELECT id FROM customers ORDER BY id FETCH FIRST (SELECT ascii(ssn) - 48 FROM customers WHERE id = 1) ROWS ONLY")
O("union-dedupe", "SELECT substr(ssn, 1, 1) FROM customers UNION SELECT '1'")
O("intersect", f"SELECT ssn FROM customers INTERSECT SELECT '{S1}'")
O("except", f"SELECT '{E1}' EXCEPT SELECT email FROM customers")
O("union-distinct-col", "SELECT email FROM customers UNION SELECT 'nobody@example.com'")

# ---- several statements on one connection
S(
    "cursor-declare-fetch",
    ["BEGIN", "DECLARE leak_c CURSOR FOR SELECT email, ssn FROM customers", "FETCH 5 FROM leak_c", "FETCH ALL FROM leak_c", "CLOSE leak_c", "COMMIT"],
)
S("cursor-scroll-computed", ["BEGIN", "DECLARE leak_c SCROLL CURSOR FOR SELECT lower(email), card_number || '' FROM customers", "FETCH LAST FROM leak_c", "FETCH ABSOLUTE 1 FROM leak_c", "ROLLBACK"])
S("cursor-with-hold", ["DECLARE leak_h CURSOR WITH HOLD FOR SELECT national_id FROM customers", "FETCH ALL FROM leak_h", "CLOSE leak_h"])
S("cursor-order-oracle", ["BEGIN", "DECLARE leak_o CURSOR FOR SELECT id FROM customers ORDER BY ssn", "FETCH ALL FROM leak_o", "ROLLBACK"], refuse_at=(1, 2))
S("prepare-execute", ["PREPARE leak_p(int) AS SELECT id, email, ssn FROM customers WHERE id = $1", "EXECUTE leak_p(1)", "EXECUTE leak_p(2)", "DEALLOCATE leak_p"])
S("prepare-computed", ["PREPARE leak_q(text) AS SELECT $1 || email FROM customers", "EXECUTE leak_q('x')", "DEALLOCATE leak_q"])
S("prepare-oracle", ["PREPARE leak_r(text) AS SELECT id FROM customers WHERE ssn LIKE $1", "EXECUTE leak_r('1%')", "DEALLOCATE leak_r"], refuse_at=(0, 1))
S("multi-statement", ["SELECT 1; SELECT email FROM customers; SELECT ssn FROM customers"])
S("launder-update-city", ["BEGIN", "UPDATE customers SET city = email WHERE id = 1", "SELECT city FROM customers WHERE id = 1", "ROLLBACK"])
S("launder-update-notes", ["BEGIN", "UPDATE customers SET notes = ssn", "SELECT id, notes FROM customers", "ROLLBACK"])
S("launder-insert-orders", ["BEGIN", "INSERT INTO orders (id, customer_id, amount, status) SELECT 100000 + id, id, 0, card_number FROM customers", "SELECT status FROM orders WHERE id > 100000", "ROLLBACK"])
S("launder-insert-name", ["BEGIN", "INSERT INTO customers (id, name) SELECT 1000 + id, national_id FROM customers", "SELECT name FROM customers WHERE id > 1000", "ROLLBACK"])
S("launder-merge", ["BEGIN", "MERGE INTO orders o USING customers c ON o.id = c.id WHEN MATCHED THEN UPDATE SET status = c.email", "SELECT status FROM orders WHERE id <= 20", "ROLLBACK"])
S("launder-select-into", ["BEGIN", "SELECT email, ssn INTO TEMP leak_t FROM customers", "SELECT * FROM leak_t", "ROLLBACK"])
S("launder-set-config", ["SELECT set_config('pgjit_leak.x', email, false) FROM customers WHERE id = 1", "SELECT current_setting('pgjit_leak.x', true)", "SHOW pgjit_leak.x"])
S("launder-application-name", ["SELECT set_config('application_name', ssn, false) FROM customers WHERE id = 2", "SHOW application_name"])
S("launder-notify", ["LISTEN leak_ch", "SELECT pg_notify('leak_ch', email) FROM customers WHERE id = 1", "SELECT 1", "UNLISTEN *"])
S("launder-secret-to-orders", ["BEGIN", "UPDATE orders SET status = (SELECT client_secret FROM integrations WHERE id = 1) WHERE id = 1", "SELECT status FROM orders WHERE id = 1", "ROLLBACK"])
# the sample tables of the session sit in pgjit_leak_saved (no USAGE for the
# analyst): a relation name that exists in two schemas, and search_path games
S("search-path-saved-first", ["SET search_path = pgjit_leak_saved, public", "SELECT * FROM customers", "SELECT email, ssn, card_number, national_id FROM customers", "SELECT * FROM public.customers", "RESET search_path"])
S("search-path-pg-temp", ["SET search_path = pg_temp, public", "SELECT email, national_id FROM customers", "SELECT c FROM customers c", "RESET search_path"])
S("err-unique-in-tx-then-select", ["BEGIN", "INSERT INTO customers (id, name, email) SELECT 9100 + id, 'dup', email FROM customers WHERE id < 4", "ROLLBACK"])


# ---- other clients and protocol paths


def psycopg_params(ctx: "Ctx") -> None:
    with ctx.analyst() as conn:
        ctx.attempt(lambda: conn.execute("SELECT id, email, ssn FROM customers WHERE id = %s", [1]).fetchall())
        ctx.attempt(lambda: conn.execute("SELECT id, email FROM customers WHERE id = ANY(%s)", [[1, 2, 3]]).fetchall())
        ctx.attempt(lambda: conn.execute("SELECT %s || email, %s || ssn FROM customers", ["x", "y"]).fetchall())
        ctx.attempt(lambda: conn.cursor(binary=True).execute("SELECT * FROM customers WHERE id = %(i)s", {"i": 4}).fetchall())


F("psycopg-params")(psycopg_params)


@F("psycopg-params-oracle", oracle=True)
def psycopg_params_oracle(ctx: "Ctx") -> None:
    with ctx.analyst() as conn:
        ctx.expect_refused("WHERE email = %s", lambda: conn.execute("SELECT id FROM customers WHERE email = %s", [E1]).fetchall())
        ctx.expect_refused("WHERE ssn LIKE %s", lambda: conn.execute("SELECT id FROM customers WHERE ssn LIKE %s", ["1%"]).fetchall())
        ctx.expect_refused(
            "binary WHERE card_number > %s", lambda: conn.cursor(binary=True).execute("SELECT id FROM customers WHERE card_number > %s", ["5"]).fetchall()
        )


@F("psycopg-executemany")
def psycopg_executemany(ctx: "Ctx") -> None:
    with ctx.analyst() as conn:
        cur = conn.cursor()

        def go() -> list:
            cur.executemany("SELECT id, email, national_id FROM customers WHERE id = %s", [(i,) for i in range(1, 6)], returning=True)
            out = []
            while True:
                out += cur.fetchall()
                if not cur.nextset():
                    return out

        ctx.attempt(go)


@F("psycopg-pipeline")
def psycopg_pipeline(ctx: "Ctx") -> None:
    with ctx.analyst() as conn:

        def go() -> list:
            with conn.pipeline():
                a = conn.execute("SELECT id, email FROM customers WHERE id = %s", [1])
                b = conn.execute("SELECT ssn, card_number FROM customers")
                c = conn.execute("SELECT lower(national_id) FROM customers")
            return [a.fetchall(), b.fetchall(), c.fetchall()]

        ctx.attempt(go)


@F("psycopg-binary-all-columns")
def psycopg_binary_all(ctx: "Ctx") -> None:
    with ctx.analyst() as conn:
        ctx.attempt(lambda: conn.cursor(binary=True).execute("SELECT * FROM customers").fetchall())
        ctx.attempt(lambda: conn.cursor(binary=True).execute("SELECT id, email, ssn, card_number, national_id, notes FROM customers", prepare=True).fetchall())
        ctx.attempt(lambda: conn.cursor(binary=True).execute("SELECT * FROM integrations").fetchall())


@F("psycopg-server-side-cursor")
def psycopg_named_cursor(ctx: "Ctx") -> None:
    with ctx.analyst() as conn:

        def go(binary: bool) -> list:
            with conn.transaction():
                with conn.cursor("leak_ss", binary=binary) as cur:
                    cur.execute("SELECT * FROM customers")
                    return cur.fetchmany(5) + cur.fetchall()

        ctx.attempt(lambda: go(False))
        ctx.attempt(lambda: go(True))


def _copy(conn: psycopg.Connection, sql: str) -> bytes:
    with conn.cursor() as cur:
        with cur.copy(sql) as cp:
            return b"".join(bytes(chunk) for chunk in cp)


for _id, _sql in [
    ("copy-text", "COPY customers TO STDOUT"),
    ("copy-csv", "COPY customers TO STDOUT WITH (FORMAT csv)"),
    ("copy-csv-header-columns", "COPY customers (id, email, ssn, card_number, national_id) TO STDOUT WITH (FORMAT csv, HEADER)"),
    ("copy-text-delimiter", "COPY customers TO STDOUT WITH (DELIMITER '|', NULL 'nil')"),
    ("copy-query", "COPY (SELECT email FROM customers) TO STDOUT"),
    ("copy-query-computed", "COPY (SELECT lower(email), reverse(ssn) FROM customers) TO STDOUT"),
    ("copy-query-whole-row", "COPY (SELECT c FROM customers c) TO STDOUT"),
    ("copy-view", "COPY (SELECT * FROM customer_contacts_public) TO STDOUT WITH (FORMAT csv)"),
    ("copy-secret", "COPY integrations TO STDOUT"),
]:

    def _make(sql: str) -> Callable[["Ctx"], None]:
        def fn(ctx: "Ctx") -> None:
            with ctx.analyst() as conn:
                ctx.attempt(lambda: _copy(conn, sql))

        return fn

    F(_id)(_make(_sql))


for _id, _sql in [
    ("copy-binary", "COPY customers TO STDOUT WITH (FORMAT binary)"),
    ("copy-binary-query", "COPY (SELECT id, email FROM customers) TO STDOUT WITH (FORMAT binary)"),
    ("copy-query-oracle", "COPY (SELECT * FROM customers WHERE ssn LIKE '1%') TO STDOUT"),
]:

    def _make_refused(sql: str) -> Callable[["Ctx"], None]:
        def fn(ctx: "Ctx") -> None:
            with ctx.analyst() as conn:
                ctx.expect_refused(sql, lambda: _copy(conn, sql))

        return fn

    F(_id, oracle=True)(_make_refused(_sql))


def _asyncpg():
    try:
        import asyncpg
    except ImportError as exc:
        need("asyncpg (pip install asyncpg into the venv)", exc)
    return asyncpg


def run_async(ctx: "Ctx", body: Callable[[Any], Any], sub: str = ANALYST, groups: list[str] | None = None) -> None:
    asyncpg = _asyncpg()
    token = ctx.env.issuer.token(sub, groups=groups or ["analysts"], ttl=900)

    async def main() -> None:
        conn = await asyncpg.connect(
            host=ctx.env.proxy.host, port=ctx.env.proxy.port, user=sub, password=token, database="appdb", ssl=False, timeout=CONNECT_TIMEOUT, command_timeout=20
        )
        try:
            await body(conn)
        finally:
            await asyncio.wait_for(conn.close(), 10)

    asyncio.run(asyncio.wait_for(main(), 90))


def _async_attempt(ctx: "Ctx"):
    async def attempt(coro) -> Any:
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 - a refusal is fine; recorded below
            state = getattr(exc, "sqlstate", None)
            ctx.notes.append(f"asyncpg: {type(exc).__name__} {state}: {str(exc)[:120]}")
            return exc

    return attempt


@F("asyncpg-fetch")
def asyncpg_fetch(ctx: "Ctx") -> None:
    async def body(conn) -> None:
        attempt = _async_attempt(ctx)
        await attempt(conn.fetch("SELECT * FROM customers"))
        await attempt(conn.fetch("SELECT id, email, ssn FROM customers WHERE id = $1", 1))
        await attempt(conn.fetch("SELECT * FROM integrations"))
        await attempt(conn.fetchval("SELECT card_number FROM customers WHERE id = $1", 3))

    run_async(ctx, body)


@F("asyncpg-computed")
def asyncpg_computed(ctx: "Ctx") -> None:
    async def body(conn) -> None:
        attempt = _async_attempt(ctx)
        await attempt(conn.fetch("SELECT lower(email), ssn::bytea, card_number::bigint FROM customers"))
        await attempt(conn.fetch("SELECT row_to_json(c) FROM customers c"))
        await attempt(conn.fetch("SELECT c FROM customers c"))
        await attempt(conn.fetch("SELECT array_agg(national_id) FROM customers"))

    run_async(ctx, body)


@F("asyncpg-prepared-cursor")
def asyncpg_prepared(ctx: "Ctx") -> None:
    async def body(conn) -> None:
        attempt = _async_attempt(ctx)

        async def prepared() -> Any:
            st = await conn.prepare("SELECT id, email, national_id FROM customers WHERE id > $1")
            return await st.fetch(0)

        async def cursor() -> Any:
            async with conn.transaction():
                return [r async for r in conn.cursor("SELECT * FROM customers", prefetch=5)]

        await attempt(prepared())
        await attempt(cursor())

    run_async(ctx, body)


@F("asyncpg-copy")
def asyncpg_copy(ctx: "Ctx") -> None:
    async def body(conn) -> None:
        attempt = _async_attempt(ctx)
        await attempt(conn.copy_from_table("customers", output=io.BytesIO()))
        await attempt(conn.copy_from_table("customers", output=io.BytesIO(), format="csv"))
        await attempt(conn.copy_from_query("SELECT email, ssn FROM customers", output=io.BytesIO(), format="csv"))
        await attempt(conn.copy_from_table("customers", output=io.BytesIO(), format="binary"))

    run_async(ctx, body)


@F("asyncpg-oracle", oracle=True)
def asyncpg_oracle(ctx: "Ctx") -> None:
    async def body(conn) -> None:
        for label, coro in [
            ("WHERE ssn LIKE $1", lambda: conn.fetch("SELECT id FROM customers WHERE ssn LIKE $1", "1%")),
            ("ORDER BY email", lambda: conn.fetch("SELECT id FROM customers ORDER BY email")),
        ]:
            try:
                rows = await coro()
                ctx.problems.append(f"asyncpg {label}: not refused (got {len(rows)} rows)")
            except Exception as exc:  # noqa: BLE001
                state = getattr(exc, "sqlstate", None)
                if state != REFUSED:
                    ctx.problems.append(f"asyncpg {label}: not refused with {REFUSED} (got {type(exc).__name__} {state}: {exc})")

    run_async(ctx, body)


def run_psql(ctx: "Ctx", *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    psql = psql_path(ctx.env.pg)
    r = subprocess.run([psql, "-X", "-A", "-q", *args], env=ctx.env.client_env(), input=stdin, capture_output=True, text=True, timeout=60)
    ctx.extra_outputs.append((f"psql {' '.join(args)} stdout", r.stdout.encode()))
    ctx.extra_outputs.append((f"psql {' '.join(args)} stderr", r.stderr.encode()))
    if "could not connect" in r.stderr or ("connection to server" in r.stderr and "failed" in r.stderr):
        ctx.problems.append(f"harness: psql could not connect: {r.stderr.strip()[:300]}")
    return r


for _id in [
    ("psql-c-select", ["-c", "SELECT id, email, ssn, card_number, national_id FROM customers"]),
    ("psql-c-expanded", ["-x", "-c", "SELECT * FROM customers WHERE id < 4"]),
    ("psql-c-computed", ["-c", "SELECT string_agg(email, ',') FROM customers"]),
    ("psql-c-error", ["-c", "SELECT ssn::int FROM customers"]),
    ("psql-copy-text", ["-c", "\\copy customers to stdout"]),
    ("psql-copy-csv", ["-c", "\\copy (SELECT * FROM customers) to stdout with csv header"]),
    ("psql-gexec", ["-f", "-"], "SELECT 'SELECT ' || quote_literal(email) FROM customers \\gexec\n"),
    ("psql-script-gset", ["-f", "-"], "SELECT ssn AS s FROM customers WHERE id = 1 \\gset\n\\echo :s\nSELECT card_number FROM customers WHERE id = 2 \\gx\n"),
    ("psql-describe", ["-c", "\\d+ customers", "-c", "\\dX+"]),
]:

    def _make_psql(args: list[str], stdin: str | None = None) -> Callable[["Ctx"], None]:
        def fn(ctx: "Ctx") -> None:
            run_psql(ctx, *args, stdin=stdin)

        return fn

    F(_id[0])(_make_psql(*_id[1:]))


@F("psql-oracle", oracle=True)
def psql_oracle(ctx: "Ctx") -> None:
    # VERBOSITY=verbose makes psql print the SQLSTATE ("ERROR:  42501: ...")
    r = run_psql(ctx, "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-c", "SELECT count(*) FROM customers WHERE ssn LIKE '1%'")
    if r.returncode == 0 or f"{REFUSED}:" not in r.stderr:
        ctx.problems.append(f"psql count(*) WHERE ssn LIKE '1%': not refused with {REFUSED} (exit {r.returncode}, {r.stdout.strip()!r} {r.stderr.strip()[:200]!r})")


@F("pg-stat-statements", oracle=True)
def stat_statements(ctx: "Ctx") -> None:
    with ctx.env.pg.connect(dbname="appdb") as su:
        installed = su.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()[0] > 0
    with ctx.analyst() as conn:
        try:
            rows = conn.execute("SELECT query FROM pg_stat_statements").fetchall()
            ctx.problems.append(f"pg_stat_statements: not refused ({len(rows)} rows)")
        except psycopg.Error as exc:
            # without the extension there is nothing to leak: "does not exist" is fine too
            if exc.sqlstate != REFUSED and (installed or exc.sqlstate != "42P01"):
                ctx.problems.append(f"pg_stat_statements: not refused with {REFUSED} (got {exc.sqlstate}: {exc})")


@F("pg-stat-activity-other-session")
def stat_activity_other(ctx: "Ctx") -> None:
    # a DBA session whose last statement carries a clear value sits idle while
    # the analyst reads pg_stat_activity (the DBA's bytes are not searched)
    dba = ctx.env.dba()
    try:
        dba.execute(f"SELECT id FROM customers WHERE email = '{E3}' OR ssn = '{S3}'").fetchall()
        snap = ctx.env.proxy.snapshot()
        ctx.snap = snap
        with ctx.analyst() as conn:
            ctx.expect_refused("pg_stat_activity", lambda: conn.execute("SELECT usename, state, query FROM pg_stat_activity").fetchall())
            ctx.attempt(lambda: conn.execute("SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid()").fetchall())
    finally:
        dba.close()


LEAK_CASES = [c for c in CASES]
_ids = [c.id for c in LEAK_CASES]
assert len(_ids) == len(set(_ids)), [i for i in _ids if _ids.count(i) > 1]


# --------------------------------------------------------------------------
# running a case
# --------------------------------------------------------------------------


@dataclass
class Outcome:
    how: str
    sqlstate: str | None = None
    message: str = ""
    result: Any = None  # (rowcount, rows) when it ran
    ran: bool = False

    def __str__(self) -> str:
        if self.ran:
            rows = self.result[1]
            return f"{self.how}: ran ({'no rows' if rows is None else f'{len(rows)} rows'}, rowcount {self.result[0]})"
        return f"{self.how}: error {self.sqlstate}: {self.message[:160]}"


@dataclass
class Ctx:
    env: Env
    case: Case
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_outputs: list[tuple[str, bytes]] = field(default_factory=list)
    snap: dict[int, int] | None = None

    def analyst(self) -> psycopg.Connection:
        try:
            return self.env.analyst()
        except psycopg.Error as exc:
            pytest.fail(f"harness: the analyst could not connect through the gateway: {exc}")
            raise

    def attempt(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except psycopg.Error as exc:
            self.notes.append(f"{type(exc).__name__} {exc.sqlstate}: {str(exc)[:120]}")
            return exc

    def expect_refused(self, label: str, fn: Callable[[], Any]) -> None:
        try:
            got = fn()
        except psycopg.Error as exc:
            if exc.sqlstate != REFUSED:
                self.problems.append(f"{label}: not refused with {REFUSED} (got {type(exc).__name__} {exc.sqlstate}: {str(exc)[:160]})")
            return
        self.problems.append(f"{label}: not refused (it ran: {str(got)[:120]})")


def _rollback_quietly(conn: psycopg.Connection) -> None:
    try:
        if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
    except psycopg.Error:
        pass


def _fetch(cur: psycopg.Cursor) -> tuple[int, list | None]:
    rows = cur.fetchall() if cur.description is not None else None
    return (cur.rowcount, rows)


def run_truth(conn: psycopg.Connection, sql: str) -> tuple[int, list | None] | None:
    try:
        return _fetch(conn.execute(sql))
    except psycopg.Error:
        return None
    finally:
        try:
            conn.rollback()
        except psycopg.Error:
            pass


def run_sql_case(ctx: Ctx) -> list[Outcome]:
    case = ctx.case
    outcomes = []
    conn = ctx.analyst()
    try:
        for how in ("simple", "extended", "binary"):
            if conn.closed or conn.broken:
                conn = ctx.analyst()
            o = Outcome(how)
            try:
                if case.tx:
                    conn.execute("BEGIN")
                cur = conn.cursor(binary=(how == "binary"))
                if how == "extended":
                    cur.execute(case.sql, prepare=True)
                else:
                    cur.execute(case.sql)
                o.result, o.ran = _fetch(cur), True
            except psycopg.Error as exc:
                o.sqlstate, o.message = exc.sqlstate, str(exc)
            finally:
                _rollback_quietly(conn)
            outcomes.append(o)
    finally:
        conn.close()
    return outcomes


def run_script_case(ctx: Ctx) -> list[Outcome]:
    outcomes = []
    conn = ctx.analyst()
    try:
        for i, stmt in enumerate(ctx.case.script or []):
            o = Outcome(f"statement {i} {stmt[:60]!r}")
            if conn.closed or conn.broken:
                o.message = "connection closed"
                outcomes.append(o)
                continue
            try:
                cur = conn.execute(stmt)
                res = _fetch(cur)
                while cur.nextset():
                    res = _fetch(cur)
                o.result, o.ran = res, True
            except psycopg.Error as exc:
                o.sqlstate, o.message = exc.sqlstate, str(exc)
            outcomes.append(o)
        _rollback_quietly(conn)
    finally:
        conn.close()
    return outcomes


def check_integrity(env: Env) -> str | None:
    with env.pg.connect(dbname="appdb") as conn:
        if conn.execute(DIGEST_SQL).fetchone()[0] == env.digest:
            return None
        restore_data(conn)
    return "the tables' data changed (a write committed); restored"


def run_case(env: Env, case: Case) -> tuple[list[str], list[str]]:
    ctx = Ctx(env, case)
    ctx.snap = env.proxy.snapshot()
    before = ctx.snap
    outcomes: list[Outcome] = []
    if case.kind == "sql":
        outcomes = run_sql_case(ctx)
    elif case.kind == "script":
        outcomes = run_script_case(ctx)
    else:
        assert case.func is not None
        case.func(ctx)
        before = ctx.snap or before  # a func may move its window past set-up bytes
    problems = list(ctx.problems)

    # 1. no sensitive value in any byte received (or printed by a client)
    if env.proxy.overflowed:
        problems.append("harness: the recording limit was exceeded")
    windows = env.proxy.since(before)
    if not windows:
        problems.append("harness: the recording forwarder saw no bytes for this case")
    hits = NEEDLES.search_proxy(env.proxy, before)
    for label, data in ctx.extra_outputs:
        hits += NEEDLES.search_bytes(data, label, "client output")
    for h in hits[:15]:
        problems.append(f"LEAK: {h}")
    if len(hits) > 15:
        problems.append(f"LEAK: ... and {len(hits) - 15} more hits")

    # 2. oracles are refused with 42501
    if case.oracle and case.kind == "sql":
        for o in outcomes:
            if o.sqlstate != REFUSED:
                problems.append(f"NOT REFUSED: {o}")
    if case.refuse_at:
        group = [outcomes[i] for i in case.refuse_at if i < len(outcomes)]
        if not any(o.sqlstate == REFUSED for o in group) or (group and group[-1].ran):
            problems.append("NOT REFUSED: " + "; ".join(str(o) for o in group))

    # 3. differential: an answer that depends on sensitive data must not be the clear one
    if case.kind == "sql" and case.truth:
        a = run_truth(env.truth_a, case.sql)
        b = run_truth(env.truth_b, case.sql)
        if a is not None and b is not None and a != b:
            for o in outcomes:
                if o.ran and o.result == a:
                    problems.append(f"LEAK (differential): {o.how} returned exactly the clear answer, which depends on the masked values")

    integrity = check_integrity(env)
    if integrity:
        problems.append(integrity)
    notes = [str(o) for o in outcomes] + ctx.notes
    return problems, notes


# --------------------------------------------------------------------------
# positive checks: masked for the analyst, clear for the DBA, the search works
# --------------------------------------------------------------------------


def _assert_masked(true: str, shown: Any, what: str) -> None:
    assert isinstance(shown, str), f"{what}: masked value is {shown!r}, not a string"
    assert shown != true, f"{what}: shown in clear"
    assert shown.endswith(true[-4:]), f"{what}: {shown!r} does not end in the real last 4 characters (partial, keep: 4)"
    assert true[:-4] not in shown, f"{what}: {shown!r} keeps more than the last 4 characters"


def test_recording_forwarder_records_all_bytes(env):
    """What psycopg received equals what the forwarder kept for the connection."""
    snap = env.proxy.snapshot()
    with env.dba() as conn:
        n = conn.execute("SELECT count(*) FROM generate_series(1, 5000)").fetchone()[0]
        big = conn.execute("SELECT repeat('z', 200000)").fetchone()[0]
    assert n == 5000 and len(big) == 200000
    recorded = b"".join(stream[start:] for _, stream, start in env.proxy.since(snap))
    assert b"z" * 200000 in recorded


def test_dba_sees_clear_values_and_the_search_finds_them(env):
    snap = env.proxy.snapshot()
    with env.dba() as conn:
        rows = conn.execute("SELECT id, email, ssn, card_number, national_id FROM customers ORDER BY id").fetchall()
        secrets_ = conn.execute("SELECT id, client_secret FROM integrations ORDER BY id").fetchall()
    assert rows == [(c["id"], c["email"], c["ssn"], c["card_number"], c["national_id"]) for c in DATA.customers]
    assert secrets_ == [(r["id"], r["client_secret"]) for r in DATA.integrations]
    hits = NEEDLES.search_proxy(env.proxy, snap)
    found = {h.label for h in hits if h.form == "clear"}
    assert found >= {label for label, _ in sensitive_values()}, sorted({label for label, _ in sensitive_values()} - found)[:5]


DBA_FORMS = [
    ("hex", "SELECT encode(convert_to(email, 'UTF8'), 'hex') FROM customers WHERE id = 1", "customers.email[id=1]"),
    ("hex", "SELECT upper(encode(convert_to(ssn, 'UTF8'), 'hex')) FROM customers WHERE id = 2", "customers.ssn[id=2]"),
    ("hex", "SELECT email::bytea FROM customers WHERE id = 3", "customers.email[id=3]"),
    ("base64/0", "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers WHERE id = 4", "customers.email[id=4]"),
    ("base64/", "SELECT encode(convert_to('ab' || card_number, 'UTF8'), 'base64') FROM customers WHERE id = 5", "customers.card_number[id=5]"),
    ("reversed", "SELECT reverse(national_id) FROM customers WHERE id = 6", "customers.national_id[id=6]"),
    ("split-characters", "SELECT string_to_array(ssn, NULL) FROM customers WHERE id = 7", "customers.ssn[id=7]"),
    ("split-characters", "SELECT to_json(regexp_split_to_array(email, '')) FROM customers WHERE id = 8", "customers.email[id=8]"),
    ("clear", "SELECT regexp_split_to_table(email, '') FROM customers WHERE id = 9", "customers.email[id=9]"),
    ("clear", "SELECT upper(email) FROM customers WHERE id = 10", "customers.email[id=10]"),
    ("md5", "SELECT md5(email) FROM customers WHERE id = 11", "customers.email[id=11]"),
    ("sha256", "SELECT sha256(convert_to(ssn, 'UTF8')) FROM customers WHERE id = 12", "customers.ssn[id=12]"),
    ("clear", "SELECT ssn::int FROM customers WHERE id = 13", "customers.ssn[id=13]"),  # the error text echoes it
]


@pytest.mark.parametrize("form, sql, label", DBA_FORMS, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(DBA_FORMS)])
def test_search_finds_each_form_in_dba_bytes(env, form, sql, label):
    snap = env.proxy.snapshot()
    with env.dba() as conn:
        try:
            conn.execute(sql).fetchall()
        except psycopg.Error:
            pass
    hits = [h for h in NEEDLES.search_proxy(env.proxy, snap) if h.label == label]
    assert any(h.form.startswith(form) for h in hits), (form, [str(h) for h in hits])


def test_search_finds_values_in_copy_and_notice_bytes_of_dba(env):
    snap = env.proxy.snapshot()
    with env.dba() as conn:
        _copy(conn, "COPY (SELECT reverse(email) FROM customers WHERE id = 14) TO STDOUT")
        conn.execute("DO $$ BEGIN RAISE NOTICE 'n %', (SELECT ssn FROM customers WHERE id = 15); END $$")
        conn.execute("LISTEN dba_ch")
        conn.execute("SELECT pg_notify('dba_ch', card_number) FROM customers WHERE id = 16").fetchall()
    hits = NEEDLES.search_proxy(env.proxy, snap)
    got = {(h.label, h.form) for h in hits}
    assert ("customers.email[id=14]", "reversed") in got
    assert ("customers.ssn[id=15]", "clear") in got
    assert ("customers.card_number[id=16]", "clear") in got


def test_analyst_sees_masked_values(env):
    snap = env.proxy.snapshot()
    with env.analyst() as conn:
        rows = conn.execute("SELECT id, email, ssn FROM customers ORDER BY id").fetchall()
        brows = conn.cursor(binary=True).execute("SELECT id, card_number, national_id FROM customers ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [c["id"] for c in DATA.customers]
    assert len(rows) == N_CUSTOMERS
    for (i, email, s), c in zip(rows, DATA.customers):
        _assert_masked(c["email"], email, f"email id={i}")
        _assert_masked(c["ssn"], s, f"ssn id={i}")
    assert [r[0] for r in brows] == [c["id"] for c in DATA.customers]
    for (i, card, nid), c in zip(brows, DATA.customers):
        _assert_masked(c["card_number"], card, f"card_number id={i} (binary)")
        _assert_masked(c["national_id"], nid, f"national_id id={i} (binary)")
    hits = NEEDLES.search_proxy(env.proxy, snap)
    assert not hits, "\n".join(map(str, hits[:10]))


def test_analyst_copy_csv_is_masked(env):
    snap = env.proxy.snapshot()
    with env.analyst() as conn:
        data = _copy(conn, "COPY customers (id, email, ssn) TO STDOUT WITH (FORMAT csv)")
    lines = list(csv.reader(io.StringIO(data.decode())))
    assert len(lines) == N_CUSTOMERS, lines[:3]
    for (i, email, s), c in zip(sorted(lines, key=lambda r: int(r[0])), DATA.customers):
        assert int(i) == c["id"]
        _assert_masked(c["email"], email, f"COPY email id={i}")
        _assert_masked(c["ssn"], s, f"COPY ssn id={i}")
    assert not NEEDLES.search_proxy(env.proxy, snap)


def test_analyst_reads_non_masked_columns_of_masked_table(env):
    with env.analyst() as conn:
        rows = conn.execute("SELECT id, name, city FROM customers ORDER BY id").fetchall()
    assert rows == [(c["id"], c["name"], c["city"]) for c in DATA.customers]


def test_detectors_mask_free_text(env):
    """notes is not a masked column, but its text holds an email, a card number
    and an ACME-nnnnnn reference: the content detectors must mask them."""
    snap = env.proxy.snapshot()
    with env.dba() as conn:
        dba_rows = conn.execute("SELECT id, notes FROM customers WHERE id IN (19, 20) ORDER BY id").fetchall()
    assert dba_rows == [(i, DETECT_NOTES[i]) for i in (19, 20)]
    assert {h.label for h in DETECT_NEEDLES.search_proxy(env.proxy, snap) if h.form == "clear"} == {f"notes detector bait {k}" for k in DETECT}
    snap = env.proxy.snapshot()
    with env.analyst() as conn:
        try:
            conn.execute("SELECT id, notes FROM customers WHERE id IN (19, 20) ORDER BY id").fetchall()
            conn.cursor(binary=True).execute("SELECT notes FROM customers").fetchall()
        except psycopg.Error:
            pass
    hits = DETECT_NEEDLES.search_proxy(env.proxy, snap)
    assert not hits, "\n".join(map(str, hits[:10]))


# --------------------------------------------------------------------------
# control suite: non-sensitive columns behave as without the gateway
# --------------------------------------------------------------------------

CONTROL = [
    "SELECT id, customer_id, amount, status FROM orders ORDER BY id",
    "SELECT id, name, city FROM customers ORDER BY id",
    "SELECT c.id, c.name, o.id, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.id",
    "SELECT city, count(*), min(id), max(id) FROM customers GROUP BY city ORDER BY city",
    "SELECT status, sum(amount), avg(amount), count(*) FROM orders GROUP BY status ORDER BY status",
    "SELECT c.city, sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.city HAVING count(*) > 1 ORDER BY 1",
    "SELECT id, name, row_number() OVER (PARTITION BY city ORDER BY id) FROM customers ORDER BY id",
    "SELECT DISTINCT city FROM customers ORDER BY city",
    "SELECT id, name FROM customers WHERE city = 'Paris' ORDER BY id",
    "WITH t AS (SELECT customer_id, sum(amount) AS s FROM orders GROUP BY 1) SELECT c.name, t.s FROM customers c JOIN t ON t.customer_id = c.id ORDER BY c.id",
    "SELECT id, upper(name), length(city) FROM customers WHERE id < 5 ORDER BY id",
    "SELECT count(*) FROM customers",
    "SELECT o.status, string_agg(c.name, ',' ORDER BY c.id) FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY o.status ORDER BY 1",
    "SELECT * FROM orders WHERE amount > 50 ORDER BY id LIMIT 5",
    "SELECT id, name FROM customer_contacts ORDER BY id",
    "SELECT id, label FROM integrations ORDER BY id",
    "SELECT c.id, c.city, o.status FROM customers c LEFT JOIN orders o ON o.customer_id = c.id AND o.status = 'paid' ORDER BY c.id, o.id NULLS FIRST",
]


def _described(cur: psycopg.Cursor) -> list[tuple[str, int]]:
    return [(d.name, d.type_code) for d in cur.description or []]


@pytest.mark.parametrize("sql", CONTROL, ids=[f"control-{i:02d}" for i in range(len(CONTROL))])
def test_control_same_as_direct(env, sql):
    with psycopg.connect(env.pg.dsn("app", "apppass", "appdb"), autocommit=True, connect_timeout=CONNECT_TIMEOUT) as direct, env.analyst() as via:
        for binary in (False, True):
            d = direct.cursor(binary=binary).execute(sql)
            g = via.cursor(binary=binary).execute(sql)
            assert _described(g) == _described(d), (binary, _described(g), _described(d))
            assert g.fetchall() == d.fetchall(), f"binary={binary}"
        g = via.cursor().execute(sql, prepare=True)
        assert g.fetchall() == direct.execute(sql).fetchall(), "extended protocol"


# --------------------------------------------------------------------------
# the leak suite (after the harness and positive checks, so that -x stops on
# a broken harness first)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", LEAK_CASES, ids=[c.id for c in LEAK_CASES])
def test_leak(env, case):
    problems, notes = run_case(env, case)
    report = os.environ.get("PGJIT_LEAK_REPORT")
    if report:  # one JSON line per case: what happened (for people reading a run)
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"case": case.id, "oracle": case.oracle or bool(case.refuse_at), "ok": not problems, "problems": problems[:3], "outcomes": notes}) + "\n")
    if problems:
        pytest.fail(
            f"case {case.id}: " + (case.sql or " / ".join(case.script or []) or case.func.__name__) + "\n  "
            + "\n  ".join(problems)
            + "\n  outcomes: " + "; ".join(notes)[:1500],
            pytrace=False,
        )


def test_leak_case_count():
    assert len(LEAK_CASES) >= 80, len(LEAK_CASES)
    assert sum(c.oracle or bool(c.refuse_at) for c in LEAK_CASES) >= 30
