"""Statement classifier: the facts of every statement in a SQL string.

:func:`analyze` parses a string with pglast (PostgreSQL's own parser, through
libpg_query) and returns one :class:`Facts` per top-level statement. Everything a
statement reaches — CTEs, subqueries in any position, EXPLAIN's and PREPARE's
statement, rule actions, the bodies of ``LANGUAGE sql`` and ``LANGUAGE plpgsql``
functions and of DO blocks — is folded into the facts of the top-level statement
that contains it, so a single rule check sees everything.

Speed: we walk the JSON that ``pglast.parser.parse_sql_json`` produces (plain
dicts and lists from :func:`json.loads`) rather than building pglast's Python AST
objects, which costs about ten times more. Results are cached in an LRU keyed on
the statement text (:func:`cache_info`, :func:`clear_cache`, :func:`benchmark`).

Naming conventions used in the facts:

* relation names are as PostgreSQL folds them (lower case unless quoted), joined
  with dots as written: ``orders``, ``public.orders``, ``"Mixed"`` → ``Mixed``.
  A relation created ``TEMP``/``TEMPORARY`` without a schema is recorded as
  ``pg_temp.<name>``. A read PostgreSQL performs by name from inside a function
  (``table_to_xml`` and friends) is recorded as the unknown relation ``?``.
* function names are lower-cased and kept as written: ``pg_catalog.pg_read_file``
  if the SQL qualified it, else ``pg_read_file``. Dangerous-function lookup and
  policy globs also try the bare name (the part after the last dot).
* setting (GUC) names are lower-cased; ``?`` stands for a name that is not a
  literal (``set_config(some_column, …)``).

This module never imports trio, sockets or the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
import threading
from functools import lru_cache
from typing import Any, Final

from pglast import parser as _pg

_loads: Callable[[str], Any]
try:  # orjson decodes libpg_query's JSON about twice as fast, if it is installed
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

from pgjit.policy.catalogue import (
    DYNAMIC_CATEGORIES,
    FOREIGN_OPTION_CATEGORIES,
    SYSTEM_VIEW_CATEGORIES,
    categories_for,
)
from pgjit.policy.encodings import encoding_is_modelled

__all__ = [
    "KINDS",
    "Analysis",
    "CopyInfo",
    "Facts",
    "ParseFailure",
    "analyze",
    "analyze_uncached",
    "benchmark",
    "cache_info",
    "clear_cache",
    "merge_facts",
]

CACHE_SIZE: Final = 4096
#: How deep bodies may nest (a function whose body creates a function …).
MAX_BODY_DEPTH: Final = 8

ROLE_SETTINGS: Final = frozenset({"role", "session_authorization"})

_LEXER_SETTINGS: Final = frozenset({"standard_conforming_strings", "client_encoding", "backslash_quote"})


def _changes_lexer(name: str, value: str | None, has_value: bool) -> bool:
    """Would setting ``name`` to ``value`` make the server tokenize differently?

    ``has_value`` is False for RESET / SET … TO DEFAULT (back to the startup value).
    A value that is not a literal (``value`` None) is assumed unsafe.
    """
    if name not in _LEXER_SETTINGS or not has_value:
        return False
    if value is None:
        return True
    if name == "standard_conforming_strings":
        return not _bool_is_on(value)
    if name == "client_encoding":
        return not encoding_is_modelled(value)
    return False  # backslash_quote only matters when standard_conforming_strings is off


def _bool_is_on(value: str) -> bool:
    # PostgreSQL's parse_bool: on, true, yes, 1 and unique prefixes of true/yes.
    v = value.strip().lower()
    return v in ("on", "1") or (len(v) >= 1 and ("true".startswith(v) or "yes".startswith(v)))


UNKNOWN: Final = "?"


class ParseFailure(Exception):
    """pglast could not parse the string; the gateway answers 42601, never forwards.

    ``cursorpos`` is PostgreSQL's convention: a 1-based *character* position in
    the statement string (0 when unknown), ready for ErrorResponse's ``P`` field.
    """

    def __init__(self, message: str, cursorpos: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.cursorpos = cursorpos


@dataclass(frozen=True, slots=True)
class CopyInfo:
    """What a COPY statement moves, and from or to where."""

    direction: str  # "from" (into a table) or "to" (out of the server)
    relation: str | None  # COPY t …
    query: bool  # COPY (query) TO …
    program: bool  # COPY … PROGRAM 'cmd'
    file: bool  # a server-side file path (not STDIN/STDOUT, not PROGRAM)
    target: str | None  # the path or the command, as written


@dataclass(frozen=True, slots=True)
class Facts:
    """The facts of one top-level statement, nested statements folded in."""

    kind: str
    kinds: frozenset[str]
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    settings: frozenset[str] = frozenset()
    dangerous: frozenset[str] = frozenset()
    write_without_where: bool = False
    role_change: bool = False
    dynamic_sql: bool = False
    changes_lexer: bool = False  # standard_conforming_strings off / unsafe client_encoding
    operators: frozenset[str] = frozenset()  # operator names used (resolved through the catalog)
    casts: frozenset[str] = frozenset()  # type names cast to (user casts resolved through the catalog)
    # Filled in from the upstream's catalog (pgjit.policy.resolve); empty without one.
    altered_functions: tuple[str, ...] = ()  # functions renamed/moved/re-owned/changed
    created: tuple[str, ...] = ()  # functions ("f", "s.f") and operators ("operator ###") created
    # UPDATE/DELETE bounded only by `col IS NOT NULL`: (relation, columns);
    # the catalog says whether the columns are NOT NULL (then: unbounded).
    null_bounds: tuple[tuple[str, tuple[str, ...]], ...] = ()
    user_functions: frozenset[str] = frozenset()  # functions reached that are not the system's
    calls_user_function: bool = False
    security_definer: bool = False
    explain_analyze: bool = False
    executes_prepared: frozenset[str] = frozenset()
    prepares: str | None = None
    deallocates: str | None = None  # a name, or "*" for DEALLOCATE ALL
    copies: tuple[CopyInfo, ...] = ()
    copy_program: bool = False  # some COPY … PROGRAM
    copy_file: bool = False  # some COPY to or from a server-side file
    bodies: tuple[str, ...] = ()  # languages of the bodies that were read
    unknown_body: bool = False
    unknown_reasons: tuple[str, ...] = ()
    text: str = ""
    location: int = 0  # character offset of the statement in the analysed string
    # True when a fact was derived from the value of a constant (set_config's
    # name, a SET value, a function body, a COPY file ...). pglast's
    # fingerprint ignores constants, so only literal-insensitive facts may be
    # shared between statements with the same fingerprint.
    literal_sensitive: bool = False

    @property
    def relations(self) -> frozenset[str]:
        return self.reads | self.writes

    @property
    def copy(self) -> CopyInfo | None:
        return self.copies[0] if self.copies else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (sets become sorted lists)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, frozenset):
                value = sorted(value)
            elif name == "copies":
                value = [
                    {k: getattr(c, k) for k in c.__dataclass_fields__} for c in value
                ]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class Analysis:
    """All statements of one SQL string, in order."""

    sql: str
    statements: tuple[Facts, ...] = field(default_factory=tuple)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.statements)

    def __len__(self) -> int:
        return len(self.statements)


# --------------------------------------------------------------------------
# statement kinds

_OBJECT_TYPES: Final = ["access_method", "aggregate", "amop", "amproc", "attribute", "cast", "column", "collation", "conversion", "database", "default", "defacl", "domain", "domconstraint", "event_trigger", "extension", "fdw", "foreign_server", "foreign_table", "function", "index", "language", "largeobject", "matview", "opclass", "operator", "opfamily", "parameter_acl", "policy", "procedure", "publication", "publication_namespace", "publication_rel", "role", "routine", "rule", "schema", "sequence", "subscription", "statistic_ext", "tabconstraint", "table", "tablespace", "transform", "trigger", "tsconfiguration", "tsdictionary", "tsparser", "tstemplate", "type", "user_mapping", "view"]
_OBJECT_ALIASES: Final = {"statistic_ext": "statistics"}
_OBJECT_NAMES: Final = tuple(_OBJECT_ALIASES.get(o, o) for o in _OBJECT_TYPES)

# Statement node → kind, for nodes whose kind does not depend on their fields.
_STATIC_KINDS: Final[dict[str, str]] = {
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "CreateStmt": "create_table",
    "CreateForeignTableStmt": "create_foreign_table",
    "ViewStmt": "create_view",
    "IndexStmt": "create_index",
    "CreateSeqStmt": "create_sequence",
    "AlterSeqStmt": "alter_sequence",
    "CreateSchemaStmt": "create_schema",
    "CreateTrigStmt": "create_trigger",
    "CreateEventTrigStmt": "create_event_trigger",
    "AlterEventTrigStmt": "alter_event_trigger",
    "RuleStmt": "create_rule",
    "CreateDomainStmt": "create_domain",
    "AlterDomainStmt": "alter_domain",
    "CompositeTypeStmt": "create_type",
    "CreateEnumStmt": "create_type",
    "CreateRangeStmt": "create_type",
    "AlterEnumStmt": "alter_type",
    "AlterTypeStmt": "alter_type",
    "CreatedbStmt": "create_database",
    "AlterDatabaseStmt": "alter_database",
    "AlterDatabaseSetStmt": "alter_database",
    "AlterDatabaseRefreshCollStmt": "alter_database",
    "DropdbStmt": "drop_database",
    "CreateRoleStmt": "create_role",
    "AlterRoleStmt": "alter_role",
    "AlterRoleSetStmt": "alter_role",
    "DropRoleStmt": "drop_role",
    "CreateTableSpaceStmt": "create_tablespace",
    "DropTableSpaceStmt": "drop_tablespace",
    "AlterTableSpaceOptionsStmt": "alter_tablespace",
    "AlterTableMoveAllStmt": "alter_tablespace",
    "CreateExtensionStmt": "create_extension",
    "AlterExtensionStmt": "alter_extension",
    "AlterExtensionContentsStmt": "alter_extension",
    "CreateFdwStmt": "create_fdw",
    "AlterFdwStmt": "alter_fdw",
    "CreateForeignServerStmt": "create_foreign_server",
    "AlterForeignServerStmt": "alter_foreign_server",
    "CreateUserMappingStmt": "create_user_mapping",
    "AlterUserMappingStmt": "alter_user_mapping",
    "DropUserMappingStmt": "drop_user_mapping",
    "ImportForeignSchemaStmt": "import_foreign_schema",
    "CreatePolicyStmt": "create_policy",
    "AlterPolicyStmt": "alter_policy",
    "CreatePublicationStmt": "create_publication",
    "AlterPublicationStmt": "alter_publication",
    "CreateSubscriptionStmt": "create_subscription",
    "AlterSubscriptionStmt": "alter_subscription",
    "DropSubscriptionStmt": "drop_subscription",
    "CreateCastStmt": "create_cast",
    "CreateConversionStmt": "create_conversion",
    "CreateOpClassStmt": "create_opclass",
    "CreateOpFamilyStmt": "create_opfamily",
    "AlterOpFamilyStmt": "alter_opfamily",
    "AlterOperatorStmt": "alter_operator",
    "CreatePLangStmt": "create_language",
    "CreateAmStmt": "create_access_method",
    "CreateStatsStmt": "create_statistics",
    "AlterStatsStmt": "alter_statistics",
    "CreateTransformStmt": "create_transform",
    "AlterCollationStmt": "alter_collation",
    "AlterTSConfigurationStmt": "alter_tsconfiguration",
    "AlterTSDictionaryStmt": "alter_tsdictionary",
    "AlterDefaultPrivilegesStmt": "alter_default_privileges",
    "AlterObjectDependsStmt": "alter_extension",
    "ReplicaIdentityStmt": "alter_table",
    "AlterSystemStmt": "alter_system",
    "TruncateStmt": "truncate",
    "CommentStmt": "comment",
    "SecLabelStmt": "security_label",
    "DoStmt": "do",
    "CallStmt": "call",
    "PrepareStmt": "prepare",
    "ExecuteStmt": "execute",
    "DeallocateStmt": "deallocate",
    "ExplainStmt": "explain",
    "ListenStmt": "listen",
    "UnlistenStmt": "unlisten",
    "NotifyStmt": "notify",
    "DiscardStmt": "discard",
    "DeclareCursorStmt": "declare_cursor",
    "ClosePortalStmt": "close",
    "VariableShowStmt": "show",
    "LoadStmt": "load",
    "CheckPointStmt": "checkpoint",
    "ReindexStmt": "reindex",
    "ClusterStmt": "cluster",
    "RefreshMatViewStmt": "refresh_matview",
    "ConstraintsSetStmt": "set_constraints",
    "ReassignOwnedStmt": "reassign_owned",
    "DropOwnedStmt": "drop_owned",
    "ReturnStmt": "return",
    "PLAssignStmt": "plpgsql_assign",
}

_TRANSACTION_KINDS: Final[dict[str, str]] = {
    "TRANS_STMT_BEGIN": "begin",
    "TRANS_STMT_START": "begin",
    "TRANS_STMT_COMMIT": "commit",
    "TRANS_STMT_ROLLBACK": "rollback",
    "TRANS_STMT_SAVEPOINT": "savepoint",
    "TRANS_STMT_RELEASE": "release_savepoint",
    "TRANS_STMT_ROLLBACK_TO": "rollback_to_savepoint",
    "TRANS_STMT_PREPARE": "prepare_transaction",
    "TRANS_STMT_COMMIT_PREPARED": "commit_prepared",
    "TRANS_STMT_ROLLBACK_PREPARED": "rollback_prepared",
}

_DYNAMIC_KINDS: Final = frozenset(
    {
        "select",
        "select_into",
        "lock",
        "lock_access_share",
        "copy_from",
        "copy_to",
        "set",
        "reset",
        "set_role",
        "set_session_authorization",
        "set_transaction",
        "grant",
        "revoke",
        "vacuum",
        "analyze",
        "fetch",
        "move",
        "create_table_as",
        "create_matview",
        "create_function",
        "create_procedure",
        "alter_function",
        "alter_procedure",
        "alter_routine",
        "unknown",
    }
    | set(_TRANSACTION_KINDS.values())
    | {"drop_" + o for o in _OBJECT_NAMES}
    | {"alter_" + o for o in _OBJECT_NAMES}
    | {"create_" + o for o in _OBJECT_NAMES}
)

#: Every statement kind the classifier can report (policy kind globs are checked against it).
KINDS: Final[frozenset[str]] = frozenset(_STATIC_KINDS.values()) | _DYNAMIC_KINDS

#: Kinds whose directly named relations are read, not written.
_READ_KINDS: Final = frozenset(
    {
        "select",
        "lock_access_share",
        "explain",
        "prepare",
        "execute",
        "declare_cursor",
        "copy_to",
        "show",
        "call",
        "do",
        "return",
        "plpgsql_assign",
    }
)

# Drop object types that name relations (recorded as writes).
_RELATION_DROPS: Final = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_INDEX",
        "OBJECT_SEQUENCE",
        "OBJECT_FOREIGN_TABLE",
    }
)


def _obj(prefix: str, objtype: str | None) -> str:
    if not objtype:
        return "unknown"
    name = objtype.removeprefix("OBJECT_").lower()
    return prefix + _OBJECT_ALIASES.get(name, name)


def _kind_of(tname: str, body: dict[str, Any]) -> str:
    kind = _STATIC_KINDS.get(tname)
    if kind is not None:
        return kind
    if tname == "SelectStmt":
        return "select_into" if "intoClause" in body else "select"
    if tname == "LockStmt":
        # ACCESS SHARE is the lock every SELECT takes (pg_dump takes it
        # explicitly); any stronger mode blocks other sessions' writes.
        return "lock_access_share" if body.get("mode") == 1 else "lock"
    if tname == "VariableSetStmt":
        return _set_kind(body)
    if tname == "TransactionStmt":
        return _TRANSACTION_KINDS.get(body.get("kind", ""), "begin")
    if tname == "CopyStmt":
        return "copy_from" if body.get("is_from") else "copy_to"
    if tname in ("GrantStmt", "GrantRoleStmt"):
        return "grant" if body.get("is_grant") else "revoke"
    if tname == "VacuumStmt":
        return "vacuum" if body.get("is_vacuumcmd") else "analyze"
    if tname == "FetchStmt":
        return "move" if body.get("ismove") else "fetch"
    if tname == "CreateFunctionStmt":
        return "create_procedure" if body.get("is_procedure") else "create_function"
    if tname == "CreateTableAsStmt":
        return "create_matview" if body.get("objtype") == "OBJECT_MATVIEW" else "create_table_as"
    if tname == "DropStmt":
        return _obj("drop_", body.get("removeType"))
    if tname == "AlterTableStmt":
        return _obj("alter_", body.get("objtype"))
    if tname == "RenameStmt":
        return _obj("alter_", body.get("renameType"))
    if tname in ("AlterObjectSchemaStmt", "AlterOwnerStmt"):
        return _obj("alter_", body.get("objectType"))
    if tname == "AlterFunctionStmt":
        return _obj("alter_", body.get("objtype") or "OBJECT_FUNCTION")
    if tname == "DefineStmt":
        return _obj("create_", body.get("kind"))
    return "unknown"


def _set_kind(body: dict[str, Any]) -> str:
    vkind = body.get("kind", "")
    name = (body.get("name") or "").lower()
    if vkind in ("VAR_RESET", "VAR_RESET_ALL"):
        return "reset"
    if vkind == "VAR_SET_MULTI":
        return "set_transaction"
    if name == "role":
        return "set_role"
    if name == "session_authorization":
        return "set_session_authorization"
    return "set"


# --------------------------------------------------------------------------
# the walker


def _is_container(value: object) -> bool:
    t = type(value)
    return t is dict or t is list


# Node types that can never contain anything we care about.
_LEAVES: Final = frozenset(
    {
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "A_Const",
        "ParamRef",
        "A_Star",
        "TypeName",
        "RoleSpec",
        "SQLValueFunction",
        "SetToDefault",
        "CurrentOfExpr",
        "LockingClause",
        "SortGroupClause",
        "TriggerTransition",
        "ObjectWithArgs",
        "AccessPriv",
    }
)


class _ConstReads(threading.local):
    count = 0


_const_reads = _ConstReads()


def _sval(node: Any) -> str | None:
    """The string of a ``String`` node or of a string ``A_Const``, else None."""
    if type(node) is not dict:
        return None
    s = node.get("String")
    if s is not None:
        return str(s.get("sval", ""))
    c = node.get("A_Const")
    if c is not None:
        _const_reads.count += 1  # a fact now depends on a constant's value
        v = c.get("sval")
        if v is not None:
            return str(v.get("sval", ""))
        return None
    tc = node.get("TypeCast")
    if tc is not None:
        return _sval(tc.get("arg"))
    return None


def _names(items: Iterable[Any]) -> list[str]:
    return [(_sval(i) or "") for i in items]


def _qualified(names: list[str]) -> list[str]:
    """An object name without its database part (db.schema.name -> schema.name)."""
    return names[-2:] if len(names) > 2 else names


def _rv_name(rv: dict[str, Any], created: bool = False) -> str:
    rel = str(rv.get("relname", ""))
    schema = rv.get("schemaname")
    if schema:
        # db.schema.rel: PostgreSQL accepts only the current database there,
        # so the name is schema.rel.
        return f"{schema}.{rel}"
    if created and rv.get("relpersistence") == "t":
        return "pg_temp." + rel
    return rel


_EMPTY: Final[frozenset[str]] = frozenset()


class _Collector:
    """Mutable accumulator for one top-level statement (and everything nested in it)."""

    __slots__ = (
        "bodies",
        "casts",
        "changes_lexer",
        "operators",
        "pinned_names",
        "security_definer",
        "altered_functions",
        "created",
        "null_bounds",
        "copies",
        "dangerous",
        "deallocates",
        "depth",
        "dynamic_sql",
        "executes_prepared",
        "explain_analyze",
        "functions",
        "kinds",
        "prepares",
        "reads",
        "role_change",
        "settings",
        "stmt_depth",
        "stmt_text",
        "unknown",
        "write_without_where",
        "writes",
    )

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.functions: set[str] = set()
        self.settings: set[str] = set()
        self.dangerous: set[str] = set()
        self.write_without_where = False
        self.role_change = False
        self.dynamic_sql = False
        self.changes_lexer = False
        self.operators: set[str] = set()
        self.casts: set[str] = set()
        # Setting names pinned by the WHERE clause of a SELECT over pg_settings
        # (pg_dump's set_config(name, …) FROM pg_settings WHERE name = '…').
        self.pinned_names: tuple[str, ...] | None = None
        self.altered_functions: list[str] = []  # checked against the catalog
        self.created: list[str] = []
        self.null_bounds: list[tuple[str, tuple[str, ...]]] = []
        self.security_definer = False
        self.explain_analyze = False
        self.executes_prepared: set[str] = set()
        self.prepares: str | None = None
        self.deallocates: str | None = None
        self.copies: list[CopyInfo] = []
        self.bodies: list[str] = []
        self.unknown: list[str] = []
        self.depth = 0  # nesting of bodies (texts inside texts)
        self.stmt_text = ""  # text of the statement being walked, in the current text
        self.stmt_depth = 0  # statement nesting within the current text

    # ---- generic walk ------------------------------------------------------

    def walk(self, node: Any, ctes: frozenset[str], write: bool) -> None:
        # The hot loop of the classifier: keep it free of needless calls.
        if type(node) is list:
            for item in node:
                if type(item) is dict or type(item) is list:
                    self.walk(item, ctes, write)
            return
        if type(node) is not dict:
            return
        if len(node) == 1:
            for key in node:
                break
            if key in _LEAVES:
                return
            handler = _NODE_HANDLERS.get(key)
            if handler is not None:
                handler(self, node[key], ctes, write)
                return
            if key[0].isupper():
                if key.endswith("Stmt"):
                    self.statement(key, node[key], ctes)
                    return
                for value in node[key].values():
                    if type(value) is dict or type(value) is list:
                        self.walk(value, ctes, write)
                return
        # An untyped struct: a field whose type is a specific node type.
        if "relname" in node:
            self.rangevar(node, ctes, write)
        elif "funcformat" in node:
            self.funccall(node, ctes)
        elif str(node.get("kind", "")).startswith("VAR_"):
            self.statement("VariableSetStmt", node, ctes)
        else:
            for value in node.values():
                if type(value) is dict or type(value) is list:
                    self.walk(value, ctes, write)

    def fields(
        self, body: dict[str, Any], ctes: frozenset[str], write: bool, skip: tuple[str, ...] = ()
    ) -> None:
        for key, value in body.items():
            if (type(value) is dict or type(value) is list) and key not in skip:
                self.walk(value, ctes, write)

    # ---- leaves of interest --------------------------------------------------

    def rangevar(self, rv: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
        if write:
            self.writes.add(_rv_name(rv, created=True))
            return
        if "schemaname" not in rv and rv.get("relname") in ctes:
            return  # a reference to a CTE, not a relation
        self.reads.add(_rv_name(rv))
        cats = SYSTEM_VIEW_CATEGORIES.get(str(rv.get("relname", "")).lower())
        if cats and rv.get("schemaname") in (None, "pg_catalog"):
            self.dangerous |= cats

    def function_ref(self, names: list[str], bound: bool = False) -> str:
        """A function reached by name: called, or bound to an operator, an
        aggregate, a cast, a type, a trigger … (``bound``: its name is not
        what will call it, so a call of set_config through it sets any setting)."""
        names = _qualified(names)
        full = ".".join(names).lower()
        bare = names[-1].lower() if names else ""
        self.functions.add(full)
        cats = categories_for(bare) | categories_for(full) if "." in full else categories_for(bare)
        if cats:
            self.dangerous |= cats
            if cats & DYNAMIC_CATEGORIES:
                self.dynamic_sql = True
                self.reads.add(UNKNOWN)
                self.writes.add(UNKNOWN)
        if bound and bare == "set_config":
            self.settings.add(UNKNOWN)
            self.role_change = True
            self.changes_lexer = True
            self.dangerous.add("server_control")
        return bare

    def funccall(self, fc: dict[str, Any], ctes: frozenset[str]) -> None:
        bare = self.function_ref(_names(fc.get("funcname", ())))
        if bare == "set_config":
            args: list[Any] = fc.get("args") or []
            name = _sval(args[0]) if args else None
            pinned = self.pinned_names
            if name is None and pinned and args and _is_name_column(args[0]):
                for pinned_name in pinned:
                    self.set_config(pinned_name, args)
            elif name is None:
                self.settings.add(UNKNOWN)
                self.role_change = True
                self.changes_lexer = True
                self.dangerous.add("server_control")
            else:
                self.set_config(name, args)
        self.fields(fc, ctes, False, skip=("funcname",))

    def set_config(self, name: str, args: list[Any]) -> None:
        name = name.strip().lower()
        self.settings.add(name)
        if name in ROLE_SETTINGS:
            self.role_change = True
            self.dangerous.add("server_control")
        value = _sval(args[1]) if len(args) > 1 else None
        if _changes_lexer(name, value, True):
            self.changes_lexer = True

    def alter_function(self, names: list[str]) -> None:
        """An existing function is renamed, moved, re-owned or changed: it
        carries its facts, and one of the system's (or of the catalogue) is a
        catalog change."""
        names = _qualified(names)
        bare = self.function_ref(names, bound=True)
        if (len(names) == 2 and names[0].lower() in ("pg_catalog", "information_schema")) or categories_for(bare):
            self.dangerous.add("catalog_change")
        self.altered_functions.append(".".join(names).lower())

    def setting_write(self, names: tuple[str, ...] | None, value: str | None) -> None:
        """A write to pg_settings: a settings change (through its update rule)."""
        if not names:
            self.settings.add(UNKNOWN)
            self.role_change = True
            self.changes_lexer = True
            self.dangerous.add("server_control")
            return
        for name in names:
            name = name.lower()
            self.settings.add(name)
            if name in ROLE_SETTINGS:
                self.role_change = True
                self.dangerous.add("server_control")
            if _changes_lexer(name, value, True):
                self.changes_lexer = True

    def attribute_call(self, name: str | None) -> None:
        """A name that may be a function called in attribute notation (``(arg).f``).

        Only names in the dangerous-function catalogue are recorded: anything
        else is taken to be a column.
        """
        if not name:
            return
        bare = name.lower()
        cats = categories_for(bare)
        if cats:
            self.functions.add(bare)
            self.dangerous |= cats
            if cats & DYNAMIC_CATEGORIES:
                self.dynamic_sql = True
                self.reads.add(UNKNOWN)
                self.writes.add(UNKNOWN)

    # ---- statements ----------------------------------------------------------

    def statement(self, tname: str, body: dict[str, Any], ctes: frozenset[str]) -> None:
        kind = _kind_of(tname, body)
        self.kinds.add(kind)
        self.stmt_depth += 1
        try:
            with_clause = body.get("withClause")
            if with_clause:
                ctes = self.with_clause(with_clause, ctes)
            handler = _STMT_HANDLERS.get(tname)
            if handler is not None:
                handler(self, body, ctes, kind)
            else:
                self.fields(body, ctes, kind not in _READ_KINDS, skip=("withClause",))
        finally:
            self.stmt_depth -= 1

    def with_clause(self, wc: dict[str, Any], outer: frozenset[str]) -> frozenset[str]:
        ctes = [c.get("CommonTableExpr", c) for c in wc.get("ctes", ())]
        names = [c.get("ctename", "") for c in ctes]
        everything = outer | frozenset(names)
        recursive = bool(wc.get("recursive"))
        for i, cte in enumerate(ctes):
            visible = everything if recursive else outer | frozenset(names[:i])
            query = cte.get("ctequery")
            if query is not None:
                self.walk(query, visible, False)
        return everything

    def sql_text(self, text: str, what: str) -> None:
        """Fold the statements of a nested SQL text (a body) into these facts."""
        if self.depth >= MAX_BODY_DEPTH:
            self.unknown.append(f"{what}: bodies nested too deeply")
            return
        try:
            parsed = _loads(_pg.parse_sql_json(text))
        except (_pg.ParseError, RecursionError, ValueError) as exc:
            self.unknown.append(f"{what}: cannot parse: {exc}")
            return
        saved = (self.stmt_text, self.stmt_depth)
        self.depth += 1
        try:
            for raw in parsed.get("stmts", ()):
                stmt = raw.get("stmt")
                if not stmt:
                    continue
                self.stmt_text = _slice(text, raw)
                self.stmt_depth = 0
                self.walk(stmt, _EMPTY, False)
        finally:
            self.depth -= 1
            self.stmt_text, self.stmt_depth = saved

    def plpgsql(self, text: str, what: str) -> None:
        """Read a PL/pgSQL function or DO block given as a complete statement text."""
        if self.depth >= MAX_BODY_DEPTH:
            self.unknown.append(f"{what}: bodies nested too deeply")
            return
        try:
            functions = _loads(_pg.parse_plpgsql_json(text))
        except (_pg.ParseError, RecursionError, ValueError) as exc:
            self.unknown.append(f"{what}: cannot read PL/pgSQL body: {exc}")
            return
        if not isinstance(functions, list) or len(functions) != 1:
            self.unknown.append(f"{what}: cannot read PL/pgSQL body")
            return
        self.bodies.append("plpgsql")
        self.plwalk(functions[0], what)

    def plwalk(self, node: Any, what: str) -> None:
        t = type(node)
        if t is list:
            for item in node:
                if type(item) is dict or type(item) is list:
                    self.plwalk(item, what)
            return
        if t is not dict:
            return
        for key, value in node.items():
            if key == "PLpgSQL_expr":
                self.plexpr(value, what)
                continue
            if key in ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors", "dynquery"):
                self.dynamic_sql = True
                self.reads.add(UNKNOWN)
                self.writes.add(UNKNOWN)
            if type(value) is dict or type(value) is list:
                self.plwalk(value, what)

    def plexpr(self, expr: dict[str, Any], what: str) -> None:
        query = expr.get("query", "")
        mode = expr.get("parseMode", 0)
        if mode == 0:  # a whole SQL statement
            self.sql_text(query, what)
        elif mode == 2:  # an expression
            self.sql_text("SELECT " + query, what)
        elif mode in (3, 4, 5):  # "target := expression"
            rhs = _assignment_rhs(query)
            if rhs is None:
                self.unknown.append(f"{what}: cannot read assignment {query!r}")
            else:
                self.sql_text("SELECT " + rhs, what)
        # mode 1 is a type name: nothing runs.


def _assignment_rhs(query: str) -> str | None:
    """The expression of a PL/pgSQL assignment ``target := expr`` (or ``=``)."""
    try:
        tokens = _pg.scan(query)
    except _pg.ParseError:
        return None
    depth = 0
    raw = query.encode("utf-8")
    for tok in tokens:
        name = tok.name
        if name in ("ASCII_91", "ASCII_40"):
            depth += 1
        elif name in ("ASCII_93", "ASCII_41"):
            depth -= 1
        elif depth == 0 and name in ("COLON_EQUALS", "ASCII_61"):
            return raw[tok.end + 1 :].decode("utf-8")
    return None


def _slice(text: str, raw: dict[str, Any]) -> str:
    """The text of one statement, from libpg_query's byte offsets."""
    start = raw.get("stmt_location", 0)
    length = raw.get("stmt_len", 0)
    if text.isascii():
        return text[start : start + length] if length else text[start:]
    data = text.encode("utf-8")
    chunk = data[start : start + length] if length else data[start:]
    return chunk.decode("utf-8", errors="replace")


