"""``pgjit policy check | explain | test`` — tooling for the people who write policies.

Each command is a function that takes argv-like arguments, prints to stdout and
returns a process exit code, so the CLI only has to wire them up
(:func:`build_parser` and :func:`run`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TextIO

from pgjit.policy.facts import ParseFailure
from pgjit.policy.model import (
    Decision,
    Policy,
    PolicyError,
    Problem,
    Rule,
    TestCase,
    kinds_matching,
    load_test_file,
)

__all__ = ["build_parser", "check", "explain", "lint", "run", "test"]

TESTS_SUFFIX = ".tests.yaml"


# --------------------------------------------------------------------------
# check


def _policy_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories into their policy files (``*.yaml``/``*.yml``, not ``*.tests.yaml``)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.suffix in (".yaml", ".yml") and not child.name.endswith(TESTS_SUFFIX):
                    out.append(child)
        else:
            out.append(path)
    return out


def _shadows(earlier: Rule, later: Rule) -> bool:
    """Conservatively: does ``earlier`` match every statement ``later`` matches?"""
    if earlier.action == "audit":
        return False  # audit rules never stop evaluation
    if "*" not in earlier.groups and not set(later.groups) <= set(earlier.groups):
        return False
    if earlier.match.empty:
        return True
    match = earlier.match.as_dict()
    if not earlier.match.flags and list(match) == ["kind"] and "*" in match["kind"]:
        return True  # kind: ["*"] matches every statement, covering or touching
    same_mode = (earlier.action == "allow") == (later.action == "allow")
    return same_mode and match == later.match.as_dict()


def lint(policy: Policy) -> list[Problem]:
    """Warnings about a valid policy: rules that can never match or never decide."""
    warnings: list[Problem] = []
    access_groups = {a.group for a in policy.access}
    for i, rule in enumerate(policy.rules):
        key = f"rules[{i}]"
        kind_globs = dict(rule.match.globs).get("kind")
        for pattern in kind_globs.patterns if kind_globs is not None else ():
            if not kinds_matching(pattern):
                warnings.append(
                    Problem(policy.filename, rule.line, key + ".match.kind", f"glob {pattern!r} matches no statement kind")
                )
        if access_groups and "*" not in access_groups:
            for group in rule.groups:
                if group != "*" and not any(fnmatchcase(a, group) for a in access_groups):
                    warnings.append(
                        Problem(
                            policy.filename,
                            rule.line,
                            key + ".groups",
                            f"group {group!r} has no access entry, so nobody in it can connect",
                        )
                    )
        for j, earlier in enumerate(policy.rules[:i]):
            if _shadows(earlier, rule):
                warnings.append(
                    Problem(
                        policy.filename,
                        rule.line,
                        key,
                        f"rule {rule.name!r} can never decide: rule {earlier.name!r} (rules[{j}]) matches first",
                    )
                )
                break
    return warnings


def check(paths: Sequence[str | Path], out: TextIO | None = None) -> int:
    """Validate policy files; print errors and warnings. Exit 1 if any file is invalid."""
    out = out or sys.stdout
    files = _policy_files(paths)
    if not files:
        print("no policy files given", file=out)
        return 2
    failed = 0
    for path in files:
        try:
            policy = Policy.load(path)
        except PolicyError as exc:
            failed += 1
            for problem in exc.problems:
                print(f"{problem}", file=out)
            continue
        sibling = path.with_name(path.stem + TESTS_SUFFIX)
        if sibling.exists():
            try:
                load_test_file(sibling)
            except PolicyError as exc:
                failed += 1
                for problem in exc.problems:
                    print(f"{problem}", file=out)
                continue
        warnings = lint(policy)
        for warning in warnings:
            print(f"{warning} (warning)", file=out)
        print(f"{path}: ok ({len(policy.rules)} rules, {len(policy.access)} access entries"
              f"{f', {len(warnings)} warnings' if warnings else ''})", file=out)
    return 1 if failed else 0


# --------------------------------------------------------------------------
# explain


def _decision_dict(decision: Decision) -> dict[str, object]:
    out: dict[str, object] = {
        "action": decision.action,
        "rule": decision.rule,
        "message": decision.message,
        "hint": decision.hint,
        "statement_index": decision.statement_index,
        "shadow": list(decision.shadow),
    }
    statements = decision.statements or ((decision,) if decision.facts is not None else ())
    out["statements"] = [
        {
            "action": d.action,
            "rule": d.rule,
            "message": d.message,
            "shadow": list(d.shadow),
            "facts": d.facts.to_dict() if d.facts is not None else None,
        }
        for d in statements
    ]
    return out


def explain(
    policy_path: str | Path,
    groups: Sequence[str],
    sql: str,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print how ``policy_path`` decides ``sql`` for a caller in ``groups``.

    Exit code: 0 allow, 1 deny (or parse failure), 3 require_approval, 2 bad policy.
    """
    out = out or sys.stdout
    try:
        policy = Policy.load(policy_path)
    except PolicyError as exc:
        print(str(exc), file=out)
        return 2
    try:
        decision = policy.decide(sql, groups)
    except ParseFailure as exc:
        if as_json:
            json.dump({"action": "deny", "error": "parse", "message": exc.message,
                       "cursorpos": exc.cursorpos}, out, indent=2)
            print(file=out)
        else:
            print(f"decision: deny (42601 syntax error, never forwarded)\nerror: {exc.message} "
                  f"at character {exc.cursorpos}", file=out)
        return 1
    masking = _masking(policy, groups, sql) if decision.allowed else None
    if as_json:
        data = _decision_dict(decision)
        if masking is not None:
            data["masking"] = masking
            if masking.get("refused"):
                data["action"], data["rule"] = "deny", masking["rule"]
        json.dump(data, out, indent=2, sort_keys=False)
        print(file=out)
    else:
        _print_decision(decision, out)
        if masking is not None:
            _print_masking(masking, out)
    if masking is not None and masking.get("refused"):
        return 1
    return {"allow": 0, "deny": 1, "require_approval": 3}[decision.action]


