"""Gateway configuration: one YAML file, every setting overridable by environment.

A setting at ``a.b.c`` in the file is overridden by ``PGJIT_A__B__C`` (double
underscore between levels, case-insensitive), e.g. ``PGJIT_LISTEN__PORT=7432``
or ``PGJIT_TARGETS__APPDB__PASSWORD=…``. Bad config is refused at start with
the file, the line and the key: ``pgjit.yaml:12: targets.appdb.port: expected
an integer between 1 and 65535, got 'abc'``; a bad value that came from the
environment is reported with the variable's name instead of a line:
``PGJIT_LISTEN__PORT: listen.port: expected an integer between 0 and 65535,
got 'abc'``.

Relative file names (``tls.cert``, ``targets.*.policy``, ``oidc.jwks_file``, …)
are taken relative to the config file's directory, and must exist at load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from pgjit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE


class ConfigError(Exception):
    """A configuration problem, with file, line and key in its message."""


# --------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------


def _construct(node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...], int], fname: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise ConfigError(f"{fname}:{knode.start_mark.line + 1}: {'.'.join(path) or '<top>'}: keys must be plain strings")
            key = str(knode.value)
            if key in out:
                raise ConfigError(f"{fname}:{knode.start_mark.line + 1}: {'.'.join(path + (key,))}: duplicate key")
            out[key] = _construct(vnode, path + (key,), lines, fname)
            # An error about a key points at the key (a block mapping's value
            # starts on the next line).
            lines[path + (key,)] = knode.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, path + (str(i),), lines, fname) for i, v in enumerate(node.value)]
    # Scalars: let PyYAML's resolver type them (int, bool, null, str).
    return _scalar(node)


_LOADER = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    return _LOADER.construct_object(node, deep=True)


def load_yaml_with_lines(text: str, fname: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(f"{fname}:{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    lines: dict[tuple[str, ...], int] = {}
    if node is None:
        return {}, lines
    return _construct(node, (), lines, fname), lines


# --------------------------------------------------------------------------
# Typed sections
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 6432
    max_clients: int = 1000  # sessions past authentication
    max_startup: int = 128  # connections still in startup/authentication (unauthenticated)
    reuse_port: bool = False
    backlog: int = 512


@dataclass(frozen=True)
class ClientTLSConfig:
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key)


@dataclass(frozen=True)
class TimeoutsConfig:
    startup: float = 10.0
    auth: float = 30.0
    upstream_connect: float = 10.0
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # Gateway-wide: bytes of client messages not yet complete, over all sessions.
    max_buffered: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    file: str | None = None  # default: stderr


@dataclass(frozen=True)
class StoreConfig:
    """Where audit records (and later approvals) live: an SQLAlchemy URL."""

    url: str  # sqlite:///… (default: <data_dir>/audit.db) or postgresql://…
    data_dir: str


@dataclass(frozen=True)
class AuditConfig:
    checkpoint_key: bytes = field(repr=False, default=b"")
    checkpoint_key_file: str | None = None
    on_store_failure: str = "fail_closed"  # fail_closed | fail_open
    redact_literals: bool = False
    bind_parameters: bool = False  # record Bind values (they may be secrets: off by default)
    buffer: int = 100_000  # records queued in memory while the store cannot be written
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 10.0
    sink: str | None = None  # a JSON-lines file every written record is appended to


@dataclass(frozen=True)
class ApprovalsConfig:
    """Statements held for a human's approval (docs/approvals.md)."""

    hold_timeout: float = 300.0  # how long a held statement waits for a decision
    reuse_window: float = 600.0  # how long an approval that came after its hold timed out stays usable
    single_use: bool = True  # an approval runs its statement once
    poll_interval: float = 0.5  # how often a gateway looks for decisions (SQLite; a PostgreSQL store also NOTIFYs)
    webhook: str | None = None  # a URL every new request is POSTed to (JSON)
    webhook_format: str = "json"  # json | slack
    public_url: str | None = None  # how approvers reach this gateway's API, for the notices and the webhook


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API (/metrics, /healthz, /readyz). Loopback unless told otherwise."""

    host: str = "127.0.0.1"
    port: int = 9187
    # How often each target's server is probed (a TCP connect) for /readyz.
    probe_interval: float = 5.0


@dataclass(frozen=True)
class AuthConfig:
    """How clients authenticate until OIDC is configured.

    ``loopback_any_password``: any password is accepted from 127.0.0.1/::1
    only. This is the development seam the OIDC issue replaces.
    """

    mode: str = "loopback_any_password"


@dataclass(frozen=True)
class UpstreamTLSConfig:
    mode: str = "disable"  # disable | require | verify-full
    ca: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class JitConfig:
    """Just-in-time roles for a target (used when ``oidc`` is configured)."""

    owner_role: str = "pgjit_owner"  # REASSIGN OWNED target when a role is dropped
    sweep_interval: float = 60.0
    setup_grace: float = 120.0
    scram_iterations: int = 4096  # PBKDF2 rounds of the role's SCRAM verifier


@dataclass(frozen=True)
class TargetConfig:
    name: str
    host: str
    port: int = 5432
    database: str = ""
    # Static mode: the credential sessions log in with. OIDC mode: the JIT
    # broker's admin credential (CREATEROLE, not superuser).
    user: str = ""
    password: str | None = field(default=None, repr=False)
    tls: UpstreamTLSConfig = UpstreamTLSConfig()
    policy_path: str | None = None
    policy: Any = field(default=None, repr=False, compare=False)  # pgjit.policy.Policy
    jit: JitConfig = JitConfig()


@dataclass(frozen=True)
class OIDCSettings:
    verifier: Any  # pgjit.identity.OIDCConfig
    allow_insecure_loopback: bool = False
    expiry_grace: float = 0.0  # seconds a session may outlive its token
    jwks_refresh_interval: float = 300.0


@dataclass(frozen=True)
class Config:
    source: str
    listen: ListenConfig
    tls: ClientTLSConfig
    timeouts: TimeoutsConfig
    limits: LimitsConfig
    log: LogConfig
    auth: AuthConfig
    targets: Mapping[str, TargetConfig]
    oidc: OIDCSettings | None = None
    api: ApiConfig | None = None  # no API unless the section is there
    store: StoreConfig | None = None
    audit: AuditConfig | None = None  # no audit trail unless the section is there
    approvals: ApprovalsConfig | None = None  # require_approval is refused unless the section is there
    #: Settings that came from the environment: dotted key -> variable name
    #: (names only; values may be secrets).
    env_overrides: Mapping[str, str] = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


class _Ctx:
    def __init__(self, fname: str, lines: dict[tuple[str, ...], int], env: Mapping[tuple[str, ...], str] | None = None) -> None:
        self.fname = fname
        self.lines = lines
        # Paths set (or mappings created) by an environment variable -> its name.
        self.env = dict(env or {})

    def where(self, path: tuple[str, ...]) -> tuple[str, bool]:
        """Where ``path`` was set: ``file:line`` of its deepest ancestor
        (itself included) that the file gave, or the name of the variable
        that set it; and whether it was a variable."""
        p = path
        while p:
            if p in self.env:
                return self.env[p], True
            if p in self.lines:
                return f"{self.fname}:{self.lines[p]}", False
            p = p[:-1]
        line = self.lines.get((), 0)
        return (f"{self.fname}:{line}" if line else self.fname), False

    def error(self, path: tuple[str, ...], msg: str) -> ConfigError:
        where, from_env = self.where(path)
        if path and not from_env:
            # A setting under path came from the environment: say so.
            below = sorted({v for p, v in self.env.items() if len(p) > len(path) and p[: len(path)] == path})
            if below:
                msg += f" (set from the environment: {', '.join(below[:3])}{', …' if len(below) > 3 else ''})"
        return ConfigError(f"{where}: {'.'.join(path) or '<top>'}: {msg}")


def _section(ctx: _Ctx, data: Mapping[str, Any], path: tuple[str, ...], allowed: set[str]) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ctx.error(path, f"expected a mapping, got {type(data).__name__}")
    for k in data:
        if k not in allowed:
            raise ctx.error(path + (k,), f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return data


def _get(ctx: _Ctx, data: Mapping[str, Any], path: tuple[str, ...], key: str, conv: Callable[[Any], Any], default: Any) -> Any:
    if key not in data or data[key] is None:
        return default
    try:
        return conv(data[key])
    except (TypeError, ValueError) as e:
        shown = "a value of another type" if key in _SECRET_KEYS else repr(data[key])
        raise ctx.error(path + (key,), f"{e}, got {shown}") from None


#: Keys whose values are never shown in an error message.
_SECRET_KEYS = frozenset({"password"})


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"expected an integer between {lo} and {hi}")
        try:
            i = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer between {lo} and {hi}") from None
        if not lo <= i <= hi or (isinstance(v, float) and v != i):
            raise ValueError(f"expected an integer between {lo} and {hi}")
        return i

    return conv


def _positive_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number of seconds")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not f > 0:
        raise ValueError("expected a positive number of seconds")
    return f


def _str(v: Any) -> str:
    if isinstance(v, (dict, list)):
        raise ValueError("expected a string")
    return str(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(v, str) and v.lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = str(v)
        if s not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return s

    return conv


def _file(base: Path) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if isinstance(v, (dict, list)):
            raise ValueError("expected a file name")
        p = Path(str(v)).expanduser()
        if not p.is_absolute():
            p = base / p
        if not p.is_file():
            raise ValueError(f"file {str(p)!r} does not exist")
        return str(p)

    return conv


# --------------------------------------------------------------------------
# Environment overrides
# --------------------------------------------------------------------------

ENV_PREFIX = "PGJIT_"


def _env_value(raw: str) -> Any:
    # Parse like a YAML scalar so PGJIT_LISTEN__PORT=7000 is an int.
    try:
        v = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return v if isinstance(v, (str, int, float, bool)) or v is None else raw


def apply_env(data: dict[str, Any], environ: Mapping[str, str], lines: dict[tuple[str, ...], int]) -> dict[tuple[str, ...], str]:
    """Apply ``PGJIT_A__B__C`` variables to ``data``; return which paths the
    environment set or created (path -> variable name), so that an error
    about them names the variable rather than a line of the file."""
    origin: dict[tuple[str, ...], str] = {}
    for name in sorted(environ):
        # Single-level names such as PGJIT_CONFIG are not settings paths.
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            continue
        node = data
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
                created = tuple(parts[: i + 1])
                origin.setdefault(created, name)
                lines.pop(created, None)
            node = nxt
        node[parts[-1]] = _env_value(environ[name])
        path = tuple(parts)
        origin[path] = name
        lines.pop(path, None)
    return origin


_OIDC_OWN_KEYS = {"allow_insecure_loopback", "expiry_grace", "jwks_refresh_interval"}


def _oidc(ctx: _Ctx, raw: Any, base: Path) -> OIDCSettings | None:
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise ctx.error(("oidc",), "expected a mapping")
    from pgjit.identity import OIDCConfig, OIDCConfigError

    verifier_keys = {k: v for k, v in raw.items() if k not in _OIDC_OWN_KEYS}
    if verifier_keys.get("jwks_file") is not None:
        # Read at every key refresh, so a missing file would fail every login.
        verifier_keys["jwks_file"] = _get(ctx, raw, ("oidc",), "jwks_file", _file(base), None)
    try:
        verifier = OIDCConfig.from_mapping(verifier_keys, where="oidc")
    except OIDCConfigError as e:
        raise ctx.error(tuple(str(e.key).split(".")), e.message) from None
    path = ("oidc",)
    return OIDCSettings(
        verifier=verifier,
        allow_insecure_loopback=_get(ctx, raw, path, "allow_insecure_loopback", _bool, False),
        expiry_grace=_get(ctx, raw, path, "expiry_grace", _nonnegative_float, 0.0),
        jwks_refresh_interval=_get(ctx, raw, path, "jwks_refresh_interval", _positive_float, 300.0),
    )


def _nonnegative_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number of seconds")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not f >= 0:
        raise ValueError("expected zero or a positive number of seconds")
    return f


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

TOP_KEYS = {"listen", "tls", "timeouts", "limits", "log", "auth", "targets", "oidc", "api", "store", "audit", "approvals"}

#: Sections of the target design that this version does not implement yet.
#: They are refused rather than ignored: whoever writes one believes it works.
NOT_IMPLEMENTED: dict[str, str] = {}


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    p = Path(path)
    fname = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{fname}: cannot read config: {e.strerror}") from None
    return parse_config(text, fname, base=p.parent, environ=os.environ if environ is None else environ)


def parse_config(text: str, fname: str = "<config>", *, base: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    data, lines = load_yaml_with_lines(text, fname)
    if not isinstance(data, dict):
        raise ConfigError(f"{fname}:1: <top>: expected a mapping of sections")
    env = apply_env(data, environ or {}, lines)
    ctx = _Ctx(fname, lines, env)
    base = base or Path(".")
    for sec, what in NOT_IMPLEMENTED.items():
        if sec in data:
            raise ctx.error(
                (sec,), f"the {sec} section ({what}) is not implemented in this version of pgjit: nothing reads it, so remove it"
            )
    _section(ctx, data, (), TOP_KEYS)

    ls = _section(ctx, data.get("listen"), ("listen",), {"host", "port", "max_clients", "max_startup", "reuse_port", "backlog"})
    listen = ListenConfig(
        host=_get(ctx, ls, ("listen",), "host", _str, "127.0.0.1"),
        port=_get(ctx, ls, ("listen",), "port", _int_range(0, 65535), 6432),
        max_clients=_get(ctx, ls, ("listen",), "max_clients", _int_range(1, 1_000_000), 1000),
        max_startup=_get(ctx, ls, ("listen",), "max_startup", _int_range(1, 1_000_000), 128),
        reuse_port=_get(ctx, ls, ("listen",), "reuse_port", _bool, False),
        backlog=_get(ctx, ls, ("listen",), "backlog", _int_range(1, 65535), 512),
    )

    ts = _section(ctx, data.get("tls"), ("tls",), {"cert", "key"})
    tls = ClientTLSConfig(
        cert=_get(ctx, ts, ("tls",), "cert", _file(base), None),
        key=_get(ctx, ts, ("tls",), "key", _file(base), None),
    )
    if bool(tls.cert) != bool(tls.key):
        raise ctx.error(("tls",), "cert and key must be given together")

    to = _section(ctx, data.get("timeouts"), ("timeouts",), {"startup", "auth", "upstream_connect", "shutdown_grace"})
    timeouts = TimeoutsConfig(
        **{k: _get(ctx, to, ("timeouts",), k, _positive_float, getattr(TimeoutsConfig, k)) for k in ("startup", "auth", "upstream_connect", "shutdown_grace")}
    )

    lim = _section(ctx, data.get("limits"), ("limits",), {"max_message_size", "max_buffered"})
    limits = LimitsConfig(
        max_message_size=_get(ctx, lim, ("limits",), "max_message_size", _int_range(1024, 1 << 30), DEFAULT_MAX_MESSAGE_SIZE),
        max_buffered=_get(ctx, lim, ("limits",), "max_buffered", _int_range(1024, 1 << 40), 256 * 1024 * 1024),
    )
    if limits.max_buffered < limits.max_message_size:
        raise ctx.error(("limits", "max_buffered"), "must be at least limits.max_message_size (one whole message must fit)")

    lg = _section(ctx, data.get("log"), ("log",), {"level", "file"})
    log = LogConfig(
        level=_get(ctx, lg, ("log",), "level", _choice("debug", "info", "warning", "error"), "info"),
        file=_get(ctx, lg, ("log",), "file", _str, None),
    )

    oidc = _oidc(ctx, data.get("oidc"), base)
    au = _section(ctx, data.get("auth"), ("auth",), {"mode"})
    auth = AuthConfig(
        mode=_get(ctx, au, ("auth",), "mode", _choice("loopback_any_password", "oidc"), "oidc" if oidc else "loopback_any_password")
    )
    if auth.mode == "oidc" and oidc is None:
        raise ctx.error(("auth", "mode"), "mode oidc needs an oidc section")
    if oidc is not None and auth.mode != "oidc":
        raise ctx.error(("auth", "mode"), "an oidc section is configured: remove auth.mode or set it to oidc")

    tg = data.get("targets")
    if not tg:
        raise ctx.error(("targets",), "at least one target database is required")
    if not isinstance(tg, dict):
        raise ctx.error(("targets",), "expected a mapping of database name to upstream")
    targets: dict[str, TargetConfig] = {}
    for name, raw in tg.items():
        path = ("targets", name)
        t = _section(ctx, raw, path, {"host", "port", "database", "user", "password", "password_file", "tls", "policy", "jit"})
        if "host" not in t:
            raise ctx.error(path + ("host",), "required")
        if "user" not in t:
            raise ctx.error(path + ("user",), "required")
        password = _get(ctx, t, path, "password", _str, None)
        if password is None and t.get("password_file"):
            pf = _get(ctx, t, path, "password_file", _file(base), None)
            try:
                password = Path(pf).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ctx.error(path + ("password_file",), f"cannot read {pf!r}: {e.strerror}") from None
            except UnicodeDecodeError:
                raise ctx.error(path + ("password_file",), f"{pf!r} is not UTF-8 text") from None
        tt = _section(ctx, t.get("tls"), path + ("tls",), {"mode", "ca", "server_name"})
        utls = UpstreamTLSConfig(
            mode=_get(ctx, tt, path + ("tls",), "mode", _choice("disable", "require", "verify-full"), "disable"),
            ca=_get(ctx, tt, path + ("tls",), "ca", _file(base), None),
            server_name=_get(ctx, tt, path + ("tls",), "server_name", _str, None),
        )
        if utls.mode == "verify-full" and not utls.ca:
            raise ctx.error(path + ("tls", "ca"), "verify-full needs a CA file")
        policy_path = _get(ctx, t, path, "policy", _file(base), None)
        policy = None
        if policy_path:
            from pgjit.policy import Policy, PolicyError

            try:
                policy = Policy.load(policy_path)
            except PolicyError as e:
                raise ConfigError(f"{ctx.error(path + ('policy',), 'the policy file is invalid:')}\n{e}") from None
        elif oidc is not None:
            raise ctx.error(path + ("policy",), "required with oidc: the policy's access section maps groups to grants")
        jt = _section(ctx, t.get("jit"), path + ("jit",), {"owner_role", "sweep_interval", "setup_grace", "scram_iterations"})
        jit = JitConfig(
            owner_role=_get(ctx, jt, path + ("jit",), "owner_role", _str, "pgjit_owner"),
            sweep_interval=_get(ctx, jt, path + ("jit",), "sweep_interval", _positive_float, 60.0),
            setup_grace=_get(ctx, jt, path + ("jit",), "setup_grace", _positive_float, 120.0),
            scram_iterations=_get(ctx, jt, path + ("jit",), "scram_iterations", _int_range(4096, 1_000_000), 4096),
        )
        targets[str(name)] = TargetConfig(
            policy_path=policy_path,
            policy=policy,
            jit=jit,
            name=str(name),
            host=_get(ctx, t, path, "host", _str, ""),
            port=_get(ctx, t, path, "port", _int_range(1, 65535), 5432),
            database=_get(ctx, t, path, "database", _str, str(name)),
            user=_get(ctx, t, path, "user", _str, ""),
            password=password,
            tls=utls,
        )

    api = None
    if "api" in data:
        ap = _section(ctx, data.get("api"), ("api",), {"host", "port", "probe_interval"})
        api = ApiConfig(
            host=_get(ctx, ap, ("api",), "host", _str, "127.0.0.1"),
            port=_get(ctx, ap, ("api",), "port", _int_range(0, 65535), 9187),
            probe_interval=_get(ctx, ap, ("api",), "probe_interval", _positive_float, 5.0),
        )

    store, audit = _store_and_audit(ctx, data, base)
    approvals = None
    if "approvals" in data:
        ap = _section(ctx, data.get("approvals"), ("approvals",),
                      {"hold_timeout", "reuse_window", "single_use", "poll_interval", "webhook", "webhook_format", "public_url"})
        if store is None:
            raise ctx.error(("approvals",), "approvals need the store (and audit) sections: requests and decisions live in the store")
        approvals = ApprovalsConfig(
            hold_timeout=_get(ctx, ap, ("approvals",), "hold_timeout", _positive_float, 300.0),
            reuse_window=_get(ctx, ap, ("approvals",), "reuse_window", _positive_float, 600.0),
            single_use=_get(ctx, ap, ("approvals",), "single_use", _bool, True),
            poll_interval=_get(ctx, ap, ("approvals",), "poll_interval", _positive_float, 0.5),
            webhook=_get(ctx, ap, ("approvals",), "webhook", _str, None),
            webhook_format=_get(ctx, ap, ("approvals",), "webhook_format", _choice("json", "slack"), "json"),
            public_url=_get(ctx, ap, ("approvals",), "public_url", _str, None),
        )

    return Config(
        source=fname,
        listen=listen,
        tls=tls,
        timeouts=timeouts,
        limits=limits,
        log=log,
        auth=auth,
        targets=targets,
        oidc=oidc,
        api=api,
        store=store,
        audit=audit,
        approvals=approvals,
        env_overrides={".".join(p): v for p, v in sorted(env.items()) if v[len(ENV_PREFIX) :].lower().split("__") == list(p)},
    )


def _store_and_audit(ctx: _Ctx, data: Mapping[str, Any], base: Path) -> tuple[StoreConfig | None, AuditConfig | None]:
    if "audit" not in data:
        if "store" in data:
            raise ctx.error(("store",), "a store without an audit section: add audit (with checkpoint_key_file) or remove store")
        return None, None
    st = _section(ctx, data.get("store"), ("store",), {"url", "data_dir"})
    data_dir = _get(ctx, st, ("store",), "data_dir", _str, str(base / "pgjit-data"))
    data_dir = str((base / data_dir) if not Path(data_dir).is_absolute() else Path(data_dir))
    url = _get(ctx, st, ("store",), "url", _str, f"sqlite:///{Path(data_dir) / 'audit.db'}")
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")):
        raise ctx.error(("store", "url"), "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
    au = _section(ctx, data.get("audit"), ("audit",), {
        "checkpoint_key", "checkpoint_key_file", "on_store_failure", "redact_literals", "buffer",
        "checkpoint_every", "checkpoint_seconds", "sink", "bind_parameters"})
    key_text = _get(ctx, au, ("audit",), "checkpoint_key", _str, None)
    key_file = _get(ctx, au, ("audit",), "checkpoint_key_file", _file(base), None)
    if key_text is None and key_file is None:
        raise ctx.error(("audit", "checkpoint_key_file"),
                        "required: the key that signs the audit trail's checkpoints (at least 16 bytes; "
                        "e.g. head -c 32 /dev/urandom | base64 > audit.key), or checkpoint_key / PGJIT_AUDIT__CHECKPOINT_KEY")
    if key_text is not None:
        key = key_text.strip().encode()
    else:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as e:
            raise ctx.error(("audit", "checkpoint_key_file"), f"cannot read {key_file!r}: {e.strerror}") from None
    if len(key) < 16:
        raise ctx.error(("audit", "checkpoint_key_file" if key_text is None else "checkpoint_key"), "must be at least 16 bytes")
    audit = AuditConfig(
        checkpoint_key=key,
        checkpoint_key_file=key_file,
        on_store_failure=_get(ctx, au, ("audit",), "on_store_failure", _choice("fail_closed", "fail_open"), "fail_closed"),
        redact_literals=_get(ctx, au, ("audit",), "redact_literals", _bool, False),
        bind_parameters=_get(ctx, au, ("audit",), "bind_parameters", _bool, False),
        buffer=_get(ctx, au, ("audit",), "buffer", _int_range(100, 10_000_000), 100_000),
        checkpoint_every=_get(ctx, au, ("audit",), "checkpoint_every", _int_range(1, 1_000_000), 1000),
        checkpoint_seconds=_get(ctx, au, ("audit",), "checkpoint_seconds", _positive_float, 10.0),
        sink=_get(ctx, au, ("audit",), "sink", lambda v: str(base / _str(v)) if not Path(_str(v)).is_absolute() else _str(v), None),
    )
    return StoreConfig(url=url, data_dir=data_dir), audit
