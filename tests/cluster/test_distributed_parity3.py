"""dask.distributed's behaviour with an asynchronous client, against scheduler and
worker processes: what an awaited Future says of itself once its value came, ..."""

import asyncio

import pytest

from helpers import inc
from dask_ipy import Client, Variable

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
