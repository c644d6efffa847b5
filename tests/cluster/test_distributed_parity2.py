"""More of dask.distributed's behaviour, against scheduler and worker processes."""

import asyncio
import collections
import functools
import os

import dask
import pytest

from helpers import inc, wait_for
from dask_ipy import Client, Future, LocalCluster, default_client, wait

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- async def tasks

async def add_later(x, y=1):
    await asyncio.sleep(0.01)
    return x + y


def test_an_async_def_task_gives_its_value_not_its_coroutine(c):
    assert c.submit(add_later, 1).result() == 2
    assert c.submit(functools.partial(add_later, 10), y=5).result() == 15
    assert c.gather(c.map(add_later, [1, 2, 3])) == [2, 3, 4]
    assert dask.delayed(add_later)(41).compute() == 42
