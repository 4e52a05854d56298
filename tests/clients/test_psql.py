"""psql through the gateway: queries, meta-commands, \\copy, cancel, scripts.

Every psql run uses ``-X`` (no ~/.psqlrc) and a bounded ``timeout``. Results
that a command writes are checked on the real database through ``direct``.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time

import pytest

from ._helpers import direct_env, unique, wait_for

pytestmark = [pytest.mark.pg, pytest.mark.clients]


def run_psql(psql: str, env: dict[str, str], *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [psql, "-X", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(cp: subprocess.CompletedProcess) -> str:
    assert cp.returncode == 0, f"psql exited {cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"
    return cp.stdout


# ----------------------------------------------------------------- queries


def test_simple_queries(psql_bin, gateway):
    env = gateway.env()
    assert ok(run_psql(psql_bin, env, "-At", "-c", "select 1 + 1")).strip() == "2"
    out = ok(run_psql(psql_bin, env, "-At", "-F", ",", "-c", "select current_user, current_database(), 'héllo'::text"))
    assert out.strip() == "app,appdb,héllo"
    out = ok(run_psql(psql_bin, env, "-At", "-c", "select count(*) from generate_series(1, 100000)"))
    assert out.strip() == "100000"
    out = ok(run_psql(psql_bin, env, "-At", "-c", "select count(*) > 0 from public.customers"))
    assert out.strip() == "t"


def test_connect_with_url(psql_bin, gateway):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    out = ok(run_psql(psql_bin, env, "-At", "-d", gateway.url(), "-c", "select current_database()"))
    assert out.strip() == "appdb"


def test_reconnect_within_a_script(psql_bin, gateway):
    # \\c opens a new session through the gateway (new BackendKeyData); the
    # old one is closed.
    script = "select pg_backend_pid() as p1 \\gset\n\\c appdb\nselect pg_backend_pid() <> :p1, current_database();\n"
    out = ok(run_psql(psql_bin, gateway.env(), "-At", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", input=script))
    assert out.strip() == "t|appdb"


META_COMMANDS = [r"\d", r"\dt", r"\d customers", r"\d orders", r"\df", r"\l", r"\dn", r"\du", r"\di", r"\dT", r"\dx", r"\dv"]


@pytest.mark.parametrize("command", META_COMMANDS)
def test_meta_command_same_as_direct(psql_bin, gateway, pg, command):
    through = run_psql(psql_bin, gateway.env(), "-c", command)
    straight = run_psql(psql_bin, direct_env(pg), "-c", command)
    assert through.returncode == straight.returncode == 0, (through.stderr, straight.stderr)
    assert through.stdout == straight.stdout
    assert through.stderr == straight.stderr
    if command == r"\d customers":
        assert 'Table "public.customers"' in through.stdout
    if command == r"\l":
        assert "appdb" in through.stdout
    if command == r"\du":
        assert "app" in through.stdout


def test_gdesc_same_as_direct(psql_bin, gateway, pg):
    # \gdesc describes a statement through the extended protocol (Parse/Describe).
    script = "select 1::int as a, 'x'::text as b, now() as c, null::numeric(10,2) as d \\gdesc\n"
    through = ok(run_psql(psql_bin, gateway.env(), "-f", "-", input=script))
    straight = ok(run_psql(psql_bin, direct_env(pg), "-f", "-", input=script))
    assert through == straight
    assert "numeric(10,2)" in through


# ------------------------------------------------------------------- \copy


def test_copy_from_stdin_in_script(psql_bin, gateway, direct, new_table, tmp_path):
    t = new_table("id int, name text")
    script = tmp_path / "copy.sql"
    script.write_text(f"\\copy {t} from STDIN\n1\tone\n2\ttwo\n3\t\\N\n4\ttab\\there\n\\.\nselect count(*) from {t};\n")
    out = ok(run_psql(psql_bin, gateway.env(), "-At", "-v", "ON_ERROR_STOP=1", "-f", str(script)))
    assert out.strip().splitlines()[-1] == "4"
    rows = direct.execute(f"select id, name from {t} order by id").fetchall()
    assert rows == [(1, "one"), (2, "two"), (3, None), (4, "tab\there")]


def test_copy_from_pstdin_csv(psql_bin, gateway, direct, new_table):
    t = new_table("id int, name text, note text")
    data = "".join(f'{i},name {i},"quoted, ""comma"" {i}"\n' for i in range(1, 2001))
    cp = run_psql(psql_bin, gateway.env(), "-v", "ON_ERROR_STOP=1", "-c", f"\\copy {t} from pstdin with (format csv)", input=data)
    ok(cp)
    assert "COPY 2000" in cp.stdout
    n, total, note = direct.execute(f"select count(*), sum(id), max(note) filter (where id = 7) from {t}").fetchone()
    assert (n, total, note) == (2000, 2000 * 2001 // 2, 'quoted, "comma" 7')


def test_copy_to_stdout(psql_bin, gateway):
    out = ok(run_psql(psql_bin, gateway.env(), "-c", "\\copy (select i, 'r' || i, i % 3 = 0 from generate_series(1, 5) i) to STDOUT"))
    assert out == "".join(f"{i}\tr{i}\t{'t' if i % 3 == 0 else 'f'}\n" for i in range(1, 6))


def test_copy_to_stdout_large_matches_direct(psql_bin, gateway, pg):
    # 50 000 rows, then one row far larger than the relay's streaming threshold.
    for q in (
        "select i, md5(i::text), repeat('x', i % 200) from generate_series(1, 50000) i",
        "select 1, repeat('y', 1000000), 2",
    ):
        cmd = f"\\copy ({q}) to STDOUT"
        through = ok(run_psql(psql_bin, gateway.env(), "-c", cmd))
        straight = ok(run_psql(psql_bin, direct_env(pg), "-c", cmd))
        assert len(through) == len(straight)
        assert hashlib.sha256(through.encode()).hexdigest() == hashlib.sha256(straight.encode()).hexdigest()


def test_copy_round_trip_both_ways(psql_bin, gateway, direct, new_table):
    src = new_table("id int primary key, s text, j jsonb, ts timestamptz, b bytea")
    dst = new_table("id int primary key, s text, j jsonb, ts timestamptz, b bytea")
    direct.execute(
        f"""insert into {src}
            select i, case when i % 7 = 0 then null else E'line\\nbreak\\ttab "q" ' || i || ' ünï' end,
                   jsonb_build_object('i', i, 'a', jsonb_build_array(i, 'x')),
                   timestamptz '2024-02-29 12:00:00+00' + i * interval '1 minute',
                   decode(md5(i::text), 'hex')
            from generate_series(1, 3000) i"""
    )
    for fmt in ("text", "csv"):
        direct.execute(f"truncate {dst}")
        out = ok(run_psql(psql_bin, gateway.env(), "-c", f"\\copy (select * from {src} order by id) to STDOUT with (format {fmt})"))
        ok(run_psql(psql_bin, gateway.env(), "-v", "ON_ERROR_STOP=1", "-c", f"\\copy {dst} from pstdin with (format {fmt})", input=out))
        diff = direct.execute(
            f"select count(*) from ((table {src} except table {dst}) union all (table {dst} except table {src})) d"
        ).fetchone()[0]
        assert diff == 0, fmt
        assert direct.execute(f"select count(*) from {dst}").fetchone()[0] == 3000


def test_copy_bad_data_reports_error(psql_bin, gateway, direct, new_table):
    t = new_table("id int, name text")
    cp = run_psql(psql_bin, gateway.env(), "-v", "ON_ERROR_STOP=1", "-c", f"\\copy {t} from pstdin", input="1\tok\nnot-a-number\tbad\n")
    assert cp.returncode != 0
    assert 'invalid input syntax for type integer: "not-a-number"' in cp.stderr
    assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 0


# ------------------------------------------------------------------- cancel


def test_sigint_cancels_running_query(psql_bin, gateway, direct):
    app = unique("psqlcancel")
    env = gateway.env()
    env["PGAPPNAME"] = app
    proc = subprocess.Popen(
        [psql_bin, "-X", "-c", "select pg_sleep(30)"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def running() -> bool:
            return bool(
                direct.execute(
                    "select count(*) from pg_stat_activity where application_name = %s and state = 'active' and query like %s",
                    (app, "%pg_sleep(30)%"),
                ).fetchone()[0]
            )

        assert wait_for(running, timeout=10), "pg_sleep never started upstream"
        time.sleep(1.0)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            pytest.fail("psql did not exit within 2 s of SIGINT: the cancel request did not reach the server")
        elapsed = time.monotonic() - sent
        assert elapsed < 2.0
        assert "canceling statement due to user request" in err, err
        assert proc.returncode == 1
        # Nothing is left running upstream.
        assert wait_for(lambda: not running(), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


# ------------------------------------------------------------------ scripts


def test_on_error_stop(psql_bin, gateway, direct, new_table, tmp_path):
    t = new_table("a int")
    script = tmp_path / "stop.sql"
    script.write_text(
        f"insert into {t} values (1);\nselect * from pgjit_no_such_table_xyz;\ninsert into {t} values (2);\n"
    )
    cp = run_psql(psql_bin, gateway.env(), "-v", "ON_ERROR_STOP=1", "-f", str(script))
    assert cp.returncode == 3, cp.stderr
    assert 'relation "pgjit_no_such_table_xyz" does not exist' in cp.stderr
    assert [r[0] for r in direct.execute(f"select a from {t} order by a")] == [1]

    # Without ON_ERROR_STOP psql reports the error and goes on.
    direct.execute(f"truncate {t}")
    cp = run_psql(psql_bin, gateway.env(), "-f", str(script))
    assert cp.returncode == 0
    assert 'relation "pgjit_no_such_table_xyz" does not exist' in cp.stderr
    assert [r[0] for r in direct.execute(f"select a from {t} order by a")] == [1, 2]


def test_multi_statement_command_string(psql_bin, gateway, direct, new_table):
    t = new_table("a int")
    out = ok(
        run_psql(
            psql_bin,
            gateway.env(),
            "-At",
            "-q",
            "-c",
            f"insert into {t} values (1); insert into {t} values (2); select count(*) from {t}",
        )
    )
    assert out.strip().splitlines()[-1] == "2"
    assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 2

    # A multi-statement string is one implicit transaction: an error in the
    # middle undoes the statements before it and skips the ones after it.
    cp = run_psql(psql_bin, gateway.env(), "-c", f"insert into {t} values (3); select 1/0; insert into {t} values (4)")
    assert cp.returncode == 1
    assert "division by zero" in cp.stderr
    assert [r[0] for r in direct.execute(f"select a from {t} order by a")] == [1, 2]


def test_set_variables(psql_bin, gateway, direct, new_table):
    t = new_table("a int, s text")
    script = f"""\\set n 21
