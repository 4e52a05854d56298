"""``make demo``: a PostgreSQL with sample data and the gateway in front of it,
serving TLS and logging clients in with OIDC tokens from a developer issuer.

    python -m pgjit.devtools.demo                 # runs until Ctrl-C, printing the gateway's log
    python -m pgjit.devtools.demo --port 7432     # the gateway on another port (make demo PORT=7432)
    python -m pgjit.devtools.demo --check         # log in with a fresh token through psql, exit 0/1
    python -m pgjit.devtools.demo --stop          # stop what a killed demo left running (make clean)

The cluster gets the DBA's one-time JIT setup from ``pgjit/jit/SETUP.md``
(roles pgjit_admin, pgjit_owner, pgjit_read, pgjit_write and their grants on
appdb). A developer issuer (``pgjit dev-issuer init``) signs the tokens; the
gateway verifies them against its ``jwks.json``, creates a just-in-time role
for each session and drops it when the session ends.

The gateway offers TLS with a throwaway CA made at start (the ``cryptography``
package): ``ca.pem`` (the CA's certificate; its key is never written down),
``server.crt`` and ``server.key`` (127.0.0.1, ::1, localhost). Tokens are only
accepted over TLS, as in production, so the printed ``sslmode=require``
commands and ``pgjit dsn``'s defaults work as they are; ``sslmode=verify-full``
with ``sslrootcert=.demo/ca.pem`` also checks the certificate.

State lives in ``.demo/`` (``--dir``): the cluster's data directory ``pgdata``
(kept and reused between runs), the developer issuer ``issuer/`` (kept), the
certificates (kept until they near expiry), ``pgjit.yaml`` (rewritten every
run), ``gateway.log``, and the pid files ``demo.pid`` and ``gateway.pid``
(PostgreSQL keeps its own, ``pgdata/postmaster.pid``). A demo killed with
``kill -9`` leaves its gateway and PostgreSQL running; the next start (or
``--stop``, which ``make clean`` runs) finds them through those pid files and
stops them, and the cluster is reused. When we are root and
PostgreSQL's OS user cannot reach ``.demo`` (a checkout under /root, say), the
data directory lives in ``/tmp/pgjit-demo-<hash>/pgdata`` and ``.demo/pgdata``
is a symlink to it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
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

from pgjit.devtools.dsncmd import DEFAULT_DBNAME, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SSLMODE
from pgjit.devtools.pgcluster import PgCluster, PgClusterError, free_port, pid_alive, stop_escalating, wait_for_port
from pgjit.identity.devissuer import DEV_ISSUER, SIGNING_KEY, init_issuer, mint_token
from pgjit.jit import setupsql

REPO = Path(__file__).resolve().parents[2]
DEMO_USER = "alice@example.com"
DEMO_GROUPS = "analysts"
DEMO_DB = DEFAULT_DBNAME  # what `pgjit dsn` assumes, so its defaults reach the demo
DEMO_HOST = DEFAULT_HOST
DEMO_PORT = DEFAULT_PORT
DEMO_SSLMODE = DEFAULT_SSLMODE
ADMIN_USER = "pgjit_admin"
ADMIN_PASSWORD = "adminpass"
OWNER_ROLE = "pgjit_owner"
CHECK_SQL = "SELECT count(*) FROM customers"
ROLE_SQL = "SELECT current_user"
CHECK_TTL = 600
JIT_ROLE_PATTERN = r"^pgjit_.*_[a-z2-7]{16}$"
SHUTDOWN_GRACE = 5  # seconds open sessions get when the demo stops

CA_FILE = "ca.pem"
CERT_FILE = "server.crt"
KEY_FILE = "server.key"
DEMO_PID_FILE = "demo.pid"
GATEWAY_PID_FILE = "gateway.pid"
CERT_DAYS = 365
CERT_RENEW_DAYS = 7  # certificates closer than this to expiry are made afresh
CERT_NAMES = ("localhost",)
CERT_IPS = ("127.0.0.1", "::1")


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


# --------------------------------------------------------------------------- TLS


def _cert_usable(cert_path: Path, key_path: Path, ca_path: Path) -> bool:
    """Whether the certificates in the state directory can be served as they are."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        if not key_path.is_file():
            return False
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - unreadable, foreign or mismatched files: make new ones
        return False
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    names = set(sans.get_values_for_type(x509.DNSName))
    if not (set(CERT_IPS) <= ips and set(CERT_NAMES) <= names):
        return False
    renew_at = cert.not_valid_after_utc - datetime.timedelta(days=CERT_RENEW_DAYS)
    return datetime.datetime.now(datetime.timezone.utc) < renew_at


