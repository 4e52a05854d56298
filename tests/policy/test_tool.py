"""``pgjit policy check | explain | test``."""

from __future__ import annotations

import argparse
import io
import json
import textwrap
from pathlib import Path

import pytest

from pgjit.policy import tool

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
DEFAULT = POLICIES / "default.yaml"


def run(func, *args, **kwargs) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    code = func(*args, out=out, **kwargs)
    return code, out.getvalue()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------- check


def test_check_shipped_policies() -> None:
    code, out = run(tool.check, [POLICIES])
    assert code == 0, out
    assert "default.yaml: ok" in out
    assert "examples/dba.yaml: ok" in out
    assert "tests.yaml" not in out
    assert "warning" not in out, out


def test_check_reports_errors_with_file_and_line(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.yaml",
        """\
        version: 1
        rules:
          - name: r
            match: {kind: [dropp_table]}
            action: deny
        """,
    )
    code, out = run(tool.check, [bad])
    assert code == 1
    assert f"{bad}:4: rules[0].match.kind[0]: unknown statement kind 'dropp_table'" in out


def test_check_warnings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "warn.yaml",
        """\
        version: 1
        access:
          - {group: analysts, grant: [r]}
        rules:
          - name: everything
            groups: [analysts]
            match: {kind: ["*"]}
            action: deny
          - name: shadowed-by-star
            groups: [analysts]
            match: {kind: [select]}
            action: allow
          - name: a
            groups: [ops]
            match: {kind: [delete]}
            action: deny
          - name: a-again
            groups: [ops]
            match: {kind: [delete]}
            action: deny
          - name: nothing
            groups: [ops]
            match: {kind: ["dorp_*"]}
            action: deny
          - name: approval-after-deny-is-not-a-duplicate
            groups: [ops]
            match: {kind: [delete]}
            action: allow
        """,
    )
    code, out = run(tool.check, [path])
    assert code == 0  # warnings only
    assert "rule 'shadowed-by-star' can never decide: rule 'everything'" in out
    assert "rule 'a-again' can never decide: rule 'a'" in out
    assert "glob 'dorp_*' matches no statement kind" in out
    assert "group 'ops' has no access entry" in out
    assert "approval-after-deny-is-not-a-duplicate' can never" not in out
    assert "(warning)" in out


def test_check_validates_sibling_tests_file(tmp_path: Path) -> None:
    policy = write(tmp_path, "p.yaml", "version: 1\nrules: []\n")
    write(tmp_path, "p.tests.yaml", "tests:\n  - {sql: 'SELECT 1', expect: allow, colour: red}\n")
    code, out = run(tool.check, [policy])
    assert code == 1
    assert "p.tests.yaml:2: tests[0].colour: unknown key" in out


def test_check_nothing_given(tmp_path: Path) -> None:
    code, out = run(tool.check, [tmp_path])
    assert code == 2 and "no policy files" in out


# --------------------------------------------------------------------------- explain


