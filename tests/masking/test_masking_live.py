"""Masking through a real gateway and PostgreSQL, with psycopg (text and
binary), asyncpg (binary) and COPY: the values of masked columns arrive
masked, oracles and computed columns are refused (42501), errors on masked
tables are scrubbed, and unmasked columns arrive exactly as PostgreSQL sent them."""

from __future__ import annotations

import asyncio
import secrets

import psycopg
import pytest

from tests.gateway_fixtures import start_gateway

SSN = [f"{100 + i:03d}-{10 + i:02d}-{1000 + i * 7:04d}" for i in range(5)]
TAG = secrets.token_hex(4)
EMAILS = [f"person{i}.{TAG}@example.org" for i in range(5)]

POLICY = """version: 1
rules:
  - name: no-ddl
    match: {kind: ["drop_*", "alter_*"]}
    action: deny
default: allow
masking:
  - name: pii
    columns: ["public.mcustomers.email", "public.mcustomers.ssn"]
    function: partial
    keep: 4
  - name: notes
    column_names: ["secret_*"]
    function: redact
  - name: cards
    columns: ["public.mparts.card"]
    function: hash
  - name: bodies
    columns: ["public.mnotes.body"]
    computed: mask
  - name: content
    detect: [email, payment_card]
    function: redact
    text: "[hidden]"
"""
CARD = "4111111111111111"


@pytest.fixture(scope="module")
def masked_gw(pg, tmp_path_factory):
    with pg.connect(dbname="appdb") as conn:
        conn.execute("DROP TABLE IF EXISTS mcustomers CASCADE")
        conn.execute("CREATE TABLE mcustomers (id int PRIMARY KEY, name text, email text UNIQUE, ssn text, "
                     "secret_note varchar(40), n int)")
        for i in range(5):
            conn.execute("INSERT INTO mcustomers VALUES (%s, %s, %s, %s, %s, %s)",
                         (i, f"name{i}", EMAILS[i], SSN[i], f"note-{TAG}-{i}", i * 10))
        conn.execute("GRANT ALL ON mcustomers TO app")
        conn.execute("CREATE OR REPLACE VIEW mcontacts AS SELECT id, email FROM mcustomers")
        conn.execute("GRANT ALL ON mcontacts TO app")
        conn.execute("DROP TABLE IF EXISTS mparts, mnotes CASCADE")
        conn.execute("CREATE TABLE mparts (id int, card text) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE mparts_low PARTITION OF mparts FOR VALUES FROM (0) TO (100)")
        conn.execute("INSERT INTO mparts VALUES (1, '5500-0000-0000-0004'), (2, '5500-0000-0000-0004'), (3, '4000-0000-0000-0002')")
        conn.execute("CREATE TABLE mnotes (id int, body text, other text)")
        conn.execute("INSERT INTO mnotes VALUES (1, 'body-one', %s), (2, 'body-two', %s)",
                     (f"mail me at x.{TAG}@corp.example", f"card {CARD} thanks"))
        conn.execute("GRANT ALL ON mparts, mparts_low, mnotes TO app")
    base = tmp_path_factory.mktemp("masking")
    policy = base / "policy.yaml"
    policy.write_text(POLICY)
    gw = start_gateway(base, pg, targets={"appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb",
                                                    "user": "app", "password": "apppass", "policy": str(policy)}})
    yield gw
    gw.stop()
    with pg.connect(dbname="appdb") as conn:
        conn.execute("DROP TABLE IF EXISTS mcustomers, mparts, mnotes CASCADE")


def _clear(text: str) -> bool:
    return any(v in text for v in SSN + EMAILS) or TAG in text.replace(f".{TAG}@", "")


def test_plain_columns_are_masked_text_and_binary(masked_gw):
    for binary in (False, True):
        with psycopg.connect(masked_gw.dsn(user="app")) as conn:
            rows = conn.cursor(binary=binary).execute("SELECT id, name, email, ssn, secret_note, n FROM mcustomers ORDER BY id").fetchall()
        assert [r[0] for r in rows] == list(range(5))
        assert [r[1] for r in rows] == [f"name{i}" for i in range(5)]
        assert [r[5] for r in rows] == [i * 10 for i in range(5)]
        for i, r in enumerate(rows):
            assert r[2] != EMAILS[i] and r[2].endswith(EMAILS[i][-4:]) and set(r[2][:-4]) == {"*"}
            assert r[3] == "*******" + SSN[i][-4:]
            assert r[4] == "****"