def make_tls_files(directory: Path, *, days: int = CERT_DAYS) -> tuple[Path, Path, Path]:
    """A fresh throwaway CA and a server certificate it signed for 127.0.0.1, ::1 and localhost.

    Writes ``ca.pem`` (the CA's certificate; its private key only ever lives in
    memory), ``server.crt`` and ``server.key`` (mode 0600) into ``directory``
    and returns their paths (ca, cert, key). ECDSA P-256 keys, SHA-256
    signatures, the extensions strict verifiers (OpenSSL's X509_STRICT,
    node's tls) want.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgjit demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"pgjit demo CA ({directory.name or 'demo'})"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in CERT_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in CERT_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = key_path.with_name(key_path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, cert_path, key_path


def ensure_tls(state: Path) -> tuple[Path, Path, Path]:
    """The demo's CA and server certificate in ``state`` (made when missing or near expiry)."""
    ca, cert, key = state / CA_FILE, state / CERT_FILE, state / KEY_FILE
    if _cert_usable(cert, key, ca):
        say(f"reusing the demo's throwaway CA {ca} and its server certificate for 127.0.0.1/localhost")
        return ca, cert, key
    ca, cert, key = make_tls_files(state)
    say(f"made a throwaway CA {ca} and a server certificate for 127.0.0.1/localhost ({cert}, key {key})")
    return ca, cert, key


