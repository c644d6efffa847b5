"""Tasks that launch tasks, on real sockets: get_worker, get_client, secede, rejoin,
worker_client, dask's compute inside a task; in this process and on worker
processes of one thread each, where a task that waits for its sub-tasks without
seceding would deadlock."""

import threading
import time

import dask
import pytest

from dask_ipy import (get_client, get_worker, rejoin, secede, worker_client)
from helpers import (compute_inside, fib, fib_holding_thread, inc, local_cluster,
                     processes, scatter_and_sum, task_client_identity, wait_for,
                     wait_for_file)

pytestmark = pytest.mark.timeout(120)


def test_get_worker_inside_and_outside_a_task():
    with local_cluster() as (s, workers, c):
        where = c.submit(lambda: get_worker().address, pure=False).result(timeout=20)
        assert where in {w.address for w in workers}
        # Outside a task: the newest open worker of this process (as in an engine).
        assert get_worker() is workers[-1]
        workers[-1].close()
        assert get_worker() is workers[0]
    with pytest.raises(ValueError, match="no dask_ipy worker"):
        get_worker()


def test_secede_rejoin_and_worker_client_outside_a_task_say_so():
    with pytest.raises(ValueError, match="inside a task"):
        secede()
    with pytest.raises(ValueError, match="inside a task"):
        rejoin()
    with pytest.raises(ValueError, match=r"worker_client\(\) is called from inside"):
        with worker_client():
            pass


def test_get_client_with_no_client_nor_worker_says_there_is_no_client():
    with pytest.raises(ValueError,
                       match="^No global client found and no address provided$"):
        get_client()


def test_one_client_per_worker_shared_by_its_tasks():
    with local_cluster(worker_options={"nthreads": 1}) as (s, workers, c):
        w = workers[0].address
        seen = c.gather(c.map(task_client_identity, range(6), workers=[w]))
        assert {ident for ident, _ in seen} == {id(workers[0].task_client)}
        assert {where for _, where in seen} == {w}
        # The task client is not this process's default client.
        assert get_client() is c
    assert workers[0].task_client is None          # closed with its worker


def test_get_client_of_an_address():
    with local_cluster() as (s, workers, c):
        # dask.distributed's first argument: the default client if connected there
        assert get_client(c.address) is c
        assert get_client(c.address.removeprefix("tcp://"), timeout=5) is c
        assert get_client(timeout=5) is c
        # else a client of that scheduler
        other = get_client(s.address_to_clients.replace("127.0.0.1", "localhost"))
        try:
            assert other is not c and other.submit(inc, 1).result(timeout=10) == 2
        finally:
            other.close()


def test_fib_on_one_thread_workers_in_this_process():
    with local_cluster(worker_options={"nthreads": 1}) as (s, workers, c):
        assert c.submit(fib, 15).result(timeout=60) == 610
        assert all(not ws.seceded and not ws.stale for ws in s.state.workers.values())
        assert all(not w.state.seceded for w in workers)
        assert all(len([t for t in w.threads if t.is_alive()]) == 1 for w in workers)


def test_a_waiting_task_that_keeps_its_thread_deadlocks():
    """The control: without secede, two one-thread workers are full of waiting tasks
    (it ends only because the waits time out)."""
    with local_cluster(worker_options={"nthreads": 1}) as (s, workers, c):
        with pytest.raises(Exception) as info:
            c.submit(fib_holding_thread, 6).result(timeout=60)
        assert "TimeoutError" in type(info.value).__name__ + repr(info.value)


GATE = threading.Event()
LOG = []


def long_one():
    secede()
    LOG.append("seceded")
    GATE.wait(30)
    rejoin()
    LOG.append("rejoined")
    return "long"


def blocker():
    LOG.append("blocker runs")
    time.sleep(0.3)
    LOG.append("blocker ends")
    return "blocker"


