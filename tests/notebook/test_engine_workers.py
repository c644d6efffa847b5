"""Retiring and restarting workers that live in ipyparallel engines: the engines stay.
A retired engine worker closes (``dask_worker`` in the engine is closed, the engine
answers as before, booting again starts a new worker there); a restarted one starts
afresh in place (the same ``dask_worker`` object, the same engine process)."""

import operator
import os

import pytest

from helpers import dask_ipy_threads, wait_for
from dask_ipy.bootstrap import _by_value, dask_client_from_ipclient

pytestmark = pytest.mark.timeout(120)


def engine_worker():
    from IPython import get_ipython

    w = get_ipython().user_ns.get("dask_worker")
    return {"id": id(w), "closed": w.closed.is_set(), "running": w.loop.running,
            "address": w.address}


def engine_threads():
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("dask-ipy")]


def on(rc, eid, fn):
    return rc[eid].apply_sync(_by_value(fn))


def test_retire_and_restart_leave_the_engines_running(ipcluster):
    _, rc = ipcluster
    pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))
    c = dask_client_from_ipclient(rc)
    try:
        by_name = {w["name"]: a for a, w in c.scheduler_info()["workers"].items()}
        a0, a1 = by_name["engine-0"], by_name["engine-1"]
        fs = c.map(operator.mul, range(20), range(20))
        expected = [i * i for i in range(20)]
        assert c.gather(fs) == expected

        # retire engine 0's worker: its data moves to engine 1's; the engine stays
        assert list(c.retire_workers([a0])) == [a0]
        assert rc[0].apply_sync(os.getpid) == pids[0]
        wait_for(lambda: on(rc, 0, engine_worker)["closed"], message="worker 0 closed")
        assert c.gather(fs) == expected
        assert all(v == (a1,) for v in c.who_has(fs).values())

        # booting again starts a new worker in engine 0
        again = dask_client_from_ipclient(rc)
        assert again.scheduler_id == c.scheduler_id
        again.close()
        c.wait_for_workers(2, timeout=30)

        # restart engine 1's worker in place: same engine, same Worker object
        before = on(rc, 1, engine_worker)
        assert c.restart_workers([a1]) == {a1: "OK"}
        after = on(rc, 1, engine_worker)
        assert after["id"] == before["id"] and after["running"] and not after["closed"]
        assert rc[1].apply_sync(os.getpid) == pids[1]
        assert c.gather(fs) == expected              # what it held is recomputed
        assert c.submit(operator.add, 1, 2, workers=[a1]).result() == 3
    finally:
        c.shutdown()
    wait_for(lambda: not any(rc[:].apply_sync(_by_value(engine_threads))), timeout=30,
             message=lambda: f"engine threads to end: "
                             f"{rc[:].apply_sync(_by_value(engine_threads))}")
    wait_for(lambda: not dask_ipy_threads(), message="local threads to end")
    assert dict(zip(rc.ids, rc[:].apply_sync(os.getpid))) == pids


def engine_get_worker():
    import dask_ipy

    return dask_ipy.get_worker().address


def engine_fib(n, me):
    from dask_ipy import get_worker, worker_client

    if n < 2:
        return n, [get_worker().address]
    with worker_client() as c:
        a, b = c.submit(me, n - 1, me), c.submit(me, n - 2, me)
        (x, wa), (y, wb) = a.result(), b.result()
    return x + y, sorted(set(wa + wb + [get_worker().address]))


def test_tasks_that_launch_tasks_on_engine_workers(ipcluster):
    """In an engine, get_worker finds the engine's worker, outside tasks (code the
    engine runs) and inside them; a recursion of tasks that wait for their own
    sub-tasks runs on the engines' one-thread workers."""
    _, rc = ipcluster
    c = dask_client_from_ipclient(rc)
    try:
        addresses = [on(rc, eid, engine_worker)["address"] for eid in rc.ids]
        assert rc[:].apply_sync(_by_value(engine_get_worker)) == addresses
        fib = _by_value(engine_fib)
        value, where = c.submit(fib, 12, fib).result(timeout=90)
        assert value == 144
        assert set(where) <= set(addresses)
    finally:
        c.shutdown()
    wait_for(lambda: not any(rc[:].apply_sync(_by_value(engine_threads))), timeout=30,
             message=lambda: f"engine threads to end: "
                             f"{rc[:].apply_sync(_by_value(engine_threads))}")
