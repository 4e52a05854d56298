"""pg8000 (pure-Python driver) through the gateway: native API queries,
parameters, prepared statements, COPY via ``stream=``, transactions, errors
with their SQLSTATE, notices/notifications, and the DB-API module.

pg8000 sends every statement through the extended protocol (Parse, Bind,
Describe, Execute, Sync). Writes are checked on the real database."""

from __future__ import annotations

import io
import signal
import subprocess
import time
from datetime import date, datetime, timezone
from decimal import Decimal

import pg8000.dbapi
import pg8000.native
import pytest

from ._helpers import unique

pytestmark = [pytest.mark.pg, pytest.mark.clients]


@pytest.fixture
def con(gateway):
    c = pg8000.native.Connection(
        user="alice@example.com", password="x", host="127.0.0.1", port=gateway.port, database="appdb", timeout=30
    )
    try:
        yield c
    finally:
        c.close()


def test_queries_and_parameters(con):
    assert con.run("select 1") == [[1]]
    assert [c["name"] for c in con.columns] == ["?column?"]
    assert con.run("select current_user, current_database()") == [["app", "appdb"]]
    assert con.run("select cast(:a as int) + cast(:b as int), :s || '!'", a=40, b=2, s="hé") == [[42, "hé!"]]
    row = con.run(
        "select cast(:d as numeric), cast(:t as timestamptz), cast(:dt as date), cast(:b as bytea), cast(:arr as int[])",
        d=Decimal("123.456"),
        t=datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
        dt=date(2000, 1, 1),
        b=b"\x00\xff",
        arr=[1, 2, 3],
    )[0]
    assert row == [Decimal("123.456"), datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc), date(2000, 1, 1), b"\x00\xff", [1, 2, 3]]
    assert len(con.run("select * from public.customers")) > 0
    assert con.run("select count(*) from generate_series(1, 100000)") == [[100000]]
    assert con.run("select repeat('p', 1000000)")[0][0] == "p" * 1000000


def test_prepared_statement(con):
    ps = con.prepare("select cast(:v as int) * 2")
    try:
        assert [ps.run(v=i)[0][0] for i in range(10)] == [2 * i for i in range(10)]
    finally:
        ps.close()
    assert con.run("select 'after close'") == [["after close"]]


def test_copy_via_stream(con, direct, new_table):
    t = new_table("id int, name text")
    # In: a text stream, a binary stream, and an iterable of lines.
    con.run(f"COPY {t} FROM STDIN", stream=io.StringIO("".join(f"{i}\tnamé {i}\n" for i in range(1, 1001))))
    assert con.row_count == 1000
    con.run(f"COPY {t} FROM STDIN WITH (FORMAT CSV)", stream=io.BytesIO(b'1001,"a, b"\n1002,\n'))
    con.run(f"COPY {t} FROM STDIN", stream=[f"{i}\titer\n" for i in range(2001, 2011)])
    n, total, ab, null_name = direct.execute(
        f"select count(*), sum(id), max(name) filter (where id = 1001), count(*) filter (where name is null) from {t}"
    ).fetchone()
    assert (n, total, ab, null_name) == (1012, sum(range(1, 1001)) + 1001 + 1002 + sum(range(2001, 2011)), "a, b", 1)
    # Out: text and bytes.
    out = io.StringIO()
    con.run(f"COPY (select id, name from {t} where id <= 3 order by id) TO STDOUT", stream=out)
    assert out.getvalue() == "1\tnamé 1\n2\tnamé 2\n3\tnamé 3\n"
    raw = io.BytesIO()
    con.run(f"COPY {t} TO STDOUT WITH (FORMAT CSV)", stream=raw)
    assert len(raw.getvalue().splitlines()) == 1012
    # Big rows both ways.
    big = io.BytesIO()
    con.run("COPY (select repeat('w', 800000)) TO STDOUT", stream=big)
    assert big.getvalue() == b"w" * 800000 + b"\n"
    con.run(f"COPY {t} FROM STDIN", stream=io.StringIO("5000\t" + "v" * 700000 + "\n"))
    assert direct.execute(f"select length(name) from {t} where id = 5000").fetchone() == (700000,)


def test_transactions(con, direct, new_table):
    t = new_table("a int")
    con.run("START TRANSACTION")
    con.run(f"insert into {t} values (1)")
    assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 0
    con.run("ROLLBACK")
    assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 0
    con.run("START TRANSACTION")
    con.run(f"insert into {t} values (2)")
    con.run("COMMIT")
    assert [r[0] for r in direct.execute(f"select a from {t}")] == [2]
    # An error aborts the transaction until ROLLBACK.
    con.run("START TRANSACTION")
    con.run(f"insert into {t} values (3)")
    with pytest.raises(pg8000.native.DatabaseError) as ei:
        con.run("select 1/0")
    assert ei.value.args[0]["C"] == "22012"
    with pytest.raises(pg8000.native.DatabaseError) as ei:
        con.run("select 1")
    assert ei.value.args[0]["C"] == "25P02"
    con.run("ROLLBACK")
    assert con.run("select 1") == [[1]]
    assert [r[0] for r in direct.execute(f"select a from {t}")] == [2]