def _masking(policy: Policy, groups: Sequence[str], sql: str) -> dict[str, object] | None:
    """What the policy's masking rules do to ``sql`` for ``groups``, judged
    without a catalog (offline: a column the rules name is masked; views and
    SELECT * are resolved by the gateway against the live catalog)."""
    profile = policy.masking_profile(groups, b"pgjit policy explain")
    if profile is None:
        return None
    from pgjit.masking.lineage import Refusal, describe, plan

    rules = [r.name for r in profile.rules]
    try:
        parts = plan(sql, None, profile)
    except Refusal as r:
        return {"rules": rules, "refused": True, "rule": r.rule, "message": r.message}
    return {"rules": rules, "refused": False, "statements": describe(parts)}


def masked_columns(masking: dict[str, object] | None) -> list[str]:
    if masking is None or masking.get("refused"):
        return []
    return [c["column"] for st in masking["statements"] for c in (st["columns"] or ()) if c["masked"]]  # type: ignore[union-attr,index]


def _print_masking(masking: dict[str, object], out: TextIO) -> None:
    print(f"\nmasking (rules for these groups: {', '.join(masking['rules'])}):", file=out)  # type: ignore[arg-type]
    if masking.get("refused"):
        print(f"  refused by masking rule {masking['rule']}: {masking['message']}", file=out)
        return
    for i, st in enumerate(masking["statements"]):  # type: ignore[arg-type]
        cols = st["columns"]
        if cols is None:
            note = "masked columns found by the gateway at run time (SELECT * or relations it resolves then)"
            print(f"  statement {i}: {note if st['touches_masked'] else 'nothing masked'}", file=out)
            continue
        for c in cols:
            what = f"masked by {c['rule']} ({c['how']} of {c['from']})" if c["masked"] else "shown as is"
            print(f"  statement {i}: column {c['column']}: {what}", file=out)


