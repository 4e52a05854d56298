"""Dangerous functions and options of PostgreSQL contrib modules and common extensions.

This complements :mod:`pgjit.policy.catalogue` (core functions) with what the
contrib modules shipped with PostgreSQL 15-18, plus widely installed
third-party extensions, add. It only holds data. How the gate uses it is up to
the gate.

Categories are the catalogue's (policy files refer to them under
``match.dangerous``). A name can be in more than one category.

``sql_executor``
    runs SQL given as text (``crosstab``, ``connectby``, ``xpath_table``,
    ``dblink``, ``cron.schedule``, ``pg_background_launch``, ...), or reads or
    writes relations that are named only in a string, a ``regclass`` or a
    trigger argument (refint's ``check_foreign_key`` deletes from the tables
    named in its trigger arguments; ``pgstattuple('t')``, ``get_raw_page``,
    ``pg_surgery``, amcheck, pg_partman maintenance, timescaledb chunk and job
    functions). The gate treats such a call as dynamic SQL that may read and
    write anything.
``file_access``
    reads or writes server files or WAL (adminpack, pg_walinspect,
    pg_logicalinspect, orafce's ``utl_file``, file_fdw's options).
``server_control``
    controls the server, its buffers, background workers or other backends,
    resets statistics, or changes storage or security state directly
    (``pg_stat_statements_reset``, ``pg_buffercache_evict*``, ``pg_prewarm``,
    pg_surgery, the pldebugger API that attaches to other backends).
``network``
    opens outbound connections (dblink, postgres_fdw, pgsql-http, pg_net,
    aws_s3, Citus ``run_command_on_*``).
``large_object``
    acts on large objects (the lo module's ``lo_manage`` trigger unlinks them).
``side_effect``
    changes state while looking like a read or a harmless trigger: NOTIFY from
    tcn, ``nextval`` from autoinc, orafce's ``dbms_pipe``/``dbms_alert``
    messages, deleting scheduled jobs.

Name forms

``EXTENSION_FUNCTIONS`` holds bare lower-case names and globs (``fnmatch``
syntax, as in the catalogue), to be matched on a call's bare name, whatever its
schema. A name goes here only when it is specific enough that a user function
of that name is unlikely (no bare ``get``, ``exist``, ``schedule``,
``put_line``). Extensions installed into a schema of the user's choice
(timescaledb, pg_partman's specific names, pg_background) are listed bare
because their schema is not known.

``EXTENSION_QUALIFIED`` holds ``schema.name`` entries (exact, lower-case, no
globs) for dangerous functions whose bare name is generic: pg_cron's
``cron.schedule``, orafce's ``utl_file.fopen``/``dbms_sql.execute``, pg_net's
``net.worker_restart``, pg_partman's ``partman.create_parent``. Such an entry
is meant to match the schema-qualified call *and* a bare call of the same name
(the schema can be on ``search_path``); the gate decides how far it trusts a
bare match, e.g. only when the extension is known to be installed or when the
schema is on the session's ``search_path``. The schemas given are the
extensions' fixed or default ones (pg_partman's schema is chosen at install;
``partman`` is the documented convention). Some bare parts collide with
harmless functions (``utl_file.put_line`` vs ``dbms_output.put_line``), which is
one more reason a bare match of a qualified entry is weaker evidence.

``EXTENSION_OPTIONS`` maps a foreign-data wrapper name to the server, user
mapping or foreign table options whose value makes the wrapper touch files or
the network, and the category each implies (file_fdw ``filename`` and
``program``: both ``file_access``, as COPY ... PROGRAM is in the catalogue's
docstring; postgres_fdw and dblink_fdw ``host``: ``network``, ``passfile`` and
the ``ssl*`` paths: ``file_access``).

Reviewed and left out

* Contrib modules with no SQL-callable functions: auth_delay, auto_explain,
  basic_archive, basebackup_to_shell (its ``basebackup_to_shell.command``
  setting runs a shell command, but that is a superuser setting, not a call),
  passwordcheck, pg_overexplain (EXPLAIN options only), and the SPI triggers
  insert_username and moddatetime (they only set columns of the new row).
* Pure data-type, index-support and text modules: bloom, btree_gin,
  btree_gist, citext, cube, dict_int, dict_xsyn, earthdistance, fuzzystrmatch,
  hstore, intagg, intarray, isn, ltree, pg_trgm, pgcrypto, seg, sslinfo,
  tsm_system_rows, tsm_system_time, unaccent, uuid-ossp.
* Read-only monitoring with no named relation: ``pg_buffercache_pages`` and
  its summary / usage-count / NUMA / OS-page variants,
  ``pg_stat_statements``/``pg_stat_statements_info``,
  old_snapshot's ``pg_old_snapshot_time_mapping``,
  ``postgres_fdw_get_connections``.
* pageinspect functions that only decode a page passed as bytea
  (``page_header``, ``heap_page_items``, ``brin_page_items`` ...): the page
  comes from ``get_raw_page``, which is listed. ``heap_page_item_attrs`` and
  ``tuple_data_split`` are listed because they can detoast, which reads the
  TOAST relation.
* xml2's ``xpath_*`` and ``xslt_process`` work on the XML passed in; since the
  2012 security fixes libxslt's file and network access is forbidden.
* Untrusted languages (plpython3u, plperlu, pltclu): their danger is the body
  of DO / CREATE FUNCTION, which the classifier already marks as unreadable;
  their handler functions cannot usefully be called from SQL.
* pgaudit (event-trigger functions only; its ``pgaudit.*`` settings are
  superuser settings), pg_hint_plan (hints live in comments and the
  ``hint_plan.hints`` table), pgagent (jobs are rows in
  ``pgagent.pga_jobstep``, so scheduling one is an ordinary INSERT the gate
  sees), PostGIS ``ST_AsMVT`` (harmless).
"""

