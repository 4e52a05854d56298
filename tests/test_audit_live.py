"""The audit trail through a real gateway, PostgreSQL and psycopg: every
statement of a session (simple, extended, pipelined, COPY, refused ones) is
recorded in order with the person, decision, rows and SQLSTATE; random
sessions are compared with their records; a store outage refuses new
statements (58000) and loses nothing queued; both stores."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgjit.audit import store as audit_store
from pgjit.audit.chain import verify
from pgjit.audit.sessions import gather
from tests.gateway_fixtures import start_gateway
from tests.test_api_live import _get, _samples

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"
KEY = "audit-live-test-key-0123456789"


POLICY = "version: 1\nrules:\n  - name: no-drop\n    match: {kind: [drop_*]}\n    action: deny\ndefault: allow\n"


def _target(pg, base: Path) -> dict:
    base.mkdir(parents=True, exist_ok=True)
    policy = base / "policy.yaml"
    policy.write_text(POLICY)
    return {"appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app",
                      "password": "apppass", "policy": str(policy)}}


def _records(url: str) -> list[dict]:
    s = audit_store.Store(url)
    try:
        return list(s.records())
    finally:
        s.close()


def _statements(rows: list[dict], session_id: str) -> list[tuple[dict, dict | None]]:
    """(statement, result) per statement of the session, in order, read as
    pgjit sessions reads them (the writer groups a session's statements per
    batch and merges a result into its statement's entry when it can)."""
    view = gather(rows)[session_id]
    return [(view.statements[k], view.results.get(k)) for k in sorted(view.statements)]


def _wait_closed(gw, timeout: float = 10) -> None:
    """Until every session the gateway started has closed (so that stopping
    it does not end one with 'shutdown')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = gw.logs()
        if sum(r.get("msg") == "client authenticated" for r in logs) == sum(r.get("msg") == "session closed" for r in logs
                                                                          if r.get("reason") != "cancel_request"):
            return
        time.sleep(0.05)
    raise AssertionError("sessions still open")


def _session_ids(rows: list[dict]) -> list[str]:
    return [r["session_id"] for r in rows if r["kind"] == "session_start"]


@pytest.fixture(params=["sqlite", "postgresql"])
def audited(request, pg, tmp_path):
    if request.param == "sqlite":
        url = audit_store.sqlite_url(tmp_path / "store" / "audit.db")
    else:
        db = "audit_" + secrets.token_hex(4)
        pg.psql(f"create database {db}")
        url = pg.url(dbname=db)
        audit_store.upgrade(url)
    gw = start_gateway(tmp_path / "gw", pg, targets=_target(pg, tmp_path), store={"url": url}, api={"port": 0},
                       audit={"checkpoint_key": KEY, "checkpoint_every": 7, "sink": str(tmp_path / "sink.jsonl")})
    gw.extra["sink"] = tmp_path / "sink.jsonl"
    yield gw, url
    gw.stop()


def test_every_kind_of_statement_is_recorded_in_order(audited):
    gw, url = audited
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute("select 1")
        conn.execute("select * from customers where id = %s", [1])  # extended protocol
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("drop table customers")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with conn.pipeline():
            conn.execute("select %s::int", [7])
            conn.execute("select generate_series(1, 3)")
        conn.execute("create temp table t (a int)")
        with conn.cursor().copy("copy t from stdin") as cp:
            cp.write_row([1])
            cp.write_row([2])
        conn.execute("select count(*) from t")
    _wait_closed(gw)
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gw.extra['api_port']}/metrics", timeout=10) as r:
        scraped = r.read().decode()
    assert 'pgjit_statements_total{decision="allow"} 8.0' in scraped
    assert 'pgjit_statements_total{decision="deny"} 1.0' in scraped
    assert "pgjit_audit_queue_depth" in scraped
    assert gw.stop() == 0
    rows = _records(url)
    sid = _session_ids(rows)[-1]
    got = [(s["decision"], s["body"]["protocol"], s["body"]["text"], r["body"]["outcome"] if r else None,
            r["body"]["rows"] if r else None, r["body"]["sqlstate"] if r else None) for s, r in _statements(rows, sid)]
    assert got == [
        ("allow", "simple", "select 1", "ok", 1, None),
        ("allow", "extended", "select * from customers where id = $1", "ok", 1, None),
        ("deny", "simple", "drop table customers", "refused", None, "42501"),
        ("allow", "simple", "select 1/0", "error", None, "22012"),
        ("allow", "extended", "select $1::int", "ok", 1, None),
        ("allow", "extended", "select generate_series(1, 3)", "ok", 3, None),
        ("allow", "simple", "create temp table t (a int)", "ok", None, None),
        ("allow", "simple", "copy t from stdin", "ok", 2, None),
        ("allow", "simple", "select count(*) from t", "ok", 1, None),
    ]
    start = next(r for r in rows if r["kind"] == "session_start" and r["session_id"] == sid)
    assert start["person"] == "alice@example.com" and start["target"] == "appdb"
    assert start["body"]["client_addr"].startswith("127.0.0.1:")
    end = next(r for r in rows if r["kind"] == "session_end" and r["session_id"] == sid)
    assert end["body"]["reason"] == "ok"
    copy = _statements(rows, sid)[7][0]
    assert copy["body"]["protocol"] == "simple"  # recorded before the server said it is a COPY
    assert all(s["body"]["policy_hash"] and len(s["body"]["policy_hash"]) == 64 for s, _ in _statements(rows, sid))
    assert any(r["kind"] == "config_load" for r in rows)
    assert not any("parameters" in s["body"] for s, _ in _statements(rows, sid))  # bind values: off by default
    report = verify(rows, KEY.encode())
    assert report.ok and report.unchecked == 0, report.problems  # the writer closed with a final checkpoint
    # The commands find the store and the key through the gateway's own config.
    out = subprocess.run([sys.executable, "-m", "pgjit", "audit", "verify", "--config", str(gw.config_path)],
                         capture_output=True, text=True, timeout=60, env={k: v for k, v in __import__("os").environ.items()
                                                                          if not k.startswith("PGJIT_")})
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-m", "pgjit", "sessions", "show", "--config", str(gw.config_path), sid],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "select count(*) from t" in out.stdout, out.stdout + out.stderr
    # The live sink got every record the store holds, in order, and verifies on its own.
    sink = [json.loads(line) for line in gw.extra["sink"].read_text().splitlines()]
    assert [(r["chain"], r["seq"], r["hash"]) for r in sink] == [(r["chain"], r["seq"], r["hash"]) for r in rows]
    assert verify(sink, KEY.encode()).ok


SQL = {
    "select 1": ("allow", "ok", None),
    "select 1/0": ("allow", "error", "22012"),
    "drop table customers": ("deny", "refused", "42501"),
    "select name from customers where id = 2": ("allow", "ok", None),
    "selec 1": ("deny", "refused", "42601"),
}


@pytest.fixture(scope="module")
def shared_audited(pg, tmp_path_factory):
    base = tmp_path_factory.mktemp("audit-h")
    url = audit_store.sqlite_url(base / "audit.db")
    gw = start_gateway(base / "gw", pg, targets=_target(pg, base), store={"url": url}, audit={"checkpoint_key": KEY})
    yield gw, url
    gw.stop()


@settings(max_examples=int(__import__("os").environ.get("PGJIT_AUDIT_EXAMPLES", "20")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=st.lists(st.tuples(st.sampled_from(list(SQL)), st.booleans()), min_size=1, max_size=8))
def test_random_sessions_match_their_records(shared_audited, script):
    """Each statement sent, by the simple or the extended protocol, is
    recorded once, in order, with its decision and outcome."""
    gw, url = shared_audited
    app = "h" + secrets.token_hex(6)
    with psycopg.connect(gw.dsn(application_name=app), autocommit=True) as conn:
        for sql, extended in script:
            try:
                if extended:
                    conn.execute(sql, [], prepare=False) if "%s" not in sql else None
                else:
                    conn.execute(psycopg.sql.SQL(sql))  # type: ignore[arg-type]
            except psycopg.Error:
                pass
    deadline = time.monotonic() + 20
    while True:
        rows = _records(url)
        starts = [r for r in rows if r["kind"] == "session_start" and r["body"]["application_name"] == app]
        if starts and any(r["kind"] == "session_end" and r["session_id"] == starts[0]["session_id"] for r in rows):
            break
        assert time.monotonic() < deadline, "the session's records did not reach the store"
        time.sleep(0.1)
    got = [(s["body"]["text"], s["decision"], r["body"]["outcome"] if r else None, r["body"]["sqlstate"] if r else None)
           for s, r in _statements(rows, starts[0]["session_id"])]
    want = [(sql, *SQL[sql]) for sql, _ in script]
    assert got == want


def test_store_outage_fails_closed_and_loses_nothing(pg, pg_factory, tmp_path):
    store_pg = pg_factory()
    url = store_pg.url(dbname="postgres")
    audit_store.upgrade(url)
    gw = start_gateway(tmp_path / "gw", pg, targets=_target(pg, tmp_path), store={"url": url},
                       audit={"checkpoint_key": KEY, "buffer": 100})
    ran: list[int] = []
    try:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            for i in range(5):
                conn.execute(f"select {i}")
                ran.append(i)
            store_pg.stop()
            refused = None
            for i in range(5, 400):
                try:
                    conn.execute(f"select {i}")
                    ran.append(i)
                except psycopg.errors.SystemError as e:
                    refused = e
                    break
            assert refused is not None, "no statement was refused while the store was down"
            assert "cannot record this statement" in str(refused) and refused.sqlstate == "58000"
            # The session goes on: refused statements stay refused while the buffer is full...
            with pytest.raises(psycopg.errors.SystemError):
                conn.execute("select 'still down'")
            store_pg.start()
            deadline = time.monotonic() + 30
            while True:  # ... and run again once the writer has caught up
                try:
                    conn.execute("select 'back'")
                    ran.append(-1)
                    break
                except psycopg.errors.SystemError:
                    assert time.monotonic() < deadline, "statements still refused after the store came back"
                    time.sleep(0.2)
        _wait_closed(gw)
        assert gw.stop() == 0
        rows = _records(url)
        sid = _session_ids(rows)[-1]
        texts = [s["body"]["text"] for s, r in _statements(rows, sid) if r and r["body"]["outcome"] == "ok"]
        assert texts == [f"select {i}" for i in ran if i >= 0] + ["select 'back'"]
        assert verify(rows, KEY.encode()).ok
        metrics_lines = [r for r in gw.logs() if r.get("msg") == "statement refused: audit trail unavailable"]
        assert metrics_lines
    finally:
        gw.stop(signal.SIGKILL)


def test_redacted_literals_and_recorded_parameters(pg, tmp_path):
    url = audit_store.sqlite_url(tmp_path / "a.db")
    gw = start_gateway(tmp_path / "gw", pg, targets=_target(pg, tmp_path), store={"url": url},
                       audit={"checkpoint_key": KEY, "redact_literals": True, "bind_parameters": True})
    try:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            conn.execute("select * from customers where name = 'Hunter2-secret'")
            conn.execute("select * from customers where id = %s and name <> %s", [1, "x"])
        _wait_closed(gw)
    finally:
        assert gw.stop() == 0
    rows = _records(url)
    stmts = [s for s, _ in _statements(rows, _session_ids(rows)[-1])]
    assert stmts[0]["body"]["text"] == "select * from customers where name = $1"
    assert "Hunter2" not in json.dumps(rows)
    # psycopg sends the int in binary (int2), the str as text: binary values are recorded as hex.
    assert stmts[1]["body"]["parameters"] == ["\\x0001", "x"]


def test_large_results_and_portals_fetched_in_parts_count_their_rows(pg, tmp_path):
    """Rows come from the command tag, or (a portal suspended after some
    rows) from the DataRows relayed, which the C core counts in runs, one
    log entry per read rather than per row."""
    import asyncio

    import asyncpg

    url = audit_store.sqlite_url(tmp_path / "store" / "audit.db")
    gw = start_gateway(tmp_path / "gw", pg, targets=_target(pg, tmp_path), store={"url": url},
                       audit={"checkpoint_key": KEY})

    async def run() -> int:
        conn = await asyncpg.connect(gw.url(), timeout=10)
        try:
            n = len(await conn.fetch("select generate_series(1, 30000)"))
            async with conn.transaction():
                async for _ in conn.cursor("select generate_series(1, 25000)", prefetch=10000):
                    n += 1
            return n
        finally:
            await conn.close()

    try:
        assert asyncio.run(run()) == 55000
        _wait_closed(gw)
        if __import__("os").environ.get("CI") == "true":
            assert gw.relay == "c", "the C core must be the path under test"
    finally:
        assert gw.stop() == 0
    rows = _records(url)
    sid = _session_ids(rows)[-1]
    got = [(s["body"]["text"], r["body"]["outcome"], r["body"]["rows"]) for s, r in _statements(rows, sid)
           if "generate_series" in s["body"]["text"]]
    assert got == [
        ("select generate_series(1, 30000)", "ok", 30000),
        ("select generate_series(1, 25000)", "suspended", 10000),
        ("select generate_series(1, 25000)", "suspended", 10000),
        ("select generate_series(1, 25000)", "ok", 5000),
    ], got


def test_a_long_statement_is_recorded_while_it_runs(audited):
    """A statement the C core relays is in its tracker until its answer
    comes; one that runs for more than a second is taken into the relay's
    queue (Reactor._sweep_tracked), and its record reaches the store while
    it still runs. What the tracker finished is written while the session
    idles."""
    gw, url = audited
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute("select 1")  # the session is relayed and tracked by the core
        # An idle session's finished statements are written too (keep_tracked).
        done, deadline = [], time.monotonic() + 2
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
            done = [e for r in _records(url) if r["kind"] == "statements" for e in r["body"]["statements"]
                    if e.get("text") == "select 1" and e.get("outcome") == "ok"]
        assert done, "the finished statement of an idle session was not written within 2 s"
        runner = threading.Thread(target=conn.execute, args=("select pg_sleep(4)",))
        runner.start()
        seen, deadline = [], time.monotonic() + 3.5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.1)
            entries = [e for r in _records(url) if r["kind"] == "statements" for e in r["body"]["statements"]]
            seen = [e for e in entries if e.get("text") == "select pg_sleep(4)"]
        running = runner.is_alive()
        runner.join()
    assert seen, "no record of the running statement within 3.5 s"
    assert running and "outcome" not in seen[0]  # the statement's record, before its answer came
    _wait_closed(gw)
    assert gw.stop() == 0
    rows = _records(url)
    sid = _session_ids(rows)[-1]
    got = [(s["body"]["text"], r["body"]["outcome"] if r else None) for s, r in _statements(rows, sid)]
    assert got == [("select 1", "ok"), ("select pg_sleep(4)", "ok")]


def _writer_child(gw) -> int:
    """The pid of the gateway's audit writer process (pgjit.audit.process)."""
    pid = gw.proc.pid
    for tid in os.listdir(f"/proc/{pid}/task"):
        for child in open(f"/proc/{pid}/task/{tid}/children").read().split():
            if b"pgjit.audit.process" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    raise AssertionError("the gateway has no audit writer process")


def test_a_writer_process_killed_mid_session_loses_no_statement(pg, tmp_path):
    """The audit writer is a process of its own: killed (out of memory, a
    bug) while a session runs, it is started again, the session goes on,
    and every statement that ran is in the store."""
    url = audit_store.sqlite_url(tmp_path / "a.db")
    gw = start_gateway(tmp_path / "gw", pg, targets=_target(pg, tmp_path), store={"url": url},
                       audit={"checkpoint_key": KEY})
    try:
        first = _writer_child(gw)
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            for i in range(100):
                conn.execute(f"select {i}")
            os.kill(first, signal.SIGKILL)
            for i in range(100, 200):
                conn.execute(f"select {i}")
            deadline = time.monotonic() + 30
            while any(r.get("msg") == "the audit writer process exited; starting another" for r in gw.logs()) is False:
                assert time.monotonic() < deadline, "the gateway did not notice its writer process died"
                time.sleep(0.05)
            second = _writer_child(gw)
            assert second != first
            for i in range(200, 250):
                conn.execute(f"select {i}")
        _wait_closed(gw)
        assert gw.stop() == 0
        rows = _records(url)
        sid = _session_ids(rows)[-1]
        texts = [s["body"]["text"] for s, r in _statements(rows, sid) if r and r["body"]["outcome"] == "ok"]
        assert texts == [f"select {i}" for i in range(250)]
        report = verify(rows, KEY.encode())
        assert report.ok and report.chains == 2, report.problems
    finally:
        gw.stop(signal.SIGKILL)


def _cluster_pids(cluster) -> list[int]:
    """The postmaster of a test cluster and its children (its backends)."""
    pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    return [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class _Refused(Exception):
    def __init__(self, sqlstate: str | None, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _run(conn, sql: str, protocol: str) -> None:
    """One statement: a simple-protocol Query (libpq's PQexec: the C core
    relays and tracks it) or, with a parameter, psycopg's extended protocol
    (Parse/Bind/Execute: the Python path); its text is then ``sql + $1``."""
    if protocol == "extended":
        try:
            conn.execute(sql + " + %s", (0,))
        except psycopg.errors.SystemError as e:
            raise _Refused(e.sqlstate, str(e)) from None
        return
    from psycopg import pq

    res = conn.pgconn.exec_(sql.encode())
    if res.status == pq.ExecStatus.FATAL_ERROR:
        raise _Refused((res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode(), res.error_message.decode())
    assert res.status == pq.ExecStatus.TUPLES_OK, res.status


def _ready(gw) -> tuple[int, dict]:
    status, body = _get(gw, "/readyz")
    return status, json.loads(body)


def _store_up(gw) -> float:
    return _samples(_get(gw, "/metrics")[1])["pgjit_audit_store_up"]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_store_that_stops_answering_fails_closed_and_loses_nothing(pg, pg_factory, tmp_path, protocol):
    """The store's server stops answering without an error (SIGSTOP: a hung
    host, packets dropped): its connection stays open and each write waits.
    After audit.writer.STALL_SECONDS the gateway is not ready, naming the
    store; sessions the C core relays leave its path (their records would
    otherwise pile up unbounded); new statements are refused with 58000 once
    the buffer is full; the session goes on; the store answers again, the
    statements run again, and every statement that ran is in the store."""
    store_pg = pg_factory()
    url = store_pg.url(dbname="postgres")
    audit_store.upgrade(url)
    gw = start_gateway(tmp_path / "gw", pg, targets=_target(pg, tmp_path), store={"url": url}, api={"port": 0},
                       audit={"checkpoint_key": KEY, "buffer": 200})
    ran: list[int] = []
    frozen: list[int] = []
    try:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            for i in range(20):
                _run(conn, f"select {i}", protocol)
                ran.append(i)
            assert _ready(gw)[0] == 200 and _store_up(gw) == 1
            frozen = _cluster_pids(store_pg)
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            refused = None
            deadline = time.monotonic() + 60
            i = 20
            while refused is None and time.monotonic() < deadline:
                try:
                    _run(conn, f"select {i}", protocol)
                    ran.append(i)
                except _Refused as e:
                    refused = e
                i += 1
            assert refused is not None, f"{len(ran) - 20} statements ran while the store did not answer, none refused"
            assert refused.sqlstate == "58000" and "cannot record this statement" in str(refused), str(refused)
            deadline = time.monotonic() + 30
            while True:  # not ready, and why: the store does not answer (audit.writer.STALL_SECONDS)
                status, body = _ready(gw)
                if status == 503 and "has not answered" in body["checks"]["store"]["detail"]:
                    break
                assert time.monotonic() < deadline, body
                time.sleep(0.2)
            assert not body["checks"]["store"]["ok"]
            assert _store_up(gw) == 0
            with pytest.raises(_Refused):  # still refused
                _run(conn, "select 2", protocol)
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            frozen = []
            deadline = time.monotonic() + 30
            while True:  # the writer catches up; statements run again
                try:
                    _run(conn, "select 1", protocol)
                    break
                except _Refused:
                    assert time.monotonic() < deadline, "statements still refused after the store answered again"
                    time.sleep(0.2)
            assert _store_up(gw) == 1
        _wait_closed(gw)
        assert gw.stop() == 0
        rows = _records(url)
        sid = _session_ids(rows)[-1]
        texts = [s["body"]["text"] for s, r in _statements(rows, sid) if r and r["body"]["outcome"] == "ok"]
        tail = " + $1" if protocol == "extended" else ""
        assert texts == [f"select {i}{tail}" for i in ran] + [f"select 1{tail}"]
        assert verify(rows, KEY.encode()).ok
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        gw.stop(signal.SIGKILL)
