"""Where tasks run, as the user asks: resources=, workers=, priority=, retries= on
submit, map, compute, persist and dask's own compute, from keyword arguments and from
dask.annotate; options of the client never reach the user's function."""

import warnings

import dask
import pytest

from helpers import (add, alone, dask_ipy_threads, fail_until, inc, wait_for,
                     wait_for_file)
from dask_ipy import Client, Scheduler, Worker, wait
from dask_ipy.client.options import AnnotationWarning

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def gpu_cluster():
    """'gpu' has GPU=1 and two threads, 'cpu' has no resources and two threads."""
    s = Scheduler(validate=True)
    gpu = Worker(scheduler=s.address_to_workers, nthreads=2, name="gpu",
                 resources="GPU=1", validate=True)
    cpu = Worker(scheduler=s.address_to_workers, nthreads=2, name="cpu", validate=True)
    c = Client(s.address_to_clients, set_as_default=False)
    try:
        wait_for(lambda: len(s.state.workers) == 2, message="workers")
        yield s, gpu, cpu, c
    finally:
        c.close()
        gpu.close()
        cpu.close()
        s.close()
    wait_for(lambda: not dask_ipy_threads(), timeout=5, message="threads to stop")


def holders(c, s, futures):
    """Names of the workers holding ``futures``, asked through the client: a small
    result may reach the client straight from its worker before the scheduler has
    heard of it, and the client's questions wait for the scheduler's word."""
    names = {ws.address: ws.name for ws in s.state.workers.values()}
    return {names[a] for addrs in c.who_has(list(futures)).values() for a in addrs}


def test_resources_never_reach_the_function_and_place_the_task(gpu_cluster):
    s, gpu, cpu, c = gpu_cluster
    f = c.submit(add, 1, 2, resources={"GPU": 1}, allow_other_workers=False)
    assert f.result(timeout=10) == 3
    fs = c.map(inc, range(8), resources={"GPU": 1})
    assert c.gather(fs) == list(range(1, 9))
    assert holders(c, s, [f, *fs]) == {"gpu"}
    # Without resources both workers are used.
    plain = c.map(inc, range(100, 140))
    c.gather(plain)
    assert holders(c, s, plain) == {"gpu", "cpu"}


def test_tasks_needing_the_resource_never_run_together_beyond_it(gpu_cluster, tmp_path):
    s, gpu, cpu, c = gpu_cluster
    lock = str(tmp_path / "gpu-in-use")
    fs = [c.submit(alone, lock, resources={"GPU": 1}, pure=False) for _ in range(6)]
    assert c.gather(fs) == [True] * 6
    # Without the resource the two threads do overlap (so the check above can fail).
    fs = [c.submit(alone, lock, 2.0, workers="gpu", pure=False) for _ in range(2)]
    assert sorted(c.gather(fs)) == [False, True]


def test_a_resource_no_worker_has_waits_for_one(gpu_cluster):
    s, gpu, cpu, c = gpu_cluster
    f = c.submit(inc, 1, resources={"TPU": 1})
    wait_for(lambda: s.state.tasks.get(f.key) is not None
             and s.state.tasks[f.key].state == "no-worker", message="no-worker")
    with Worker(scheduler=s.address_to_workers, resources={"TPU": 4}, name="tpu") as w:
        assert f.result(timeout=10) == 2
        assert holders(c, s, [f]) == {"tpu"}
        del f
        wait_for(lambda: not w.data, message="the key to be freed")


def test_compute_persist_and_dask_compute_take_resources(gpu_cluster):
    s, gpu, cpu, c = gpu_cluster
    x = dask.delayed(inc)(10)
    y = dask.delayed(add)(x, 1)
    fy = c.compute(y, resources={"GPU": 1})
    assert fy.result(timeout=10) == 12
    assert holders(c, s, [fy]) == {"gpu"}
    p = c.persist(dask.delayed(inc)(20), resources={"GPU": 1})
    assert p.compute(scheduler=c.get) == 21
    assert holders(c, s, [p]) == {"gpu"}
    # dask's own compute passes them on to the client's get.
    z = dask.delayed(inc)(30)
    assert z.compute(scheduler=c.get, resources={"GPU": 1}) == 31


def test_dask_annotate_is_honoured_per_key_and_around_the_call(gpu_cluster, tmp_path):
    s, gpu, cpu, c = gpu_cluster
    with dask.annotate(resources={"GPU": 1}, priority=3):
        x = dask.delayed(inc, pure=False)(1)
    y = dask.delayed(inc, pure=False)(x)
    fx, fy = c.compute([x, y])
    assert fy.result(timeout=10) == 3
    assert holders(c, s, [fx]) == {"gpu"}
    # Around the call: every task sent.
    with dask.annotate(resources={"GPU": 1}):
        fs = c.map(inc, range(50, 58))
        assert y.compute(scheduler=c.get) == 3
    c.gather(fs)
    assert holders(c, s, fs) == {"gpu"}
    # retries from dask.annotate, on a task failing twice.
    path = str(tmp_path / "attempts")
    with dask.annotate(retries=2):
        f = c.submit(fail_until, path, 3, pure=False)
    assert f.result(timeout=10) == 3


def test_what_cannot_be_honoured_is_named_in_a_warning(gpu_cluster):
    s, gpu, cpu, c = gpu_cluster
    with pytest.warns(AnnotationWarning, match="'span_name'"):
        with dask.annotate(span_name="x"):
            assert c.submit(inc, 1).result(timeout=10) == 2
    with pytest.warns(AnnotationWarning, match="fifo_timeout"):
        c.submit(inc, 2, fifo_timeout="100ms").result(timeout=10)
    with pytest.raises(NotImplementedError, match="actor"):
        c.compute(dask.delayed(inc)(3), actors=True)
    with pytest.raises(TypeError, match="takes a class"):
        c.submit(inc, 3, actor=True)
    with pytest.raises(ValueError, match="resources="):
        c.submit(inc, 4, resources={"GPU": "one"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # nothing to warn about
        with dask.annotate(priority=1, retries=1, workers=["gpu"],
                           allow_other_workers=True, resources={"GPU": 1}):
            assert c.submit(inc, 5).result(timeout=10) == 6


def test_tiny_tasks_never_wait_behind_a_blocking_one_while_a_worker_idles(cluster,
                                                                          tmp_path):
    s, workers, c = cluster
    c.gather(c.map(inc, range(40)))         # known to be tiny from now on
    gate = tmp_path / "gate"
    try:
        blocker = c.submit(wait_for_file, str(gate), pure=False)
        wait_for(lambda: any(ts.key == blocker.key for ws in s.state.workers.values()
                             for ts in ws.executing), message="the blocker to start")
        fs = c.map(inc, range(1000, 1200))
        done, not_done = wait(fs, timeout=20)
        assert not not_done and not blocker.done()
        assert c.gather(fs) == list(range(1001, 1201))
    finally:
        gate.touch()
    assert blocker.result(timeout=10) is None
