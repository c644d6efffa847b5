"""Tier 1: the pure graph functions, literal and fast."""
import gc
import operator
import time

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask._task_spec import Alias, DataNode, Task, TaskRef
from dask.highlevelgraph import HighLevelGraph
from dask.utils_test import GetFunctionTestMixin, add, inc

from dask_ipy import graph as G
from dask_ipy.graph import (
    CycleError,
    MissingDependency,
    check,
    collections_to_graph,
    cull,
    dependencies,
    execute,
    flatten_keys,
    normalize,
    order,
    output_keys,
    pack,
)


def run(dsk, known=None):
    """A tiny local scheduler: normalize, check, execute in topological order
    (each node runs once all its dependencies have run). Returns ``{key: value}``."""
    known = dict(known or {})
    graph = normalize(dsk, known=known.keys())
    deps = dependencies(graph)
    check(graph, deps, known=known.keys())
    data = dict(known)
    waiting = {k: {d for d in ds if d in graph} for k, ds in deps.items()}
    dependents = {k: [] for k in graph}
    for k, ds in waiting.items():
        for d in ds:
            dependents[d].append(k)
    ready = [k for k, ds in waiting.items() if not ds]
    while ready:
        k = ready.pop()
        data[k] = execute(graph[k], data)
        for dep in dependents[k]:
            waiting[dep].discard(k)
            if not waiting[dep]:
                ready.append(dep)
    assert set(graph) <= set(data), "not every node ran"
    return data


def get(dsk, keys):
    """The dask ``get`` protocol on top of ``run``."""
    graph = normalize(dsk)
    needed = cull(graph, dependencies(graph), keys)
    for k in flatten_keys(keys):
        if k not in graph:
            raise KeyError(k)
    return pack(keys, run(needed))


# -- dask.utils_test.GetFunctionTestMixin graphs ------------------------------


def test_mixin_get():
    d = {":x": 1, ":y": (inc, ":x"), ":z": (add, ":x", ":y")}
    assert get(d, ":x") == 1
    assert get(d, ":y") == 2
    assert get(d, ":z") == 3


def test_mixin_badkey():
    d = {":x": 1, ":y": (inc, ":x"), ":z": (add, ":x", ":y")}
    with pytest.raises(KeyError):
        get(d, "badkey")
    with pytest.raises(KeyError):
        get({"x": 1, "y": 2, "z": (sum, ["x", "y"])}, [["badkey"], "y"])


def test_mixin_data_not_in_dict_is_ok():
    assert get({"x": 1, "y": (add, "x", 10)}, "y") == 11


def test_mixin_get_with_list_and_nested_list():
    d = {"x": 1, "y": 2, "z": (sum, ["x", "y"])}
    assert get(d, ["x", "y"]) == (1, 2)
    assert get(d, [["x"], "y"]) == ((1,), 2)
    assert get(d, "z") == 3


def test_mixin_get_with_list_top_level():
    d = {
        "a": [1, 2, 3],
        "b": "a",
        "c": [1, (inc, 1)],
        "d": [(sum, "a")],
        "e": ["a", "b"],
        "f": [[[(sum, "a"), "c"], (sum, "b")], 2],
    }
    assert get(d, "a") == [1, 2, 3]
    assert get(d, "b") == [1, 2, 3]
    assert get(d, "c") == [1, 2]
    assert get(d, "d") == [6]
    assert get(d, "e") == [[1, 2, 3], [1, 2, 3]]
    assert get(d, "f") == [[[6, [1, 2]], 6], 2]
    graph = normalize(d)
    assert isinstance(graph["b"], Alias) and graph["b"].target == "a"
    assert dependencies(graph)["e"] == {"a", "b"}


def test_mixin_unhashables_in_values():
    d = {"x": 1, "y": (lambda x, y: x + len(y), "x", {1})}
    assert get(d, "y") == 2
    d = {"x": 1, "y": (lambda x, y: x + y["a"] + len(y["b"]), "x", {"a": 10, "b": [0]})}
    assert get(d, "y") == 12


def test_mixin_nested_tasks():
    assert get({"x": 1, "y": (inc, "x"), "z": (add, (inc, "x"), "y")}, "z") == 4


def test_mixin_stack_limit():
    d = {f"x{i + 1}": (inc, f"x{i}") for i in range(10000)}
    d["x0"] = 0
    assert get(d, "x10000") == 10000


def test_mixin_with_high_level_graph():
    layers = {"a": {"x": 1, "y": (inc, "x")}, "b": {"z": (add, (inc, "x"), "y")}}
    hlg = HighLevelGraph(layers, {"a": set(), "b": {"a"}})
    graph = normalize(hlg)
    assert set(graph) == {"x", "y", "z"}
    assert get(hlg, "z") == 4


