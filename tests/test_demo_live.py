"""``make demo`` as a developer meets it, and the production example beside it.

The demo is started the way the README says (``python -m pgjit.devtools.demo``,
here with its own ``--dir`` and ``--port`` so that it cannot touch a
developer's ``.demo`` or port 6432), and every command it prints is run in a
shell, as printed: psql with ``sslmode=require`` and a fresh token, psql with
``pgjit dsn``'s output, ``verify-full`` against the demo's CA, psycopg from
``pgjit dsn --format env``, the MCP config (its URL through psycopg, and the
real MCP server), and PostgreSQL itself. Then a demo killed with ``kill -9``
must be cleaned up by the next start, and by ``--stop`` (what ``make clean``
runs).

The production example ``deploy/pgjit.yaml`` (also shown in
docs/production.md) must pass ``pgjit check-config`` once the files it names
exist, and ``deploy/pgjit.service`` must wait longer than the drain.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import yaml

from pgjit.devtools import demo as demo_mod
from pgjit.devtools.pgcluster import PgCluster, free_port, make_temp_base

pytestmark = pytest.mark.pg

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0  # first start: initdb, sample data, the catalog load
COMMAND_TIMEOUT = 60.0
READY = "Gateway log follows"
MCP_TITLE = "Cursor / Claude MCP"
PG_TITLE = "PostgreSQL itself"


def clean_env() -> dict[str, str]:
    """The caller's environment minus libpq's PG* variables (PGJIT_PG_BINDIR, which finds the server, stays)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k == "PGJIT_PG_BINDIR"}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def pgjit_script() -> list[str]:
    script = Path(sys.executable).parent / "pgjit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pgjit"]


