"""dask.distributed's names for work that outlives its Futures and for Futures found
inside structures: `fire_and_forget`, `Future.retry` / `Client.retry`, `futures_of`,
and `TimeoutError`, against scheduler and worker processes."""

import asyncio
import concurrent.futures as cf
import contextlib
import gc
import os
import threading
import time

import dask
import dask.array as da
import pytest

import dask_ipy
from helpers import (Boom, fail, fail_until, inc, local_cluster, record, wait_for,
                     wait_for_file)
from dask_ipy import (CancelledError, Client, as_completed, fire_and_forget, futures_of,
                      wait)

pytestmark = pytest.mark.timeout(60)


def ntasks(client):
    return client.scheduler_info()["ntasks"]


# ---------------------------------------------------------------- fire_and_forget

def test_fired_work_finishes_after_the_client_closes_and_is_then_forgotten(c, pc, gate,
                                                                           tmp_path):
    out = tmp_path / "out"
    held = c.submit(wait_for_file, str(gate), value="done", pure=False)
    writes = c.submit(record, str(out), held, pure=False)
    fire_and_forget(writes)          # only the last: its input is kept for it
    del held, writes
    gc.collect()
    c.close()
    other = pc.client()
    try:
        assert ntasks(other) == 2
        gate.touch()
        wait_for(lambda: out.exists() and out.read_text() == "done\n",
                 message="the fired task to write its file")
        wait_for(lambda: ntasks(other) == 0, message="the scheduler to forget it")
    finally:
        other.close()


def test_a_fired_task_that_fails_is_forgotten(c, gate):
    f = c.submit(wait_for_file, str(gate), pure=False)
    failing = c.submit(fail, f, pure=False)
    fire_and_forget([{"x": failing}])
    del f, failing
    gc.collect()
    assert ntasks(c) == 2            # the release went before this question
    gate.touch()
    wait_for(lambda: ntasks(c) == 0, message="the scheduler to forget the failed task")


def test_a_fired_task_stays_for_a_client_that_still_wants_it(c, gate):
    f = c.submit(wait_for_file, str(gate), value=7, pure=False)
    fire_and_forget(f)
    gate.touch()
    assert f.result(timeout=10) == 7
    assert ntasks(c) == 1
    del f
    gc.collect()
    wait_for(lambda: ntasks(c) == 0, message="the released key to be forgotten")


# ---------------------------------------------------------------- retry

def test_future_retry_runs_a_failed_task_again(c, tmp_path):
    count = str(tmp_path / "count")
    f = c.submit(fail_until, count, 2, pure=False)
    assert str(f.exception(timeout=10)) == "attempt 1 fails"
    assert f.status == "error"
    assert f.retry() is None
    assert f.result(timeout=10) == 2
    assert f.status == "finished" and f.exception() is None


def test_client_retry_starts_again_from_the_input_that_failed(c, tmp_path):
    count = str(tmp_path / "count")
    first = c.submit(fail_until, count, 2, pure=False)
    second = c.submit(inc, first, pure=False)
    assert type(second.exception(timeout=10)) is RuntimeError
    c.retry([second])
    assert second.result(timeout=10) == 3
    assert first.result(timeout=10) == 2


def test_retry_and_a_cleared_as_completed_awaited(pc, tmp_path, gate):
    count = str(tmp_path / "count")

    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            f = c.submit(fail_until, count, 2, pure=False)
            assert type(await f.exception()) is RuntimeError
            await f.retry()
            assert await f == 2
            ac = as_completed([c.submit(wait_for_file, str(gate), pure=False)])

            async def drain():
                return [x async for x in ac]
            iterating = asyncio.create_task(drain())
            while not ac.wakers:                   # until it waits for the future
                await asyncio.sleep(0.01)
            ac.clear()
            return await asyncio.wait_for(iterating, 10)
    assert asyncio.run(main()) == []


def hold_scheduler(path, seconds):
    """For run_on_scheduler: keep the scheduler's I/O thread busy a while."""
    open(path, "w").close()
    time.sleep(seconds)


