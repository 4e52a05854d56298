"""pgJDBC through the gateway. ``java/PgjitJdbcCheck.java`` is compiled once
per session against the newest pgJDBC jar in the local Maven repository and run
against the gateway; it prints ``OK <n checks>`` or ``FAIL <reason>``. This
module then checks what the program wrote to the real database."""

from __future__ import annotations

import glob
import os
import re
import subprocess
from pathlib import Path

import pytest

from ._helpers import require_executable

pytestmark = [pytest.mark.pg, pytest.mark.clients]

JAVA_DIR = Path(__file__).resolve().parent / "java"
JAR_GLOB = "/root/.m2/repository/org/postgresql/postgresql/*/postgresql-*.jar"


def _version_key(path: str) -> tuple:
    version = Path(path).parent.name
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.-]", version))


def find_pgjdbc_jar() -> str:
    jars = [
        j
        for j in glob.glob(JAR_GLOB)
        if re.fullmatch(r"postgresql-[0-9][0-9.]*(-[A-Za-z0-9.]+)?\.jar", os.path.basename(j))
        and not j.endswith(("-sources.jar", "-javadoc.jar"))
    ]
    if not jars:
        pytest.fail(
            f"the pgJDBC jar was not found (looked for {JAR_GLOB}); fetch it with e.g. "
            "`mvn dependency:get -Dartifact=org.postgresql:postgresql:42.7.13`",
            pytrace=False,
        )
    return max(jars, key=_version_key)


@pytest.fixture(scope="session")
def jdbc_program(tmp_path_factory) -> list[str]:
    """The java command line (up to the class name) for the compiled check program."""
    javac = require_executable("javac", "install a JDK >= 11 (e.g. apt-get install default-jdk-headless)")
    java = require_executable("java", "install a JDK >= 11 (e.g. apt-get install default-jdk-headless)")
    jar = find_pgjdbc_jar()
    build = tmp_path_factory.mktemp("jdbc-build")
    cp = subprocess.run(
        [javac, "-cp", jar, "-d", str(build), str(JAVA_DIR / "PgjitJdbcCheck.java")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if cp.returncode != 0:
        pytest.fail(f"javac failed (exit {cp.returncode}):\n{cp.stdout}\n{cp.stderr}", pytrace=False)
    return [java, "-cp", f"{jar}{os.pathsep}{build}", "PgjitJdbcCheck"]


def run_program(cmd: list[str]) -> tuple[int, str, str]:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"PgjitJdbcCheck did not finish within 120 s:\n{e.stdout}\n{e.stderr}", pytrace=False)
    return cp.returncode, cp.stdout, cp.stderr


def test_pgjdbc(jdbc_program, gateway, direct, new_table):
    table = new_table("id int primary key, name text")
    url = f"jdbc:postgresql://127.0.0.1:{gateway.port}/appdb?sslmode=disable"
    rc, out, err = run_program([*jdbc_program, url, "alice@example.com", "x", table])
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert rc == 0 and last.startswith("OK "), f"exit {rc}\nstdout:\n{out}\nstderr:\n{err[-5000:]}"
    assert int(last.split()[1]) >= 100

    # What the program left in the real database.
    rows = direct.execute(
        f"select count(*), count(*) filter (where id between 1 and 200 and name like 'batch %%'), "
        f"count(*) filter (where id >= 20000), max(name) filter (where id = 10002), "
        f"count(*) filter (where id in (10001, 10003) or name = 'bad batch') from {table}"
    ).fetchone()
    assert rows == (1201, 200, 1000, "kept", 0)
    assert direct.execute(f"select name from {table} where id = 20500").fetchone() == ("copy 20500 ü",)


def test_pgjdbc_prefer_ssl_and_own_table(jdbc_program, gateway, direct):
    """sslmode=prefer: pgJDBC asks for TLS first, the gateway declines, and the
    whole program still passes (including its cancel requests)."""
    url = f"jdbc:postgresql://127.0.0.1:{gateway.port}/appdb?sslmode=prefer"
    rc, out, err = run_program([*jdbc_program, url, "bob@example.com", "anything"])
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert rc == 0 and last.startswith("OK "), f"exit {rc}\nstdout:\n{out}\nstderr:\n{err[-5000:]}"
    left = direct.execute("select count(*) from pg_tables where schemaname = 'public' and tablename like 'jdbc\\_%%'").fetchone()[0]
    assert left == 0
