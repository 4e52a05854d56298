"""Live protocol fuzzing: hypothesis-generated frontend byte streams against a
running gateway (``pgjit serve``) in front of a real PostgreSQL that logs every
statement it receives (``log_statement=all``).

Four families of streams:

* ``wellformed``: valid messages after a login (simple and extended protocol,
  pipelines of several statements before one Sync, Flush, Close, COPY messages
  outside COPY), with denied statements mixed in. The response is checked
  against a model: one ReadyForQuery per Query and per Sync, no error in a
  segment without a denied statement, and SQLSTATE 42501 as the first error of
  a segment with one.
* ``chaos``: valid, mutated (wrong lengths, random type bytes, garbage
  bodies, invalid UTF-8), out-of-order and truncated messages, pipelines
  without Sync, COPY messages outside COPY, Terminate, FunctionCall.
* ``prelogin``: huge startup packets, SSLRequest twice, GSSENCRequest,
  garbage instead of a startup packet, random CancelRequests, startup
  parameters with invalid UTF-8, against a plain and a TLS gateway.

Every stream is sent in random chunks with optional small stalls. After each
example:

* the gateway is alive and a fresh client logs in and runs ``select 1``;
* the fuzzed session ended (close) or answers a probe query within a timeout
  (only checked when the stream left no half-sent frame behind, when a client
  may legitimately be waited for);
* the gateway never answered with an internal error (SQLSTATE XX000);
* no denied statement reached PostgreSQL: each carries a per-example marker
  that must never appear in the server log (the security invariant);
* the gateway's file descriptors and RSS are sampled; the last test checks they
  came back down and stayed bounded, and writes the peaks to
  ``<tmp>/fuzz-summary.txt`` (and prints them: run with ``-s``).

``PGJIT_FUZZ_EXAMPLES`` is the total number of generated sessions across the
tests (default 150: ``make test``; ``make fuzz`` runs many more).
``PGJIT_FUZZ_SWARM`` sessions make one hypothesis example and run side by
side (default 1; ``make fuzz`` runs 32), the invariants checked after each
example; a failing session's stream and response are the example's notes. Failures are kept in
``.hypothesis/fuzz`` and replayed first on the next run.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from pgjit.protocol import messages as m
from tests.conftest import _start_cluster
from tests.fuzz.conftest import FUZZ_EXAMPLES, FUZZ_SWARM
from tests.gateway_fixtures import REPO, start_gateway, write_tls_files
from tests.rawclient import RawClient

pytestmark = pytest.mark.pg

HOST = "127.0.0.1"
MAX_MESSAGE = 1 << 20  # the gateway's limits.max_message_size here
STARTUP_TIMEOUT = 1.0
AUTH_TIMEOUT = 5.0  # logins of the fuzz clients, 64 Python threads on two cores, must fit (1 s did not, once in 100,000)
PRELOGIN_AUTH_TIMEOUT = 1.0  # the pre-login fuzzers' gateways: their stalled sessions wait this long, not 5 s
IO_TIMEOUT = 10.0  # bound on any single socket operation
QUIET = 0.3  # "the gateway has nothing more to say" after this long

# A placeholder of the same length as a marker: replaced in the bytes just
# before sending, so frame lengths stay right.
PLACEHOLDER = b"FZMPLACEHOLDER00"
assert len(PLACEHOLDER) == 16


def new_marker() -> bytes:
    return b"fzm" + uuid.uuid4().hex[:13].encode()


SETUP_SQL = """
create table if not exists fuzz_victim(a int);
create table if not exists fuzz_secret(s text);
insert into fuzz_secret select 'top secret' where not exists (select 1 from fuzz_secret);
create table if not exists fuzz_public(a int, b text);
insert into fuzz_public select g, 'row ' || g from generate_series(1, 20) g where not exists (select 1 from fuzz_public);
create table if not exists fuzz_sink(a int, b text);
"""

POLICY = """version: 1
description: "live fuzzing: allow all but drops and reads of fuzz_secret"
rules:
  - name: fuzz-no-drop
    match: {kind: [drop_table]}
    action: deny
    message: "fuzz: dropping tables is denied"
  - name: fuzz-no-secret
    match: {reads: [public.fuzz_secret]}
    action: deny
    message: "fuzz: fuzz_secret is off limits"