\\set tbl {t}
\\set word 'it''s'
select :n * 2;
insert into :tbl values (:n, :'word');
select s from :tbl where a = :n;
select 7 as seven, 'abc' as three \\gset
\\echo seven=:seven three=:three
\\if :{{?seven}}
\\echo branch-taken
\\endif
"""
    out = ok(run_psql(psql_bin, gateway.env(), "-At", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", input=script))
    assert out.splitlines() == ["42", "it's", "seven=7 three=abc", "branch-taken"]
    assert direct.execute(f"select a, s from {t}").fetchall() == [(21, "it's")]


def test_script_transaction_rollback_leaves_no_trace(psql_bin, gateway, direct, new_table, tmp_path):
    existing = new_table("a int")
    fresh = unique("never")
    script = tmp_path / "txn.sql"
    script.write_text(
        f"""BEGIN;
create table {fresh} (a int);
insert into {fresh} values (1), (2);
insert into {existing} values (99);
select count(*) from {fresh};
ROLLBACK;
select to_regclass('{fresh}') is null;
"""
    )
    out = ok(run_psql(psql_bin, gateway.env(), "-At", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script)))
    assert out.splitlines() == ["2", "t"]
    assert direct.execute("select to_regclass(%s)", (fresh,)).fetchone()[0] is None
    assert direct.execute(f"select count(*) from {existing}").fetchone()[0] == 0


def test_script_savepoints_and_on_error_rollback(psql_bin, gateway, direct, new_table, tmp_path):
    t = new_table("a int")
    script = tmp_path / "sp.sql"
    script.write_text(
        f"""BEGIN;
