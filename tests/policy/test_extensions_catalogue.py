"""The extension catalogue (pgjit.policy.extensions) against the installed contrib scripts.

Every bare name listed must be a function the PostgreSQL 15 contrib install
scripts create (so a typo fails), unless it is in ``ELSEWHERE``, the names
known to come from PostgreSQL 16-18 contrib or from third-party extensions,
each with its source. The scripts are those of the Debian/PGDG
``postgresql-15`` package under /usr/share/postgresql/15; the test is skipped
without them.
"""

from __future__ import annotations

import re
from collections import deque
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

import pytest

from pgjit.policy.catalogue import CATEGORY_NAMES
from pgjit.policy.extensions import EXTENSION_FUNCTIONS, EXTENSION_OPTIONS, EXTENSION_QUALIFIED

SHARE = Path("/usr/share/postgresql/15")
EXTENSION_DIR = SHARE / "extension"
#: contrib scripts that are not extensions (run by hand into a database)
LOOSE_SCRIPTS = {"sepgsql": SHARE / "contrib" / "sepgsql.sql"}

needs_scripts = pytest.mark.skipif(
    not EXTENSION_DIR.is_dir(), reason="PostgreSQL 15 contrib scripts not installed (apt-get install postgresql-contrib)"
)

#: Listed names that the PostgreSQL 15 contrib scripts do not create, by source.
ELSEWHERE: dict[str, tuple[str, ...]] = {
    "pageinspect 1.12 (PostgreSQL 16)": ("bt_multi_page_stats",),
    "pg_walinspect 1.1 (PostgreSQL 16)": ("pg_get_wal_block_info",),
    "amcheck 1.5 (PostgreSQL 18)": ("gin_index_check",),
    "pg_buffercache 1.5/1.6 (PostgreSQL 17/18)": (
        "pg_buffercache_evict",
        "pg_buffercache_evict_relation",
        "pg_buffercache_evict_all",
    ),
    "pg_logicalinspect 1.0 (PostgreSQL 18)": ("pg_get_logical_snapshot_meta", "pg_get_logical_snapshot_info"),
    "pgsql-http": (
        "http",
        "http_get",
        "http_post",
        "http_put",
        "http_patch",
        "http_delete",
        "http_head",
        "http_set_curlopt",
    ),
    "pg_background": (
        "pg_background_launch",
        "pg_background_result",
        "pg_background_detach",
        "pg_background_launch_v2",
        "pg_background_submit_v2",
        "grant_pg_background_privileges",
        "revoke_pg_background_privileges",
    ),
    "pg_cron": ("schedule_in_database",),
    "pg_dirtyread": ("pg_dirtyread",),
    "aws_s3": ("table_import_from_s3", "query_export_to_s3"),
    "timescaledb": (
        "add_job",
        "alter_job",
        "run_job",
        "delete_job",
        "distributed_exec",
        "drop_chunks",
        "compress_chunk",
        "decompress_chunk",
        "recompress_chunk",
        "convert_to_columnstore",
        "convert_to_rowstore",
        "reorder_chunk",
        "move_chunk",
        "merge_chunks",
        "merge_chunks_concurrently",
        "split_chunk",
        "attach_chunk",
        "detach_chunk",
        "refresh_continuous_aggregate",
        "add_retention_policy",
        "add_compression_policy",
        "add_columnstore_policy",
        "add_reorder_policy",
        "add_continuous_aggregate_policy",
        "remove_retention_policy",
        "remove_compression_policy",
        "remove_columnstore_policy",
        "remove_reorder_policy",
        "remove_continuous_aggregate_policy",
        "add_data_node",
        "attach_data_node",
        "alter_data_node",
        "timescaledb_pre_restore",
        "timescaledb_post_restore",
        "create_distributed_restore_point",
    ),
    "pg_partman": (
        "create_partition_id",
        "create_partition_time",
        "create_sub_parent",
        "drop_partition_id",
        "drop_partition_time",
        "partition_data_id",
        "partition_data_time",
        "partition_data_proc",
        "partition_gap_fill",
        "undo_partition",
        "undo_partition_proc",
        "reapply_constraints_proc",
        "inherit_template_properties",
    ),
    "pglogical": ("replicate_ddl_command",),
    "citus": ("run_command_on_workers", "run_command_on_shards", "run_command_on_all_nodes"),
    "postgis / postgis_raster": (
        "addgeometrycolumn",
        "dropgeometrycolumn",
        "dropgeometrytable",
        "updategeometrysrid",
        "populate_geometry_columns",
        "addrasterconstraints",
        "droprasterconstraints",
        "addoverviewconstraints",
        "dropoverviewconstraints",
        "st_createoverview",
        "postgis_extensions_upgrade",
    ),
    "pldebugger (pldbgapi)": (
        "pldbg_attach_to_port",
        "pldbg_deposit_value",
        "pldbg_set_global_breakpoint",
        "plpgsql_oid_debug",
        "edb_oid_debug",
    ),
    "pg_stat_kcache, pg_qualstats, pg_wait_sampling, pg_stat_monitor": (
        "pg_stat_kcache_reset",
        "pg_qualstats_reset",
        "pg_wait_sampling_reset_profile",
        "pg_stat_monitor_reset",
    ),
}