def _print_decision(decision: Decision, out: TextIO) -> None:
    print(f"decision: {decision.action}", file=out)
    print(f"rule: {decision.rule or '(default)'}", file=out)
    if decision.message:
        print(f"message: {decision.message}", file=out)
    if decision.hint:
        print(f"hint: {decision.hint}", file=out)
    if decision.shadow:
        print(f"audit (would deny): {', '.join(decision.shadow)}", file=out)
    statements = decision.statements or ((decision,) if decision.facts is not None else ())
    for index, d in enumerate(statements):
        facts = d.facts
        if facts is None:
            continue
        print(f"\nstatement {index}: {d.action} by {d.rule or '(default)'}", file=out)
        print(f"  text: {facts.text.strip()[:200]}", file=out)
        for key, value in facts.to_dict().items():
            if key in ("text", "location"):
                continue
            if value in (False, None, [], "", ()):
                continue
            print(f"  {key}: {value}", file=out)


# --------------------------------------------------------------------------
# test


@dataclass
class _Result:
    case: TestCase
    passed: bool
    detail: str
    elapsed: float


def _run_case(policy: Policy, case: TestCase) -> _Result:
    start = time.perf_counter()
    try:
        decision = policy.decide(case.sql, case.groups)
        action, rule = decision.action, decision.rule
    except ParseFailure:
        action, rule = "deny", "pgjit:parse-error"
        decision = None
    masking = _masking(policy, case.groups, case.sql) if action == "allow" else None
    if masking is not None and masking.get("refused"):
        action, rule = "deny", masking["rule"]  # type: ignore[assignment]
    elapsed = time.perf_counter() - start
    problems = []
    if case.masks is not None and action == "allow":
        got = masked_columns(masking)
        if sorted(got) != sorted(case.masks):
            problems.append(f"expected masked columns {sorted(case.masks)}, got {sorted(got)}")
    if action != case.expect:
        problems.append(f"expected {case.expect}, got {action}")
    if case.check_rule and rule != case.rule:
        problems.append(f"expected rule {case.rule or '(default)'}, got {rule or '(default)'}")
    detail = "; ".join(problems)
    if problems:
        detail += f" (rule: {rule or '(default)'})"
        if decision is not None and decision.message:
            detail += f": {decision.message}"
    return _Result(case, not problems, detail, elapsed)


def _collect(paths: Sequence[str | Path], out: TextIO) -> tuple[list[tuple[Policy, list[TestCase]]], int]:
    """Pair each policy with its cases (inline and sibling ``.tests.yaml``)."""
    pairs: dict[str, tuple[Policy, list[TestCase]]] = {}
    errors = 0
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.suffix in (".yaml", ".yml"))
        else:
            files.append(path)

    def policy_for(path: Path) -> tuple[Policy, list[TestCase]] | None:
        nonlocal errors
        key = str(path)
        if key not in pairs:
            try:
                policy = Policy.load(path)
            except PolicyError as exc:
                errors += 1
                print(str(exc), file=out)
                return None
            pairs[key] = (policy, list(policy.tests))
        return pairs[key]

    for path in files:
        if path.name.endswith(TESTS_SUFFIX):
            try:
                named, cases = load_test_file(path)
            except PolicyError as exc:
                errors += 1
                print(str(exc), file=out)
                continue
            target = Path(named) if named else path.with_name(path.name[: -len(TESTS_SUFFIX)] + ".yaml")
            entry = policy_for(target)
            if entry is not None:
                entry[1].extend(cases)
        else:
            entry = policy_for(path)
            sibling = path.with_name(path.stem + TESTS_SUFFIX)
            if entry is not None and sibling.exists() and sibling not in files:
                try:
                    _, cases = load_test_file(sibling)
                except PolicyError as exc:
                    errors += 1
                    print(str(exc), file=out)
                    continue
                entry[1].extend(cases)
    return list(pairs.values()), errors


def test(paths: Sequence[str | Path], verbose: bool = True, out: TextIO | None = None) -> int:
    """Run the test cases of policy files (inline ``tests:`` and ``<name>.tests.yaml``).

    Prints PASS/FAIL per case and a summary; exit 1 on any failure or invalid file.
    """
    out = out or sys.stdout
    pairs, errors = _collect(paths, out)
    passed = failed = 0
    for policy, cases in pairs:
        if not cases:
            continue
        if verbose:
            print(f"{policy.filename}:", file=out)
        for case in cases:
            result = _run_case(policy, case)
            ms = result.elapsed * 1000
            where = f"{case.filename}:{case.line}"
            if result.passed:
                passed += 1
                if verbose:
                    print(f"PASS: {case.name} ({ms:.2f}ms)", file=out)
            else:
                failed += 1
                print(f"FAIL: {case.name} ({ms:.2f}ms) at {where}: {result.detail}", file=out)
    total = passed + failed
    print("-" * 40, file=out)
    if total:
        print(f"PASS: {passed}/{total}", file=out)
    if failed:
        print(f"FAIL: {failed}/{total}", file=out)
    if errors:
        print(f"ERROR: {errors} file(s) could not be loaded", file=out)
    if not total and not errors:
        print("no test cases found", file=out)
    return 1 if failed or errors else 0


