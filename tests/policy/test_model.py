"""Policy files: loading errors, evaluation order, decisions, access."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from pgjit.policy.facts import ParseFailure, analyze
from pgjit.policy.model import (
    RULE_LEXER_CHANGE,
    RULE_UNKNOWN_PREPARED,
    RULE_UNREADABLE,
    Policy,
    PolicyError,
    load_schema,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [
    ROOT / "policies" / "default.yaml",
    *sorted(p for p in (ROOT / "policies" / "examples").glob("*.yaml") if not p.name.endswith(".tests.yaml")),
]


def policy(text: str, filename: str = "policies/x.yaml") -> Policy:
    return Policy.from_text(textwrap.dedent(text), filename)


def errors(text: str, filename: str = "policies/x.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy(text, filename)
    return str(info.value).splitlines()


# --------------------------------------------------------------------------- loading errors


def test_unknown_kind_names_file_line_and_key() -> None:
    lines = errors(
        """\
        version: 1
        rules:
          - name: a
            action: allow
          - name: b
            action: allow
          - name: no-ddl
            match:
              kind: ["create_*", "dropp_table"]
            action: deny
        """
    )
    assert lines == ["policies/x.yaml:9: rules[2].match.kind[1]: unknown statement kind 'dropp_table'"]


def test_unknown_kind_as_plain_string() -> None:
    lines = errors(
        """\
        version: 1
        rules:
          - name: r
            match: {kind: selekt}
            action: deny
        """
    )
    assert lines == ["policies/x.yaml:4: rules[0].match.kind: unknown statement kind 'selekt'"]


def test_unknown_key_is_reported_at_its_line() -> None:
    lines = errors(
        """\
        version: 1
        rules:
          - name: r
            action: deny
            mtach: {kind: [select]}
        """
    )
    assert len(lines) == 1
    assert lines[0].startswith("policies/x.yaml:5: rules[0].mtach: unknown key")


def test_bad_action_and_missing_keys() -> None:
    lines = errors(
        """\
        version: 1
        rules:
          - name: r
            action: forbid
          - action: deny
        """
    )
    assert any(line.startswith("policies/x.yaml:4: rules[0].action:") and "forbid" in line for line in lines)
    assert any(line.startswith("policies/x.yaml:5: rules[1]:") and "'name' is a required property" in line
               for line in lines)


def test_unknown_match_key_and_category() -> None:
    lines = errors(
        """\
        version: 1
        rules:
          - name: r
            match:
              dangerous: [file_access, nuclear]
              colour: red
            action: deny
        """
    )
    assert any(":5: rules[0].match.dangerous" in line for line in lines), lines
    assert any(":6: rules[0].match.colour: unknown key" in line for line in lines), lines


def test_duplicate_keys_and_rule_names() -> None:
    lines = errors(
        """\
        version: 1
        rules:
          - name: r
            action: deny
            action: allow
        """
    )
    assert lines == ["policies/x.yaml:5: rules[0].action: duplicate key"]
    lines = errors(
        """\
        version: 1
        rules:
          - name: r
            action: deny
          - name: r
            action: allow
        """
    )
    assert lines == ["policies/x.yaml:5: rules[1].name: duplicate rule name 'r' (first at rules[0])"]


def test_reserved_rule_name() -> None:
    lines = errors("version: 1\nrules:\n  - name: 'pgjit:x'\n    action: deny\n")
    assert lines and lines[0].startswith("policies/x.yaml:3: rules[0].name:")


def test_invalid_yaml_and_empty_file() -> None:
    lines = errors("version: 1\nrules: [\n", "p.yaml")
    assert lines[0].startswith("p.yaml:") and "invalid YAML" in lines[0]
    assert errors("", "p.yaml") == ["p.yaml:1: empty file"]


def test_version_and_required_sections() -> None:
    lines = errors("version: 2\nrules: []\n")
    assert lines[0].startswith("policies/x.yaml:1: version:")
    lines = errors("version: 1\n")
    assert any("'rules' is a required property" in line for line in lines)


def test_bad_durations_and_settings() -> None:
    lines = errors(
        """\
        version: 1
        access:
          - group: a
            grant: [r]
            jit_lifetime: soon
            settings:
              statement_timeout: 5 minutes
              work_mem: 1GB
        rules: []
        """
    )
    assert any(line.startswith("policies/x.yaml:5: access[0].jit_lifetime:") for line in lines), lines
    assert any(line.startswith("policies/x.yaml:7: access[0].settings.statement_timeout:") for line in lines), lines
    assert any(line.startswith("policies/x.yaml:8: access[0].settings.work_mem: unknown key") for line in lines), lines


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.load(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_durations() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("10m") == 600
    assert parse_duration("10min") == 600
    assert parse_duration("1h") == 3600
    assert parse_duration("1d") == 86400
    assert parse_duration(45) == 45
    assert parse_duration("45") == 45
    assert parse_duration("1500ms") == 2
    with pytest.raises(ValueError):
        parse_duration("1 fortnight")


# --------------------------------------------------------------------------- schema


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_policies_validate_against_the_schema(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    jsonschema.validate(data, load_schema())
    Policy.load(path)


def test_schema_file_is_packaged_next_to_the_code() -> None:
    assert json.loads((ROOT / "pgjit" / "policy" / "schema.json").read_text())["title"]


# --------------------------------------------------------------------------- evaluation

ORDERED = """\
version: 1
rules:
  - name: audit-deletes
    match: {kind: [delete]}
    action: audit
  - name: deny-payroll
    match: {relations: ["payroll.*"]}
    action: deny
    message: no payroll
    hint: ask HR
  - name: approve-writes
    match: {kind: [insert, update, delete]}
    action: require_approval
  - name: allow-reads
    match: {kind: [select]}
    action: allow
  - name: never-reached
    match: {kind: [select]}
    action: deny
