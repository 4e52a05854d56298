"""The ``pgjit`` command."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from pgjit import __version__

DESCRIPTION = """\
pgjit is a PostgreSQL gateway: clients connect to it as to PostgreSQL and it
relays their sessions to the target database, enforcing policy on the way.
"""

SERVE_EPILOG = """\
Configuration is one YAML file with the sections listen, tls, timeouts, limits, api,
log, auth, oidc and targets (see README.md). Every setting can be overridden by
an environment variable: PGJIT_<SECTION>__<KEY>, e.g. PGJIT_LISTEN__PORT=7432 or
PGJIT_TARGETS__APPDB__PASSWORD=secret. The config file itself can be given as
PGJIT_CONFIG. SIGTERM or SIGINT stops accepting connections, lets open
sessions finish for timeouts.shutdown_grace seconds, then ends them (57P01).
"""

CHECK_DESCRIPTION = """\
Load and validate the config (with its PGJIT_… environment overrides) and the
policy files it names, and print a summary: listeners, authentication, and
per target where it points, as whom pgjit logs in, and what its policy grants.
Nothing is contacted. A bad setting is reported with the file and line, or
with the environment variable it came from.

With --connect, also log in to every target with its own credential (in OIDC
mode the JIT admin, otherwise the static user) and check its catalog for what
pgjit needs (pgjit/jit/SETUP.md). In OIDC mode: the admin has CREATEROLE (and
is not a superuser); every role the policy's access entries grant, and every
owner role, exists (NOLOGIN) and PUBLIC or one of an entry's roles may CONNECT;
owner roles may CREATE in schema public; the admin is a member of
jit.owner_role; on PostgreSQL 16 and later the admin has ADMIN OPTION on each
granted role. In static mode: the user can log in. Each problem is printed with
the SQL a DBA runs to fix it and the SETUP.md section that explains it. Only
catalog queries are run; nothing is changed; passwords are never printed.
"""

CHECK_EPILOG = """\
exit status: 0 the config is valid (and, with --connect, no target has an
error; warnings do not count), 1 --connect found an error (a target cannot be
reached counts), 2 the config is invalid.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgjit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pgjit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway in the foreground, logging JSON lines to stderr.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", "-c", default=os.environ.get("PGJIT_CONFIG"), help="path to pgjit.yaml (default: $PGJIT_CONFIG)")
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser(
        "check-config",
        help="validate a config file (and, with --connect, the target databases' setup) and exit",
        description=CHECK_DESCRIPTION,
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--config", "-c", default=os.environ.get("PGJIT_CONFIG"), help="path to pgjit.yaml (default: $PGJIT_CONFIG)")
    check.add_argument("--connect", action="store_true", help="also log in to every target and check its roles and privileges")
    check.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --connect: bound on each target's login (default: timeouts.upstream_connect) and on each catalog query",
    )
    check.set_defaults(func=_cmd_check_config)

    for mod in _optional_commands():
        mod.build_parser(sub)
    return p


def _optional_commands():
    mods = []
    for name in ("pgjit.policy.tool", "pgjit.audit.tool", "pgjit.approvals.tool", "pgjit.identity.devissuer", "pgjit.devtools.dsncmd"):
        try:
            mods.append(__import__(name, fromlist=["build_parser"]))
        except ImportError:
            pass
    return mods