# ---- node handlers (expressions and relations) ---------------------------------


def _h_rangevar(c: _Collector, body: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
    c.rangevar(body, ctes, write)


def _h_funccall(c: _Collector, body: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
    c.funccall(body, ctes)


def _h_sublink(c: _Collector, body: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
    # The subselect reads; the test expression is walked in the enclosing mode.
    c.fields(body, ctes, False)


def _h_columnref(c: _Collector, body: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
    # ``x.f`` may be the attribute notation of the function call ``f(x)``.
    fields = body.get("fields", ())
    if len(fields) >= 2:
        c.attribute_call(_sval(fields[-1]))


def _h_indirection(c: _Collector, body: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
    # ``(expr).f`` may be the attribute notation of the function call ``f(expr)``.
    for item in body.get("indirection", ()):
        name = _sval(item)
        if name is not None:
            c.attribute_call(name)
    c.fields(body, ctes, write)


def _h_aexpr(c: _Collector, body: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
    # An operator runs its function: the catalog resolves user-defined ones.
    names = _qualified(_names(body.get("name", ())))
    if names:
        c.operators.add(".".join(names))
    c.fields(body, ctes, write, skip=("name",))


def _h_typecast(c: _Collector, body: dict[str, Any], ctes: frozenset[str], write: bool) -> None:
    # A cast may run a user-defined cast function: the catalog resolves it.
    tn = body.get("typeName") or {}
    names = _qualified(_names(tn.get("names", ())))
    if names:
        c.casts.add(".".join(names).lower())
    c.fields(body, ctes, write, skip=("typeName",))


_NODE_HANDLERS: Final = {
    "RangeVar": _h_rangevar,
    "A_Expr": _h_aexpr,
    "TypeCast": _h_typecast,
    "ColumnRef": _h_columnref,
    "A_Indirection": _h_indirection,
    "FuncCall": _h_funccall,
    "SubLink": _h_sublink,
}


# ---- statement handlers ------------------------------------------------------------


def _s_select(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    saved = c.pinned_names
    if any(_is_pg_settings(item) for item in body.get("fromClause", ())):
        c.pinned_names = _pinned_names(body.get("whereClause"))
    try:
        _s_select_body(c, body, ctes, kind)
    finally:
        c.pinned_names = saved


def _s_select_body(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    into = body.get("intoClause")
    if into:
        rel = into.get("rel")
        if rel:
            c.writes.add(_rv_name(rel, created=True))
        c.fields(into, ctes, False, skip=("rel",))
    for side in ("larg", "rarg"):
        arm = body.get(side)
        if arm:
            arm_ctes = ctes
            wc = arm.get("withClause")
            if wc:
                arm_ctes = c.with_clause(wc, ctes)
            _s_select(c, arm, arm_ctes, kind)
    c.fields(body, ctes, False, skip=("withClause", "intoClause", "larg", "rarg"))


def _s_dml(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    rel = body.get("relation")
    aliases = {"", "*"}
    if rel:
        c.writes.add(_rv_name(rel, created=True))
        aliases |= {str(rel.get("relname", ""))}
        alias = (rel.get("alias") or {}).get("aliasname")
        if alias:
            aliases.add(str(alias))
        if _is_pg_settings({"RangeVar": rel}):
            # pg_settings' update rule calls set_config(name, setting).
            value = None
            for item in body.get("targetList", ()):
                rt = item.get("ResTarget", {})
                if rt.get("name") == "setting":
                    value = _sval(rt.get("val"))
            c.setting_write(_pinned_names(body.get("whereClause")), value)
    where = body.get("whereClause")
    if kind in ("update", "delete") and not _bounded(where, aliases):
        c.write_without_where = True
    elif kind in ("update", "delete") and rel and not _bounded(where, aliases, null_tests=False):
        # Bounded only by `col IS NOT NULL`: unbounded when the columns are NOT NULL.
        c.null_bounds.append((_rv_name(rel), tuple(sorted(_null_tested(where)))))
    if kind == "insert":
        occ = body.get("onConflictClause") or {}
        if occ.get("action") == "ONCONFLICT_UPDATE":
            c.kinds.add("update")
            select = (body.get("selectStmt") or {}).get("SelectStmt") or {}
            # INSERT … SELECT … ON CONFLICT DO UPDATE updates every row the
            # query finds: unbounded unless the conflict action has a WHERE.
            if select and "valuesLists" not in select and not _bounded(occ.get("whereClause"), aliases | {"excluded"}):
                c.write_without_where = True
    c.fields(body, ctes, False, skip=("withClause", "relation"))


def _is_pg_settings(item: Any) -> bool:
    rv = item.get("RangeVar") if type(item) is dict else None
    return bool(rv) and rv.get("relname") == "pg_settings" and rv.get("schemaname") in (None, "pg_catalog")


def _is_name_column(node: Any) -> bool:
    cr = node.get("ColumnRef") if type(node) is dict else None
    if not cr:
        return False
    fields = cr.get("fields", ())
    return bool(fields) and _sval(fields[-1]) == "name"


def _pinned_names(where: Any) -> tuple[str, ...] | None:
    """Setting names a WHERE clause over pg_settings pins: a top-level
    ``name = 'x'`` or ``name IN ('x', 'y')`` conjunct; None if none does."""
    if type(where) is not dict:
        return None
    be = where.get("BoolExpr")
    if be and be.get("boolop") == "AND_EXPR":
        for arg in be.get("args", ()):
            found = _pinned_names(arg)
            if found:
                return found
        return None
    ae = where.get("A_Expr")
    if not ae:
        return None
    op = _names(ae.get("name", ()))
    lhs, rhs = ae.get("lexpr"), ae.get("rexpr")
    if ae.get("kind") == "AEXPR_OP" and op == ["="]:
        if _is_name_column(rhs):
            lhs, rhs = rhs, lhs
        if _is_name_column(lhs):
            value = _sval(rhs)
            return (value.strip(),) if value is not None else None
    if ae.get("kind") == "AEXPR_IN" and op == ["="] and _is_name_column(lhs) and type(rhs) is dict:
        values = [_sval(v) for v in rhs.get("List", {}).get("items", ())]
        if values and all(v is not None for v in values):
            return tuple(v.strip() for v in values if v is not None)
    return None


# ---- bounded conditions ---------------------------------------------------------


def _column_refs(node: Any, aliases: set[str], in_sublink: bool = False) -> bool:
    """Does ``node`` refer to a column of the written table? Outside a
    subquery any column reference counts; inside one, only a reference
    qualified with the table's name or alias (a correlation)."""
    t = type(node)
    if t is list:
        return any(_column_refs(i, aliases, in_sublink) for i in node)
    if t is not dict:
        return False
    cr = node.get("ColumnRef")
    if cr is not None:
        fields = cr.get("fields", ())
        if len(fields) >= 2:  # qualified: of the written table only if it names it
            return (_sval(fields[-2]) or "") in aliases
        # Unqualified: the table's column outside a subquery; inside one it
        # names the subquery's own table first.
        return not in_sublink and not (fields and "A_Star" in fields[0])
    if "CurrentOfExpr" in node:
        return True
    for key, value in node.items():
        if key == "SubLink":
            if _column_refs(value.get("testexpr"), aliases, in_sublink):
                return True
            if _column_refs(value.get("subselect"), aliases, True):
                return True
        elif type(value) is dict or type(value) is list:
            if _column_refs(value, aliases, in_sublink):
                return True
    return False


def _same(a: Any, b: Any) -> bool:
    strip = lambda n: _strip_locations(n)  # noqa: E731
    return strip(a) == strip(b)


def _strip_locations(node: Any) -> Any:
    if type(node) is dict:
        return {k: _strip_locations(v) for k, v in node.items() if k != "location"}
    if type(node) is list:
        return [_strip_locations(v) for v in node]
    return node


def _bounded(where: Any, aliases: set[str], null_tests: bool = True) -> bool:
    """Is a write's condition a bound on the table's rows? A condition that
    refers to none of its columns (``true``, ``1 = 1``, ``NOT false``,
    ``EXISTS (SELECT 1)``) is the same for every row, so the write takes all
    of them or none; so is an OR with such an arm and ``x = x``."""
    if type(where) is not dict:
        return False
    be = where.get("BoolExpr")
    if be is not None:
        args = be.get("args", ())
        if be.get("boolop") == "AND_EXPR":
            return any(_bounded(a, aliases, null_tests) for a in args)
        if be.get("boolop") == "OR_EXPR":
            return all(_bounded(a, aliases, null_tests) for a in args)
        return _column_refs(args, aliases)  # NOT
    ae = where.get("A_Expr")
    if ae is not None and _same(ae.get("lexpr"), ae.get("rexpr")):
        return False  # x = x, x <= x, x IS NOT DISTINCT FROM x, …
    nt = where.get("NullTest")
    if nt is not None and _whole_row(nt.get("arg"), aliases):
        return False  # t IS NOT NULL: a test of the whole row, not a bound
    if nt is not None and not null_tests and nt.get("nulltesttype") == "IS_NOT_NULL":
        return False  # bounds nothing if the column is NOT NULL (the catalog knows)
    return _column_refs(where, aliases)


def _null_tested(node: Any) -> set[str]:
    out: set[str] = set()
    if type(node) is list:
        for item in node:
            out |= _null_tested(item)
    elif type(node) is dict:
        nt = node.get("NullTest")
        if nt is not None:
            cr = (nt.get("arg") or {}).get("ColumnRef")
            if cr and cr.get("fields"):
                out.add(_sval(cr["fields"][-1]) or "")
        for value in node.values():
            if type(value) is dict or type(value) is list:
                out |= _null_tested(value)
    return out


def _whole_row(node: Any, aliases: set[str]) -> bool:
    cr = node.get("ColumnRef") if type(node) is dict else None
    if not cr:
        return False
    fields = cr.get("fields", ())
    if fields and "A_Star" in fields[-1]:
        return True
    return len(fields) == 1 and (_sval(fields[0]) or "") in aliases - {"", "*"}


_MERGE_KINDS: Final = {"CMD_UPDATE": "update", "CMD_DELETE": "delete", "CMD_INSERT": "insert"}


def _s_merge(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    rel = body.get("relation") or {}
    aliases = {str(rel.get("relname", ""))}
    alias = (rel.get("alias") or {}).get("aliasname")
    if alias:
        aliases.add(str(alias))
    on_bounded = _bounded(body.get("joinCondition"), aliases)
    for clause in body.get("mergeWhenClauses", ()):
        when = clause.get("MergeWhenClause", {})
        command = when.get("commandType")
        if command in _MERGE_KINDS:
            c.kinds.add(_MERGE_KINDS[command])
        if command in ("CMD_UPDATE", "CMD_DELETE"):
            # WHEN NOT MATCHED BY SOURCE takes target rows the ON condition does not bound.
            by_source = when.get("matchKind") == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE"
            if (by_source or not on_bounded) and not _bounded(when.get("condition"), aliases):
                c.write_without_where = True
    rel_node = body.get("relation")
    if rel_node:
        c.writes.add(_rv_name(rel_node, created=True))
    c.fields(body, ctes, False, skip=("withClause", "relation"))


def _s_copy(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    is_from = bool(body.get("is_from"))
    rel = body.get("relation")
    name = _rv_name(rel) if rel else None
    if name is not None:
        (c.writes if is_from else c.reads).add(name)
    program = bool(body.get("is_program"))
    target = body.get("filename")
    info = CopyInfo(
        direction="from" if is_from else "to",
        relation=name,
        query="query" in body,
        program=program,
        file=target is not None and not program,
        target=target,
    )
    c.copies.append(info)
    if info.program or info.file:
        c.dangerous.add("file_access")
    c.fields(body, ctes, False, skip=("relation",))


def _s_set(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    vkind = body.get("kind", "")
    name = (body.get("name") or "").lower()
    if vkind == "VAR_RESET_ALL":
        c.settings.add("all")
    elif vkind == "VAR_SET_MULTI":
        # SET TRANSACTION …, SET SESSION CHARACTERISTICS AS TRANSACTION …,
        # SET TRANSACTION SNAPSHOT …
        for arg in body.get("args", ()):
            defname = arg.get("DefElem", {}).get("defname")
            if defname:
                prefix = "default_" if name == "session characteristics" else ""
                c.settings.add(prefix + defname.lower())
        if name == "transaction snapshot":
            c.settings.add("transaction_snapshot")
    elif name:
        c.settings.add(name)
        if name in ROLE_SETTINGS:
            c.role_change = True
        if vkind == "VAR_SET_VALUE":
            args: list[Any] = body.get("args") or []
            value = _sval(args[0]) if len(args) == 1 else None
            if _changes_lexer(name, value, True):
                c.changes_lexer = True
    c.fields(body, ctes, False)


def _s_explain(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    for opt in body.get("options", ()):
        de = opt.get("DefElem", {})
        if de.get("defname") == "analyze":
            c.explain_analyze = True
    c.fields(body, ctes, False)


def _s_prepare(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    if c.depth == 0 and c.stmt_depth == 1:
        c.prepares = body.get("name")
    c.fields(body, ctes, False)


def _s_execute(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    c.executes_prepared.add(body.get("name", ""))
    c.fields(body, ctes, False)


def _s_deallocate(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    if c.depth == 0 and c.stmt_depth == 1:
        c.deallocates = body.get("name") or "*"


def _defelems(items: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        de = item.get("DefElem") if type(item) is dict else None
        if de and "defname" in de:
            out[de["defname"]] = de.get("arg")
    return out


def _s_do(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    opts = _defelems(body.get("args", ()))
    language = (_sval(opts.get("language")) or "plpgsql").lower()
    code = _sval(opts.get("as"))
    if code is None:
        c.unknown.append("DO: no body")
        return
    if language != "plpgsql":
        c.unknown.append(f"DO: language {language} cannot be read")
        return
    tag = "pgjit"
    n = 0
    while f"${tag}$" in code:
        n += 1
        tag = f"pgjit{n}"
    c.plpgsql(f"DO ${tag}${code}${tag}$", "DO block")


def _s_view(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    view = body.get("view")
    if view and c.depth == 0 and c.stmt_depth == 1:
        c.created.append("relation " + _rv_name(view))
    c.fields(body, ctes, False, skip=("view",))
    if view:
        c.writes.add(_rv_name(view, created=True))


def _s_create_function(
    c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str
) -> None:
    fname = _qualified(_names(body.get("funcname", ())))
    what = "function " + ".".join(fname)
    opts = _defelems(body.get("options", ()))
    if c.depth == 0 and c.stmt_depth == 1 and fname:
        c.created.append(".".join(fname).lower())
    sec = opts.get("security")
    if type(sec) is dict and sec.get("Boolean", {}).get("boolval"):
        c.security_definer = True
    if "sql_body" in body:
        # BEGIN ATOMIC … END / RETURN expr: already parsed, walked below.
        c.bodies.append("sql")
    else:
        language = (_sval(opts.get("language")) or "").lower()
        as_arg = opts.get("as")
        parts: list[str] = []
        if type(as_arg) is dict and "List" in as_arg:
            parts = [(_sval(i) or "") for i in as_arg["List"].get("items", ())]
        elif as_arg is not None and _sval(as_arg) is not None:
            parts = [_sval(as_arg) or ""]
        if language == "sql" and len(parts) == 1:
            c.bodies.append("sql")
            c.sql_text(parts[0], what)
        elif language == "plpgsql" and len(parts) == 1:
            if c.stmt_depth != 1:
                c.unknown.append(f"{what}: nested PL/pgSQL function cannot be read")
            else:
                c.plpgsql(c.stmt_text, what)
        else:
            c.unknown.append(f"{what}: language {language or '(none)'} cannot be read")
    # Parameter defaults, SET options (e.g. SET role) and BEGIN ATOMIC statements.
    c.fields(body, ctes, False, skip=("funcname", "returnType"))


def _s_trigger(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    funcname = body.get("funcname")
    if funcname:
        c.function_ref(_names(funcname), bound=True)
    c.fields(body, ctes, True, skip=("funcname",))


def _s_drop(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    remove = body.get("removeType")
    if remove in _RELATION_DROPS:
        for obj in body.get("objects", ()):
            items = obj.get("List", {}).get("items", ()) if type(obj) is dict else ()
            names = _qualified(_names(items))
            if names:
                c.writes.add(".".join(names))
    elif remove == "OBJECT_SCHEMA":
        for obj in body.get("objects", ()):
            name = _sval(obj)
            if name is not None:
                c.writes.add(name + ".*")
    elif remove in _FUNCTION_OBJECTS:
        for obj in body.get("objects", ()):
            owa = obj.get("ObjectWithArgs") if type(obj) is dict else None
            if owa:
                c.alter_function(_names(owa.get("objname", ())))
    c.fields(body, ctes, True, skip=("objects",))


_FUNCTION_OBJECTS: Final = frozenset(
    {"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"}
)

# DefineStmt / ALTER OPERATOR / CREATE TYPE … AS RANGE options naming a function.
_FUNCTION_SLOTS: Final = frozenset(
    {
        "function", "procedure", "restrict", "join",  # operators
        "sfunc", "finalfunc", "combinefunc", "serialfunc", "deserialfunc",  # aggregates
        "msfunc", "minvfunc", "mfinalfunc",
        "input", "output", "receive", "send", "typmod_in", "typmod_out", "analyze",  # types
        "subscript", "canonical", "subtype_diff",
        "start", "gettoken", "end", "lextypes", "headline", "init", "lexize",  # text search
        "handler", "validator", "inline",  # languages, foreign-data wrappers
    }
)


def _slot_names(arg: Any) -> list[str] | None:
    if type(arg) is not dict:
        return None
    if "TypeName" in arg:
        return _names(arg["TypeName"].get("names", ()))
    if "List" in arg:
        return _names(arg["List"].get("items", ()))
    if "String" in arg:
        return [_sval(arg) or ""]
    if "ObjectWithArgs" in arg:
        return _names(arg["ObjectWithArgs"].get("objname", ()))
    return None


def _s_binds(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    """Statements that bind a function to a new name (an operator, aggregate,
    cast, type, transform, conversion, language, wrapper, access method,
    operator class): the binding carries the function's facts."""
    if c.depth == 0 and c.stmt_depth == 1 and body.get("kind") in ("OBJECT_OPERATOR", "OBJECT_AGGREGATE"):
        name = ".".join(_qualified(_names(body.get("defnames", ())))).lower()
        c.created.append(("operator " + name) if body.get("kind") == "OBJECT_OPERATOR" else name)
    for key in ("definition", "options", "params", "func_options"):
        for item in body.get(key, ()) or ():
            de = item.get("DefElem") if type(item) is dict else None
            if de and de.get("defname", "").lower() in _FUNCTION_SLOTS:
                names = _slot_names(de.get("arg"))
                if names:
                    c.function_ref(names, bound=True)
    for key in ("func", "fromsql", "tosql"):  # CREATE CAST, CREATE TRANSFORM
        owa = body.get(key)
        if type(owa) is dict and owa.get("objname"):
            c.function_ref(_names(owa["objname"]), bound=True)
    for key in ("func_name", "handler_name", "plhandler", "plinline", "plvalidator"):
        names = body.get(key)
        if type(names) is list and names:
            c.function_ref(_names(names), bound=True)
    for item in body.get("items", ()) or ():  # CREATE OPERATOR CLASS … FUNCTION n f(…)
        op = item.get("CreateOpClassItem") if type(item) is dict else None
        if op and op.get("itemtype") == 2 and op.get("name"):
            c.function_ref(_names(op["name"].get("objname", ())), bound=True)
        elif op and op.get("itemtype") == 1 and op.get("name"):
            c.operators.add(".".join(_qualified(_names(op["name"].get("objname", ())))))
    target = body.get("targettype")
    if type(target) is dict and target.get("names"):
        c.casts.add(".".join(_qualified(_names(target["names"]))).lower())
    c.fields(body, ctes, kind not in _READ_KINDS)


def _s_foreign(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    """Foreign servers, tables and user mappings (and ALTER FOREIGN TABLE …
    OPTIONS): options such as file_fdw's filename/program reach the server's
    files, programs or the network."""
    _foreign_options(c, body)
    base = body.get("base")  # CREATE FOREIGN TABLE wraps a CreateStmt
    if type(base) is dict:
        rel = base.get("relation")
        if rel:
            c.writes.add(_rv_name(rel, created=True))
            if c.depth == 0 and c.stmt_depth == 1:
                c.created.append("relation " + _rv_name(rel))
    c.fields(body, ctes, kind not in _READ_KINDS)


def _foreign_options(c: _Collector, node: Any) -> None:
    if type(node) is list:
        for item in node:
            _foreign_options(c, item)
        return
    if type(node) is not dict:
        return
    de = node.get("DefElem")
    if de is not None:
        cats = FOREIGN_OPTION_CATEGORIES.get(str(de.get("defname", "")).lower())
        if cats:
            c.dangerous |= cats
            if de.get("defname", "").lower() == "program":
                c.copies.append(CopyInfo("from", None, False, True, False, _sval(de.get("arg"))))
        return
    for value in node.values():
        if type(value) is dict or type(value) is list:
            _foreign_options(c, value)


def _s_alter_object(c: _Collector, body: dict[str, Any], ctes: frozenset[str], kind: str) -> None:
    """RENAME / SET SCHEMA / OWNER TO / ALTER FUNCTION: of a function, it
    carries the function's facts (and of a system one, is a catalog change);
    of a schema, it moves every relation in it."""
    objtype = body.get("renameType") or body.get("objectType") or body.get("objtype")
    obj = body.get("object") or body.get("func")
    if objtype in _FUNCTION_OBJECTS or (objtype is None and type(obj) is dict and "objname" in obj):
        owa = obj.get("ObjectWithArgs", obj) if type(obj) is dict else None
        if owa and owa.get("objname"):
            c.alter_function(_names(owa["objname"]))
    elif objtype == "OBJECT_SCHEMA":
        name = body.get("subname") or _sval(obj)
        if name:
            c.writes.add(str(name) + ".*")
    elif objtype == "OBJECT_OPERATOR" and type(obj) is dict:
        owa = obj.get("ObjectWithArgs")
        if owa:
            c.operators.add(".".join(_qualified(_names(owa.get("objname", ())))))
    if body.get("relation"):
        c.writes.add(_rv_name(body["relation"]))
    c.fields(body, ctes, kind not in _READ_KINDS, skip=("relation",))


_STMT_HANDLERS: Final = {
    "SelectStmt": _s_select,
    "InsertStmt": _s_dml,
    "UpdateStmt": _s_dml,
    "DeleteStmt": _s_dml,
    "MergeStmt": _s_merge,
    "CopyStmt": _s_copy,
    "VariableSetStmt": _s_set,
    "ExplainStmt": _s_explain,
    "PrepareStmt": _s_prepare,
    "ExecuteStmt": _s_execute,
    "DeallocateStmt": _s_deallocate,
    "DoStmt": _s_do,
    "CreateFunctionStmt": _s_create_function,
    "CreateTrigStmt": _s_trigger,
    "CreateEventTrigStmt": _s_trigger,
    "DropStmt": _s_drop,
    "DefineStmt": _s_binds,
    "ViewStmt": _s_view,
    "AlterOperatorStmt": _s_binds,
    "CreateRangeStmt": _s_binds,
    "CreateCastStmt": _s_binds,
    "CreateTransformStmt": _s_binds,
    "CreateConversionStmt": _s_binds,
    "CreatePLangStmt": _s_binds,
    "CreateFdwStmt": _s_binds,
    "AlterFdwStmt": _s_binds,
    "CreateAmStmt": _s_binds,
    "CreateOpClassStmt": _s_binds,
    "AlterOpFamilyStmt": _s_binds,
    "CreateForeignTableStmt": _s_foreign,
    "CreateForeignServerStmt": _s_foreign,
    "AlterForeignServerStmt": _s_foreign,
    "CreateUserMappingStmt": _s_foreign,
    "AlterUserMappingStmt": _s_foreign,
    "AlterTableStmt": _s_foreign,
    "RenameStmt": _s_alter_object,
    "AlterObjectSchemaStmt": _s_alter_object,
    "AlterOwnerStmt": _s_alter_object,
    "AlterFunctionStmt": _s_alter_object,
    "AlterObjectDependsStmt": _s_alter_object,
    "DropOwnedStmt": lambda c, body, ctes, kind: c.writes.add(UNKNOWN),
    "ReassignOwnedStmt": lambda c, body, ctes, kind: c.writes.add(UNKNOWN),
}


# --------------------------------------------------------------------------
# public entry points


def _cursorpos(location: int) -> int:
    # pglast reports a 0-based *character* offset (the JSON's offsets are bytes).
    return location + 1 if location >= 0 else 0


def _char_offset(sql: str, byte_offset: int) -> int:
    if sql.isascii():
        return byte_offset
    return len(sql.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))


def analyze_uncached(sql: str) -> Analysis:
    """Parse ``sql`` and return the facts of each statement (no cache).

    Raises :class:`ParseFailure` if PostgreSQL's grammar rejects the string, or
    if it holds a NUL character (the C parser would stop there, unseen text after it).
    """
    nul = sql.find("\x00")
    if nul >= 0:
        raise ParseFailure("statement contains a NUL character", nul + 1)
    try:
        parsed = _loads(_pg.parse_sql_json(sql))
    except _pg.ParseError as exc:
        location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else -1
        raise ParseFailure(str(exc.args[0]) if exc.args else str(exc), _cursorpos(location)) from None
    except (RecursionError, ValueError) as exc:
        raise ParseFailure(f"statement too complex to check: {exc}") from None
    out: list[Facts] = []
    for raw in parsed.get("stmts", ()):
        stmt = raw.get("stmt")
        if not stmt:
            continue
        (tname, body), = stmt.items()
        c = _Collector()
        c.stmt_text = text = _slice(sql, raw)
        const_reads = _const_reads.count
        try:
            c.walk(stmt, _EMPTY, False)
        except RecursionError:
            raise ParseFailure("statement too complex to check") from None
        c.kinds.add(kind := _kind_of(tname, body))
        out.append(
            Facts(
                kind=kind,
                kinds=frozenset(c.kinds),
                reads=frozenset(c.reads),
                writes=frozenset(c.writes),
                functions=frozenset(c.functions),
                settings=frozenset(c.settings),
                dangerous=frozenset(c.dangerous),
                write_without_where=c.write_without_where,
                role_change=c.role_change,
                dynamic_sql=c.dynamic_sql,
                changes_lexer=c.changes_lexer,
                operators=frozenset(c.operators),
                casts=frozenset(c.casts),
                altered_functions=tuple(c.altered_functions),
                created=tuple(c.created),
                null_bounds=tuple(c.null_bounds),
                security_definer=c.security_definer,
                explain_analyze=c.explain_analyze,
                executes_prepared=frozenset(c.executes_prepared),
                prepares=c.prepares,
                deallocates=c.deallocates,
                copies=tuple(c.copies),
                copy_program=any(x.program for x in c.copies),
                copy_file=any(x.file for x in c.copies),
                bodies=tuple(c.bodies),
                unknown_body=bool(c.unknown),
                unknown_reasons=tuple(c.unknown),
                text=text,
                location=_char_offset(sql, raw.get("stmt_location", 0)),
                literal_sensitive=_const_reads.count != const_reads,
            )
        )
    return Analysis(sql=sql, statements=tuple(out))


analyze = lru_cache(maxsize=CACHE_SIZE)(analyze_uncached)
analyze.__doc__ = """Like :func:`analyze_uncached`, with an LRU cache keyed on the text.

ParseFailure is not cached: a string that does not parse is parsed again.
"""


def cache_info() -> Any:
    """Hits, misses and size of the analyze() cache (``functools`` CacheInfo)."""
    return analyze.cache_info()


def clear_cache() -> None:
    analyze.cache_clear()


def benchmark(sql: str, repeat: int = 2000) -> tuple[float, float]:
    """Measure analyze() on ``sql``: (microseconds per miss, per hit)."""
    start = time.perf_counter()
    for _ in range(repeat):
        analyze_uncached(sql)
    miss = (time.perf_counter() - start) / repeat * 1e6
    analyze(sql)
    start = time.perf_counter()
    for _ in range(repeat):
        analyze(sql)
    hit = (time.perf_counter() - start) / repeat * 1e6
    return miss, hit


_KEEP_BASE: Final = frozenset({"kind", "prepares", "deallocates", "text", "location"})


def merge_facts(base: Facts, extra: Facts) -> Facts:
    """Fold ``extra`` (e.g. the statement a PREPARE defined) into ``base``:
    sets are united, flags or-ed, tuples concatenated; the statement's own
    kind, text and prepared-statement name stay ``base``'s."""
    values: dict[str, Any] = {}
    for name in Facts.__dataclass_fields__:
        a = getattr(base, name)
        if name in _KEEP_BASE:
            values[name] = a
            continue
        b = getattr(extra, name)
        if isinstance(a, frozenset):
            values[name] = a | b
        elif isinstance(a, bool):
            values[name] = a or b
        elif isinstance(a, tuple):
            values[name] = a + b
        else:
            values[name] = a
    return Facts(**values)
