"""`LocalCluster` where code written for dask.distributed's meets it: `scale` that
returns at once (in a notebook callback, in asynchronous code), and what a
cluster shows and takes.  Real processes on loopback, random ports; after each
test no process this test started is left, and no thread."""

import asyncio
import time
import warnings

import psutil
import pytest

from helpers import inc, wait_for
from dask_ipy import Client, LocalCluster, Status
# No process or thread of a test outlives it (an autouse fixture).
from test_local_cluster import nothing_left  # noqa: F401

pytestmark = pytest.mark.timeout(120)

NO_DASHBOARD = {"dashboard_address": None}


def test_scale_returns_at_once_and_the_workers_come_later():
    """As in dask.distributed: `scale` only asks; the workers join `workers` once
    they have registered, and `wait_for_workers` waits for them.  Shrinking
    returns at once too, the newest leaving with their data moved."""
    with LocalCluster(n_workers=0, threads_per_worker=1, **NO_DASHBOARD) as cluster, \
            Client(cluster, set_as_default=False) as client:
        assert cluster.scale(2) is None
        # A worker process takes a second or more to start: none is there yet.
        assert cluster.workers == {} and cluster.plan == {0, 1}
        cluster.wait_for_workers(2, timeout=60)
        assert sorted(cluster.workers) == [0, 1] and cluster.observed == {0, 1}
        future = client.submit(inc, 1, workers=[cluster.workers[1].address])
        assert future.result(timeout=30) == 2
        cluster.scale(1)
        assert cluster.plan == {0}
        wait_for(lambda: list(client.nthreads()) == [cluster.workers[0].address],
                 timeout=30, message="worker 1 to retire")
        assert client.gather(future) == 2          # moved to worker 0 first


def test_close_while_workers_start_leaves_no_process():
    """A `close` that comes while a `scale` starts workers gives them up: every
    process ends (the fixture checks), soon, and the scale thread too."""
    cluster = LocalCluster(n_workers=0, threads_per_worker=1, **NO_DASHBOARD)
    cluster.scale(3)
    wait_for(lambda: len(psutil.Process().children()) >= 2, timeout=30,
             message="a worker's supervisor to start")
    workers = cluster.workers
    started = time.monotonic()
    cluster.close()
    assert time.monotonic() - started < 20
    assert cluster.status == Status.closed and workers == {}
    with pytest.raises(RuntimeError, match="closed"):
        cluster.scale(1)


def test_scale_in_asynchronous_code_need_not_be_awaited():
    """dask.distributed's ``cluster.scale(2)`` then ``await cluster``: the scaling
    happens whether the returned awaitable is awaited or not (no coroutine left
    unawaited), and awaiting the cluster, or the scale, waits for the workers."""
    async def main():
        async with LocalCluster(n_workers=0, processes=False, threads_per_worker=1,
                                asynchronous=True, **NO_DASHBOARD) as cluster:
            cluster.scale(2)
            await cluster
            assert sorted(cluster.workers) == [0, 1]
            async with Client(cluster, asynchronous=True,
                              set_as_default=False) as client:
                assert len(await client.nthreads()) == 2
                cluster.scale(1)
                await cluster
                assert sorted(cluster.workers) == [0]
                await cluster.scale(3)
                assert sorted(cluster.workers) == [0, 2, 3]
                await cluster.wait_for_workers(3, timeout=30)
                assert await client.submit(inc, 1) == 2

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)     # never awaited
        asyncio.run(main())


def test_scale_does_not_hold_up_an_event_loop():
    """A (blocking) cluster scaled from a coroutine, or a notebook callback, does
    not stop the loop while the worker processes start (a second or more)."""
    async def main(cluster):
        started = time.monotonic()
        cluster.scale(2)
        held = time.monotonic() - started
        await asyncio.sleep(0.01)
        assert held < 0.5 and cluster.workers == {}

    with LocalCluster(n_workers=0, threads_per_worker=1, **NO_DASHBOARD) as cluster:
        asyncio.run(main(cluster))
        cluster.wait_for_workers(2, timeout=60)
        assert sorted(cluster.workers) == [0, 1]


def test_host_may_name_the_protocol():
    """``host="tcp://127.0.0.2"``, as dask.distributed takes it: the scheduler,
    its dashboard and the workers listen there; another protocol is refused."""
    with LocalCluster(host="tcp://127.0.0.2", n_workers=1, processes=False,
                      dashboard_address=":0") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.2:")
        assert "//127.0.0.2:" in cluster.dashboard_link
        assert cluster.workers[0].address.startswith("tcp://127.0.0.2:")
        with Client(cluster, set_as_default=False) as client:
            assert client.submit(inc, 1).result(timeout=30) == 2
    with pytest.raises(ValueError, match="tcp only"):
        LocalCluster(host="tls://127.0.0.1", n_workers=0, **NO_DASHBOARD)


def test_a_notebook_shows_the_cluster_as_html():
    """As dask.distributed's cluster, it has an HTML view: name, scheduler,
    dashboard link and each worker, with totals."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      memory_limit="1GiB", dashboard_address=":0",
                      name="my<cluster>") as cluster:
        page = cluster._repr_html_()
        assert "my&lt;cluster&gt;" in page and "(running)" in page
        assert cluster.scheduler_address in page
        assert f'href="{cluster.dashboard_link}"' in page
        assert all(w.address in page for w in cluster.workers.values())
        assert "Workers: 2, Total threads: 2, Total memory: 2.00 GiB" in page
    assert "(closed)" in cluster._repr_html_()


class Stamp:
    """A worker plugin that marks each worker it is set up on."""

    def setup(self, worker):
        worker.stamped = True


class Broken:
    def setup(self, worker):
        import a_module_nobody_has  # noqa: F401


def stamped(dask_worker):
    return getattr(dask_worker, "stamped", False)


@pytest.mark.parametrize("processes", [True, False])
def test_plugins_reach_every_worker_and_one_that_fails_fails_the_start(processes):
    """``LocalCluster(plugins=...)``, the worker plugins dask.distributed hands to
    each of its workers: set up on the workers there and on those a `scale`
    adds; one whose set-up fails makes the cluster fail to start (RuntimeError,
    its error the cause), leaving nothing running."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=processes,
                      plugins={Stamp()}, **NO_DASHBOARD) as cluster, \
            Client(cluster, set_as_default=False) as client:
        cluster.scale(2)
        cluster.wait_for_workers(2, timeout=60)
        assert list(client.run(stamped).values()) == [True, True]
    with pytest.raises(RuntimeError, match="failed to set up") as info:
        LocalCluster(n_workers=1, threads_per_worker=1, processes=processes,
                     plugins=[Broken()], **NO_DASHBOARD)
    assert isinstance(info.value.__cause__, ImportError)


def test_an_empty_host_means_every_interface():
    """As in dask.distributed, ``host=""`` asks for every interface (it meant
    this host only); None stays this host only.  Checked before anything
    listens: the clusters are asynchronous and never awaited."""
    async def main():
        for host, bound in (("", "0.0.0.0"), (None, "127.0.0.1"),
                            ("0.0.0.0", "0.0.0.0"), ("tcp://127.0.0.2", "127.0.0.2")):
            cluster = LocalCluster(host=host, n_workers=0, asynchronous=True,
                                   **NO_DASHBOARD)
            assert cluster.host == bound and cluster.status == Status.created
            await cluster.close()

    asyncio.run(main())

