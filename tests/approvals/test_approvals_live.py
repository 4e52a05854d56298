"""Statements held for approval, through a real gateway (JIT mode, OIDC),
PostgreSQL, psql and psycopg: approve and deny over the HTTP API and the CLI,
a timeout then a retry, a cancel while held, self-approval and non-approvers
refused, an approval bound to its parameters, a two-person rule, the
evidence of a held DELETE, and two gateways sharing one PostgreSQL store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.gateway_fixtures import start_gateway
from tests.oidc_fixtures import apply_setup_sql, issuer, oidc_sections  # noqa: F401 (issuer is a fixture)

REPO = Path(__file__).resolve().parents[2]
PSQL = "/usr/lib/postgresql/15/bin/psql"
KEY = "approvals-test-checkpoint-key-0123"

POLICY = """version: 1
access:
  - {group: "*", grant: [pgjit_write]}
rules:
  - name: ddl-needs-approval
    match: {kind: ["alter_*"]}
    action: require_approval
    approvers: [dba]
  - name: deletes-need-approval
    match: {kind: [delete]}
    action: require_approval
    approvers: [dba]
    evidence: true
  - name: truncate-needs-two
    match: {kind: [truncate]}
    action: require_approval
    approvers: [dba]
    approvals: 2
default: allow
"""


class Hook:
    """A webhook receiver on 127.0.0.1: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hook = self
        self.bodies: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", "0"))
                hook.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


HOOK = Hook()


def _sections(pg, issuer, base: Path, store_url: str, hold_timeout: float = 8.0, **approvals) -> dict:
    base.mkdir(parents=True, exist_ok=True)
    policy = base / "policy.yaml"
    policy.write_text(POLICY)
    return oidc_sections(pg, issuer, policy=policy, api={"host": "127.0.0.1", "port": 0},
                         store={"url": store_url}, audit={"checkpoint_key": KEY},
                         approvals={"hold_timeout": hold_timeout, "reuse_window": 120, "poll_interval": 0.2, **approvals})


@pytest.fixture(scope="module")
def env(pg, issuer, tmp_path_factory):
    apply_setup_sql(pg)
    with pg.connect(dbname="appdb") as conn:
        conn.execute("DROP TABLE IF EXISTS held_things")
        conn.execute("CREATE TABLE held_things (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO held_things SELECT g, 'thing ' || g FROM generate_series(1, 10) g")
        conn.execute("ALTER TABLE held_things OWNER TO pgjit_write")
        conn.execute("DROP TABLE IF EXISTS scratch_two")
        conn.execute("CREATE TABLE scratch_two (x int)")
        conn.execute("ALTER TABLE scratch_two OWNER TO pgjit_write")
    base = tmp_path_factory.mktemp("approvals")
    gw = start_gateway(base / "gw", pg, **_sections(pg, issuer, base / "gw", f"sqlite:///{base / 'store.db'}",
                                                   webhook=HOOK.url, webhook_format="json"))
    yield gw
    gw.stop()
    with pg.connect(dbname="appdb") as conn:
        conn.execute("DROP TABLE IF EXISTS held_things, scratch_two")


