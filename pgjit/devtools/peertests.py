"""``make peer-tests``: psycopg 3's own test suite, run directly and through pgjit.

::

    python -m pgjit.devtools.peertests --psycopg-src /path/to/psycopg
    python -m pgjit.devtools.peertests -k notify          # a subset
    python -m pgjit.devtools.peertests --help

What it does, in order:

1. makes (or reuses) a separate virtualenv, ``.peer-venv`` by default, with
   psycopg and psycopg_pool (built from the checkout by default, so the code
   is the one its tests were written for), pytest, pytest-timeout, anyio,
   pproxy and dnspython. pgjit's own ``.venv`` is not touched;
2. starts a throwaway PostgreSQL cluster (:class:`~pgjit.devtools.pgcluster.PgCluster`,
   ``max_prepared_transactions = 10`` as psycopg's CI has) with a database
   ``psycopg_test``;
3. starts ``pgjit serve`` in pass-through mode in front of it: no ``oidc``
   section, no policy, ``auth.mode: loopback_any_password``, one target
   ``psycopg_test`` that logs in as the cluster's superuser, 127.0.0.1 only;
4. runs psycopg's ``tests/`` with pytest twice, with ``PSYCOPG_TEST_DSN``
   first naming PostgreSQL, then the gateway (same user, password and
   database in both), each test's outcome recorded as it finishes by
   :mod:`pgjit.devtools.peertests_plugin`;
5. runs every test whose outcome differs once more, both ways, to tell a
   difference that reproduces from a flaky one;
6. prints the counts of both runs and each difference, split into
   *expected* (pgjit refuses the thing on purpose: :data:`EXPECTED_DIFFERENCES`)
   and *unexpected*, with the failure's last lines and the gateway's warning
   and error log lines written while the test ran.

Exit status: 0 when every difference is expected, 1 when any is not, 2 when
the run itself could not be made (no checkout, no PostgreSQL, the gateway
did not start, a pytest run produced no results).

Everything a run leaves (pytest's output, the per-test results, the gateway's
JSON log, ``summary.json``) is in the work directory it prints (``--workdir``,
a fresh ``/tmp/pgjit-peer-…`` by default); the cluster is removed at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import calendar
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import yaml

from pgjit.devtools.pgcluster import PgCluster, PgClusterError, make_temp_base, stop_escalating

REPO = Path(__file__).resolve().parents[2]
PLUGIN = Path(__file__).with_name("peertests_plugin.py")
PLUGIN_MODULE = "peertests_plugin"
DEFAULT_VENV = REPO / ".peer-venv"
DBNAME = "psycopg_test"

#: Packages the suite needs besides psycopg and psycopg_pool (psycopg's ``test``
#: extra, less mypy, whose tests are deselected, and pytest-cov/pytest-randomly,
#: which are not needed: the order is kept the same in both runs on purpose).
TEST_REQUIREMENTS = ("pytest>=8", "pytest-timeout>=2.3", "anyio>=4.0", "pproxy>=2.7", "dnspython>=2.1")

#: The default marker expression. ``mypy`` tests type-check example files with
#: mypy; they open no connection and take minutes.
DEFAULT_MARKERS = "not mypy"

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


@dataclass(frozen=True)
class Expected:
    """A difference pgjit makes on purpose.

    A test's difference is expected only when the test passed (or was
    otherwise not failing) directly, failed or errored through pgjit, its
    node id matches ``nodeid`` (fnmatch), and its failure text through pgjit
    matches ``evidence`` (a regular expression): the refusal must be pgjit's
    own, with pgjit's own message, not merely a failure near the feature.
    """

    name: str
    reason: str
    evidence: str
    nodeid: str = "*"

    def matches(self, nodeid: str, message: str) -> bool:
        return fnmatch.fnmatchcase(nodeid, self.nodeid) and re.search(self.evidence, message or "") is not None


#: What pgjit refuses by design (README, "What clients see"). Each entry's
#: evidence is the text of pgjit's own refusal.
EXPECTED_DIFFERENCES: tuple[Expected, ...] = (
    Expected(
        "function-call",
        "the FunctionCall ('F') protocol message bypasses SQL inspection: pgjit answers ERROR 0A000",
        r"the FunctionCall protocol message is not allowed through pgjit",
    ),
    Expected(
        "replication",
        "replication connections (physical or logical) are refused with FATAL 0A000",
        r"replication connections are not supported through pgjit",
    ),
    Expected(
        "gssenc",
        "GSS encryption is not offered: pgjit answers 'N' to GSSENCRequest, so gssencmode=require fails",
        # libpq's own words: pgjit's 'N' leaves it nothing else to say.
        r"GSSAPI encryption required but was impossible",
    ),
)

_FAILING = ("failed", "error")


# ---------------------------------------------------------------- output


def say(msg: str = "") -> None:
    print(msg, flush=True)


def note(msg: str) -> None:
    print(f"peer-tests: {msg}", file=sys.stderr, flush=True)


class SetupError(RuntimeError):
    """The run could not be made: exit 2."""


# ---------------------------------------------------------------- the checkout and the venv


def check_checkout(src: Path) -> None:
    """Refuse anything that is not a psycopg source checkout with its test suite."""
    missing = [p for p in ("tests/conftest.py", "tests/fix_db.py", "psycopg/pyproject.toml", "psycopg/psycopg/__init__.py") if not (src / p).is_file()]
    if missing:
        raise SetupError(
            f"{src} is not a psycopg source checkout (missing: {', '.join(missing)}); "
            "clone psycopg's repository (the suite is not in its sdist) and name it with PSYCOPG_SRC"
        )


def _git(src: Path, *args: str) -> str:
    try:
        r = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def checkout_description(src: Path) -> dict[str, str]:
    version = ""
    m = re.search(r'^version\s*=\s*"([^"]+)"', (src / "psycopg" / "pyproject.toml").read_text(), re.M)
    if m:
        version = m.group(1)
    return {
        "path": str(src),
        "commit": _git(src, "rev-parse", "HEAD"),
        "describe": _git(src, "describe", "--tags", "--always", "--dirty"),
        "version": version,
    }


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip(py: Path, *args: str, timeout: float = 900) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [str(py), "-m", "pip", "install", "-q", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        out = "\n".join(line for line in (r.stdout + r.stderr).splitlines() if not line.startswith("WARNING: Location"))
        raise SetupError(f"pip install failed ({' '.join(args)}):\n{out[-3000:]}")


def ensure_venv(venv: Path, src: Path, client: str, impl: str, *, reinstall: bool = False) -> dict[str, Any]:
    """Make or update the peer virtualenv; return what is installed in it.

    ``client="source"`` builds psycopg and psycopg_pool from the checkout;
    ``client="installed"`` installs from PyPI the psycopg version that pgjit's
    own environment has (and psycopg-binary of that version for ``impl="binary"``).
    A stamp file keeps a second run from reinstalling anything unchanged.
    """
    checkout = checkout_description(src)
    if client == "installed":
        version = metadata.version("psycopg")
        packages = [f"psycopg=={version}", "psycopg-pool"]
        if impl == "binary":
            packages.append(f"psycopg-binary=={version}")
    else:
        packages = [str(src / "psycopg"), str(src / "psycopg_pool")]
    wanted = {
        "client": client,
        "impl": impl,
        "packages": packages,
        "requirements": list(TEST_REQUIREMENTS),
        "checkout_commit": checkout["commit"] if client == "source" else "",
        "checkout_path": str(src) if client == "source" else "",
        "python": sys.version.split()[0],
    }
    stamp = venv / ".pgjit-peer-stamp.json"
    py = _venv_python(venv)
    try:
        have = json.loads(stamp.read_text())
    except (OSError, ValueError):
        have = None
    if not reinstall and have == wanted and py.is_file():
        note(f"reusing {venv}")
    else:
        if not py.is_file():
            note(f"creating {venv}")
            r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise SetupError(f"python -m venv {venv} failed:\n{r.stdout}{r.stderr}")
        note(f"installing into {venv}: {', '.join(TEST_REQUIREMENTS)}, {', '.join(packages)}")
        _pip(py, *TEST_REQUIREMENTS)
        if client == "source":
            # The checkout's version string may not change between commits: reinstall it.
            _pip(py, "--force-reinstall", "--no-deps", *packages)
            _pip(py, *packages)  # their own dependencies (typing-extensions)
        else:
            _pip(py, *packages)
        stamp.write_text(json.dumps(wanted, indent=1) + "\n")
    return {"venv": str(venv), "client": client, "impl": impl, "versions": venv_versions(venv), "checkout": checkout}


def venv_versions(venv: Path) -> dict[str, str]:
    """Versions of the packages that matter in the peer virtualenv."""
    versions = {}
    for dist in ("psycopg", "psycopg-pool", "psycopg-binary", "pytest"):
        r = subprocess.run([str(_venv_python(venv)), "-c", f"from importlib.metadata import version; print(version({dist!r}))"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            versions[dist] = r.stdout.strip()
    return versions


# ---------------------------------------------------------------- the gateway


class Gateway:
    """``pgjit serve`` as a subprocess, logging JSON lines to a file."""

    def __init__(self, workdir: Path, pg: PgCluster) -> None:
        self.workdir = workdir
        self.config_path = workdir / "pgjit.yaml"
        self.log_path = workdir / "gateway.log"
        cfg = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "timeouts": {"startup": 10, "auth": 10, "upstream_connect": 10, "shutdown_grace": 5},
            "log": {"level": "info"},
            "auth": {"mode": "loopback_any_password"},
            "targets": {
                DBNAME: {
                    "host": "127.0.0.1",
                    "port": pg.port,
                    "database": DBNAME,
                    "user": pg.superuser,
                    "password": pg.superuser_password,
                },
            },
        }
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.relay = ""

    def start(self, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGJIT_")}
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgjit", "serve", "--config", str(self.config_path)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
                start_new_session=True,
            )
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"the gateway exited with {self.proc.returncode}:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            for rec in read_log(self.log_path):
                if rec.get("msg") == "listening":
                    self.port = int(str(rec["addresses"]).split(",")[0].rsplit(":", 1)[1])
                    self.relay = str(rec.get("relay", ""))
                    return
            time.sleep(0.1)
        self.stop()
        raise SetupError(f"the gateway did not log 'listening' within {timeout} s:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def read_log(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {"raw": line}
        if not isinstance(rec, dict):
            rec = {"raw": line}
        out.append(rec)
    return out


def _log_time(rec: dict[str, Any]) -> float | None:
    ts = rec.get("ts")
    if not isinstance(ts, str):
        return None
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", ts)
    if not m:
        return None
    t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return t + (float("0." + m.group(2)) if m.group(2) else 0.0)


# ---------------------------------------------------------------- pytest runs


@dataclass
class RunResult:
    label: str
    results: dict[str, dict[str, Any]]
    returncode: int | None
    timed_out: bool
    finished: bool
    seconds: float
    output_path: Path
    collection_errors: list[dict[str, Any]]

    def counts(self) -> dict[str, int]:
        c = {k: 0 for k in OUTCOMES}
        for rec in self.results.values():
            c[rec["outcome"]] = c.get(rec["outcome"], 0) + 1
        return c


class PytestRun:
    """One pytest run of the suite with ``PSYCOPG_TEST_DSN=dsn``: :meth:`start`, then :meth:`wait`."""

    def __init__(
        self,
        label: str,
        *,
        venv: Path,
        src: Path,
        workdir: Path,
        dsn: str,
        impl: str,
        markers: str,
        keyword: str | None,
        tests: Sequence[str],
        test_timeout: float,
        run_timeout: float,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.label, self.src, self.run_timeout = label, src, run_timeout
        self.cmd, self.env, self.results_path, self.output_path = _pytest_command(
            label, venv=venv, workdir=workdir, dsn=dsn, impl=impl, markers=markers, keyword=keyword,
            tests=tests, test_timeout=test_timeout, extra_args=extra_args)
        self.dsn = dsn
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> "PytestRun":
        note(f"{self.label}: pytest with PSYCOPG_TEST_DSN={redact(self.dsn)!r} (output: {self.output_path})")
        self.started = time.monotonic()
        with open(self.output_path, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.src, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc)

    def wait(self) -> RunResult:
        assert self.proc is not None
        timed_out = False
        try:
            self.proc.wait(max(0.0, self.started + self.run_timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            note(f"{self.label}: the run took longer than {self.run_timeout:g} s: stopping it")
            _kill_group(self.proc)
        except BaseException:
            _kill_group(self.proc)  # Ctrl-C: pytest runs in its own session and would go on
            raise
        seconds = time.monotonic() - self.started
        return _read_results(self.label, self.results_path, self.output_path, self.proc.returncode, timed_out, seconds)


def run_pytest(label: str, **kw: Any) -> RunResult:
    """One pytest run, start to end (see :class:`PytestRun`)."""
    return PytestRun(label, **kw).start().wait()


def run_pytest_parallel(runs: Sequence[PytestRun]) -> list[RunResult]:
    """Several runs at once (each against its own cluster); the results in the same order."""
    try:
        for r in runs:
            r.start()
        return [r.wait() for r in runs]
    except BaseException:
        for r in runs:
            r.kill()
        raise


def _pytest_command(
    label: str,
    *,
    venv: Path,
    workdir: Path,
    dsn: str,
    impl: str,
    markers: str,
    keyword: str | None,
    tests: Sequence[str],
    test_timeout: float,
    extra_args: Sequence[str],
) -> tuple[list[str], dict[str, str], Path, Path]:
    plugdir = workdir / "plugin"
    plugdir.mkdir(exist_ok=True)
    shutil.copyfile(PLUGIN, plugdir / f"{PLUGIN_MODULE}.py")
    results_path = workdir / f"{label}.jsonl"
    output_path = workdir / f"pytest-{label}.out"
    results_path.unlink(missing_ok=True)
    # libpq's PG* variables would redirect the suite's connections; tests set their own.
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PG") or k.startswith("PSYCOPG_"))}
    env.update(
        PSYCOPG_TEST_DSN=dsn,
        PSYCOPG_IMPL=impl,
        PGJIT_PEER_RESULTS=str(results_path),
        PYTHONPATH=str(plugdir),
        PYTHONDONTWRITEBYTECODE="1",
    )
    cmd = [
        str(_venv_python(venv)), "-m", "pytest",
        "-p", PLUGIN_MODULE,
        "-p", "no:randomly",
        "-p", "no:cov",
        # A per-run cache: conftest keeps a "segfault" flag there, which a run
        # killed on its time limit would leave set for the next one.
        "-o", f"cache_dir={workdir / ('cache-' + label)}",
        f"--timeout={test_timeout:g}",
        "-q", "-rfE",
    ]
    if markers:
        cmd += ["-m", markers]
    if keyword:
        cmd += ["-k", keyword]
    cmd += list(extra_args)
    cmd += list(tests)
    return cmd, env, results_path, output_path


def _read_results(label: str, results_path: Path, output_path: Path, returncode: int | None, timed_out: bool, seconds: float) -> RunResult:
    results: dict[str, dict[str, Any]] = {}
    collection_errors: list[dict[str, Any]] = []
    finished = False
    try:
        lines = results_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("session_finished"):
            finished = True
            continue
        if rec.get("phase") == "collect":
            collection_errors.append(rec)
        results[rec["nodeid"]] = rec
    note(f"{label}: {len(results)} tests in {seconds:.0f} s, pytest exit {returncode}" + (" (timed out)" if timed_out else ""))
    return RunResult(label, results, returncode, timed_out, finished, seconds, output_path, collection_errors)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    stop_escalating(proc, ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)), group=True)


def redact(dsn: str) -> str:
    return re.sub(r"(password=)\S+", r"\1***", dsn)


# ---------------------------------------------------------------- comparing


@dataclass
class Difference:
    nodeid: str
    direct: str
    gateway: str
    direct_rec: dict[str, Any] | None
    gateway_rec: dict[str, Any] | None
    expected: Expected | None = None
    rerun_direct: str | None = None
    rerun_gateway: str | None = None

    @property
    def reproduced(self) -> bool | None:
        """Whether the re-run differs the same way: the same side fails (or
        neither fails but the outcomes differ again, e.g. skipped/passed)."""
        if self.rerun_direct is None or self.rerun_gateway is None:
            return None
        if self.rerun_direct == self.rerun_gateway:
            return False
        fails = lambda a, b: (a in _FAILING, b in _FAILING)  # noqa: E731
        return fails(self.rerun_direct, self.rerun_gateway) == fails(self.direct, self.gateway)

    @property
    def flaky(self) -> bool:
        """Not expected, and the re-run gave both ways the same outcome."""
        return self.expected is None and self.reproduced is False

    @property
    def better(self) -> bool:
        """Fails (or errors) directly but not through pgjit: no regression of
        pgjit's, but still a difference, listed on its own."""
        return (self.expected is None and not self.flaky
                and self.direct in _FAILING and self.gateway not in _FAILING and self.gateway != "not run")

    @property
    def unexpected(self) -> bool:
        """A difference that counts against pgjit (exit status 1)."""
        return self.expected is None and not self.flaky and not self.better