from __future__ import annotations

from typing import Final

EXTENSION_FUNCTIONS: Final[dict[str, tuple[str, ...]]] = {
    "sql_executor": (
        # tablefunc: the crosstab family runs its source/category SQL text
        # arguments; the glob also covers user-made crosstab_* wrappers
        "crosstab*",
        # tablefunc: builds and runs a query from the table and column names given as text
        "connectby",
        # xml2: builds and runs a SELECT from its table/column/condition text arguments
        "xpath_table",
        # dblink: runs SQL text on a remote server; dblink_build_sql_* read a named local relation
        "dblink*",
        # refint (spi): trigger that deletes/updates rows in tables named in its arguments
        "check_foreign_key",
        # refint (spi): trigger that queries the table named in its arguments
        "check_primary_key",
        # pageinspect: raw pages of a relation named by text/regclass
        "get_raw_page",
        # pageinspect: B-tree metapage/page stats/items of an index named by text
        "bt_metap",
        "bt_page_stats",
        "bt_page_items",
        # pageinspect 1.12 (PostgreSQL 16+): several B-tree pages of an index named by text
        "bt_multi_page_stats",
        # pageinspect: hash bitmap page of an index named by regclass
        "hash_bitmap_info",
        # pageinspect: decode tuples with a named relation's descriptor, can detoast (reads the TOAST table)
        "heap_page_item_attrs",
        "tuple_data_split",
        # pgstattuple: scan a table/index named by text or regclass
        "pgstattuple",
        "pgstattuple_approx",
        "pgstatindex",
        "pgstatginindex",
        "pgstathashindex",
        "pg_relpages",
        # pgrowlocks: scans a table named by text and reports its locked rows
        "pgrowlocks",
        # pg_freespacemap: free space map of a relation named by regclass
        "pg_freespace",
        # pg_visibility: visibility map / page flags of a relation named by regclass
        "pg_visibility",
        "pg_visibility_map",
        "pg_visibility_map_summary",
        "pg_check_frozen",
        "pg_check_visible",
        # pg_visibility: destroys the visibility map of a named relation
        "pg_truncate_visibility_map",
        # amcheck: reads every page of an index/table named by regclass (parent check takes ShareLock)
        "bt_index_check",
        "bt_index_parent_check",
        "verify_heapam",
        # amcheck 1.5 (PostgreSQL 18): GIN index named by regclass
        "gin_index_check",
        # pg_prewarm: reads a relation named by regclass into the buffer cache
        "pg_prewarm",
        # pg_surgery: kills or freezes tuples of a relation named by regclass (destructive, no undo)
        "heap_force_kill",
        "heap_force_freeze",
        # pg_background: runs SQL text in a background worker
        "pg_background_*",
        # pg_cron: runs SQL text on a schedule in another database
        "schedule_in_database",
        # pg_dirtyread: reads dead tuples of a relation named by regclass
        "pg_dirtyread",
        # aws_s3: COPY into a table named by text from S3 / runs a query text and exports it
        "table_import_from_s3",
        "query_export_to_s3",
        # timescaledb: background jobs run a procedure named by regproc with a jsonb config
        "add_job",
        "alter_job",
        "run_job",
        # timescaledb: runs SQL text on data nodes (multi-node, removed in 2.14)
        "distributed_exec",
        # timescaledb: delete, rewrite or move chunks of a hypertable named by regclass
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
        # timescaledb: materialises a continuous aggregate named by regclass
        "refresh_continuous_aggregate",
        # timescaledb: schedule jobs that drop/compress/reorder/refresh a named hypertable
        "add_retention_policy",
        "add_compression_policy",
        "add_columnstore_policy",
        "add_reorder_policy",
        "add_continuous_aggregate_policy",
        # pg_partman: DDL and data moves on tables named by text
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
        # pglogical: runs DDL text locally and queues it for subscribers
        "replicate_ddl_command",
        # Citus: runs SQL text on worker nodes / shards
        "run_command_on_*",
        # PostGIS: ALTER/DROP TABLE on tables named by text
        "addgeometrycolumn",
        "dropgeometrycolumn",
        "dropgeometrytable",
        "updategeometrysrid",
        "populate_geometry_columns",
        # PostGIS raster: constraints on / overview tables from tables named by text or regclass
        "addrasterconstraints",
        "droprasterconstraints",
        "addoverviewconstraints",
        "dropoverviewconstraints",
        "st_createoverview",
        # PostGIS: runs ALTER EXTENSION ... UPDATE for every postgis extension
        "postgis_extensions_upgrade",
    ),
    "file_access": (
        # adminpack (removed in PostgreSQL 17): write/rename/delete/sync server files, list the log directory
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        # adminpack 1.x (dropped by the 2.0 update; kept by old installs carried over by pg_upgrade)
        "pg_file_read",
        "pg_file_length",
        "pg_logfile_rotate",
        # pg_walinspect: read WAL files from pg_wal
        "pg_get_wal_record_info",
        "pg_get_wal_records_info",
        "pg_get_wal_records_info_till_end_of_wal",
        "pg_get_wal_stats",
        "pg_get_wal_stats_till_end_of_wal",
        # pg_walinspect 1.1 (PostgreSQL 16+): block data and full-page images from WAL
        "pg_get_wal_block_info",
        # pg_logicalinspect (PostgreSQL 18): read a file in pg_logical/snapshots named by text
        "pg_get_logical_snapshot_meta",
        "pg_get_logical_snapshot_info",
        # pg_prewarm: writes autoprewarm.blocks in the data directory
        "autoprewarm_dump_now",
        # sepgsql: reads the SELinux specfile given as text
        "sepgsql_restorecon",
    ),
    "server_control": (
        # pg_stat_statements: discards statistics (all users' unless filtered)
        "pg_stat_statements_reset",
        # pg_buffercache 1.5/1.6 (PostgreSQL 17/18): evict a buffer, a relation's buffers, all buffers
        "pg_buffercache_evict*",
        # pg_prewarm: fills shared buffers; starts the autoprewarm background worker; dumps its state
        "pg_prewarm",
        "autoprewarm_start_worker",
        "autoprewarm_dump_now",
        # pg_surgery: bypasses MVCC on disk
        "heap_force_kill",
        "heap_force_freeze",
        # pg_visibility: rewrites a relation fork
        "pg_truncate_visibility_map",
        # adminpack 1.x: rotates the server log
        "pg_logfile_rotate",
        # sepgsql: switches the client's security label / relabels every object
        "sepgsql_setcon",
        "sepgsql_restorecon",
        # pldebugger (pldbgapi): attach to other backends, set breakpoints, change their variables
        "pldbg_*",
        "plpgsql_oid_debug",
        "edb_oid_debug",
        # pg_background: grants/revokes who may launch background SQL
        "grant_pg_background_privileges",
        "revoke_pg_background_privileges",
        # timescaledb: stop/restart background workers around restore; cluster-wide restore point
        "timescaledb_pre_restore",
        "timescaledb_post_restore",
        "create_distributed_restore_point",
        # third-party statistics resets: pg_stat_kcache, pg_qualstats, pg_wait_sampling, pg_stat_monitor
        "pg_stat_kcache_reset",
        "pg_qualstats_reset",
        "pg_wait_sampling_reset_profile",
        "pg_stat_monitor_reset",
        # PostGIS: ALTER EXTENSION ... UPDATE
        "postgis_extensions_upgrade",
    ),
    "network": (
        # dblink: connects to other servers
        "dblink*",
        # postgres_fdw: close cached connections to foreign servers
        "postgres_fdw_disconnect",
        "postgres_fdw_disconnect_all",
        # pgsql-http: HTTP requests (repeats the catalogue, so this table stands alone), curl options (proxy, CA files)
        "http",
        "http_get",
        "http_post",
        "http_put",
        "http_patch",
        "http_delete",
        "http_head",
        "http_set_curlopt",
        # aws_s3: reads from / writes to S3
        "table_import_from_s3",
        "query_export_to_s3",
        # timescaledb multi-node (removed in 2.14): data nodes are remote servers
        "add_data_node",
        "attach_data_node",
        "alter_data_node",
        "distributed_exec",
        # Citus: connect to worker nodes
        "run_command_on_*",
    ),
    "large_object": (
        # lo: trigger that unlinks the large object a replaced/deleted lo column referred to
        "lo_manage",
    ),
    "side_effect": (
        # tcn: trigger that sends NOTIFY
        "triggered_change_notification",
        # autoinc (spi): trigger that calls nextval on the sequence named in its arguments
        "autoinc",
        # timescaledb: remove scheduled jobs and policies
        "delete_job",
        "remove_retention_policy",
        "remove_compression_policy",
        "remove_columnstore_policy",
        "remove_reorder_policy",
        "remove_continuous_aggregate_policy",
    ),
}

