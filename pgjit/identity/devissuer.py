"""A developer OIDC issuer: a signing key on disk and a command that mints tokens.

For trying pgjit without a real identity provider::

    pgjit dev-issuer init ./dev-issuer
    pgjit token --key ./dev-issuer/signing-key.pem --sub alice@example.com --groups analysts
    # point the gateway's OIDC settings at issuer http://127.0.0.1/dev-issuer
    # and jwks_file ./dev-issuer/jwks.json

The directory holds ``signing-key.pem`` (RSA private key, mode 0600),
``jwks.json`` (the public keys, as an identity provider would publish them)
and ``issuer.json`` (the issuer URL and the current key id). ``rotate`` adds a
new signing key and keeps the old public key in ``jwks.json`` (and the old
private key as ``signing-key-<kid>.pem``), as a real provider does during
rotation. None of this is meant for production.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

__all__ = [
    "DEV_ISSUER",
    "IssuerPaths",
    "build_parser",
    "init_issuer",
    "mint_token",
    "parse_duration",
    "rotate_issuer",
    "run",
]

DEV_ISSUER: Final = "http://127.0.0.1/dev-issuer"
SIGNING_KEY: Final = "signing-key.pem"
JWKS_FILE: Final = "jwks.json"
ISSUER_FILE: Final = "issuer.json"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_DURATION = re.compile(r"\s*(\d+)\s*([smhd]?)\s*", re.IGNORECASE)
_UNIT_SECONDS: Final[Mapping[str, int]] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class IssuerPaths:
    directory: Path
    signing_key: Path
    jwks: Path
    issuer_json: Path
    kid: str
    issuer: str


# --------------------------------------------------------------------------- files


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _thumbprint_kid(public: rsa.RSAPublicKey) -> str:
    """The first 16 characters of the RFC 7638 JWK thumbprint."""
    numbers = public.public_numbers()
    canonical = json.dumps(
        {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)},
        separators=(",", ":"),
        sort_keys=True,
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())[:16]


def _public_jwk(public: rsa.RSAPublicKey, kid: str) -> dict[str, str]:
    numbers = public.public_numbers()
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": _b64url_uint(numbers.n),
        "e": _b64url_uint(numbers.e),
    }


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file created with ``mode`` from the start."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_private_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(path, pem, 0o600)


def _write_json(path: Path, doc: object) -> None:
    _atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), 0o644)


def _load_private_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    return key


def _read_json(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a JSON object")
    return doc


def _safe_filename_part(kid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", kid)[:64] or "key"


def _paths(directory: Path, kid: str, issuer: str) -> IssuerPaths:
    return IssuerPaths(
        directory=directory,
        signing_key=directory / SIGNING_KEY,
        jwks=directory / JWKS_FILE,
        issuer_json=directory / ISSUER_FILE,
        kid=kid,
        issuer=issuer,
    )


# --------------------------------------------------------------------------- API


def init_issuer(
    dir: str | os.PathLike[str],
    issuer: str = DEV_ISSUER,
    kid: str | None = None,
    *,
    force: bool = False,
) -> IssuerPaths:
    """Create a developer issuer in ``dir`` (created with mode 0700 if missing).

    Refuses to overwrite an existing signing key unless ``force`` is true; use
    :func:`rotate_issuer` to change keys while keeping old tokens verifiable.
    """
    if not issuer:
        raise ValueError("issuer must not be empty")
    directory = Path(dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = directory / SIGNING_KEY
    if key_path.exists() and not force:
        raise FileExistsError(
            f"{key_path} already exists; use 'dev-issuer rotate' to add a new key, "
            "or remove the directory to start over"
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = kid or _thumbprint_kid(key.public_key())
    _write_private_key(key_path, key)
    _write_json(directory / JWKS_FILE, {"keys": [_public_jwk(key.public_key(), kid)]})
    _write_json(directory / ISSUER_FILE, {"issuer": issuer, "kid": kid, "previous_kids": []})
    return _paths(directory, kid, issuer)


def rotate_issuer(dir: str | os.PathLike[str], kid: str | None = None) -> IssuerPaths:
    """Add a new signing key to the issuer in ``dir``.

    The new key becomes ``signing-key.pem``; the old private key is kept as
    ``signing-key-<old kid>.pem`` and its public key stays in ``jwks.json``, so
    tokens signed before the rotation keep verifying.
    """
    directory = Path(dir)
    meta = _read_json(directory / ISSUER_FILE)
    jwks = _read_json(directory / JWKS_FILE)
    old_kid = str(meta["kid"])
    issuer = str(meta["issuer"])
    old_keys = [k for k in jwks.get("keys", []) if isinstance(k, dict)]
    known_kids = {k.get("kid") for k in old_keys}

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_kid = kid or _thumbprint_kid(key.public_key())
    if new_kid in known_kids:
        raise ValueError(f"key id {new_kid!r} is already in {directory / JWKS_FILE}")

    old_key = _load_private_key(directory / SIGNING_KEY)
    _write_private_key(directory / f"signing-key-{_safe_filename_part(old_kid)}.pem", old_key)
    # Publish the new public key before signing anything with it.
    _write_json(directory / JWKS_FILE, {"keys": [_public_jwk(key.public_key(), new_kid), *old_keys]})
    _write_private_key(directory / SIGNING_KEY, key)
    previous = [str(k) for k in meta.get("previous_kids", []) if k != old_kid]
    _write_json(
        directory / ISSUER_FILE,
        {"issuer": issuer, "kid": new_kid, "previous_kids": [old_kid, *previous]},
    )
    return _paths(directory, new_kid, issuer)


def _kid_for(key_path: Path, key: rsa.RSAPrivateKey) -> str:
    """The kid the issuer beside ``key_path`` publishes for this key."""
    n = _b64url_uint(key.public_key().public_numbers().n)
    jwks_path = key_path.parent / JWKS_FILE
    if jwks_path.exists():
        for entry in _read_json(jwks_path).get("keys", []):
            if isinstance(entry, dict) and entry.get("n") == n and isinstance(entry.get("kid"), str):
                return str(entry["kid"])
    return _thumbprint_kid(key.public_key())


def mint_token(
    key_path: str | os.PathLike[str],
    sub: str,
    groups: Iterable[str] | None,
    ttl_seconds: int | float,
    audience: str | Sequence[str] = "pgjit",
    issuer: str | None = None,
    email: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    now: float | None = None,
    kid: str | None = None,
) -> str:
    """Mint an RS256 token signed with the key at ``key_path``.

    ``issuer`` defaults to the one in ``issuer.json`` beside the key; ``kid`` to
    the key's entry in ``jwks.json`` beside it. ``email`` defaults to ``sub``
    when ``sub`` looks like an email address. ``extra_claims`` are applied last
    and override anything; a value of ``None`` removes that claim (handy for
    testing tokens without ``exp``).
    """
    if not sub:
        raise ValueError("sub must not be empty")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    path = Path(key_path)
    key = _load_private_key(path)
    if issuer is None:
        meta_path = path.parent / ISSUER_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"no issuer given and no {ISSUER_FILE} beside {path}")
        issuer = str(_read_json(meta_path)["issuer"])
    if kid is None:
        kid = _kid_for(path, key)
    if email is None and _EMAIL.fullmatch(sub):
        email = sub
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": audience if isinstance(audience, str) else list(audience),
        "iat": issued,
        "exp": issued + int(ttl_seconds),
        "jti": uuid.uuid4().hex,
    }
    if email is not None:
        claims["email"] = email
    if groups is not None:
        claims["groups"] = list(groups)
    for name, value in (extra_claims or {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token: str = jwt.encode(claims, pem.decode("ascii"), algorithm="RS256", headers={"kid": kid})
    return token


# --------------------------------------------------------------------------- CLI


def mint_from_args(args: argparse.Namespace) -> str:
    """A token from the minting options that ``token`` and ``dsn`` share."""
    return mint_token(
        args.key,
        sub=args.sub,
        groups=args.groups,
        ttl_seconds=args.ttl,
        audience=args.aud,
        issuer=args.issuer,
        email=args.email,
    )


def parse_duration(text: str) -> int:
    """Seconds in ``30s``, ``10m``, ``1h``, ``2d`` or a bare number of seconds."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}; use e.g. 30s, 10m or 1h")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


