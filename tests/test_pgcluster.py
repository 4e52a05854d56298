"""The throwaway PostgreSQL the other tests run against (pgjit/devtools/pgcluster.py)."""

from __future__ import annotations

import os

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgjit.devtools.pgcluster import HBA_CONF, TEST_ROLES, PgCluster

pytestmark = pytest.mark.pg


def test_dsn_quotes_awkward_values(tmp_path):
    c = PgCluster(tmp_path / "d", port=5999)
    d = conninfo_to_dict(c.dsn("we ird'user", "p w\\d'x", "my db", application_name="t"))
    assert d == {"host": "127.0.0.1", "port": "5999", "user": "we ird'user", "password": "p w\\d'x", "dbname": "my db", "application_name": "t"}
    # The superuser's password is filled in; other users get none unless given.
    assert conninfo_to_dict(c.dsn())["password"] == c.superuser_password
    assert "password" not in conninfo_to_dict(c.dsn("pgjit_trust"))
    assert c.url("a@b.c", "p/w", "appdb", sslmode="disable") == "postgresql://a%40b.c:p%2Fw@127.0.0.1:5999/appdb?sslmode=disable"
    assert conninfo_to_dict(c.dsn("app", sslmode="verify-full"))["sslrootcert"] == str(c.ca_path)


def test_server_is_up_on_loopback_only(pg):
    assert pg.running
    assert pg.version >= 13 and pg.version_string.startswith(str(pg.version))
    assert (pg.bindir / "postgres").is_file()
    assert pg.psql("SELECT 1") == "1"
    names = ["listen_addresses", "port", "unix_socket_directories", "password_encryption", "max_connections", "fsync", "log_connections", "logging_collector", "server_encoding", "lc_collate"]
    settings = dict(pg.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,)))
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["port"] == str(pg.port)
    assert settings["unix_socket_directories"] == str(pg.socket_dir)
    assert settings["password_encryption"] == "scram-sha-256"
    assert settings["max_connections"] == "200"
    assert settings["fsync"] == "off"
    assert settings["log_connections"] == "on"
    assert settings["logging_collector"] == "off"
    assert settings["server_encoding"] == "UTF8"
    assert settings["lc_collate"] == "C"
    if os.geteuid() == 0:
        assert pg.os_user and pg.datadir.stat().st_uid != 0
    assert (pg.datadir / "pg_hba.conf").read_text() == HBA_CONF


def test_roles_and_database(pg):
    rows = dict((r[0], r[1:]) for r in pg.execute("SELECT rolname, rolcanlogin, rolcreaterole, rolsuper, left(rolpassword, 14) FROM pg_authid WHERE rolname = ANY(%s)", (list(TEST_ROLES),)))
    assert set(rows) == set(TEST_ROLES)
    assert all(r[0] for r in rows.values()), "all test roles can log in"
    assert rows["pgjit_admin"][1] is True and not any(r[2] for r in rows.values())
    assert rows["pgjit_md5"][3].startswith("md5")
    assert rows["app"][3] == "SCRAM-SHA-256$" and rows["pgjit_admin"][3] == "SCRAM-SHA-256$"
    assert rows["pgjit_trust"][3] is None
    assert pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'") == "app"


def test_sample_data(pg):
    out = pg.psql("SELECT count(*), count(DISTINCT email), min(ssn) ~ '^[0-9]{3}-[0-9]{2}-[0-9]{4}$' FROM customers", dbname="appdb")
    assert out == "1000|1000|t"
    assert int(pg.psql("SELECT count(*) FROM orders", dbname="appdb")) > 1000
    assert pg.psql("SELECT string_agg(tableowner, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public' AND tablename IN ('customers', 'orders')", dbname="appdb") == "app,app"
    assert pg.psql("SELECT name, email, ssn, created_at FROM customers WHERE id = 7", dbname="appdb") == "Customer 7|customer7@example.com|107-07-0007|2024-01-01 07:00:00+00"
    # Loading again changes nothing; identity columns continue after the rows.
    pg.load_sample_data("appdb", owner="app")
    with psycopg.connect(pg.dsn("app", "apppass", "appdb")) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (1000,)
        new_id = conn.execute("INSERT INTO customers (name, email) VALUES ('x', 'x@example.com') RETURNING id").fetchone()[0]
        assert new_id > 1000
        conn.rollback()


def test_scram_login(pg):
    with psycopg.connect(pg.dsn("app", "apppass", "appdb")) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", "appdb")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn("app", "wrong", "appdb"))
    assert "method=scram-sha-256" in pg.server_log()


def test_md5_login(pg):
    with psycopg.connect(pg.dsn("pgjit_md5", "md5pass", "appdb")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("pgjit_md5",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn("pgjit_md5", "nope", "appdb"))
    assert 'identity="pgjit_md5" method=md5' in pg.server_log()


def test_trust_login(pg):
    with psycopg.connect(pg.dsn("pgjit_trust", dbname="appdb")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("pgjit_trust",)


def test_superuser_needs_its_password_over_tcp(pg):
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn("postgres", "not-the-password"))
    assert pg.execute("SELECT current_setting('is_superuser')") == [("on",)]


def test_psql_helper_reports_errors(pg):
    with pytest.raises(Exception, match="does_not_exist"):
        pg.psql("SELECT * FROM does_not_exist")
    assert pg.psql("SELECT 1/0", check=False) == ""


def test_server_log_records_connections_and_statements(pg):
    marker = "pgjit_log_marker_4711"
    pg.psql(f"SELECT '{marker}'", dbname="appdb", user="app", password="apppass")
    log = pg.server_log()
    assert "connection authorized: user=app database=appdb" in log
    assert marker in log  # log_statement=all in the shared test cluster
    assert "disconnection:" in log
    assert pg.log_path == pg.datadir / "server.log"


def test_ssl_cluster_with_ca(pg_factory):
    pg2 = pg_factory(ssl=True, bootstrap=False)
    assert pg2.ca_path.is_file()
    with psycopg.connect(pg2.dsn(sslmode="verify-full")) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        assert conn.info.pgconn.ssl_in_use
    # 'localhost' is in the certificate too.
    with psycopg.connect(pg2.dsn(sslmode="verify-full", host="localhost")) as conn:
        assert conn.info.pgconn.ssl_in_use
    # A client that trusts another CA refuses the server.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg2.dsn(sslmode="verify-full", sslrootcert=os.devnull))


def test_stop_and_restart(pg_factory):
    c = pg_factory(bootstrap=False)
    c.stop()
    assert not c.running
    c.stop()  # stopping twice is harmless
    c.start({"work_mem": "8MB"})
    assert c.running and c.psql("SHOW work_mem") == "8MB"


def test_demo_check(pg):
    """`make demo`'s --check: a cluster in the state directory, the gateway in front, one psql query through it."""
    import shutil
    import subprocess
    import sys

    from pgjit.devtools.pgcluster import make_temp_base

    state = make_temp_base("pgjit-demo-test-")
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pgjit.devtools.demo", "--check", "--dir", str(state), "--port", "0"],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "check OK: SELECT count(*) FROM customers -> 1000" in r.stdout
        assert (state / "pgjit.yaml").is_file() and (state / "pgdata" / "PG_VERSION").is_file()
        assert not PgCluster(state / "pgdata").running, "the demo stops its PostgreSQL on exit"
    finally:
        shutil.rmtree(state, ignore_errors=True)