default: allow
"""


# --------------------------------------------------------------------------
# the rig: one cluster, two gateways (plain and TLS), resource sampling
# --------------------------------------------------------------------------


@dataclass
class Rig:
    pg: Any
    gw: Any
    tls_gw: Any
    pre_gw: Any  # plain, for the pre-login fuzzer: the short auth timeout
    tmp: Path
    markers: set[bytes] = field(default_factory=set)
    baseline: dict[str, dict[str, int]] = field(default_factory=dict)
    peak: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    log_offset: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gateways(self) -> dict[str, Any]:
        return {"plain": self.gw, "tls": self.tls_gw, "prelogin": self.pre_gw}

    def sample(self) -> None:
        for name, g in self.gateways().items():
            try:
                s = proc_stats(g.proc.pid)
            except FileNotFoundError:  # the gateway exited: check_after_example says so
                continue
            with self.lock:
                pk = self.peak.setdefault(name, dict(s))
                for k, v in s.items():
                    pk[k] = max(pk.get(k, 0), v)

    def new_leaks(self) -> set[bytes]:
        """Denied markers in the part of the server log written since the last
        call (and a little overlap); the log is read once, not once per example."""
        path = self.pg.log_path
        start = max(0, self.log_offset - 64)
        with open(path, "rb") as f:
            f.seek(start)
            chunk = f.read()
        self.log_offset = start + len(chunk)
        return leaked_in(chunk, self.markers)


def proc_stats(pid: int) -> dict[str, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])  # kB
    return {"fds": fds, "rss_kb": rss}


def _tls_files(tmp: Path) -> dict[str, str]:
    files = write_tls_files(tmp)
    return {"cert": files["cert"], "key": files["key"]}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    import shutil

    cluster, base = _start_cluster(extra_conf={"log_statement": "all"})
    gws = []
    try:
        cluster.psql(SETUP_SQL, dbname="appdb", user="app", password="apppass")
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        common = dict(
            targets={"appdb": {"host": HOST, "port": cluster.port, "database": "appdb", "user": "app",
                               "password": "apppass", "policy": str(policy)}},
            limits={"max_message_size": MAX_MESSAGE},
        )
        timeouts = {"startup": STARTUP_TIMEOUT, "auth": AUTH_TIMEOUT, "upstream_connect": 5, "shutdown_grace": 2}
        short = dict(timeouts, auth=PRELOGIN_AUTH_TIMEOUT)
        gw = start_gateway(tmp / "gw", cluster, timeouts=timeouts, **common)
        gws.append(gw)
        tls_gw = start_gateway(tmp / "gw-tls", cluster, tls=_tls_files(tmp), timeouts=short, **common)
        gws.append(tls_gw)
        pre_gw = start_gateway(tmp / "gw-pre", cluster, timeouts=short, **common)
        gws.append(pre_gw)
        r = Rig(cluster, gw, tls_gw, pre_gw, tmp)
        # Warm up (first connections load the catalog), then take the baseline.
        for g in gws:
            assert fresh_select_1(g.port), "the gateway does not answer a plain client"
        time.sleep(0.5)
        r.baseline = {name: proc_stats(g.proc.pid) for name, g in r.gateways().items()}
        r.sample()
        yield r
        summary = format_summary(r)
        (tmp / "fuzz-summary.txt").write_text(summary + "\n")
        print("\n" + summary + f"\n(written to {tmp / 'fuzz-summary.txt'})")
    finally:
        for g in gws:
            g.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def format_summary(r: Rig) -> str:
    lines = [f"pgjit live fuzz: sessions {dict(r.examples)} = {sum(r.examples.values())} (PGJIT_FUZZ_EXAMPLES={FUZZ_EXAMPLES}, "
             f"{FUZZ_SWARM} per example side by side), denied markers checked {len(r.markers)}"]
    for name in r.baseline:
        b, p = r.baseline[name], r.peak.get(name, {})
        lines.append(
            f"  gateway {name}: fds baseline {b['fds']} peak {p.get('fds')}; "
            f"RSS baseline {b['rss_kb'] / 1024:.1f} MiB peak {p.get('rss_kb', 0) / 1024:.1f} MiB"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------
# wire helpers
# --------------------------------------------------------------------------


def cstr(b: bytes) -> bytes:
    return b + b"\x00"


def frame(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def q(sql: bytes) -> bytes:
    return frame(b"Q", cstr(sql))


def parse(name: bytes, sql: bytes, types: tuple[int, ...] = ()) -> bytes:
    return frame(b"P", cstr(name) + cstr(sql) + struct.pack("!H", len(types)) + b"".join(struct.pack("!I", t) for t in types))


def bind(portal: bytes, stmt: bytes, params: tuple[bytes | None, ...] = ()) -> bytes:
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return frame(b"B", body + struct.pack("!H", 0))


def describe(kind: bytes, name: bytes) -> bytes:
    return frame(b"D", kind + cstr(name))


def execute(portal: bytes, max_rows: int = 0) -> bytes:
    return frame(b"E", cstr(portal) + struct.pack("!i", max_rows))


def close(kind: bytes, name: bytes) -> bytes:
    return frame(b"C", kind + cstr(name))


SYNC = frame(b"S", b"")
FLUSH = frame(b"H", b"")
TERMINATE = frame(b"X", b"")
COPY_DONE = frame(b"c", b"")


def copy_data(data: bytes) -> bytes:
    return frame(b"d", data)


def copy_fail(msg: bytes) -> bytes:
    return frame(b"f", cstr(msg))


def startup(params: list[tuple[bytes, bytes]], protocol: int = 3 << 16) -> bytes:
    body = struct.pack("!I", protocol) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\x00"
    return struct.pack("!I", len(body) + 4) + body


LOGIN_PARAMS = [(b"user", b"alice@example.com"), (b"database", b"appdb")]
SSL_REQUEST = struct.pack("!II", 8, m.SSL_REQUEST_CODE)
GSSENC_REQUEST = struct.pack("!II", 8, m.GSSENC_REQUEST_CODE)


def cancel_request(pid: int, key: bytes) -> bytes:
    body = struct.pack("!II", m.CANCEL_REQUEST_CODE, pid) + key
    return struct.pack("!I", len(body) + 4) + body


def password(pw: bytes) -> bytes:
    return frame(b"p", cstr(pw))


def split_frames(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Backend frames in ``raw`` and the incomplete rest."""
    out, pos = [], 0
    while len(raw) - pos >= 5:
        tag = raw[pos : pos + 1]
        (n,) = struct.unpack_from("!I", raw, pos + 1)
        if n < 4 or len(raw) - pos < 1 + n:
            break
        out.append((tag, raw[pos + 5 : pos + 1 + n]))
        pos += 1 + n
    return out, raw[pos:]