def test_explain_text() -> None:
    code, out = run(tool.explain, DEFAULT, ["agents"], "SELECT 1; WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
    assert code == 1
    assert "decision: deny" in out
    assert "rule: no-writes" in out
    assert "statement 1: deny by no-writes" in out
    assert "kinds: ['delete', 'select']" in out
    assert "write_without_where: True" in out


def test_explain_json() -> None:
    code, out = run(tool.explain, DEFAULT, ["agents"], "SELECT pg_read_file('x')", as_json=True)
    assert code == 1
    data = json.loads(out)
    assert data["action"] == "deny" and data["rule"] == "no-dangerous-functions"
    facts = data["statements"][0]["facts"]
    assert facts["dangerous"] == ["file_access"] and facts["functions"] == ["pg_read_file"]


def test_explain_allow_and_approval_exit_codes() -> None:
    assert run(tool.explain, DEFAULT, [], "SELECT 1")[0] == 0
    oncall = POLICIES / "examples" / "oncall.yaml"
    code, out = run(tool.explain, oncall, ["oncall"], "UPDATE t SET a = 1 WHERE id = 1")
    assert code == 3 and "decision: require_approval" in out


def test_explain_parse_error() -> None:
    code, out = run(tool.explain, DEFAULT, [], "SELEC 1")
    assert code == 1 and "42601" in out
    code, out = run(tool.explain, DEFAULT, [], "SELEC 1", as_json=True)
    assert json.loads(out)["error"] == "parse"


def test_explain_bad_policy(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "version: 1\n")
    assert run(tool.explain, bad, [], "SELECT 1")[0] == 2


# --------------------------------------------------------------------------- test


def test_shipped_policy_cases_pass() -> None:
    """`make test` runs the DBA-written cases of every shipped policy."""
    code, out = run(tool.test, [POLICIES])
    assert code == 0, out
    assert "FAIL" not in out
    assert "PASS: " in out
    for name in ("default.yaml", "analyst.yaml", "oncall.yaml", "dba.yaml"):
        assert name in out


def test_sibling_tests_file_is_picked_up() -> None:
    code, out = run(tool.test, [POLICIES / "examples" / "dba.yaml"])
    assert code == 0, out
    assert "PASS: copy program" in out
    code, out = run(tool.test, [POLICIES / "examples" / "dba.tests.yaml"])
    assert code == 0, out
    assert "PASS: 12/12" in out


def test_failing_case_file(tmp_path: Path) -> None:
    policy = write(
        tmp_path,
        "p.yaml",
        """\
        version: 1
        rules:
          - name: reads
            match: {kind: [select]}
            action: allow
        tests:
          - {name: good, sql: "SELECT 1", group: g, expect: allow, rule: reads}
        """,
    )
    write(
        tmp_path,
        "p.tests.yaml",
        """\
        policy: p.yaml
        tests:
          - {name: wrong action, sql: "DELETE FROM t", group: g, expect: allow}
          - {name: wrong rule, sql: "SELECT 1", group: g, expect: allow, rule: other}
          - {name: right, sql: "DELETE FROM t", expect: deny, rule: null}
          - {name: syntax error, sql: "SELEC", expect: deny}
        """,
    )
    code, out = run(tool.test, [policy])
    assert code == 1
    assert "PASS: good" in out
    assert "FAIL: wrong action" in out and "expected allow, got deny" in out
    assert "FAIL: wrong rule" in out and "expected rule other, got reads" in out
    assert f"{tmp_path / 'p.tests.yaml'}:3" in out
    assert "PASS: right" in out and "PASS: syntax error" in out
    assert "PASS: 3/5" in out and "FAIL: 2/5" in out
    code, out = run(tool.test, [policy], verbose=False)
    assert "PASS: good" not in out and "FAIL: wrong action" in out


def test_invalid_tests_file(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "version: 1\nrules: []\n")
    bad = write(tmp_path, "p.tests.yaml", "tests:\n  - {sql: 'SELECT 1', expect: maybe}\n")
    code, out = run(tool.test, [bad])
    assert code == 1
    assert f"{bad}:2: tests[0].expect:" in out


# --------------------------------------------------------------------------- argparse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgjit")
    tool.build_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_build_parser_and_run(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["policy", "check", str(DEFAULT)])
    assert tool.run(args) == 0
    capsys.readouterr()
    args = parser().parse_args(["policy", "explain", "--policy", str(DEFAULT), "SET ROLE x", "-g", "a", "-g", "b", "--json"])
    assert args.groups == ["a", "b"]
    assert tool.run(args) == 1
    assert json.loads(capsys.readouterr().out)["rule"] == "no-role-change"
    args = parser().parse_args(["policy", "test", "-q", str(POLICIES)])
    assert tool.run(args) == 0


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["policy", "--help"], ["policy", "explain", "--help"], ["policy", "test", "--help"]):
        with pytest.raises(SystemExit):
            parser().parse_args(argv)
    out = capsys.readouterr().out
    assert "machine-readable JSON" in out and "PASS/FAIL" in out


def test_main_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert tool.main(["policy", "explain", "--policy", str(DEFAULT), "SELECT 1"]) == 0
    assert "decision: allow" in capsys.readouterr().out