def test_star_view_subquery_cte_cursor_prepared(masked_gw):
    with psycopg.connect(masked_gw.dsn(user="app"), autocommit=True) as conn:
        for sql in ("SELECT * FROM mcustomers", "SELECT * FROM mcontacts", "SELECT x FROM (SELECT email AS x FROM mcustomers) s",
                    "WITH a AS (SELECT email e FROM mcustomers), b(z) AS (SELECT e FROM a) SELECT z FROM b",
                    "SELECT email FROM mcustomers UNION ALL SELECT 'x'", "SELECT (SELECT email FROM mcustomers LIMIT 1)"):
            rows = conn.execute(sql).fetchall()
            assert rows and not _clear(repr(rows)), sql
        with conn.transaction():
            conn.execute("DECLARE k CURSOR FOR SELECT ssn, email FROM mcustomers")
            rows = conn.execute("FETCH 3 FROM k").fetchall()
        assert len(rows) == 3 and not _clear(repr(rows))
        conn.execute("PREPARE p AS SELECT email FROM mcustomers WHERE id = $1")
        rows = conn.execute("EXECUTE p(1)").fetchall()
        assert rows and not _clear(repr(rows))
        rows = conn.execute("SELECT email FROM mcustomers WHERE id = %s", (2,)).fetchall()
        assert rows[0][0].endswith(EMAILS[2][-4:]) and rows[0][0] != EMAILS[2]


@pytest.mark.parametrize("sql", [
    "SELECT id FROM mcustomers WHERE ssn LIKE '1%'", "SELECT lower(email) FROM mcustomers", "SELECT c FROM mcustomers c",
    "SELECT row_to_json(c) FROM mcustomers c", "SELECT id FROM mcustomers ORDER BY email", "SELECT ssn::int FROM mcustomers",
    "SELECT email FROM mcustomers UNION SELECT 'x'", "SELECT count(*) FILTER (WHERE ssn > '2') FROM mcustomers",
    "SELECT * FROM pg_stats", "COPY mcustomers TO STDOUT (FORMAT binary)", "SELECT id FROM mcontacts WHERE email LIKE 'p%'",
    "SELECT upper(secret_note) FROM mcustomers",
    # dynamic SQL (the policy here allows it; masking cannot follow it)
    "SELECT query_to_xml('SELECT email FROM mcustomers', true, false, '')",
    "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM mcustomers LIMIT 1); END $$",
])
def test_oracles_and_computed_are_refused(masked_gw, sql):
    with psycopg.connect(masked_gw.dsn(user="app"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="masking rule"):
            conn.execute(sql)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on


def test_copy_text_and_csv_are_masked(masked_gw):
    with psycopg.connect(masked_gw.dsn(user="app")) as conn:
        for sql in ("COPY mcustomers TO STDOUT", "COPY mcustomers TO STDOUT (FORMAT csv, HEADER)",
                    "COPY (SELECT ssn, name FROM mcustomers) TO STDOUT (FORMAT csv)"):
            data = b""
            with conn.cursor().copy(sql) as copy:
                for chunk in copy:
                    data += bytes(chunk)
            text = data.decode()
            assert not _clear(text), (sql, text)
            assert "name3" in text and SSN[3][-4:] in text


def test_errors_on_masked_tables_are_scrubbed(masked_gw):
    with psycopg.connect(masked_gw.dsn(user="app"), autocommit=True) as conn:
        # A NOT NULL violation's DETAIL is the failing row, masked values and all.
        with pytest.raises(psycopg.errors.NotNullViolation) as e:
            conn.execute("UPDATE mcustomers SET id = NULL WHERE id = 1")
        diag = e.value.diag
        assert not _clear(str(e.value) + (diag.message_detail or "") + (diag.context or ""))
        assert e.value.sqlstate == "23502" and "masked columns" in (diag.message_primary or "")
        # Writing a masked column is refused: a unique index would answer "already exists".
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="writing masked column"):
            conn.execute("INSERT INTO mcustomers (id, email) VALUES (99, %s)", (EMAILS[0],))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="writing masked column"):
            conn.execute("UPDATE mcustomers SET ssn = '1' WHERE id = 1")
        # Statements on tables without masked columns keep their errors.
        with pytest.raises(psycopg.errors.DivisionByZero, match="division by zero"):
            conn.execute("SELECT 1 / 0")