default: deny
"""


def test_first_matching_rule_decides() -> None:
    p = policy(ORDERED)
    d = p.decide("SELECT * FROM orders", ["x"])
    assert (d.action, d.rule) == ("allow", "allow-reads")
    d = p.decide("SELECT * FROM payroll.salaries", ["x"])
    assert (d.action, d.rule, d.message, d.hint) == ("deny", "deny-payroll", "no payroll", "ask HR")
    d = p.decide("UPDATE orders SET a = 1 WHERE id = 2", ["x"])
    assert (d.action, d.rule) == ("require_approval", "approve-writes")
    d = p.decide("SHOW work_mem", ["x"])
    assert (d.action, d.rule) == ("deny", None)
    assert d.message


def test_audit_rules_are_shadow_only() -> None:
    p = policy(ORDERED)
    d = p.decide("DELETE FROM orders WHERE id = 1", ["x"])
    assert d.action == "require_approval"
    assert d.shadow == ("audit-deletes",)
    assert p.decide("SELECT 1", ["x"]).shadow == ()


def test_allow_rules_cover_deny_rules_touch() -> None:
    p = policy(
        """\
        version: 1
        rules:
          - name: reads
            match: {kind: [select]}
            action: allow
        default: deny
        """
    )
    # allow must cover every kind: a data-modifying CTE is not "a select"
    assert p.decide("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ["x"]).denied
    p = policy(
        """\
        version: 1
        rules:
          - name: deletes
            match: {kind: [delete]}
            action: deny
        default: allow
        """
    )
    # deny only needs to touch
    assert p.decide("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ["x"]).denied


def test_relation_globs_and_unqualified_names() -> None:
    p = policy(
        """\
        version: 1
        rules:
          - name: public-only
            match: {kind: [select], reads: ["public.*"]}
            action: allow
          - name: by-bare-name
            match: {reads: [secrets]}
            action: require_approval
        default: deny
        """
    )
    assert p.decide("SELECT * FROM orders", ["x"]).allowed  # orders counts as public.orders
    assert p.decide("SELECT * FROM public.orders", ["x"]).allowed
    assert p.decide("SELECT * FROM Public.Orders", ["x"]).allowed
    assert p.decide("SELECT * FROM orders, hr.people", ["x"]).denied
    assert p.decide("SELECT * FROM secrets, hr.people", ["x"]).needs_approval


def test_function_globs_match_qualified_and_bare() -> None:
    p = policy(
        """\
        version: 1
        rules:
          - name: no-sleep
            match: {functions: ["pg_sl*"]}
            action: deny
        default: allow
        """
    )
    assert p.decide("SELECT pg_sleep(1)", ["x"]).denied
    assert p.decide("SELECT pg_catalog.pg_sleep(1)", ["x"]).denied
    assert p.decide("SELECT now()", ["x"]).allowed


def test_boolean_match_keys() -> None:
    p = policy(
        """\
        version: 1
        rules:
          - name: unbounded
            match: {write_without_where: true}
            action: deny
          - name: explain-analyze
            match: {explain_analyze: true}
            action: require_approval
          - name: rest
            match: {dynamic_sql: false}
            action: allow
        default: deny
        """
    )
    assert p.decide("DELETE FROM t", ["x"]).rule == "unbounded"
    assert p.decide("EXPLAIN ANALYZE SELECT 1", ["x"]).rule == "explain-analyze"
    assert p.decide("SELECT 1", ["x"]).rule == "rest"
    assert p.decide("SELECT query_to_xml('select 1', true, true, '')", ["x"]).rule is None


def test_groups_select_rules() -> None:
    p = policy(
        """\
        version: 1
        rules:
          - name: analysts-read
            groups: [analysts, finance]
            match: {kind: [select]}
            action: allow
          - name: everyone-show
            groups: ["*"]
            match: {kind: [show]}
            action: allow
        default: deny
        """
    )
    assert p.decide("SELECT 1", ["finance"]).allowed
    assert p.decide("SELECT 1", ["ops"]).denied
    assert p.decide("SELECT 1", []).denied
    assert p.decide("SHOW work_mem", []).allowed
    assert p.decide("SELECT 1", ("ops", "analysts")).allowed
    assert p.decide("SELECT 1", iter(["analysts"])).allowed


def test_multi_statement_most_restrictive() -> None:
    p = policy(ORDERED)
    d = p.decide("SELECT 1; UPDATE t SET a = 1 WHERE b; SELECT * FROM payroll.x; SELECT 2", ["x"])
    assert (d.action, d.rule, d.statement_index) == ("deny", "deny-payroll", 2)
    assert [s.action for s in d.statements] == ["allow", "require_approval", "deny", "allow"]
    d = p.decide("SELECT 1; UPDATE t SET a = 1 WHERE b", ["x"])
    assert (d.action, d.statement_index) == ("require_approval", 1)
    d = p.decide("SELECT 1; SELECT 2", ["x"])
    assert (d.action, d.statement_index) == ("allow", 0)
    d = p.decide("DELETE FROM a WHERE b; DELETE FROM c WHERE d", ["x"])
    assert d.shadow == ("audit-deletes",)


def test_empty_string_is_allowed() -> None:
    assert policy(ORDERED).decide("  ", ["x"]).allowed


def test_parse_failure_propagates() -> None:
    with pytest.raises(ParseFailure):
        policy(ORDERED).decide("SELEC 1", ["x"])


def test_unreadable_body_always_denied() -> None:
    p = policy("version: 1\nrules:\n  - name: all\n    action: allow\ndefault: allow\n")
    d = p.decide("DO LANGUAGE plpython3u $$ import os $$", ["x"])
    assert (d.action, d.rule) == ("deny", RULE_UNREADABLE)
    assert "plpython3u" in (d.message or "")
    assert p.decide("DO $$ BEGIN EXECUTE 'x'; END $$", ["x"]).allowed  # dynamic SQL is just a fact


def test_lexer_change_always_denied() -> None:
    p = policy("version: 1\nrules:\n  - name: all\n    action: allow\ndefault: allow\n")
    d = p.decide("SET standard_conforming_strings = off", ["x"])
    assert (d.action, d.rule) == ("deny", RULE_LEXER_CHANGE)
    assert p.decide("SET standard_conforming_strings = on", ["x"]).allowed
    assert p.decide("SET client_encoding = 'UTF8'", ["x"]).allowed
    assert p.decide("SET client_encoding = 'GBK'", ["x"]).rule == RULE_LEXER_CHANGE


def test_decide_accepts_an_analysis() -> None:
    p = policy(ORDERED)
    assert p.decide(analyze("SELECT 1"), ["x"]).allowed


# --------------------------------------------------------------------------- prepared statements


def test_execute_is_decided_as_the_prepared_statement() -> None:
    p = policy(
        """\
        version: 1
        rules:
          - name: writes
            match: {kind: [delete]}
            action: deny
          - name: reads
            match: {kind: [select, prepare, execute]}
            action: allow
        default: deny
        """
    )
    prepared = {
        "r": analyze("PREPARE r AS SELECT 1"),
        "w": analyze("PREPARE w AS DELETE FROM t"),
        "f": analyze("PREPARE f AS SELECT 1").statements[0],  # Facts are accepted too
        "proto": analyze("SELECT 2"),  # a protocol-level Parse shares the namespace
    }
    assert p.decide("EXECUTE r", ["x"], prepared=prepared).allowed
    assert p.decide("EXECUTE f", ["x"], prepared=prepared).allowed
    assert p.decide("EXECUTE proto", ["x"], prepared=prepared).allowed
    d = p.decide("EXECUTE w", ["x"], prepared=prepared)
    assert (d.action, d.rule) == ("deny", "writes")
    d = p.decide("EXPLAIN ANALYZE EXECUTE w", ["x"], prepared=prepared)
    assert (d.action, d.rule) == ("deny", "writes")
    d = p.decide("EXECUTE nope", ["x"], prepared=prepared)
    assert (d.action, d.rule) == ("deny", RULE_UNKNOWN_PREPARED)
    d = p.decide("EXECUTE r", ["x"])
    assert (d.action, d.rule) == ("deny", RULE_UNKNOWN_PREPARED)


def test_prepared_kind_is_not_required_by_covering_rules() -> None:
    p = policy(
        """\
        version: 1
        rules:
          - name: only-execute-select
            match: {kind: [execute, select]}
            action: allow
        default: deny
        """
    )
    prepared = {"r": analyze("PREPARE r AS SELECT 1")}
    assert p.decide("EXECUTE r", ["x"], prepared=prepared).allowed


# --------------------------------------------------------------------------- access


ACCESS = """\
version: 1
access:
  - group: "*"
    grant: [pgjit_read]
  - group: analysts
    grant: [pgjit_read, pgjit_temp]
    jit_lifetime: 2h
    max_session: 8h
    settings:
      statement_timeout: 5m
      default_transaction_read_only: "off"
  - group: oncall
    grant: [pgjit_write]
    jit_lifetime: 30m
    max_session: 4h
    settings:
      statement_timeout: 30s
      idle_in_transaction_session_timeout: 60
      default_transaction_read_only: on