insert into {t} values (1);
SAVEPOINT s1;
insert into {t} values (2);
ROLLBACK TO SAVEPOINT s1;
insert into {t} values (3);
COMMIT;
\\set ON_ERROR_ROLLBACK on
BEGIN;
insert into {t} values (4);
select 1/0;
insert into {t} values (5);
COMMIT;
"""
    )
    cp = run_psql(psql_bin, gateway.env(), "-q", "-f", str(script))
    assert cp.returncode == 0, cp.stderr
    assert "division by zero" in cp.stderr
    assert [r[0] for r in direct.execute(f"select a from {t} order by a")] == [1, 3, 4, 5]


def test_script_error_inside_transaction_aborts_it(psql_bin, gateway, direct, new_table, tmp_path):
    t = new_table("a int")
    script = tmp_path / "abort.sql"
    script.write_text(
        f"""BEGIN;
insert into {t} values (1);
select 1/0;
insert into {t} values (2);
COMMIT;
"""
    )
    cp = run_psql(psql_bin, gateway.env(), "-q", "-f", str(script))
    assert cp.returncode == 0
    assert "current transaction is aborted, commands ignored until end of transaction block" in cp.stderr
    assert direct.execute(f"select count(*) from {t}").fetchone()[0] == 0
    # psql says ROLLBACK for the COMMIT of an aborted transaction.
    cp = run_psql(psql_bin, gateway.env(), "-f", str(script))
    assert cp.stdout.strip().splitlines()[-1] == "ROLLBACK"



def test_lo_import_is_refused_cleanly(psql_bin, gateway, direct, tmp_path):
    """libpq's large-object functions use the FunctionCall message, which
    pgjit refuses (0A000); psql reports it and the session goes on."""
    src = tmp_path / "blob.bin"
    src.write_bytes(b"large object payload")
    before = direct.execute("select count(*) from pg_largeobject_metadata").fetchone()[0]
    script = f"\\lo_import {src}\nselect 'after';\n"
    cp = run_psql(psql_bin, gateway.env(), "-At", "-f", "-", input=script)
    assert "the FunctionCall protocol message is not allowed through pgjit" in cp.stderr, cp.stderr
    assert cp.stdout.strip().splitlines()[-1] == "after"
    assert direct.execute("select count(*) from pg_largeobject_metadata").fetchone()[0] == before