def test_asyncpg_binary(masked_gw):
    asyncpg = pytest.importorskip("asyncpg") if False else __import__("asyncpg")

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=masked_gw.port, user="app", password="x", database="appdb", ssl=False)
        try:
            rows = await conn.fetch("SELECT id, email, ssn, secret_note FROM mcustomers WHERE id = $1", 3)
            stmt = await conn.prepare("SELECT email, n FROM mcustomers ORDER BY id")
            rows2 = await stmt.fetch()
            rows3 = await stmt.fetch()
            return rows, rows2, rows3
        finally:
            await conn.close()

    rows, rows2, rows3 = asyncio.run(run())
    assert rows[0]["id"] == 3 and rows[0]["email"].endswith(EMAILS[3][-4:]) and rows[0]["email"] != EMAILS[3]
    assert rows[0]["ssn"] == "*******" + SSN[3][-4:] and rows[0]["secret_note"] == "****"
    assert [r["n"] for r in rows2] == [i * 10 for i in range(5)] and not _clear(repr(rows2) + repr(rows3))


def test_unmasked_columns_are_byte_for_byte(masked_gw, pg):
    sql = "SELECT id, name, n, name || '!' AS x FROM mcustomers ORDER BY id"
    for binary in (False, True):
        with psycopg.connect(masked_gw.dsn(user="app")) as conn:
            cur = conn.cursor(binary=binary)
            via = cur.execute(sql).fetchall(), [(d.name, d.type_code) for d in cur.description]
        with psycopg.connect(f"host=127.0.0.1 port={pg.port} dbname=appdb user=app password=apppass") as conn:
            cur = conn.cursor(binary=binary)
            direct = cur.execute(sql).fetchall(), [(d.name, d.type_code) for d in cur.description]
        assert via == direct


def test_partition_keyed_hash_computed_mask_and_detectors(masked_gw):
    with psycopg.connect(masked_gw.dsn(user="app"), autocommit=True) as conn:
        # A partition holds its parent's values: masked by the parent's rule; the
        # keyed hash is deterministic (equal values, equal hashes).
        for table in ("mparts", "mparts_low"):
            rows = conn.execute(f"SELECT id, card FROM {table} ORDER BY id").fetchall()
            assert [r[0] for r in rows] == [1, 2, 3]
            assert rows[0][1] == rows[1][1] != rows[2][1] and rows[0][1].startswith("h_")
            assert "5500" not in repr(rows)
        # computed: mask — a computed column is masked whole instead of refused.
        rows = conn.execute("SELECT id, upper(body), body || '!' FROM mnotes ORDER BY id").fetchall()
        assert rows == [(1, "****", "****"), (2, "****", "****")]
        # Content detectors, in a column no rule names, in text and binary.
        for binary in (False, True):
            rows = conn.cursor(binary=binary).execute("SELECT other FROM mnotes ORDER BY id").fetchall()
            assert rows == [("mail me at [hidden]",), ("card [hidden] thanks",)]
        # Oracles on a computed:mask column are still refused.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT id FROM mnotes WHERE body LIKE 'body%'")


CONTROL = [
    "SELECT id, name, n FROM mcustomers ORDER BY id",
    "SELECT name, count(*), sum(n) FROM mcustomers GROUP BY name ORDER BY name",
    "SELECT c.id, c.name, p.id FROM mcustomers c JOIN mparts p ON p.id = c.id ORDER BY 1",
    "SELECT id, upper(name), n * 2, n::text || 'x' FROM mcustomers WHERE n > 10 ORDER BY id",
    "SELECT * FROM mnotes WHERE id = 0",
    "SELECT id FROM mparts ORDER BY id",
    "WITH t AS (SELECT id, name FROM mcustomers) SELECT * FROM t ORDER BY id DESC LIMIT 3",
    "SELECT 1, 'x'::text, now()::date = now()::date, NULL::int",
]


def test_control_results_byte_for_byte(masked_gw, pg):
    """Queries on columns nothing masks: the RowDescription, DataRow and
    CommandComplete frames the client gets through the masked gateway are the
    very bytes it gets from PostgreSQL directly (text and binary)."""
    from tests.masking.leakcheck import RecordingProxy, backend_messages

    def frames(port: int, user: str, password: str, binary: bool) -> list[tuple[bytes, bytes]]:
        proxy = RecordingProxy(port)
        try:
            dsn = f"host=127.0.0.1 port={proxy.port} dbname=appdb user={user} password={password} sslmode=disable"
            with psycopg.connect(dsn) as conn:
                snap = proxy.snapshot()
                for sql in CONTROL:
                    conn.cursor(binary=binary).execute(sql).fetchall()
                (cid, stream, start), = proxy.since(snap)
        finally:
            proxy.close()
        return [(msg.type, msg.body) for msg in backend_messages(stream[start:]) if msg.type in (b"T", b"D", b"C")]

    for binary in (False, True):
        via = frames(masked_gw.port, "app", "x", binary)
        direct = frames(pg.port, "app", "apppass", binary)
        assert len(via) > 2 * len(CONTROL)
        assert via == direct