class TestLocalGet(GetFunctionTestMixin):
    """dask's own conformance suite for ``get``, on the local executor above."""

    get = staticmethod(get)


# -- normalize ----------------------------------------------------------------


def test_normalize_node_types():
    d = {"x": 1, "y": (inc, "x"), "z": "y", "s": "not-a-key", "t": ("u", 0), "w": ("x", 0)}
    graph = normalize(d)
    assert isinstance(graph["x"], DataNode)
    assert isinstance(graph["y"], Task)
    assert isinstance(graph["z"], Alias) and graph["z"].target == "y"
    assert isinstance(graph["s"], DataNode) and graph["s"].value == "not-a-key"
    assert isinstance(graph["t"], DataNode) and graph["t"].value == ("u", 0)
    assert dependencies(graph) == {
        "x": frozenset(),
        "y": {"x"},
        "z": {"y"},
        "s": frozenset(),
        "t": frozenset(),
        "w": {"x"},  # a tuple that is not a key is walked, as dask does
    }
    assert get(d, ["z", "s", "t", "w"]) == (2, "not-a-key", ("u", 0), (1, 0))


def test_normalize_tuple_keys_and_task_spec_values():
    d = {
        ("x", 0): 1,
        ("x", 1): Task(("x", 1), inc, TaskRef(("x", 0))),
        "y": (add, ("x", 0), ("x", 1)),
        "lit": DataNode("lit", [1, 2]),
        "al": Alias("al", "y"),
    }
    graph = normalize(d)
    assert graph["lit"].value == [1, 2]
    assert dependencies(graph)["y"] == {("x", 0), ("x", 1)}
    assert get(d, ["y", "al", ("x", 1)]) == (3, 3, 2)


def test_normalize_known_keys():
    # A string equal to a key held elsewhere becomes a reference to it.
    graph = normalize({"y": (inc, "x")}, known={"x"})
    assert dependencies(graph)["y"] == {"x"}
    assert run({"y": (inc, "x")}, known={"x": 41})["y"] == 42
    # Without `known`, it is a literal string.
    assert dependencies(normalize({"y": (len, "x")}))["y"] == frozenset()


def test_normalize_future_like_objects():
    class FakeFuture:
        __dask_future__ = True

        def __init__(self, key):
            self.key = key

    fut = FakeFuture(("remote", 3))
    graph = normalize({"y": (add, fut, [fut, 1])})
    assert dependencies(graph)["y"] == {("remote", 3)}
    with pytest.raises(MissingDependency):
        check(graph, dependencies(graph))
    assert run({"y": (add, fut, 1)}, known={("remote", 3): 41})["y"] == 42


def test_normalize_restores_gc_state():
    assert gc.isenabled()
    normalize({"a": 1})
    assert gc.isenabled()
    gc.disable()
    try:
        normalize({"a": 1})
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_normalize_expression_and_rejects_non_graphs():
    x = da.ones(4, chunks=2) + 1
    graph = normalize(x)  # anything with __dask_graph__
    assert set(flatten_keys(x.__dask_keys__())) <= set(graph)
    with pytest.raises(TypeError):
        normalize(42)


def test_normalize_100k_tasks_is_fast():
    d = {f"x{i + 1}": (inc, f"x{i}") for i in range(100_000)}
    d["x0"] = 0
    t0 = time.perf_counter()
    graph = normalize(d)
    elapsed = time.perf_counter() - t0
    assert len(graph) == 100_001
    # About 0.35 s measured.  The bound catches a pass that grows quadratically
    # (minutes at this size), not a slow or busy machine: hence its width.
    assert elapsed < 20.0, elapsed


# -- check ----------------------------------------------------------------------


def cycle_of(dsk):
    graph = normalize(dsk)
    with pytest.raises(CycleError) as info:
        check(graph, dependencies(graph))
    return info.value


def test_self_cycle():
    err = cycle_of({"a": (inc, "a")})
    assert err.cycle == ["a", "a"]
    assert str(err) == "Cycle detected in graph: 'a' -> 'a'"


def test_two_cycle():
    err = cycle_of({"a": (inc, "b"), "b": (inc, "a")})
    assert err.cycle == ["a", "b", "a"]
    assert str(err) == "Cycle detected in graph: 'a' -> 'b' -> 'a'"
    assert isinstance(err, RuntimeError)


