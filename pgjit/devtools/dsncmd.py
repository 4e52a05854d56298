"""``pgjit dsn``: a connection string for the gateway with a fresh token as the password.

For developers and AI agents: pgjit takes an OIDC token where PostgreSQL takes
a password, so a working DSN is just the gateway's address, your user name and
a token::

    pgjit dsn --key .demo/issuer/signing-key.pem --sub alice@example.com --groups analysts
    pgjit dsn --token-file ~/.cache/my-idp-token --format psql
    pgjit dsn --key … --sub … --format mcp     # a Cursor / Claude MCP config snippet

The token is minted with a developer issuer's signing key (see ``pgjit
dev-issuer init``) or given with ``--token`` / ``--token-file`` (e.g. one your
identity provider issued). Everything goes to stdout, ready for ``$(…)``; a
note on when the token expires goes to stderr (``--quiet`` drops it).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO
from urllib.parse import quote

from pgjit.identity.devissuer import _duration_arg, _groups_arg, mint_from_args

__all__ = [
    "DEFAULT_DBNAME",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_SSLMODE",
    "FORMATS",
    "SSLMODES",
    "build_parser",
    "render",
    "run",
    "token_claims",
]

_COMMAND: Final = "pgjit_dsn_command"
FORMATS: Final = ("url", "keyword", "psql", "env", "mcp")
SSLMODES: Final = ("disable", "require", "verify-full")
MCP_PACKAGE: Final = "@modelcontextprotocol/server-postgres"
# The defaults match `make demo` (pgjit.devtools.demo imports them): the demo's
# gateway listens on 127.0.0.1:6432 with TLS and serves the target appdb.
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 6432
DEFAULT_DBNAME: Final = "appdb"
DEFAULT_SSLMODE: Final = "require"

DESCRIPTION = """\
Print a connection string for the pgjit gateway whose password is an OIDC
token. pgjit verifies the token at login, creates a just-in-time database role
for that one session and drops it when the session ends: there is no database
password to leak, and what the session may do comes from your token's groups.