def _duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _groups_arg(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


_COMMAND: Final = "pgjit_identity_command"


def build_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dev-issuer init|rotate`` and ``token`` on the CLI's subparsers.

    Each parsed namespace carries ``pgjit_identity_command``; pass it to :func:`run`.
    """
    dev = subparsers.add_parser(
        "dev-issuer",
        help="manage a local developer OIDC issuer (for trying pgjit, not production)",
        description="Manage a local developer OIDC issuer: a signing key and a JWKS file.",
    )
    dev_commands = dev.add_subparsers(dest="dev_issuer_command", metavar="{init,rotate}", required=True)

    init = dev_commands.add_parser("init", help="create a signing key, jwks.json and issuer.json in DIR")
    init.add_argument("dir", metavar="DIR", help="directory to create the issuer in")
    init.add_argument("--issuer", default=DEV_ISSUER, help=f"issuer URL (default: {DEV_ISSUER})")
    init.add_argument("--kid", default=None, help="key id (default: derived from the key)")
    init.add_argument("--force", action="store_true", help="overwrite an existing signing key")
    init.set_defaults(**{_COMMAND: "dev-issuer-init"})

    rotate = dev_commands.add_parser("rotate", help="add a new signing key, keeping the old public key")
    rotate.add_argument("dir", metavar="DIR", help="the issuer's directory")
    rotate.add_argument("--kid", default=None, help="key id for the new key (default: derived from it)")
    rotate.set_defaults(**{_COMMAND: "dev-issuer-rotate"})

    token = subparsers.add_parser(
        "token",
        help="mint a token from a developer issuer's signing key",
        description="Mint a token signed with a developer issuer's key and print it.",
    )
    token.add_argument("--key", required=True, metavar="PATH", help="the issuer's signing-key.pem")
    token.add_argument("--sub", required=True, metavar="S", help="subject (user id or email)")
    token.add_argument(
        "--groups", type=_groups_arg, default=None, metavar="A,B", help="comma-separated groups"
    )
    token.add_argument(
        "--ttl",
        type=_duration_arg,
        default=600,
        metavar="DURATION",
        help="lifetime: 30s, 10m, 1h (default 10m)",
    )
    token.add_argument("--aud", default="pgjit", help="audience (default: pgjit)")
    token.add_argument(
        "--email", default=None, metavar="E", help="email claim (default: --sub if it is an email)"
    )
    token.add_argument(
        "--issuer", default=None, metavar="URL", help="issuer (default: from issuer.json beside the key)"
    )
    token.set_defaults(**{_COMMAND: "token"})


def run(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run a command registered by :func:`build_parser`; returns the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    command = getattr(args, _COMMAND, None)
    try:
        if command == "dev-issuer-init":
            paths = init_issuer(args.dir, issuer=args.issuer, kid=args.kid, force=args.force)
            _describe(paths, "created developer issuer", out)
            return 0
        if command == "dev-issuer-rotate":
            paths = rotate_issuer(args.dir, kid=args.kid)
            _describe(paths, "rotated: new signing key", out)
            return 0
        if command == "token":
            out.write(mint_from_args(args) + "\n")
            return 0
    except (OSError, ValueError, KeyError) as exc:
        print(f"pgjit: {exc}", file=err)
        return 1
    print(f"pgjit: unknown identity command {command!r}", file=err)
    return 2


def _describe(paths: IssuerPaths, what: str, out: TextIO) -> None:
    print(f"{what} {paths.kid!r} in {paths.directory}", file=out)
    print(f"  signing key: {paths.signing_key}", file=out)
    print(f"  JWKS:        {paths.jwks}", file=out)
    print("OIDC settings for the gateway:", file=out)
    print(f"  issuer: {paths.issuer}", file=out)
    print("  audience: pgjit", file=out)
    print(f"  jwks_file: {paths.jwks.resolve()}", file=out)
