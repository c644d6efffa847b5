"""What a task's error carries back: the user's frames first, without this package's
or dask's task calling."""

import os
import traceback

import pytest
from dask._task_spec import Task

from dask_ipy.errors import error_payload, rebuild_error, without_machinery
from dask_ipy.graph import execute

pytestmark = pytest.mark.timeout(30)


def explode(x):
    raise ValueError(f"exploded on {x}")


def test_a_graph_tasks_error_starts_at_the_users_function():
    try:
        execute(Task("k", explode, 1), {})
    except ValueError as e:
        # As in the worker, from this package's call of the graph node on.
        record = error_payload(e, e.__traceback__.tb_next)
    exc, tb = rebuild_error(record)
    names = [f.name for f in traceback.extract_tb(tb)]
    assert names == ["explode"]
    assert "_task_spec" not in record["traceback_text"]
    assert "dask_ipy" + os.sep not in record["traceback_text"]


def test_without_machinery_keeps_only_the_users_frames():
    try:
        execute(Task("k", explode, 2), {})
    except ValueError as e:
        tb = e.__traceback__
    assert [f.name for f in traceback.extract_tb(tb)][-1] == "explode"
    kept = [f.name for f in traceback.extract_tb(without_machinery(tb))]
    assert kept == ["test_without_machinery_keeps_only_the_users_frames", "explode"]
