"""The codec and the decision layers never import trio (DESIGN.md, layers table)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_codec_imports_without_trio():
    proc = _run(
        """
        import pgjit.protocol.messages, pgjit.protocol.framing, pgjit.protocol.scram, sys
        assert "trio" not in sys.modules
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_codec_package_imports_no_io_or_heavy_layers():
    proc = _run(
        """
        import importlib, pkgutil, sys
        import pgjit.protocol
        for info in pkgutil.walk_packages(pgjit.protocol.__path__, "pgjit.protocol."):
            importlib.import_module(info.name)
        bad = sorted(m for m in ("trio", "pglast", "sqlalchemy") if m in sys.modules)
        assert not bad, bad
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_decision_layers_import_without_trio():
    """pgjit.policy and pgjit.masking may be empty or in progress: import
    whatever of them imports; trio must not be loaded by any of it."""
    proc = _run(
        """
        import importlib, pkgutil, sys
        failed = []
        for pkg_name in ("pgjit.protocol", "pgjit.policy", "pgjit.masking"):
            try:
                pkg = importlib.import_module(pkg_name)
            except ImportError as e:
                failed.append(f"{pkg_name}: {e!r}")
                continue
            for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), pkg_name + "."):
                try:
                    importlib.import_module(info.name)
                except Exception as e:  # work in progress elsewhere
                    failed.append(f"{info.name}: {e!r}")
        print("\\n".join(failed))
        assert "trio" not in sys.modules, "trio was imported"
        """
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
