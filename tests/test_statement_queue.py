"""The statement queue against a real PostgreSQL: random pipelines of simple
Queries and extended-protocol groups (with errors at Parse and at Execute,
Describe, row limits, empty queries, multi-statement strings) are sent to
the server in one write, and the replies are fed to the queue; every Query
and Execute must come back as one finished statement, in order, with the
outcome, SQLSTATE and rows the server gave."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgjit.gateway.statements import StatementQueue
from pgjit.protocol import messages as m
from tests.rawclient import RawClient

# sql -> (outcome, sqlstate, rows) when run alone; None rows: no row count.
SIMPLE = {
    "select 1": ("ok", None, 1),
    "select generate_series(1, 5)": ("ok", None, 5),
    "select 1/0": ("error", "22012", None),
    "selec 1": ("error", "42601", None),
    "select 1; select 2": ("ok", None, 2),
    "select 1; select 1/0; select 3": ("error", "22012", 1),
    "": ("ok", None, None),
    "insert into pgjit_sq values (1), (2)": ("ok", None, 2),
    "update pgjit_sq set a = a": ("ok", None, None),  # rows: whatever the table holds; checked as not None
    "create temp table if not exists pgjit_sq2 (a int)": ("ok", None, None),
}
EXTENDED = [s for s in SIMPLE if ";" not in s]


@st.composite
def script(draw):
    units = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            units.append(("simple", draw(st.sampled_from(list(SIMPLE)))))
        else:
            items = []
            for _ in range(draw(st.integers(1, 4))):
                sql = draw(st.sampled_from(EXTENDED))
                limit = 2 if sql == "select generate_series(1, 5)" and draw(st.booleans()) else 0
                items.append((sql, draw(st.booleans()), limit, draw(st.sampled_from(["", "s1", "s2"]))))
            units.append(("extended", items))
    return units


def expected(units):
    """What the server must report, statement by statement."""
    out = []
    for kind, body in units:
        if kind == "simple":
            outcome, code, rows = SIMPLE[body]
            out.append(("simple", body, outcome, code, rows))
            continue
        failed = False
        for sql, _describe, limit, _name in body:
            if failed:
                out.append(("extended", sql, "skipped", None, None))
                continue
            outcome, code, rows = SIMPLE[sql]
            if limit:
                outcome, rows = "suspended", limit
            out.append(("extended", sql, outcome, code, rows))
            failed = outcome == "error"
    return out


def send(client: RawClient, queue: StatementQueue, units) -> int:
    """Everything in one write, the queue told in the same order; returns
    how many ReadyForQuery the server owes."""
    msgs: list[m.Message] = []
    owed = 0
    for kind, body in units:
        if kind == "simple":
            msgs.append(m.Query(body))
            queue.query(body.encode())
            owed += 1
            continue
        for n, (sql, describe, limit, name) in enumerate(body):
            portal = f"p{n}"
            if name:
                msgs.append(m.Close(b"S", name))
                queue.close()
            msgs.append(m.Parse(name, sql, ()))
            queue.parse(name, sql.encode())
            msgs.append(m.Bind(portal, name))
            queue.bind(portal, name)
            if describe:
                msgs.append(m.Describe(b"P", portal))
                queue.describe()
            msgs.append(m.Execute(portal, limit))
            queue.execute(portal, limit)
        msgs.append(m.Sync())
        queue.sync()
        owed += 1
    client.send(*msgs)
    return owed


@pytest.fixture(scope="module")
def server(pg):
    pg.psql("create table if not exists pgjit_sq (a int); grant all on pgjit_sq to public", dbname="appdb")
    return pg


@settings(max_examples=int(os.environ.get("PGJIT_QUEUE_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(units=script())
def test_every_statement_finishes_once_in_order_with_the_servers_outcome(server, units):
    with RawClient(server.port) as c:
        login = c.login(user="pgjit_trust", database="appdb")
        assert isinstance(login[-1], m.ReadyForQuery), login
        queue = StatementQueue(clock=itertools.count().__next__)
        owed = send(c, queue, units)
        finished = []
        seen_ready = 0
        while seen_ready < owed:
            tag, body = c.read_frame()
            finished += queue.server(tag[0], body)
            seen_ready += tag == b"Z"
    assert len(queue) == 0
    got = [(s.protocol, s.text.decode(), s.outcome, s.sqlstate, s.rows) for s in finished]
    want = expected(units)
    # The update's row count is whatever pgjit_sq holds by then: only its presence is checked.
    got = [g if g[1] != "update pgjit_sq set a = a" else g[:4] + (g[4] is not None,) for g in got]
    want = [w if w[1] != "update pgjit_sq set a = a" else w[:4] + (w[2] == "ok",) for w in want]
    assert got == want
    assert [s.seq for s in finished] == list(range(1, len(finished) + 1))
    assert all(s.ended is not None and s.ended >= s.started for s in finished)


def test_a_refused_query_and_a_refused_parse_keep_their_decision(server):
    """pgjit's stand-ins (a Bind to a missing statement) fail upstream; the
    statements keep pgjit's decision and SQLSTATE, and what the server then
    skipped is skipped."""
    with RawClient(server.port) as c:
        c.login(user="pgjit_trust", database="appdb")
        q = StatementQueue()
        c.send(m.Bind("", "pgjit_refused_x"), m.Sync())
        q.query(b"drop table customers", decision="deny", rule="no-ddl", sqlstate="42501")
        c.send(m.Bind("", "pgjit_refused_y"), m.Bind("p", ""), m.Execute("p", 0), m.Sync())
        q.refused_parse("", b"delete from customers", rule="no-delete", sqlstate="42501")
        q.bind("p", "")
        q.execute("p")
        q.sync()
        c.send(m.Query("select 1"))
        q.query(b"select 1")
        done = []
        for _ in range(3):
            while True:
                tag, body = c.read_frame()
                done += q.server(tag[0], body)
                if tag == b"Z":
                    break
    assert [(s.text, s.decision, s.outcome, s.sqlstate) for s in done] == [
        (b"drop table customers", "deny", "refused", "42501"),
        (b"delete from customers", "deny", "refused", "42501"),
        (b"", "allow", "skipped", None),
        (b"select 1", "allow", "ok", None),
    ]
    assert done[3].rows == 1


def test_copy_in_both_protocols_and_copy_out(server):
    with RawClient(server.port) as c:
        c.login(user="pgjit_trust", database="appdb")
        q = StatementQueue()
        done = []

        def until_ready():
            while True:
                tag, body = c.read_frame()
                done.extend(q.server(tag[0], body))
                if tag == b"Z":
                    return

        c.send(m.Query("copy pgjit_sq from stdin"))
        q.query(b"copy pgjit_sq from stdin")
        tag, body = c.read_frame()
        assert tag == b"G"
        q.server(tag[0], body)
        c.send(m.CopyData(b"7\n8\n9\n"), m.CopyDone())
        until_ready()
        c.send(m.Parse("", "copy pgjit_sq from stdin", ()), m.Bind("", ""), m.Execute("", 0), m.Sync())
        q.parse("", b"copy pgjit_sq from stdin")
        q.bind("", "")
        q.execute("")
        q.sync()
        while True:
            tag, body = c.read_frame()
            done.extend(q.server(tag[0], body))
            if tag == b"G":
                break
        c.send(m.CopyData(b"10\n"), m.CopyDone(), m.Sync())
        until_ready()
        c.send(m.Query("copy (select 1 union all select 2) to stdout"))
        q.query(b"copy (select 1 union all select 2) to stdout")
        until_ready()
    assert [(s.protocol, s.outcome, s.rows) for s in done] == [("copy", "ok", 3), ("copy", "ok", 1), ("copy", "ok", 2)]
    assert len(q) == 0
