"""The shipped catalogue of dangerous functions.

Each category maps to glob patterns over *bare* function names (no schema),
matched case-insensitively. A function call such as ``pg_catalog.pg_read_file``,
``"PG_READ_FILE"`` or ``U&"pg_\\0072ead_file"`` is reduced by the classifier to
its lower-cased bare name (``pg_read_file``) before it is looked up here, so a
schema qualification or quoting never hides a call. Matching on the bare name is
deliberately conservative: a user-defined ``public.pg_read_file`` is treated like
the built-in one.

Categories (policy files refer to them under ``match.dangerous``):

``sql_executor``
    functions that run SQL text (or read whole tables by name) that the gateway
    cannot see: the ``*_to_xml`` family, ``ts_stat``/``ts_rewrite`` and every
    ``dblink*`` function. A call also sets ``dynamic_sql`` and records a read of
    the unknown relation ``?``.
``file_access``
    server-side file-system access (COPY … PROGRAM and COPY to/from a file are
    added to this category by the classifier too).
``server_control``
    signalling backends, reloading configuration, WAL/backup/replication-slot
    control, statistics resets. ``set_config('role' | 'session_authorization', …)``
    is put here as well (and sets ``role_change``).
``large_object``
    the server-side large-object API (``lo_import``/``lo_export`` read and write
    server files, so they are also ``file_access``).
``side_effect``
    functions that change state while looking like reads: sequences and NOTIFY.
``network``
    outbound network access from extensions (``pgsql-http``).
``catalog_change``
    renaming, moving or re-owning a function of the system catalog (or one in
    this catalogue), or binding one to a new name: afterwards a harmless-looking
    name would run it.

System views that call such functions carry their categories
(:data:`SYSTEM_VIEW_CATEGORIES`), and so does every extension function listed
in :mod:`pgjit.policy.extensions`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Final

CATALOGUE: Final[dict[str, tuple[str, ...]]] = {
    "sql_executor": (
        "query_to_xml",
        "query_to_xml_and_xmlschema",
        "query_to_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml",
        "table_to_xml_and_xmlschema",
        "table_to_xmlschema",
        "schema_to_xml",
        "schema_to_xml_and_xmlschema",
        "schema_to_xmlschema",
        "database_to_xml",
        "database_to_xml_and_xmlschema",
        "database_to_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "dblink*",
    ),
    "file_access": (
        "pg_read_file",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_ls_dir",
        "pg_ls_*dir",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        "pg_show_all_file_settings",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_config",
        "pg_current_logfile",
        "pg_control_system",
        "pg_control_checkpoint",
        "pg_control_recovery",
        "pg_control_init",
        "lo_import",
        "lo_export",
    ),
    "server_control": (
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile*",
        "pg_promote",
        "pg_switch_wal",
        "pg_switch_xlog",
        "pg_create_restore_point",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "pg_create_*_replication_slot",
        "pg_copy_*_replication_slot",
        "pg_drop_replication_slot",
        "pg_replication_slot_advance",
        "pg_sync_replication_slots",
        "pg_logical_slot_get_*",
        "pg_logical_slot_peek_*",
        "pg_logical_emit_message",
        "pg_replication_origin_*",
        "pg_log_backend_memory_contexts",
        "pg_stat_reset*",
        "pg_stat_statements_reset",
        "pg_import_system_collations",
    ),
    "large_object": (
        "lo_open",
        "lo_close",
        "lo_creat",
        "lo_create",
        "lo_unlink",
        "lo_import",
        "lo_export",
        "lo_get",
        "lo_put",
        "lo_from_bytea",
        "lo_lseek",
        "lo_lseek64",
        "lo_tell",
        "lo_tell64",
        "lo_truncate",
        "lo_truncate64",
        "loread",
        "lowrite",
    ),
    "side_effect": (
        "nextval",
        "setval",
        "pg_notify",
    ),
    "network": (
        "http",
        "http_get",
        "http_post",
        "http_put",
        "http_patch",
        "http_delete",
        "http_head",
    ),
}

CATALOGUE["catalog_change"] = ()

try:  # contrib and common extensions (a data module of its own)
    from pgjit.policy.extensions import EXTENSION_FUNCTIONS as _EXT, EXTENSION_OPTIONS, EXTENSION_QUALIFIED as _EXTQ
except ImportError:  # pragma: no cover - the module is part of the package
    _EXT, _EXTQ, EXTENSION_OPTIONS = {}, {}, {}
# Qualified entries (cron.schedule) match a call written with the schema; the
# classifier looks a qualified call up under both its names.
for _source in (_EXT, _EXTQ):
    for _category, _patterns in _source.items():
        CATALOGUE[_category] = tuple(dict.fromkeys(CATALOGUE.get(_category, ()) + tuple(_patterns)))

#: Options of foreign servers, tables and user mappings that reach files,
#: programs or the network, whatever the wrapper: option name -> categories.
FOREIGN_OPTION_CATEGORIES: Final[dict[str, frozenset[str]]] = {}
for _options in EXTENSION_OPTIONS.values():
    for _name, _category in _options.items():
        FOREIGN_OPTION_CATEGORIES[_name.lower()] = FOREIGN_OPTION_CATEGORIES.get(_name.lower(), frozenset()) | {_category}

#: Views of pg_catalog that expose server files or configuration, with the
#: categories of the functions behind them (PostgreSQL 15-18).
SYSTEM_VIEW_CATEGORIES: Final[dict[str, frozenset[str]]] = {
    "pg_hba_file_rules": frozenset({"file_access"}),
    "pg_ident_file_mappings": frozenset({"file_access"}),
    "pg_file_settings": frozenset({"file_access"}),
    "pg_config": frozenset({"file_access"}),
}

CATEGORY_NAMES: Final[frozenset[str]] = frozenset(CATALOGUE)

#: Functions whose call makes the statement's SQL unknowable (sets ``dynamic_sql``).
DYNAMIC_CATEGORIES: Final[frozenset[str]] = frozenset({"sql_executor"})

_EXACT: dict[str, set[str]] = {}
_GLOBS: list[tuple[str, str]] = []
for _category, _patterns in CATALOGUE.items():
    for _pattern in _patterns:
        if any(ch in _pattern for ch in "*?["):
            _GLOBS.append((_pattern, _category))
        else:
            _EXACT.setdefault(_pattern, set()).add(_category)

_NONE: Final[frozenset[str]] = frozenset()


@lru_cache(maxsize=8192)
def categories_for(name: str) -> frozenset[str]:
    """Return the dangerous categories of a function, given its bare name.

    The lookup is case-insensitive; the result is cached per name.
    """
    lowered = name.lower()
    found = set(_EXACT.get(lowered, ()))
    for pattern, category in _GLOBS:
        if fnmatchcase(lowered, pattern):
            found.add(category)
    return frozenset(found) if found else _NONE
