"""The Postgres MCP server (``@modelcontextprotocol/server-postgres``, what
Cursor and Claude Desktop run) through the gateway with an OIDC token as the
password.

The server is started exactly as Cursor starts it from an ``mcpServers``
entry — ``node …/server-postgres/dist/index.js <postgresql:// DSN>`` — and
this test is its MCP client: JSON-RPC 2.0, one JSON object per line, over the
process's stdin and stdout. The npm package is pinned in node/package.json
(installed into node/node_modules when missing, as test_node.py does); a
missing node, npm or package fails the test.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.oidc_fixtures import issuer, jit_roles, oidc_env  # noqa: F401

from ._helpers import require_executable, wait_for

pytestmark = [pytest.mark.pg, pytest.mark.clients]

NODE_DIR = Path(__file__).resolve().parent / "node"
PACKAGE = "@modelcontextprotocol/server-postgres"
SERVER_JS = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "server-postgres" / "dist" / "index.js"
READ_TIMEOUT = 20.0
ALICE = "alice@example.com"


@pytest.fixture(scope="session")
def mcp_server_cmd() -> list[str]:
    """``[node, …/server-postgres/dist/index.js]``, installing the pinned npm packages when missing."""
    node = require_executable("node", "install Node.js >= 18 (e.g. apt-get install nodejs)")
    if not SERVER_JS.is_file():
        npm = require_executable("npm", "install npm (e.g. apt-get install npm)")
        try:
            cp = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("npm install in tests/clients/node did not finish within 300 s", pytrace=False)
        if cp.returncode != 0 or not SERVER_JS.is_file():
            pytest.fail(
                f"npm install of {PACKAGE} in tests/clients/node failed (exit {cp.returncode}):\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}",
                pytrace=False,
            )
    return [node, str(SERVER_JS)]


class MCPError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", error))
        self.error = error


class MCPClient:
    """A minimal MCP client over a child process's stdio (newline-delimited JSON-RPC)."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[str] = []
        self.others: list[dict[str, Any]] = []  # notifications and requests from the server
        self._next_id = 0
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                self.stderr.append(f"(non-JSON on stdout) {line}")
        self.messages.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self._send(msg)

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        """Send a request and return its ``result``; raise :class:`MCPError` for an ``error`` reply."""
        self._next_id += 1
        rid = self._next_id
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self._send(msg)
        while True:
            try:
                reply = self.messages.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no reply to {method} within {timeout:g} s; server stderr:\n{self.log()}", pytrace=False)
            if reply is None:
                pytest.fail(f"the MCP server closed stdout before answering {method} (exit {self.proc.poll()}); stderr:\n{self.log()}", pytrace=False)
            if reply.get("id") == rid and ("result" in reply or "error" in reply):
                assert reply.get("jsonrpc") == "2.0"
                if "error" in reply:
                    raise MCPError(reply["error"])
                return reply["result"]
            self.others.append(reply)

    def log(self) -> str:
        return "\n".join(self.stderr[-50:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def rows_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    assert result.get("isError") is False, result
    content = result["content"]
    assert content and content[0]["type"] == "text", result
    return json.loads(content[0]["text"])


def test_postgres_mcp_server_through_the_gateway(mcp_server_cmd, oidc_env):
    env = oidc_env
    token = env.issuer.token(sub=ALICE, groups=["analysts"], ttl=600)
    dsn = f"postgresql://{quote(ALICE, safe='')}:{token}@127.0.0.1:{env.gateway.port}/appdb?sslmode=disable"
    roles_before = set(jit_roles(env.pg))
    expected = env.pg.execute("select count(*) from customers", dbname="appdb")[0][0]

    client = MCPClient([*mcp_server_cmd, dsn])
    role = None
    try:
        init = client.request(
            "initialize",
            {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "pgjit-tests", "version": "1.0"}},
        )
        assert init["protocolVersion"] == "2024-11-05"
        assert {"resources", "tools"} <= set(init["capabilities"])
        assert init["serverInfo"]["name"]
        client.notify("notifications/initialized")

        # Resources: one schema resource per table in public, read through the gateway.
        resources = client.request("resources/list")["resources"]
        by_table = {r["uri"].rsplit("/", 2)[-2]: r for r in resources}
        assert {"customers", "orders"} <= set(by_table), resources
        for name in ("customers", "orders"):
            uri = by_table[name]["uri"]
            assert uri.startswith("postgres://") and uri.endswith(f"/{name}/schema")
            assert token not in uri and token.split(".")[2] not in uri  # the password is stripped
        contents = client.request("resources/read", {"uri": by_table["customers"]["uri"]})["contents"]
        columns = {c["column_name"] for c in json.loads(contents[0]["text"])}
        assert {"id", "name", "email", "ssn", "created_at"} <= columns

        tools = client.request("tools/list")["tools"]
        assert "query" in {t["name"] for t in tools}, tools

        # A read, as the just-in-time role the gateway made for this token.
        rows = rows_of(client.request("tools/call", {"name": "query", "arguments": {"sql": "select count(*) as n from customers"}}))
        assert rows == [{"n": str(expected)}]  # node-postgres returns bigint as a string
        rows = rows_of(client.request("tools/call", {"name": "query", "arguments": {"sql": "select current_user as u"}}))
        role = rows[0]["u"]
        assert role.startswith("pgjit_alice_"), role
        assert role in jit_roles(env.pg) and role not in roles_before

        # A write is refused (READ ONLY transaction, a role without INSERT, or the policy).
        try:
            result = client.request("tools/call", {"name": "query", "arguments": {"sql": "insert into customers(name) values ('x')"}})
        except MCPError as e:
            message = str(e)
        else:
            assert result.get("isError") is True, f"the insert was not refused: {result}"
            message = json.dumps(result["content"])
        assert any(s in message for s in ("read-only transaction", "permission denied", "denied by policy")), message
        assert env.pg.execute("select count(*) from customers where name = 'x'", dbname="appdb")[0][0] == 0
        assert env.pg.execute("select count(*) from customers", dbname="appdb")[0][0] == expected

        # The server rolled back and keeps working afterwards.
        rows = rows_of(client.request("tools/call", {"name": "query", "arguments": {"sql": "select 40 + 2 as answer"}}))
        assert rows == [{"answer": 42}]
        assert token not in client.log()
    finally:
        client.close()

    # The MCP server is gone: so is its just-in-time role.
    assert role is not None
    assert wait_for(lambda: role not in jit_roles(env.pg), timeout=15, step=0.2), f"{role} still exists after the MCP server ended"
