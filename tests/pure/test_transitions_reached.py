"""Every entry of the scheduler's transition table is reached by a pure test.

The other tests of this folder record the entries they reach (conftest.py); when this
session did not run them all (one file, ``-k``...), they are run again in a subprocess
to find out.  The worker's state machine has no table: its states are set in place."""

import json
import os
import subprocess
import sys

import pytest

from conftest import CHECK, HERE, OUT, REACHED, whole_folder_ran
from dask_ipy.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(300)


def reached(session, tmp_path):
    """(the table's entries reached, what to say of the run if one failed)."""
    if whole_folder_ran(session):
        return set(REACHED), ("" if not session.testsfailed else
                              f"; {session.testsfailed} tests failed before")
    out = tmp_path / "reached.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
         f"--ignore={HERE / CHECK}"],
        cwd=HERE.parent.parent, env={**os.environ, OUT: str(out)},
        capture_output=True, text=True, timeout=280)
    report = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.exists(), report
    return ({tuple(pair) for pair in json.loads(out.read_text())},
            "" if proc.returncode == 0 else "; the tests failed:\n" + report)


def test_every_scheduler_transition_is_reached_by_a_pure_test(request, tmp_path):
    table = set(SchedulerState()._transitions)
    seen, failures = reached(request.session, tmp_path)
    assert seen, "no transition recorded: is the recorder in conftest.py in place?"
    assert not seen - table, f"recorded pairs that are not in the table: {seen - table}"
    missing = sorted(table - seen)
    assert not missing, f"transitions no pure test reaches: {missing}{failures}"
