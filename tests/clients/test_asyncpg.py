"""asyncpg through the gateway: prepared statements, COPY, type codecs,
transactions, cancellation by timeout, executemany, cursors, LISTEN and a pool.

asyncpg speaks only the extended protocol (and binary formats), with many
messages pipelined before one Sync. Each test runs its own event loop with a
hard time bound; writes are checked on the real database through ``direct``.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from ipaddress import IPv4Network, ip_address

import asyncpg
import pytest

from ._helpers import unique

pytestmark = [pytest.mark.pg, pytest.mark.clients]


def arun(coro, timeout: float = 60):
    """Run one coroutine in a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(gateway, **kw) -> asyncpg.Connection:
    return await asyncpg.connect(gateway.url(), timeout=10, **kw)


# ----------------------------------------------------- prepared statements


def test_prepared_statements(gateway):
    async def main():
        conn = await connect(gateway)
        try:
            stmt = await conn.prepare("select $1::int + $2::int as s, $3::text || '!' as t /* pgjit-asyncpg-prep */")
            assert [p.name for p in stmt.get_parameters()] == ["int4", "int4", "text"]
            assert [a.name for a in stmt.get_attributes()] == ["s", "t"]
            for i in range(10):
                row = await stmt.fetchrow(i, 1, f"x{i}")
                assert (row["s"], row["t"]) == (i + 1, f"x{i}!")
            assert await stmt.fetchval(40, 2, "") == 42
            rows = await stmt.fetch(1, 1, "a")
            assert [tuple(r) for r in rows] == [(2, "a!")]
            # It is a named statement on the server.
            n = await conn.fetchval(
                "select count(*) from pg_prepared_statements where statement like $1 and not from_sql", "%pgjit-asyncpg-prep%"
            )
            assert n == 1
            # The statement cache re-uses one prepared statement for repeated queries.
            for i in range(20):
                assert await conn.fetchval("select $1::int * 3 /* pgjit-cached */", i) == 3 * i
            assert await conn.fetchval("select count(*) from pg_prepared_statements where statement like $1", "%pgjit-cached%") == 1
            # Errors at prepare time and at execute time.
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.prepare("select * from pgjit_no_such_table")
            div = await conn.prepare("select 10 / $1::int")
            assert await div.fetchval(5) == 2
            with pytest.raises(asyncpg.DivisionByZeroError) as ei:
                await div.fetchval(0)
            assert ei.value.sqlstate == "22012"
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    arun(main())


# -------------------------------------------------------------------- COPY


def test_copy_records_to_table(gateway, direct, new_table):
    t = new_table("id int, name text, at timestamptz, amount numeric(12,2), tags text[], payload bytea")
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    records = [
        (i, f"name {i}\t\n\\", base + timedelta(minutes=i), Decimal(i) / 4, [f"t{i}", None], bytes([i % 256]) * 3)
        for i in range(5000)
    ]

    async def main():
        conn = await connect(gateway)
        try:
            res = await conn.copy_records_to_table(t, records=records, columns=["id", "name", "at", "amount", "tags", "payload"])
            assert res == "COPY 5000"
        finally:
            await conn.close()

    arun(main())
    real = direct.execute(f"select id, name, at, amount, tags, payload from {t} order by id").fetchall()
    assert real == [(i, n, a, amt.quantize(Decimal("0.01")), tags, p) for i, n, a, amt, tags, p in records]


def test_copy_from_query_and_to_table(gateway, direct, new_table):
    src = new_table("id int, s text")
    dst = new_table("id int, s text")
    direct.execute(f"insert into {src} select i, 'ü' || i from generate_series(1, 4000) i")
    with direct.cursor().copy(f"COPY (select * from {src} where id > 10 order by id) TO STDOUT (FORMAT CSV)") as cp:
        expected = b"".join(bytes(b) for b in cp)

    async def main():
        conn = await connect(gateway)
        try:
            out = io.BytesIO()
            res = await conn.copy_from_query(f"select * from {src} where id > $1 order by id", 10, output=out, format="csv")
            assert res == "COPY 3990"
            assert out.getvalue() == expected
            # A big single row streams out.
            big = io.BytesIO()
            await conn.copy_from_query("select repeat('q', 1200000)", output=big)
            assert big.getvalue() == b"q" * 1200000 + b"\n"
            # And back in: copy_to_table from a file-like source.
            res = await conn.copy_to_table(dst, source=io.BytesIO(out.getvalue()), format="csv")
            assert res == "COPY 3990"
            # A whole table out, in binary.
            raw = io.BytesIO()
            await conn.copy_from_table(src, output=raw, format="binary")
            assert raw.getvalue().startswith(b"PGCOPY\n\xff\r\n\x00")
        finally:
            await conn.close()

    arun(main())
    diff = direct.execute(
        f"select count(*) from ((select * from {src} where id > 10 except all table {dst}) "
        f"union all (table {dst} except all select * from {src} where id > 10)) d"
    ).fetchone()[0]
    assert diff == 0