def _outcome(rec: dict[str, Any] | None) -> str:
    return rec["outcome"] if rec else "not run"


def compare(direct: RunResult, gateway: RunResult) -> list[Difference]:
    diffs = []
    for nodeid in sorted(set(direct.results) | set(gateway.results)):
        d, g = direct.results.get(nodeid), gateway.results.get(nodeid)
        if _outcome(d) == _outcome(g):
            continue
        diff = Difference(nodeid, _outcome(d), _outcome(g), d, g)
        if _outcome(g) in _FAILING and _outcome(d) not in _FAILING:
            message = (g or {}).get("message", "")
            diff.expected = next((e for e in EXPECTED_DIFFERENCES if e.matches(nodeid, message)), None)
        diffs.append(diff)
    return diffs


def last_lines(message: str, n: int = 6) -> list[str]:
    """The lines of a failure that say what failed: pytest's ``E`` lines, else the last lines."""
    lines = [ln.rstrip() for ln in (message or "").splitlines() if ln.strip()]
    e_lines = [ln for ln in lines if ln.startswith("E ")]
    picked = e_lines[-n:] if e_lines else lines[-n:]
    return [ln if len(ln) <= 300 else ln[:297] + "..." for ln in picked]


def _notable(entry: dict[str, Any]) -> bool:
    """A gateway log line worth showing beside a failure: a warning or worse,
    a refused session, a session that did not end the ordinary way."""
    if entry.get("level") in ("warning", "error", "critical") or "raw" in entry:
        return True
    if entry.get("msg") == "session refused":
        return True
    return entry.get("msg") == "session closed" and entry.get("reason") not in ("ok", "cancel_request")


