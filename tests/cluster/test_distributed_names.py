"""dask.distributed's names filled in, against scheduler and worker processes:
`Client.nbytes`, `dump_cluster_state`, `benchmark_hardware`."""

import gzip
import os

import msgpack
import pytest
import yaml
from dask.sizeof import sizeof

from helpers import inc, wait_for, wait_for_file
from dask_ipy.hardware import DISK_SIZES, MEMORY_SIZES, NETWORK_SIZES

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def gate(tmp_path):
    """A file whose creation lets `wait_for_file` tasks finish; made at the end of the
    test whatever happens, so no task is left running."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def known_to_scheduler(c, futures):
    """Wait until the scheduler has heard of the results (a small one can reach the
    client straight from its worker first)."""
    keys = {f.key for f in futures}
    wait_for(lambda: keys <= set(c.nbytes(summary=False)),
             message="the scheduler to hear of the results")


# ---------------------------------------------------------------- Client methods

def test_nbytes_gives_result_sizes_by_key_or_summed_by_prefix(c, gate):
    values = [1, 2, 10 ** 30]
    fs = c.map(inc, values)
    assert c.gather(fs) == [2, 3, 10 ** 30 + 1]
    known_to_scheduler(c, fs)
    sizes = {f.key: sizeof(v + 1) for f, v in zip(fs, values)}
    assert c.nbytes(summary=False) == sizes
    assert c.nbytes() == {"inc": sum(sizes.values())}
    assert c.nbytes(keys=[fs[2].key], summary=False) == {fs[2].key: sizeof(10 ** 30 + 1)}
    pending = c.submit(wait_for_file, str(gate), pure=False)
    assert c.nbytes(keys=[pending.key], summary=False) == {pending.key: -1}
    assert pending.key not in c.nbytes(summary=False)
    with pytest.raises(KeyError):
        c.nbytes(keys=["no-such-key"])


def _load_dump(path, format):
    if format == "msgpack":
        with gzip.open(path) as f:
            return msgpack.unpack(f)
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("format", ["msgpack", "yaml"])
def test_dump_cluster_state_writes_the_scheduler_and_every_worker(c, tmp_path, gate,
                                                                  format):
    done = c.submit(inc, 1)
    assert done.result() == 2
    running = c.submit(wait_for_file, str(gate), pure=False)
    wait_for(lambda: any(c.processing().values()) and sum(
        w["executing"] for w in c.scheduler_info()["workers"].values()) == 1,
        message="the gated task to run")
    known_to_scheduler(c, [done])
    c.dump_cluster_state(str(tmp_path / "dump"), format=format)
    suffix = ".msgpack.gz" if format == "msgpack" else ".yaml"
    state = _load_dump(tmp_path / f"dump{suffix}", format)
    assert set(state) == {"scheduler", "workers", "versions"}
    scheduler, workers = state["scheduler"], state["workers"]
    assert scheduler["tasks"][done.key]["state"] == "memory"
    assert scheduler["tasks"][running.key]["state"] == "processing"
    holder = scheduler["tasks"][done.key]["who_has"][0]
    runner = scheduler["tasks"][running.key]["processing_on"]
    assert set(scheduler["workers"]) == set(workers) == set(c.nthreads())
    assert done.key in scheduler["workers"][holder]["has_what"]
    assert workers[holder]["tasks"][done.key]["state"] == "memory"
    assert done.key in workers[holder]["data"]
    assert workers[runner]["tasks"][running.key]["state"] == "executing"
    assert workers[runner]["executing"] == [running.key]
    assert set(state["versions"]["workers"]) == set(workers)
    assert state["versions"]["scheduler"]["packages"]["dask_ipy"]

    c.dump_cluster_state(str(tmp_path / f"lean{suffix}"), format=format,
                         exclude=["logs", "who_has"])
    lean = _load_dump(tmp_path / f"lean{suffix}", format)
    assert "logs" not in lean["scheduler"] and "who_has" not in \
        lean["scheduler"]["tasks"][done.key]
    assert all("logs" not in w for w in lean["workers"].values())
    assert not os.path.exists(tmp_path / f"lean{suffix}{suffix}")

    with pytest.raises(ValueError, match="format"):
        c.dump_cluster_state(str(tmp_path / "x"), format="json")
    with pytest.raises(ValueError, match="local file"):
        c.dump_cluster_state("s3://bucket/dump")


def test_benchmark_hardware_measures_every_size_on_the_workers(c):
    result = c.benchmark_hardware()
    assert list(result) == ["disk", "memory", "network"]
    assert list(result["disk"]) == list(DISK_SIZES)
    assert list(result["memory"]) == list(MEMORY_SIZES)
    assert list(result["network"]) == list(NETWORK_SIZES)   # two workers: one pair
    for rates in result.values():
        assert all(isinstance(r, float) and r > 0 for r in rates.values()), rates
