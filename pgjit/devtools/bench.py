"""``make bench``: pgjit side by side with a direct connection and PgBouncer.

Every workload runs against the three targets in one process, interleaved
round by round (direct, pgbouncer, pgjit, direct, ...), so drift on the
machine hits all three alike. For the proxies, CPU time is read from
/proc/<pid>/stat before and after each run and divided by the transactions
pgbench reports: the proxy's CPU microseconds per transaction.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from pgjit.devtools.pgcluster import PgCluster, make_temp_base

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """The CPU ``pid`` used, its live children's included (pgjit's audit
    writer is a process of its own: pgjit/audit/process.py)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[11], fields[12] are utime, stime (14th and 15th of the full line)
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            total += cpu_seconds(int(child))
        except OSError:
            pass  # it ended meanwhile
    return total


@dataclass
class Target:
    name: str
    port: int
    user: str
    password: str | Callable[[], str]  # a callable mints a fresh one per run (an OIDC token: JIT mode)
    pid: int | None = None  # proxy process, for CPU accounting
    sslmode: str = "disable"  # require: the client side over TLS

    def secret(self) -> str:
        return self.password() if callable(self.password) else self.password


@dataclass
class Result:
    tps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def run_pgbench(pgbench: str, t: Target, args: list[str], duration: float | None) -> tuple[float, int, str]:
    env = dict(os.environ, PGPASSWORD=t.secret(), PGSSLMODE=t.sslmode)
    cmd = [pgbench, "-h", "127.0.0.1", "-p", str(t.port), "-U", t.user, "-n", *args]
    if duration:
        cmd += ["-T", str(int(duration))]
    cmd.append("appdb")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"pgbench against {t.name} failed:\n{p.stdout}\n{p.stderr}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial", p.stdout).group(1))
    txns = int(re.search(r"number of transactions actually processed: (\d+)", p.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", p.stdout)
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench against {t.name} had failed transactions:\n{p.stdout}")
    return tps, txns, p.stdout


def measure(pgbench: str, t: Target, args: list[str], duration: float | None) -> tuple[float, float | None]:
    before = cpu_seconds(t.pid) if t.pid else None
    tps, txns, _ = run_pgbench(pgbench, t, args, duration)
    cpu = None
    if t.pid and before is not None and txns:
        cpu = (cpu_seconds(t.pid) - before) / txns * 1e6
    return tps, cpu


def start_pgbouncer(workdir: Path, pg: PgCluster, tls: tuple[Path, Path] | None = None) -> tuple[subprocess.Popen, int, int]:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(exe).exists():
        raise SystemExit("pgbouncer is not installed (make sysdeps installs the Debian package)")
    port = free_port()
    (workdir / "userlist.txt").write_text('"app" "apppass"\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
appdb = host=127.0.0.1 port={pg.port} dbname=appdb user=app password=apppass
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
auth_file = {workdir}/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 20
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
""" + (f"""client_tls_sslmode = allow
client_tls_cert_file = {tls[0]}
client_tls_key_file = {tls[1]}
""" if tls else "")
    )
    cmd = [exe, str(ini)]
    if os.geteuid() == 0:
        os.chmod(workdir, 0o777)
        for f in workdir.iterdir():
            os.chmod(f, 0o666)
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_port(port, proc, "pgbouncer")
    # runuser forks pgbouncer as a child: account CPU to the real process.
    pid = int((workdir / "pgbouncer.pid").read_text().strip()) if (workdir / "pgbouncer.pid").exists() else proc.pid
    return proc, port, pid


def start_pgjit(workdir: Path, pg: PgCluster, name: str = "pgjit", *, target: dict | None = None,
                oidc: dict | None = None, extra: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg: dict = {
        "listen": {"host": "127.0.0.1", "port": port, "max_clients": 500},
        "log": {"level": "warning"},
        "targets": {"appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app",
                              "password": "apppass", **(target or {})}},
    }
    if oidc:
        cfg["oidc"] = oidc
    cfg.update(extra or {})
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "pgjit", "serve", "--config", str(path)],
                            stderr=open(workdir / f"{name}.log", "wb"))
    _wait_port(port, proc, name)
    return proc, port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def connect_latency(dsn_for, n: int) -> list[float]:
    """Milliseconds from connect() to the first query's result, n times."""
    import psycopg

    out = []
    for _ in range(n):
        dsn = dsn_for()
        t0 = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            conn.execute("select 1").fetchone()
            out.append((time.perf_counter() - t0) * 1000)
    return out


def jit_setup(workdir: Path, pg: PgCluster) -> dict:
    """The cluster's setup for JIT mode (pgjit.jit.setupsql) and a dev
    issuer; returns the gateway's oidc section (its key: issuer_dir/signing-key.pem)."""
    from pgjit.identity.devissuer import init_issuer
    from pgjit.jit import setupsql

    for tag, db in (("cluster", "postgres"), ("appdb", "appdb")) + ((("pg16", "postgres"),) if pg.version >= 16 else ()):
        for stmt in setupsql.statements(tag):
            try:
                pg.execute(stmt, dbname=db)
            except Exception:  # role already exists (pgjit_admin comes from the bootstrap)
                pass
    pg.execute("ALTER ROLE pgjit_admin PASSWORD 'adminpass'")
    issuer_dir = workdir / "issuer"
    init_issuer(issuer_dir, issuer="http://127.0.0.1/dev-issuer")
    return {"issuer": "http://127.0.0.1/dev-issuer", "audience": "pgjit",
            "jwks_file": str(issuer_dir / "jwks.json"), "allow_insecure_loopback": True}


#: A JIT target: pgjit logs in as pgjit_admin and makes each session's role.
JIT_TARGET = {"user": "pgjit_admin", "password": "adminpass", "jit": {"owner_role": "pgjit_owner"}}


def jit_section(workdir: Path, pg: PgCluster, direct: Target, static_port: int, n: int, oidc: dict) -> None:
    """JIT connect latency: token verification + CREATE ROLE + SCRAM login as
    the new role, against a direct login and pgjit with a static credential."""
    from pgjit.identity.devissuer import mint_token

    proc, port = start_pgjit(workdir, pg, "pgjit-oidc",
                             target=dict(JIT_TARGET, policy=str(REPO / "policies" / "default.yaml")), oidc=oidc)
    # The same with an owner role (policies/examples/migrations.yaml: the
    # role is also made a member of app_migrator and set to it at login).
    owner_proc, owner_port = start_pgjit(
        workdir, pg, "pgjit-oidc-owner",
        target=dict(JIT_TARGET, policy=str(REPO / "policies" / "examples" / "migrations.yaml")), oidc=oidc)
    try:
        key = workdir / "issuer" / "signing-key.pem"

        def token_dsn(port: int = port, groups: tuple[str, ...] = ("analysts",)) -> str:
            tok = mint_token(key, "alice@example.com", list(groups), 600)
            return f"host=127.0.0.1 port={port} dbname=appdb user=alice@example.com password={tok} sslmode=disable"

        def owner_dsn() -> str:
            return token_dsn(owner_port, ("deployers",))

        connect_latency(token_dsn, 3)  # warm up (JWKS, admin connection)
        connect_latency(owner_dsn, 3)
        rows = {
            "direct": connect_latency(lambda: f"host=127.0.0.1 port={direct.port} dbname=appdb user=app password=apppass sslmode=disable", n),
            "pgjit static": connect_latency(lambda: f"host=127.0.0.1 port={static_port} dbname=appdb user=alice password=x sslmode=disable", n),
            "pgjit JIT": connect_latency(token_dsn, n),
            "pgjit JIT+owner": connect_latency(owner_dsn, n),
        }
        print(f"\nconnect latency, connect + first query ({n} sequential connections each)")
        print(f"  {'target':<15} {'p50 ms':>8} {'p95 ms':>8}")
        for name, vals in rows.items():
            print(f"  {name:<15} {percentile(vals, 50):>8.1f} {percentile(vals, 95):>8.1f}")
    finally:
        for p in (proc, owner_proc):
            p.terminate()
            p.wait(15)


def gate_section() -> None:
    """In-process cost of the statement gate per statement: the same text again
    (bytes cache), the same statement with other literals (shape key or
    fingerprint cache), and a statement never seen (full analysis; this
    column includes making a fresh Gate)."""
    import timeit

    from pgjit.policy import Policy
    from pgjit.policy.gate import Gate

    policy = Policy.load(REPO / "policies" / "default.yaml")
    groups = frozenset({"analysts"})
    cases = {
        "pgbench -S": "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
        "psql \\dt": (
            "SELECT n.nspname as \"Schema\", c.relname as \"Name\" FROM pg_catalog.pg_class c "
            "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','') "
            "AND n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_toast' AND pg_catalog.pg_table_is_visible(c.oid) "
            "AND c.oid > {} ORDER BY 1,2;"
        ),
    }
    print("\nstatement gate cost per statement (in process, default policy, microseconds)")
    print(f"  {'statement':<12} {'same text':>9} {'other literals':>15} {'miss':>8}")
    for name, template in cases.items():
        n = 3000
        gate = Gate(policy, cache_size=n * 4)
        same = template.format(1)
        gate.check(same, groups)
        hit = timeit.timeit(lambda: gate.check(same, groups), number=n) / n * 1e6
        texts = iter([template.format(i) for i in range(2, n + 2)])
        fp_hit = timeit.timeit(lambda: gate.check(next(texts), groups), number=n) / n * 1e6
        cold = iter([template.format(i) for i in range(n + 2, 2 * n + 2)])

        def miss() -> None:
            g = Gate(policy)
            g.check(next(cold), groups)

        miss_us = timeit.timeit(miss, number=n) / n * 1e6
        print(f"  {name:<12} {hit:>9.1f} {fp_hit:>15.1f} {miss_us:>8.1f}")


def catalog_section(pg: PgCluster, repeat: int = 5) -> None:
    """The catalog cache: time to load a target's catalog over pgjit's own
    admin connection, the memory the snapshot takes, and the first resolution
    of a statement against it (views are read when first used)."""
    import tracemalloc

    import trio

    from pgjit.catalog import load
    from pgjit.jit.admin import AdminConnection
    from pgjit.policy import Policy
    from pgjit.policy.gate import Gate

    async def one() -> tuple[float, int, object]:
        conn = await AdminConnection.connect("127.0.0.1", pg.port, "appdb", "app", "apppass")
        try:
            tracemalloc.start()
            started = time.perf_counter()
            cat = await load(conn.execute, 1)
            seconds = time.perf_counter() - started
            memory = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            return seconds, memory, cat
        finally:
            await conn.aclose()

    runs = [trio.run(one) for _ in range(repeat)]
    seconds = statistics.median(r[0] for r in runs)
    memory = statistics.median(r[1] for r in runs)
    cat = runs[-1][2]
    gate = Gate(Policy.load(REPO / "policies" / "default.yaml"))
    gate.set_catalog(cat)  # type: ignore[arg-type]
    started = time.perf_counter()
    gate.check("select * from information_schema.columns", ["analysts"])
    first_view = (time.perf_counter() - started) * 1e3
    print("\ncatalog cache (one target, loaded over the admin connection)")
    print(f"  load {seconds * 1e3:.1f} ms (median of {repeat}), {memory / 1024:.0f} KiB, "
          + ", ".join(f"{k} {v}" for k, v in cat.size.items()))  # type: ignore[attr-defined]
    print(f"  first resolution of a statement on information_schema.columns: {first_view:.1f} ms")


def _wait_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} did not listen on {port} within {timeout} s")


def fmt_row(name: str, r: Result, direct_tps: float) -> str:
    tps = statistics.median(r.tps)
    cpu = f"{statistics.median(r.cpu_us):7.1f}" if r.cpu_us else "      -"
    return f"  {name:<11} {tps:>11,.0f} {tps / direct_tps:>7.2f}x {cpu}"


APPROVALS_POLICY = """version: 1
rules:
  - name: deletes-need-approval
    match: {kind: [delete]}
    action: require_approval
    approvers: [dba]
default: allow
"""


def held_section(pgbench: str, t: Target, clients: int, duration: float, rounds: int, held: int = 50) -> None:
    """-S simple through a gateway that holds statements for approval, with
    none held and with ``held`` sessions each waiting on a held DELETE:
    held statements must hold nothing else (issue 13)."""
    import threading

    import psycopg

    args = ["-S", "-M", "simple", "-c", str(clients), "-j", "2"]
    conns: list = []
    threads: list = []

    def hold_one() -> None:
        conn = psycopg.connect(f"host=127.0.0.1 port={t.port} dbname=appdb user=held{len(conns)} password=x",
                               autocommit=True, connect_timeout=10)
        conns.append(conn)
        try:
            conn.execute("DELETE FROM pgbench_history WHERE false")
        except Exception:
            pass  # the session closes at the end (the request is withdrawn)

    base, loaded = [], []
    for _ in range(rounds):
        base.append(measure(pgbench, t, args, duration)[0])
    for _ in range(held):
        th = threading.Thread(target=hold_one, daemon=True)
        th.start()
        threads.append(th)
    deadline = time.monotonic() + 30
    while len(conns) < held and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the holds are registered
    waiting = sum(th.is_alive() for th in threads)  # still blocked in their held DELETE
    for _ in range(rounds):
        loaded.append(measure(pgbench, t, args, duration)[0])
    waiting = min(waiting, sum(th.is_alive() for th in threads))
    for c in conns:
        try:
            c.close()
        except Exception:
            pass
    b, lo = statistics.median(base), statistics.median(loaded)
    print(f"\nheld statements (issue 13): -S simple, {clients} clients, through {t.name}")
    print(f"  none held     {b:>10,.0f} TPS")
    print(f"  {waiting} held       {lo:>10,.0f} TPS   ({lo / b:.2f}x; {waiting} of {held} sessions waited for an approval throughout)")


MASK_POLICY = """version: 1
rules: []
default: allow
masking:
  - name: bench
    columns: ["public.pgbench_accounts.filler"]
    function: partial
    keep: 4
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pgjit-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10, help="seconds per pgbench run (default 10)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per workload (default 2)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale; 10 gives the 1M-row table")
    ap.add_argument("--only", help="comma-separated workload names to run")
    ap.add_argument("--targets", help="comma-separated targets to measure (direct is always kept: the ratios are "
                                      "to it), e.g. pgbouncer,jit+gate,jit+audit")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--connects", type=int, default=100, help="connections per target for the connect-latency section")
    args = ap.parse_args(argv)

    workdir = Path(args.workdir) if args.workdir else make_temp_base("pgjit-bench-")
    workdir.mkdir(parents=True, exist_ok=True)
    # ssl on: direct TLS is one of the targets; its certificate serves
    # pgjit's and PgBouncer's client TLS too.
    pg = PgCluster(workdir / "pgdata", ssl=True)
    pg.init()
    pg.start({"max_connections": "200"})
    procs: list[subprocess.Popen] = []
    try:
        pg.bootstrap_test_roles()
        pgbench = str(Path(pg.bindir) / "pgbench") if (Path(pg.bindir) / "pgbench").exists() else "pgbench"
        direct = Target("direct", pg.port, "app", "apppass")
        init_env = dict(os.environ, PGPASSWORD="apppass")
        subprocess.run([pgbench, "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "app", "appdb"],
                       env=init_env, check=True, capture_output=True)
        bouncer_dir = workdir / "pgbouncer"
        bouncer_dir.mkdir(exist_ok=True)
        tls_files = (workdir / "tls-cert.pem", workdir / "tls-key.pem")
        tls_files[0].write_bytes(pg.server_cert_path.read_bytes())
        tls_files[1].write_bytes(pg.server_key_path.read_bytes())
        os.chmod(tls_files[1], 0o644)  # PgBouncer runs as postgres, pgjit as this user
        bproc, bport, bpid = start_pgbouncer(bouncer_dir, pg, tls=tls_files)
        procs.append(bproc)
        jproc, jport = start_pgjit(workdir, pg, extra={"tls": {"cert": str(tls_files[0]), "key": str(tls_files[1])}})
        procs.append(jproc)
        gproc, gport = start_pgjit(workdir, pg, "pgjit-gated", target={"policy": str(REPO / "policies" / "default.yaml")})
        procs.append(gproc)
        # JIT mode (an OIDC token as the password, a role made for each
        # session), the default policy and the audit trail on (SQLite store
        # in the work directory): what the audit's targets are measured on.
        from pgjit.identity.devissuer import mint_token

        oidc = jit_setup(workdir, pg)
        # The same without the audit trail: what the audit's cost is measured
        # against (JIT mode's own per-statement cost, e.g. the policy's
        # statement_timeout the server arms for each statement, is in both).
        jgproc, jgport = start_pgjit(workdir, pg, "pgjit-jit-gated", oidc=oidc,
                                     target=dict(JIT_TARGET, policy=str(REPO / "policies" / "default.yaml")))
        procs.append(jgproc)
        aproc, aport = start_pgjit(workdir, pg, "pgjit-jit-audited", oidc=oidc,
                                   target=dict(JIT_TARGET, policy=str(REPO / "policies" / "default.yaml")),
                                   extra={"store": {"url": f"sqlite:///{workdir / 'audit' / 'audit.db'}"},
                                          "audit": {"checkpoint_key": "bench-checkpoint-key-0123456789"}})
        procs.append(aproc)
        # Masking (issue 12): a policy that masks one column of pgbench's
        # accounts table (filler, char(84)) for everyone.
        mask_policy = workdir / "masking.yaml"
        mask_policy.write_text(MASK_POLICY)
        mproc, mport = start_pgjit(workdir, pg, "pgjit-masked", target={"policy": str(mask_policy)})
        procs.append(mproc)
        # Approvals (issue 13): a gateway whose policy holds DELETEs for an
        # approval; -S simple through it with none held and with 50 held.
        appr_policy = workdir / "approvals.yaml"
        appr_policy.write_text(APPROVALS_POLICY)
        hproc, hport = start_pgjit(workdir, pg, "pgjit-approvals", target={"policy": str(appr_policy)},
                                   extra={"store": {"url": f"sqlite:///{workdir / 'approvals' / 'store.db'}"},
                                          "audit": {"checkpoint_key": "bench-checkpoint-key-0123456789"},
                                          "approvals": {"hold_timeout": 3600}})
        procs.append(hproc)
        token_key = workdir / "issuer" / "signing-key.pem"

        def fresh_token() -> str:
            return mint_token(token_key, "alice@example.com", ["analysts"], 900)

        targets = [direct, Target("pgbouncer", bport, "app", "x", bpid), Target("pgjit", jport, "alice", "x", jproc.pid),
                   Target("pgjit+gate", gport, "alice", "x", gproc.pid),
                   Target("jit+gate", jgport, "alice@example.com", fresh_token, jgproc.pid),
                   Target("jit+audit", aport, "alice@example.com", fresh_token, aproc.pid)]
        masked = Target("pgjit+mask", mport, "alice", "x", mproc.pid)
        tls_targets = [direct, Target("direct+tls", pg.port, "app", "apppass", sslmode="require"),
                       targets[1], Target("pgbouncer+tls", bport, "app", "x", bpid, sslmode="require"),
                       targets[2], Target("pgjit+tls", jport, "alice", "x", jproc.pid, sslmode="require")]
        approving = Target("pgjit+approvals", hport, "alice", "x", hproc.pid)

        big = workdir / "big.sql"
        big.write_text("select aid, bid, abalance, filler from pgbench_accounts;\n")
        big_clean = workdir / "big-clean.sql"
        big_clean.write_text("select aid, bid, abalance from pgbench_accounts;\n")
        c, j = str(args.clients), "2"
        workloads = {
            "select-simple": (["-S", "-M", "simple", "-c", c, "-j", j], args.duration),
            "select-extended": (["-S", "-M", "extended", "-c", c, "-j", j], args.duration),
            "select-prepared": (["-S", "-M", "prepared", "-c", c, "-j", j], args.duration),
            "tpcb-simple": (["-M", "simple", "-c", c, "-j", j], args.duration),
            "1M-row-result": (["-f", str(big), "-c", "1", "-t", "3"], None),
            # One client, one round trip at a time: what each proxy adds per round trip.
            "latency-1client": (["-S", "-M", "simple", "-c", "1", "-j", "1"], args.duration),
            # Masking: 1M rows with the masked column (filler) and without it,
            # through a masked session, against pgjit+gate and direct.
            "1M-masked": (["-f", str(big), "-c", "1", "-t", "3"], None),
            "1M-unmasked": (["-f", str(big_clean), "-c", "1", "-t", "3"], None),
            # TLS (issue 14): the same gateway, PgBouncer and server with and without client TLS.
            "select-simple-tls": (["-S", "-M", "simple", "-c", c, "-j", j], args.duration),
        }
        if args.only:
            keep = set(args.only.split(","))
            workloads = {k: v for k, v in workloads.items() if k in keep}

        print(f"pgjit benchmark: {os.cpu_count()} cores, PostgreSQL {pg.version}, pgbench scale {args.scale}, "
              f"{args.clients} clients, {args.duration:.0f} s per run, {args.rounds} interleaved rounds (medians shown)")
        rows_1m = args.scale * 100_000
        for name, (wargs, duration) in workloads.items():
            # The default policy is read-only: TPC-B's writes are refused by design.
            wtargets = [t for t in targets if not (name.startswith("tpcb") and t.name in ("pgjit+gate", "jit+gate", "jit+audit"))]
            if name in ("1M-masked", "1M-unmasked"):
                wtargets = [direct, targets[3], masked]  # direct, pgjit+gate, pgjit+mask
            elif name == "select-simple-tls":
                wtargets = tls_targets
            elif name in ("select-simple", "latency-1client"):
                wtargets = wtargets + [masked]  # a masked session's small statements (the Python path)
            if args.targets:
                wanted = set(args.targets.split(",")) | {"direct"}
                wtargets = [t for t in wtargets if t.name in wanted]
            results = {t.name: Result() for t in wtargets}
            for _ in range(args.rounds):
                for t in wtargets:
                    tps, cpu = measure(pgbench, t, wargs, duration)
                    results[t.name].tps.append(tps)
                    if cpu is not None:
                        results[t.name].cpu_us.append(cpu)
            direct_tps = statistics.median(results["direct"].tps)
            unit = "TPS" if not name.startswith("1M") else "results/s"
            print(f"\n{name}")
            print(f"  {'target':<10} {unit:>11} {'ratio':>8} {'proxy CPU us/txn':>17}")
            for t in wtargets:
                print(fmt_row(t.name, results[t.name], direct_tps))
            med = {t.name: statistics.median(results[t.name].tps) for t in wtargets}
            if "jit+audit" in med and "jit+gate" in med and "pgbouncer" in med:
                # The audit trail's targets (issue 11): <= 10 % of TPS against audit off
                # (JIT mode, the same policy), >= 0.85x PgBouncer on -S simple.
                print(f"  audit costs {(1 - med['jit+audit'] / med['jit+gate']) * 100:.1f} % of TPS against jit+gate; "
                      f"jit+audit = {med['jit+audit'] / med['pgbouncer']:.2f}x pgbouncer, "
                      f"jit+gate = {med['jit+gate'] / med['pgbouncer']:.2f}x pgbouncer")
            if name == "latency-1client":
                base_us = 1e6 / direct_tps
                for t in wtargets[1:]:
                    added = 1e6 / statistics.median(results[t.name].tps) - base_us
                    print(f"  {t.name:<10} adds {added:6.1f} us per round trip (direct: {base_us:.1f} us)")
            if name.startswith("1M"):
                for t in wtargets:
                    rps = statistics.median(results[t.name].tps) * rows_1m
                    print(f"  {t.name:<10} {rps:>14,.0f} rows/s")
            if name == "select-simple-tls":
                # TLS's targets: >= 0.8x pgjit's own plain TCP, >= PgBouncer with TLS.
                print(f"  pgjit+tls = {med['pgjit+tls'] / med['pgjit']:.2f}x pgjit (plain TCP), "
                      f"{med['pgjit+tls'] / med['pgbouncer+tls']:.2f}x pgbouncer+tls; "
                      f"direct+tls = {med['direct+tls'] / med['direct']:.2f}x direct")
            if name.startswith("1M-") and "pgjit+mask" in med:
                # Masking's targets: >= 0.5x the unmasked pass-through with a masked
                # column; within 5 % of it without one.
                print(f"  pgjit+mask = {med['pgjit+mask'] / med['pgjit+gate']:.2f}x pgjit+gate "
                      f"({'one masked column' if name == '1M-masked' else 'no masked column'})")
        if not args.only or "held" in args.only.split(","):
            held_section(pgbench, approving, args.clients, args.duration, args.rounds)
        if not args.only or "connect" in args.only.split(","):
            jit_section(workdir, pg, direct, jport, args.connects, oidc)
        if not args.only or "gate" in args.only.split(","):
            gate_section()
        if not args.only or "catalog" in args.only.split(","):
            catalog_section(pg)
        return 0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if (workdir / "pgbouncer" / "pgbouncer.pid").exists():
            try:
                os.kill(int((workdir / "pgbouncer" / "pgbouncer.pid").read_text()), 15)
            except (OSError, ValueError):
                pass
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