def gateway_lines(log: list[dict[str, Any]], rec: dict[str, Any] | None, *, slack: float = 0.5, limit: int = 8) -> list[dict[str, Any]]:
    """The gateway's notable log lines (:func:`_notable`) written while a test ran."""
    if not rec or "start" not in rec or "stop" not in rec:
        return []
    lo, hi = rec["start"] - slack, rec["stop"] + slack
    out = []
    for entry in log:
        if not _notable(entry):
            continue
        t = _log_time(entry)
        if t is not None and lo <= t <= hi:
            out.append(entry)
    return out[:limit]


# ---------------------------------------------------------------- the report


def format_counts(label: str, run: RunResult) -> str:
    c = run.counts()
    extra = f", {c['xfailed']} xfailed, {c['xpassed']} xpassed"
    state = "" if run.finished and not run.timed_out else "  (INCOMPLETE: " + ("timed out" if run.timed_out else "pytest did not finish") + ")"
    return f"{label:<15} {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped, {c['error']} errors{extra} in {run.seconds:.0f} s{state}"


def report(direct: RunResult | None, gateway: RunResult | None, diffs: list[Difference], log: list[dict[str, Any]]) -> None:
    say("")
    say("== psycopg's test suite: direct vs through pgjit")
    if direct:
        say(format_counts("direct", direct))
    if gateway:
        say(format_counts("through pgjit", gateway))
    for run in (direct, gateway):
        if run and run.collection_errors:
            say(f"{run.label}: {len(run.collection_errors)} collection errors: " + ", ".join(r["nodeid"] for r in run.collection_errors))
    if direct is None or gateway is None:
        return
    expected = [d for d in diffs if d.expected]
    unexpected = [d for d in diffs if d.unexpected]
    flaky = [d for d in diffs if d.flaky]
    better = [d for d in diffs if d.better]
    say("")
    say(f"== differences: {len(diffs)} ({len(expected)} expected, {len(unexpected)} unexpected, "
        f"{len(better)} failing only directly, {len(flaky)} that did not reproduce)")
    say("")
    sections = (
        ("expected (pgjit refuses on purpose)", expected, None),
        ("unexpected", unexpected, log),
        ("unexpected, but failing only directly (no regression of pgjit's; listed, not counted)", better, log),
        ("did not reproduce when re-run both ways (timing-sensitive tests on a busy machine; listed, not counted)", flaky, log),
    )
    for i, (title, items, with_log) in enumerate(sections):
        if i:
            say("")
        say(f"-- {title}:")
        if not items:
            say("   none")
        for d in items:
            if with_log is None:
                say(f"   {d.nodeid}: direct {d.direct}, through pgjit {d.gateway} [{d.expected.name}: {d.expected.reason}]")  # type: ignore[union-attr]
            else:
                _say_difference(d, with_log)


