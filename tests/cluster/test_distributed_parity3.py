"""dask.distributed's behaviour with an asynchronous client, against scheduler and
worker processes: what an awaited Future says of itself once its value came,
`Variable.delete` and `log_event` not awaited, awaiting a coordination object,
events a function run on the scheduler logs, async def topic handlers, scatters of
one value at once, and where quick tasks submitted one by one go."""

import asyncio

import pytest

from helpers import inc
from dask_ipy import Client, Event, Lock, Queue, Semaphore, Variable, get_worker

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- awaited Futures

def test_an_awaited_future_is_finished_and_knows_its_type(pc):
    """The value may come (in the answer to the gather that waited for it) before
    the word that the key is done: once it is in hand, the Future is done."""
    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            for i in range(0, 600, 10):
                xs = c.map(inc, range(i, i + 10))
                ys = [c.submit(dict, a=j) for j in range(i, i + 10)]
                for j, (x, y) in enumerate(zip(xs, ys)):
                    assert await x == i + j + 1
                    assert (x.status, x.done(), x.type) == ("finished", True, int)
                    assert "int" in repr(x)
                    assert await y == {"a": i + j}
                    assert y.done() and y.type is dict
    run(main())


# ---------------------------------------------------------------- coordination

def test_variable_delete_is_sent_at_once_by_an_asynchronous_client(pc):
    """dask.distributed's `Variable.delete` sends its message and returns: code
    that calls it without await deletes the variable all the same, and the
    Future it held is let go of."""
    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            v = Variable("parity3-delete", client=c)
            await v.set(c.submit(inc, 1))
            v.delete()                              # not awaited
            with pytest.raises(TimeoutError):
                await Variable("parity3-delete", client=c).get(timeout=0.5)
            for _ in range(200):
                if c.scheduler_info()["ntasks"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert c.scheduler_info()["ntasks"] == 0
            await v.set(2)
            assert await v.delete() is None         # awaited: the scheduler's word
            with pytest.raises(TimeoutError):
                await v.get(timeout=0.2)
    run(main())


def test_coordination_objects_are_awaited_into_themselves(pc):
    """``q = await Queue("x")``, as dask.distributed's Queue, Semaphore, Lock and
    Event allow (there they register first)."""
    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            q = await Queue("parity3-q", client=c)
            assert isinstance(q, Queue)
            await q.put(1)
            assert await (await Queue("parity3-q", client=c)).get() == 1
            sem = await Semaphore(max_leases=2, name="parity3-sem", client=c)
            assert isinstance(sem, Semaphore) and await sem.acquire()
            await sem.release()
            lock = await Lock("parity3-lock", client=c)
            async with lock:
                assert await lock.locked()
            event = await Event("parity3-event", client=c)
            assert not await event.is_set()
            assert (await Variable("parity3-v", client=c)).name == "parity3-v"
    run(main())


# ---------------------------------------------------------------- events

def test_log_event_is_awaited_on_an_asynchronous_client(pc):
    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            assert await c.log_event("parity3-topic", {"a": 1}) is None
            c.log_event("parity3-topic", {"a": 2})       # or not: sent all the same
            events = await c.get_events("parity3-topic")
            assert [msg for _, msg in events] == [{"a": 1}, {"a": 2}]
    run(main())


def test_a_function_run_on_the_scheduler_logs_events(pc):
    def log(dask_scheduler):
        dask_scheduler.log_event("parity3-sched", {"woo": "hoo"})
        dask_scheduler.log_event(["parity3-sched", "parity3-other"], (1, 2))

    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            await c.run_on_scheduler(log)
            events = await c.get_events("parity3-sched")
            assert [msg for _, msg in events] == [{"woo": "hoo"}, (1, 2)]
            assert all(isinstance(when, float) and when > 0 for when, _ in events)
            assert [msg for _, msg in await c.get_events("parity3-other")] == [(1, 2)]
    run(main())


def test_an_async_def_topic_handler_runs_in_the_subscribing_loop(pc):
    async def main():
        async with Client(pc.file, asynchronous=True) as c:
            seen = []
            loop = asyncio.get_running_loop()

            async def handler(event):
                await asyncio.sleep(0)
                seen.append((event[1], asyncio.get_running_loop() is loop))

            c.subscribe_topic("parity3-async", handler)
            await c.submit(lambda: get_worker().log_event("parity3-async", "hi"))
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.02)
            assert seen == [("hi", True)]
            c.unsubscribe_topic("parity3-async")
    run(main())


# ---------------------------------------------------------------- scatter

def test_scatters_of_one_value_at_once_all_end(pc):
    """Two scatters of the same value (one key) under way together: the second
    replaced the first on the scheduler, whose caller then waited for ever."""
    async def main():
        async with Client(pc.file, asynchronous=True) as c, \
                Client(pc.file, asynchronous=True) as c2:
            fs = await asyncio.wait_for(
                asyncio.gather(*(c.scatter(123) for _ in range(5)),
                               c2.scatter(123)), 20)
            assert len({f.key for f in fs}) == 1
            assert await fs[0] == 123 and await fs[-1] == 123
            xs, ys = await asyncio.wait_for(
                asyncio.gather(c.scatter([1, 2, 3]), c.scatter([3, 4])), 20)
            assert await c.gather(xs + ys) == [1, 2, 3, 3, 4]
    run(main())


# ---------------------------------------------------------------- placement

def test_quick_tasks_submitted_one_by_one_spread_over_idle_workers(c):
    """Idle workers tie: the one holding the least data takes the task, as under
    dask.distributed, rather than always the same one."""
    fs = []
    for i in range(10):
        fs.append(c.submit(inc, i))
        fs[-1].result()
    held = c.has_what()
    assert len(held) == 2 and all(len(keys) >= 3 for keys in held.values()), held
