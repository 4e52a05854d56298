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
Configuration is one YAML file with the sections listen, tls, timeouts, limits,
log, auth and targets (see README.md). Every setting can be overridden by an
environment variable: PGJIT_<SECTION>__<KEY>, e.g. PGJIT_LISTEN__PORT=7432 or
PGJIT_TARGETS__APPDB__PASSWORD=secret. The config file itself can be given as
PGJIT_CONFIG. SIGTERM or SIGINT stops accepting connections, lets open
sessions finish for timeouts.shutdown_grace seconds, then ends them (57P01).
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

    check = sub.add_parser("check-config", help="validate a config file and exit", description="Load and validate the config (with environment overrides) and print a summary.")
    check.add_argument("--config", "-c", default=os.environ.get("PGJIT_CONFIG"), help="path to pgjit.yaml (default: $PGJIT_CONFIG)")
    check.set_defaults(func=_cmd_check_config)

    for mod in _optional_commands():
        mod.build_parser(sub)
    return p


def _optional_commands():
    mods = []
    for name in ("pgjit.policy.tool", "pgjit.identity.devissuer", "pgjit.devtools.dsncmd"):
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
    print(f"{cfg.source}: OK")
    print(f"  listen {cfg.listen.host}:{cfg.listen.port}, client TLS {'on' if cfg.tls.enabled else 'off'}")
    for t in cfg.targets.values():
        print(f"  target {t.name} -> {t.host}:{t.port}/{t.database} as {t.user} (upstream TLS {t.tls.mode})")
    return 0


def _cmd_serve(args) -> int:
    import trio

    from pgjit import logs
    from pgjit.server import Gateway

    cfg = _load(args)
    logs.configure(cfg.log.level, cfg.log.file)

    async def main() -> None:
        gateway = Gateway(cfg)
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
    if args.command == "policy":
        from pgjit.policy import tool

        return tool.run(args)
    return args.func(args) or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
