"""Config refusals (issue 9, point 4): a missing jwks_file, sections this
version does not implement, and errors that come from PGJIT_… variables,
which must name the variable rather than a line of the file. No PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgjit import cli
from pgjit.config import ConfigError, load_config, parse_config

TARGETS = "targets:\n  appdb: {host: 127.0.0.1, port: 5432, database: appdb, user: app, password: s3cret-pw}\n"
POLICY = """\
version: 1
access:
  - group: "*"
    grant: [pgjit_read]
rules:
  - name: reads
    match: {kind: [select]}
    action: allow
"""


def refuse(text: str, fname: str = "pgjit.yaml", environ: dict[str, str] | None = None, base: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, fname, environ=environ or {}, base=base)
    return str(info.value)


def oidc_config(tmp_path: Path, jwks_file: str) -> str:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return (
        "oidc:\n"
        "  issuer: https://idp.example.com\n"
        "  audience: pgjit\n"
        f"  jwks_file: {jwks_file}\n"
        "targets:\n"
        "  appdb:\n"
        "    host: 127.0.0.1\n"
        "    user: pgjit_admin\n"
        "    policy: policy.yaml\n"
    )


# ---------------------------------------------------------------- jwks_file


def test_missing_jwks_file_names_file_line_and_key(tmp_path):
    msg = refuse(oidc_config(tmp_path, "nope/jwks.json"), base=tmp_path)
    assert msg.startswith("pgjit.yaml:4: oidc.jwks_file: ")
    assert str(tmp_path / "nope" / "jwks.json") in msg and "does not exist" in msg


def test_jwks_file_is_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    (tmp_path / "pgjit.yaml").write_text(oidc_config(tmp_path, "jwks.json"))
    monkeypatch.chdir("/")
    cfg = load_config(tmp_path / "pgjit.yaml", environ={})
    assert cfg.oidc.verifier.jwks_file == str(tmp_path / "jwks.json")


def test_jwks_file_from_environment_names_the_variable(tmp_path):
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    msg = refuse(oidc_config(tmp_path, "jwks.json"), base=tmp_path, environ={"PGJIT_OIDC__JWKS_FILE": "/no/such/jwks.json"})
    assert msg.startswith("PGJIT_OIDC__JWKS_FILE: oidc.jwks_file: ")
    assert "'/no/such/jwks.json' does not exist" in msg
    assert "pgjit.yaml" not in msg


def test_jwks_file_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "keys").mkdir()
    msg = refuse(oidc_config(tmp_path, "keys"), base=tmp_path)
    assert msg.startswith("pgjit.yaml:4: oidc.jwks_file: ")


# ---------------------------------------------------------------- store / api


def test_a_store_without_audit_is_refused_with_its_line():
    msg = refuse(TARGETS + "store:\n  url: sqlite:///x.db\n")
    assert msg.startswith("pgjit.yaml:3: store: ") and "add audit" in msg


def test_audit_needs_a_checkpoint_key():
    msg = refuse(TARGETS + "audit: {}\n")
    assert msg.startswith("pgjit.yaml:3: audit.checkpoint_key_file: required")


def test_audit_key_must_be_long_enough_and_store_url_a_known_kind():
    assert "at least 16 bytes" in refuse(TARGETS + "audit:\n  checkpoint_key: short\n")
    msg = refuse(TARGETS + "audit:\n  checkpoint_key: 0123456789abcdef0123\nstore:\n  url: mysql://x\n")
    assert msg.startswith("pgjit.yaml:6: store.url: ")
    assert "fail_closed" in refuse(TARGETS + "audit:\n  checkpoint_key: 0123456789abcdef0123\n  on_store_failure: maybe\n")


def test_audit_defaults_to_sqlite_in_the_data_directory(tmp_path):
    from pgjit.config import parse_config

    cfg = parse_config(TARGETS + "audit:\n  checkpoint_key: 0123456789abcdef0123\n", "pgjit.yaml", base=tmp_path)
    assert cfg.store.url == f"sqlite:///{tmp_path / 'pgjit-data' / 'audit.db'}"
    assert cfg.audit.on_store_failure == "fail_closed" and not cfg.audit.redact_literals


def test_store_from_environment_without_audit_names_the_variable():
    msg = refuse(TARGETS, environ={"PGJIT_STORE__URL": "postgresql://x"})
    assert msg.startswith("PGJIT_STORE__URL: store: ") and "add audit" in msg


# ---------------------------------------------------------------- environment


def test_bad_value_from_environment_names_the_variable_not_a_line():
    msg = refuse(TARGETS, environ={"PGJIT_LISTEN__PORT": "abc"})
    assert msg == "PGJIT_LISTEN__PORT: listen.port: expected an integer between 0 and 65535, got 'abc'"


def test_variable_overriding_a_file_value_is_named_not_the_files_line():
    text = "listen:\n  port: 6432\n" + TARGETS
    msg = refuse(text, environ={"PGJIT_LISTEN__PORT": "70000"})
    assert msg.startswith("PGJIT_LISTEN__PORT: listen.port: ")


def test_target_setting_from_environment_names_the_variable():
    msg = refuse(TARGETS, environ={"PGJIT_TARGETS__APPDB__PORT": "0"})
    assert msg.startswith("PGJIT_TARGETS__APPDB__PORT: targets.appdb.port: expected an integer between 1 and 65535")


def test_unknown_key_from_environment_names_the_variable():
    msg = refuse(TARGETS, environ={"PGJIT_LISTEN__PROT": "1"})
    assert msg.startswith("PGJIT_LISTEN__PROT: listen.prot: unknown key")


def test_unknown_section_from_environment_names_the_variable():
    msg = refuse(TARGETS, environ={"PGJIT_LISTN__PORT": "1"})
    assert msg.startswith("PGJIT_LISTN__PORT: listn: unknown key")


def test_incomplete_target_made_by_environment_names_the_variable():
    msg = refuse(TARGETS, environ={"PGJIT_TARGETS__OTHER__PORT": "5433"})
    assert msg.startswith("PGJIT_TARGETS__OTHER__PORT: targets.other.host: required")


def test_lowercase_variable_name_is_reported_as_given():
    msg = refuse(TARGETS, environ={"PGJIT_listen__Port": "x"})
    assert msg.startswith("PGJIT_listen__Port: listen.port: ")


def test_file_error_keeps_its_line_when_other_settings_come_from_environment():
    text = "listen:\n  port: 6432\n  backlog: lots\n" + TARGETS
    msg = refuse(text, environ={"PGJIT_LISTEN__PORT": "7000"})
    assert msg.startswith("pgjit.yaml:3: listen.backlog: expected an integer")


def test_section_error_mentions_the_variables_below_it():
    msg = refuse("tls:\n  cert: /etc/hostname\n" + TARGETS, environ={"PGJIT_TLS__KEY": ""})
    assert msg.startswith("pgjit.yaml:1: tls: cert and key must be given together")
    assert "PGJIT_TLS__KEY" in msg


def test_file_errors_still_name_file_line_and_key():
    text = "targets:\n  appdb:\n    host: 127.0.0.1\n    user: app\n    port: abc\n"
    assert refuse(text) == "pgjit.yaml:5: targets.appdb.port: expected an integer between 1 and 65535, got 'abc'"


def test_block_section_errors_point_at_the_key():
    assert refuse("listen:\n  bogus: 1\n" + TARGETS).startswith("pgjit.yaml:2: listen.bogus: unknown key")
    assert refuse("targets:\n  appdb:\n    port: 5432\n").startswith("pgjit.yaml:2: targets.appdb.host: required")


def test_a_password_is_never_shown_in_an_error():
    text = "targets:\n  appdb: {host: h, user: u, password: [s3cret-pw]}\n"
    msg = refuse(text)
    assert msg.startswith("pgjit.yaml:2: targets.appdb.password: ") and "s3cret-pw" not in msg


def test_env_overrides_are_recorded_by_name_only():
    cfg = parse_config(TARGETS, "pgjit.yaml", environ={"PGJIT_TARGETS__APPDB__PASSWORD": "other-secret", "PGJIT_CONFIG": "x"})
    assert cfg.env_overrides == {"targets.appdb.password": "PGJIT_TARGETS__APPDB__PASSWORD"}
    assert cfg.targets["appdb"].password == "other-secret"


# ---------------------------------------------------------------- the command


def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PGJIT_"):
            monkeypatch.delenv(name)


def test_check_config_exits_2_naming_the_variable(tmp_path, monkeypatch, capsys):
    _clean_env(monkeypatch)
    (tmp_path / "pgjit.yaml").write_text(TARGETS)
    monkeypatch.setenv("PGJIT_LISTEN__PORT", "abc")
    with pytest.raises(SystemExit) as info:
        cli.main(["check-config", "-c", str(tmp_path / "pgjit.yaml")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "pgjit: PGJIT_LISTEN__PORT: listen.port: expected an integer between 0 and 65535, got 'abc'"


def test_check_config_exits_2_on_store_section(tmp_path, monkeypatch, capsys):
    _clean_env(monkeypatch)
    (tmp_path / "pgjit.yaml").write_text(TARGETS + "store:\n  url: sqlite:///x\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["check-config", "-c", str(tmp_path / "pgjit.yaml")])
    assert info.value.code == 2
    assert f"{tmp_path / 'pgjit.yaml'}:3: store: " in capsys.readouterr().err


def test_check_config_summary_without_connect(tmp_path, monkeypatch, capsys):
    _clean_env(monkeypatch)
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    (tmp_path / "pgjit.yaml").write_text(oidc_config(tmp_path, "jwks.json"))
    monkeypatch.setenv("PGJIT_TARGETS__APPDB__PASSWORD", "s3cret-pw")
    assert cli.main(["check-config", "-c", str(tmp_path / "pgjit.yaml")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out.splitlines()[0]
    assert "target appdb -> 127.0.0.1:5432/appdb as pgjit_admin" in out
    assert "group '*' -> grant pgjit_read" in out
    assert "owner_role pgjit_owner" in out
    assert f"jwks_file {tmp_path / 'jwks.json'}" in out
    assert "PGJIT_TARGETS__APPDB__PASSWORD (targets.appdb.password)" in out
    assert "--connect" in out
    assert "s3cret-pw" not in out


def test_check_config_help_explains_both_modes(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["check-config", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for words in ("--connect", "CREATEROLE", "ADMIN OPTION", "SETUP.md", "exit status", "environment"):
        assert words in out, words
