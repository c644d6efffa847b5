"""dask collections on the cluster (scheduler and workers in their own processes):
the same results as dask's synchronous scheduler; compute, persist, dask.compute with
``scheduler=c.get``, the Client as dask's default scheduler, and every graph form
dask produces."""

import gc
import operator

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask._task_spec import Alias, DataNode, Task, TaskRef
from dask.highlevelgraph import HighLevelGraph

from helpers import add, block_until_file, count_lines, inc, pid, record, wait_for
from dask_ipy import Future, MissingDependency, wait

pytestmark = pytest.mark.timeout(60)


def on_cluster_and_sync(c, collection):
    """(result on the cluster, result of dask's synchronous scheduler)."""
    (ours,) = dask.compute(collection, scheduler=c.get)
    (theirs,) = dask.compute(collection, scheduler="sync")
    return ours, theirs


# ---------------------------------------------------------------- dask.array

@pytest.fixture(scope="module")
def x():
    return da.random.RandomState(42).random_sample((300, 200), chunks=(70, 60))


def test_array_sum_and_mean(c, x):
    ours, theirs = on_cluster_and_sync(c, x.sum())
    assert ours == pytest.approx(theirs, rel=1e-12)
    ours, theirs = on_cluster_and_sync(c, x.mean(axis=0))
    np.testing.assert_allclose(ours, theirs)
    assert ours.shape == (200,)


def test_array_matrix_product(c, x):
    ours, theirs = on_cluster_and_sync(c, x @ x.T)
    assert ours.shape == (300, 300)
    np.testing.assert_allclose(ours, theirs)
    ours, theirs = on_cluster_and_sync(c, da.tensordot(x, x, axes=((0,), (0,))))
    np.testing.assert_allclose(ours, theirs)


def test_array_rechunk(c, x):
    y = x.rechunk((110, 45))
    ours, theirs = on_cluster_and_sync(c, y)
    np.testing.assert_array_equal(ours, theirs)
    ours, theirs = on_cluster_and_sync(c, (y + 1).T.rechunk((200, 300)).std())
    assert ours == pytest.approx(theirs)


# ---------------------------------------------------------------- dask.bag

def test_bag_map_filter_foldby(c):
    b = db.from_sequence(range(1000), npartitions=9)
    pipeline = b.map(inc).filter(lambda v: v % 3 != 0)
    ours, theirs = on_cluster_and_sync(c, pipeline)
    assert ours == theirs and len(ours) == 667
    folded = pipeline.foldby(lambda v: v % 5, operator.add, 0, operator.add, 0)
    ours, theirs = on_cluster_and_sync(c, folded)
    assert sorted(ours) == sorted(theirs)
    ours, theirs = on_cluster_and_sync(c, b.map(lambda v: v % 7).frequencies())
    assert sorted(ours) == sorted(theirs)


# ---------------------------------------------------------------- dask.dataframe

@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    left = pd.DataFrame({"k": rng.integers(0, 20, 2000), "v": rng.random(2000),
                         "w": rng.integers(0, 100, 2000)})
    right = pd.DataFrame({"k": np.arange(20), "name": [f"n{i}" for i in range(20)],
                          "weight": np.linspace(0, 1, 20)})
    return left, right


def test_dataframe_groupby_mean(c, frames):
    left, _ = frames
    df = dd.from_pandas(left, npartitions=6)
    ours, theirs = on_cluster_and_sync(c, df.groupby("k").v.mean())
    pd.testing.assert_series_equal(ours.sort_index(), theirs.sort_index())
    pd.testing.assert_series_equal(ours.sort_index(), left.groupby("k").v.mean(),
                                   check_names=False)
    ours, theirs = on_cluster_and_sync(c, df.groupby("k").agg({"v": "mean", "w": "sum"}))
    pd.testing.assert_frame_equal(ours.sort_index(), theirs.sort_index())


