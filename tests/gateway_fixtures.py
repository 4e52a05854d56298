"""Fixtures that run the real gateway (``pgjit serve``) as a subprocess in
front of the test PostgreSQL started by ``tests/conftest.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@dataclass
class GatewayProc:
    proc: subprocess.Popen
    config_path: Path
    log_path: Path
    port: int = 0
    host: str = "127.0.0.1"
    relay: str | None = None  # "c" or "python": how the reactor relays (from the listening line)
    extra: dict[str, Any] = field(default_factory=dict)

    def dsn(self, user: str = "alice@example.com", dbname: str = "appdb", password: str = "x", **kw: str) -> str:
        parts = {"host": self.host, "port": str(self.port), "dbname": dbname, "user": user, "password": password, "sslmode": "disable"}
        parts.update(kw)
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def url(self, user: str = "alice", dbname: str = "appdb", password: str = "x") -> str:
        from urllib.parse import quote

        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{dbname}?sslmode=disable"

    def env(self, user: str = "alice@example.com", password: str = "x", dbname: str = "appdb") -> dict[str, str]:
        e = dict(os.environ)
        e.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=user, PGPASSWORD=password, PGDATABASE=dbname, PGSSLMODE="disable")
        return e

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line})
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def write_tls_files(directory: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, str]:
    """A throwaway CA and a server certificate for ``names`` (trustme),
    written to ``directory``: {"cert", "key"} are a config's ``tls`` section,
    "ca" what a client verifies against."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(*names)
    paths = {"cert": directory / "cert.pem", "key": directory / "key.pem", "ca": directory / "ca.pem"}
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return {k: str(v) for k, v in paths.items()}


def write_config(path: Path, pg: Any, **sections: Any) -> Path:
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "timeouts": {"startup": 5, "auth": 5, "upstream_connect": 5, "shutdown_grace": 5},
        "targets": {
            "appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app", "password": "apppass"},
        },
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_gateway(workdir: Path, pg: Any, env: dict[str, str] | None = None, **sections: Any) -> GatewayProc:
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir / "pgjit.yaml", pg, **sections)
    log_path = workdir / "gateway.log"
    logf = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgjit", "serve", "--config", str(config)],
        stdout=logf,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    gw = GatewayProc(proc, config, log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()}")
        for rec in gw.logs():
            if rec.get("msg") == "api listening":
                gw.extra["api_port"] = int(rec["addresses"].split(",")[0].rsplit(":", 1)[1])
            if rec.get("msg") == "listening":
                gw.port = int(rec["addresses"].split(",")[0].rsplit(":", 1)[1])
                gw.relay = rec.get("relay")
                return gw
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"gateway did not start listening within 20 s:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def gateway(pg, tmp_path_factory):
    """A gateway shared by tests that do not change its configuration."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), pg)
    if os.environ.get("CI") == "true":
        # The client matrix must exercise the relay the benchmarks measure.
        assert gw.relay == "c", f"the gateway relays with {gw.relay!r}, not the C core"
    yield gw
    gw.stop()


@pytest.fixture
def make_gateway(pg, tmp_path):
    """Start a gateway with config overrides: ``make_gateway(listen={...})``."""
    started: list[GatewayProc] = []

    def make(**sections: Any) -> GatewayProc:
        gw = start_gateway(tmp_path / f"gw{len(started)}", pg, **sections)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop(signal.SIGKILL)