def _say_difference(d: Difference, log: list[dict[str, Any]]) -> None:
    rerun = ""
    if d.reproduced is True:
        rerun = f"; re-run: direct {d.rerun_direct}, through pgjit {d.rerun_gateway} (reproduced)"
    elif d.reproduced is False:
        rerun = f"; re-run: direct {d.rerun_direct}, through pgjit {d.rerun_gateway}"
    say(f"   {d.nodeid}: direct {d.direct}, through pgjit {d.gateway}{rerun}")
    failing = d.gateway_rec if d.gateway in _FAILING else d.direct_rec
    for ln in last_lines((failing or {}).get("message", "")):
        say(f"      | {ln}")
    for entry in gateway_lines(log, d.gateway_rec):
        say("      gateway: " + json.dumps({k: v for k, v in entry.items() if k != "exc"}, ensure_ascii=False)[:400])


def _diff_summary(d: Difference) -> dict[str, Any]:
    failing = d.gateway_rec if d.gateway in _FAILING else d.direct_rec
    return {"nodeid": d.nodeid, "direct": d.direct, "gateway": d.gateway, "rerun_direct": d.rerun_direct,
            "rerun_gateway": d.rerun_gateway, "reproduced": d.reproduced,
            "message": last_lines((failing or {}).get("message", ""), 12)}