def _load(args):
    from pgjit.config import ConfigError, load_config

    if not args.config:
        print("pgjit: --config is required (or set PGJIT_CONFIG)", file=sys.stderr)
        raise SystemExit(2)
    try:
        return load_config(args.config)
    except ConfigError as e:
        print(f"pgjit: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_check_config(args) -> int:
    cfg = _load(args)
    for line in _summary(cfg):
        print(line)
    if not args.connect:
        print("  (the target databases were not contacted: add --connect to check their roles and privileges)")
        return 0
    timeout = args.timeout if args.timeout and args.timeout > 0 else cfg.timeouts.upstream_connect
    return _check_connect(cfg, timeout)


def _summary(cfg) -> list[str]:
    """What the config says, in a few lines (names, never passwords)."""
    out = [f"{cfg.source}: OK"]
    out.append(
        f"  listen {cfg.listen.host}:{cfg.listen.port}, client TLS {'on' if cfg.tls.enabled else 'off'}, "
        f"at most {cfg.listen.max_clients} clients"
    )
    if cfg.oidc is not None:
        v = cfg.oidc.verifier
        aud = v.audience if isinstance(v.audience, str) else ", ".join(v.audience)
        keys = f"jwks_file {v.jwks_file}" if v.jwks_file else f"jwks_url {v.jwks_url}" if v.jwks_url else "the issuer's discovery document"
        out.append(f"  auth oidc: issuer {v.issuer}, audience {aud}, keys from {keys}")
        out.append(
            f"    user claim {v.user_claim!r}, groups claim {v.groups_claim!r}; tokens over "
            + ("TLS, or plain TCP from loopback (allow_insecure_loopback)" if cfg.oidc.allow_insecure_loopback else "TLS only")
        )
    else:
        out.append("  auth loopback_any_password: any password from 127.0.0.1/::1 only (development; configure oidc for real use)")
    jit = cfg.oidc is not None
    for t in cfg.targets.values():
        who = "JIT admin" if jit else "every session"
        pw = "with a password" if t.password else "without a password"
        out.append(f"  target {t.name} -> {t.host}:{t.port}/{t.database} as {t.user} ({who}, {pw}; upstream TLS {t.tls.mode})")
        if t.policy is not None:
            p = t.policy
            out.append(
                f"    policy {t.policy_path}: {_count(len(p.rules), 'rule')}, default {p.default}, "
                f"{_count(len(p.access), 'access entry', 'access entries')}"
            )
            if jit:
                for e in p.access:
                    owner = getattr(e, "owner", None)
                    grant = ", ".join(e.grant) or "nothing"
                    out.append(
                        f"      group {e.group!r} -> grant {grant}" + (f", acting as {owner}" if owner else "")
                        + f"; JIT role valid {_duration(e.jit_lifetime)}, session at most {_duration(e.max_session)}"
                    )
        if jit:
            out.append(f"    jit: owner_role {t.jit.owner_role}, sweep every {t.jit.sweep_interval:g} s")
    if cfg.env_overrides:
        shown = ", ".join(f"{var} ({key})" for key, var in cfg.env_overrides.items())
        out.append(f"  from the environment: {shown}")
    return out


def _check_connect(cfg, timeout: float) -> int:
    import functools

    import trio

    from pgjit.jit.admin import AdminConnection
    from pgjit.jit.preflight import ERROR, WARNING, Finding, preflight
    from pgjit.gateway.upstream import make_upstream_tls_context

    jit = cfg.oidc is not None
    targets = list(cfg.targets.values())
    results: dict[str, list[Finding]] = {}

    async def one(t) -> None:
        try:
            tls_ctx = make_upstream_tls_context(t.tls.mode, t.tls.ca) if t.tls.mode != "disable" else None
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            results[t.name] = [Finding(ERROR, f"cannot connect: the upstream TLS settings do not load: {e}", f"check targets.{t.name}.tls")]
            return
        connect = functools.partial(
            AdminConnection.connect, t.host, t.port, t.database, t.user, t.password,
            t.tls.mode, tls_ctx, t.tls.server_name,
            parameters={"application_name": "pgjit:check-config"},
        )
        results[t.name] = await preflight(connect, t, jit=jit, connect_timeout=timeout, query_timeout=timeout)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for t in targets:
                nursery.start_soon(one, t)

    trio.run(main)

    errors = warnings = failed = 0
    for t in targets:
        findings = results[t.name]
        n_err = sum(f.severity == ERROR for f in findings)
        n_warn = sum(f.severity == WARNING for f in findings)
        errors += n_err
        warnings += n_warn
        failed += bool(n_err)
        role = "JIT admin" if jit else "static user"
        print()
        print(f"target {t.name} ({t.host}:{t.port}/{t.database} as {t.user}, {role}): "
              + ("OK" if not n_err and not n_warn else _count(n_err, "error") + ", " + _count(n_warn, "warning")))
        for f in findings:
            print(f"  {f.severity}: {f.message}")
            if f.fix:
                lines = f.fix.splitlines()
                print(f"    fix: {lines[0]}")
                for line in lines[1:]:
                    print(f"         {line}")
            if f.see:
                print(f"    see: {f.see}")
    print()
    print(f"check-config --connect: {_count(errors, 'error')}, {_count(warnings, 'warning')}"
          + (f"; {failed} of {len(targets)} targets not ready" if failed else f"; {len(targets)} of {len(targets)} targets ready"))
    return 1 if errors else 0


def _count(n: int, what: str, plural: str | None = None) -> str:
    return f"{n} {what if n == 1 else plural or what + 's'}"


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cmd_serve(args) -> int:
    import trio

    from pgjit import logs
    from pgjit.gateway.server import Gateway

    cfg = _load(args)
    logs.configure(cfg.log.level, cfg.log.file)
    writer = None
    if cfg.audit is not None:
        from pgjit.audit.store import StoreError
        from pgjit.gateway.server import open_audit

        try:
            writer = open_audit(cfg)
        except StoreError as e:
            print(f"pgjit: {e}", file=sys.stderr)
            return 1

    async def main() -> None:
        gateway = Gateway(cfg, writer=writer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, gateway, nursery.cancel_scope)
            await gateway.serve()
            nursery.cancel_scope.cancel()

    async def _on_signals(gateway, scope) -> None:
        # First SIGTERM/SIGINT: drain. A second one while draining: stop now.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                if gateway.shutdown_requested:
                    scope.cancel()
                    return
                gateway.request_shutdown()

    try:
        trio.run(main)
    except OSError as e:
        print(f"pgjit: cannot listen on {cfg.listen.host}:{cfg.listen.port}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "pgjit_identity_command", None):
        from pgjit.identity import devissuer

        return devissuer.run(args)
    if getattr(args, "pgjit_dsn_command", None):
        from pgjit.devtools import dsncmd

        return dsncmd.run(args)
    if args.command == "policy" and args.policy_command == "replay":
        from pgjit.audit import tool as audit_tool

        return audit_tool.cmd_replay(args)
    if args.command == "policy":
        from pgjit.policy import tool

        return tool.run(args)
    return args.func(args) or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