EXTENSION_QUALIFIED: Final[dict[str, tuple[str, ...]]] = {
    "sql_executor": (
        # pg_cron: run SQL text on a schedule (in another database for schedule_in_database)
        "cron.schedule",
        "cron.schedule_in_database",
        "cron.alter_job",
        # orafce dbms_sql: parse and run SQL text
        "dbms_sql.parse",
        "dbms_sql.execute",
        "dbms_sql.execute_and_fetch",
        "dbms_sql.fetch_rows",
        # pg_partman: DDL, maintenance and data moves on tables named by text
        "partman.create_parent",
        "partman.run_maintenance",
        "partman.run_maintenance_proc",
        "partman.check_default",
        "partman.apply_constraints",
        "partman.drop_constraints",
        "partman.apply_cluster",
        "partman.apply_privileges",
        "partman.reapply_privileges",
        "partman.autovacuum_off",
        "partman.autovacuum_reset",
        "partman.run_analyze",
        # aws_s3 (also bare): COPY into a named table / export a query text
        "aws_s3.table_import_from_s3",
        "aws_s3.query_export_to_s3",
    ),
    "file_access": (
        # orafce utl_file: open, read, write, copy, rename and delete server files
        "utl_file.fopen",
        "utl_file.fclose",
        "utl_file.fclose_all",
        "utl_file.fcopy",
        "utl_file.fflush",
        "utl_file.fgetattr",
        "utl_file.fremove",
        "utl_file.frename",
        "utl_file.get_line",
        "utl_file.get_nextline",
        "utl_file.new_line",
        "utl_file.put",
        "utl_file.put_line",
        "utl_file.putf",
        "utl_file.tmpdir",
    ),
    "server_control": (
        # pg_net: restarts its background worker
        "net.worker_restart",
    ),
    "network": (
        # pg_net: asynchronous HTTP requests (bare names are also in EXTENSION_FUNCTIONS)
        "net.http_get",
        "net.http_post",
        "net.http_delete",
        # aws_s3 / RDS aws_lambda: S3 transfers, Lambda invocation
        "aws_s3.table_import_from_s3",
        "aws_s3.query_export_to_s3",
        "aws_lambda.invoke",
    ),
    "side_effect": (
        # pg_cron: removes a scheduled job
        "cron.unschedule",
        # orafce dbms_pipe / dbms_alert: messages between sessions
        "dbms_pipe.send_message",
        "dbms_pipe.receive_message",
        "dbms_pipe.create_pipe",
        "dbms_pipe.remove_pipe",
        "dbms_pipe.purge",
        "dbms_alert.signal",
    ),
}