# --------------------------------------------------------------------------
# argparse wiring


def build_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``policy check|explain|test`` on the CLI's subparsers."""
    policy = subparsers.add_parser(
        "policy",
        help="check, explain and test statement-gate policies",
        description="Tools for pgjit policy files (see policies/README.md).",
    )
    sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    p_check = sub.add_parser(
        "check",
        help="validate policy files and warn about rules that can never match",
        description="Validate policy files against the schema and pgjit's statement kinds. "
        "Errors name file:line and key; warnings flag unknown kind globs, groups without "
        "access and rules shadowed by an earlier rule. Exit 1 if a file is invalid.",
    )
    p_check.add_argument("paths", nargs="+", metavar="PATH", help="policy file or directory")

    p_explain = sub.add_parser(
        "explain",
        help="show how a policy decides a statement, and the facts pgjit extracted",
        description="Decide SQL against a policy and print the decision, the deciding rule, "
        "audit rules that would deny, and the facts of every statement. Exit 0 allow, "
        "1 deny, 3 require_approval, 2 invalid policy.",
    )
    p_explain.add_argument("--policy", "-p", dest="policy_file", required=True, metavar="FILE", help="policy file")
    p_explain.add_argument("sql", metavar="SQL", help="SQL string ('-' reads standard input)")
    p_explain.add_argument(
        "-g", "--group", action="append", dest="groups", default=[], metavar="GROUP",
        help="caller's group (repeatable); default: none",
    )
    p_explain.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p_test = sub.add_parser(
        "test",
        help="run the test cases of policy files",
        description="Run inline `tests:` of policy files and sibling <name>.tests.yaml files; "
        "print PASS/FAIL per case. Exit 1 on any failure.",
    )
    p_test.add_argument("paths", nargs="+", metavar="PATH", help="policy file, tests file or directory")
    p_test.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")

    p_replay = sub.add_parser(
        "replay",
        help="decide recorded statements again under a candidate policy and print what would change",
        description="Read the statements the audit trail recorded and decide each again under a "
        "candidate policy, as the person's groups at the time: print every decision that would "
        "change (allowed -> denied and back). Exit 0 nothing changes, 1 something does, 2 error.",
    )
    # Run by pgjit.cli through pgjit.audit.tool: the decisions layer does not read the store.
    p_replay.add_argument("--url", default=os.environ.get("PGJIT_STORE__URL"),
                          help="the audit store's URL (default: $PGJIT_STORE__URL, else the config's store.url)")
    p_replay.add_argument("--config", "-c", default=os.environ.get("PGJIT_CONFIG"),
                          help="a pgjit.yaml whose audit store to read (default: $PGJIT_CONFIG)")
    p_replay.add_argument("--policy", "-p", dest="policy_file", required=True, metavar="NEW.yaml",
                          help="the candidate policy to decide the recorded statements with")
    p_replay.add_argument("--since", metavar="TIME", help="only statements at or after this UTC time (ISO 8601)")
    p_replay.add_argument("--target", help="only statements on this target")
    return policy


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``policy …`` command line."""
    command = args.policy_command
    if command == "check":
        return check(args.paths)
    if command == "explain":
        sql = sys.stdin.read() if args.sql == "-" else args.sql
        return explain(args.policy_file, args.groups, sql, as_json=args.json)
    if command == "test":
        return test(args.paths, verbose=not args.quiet)
    raise SystemExit(f"unknown policy command {command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m pgjit.policy.tool …``) until the CLI wires it."""
    parser = argparse.ArgumentParser(prog="pgjit")
    build_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