def test_alias_cycle():
    err = cycle_of({"a": "b", "b": "a", "c": (inc, "a")})
    assert set(err.cycle) == {"a", "b"}


def test_long_cycle_behind_a_tail():
    n = 50_000
    d = {f"x{i}": (inc, f"x{i + 1}") for i in range(n)}
    d[f"x{n}"] = (inc, "x100")  # tail x0..x99 leads into a cycle x100..x{n}
    d[("out", 0)] = (add, "x0", 1)
    err = cycle_of(d)
    assert err.cycle[0] == err.cycle[-1]
    assert set(err.cycle) == {f"x{i}" for i in range(100, n + 1)}
    assert "'x100' -> 'x101' ->" in str(err)


def test_cycle_in_tuple_keys():
    err = cycle_of({("a", 0): (inc, ("a", 1)), ("a", 1): (inc, ("a", 0)), "b": 1})
    assert "('a', 0)" in str(err) and "('a', 1)" in str(err)


def test_check_100k_chain_no_recursion_error():
    d = {f"x{i + 1}": (inc, f"x{i}") for i in range(100_000)}
    d["x0"] = 0
    graph = normalize(d)
    deps = dependencies(graph)
    t0 = time.perf_counter()
    check(graph, deps)
    # Only a quadratic (minutes) check would come near it, not a busy machine.
    assert time.perf_counter() - t0 < 20.0
    prio = order(graph, deps)
    assert prio["x0"] < prio["x50000"] < prio["x100000"]


def test_missing_dependency():
    graph = normalize({"x": 1, "y": Task("y", add, TaskRef("x"), TaskRef("gone")), "z": Alias("z", "lost")})
    deps = dependencies(graph)
    with pytest.raises(MissingDependency) as info:
        check(graph, deps)
    err = info.value
    assert isinstance(err, KeyError)
    assert err.key == "y" and err.missing == ("gone",)
    assert str(err) == "Task 'y' depends on missing key(s): 'gone'"
    # Keys held by the scheduler satisfy the dependency.
    with pytest.raises(MissingDependency) as info:
        check(graph, deps, known={"gone"})
    assert info.value.key == "z" and info.value.missing == ("lost",)
    check(graph, deps, known={"gone", "lost"})


def test_missing_checked_before_cycles():
    graph = normalize({"a": (inc, "a"), "b": Task("b", inc, TaskRef("nope"))})
    with pytest.raises(MissingDependency):
        check(graph, dependencies(graph))


# -- cull, order, output_keys --------------------------------------------------


def diamond():
    return normalize(
        {
            "a": 1,
            "b": (inc, "a"),
            "c": (inc, "a"),
            "d": (add, "b", "c"),
            "e": (inc, "b"),
            "unrelated": (inc, 5),
        }
    )


def test_cull():
    graph = diamond()
    deps = dependencies(graph)
    assert list(cull(graph, deps, "d")) == ["a", "b", "c", "d"]
    assert list(cull(graph, deps, ["e"])) == ["a", "b", "e"]
    assert list(cull(graph, deps, [["e"], "unrelated"])) == ["a", "b", "e", "unrelated"]
    assert list(cull(graph, deps, {"a"})) == ["a"]
    assert cull(graph, deps, "not-here") == {}
    assert cull(graph, deps, ["d", "e", "unrelated"]) == graph
    assert cull(graph, deps, "d")["d"] is graph["d"]


def test_cull_tuple_key_and_long_chain():
    d = {("x", i + 1): (inc, ("x", i)) for i in range(50_000)}
    d[("x", 0)] = 0
    d["other"] = 1
    graph = normalize(d)
    culled = cull(graph, dependencies(graph), ("x", 50_000))  # a tuple is one key
    assert len(culled) == 50_001 and "other" not in culled


def assert_valid_order(graph, deps, prio):
    assert set(prio) == set(graph)
    assert sorted(prio.values()) == list(range(len(graph)))
    for k, ds in deps.items():
        for d in ds:
            if d in graph:
                assert prio[d] < prio[k], (d, k)


