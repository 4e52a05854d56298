"""node-postgres (``pg`` from npm, plus ``pg-copy-streams``) through the
gateway. ``tests/clients/node/check.js`` does the work and prints JSON; this
module checks the JSON and what the script wrote to the real database.

The npm packages are pinned in node/package.json and node/package-lock.json
and installed once per session into node/node_modules (kept if present)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ._helpers import require_executable

pytestmark = [pytest.mark.pg, pytest.mark.clients]

NODE_DIR = Path(__file__).resolve().parent / "node"
REQUIRED_MODULES = ("pg", "pg-copy-streams")


def _installed() -> bool:
    return all((NODE_DIR / "node_modules" / name / "package.json").is_file() for name in REQUIRED_MODULES)


@pytest.fixture(scope="session")
def node_env() -> str:
    """Path to ``node``, with the script's npm dependencies installed."""
    node = require_executable("node", "install Node.js >= 18 (e.g. apt-get install nodejs)")
    if not _installed():
        npm = require_executable("npm", "install npm (e.g. apt-get install npm)")
        try:
            cp = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("npm install in tests/clients/node did not finish within 300 s", pytrace=False)
        if cp.returncode != 0 or not _installed():
            pytest.fail(
                f"npm install in tests/clients/node failed (exit {cp.returncode}):\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}",
                pytrace=False,
            )
    return node


def run_check(node: str, dsn: str, table: str) -> dict:
    cp = subprocess.run(
        [node, "check.js", dsn, table],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=90,
    )
    lines = [ln for ln in cp.stdout.splitlines() if ln.strip()]
    assert lines, f"check.js printed nothing (exit {cp.returncode}); stderr:\n{cp.stderr}"
    result = json.loads(lines[-1])
    assert cp.returncode == 0 and "fatal" not in result, f"check.js failed (exit {cp.returncode}): {result}\nstderr:\n{cp.stderr}"
    return result


def test_node_postgres(node_env, gateway, direct, new_table):
    table = new_table("id int primary key, name text")
    r = run_check(node_env, gateway.url(user="node-user"), table)

    assert r["params"] == {"sum": 42, "t": "hé"}
    assert r["whoami"] == {"u": "app", "d": "appdb"}
    assert r["types"] == {"j": {"a": [1, 2]}, "a": [1, 2, 3], "n": "12.50", "ts": "2024-01-02T03:04:05.000Z", "b": "00ff", "nul": None}
    assert r["series"] == {"count": 20000, "sum": 20000 * 20001 // 2}
    assert r["bigLength"] == 2000000

    assert r["txn"] == [{"id": 2, "name": "committed"}]
    assert r["error"]["code"] == "42P01" and r["error"]["severity"] == "ERROR"
    assert 'relation "pgjit_no_such_table" does not exist' in r["error"]["message"]
    assert r["syntax"]["code"] == "42601"
    assert r["dup"]["code"] == "23505"
    assert r["aborted"]["code"] == "25P02"
    assert r["afterError"] == 1

    assert r["q1"] == [0, 10, 20, 30, 40]
    assert r["q1Prepared"] == 1
    assert {"severity": "NOTICE", "message": "node notice 3", "code": "00000"} in r["notices"]

    assert r["copyIn"] == 1000
    assert r["copyOut"] == {"rows": 1000, "lines": 1000, "first": "100\tcopied 100 ü", "last": "1099\tcopied 1099 ü"}
    assert r["notification"] == {"channel": f"{table}_chan", "payload": "node payload"}
    assert r["pool"]["values"] == [2 * i for i in range(20)]
    assert 1 <= r["pool"]["pids"] <= 5

    # What the script left in the real database.
    n, total, name_2, name_500 = direct.execute(
        f"select count(*), sum(id), max(name) filter (where id = 2), max(name) filter (where id = 500) from {table}"
    ).fetchone()
    assert (n, total, name_2, name_500) == (1001, 2 + sum(range(100, 1100)), "committed", "copied 500 ü")
