"""Records which entries of the scheduler's transition table the pure tests reach;
test_transitions_reached.py fails if one is reached by none.  Only transitions run
during a test of this folder count (not those of in-process clusters elsewhere)."""

import json
import os
from pathlib import Path

import pytest

from dask_ipy.scheduler.state import RELEASED, SchedulerState

HERE = Path(__file__).parent
CHECK = "test_transitions_reached.py"
# Set by test_transitions_reached.py when it runs this folder in a subprocess.
OUT = "DASK_IPY_REACHED_TRANSITIONS"

REACHED = set()         # {(start, finish)}: the table's keys whose methods ran
_state = {"recording": False, "deselected": False}

_original = SchedulerState._transition


def _recording(self, ts, finish, *args):
    if _state["recording"]:
        key = (ts.state, finish)
        # As `_transition` does: a pair not in the table goes through "released".
        REACHED.add(key if key in self._transitions else (ts.state, RELEASED))
    return _original(self, ts, finish, *args)


SchedulerState._transition = _recording


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _state["recording"] = True
    try:
        yield
    finally:
        _state["recording"] = False


def pytest_deselected(items):
    if any(HERE in Path(str(item.path)).parents for item in items):
        _state["deselected"] = True


def pytest_collection_modifyitems(items):
    """The check runs after the other tests of this folder."""
    check = [i for i in items if Path(str(i.path)).name == CHECK]
    if not check:
        return
    rest = [i for i in items if i not in check]
    last = max((n for n, i in enumerate(rest) if HERE in Path(str(i.path)).parents),
               default=len(rest) - 1)
    items[:] = rest[:last + 1] + check + rest[last + 1:]


def whole_folder_ran(session):
    """Every test module of this folder was collected whole in this session."""
    if _state["deselected"] or any("::" in str(a) for a in session.config.args):
        return False
    files = {Path(str(i.path)) for i in session.items}
    return all(f in files for f in HERE.glob("test_*.py"))


def pytest_sessionfinish(session):
    out = os.environ.get(OUT)
    if out:
        with open(out, "w") as f:
            json.dump(sorted(REACHED), f)