# libpq connection options, accepted by postgres_fdw and dblink_fdw servers and user mappings.
_LIBPQ_OPTIONS: Final[dict[str, str]] = {
    "host": "network",  # a host name, or a socket directory (a loop back into this server)
    "hostaddr": "network",
    "port": "network",
    "service": "network",  # a connection from the server's pg_service.conf
    "passfile": "file_access",  # a password file on the server
    "sslcert": "file_access",  # client certificate, key, CA, CRL: paths on the server
    "sslkey": "file_access",
    "sslrootcert": "file_access",
    "sslcrl": "file_access",
    "sslcrldir": "file_access",
    "sslkeylogfile": "file_access",  # PostgreSQL 18 libpq: writes TLS key material to a file
}

EXTENSION_OPTIONS: Final[dict[str, dict[str, str]]] = {
    # file_fdw: reads a server file, or runs a shell command (like COPY ... PROGRAM)
    "file_fdw": {"filename": "file_access", "program": "file_access"},
    # postgres_fdw: libpq options; password_required=false lets a non-superuser connect without a password
    "postgres_fdw": {**_LIBPQ_OPTIONS, "password_required": "network", "use_scram_passthrough": "network"},
    # dblink_fdw: the same libpq options, for dblink_connect('server_name')
    "dblink_fdw": {**_LIBPQ_OPTIONS, "use_scram_passthrough": "network"},
    # mysql_fdw: remote host; client certificate files and option file on the server
    "mysql_fdw": {
        "host": "network",
        "port": "network",
        "ssl_key": "file_access",
        "ssl_cert": "file_access",
        "ssl_ca": "file_access",
        "ssl_capath": "file_access",
        "mysql_default_file": "file_access",
    },
    # oracle_fdw: remote Oracle connect string
    "oracle_fdw": {"dbserver": "network"},
    # tds_fdw: remote SQL Server / Sybase
    "tds_fdw": {"servername": "network", "port": "network"},
    # mongo_fdw, redis_fdw: remote servers
    "mongo_fdw": {"address": "network", "port": "network"},
    "redis_fdw": {"address": "network", "port": "network"},
    # sqlite_fdw: a database file on the server
    "sqlite_fdw": {"database": "file_access"},
    # ogr_fdw: a GDAL data source, a server path or a URL
    "ogr_fdw": {"datasource": "file_access"},
}
