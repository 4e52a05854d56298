"""The C frame scanner must give exactly what the Python reference gives."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.protocol import framing
from pgjit.protocol.errors import ProtocolError

WATCHES = [frozenset(), frozenset(b"ZE"), frozenset(b"QSFXPEcf"), frozenset(range(256))]


def test_accelerator_is_built_in_ci():
    # setup.py marks it optional so that installs without a compiler work;
    # in CI (gcc present) it must have been built, or the benchmarks lie.
    if os.environ.get("CI") == "true":
        assert framing._c_scan is not None


def _frames(draw_lengths: list[tuple[int, int]]) -> bytes:
    out = bytearray()
    for tag, n in draw_lengths:
        out += bytes([tag]) + struct.pack("!I", n + 4) + b"x" * n
    return bytes(out)


def _both(buf, pos, end, max_size, watch):
    results = []
    for fn in (framing._scan_watched_py, framing.scan_watched):
        try:
            results.append(("ok", fn(buf, pos, end, max_size, watch)))
        except ProtocolError as e:
            results.append(("error", str(e)))
    return results


@pytest.mark.skipif(framing._c_scan is None, reason="the C accelerator is not built")
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 255), st.integers(0, 300)), max_size=40),
    st.binary(max_size=12),
    st.sampled_from(WATCHES),
    st.integers(0, 20),
    st.sampled_from([4, 100, 1 << 30]),
    st.sampled_from(["bytes", "bytearray", "memoryview"]),
)
def test_c_and_python_agree(frames, tail, watch, pos, max_size, kind):
    raw = _frames(frames) + tail
    buf = {"bytes": raw, "bytearray": bytearray(raw), "memoryview": memoryview(raw)}[kind]
    for end in (len(raw), max(0, len(raw) - 3)):
        py, c = _both(buf, min(pos, len(raw)), end, max_size, watch)
        assert py == c


@pytest.mark.skipif(framing._c_scan is None, reason="the C accelerator is not built")
@given(st.binary(max_size=200), st.sampled_from(WATCHES))
def test_c_and_python_agree_on_random_bytes(raw, watch):
    py, c = _both(raw, 0, len(raw), 1 << 20, watch)
    assert py == c