def summary_dict(direct: RunResult | None, gateway: RunResult | None, diffs: list[Difference], meta: dict[str, Any]) -> dict[str, Any]:
    def run_summary(run: RunResult | None) -> dict[str, Any] | None:
        if run is None:
            return None
        return {"counts": run.counts(), "seconds": round(run.seconds, 1), "returncode": run.returncode,
                "timed_out": run.timed_out, "finished": run.finished, "output": str(run.output_path)}

    return {
        **meta,
        "direct": run_summary(direct),
        "gateway": run_summary(gateway),
        "expected_differences": [
            {"nodeid": d.nodeid, "direct": d.direct, "gateway": d.gateway, "why": d.expected.name}  # type: ignore[union-attr]
            for d in diffs if d.expected
        ],
        "unexpected_differences": [_diff_summary(d) for d in diffs if d.unexpected],
        "failing_only_directly": [_diff_summary(d) for d in diffs if d.better],
        "not_reproduced": [_diff_summary(d) for d in diffs if d.flaky],
    }


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    expected = "\n".join(f"  {e.name}: {e.reason}" for e in EXPECTED_DIFFERENCES)
    p = argparse.ArgumentParser(
        prog="python -m pgjit.devtools.peertests",
        description=(
            "Run psycopg 3's own test suite twice, directly against a throwaway PostgreSQL and through "
            "a pass-through pgjit gateway in front of it, and report every test whose outcome differs."
        ),
        epilog=(
            "Differences that are expected (pgjit refuses these on purpose; the failure through pgjit must "
            f"carry pgjit's own refusal message):\n{expected}\n\n"
            "A difference that does not reproduce when the test is re-run both ways, and a test that fails only\n"
            "directly, are listed apart and do not fail the run unless --strict.\n\n"
            "Exit status: 0 no unexpected difference, 1 some unexpected difference (or a run cut short by\n"
            "--run-timeout), 2 the run could not be made.\n"
            "Example: make peer-tests PSYCOPG_SRC=$HOME/src/psycopg PEER_ARGS='-k notify'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--psycopg-src", type=Path, default=os.environ.get("PSYCOPG_SRC") or None,
                   help="psycopg source checkout with tests/ (default: $PSYCOPG_SRC)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                   help="virtualenv for the suite, made if missing (default: %(default)s)")
    p.add_argument("--client", choices=("source", "installed"), default="source",
                   help="psycopg to test with: 'source' builds psycopg and psycopg_pool from the checkout (default); "
                        "'installed' installs the version pgjit's own environment has from PyPI")
    p.add_argument("--impl", choices=("python", "binary"), default="python",
                   help="PSYCOPG_IMPL: the pure-Python libpq wrapper on the system libpq (default), "
                        "or psycopg-binary (needs --client installed)")
    p.add_argument("--reinstall", action="store_true", help="reinstall the venv's packages even if its stamp matches")
    p.add_argument("--no-setup", action="store_true", help="use --venv as it is; install nothing")
    p.add_argument("--only", choices=("both", "direct", "gateway"), default="both",
                   help="run the suite both ways (default) or one way only (no comparison)")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression, the same for both runs")
    p.add_argument("-m", dest="markers", default=DEFAULT_MARKERS,
                   help="pytest -m marker expression (default: %(default)r; '' for every test)")
    p.add_argument("--parallel", action="store_true",
                   help="run the direct and the through-pgjit suite at the same time, each against a cluster of its "
                        "own (about half the wall time; timing-sensitive tests get flakier, the re-run sorts them out)")
    p.add_argument("--quick", action="store_true",
                   help="leave out the tests marked slow as well (-m 'not mypy and not slow'): minutes instead of an hour")
    p.add_argument("--strict", action="store_true",
                   help="count a difference that did not reproduce when re-run, or a test failing only directly, "
                        "as unexpected too (exit 1)")
    p.add_argument("--test-timeout", type=float, default=90, help="per-test limit in seconds, pytest-timeout (default: %(default)s)")
    p.add_argument("--run-timeout", type=float, default=5400,
                   help="limit for one whole pytest run in seconds; the outcomes so far are kept (default: %(default)s)")
    p.add_argument("--rerun-limit", type=int, default=150,
                   help="re-run at most this many differing tests both ways to check they reproduce; 0: none (default: %(default)s)")
    p.add_argument("--pytest-arg", action="append", default=[], metavar="ARG", help="extra argument for pytest (repeatable)")
    p.add_argument("--workdir", type=Path, default=None, help="where results and logs go (default: a fresh /tmp/pgjit-peer-… directory)")
    p.add_argument("--keep", action="store_true", help="keep the cluster's data directory")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here (it is always in <workdir>/summary.json)")
    p.add_argument("tests", nargs="*", default=["tests"], help="test paths or node ids inside the checkout (default: tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.markers = f"({args.markers}) and not slow" if args.markers else "not slow"
    if args.impl == "binary" and args.client != "installed":
        p.error("--impl binary needs --client installed (psycopg-binary is not built from a checkout)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except SetupError as e:
        note(str(e))
        return 2
    except KeyboardInterrupt:
        note("interrupted")
        return 130


def _main(args: argparse.Namespace) -> int:
    if args.psycopg_src is None:
        raise SetupError("no psycopg checkout: give --psycopg-src or set PSYCOPG_SRC (e.g. make peer-tests PSYCOPG_SRC=/path/to/psycopg)")
    src = args.psycopg_src.resolve()
    check_checkout(src)
    if args.no_setup:
        if not _venv_python(args.venv).is_file():
            raise SetupError(f"--no-setup but {args.venv} has no bin/python")
        env_info = {"venv": str(args.venv), "client": args.client, "impl": args.impl, "versions": venv_versions(args.venv),
                    "checkout": checkout_description(src)}
    else:
        env_info = ensure_venv(args.venv, src, args.client, args.impl, reinstall=args.reinstall)
    workdir = args.workdir or Path(make_temp_base("pgjit-peer-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    note(f"work directory: {workdir}")
    parallel = args.parallel and args.only == "both"
    clusters: list[tuple[PgCluster, Path]] = []
    gw: Gateway | None = None
    direct = gateway = None
    diffs: list[Difference] = []
    try:
        pg = _start_cluster(clusters)
        pg_direct = _start_cluster(clusters) if parallel else pg
        server_version = pg.execute("SHOW server_version")[0][0]
        direct_dsn = (f"host=127.0.0.1 port={pg_direct.port} user={pg_direct.superuser} "
                      f"password={pg_direct.superuser_password} dbname={DBNAME}")
        common = dict(
            venv=args.venv, src=src, workdir=workdir, impl=args.impl, markers=args.markers,
            keyword=args.keyword, test_timeout=args.test_timeout, run_timeout=args.run_timeout,
            extra_args=args.pytest_arg,
        )
        if args.only in ("both", "gateway"):
            gw = Gateway(workdir, pg)
            gw.start()
            note(f"pgjit gateway on 127.0.0.1:{gw.port} (relay: {gw.relay or '?'}, log: {gw.log_path})")
        gateway_dsn = f"host=127.0.0.1 port={gw.port if gw else 0} user={pg.superuser} password={pg.superuser_password} dbname={DBNAME}"
        if parallel:
            direct, gateway = run_pytest_parallel([
                PytestRun("direct", dsn=direct_dsn, tests=args.tests, **common),
                PytestRun("gateway", dsn=gateway_dsn, tests=args.tests, **common),
            ])
        else:
            if args.only in ("both", "direct"):
                direct = run_pytest("direct", dsn=direct_dsn, tests=args.tests, **common)
            if gw is not None:
                gateway = run_pytest("gateway", dsn=gateway_dsn, tests=args.tests, **common)
        if gw is not None:
            if not gw.alive:
                note(f"the gateway is no longer running (exit {gw.proc.returncode if gw.proc else '?'}): see {gw.log_path}")
        for run in (direct, gateway):
            if run is not None and not run.results:
                raise SetupError(f"the {run.label} run recorded no test outcome; see {run.output_path}:\n"
                                 + run.output_path.read_text(errors="replace")[-3000:])
        if direct is not None and gateway is not None:
            diffs = compare(direct, gateway)
            rerun = [d for d in diffs if not d.expected][: max(0, args.rerun_limit)]
            if rerun and gw is not None and gw.alive:
                note(f"re-running {len(rerun)} differing tests both ways")
                ids = [d.nodeid for d in rerun if d.nodeid != "<collection>"]
                if parallel:
                    rd, rg = run_pytest_parallel([
                        PytestRun("rerun-direct", dsn=direct_dsn, tests=ids, **common),
                        PytestRun("rerun-gateway", dsn=gateway_dsn, tests=ids, **common),
                    ])
                else:
                    rd = run_pytest("rerun-direct", dsn=direct_dsn, tests=ids, **common)
                    rg = run_pytest("rerun-gateway", dsn=gateway_dsn, tests=ids, **common)
                for d in rerun:
                    d.rerun_direct = _outcome(rd.results.get(d.nodeid))
                    d.rerun_gateway = _outcome(rg.results.get(d.nodeid))
        log = read_log(gw.log_path) if gw else []
        report(direct, gateway, diffs, log)
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "postgresql": server_version,
            "psycopg": env_info,
            "workdir": str(workdir),
            "gateway_log": str(gw.log_path) if gw else None,
            "markers": args.markers,
            "keyword": args.keyword,
        }
        summary = summary_dict(direct, gateway, diffs, meta)
        text = json.dumps(summary, indent=1, ensure_ascii=False) + "\n"
        (workdir / "summary.json").write_text(text)
        if args.json:
            args.json.write_text(text)
        say("")
        say(f"psycopg {env_info['versions'].get('psycopg', '?')} ({args.client}, impl {args.impl}; checkout "
            f"{env_info['checkout'].get('describe') or env_info['checkout'].get('commit', '?')}), PostgreSQL {server_version}")
        say(f"details: {workdir} (summary.json, pytest-*.out, gateway.log)")
        incomplete = [r.label for r in (direct, gateway) if r is not None and (r.timed_out or not r.finished)]
        if incomplete:
            note(f"incomplete runs: {', '.join(incomplete)}: the comparison covers only the tests that finished")
        if any(d.unexpected or (args.strict and (d.flaky or d.better)) for d in diffs) or incomplete:
            return 1
        return 0
    finally:
        if gw is not None:
            gw.stop()
        for cluster, base in clusters:
            if args.keep:
                cluster.stop()
                note(f"kept the cluster's data directory {cluster.datadir}")
            else:
                cluster.destroy()
                shutil.rmtree(base, ignore_errors=True)


def _start_cluster(clusters: list[tuple[PgCluster, Path]]) -> PgCluster:
    """A fresh cluster with the database the suite uses; added to ``clusters`` to be removed."""
    base = make_temp_base("pgjit-peer-pg-")
    pg = PgCluster(base / "pgdata")
    clusters.append((pg, base))
    try:
        pg.init()
        pg.start({"max_prepared_transactions": 10})
        pg.execute(f'CREATE DATABASE "{DBNAME}"')
    except PgClusterError as e:
        raise SetupError(f"cannot start PostgreSQL: {e}") from None
    note(f"PostgreSQL {pg.version_string} on 127.0.0.1:{pg.port} ({pg.datadir})")
    return pg


if __name__ == "__main__":
    sys.exit(main())
