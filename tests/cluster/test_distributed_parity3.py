"""dask.distributed's behaviour with an asynchronous client, against scheduler and
worker processes: what an awaited Future says of itself once its value came, ..."""

import asyncio

import pytest

from helpers import inc
from dask_ipy import Client

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