class DemoProc:
    """``python -m pgjit.devtools.demo`` as a child process, its output collected line by line."""

    def __init__(self, state: Path, port: int, *extra: str) -> None:
        self.state = state
        self.port = port
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgjit.devtools.demo", "--dir", str(state), "--port", str(port), *extra],
            cwd=REPO,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def wait_for(self, marker: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(marker in ln for ln in self.lines):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"the demo did not print {marker!r} within {timeout:g} s; its output:\n{self.output()}", pytrace=False)
            try:
                line = self._q.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(10)
                pytest.fail(f"the demo exited ({self.proc.returncode}) before printing {marker!r}; its output:\n{self.output()}", pytrace=False)
            self.lines.append(line)

    def drain(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    return
                continue
            if line is None:
                return
            self.lines.append(line)

    def blocks(self) -> list[tuple[str, list[str]]]:
        """The printed commands: (title line, its indented command lines), in order."""
        text = self.lines[: next(i for i, ln in enumerate(self.lines) if READY in ln)]
        out: list[tuple[str, list[str]]] = []
        for ln in text:
            if ln.startswith("    ") and out:
                out[-1][1].append(ln[4:])
            elif ln and not ln.startswith("demo:") and not ln.startswith(" "):
                out.append((ln, []))
        return [(t, cmds) for t, cmds in out if cmds]

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.drain(1.0)
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no cleanup at all
        self.proc.wait(10)
        self.drain(1.0)


def stop_demo_dir(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgjit.devtools.demo", "--stop", "--dir", str(state)],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def demo(pg):  # pg: PostgreSQL must be startable (a skip outside CI, a failure under CI=true)
    base = make_temp_base("pgjit-demo-live-")
    state = base / "state"
    d = DemoProc(state, free_port())
    try:
        d.wait_for(READY)
        yield d
    finally:
        d.stop()
        stop_demo_dir(state)
        shutil.rmtree(base, ignore_errors=True)


def run_block(lines: list[str], stdin: str = "SELECT current_user;\n") -> subprocess.CompletedProcess[str]:
    script = "set -e\n" + "\n".join(lines) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=clean_env(), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)


# --------------------------------------------------------------------------- the demo


def test_demo_serves_tls_and_prints_no_plaintext_commands(demo):
    blocks = demo.blocks()
    titles = [t for t, _ in blocks]
    assert len(blocks) >= 6, demo.output()
    assert any(t.startswith(MCP_TITLE) for t in titles) and any(t.startswith(PG_TITLE) for t in titles)
    gateway_cmds = [c for t, cmds in blocks if not t.startswith(PG_TITLE) for c in cmds]
    assert not any("sslmode=disable" in c or "--sslmode disable" in c for c in gateway_cmds), gateway_cmds
    assert any(f'port={demo.port} dbname=appdb user=alice@example.com sslmode=require"' in c for c in gateway_cmds)
    assert any("--sslmode verify-full --sslrootcert" in c for c in gateway_cmds)

    cfg = yaml.safe_load((demo.state / "pgjit.yaml").read_text())
    assert cfg["tls"] == {"cert": str(demo.state / "server.crt"), "key": str(demo.state / "server.key")}
    assert cfg["oidc"]["allow_insecure_loopback"] is False
    assert cfg["listen"] == {"host": "127.0.0.1", "port": demo.port}
    assert (demo.state / "server.key").stat().st_mode & 0o077 == 0
    assert (demo.state / "demo.pid").read_text().split() == [str(demo.proc.pid)]
    assert demo_mod.pid_alive(int((demo.state / "gateway.pid").read_text()))


def test_every_printed_command_works(demo):
    blocks = demo.blocks()
    ran = 0
    for title, lines in blocks:
        r = run_block(lines)
        assert r.returncode == 0, f"{title}\n{lines}\nexit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        if title.startswith(MCP_TITLE):
            doc = json.loads(r.stdout)
            (server,) = doc["mcpServers"].values()
            url = server["args"][-1]
            q = parse_qs(urlsplit(url).query)
            assert q["sslmode"] == ["verify-full"] and Path(q["sslrootcert"][0]).is_absolute(), url
            assert Path(q["sslrootcert"][0]) == demo.state / "ca.pem"
            with psycopg.connect(url, connect_timeout=10) as conn:
                assert conn.info.pgconn.ssl_in_use
                assert conn.execute("SELECT current_user").fetchone()[0].startswith("pgjit_alice_")
        elif title.startswith(PG_TITLE):
            assert re.search(r"^\s*app\s*$", r.stdout, re.M), r.stdout
        else:
            assert re.search(r"pgjit_alice_[a-z2-7]{16}", r.stdout), f"{title}\n{lines}\n{r.stdout}\n{r.stderr}"
        ran += 1
    assert ran == len(blocks) >= 6


def test_plaintext_is_refused(demo):
    """Tokens only over TLS, as in production: sslmode=disable gets the hint to use require."""
    key = demo.state / "issuer" / "signing-key.pem"
    r = subprocess.run(
        [*pgjit_script(), "dsn", "--key", str(key), "--sub", "alice@example.com", "--port", str(demo.port), "--sslmode", "disable", "-q"],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    with pytest.raises(psycopg.OperationalError, match="only over TLS"):
        psycopg.connect(r.stdout.strip(), connect_timeout=10)


def test_a_second_demo_on_the_same_state_is_refused(demo):
    r = subprocess.run(
        [sys.executable, "-m", "pgjit.devtools.demo", "--dir", str(demo.state), "--port", str(free_port()), "--check"],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1 and f"another demo (pid {demo.proc.pid})" in r.stdout, r.stdout + r.stderr
    assert demo.proc.poll() is None and demo_mod.pid_alive(int((demo.state / "gateway.pid").read_text()))


try:  # the real MCP server (node-postgres), as Cursor runs it from the printed config
    from tests.clients.test_mcp import MCPClient, mcp_server_cmd, rows_of  # noqa: F401
except ImportError as _exc:  # pragma: no cover - the client tests are part of this repository
    raise RuntimeError(f"tests/clients/test_mcp.py is needed: {_exc}") from None


@pytest.mark.clients
def test_printed_mcp_config_works_in_the_mcp_server(demo, mcp_server_cmd):  # noqa: F811
    """node-postgres verifies the certificate even for sslmode=require: the printed sslrootcert must get it through."""
    ((_, lines),) = [(t, c) for t, c in demo.blocks() if t.startswith(MCP_TITLE)]
    r = run_block(lines)
    assert r.returncode == 0, r.stderr
    (server,) = json.loads(r.stdout)["mcpServers"].values()
    assert server["command"] == "npx" and server["args"][:2] == ["-y", "@modelcontextprotocol/server-postgres"]
    client = MCPClient([*mcp_server_cmd, server["args"][-1]])
    try:
        client.request("initialize", {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "pgjit-demo-test", "version": "1"}})
        client.notify("notifications/initialized")
        rows = rows_of(client.request("tools/call", {"name": "query", "arguments": {"sql": "select current_user as u"}}))
        assert rows[0]["u"].startswith("pgjit_alice_"), (rows, client.log())
    finally:
        client.close()


# --------------------------------------------------------------------------- kill -9


def test_kill_9_is_cleaned_up_by_the_next_start_and_by_stop(pg):
    base = make_temp_base("pgjit-demo-kill-")
    state = base / "state"
    port = free_port()
    try:
        first = DemoProc(state, port)
        first.wait_for(READY)
        gateway_pid = int((state / "gateway.pid").read_text())
        cluster = PgCluster(state / "pgdata")
        postmaster_pid = cluster.pid
        assert postmaster_pid and cluster.running

        first.kill9()
        # What kill -9 leaves behind: the gateway still holds the port, PostgreSQL still runs.
        time.sleep(0.5)
        assert demo_mod.pid_alive(gateway_pid) and demo_mod.pid_alive(postmaster_pid)
        assert (state / "demo.pid").is_file()

        # The next start, on the same port, stops both and works (--check: start, log in, stop).
        again = subprocess.run(
            [sys.executable, "-m", "pgjit.devtools.demo", "--dir", str(state), "--port", str(port), "--check"],
            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=START_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        out = again.stdout + again.stderr
        assert again.returncode == 0, out
        assert f"stopping the gateway an earlier demo left running (pid {gateway_pid}" in out, out
        assert f"stopping the PostgreSQL an earlier demo left running (pid {postmaster_pid}" in out, out
        assert "reusing the PostgreSQL" in out and "check OK: SELECT count(*) FROM customers -> 1000" in out, out
        assert not demo_mod.pid_alive(gateway_pid) and not demo_mod.pid_alive(postmaster_pid)
        assert not (state / "demo.pid").exists() and not (state / "gateway.pid").exists()
        assert not cluster.running

        # Killed again, then `--stop` (what `make clean` runs) stops what was left.
        second = DemoProc(state, port)
        second.wait_for(READY)
        gateway_pid = int((state / "gateway.pid").read_text())
        postmaster_pid = cluster.pid
        second.kill9()
        r = stop_demo_dir(state)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"pid {gateway_pid}" in r.stdout and f"pid {postmaster_pid}" in r.stdout, r.stdout
        assert not demo_mod.pid_alive(gateway_pid) and not demo_mod.pid_alive(postmaster_pid)
        assert not (state / "demo.pid").exists() and not (state / "gateway.pid").exists()
        r = stop_demo_dir(state)
        assert r.returncode == 0 and "nothing was running" in r.stdout, r.stdout
    finally:
        stop_demo_dir(state)
        shutil.rmtree(base, ignore_errors=True)


def test_make_targets_pass_port_and_stop_leftovers():
    """`make demo PORT=…` reaches --port; `make clean` runs --stop before deleting .demo."""
    make = shutil.which("make")
    assert make, "make is needed (apt-get install make)"
    r = subprocess.run([make, "-n", "demo", "PORT=7432"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"-m pgjit\.devtools\.demo --port 7432\s*$", r.stdout, re.M), r.stdout
    env = dict(os.environ, PORT="3000")  # a PORT in the environment belongs to some other tool
    r = subprocess.run([make, "-n", "demo"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert re.search(r"-m pgjit\.devtools\.demo\s*$", r.stdout, re.M), r.stdout
    r = subprocess.run([make, "-n", "clean"], cwd=REPO, capture_output=True, text=True, timeout=60)
    stop_at = r.stdout.find("-m pgjit.devtools.demo --stop --dir .demo")
    assert 0 <= stop_at < r.stdout.find("rm -rf"), r.stdout


def test_demo_and_pgjit_dsn_agree_on_defaults(tmp_path):
    """What `pgjit dsn` assumes without options is what `make demo` serves."""
    import argparse

    from pgjit.devtools import dsncmd

    ap = argparse.ArgumentParser()
    dsncmd.build_parser(ap.add_subparsers())
    args = ap.parse_args(["dsn", "--token", "x"])
    assert (args.host, args.port, args.dbname, args.sslmode) == ("127.0.0.1", 6432, "appdb", "require")
    assert (demo_mod.DEMO_HOST, demo_mod.DEMO_PORT, demo_mod.DEMO_DB, demo_mod.DEMO_SSLMODE) == (args.host, args.port, args.dbname, args.sslmode)
    key = tmp_path / "signing-key.pem"
    assert "--port" not in demo_mod.dsn_command(key, 6432) and "--port 7432" in demo_mod.dsn_command(key, 7432)
    assert demo_mod.client_dsn(6432) == "host=127.0.0.1 port=6432 dbname=appdb user=alice@example.com sslmode=require"


def test_demo_certificates(tmp_path):
    """The throwaway CA: a server certificate for 127.0.0.1/::1/localhost that Python's strict verifier accepts."""
    import ssl

    ca, cert, key = demo_mod.make_tls_files(tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    assert demo_mod._cert_usable(cert, key, ca)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(ca))
    client.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
    for host in ("127.0.0.1", "localhost"):
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        cs = client.wrap_bio(c_in, c_out, server_hostname=host)
        ss = server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for side, out, peer_in in ((cs, c_out, s_in), (ss, s_out, c_in)):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                peer_in.write(out.read())
        assert cs.getpeercert()["subjectAltName"], host
    # Another CA's files are not reused: the pair must match.
    other_ca, _, _ = demo_mod.make_tls_files(tmp_path / "other")
    assert not demo_mod._cert_usable(cert, key, other_ca)


# --------------------------------------------------------------------------- production example

PROD_YAML = REPO / "deploy" / "pgjit.yaml"
PROD_UNIT = REPO / "deploy" / "pgjit.service"


def _etc_paths(node: object) -> list[str]:
    if isinstance(node, dict):
        return [p for v in node.values() for p in _etc_paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in _etc_paths(v)]
    return [node] if isinstance(node, str) and node.startswith("/etc/pgjit/") else []


def _production_tree(tmp_path: Path) -> tuple[Path, list[str]]:
    """deploy/pgjit.yaml with /etc/pgjit/ moved into tmp_path, and every file it names made there."""
    root = tmp_path / "etc" / "pgjit"
    text = PROD_YAML.read_text().replace("/etc/pgjit/", f"{root}/")
    named = _etc_paths(yaml.safe_load(PROD_YAML.read_text()))
    assert sorted(named) == sorted(
        [
            "/etc/pgjit/tls/server.crt",
            "/etc/pgjit/tls/server.key",
            "/etc/pgjit/secrets/appdb-admin-password",
            "/etc/pgjit/tls/db-ca.pem",
            "/etc/pgjit/policies/default.yaml",
        ]
    ), "docs/production.md lists the files deploy/pgjit.yaml names: update both"
    ca, _, _ = demo_mod.make_tls_files(root / "tls")
    shutil.copy(ca, root / "tls" / "db-ca.pem")
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "appdb-admin-password").write_text("s3cret-admin-password\n")
    (root / "policies").mkdir()
    shutil.copy(REPO / "policies" / "default.yaml", root / "policies" / "default.yaml")
    for p in named:
        assert Path(p.replace("/etc/pgjit/", f"{root}/")).is_file(), p
    config = root / "pgjit.yaml"
    config.write_text(text)
    return config, named


def check_config(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PGJIT_")}
    e.update(env)
    return subprocess.run([*pgjit_script(), "check-config", "-c", str(config)], capture_output=True, text=True, timeout=60, env=e)


def test_production_example_passes_check_config(tmp_path):
    config, _ = _production_tree(tmp_path)
    r = check_config(config)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"{config}: OK", r.stdout
    assert "listen 0.0.0.0:6432, client TLS on" in r.stdout, r.stdout
    assert re.search(r"target appdb -> db\.internal\.example\.com:5432/appdb as pgjit_admin .*upstream TLS verify-full", r.stdout), r.stdout
    assert "s3cret" not in r.stdout + r.stderr

    # The admin password from the environment instead of the file.
    (config.parent / "secrets" / "appdb-admin-password").unlink()
    r = check_config(config)
    assert r.returncode == 2 and "password_file" in r.stderr, r.stderr
    r = check_config(config, PGJIT_TARGETS__APPDB__PASSWORD="from-the-environment")
    assert r.returncode == 0, r.stderr

    # A named file that is missing is refused with its key.
    (config.parent / "tls" / "server.key").unlink()
    r = check_config(config, PGJIT_TARGETS__APPDB__PASSWORD="x")
    assert r.returncode == 2 and "tls.key" in r.stderr, r.stderr


def test_production_doc_shows_the_deployed_files():
    doc = (REPO / "docs" / "production.md").read_text()
    assert PROD_YAML.read_text().strip() in doc, "docs/production.md must show deploy/pgjit.yaml as it is"
    assert PROD_UNIT.read_text().strip() in doc, "docs/production.md must show deploy/pgjit.service as it is"
    assert "check-config" in doc


def _unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit(tmp_path):
    unit = _unit_settings(PROD_UNIT.read_text())
    one = {k: v[-1] for k, v in unit.items()}
    assert one["User"] == "pgjit" and one["Group"] == "pgjit"
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict" and one["PrivateTmp"] == "yes"
    assert "/etc/pgjit" in one["ReadOnlyPaths"].split()
    assert int(one["LimitNOFILE"]) >= 4 * yaml.safe_load(PROD_YAML.read_text())["listen"]["max_clients"]
    assert one["Restart"] == "on-failure" and one["KillSignal"] == "SIGTERM"
    grace = yaml.safe_load(PROD_YAML.read_text())["timeouts"]["shutdown_grace"]
    assert float(one["TimeoutStopSec"]) > grace + 10, "systemd must wait out the drain (and the role cleanup after it)"
    assert one["ExecStart"] == "/opt/pgjit/venv/bin/pgjit serve --config /etc/pgjit/pgjit.yaml"
    assert one["ExecStartPre"] == "/opt/pgjit/venv/bin/pgjit check-config --config /etc/pgjit/pgjit.yaml"
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own parser, with the executable pointed at one that exists here
        script = pgjit_script()[0]
        copy = tmp_path / "pgjit.service"
        copy.write_text(PROD_UNIT.read_text().replace("/opt/pgjit/venv/bin/pgjit", script))
        r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
        problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "pgjit.service" in ln]
        assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_readme_quick_start_is_what_the_demo_prints(monkeypatch):
    """The README shows, for the default port, exactly the command lines `make demo` prints."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(demo_mod, "pgjit_script", lambda: ".venv/bin/pgjit")
    readme = (REPO / "README.md").read_text()
    printed = demo_mod.connect_commands("psql", REPO / ".demo/issuer/signing-key.pem", 6432, REPO / ".demo/ca.pem", ".venv/bin/python")
    lines = [ln for _, cmds in printed for ln in cmds]
    assert len(lines) == 6
    for ln in lines:
        assert f"\n{ln}\n" in readme, f"README.md's quick start lacks the demo's line:\n{ln}"
    assert "make demo PORT=" in readme and "sslmode=disable" not in readme
    assert "\nmake test\n" in readme, "the Tests section's command line is what CI runs"


def test_dsn_mcp_format_makes_sslrootcert_absolute(tmp_path):
    """The MCP server runs in another directory: a relative CA path in its URL would not resolve."""
    from pgjit.identity.devissuer import init_issuer

    init_issuer(tmp_path / "issuer", issuer="http://127.0.0.1/dev-issuer")
    base = [*pgjit_script(), "dsn", "--key", str(tmp_path / "issuer" / "signing-key.pem"), "--sub", "alice@example.com", "-q"]
    base += ["--sslmode", "verify-full", "--sslrootcert", "certs/ca.pem"]
    r = subprocess.run([*base, "--format", "mcp"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=clean_env())
    assert r.returncode == 0, r.stderr
    (server,) = json.loads(r.stdout)["mcpServers"].values()
    assert parse_qs(urlsplit(server["args"][-1]).query)["sslrootcert"] == [str(tmp_path / "certs" / "ca.pem")]
    # Other formats are used where they were printed: the path stays as given.
    r = subprocess.run([*base, "--format", "keyword"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=clean_env())
    assert r.returncode == 0 and "sslrootcert=certs/ca.pem" in r.stdout, r.stdout + r.stderr