def test_errors_have_sqlstate(con, new_table):
    with pytest.raises(pg8000.native.DatabaseError) as ei:
        con.run("select * from pgjit_no_such_table")
    err = ei.value.args[0]
    assert err["C"] == "42P01"
    assert err["S"] == "ERROR"
    assert 'relation "pgjit_no_such_table" does not exist' in err["M"]
    with pytest.raises(pg8000.native.DatabaseError) as ei:
        con.run("selec 1")
    assert ei.value.args[0]["C"] == "42601"
    assert ei.value.args[0]["P"] == "1"
    t = new_table("id int primary key")
    con.run(f"insert into {t} values (1)")
    with pytest.raises(pg8000.native.DatabaseError) as ei:
        con.run(f"insert into {t} values (:v)", v=1)
    assert ei.value.args[0]["C"] == "23505"
    assert ei.value.args[0]["n"] == f"{t}_pkey"
    assert con.run("select 'still usable'") == [["still usable"]]


def test_notices_notifications_and_parameter_status(gateway, con):
    con.run("DO $$ BEGIN RAISE NOTICE 'pg8000 notice %', 5; END $$")
    assert any(n.get(b"M") == b"pg8000 notice 5" and n.get(b"C") == b"00000" for n in con.notices), list(con.notices)
    con.run("SET application_name TO 'pg8000-renamed'")
    assert con.parameter_statuses["application_name"] == "pg8000-renamed"
    channel = unique("pchan")
    con.run(f"LISTEN {channel}")
    other = pg8000.native.Connection(user="bob", password="x", host="127.0.0.1", port=gateway.port, database="appdb", timeout=30)
    try:
        other.run("select pg_notify(:c, 'ping')", c=channel)
    finally:
        other.close()
    con.run("select 1")
    assert [(c, p) for _, c, p in con.notifications] == [(channel, "ping")]


def test_dbapi_basics(gateway, direct, new_table):
    t = new_table("id int primary key, name text, amount numeric")
    conn = pg8000.dbapi.connect(user="carol", password="x", host="127.0.0.1", port=gateway.port, database="appdb", timeout=30)
    try:
        assert pg8000.dbapi.paramstyle == "format"
        cur = conn.cursor()
        cur.execute(f"insert into {t} values (%s, %s, %s)", (1, "one", Decimal("1.10")))
        cur.executemany(f"insert into {t} values (%s, %s, %s)", [(i, f"n{i}", Decimal(i)) for i in range(2, 52)])
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 0  # not committed yet
        conn.commit()
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 51
        cur.execute(f"select id, name, amount from {t} where id <= %s order by id", (3,))
        assert [d[0] for d in cur.description] == ["id", "name", "amount"]
        assert cur.fetchall() == ([1, "one", Decimal("1.10")], [2, "n2", Decimal(2)], [3, "n3", Decimal(3)])
        cur.execute(f"delete from {t}")
        assert cur.rowcount == 51
        conn.rollback()
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 51
        with pytest.raises(pg8000.dbapi.DatabaseError) as ei:
            cur.execute(f"insert into {t} values (%s, %s, %s)", (1, "dup", 0))
        assert ei.value.args[0]["C"] == "23505"
        conn.rollback()
        conn.autocommit = True
        cur.execute(f"update {t} set name = 'auto' where id = 1")
        assert direct.execute(f"select name from {t} where id = 1").fetchone()[0] == "auto"
        cur.close()
    finally:
        conn.close()


def test_idle_session_after_copy_does_not_hold_up_shutdown(make_gateway, direct, new_table):
    """GATEWAY BUG: pg8000 runs COPY FROM STDIN through the extended protocol
    (Parse/Bind/Execute/Sync, then CopyData.../CopyDone/Sync). PostgreSQL
    ignores the first Sync in copy-in mode and answers both with ONE
    ReadyForQuery, so pgjit's per-session count of outstanding ReadyForQuery
    (Session.ctr.rfq_sent vs rfq_received) stays off by one for the rest of the
    session: the idle session is never seen as idle, and SIGTERM waits the
    whole shutdown_grace instead of ending it at once. (See also
    test_psycopg.py::test_idle_session_after_copy_does_not_hold_up_shutdown.)"""
    gw = make_gateway(timeouts={"shutdown_grace": 10})
    t = new_table("a int")
    c = pg8000.native.Connection(user="dave", password="x", host="127.0.0.1", port=gw.port, database="appdb", timeout=30)
    try:
        c.run(f"COPY {t} FROM STDIN", stream=io.StringIO("1\n2\n3\n"))
        assert c.run("select 1") == [[1]]
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 3
        sent = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        try:
            rc = gw.proc.wait(timeout=4)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"with only an idle pg8000 session open (after a COPY FROM STDIN), the gateway was still draining "
                f"{time.monotonic() - sent:.1f} s after SIGTERM (shutdown_grace is 10 s): it does not see the session as idle"
            )
        assert rc == 0
    finally:
        try:
            c.close()
        except Exception:  # the gateway ended the session: nothing to close
            pass
