"""The gateway package's shape (DESIGN.md, package layout): its modules'
imports point one way, and the relay's logic is importable without trio."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GATEWAY = REPO / "pgjit" / "gateway"


def _runtime_imports(path: Path) -> set[str]:
    """The pgjit.gateway modules ``path`` imports when it runs (imports
    under ``if TYPE_CHECKING:`` are for annotations only and left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pgjit.gateway":
                found.update(f"pgjit.gateway.{a.name}" for a in node.names)
            elif node.module.startswith("pgjit.gateway."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pgjit.gateway."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_gateway_modules_import_one_way():
    graph = {f"pgjit.gateway.{p.stem}": _runtime_imports(p) for p in GATEWAY.glob("*.py") if p.stem != "__init__"}
    assert "pgjit.gateway.relay" in graph and "pgjit.gateway.session" in graph
    # Depth-first search for a cycle.
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                walk(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    # The bottom of the package knows nothing above it.
    assert graph["pgjit.gateway.relay"] <= {"pgjit.gateway.lexstate", "pgjit.gateway.statements"}
    assert graph["pgjit.gateway.statements"] == set()
    assert graph["pgjit.gateway.transport"] == set()
    assert "pgjit.gateway.session" not in graph["pgjit.gateway.reactor"]
    assert "pgjit.gateway.server" not in set().union(*(v for k, v in graph.items() if k != "pgjit.gateway.server"))


# The JIT broker's admin connection logs in with the gateway's own protocol
# client (upstream login, transport): a departure the README's architecture
# section names. Nothing else outside the gateway may import it.
ALLOWED_OUTSIDE = {"jit/admin.py"}


def test_nothing_outside_the_gateway_imports_it_but_the_entry_and_devtools():
    """The decision and record layers never reach into the I/O edges."""
    offenders = []
    for path in (REPO / "pgjit").rglob("*.py"):
        rel = path.relative_to(REPO / "pgjit")
        if rel.parts[0] in ("gateway", "devtools") or rel.name == "cli.py" or str(rel) in ALLOWED_OUTSIDE:
            continue
        if any(line.lstrip().startswith(("from pgjit.gateway", "import pgjit.gateway"))
               for line in path.read_text().splitlines()):
            offenders.append(str(rel))
    assert not offenders, offenders


def test_relay_logic_imports_without_trio():
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            import pgjit.gateway.relay
            assert "trio" not in sys.modules, "trio"
        """)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_decision_layers_import_without_trio():
    """DESIGN.md: importing the codec, the policy, masking and the approvals'
    rules imports neither trio nor the store's SQLAlchemy."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            import pgjit.protocol.messages, pgjit.policy.gate, pgjit.policy.model
            import pgjit.masking.lineage, pgjit.masking.wire, pgjit.masking.rules
            import pgjit.approvals.model, pgjit.approvals.evidence, pgjit.approvals.notify
            bad = [m for m in ("trio", "sqlalchemy") if m in sys.modules]
            assert not bad, bad
        """)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
