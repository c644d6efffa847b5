import os
import threading

import numpy as np

from dask_ipy import Worker
from dask_ipy.worker.store import Spilled, SpillFiles, SpillStore

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


def test_spill_store_keeps_lru_order_and_counts_each_size_once(tmp_path):
    store = SpillStore(memory_limit=300, directory=str(tmp_path))
    store.sizes = {k: 100 for k in "abcd"}
    nb = store.nonblocking
    for k in "abc":
        nb[k] = k
    nb["a"]                                      # now the most recently used
    nb["d"] = "d"                                # over the budget: "b" goes
    wait_for(lambda: "b" in store.slow and store.memory == 300)
    assert type(nb["b"]) is Spilled
    b_file = os.path.join(store.directory, store.files.names["b"][0])
    nb["a"] = "A"                                # replaced in memory: used last
    nb["b"] = "B"                                # replaced on disk: its file goes
    # (at once; "c" may already be on its way to disk, in the background)
    assert "b" not in store.slow and not os.path.exists(b_file)
    wait_for(lambda: "c" in store.slow and store.memory == 300)   # "c", unused longest
    assert nb["b"] == "B" and nb["a"] == "A" and len(store) == 4
    assert store.memory == sum(store.fast.weights.values())
    assert nb["c"].load() == "c" and "c" in store.fast
    for k in "abcd":
        del nb[k]
    wait_for(lambda: not store._evicting and not store.slow)
    assert store.memory == 0 and len(store) == 0 and not os.listdir(store.directory)
    store.close()


def test_spill_store_sends_a_value_heavier_than_its_budget_to_disk_first(tmp_path):
    store = SpillStore(memory_limit=1_000, directory=str(tmp_path))
    store.sizes = {"small": 100, "heavy": 2_000, "other": 100}
    store["small"] = 1
    store["heavy"] = 2
    store["other"] = 3
    assert list(store.slow) == ["heavy"] and store.memory == 200
    assert store["heavy"] == 2 and "heavy" in store.slow    # too heavy to come back
    store.close()


class GatedFiles(SpillFiles):
    """Writes or reads (``gated``) wait for ``gate``."""

    def __init__(self, directory, gated):
        super().__init__(directory)
        self.gated = gated
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def _wait(self, what):
        if what == self.gated:
            self.waiting.set()
            assert self.gate.wait(30)

    def __setitem__(self, key, frames):
        self._wait("write")
        super().__setitem__(key, frames)

    def __getitem__(self, key):
        self._wait("read")
        return super().__getitem__(key)


def test_a_value_replaced_or_deleted_while_written_stays_as_set(tmp_path):
    for change in ("replace", "delete", "delete and set again"):
        store = SpillStore(memory_limit=100, directory=str(tmp_path))
        store.files = store.buffer.slow.d = GatedFiles(store.directory, "write")
        store.sizes = {"a": 100, "b": 100}
        nb = store.nonblocking
        nb["a"] = 1
        nb["b"] = 2                                 # "a" is being written
        wait_for(store.files.waiting.is_set)
        if change != "replace":
            del nb["a"]
        if change != "delete":
            nb["a"] = 3                             # a key new to memory again
        store.files.gate.set()
        wait_for(lambda: not store._evicting and store.memory == 100)
        assert "a" not in store.slow
        assert nb["a"] == 3 if change != "delete" else "a" not in store
        assert len(os.listdir(store.directory)) == len(store.slow) == len(store) - 1
        assert store.memory == sum(store.fast.weights.values())
        store.close()


def test_a_value_set_while_read_back_stays_as_set(tmp_path):
    store = SpillStore(memory_limit=100, directory=str(tmp_path))
    store.files = store.buffer.slow.d = GatedFiles(store.directory, "read")
    store.sizes = {"a": 100, "b": 100}
    store["a"] = 1
    store["b"] = 2                                  # "a" to disk, at once
    read = []
    reader = threading.Thread(target=lambda: read.append(store.get("a")))
    reader.start()
    wait_for(store.files.waiting.is_set)
    store.nonblocking["a"] = 3                      # the read back is cancelled
    store.files.gate.set()
    reader.join(30)
    assert read == [None]                           # as if deleted, as zict does
    wait_for(lambda: not store._evicting and store.memory == 100)
    assert store["a"] == 3 and "a" not in store.slow and "b" in store.slow
    assert len(os.listdir(store.directory)) == 1
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
