"""A gateway in JIT mode under policies/examples/migrations.yaml, whose
``deployers`` run every statement as the stable owning role ``app_migrator``
(``owner:`` in the policy's access entry), in front of the test PostgreSQL.

Each migration tool run is one client session: a fresh token, one connection,
one new JIT role, dropped after the disconnect. The helpers here mark the
gateway's and the server's logs before a run so that a failure can show what
the gate refused (rule, action) and what PostgreSQL answered (ERROR/STATEMENT).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.clients._helpers import wait_for
from tests.gateway_fixtures import GatewayProc, start_gateway
from tests.oidc_fixtures import Issuer, apply_setup_sql, jit_roles, oidc_sections

REPO = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
POLICY = REPO / "policies" / "examples" / "migrations.yaml"
OWNER = "app_migrator"
PERSON = "deployer@example.com"
GROUPS = ("deployers",)
ROLE_GONE_TIMEOUT = 20.0  # sweep_interval is 1 s; revocation follows the disconnect
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # log_line_prefix starts with %m


@dataclass
class Step:
    """One tool run (one session): its result and the log lines it caused."""

    what: str
    result: subprocess.CompletedProcess[str]
    gateway: list[dict[str, Any]] = field(default_factory=list)
    server: list[str] = field(default_factory=list)

    @property
    def roles_created(self) -> list[str]:
        return [str(r["role"]) for r in self.gateway if r.get("msg") == "jit role created"]

    def report(self) -> str:
        refused = [
            {k: r.get(k) for k in ("session", "msg", "rule", "action", "sqlstate", "reason") if r.get(k) is not None}
            for r in self.gateway
            if r.get("msg") in ("statement refused", "session refused") or r.get("level") in ("warning", "error")
        ]
        errors: list[str] = []
        records: list[str] = []  # one per log entry: a statement's further lines joined on
        for line in self.server:
            if records and not _LOG_LINE.match(line):
                records[-1] += "\n        " + line
            else:
                records.append(line)
        for i, line in enumerate(records):
            if " ERROR: " in line or " FATAL: " in line:
                errors.append(line)
                for nxt in records[i + 1:i + 4]:
                    if any(t in nxt for t in (" DETAIL: ", " HINT: ", " STATEMENT: ", " CONTEXT: ")):
                        errors.append("    " + nxt)
                    else:
                        break
        return (
            f"{self.what} exited {self.result.returncode}\n"
            f"--- stdout (tail) ---\n{self.result.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{self.result.stderr[-6000:]}\n"
            f"--- gateway: refusals/warnings in this step ---\n" + ("\n".join(map(str, refused)) or "(none)") + "\n"
            f"--- PostgreSQL: errors in this step ---\n" + ("\n".join(errors[-30:]) or "(none)")
        )


@dataclass
class MigrationEnv:
    pg: Any
    issuer: Issuer
    gateway: GatewayProc

    def token(self) -> str:
        """A fresh token: every tool run logs in anew and gets its own JIT role."""
        return self.issuer.token(sub=PERSON, groups=GROUPS)

    def _marks(self) -> tuple[int, int]:
        gw = self.gateway.log_path.stat().st_size if self.gateway.log_path.exists() else 0
        return gw, len(self.pg.server_log())

    def run(self, what: str, cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> Step:
        gw0, pg0 = self._marks()
        try:
            result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            result = subprocess.CompletedProcess(cmd, -9, _text(exc.stdout), _text(exc.stderr) + f"\n(timed out after {timeout} s)")
        step = Step(what, result)
        # The session's last lines (its role's revocation) may come a little later.
        wait_for(lambda: self.gateway.log_path.stat().st_size > gw0, 2)
        raw = self.gateway.log_path.read_bytes()[gw0:].decode("utf-8", "replace")
        step.gateway = _json_lines(raw)
        step.server = self.pg.server_log()[pg0:].splitlines()
        return step

    def check(self, step: Step) -> Step:
        assert step.result.returncode == 0, step.report()
        created = step.roles_created
        assert len(created) == 1, f"{step.what}: expected exactly one new JIT role (one session), got {created}\n{step.report()}"
        return step

    def assert_no_jit_roles(self, after: str) -> None:
        gone = wait_for(lambda: not jit_roles(self.pg), ROLE_GONE_TIMEOUT, 0.2)
        assert gone, f"JIT roles still present {ROLE_GONE_TIMEOUT} s after {after}: {jit_roles(self.pg)}"

    def owners(self, names: list[str] | tuple[str, ...]) -> dict[str, tuple[str, str]]:
        """{relname: (relkind, owner)} of the named relations in appdb's public schema."""
        rows = self.pg.execute(
            "SELECT c.relname, c.relkind::text, pg_get_userbyid(c.relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relname = ANY(%s)",
            (list(names),),
            dbname="appdb",
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def relations_like(self, prefix: str) -> dict[str, tuple[str, str]]:
        """{relname: (relkind, owner)} of every relation in public whose name starts with prefix."""
        rows = self.pg.execute(
            "SELECT c.relname, c.relkind::text, pg_get_userbyid(c.relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND starts_with(c.relname, %s)",
            (prefix,),
            dbname="appdb",
        )
        return {r[0]: (r[1], r[2]) for r in rows}


def _text(b: Any) -> str:
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def _json_lines(raw: str) -> list[dict[str, Any]]:
    import json

    out = []
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {"raw": line}
        out.append(rec if isinstance(rec, dict) else {"raw": line})
    return out


def unique_prefix(kind: str) -> str:
    return f"{kind}{uuid.uuid4().hex[:8]}"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a tool run: this interpreter's, with the repo and the
    project directories importable, and no stray Django/Alembic settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGJIT_MIG_", "PGJIT_DJANGO_", "DJANGO_"))}
    env.update(extra)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def python() -> str:
    return sys.executable


@pytest.fixture(scope="module")
def mig_env(pg, tmp_path_factory):
    """The gateway for one test module (its own issuer, its own log)."""
    if not POLICY.is_file():
        pytest.fail(f"{POLICY.relative_to(REPO)} does not exist (the stable owning role is not in this tree yet)", pytrace=False)
    apply_setup_sql(pg)
    if not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER,)):
        pytest.fail(f"role {OWNER} does not exist after apply_setup_sql (pgjit/jit/SETUP.md does not create it)", pytrace=False)
    iss = Issuer(tmp_path_factory.mktemp("mig-issuer"))
    try:
        gw = start_gateway(tmp_path_factory.mktemp("mig-gw"), pg, **oidc_sections(pg, iss, policy=POLICY))
        try:
            yield MigrationEnv(pg, iss, gw)
        finally:
            gw.stop()
    finally:
        iss.close()
