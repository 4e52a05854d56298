"""psycopg 3 through the gateway: queries, binary types, pipeline mode, COPY,
server-side cursors, transactions, LISTEN/NOTIFY, notices, ParameterStatus,
prepared statements and cancellation. Writes are checked on the real database
through ``direct`` (a connection straight to PostgreSQL)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from ._helpers import unique, wait_for

pytestmark = [pytest.mark.pg, pytest.mark.clients]


@pytest.fixture
def conn(gateway):
    with psycopg.connect(gateway.dsn(), autocommit=True, connect_timeout=10) as c:
        yield c


def active_sleepers(direct, app: str) -> int:
    return direct.execute(
        "select count(*) from pg_stat_activity where application_name = %s and state = 'active' and query like %s",
        (app, "%pg_sleep%"),
    ).fetchone()[0]


# ----------------------------------------------------------------- queries


def test_simple_query_and_parameters(conn):
    assert conn.execute("select 1").fetchone() == (1,)
    assert conn.execute("select current_user, current_database()").fetchone() == ("app", "appdb")
    assert conn.execute("select %s::int + %s::int, %s || '!'", (40, 2, "hé")).fetchone() == (42, "hé!")
    assert conn.execute("select %(a)s::text, %(a)s::text = %(b)s", {"a": "x", "b": "x"}).fetchone() == ("x", True)
    rows = conn.execute("select name from public.customers order by 1 limit 3").fetchall()
    assert len(rows) == 3
    # A multi-statement simple query gives one result set each.
    cur = conn.cursor()
    cur.execute("select 1; select 'two', 2")
    assert cur.fetchall() == [(1,)]
    assert cur.nextset()
    assert cur.fetchall() == [("two", 2)]
    assert not cur.nextset()


def test_large_results(conn):
    n, total = conn.execute("select count(*), sum(i) from (select generate_series(1, 200000) i) s").fetchone()
    assert (n, total) == (200000, 200000 * 200001 // 2)
    rows = conn.execute("select i, md5(i::text) from generate_series(1, 50000) i").fetchall()
    assert len(rows) == 50000 and rows[-1][0] == 50000
    big = conn.execute("select repeat('x', 3000000)").fetchone()[0]
    assert big == "x" * 3000000
    blob = conn.execute("select decode(repeat('00ff', 500000), 'hex')", binary=True).fetchone()[0]
    assert blob == b"\x00\xff" * 500000
    # A large Bind message from the client (a 5 MB parameter), both formats.
    payload = bytes(range(256)) * 20480
    expected = hashlib.md5(payload).hexdigest()
    assert conn.execute("select md5(%b), length(%b)", (payload, payload)).fetchone() == (expected, len(payload))
    assert conn.execute("select md5(%t::bytea)", (payload,)).fetchone() == (expected,)


BINARY_VALUES: list[tuple[str, str, object]] = [
    ("b", "bytea", bytes(range(256)) * 40),
    ("i2", "int2", -32768),
    ("i4", "int4", 2**31 - 1),
    ("i8", "int8", -(2**63)),
    ("ts", "timestamp", datetime(2024, 2, 29, 23, 59, 59, 123456)),
    ("tstz", "timestamptz", datetime(1999, 12, 31, 23, 0, 0, 1, tzinfo=timezone.utc)),
    ("d", "date", date(1970, 1, 1)),
    ("n", "numeric", Decimal("-12345678901234567890.000000000123456789")),
    ("nnan", "numeric", Decimal("NaN")),
    ("f8", "float8", 1.5e300),
    ("bo", "bool", True),
    ("ia", "int4[]", [1, 2, None, -4]),
    ("ta", "text[]", ["a", "b c", None, "ü\"{,}"]),
    ("na", "numeric[]", [Decimal("1.5"), Decimal("-0.001")]),
    ("j", "jsonb", {"k": [1, 2, {"z": None}], "s": "ü", "f": 1.25}),
    ("u", "uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("iv", "interval", timedelta(days=3, seconds=5, microseconds=7)),
    ("t", "text", "tab\there\nnewline 'quote' \\ backslash ☃"),
]


def _adapt(typ: str, value: object) -> object:
    return Jsonb(value) if typ == "jsonb" else value


def _same(a: object, b: object) -> bool:
    if isinstance(a, Decimal) and isinstance(b, Decimal) and a.is_nan():
        return b.is_nan()
    return a == b


def test_binary_round_trips(conn, direct, new_table):
    t = new_table(", ".join(f"{c} {typ}" for c, typ, _ in BINARY_VALUES))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c, _, _ in BINARY_VALUES)
    marks = sql.SQL(", ").join(sql.Placeholder() for _ in BINARY_VALUES)
    params = [_adapt(typ, v) for _, typ, v in BINARY_VALUES]
    # Binary parameters in, binary results out, through the gateway.
    cur = conn.cursor(binary=True)
    cur.execute(sql.SQL("insert into {} ({}) values ({})").format(sql.Identifier(t), cols, marks), params, binary=True)
    got = cur.execute(sql.SQL("select {} from {}").format(cols, sql.Identifier(t)), binary=True).fetchone()
    for (c, typ, v), g in zip(BINARY_VALUES, got):
        assert _same(v, g), (c, typ, v, g)
    # Text results of the same row through the gateway agree.
    got_text = conn.execute(sql.SQL("select {} from {}").format(cols, sql.Identifier(t))).fetchone()
    for (c, typ, v), g in zip(BINARY_VALUES, got_text):
        assert _same(v, g), (c, typ, v, g)
    # And the real database holds exactly these values.
    real = direct.execute(sql.SQL("select {} from {}").format(cols, sql.Identifier(t))).fetchone()
    for (c, typ, v), g in zip(BINARY_VALUES, real):
        assert _same(v, g), (c, typ, v, g)
    assert direct.execute(f"select md5(b), n::text from {t}").fetchone() == (
        hashlib.md5(bytes(range(256)) * 40).hexdigest(),
        "-12345678901234567890.000000000123456789",
    )


def test_binary_literal_selects(conn):
    row = conn.execute(
        "select %s::bytea, %s::timestamptz, %s::numeric, %s::int8[], %s::jsonb",
        (b"\x00\x01\xfe", datetime(2030, 1, 1, tzinfo=timezone.utc), Decimal("0.1"), [[1, 2], [3, 4]], Jsonb([1, "a"])),
        binary=True,
    ).fetchone()
    assert row == (b"\x00\x01\xfe", datetime(2030, 1, 1, tzinfo=timezone.utc), Decimal("0.1"), [[1, 2], [3, 4]], [1, "a"])


# --------------------------------------------------------------- pipeline


def test_pipeline_many_executes(conn, direct, new_table):
    t = new_table("a int primary key, b text")
    with conn.pipeline():
        curs = [conn.execute(f"insert into {t} values (%s, %s) returning a * 2", (i, f"v{i}")) for i in range(300)]
        last = conn.execute(f"select count(*), sum(a) from {t}")
    assert [c.fetchone()[0] for c in curs] == [2 * i for i in range(300)]
    assert last.fetchone() == (300, sum(range(300)))
    assert direct.execute(f"select count(*), sum(a) from {t}").fetchone() == (300, sum(range(300)))


def test_pipeline_large(conn):
    # Enough queued work that neither side can buffer it all: the client
    # must read while it writes, through the gateway's two relay directions.
    with conn.pipeline():
        curs = [conn.execute("select %s::int, repeat('p', 300)", (i,)) for i in range(5000)]
    assert [c.fetchone()[0] for c in curs] == list(range(5000))


def test_pipeline_error_aborts_until_sync(conn, direct, new_table):
    t = new_table("a int")
    with conn.pipeline() as p:
        conn.execute(f"insert into {t} values (1)")
        conn.execute(f"insert into {t} values (2)")
        p.sync()
        conn.execute(f"insert into {t} values (3)")
        after = None
        synced = False
        # psycopg raises the error as soon as its result has arrived: at the
        # next execute() when the server is quick, else at the sync.
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1/0")
            after = conn.execute(f"insert into {t} values (4)")
            synced = True
            p.sync()
        if not synced:
            # The error came with the insert's execute(): the pipeline stays
            # aborted until a sync, which psycopg has not sent yet.
            try:
                p.sync()
            except psycopg.errors.PipelineAborted:
                pass
        if after is not None:
            # The statement queued after the error was skipped by the server.
            with pytest.raises(psycopg.Error):
                after.fetchone()
        # After the sync point the pipeline works again.
        conn.execute(f"insert into {t} values (5)")
        count = conn.execute(f"select count(*) from {t}")
        p.sync()
        assert count.fetchone() == (3,)
    # 1 and 2 were committed at the first sync; 3 was in the same implicit
    # transaction as the error and rolled back; 4 never ran.
    assert [r[0] for r in direct.execute(f"select a from {t} order by a")] == [1, 2, 5]
    assert conn.execute("select 'alive'").fetchone() == ("alive",)


def test_pipeline_in_explicit_transaction(gateway, direct, new_table):
    t = new_table("a int")
    with psycopg.connect(gateway.dsn()) as c:  # not autocommit
        with pytest.raises(errors.UniqueViolation):
            with c.pipeline():
                c.execute(f"create unique index on {t} (a)")
                c.execute(f"insert into {t} values (1)")
                c.execute(f"insert into {t} values (1)")
                c.execute(f"insert into {t} values (2)")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        c.rollback()
        assert c.execute(f"select count(*) from {t}").fetchone() == (0,)
    assert direct.execute(f"select count(*) from {t}").fetchone() == (0,)


def test_executemany(conn, direct, new_table):
    t = new_table("a int, b text")
    cur = conn.cursor()
    cur.executemany(f"insert into {t} values (%s, %s)", [(i, str(i)) for i in range(1000)])
    cur.executemany(f"insert into {t} values (%s, %s) returning a", [(-1, "x"), (-2, "y")], returning=True)
    got = []
    while True:
        got.append(cur.fetchone()[0])
        if not cur.nextset():
            break
    assert got == [-1, -2]
    assert direct.execute(f"select count(*), sum(a) from {t}").fetchone() == (1002, sum(range(1000)) - 3)


# -------------------------------------------------------------------- COPY


def test_copy_from_stdin_write_row(conn, direct, new_table):
    t = new_table("id int, name text, price numeric, at timestamptz, tags text[]")
    rows = [
        (i, f"name {i}\t\\ \n", Decimal(i) / 100, datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(hours=i), [f"t{i}", None])
        for i in range(2000)
    ]
    with conn.cursor().copy(f"COPY {t} (id, name, price, at, tags) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(r)
    real = direct.execute(f"select id, name, price, at, tags from {t} order by id").fetchall()
    assert real == rows


def test_copy_binary_from_stdin(conn, direct, new_table):
    t = new_table("id int8, payload bytea, j jsonb")
    with conn.cursor().copy(f"COPY {t} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "bytea", "jsonb"])
        for i in range(500):
            copy.write_row((i, bytes([i % 256]) * (i + 1), Jsonb({"i": i})))
        # One row far bigger than the relay's streaming threshold.
        copy.write_row((10**12, b"\xab" * 2_000_000, Jsonb({"big": True})))
    n, big, j = direct.execute(
        f"select count(*), max(length(payload)), (select j from {t} where id = 7) from {t}"
    ).fetchone()
    assert (n, big, j) == (501, 2_000_000, {"i": 7})


def test_copy_to_stdout_rows(conn, direct):
    q = "select i, 'v' || i, i * 0.5, i % 2 = 0 from generate_series(1, 5000) i"
    with conn.cursor().copy(f"COPY ({q}) TO STDOUT") as copy:
        copy.set_types(["int4", "text", "numeric", "bool"])
        got = list(copy.rows())
    assert got == [tuple(r) for r in direct.execute(q).fetchall()]
    # Binary format, and a row bigger than the streaming threshold.
    with conn.cursor().copy("COPY (select 1::int4, repeat('z', 1500000)) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "text"])
        assert list(copy.rows()) == [(1, "z" * 1500000)]
    # Raw blocks of a table.
    with conn.cursor().copy("COPY (select * from public.customers order by 1) TO STDOUT (FORMAT CSV, HEADER)") as copy:
        data = b"".join(bytes(b) for b in copy)
    direct_lines = direct.execute("select count(*) from public.customers").fetchone()[0]
    assert len(data.decode().splitlines()) == direct_lines + 1


def test_copy_both_ways_round_trip(conn, direct, new_table):
    src = new_table("id int, s text, j jsonb, b bytea")
    dst = new_table("id int, s text, j jsonb, b bytea")
    direct.execute(
        f"insert into {src} select i, case when i % 5 = 0 then null else 'ü' || i || E'\\n' end, "
        f"jsonb_build_object('i', i), decode(md5(i::text), 'hex') from generate_series(1, 3000) i"
    )
    cur = conn.cursor()
    with cur.copy(f"COPY {src} TO STDOUT") as out:
        blocks = [bytes(b) for b in out]
    with cur.copy(f"COPY {dst} FROM STDIN") as inp:
        for b in blocks:
            inp.write(b)
    diff = direct.execute(f"select count(*) from ((table {src} except all table {dst}) union all (table {dst} except all table {src})) d").fetchone()[0]
    assert diff == 0
    assert direct.execute(f"select count(*) from {dst}").fetchone()[0] == 3000


def test_copy_errors_leave_connection_usable(conn, direct, new_table):
    t = new_table("id int")
    # Bad data: the server rejects it.
    with pytest.raises(errors.InvalidTextRepresentation):
        with conn.cursor().copy(f"COPY {t} FROM STDIN") as copy:
            copy.write(b"1\nnot-a-number\n")
    assert conn.execute("select 1").fetchone() == (1,)
    # An exception on the client side: psycopg sends CopyFail.
    with pytest.raises(ZeroDivisionError):
        with conn.cursor().copy(f"COPY {t} FROM STDIN") as copy:
            copy.write_row((1,))
            1 / 0
    assert conn.execute("select 2").fetchone() == (2,)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 0


# ------------------------------------------------------- server-side cursors


def test_named_cursor_fetchmany(gateway):
    with psycopg.connect(gateway.dsn()) as c:
        with c.cursor(name=unique("cur")) as cur:
            cur.itersize = 100
            cur.execute("select i, repeat('r', i % 50) from generate_series(1, 2500) i")
            seen = 0
            total = 0
            for _ in range(100):  # bounded: 2500 rows / 100 per batch
                batch = cur.fetchmany(100)
                if not batch:
                    break
                assert len(batch) == 100
                seen += len(batch)
                total += sum(r[0] for r in batch)
            assert (seen, total) == (2500, 2500 * 2501 // 2)
            assert cur.fetchone() is None
        # The cursor really was a server-side one.
        with c.cursor(name="pgjit_probe", scrollable=True) as cur:
            cur.execute("select generate_series(1, 10)")
            assert c.execute("select count(*) from pg_cursors where name = 'pgjit_probe'").fetchone() == (1,)
            cur.scroll(7, mode="absolute")
            assert cur.fetchone() == (8,)
            cur.scroll(-3)
            assert cur.fetchone() == (6,)
        c.commit()


def test_withhold_cursor_survives_commit(conn):
    with conn.cursor(name=unique("held"), withhold=True) as cur:
        cur.execute("select generate_series(1, 1000)")
        assert cur.fetchmany(10) == [(i,) for i in range(1, 11)]
        assert conn.execute("select 1").fetchone() == (1,)
        rest = cur.fetchall()
        assert len(rest) == 990 and rest[-1] == (1000,)


# ------------------------------------------------------------ transactions


def test_transactions_and_rollback(gateway, direct, new_table):
    t = new_table("a int")
    with psycopg.connect(gateway.dsn()) as c:
        assert not c.autocommit
        c.execute(f"insert into {t} values (1)")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        # Not visible outside until committed.
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 0
        c.commit()
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 1
        c.execute(f"insert into {t} values (2)")
        c.rollback()
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 1
        # An error aborts the transaction until rollback.
        with pytest.raises(errors.UndefinedTable):
            c.execute("select * from pgjit_no_such_table")
        with pytest.raises(errors.InFailedSqlTransaction):
            c.execute("select 1")
        c.rollback()
        assert c.execute("select 1").fetchone() == (1,)
        c.rollback()

    with psycopg.connect(gateway.dsn(), autocommit=True) as c:
        with c.transaction():
            c.execute(f"insert into {t} values (10)")
            with pytest.raises(errors.DivisionByZero):
                with c.transaction():  # a savepoint
                    c.execute(f"insert into {t} values (11)")
                    c.execute("select 1/0")
            c.execute(f"insert into {t} values (12)")
        with pytest.raises(RuntimeError):
            with c.transaction():
                c.execute(f"insert into {t} values (20)")
                raise RuntimeError("roll it back")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert [r[0] for r in direct.execute(f"select a from {t} order by a")] == [1, 10, 12]


def test_autocommit(gateway, direct, new_table):
    t = new_table("a int")
    with psycopg.connect(gateway.dsn(), autocommit=True) as c:
        c.execute(f"insert into {t} values (1)")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 1
        # Statements that refuse to run in a transaction block work.
        c.execute(f"vacuum {t}")
        c.autocommit = False
        c.execute(f"insert into {t} values (2)")
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 1
        c.commit()
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 2


def test_errors_carry_diagnostics(conn, new_table):
    t = new_table("id int primary key")
    conn.execute(f"insert into {t} values (1)")
    with pytest.raises(errors.UniqueViolation) as ei:
        conn.execute(f"insert into {t} values (%s)", (1,))
    assert ei.value.sqlstate == "23505"
    assert ei.value.diag.table_name == t
    assert ei.value.diag.constraint_name == f"{t}_pkey"
    with pytest.raises(errors.SyntaxError) as ei:
        conn.execute("selec 1")
    assert ei.value.diag.statement_position == "1"
    assert conn.execute("select 'still fine'").fetchone() == ("still fine",)


# ---------------------------------------------- NOTIFY, notices, parameters


def test_listen_notify(gateway, direct):
    channel = unique("chan")
    with psycopg.connect(gateway.dsn(), autocommit=True) as listener, psycopg.connect(gateway.dsn(), autocommit=True) as talker:
        listener.execute(f"LISTEN {channel}")
        talker.execute("select pg_notify(%s, %s)", (channel, "héllo through pgjit"))
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [(channel, "héllo through pgjit")]
        # From a session that does not go through the gateway, too.
        direct.execute(f"NOTIFY {channel}, 'from direct'")
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.payload for n in got] == ["from direct"]
        # A notification arriving while the listener is idle is delivered
        # with the next query's results.
        talker.execute(f"NOTIFY {channel}, 'queued'")
        time.sleep(0.2)
        listener.execute("select 1")
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.payload for n in got] == ["queued"]
        listener.execute(f"UNLISTEN {channel}")


def test_notices(conn):
    seen: list[tuple[str, str, str]] = []
    conn.add_notice_handler(lambda d: seen.append((d.severity_nonlocalized, d.message_primary, d.sqlstate)))
    conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
    assert seen == [("NOTICE", "hello 42", "00000"), ("WARNING", "careful", "01000")]
    seen.clear()
    conn.execute("drop table if exists pgjit_surely_absent_table")
    assert seen and seen[0][0] == "NOTICE" and "does not exist, skipping" in seen[0][1]


def test_parameter_status(gateway, direct):
    app = unique("startup-app")
    with psycopg.connect(gateway.dsn(application_name=app), autocommit=True) as c:
        assert c.info.parameter_status("application_name") == app
        assert direct.execute("select count(*) from pg_stat_activity where application_name = %s", (app,)).fetchone()[0] == 1
        c.execute("SET application_name = 'pgjit-renamed'")
        assert c.info.parameter_status("application_name") == "pgjit-renamed"
        c.execute("SET TimeZone = 'Asia/Tokyo'")
        assert c.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert c.execute("select now()").fetchone()[0].utcoffset() == timedelta(hours=9)
        assert c.info.parameter_status("server_version")
        assert c.info.parameter_status("integer_datetimes") == "on"
        # A change inside a rolled-back transaction is reported back too.
        c.execute("BEGIN; SET LOCAL application_name = 'inside'")
        assert c.info.parameter_status("application_name") == "inside"
        c.execute("ROLLBACK")
        assert c.info.parameter_status("application_name") == "pgjit-renamed"


def test_startup_options_are_forwarded(gateway):
    with psycopg.connect(gateway.dsn(options="-c statement_timeout=4321 -c search_path=pg_catalog,public")) as c:
        assert c.execute("show statement_timeout").fetchone() == ("4321ms",)
        assert c.execute("show search_path").fetchone() == ("pg_catalog,public",)


def test_sslmode_prefer_falls_back_to_plain(gateway):
    with psycopg.connect(gateway.dsn(sslmode="prefer")) as c:
        assert c.execute("select 1").fetchone() == (1,)
        assert c.pgconn.ssl_in_use is False


# ------------------------------------------------------ prepared statements


def test_prepared_statements(conn):
    q = "select %s::int * 2 /* pgjit-prepare-probe */"
    for i in range(4):
        assert conn.execute(q, (i,), prepare=True).fetchone() == (2 * i,)
    names = conn.execute(
        "select name from pg_prepared_statements where statement like %s and not from_sql",
        ("%pgjit-prepare-probe%",),
    ).fetchall()
    assert len(names) == 1
    # The default threshold prepares a query after 5 executions.
    q2 = "select %s::text || 'x' /* pgjit-threshold-probe */"
    for i in range(7):
        assert conn.execute(q2, (str(i),)).fetchone() == (f"{i}x",)
    assert conn.execute(
        "select count(*) from pg_prepared_statements where statement like %s", ("%pgjit-threshold-probe%",)
    ).fetchone() == (1,)
    # SQL-level PREPARE/EXECUTE works too.
    conn.execute("PREPARE pgjit_sqlprep (int) AS select $1 + 100")
    assert conn.execute("EXECUTE pgjit_sqlprep (5)").fetchone() == (105,)
    conn.execute("DEALLOCATE pgjit_sqlprep")


def test_prepare_after_deallocate_all(conn):
    q = "select %s::int + 1 /* pgjit-dealloc */"
    assert conn.execute(q, (1,), prepare=True).fetchone() == (2,)
    conn.execute("DEALLOCATE ALL")
    # psycopg notices DEALLOCATE ALL and prepares again.
    assert conn.execute(q, (2,), prepare=True).fetchone() == (3,)


# ------------------------------------------------------------------ cancel


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
def test_cancel_from_another_thread(gateway, direct, how, sslmode):
    app = unique("pscancel")
    with psycopg.connect(gateway.dsn(application_name=app, sslmode=sslmode), autocommit=True) as c:
        cancelled_at: list[float] = []

        def canceller() -> None:
            if wait_for(lambda: active_sleepers(direct, app) == 1, timeout=10):
                time.sleep(0.5)
                cancelled_at.append(time.monotonic())
                getattr(c, how)()

        th = threading.Thread(target=canceller, daemon=True)
        th.start()
        with pytest.raises(errors.QueryCanceled) as ei:
            c.execute("select pg_sleep(30)")
        done = time.monotonic()
        th.join(10)
        assert cancelled_at, "pg_sleep never started upstream"
        assert done - cancelled_at[0] < 2.0
        assert "canceling statement due to user request" in str(ei.value)
        assert c.execute("SELECT 1").fetchone() == (1,)
        assert active_sleepers(direct, app) == 0


def test_cancel_inside_transaction_then_rollback(gateway, direct):
    app = unique("pscanceltx")
    with psycopg.connect(gateway.dsn(application_name=app)) as c:
        c.execute("select 1")
        th = threading.Thread(
            target=lambda: wait_for(lambda: active_sleepers(direct, app) == 1, timeout=10) and c.cancel(), daemon=True
        )
        th.start()
        with pytest.raises(errors.QueryCanceled):
            c.execute("select pg_sleep(30)")
        th.join(10)
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        c.rollback()
        assert c.execute("select 2").fetchone() == (2,)


# ------------------------------------------------------------- concurrency


def test_many_concurrent_connections(gateway):
    errors_seen: list[BaseException] = []
    results: dict[int, int] = {}

    def worker(k: int) -> None:
        try:
            with psycopg.connect(gateway.dsn(), autocommit=True) as c:
                s = 0
                for i in range(50):
                    s += c.execute("select %s::int + %s::int", (k, i)).fetchone()[0]
                results[k] = s
        except BaseException as e:  # reported below
            errors_seen.append(e)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors_seen, errors_seen
    assert results == {k: 50 * k + sum(range(50)) for k in range(10)}


# ------------------------------------------------- gateway session accounting


def _libpq_extended_copy_in(pgconn, table: str) -> None:
    """COPY FROM STDIN the way libpq does it for PQexecParams: Parse, Bind,
    Describe, Execute, Sync; then CopyData, CopyDone and a second Sync. (The
    server ignores the first Sync while in copy-in mode, so the exchange ends
    with ONE ReadyForQuery for TWO Syncs.) Leaves the connection idle."""
    from psycopg import pq

    assert pgconn.status == pq.ConnStatus.OK, pgconn.error_message
    pgconn.send_query_params(f"COPY {table} FROM STDIN".encode(), None)
    res = pgconn.get_result()
    assert res is not None and res.status == pq.ExecStatus.COPY_IN, res and res.error_message
    assert pgconn.put_copy_data(b"1\n2\n3\n") == 1
    assert pgconn.put_copy_end() == 1
    res = pgconn.get_result()
    assert res is not None and res.status == pq.ExecStatus.COMMAND_OK, res and res.error_message
    assert res.command_status == b"COPY 3"
    assert pgconn.get_result() is None
    # The session is idle again and works.
    res = pgconn.exec_(b"select 42")
    assert res.status == pq.ExecStatus.TUPLES_OK and res.get_value(0, 0) == b"42"
    assert pgconn.transaction_status == pq.TransactionStatus.IDLE


def test_extended_protocol_copy_through_libpq(gateway, direct, new_table):
    from psycopg import pq

    t = new_table("a int")
    pgconn = pq.PGconn.connect(gateway.dsn().encode())
    try:
        _libpq_extended_copy_in(pgconn, t)
    finally:
        pgconn.finish()
    assert [r[0] for r in direct.execute(f"select a from {t} order by a")] == [1, 2, 3]


@pytest.mark.parametrize("copy_protocol", ["simple", "extended"])
def test_idle_session_after_copy_does_not_hold_up_shutdown(make_gateway, direct, new_table, copy_protocol):
    """GATEWAY BUG (the "extended" case fails): an idle session in which
    libpq once ran COPY FROM STDIN through the extended protocol is never
    seen as idle again, so SIGTERM waits the whole shutdown_grace for it.

    session.py counts each client Sync as a ReadyForQuery to come (rfq_sent)
    and each ReadyForQuery relayed (rfq_received), and Session.idle needs the
    two equal. But PostgreSQL ignores Sync (and Flush) while in copy-in mode;
    libpq sends one Sync right after Execute and another after CopyDone, and
    the server answers the pair with a single ReadyForQuery. From then on
    rfq_sent == rfq_received + 1 for the rest of the session, Gateway._drain
    waits for it until the grace period runs out, and Session._close sends a
    needless CancelRequest upstream. The "simple" case is the control."""
    from psycopg import pq

    gw = make_gateway(timeouts={"shutdown_grace": 10})
    t = new_table("a int")
    pgconn = pq.PGconn.connect(gw.dsn().encode())
    try:
        if copy_protocol == "simple":
            res = pgconn.exec_(f"COPY {t} FROM STDIN".encode())
            assert res.status == pq.ExecStatus.COPY_IN
            assert pgconn.put_copy_data(b"1\n2\n3\n") == 1
            assert pgconn.put_copy_end() == 1
            assert pgconn.get_result().status == pq.ExecStatus.COMMAND_OK
            assert pgconn.get_result() is None
        else:
            _libpq_extended_copy_in(pgconn, t)
        assert pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 3
        sent = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        try:
            rc = gw.proc.wait(timeout=4)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"with only an idle session open (after a {copy_protocol}-protocol COPY FROM STDIN), the gateway "
                f"was still draining {time.monotonic() - sent:.1f} s after SIGTERM (shutdown_grace is 10 s): "
                "it does not see the session as idle"
            )
        assert rc == 0
    finally:
        pgconn.finish()
