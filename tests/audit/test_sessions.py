"""pgjit sessions list/show and pgjit policy replay, on records written by
the writer into both stores."""

from __future__ import annotations

import subprocess
import sys

from pgjit.audit import records as rec
from pgjit.audit import store as st
from pgjit.audit.writer import Writer
from tests.audit.conftest import KEY


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgjit", *args], capture_output=True, text=True, timeout=120)


def _session(w: Writer, sid: str, person: str, target: str, groups: list[str], statements: list[tuple[str, str, str | None]]):
    w.submit(rec.session_start(sid, person=person, email=f"{person}@example.com", groups=groups, target=target,
                               client_addr="127.0.0.1:50000", tls="TLSv1.3", application_name="psql", jit_role=f"pgjit_{person}_x"))
    for seq, (text, decision, sqlstate) in enumerate(statements, 1):
        w.submit(rec.statement(sid, person=person, target=target, seq=seq, text=text, protocol="simple",
                               decision=decision, rule=None if decision == "allow" else "no-ddl",
                               fingerprint="fp", policy_hash="h", size=len(text) + 5))
        w.submit(rec.statement_result(sid, person=person, target=target, seq=seq,
                                      outcome="ok" if decision == "allow" and not sqlstate else "refused" if decision != "allow" else "error",
                                      rows=1 if decision == "allow" and not sqlstate else None, sqlstate=sqlstate, duration=0.0012))
    w.submit(rec.session_end(sid, person=person, target=target, reason="ok", seconds=1.5))


def _fill(url: str) -> None:
    st.upgrade(url)
    store = st.Store(url)
    w = Writer(store, KEY).start()
    _session(w, "aaaa000000000001", "alice", "appdb", ["dev"], [
        ("select * from customers", "allow", None), ("delete from customers where id = 1", "allow", None)])
    _session(w, "bbbb000000000002", "bob", "appdb", ["dev"], [
        ("select 1/0", "allow", "22012"), ("drop table customers", "deny", "42501")])
    _session(w, "cccc000000000003", "carol", "otherdb", [], [("select 1", "allow", None)])
    assert w.close()
    store.close()


def test_sessions_list_filters(store_url):
    _fill(store_url)
    out = _cli("sessions", "list", "--url", store_url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and [l.split()[0] for l in lines[1:]] == ["aaaa000000000001", "bbbb000000000002", "cccc000000000003"]
    assert "alice" in lines[1] and lines[1].split()[-3:] == ["2", "0", "ok"]
    only_denied = _cli("sessions", "list", "--url", store_url, "--denied").stdout.splitlines()[1:]
    assert [l.split()[0] for l in only_denied] == ["bbbb000000000002"]
    by_user = _cli("sessions", "list", "--url", store_url, "--user", "carol@example.com").stdout.splitlines()[1:]
    assert [l.split()[0] for l in by_user] == ["cccc000000000003"]
    by_target = _cli("sessions", "list", "--url", store_url, "--target", "appdb").stdout.splitlines()[1:]
    assert len(by_target) == 2
    assert len(_cli("sessions", "list", "--url", store_url, "--since", "2999-01-01").stdout.splitlines()) == 1


def test_sessions_show_is_the_timeline(store_url):
    _fill(store_url)
    out = _cli("sessions", "show", "--url", store_url, "bbbb000000000002")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "session bbbb000000000002: bob (bob@example.com) on appdb" in text
    assert "tls=TLSv1.3" in text and "role=pgjit_bob_x" in text
    assert "#1     allow simple error sqlstate=22012 1.2 ms" in text
    assert "#2     deny rule=no-ddl simple refused sqlstate=42501" in text
    assert "drop table customers" in text and "end     ok after 1.5 s" in text
    assert _cli("sessions", "show", "--url", store_url, "nope").returncode == 1


def test_policy_replay_prints_what_would_change(store_url, tmp_path):
    _fill(store_url)
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text("version: 1\nrules:\n  - name: no-deletes\n    match: {kind: [delete]}\n    action: deny\n"
                        "default: allow\n")
    out = _cli("policy", "replay", "--url", store_url, "--policy", str(stricter))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    changes = [l for l in lines if " -> " in l and "session" in l]
    assert len(changes) == 2, out.stdout
    assert any("aaaa000000000001 #2: allow -> deny (rule no-deletes): delete from customers" in l for l in changes)
    assert any("bbbb000000000002 #2: deny -> allow" in l and "drop table customers" in l for l in changes)
    assert "5 recorded statements decided again" in lines[-1]
    same = tmp_path / "same.yaml"  # refuses exactly the drop, as recorded
    same.write_text("version: 1\nrules:\n  - name: no-ddl\n    match: {kind: [drop_*]}\n    action: deny\ndefault: allow\n")
    out = _cli("policy", "replay", "--url", store_url, "--policy", str(same), "--target", "appdb")
    assert out.returncode == 0, out.stdout
    assert "4 recorded statements decided again" in out.stdout and "0 would change" in out.stdout
