"""The developer issuer: key files, rotation, minting, and the CLI commands."""

from __future__ import annotations

import argparse
import io
import json
import stat
import time
from pathlib import Path

import pytest
from jose import jwt

from pgjit.errors import InvalidPassword
from pgjit.identity import OIDCConfig, TokenVerifier
from pgjit.identity.devissuer import (
    DEV_ISSUER,
    build_parser,
    init_issuer,
    mint_token,
    parse_duration,
    rotate_issuer,
    run,
)
from pgjit.identity.http import make_fetcher


def verifier_for(directory: Path, **config: object) -> TokenVerifier:
    issuer = json.loads((directory / "issuer.json").read_text())["issuer"]
    cfg = OIDCConfig(issuer=issuer, audience="pgjit", jwks_file=str(directory / "jwks.json"), **config)  # type: ignore[arg-type]
    return TokenVerifier(cfg, make_fetcher(), clock=lambda: _clock[0])


_clock = [0.0]


@pytest.fixture(autouse=True)
def _reset_clock() -> None:
    _clock[0] = 1000.0


def test_init_writes_key_jwks_and_issuer(tmp_path: Path) -> None:
    paths = init_issuer(tmp_path / "iss")
    assert paths.signing_key == tmp_path / "iss" / "signing-key.pem"
    assert stat.S_IMODE(paths.signing_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700
    assert paths.signing_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")

    jwks = json.loads(paths.jwks.read_text())
    (key,) = jwks["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
    assert key["kid"] == paths.kid and "d" not in key  # public only

    meta = json.loads(paths.issuer_json.read_text())
    assert meta["issuer"] == DEV_ISSUER == paths.issuer
    assert meta["kid"] == paths.kid


def test_init_custom_issuer_and_kid(tmp_path: Path) -> None:
    paths = init_issuer(tmp_path, issuer="http://127.0.0.1:9999/dev", kid="mykey")
    assert paths.kid == "mykey"
    assert json.loads(paths.jwks.read_text())["keys"][0]["kid"] == "mykey"
    token = mint_token(paths.signing_key, "alice@example.com", [], 60)
    assert jwt.get_unverified_header(token)["kid"] == "mykey"
    assert jwt.get_unverified_claims(token)["iss"] == "http://127.0.0.1:9999/dev"


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_issuer(tmp_path)
    with pytest.raises(FileExistsError, match="rotate"):
        init_issuer(tmp_path)
    init_issuer(tmp_path, force=True)


def test_mint_token_defaults(tmp_path: Path) -> None:
    paths = init_issuer(tmp_path)
    token = mint_token(paths.signing_key, "alice@example.com", ["analysts"], 600, now=1_800_000_000)
    header = jwt.get_unverified_header(token)
    claims = jwt.get_unverified_claims(token)
    assert header["alg"] == "RS256" and header["kid"] == paths.kid
    assert claims["iss"] == DEV_ISSUER and claims["aud"] == "pgjit"
    assert claims["sub"] == claims["email"] == "alice@example.com"
    assert claims["groups"] == ["analysts"]
    assert claims["iat"] == 1_800_000_000 and claims["exp"] == 1_800_000_600

    plain = jwt.get_unverified_claims(mint_token(paths.signing_key, "svc-etl", None, 60))
    assert "email" not in plain and "groups" not in plain
    named = jwt.get_unverified_claims(
        mint_token(paths.signing_key, "svc-etl", None, 60, email="etl@example.com")
    )
    assert named["email"] == "etl@example.com"


def test_mint_token_extra_claims_override_and_remove(tmp_path: Path) -> None:
    paths = init_issuer(tmp_path)
    token = mint_token(
        paths.signing_key, "a@example.com", None, 60, extra_claims={"exp": None, "tenant": "acme"}
    )
    claims = jwt.get_unverified_claims(token)
    assert "exp" not in claims and claims["tenant"] == "acme"
    with pytest.raises(InvalidPassword, match="no expiry"):
        verifier_for(tmp_path).verify(token, "token")


def test_minted_token_verifies_and_is_checked(tmp_path: Path) -> None:
    paths = init_issuer(tmp_path)
    verifier = verifier_for(tmp_path)
    token = mint_token(paths.signing_key, "alice@example.com", ["a", "b"], 600)
    ident = verifier.verify(token, "alice@example.com")
    assert ident.user == "alice@example.com" and ident.groups == {"a", "b"}

    expired = mint_token(paths.signing_key, "alice@example.com", [], 60, now=time.time() - 3600)
    with pytest.raises(InvalidPassword, match="token expired at"):
        verifier.verify(expired, "token")
    wrong_aud = mint_token(paths.signing_key, "alice@example.com", [], 60, audience="other")
    with pytest.raises(InvalidPassword, match="audience is 'other'"):
        verifier.verify(wrong_aud, "token")


def test_rotation_keeps_old_tokens_valid(tmp_path: Path) -> None:
    first = init_issuer(tmp_path)
    verifier = verifier_for(tmp_path)
    old_token = mint_token(first.signing_key, "alice@example.com", [], 600)
    assert verifier.verify(old_token, "token")

    second = rotate_issuer(tmp_path)
    assert second.kid != first.kid
    kids = [k["kid"] for k in json.loads(second.jwks.read_text())["keys"]]
    assert kids == [second.kid, first.kid]
    meta = json.loads(second.issuer_json.read_text())
    assert meta["kid"] == second.kid and meta["previous_kids"] == [first.kid]
    old_key = tmp_path / f"signing-key-{first.kid}.pem"
    assert stat.S_IMODE(old_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(second.signing_key.stat().st_mode) == 0o600

    new_token = mint_token(second.signing_key, "alice@example.com", [], 600)
    assert jwt.get_unverified_header(new_token)["kid"] == second.kid
    _clock[0] += 60  # past the refetch rate limit: the verifier rereads jwks.json
    assert verifier.verify(new_token, "token")
    assert verifier.verify(old_token, "token")
    # The kept old private key still mints tokens with its own kid.
    again = mint_token(old_key, "alice@example.com", [], 600)
    assert jwt.get_unverified_header(again)["kid"] == first.kid
    assert verifier.verify(again, "token")

    third = rotate_issuer(tmp_path)
    assert len(json.loads(third.jwks.read_text())["keys"]) == 3
    assert json.loads(third.issuer_json.read_text())["previous_kids"] == [second.kid, first.kid]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), ("45", 45), ("1H", 3600)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-5m", "1.5h", "10 minutes", "h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgjit")
    build_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(_parser().parse_args(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_cli_init_rotate_and_token(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    status, out, _ = _run(["dev-issuer", "init", str(directory), "--issuer", "http://127.0.0.1:5556/dev"])
    assert status == 0 and "jwks_file:" in out
    status, _, err = _run(["dev-issuer", "init", str(directory)])
    assert status == 1 and "already exists" in err

    key = str(directory / "signing-key.pem")
    status, out, _ = _run(
        ["token", "--key", key, "--sub", "bob@example.com", "--groups", "a, b,", "--ttl", "10m"]
    )
    assert status == 0
    assert out.endswith("\n") and out.count("\n") == 1
    token = out.strip()
    claims = jwt.get_unverified_claims(token)
    assert claims["iss"] == "http://127.0.0.1:5556/dev"
    assert claims["groups"] == ["a", "b"] and claims["email"] == "bob@example.com"
    assert claims["exp"] - claims["iat"] == 600
    assert verifier_for(directory).verify(token, "bob@example.com").groups == {"a", "b"}

    status, _, _ = _run(["dev-issuer", "rotate", str(directory)])
    assert status == 0
    assert len(json.loads((directory / "jwks.json").read_text())["keys"]) == 2

    status, out, _ = _run(
        ["token", "--key", key, "--sub", "svc", "--aud", "other", "--email", "svc@example.com"]
    )
    claims = jwt.get_unverified_claims(out.strip())
    assert claims["aud"] == "other" and claims["email"] == "svc@example.com"

    status, _, err = _run(["token", "--key", str(tmp_path / "missing.pem"), "--sub", "x"])
    assert status == 1 and "missing.pem" in err


def test_cli_rejects_bad_ttl(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["token", "--key", "k", "--sub", "s", "--ttl", "soon"])
    assert "invalid duration" in capsys.readouterr().err
