"""dask collections driven through the client the way dask.distributed users drive
them: persist then compute, explicit shuffle and rechunk methods."""

import operator
import threading

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from helpers import block_until_file, wait_for
from dask_ipy import futures_of, wait

pytestmark = pytest.mark.timeout(60)


def frame():
    y = np.random.default_rng(0).permutation(100).astype("f8")   # unsorted: set_index shuffles
    return dd.from_pandas(pd.DataFrame({"k": list("abcde") * 20, "y": y}), npartitions=4)


P2P_WORK = {
    "shuffle": lambda: frame().shuffle("k", shuffle_method="p2p"),
    "set_index": lambda: frame().set_index("y", shuffle_method="p2p"),
    "merge": lambda: frame().merge(frame(), on="k", shuffle_method="p2p"),
    "rechunk": lambda: da.ones((20, 10), chunks=(6, 4)).rechunk((20, 1), method="p2p"),
}


@pytest.mark.parametrize("name", sorted(P2P_WORK))
def test_p2p_is_refused_before_anything_runs(c, name):
    """dask.distributed's P2P steps need its own workers: refused at once with the
    remedy, never sent to fail on a worker (they raised RuntimeError "P2P ... failed
    during transfer phase" there)."""
    collection = P2P_WORK[name]()
    for run in (lambda: collection.compute(), lambda: c.compute(collection),
                lambda: c.persist(collection)):
        with pytest.raises(NotImplementedError, match="shuffle_method='tasks'"):
            run()
    assert c.scheduler_info()["ntasks"] == 0


def test_p2p_from_config_is_refused_and_tasks_works(c):
    with dask.config.set({"dataframe.shuffle.method": "p2p"}):
        with pytest.raises(NotImplementedError, match="P2P"):
            frame().groupby("k").y.sum(split_out=2).compute()
    indexed = frame().set_index("y", shuffle_method="tasks")
    pd.testing.assert_frame_equal(indexed.compute(), indexed.compute(scheduler="sync"))


def test_a_second_client_persisting_the_same_collection_gets_its_own_data(pc):
    """The first client persists and closes while its collection lives on; a second
    client persists the same collection (the same keys).  It used to get back the
    first client's persisted collection, its Futures 'finished' while the keys were
    released, and computing on it raised MissingDependency."""
    a = pc.client()
    first = a.persist(frame())
    wait(first)
    a.close()
    b = pc.client()
    try:
        second = b.persist(frame())
        wait(second)
        assert all(f.client is b for f in futures_of(second))
        assert len(b.who_has(second)) == 4
        assert second.y.sum().compute() == frame().y.sum().compute(scheduler="sync")
    finally:
        b.close()


def test_persisting_again_after_cancel_computes_again(c):
    first = c.persist(frame())
    wait(first)
    c.cancel(first)
    second = c.persist(frame())
    assert not any(f.cancelled() for f in futures_of(second))
    assert second.y.sum().compute() == frame().y.sum().compute(scheduler="sync")


def _asked_for_a_copy(key, dask_worker):
    ts = dask_worker.state.tasks.get(key)
    return ts is not None and ts.state == "executing" and ts.replica


def test_a_copy_asked_of_a_worker_still_running_that_key_freed(c, gate):
    """A client lets go of a task while it runs on w1; the same key is computed again
    on w2 and replicated (as a second run's persist then `rebalance` or `replicate`
    may do while the first run, slow to import on a fresh worker, still ends).  w1
    fetches its copy once the freed run ends; it used to forget it with the run, and
    `replicate` waited for ever."""
    w1, w2 = sorted(c.scheduler_info()["workers"])
    f = c.submit(block_until_file, str(gate), 1, key="probe-k", workers=[w1])
    wait_for(lambda: c.processing()[w1], message="the task to start on w1")
    del f
    wait_for(lambda: c.scheduler_info()["ntasks"] == 0, message="the key to be freed")
    g = c.submit(operator.add, 1, 1, key="probe-k", workers=[w2])
    assert g.result(timeout=10) == 2
    done = threading.Event()
    threading.Thread(target=lambda: (c.replicate([g], n=2), done.set()),
                     daemon=True).start()
    # w1 is asked for its copy while the freed run still holds its thread.
    wait_for(lambda: c.run(_asked_for_a_copy, "probe-k", workers=[w1])[w1],
             message="the copy to be asked of w1")
    gate.touch()                                      # the freed run ends on w1
    assert done.wait(20), "replicate never returned"
    assert sorted(c.who_has([g])["probe-k"]) == [w1, w2]
    assert c.gather(c.submit(operator.add, g, 0, workers=[w1])) == 2