#: Names the PostgreSQL 15 scripts create in an older version only (dropped by
#: a later update script), still present in databases upgraded with pg_upgrade.
HISTORIC = {
    "pg_file_read": "adminpack 1.0-1.1",
    "pg_file_length": "adminpack 1.0-1.1",
    "pg_logfile_rotate": "adminpack 1.0-1.1",
}

#: Must-have dangerous names, each with a category it must be in.
MUST_HAVE = [
    ("crosstab", "sql_executor"),
    ("crosstab2", "sql_executor"),
    ("crosstab3", "sql_executor"),
    ("crosstab4", "sql_executor"),
    ("connectby", "sql_executor"),
    ("check_foreign_key", "sql_executor"),
    ("check_primary_key", "sql_executor"),
    ("xpath_table", "sql_executor"),
    ("dblink", "sql_executor"),
    ("dblink_exec", "sql_executor"),
    ("dblink_send_query", "sql_executor"),
    ("dblink_connect", "network"),
    ("dblink_connect_u", "network"),
    ("dblink", "network"),
    ("get_raw_page", "sql_executor"),
    ("bt_page_items", "sql_executor"),
    ("pgstattuple", "sql_executor"),
    ("pgstatindex", "sql_executor"),
    ("pgrowlocks", "sql_executor"),
    ("pg_freespace", "sql_executor"),
    ("pg_visibility_map", "sql_executor"),
    ("bt_index_check", "sql_executor"),
    ("bt_index_parent_check", "sql_executor"),
    ("verify_heapam", "sql_executor"),
    ("pg_prewarm", "sql_executor"),
    ("heap_force_kill", "sql_executor"),
    ("heap_force_freeze", "sql_executor"),
    ("heap_force_kill", "server_control"),
    ("pg_truncate_visibility_map", "server_control"),
    ("pg_file_write", "file_access"),
    ("pg_file_unlink", "file_access"),
    ("pg_file_rename", "file_access"),
    ("pg_get_wal_records_info", "file_access"),
    ("pg_get_wal_record_info", "file_access"),
    ("pg_get_wal_stats", "file_access"),
    ("pg_get_wal_block_info", "file_access"),
    ("pg_get_logical_snapshot_info", "file_access"),
    ("pg_stat_statements_reset", "server_control"),
    ("pg_buffercache_evict", "server_control"),
    ("pg_buffercache_evict_relation", "server_control"),
    ("pg_buffercache_evict_all", "server_control"),
    ("autoprewarm_start_worker", "server_control"),
    ("postgres_fdw_disconnect", "network"),
    ("postgres_fdw_disconnect_all", "network"),
    ("http_get", "network"),
    ("lo_manage", "large_object"),
    ("triggered_change_notification", "side_effect"),
    ("pg_background_launch", "sql_executor"),
    ("pg_dirtyread", "sql_executor"),
    ("pldbg_deposit_value", "server_control"),
]

MUST_HAVE_QUALIFIED = [
    ("cron.schedule", "sql_executor"),
    ("cron.schedule_in_database", "sql_executor"),
    ("dbms_sql.execute", "sql_executor"),
    ("dbms_sql.parse", "sql_executor"),
    ("utl_file.fopen", "file_access"),
    ("utl_file.put_line", "file_access"),
    ("utl_file.fremove", "file_access"),
    ("net.http_post", "network"),
    ("partman.create_parent", "sql_executor"),
]

