"""An OIDC issuer served over HTTP on 127.0.0.1 and a gateway that trusts it,
in front of the test PostgreSQL prepared with pgjit/jit/SETUP.md."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgjit.identity.devissuer import init_issuer, mint_token, rotate_issuer
from pgjit.jit.setupsql import SETUP_MD, statements as setup_statements  # noqa: F401 (SETUP_MD re-exported)
from tests.gateway_fixtures import GatewayProc, start_gateway

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"


def apply_setup_sql(pg) -> None:
    """SETUP.md's one-time DBA setup, idempotently (pgjit_admin exists already)."""
    for tag, db in (("cluster", "postgres"), ("appdb", "appdb")):
        with pg.connect(dbname=db) as conn:
            for stmt in setup_statements(tag):
                try:
                    conn.execute(stmt)
                except psycopg.errors.DuplicateObject:
                    pass
    if pg.version >= 16:
        with pg.connect(dbname="postgres") as conn:
            for stmt in setup_statements("pg16"):
                conn.execute(stmt)


class Issuer:
    """A developer issuer whose discovery document and JWKS are served over
    HTTP on 127.0.0.1; ``up = False`` makes the endpoints answer 503."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.up = True
        self.requests: list[str] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                issuer.requests.append(self.path)
                if not issuer.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks.json"}).encode()
                elif self.path == "/jwks.json":
                    body = (issuer.dir / "jwks.json").read_bytes()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        init_issuer(directory, issuer=self.url)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, sub: str = "alice@example.com", groups=("analysts",), ttl: float = 600, **kw: Any) -> str:
        return mint_token(self.dir / "signing-key.pem", sub, list(groups), ttl, **kw)

    def rotate(self) -> None:
        rotate_issuer(self.dir)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class OIDCEnv:
    pg: Any
    issuer: Issuer
    gateway: GatewayProc

    def connect(self, token: str, user: str = "alice@example.com", **kw: Any) -> psycopg.Connection:
        return psycopg.connect(self.gateway.dsn(user=user, password=token), **kw)


def oidc_sections(pg, issuer: Issuer, policy: Path = DEFAULT_POLICY, **overrides: Any) -> dict[str, Any]:
    sections: dict[str, Any] = {
        "oidc": {
            "issuer": issuer.url,
            "audience": "pgjit",
            "allow_insecure_loopback": True,
            "jwks_min_refetch_interval": 0.5,
        },
        "timeouts": {"startup": 5, "auth": 5, "upstream_connect": 2, "shutdown_grace": 5},
        "targets": {
            "appdb": {
                "host": "127.0.0.1",
                "port": pg.port,
                "database": "appdb",
                "user": "pgjit_admin",
                "password": "adminpass",
                "policy": str(policy),
                "jit": {"owner_role": "pgjit_owner", "sweep_interval": 1, "setup_grace": 1},
            }
        },
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(sections.get(k), dict):
            sections[k] = {**sections[k], **v}
        else:
            sections[k] = v
    return sections


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    iss = Issuer(tmp_path_factory.mktemp("issuer"))
    yield iss
    iss.close()


@pytest.fixture(scope="module")
def oidc_env(pg, issuer, tmp_path_factory):
    apply_setup_sql(pg)
    gw = start_gateway(tmp_path_factory.mktemp("oidc-gw"), pg, **oidc_sections(pg, issuer))
    yield OIDCEnv(pg, issuer, gw)
    gw.stop()


def jit_roles(pg) -> list[str]:
    rows = pg.execute(r"select rolname from pg_roles where rolname ~ '^pgjit_.*_[a-z2-7]{16}$' order by 1")
    return [r[0] for r in rows]
