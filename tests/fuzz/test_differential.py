"""Differential fuzzing of pgjit against PostgreSQL itself (issue 10, point 2).

A hypothesis ``RuleBasedStateMachine`` holds two psycopg connections, both
logged in upstream as ``app`` on ``appdb``: one through pgjit, one straight
to PostgreSQL. Each has its own schema (``diff_gw_<n>`` / ``diff_direct_<n>``,
first on its search_path) so neither sees the other's tables. Every rule
applies the same operation to both connections and compares what the client
sees: result rows, column names, command status, rowcount, SQLSTATE and the
primary message of errors, notices, notifications received (channel and
payload), a few ParameterStatus values and the transaction status.

What legitimately differs is normalised: the schema names (also inside
messages and notification channels), backend pids (never compared), OIDs
(never selected).

The test runs twice: through a gated gateway (a policy that allows
everything, so every statement goes through the statement gate) and through
the session's pass-through ``gateway``.

``PGJIT_DIFF_EXAMPLES`` sets the number of examples (40 by default); failing
examples are kept in ``.hypothesis/fuzz`` and replayed first on the next run.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import re
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test
from psycopg import sql

from tests.gateway_fixtures import start_gateway

pytestmark = pytest.mark.pg

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = int(os.environ.get("PGJIT_DIFF_EXAMPLES", "40"))

SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(REPO / ".hypothesis" / "fuzz")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

ALLOW_ALL_POLICY = "version: 1\nrules: []\ndefault: allow\n"

TABLES = ["t1", "t2", "t3"]
CURSORS = ["c1", "c2"]
PREPARED = ["p1", "p2"]
SAVEPOINTS = ["s1", "s2"]
CHANNELS = ["ch1", "ch2"]
PARAMS = ["TimeZone", "application_name", "DateStyle", "IntervalStyle", "client_encoding",
          "standard_conforming_strings", "integer_datetimes", "server_version"]

_counter = itertools.count(1)
_SCHEMA_RE = re.compile(r"diff_(?:gw|direct)_\d+_\d+")

# ----------------------------------------------------------------- values

ids = st.integers(0, 8)
ints = st.none() | st.integers(-(2**31), 2**31 - 1)
short_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)
# ~100 KB values, so rows span many network packets (and TOAST).
long_text = st.builds(lambda c, n: (c * n)[:n], st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=3),
                      st.sampled_from([8191, 65536, 100_000, 131_072]))
texts = st.none() | short_text | long_text
tables = st.sampled_from(TABLES)


def norm(s: Any) -> Any:
    if isinstance(s, str):
        return _SCHEMA_RE.sub("<schema>", s)
    if isinstance(s, (list, tuple)):
        return type(s)(norm(x) for x in s)
    return s


def short(v: Any) -> Any:
    """A printable summary of a value: long strings and bytes as length and md5."""
    if isinstance(v, (str, bytes)) and len(v) > 200:
        b = v.encode() if isinstance(v, str) else v
        return f"<{type(v).__name__} len={len(v)} md5={hashlib.md5(b).hexdigest()[:12]}>"
    if isinstance(v, (list, tuple)):
        return type(v)(short(x) for x in v)
    if isinstance(v, dict):
        return {k: short(x) for k, x in v.items()}
    return v


def error_outcome(e: BaseException) -> tuple:
    if isinstance(e, psycopg.Error):
        diag = e.diag
        return ("error", type(e).__name__, e.sqlstate, norm(diag.message_primary or str(e).split("\n")[0]),
                norm(diag.message_detail), diag.statement_position)
    return ("exception", type(e).__name__, norm(str(e)))


def cursor_results(cur: psycopg.Cursor) -> list[tuple]:
    """Every result set of the last execute: (status, rowcount, columns, rows)."""
    out = []
    while True:
        cols = [c.name for c in cur.description] if cur.description else None
        rows = cur.fetchall() if cur.description else None
        out.append((norm(cur.statusmessage), cur.rowcount, cols, rows))
        if not cur.nextset():
            return out


class Side:
    """One connection and what it has received."""

    def __init__(self, label: str, dsn: str):
        self.label = label
        self.schema = f"diff_{label}_{os.getpid()}_{next(_counter)}"
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        self.notices: list[tuple] = []
        self.notifies: list[tuple] = []
        self.conn.add_notice_handler(lambda d: self.notices.append((d.severity_nonlocalized, d.sqlstate, norm(d.message_primary))))
        self.conn.add_notify_handler(lambda n: self.notifies.append((norm(n.channel), n.payload)))
        self.conn.execute(sql.SQL("create schema {}").format(sql.Identifier(self.schema)))
        self.conn.execute(sql.SQL("set search_path = {}, public").format(sql.Identifier(self.schema)))
        # A small cache of psycopg's own prepared statements: it deallocates
        # (DEALLOCATE over the wire) now and then, which pgjit has to follow.
        self.conn.prepared_max = 3
        self.notices.clear()

    def channel(self, ch: str) -> str:
        return f"{self.schema}_{ch}"

    def run(self, op: Callable[["Side"], Any]) -> tuple:
        self.notices.clear()
        try:
            out = ("ok", op(self))
        except Exception as e:  # noqa: BLE001 - every failure is an outcome to compare
            out = error_outcome(e)
        return out

    def state(self) -> dict:
        info = self.conn.info
        return {
            "transaction_status": info.transaction_status.name if not self.conn.closed else "CLOSED",
            "notices": list(self.notices),
            "notifies": list(self.notifies),
            "params": {p: info.parameter_status(p) for p in PARAMS} if not self.conn.closed else None,
        }


# ---------------------------------------------------------------- the machine


def documented_difference(gw: tuple, direct: tuple) -> str | None:
    """The name of a documented, intended difference between the outcomes, if it is one.

    Only the gated gateway has these, and each is matched exactly: the error
    pgjit sends instead of the server's, and the server's error in its place.
    """
    if (gw[:3] == ("error", "InsufficientPrivilege", "42501")
            and gw[3].startswith('statement denied by policy rule "pgjit:unknown-prepared": EXECUTE of prepared statement')
            and direct[0] == "error"):
        # policies/README.md, "How a statement is decided", 1: an EXECUTE of a
        # statement whose PREPARE pgjit did not see is denied, whatever the
        # policy — before the server sees it, so also in a failed transaction
        # (25P02) or where the server refuses it for another reason first
        # (CREATE TABLE AS of a table that exists). Only for one statement:
        # the state after it (transaction status) is still compared.
        return "pgjit:unknown-prepared instead of the server's error"
    prefix = "pgjit could not parse the statement: "
    if gw[:3] == ("error", "SyntaxError", "42601") and gw[3].startswith(prefix):
        # pgjit refuses what it cannot parse (policies/README.md: pgjit:parse-error),
        # with the server's message after its own prefix, at the same position.
        if direct[:3] == ("error", "SyntaxError", "42601") and gw[3] == prefix + direct[3] and gw[5] == direct[5]:
            return "pgjit:unparsable: message prefixed"
        if direct[:3] == ("error", "InFailedSqlTransaction", "25P02"):
            return "pgjit:unparsable instead of 25P02"
    return None


DOCUMENTED_SEEN: collections.Counter = collections.Counter()


class DifferentialMachine(RuleBasedStateMachine):
    gw_dsn: str = ""
    gated: bool = False
    direct_dsn: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.gw: Side | None = None
        self.direct: Side | None = None
        self.listening = False
        self.steps: list[str] = []

    @initialize()
    def connect(self) -> None:
        self.gw = Side("gw", self.gw_dsn)
        self.direct = Side("direct", self.direct_dsn)
        # The starting ParameterStatus values must agree too.
        self.compare("connect", ("ok", None), ("ok", None))
        # Most steps should find their table: t1 and t2 exist from the start
        # (with a few rows), t3 only once a step creates it.
        for t in TABLES[:2]:
            q = (f"create table {t} (id int primary key, v text, n int); "
                 f"insert into {t} values (1, 'one', 1), (3, 'trois', null), (5, null, 5)")
            self.both(f"setup {t}", lambda s, q=q: cursor_results(psycopg.ClientCursor(s.conn).execute(q)))

    def teardown(self) -> None:
        for side in (self.gw, self.direct):
            if side is None:
                continue
            try:
                side.conn.close()
            except Exception:  # noqa: BLE001
                pass
        schemas = [s.schema for s in (self.gw, self.direct) if s is not None]
        if schemas:
            with psycopg.connect(self.direct_dsn, autocommit=True, connect_timeout=10) as c:
                for s in schemas:
                    c.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(s)))

    # ------------------------------------------------------------ comparing

    def both(self, what: str, op: Callable[[Side], Any]) -> None:
        assert self.gw is not None and self.direct is not None
        a = self.gw.run(op)
        b = self.direct.run(op)
        if self.listening:
            # A notification to oneself arrives after ReadyForQuery: one more
            # round trip makes sure both clients have read it.
            for side in (self.gw, self.direct):
                saved = list(side.notices)
                try:
                    side.conn.execute("select 1")
                except psycopg.Error:
                    pass
                side.notices[:] = saved
        self.compare(what, a, b)

    def compare(self, what: str, a: tuple, b: tuple) -> None:
        self.steps.append(what)
        sa, sb = self.gw.state(), self.direct.state()
        if a != b and self.gated and documented_difference(a, b):
            DOCUMENTED_SEEN[documented_difference(a, b)] += 1
            a = b  # the outcome differs as documented; the states after it must still agree
        if a != b or sa != sb:
            lines = [f"pgjit and PostgreSQL differ at step {len(self.steps)}: {short(what)}"]
            if a != b:
                lines += [f"  through pgjit: {short(a)!r}", f"  direct:        {short(b)!r}"]
            for k in sa:
                if sa[k] != sb[k]:
                    lines += [f"  {k} through pgjit: {short(sa[k])!r}", f"  {k} direct:        {short(sb[k])!r}"]
            raise AssertionError("\n".join(lines))

    # --------------------------------------------------------------- tables

    @rule(t=tables)
    def create_table(self, t: str) -> None:
        self.both(f"create table {t}",
                  lambda s: cursor_results(s.conn.execute(f"create table {t} (id int primary key, v text, n int)")))

    @rule(t=tables)
    def drop_table(self, t: str) -> None:
        self.both(f"drop table {t}", lambda s: cursor_results(s.conn.execute(f"drop table {t}")))

    @rule(t=tables, id=ids, v=texts, n=ints, prepare=st.sampled_from([None, True, False]))
    def insert(self, t: str, id: int, v: str | None, n: int | None, prepare: bool | None) -> None:
        q = f"insert into {t} (id, v, n) values (%s, %s, %s) returning id, n, length(v)"
        self.both(f"insert {short((t, id, v, n))} prepare={prepare}",
                  lambda s: cursor_results(s.conn.execute(q, (id, v, n), prepare=prepare)))

    @rule(t=tables, lo=ids, hi=ids, v=texts, n=ints)
    def update(self, t: str, lo: int, hi: int, v: str | None, n: int | None) -> None:
        q = f"update {t} set v = %s, n = %s where id between %s and %s"
        self.both(f"update {short((t, lo, hi, v, n))}", lambda s: cursor_results(s.conn.execute(q, (v, n, lo, hi))))

    @rule(t=tables, id=ids)
    def update_pk(self, t: str, id: int) -> None:
        # Collides with existing keys now and then: a unique violation.
        self.both(f"update {t} set id = id + 1 where id >= {id}",
                  lambda s: cursor_results(s.conn.execute(f"update {t} set id = id + 1 where id >= %s", (id,))))

    @rule(t=tables, lo=ids)
    def delete(self, t: str, lo: int) -> None:
        self.both(f"delete from {t} where id >= {lo}",
                  lambda s: cursor_results(s.conn.execute(f"delete from {t} where id >= %s returning id", (lo,))))

    @rule(t=tables, binary=st.booleans(), prepare=st.sampled_from([None, True]))
    def select(self, t: str, binary: bool, prepare: bool | None) -> None:
        q = f"select id, v, n, v is null as v_null from {t} order by id"
        self.both(f"{q} binary={binary} prepare={prepare}",
                  lambda s: cursor_results(s.conn.cursor(binary=binary).execute(q, prepare=prepare)))

    @rule(t=tables, stmts=st.lists(st.sampled_from([
        "select count(*) as c from {t}",
        "insert into {t} values (100, 'multi', 1)",
        "delete from {t} where id = 100",
        "select 1/0",
        "select 'a' as x, 2 as y",
        "",
        "begin",
        "commit",
        "prepare p1(int) as select id, n from {t} where id >= $1 order by id",
        "execute p1(0)",
        "deallocate p1",
        "deallocate all",
        "declare c1 cursor with hold for select id from {t} order by id",
        "fetch 2 from c1",
        "close all",
    ]), min_size=1, max_size=4))
    def simple_query(self, t: str, stmts: list[str]) -> None:
        # The simple query protocol (ClientCursor without parameters), several
        # statements in one Query message.
        # An EXECUTE of a statement pgjit has not seen gets the whole string
        # denied (documented), where the server would run the statements
        # before it, and commit them after a COMMIT in the string: EXECUTE p1
        # only follows a PREPARE p1 of the same string here. (Alone, in
        # sql_execute, any EXECUTE is fine.)
        kept, prepared = [], False
        for x in stmts:
            if x.startswith("prepare p1"):
                prepared = True
            elif x.startswith("deallocate"):
                prepared = False
            elif x.startswith("execute p1") and not prepared:
                continue
            kept.append(x)
        q = "; ".join(x.format(t=t) for x in kept)
        self.both(f"simple query {q!r}", lambda s: cursor_results(psycopg.ClientCursor(s.conn).execute(q)))

    # --------------------------------------------------------- transactions

    @rule(stmt=st.sampled_from(["begin", "commit", "rollback", "start transaction isolation level serializable",
                                "end", "abort", "commit and chain"]))
    def transaction(self, stmt: str) -> None:
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(verb=st.sampled_from(["savepoint {}", "rollback to savepoint {}", "release savepoint {}"]),
          sp=st.sampled_from(SAVEPOINTS))
    def savepoint(self, verb: str, sp: str) -> None:
        stmt = verb.format(sp)
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(stmt=st.sampled_from(["select 1/0 as x", "select * from no_such_table", "selec 1",
                                "select 'x'::int", "do $$ begin raise notice 'hé %', 42; end $$",
                                "do $$ begin raise warning 'warned'; end $$",
                                "select repeat('é', 200000) as big"]))
    def misc(self, stmt: str) -> None:
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(tz=st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]), app=st.sampled_from(["", "diff", "hé"]),
          local=st.booleans())
    def set_params(self, tz: str, app: str, local: bool) -> None:
        kw = "set local" if local else "set"

        def op(s: Side) -> Any:
            return (cursor_results(s.conn.execute(f"{kw} timezone = '{tz}'")),
                    cursor_results(s.conn.execute(f"{kw} application_name = '{app}'")))

        self.both(f"{kw} timezone {tz}, application_name {app!r}", op)

    # ------------------------------------------------- prepared statements

    @rule(name=st.sampled_from(PREPARED), t=tables)
    def sql_prepare(self, name: str, t: str) -> None:
        stmt = f"prepare {name}(int) as select id, v, n from {t} where id >= $1 order by id"
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(name=st.sampled_from(PREPARED), arg=ids)
    def sql_execute(self, name: str, arg: int) -> None:
        stmt = f"execute {name}({arg})"
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(name=st.sampled_from(PREPARED), arg=ids, t=tables, how=st.sampled_from([
        "explain (costs off) execute {name}({arg})",
        "create table {t} as execute {name}({arg})",
        "create temp table tmp_{name} as execute {name}({arg})",
        "prepare {name}_x as execute {name}({arg})",
    ]))
    def sql_execute_wrapped(self, name: str, arg: int, t: str, how: str) -> None:
        # EXECUTE inside EXPLAIN and CREATE TABLE AS: pgjit judges it with its PREPARE.
        stmt = how.format(name=name, arg=arg, t=t)
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(name=st.sampled_from(PREPARED + ["all"]))
    def sql_deallocate(self, name: str) -> None:
        stmt = f"deallocate {name}"
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    # ------------------------------------------------------------- cursors

    @rule(name=st.sampled_from(CURSORS), t=tables, hold=st.booleans(), scroll=st.booleans())
    def declare(self, name: str, t: str, hold: bool, scroll: bool) -> None:
        stmt = (f"declare {name} {'scroll' if scroll else 'no scroll'} cursor {'with hold' if hold else ''}"
                f" for select id, v from {t} order by id")
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(name=st.sampled_from(CURSORS), how=st.sampled_from(["next", "2", "all", "prior", "first", "absolute 2", "backward 1"]))
    def fetch(self, name: str, how: str) -> None:
        stmt = f"fetch {how} from {name}"
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(name=st.sampled_from(CURSORS + ["all"]))
    def close(self, name: str) -> None:
        stmt = f"close {name}"
        self.both(stmt, lambda s: cursor_results(s.conn.execute(stmt)))

    @rule(t=tables, withhold=st.booleans(), sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3))
    def named_cursor(self, t: str, withhold: bool, sizes: list[int]) -> None:
        def op(s: Side) -> Any:
            with s.conn.cursor("pycur", withhold=withhold) as cur:
                cur.execute(f"select id, v, n from {t} order by id")
                cols = [c.name for c in cur.description]
                return cols, [cur.fetchmany(k) for k in sizes], cur.fetchall()

        self.both(f"named cursor on {t} withhold={withhold} fetchmany{sizes}", op)

    # ---------------------------------------------------------------- COPY

    @rule(t=tables, rows=st.lists(st.tuples(st.integers(10, 40), texts, ints), max_size=5), binary=st.booleans())
    def copy_in(self, t: str, rows: list, binary: bool) -> None:
        def op(s: Side) -> Any:
            cur = s.conn.cursor()
            fmt = " (format binary)" if binary else ""
            with cur.copy(f"copy {t} (id, v, n) from stdin{fmt}") as cp:
                if binary:
                    cp.set_types(["int4", "text", "int4"])
                for r in rows:
                    cp.write_row(r)
            return norm(cur.statusmessage), cur.rowcount

        self.both(f"copy {t} from stdin binary={binary} {short(rows)}", op)

    @rule(t=tables, binary=st.booleans())
    def copy_out(self, t: str, binary: bool) -> None:
        def op(s: Side) -> Any:
            cur = s.conn.cursor()
            fmt = " (format binary)" if binary else ""
            with cur.copy(f"copy (select id, v, n from {t} order by id) to stdout{fmt}") as cp:
                data = b"".join(bytes(b) for b in cp)
            return hashlib.sha256(data).hexdigest(), len(data), norm(cur.statusmessage), cur.rowcount

        self.both(f"copy {t} to stdout binary={binary}", op)

    # ------------------------------------------------------ LISTEN / NOTIFY

    @rule(ch=st.sampled_from(CHANNELS), verb=st.sampled_from(["listen", "unlisten"]))
    def listen(self, ch: str, verb: str) -> None:
        self.listening = True
        self.both(f"{verb} {ch}", lambda s: cursor_results(s.conn.execute(f"{verb} {s.channel(ch)}")))

    @rule(ch=st.sampled_from(CHANNELS), payload=short_text | st.sampled_from(["", "x" * 7999]))
    def notify(self, ch: str, payload: str) -> None:
        self.both(f"notify {ch} {short(payload)!r}",
                  lambda s: cursor_results(s.conn.execute("select pg_notify(%s, %s)", (s.channel(ch), payload))))

    # ------------------------------------------------------------ pipeline

    @rule(t=tables, ops=st.lists(st.tuples(st.sampled_from(["insert", "select", "error", "update"]), ids, texts),
                                 min_size=1, max_size=5))
    def pipeline(self, t: str, ops: list) -> None:
        def op(s: Side) -> Any:
            out: list = []
            curs = []
            try:
                with s.conn.pipeline():
                    for kind, id, v in ops:
                        cur = s.conn.cursor()
                        if kind == "insert":
                            cur.execute(f"insert into {t} (id, v) values (%s, %s)", (id, v))
                        elif kind == "select":
                            cur.execute(f"select id, length(v) from {t} where id <= %s order by id", (id,))
                        elif kind == "update":
                            cur.execute(f"update {t} set v = %s where id = %s", (v, id))
                        else:
                            cur.execute("select 1/0")
                        curs.append(cur)
            except psycopg.Error as e:
                error = error_outcome(e)
            else:
                error = None
            # When psycopg notices the error (at a later execute() or when the
            # pipeline syncs) depends on timing: the queries after the failing
            # one are either never sent or aborted by the server, which the
            # client cannot tell apart. Compare the results up to the first
            # query without one, and the error.
            for cur in curs:
                if cur.statusmessage is None:
                    break
                out.append((norm(cur.statusmessage), cur.rowcount, cur.fetchall() if cur.description else None))
            return out, error

        self.both(f"pipeline on {t}: {short(ops)}", op)


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def gated_gateway(pg, tmp_path_factory):
    """A gateway with an allow-all policy: every statement passes the statement gate."""
    work = tmp_path_factory.mktemp("diff-gated")
    policy = work / "allow-all.yaml"
    policy.write_text(ALLOW_ALL_POLICY)
    gw = start_gateway(work / "gw", pg, targets={"appdb": {
        "host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app", "password": "apppass",
        "policy": str(policy)}})
    yield gw
    gw.stop()


def run_machine(name: str, gw_dsn: str, direct_dsn: str, gated: bool) -> None:
    machine = type(name, (DifferentialMachine,), {"gw_dsn": gw_dsn, "direct_dsn": direct_dsn, "gated": gated})
    DOCUMENTED_SEEN.clear()
    run_state_machine_as_test(machine, settings=SETTINGS)
    if DOCUMENTED_SEEN:
        print(f"{name}: documented differences seen: {dict(DOCUMENTED_SEEN)}")


@pytest.mark.timeout(max(300, EXAMPLES * 8))
def test_differential_gated(gated_gateway, pg):
    run_machine("GatedDifferential", gated_gateway.dsn(), pg.dsn("app", "apppass", "appdb"), gated=True)


@pytest.mark.timeout(max(300, EXAMPLES * 8))
def test_differential_passthrough(gateway, pg):
    run_machine("PassthroughDifferential", gateway.dsn(), pg.dsn("app", "apppass", "appdb"), gated=False)


# ------------------------------------------------- replays of differences found

#: Differences the state machine found, replayed step by step (minimised by
#: hand from hypothesis' output). Each is a real pgjit difference, not an
#: artefact of this harness: these tests fail until pgjit is fixed.
REPLAYS = {
    # pgjit forgets a prepared statement on a DEALLOCATE that the server
    # refused (the transaction had failed: 25P02), so a later EXECUTE of it is
    # denied (pgjit:unknown-prepared) where PostgreSQL runs it.
    "deallocate_in_failed_transaction": [
        "prepare p2(int) as select id, v, n from t1 where id >= $1 order by id",
        "begin",
        "select 1/0 as x",
        "deallocate p2",
        "commit",
        "execute p2(0)",
    ],
}


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_replay_gated(gated_gateway, pg, name):
    machine = type("GatedReplay", (DifferentialMachine,), {"gw_dsn": gated_gateway.dsn(),
                                                          "direct_dsn": pg.dsn("app", "apppass", "appdb"), "gated": True})()
    try:
        machine.connect()
        for stmt in REPLAYS[name]:
            machine.both(stmt, lambda s, stmt=stmt: cursor_results(s.conn.execute(stmt)))
    finally:
        machine.teardown()
