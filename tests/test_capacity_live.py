"""1,000 concurrent idle sessions through one gateway (issue 10, faults).

A cluster of its own (max_connections 1100: the shared test server allows
200), one gateway, 1,000 logged-in sessions that each ran ``select 1`` and then
sit idle. While they do: a fresh client still logs in and queries, and the
gateway's RSS and file descriptors are measured. Then every session closes and
nothing is left behind: the gateway's fds come back to the baseline and the
server has no backend of ours left.

The figures are printed (run with ``-s``); the bounds asserted are the
issue's 64 KiB per idle session and two fds a session, not timings.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pgjit.protocol import messages as m
from tests.conftest import _start_cluster
from tests.gateway_fixtures import start_gateway
from tests.rawclient import RawClient

pytestmark = pytest.mark.pg

N = 1000


def _stats(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open fds) of a process."""
    rss = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _session(port: int) -> RawClient:
    c = RawClient(port, timeout=30)
    out = c.login()
    assert isinstance(out[-1], m.ReadyForQuery), out
    c.send(m.Query("select 1"))
    msgs = c.read_until_ready(30)
    assert [x.values for x in msgs if isinstance(x, m.DataRow)] == [(b"1",)], msgs
    return c


def _our_backends(cluster) -> int:
    return cluster.execute("select count(*) from pg_stat_activity where usename = 'app'", dbname="appdb")[0][0]


@pytest.mark.timeout(600)
def test_a_thousand_idle_sessions(tmp_path):
    cluster, base = _start_cluster(extra_conf={"max_connections": N + 100, "shared_buffers": "32MB"})
    gw = None
    clients: list[RawClient] = []
    try:
        gw = start_gateway(tmp_path / "gw", cluster, listen={"max_clients": N + 50})
        warm = _session(gw.port)  # the first session loads what the gateway loads once
        warm.close()
        time.sleep(0.5)
        rss0, fds0 = _stats(gw.proc.pid)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(_session, gw.port) for _ in range(N)]
            for f in futures:
                clients.append(f.result(timeout=120))
        opened_in = time.monotonic() - started
        time.sleep(1.0)
        rss1, fds1 = _stats(gw.proc.pid)
        assert _our_backends(cluster) >= N

        # The gateway still serves someone new, and every idle session still answers.
        fresh = _session(gw.port)
        fresh.close()
        for c in clients[:: N // 20]:
            c.send(m.Query("select 1"))
            assert [x.values for x in c.read_until_ready(30) if isinstance(x, m.DataRow)] == [(b"1",)]

        per_session = (rss1 - rss0) / N
        print(f"\n{N} idle sessions: opened in {opened_in:.1f} s; gateway RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB "
              f"({per_session:.0f} KiB per session), fds {fds0} -> {fds1}")
        # Two sockets a session (client and upstream) and a handful of the gateway's own.
        assert fds1 <= fds0 + 2 * N + 20, (fds0, fds1)
        assert per_session <= 64, f"{per_session:.0f} KiB per idle session"

        for c in clients:
            c.send(m.Terminate())
            c.close()
        clients.clear()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rss2, fds2 = _stats(gw.proc.pid)
            if fds2 <= fds0 + 5 and _our_backends(cluster) == 0:
                break
            time.sleep(0.5)
        print(f"after closing: gateway fds {fds2} (baseline {fds0}), RSS {rss2 / 1024:.1f} MiB; "
              f"server backends of the session user {_our_backends(cluster)}")
        assert fds2 <= fds0 + 5, f"{fds2} fds left open (baseline {fds0})"
        assert _our_backends(cluster) == 0, "upstream connections left behind"
        assert gw.proc.poll() is None
    finally:
        for c in clients:
            c.close()
        if gw is not None:
            gw.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