@contextlib.contextmanager
def busy_scheduler(c, path):
    """The scheduler reads no message for half a second from now."""
    holding = threading.Thread(target=c.run_on_scheduler,
                               args=(hold_scheduler, str(path), 0.5))
    holding.start()
    wait_for(path.exists, message="the scheduler to be busy")
    try:
        yield
    finally:
        holding.join(10)


def test_retry_returns_once_the_scheduler_has_the_tasks_again(tmp_path, gate):
    """Retried, a task waits for the gate: as soon as `retry` returns (or, awaited,
    ends) it is pending on both sides, though the scheduler was busy meanwhile."""
    with local_cluster() as (s, _, c):
        def erred(client, name):
            first = client.submit(fail_until, str(tmp_path / name), 2, pure=False)
            return client.submit(wait_for_file, str(gate), value=first, pure=False)

        def pending(f):
            return s.state.tasks[f.key].state in ("waiting", "processing") and \
                f.status == "pending"

        f = erred(c, "blocking")
        assert type(f.exception(timeout=10)) is RuntimeError
        with busy_scheduler(c, tmp_path / "busy1"):
            assert c.retry([f]) is None
            assert pending(f)

        async def main():
            async with Client(s.address_to_clients, asynchronous=True) as ac:
                g = erred(ac, "async")
                assert type(await g.exception()) is RuntimeError
                with busy_scheduler(c, tmp_path / "busy2"):
                    assert await g.retry() is None
                    assert pending(g)
                gate.touch()
                return await g
        assert asyncio.run(main()) == 2
        assert f.result(timeout=10) == 2


# ---------------------------------------------------------------- futures_of

def test_futures_of_finds_futures_in_structures_once_each_in_order(c):
    a, b, d = c.map(inc, range(3))
    assert futures_of([a, (b, {"k": d}), {a}, "not a future", 4]) == [a, b, d]
    assert futures_of({"only": [[d]]}) == [d]
    assert futures_of(3) == []


def test_futures_of_keeps_two_futures_of_one_key(c):
    """As in dask.distributed: each Future is equal only to itself, so two Futures
    of one key are both found (each once); wait counts both, retry and
    fire_and_forget take the key once."""
    a = c.submit(inc, 1, key="one-key")
    b = c.submit(inc, 1, key="one-key")
    assert a is not b and a.key == b.key
    found = futures_of([a, {"b": b}, (a, [b])])
    assert len(found) == 2 and found[0] is a and found[1] is b
    assert c.futures_of({"x": [b, a]}) == [b, a]
    done, _ = wait([a, b])
    assert len(done) == 2
    fire_and_forget([a, b])
    assert c.gather([a, b]) == [2, 2]


def test_futures_of_finds_the_futures_behind_dask_collections(c):
    x = da.ones(10, chunks=5).persist()
    found = futures_of(x)
    assert sorted(f.key for f in found) == sorted(x.__dask_keys__())
    assert all(isinstance(f, dask_ipy.Future) for f in found)
    a = c.submit(inc, 1)
    lazy = dask.delayed(sum)([a, dask.delayed(inc)(a), 10])
    assert futures_of(lazy) == [a]
    assert c.futures_of([x, lazy]) == found + [a]


def test_wait_takes_what_futures_of_finds(c, gate):
    x = (da.ones(10, chunks=5) + 1).persist()
    done, not_done = wait(x)
    assert not not_done and {f.key for f in done} == set(x.__dask_keys__())
    held = c.submit(wait_for_file, str(gate), pure=False)
    with pytest.raises(TimeoutError, match="1 of 3 futures"):
        wait({"x": x, "held": [held]}, timeout=0.2)
    gate.touch()
    done, not_done = wait({"x": x, "held": [held]}, timeout=10)
    assert not not_done and len(done) == 3
    plain = cf.Future()
    plain.set_result(1)
    assert wait([held, plain]).not_done == set()     # concurrent.futures' too


def test_client_futures_of_refuses_cancelled_futures(c, gate):
    f = c.submit(wait_for_file, str(gate), pure=False)
    f.cancel()
    assert futures_of([f]) == [f]
    with pytest.raises(CancelledError, match=repr(f.key)):
        c.futures_of([f])