def test_copy_bad_records_leave_connection_usable(gateway, direct, new_table):
    t = new_table("id int not null")

    async def main():
        conn = await connect(gateway)
        try:
            with pytest.raises(asyncpg.NotNullViolationError):
                await conn.copy_records_to_table(t, records=[(1,), (None,), (3,)])
            assert await conn.fetchval("select 5") == 5
        finally:
            await conn.close()

    arun(main())
    assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 0


# ------------------------------------------------------------- type codecs


def test_type_codecs(gateway, direct, new_table):
    enum_name = unique("mood")
    direct.execute(f"create type {enum_name} as enum ('sad', 'ok', 'happy')")
    try:
        t = new_table(
            f"j jsonb, n numeric, ts timestamptz, u uuid, ia int[], ta text[], b bytea, iv interval, "
            f"net inet, r int4range, e {enum_name}, ea {enum_name}[]"
        )
        values = (
            {"k": [1, 2.5, None, "ü"], "nested": {"t": True}},
            Decimal("-98765432109876543210.0123456789"),
            datetime(2024, 2, 29, 12, 34, 56, 789012, tzinfo=timezone.utc),
            uuid.UUID("0b7d8e3c-62ec-4ea5-a7ad-1b5f2d3d4c5e"),
            [[1, 2, 3], [4, None, 6]],
            ["a", "", None, 'quote"d', "comma,brace{}"],
            b"\x00\x01\x02\xff" * 1000,
            timedelta(days=-1, seconds=3600, microseconds=5),
            ip_address("192.0.2.17"),
            asyncpg.Range(1, 10),
            "happy",
            ["sad", "ok"],
        )

        async def main():
            conn = await connect(gateway)
            try:
                await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
                await conn.execute(
                    f"insert into {t} values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)", *values
                )
                row = await conn.fetchrow(f"select * from {t}")
                assert tuple(row) == values
                # Literals of each type decoded in binary.
                assert await conn.fetchval("select '{\"a\": [1, 2]}'::jsonb") == {"a": [1, 2]}
                assert (await conn.fetchval("select 'NaN'::numeric")).is_nan()
                assert await conn.fetchval("select '2000-01-01 00:00:00+05'::timestamptz") == datetime(1999, 12, 31, 19, tzinfo=timezone.utc)
                assert await conn.fetchval("select '10.0.0.0/8'::cidr") == IPv4Network("10.0.0.0/8")
                rec = await conn.fetchval("select row(1, 'two', null)")
                assert tuple(rec) == (1, "two", None)
                assert await conn.fetchval("select array[[true, false], [null, true]]") == [[True, False], [None, True]]
            finally:
                await conn.close()

        arun(main())
        real = direct.execute(f"select j, n, ts, u, ia, ta, b, iv, host(net), e::text from {t}").fetchone()
        assert real == (values[0], values[1], values[2], values[3], values[4], values[5], values[6], values[7], "192.0.2.17", "happy")
    finally:
        direct.execute(f"drop table if exists {t}")
        direct.execute(f"drop type if exists {enum_name}")


# ------------------------------------------------------------ transactions


def test_transactions(gateway, direct, new_table):
    t = new_table("a int primary key")

    async def main():
        conn = await connect(gateway)
        try:
            async with conn.transaction():
                await conn.execute(f"insert into {t} values (1)")
                try:
                    async with conn.transaction():  # savepoint
                        await conn.execute(f"insert into {t} values (2)")
                        await conn.execute(f"insert into {t} values (1)")
                except asyncpg.UniqueViolationError:
                    pass
                await conn.execute(f"insert into {t} values (3)")
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute(f"insert into {t} values (4)")
                    raise RuntimeError("roll back")
            assert not conn.is_in_transaction()
            async with conn.transaction(isolation="serializable", readonly=True):
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await conn.execute(f"insert into {t} values (5)")
            assert not conn.is_in_transaction()
            # Manual control.
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"insert into {t} values (6)")
            assert conn.is_in_transaction()
            await tr.rollback()
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"insert into {t} values (7)")
            await tr.commit()
        finally:
            await conn.close()

    arun(main())
    assert [r[0] for r in direct.execute(f"select a from {t} order by a")] == [1, 3, 7]


# ------------------------------------------------------------ cancellation


@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
def test_timeout_cancels_query_and_connection_recovers(gateway, direct, sslmode):
    app = unique("apgcancel")

    async def main():
        conn = await asyncpg.connect(gateway.url().replace("sslmode=disable", f"sslmode={sslmode}"), timeout=10, server_settings={"application_name": app})
        try:
            started = time.monotonic()
            with pytest.raises((asyncio.TimeoutError, asyncpg.QueryCanceledError)):
                await conn.fetch("select pg_sleep(30)", timeout=1)
            assert time.monotonic() - started < 3.0  # 1 s timeout + the cancel round trip
            assert await conn.fetchval("select 1") == 1
            assert not conn.is_in_transaction()
            # Once more, with a prepared statement, inside a transaction.
            async with conn.transaction():
                stmt = await conn.prepare("select pg_sleep($1)")
                with pytest.raises((asyncio.TimeoutError, asyncpg.QueryCanceledError)):
                    await stmt.fetch(30, timeout=0.5)
            assert await conn.fetchval("select 2") == 2
        finally:
            await conn.close()

    arun(main())
    sleepers = direct.execute(
        "select count(*) from pg_stat_activity where application_name = %s and state = 'active' and query like '%%pg_sleep%%'",
        (app,),
    ).fetchone()[0]
    assert sleepers == 0


