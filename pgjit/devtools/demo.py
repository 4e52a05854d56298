"""``make demo``: a PostgreSQL with sample data and the gateway in front of it,
logging clients in with OIDC tokens from a developer issuer.

    python -m pgjit.devtools.demo            # runs until Ctrl-C, printing the gateway's log
    python -m pgjit.devtools.demo --check    # log in with a fresh token through psql, exit 0/1

The cluster gets the DBA's one-time JIT setup from ``pgjit/jit/SETUP.md``
(roles pgjit_admin, pgjit_owner, pgjit_read, pgjit_write and their grants on
appdb). A developer issuer (``pgjit dev-issuer init``) signs the tokens; the
gateway verifies them against its ``jwks.json``, creates a just-in-time role
for each session and drops it when the session ends.

State lives in ``.demo/`` (``--dir``): the cluster's data directory ``pgdata``
(kept and reused between runs), the developer issuer ``issuer/`` (kept),
``pgjit.yaml`` (rewritten every run) and ``gateway.log``. When we are root and
PostgreSQL's OS user cannot reach ``.demo`` (a checkout under /root, say), the
data directory lives in ``/tmp/pgjit-demo-<hash>/pgdata`` and ``.demo/pgdata``
is a symlink to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import yaml

from pgjit.devtools.pgcluster import PgCluster, PgClusterError, free_port, wait_for_port
from pgjit.identity.devissuer import DEV_ISSUER, SIGNING_KEY, init_issuer, mint_token
from pgjit.jit import setupsql

REPO = Path(__file__).resolve().parents[2]
DEMO_USER = "alice@example.com"
DEMO_GROUPS = "analysts"
DEMO_DB = "appdb"
ADMIN_USER = "pgjit_admin"
ADMIN_PASSWORD = "adminpass"
OWNER_ROLE = "pgjit_owner"
CHECK_SQL = "SELECT count(*) FROM customers"
ROLE_SQL = "SELECT current_user"
CHECK_TTL = 600
JIT_ROLE_PATTERN = r"^pgjit_.*_[a-z2-7]{16}$"


def say(msg: str) -> None:
    try:
        print(f"demo: {msg}", flush=True)
    except OSError:  # the terminal went away (SIGHUP, closed pipe): carry on cleaning up
        pass


class DemoError(Exception):
    pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pick_datadir(state: Path) -> Path:
    """``state/pgdata``, or a /tmp directory symlinked there when the server's user cannot reach ``state``."""
    link = state / "pgdata"
    if link.is_symlink():
        return link.resolve()
    probe = PgCluster(link)
    if probe.can_reach(state):
        return link
    digest = hashlib.sha1(str(state).encode()).hexdigest()[:10]
    base = Path("/tmp") / f"pgjit-demo-{digest}"
    base.mkdir(mode=0o711, exist_ok=True)
    base.chmod(0o711)
    real = base / "pgdata"
    state.mkdir(parents=True, exist_ok=True)
    link.symlink_to(real)
    say(f"{state} is out of reach of OS user {probe.os_user}: data directory is {real} (symlinked from {link})")
    return real


def start_cluster(state: Path, pg_port: int | None) -> PgCluster:
    datadir = pick_datadir(state)
    cluster = PgCluster(datadir, port=pg_port)
    if cluster.initialized and cluster.data_version != cluster.version:
        say(f"{datadir} was made by PostgreSQL {cluster.data_version}, binaries are {cluster.version}: starting afresh")
        cluster.stop()
        shutil.rmtree(datadir)
    if cluster.initialized:
        say(f"reusing the PostgreSQL {cluster.version_string} cluster in {datadir}")
    else:
        say(f"initialising a PostgreSQL {cluster.version_string} cluster in {datadir}")
        cluster.init()
    cluster.start()
    cluster.bootstrap_test_roles()
    apply_jit_setup(cluster)
    say(f"PostgreSQL on 127.0.0.1:{cluster.port} (roles app/apppass, {ADMIN_USER}/{ADMIN_PASSWORD}; database {DEMO_DB} with customers and orders; JIT setup from pgjit/jit/SETUP.md)")
    return cluster


def apply_jit_setup(cluster: PgCluster) -> None:
    """SETUP.md's one-time DBA SQL (cluster, appdb and, on 16+, pg16 blocks), idempotently.

    The sample bootstrap made pgjit_admin already, so SETUP.md's CREATE ROLE
    (with its placeholder password) is skipped; the admin's password is set to
    the demo's afterwards in any case.
    """
    import psycopg

    blocks = [("cluster", "postgres"), (DEMO_DB, DEMO_DB)]
    if cluster.version >= 16:
        blocks.append(("pg16", "postgres"))
    try:
        for tag, db in blocks:
            with cluster.connect(dbname=db) as conn:
                for stmt in setupsql.statements(tag):
                    try:
                        conn.execute(stmt)
                    except psycopg.errors.DuplicateObject:
                        pass
        with cluster.connect() as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(f"ALTER ROLE {ADMIN_USER} LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}'")
    except (psycopg.Error, LookupError) as e:
        raise DemoError(f"applying pgjit/jit/SETUP.md failed: {e}") from None


