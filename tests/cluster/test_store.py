import os

import numpy as np

from dask_ipy import Worker
from dask_ipy.worker.store import SpillStore

from helpers import wait_for


def test_spill_store_moves_old_values_to_disk_and_back(tmp_path):
    store = SpillStore(memory_limit=3_000_000, directory=str(tmp_path))
    arrays = {("x", i): np.full(100_000, i, dtype="f8") for i in range(10)}  # 800 kB each
    for k, v in arrays.items():
        store[k] = v
    assert len(store) == 10
    assert len(store.slow) >= 6 and len(store.fast) <= 3
    assert len(os.listdir(store.directory)) == len(store.slow)
    for k, v in arrays.items():
        assert (store[k] == v).all()
    del store[("x", 0)]
    assert ("x", 0) not in store and len(store) == 9
    assert set(store) == set(arrays) - {("x", 0)}
    store.close()


def test_spill_store_weighs_a_value_by_its_known_size(tmp_path):
    store = SpillStore(memory_limit=3_000_000, directory=str(tmp_path))
    store.sizes = {"known": 1_000}
    store["known"] = np.ones(100_000)                   # 800 kB by sizeof
    store["measured"] = np.ones(100_000)
    assert store.memory == 1_000 + 800_000
    store.close()


def test_worker_spills_results(cluster, tmp_path):
    s, _, c = cluster
    store = SpillStore(memory_limit=1_000_000, directory=str(tmp_path))
    w = Worker(scheduler=s.address_to_workers, data=store)
    assert store.sizes is w.state.nbytes       # weighed by what the worker measured
    try:
        wait_for(lambda: len(s.state.workers) == 3)
        futures = c.map(np.ones, [200_000] * 6, workers=[w.address], pure=False)
        assert sum(x.sum() for x in c.gather(futures)) == 1_200_000
        assert len(store) == 6 and len(store.slow) >= 4
        del futures
        wait_for(lambda: len(store) == 0, message="spilled results to be freed")
        assert not os.listdir(store.directory)
    finally:
        w.close()
