"""pgjit/devtools/peertests.py without psycopg's checkout: the outcome
recorder plugin run by a real pytest, the comparison, and the expected-
difference list held to the gateway's actual refusal messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgjit.devtools import peertests
from pgjit.devtools.peertests import EXPECTED_DIFFERENCES, RunResult, compare

REPO = Path(__file__).resolve().parent.parent


def _run(label: str, results: dict[str, str], messages: dict[str, str] | None = None) -> RunResult:
    recs = {}
    for nodeid, outcome in results.items():
        recs[nodeid] = {"nodeid": nodeid, "outcome": outcome, "start": 0.0, "stop": 1.0, "message": (messages or {}).get(nodeid, "")}
    return RunResult(label, recs, 0, False, True, 1.0, Path("/dev/null"), [])


def test_plugin_records_every_outcome(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture
        def broken_setup():
            raise RuntimeError("setup boom")

        @pytest.fixture
        def broken_teardown():
            yield
            raise RuntimeError("teardown boom")

        def test_pass(): pass
        def test_fail(): assert 1 == 2, "nope"
        def test_setup_error(broken_setup): pass
        def test_teardown_error(broken_teardown): pass
        def test_skip(): pytest.skip("not here")
        @pytest.mark.xfail(reason="known")
        def test_xfail(): assert False
        @pytest.mark.xfail(reason="known")
        def test_xpass(): pass
    """))
    results = tmp_path / "out.jsonl"
    plugdir = tmp_path / "plug"
    plugdir.mkdir()
    (plugdir / "peertests_plugin.py").write_text(peertests.PLUGIN.read_text())
    env = {**os.environ, "PGJIT_PEER_RESULTS": str(results), "PYTHONPATH": str(plugdir)}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "peertests_plugin", "-p", "no:cacheprovider", "-q", "-c", os.devnull,
         "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert recs[-1] == {"session_finished": True, "exitstatus": 1}
    got = {rec["nodeid"].split("::")[-1]: rec for rec in recs[:-1]}
    assert {k: v["outcome"] for k, v in got.items()} == {
        "test_pass": "passed",
        "test_fail": "failed",
        "test_setup_error": "error",
        "test_teardown_error": "error",
        "test_skip": "skipped",
        "test_xfail": "xfailed",
        "test_xpass": "xpassed",
    }
    assert "nope" in got["test_fail"]["message"]
    assert "setup boom" in got["test_setup_error"]["message"]
    assert got["test_teardown_error"]["phase"] == "teardown"
    assert all(rec["start"] <= rec["stop"] for rec in got.values())


def test_compare_classifies_differences() -> None:
    refusal = "E   psycopg.errors.FeatureNotSupported: the FunctionCall protocol message is not allowed through pgjit"
    direct = _run("direct", {"t::same": "passed", "t::fncall": "passed", "t::other": "passed", "t::better": "failed",
                             "t::gone": "passed", "t::fncall_but_failing_directly": "failed"})
    gateway = _run(
        "gateway",
        {"t::same": "passed", "t::fncall": "failed", "t::other": "failed", "t::better": "passed",
         "t::fncall_but_failing_directly": "error"},
        {"t::fncall": refusal, "t::other": "E   AssertionError: pid differs", "t::fncall_but_failing_directly": refusal},
    )
    diffs = {d.nodeid: d for d in compare(direct, gateway)}
    assert set(diffs) == {"t::fncall", "t::other", "t::better", "t::gone", "t::fncall_but_failing_directly"}
    assert diffs["t::fncall"].expected is not None and diffs["t::fncall"].expected.name == "function-call"
    assert not diffs["t::fncall"].unexpected
    for nodeid in ("t::other", "t::gone", "t::fncall_but_failing_directly"):
        assert diffs[nodeid].expected is None and diffs[nodeid].unexpected, nodeid
    # Failing only directly: a difference, listed, but not one against pgjit.
    assert diffs["t::better"].better and not diffs["t::better"].unexpected
    assert diffs["t::gone"].gateway == "not run"

    # A re-run giving both ways the same outcome makes a difference flaky, not unexpected.
    d = diffs["t::other"]
    d.rerun_direct, d.rerun_gateway = "passed", "passed"
    assert d.flaky and not d.unexpected
    d.rerun_direct, d.rerun_gateway = "passed", "failed"
    assert d.reproduced and d.unexpected
    # Differing the other way round on the re-run is no reproduction either.
    d.rerun_direct, d.rerun_gateway = "failed", "passed"
    assert d.flaky and not d.unexpected


@pytest.mark.parametrize("name", ["function-call", "replication"])
def test_expected_evidence_is_the_gateways_own_message(name: str) -> None:
    """The evidence an expected difference needs is text pgjit really sends:
    rewording a refusal in the gateway must update the list."""
    entry = next(e for e in EXPECTED_DIFFERENCES if e.name == name)
    source = "".join((REPO / "pgjit" / "gateway" / f).read_text() for f in ("session.py", "relay.py"))
    literals = " ".join(re.findall(r'"([^"\n]*)"', source))
    assert re.search(entry.evidence, literals), f"{name}: {entry.evidence!r} is not in the gateway's messages"


def test_every_expected_entry_has_a_reason() -> None:
    names = [e.name for e in EXPECTED_DIFFERENCES]
    assert len(names) == len(set(names))
    assert all(e.reason and e.evidence for e in EXPECTED_DIFFERENCES)


def test_refuses_what_is_not_a_psycopg_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert peertests.main(["--psycopg-src", str(tmp_path), "--no-setup"]) == 2
    assert "is not a psycopg source checkout" in capsys.readouterr().err
    env_src = os.environ.pop("PSYCOPG_SRC", None)
    try:
        assert peertests.main(["--no-setup"]) == 2
        assert "PSYCOPG_SRC" in capsys.readouterr().err
    finally:
        if env_src is not None:
            os.environ["PSYCOPG_SRC"] = env_src