# --------------------------------------------------------------------------- pid files and leftovers


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def write_pid(path: Path, pid: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def _is_our_gateway(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a ``pgjit serve`` of this state directory's config (not a recycled pid)."""
    args = _cmdline(pid)
    if args is None:  # no /proc: the pid file is all we have
        return pid_alive(pid)
    return "serve" in args and str(config) in args


def _is_demo(pid: int) -> bool:
    args = _cmdline(pid)
    if args is None:
        return pid_alive(pid)
    return any("pgjit.devtools.demo" in a or a.endswith("devtools/demo.py") for a in args)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def _signal_until_gone(pid: int, steps: tuple[tuple[signal.Signals, float], ...]) -> bool:
    for sig, wait in steps:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if _wait_gone(pid, wait):
            return True
    return False


def stop_leftovers(state: Path, *, stop_running_demo: bool = False) -> bool:
    """Stop what an earlier demo with this state directory left running; True if anything was.

    A demo that is still alive is stopped with SIGTERM (it then stops its
    gateway and PostgreSQL itself) when ``stop_running_demo``; otherwise that
    is an error: two demos must not share a state directory.
    """
    found = False
    demo_pid_path = state / DEMO_PID_FILE
    demo_pid = read_pid(demo_pid_path)
    if demo_pid is not None and demo_pid != os.getpid() and pid_alive(demo_pid) and _is_demo(demo_pid):
        if not stop_running_demo:
            raise DemoError(
                f"another demo (pid {demo_pid}) is running with the state directory {state}: stop it "
                f"(Ctrl-C in its terminal, or `kill {demo_pid}`), or give this one another --dir"
            )
        found = True
        say(f"stopping the running demo (pid {demo_pid})")
        # SIGTERM: it stops in order; the gateway's drain is SHUTDOWN_GRACE seconds, then at most 15 s more.
        if not _signal_until_gone(demo_pid, ((signal.SIGTERM, SHUTDOWN_GRACE + 25.0), (signal.SIGKILL, 5.0))):
            raise DemoError(f"the demo (pid {demo_pid}) did not stop")
    _remove(demo_pid_path)

    gw_pid_path = state / GATEWAY_PID_FILE
    gw_pid = read_pid(gw_pid_path)
    config = state / "pgjit.yaml"
    if gw_pid is not None and pid_alive(gw_pid) and _is_our_gateway(gw_pid, config):
        found = True
        say(f"stopping the gateway an earlier demo left running (pid {gw_pid}, from {gw_pid_path})")
        # A first SIGTERM drains, a second ends the sessions at once, then SIGKILL.
        steps = ((signal.SIGTERM, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0))
        if not _signal_until_gone(gw_pid, steps):
            raise DemoError(f"the gateway left running (pid {gw_pid}) did not stop")
    _remove(gw_pid_path)

    link = state / "pgdata"
    if link.exists():
        cluster = PgCluster(link.resolve() if link.is_symlink() else link)
        if cluster.running:
            found = True
            say(f"stopping the PostgreSQL an earlier demo left running (pid {cluster.pid}, from {cluster.datadir / 'postmaster.pid'})")
            cluster.stop()
    return found


# --------------------------------------------------------------------------- PostgreSQL


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


def write_config(path: Path, cluster: PgCluster, port: int, issuer_dir: Path | None = None, tls: tuple[Path, Path] | None = None) -> Path:
    """The gateway's config for the demo; ``tls`` is (cert, key) for client TLS."""
    issuer_dir = (issuer_dir or path.parent / "issuer").absolute()
    try:  # an issuer made earlier with another URL keeps it
        issuer = str(json.loads((issuer_dir / "issuer.json").read_text())["issuer"])
    except (OSError, ValueError, KeyError, TypeError):
        issuer = DEV_ISSUER
    cfg = {
        "listen": {"host": DEMO_HOST, "port": port},
        # Clients get TLS with the demo's throwaway CA (ca.pem beside this file).
        "tls": {"cert": str(tls[0]), "key": str(tls[1])} if tls else {},
        "timeouts": {"shutdown_grace": SHUTDOWN_GRACE},
        "oidc": {
            "issuer": issuer,
            "audience": "pgjit",
            "jwks_file": str(issuer_dir / "jwks.json"),
            # As in production: tokens only over TLS (without TLS files, from 127.0.0.1 in clear).
            "allow_insecure_loopback": not tls,
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


def start_gateway(config: Path, log_path: Path, port: int, timeout: float, pid_file: Path | None = None) -> subprocess.Popen[bytes]:
    cmd = gateway_command(config)
    say("starting the gateway: " + " ".join(shlex.quote(c) for c in cmd))
    with open(log_path, "wb") as logf:
        # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    if pid_file is not None:
        write_pid(pid_file, proc.pid)
    if not wait_for_port(DEMO_HOST, port, timeout, alive=lambda: proc.poll() is None):
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else f"did not listen on 127.0.0.1:{port} within {timeout:g} s"
        stop_gateway(proc)
        if pid_file is not None and proc.poll() is not None:
            _remove(pid_file)
        raise DemoError(f"the gateway {why}. Its output ({log_path}):\n{_tail(log_path)}")
    say(f"gateway (pid {proc.pid}) listening on {DEMO_HOST}:{port} with TLS (log: {log_path})")
    return proc


def stop_gateway(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    # SIGTERM drains open sessions; a second one ends them at once; then SIGKILL.
    stop_escalating(proc, ((signal.SIGTERM, 5), (signal.SIGTERM, 5), (signal.SIGKILL, 5)))


def psql_path(cluster: PgCluster) -> str:
    return shutil.which("psql") or cluster.tool("psql")


def client_dsn(port: int, sslmode: str = DEMO_SSLMODE, sslrootcert: str | None = None) -> str:
    root = f" sslrootcert={sslrootcert}" if sslrootcert else ""
    return f"host={DEMO_HOST} port={port} dbname={DEMO_DB} user={DEMO_USER} sslmode={sslmode}{root}"


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


def dsn_command(key: Path, port: int, *extra: str) -> str:
    """``pgjit dsn`` for the demo, relying on its defaults (127.0.0.1, appdb, sslmode=require) where they agree."""
    words = [pgjit_script(), "dsn", "--key", _shown_path(key), "--sub", DEMO_USER, "--groups", DEMO_GROUPS]
    if port != DEFAULT_PORT:
        words += ["--port", str(port)]
    return " ".join([*words, *extra])


def mcp_command(key: Path, port: int, ca: Path) -> str:
    return dsn_command(key, port, "--ttl", "8h", "--sslmode", "verify-full", "--sslrootcert", _shown_path(ca), "--format", "mcp")


PSYCOPG_SNIPPET = 'import psycopg; print(psycopg.connect().execute("SELECT current_user").fetchone()[0])'


def connect_commands(psql: str, key: Path, port: int, ca: Path, python: str) -> list[tuple[str, list[str]]]:
    """What the demo prints: (what it is, the shell lines to run) for each way to connect."""
    return [
        (
            "psql with a fresh token as the password (TLS; the token is valid 1h: run it again for a new one):",
            [psql_command(psql, key, port)],
        ),
        (
            "pgjit dsn prints a connection string with a fresh token (its defaults are this gateway's: sslmode=require):",
            [f'{psql} "$({dsn_command(key, port)})"'],
        ),
        (
            f"The same, also checking the gateway's certificate against the demo's CA ({_shown_path(ca)}):",
            [f'{psql} "$({dsn_command(key, port, "--sslmode", "verify-full", "--sslrootcert", _shown_path(ca))})"'],
        ),
        (
            "psycopg (or any libpq client) from PG* environment variables:",
            [f'eval "$({dsn_command(key, port, "--format", "env")})"', f"{python} -c {shlex.quote(PSYCOPG_SNIPPET)}"],
        ),
        (
            "Cursor / Claude MCP config (paste into .cursor/mcp.json; the token lasts 8h):",
            [mcp_command(key, port, ca)],
        ),
    ]


def python_path() -> str:
    return _shown_path(sys.executable)


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
    ap.add_argument("--stop", action="store_true", help="stop a demo, gateway or PostgreSQL left running with this state directory (e.g. after kill -9) and exit")
    ap.add_argument("--dir", "--state-dir", dest="dir", default=".demo", help="state directory (default: .demo)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"gateway port (default {DEFAULT_PORT}, what `pgjit dsn` assumes; 0 picks a free one)")
    ap.add_argument("--pg-port", type=int, default=None, help="PostgreSQL port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the gateway to listen (default 30)")
    args = ap.parse_args(argv)

    state = Path(args.dir).absolute()
    if args.stop:
        if not state.is_dir():
            say(f"nothing to stop: {state} does not exist")
            return 0
        try:
            if not stop_leftovers(state, stop_running_demo=True):
                say(f"nothing was running with the state directory {state}")
        except (DemoError, PgClusterError) as e:
            say(f"failed: {e}")
            return 1
        return 0
    if not 0 <= args.port <= 65535:
        say(f"--port {args.port} is not a port number")
        return 2
    state.mkdir(parents=True, exist_ok=True)
    try:
        # Before the port check: a gateway left behind by a killed demo holds the port.
        stop_leftovers(state)
    except (DemoError, PgClusterError) as e:
        say(f"failed: {e}")
        return 1
    port = args.port or free_port()
    if not _port_free(port):
        say(f"port {port} on 127.0.0.1 is taken (another gateway, pgbouncer?): choose one with --port (make demo PORT=…)")
        return 1
    demo_pid = state / DEMO_PID_FILE
    write_pid(demo_pid, os.getpid())

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
        ca, cert, tls_key = ensure_tls(state)
        config = write_config(state / "pgjit.yaml", cluster, port, state / "issuer", (cert, tls_key))
        gateway = start_gateway(config, log_path, port, args.timeout, state / GATEWAY_PID_FILE)
        psql = psql_path(cluster)
        if args.check:
            ok = run_check(psql, port, key, cluster)
            if not ok:
                print(f"--- gateway log ({log_path}) ---\n{_tail(log_path)}", flush=True)
            return 0 if ok else 1

        print(flush=True)
        print(f"The gateway is at {DEMO_HOST}:{port}, database {DEMO_DB}, as {DEMO_USER} (group {DEMO_GROUPS}, policy policies/default.yaml: read-only).", flush=True)
        print("Each session gets its own just-in-time role (try SELECT current_user), dropped when it ends.", flush=True)
        shown = "psql" if shutil.which("psql") else shlex.quote(psql)
        for title, lines in connect_commands(shown, key, port, ca, python_path()):
            print(title, flush=True)
            for line in lines:
                print(f"    {line}", flush=True)
        print("PostgreSQL itself, for comparison (no token, no gateway):", flush=True)
        print(f'    {shown} "{cluster.dsn("app", "apppass", DEMO_DB)}"', flush=True)
        print(f"Config: {_shown_path(config)}. Ctrl-C stops the gateway and PostgreSQL. Gateway log follows:\n", flush=True)
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
        if gateway is not None and gateway.poll() is not None:
            _remove(state / GATEWAY_PID_FILE)
        if cluster is not None:
            cluster.stop()
        _remove(demo_pid)
        say("stopped")


if __name__ == "__main__":
    sys.exit(main())