def tree_reduction(n):
    d = {("x", i): (inc, i) for i in range(n)}
    level, width = 0, n
    while width > 1:
        name, new = ("x" if level == 0 else f"r{level}"), f"r{level + 1}"
        for j in range((width + 1) // 2):
            if 2 * j + 1 < width:
                d[(new, j)] = (add, (name, 2 * j), (name, 2 * j + 1))
            else:
                d[(new, j)] = (inc, (name, 2 * j))
        level, width = level + 1, (width + 1) // 2
    return d


@pytest.mark.parametrize("limit", [G.DASK_ORDER_LIMIT, 0])
def test_order(monkeypatch, limit):
    monkeypatch.setattr(G, "DASK_ORDER_LIMIT", limit)  # 0: the depth-first order
    for dsk in [diamond(), normalize(tree_reduction(37)), normalize({"a": 1})]:
        deps = dependencies(dsk)
        assert_valid_order(dsk, deps, order(dsk, deps))
    assert order({}, {}) == {}


@pytest.mark.parametrize("limit", [G.DASK_ORDER_LIMIT, 0])
def test_order_with_keys_outside_graph(monkeypatch, limit):
    monkeypatch.setattr(G, "DASK_ORDER_LIMIT", limit)
    graph = normalize({"y": (inc, "x"), "z": (inc, "y")}, known={"x"})
    assert order(graph, dependencies(graph)) == {"y": 0, "z": 1}


def test_depth_first_order_finishes_branches():
    graph = normalize(tree_reduction(8))
    prio = G._depth_first_order(graph, dependencies(graph))
    # Both leaves of the first pair, then their sum, before the next pair.
    assert prio[("x", 0)] < prio[("x", 1)] < prio[("r1", 0)] < prio[("x", 2)]
    assert max(prio, key=prio.get) == ("r3", 0)


def test_depth_first_order_survives_cycles():
    graph = normalize({"a": (inc, "b"), "b": (inc, "a"), "c": 1})
    prio = G._depth_first_order(graph, dependencies(graph))
    assert sorted(prio.values()) == [0, 1, 2]


def test_order_above_the_limit_uses_depth_first():
    graph = normalize(tree_reduction(G.DASK_ORDER_LIMIT // 2 + 10))
    deps = dependencies(graph)
    assert len(graph) > G.DASK_ORDER_LIMIT
    t0 = time.perf_counter()
    prio = order(graph, deps)
    # About 0.25 s measured; only a quadratic ordering would come near the bound.
    assert time.perf_counter() - t0 < 20.0
    assert_valid_order(graph, deps, prio)


def test_output_keys():
    graph = diamond()
    assert output_keys(dependencies(graph)) == ["d", "e", "unrelated"]
    graph = normalize({"y": (inc, "x"), ("z", 1): (inc, "y")}, known={"x"})
    assert output_keys(dependencies(graph)) == [("z", 1)]
    assert output_keys({}) == []


# -- get protocol: flatten_keys, pack ----------------------------------------------


def test_flatten_keys():
    assert flatten_keys("x") == ["x"]
    assert flatten_keys(("x", 0)) == [("x", 0)]
    assert flatten_keys(3) == [3]
    assert flatten_keys([]) == []
    assert flatten_keys(["x", ("y", 1)]) == ["x", ("y", 1)]
    assert flatten_keys([["x"], [[("y", 0), ("y", 1)], []], "z"]) == [
        "x",
        ("y", 0),
        ("y", 1),
        "z",
    ]
    deep = "k"
    for _ in range(5000):
        deep = [deep]
    assert flatten_keys(deep) == ["k"]


def test_pack():
    results = {"x": 1, "y": 2, ("t", 0): 3}
    assert pack("x", results) == 1
    assert pack(("t", 0), results) == 3
    assert pack(["x", "y"], results) == (1, 2)
    assert pack([["x"], "y"], results) == ((1,), 2)
    assert pack([[("t", 0), "x"], [], [["y"]]], results) == ((3, 1), (), ((2,),))
    with pytest.raises(KeyError):
        pack(["x", "nope"], results)


# -- execute --------------------------------------------------------------------


def test_execute_node_kinds():
    assert execute(DataNode("d", [1, 2]), {}) == [1, 2]
    assert execute(Alias("a", "b"), {"b": 5}) == 5
    t = Task("t", add, TaskRef("a"), Task(None, inc, TaskRef("b")))
    assert execute(t, {"a": 1, "b": 10}) == 12
    kw = Task("kw", dict, x=TaskRef("a"), y=[1, 2])
    assert execute(kw, {"a": 3}) == {"x": 3, "y": [1, 2]}
    with pytest.raises(KeyError):
        execute(t, {"a": 1})


def test_execute_reads_only_dependencies():
    class Store(dict):
        def __iter__(self):
            raise AssertionError("the whole store must not be walked")

        def keys(self):
            raise AssertionError("the whole store must not be walked")

    store = Store({f"k{i}": i for i in range(1000)})
    assert execute(Task("t", add, TaskRef("k1"), TaskRef("k2")), store) == 3


def test_execute_raises_task_errors():
    graph = normalize({"x": (operator.truediv, 1, 0)})
    with pytest.raises(ZeroDivisionError):
        execute(graph["x"], {})


# -- collections ---------------------------------------------------------------------


def compute_locally(*collections, optimize=True):
    graph, keys, finalize = collections_to_graph(list(collections), optimize=optimize)
    assert len(keys) == len(collections)
    deps = dependencies(graph)
    check(graph, deps)
    assert set(keys) <= set(graph)
    data = run(cull(graph, deps, keys))
    return finalize({k: data[k] for k in keys})


def test_collections_array_sum():
    x = da.arange(100, chunks=7)
    total = (x * 2).sum()
    y = (x + 1)[::3]
    got = compute_locally(total, y)
    want = dask.compute(total, y, scheduler="sync")
    assert got[0] == want[0] == 9900
    np.testing.assert_array_equal(got[1], want[1])
    assert compute_locally(total, optimize=False) == [9900]
    # dask.compute hands its optimized expression straight to a `get`.
    via_get = dask.compute(total, y, scheduler=get)
    assert via_get[0] == 9900
    np.testing.assert_array_equal(via_get[1], want[1])


def test_collections_bag_map_filter():
    b = db.from_sequence(range(30), npartitions=4).map(lambda v: v * 3).filter(lambda v: v % 2)
    (got,) = compute_locally(b)
    assert got == dask.compute(b, scheduler="sync")[0] == [v * 3 for v in range(30) if v % 2]
    assert compute_locally(b.sum()) == [sum(v * 3 for v in range(30) if v % 2)]


def test_collections_delayed():
    @dask.delayed
    def f(a, b):
        return a + b

    out = f(1, f(2, 3))
    other = dask.delayed(sum)([out, 10])
    assert compute_locally(out, other) == [6, 16]
    assert compute_locally(out, out) == [6, 6]
    assert list(dask.compute(out, other, scheduler="sync")) == [6, 16]


def test_collections_dataframe_groupby():
    pdf = pd.DataFrame({"a": [1, 2, 1, 2, 3, 3, 1], "b": range(7), "c": list("xyzxyzx")})
    df = dd.from_pandas(pdf, npartitions=3)
    g = df.groupby("a").b.sum()
    m = df.groupby("c").agg({"b": "mean"})
    got_g, got_m = compute_locally(g, m)
    want_g, want_m = dask.compute(g, m, scheduler="sync")
    pd.testing.assert_series_equal(got_g, want_g)
    pd.testing.assert_frame_equal(got_m, want_m)
    pd.testing.assert_series_equal(got_g.sort_index(), pdf.groupby("a").b.sum())
    pd.testing.assert_series_equal(dask.compute(g, scheduler=get)[0], want_g)
    (whole,) = compute_locally(df)
    pd.testing.assert_frame_equal(whole, df.compute(scheduler="sync"))


def test_collections_to_graph_single_and_invalid():
    d = dask.delayed(inc)(1)
    graph, keys, finalize = collections_to_graph(d)
    assert len(keys) == 1 and keys[0] in graph
    assert collections_to_graph([])[1] == []
    with pytest.raises(TypeError):
        collections_to_graph([d, 5])


def test_compact_calls_round_trip_and_run():
    from dask._task_spec import Task, TaskRef

    from dask_ipy.graph import compact, execute, expand

    def add3(a, b, c):
        return a + b + c

    node = Task("z", add3, TaskRef("x"), 10, TaskRef("y"))
    spec = compact(node)
    assert spec == (add3, ("x", 10, "y"), {}, (0, 2))
    assert execute(spec, {"x": 1, "y": 2}) == 13
    assert expand("z", spec).dependencies == {"x", "y"}
    assert execute(expand("z", spec), {"x": 1, "y": 2}) == 13
    nested = Task("w", sum, [TaskRef("x"), 1])         # a container of references
    assert compact(nested) is nested


def test_needing_follows_dependents_through_the_graph():
    deps = {"a": set(), "b": {"gone"}, "c": {"b"}, "d": {"a"}, "e": {"c", "d"}}
    assert G.needing(deps, ["gone"]) == {"b", "c", "e"}
    assert G.needing(deps, []) == set()


def test_normalize_refuses_a_p2p_graph_and_no_other():
    """dask.distributed's P2P barrier task marks a graph only its workers can run."""
    pytest.importorskip("distributed")
    x = da.ones((20, 10), chunks=(6, 4))
    with pytest.raises(NotImplementedError, match=r"method='tasks'"):
        normalize(x.rechunk((20, 1), method="p2p"))
    assert len(normalize(x.rechunk((20, 1), method="tasks"))) > 0