#: Contrib extensions whose functions are all harmless data-type, index or text
#: support: none of their names may be classified (guards against broad globs).
HARMLESS_EXTENSIONS = (
    "bloom",
    "btree_gin",
    "btree_gist",
    "citext",
    "cube",
    "dict_int",
    "dict_xsyn",
    "earthdistance",
    "fuzzystrmatch",
    "hstore",
    "insert_username",
    "intagg",
    "intarray",
    "isn",
    "ltree",
    "moddatetime",
    "pg_trgm",
    "pgcrypto",
    "seg",
    "sslinfo",
    "tsm_system_rows",
    "tsm_system_time",
    "unaccent",
    "uuid-ossp",
)

# ------------------------------------------------------------------ script parsing

_NAME = r'(?:"[^"]+"|[A-Za-z_][\w$]*)'
_QNAME = rf"{_NAME}(?:\s*\.\s*{_NAME})*"
_CREATE = re.compile(rf"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+({_QNAME})\s*\(", re.I)
_DROP = re.compile(rf"\bDROP\s+(?:FUNCTION|PROCEDURE)\s+(?:IF\s+EXISTS\s+)?", re.I)
_DROP_ITEM = re.compile(rf"\s*({_QNAME})\s*(\([^()]*\))?\s*(,)?", re.I)
_ALTER_EXT_BEFORE = re.compile(r"\bALTER\s+EXTENSION\s+\S+\s+$", re.I)
_TYPE_ALIASES = {
    "integer": "int4",
    "int": "int4",
    "bigint": "int8",
    "smallint": "int2",
    "boolean": "bool",
    "real": "float4",
    "double precision": "float8",
    "character varying": "varchar",
    "character": "bpchar",
    "char": "bpchar",
}
_MULTIWORD_TYPES = re.compile(
    r"(?:double precision|character varying|bit varying|(?:timestamp|time) with(?:out)? time zone)(?:\[\])*"
)


def _strip(sql: str) -> str:
    """Remove comments, string literals and dollar-quoted bodies."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif sql[i] == "'":
            j = i + 1
            while j < n:
                if sql[j] == "'" and sql.startswith("''", j):
                    j += 2
                elif sql[j] == "'":
                    break
                else:
                    j += 1
            out.append("''")
            i = j + 1
        elif sql[i] == "$" and (m := re.match(r"\$(?:[A-Za-z_]\w*)?\$", sql[i:])):
            tag = m.group(0)
            j = sql.find(tag, i + len(tag))
            out.append("''")
            i = n if j < 0 else j + len(tag)
        else:
            out.append(sql[i])
            i += 1
    return "".join(out)


def _bare(qname: str) -> str:
    return re.split(r"\s*\.\s*", qname)[-1].strip('"').lower()


def _balanced(text: str, start: int) -> str:
    """The parenthesised text starting at text[start] == '('."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j]
    return text[start + 1 :]


def _signature(args: str) -> tuple[str, ...]:
    """Input argument types of an argument list, normalised well enough to pair CREATE with DROP."""
    depth, part, parts = 0, [], []
    for ch in args:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append("".join(part))
            part = []
        else:
            part.append(ch)
    parts.append("".join(part))
    types: list[str] = []
    for raw in parts:
        arg = re.split(r"\s+DEFAULT\b|\s*=", raw, maxsplit=1, flags=re.I)[0]
        arg = re.sub(r"\([^()]*\)", "", arg).replace('"', "").lower()
        words = arg.split()
        if not words or words[0] == "out":
            continue
        if words[0] in ("in", "inout", "variadic"):
            words = words[1:]
        if len(words) > 1 and not _MULTIWORD_TYPES.fullmatch(" ".join(words)):
            words = words[1:]  # an argument name: "relname text"
        typ = re.sub(r"^\w+\.", "", " ".join(words))  # a schema-qualified type
        base, brackets = re.fullmatch(r"(.*?)((?:\[\])*)", typ).groups()
        types.append(_TYPE_ALIASES.get(base, base) + brackets)
    return tuple(types)