def test_dataframe_joins(c, frames):
    left, right = frames
    dl = dd.from_pandas(left, npartitions=5)
    dr = dd.from_pandas(right, npartitions=2)
    for how in ("inner", "left"):
        ours, theirs = on_cluster_and_sync(c, dl.merge(dr, on="k", how=how))
        key = ["k", "v", "w"]
        pd.testing.assert_frame_equal(ours.sort_values(key).reset_index(drop=True),
                                      theirs.sort_values(key).reset_index(drop=True))
    indexed = dr.set_index("k")
    ours, theirs = on_cluster_and_sync(c, dl.join(indexed, on="k").weight.sum())
    assert ours == pytest.approx(theirs)


# ---------------------------------------------------------------- compute and persist

def test_compute_returns_futures(c, x):
    f = c.compute(x.sum())
    assert isinstance(f, Future)
    assert f.result(timeout=10) == pytest.approx(x.sum().compute(scheduler="sync"))
    fs = c.compute([x.max(), db.from_sequence([1, 2, 3]).sum()])
    assert [type(f) for f in fs] == [Future, Future]
    assert c.gather(fs)[1] == 6
    assert c.compute(dask.delayed(inc)(1), sync=True) == 2


def test_compute_takes_what_dask_distributed_takes(c, x):
    total = x.sum().compute(scheduler="sync")
    # A dict (or list, tuple, set) alone is computed whole, its collections inside;
    # values that are no collections come back as they are.
    f = c.compute({"a": x.sum(), "b": [1, dask.delayed(inc)(1)]})
    assert isinstance(f, Future)
    assert f.result(timeout=10) == {"a": pytest.approx(total), "b": [1, 2]}
    assert c.compute([x.sum(), 5], sync=True) == [pytest.approx(total), 5]
    assert c.compute(5) == 5 and c.compute([]) == []
    assert c.compute((x.sum(), [x.sum(), 1]), sync=True)[1] == [pytest.approx(total), 1]
    # traverse=False: only the collections themselves are computed.
    lazy = [dask.delayed(inc)(1)]
    assert c.compute([lazy, 2], traverse=False, sync=True) == [lazy, 2]
    assert c.compute({dask.delayed(inc)(2)}, sync=True) == [3]      # a set: a list


def test_persist_keeps_the_data_on_the_cluster(c, tmp_path):
    path = str(tmp_path / "runs")
    v = dask.delayed(record)(path, 10)
    pv = c.persist(v)
    held = [f for f in dict(pv.__dask_graph__()).values() if isinstance(f, Future)]
    assert len(held) == 1
    wait(held, timeout=10)
    assert count_lines(path) == 1
    # Computing on top of persisted data uses it: nothing runs twice.
    assert (pv + 1).compute() == 11
    assert c.compute(pv * 2).result(timeout=10) == 20
    assert dask.compute(pv, pv + 5, scheduler=c.get) == (10, 15)
    assert count_lines(path) == 1


def test_persisted_array_bag_and_dataframe(c, x, frames):
    px = c.persist(x)
    graph = dict(px.__dask_graph__())
    assert graph and all(isinstance(f, Future) for f in graph.values())
    wait(list(graph.values()), timeout=10)
    assert len(c.who_has(list(graph.values()))) == len(graph)
    np.testing.assert_allclose((px @ px.T).sum(axis=1).compute(),
                               (x @ x.T).sum(axis=1).compute(scheduler="sync"))
    b = c.persist(db.from_sequence(range(100), npartitions=4).map(inc))
    assert b.filter(lambda v: v % 2 == 0).sum().compute() == sum(range(2, 101, 2))
    left, _ = frames
    pdf = c.persist(dd.from_pandas(left, npartitions=4))
    pd.testing.assert_series_equal(pdf.groupby("k").v.mean().compute().sort_index(),
                                   left.groupby("k").v.mean(), check_names=False)


