"""A pytest plugin that :mod:`pgjit.devtools.peertests` loads into a foreign
test suite (psycopg's) to record each test's outcome as it finishes.

It runs inside the peer virtualenv, where pgjit is not installed: it imports
nothing but the standard library and pytest. The results file is named by
``$PGJIT_PEER_RESULTS``; one JSON object per line, written and flushed when a
test's last phase is reported, so a run that is killed on its time limit still
leaves the outcomes of every test that finished::

    {"nodeid": "tests/test_x.py::test_y", "outcome": "failed",
     "start": 1700000000.1, "stop": 1700000000.3, "phase": "call",
     "message": "first lines of the failure"}

``outcome`` is one of passed, failed, error (setup or teardown failed),
skipped, xfailed, xpassed. Collection errors are recorded as ``error`` with
the collected node's id.
"""

from __future__ import annotations

import json
import os
import time

import pytest

_MESSAGE_CHARS = 4000

_results_file = None
_current: dict[str, dict] = {}


def _out():
    global _results_file
    if _results_file is None:
        path = os.environ.get("PGJIT_PEER_RESULTS")
        if not path:
            return None
        _results_file = open(path, "a", encoding="utf-8")
    return _results_file


def _write(rec: dict) -> None:
    f = _out()
    if f is None:
        return
    f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    f.flush()


def _message(report) -> str:
    try:
        text = report.longreprtext or ""
    except Exception:  # noqa: BLE001 - a report we cannot render still counts
        text = str(report.longrepr)
    if len(text) > _MESSAGE_CHARS:
        # The end of a traceback says what failed; keep it rather than the start.
        text = "...\n" + text[-_MESSAGE_CHARS:]
    return text


def pytest_runtest_logstart(nodeid, location):
    _current[nodeid] = {"nodeid": nodeid, "outcome": None, "start": time.time()}


def pytest_runtest_logreport(report):
    rec = _current.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": None, "start": time.time()})
    wasxfail = hasattr(report, "wasxfail")
    if report.when == "setup":
        if report.failed:
            rec.update(outcome="error", phase="setup", message=_message(report))
        elif report.skipped:
            rec.update(outcome="xfailed" if wasxfail else "skipped", phase="setup", message=_message(report))
    elif report.when == "call":
        if wasxfail:
            rec.update(outcome="xfailed" if report.skipped else "xpassed", phase="call")
            if report.skipped:
                rec["message"] = _message(report)
        elif report.failed:
            rec.update(outcome="failed", phase="call", message=_message(report))
        elif report.skipped:
            rec.update(outcome="skipped", phase="call", message=_message(report))
        else:
            rec.update(outcome="passed", phase="call")
    elif report.when == "teardown":
        if report.failed and rec.get("outcome") in (None, "passed", "xpassed", "skipped", "xfailed"):
            rec.update(outcome="error", phase="teardown", message=_message(report))


def pytest_runtest_logfinish(nodeid, location):
    rec = _current.pop(nodeid, None)
    if rec is None:
        return
    rec["stop"] = time.time()
    if rec["outcome"] is None:
        rec["outcome"] = "error"
        rec.setdefault("message", "no outcome reported")
    _write(rec)


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid or "<collection>", "outcome": "error", "phase": "collect",
                "start": time.time(), "stop": time.time(), "message": _message(report)})


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    global _results_file
    f = _out()
    if f is not None:
        f.write(json.dumps({"session_finished": True, "exitstatus": int(exitstatus)}) + "\n")
        f.close()
        _results_file = None
