"""persist (and compute) of every kind of dask collection, on a scheduler and two
worker processes, against dask's synchronous scheduler; and what dask expects of a
scheduler besides (a result may rely on what its task keeps alive; a dataframe
shuffle must not go through one machine's files; dask's config can be copied).

Every collection goes through the four ways a user persists: ``client.persist``,
``collection.persist()`` under ``dask.config.set(scheduler=client.get)``,
``dask.persist`` with the Client as dask's default scheduler, and ``client.compute``.
A persisted collection must hold only Futures of its own output keys, and its
values must be those of the collection it came from."""

import weakref

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from helpers import double, inc
from dask_ipy import Future, wait

pytestmark = pytest.mark.timeout(60)

PEOPLE = pd.DataFrame({
    "a": list(range(12)),
    "b": [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
    "c": list("xyzwxyzwxyzw"),
})
CITIES = pd.DataFrame({"c": list("wxyz"), "city": ["Oslo", "Lima", "Pune", "Kyiv"],
                       "size": [1, 2, 3, 4]})


def is_even(v):
    return v % 2 == 0


def filtered_with_column():
    df = dd.from_pandas(PEOPLE, npartitions=3)
    f = df[df.a > 5]
    return f.assign(e=f.a * 2)


def array():
    x = da.from_array(np.arange(100).reshape((10, 10)), chunks=(5, 5))
    return (x + 1) - x.mean(axis=0)


KINDS = {
    "array": array,
    "dataframe": filtered_with_column,
    "series": lambda: dd.from_pandas(pd.Series([1, 2, 3, 4]), npartitions=2) * 2,
    "bag": lambda: db.from_sequence(range(10), npartitions=3).map(inc).filter(is_even),
    "delayed": lambda: dask.delayed(sum)([dask.delayed(double)(i) for i in range(5)]),
    "set_index": lambda: dd.from_pandas(PEOPLE, npartitions=3).set_index("c"),
    "groupby": lambda: dd.from_pandas(PEOPLE, npartitions=3).groupby("c").a.sum(),
    "merge": lambda: dd.from_pandas(PEOPLE, npartitions=3).merge(
        dd.from_pandas(CITIES, npartitions=2), on="c"),
}

# What each kind computes to, written out: the synchronous scheduler must agree too.
LITERAL = {
    "series": [2, 4, 6, 8],
    "bag": [2, 4, 6, 8, 10],
    "delayed": 20,
}


def same(ours, theirs):
    if isinstance(theirs, pd.DataFrame):
        # After a shuffle, the order of rows with equal keys is not a promise, nor
        # is a merge's index (positions within its partitions).
        if "city" in theirs:
            ours, theirs = (df.sort_values("a").reset_index(drop=True)
                            for df in (ours, theirs))
        elif not theirs.index.is_unique:
            ours, theirs = (df.reset_index().sort_values("a").reset_index(drop=True)
                            for df in (ours, theirs))
        pd.testing.assert_frame_equal(ours, theirs)
    elif isinstance(theirs, pd.Series):
        pd.testing.assert_series_equal(ours, theirs)
    elif isinstance(theirs, np.ndarray):
        np.testing.assert_array_equal(ours, theirs)
    else:
        assert ours == theirs


def expected(kind):
    value = KINDS[kind]().compute(scheduler="sync")
    if kind in LITERAL:
        assert (value.tolist() if hasattr(value, "tolist") else value) == LITERAL[kind]
    return value


def held_futures(collection):
    """The persisted collection's graph holds one Future per output key (and, for a
    dataframe, aliases from its own keys to them): nothing is left to compute."""
    from dask._task_spec import Alias

    graph = dict(collection.__dask_graph__())
    futures = [v for v in graph.values() if isinstance(v, Future)]
    others = [v for v in graph.values() if not isinstance(v, Future)]
    keys = collection.__dask_keys__()
    flat = list(dask.core.flatten(keys)) if isinstance(keys, list) else [keys]
    assert len(futures) == len({f.key for f in futures}) == len(flat), graph
    held = {f.key for f in futures}
    assert all(isinstance(v, Alias) and v.target in held for v in others), graph
    return futures


PERSISTS = {
    "client.persist": lambda c, x: c.persist(x),
    "collection.persist": lambda c, x: _under(c, lambda: x.persist()),
    "dask.persist": lambda c, x: dask.persist(x)[0],
}


def _under(c, fn):
    with dask.config.set(scheduler=c.get):
        return fn()


@pytest.mark.parametrize("how", list(PERSISTS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_persist_gives_the_synchronous_answer(c, kind, how):
    assert dask.config.get("scheduler") == c.get      # the Client is dask's default
    theirs = expected(kind)
    persisted = PERSISTS[how](c, KINDS[kind]())
    wait(held_futures(persisted), timeout=30)
    same(persisted.compute(), theirs)
    # Work on top of persisted data gives the same answer as without it.
    if kind in ("array", "series"):
        same((persisted + 1).compute(), theirs + 1)


@pytest.mark.parametrize("kind", list(KINDS))
def test_compute_gives_the_synchronous_answer(c, kind):
    theirs = expected(kind)
    f = c.compute(KINDS[kind]())
    assert isinstance(f, Future)
    same(f.result(timeout=30), theirs)
    same(c.compute([KINDS[kind]()], sync=True)[0], theirs)


def test_persist_many_collections_at_once(c):
    """One graph for all: shared inputs, each collection rebuilt from its own keys."""
    df = dd.from_pandas(PEOPLE, npartitions=3)
    x = da.arange(10, chunks=4)
    colls = [df.a * 2, df.groupby("c").b.max(), x + 1, x.sum(), KINDS["bag"]()]
    theirs = dask.compute(*colls, scheduler="sync")
    for persisted in (c.persist(colls), dask.persist(*colls)):
        assert len(persisted) == len(colls)
        for p, t in zip(persisted, theirs):
            held_futures(p)
            same(p.compute(), t)
    ours = dask.compute(*colls)
    for o, t in zip(ours, theirs):
        same(o, t)


def test_the_client_as_dask_scheduler_keyword(c):
    """``scheduler=client``, as with a dask.distributed client."""
    s = KINDS["series"]()
    (ours,) = dask.compute(s, scheduler=c)
    assert ours.tolist() == [2, 4, 6, 8]
    with dask.config.set(scheduler="sync"):
        persisted = s.persist(scheduler=c)
    held_futures(persisted)
    assert persisted.compute(scheduler=c).tolist() == [2, 4, 6, 8]


def test_persist_options_dask_passes(c):
    """``optimize_graph`` and the keyword arguments dask forwards to a scheduler."""
    s = KINDS["series"]()
    for persisted in (c.persist(s, optimize_graph=False),
                      s.persist(optimize_graph=False),
                      dask.persist(s, optimize_graph=False, num_workers=2)[0],
                      c.persist(s, num_workers=2)):
        held_futures(persisted)
        assert persisted.compute().tolist() == [2, 4, 6, 8]
    assert c.compute(s, optimize_graph=False, num_workers=2).result(
        timeout=30).tolist() == [2, 4, 6, 8]
    (ours,) = dask.compute(s, scheduler=c.get, optimize_graph=False, num_workers=2)
    assert ours.tolist() == [2, 4, 6, 8]


def test_persist_of_persisted_data(c):
    """Persisting again, alone or with more work on top, builds on the data held."""
    s = c.persist(KINDS["series"]())
    held_futures(s)
    again = c.persist(s)
    held_futures(again)
    assert again.compute().tolist() == [2, 4, 6, 8]
    more = c.persist(again + 1)
    held_futures(more)
    assert more.compute().tolist() == [3, 5, 7, 9]
    (a, b) = c.persist([s, s.sum()])
    assert a.compute().tolist() == [2, 4, 6, 8] and b.compute() == 20
    x = c.persist(array())
    theirs = array().compute(scheduler="sync")
    for again in (c.persist(x), x.persist(), c.persist(x - 1)):
        held_futures(again)
    same(c.persist(x).compute(), theirs)
    same(c.persist(x - 1).compute(), theirs - 1)


def test_get_with_an_expression_and_its_keys(c):
    """dask.compute hands the scheduler one optimized expression and its keys."""
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr
    from dask.core import flatten

    colls = [KINDS["groupby"](), KINDS["array"]()]
    expr = FinalizeCompute(collections_to_expr(colls)).optimize()
    keys = list(flatten(expr.__dask_keys__()))
    ours = c.get(expr, keys)
    for o, t in zip(ours, dask.compute(*colls, scheduler="sync")):
        same(o, t)


def test_a_result_may_rely_on_what_its_task_keeps_alive(c):
    """A result that is a weak proxy to an object its function's closure keeps stays
    valid while the result is held: the task that ran lives as long as its result."""
    kept = []

    def proxy(frame):
        kept.append(frame)
        return weakref.proxy(frame)

    d = pd.DataFrame({"g": [0, 0, 1] * 3, "b": [1, 2, 3] * 3})
    a = dd.from_pandas(d, npartitions=1).map_partitions(proxy, meta=d)
    for _ in range(3):
        same(a["b"].groupby(a["g"]).sum().compute(), d.b.groupby(d.g).sum())


def shuffle_method():
    from dask.utils import get_default_shuffle_method

    return get_default_shuffle_method()


def test_dataframes_shuffle_by_tasks_while_a_client_is_default(pc):
    """dask's default without a dask.distributed client is a shuffle through files in
    one worker's directory, which workers on other machines cannot read."""
    from dask_ipy.client.default import default_clients

    assert not default_clients() and shuffle_method() == "disk"
    client = pc.client()
    try:
        assert shuffle_method() == "tasks"
        graph = dict(dd.from_pandas(PEOPLE, npartitions=3).set_index("c")
                     .__dask_graph__())
        assert not [k for k in graph if "partd" in str(k)]
        other = pc.client()
        other.close()
        assert shuffle_method() == "tasks"         # while one client is default
        with dask.config.set({"dataframe.shuffle.method": "disk"}):
            assert shuffle_method() == "disk"      # the user's choice wins
    finally:
        client.close()
    assert shuffle_method() == "disk"
    with dask.config.set({"dataframe.shuffle.method": "p2p"}):
        client = pc.client()
        client.close()
        assert shuffle_method() == "p2p"


def test_dask_config_can_be_deep_copied_while_a_client_is_default(c):
    import copy

    config = copy.deepcopy(dask.config.config)
    assert config["scheduler"] == c.get and config["scheduler"].__self__ is c
    assert copy.copy(c) is c


def test_dask_config_can_be_pickled_while_a_client_is_default(c):
    """As dask.distributed's: code that sends dask.config to another process (a
    process pool's initializer, dask.distributed's Nanny) can pickle it; there,
    the scheduler is "dask.distributed", the default client of that process."""
    import pickle

    config = pickle.loads(pickle.dumps(dask.config.config))
    assert config["scheduler"] == "dask.distributed"
    assert dask.config.get("scheduler") == c.get           # here, unchanged
    # Where this process has a default client, the name means it.
    x = da.arange(10, chunks=5)
    with dask.config.set(scheduler=config["scheduler"]):
        assert x.sum().compute() == 45
        (y,) = dask.persist(x + 1)
    assert held_futures(y) and all(f.client is c for f in held_futures(y))
