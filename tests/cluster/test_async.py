"""The asynchronous client under asyncio.run, against a scheduler and two workers in
their own processes: the same operations as the blocking client, awaited; Futures
awaitable from either kind of client; a blocking and an asynchronous client on one
scheduler; the event loop never blocked and never nested.  (Under a real IPython
kernel: tests/notebook/test_async_kernel.py.)"""

import asyncio
import threading

import pytest

from helpers import (Boom, array_summary, big_array, block_until_file, dask_ipy_threads,
                     fail, inc, relayed_bytes, slow_inc, wait_for)
from dask_ipy import CancelledError, Client, Security, as_completed, wait

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


def test_the_whole_face_awaited(pc):
    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            assert c.asynchronous and c.status == "running"
            f = c.submit(inc, 1)
            assert await f == 2
            assert await f.result() == 2
            assert await c.submit(inc, 10) == 11
            assert await c.gather(c.map(inc, range(5))) == [1, 2, 3, 4, 5]
            xs = await c.scatter([1, 2, 3])
            assert await c.gather(xs) == [1, 2, 3]
            assert await c.gather({"a": xs[0], "b": [xs[1]]}) == {"a": 1, "b": [2]}
            done, not_done = await wait(c.map(inc, range(20, 25)))
            assert len(done) == 5 and not not_done
            got = [r async for _, r in as_completed(c.map(inc, range(30, 35)),
                                                     with_results=True)]
            assert sorted(got) == [31, 32, 33, 34, 35]
            import dask.array as da
            assert await c.compute(da.ones(10, chunks=5).sum()) == 10
            assert await c.compute(da.ones(4, chunks=2).sum(), sync=True) == 4
            assert len(c.scheduler_info()["workers"]) == 2      # a dict, not awaited
            assert len(await c.run(lambda dask_worker: dask_worker.address)) == 2
            await c.wait_for_workers(2, timeout=10)
            assert await c.get({"x": 1, "y": (inc, "x")}, "y") == 2
            await c.publish_dataset(answer=f)
            assert await (await c.get_dataset("answer")) == 2
            await c.unpublish_dataset("answer")
            await c.cancel([c.submit(slow_inc, 1, 5)])
            h = c.submit(slow_inc, 2, 5)
            assert await h.cancel() is None         # awaited, as dask.distributed's
            assert h.cancelled()
            with pytest.raises(TimeoutError):
                await wait([c.submit(slow_inc, 3, 5)], timeout=0.1)
            return c
    c = run(main())
    assert c.status == "closed"


def test_large_values_stream_through_the_relay_to_an_awaiting_client(pc):
    nbytes = 50 * 2**20

    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            loop_thread = threading.current_thread()
            downloaders = []
            receive = c.shell._receive

            def spy(streams):
                downloaders.append(threading.current_thread())
                return receive(streams)
            c.shell._receive = spy
            before = await c.run_on_scheduler(relayed_bytes)
            assert array_summary(await c.submit(big_array, nbytes)) == (nbytes, 1, 7)
            # Two at once from both workers, a small one beside them, gathered
            big = [c.submit(big_array, nbytes, pure=False) for _ in range(2)]
            got = await c.gather(big + [c.submit(inc, 1)])
            assert [array_summary(a) for a in got[:2]] == [(nbytes, 1, 7)] * 2
            assert got[2] == 2
            # through the relay, downloaded off the loop's thread (the loop ran on)
            assert await c.run_on_scheduler(relayed_bytes) >= before + 3 * nbytes
            assert len(downloaders) == 2 and loop_thread not in downloaders
    run(main())


def test_await_client_then_close(pc):
    async def main():
        c = await Client(pc.file, asynchronous=True)
        try:
            assert await c is c                      # awaiting again changes nothing
            assert await c.submit(inc, 41) == 42
        finally:
            await c.close()
        assert c.status == "closed"
        with pytest.raises(RuntimeError, match="closed"):
            await c.gather([])
    run(main())


def test_errors_and_timeouts_come_back_as_in_the_blocking_client(pc, tmp_path):
    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            f = c.submit(fail, 7)
            with pytest.raises(Boom, match="failed on 7"):
                await f
            assert isinstance(await f.exception(), Boom)
            assert await f.traceback() is not None
            slow = c.submit(block_until_file, str(tmp_path / "gate"), 1)
            with pytest.raises(TimeoutError):
                await slow.result(timeout=0.2)
            with pytest.raises(TimeoutError):
                await c.gather([slow], timeout=0.2)
            (tmp_path / "gate").touch()
            assert await slow == 1
            g = c.submit(slow_inc, 2, 5)
            await c.cancel([g])
            with pytest.raises(CancelledError):
                await g
    run(main())