The token is either minted here with a developer issuer's signing key
(--key and --sub; see 'pgjit dev-issuer init DIR') or given as it is
(--token, --token-file; '-' reads stdin).
"""

EPILOG = """\
The password IS the token, and tokens expire (--ttl, default 10m). The gateway
checks the token at every new connection, so a DSN stops working when its
token expires, and a session cannot outlive it. Tools that reconnect (a
connection pool, Cursor's MCP server) need a token that lasts as long as you
work with them: use e.g. --ttl 8h for them, within what the policy allows,
and run 'pgjit dsn' again when it expires. Treat the output as a secret while
the token is valid.

formats:
  url      postgresql://alice%40example.com:TOKEN@127.0.0.1:6432/appdb?sslmode=require
  keyword  host=127.0.0.1 port=6432 dbname=appdb user=alice@example.com password=TOKEN sslmode=require
  psql     PGPASSWORD='TOKEN' psql "host=127.0.0.1 port=6432 dbname=appdb user=alice@example.com sslmode=require"
  env      export PGHOST=… PGPORT=… PGDATABASE=… PGUSER=… PGPASSWORD=… PGSSLMODE=… (one per line;
           eval "$(pgjit dsn … --format env)")
  mcp      {"mcpServers": {"pgjit-appdb": {"command": "npx", "args": ["-y",
           "@modelcontextprotocol/server-postgres", "<url>"]}}} for Cursor's .cursor/mcp.json
           or Claude Desktop's config

sslmode: 'require' (the default) encrypts; 'verify-full' also checks the
gateway's certificate (give --sslrootcert; `make demo` makes .demo/ca.pem).
'disable' works only when the gateway allows plain connections
(oidc.allow_insecure_loopback, 127.0.0.1). Note that node-postgres (used by
the MCP server) verifies the certificate for sslmode=require too, so give it
--sslrootcert; in the mcp format that path is made absolute, because the MCP
server does not run in your working directory.

examples (against `make demo`, whose gateway these defaults describe):
  pgjit dsn --key .demo/issuer/signing-key.pem --sub alice@example.com --groups analysts
  psql "$(pgjit dsn --key … --sub alice@example.com)"
  psql "$(pgjit dsn --key … --sub alice@example.com --sslmode verify-full --sslrootcert .demo/ca.pem)"
  pgjit dsn --key … --sub alice@example.com --ttl 8h --sslmode verify-full --sslrootcert .demo/ca.pem --format mcp
"""


# --------------------------------------------------------------------------- pieces


def token_claims(token: str) -> dict[str, Any]:
    """The token's payload, decoded WITHOUT verifying it (only to fill in defaults)."""
    try:
        payload = token.split(".")[1]
        doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


_CONNINFO_PLAIN = re.compile(r"[^\s'\\]+")


def _conninfo_value(value: str) -> str:
    """A libpq keyword/value value, single-quoted when it must be."""
    if _CONNINFO_PLAIN.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sh_single(value: str) -> str:
    """Always single-quoted for a POSIX shell (a token must never be word-split or expanded)."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


_DQ_SAFE = re.compile(r'[^"$`\\!]*')


def _sh_double_or_single(value: str) -> str:
    """Double quotes when nothing inside needs escaping (as people write it), else single quotes."""
    return f'"{value}"' if _DQ_SAFE.fullmatch(value) else shlex.quote(value)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _params(args: argparse.Namespace) -> list[tuple[str, str]]:
    root = args.sslrootcert
    if root and args.format == "mcp":
        # The MCP server runs wherever Cursor starts it: a relative path would not resolve.
        root = os.path.abspath(os.path.expanduser(root))
    extra = [("sslrootcert", root)] if root else []
    return [("sslmode", args.sslmode), *extra]


def render(fmt: str, *, host: str, port: int, dbname: str, user: str, token: str, params: list[tuple[str, str]]) -> str:
    """The connection details in one of :data:`FORMATS` (no trailing newline)."""
    url = (
        f"postgresql://{quote(user, safe='')}:{quote(token, safe='')}@{_url_host(host)}:{port}/{quote(dbname, safe='')}"
        + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params) if params else "")
    )
    base = [("host", host), ("port", str(port)), ("dbname", dbname), ("user", user)]
    if fmt == "url":
        return url
    if fmt == "keyword":
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in [*base, ("password", token), *params])
    if fmt == "psql":
        conninfo = " ".join(f"{k}={_conninfo_value(v)}" for k, v in [*base, *params])
        return f"PGPASSWORD={_sh_single(token)} psql {_sh_double_or_single(conninfo)}"
    if fmt == "env":
        names = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT"}
        lines = [f"export {names[k]}={shlex.quote(v)}" for k, v in base]
        lines.append(f"export PGPASSWORD={_sh_single(token)}")
        lines += [f"export {names[k]}={shlex.quote(v)}" for k, v in params]
        return "\n".join(lines)
    if fmt == "mcp":
        doc = {"mcpServers": {f"pgjit-{dbname}": {"command": "npx", "args": ["-y", MCP_PACKAGE, url]}}}
        return json.dumps(doc, indent=2)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- CLI


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 1 and 65535")
    return port


def build_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dsn`` on the CLI's subparsers; the namespace carries ``pgjit_dsn_command``."""
    p = subparsers.add_parser(
        "dsn",
        help="print a connection string (url, psql, env, MCP config) with a fresh token as the password",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("the token (one of --key, --token, --token-file)")
    source = src.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", metavar="PATH", help="mint a token with this developer issuer's signing-key.pem")
    source.add_argument("--token", metavar="TOKEN", help="use this token as it is (beware: visible in ps and shell history)")
    source.add_argument("--token-file", metavar="PATH", help="read the token from this file ('-': stdin)")
    mint = p.add_argument_group("minting (with --key)")
    mint.add_argument("--sub", metavar="S", help="subject: user id or email (required with --key)")
    mint.add_argument("--groups", type=_groups_arg, default=None, metavar="A,B", help="comma-separated groups (the policy maps them to grants)")
    mint.add_argument("--ttl", type=_duration_arg, default=600, metavar="DURATION", help="token lifetime: 30s, 10m, 1h, 8h (default 10m)")
    mint.add_argument("--aud", default="pgjit", help="audience (default: pgjit, as in the gateway's oidc.audience)")
    mint.add_argument("--email", default=None, metavar="E", help="email claim (default: --sub if it is an email)")
    mint.add_argument("--issuer", default=None, metavar="URL", help="issuer (default: from issuer.json beside the key)")
    conn = p.add_argument_group("where to connect")
    conn.add_argument("--host", default=DEFAULT_HOST, help=f"the gateway's host (default {DEFAULT_HOST})")
    conn.add_argument("--port", type=_port_arg, default=DEFAULT_PORT, help=f"the gateway's port (default {DEFAULT_PORT}, as in make demo)")
    conn.add_argument("--dbname", default=DEFAULT_DBNAME, help=f"the target name in the gateway's config (default {DEFAULT_DBNAME})")
    conn.add_argument("--user", default=None, help="database user name (default: the token's email, else its sub)")
    conn.add_argument(
        "--sslmode",
        choices=SSLMODES,
        default=DEFAULT_SSLMODE,
        help=f"default {DEFAULT_SSLMODE}; disable only for a loopback gateway with oidc.allow_insecure_loopback",
    )
    conn.add_argument("--sslrootcert", default=None, metavar="PATH", help="CA file for --sslmode verify-full (make demo: .demo/ca.pem); made absolute for --format mcp")
    p.add_argument("--format", "-f", choices=FORMATS, default="url", help="what to print (default url; see below)")
    p.add_argument("--quiet", "-q", action="store_true", help="no note about the token's expiry on stderr")
    p.set_defaults(**{_COMMAND: True})


def _read_token(args: argparse.Namespace) -> str:
    if args.token is not None:
        return args.token.strip()
    if args.token_file == "-":
        return sys.stdin.read().strip()
    with open(args.token_file, encoding="utf-8") as f:
        return f.read().strip()


def _default_user(claims: Mapping[str, Any]) -> str | None:
    for name in ("email", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{round(seconds / 60)}m"
    return f"{seconds / 3600:.1f}h"


def run(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run ``pgjit dsn``; returns the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        if args.key is not None:
            if not args.sub:
                print("pgjit dsn: --sub is required with --key", file=err)
                return 2
            token = mint_from_args(args)
        else:
            if args.sub or args.groups is not None or args.email or args.issuer:
                print("pgjit dsn: --sub, --groups, --email and --issuer only apply with --key (minting)", file=err)
                return 2
            token = _read_token(args)
            if not token:
                print("pgjit dsn: the token is empty", file=err)
                return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"pgjit dsn: {exc}", file=err)
        return 1
    if args.sslmode == "verify-full" and not args.sslrootcert:
        print("pgjit dsn: note: verify-full without --sslrootcert uses the client's default CA file (~/.postgresql/root.crt for libpq)", file=err)

    claims = token_claims(token)
    user = args.user or _default_user(claims) or "token"
    text = render(args.format, host=args.host, port=args.port, dbname=args.dbname, user=user, token=token, params=_params(args))
    out.write(text + "\n")
    out.flush()
    if not args.quiet:
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            left = exp - time.time()
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
            if left > 0:
                print(f"pgjit dsn: the password is a token for {user}; it expires at {when} (in {_span(left)})", file=err)
            else:
                print(f"pgjit dsn: warning: this token expired at {when}; the gateway will refuse it", file=err)
        else:
            print("pgjit dsn: the token has no readable expiry (exp)", file=err)
    return 0