def test_persisted_data_is_released_with_the_collection(c, x):
    px = c.persist(x)
    keys = list(dict(px.__dask_graph__()))
    wait(list(dict(px.__dask_graph__()).values()), timeout=10)
    del px
    import gc

    gc.collect()
    wait_for(lambda: not set(keys) & set(c.who_has()), message="release")


def test_the_client_is_dask_default_scheduler(c, pc):
    worker_pids = {w["pid"] for w in c.scheduler_info()["workers"].values()}
    assert dask.delayed(pid)().compute() in worker_pids
    assert da.ones(10, chunks=5).sum().compute() == 10
    other = pc.client(set_as_default=False)
    try:
        assert dask.delayed(pid)().compute() in worker_pids
    finally:
        other.close()


def test_scheduler_distributed_names_the_client(c, pc):
    """dask's ``scheduler="distributed"`` (code written for dask.distributed) runs on
    the default client, or on the client of an ``as_current`` block."""
    worker_pids = {w["pid"] for w in c.scheduler_info()["workers"].values()}
    for name in ("distributed", "dask.distributed"):
        assert dask.compute(dask.delayed(pid)(), scheduler=name)[0] in worker_pids
        with dask.config.set(scheduler=name):
            assert da.ones(10, chunks=5).sum().compute() == 10
    other = pc.client(set_as_default=False)
    calls = []

    def dask_get(dsk, keys, **kwargs):
        calls.append(keys)
        return type(other).dask_get(other, dsk, keys, **kwargs)
    other.dask_get = dask_get
    try:
        with other.as_current():
            assert dask.compute(dask.delayed(pid)(), scheduler="distributed")[0] in \
                worker_pids
        assert len(calls) == 1
    finally:
        other.close()


def test_closing_the_client_restores_the_previous_scheduler(pc):
    before = dask.config.get("scheduler", None)
    client = pc.client()
    assert dask.config.get("scheduler", None) == client.get
    client.close()
    assert dask.config.get("scheduler", None) == before


# ---------------------------------------------------------------- every graph form

def test_task_alias_datanode_graphs(c):
    dsk = {"data": DataNode("data", [1, 2, 3]),
           "total": Task("total", sum, TaskRef("data")),
           "more": Task("more", add, TaskRef("total"), 10),
           "same": Alias("same", "more")}
    assert c.get(dsk, "same") == 16
    assert c.get(dsk, ["data", "more"]) == ([1, 2, 3], 16)


def test_legacy_graphs_with_nested_tasks_and_lists(c):
    dsk = {"a": 1, "b": (inc, "a"), "c": [(inc, "a"), "b", 5], "d": (sum, "c"),
           ("t", 0): (add, "a", (inc, (inc, "b"))), "e": "d"}
    assert c.get(dsk, ["c", "d", ("t", 0), "e"]) == ([2, 2, 5], 9, 5, 9)


def test_high_level_graph(c):
    layers = {"in": {"x": 1, "y": (inc, "x")}, "out": {"z": (add, "x", "y")}}
    graph = HighLevelGraph(layers, {"in": set(), "out": {"in"}})
    assert c.get(graph, "z") == 3


def test_expression_graphs(c, frames):
    left, _ = frames
    df = dd.from_pandas(left, npartitions=3)
    total = df.v.sum()
    assert hasattr(total, "expr")            # a dask-expr collection
    assert dask.compute(total, scheduler=c.get)[0] == pytest.approx(left.v.sum())
    assert c.get(total.__dask_graph__(), total.__dask_keys__()) is not None
    assert c.compute(df.w.max()).result(timeout=10) == left.w.max()


def test_futures_inside_graphs(c):
    f = c.submit(inc, 1)
    assert c.get({"x": f, "y": (add, "x", 10)}, "y") == 12
    assert c.get({"y": (add, f, 10)}, "y") == 12
    assert c.get({"y": Task("y", add, TaskRef(f.key), 100)}, "y") == 102
    assert dask.delayed(add)(f, 1000).compute() == 1002


# ---------------------------------------------------------------- another client's Futures

