"""Developer tooling: throwaway PostgreSQL clusters, the demo, benchmarks.

Nothing in here is imported by the gateway itself; these modules exist for the
test suite (``tests/conftest.py``), ``make demo`` and ``make bench``.
"""

from pgjit.devtools.pgcluster import PgCluster, PgClusterError, PgUnavailable, free_port, make_temp_base

__all__ = ["PgCluster", "PgClusterError", "PgUnavailable", "free_port", "make_temp_base"]