# ---------------------------------------------------------------- TimeoutError

def test_timeouts_raise_the_exported_timeout_error(c, gate):
    assert dask_ipy.TimeoutError is TimeoutError
    f = c.submit(wait_for_file, str(gate), pure=False)
    with pytest.raises(dask_ipy.TimeoutError):
        f.result(timeout=0.05)
    with pytest.raises(dask_ipy.TimeoutError):
        c.gather([f], timeout=0.05)


# ---------------------------------------------------------------- arguments and keys

def test_nthreads_and_has_what_of_some_workers(c):
    everyone = c.nthreads()
    first, second = sorted(everyone)
    x = c.submit(inc, 1, workers=[first])
    assert x.result() == 2
    assert c.nthreads(first) == {first: everyone[first]}
    assert c.nthreads([first, second]) == everyone
    # (a result that came straight may be here before the scheduler heard of it)
    wait_for(lambda: c.has_what([first]) == {first: (x.key,)}, message="x on first")
    assert c.has_what(second) == {second: ()}
    assert c.has_what(workers=[]) == {}
    assert c.who_has([]) == {}


def test_moves_among_no_futures_or_no_workers_move_nothing(c):
    first, second = sorted(c.nthreads())
    xs = c.map(inc, range(4), workers=[first])
    on_first = {x.key: (first,) for x in xs}
    wait_for(lambda: c.who_has(xs) == on_first, message="xs on first")
    c.rebalance([])
    c.rebalance(workers=[])
    with pytest.raises(ValueError):
        c.replicate(xs, workers=[])
    with pytest.raises(ValueError):
        c.replicate(xs, n=0)
    assert c.who_has(xs) == on_first
    # A scatter to no worker puts its data nowhere; a task may still run anywhere.
    with pytest.raises(RuntimeError, match="no workers available"):
        c.scatter([1, 2], workers=[])
    assert c.submit(inc, 1, workers=[]).result(timeout=30) == 2


def test_gather_accepts_direct_and_restart_waits_for_the_workers(c):
    x = c.submit(inc, 1)
    assert c.gather([x], direct=True) == [2]
    assert c.gather(x, direct=False) == 2
    assert c.restart(wait_for_workers=True) is None
    assert len(c.nthreads()) == 2
    assert c.restart(wait_for_workers=False) is None
    assert c.restart(timeout="30s") is None
    assert c.submit(inc, 2).result() == 3


def test_scheduler_info_has_dask_distributed_keys(c):
    before = time.time()
    info = c.scheduler_info()
    assert info["type"] == "Scheduler"
    assert info["started"] < before
    assert info["services"] == {}
    assert info["n_workers"] == 2 and len(info["workers"]) == 2
    assert info["total_threads"] == sum(c.nthreads().values())
    assert info["total_memory"] == sum(w["memory_limit"] for w in info["workers"].values())
    for w in info["workers"].values():
        assert os.path.isdir(w["local_directory"])
        assert w["services"] == {} and w["nanny"] is None
    one = c.scheduler_info(n_workers=1)
    assert one["n_workers"] == 2 and one["total_threads"] == info["total_threads"]
    assert list(one["workers"]) == list(info["workers"])[:1]
    assert c.scheduler_info(n_workers=-1)["workers"].keys() == info["workers"].keys()


def test_scheduler_info_services_name_the_dashboard():
    with local_cluster(scheduler_options={"dashboard_port": 0}) as (s, _, client):
        assert client.scheduler_info()["services"] == {"dashboard": s.dashboard.port}


# ---------------------------------------------------------------- looking inside

def test_get_scheduler_logs_newest_first_at_most_n():
    from dask_ipy.log import logger

    with local_cluster() as (s, _, client):
        logger.warning("first words of the scheduler")
        logger.warning("last words of the scheduler")
        lines = client.get_scheduler_logs()
        assert lines[0][0] == "WARNING" and "last words" in lines[0][1]
        assert "first words" in lines[1][1]
        assert client.get_scheduler_logs(n=1) == lines[:1]