def _api(gw, method: str, path: str, token: str | None, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{gw.extra['api_port']}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _dba(issuer, who: str = "dana@example.com") -> str:
    return issuer.token(who, groups=["dba"])


def _wait_request(gw, issuer, person: str, timeout: float = 8.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _api(gw, "GET", "/approvals", _dba(issuer))
        assert status == 200, body
        mine = [r for r in body["requests"] if r["person"] == person]
        if mine:
            return mine[0]
        time.sleep(0.1)
    raise AssertionError(f"no pending request from {person}")


def _psql(gw, issuer, who: str, sql: str) -> subprocess.Popen:
    env = dict(os.environ, PGPASSWORD=issuer.token(who, groups=["devs"]), PGCONNECT_TIMEOUT="10")
    return subprocess.Popen([PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(gw.port), "-U", who,
                             "-d", "appdb", "-c", sql], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_psql_alter_table_held_then_approved_over_http(env, issuer, pg):
    who = "alice@example.com"
    p = _psql(env, issuer, who, "ALTER TABLE held_things ADD COLUMN IF NOT EXISTS note text")
    req = _wait_request(env, issuer, who)
    assert req["status"] == "pending" and req["rule"] == "ddl-needs-approval" and "ALTER TABLE" in req["text"]
    # the requester cannot approve, nor can a non-approver
    status, body = _api(env, "POST", f"/approvals/{req['id']}/approve", issuer.token(who, groups=["dba"]), {})
    assert status == 403 and "own request" in body["error"]
    status, body = _api(env, "POST", f"/approvals/{req['id']}/approve", issuer.token("bob@example.com", groups=["devs"]), {})
    assert status == 403 and "dba" in body["error"]
    assert p.poll() is None  # still held
    # the statement is shown to the requester and to approvers, to nobody else
    assert _api(env, "GET", f"/approvals/{req['id']}", issuer.token(who, groups=["devs"]))[0] == 200
    assert _api(env, "GET", f"/approvals/{req['id']}", issuer.token("eve@example.com", groups=["devs"]))[0] == 404
    listed = _api(env, "GET", "/approvals", issuer.token("eve@example.com", groups=["devs"]))[1]["requests"]
    assert all(r["id"] != req["id"] for r in listed)
    # notified: the webhook got it, /metrics counts it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(b.get("request", {}).get("id") == req["id"] for b in HOOK.bodies):
        time.sleep(0.05)
    hook = next(b for b in HOOK.bodies if b.get("request", {}).get("id") == req["id"])
    assert hook["event"] == "approval_requested" and hook["approve_command"] == f"pgjit approvals approve {req['id']}"
    assert hook["request"]["person"] == who and "ALTER TABLE" in hook["request"]["text"]
    with urllib.request.urlopen(f"http://127.0.0.1:{env.extra['api_port']}/metrics", timeout=10) as resp:
        scrape = resp.read().decode()
    assert "pgjit_approvals_held 1.0" in scrape
    status, body = _api(env, "POST", f"/approvals/{req['id']}/approve", _dba(issuer), {"reason": "ok"})
    assert status == 200 and body["status"] == "approved"
    out, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert "ALTER TABLE" in out
    assert f"request {req['id']}" in err and "pgjit approvals approve" in err  # the NOTICE
    with pg.connect(dbname="appdb") as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'held_things' "
                            "AND column_name = 'note'").fetchone() == (1,)


def test_denied_with_the_approvers_reason(env, issuer):
    who = "carol@example.com"
    p = _psql(env, issuer, who, "ALTER TABLE held_things ADD COLUMN IF NOT EXISTS other text")
    req = _wait_request(env, issuer, who)
    status, body = _api(env, "POST", f"/approvals/{req['id']}/deny", _dba(issuer), {"reason": "not on a Friday"})
    assert status == 200 and body["status"] == "denied"
    out, err = p.communicate(timeout=15)
    assert p.returncode != 0
    assert "denied by dana@example.com: not on a Friday" in err


def test_timeout_then_retry_runs_after_approval(env, issuer, pg):
    who = "erin@example.com"
    sql = "ALTER TABLE held_things ADD COLUMN IF NOT EXISTS retried text"
    p = _psql(env, issuer, who, sql)
    req = _wait_request(env, issuer, who)
    out, err = p.communicate(timeout=30)
    assert p.returncode != 0 and "timed out" in err and f"pgjit approvals approve {req['id']}" in err
    status, body = _api(env, "POST", f"/approvals/{req['id']}/approve", _dba(issuer), {"reason": "late"})
    assert status == 200 and body["status"] == "approved"
    p = _psql(env, issuer, who, sql)  # the same statement: runs at once, no new hold
    out, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert "held for approval" not in err
    pending = _api(env, "GET", "/approvals", _dba(issuer))[1]["requests"]
    assert not [r for r in pending if r["person"] == who]  # no request was made for it
    # single use: a third time is held again
    p = _psql(env, issuer, who, sql)
    again = _wait_request(env, issuer, who)
    assert again["id"] != req["id"]
    _api(env, "POST", f"/approvals/{again['id']}/deny", _dba(issuer), {"reason": "enough"})
    p.communicate(timeout=15)


def test_cancel_withdraws_the_held_statement(env, issuer):
    who = "frank@example.com"
    conn = psycopg.connect(env.dsn(user=who, password=issuer.token(who, groups=["devs"])), autocommit=True)
    try:
        def cancel_soon() -> None:
            _wait_request(env, issuer, who)
            conn.cancel()

        t = threading.Thread(target=cancel_soon)
        t.start()
        with pytest.raises(psycopg.errors.QueryCanceled, match="withdrawn"):
            conn.execute("ALTER TABLE held_things ADD COLUMN IF NOT EXISTS cancelled text")
        t.join(10)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    finally:
        conn.close()
    status, body = _api(env, "GET", "/approvals?status=withdrawn", _dba(issuer))
    assert any(r["person"] == who for r in body["requests"])


def test_approval_is_bound_to_its_parameters(env, issuer, pg):
    who = "gina@example.com"
    token = issuer.token(who, groups=["devs"])
    with psycopg.connect(env.dsn(user=who, password=token), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled, match="timed out"):
            conn.execute("DELETE FROM held_things WHERE id = %s", (9,))
        status, body = _api(env, "GET", "/approvals?status=pending", _dba(issuer))
        req = [r for r in body["requests"] if r["person"] == who][0]
        assert req["param_hash"]  # bound to the Bind values
        assert _api(env, "POST", f"/approvals/{req['id']}/approve", _dba(issuer), {})[0] == 200
        # other parameters: a new hold (and it times out)
        with pytest.raises(psycopg.errors.QueryCanceled, match="timed out"):
            conn.execute("DELETE FROM held_things WHERE id = %s", (8,))
        # the approved ones: runs at once
        assert conn.execute("DELETE FROM held_things WHERE id = %s", (9,)).rowcount == 1
    with pg.connect(dbname="appdb") as c:
        assert c.execute("SELECT count(*) FROM held_things WHERE id IN (8, 9)").fetchone() == (1,)


def test_two_person_rule(env, issuer):
    who = "hank@example.com"
    conn = psycopg.connect(env.dsn(user=who, password=issuer.token(who, groups=["devs"])), autocommit=True)
    result: dict = {}
    try:
        def run() -> None:
            try:
                conn.execute("TRUNCATE scratch_two")
                result["ok"] = True
            except Exception as e:  # noqa: BLE001
                result["error"] = e

        t = threading.Thread(target=run)
        t.start()
        time.sleep(1)
        assert not result, result
        req = _wait_request(env, issuer, who)
        assert req["required"] == 2
        assert _api(env, "POST", f"/approvals/{req['id']}/approve", _dba(issuer, "dana@example.com"), {})[1]["status"] == "pending"
        status, body = _api(env, "POST", f"/approvals/{req['id']}/approve", _dba(issuer, "dana@example.com"), {})
        assert status == 409 and "another person" in body["error"]
        assert t.is_alive()
        status, body = _api(env, "POST", f"/approvals/{req['id']}/approve", _dba(issuer, "ivan@example.com"), {})
        assert status == 200 and body["status"] == "approved"
        t.join(15)
        assert result.get("ok"), result
    finally:
        conn.close()


def test_evidence_of_a_held_delete(env, issuer, pg):
    who = "judy@example.com"
    conn = psycopg.connect(env.dsn(user=who, password=issuer.token(who, groups=["devs"])), autocommit=True)
    box: dict = {}
    try:
        def run() -> None:
            try:
                conn.execute("DELETE FROM held_things WHERE id < 4")
            except Exception as e:  # noqa: BLE001
                box["error"] = e

        t = threading.Thread(target=run)
        t.start()
        req = _wait_request(env, issuer, who)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            body = _api(env, "GET", f"/approvals/{req['id']}", _dba(issuer))[1]
            if body.get("evidence"):
                break
            time.sleep(0.1)
        ev = body["evidence"]
        assert "error" not in ev, ev
        assert ev["dry_run"] is True and ev["rows_affected"] == 3 and ev["rolled_back"] is True
        assert sorted(int(r[0]) for r in ev["sample_before"]) == [1, 2, 3] and ev["explain"]
        with pg.connect(dbname="appdb") as c:  # the dry run left the data as it was
            assert c.execute("SELECT count(*) FROM held_things WHERE id < 4").fetchone() == (3,)
        _api(env, "POST", f"/approvals/{req['id']}/deny", _dba(issuer), {"reason": "no"})
        t.join(15)
        assert isinstance(box.get("error"), psycopg.errors.InsufficientPrivilege)
    finally:
        conn.close()
    with pg.connect(dbname="appdb") as c:
        assert c.execute("SELECT count(*) FROM held_things WHERE id < 4").fetchone() == (3,)


def test_cli_lists_and_approves(env, issuer, tmp_path):
    who = "kim@example.com"
    p = _psql(env, issuer, who, "ALTER TABLE held_things ADD COLUMN IF NOT EXISTS by_cli text")
    req = _wait_request(env, issuer, who)
    tok = tmp_path / "token"
    tok.write_text(_dba(issuer))
    cli = [sys.executable, "-m", "pgjit", "approvals"]
    out = subprocess.run(cli + ["list", "--config", str(env.config_path), "--token-file", str(tok)],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0 and req["id"] in out.stdout, out.stderr
    mine = tmp_path / "mine"
    mine.write_text(issuer.token(who, groups=["dba"]))
    out = subprocess.run(cli + ["approve", req["id"], "--config", str(env.config_path), "--token-file", str(mine)],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 1 and "own request" in out.stderr
    out = subprocess.run(cli + ["approve", req["id"], "--reason", "cli", "--config", str(env.config_path), "--token-file", str(tok)],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    o, e = p.communicate(timeout=15)
    assert p.returncode == 0, e


def test_two_gateways_share_a_postgresql_store(pg, issuer, tmp_path):
    apply_setup_sql(pg)
    with pg.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgjit_approvals_store WITH (FORCE)")
        conn.execute("CREATE DATABASE pgjit_approvals_store OWNER app")
    url = f"postgresql://app:apppass@127.0.0.1:{pg.port}/pgjit_approvals_store"
    subprocess.run([sys.executable, "-m", "pgjit", "store", "upgrade", "--url", url], check=True, cwd=REPO,
                   capture_output=True, timeout=60)
    with pg.connect(dbname="appdb") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS held_two (id int)")
        conn.execute("ALTER TABLE held_two OWNER TO pgjit_write")
    # Polling every 60 s and holding for 20 s: the held statement can only run
    # if the decision's NOTIFY woke gateway a (what "promptly" rests on).
    a = start_gateway(tmp_path / "a", pg, **_sections(pg, issuer, tmp_path / "a", url, hold_timeout=20, poll_interval=60))
    b = start_gateway(tmp_path / "b", pg, **_sections(pg, issuer, tmp_path / "b", url, hold_timeout=20, poll_interval=60))
    try:
        who = "lena@example.com"
        p = _psql(a, issuer, who, "ALTER TABLE held_two ADD COLUMN IF NOT EXISTS y int")
        req = _wait_request(b, issuer, who)  # seen through the other gateway
        status, body = _api(b, "POST", f"/approvals/{req['id']}/approve", _dba(issuer), {})
        decided = time.monotonic()
        assert status == 200
        out, err = p.communicate(timeout=15)
        assert p.returncode == 0, err  # ran well before the 20 s hold timeout: woken by NOTIFY, not polling
        print(f"decision to result through another gateway: {(time.monotonic() - decided) * 1000:.0f} ms")
    finally:
        a.stop()
        b.stop()
        with pg.connect(dbname="appdb") as conn:
            conn.execute("DROP TABLE IF EXISTS held_two")
        with pg.connect(dbname="postgres", autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS pgjit_approvals_store WITH (FORCE)")


def test_a_client_that_leaves_withdraws_its_request(env, issuer, pg):
    who = "mona@example.com"
    p = _psql(env, issuer, who, "ALTER TABLE held_things ADD COLUMN IF NOT EXISTS left_behind text")
    req = _wait_request(env, issuer, who)
    p.kill()
    p.wait(5)
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = _api(env, "GET", f"/approvals/{req['id']}", _dba(issuer))[1]["status"]
        if status != "pending":
            break
        time.sleep(0.1)
    assert status == "withdrawn"
    # approving it now does nothing: the statement never runs
    assert _api(env, "POST", f"/approvals/{req['id']}/approve", _dba(issuer), {})[0] == 409
    with pg.connect(dbname="appdb") as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'held_things' "
                            "AND column_name = 'left_behind'").fetchone() == (0,)


def test_every_hold_and_decision_is_in_the_audit_trail(env, issuer):
    """The earlier tests' holds: requested, approved (with the approvers), denied, timeout,
    withdrawn, used — as approval records of the audit trail."""
    from pgjit.audit import store as audit_store

    import yaml

    url = yaml.safe_load(env.config_path.read_text())["store"]["url"]
    deadline = time.monotonic() + 15
    events: set = set()
    while time.monotonic() < deadline:
        st = audit_store.Store(url)
        try:
            rows = [r for r in st.records() if r["kind"] == "approval"]
        finally:
            st.close()
        events = {r["body"]["event"] for r in rows}
        if {"requested", "approved", "denied", "timeout", "withdrawn", "used"} <= events:
            break
        time.sleep(0.5)
    assert {"requested", "approved", "denied", "timeout", "withdrawn", "used"} <= events, events
    approved = [r for r in rows if r["body"]["event"] == "approved"]
    assert any(d["approver"] == "dana@example.com" for r in approved for d in r["body"]["decisions"])
    assert all(r["person"] for r in rows)


def test_slack_payload():
    from types import SimpleNamespace

    from pgjit.approvals.model import Request
    from pgjit.approvals.notify import payload

    req = Request(id="apr_1", person="alice", target="appdb", session_id="s", text="DROP TABLE x", fingerprint="f",
                  param_hash="", rule="r", approvers=("dba",), required=2, created=0, expires=1)
    cfg = SimpleNamespace(webhook_format="slack", public_url="https://pgjit.example")
    body = payload(cfg, req, "pgjit approvals approve apr_1")
    assert set(body) == {"text"} and "DROP TABLE x" in body["text"] and "https://pgjit.example/approvals/apr_1" in body["text"]
    assert "2 approvals from dba" in body["text"]


def test_a_hold_never_outwaits_the_clients_statement_timeout(env, issuer):
    who = "nina@example.com"
    with psycopg.connect(env.dsn(user=who, password=issuer.token(who, groups=["devs"])), autocommit=True) as conn:
        conn.execute("SET statement_timeout = '1s'")
        with pytest.raises(psycopg.errors.QueryCanceled, match="timed out") as e:
            conn.execute("ALTER TABLE held_things ADD COLUMN IF NOT EXISTS quick text")
        # the hold timeout is 8 s here: it waited the client's 1 s
        assert "no decision within 1 s" in (e.value.diag.message_detail or "")