def ensure_issuer(directory: Path) -> Path:
    """The developer issuer in ``directory`` (created when missing); returns its signing key."""
    key = directory / SIGNING_KEY
    if key.is_file():
        say(f"reusing the developer issuer in {directory}")
    else:
        init_issuer(directory, issuer=DEV_ISSUER)
        say(f"created a developer issuer in {directory} (signing key {key.name}, public keys jwks.json)")
    return key


def default_policy() -> Path:
    policy = REPO / "policies" / "default.yaml"
    if not policy.is_file():
        raise DemoError(f"the default policy {policy} is missing (run the demo from a pgjit checkout)")
    return policy


def write_config(path: Path, cluster: PgCluster, port: int, issuer_dir: Path | None = None) -> Path:
    issuer_dir = (issuer_dir or path.parent / "issuer").absolute()
    try:  # an issuer made earlier with another URL keeps it
        issuer = str(json.loads((issuer_dir / "issuer.json").read_text())["issuer"])
    except (OSError, ValueError, KeyError, TypeError):
        issuer = DEV_ISSUER
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "tls": {},
        "oidc": {
            "issuer": issuer,
            "audience": "pgjit",
            "jwks_file": str(issuer_dir / "jwks.json"),
            # Tokens over plain TCP only from 127.0.0.1 (the demo has no TLS certificate).
            "allow_insecure_loopback": True,
        },
        "targets": {
            DEMO_DB: {
                "host": "127.0.0.1",
                "port": cluster.port,
                "database": DEMO_DB,
                # The JIT broker's admin login (CREATEROLE, not superuser).
                "user": ADMIN_USER,
                "password": ADMIN_PASSWORD,
                "policy": str(default_policy()),
                "jit": {"owner_role": OWNER_ROLE},
            }
        },
    }
    path.write_text("# Written by pgjit.devtools.demo on every run.\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def gateway_command(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "pgjit"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "serve", "--config", str(config)]
    return [sys.executable, "-m", "pgjit", "serve", "--config", str(config)]


def start_gateway(config: Path, log_path: Path, port: int, timeout: float) -> subprocess.Popen[bytes]:
    cmd = gateway_command(config)
    say("starting the gateway: " + " ".join(shlex.quote(c) for c in cmd))
    with open(log_path, "wb") as logf:
        # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    if not wait_for_port("127.0.0.1", port, timeout, alive=lambda: proc.poll() is None):
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else f"did not listen on 127.0.0.1:{port} within {timeout:g} s"
        stop_gateway(proc)
        raise DemoError(f"the gateway {why}. Its output ({log_path}):\n{_tail(log_path)}")
    say(f"gateway listening on 127.0.0.1:{port} (log: {log_path})")
    return proc


def stop_gateway(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    # SIGTERM drains open sessions; a second one ends them at once; then SIGKILL.
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def psql_path(cluster: PgCluster) -> str:
    return shutil.which("psql") or cluster.tool("psql")


def client_dsn(port: int) -> str:
    return f"host=127.0.0.1 port={port} dbname={DEMO_DB} user={DEMO_USER} sslmode=disable"


def _shown_path(path: Path | str) -> str:
    """``path`` relative to the working directory when it is below it (as a person would type it)."""
    p = Path(path)
    try:
        return shlex.quote(str(p.absolute().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(p))


def pgjit_script() -> str:
    script = Path(sys.executable).parent / "pgjit"
    if script.is_file() and os.access(script, os.X_OK):
        return _shown_path(script)
    return f"{shlex.quote(sys.executable)} -m pgjit"


def token_command(key: Path, ttl: str = "1h") -> str:
    return f"{pgjit_script()} token --key {_shown_path(key)} --sub {DEMO_USER} --groups {DEMO_GROUPS} --ttl {ttl}"


def psql_command(psql: str, key: Path, port: int) -> str:
    return f'PGPASSWORD="$({token_command(key)})" {psql} "{client_dsn(port)}"'


def mcp_command(key: Path, port: int) -> str:
    return (
        f"{pgjit_script()} dsn --key {_shown_path(key)} --sub {DEMO_USER} --groups {DEMO_GROUPS}"
        f" --ttl 8h --port {port} --dbname {DEMO_DB} --sslmode disable --format mcp"
    )


def jit_roles(cluster: PgCluster) -> list[str]:
    rows = cluster.execute("SELECT rolname FROM pg_roles WHERE rolname ~ %s ORDER BY 1", (JIT_ROLE_PATTERN,))
    return [r[0] for r in rows]


def run_check(psql: str, port: int, key: Path, cluster: PgCluster | None = None) -> bool:
    """Mint a token, log in through the gateway with psql and run two queries."""
    try:
        token = mint_token(key, DEMO_USER, [DEMO_GROUPS], CHECK_TTL)
    except (OSError, ValueError, KeyError) as e:
        say(f"check FAILED: cannot mint a token with {key}: {e}")
        return False
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k.startswith("PGJIT_")}
    env["PGPASSWORD"] = token
    env["PGCONNECT_TIMEOUT"] = "10"
    cmd = [psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", client_dsn(port), "-c", CHECK_SQL, "-c", ROLE_SQL]
    say(
        f"check: PGPASSWORD=<token for {DEMO_USER}, groups {DEMO_GROUPS}, {CHECK_TTL // 60} min> {shlex.quote(psql)} "
        f"{shlex.quote(client_dsn(port))} -c {shlex.quote(CHECK_SQL)} -c {shlex.quote(ROLE_SQL)}"
    )
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        say("check FAILED: psql did not finish within 60 s")
        return False
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or len(lines) != 2 or not lines[0].isdigit():
        say(f"check FAILED (psql exit {r.returncode}): {r.stdout.strip()} {r.stderr.strip()}".replace(token, "<token>"))
        return False
    count, role = lines
    say(f"check OK: {CHECK_SQL} -> {count}")
    if not re.fullmatch(JIT_ROLE_PATTERN, role):
        say(f"check FAILED: {ROLE_SQL} -> {role}, not a just-in-time role")
        return False
    say(f"check OK: {ROLE_SQL} -> {role} (the just-in-time role of that session)")
    if cluster is not None:
        deadline = time.monotonic() + 15
        while role in jit_roles(cluster):
            if time.monotonic() > deadline:
                say(f"check FAILED: {role} still exists 15 s after the session ended")
                return False
            time.sleep(0.2)
        say(f"check OK: {role} was dropped when the session ended")
    return True


def follow(path: Path, pos: int, out: IO[str]) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except OSError:
        return pos
    if data:
        out.write(data.decode("utf-8", "replace"))
        out.flush()
    return pos + len(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pgjit.devtools.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="log in through the gateway with a fresh token, run two queries with psql and exit 0 (ok) or 1")
    ap.add_argument("--dir", default=".demo", help="state directory (default: .demo)")
    ap.add_argument("--port", type=int, default=6432, help="gateway port (default 6432; 0 picks a free one)")
    ap.add_argument("--pg-port", type=int, default=None, help="PostgreSQL port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the gateway to listen (default 30)")
    args = ap.parse_args(argv)

    state = Path(args.dir).absolute()
    state.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    if not _port_free(port):
        say(f"port {port} on 127.0.0.1 is taken (another gateway, pgbouncer?): choose one with --port")
        return 1

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM and a closed terminal stop the demo in order, like Ctrl-C.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    cluster: PgCluster | None = None
    gateway: subprocess.Popen[bytes] | None = None
    log_path = state / "gateway.log"
    try:
        cluster = start_cluster(state, args.pg_port)
        key = ensure_issuer(state / "issuer")
        config = write_config(state / "pgjit.yaml", cluster, port, state / "issuer")
        gateway = start_gateway(config, log_path, port, args.timeout)
        psql = psql_path(cluster)
        if args.check:
            ok = run_check(psql, port, key, cluster)
            if not ok:
                print(f"--- gateway log ({log_path}) ---\n{_tail(log_path)}", flush=True)
            return 0 if ok else 1

        print(flush=True)
        print("Connect through the gateway with a fresh token as the password (valid 1h; run it again for a new one):", flush=True)
        shown = "psql" if shutil.which("psql") else shlex.quote(psql)
        print(f"    {psql_command(shown, key, port)}", flush=True)
        print("Each session gets its own just-in-time role (try SELECT current_user), dropped when it ends.", flush=True)
        print("Cursor / Claude MCP config (paste into .cursor/mcp.json; the token lasts 8h):", flush=True)
        print(f"    {mcp_command(key, port)}", flush=True)
        print("PostgreSQL itself, for comparison:", flush=True)
        print(f'    psql "{cluster.dsn("app", "apppass", DEMO_DB)}"', flush=True)
        print(f"Config: {config}. Ctrl-C stops the gateway and PostgreSQL. Gateway log follows:\n", flush=True)
        pos = 0
        parent = os.getppid()
        while True:
            if os.getppid() != parent:  # `make demo` was killed with its terminal: don't outlive it
                say("the parent process is gone")
                return 1
            pos = follow(log_path, pos, sys.stdout)
            if gateway.poll() is not None:
                follow(log_path, pos, sys.stdout)
                say(f"the gateway exited with code {gateway.returncode}")
                return 1
            if not cluster.running:
                say(f"PostgreSQL stopped unexpectedly; its log:\n{_tail(cluster.log_path)}")
                return 1
            time.sleep(0.3)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    except (DemoError, PgClusterError) as e:
        say(f"failed: {e}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        stop_gateway(gateway)
        if cluster is not None:
            cluster.stop()
        say("stopped")


if __name__ == "__main__":
    sys.exit(main())