def test_call_stack_shows_where_running_tasks_are(c, gate):
    f = c.submit(wait_for_file, str(gate), pure=False)
    other = c.submit(wait_for_file, str(gate), value=1, pure=False)
    wait_for(lambda: len(c.call_stack(f)) == 1, message="the task to run")
    (address, stacks), = c.call_stack(f).items()
    assert address in c.nthreads() and list(stacks) == [f.key]
    assert all(isinstance(frame, str) for frame in stacks[f.key])
    assert any("in wait_for_file" in frame for frame in stacks[f.key])
    wait_for(lambda: sum(map(len, c.call_stack().values())) == 2,
             message="both tasks to run")
    assert {k for s in c.call_stack(keys=[other.key]).values() for k in s} == {other.key}


def test_recreate_error_locally_raises_the_task_error_here(c):
    x = c.submit(inc, 1)
    y = c.submit(fail, x)
    z = c.submit(inc, y)             # erred because of y
    with pytest.raises(Boom, match="failed on 2"):
        c.recreate_error_locally(z)
    del x                            # y's input: released, computed again
    with pytest.raises(Boom, match="failed on 2"):
        c.recreate_error_locally([y])
    with pytest.raises(ValueError):
        c.recreate_error_locally(c.submit(inc, 5))


def test_write_scheduler_file_connects_another_client(c, tmp_path):
    path = tmp_path / "scheduler.json"
    c.write_scheduler_file(str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    with Client(str(path), set_as_default=False) as other:
        assert other.scheduler_info()["id"] == c.scheduler_info()["id"]
        assert other.submit(inc, 1).result() == 2
    # dask.distributed's keyword, and a file that is written while the client waits
    # (by another client: one writes a scheduler file once)
    later = tmp_path / "later.json"
    writer = Client(str(path), set_as_default=False)
    threading.Timer(0.3, writer.write_scheduler_file, [str(later)]).start()
    other = Client(scheduler_file=str(later), set_as_default=False, timeout="10s")
    writer.close()
    assert other.submit(inc, 2).result() == 3
    assert other.close(timeout="5s") is None and other.status == "closed"
    with pytest.raises(FileNotFoundError):
        Client(scheduler_file=str(tmp_path / "never.json"), timeout="200ms")
    # and the options that have nothing to tune here
    with Client(str(path), set_as_default=False, direct_to_workers=True,
                heartbeat_interval="5s", connection_limit=64,
                serializers=["dask", "pickle"], deserializers=["dask", "pickle"]) as other:
        assert other.submit(inc, 3).result() == 4


def test_an_address_without_its_scheme_is_a_tcp_one(c):
    host_port = c.address.removeprefix("tcp://")
    with Client(host_port, security=c.security, set_as_default=False) as other:
        assert other.address == c.address
        assert other.submit(inc, 1).result() == 2
    # nothing known there: an OSError, as a connection that fails
    with pytest.raises(OSError, match="no key known for tcp://127.0.0.1:1"):
        Client("127.0.0.1:1", timeout=0.5)
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", timeout=0.5)


def test_futures_and_refcount_count_the_clients_futures(c):
    x = c.submit(inc, 1)
    again = c.submit(inc, 1)
    y = c.submit(inc, 2)
    assert c.refcount[x.key] == 2 and c.refcount[y.key] == 1
    assert set(c.futures) >= {x.key, y.key}
    y.result()
    assert c.futures[y.key].status == "finished"
    key = y.key
    del again, y
    gc.collect()
    assert c.refcount[x.key] == 1 and key not in c.futures and key not in c.refcount


# ---------------------------------------------------------------- get_worker()

def worker_attributes():
    w = dask_ipy.get_worker()
    return {"status": w.status, "ip": w.ip, "local_directory": w.local_directory,
            "id": w.id, "address": w.address, "host": w.host, "port": w.port,
            "worker_address": w.worker_address}


def test_get_worker_has_status_ip_local_directory_and_a_str_id(c):
    seen = c.submit(worker_attributes, pure=False).result()
    assert seen["status"] == "running"
    assert seen["ip"] == "127.0.0.1" and seen["address"].startswith("tcp://127.0.0.1:")
    assert seen["host"] == "127.0.0.1" and seen["worker_address"] == seen["address"]
    assert seen["address"] == f"tcp://127.0.0.1:{seen['port']}"
    assert os.path.isdir(seen["local_directory"])
    assert isinstance(seen["id"], str) and seen["id"].startswith("worker-")
    info = c.scheduler_info()["workers"][seen["address"]]
    assert info["local_directory"] == seen["local_directory"]
    assert info["id"] == seen["id"]                  # the same str in both places


def test_a_closed_worker_says_so():
    with local_cluster(client=False) as (_, workers, _):
        assert [w.status for w in workers] == ["running", "running"]
    assert [w.status for w in workers] == ["closed", "closed"]


# ---------------------------------------------------------------- worker plugins

def getenv(name):
    return os.environ.get(name)


def test_environ_and_upload_file_plugins(c, tmp_path):
    from dask_ipy import Environ, UploadFile

    result = c.register_plugin(Environ({"DASK_IPY_TEST_SETTING": 42}), name="environ")
    assert set(result) == set(c.nthreads())
    assert set(c.run(getenv, "DASK_IPY_TEST_SETTING").values()) == {"42"}
    module = tmp_path / "uploaded_by_plugin.py"
    module.write_text("ANSWER = 7\n")
    c.register_plugin(UploadFile(filepath=str(module)), name="upload")
    f = c.submit(lambda: __import__("uploaded_by_plugin").ANSWER, pure=False)
    assert f.result() == 7
    c.unregister_worker_plugin("environ")
    c.unregister_worker_plugin("upload")


# ---------------------------------------------------------------- compute(actors=...)

class Counter:
    n = 0

    def increment(self):
        self.n += 1
        return self.n


def test_compute_get_and_persist_refuse_actors_rather_than_compute_without(c):
    counter = dask.delayed(Counter)()
    final = dask.delayed(lambda counter: counter.increment())(counter)
    refused = r"submit\(cls, actor=True\)"
    with pytest.raises(NotImplementedError, match=refused):
        final.compute(scheduler=c.get, actors=counter)     # dask hands it to `get`
    with pytest.raises(NotImplementedError, match=refused):
        c.get({"x": (inc, 1)}, "x", actors=["x"])
    with pytest.raises(NotImplementedError, match=refused):
        c.compute(final, actors=counter)
    with pytest.raises(NotImplementedError, match=refused):
        c.persist(final, actors=[counter])
    assert c.compute(final, actors=None).result(timeout=10) == 1   # none asked for
    assert c.get({"x": (inc, 1)}, "x", actors=[]) == 2


# ---------------------------------------------------------------- Futures behind collections

def double(x):
    return 2 * x


def test_cancel_who_has_and_replicate_look_inside_collections(c):
    import dask.bag as db
    L = c.map(double, [[1], [2], [3]])
    bag = db.Bag({("b", i): f for i, f in enumerate(L)}, "b", 3)
    wait(L)
    assert sorted(c.who_has(bag)) == sorted(f.key for f in L)
    c.cancel(bag)
    assert [f.status for f in L] == ["cancelled"] * 3
    x = c.persist(da.arange(20, chunks=5))
    wait(x)
    keys = {f.key for f in futures_of(x)}
    assert set(c.who_has(x)) == keys
    c.replicate(x)
    assert {len(v) for v in c.who_has(x).values()} == {2}
    c.rebalance(x)
    c.cancel(x)
    assert {f.status for f in futures_of(x)} == {"cancelled"}
    with pytest.raises(CancelledError):
        c.replicate(x)


def test_retry_looks_inside_collections(c, tmp_path):
    path = str(tmp_path / "attempts")
    x = c.persist(dask.delayed(fail_until)(path, 2, dask_key_name="fails-once"))
    wait(x)
    assert futures_of(x)[0].status == "error"
    c.retry(x)
    assert x.compute() == 2