def test_secede_then_rejoin_waits_for_a_slot():
    """One one-thread worker: a task secedes, another takes the slot; the first's
    rejoin waits until the slot is free again."""
    GATE.clear()
    LOG.clear()
    with local_cluster(worker_options={"nthreads": 1}) as (s, workers, c):
        w = workers[0]
        a = c.submit(long_one, workers=[w.address])
        wait_for(lambda: "seceded" in LOG, timeout=20)
        b = c.submit(blocker, workers=[w.address])
        wait_for(lambda: "blocker runs" in LOG, timeout=20)
        GATE.set()
        assert a.result(timeout=20) == "long" and b.result(timeout=20) == "blocker"
        assert LOG == ["seceded", "blocker runs", "blocker ends", "rejoined"]
        assert len([t for t in w.threads if t.is_alive()]) == 1


def test_dask_compute_inside_a_task_in_this_process():
    with local_cluster() as (s, workers, c):
        total, where = c.submit(compute_inside, 20).result(timeout=30)
        assert total == sum(range(1, 21))


def test_fib_20_on_two_one_thread_worker_processes(tmp_path):
    with processes(tmp_path, nworkers=2, nthreads=1) as (pc, c):
        start = time.monotonic()
        assert c.submit(fib, 20).result(timeout=90) == 6765
        print(f"fib(20) on two one-thread worker processes: "
              f"{time.monotonic() - start:.2f} s")
        info = c.scheduler_info()["workers"]
        assert len(info) == 2


def test_a_task_scatters_and_submits_on_worker_processes(tmp_path):
    with processes(tmp_path, nworkers=2, nthreads=1) as (pc, c):
        assert c.submit(scatter_and_sum, list(range(10))).result(timeout=60) == 55


def test_dask_compute_inside_a_task_on_worker_processes(tmp_path):
    with processes(tmp_path, nworkers=2, nthreads=1) as (pc, c):
        (total, where), = dask.compute(
            dask.delayed(compute_inside)(30), scheduler=c.get)
        assert total == sum(range(1, 31))
        assert where in c.scheduler_info()["workers"]


def test_an_error_inside_worker_client_rejoins_and_is_the_tasks():
    from helpers import Boom, fail_inside_worker_client

    with local_cluster(worker_options={"nthreads": 1}) as (s, workers, c):
        with pytest.raises(Boom, match="after launching 3"):
            c.submit(fail_inside_worker_client, 3).result(timeout=30)
        assert c.submit(inc, 1).result(timeout=30) == 2
        for w in workers:
            wait_for(lambda: not w.state.seceded and not w.state.executing
                     and len([t for t in w.threads if t.is_alive()]) == 1,
                     message="the pool back to one thread")


# ---------------------------------------------------------------- Futures given to tasks

class Box:
    """A Future inside an object of the user's: it reaches the task as a Future."""

    def __init__(self, future):
        self.future = future


def sum_inside(x, started=None, gate=None):
    """A collection's sum computed inside the task that was given it; with
    ``started`` and ``gate``, it says it has the collection, then waits for the gate."""
    if started is not None:
        open(started, "w").close()
        wait_for_file(gate)
    return float(x.sum().compute())


def what_came(lst, dct, box):
    from dask_ipy import Future

    return (lst[0], dct["a"], type(box.future) is Future,
            box.future.key in get_worker().task_client.shell.held(), box.future.result())


def persist_and_submit_inside():
    """A task persists a collection and gives it to a task of its own."""
    import dask.array as da

    with worker_client() as client:
        y = da.ones(50, chunks=10).persist()
        return client.submit(sum_inside, y).result(timeout=30)


def held_by_task(dask_scheduler):
    """Who holds the one key the scheduler has besides the queued tasks'."""
    return [h[0] for ts in dask_scheduler.tasks.values() for h in ts.who_wants
            if isinstance(h, tuple)]


def read_box(box):
    return box.future.result(timeout=10)


