"""``make demo``: a PostgreSQL with sample data and the gateway in front of it.

    python -m pgjit.devtools.demo            # runs until Ctrl-C, printing the gateway's log
    python -m pgjit.devtools.demo --check    # one query through the gateway with psql, exit 0/1

State lives in ``.demo/`` (``--dir``): the cluster's data directory ``pgdata``
(kept and reused between runs), ``pgjit.yaml`` (rewritten every run) and
``gateway.log``. When we are root and PostgreSQL's OS user cannot reach
``.demo`` (a checkout under /root, say), the data directory lives in
``/tmp/pgjit-demo-<hash>/pgdata`` and ``.demo/pgdata`` is a symlink to it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
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

DEMO_USER = "alice@example.com"
DEMO_PASSWORD = "anything"
DEMO_DB = "appdb"
CHECK_SQL = "SELECT count(*) FROM customers"


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
    say(f"PostgreSQL on 127.0.0.1:{cluster.port} (roles app/apppass, pgjit_admin/adminpass; database {DEMO_DB} with customers and orders)")
    return cluster


def write_config(path: Path, cluster: PgCluster, port: int) -> Path:
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "tls": {},
        "targets": {
            DEMO_DB: {
                "host": "127.0.0.1",
                "port": cluster.port,
                "database": DEMO_DB,
                "user": "app",
                "password": "apppass",
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


def run_check(psql: str, port: int) -> bool:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k.startswith("PGJIT_")}
    env["PGPASSWORD"] = DEMO_PASSWORD
    env["PGCONNECT_TIMEOUT"] = "10"
    cmd = [psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", client_dsn(port), "-c", CHECK_SQL]
    say(f"check: PGPASSWORD={DEMO_PASSWORD} {shlex.quote(psql)} {shlex.quote(client_dsn(port))} -c {shlex.quote(CHECK_SQL)}")
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        say("check FAILED: psql did not finish within 60 s")
        return False
    out = r.stdout.strip()
    if r.returncode == 0 and out.isdigit():
        say(f"check OK: {CHECK_SQL} -> {out}")
        return True
    say(f"check FAILED (psql exit {r.returncode}): {out} {r.stderr.strip()}")
    return False


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
    ap.add_argument("--check", action="store_true", help="run one query through the gateway with psql and exit 0 (ok) or 1")
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
        config = write_config(state / "pgjit.yaml", cluster, port)
        gateway = start_gateway(config, log_path, port, args.timeout)
        psql = psql_path(cluster)
        if args.check:
            ok = run_check(psql, port)
            if not ok:
                print(f"--- gateway log ({log_path}) ---\n{_tail(log_path)}", flush=True)
            return 0 if ok else 1

        print(flush=True)
        print("Connect through the gateway (any password is accepted from 127.0.0.1):", flush=True)
        shown = "psql" if shutil.which("psql") else shlex.quote(psql)
        print(f'    PGPASSWORD={DEMO_PASSWORD} {shown} "{client_dsn(port)}"', flush=True)
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