rules: []
"""


def test_access_for_single_group() -> None:
    grant = policy(ACCESS).access_for(["analysts"])
    assert grant is not None
    assert grant.grant == ("pgjit_read", "pgjit_temp")
    assert (grant.jit_lifetime, grant.max_session) == (7200, 28800)
    assert grant.settings == {"statement_timeout": "300000ms", "default_transaction_read_only": "off"}
    assert grant.groups == ("analysts",)


def test_access_for_merges_groups_strictly() -> None:
    grant = policy(ACCESS).access_for(["oncall", "analysts", "unrelated"])
    assert grant is not None
    assert grant.grant == ("pgjit_read", "pgjit_temp", "pgjit_write")
    assert grant.jit_lifetime == 1800
    assert grant.max_session == 4 * 3600
    assert grant.settings == {
        "statement_timeout": "30000ms",
        "default_transaction_read_only": "on",
        "idle_in_transaction_session_timeout": "60000ms",
    }


def test_access_for_falls_back_to_star_and_defaults() -> None:
    grant = policy(ACCESS).access_for(["nobody-configured"])
    assert grant is not None
    assert grant.grant == ("pgjit_read",)
    assert (grant.jit_lifetime, grant.max_session) == (3600, 8 * 3600)
    assert grant.settings == {}


def test_access_for_none_when_nothing_matches() -> None:
    p = policy("version: 1\naccess:\n  - group: a\n    grant: [r]\nrules: []\n")
    assert p.access_for(["b"]) is None
    assert p.access_for([]) is None


def test_zero_timeout_is_least_strict() -> None:
    p = policy(
        """\
        version: 1
        access:
          - {group: a, grant: [r], settings: {statement_timeout: 0}}
          - {group: b, grant: [r], settings: {statement_timeout: 10s}}
        rules: []
        """
    )
    grant = p.access_for(["a", "b"])
    assert grant is not None and grant.settings["statement_timeout"] == "10000ms"


def test_default_policy_access() -> None:
    grant = Policy.load(ROOT / "policies" / "default.yaml").access_for(["agents"])
    assert grant is not None
    assert grant.settings["default_transaction_read_only"] == "on"