def test_a_client_computes_what_another_client_persisted(c, pc):
    p = c.persist(da.ones(100, chunks=25) * 3)
    f = c.submit(inc, 1)
    df = dd.from_pandas(pd.DataFrame({"a": range(100)}), npartitions=4).persist()
    c.publish_dataset(df=df)
    other = pc.client(set_as_default=False)
    try:
        assert other.compute(p.sum()).result(timeout=10) == 300
        with other.as_current():
            assert p.sum().compute() == 300
        assert other.compute(dask.delayed(add)(f, 10)).result(timeout=10) == 12
        assert other.get({"y": (add, f, 10)}, "y") == 12
        assert other.get({"x": f, "y": (add, "x", 1)}, ["x", "y"]) == (2, 3)
        # This process's dask hands back the publisher's own collection, and Futures.
        published = other.get_dataset("df")
        assert other.compute(published.a.sum()).result(timeout=10) == 4950
        q = other.persist(p * 2)
        assert q.sum().compute(scheduler=other.get) == 600
        del q
        # Persisted again as it is, it is the other client's own: it outlives the
        # first client's Futures.
        mine = other.persist(p)
        held = list(dict(mine.__dask_graph__()).values())
        assert {fut.client for fut in held} == {other}
        del p
        gc.collect()
        wait(held, timeout=10)
        assert all(other.who_has(held).values())
        assert other.compute(mine.sum()).result(timeout=10) == 300
        # A Future released everywhere is missing, as before anything runs.
        gone = f.key
        f.release()
        wait_for(lambda: gone not in c.who_has(), message="the release")
        with pytest.raises(MissingDependency, match=gone):
            other.compute(dask.delayed(add)(f, 10))
    finally:
        other.close()
        c.unpublish_dataset("df")


def test_a_computation_on_another_clients_futures_outlives_that_client(c, pc, tmp_path):
    gate = str(tmp_path / "gate")
    first = pc.client(set_as_default=False)
    other = pc.client(set_as_default=False)
    try:
        f = first.submit(inc, 1)
        p = first.persist(da.ones(100, chunks=25) * 3)
        first.who_has()             # its graphs have reached the scheduler
        gated = dask.delayed(block_until_file)(gate, 0)
        total = other.compute(dask.delayed(add)(dask.delayed(add)(gated, f), p.sum()))
        xy = other.get({"x": f, "y": (add, "x", 1)}, ["x", "y"], sync=False)
        other.who_has()             # its graph has reached the scheduler
        clients = other.scheduler_info()["nclients"]
        first.close()
        wait_for(lambda: other.scheduler_info()["nclients"] == clients - 1,
                 message="the first client gone")
        open(gate, "w").close()
        assert total.result(timeout=20) == 302
        assert {fut.client for fut in xy} == {other}
        assert other.gather(xy, timeout=10) == (2, 3)
        del total, xy
        gc.collect()
        wait_for(lambda: f.key not in other.who_has(), message="the release")
    finally:
        first.close()
        other.close()


def test_priorities_follow_dask_order(c, monkeypatch):
    from dask.order import order

    from dask_ipy.graph import expand
    from dask_ipy.protocol import Serialized, deserialize

    b = db.from_sequence(range(40), npartitions=8).map(inc).sum()
    sent = []
    send = c.shell.send
    monkeypatch.setattr(c.shell, "send", lambda msg: (sent.append(msg), send(msg))[1])
    assert b.compute() == sum(range(1, 41))
    (update,) = [m for m in sent if m["op"] == "update-graph"]
    # Tasks travel as (key, spec, deps, priority); a small spec as its pickle's bytes.
    graph = {key: expand(key, deserialize(Serialized([spec])))
             for key, spec, _, _ in update["tasks"]}
    priorities = {key: priority for key, _, _, priority in update["tasks"]}
    assert len(graph) > 8
    expected = order(graph)
    assert sorted(graph, key=priorities.get) == sorted(graph, key=expected.get)
