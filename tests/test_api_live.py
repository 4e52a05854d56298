"""The operators' HTTP API against a real gateway and PostgreSQL: /metrics
moves by exactly what a scripted session did, /healthz and /readyz answer,
/readyz turns 503 naming the upstream when its server goes away, and the
API listens on loopback only unless told otherwise."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from pgjit.gateway import reactor as reactor_mod

from tests.gateway_fixtures import start_gateway

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"


def _get(gw, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{gw.extra['api_port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _gated(pg, tmp_path, **extra):
    return start_gateway(tmp_path / "gw", pg, api={"port": 0, "probe_interval": 0.2}, targets={"appdb": {
        "host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app", "password": "apppass",
        "policy": str(DEFAULT_POLICY)}}, **extra)


def test_metrics_move_by_what_a_session_did(pg, tmp_path):
    gw = _gated(pg, tmp_path)
    try:
        status, before_text = _get(gw, "/metrics")
        assert status == 200
        before = _samples(before_text)
        allowed = ["select 1", "select count(*) from customers", "show search_path"]
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            for sql in allowed:
                conn.execute(sql)
            # Shape-mates of "select 1": the relay core lets them through on
            # the gate's verdict for the shape, counted apart (when it runs).
            conn.execute("select 2")
            conn.execute("select 3")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("drop table customers")
            # While the session is open it is counted as active on its target.
            during = _samples(_get(gw, "/metrics")[1])
            assert during['pgjit_sessions_active{target="appdb"}'] == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = _samples(_get(gw, "/metrics")[1])
            if after.get('pgjit_sessions_total{outcome="ok",target="appdb"}', 0) > before.get('pgjit_sessions_total{outcome="ok",target="appdb"}', 0):
                break
            time.sleep(0.05)

        def moved(name: str) -> float:
            return after.get(name, 0) - before.get(name, 0)

        assert moved('pgjit_sessions_total{outcome="ok",target="appdb"}') == 1
        assert after['pgjit_sessions_active{target="appdb"}'] == 0
        assert moved('pgjit_statements_denied_total{action="deny"}') == 1
        # Every statement the session sent was decided by the gate once: the
        # three allowed, the denied one, and what psycopg sends itself (none
        # in autocommit).
        assert moved("pgjit_gate_seconds_count") == len(allowed) + 1
        assert moved("pgjit_gate_seconds_sum") > 0
        assert moved("pgjit_gate_reused_total") == (2 if reactor_mod.c_core_enabled() else 0)
        assert moved("pgjit_connect_seconds_count") == 1
        assert after['pgjit_upstream_up{target="appdb"}'] == 1
        # No label carries a user name or SQL.
        assert "alice" not in _get(gw, "/metrics")[1] and "customers" not in _get(gw, "/metrics")[1]
    finally:
        gw.stop()


def test_health_and_readiness(pg, tmp_path):
    gw = _gated(pg, tmp_path)
    try:
        assert _get(gw, "/healthz") == (200, '{"status": "ok"}\n')
        # Ready once the gated target's catalog is loaded (sessions fail
        # closed without it): 503 until then, naming it.
        deadline = time.monotonic() + 20
        while True:
            status, body = _get(gw, "/readyz")
            if status == 200 or time.monotonic() > deadline:
                break
            assert status == 503 and not json.loads(body)["checks"]["catalog:appdb"]["ok"], body
            time.sleep(0.05)
        assert status == 200, body
        checks = json.loads(body)["checks"]
        assert checks["upstream:appdb"]["ok"] and checks["catalog:appdb"]["ok"] and checks["listening"]["ok"]
        assert _get(gw, "/nope")[0] == 404
        # HEAD has no body; anything else is refused.
        req = urllib.request.Request(f"http://127.0.0.1:{gw.extra['api_port']}/readyz", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 405
    finally:
        gw.stop()


def test_readiness_names_an_unreachable_upstream(pg, tmp_path):
    # A second target whose server is not there (a port nothing listens on).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    gw = start_gateway(tmp_path / "gw", pg, api={"port": 0, "probe_interval": 0.2}, targets={
        "appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app", "password": "apppass"},
        "gone": {"host": "127.0.0.1", "port": dead_port, "database": "x", "user": "app", "password": "apppass"}})
    try:
        status, body = _get(gw, "/readyz")
        assert status == 503, body
        checks = json.loads(body)["checks"]
        assert checks["upstream:appdb"]["ok"] is True
        assert checks["upstream:gone"]["ok"] is False and str(dead_port) in checks["upstream:gone"]["detail"]
        assert _samples(_get(gw, "/metrics")[1])['pgjit_upstream_up{target="gone"}'] == 0
    finally:
        gw.stop()


def test_api_binds_loopback_by_default_and_survives_garbage(pg, tmp_path):
    gw = start_gateway(tmp_path / "gw", pg, api={"port": 0})
    try:
        line = next(r for r in gw.logs() if r.get("msg") == "api listening")
        assert all(a.startswith("127.0.0.1:") for a in line["addresses"].split(","))
        # A client that sends garbage, or nothing, gets 400 or is closed; the API still answers.
        with socket.create_connection(("127.0.0.1", gw.extra["api_port"]), timeout=10) as s:
            s.sendall(b"\x16\x03\x01garbage\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")
        with socket.create_connection(("127.0.0.1", gw.extra["api_port"]), timeout=10) as s:
            s.sendall(b"GET /" + b"a" * 20000)
            assert s.recv(100).startswith(b"HTTP/1.1 400")
        assert _get(gw, "/healthz")[0] == 200
    finally:
        gw.stop()