def error_fields(body: bytes) -> dict[str, str]:
    out = {}
    for part in body.split(b"\x00"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out


def frontend_framing(stream: bytes) -> str:
    """How a server reading ``stream`` (after login) frames it: "clean" (whole
    frames of sane length), "bad_length" (a length < 4 or over the limit: the
    gateway must close), or "partial" (ends inside a frame: the gateway may
    wait for the rest)."""
    pos = 0
    while pos < len(stream):
        if len(stream) - pos < 5:
            return "partial"
        (n,) = struct.unpack_from("!I", stream, pos + 1)
        if n < 4 or n > MAX_MESSAGE:
            return "bad_length"
        if len(stream) - pos < 1 + n:
            return "partial"
        pos += 1 + n
    return "clean"


class Session:
    """A raw socket with bounded sends and reads that never raise on a peer close."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
        self.rx = bytearray()
        self.eof = False

    def drain(self, wait: float = 0.0) -> None:
        """Read what is there; with ``wait``, until nothing came for that long (or EOF)."""
        if self.eof:
            return
        self.sock.settimeout(wait if wait > 0 else 0.001)
        while True:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return
            except OSError:  # ECONNRESET and the like: the gateway closed
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self.rx += data

    def send(self, data: bytes) -> bool:
        """False when the peer closed before taking it all."""
        if self.eof:
            return False
        self.sock.settimeout(IO_TIMEOUT)
        try:
            self.sock.sendall(data)
            return True
        except socket.timeout:
            raise AssertionError(f"the gateway took no bytes for {IO_TIMEOUT} s (sending {len(data)} bytes)")
        except OSError:
            self.drain()
            self.eof = True
            return False

    def send_chunked(self, stream: bytes, plan: list[tuple[int, float]]) -> None:
        pos, i = 0, 0
        while pos < len(stream) and not self.eof:
            size, stall = plan[i] if i < len(plan) else (16384, 0.0)
            i += 1
            chunk = stream[pos : pos + min(size, 16384)]
            pos += len(chunk)
            if not self.send(chunk):
                return
            self.drain()
            if stall:
                time.sleep(stall)

    def wait_eof(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.drain(wait=min(0.2, max(0.01, deadline - time.monotonic())))
        return self.eof

    def wait_for(self, needle: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.rx and not self.eof and time.monotonic() < deadline:
            self.drain(wait=min(0.2, max(0.01, deadline - time.monotonic())))
        return needle in self.rx

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def fresh_select_1(port: int, timeout: float = 10.0) -> bool:
    try:
        with RawClient(port, timeout=timeout) as c:
            c.sock.settimeout(timeout)
            out = c.login()
            if not isinstance(out[-1], m.ReadyForQuery):
                return False
            c.send(m.Query("select 1"))
            msgs = c.read_until_ready(timeout)
            return [x.values for x in msgs if isinstance(x, m.DataRow)] == [(b"1",)]
    except (OSError, EOFError):
        return False


def login(s: Session) -> None:
    """Log in on a Session (plain gateway); asserts it worked."""
    s.send(startup(LOGIN_PARAMS))
    assert s.wait_for(b"R\x00\x00\x00\x08\x00\x00\x00\x03", IO_TIMEOUT), f"no password request: {bytes(s.rx)[:200]!r}"
    s.rx.clear()
    s.send(password(b"x"))
    assert s.wait_for(b"Z\x00\x00\x00\x05", IO_TIMEOUT), f"login did not finish: {bytes(s.rx)[:300]!r}"
    s.rx.clear()


def check_after_example(rig: Rig, markers: list[bytes], rx: bytes) -> None:
    """The invariants every example ends with."""
    for name, g in rig.gateways().items():
        assert g.proc.poll() is None, f"gateway {name} exited with {g.proc.returncode}:\n{g.log_path.read_text()[-3000:]}"
    assert b"CXX000\x00" not in rx, f"the gateway answered with an internal error (XX000): {rx[:2000]!r}"
    for name, g in rig.gateways().items():
        assert fresh_select_1(g.port), f"a fresh client cannot log in and select 1 through gateway {name}"
    rig.markers.update(markers)
    leaked = rig.new_leaks()
    assert not leaked, f"denied statements reached the server (markers {sorted(leaked)} are in its log)"
    rig.sample()


def fuzz_settings(share: float, **kw: Any):
    return settings(
        max_examples=max(1, -(-int(FUZZ_EXAMPLES * share) // FUZZ_SWARM)),  # rounded up: at least FUZZ_EXAMPLES sessions
        deadline=None,
        derandomize=False,
        database=DirectoryBasedExampleDatabase(str(REPO / ".hypothesis" / "fuzz")),
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example],
        **kw,
    )


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------

MK = PLACEHOLDER.decode()

SAFE_SQL = [
    "select 1",
    "select 'ok' as x",
    "select n from generate_series(1, 5) n",
    "select a, b from fuzz_public order by a limit 3",
    "show server_version",
    "set application_name = 'fuzz'",
    "select 1; select 2",
    "values (1, 'a'), (2, 'b')",
    f"select '{MK}_allowed'",
]
DENIED_SQL = [
    f"drop table fuzz_victim /* {MK} */",
    f"select * from fuzz_secret /* {MK} */",
    f"select 1; drop table fuzz_victim /* {MK} */",
    f"select s from public.fuzz_secret where s <> '{MK}'",
    f"/* {MK} */ DROP TABLE IF EXISTS fuzz_victim",
    f"with x as (select * from fuzz_secret) select '{MK}' from x",
]
# For chaos: things with side effects on session state, errors, COPY.
EXTRA_SQL = [
    "begin",
    "commit",
    "rollback",
    "select 1/0",
    "select pg_sleep(0.02)",
    "copy (select 1) to stdout",
    "copy fuzz_sink from stdin",
    "listen fuzz",
    "discard all",
    "",
    ";",
    "select $1::int",
    "savepoint s; release s",
    "deallocate all",
]

# An allowed statement may carry the placeholder followed by _allowed: the leak
# check looks for a marker followed by anything else.


_MARKER_RE = re.compile(rb"fzm[0-9a-f]{13}(?!_allowed)")


def leaked_in(log: bytes, markers: set[bytes]) -> set[bytes]:
    """The markers of ``markers`` that appear in ``log`` other than as
    ``<marker>_allowed`` (one pass over the log, whatever the number of markers)."""
    return {m.group() for m in _MARKER_RE.finditer(log)} & markers


def leaked_in_file(path: Path, markers: set[bytes], block: int = 8 << 20) -> set[bytes]:
    """``leaked_in`` over a whole file, read in blocks (the log of a long run is large)."""
    out: set[bytes] = set()
    tail = b""
    with open(path, "rb") as f:
        while data := f.read(block):
            out |= leaked_in(tail + data, markers)
            tail = data[-64:]
    return out


sql_text = st.sampled_from(SAFE_SQL)
denied_text = st.sampled_from(DENIED_SQL)


@st.composite
def chunk_plan(draw) -> list[tuple[int, float]]:
    return draw(
        st.lists(
            st.tuples(st.integers(1, 300), st.sampled_from([0.0] * 8 + [0.005, 0.02, 0.1])),
            max_size=30,
        )
    )


# ---- well-formed: (kind, bytes, is_denied) units the model understands


@st.composite
def wellformed_units(draw) -> list[tuple[str, bytes, bool]]:
    units: list[tuple[str, bytes, bool]] = []
    n = draw(st.integers(1, 12))
    for i in range(n):
        kind = draw(st.sampled_from(["Q", "QD", "PBE", "PBED", "named", "namedD", "sync", "flush", "copyout", "closeS", "closeP",
                                     "copyinQ", "copyfailQ", "copyinX"]))
        rows = b"".join(copy_data(f"{j}\tr{j}\n".encode()) for j in range(draw(st.integers(0, 3))))
        if kind == "copyinQ":
            units.append(("Q", q(b"copy fuzz_sink from stdin") + rows + COPY_DONE, False))
        elif kind == "copyfailQ":
            # CopyFail ends the COPY with an error (57014), the one error the model expects.
            units.append(("QF", q(b"copy fuzz_sink from stdin") + rows + copy_fail(b"fuzz says stop"), False))
        elif kind == "copyinX":
            units.append(("X", parse(b"", b"copy fuzz_sink from stdin") + bind(b"", b"") + execute(b"") + rows + COPY_DONE, False))
        elif kind == "Q":
            units.append(("Q", q(draw(sql_text).encode()), False))
        elif kind == "QD":
            units.append(("Q", q(draw(denied_text).encode()), True))
        elif kind in ("PBE", "PBED"):
            denied = kind == "PBED"
            sql = draw(denied_text if denied else sql_text.filter(lambda s: ";" not in s)).encode()
            if denied and b";" in sql:
                sql = sql.split(b";", 1)[1].strip()
            msgs = parse(b"", sql) + bind(b"", b"")
            if draw(st.booleans()):
                msgs += describe(b"P", b"")
            msgs += execute(b"", draw(st.sampled_from([0, 0, 1, 2])))
            units.append(("X", msgs, denied))
        elif kind in ("named", "namedD"):
            denied = kind == "namedD"
            sql = draw(denied_text if denied else sql_text.filter(lambda s: ";" not in s)).encode()
            if denied and b";" in sql:
                sql = sql.split(b";", 1)[1].strip()
            name = f"fz{i}".encode()
            msgs = parse(name, sql)
            if draw(st.booleans()):
                msgs += describe(b"S", name)
            msgs += bind(b"p" + name, name) + execute(b"p" + name) + close(b"P", b"p" + name) + close(b"S", name)
            units.append(("X", msgs, denied))
        elif kind == "sync":
            units.append(("S", SYNC, False))
        elif kind == "flush":
            units.append(("X", FLUSH, False))
        elif kind == "copyout":
            # COPY messages outside COPY: PostgreSQL ignores them.
            msg = draw(st.sampled_from([copy_data(b"1\tx\n"), COPY_DONE, copy_fail(b"nope")]))
            units.append(("X", msg, False))
        elif kind == "closeS":
            units.append(("X", close(b"S", b"no_such_stmt"), False))
        else:
            units.append(("X", close(b"P", b"no_such_portal"), False))
    return units


def expected_segments(units: list[tuple[str, bytes, bool]]) -> tuple[bytes, list[dict[str, Any]]]:
    """The bytes to send and, per ReadyForQuery expected, what its segment holds."""
    out, segs = b"", []
    pending: dict[str, Any] | None = None
    for kind, data, denied in units:
        if kind in ("Q", "QF"):
            if pending is not None:  # a Query inside an unsynced pipeline: sync first
                out += SYNC
                segs.append(pending)
                pending = None
            out += data
            segs.append({"kind": "Q", "denied": denied, "bytes": data, "copyfail": kind == "QF"})
        elif kind == "S":
            out += data
            segs.append(pending or {"kind": "S", "denied": False, "bytes": b""})
            pending = None
        else:
            pending = pending or {"kind": "S", "denied": False, "bytes": b""}
            pending["denied"] |= denied
            pending["bytes"] += data
            out += data
    if pending is not None:
        out += SYNC
        segs.append(pending)
    return out, segs


# ---- chaos: arbitrary byte pieces


def _mutate_length(data: bytes, delta: int) -> bytes:
    (n,) = struct.unpack_from("!I", data, 1)
    return data[:1] + struct.pack("!I", max(0, min(0xFFFFFFFF, n + delta))) + data[5:]


FRONTEND_TAGS = b"QPBDECSHXdcfFp"


@st.composite
def chaos_piece(draw) -> bytes:
    kind = draw(st.sampled_from([
        "valid", "valid", "valid", "denied", "denied", "copy", "copy", "sync", "sync", "flush",
        "terminate", "funccall", "badlen", "hugelen", "shortlen", "randtag", "garbage", "badutf8",
        "truncbody", "bindgarbage", "stall",
    ]))
    if kind == "valid":
        sql = draw(st.sampled_from(SAFE_SQL + EXTRA_SQL)).encode()
        how = draw(st.sampled_from(["Q", "P", "PBE", "B", "D", "E", "C"]))
        if how == "Q":
            return q(sql)
        if how == "P":
            return parse(draw(st.sampled_from([b"", b"a", b"b"])), sql, draw(st.sampled_from([(), (23,), (0,)])))
        if how == "PBE":
            return parse(b"", sql) + bind(b"", b"", draw(st.sampled_from([(), (b"1",), (None,)]))) + execute(b"", draw(st.integers(0, 2)))
        if how == "B":
            return bind(draw(st.sampled_from([b"", b"p"])), draw(st.sampled_from([b"", b"a", b"b"])), draw(st.sampled_from([(), (b"7",)])))
        if how == "D":
            return describe(draw(st.sampled_from([b"S", b"P", b"Z"])), draw(st.sampled_from([b"", b"a", b"p"])))
        if how == "E":
            return execute(draw(st.sampled_from([b"", b"p"])), draw(st.integers(-1, 3)))
        return close(draw(st.sampled_from([b"S", b"P", b"?"])), draw(st.sampled_from([b"", b"a", b"p"])))
    if kind == "denied":
        sql = draw(denied_text).encode()
        how = draw(st.sampled_from(["Q", "PBE", "Pnamed", "PSync"]))
        if how == "Q":
            return q(sql)
        if how == "PBE":
            return parse(b"", sql) + bind(b"", b"") + execute(b"")
        if how == "Pnamed":
            return parse(b"a", sql) + bind(b"p", b"a") + execute(b"p")
        return parse(b"", sql) + SYNC + bind(b"", b"") + execute(b"") + SYNC
    if kind == "copy":
        return draw(st.sampled_from([copy_data(b"1\tx\n"), copy_data(b""), COPY_DONE, copy_fail(b"stop"), copy_data(b"\\.\n")]))
    if kind == "sync":
        return SYNC
    if kind == "flush":
        return FLUSH
    if kind == "terminate":
        return TERMINATE
    if kind == "funccall":
        return frame(b"F", struct.pack("!IHHh", draw(st.integers(0, 5000)), 0, 0, 0))
    if kind == "badlen":
        return _mutate_length(q(draw(sql_text).encode()), draw(st.integers(-12, 12)))
    if kind == "hugelen":
        return draw(st.sampled_from(FRONTEND_TAGS)).to_bytes(1, "big") + struct.pack("!I", draw(st.integers(MAX_MESSAGE + 1, 0xFFFFFFFF)))
    if kind == "shortlen":
        return draw(st.sampled_from(FRONTEND_TAGS)).to_bytes(1, "big") + struct.pack("!I", draw(st.integers(0, 3)))
    if kind == "randtag":
        tag = draw(st.integers(0, 255)).to_bytes(1, "big")
        return frame(tag, draw(st.binary(max_size=40)))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=200))
    if kind == "badutf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]))
        sql = draw(st.sampled_from([b"select '" + bad + b"'", b"select 1 -- " + bad, bad + b"select 1",
                                    b"drop table fuzz_victim /* " + PLACEHOLDER + b" */ -- " + bad]))
        return draw(st.sampled_from([q(sql), parse(b"", sql) + bind(b"", b"") + execute(b"")]))
    if kind == "truncbody":
        full = draw(st.sampled_from([q(b"select 1"), parse(b"a", b"select 1"), bind(b"", b"", (b"1",)), execute(b"")]))
        cut = draw(st.integers(1, len(full) - 1))
        return full[:5] + full[5:cut] if cut > 5 else full[:cut]
    if kind == "bindgarbage":
        tag = draw(st.sampled_from([b"B", b"P", b"D", b"E", b"C", b"F", b"d", b"f", b"Q"]))
        return frame(tag, draw(st.binary(max_size=60)))
    return b""  # "stall": a chunk boundary with nothing in it


@st.composite
def chaos_stream(draw) -> bytes:
    return b"".join(draw(st.lists(chaos_piece(), min_size=1, max_size=15)))


# ---- pre-login


@st.composite
def prelogin_piece(draw) -> bytes:
    kind = draw(st.sampled_from([
        "startup", "startup", "hugestartup", "badutf8startup", "weirdproto", "ssl", "ssl", "gssenc",
        "cancel", "garbage", "password", "shortlen", "emptystartup", "oddparams",
    ]))
    if kind == "startup":
        return startup(LOGIN_PARAMS)
    if kind == "hugestartup":
        size = draw(st.sampled_from([10_001, 70_000, 1_000_000, 5_000_000]))
        if draw(st.booleans()):  # the header only: the gateway must not wait for (or buffer) it all
            return struct.pack("!I", size) + struct.pack("!I", 3 << 16) + b"user\x00" + b"a" * 100
        return startup(LOGIN_PARAMS + [(b"options", b"x" * size)])
    if kind == "badutf8startup":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82"]))
        where = draw(st.sampled_from(["user", "database", "app", "key"]))
        params = dict(LOGIN_PARAMS)
        if where == "user":
            params[b"user"] = b"alice" + bad + b"@example.com"
        elif where == "database":
            params[b"database"] = b"app" + bad
        elif where == "app":
            params[b"application_name"] = b"fz" + bad
        else:
            params[b"fz" + bad] = b"1"
        return startup(list(params.items()))
    if kind == "weirdproto":
        proto = draw(st.sampled_from([(2 << 16), (3 << 16) | 1, (3 << 16) | 2, (3 << 16) | 9999, (4 << 16), 1234 << 16 | 5677, 0]))
        return startup(LOGIN_PARAMS, proto)
    if kind == "ssl":
        return SSL_REQUEST
    if kind == "gssenc":
        return GSSENC_REQUEST
    if kind == "cancel":
        key = draw(st.sampled_from([4, 4, 0, 3, 32, 256, 257]))
        return cancel_request(draw(st.integers(0, 2**32 - 1)), draw(st.binary(min_size=key, max_size=key)))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "password":
        return password(draw(st.sampled_from([b"x", b"", b"\xff\xfe"])))
    if kind == "shortlen":
        return struct.pack("!I", draw(st.integers(0, 7))) + draw(st.binary(max_size=8))
    if kind == "emptystartup":
        return startup([])
    keys = st.sampled_from([b"user", b"database", b"options", b"replication", b"_pq_.x", b"client_encoding", b"application_name"])
    vals = st.sampled_from([b"", b"alice@example.com", b"appdb", b"SQL_ASCII", b"LATIN1", b"-c log_statement=none", b"true", b"database"])
    return startup(LOGIN_PARAMS + draw(st.lists(st.tuples(keys, vals), max_size=4)))


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_statement_log_sees_what_reaches_the_server(rig):
    """The oracle works: an allowed statement's marker is in the log, a denied one's is not."""
    mk = new_marker()
    s = Session(rig.gw.port)
    try:
        login(s)
        s.send(q(b"select '" + mk + b"_allowed'") + q(b"drop table fuzz_victim /* " + mk + b" */"))
        assert s.wait_for(b"Z\x00\x00\x00\x05", IO_TIMEOUT)
        s.drain(wait=QUIET)
        frames, _ = split_frames(bytes(s.rx))
        errs = [error_fields(b) for t, b in frames if t == b"E"]
        assert [e.get("C") for e in errs] == ["42501"], errs
    finally:
        s.close()
    deadline = time.monotonic() + 5
    while mk + b"_allowed" not in rig.pg.server_log().encode() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = rig.pg.server_log().encode()
    assert mk + b"_allowed" in log, "log_statement=all does not show statements in the server log"
    assert not leaked_in(log, {mk})
    rig.markers.add(mk)


def run_wellformed(rig: Rig, units, plan, notes: list[str]) -> tuple[list[bytes], bytes]:
    """One well-formed session; returns (denied markers, what the gateway sent)."""
    mk = new_marker()
    stream, segs = expected_segments(units)
    probe = b"probe_" + new_marker()  # not a denied marker: it must reach the server
    stream += q(b"select '" + probe + b"'")
    stream = stream.replace(PLACEHOLDER, mk)
    notes.append(f"stream: {stream!r}")
    s = Session(rig.gw.port)
    try:
        login(s)
        s.send_chunked(stream, plan)
        rig.sample()
        expect_rfq = len(segs) + 1
        deadline = time.monotonic() + IO_TIMEOUT
        while bytes(s.rx).count(b"Z\x00\x00\x00\x05") < expect_rfq and not s.eof and time.monotonic() < deadline:
            s.drain(wait=0.2)
        s.drain(wait=0.1)
        frames, rest = split_frames(bytes(s.rx))
        notes.append(f"response: {bytes(s.rx)[:3000]!r}")
        assert not s.eof, "the gateway closed a session that sent only valid messages"
        # Cut the response into one segment per ReadyForQuery.
        got: list[list[tuple[bytes, bytes]]] = [[]]
        for t, b in frames:
            got[-1].append((t, b))
            if t == b"Z":
                got.append([])
        got = [g for g in got if g]
        assert len(got) == expect_rfq, f"expected {expect_rfq} ReadyForQuery, got {len(got)}"
        for i, (seg, exp) in enumerate(zip(got, segs + [{"kind": "Q", "denied": False, "bytes": b""}])):
            errs = [error_fields(b) for t, b in seg if t == b"E"]
            for e in errs:
                assert "pgjit_refused" not in e.get("M", ""), f"segment {i}: an internal statement name leaked: {e}"
                assert e.get("C") != "XX000", f"segment {i}: internal error {e}"
            if exp["denied"]:
                assert errs, f"segment {i} ({exp['bytes']!r}) has a denied statement but no error"
                assert errs[0].get("C") == "42501", f"segment {i} ({exp['bytes']!r}): first error {errs[0]}, not 42501"
            elif exp.get("copyfail"):
                assert [e.get("C") for e in errs] == ["57014"], f"segment {i} ({exp['bytes']!r}): CopyFail gave {errs}, not one 57014"
            else:
                assert not errs, f"segment {i} ({exp['bytes']!r}) holds only allowed statements but failed: {errs}"
            assert seg[-1][1] == b"I", f"segment {i} ends in transaction status {seg[-1][1]!r}"
        assert (b"D", struct.pack("!HI", 1, len(probe)) + probe) in got[-1], "the probe query returned nothing"
    finally:
        s.close()
    return [mk], bytes(s.rx)


def _probe_session(s: Session, mk: bytes, timeout: float = IO_TIMEOUT) -> bool:
    """After a fuzzed stream: does the session answer (or has it closed)? Up to 3
    probes (one may be eaten by a COPY in progress, an aborted pipeline or
    transaction block)."""
    probe = b"probe_" + new_marker()
    row = b"D" + struct.pack("!IHI", 4 + 2 + 4 + len(probe), 1, len(probe)) + probe
    deadline = time.monotonic() + timeout
    for _ in range(3):
        if s.eof:
            return True
        # Sync ends an aborted pipeline, rollback an aborted transaction block
        # (and, as an unexpected message, a COPY FROM STDIN in progress).
        s.send(SYNC + q(b"rollback") + q(b"select '" + probe + b"'"))
        step = time.monotonic() + min(3.0, max(0.1, deadline - time.monotonic()))
        while not s.eof and time.monotonic() < step:
            s.drain(wait=0.2)
            if row in s.rx:
                return True
    return s.eof or row in s.rx


def run_chaos(rig: Rig, stream: bytes, plan, notes: list[str]) -> tuple[list[bytes], bytes]:
    mk = new_marker()
    stream = stream.replace(PLACEHOLDER, mk)
    notes.append(f"stream: {stream!r}")
    framing = frontend_framing(stream)
    s = Session(rig.gw.port)
    try:
        login(s)
        s.send_chunked(stream, plan)
        s.drain(wait=QUIET)
        rig.sample()
        if framing == "bad_length":
            assert s.wait_eof(IO_TIMEOUT), f"a frame with a bad length did not close the session; got {bytes(s.rx)[-500:]!r}"
        elif framing == "clean":
            assert _probe_session(s, mk), f"the session neither closed nor answered a probe; got {bytes(s.rx)[-1000:]!r}"
        notes.append(f"response: {bytes(s.rx)[:3000]!r}")
    finally:
        s.close()
    return [mk], bytes(s.rx)


TLS_ISH = [
    b"\x16\x03\x01\x00\x05hello",  # a ClientHello record that is not one
    b"\x16\x03\x01\x02\x00" + b"\x01" * 50,  # a record header, then too little
    b"\x15\x03\x03\x00\x02\x02\x28",  # an alert
    b"GET / HTTP/1.1\r\n\r\n",
]


@st.composite
def prelogin_stream(draw) -> list[bytes]:
    """A request prefix (SSLRequest, twice, GSSENCRequest ...), then startup-phase
    pieces, often a startup packet followed by a password (so that what the
    startup carried goes on to the upstream connection)."""
    prefix = draw(st.sampled_from([[], [], [SSL_REQUEST], [SSL_REQUEST, SSL_REQUEST], [GSSENC_REQUEST],
                                   [GSSENC_REQUEST, SSL_REQUEST], [SSL_REQUEST, GSSENC_REQUEST]]))
    pieces = list(prefix)
    if prefix and draw(st.booleans()):
        pieces.append(draw(st.sampled_from(TLS_ISH)))  # after an 'S': not a TLS handshake
    pieces += draw(st.lists(st.one_of(prelogin_piece(), st.just(b"")), min_size=0 if prefix else 1, max_size=4))
    if draw(st.booleans()):
        pieces.append(password(b"x"))
    return pieces


def run_prelogin(rig: Rig, pieces: list[bytes], tls: bool, plan, notes: list[str]) -> tuple[list[bytes], bytes]:
    g = rig.tls_gw if tls else rig.pre_gw
    stream = b"".join(pieces)
    notes.append(f"gateway: {'tls' if tls else 'plain'}; stream: {stream[:2000]!r}{' ...' if len(stream) > 2000 else ''} ({len(stream)} bytes)")
    s = Session(g.port)
    try:
        s.send_chunked(stream, plan)
        rig.sample()
        # Whatever was sent, the session must end within the startup and auth
        # timeouts, unless it is logged in, which ends it with Terminate.
        limit = STARTUP_TIMEOUT + PRELOGIN_AUTH_TIMEOUT + 5
        deadline = time.monotonic() + limit
        while not s.eof and time.monotonic() < deadline:
            s.drain(wait=0.2)
            if b"Z\x00\x00\x00\x05" in s.rx:
                break  # logged in: what follows is the post-login fuzzers' business
        notes.append(f"response: {bytes(s.rx)[:2000]!r}")
        assert s.eof or b"Z\x00\x00\x00\x05" in s.rx, f"a pre-login session was still open {limit} s after its last byte; got {bytes(s.rx)[:500]!r}"
    finally:
        s.close()
    return [], bytes(s.rx)


# --------------------------------------------------------------------------
# the swarm: FUZZ_SWARM sessions per example, run side by side
# --------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=FUZZ_SWARM, thread_name_prefix="fuzz")
    return _POOL


def run_swarm(rig: Rig, family: str, runner, cases: list[tuple]) -> None:
    """Run one generated session per case, concurrently when there are several
    (``make fuzz``), then check the invariants once. A failing session's notes
    (its stream and the gateway's response) become hypothesis notes, so the
    reproducer printed for a failure shows them."""
    rig.examples[family] = rig.examples.get(family, 0) + len(cases)
    notes: list[list[str]] = [[] for _ in cases]

    def attempt(i: int) -> tuple[Any, BaseException | None]:
        try:
            return runner(rig, *cases[i], notes[i]), None
        except BaseException as exc:  # noqa: BLE001 - re-raised below with the session's notes
            return None, exc

    if len(cases) == 1:
        outcomes = [attempt(0)]
    else:
        outcomes = list(_pool().map(attempt, range(len(cases)), timeout=120))
    for i, (_, exc) in enumerate(outcomes):
        if exc is not None:
            note(f"session {i} of {len(cases)} failed")
            for line in notes[i]:
                note(line)
            raise exc
    results = [r for r, _ in outcomes]
    markers = [mk for mks, _ in results for mk in mks]
    rx = b"".join(r for _, r in results)
    check_after_example(rig, markers, rx)


def run_timeout(share: float) -> int:
    """pytest-timeout's bound for one fuzz test: 300 s, or 0.2 s a session for
    a long run (``make fuzz`` does some 35 sessions a second on two cores)."""
    return max(300, int(FUZZ_EXAMPLES * share * 0.2))


def swarm(strategy):
    """FUZZ_SWARM cases of ``strategy`` per example."""
    return st.lists(strategy, min_size=FUZZ_SWARM, max_size=FUZZ_SWARM)


@pytest.mark.timeout(run_timeout(0.35))
@fuzz_settings(0.35)
@given(cases=swarm(st.tuples(wellformed_units(), chunk_plan())))
def test_fuzz_wellformed(rig, cases):
    run_swarm(rig, "wellformed", run_wellformed, cases)


@pytest.mark.timeout(run_timeout(0.40))
@fuzz_settings(0.40)
@given(cases=swarm(st.tuples(chaos_stream(), chunk_plan())))
def test_fuzz_chaos(rig, cases):
    run_swarm(rig, "chaos", run_chaos, cases)


@pytest.mark.timeout(run_timeout(0.25))
@fuzz_settings(0.25)
@given(cases=swarm(st.tuples(prelogin_stream(), st.booleans(), chunk_plan())))
def test_fuzz_prelogin(rig, cases):
    run_swarm(rig, "prelogin", run_prelogin, cases)


def test_zz_resources_came_back_and_nothing_leaked(rig):
    """After all the fuzzing: fds back near the baseline, RSS bounded, no marker in the log."""
    leaked = leaked_in_file(rig.pg.log_path, rig.markers)
    assert not leaked, f"denied statements reached the server: {sorted(leaked)}"
    assert rig.pg.execute("select count(*) from pg_tables where tablename = 'fuzz_victim'", dbname="appdb")[0][0] == 1
    for name, g in rig.gateways().items():
        base = rig.baseline[name]
        deadline = time.monotonic() + 20
        while (now := proc_stats(g.proc.pid))["fds"] > base["fds"] + 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        rig.sample()
        assert now["fds"] <= base["fds"] + 20, f"gateway {name}: {now['fds']} fds after the sessions closed (baseline {base['fds']})"
        assert rig.peak[name]["rss_kb"] <= base["rss_kb"] + 300 * 1024, f"gateway {name}: RSS peaked at {rig.peak[name]['rss_kb']} kB"
    print("\n" + format_summary(rig))
