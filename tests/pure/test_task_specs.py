"""What a task's spec carries: a function that travels by value (a notebook's, a
lambda) is pickled once for a whole graph and unpickled once per process."""

import pickle

import pytest

from dask_ipy import graph as g
from dask_ipy import protocol
from dask_ipy.client.calls import TaskSerializer
from dask_ipy.protocol import deserialize, load_function

pytestmark = pytest.mark.timeout(30)


def by_reference(x):
    return x + 1


def test_a_function_by_value_is_pickled_once_for_the_graph_and_unpickled_once():
    offset = 10
    add = lambda x: x + offset           # noqa: E731  (a closure: travels by value)
    serialize = TaskSerializer()
    specs = [serialize(g.call(add, (i,), {})) for i in range(3)]
    blob = serialize._blobs[id(add)][1].blob
    assert all(s.frames[0].count(blob) == 1 for s in specs)
    calls = [deserialize(s) for s in specs]
    assert [fn(*args) for fn, args, _, _ in calls] == [10, 11, 12]
    assert calls[0][0] is calls[1][0] is calls[2][0] is load_function(blob)
    # Keyword arguments and keys of plain values go the same way.
    spec = serialize(g.call(add, ("key-1", ("x", 0)), {"n": 1}, (0, 1)))
    assert deserialize(spec) == (calls[0][0], ("key-1", ("x", 0)), {"n": 1}, (0, 1))


def test_other_tasks_are_serialized_as_they_are():
    serialize = TaskSerializer()
    f = lambda x: x                       # noqa: E731
    for node in (g.call(by_reference, (1,), {}),     # by reference: cheaper so
                 g.call(f, ([1, 2],), {}),           # an argument not plain
                 g.call(f, (object,), {})):
        assert serialize(node).frames[0] == protocol.serialize(node).frames[0]
    assert b"load_function" not in serialize(g.call(by_reference, (1,), {})).frames[0]


def test_a_process_keeps_the_latest_functions(monkeypatch):
    monkeypatch.setattr(protocol, "FUNCTIONS_KEPT", 2)
    monkeypatch.setattr(protocol, "_functions", {})
    blobs = [protocol.function_blob(eval(f"lambda: {i}")).blob for i in range(3)]
    fns = [load_function(b) for b in blobs]
    assert [fn() for fn in fns] == [0, 1, 2]
    assert list(protocol._functions) == blobs[1:]
    assert load_function(blobs[2]) is fns[2] and load_function(blobs[0]) is not fns[0]


def test_a_function_over_the_limit_travels_with_each_task():
    big = b"." * 1000
    f = lambda: big                       # noqa: E731
    assert protocol.function_blob(f, limit=500) is None
    assert pickle.loads(pickle.dumps(protocol.function_blob(f)))() == big
