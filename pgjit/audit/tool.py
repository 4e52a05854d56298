"""``pgjit store upgrade`` and ``pgjit audit verify|export``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pgjit.audit.errors import short_error

STORE_HELP = """\
The audit store is an SQLAlchemy URL: sqlite:///PATH (the default kind: one
file, WAL mode) or postgresql://USER:PASSWORD@HOST:PORT/DB (production, and
several replicas sharing one store). It can also come from $PGJIT_STORE__URL.
"""

VERIFY_DESCRIPTION = """\
Check the audit trail's integrity, in the store or in an export file: every
record is chained by hash to the one before it, per gateway process, and
checkpoints sign the chain with the checkpoint key. Each record that
was edited, deleted, inserted or moved is named (chain and sequence number),
as is each checkpoint whose signature does not hold.
"""

VERIFY_EPILOG = """\
exit status: 0 the trail is intact, 1 a problem was found (each one is
printed), 2 the store or the file could not be read, or no key was given.
Records after a chain's last checkpoint (a gateway still running, or one that
was killed) are counted and reported; only a checkpoint protects them against
being re-hashed.
"""

EXPORT_DESCRIPTION = """\
Write the audit records as JSON lines, one record per line, in chain and
sequence order, with the fields chain, seq, kind, at, session_id, person,
target, decision, body, prev and hash (docs/audit.md describes each). The
file verifies on its own: pgjit audit verify --file EXPORT.
"""


def build_parser(sub: Any) -> None:
    store = sub.add_parser("store", help="manage the audit store (schema upgrades)",
                           description="Manage the audit store.", epilog=STORE_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND")
    ssub.required = True
    up = ssub.add_parser("upgrade", help="create the store's tables, or bring them to this pgjit's schema",
                         description="Create the audit store's tables, or migrate them to the schema this pgjit "
                         "needs (Alembic). Safe to run again: a store that is current is left alone.",
                         epilog=STORE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _url_arg(up)
    up.set_defaults(func=_cmd_upgrade)

    audit = sub.add_parser("audit", help="verify or export the audit trail", description="The audit trail.")
    asub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    asub.required = True
    ver = asub.add_parser("verify", help="check the trail's hash chains and signed checkpoints",
                          description=VERIFY_DESCRIPTION, epilog=VERIFY_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ver.add_mutually_exclusive_group()
    _url_arg(src)
    src.add_argument("--file", metavar="EXPORT", help="verify a JSON-lines export instead of the store")
    _key_arg(ver)
    ver.set_defaults(func=_cmd_verify)

    exp = asub.add_parser("export", help="write the records as JSON lines", description=EXPORT_DESCRIPTION,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _url_arg(exp)
    exp.add_argument("--format", choices=("jsonl",), default="jsonl", help="the output format (default: jsonl)")
    exp.add_argument("--since", metavar="TIME", help="only records at or after this UTC time (ISO 8601, e.g. 2026-12-01T00:00:00Z)")
    exp.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    exp.set_defaults(func=_cmd_export)


    sess = sub.add_parser("sessions", help="list recorded sessions, or show one's timeline",
                          description="Sessions as the audit trail recorded them.", epilog=STORE_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub2 = sess.add_subparsers(dest="sessions_command", metavar="SUBCOMMAND")
    ssub2.required = True
    ls = ssub2.add_parser("list", help="one line per session: who, where, when, statements, denials, how it ended",
                          description="One line per recorded session, oldest first.")
    _url_arg(ls)
    ls.add_argument("--user", help="only this person (the token's subject or e-mail)")
    ls.add_argument("--target", help="only sessions on this target database")
    ls.add_argument("--since", metavar="TIME", help="only sessions started at or after this UTC time (ISO 8601)")
    ls.add_argument("--denied", action="store_true", help="only sessions with at least one refused statement")
    ls.set_defaults(func=_cmd_sessions_list)
    show = ssub2.add_parser("show", help="one session's timeline: statements, decisions, rows, durations",
                            description="The timeline of one session: its start, every statement with its "
                            "decision, rule, outcome, rows, SQLSTATE and duration, and its end.")
    _url_arg(show)
    show.add_argument("session_id", metavar="ID", help="the session id (from sessions list, or a log line)")
    show.set_defaults(func=_cmd_sessions_show)


def _url_arg(p: Any) -> None:
    p.add_argument("--url", default=os.environ.get("PGJIT_STORE__URL"),
                   help="the store's URL (default: $PGJIT_STORE__URL, else the config's store.url)")
    p.add_argument("--config", "-c", default=os.environ.get("PGJIT_CONFIG"),
                   help="a pgjit.yaml whose store (and checkpoint key) to use (default: $PGJIT_CONFIG)")


def _key_arg(p: Any) -> None:
    p.add_argument("--key-file", default=os.environ.get("PGJIT_AUDIT__CHECKPOINT_KEY_FILE"), metavar="FILE",
                   help="the checkpoint key (default: $PGJIT_AUDIT__CHECKPOINT_KEY_FILE)")


def _from_config(args: Any):  # type: ignore[no-untyped-def]
    if not getattr(args, "config", None):
        return None
    from pgjit.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as e:
        print(f"pgjit: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _need_url(args: Any) -> str | None:
    if not args.url:
        cfg = _from_config(args)
        if cfg is not None and cfg.store is not None:
            args.url = cfg.store.url
    if not args.url:
        print("pgjit: no store given: pass --url or --config (with an audit section), or set PGJIT_STORE__URL",
              file=sys.stderr)
        return None
    return args.url


def read_key(path: str) -> bytes:
    data = Path(path).read_bytes().strip()
    if len(data) < 16:
        raise ValueError(f"{path}: a checkpoint key must be at least 16 bytes")
    return data


def _cmd_upgrade(args: Any) -> int:
    from pgjit.audit.store import StoreError, upgrade

    url = _need_url(args)
    if url is None:
        return 2
    try:
        before, after = upgrade(url)
    except (StoreError, Exception) as e:  # noqa: BLE001 - a clear line, not a traceback
        print(f"pgjit: store upgrade failed: {short_error(e)}", file=sys.stderr)
        return 1
    if before == after:
        print(f"store is current (revision {after})")
    else:
        print(f"store upgraded from {'revision ' + before if before else '(empty)'} to revision {after}")
    return 0


def _cmd_verify(args: Any) -> int:
    from pgjit.audit.chain import iter_jsonl, verify

    key = None
    if not args.key_file:
        cfg = _from_config(args)
        if cfg is not None and cfg.audit is not None:
            key = cfg.audit.checkpoint_key
    if key is None and not args.key_file:
        print("pgjit: no checkpoint key: pass --key-file or --config, or set PGJIT_AUDIT__CHECKPOINT_KEY_FILE "
              "(without it a re-hashed chain cannot be told from a real one)", file=sys.stderr)
        return 2
    if key is None:
        try:
            key = read_key(args.key_file)
        except (OSError, ValueError) as e:
            print(f"pgjit: cannot read the checkpoint key: {e}", file=sys.stderr)
            return 2
    store = None
    try:
        if args.file:
            with open(args.file, encoding="utf-8") as f:
                report = verify(iter_jsonl(f), key)
        else:
            from pgjit.audit.store import Store

            url = _need_url(args)
            if url is None:
                return 2
            store = Store(url)
            report = verify(store.records(), key)
    except Exception as e:  # noqa: BLE001
        print(f"pgjit: cannot read the audit records: {short_error(e)}", file=sys.stderr)
        return 2
    finally:
        if store is not None:
            store.close()
    for problem in report.problems:
        print(problem)
    summary = (f"{report.records} records in {report.chains} chain(s), {report.checkpoints} checkpoint(s); "
               f"{report.unchecked} record(s) after the last checkpoint of their chain")
    if report.ok:
        print(f"ok: {summary}")
        return 0
    print(f"FAILED: {len(report.problems)} problem(s); {summary}")
    return 1


def _cmd_export(args: Any) -> int:
    from pgjit.audit.chain import write_jsonl
    from pgjit.audit.store import Store

    url = _need_url(args)
    if url is None:
        return 2
    try:
        store = Store(url)
    except Exception as e:  # noqa: BLE001
        print(f"pgjit: {short_error(e)}", file=sys.stderr)
        return 2
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        n = write_jsonl(store.records(since=args.since), out)
    finally:
        store.close()
        if args.output:
            out.close()
    print(f"{n} records exported", file=sys.stderr)
    return 0



def _views(args: Any):  # type: ignore[no-untyped-def]
    """The recorded sessions of the store the arguments name; None (the
    reason printed) when it cannot be read."""
    from pgjit.audit.sessions import gather
    from pgjit.audit.store import Store

    if _need_url(args) is None:
        return None
    try:
        store = Store(args.url)
        try:
            return gather(store.records(kinds=("session_start", "session_end", "statements", "statement", "statement_result")))
        finally:
            store.close()
    except Exception as e:  # noqa: BLE001
        print(f"pgjit: cannot read the audit records: {short_error(e)}", file=sys.stderr)
        return None


def _cmd_sessions_list(args: Any) -> int:
    from pgjit.audit.sessions import print_list, select

    views = _views(args)
    if views is None:
        return 2
    print_list(select(views, user=args.user, target=args.target, since=args.since, denied=args.denied), sys.stdout)
    return 0


def _cmd_sessions_show(args: Any) -> int:
    from pgjit.audit.sessions import print_timeline

    views = _views(args)
    if views is None:
        return 2
    v = views.get(args.session_id)
    if v is None:
        print(f"pgjit: no session {args.session_id!r} in the audit records", file=sys.stderr)
        return 1
    print_timeline(v, sys.stdout)
    return 0


def cmd_replay(args: Any) -> int:
    """Exit 0: no decision would change; 1: some would (each printed); 2: error."""
    from pgjit.audit.sessions import replay, select
    from pgjit.policy.gate import Gate
    from pgjit.policy.model import Policy, PolicyError

    try:
        gate = Gate(Policy.load(args.policy_file))
    except (PolicyError, OSError) as e:
        print(f"pgjit: {e}", file=sys.stderr)
        return 2
    views = _views(args)
    if views is None:
        return 2
    chosen = select(views, target=args.target)
    decided = sum(len(v.statements) for v in chosen)
    changes = list(replay(chosen, gate, since=args.since))
    for c in changes:
        text = " ".join(c.text.split())
        print(f"{c.at} session {c.session_id} #{c.seq}: {c.before} -> {c.after}"
              f"{f' (rule {c.rule})' if c.rule else ''}: {text[:200]}")
    to_deny = sum(1 for c in changes if c.before == "allow")
    print(f"{decided} recorded statements decided again under {args.policy_file}: "
          f"{len(changes)} would change ({to_deny} allowed -> refused, {len(changes) - to_deny} refused -> other). "
          "Decided without the target's catalog: rules that depend on what a name is there (functions, views) "
          "may decide differently live.")
    return 1 if changes else 0