def _apply(script: str, functions: dict[str, list[tuple[str, ...]]]) -> None:
    text = _strip(script)
    events: list[tuple[int, str, str, tuple[str, ...] | None]] = []
    for m in _CREATE.finditer(text):
        events.append((m.start(), "create", _bare(m.group(1)), _signature(_balanced(text, m.end() - 1))))
    for m in _DROP.finditer(text):
        if _ALTER_EXT_BEFORE.search(text, 0, m.start()):
            continue
        pos = m.end()
        while item := _DROP_ITEM.match(text, pos):
            sig = _signature(item.group(2)[1:-1]) if item.group(2) else None
            events.append((m.start(), "drop", _bare(item.group(1)), sig))
            pos = item.end()
            if not item.group(3):
                break
    for _, what, name, sig in sorted(events, key=lambda e: e[0]):
        overloads = functions.setdefault(name, [])
        if what == "create":
            if sig not in overloads:
                overloads.append(sig)
        elif sig is None or len(overloads) <= 1:
            overloads.clear()
        elif sig in overloads:
            overloads.remove(sig)
        if not overloads:
            functions.pop(name, None)


def _update_path(scripts: dict[str, Path], target: str) -> list[Path]:
    """Install script plus update scripts that CREATE EXTENSION runs for the target version."""
    installs = {k: v for k, v in scripts.items() if "--" not in k and k != "unpackaged"}
    if target in installs:
        return [installs[target]]
    updates: dict[str, list[tuple[str, Path]]] = {}
    for key, path in scripts.items():
        if "--" in key:
            src, dst = key.split("--", 1)
            updates.setdefault(src, []).append((dst, path))
    best: list[Path] | None = None
    for start, path in installs.items():
        queue = deque([(start, [path])])
        seen = {start}
        while queue:
            version, chain = queue.popleft()
            if version == target:
                if best is None or len(chain) < len(best):
                    best = chain
                break
            for nxt, upd in updates.get(version, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append((nxt, [*chain, upd]))
    assert best is not None, f"no install path to {target}"
    return best


@cache
def contrib_functions() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(functions of the default version, functions of any version), per extension."""
    current: dict[str, set[str]] = {}
    ever: dict[str, set[str]] = {}
    for control in sorted(EXTENSION_DIR.glob("*.control")):
        ext = control.stem
        match = re.search(r"default_version\s*=\s*'([^']+)'", control.read_text())
        assert match, control
        scripts = {p.name[len(ext) + 2 : -4]: p for p in EXTENSION_DIR.glob(f"{ext}--*.sql")}
        functions: dict[str, list[tuple[str, ...]]] = {}
        for script in _update_path(scripts, match.group(1)):
            _apply(script.read_text(), functions)
        current[ext] = set(functions)
        ever[ext] = {
            _bare(m.group(1)) for script in scripts.values() for m in _CREATE.finditer(_strip(script.read_text()))
        }
    for ext, path in LOOSE_SCRIPTS.items():
        if path.is_file():
            loose: dict[str, list[tuple[str, ...]]] = {}
            _apply(path.read_text(), loose)
            current[ext] = ever[ext] = set(loose)
    return current, ever


def _all(per_ext: dict[str, set[str]]) -> set[str]:
    return set().union(*per_ext.values())


def _elsewhere() -> set[str]:
    return {name for names in ELSEWHERE.values() for name in names}


def _categories(name: str) -> set[str]:
    return {cat for cat, pats in EXTENSION_FUNCTIONS.items() if any(fnmatchcase(name, p) for p in pats)}


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


# ------------------------------------------------------------------ the parser itself


@needs_scripts
def test_parser_reads_known_versions() -> None:
    current, ever = contrib_functions()
    # adminpack 2.1 drops pg_file_read and friends, keeps pg_file_write
    assert {"pg_file_write", "pg_file_sync", "pg_file_unlink", "pg_logdir_ls"} <= current["adminpack"]
    assert "pg_file_read" not in current["adminpack"] and "pg_file_read" in ever["adminpack"]
    # pg_stat_statements 1.7 dropped and re-created pg_stat_statements_reset with arguments
    assert "pg_stat_statements_reset" in current["pg_stat_statements"]
    assert {"crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby"} <= current["tablefunc"]
    assert "dblink_exec" in current["dblink"]
    assert "check_foreign_key" in current["refint"]
    if "sepgsql" in current:
        assert "sepgsql_setcon" in current["sepgsql"]


# ------------------------------------------------------------------ the catalogue


def test_shape() -> None:
    for table in (EXTENSION_FUNCTIONS, EXTENSION_QUALIFIED):
        assert set(table) <= CATEGORY_NAMES
        for cat, names in table.items():
            assert len(set(names)) == len(names), f"duplicates in {cat}"
            for name in names:
                assert name == name.lower() and name.strip() == name, name
    for names in EXTENSION_FUNCTIONS.values():
        assert all("." not in name for name in names)
    for names in EXTENSION_QUALIFIED.values():
        for name in names:
            assert name.count(".") == 1 and not _is_glob(name), name
            assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", part) for part in name.split(".")), name
    for fdw, options in EXTENSION_OPTIONS.items():
        assert fdw == fdw.lower()
        for option, cat in options.items():
            assert option == option.lower() and cat in CATEGORY_NAMES, (fdw, option, cat)


@needs_scripts
def test_every_bare_name_exists() -> None:
    current, ever = contrib_functions()
    known = _all(current)
    elsewhere = _elsewhere()
    unknown = []
    for cat, names in EXTENSION_FUNCTIONS.items():
        for name in names:
            if _is_glob(name):
                if not any(fnmatchcase(n, name) for n in known | elsewhere):
                    unknown.append((cat, name))
            elif name not in known and name not in elsewhere and name not in HISTORIC:
                unknown.append((cat, name))
    assert not unknown, f"not created by any PostgreSQL 15 contrib script nor in ELSEWHERE: {unknown}"


@needs_scripts
def test_explicit_sets_are_honest() -> None:
    current, ever = contrib_functions()
    # a name in ELSEWHERE that PostgreSQL 15 contrib does create belongs in the scripts' check instead
    assert not (_elsewhere() & _all(current)), _elsewhere() & _all(current)
    for name, source in HISTORIC.items():
        assert name in _all(ever) and name not in _all(current), (name, source)
    # and every name in them is classified
    for name in _elsewhere() | set(HISTORIC):
        assert _categories(name), name


@pytest.mark.parametrize(("name", "category"), MUST_HAVE)
def test_must_have(name: str, category: str) -> None:
    assert category in _categories(name)


@pytest.mark.parametrize(("name", "category"), MUST_HAVE_QUALIFIED)
def test_must_have_qualified(name: str, category: str) -> None:
    assert name in EXTENSION_QUALIFIED[category]


@pytest.mark.parametrize("name", ["get", "exist", "exists", "delete", "defined", "slice", "each", "sort", "uniq",
                                  "idx", "index", "similarity", "levenshtein", "crypt", "digest", "replace",
                                  "translate", "schedule", "unschedule", "execute", "parse", "fopen", "put_line",
                                  "invoke", "normal_rand", "http_header", "urlencode", "lo_oid"])
def test_generic_names_not_bare(name: str) -> None:
    assert not _categories(name), name


@needs_scripts
@pytest.mark.parametrize("ext", HARMLESS_EXTENSIONS)
def test_harmless_extensions_untouched(ext: str) -> None:
    current, ever = contrib_functions()
    if ext not in ever:
        pytest.skip(f"{ext} not installed")
    flagged = {name: _categories(name) for name in ever[ext] if _categories(name)}
    assert not flagged, flagged


@needs_scripts
def test_dangerous_contrib_modules_covered() -> None:
    """Every function of these contrib modules is classified (modules whose whole API is dangerous)."""
    current, _ = contrib_functions()
    whole = ("adminpack", "amcheck", "pg_surgery", "pg_walinspect", "pgrowlocks", "pgstattuple", "pg_visibility",
             "refint", "dblink", "pg_freespacemap", "pg_prewarm")
    missed = {ext: sorted(n for n in current.get(ext, ()) if not _categories(n)) for ext in whole}
    assert not any(missed.values()), missed


def test_file_fdw_and_libpq_options() -> None:
    assert EXTENSION_OPTIONS["file_fdw"] == {"filename": "file_access", "program": "file_access"}
    for fdw in ("postgres_fdw", "dblink_fdw"):
        assert EXTENSION_OPTIONS[fdw]["host"] == "network"
        assert EXTENSION_OPTIONS[fdw]["hostaddr"] == "network"
        assert EXTENSION_OPTIONS[fdw]["port"] == "network"
        assert EXTENSION_OPTIONS[fdw]["passfile"] == "file_access"