def test_a_future_inside_a_tasks_arguments_is_kept_until_the_task_ends(tmp_path, gate):
    """The client lets go of a Future it gave a task inside an object of its own;
    the task, queued behind another, unpickles it (and its worker's client says it
    wants the key) only when it starts, long after: the task held the key."""
    with processes(tmp_path, nworkers=1, nthreads=1) as (pc, c):
        f = c.submit(inc, 1)
        assert f.result(timeout=30) == 2
        busy = c.submit(wait_for_file, str(gate))          # the only thread
        boxed = c.submit(read_box, Box(f))
        del f
        c.who_has()                       # a barrier: the release is in by its answer
        assert c.run_on_scheduler(held_by_task) == ["task"]
        gate.touch()
        assert boxed.result(timeout=30) == 2 and busy.result(timeout=30) is None


def test_a_persisted_collection_passed_to_a_task_computes_there(tmp_path):
    """As in dask.distributed: the Futures of a persisted collection given to a task
    are Futures of the worker's client there, so ``x.sum().compute()`` inside the
    task runs on the cluster (on one-thread workers too: the task's compute secedes
    while it waits).  That client holds the keys while the task runs, even once the
    caller drops the collection; nothing is left on the scheduler afterwards.  A
    Future in a list or dict argument comes as its value; one in another object, as
    a Future."""
    import dask.array as da

    with processes(tmp_path, nworkers=2, nthreads=1) as (pc, c):
        x = da.ones(100, chunks=10).persist()
        assert c.submit(sum_inside, x).result(timeout=30) == 100.0

        started, gate = tmp_path / "started", tmp_path / "gate"
        slow = c.submit(sum_inside, x, str(started), str(gate))
        wait_for(started.exists, timeout=30, message="the task to have the collection")
        del x                                   # the caller lets go of its keys
        time.sleep(0.3)
        gate.touch()
        assert slow.result(timeout=30) == 100.0

        f = c.submit(inc, 1)
        assert c.submit(what_came, [f], {"a": f}, Box(f)).result(timeout=30) == \
            (2, 2, True, True, 2)
        assert dask.delayed(persist_and_submit_inside)().compute(scheduler=c.get) == 50.0
        # In a delayed graph too: a collection there is its value (dask's rule).
        y = da.ones(30, chunks=10).persist()
        assert dask.delayed(lambda a: float(a.sum()))(y).compute(scheduler=c.get) == 30.0

        del slow, f, y
        wait_for(lambda: c.scheduler_info()["ntasks"] == 0, timeout=10,
                 message=lambda: f"no task left: {c.scheduler_info()['ntasks']}")


# ---------------------------------------------------------------- Worker.executor

def thread_name():
    return threading.current_thread().name


def call_on_the_executor():
    """A task that secedes and runs a call on its worker's executor (a one-thread
    worker's only slot is then free for it)."""
    import concurrent.futures as cf

    w = get_worker()
    assert isinstance(w.executor, cf.Executor) and w.executors["default"] is w.executor
    secede()
    try:
        return w.executor.submit(thread_name).result(timeout=20)
    finally:
        rejoin()


def test_worker_executor_runs_calls_on_the_task_threads(tmp_path, gate):
    """``get_worker().executor`` (dask.distributed's name) is a concurrent.futures
    Executor over the worker's task threads; the worker shuts it down as it closes,
    cancelling calls not started."""
    with processes(tmp_path, nworkers=2, nthreads=1) as (pc, c):
        assert c.submit(call_on_the_executor).result(timeout=30).startswith(
            "dask-ipy-worker-task")
        names = c.run(lambda dask_worker: dask_worker.executor.submit(thread_name)
                      .result(timeout=20))
        assert len(names) == 2
        assert all(n.startswith("dask-ipy-worker-task") for n in names.values())

    with local_cluster(worker_options={"nthreads": 1}) as (s, workers, c):
        w = workers[0]
        busy = c.submit(wait_for_file, str(gate), workers=[w.address])
        wait_for(lambda: w.state.executing, timeout=20, message="the task to start")
        queued = w.executor.submit(thread_name)     # behind the busy thread
        w.close()
        assert queued.cancelled()
        with pytest.raises(RuntimeError, match="shutdown"):
            w.executor.submit(thread_name)
        gate.touch()
        del busy