def test_the_loop_runs_on_while_the_client_waits(pc, tmp_path):
    """Answers reach the loop from the client's I/O thread: awaiting never blocks
    the loop, and many awaits at once all end."""
    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        async with Client(pc.file, asynchronous=True) as c:
            t = asyncio.ensure_future(ticker())
            gate = tmp_path / "gate"
            slow = c.submit(block_until_file, str(gate), 5)
            before = ticks
            asyncio.get_running_loop().call_later(0.3, gate.touch)
            assert await slow == 5
            assert ticks - before >= 5                # the loop ran while we waited
            fs = c.map(inc, range(200))
            assert await asyncio.gather(*fs) == list(range(1, 201))
            stop.set()
            await t
        assert threading.main_thread() is threading.current_thread()
    run(main())


def test_a_cancelled_await_leaves_the_client_working(pc, tmp_path):
    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            slow = c.submit(block_until_file, str(tmp_path / "gate"), 1)
            waiting = asyncio.ensure_future(c.gather([slow]))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # (inc is not awaited before the gate opens: a tiny task may be queued
            # on the thread the blocked one holds)
            f = c.submit(inc, 1)
            (tmp_path / "gate").touch()
            assert await f == 2
            assert await slow == 1
    run(main())


def test_a_blocking_and_an_asynchronous_client_share_a_scheduler(pc):
    with Client(pc.file, set_as_default=False) as blocking:
        f = blocking.submit(inc, 100)
        blocking.publish_dataset(shared=f)

        async def main():
            async with Client(pc.file, asynchronous=True, set_as_default=False) as c:
                g = await c.get_dataset("shared")
                assert await g == 101
                assert await f == 101                # a blocking client's Future
                h = c.submit(inc, 100)               # the same key, the same result
                assert h.key == f.key and await h == 101
                return await c.gather(c.map(inc, range(3)))
        assert run(main()) == [1, 2, 3]
        assert f.result() == 101
        blocking.unpublish_dataset("shared")



def test_an_asynchronous_client_computes_a_blocking_clients_futures(pc):
    import dask
    import dask.array as da

    with Client(pc.file, set_as_default=False) as blocking:
        p = blocking.persist(da.ones(100, chunks=25) * 3)
        f = blocking.submit(inc, 1)

        async def main():
            async with Client(pc.file, asynchronous=True, set_as_default=False) as c:
                assert await c.compute(p.sum()) == 300
                assert await c.compute(dask.delayed(inc)(f)) == 3
                assert await c.get({"x": f, "y": (inc, "x")}, ["x", "y"]) == (2, 3)
                q = c.persist(p)
                assert await c.compute((q * 2).sum()) == 600
        run(main())


def test_futures_of_a_blocking_client_are_awaitable_in_a_loop(pc):
    with Client(pc.file, set_as_default=False) as c:
        fs = c.map(inc, range(10))

        async def main():
            return await fs[0], await asyncio.gather(*fs)
        first, done = run(main())
        assert first == 1 and done == list(range(1, 11))
        # and the blocking face is unchanged
        assert c.gather(fs) == list(range(1, 11))
        assert wait(fs).not_done == set()


def test_asynchronous_client_as_dask_default_still_computes_blocking(pc):
    import dask

    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            # dask's own compute, from a thread: the client's I/O thread answers
            x = dask.delayed(inc)(1)
            done = await asyncio.get_running_loop().run_in_executor(None, x.compute)
            assert done == 2
            assert dask.config.get("scheduler") == c.dask_get
        assert dask.config.get("scheduler", None) != c.dask_get
    run(main())


def test_a_failed_connection_leaves_nothing_behind():
    before = set(dask_ipy_threads())

    async def main():
        c = Client("tcp://127.0.0.1:9", asynchronous=True, timeout=0.3,
                   security=Security.temporary())
        with pytest.raises(TimeoutError):
            await c
        assert c.status == "closed"
    run(main())
    wait_for(lambda: set(dask_ipy_threads()) <= before, message="threads to stop")


def test_scheduler_and_workers_awaited_as_in_dask_distributed():
    """``async with Scheduler() as s, Worker(s.address) as w``: the worker given the
    clients' address (dask.distributed's ``Scheduler.address``) finds the workers'
    port through the scheduler's connection file, and is welcomed on entry."""
    from dask_ipy import Scheduler, Worker

    async def main():
        async with Scheduler(host="127.0.0.1", port=0, dashboard_address=":0") as s:
            assert s.dashboard_link.startswith("http://127.0.0.1:")
            async with Worker(s.address) as a, \
                    Worker(s.address, nthreads=2, host="127.0.0.1") as b:
                assert len(s.workers) == 2
                assert a.scheduler_address == b.scheduler_address == s.address_to_workers
                async with Client(s.address, asynchronous=True) as c:
                    assert await c.gather(c.map(inc, range(4))) == [1, 2, 3, 4]
            late = await Worker(s.address)
            assert len(s.workers) == 1
            late.close()
        # and a client given the workers' port reaches the clients' one
        with Scheduler() as s, Worker(s.address_to_workers), \
                Client(s.address_to_workers, set_as_default=False) as c:
            assert c.address == s.address_to_clients
            assert c.submit(inc, 1).result(timeout=10) == 2

    run(main())
