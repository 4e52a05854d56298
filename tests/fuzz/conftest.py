"""Shared settings of the fuzz tests (tests/fuzz/; the live protocol fuzzer is
test_live_fuzz.py).

The session-wide fixtures of tests/conftest.py (``pg``, ``pg_factory``, the CI
skip-is-failure hooks) apply here too; this file only adds the knobs of the
fuzzer itself.
"""

from __future__ import annotations

import os

import pytest

#: Total number of hypothesis examples across the fuzz tests; `make test`
#: keeps the default small, `make fuzz` raises it.
FUZZ_EXAMPLES = max(4, int(os.environ.get("PGJIT_FUZZ_EXAMPLES", "150")))


@pytest.fixture(scope="session")
def fuzz_examples() -> int:
    return FUZZ_EXAMPLES

#: Sessions per hypothesis example, run side by side (threads). `make test`
#: runs one at a time; `make fuzz` runs a swarm, which is how it reaches
#: 100,000 sessions in well under an hour on two cores (most of a session's
#: time is spent waiting for timeouts and stalls, not working).
FUZZ_SWARM = max(1, int(os.environ.get("PGJIT_FUZZ_SWARM", "1")))