# -------------------------------------------------------------- executemany


def test_executemany(gateway, direct, new_table):
    t = new_table("a int primary key, b text")

    async def main():
        conn = await connect(gateway)
        try:
            await conn.executemany(f"insert into {t} values ($1, $2)", [(i, f"v{i}") for i in range(1000)])
            # executemany is atomic: a failure in the middle inserts nothing.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.executemany(f"insert into {t} values ($1, $2)", [(2000 + i, "x") for i in range(50)] + [(5, "dup")] + [(3000, "y")])
            assert await conn.fetchval(f"select count(*) from {t}") == 1000
        finally:
            await conn.close()

    arun(main())
    assert direct.execute(f"select count(*), sum(a), max(b) filter (where a = 999) from {t}").fetchone() == (1000, sum(range(1000)), "v999")


# ------------------------------------------------------------------ cursors


def test_cursor_iteration_in_transaction(gateway):
    async def main():
        conn = await connect(gateway)
        try:
            async with conn.transaction():
                total = 0
                count = 0
                async for rec in conn.cursor("select i, repeat('c', i % 40) from generate_series(1, 3000) i", prefetch=128):
                    total += rec[0]
                    count += 1
                assert (count, total) == (3000, 3000 * 3001 // 2)
                cur = await conn.cursor("select generate_series(1, 100) where $1", True)
                assert [r[0] for r in await cur.fetch(5)] == [1, 2, 3, 4, 5]
                assert await cur.forward(10) == 10
                assert (await cur.fetchrow())[0] == 16
            # A cursor outside a transaction is refused by asyncpg itself.
            with pytest.raises(asyncpg.NoActiveSQLTransactionError):
                await conn.cursor("select 1")
        finally:
            await conn.close()

    arun(main())


# ------------------------------------------------------ LISTEN and notices


def test_listen_notify_and_log_messages(gateway):
    channel = unique("achan")

    async def main():
        listener = await connect(gateway)
        talker = await connect(gateway)
        try:
            got: asyncio.Queue = asyncio.Queue()
            def on_notify(c, pid, ch, payload):
                got.put_nowait((ch, payload))

            await listener.add_listener(channel, on_notify)
            await talker.execute(f"NOTIFY {channel}, 'one'")
            await talker.execute("select pg_notify($1, $2)", channel, "twö")
            assert await asyncio.wait_for(got.get(), 5) == (channel, "one")
            assert await asyncio.wait_for(got.get(), 5) == (channel, "twö")
            await listener.remove_listener(channel, on_notify)
            await talker.execute(f"NOTIFY {channel}, 'unheard'")
            assert await listener.fetchval("select 1") == 1
            assert got.empty()

            logs: list[tuple[str, str]] = []
            talker.add_log_listener(lambda c, msg: logs.append((msg.severity_en or msg.severity, msg.message)))
            await talker.execute("DO $$ BEGIN RAISE NOTICE 'note %', 7; RAISE WARNING 'warn'; END $$")
            for _ in range(50):  # log listeners are called soon, not synchronously
                if len(logs) >= 2:
                    break
                await asyncio.sleep(0.02)
            assert logs == [("NOTICE", "note 7"), ("WARNING", "warn")]
        finally:
            await listener.close()
            await talker.close()

    arun(main())


# --------------------------------------------------------------------- pool


def test_pool_of_five_runs_fifty_concurrent_queries(gateway):
    async def main():
        pool = await asyncpg.create_pool(gateway.url(), min_size=5, max_size=5, timeout=10)
        try:

            async def one(i: int):
                async with pool.acquire() as c:
                    async with c.transaction():
                        await c.execute("select pg_sleep(0.02)")
                        return await c.fetchrow("select $1::int * 2 as v, pg_backend_pid() as pid", i)

            rows = await asyncio.gather(*(one(i) for i in range(50)))
            assert [r["v"] for r in rows] == [2 * i for i in range(50)]
            assert 1 <= len({r["pid"] for r in rows}) <= 5
            # The pool's reset query (RESET ALL, UNLISTEN *, ...) ran between uses.
            vals = await asyncio.gather(*(pool.fetchval("select $1::text", str(i)) for i in range(50)))
            assert vals == [str(i) for i in range(50)]
        finally:
            await asyncio.wait_for(pool.close(), 10)

    arun(main())


def test_error_then_connection_usable(gateway):
    async def main():
        conn = await connect(gateway)
        try:
            with pytest.raises(asyncpg.UndefinedTableError) as ei:
                await conn.fetch("select * from pgjit_no_such_table where a = $1", 1)
            assert ei.value.sqlstate == "42P01"
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await conn.execute("selec 1")
            # A multi-statement simple-protocol execute without arguments.
            await conn.execute("create temp table tt (a int); insert into tt values (1), (2)")
            assert await conn.fetchval("select sum(a) from tt") == 3
        finally:
            await conn.close()

    arun(main())
