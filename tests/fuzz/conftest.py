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
