"""`LocalCluster`: dask.distributed's local cluster, with worker processes under
supervisors (or, ``processes=False``, everything in this process), joined by
``Client(cluster)``.  Real processes on loopback, random ports; after each test no
process this test started is left, and no thread."""

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import warnings

import dask
import psutil
from dask.utils import format_bytes
import pytest

from helpers import count_lines, dask_ipy_threads, die, inc, sleep, wait_for
from dask_ipy import Client, KilledWorker, LocalCluster, Status, Worker, get_worker
from dask_ipy.addresses import dashboard_port
from dask_ipy.local import default_sizes
from dask_ipy.worker.system import host_memory

pytestmark = pytest.mark.timeout(120)

GiB = 2**30
NO_DASHBOARD = {"dashboard_address": None}


@pytest.fixture(autouse=True)
def nothing_left():
    """No child process (the schedulers, supervisors and workers of the test) and no
    dask_ipy thread outlives a test."""
    threads = set(dask_ipy_threads())
    yield
    me = psutil.Process()
    try:
        wait_for(lambda: not me.children(recursive=True), timeout=10,
                 message=lambda: f"processes to end: {me.children(recursive=True)}")
        wait_for(lambda: set(dask_ipy_threads()) <= threads, timeout=10,
                 message=lambda: f"threads to end: {dask_ipy_threads()}")
    finally:
        for p in me.children(recursive=True):
            p.kill()


def gone(pids):
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                   psutil.STATUS_ZOMBIE for p in pids)


def scaled(cluster, names, timeout=30):
    """Wait for `scale`, which returns at once, to have brought the cluster's
    workers to ``names`` (the scheduler's too)."""
    wait_for(lambda: sorted(cluster.workers) == sorted(names)
             and len(cluster.scheduler_info["workers"]) == len(names),
             timeout=timeout, message=lambda: f"workers {names}, not "
             f"{sorted(cluster.workers)}")


def cluster_pids(cluster):
    pids = {cluster.scheduler.pid}
    for w in cluster.workers.values():
        pids |= {w.supervisor_pid, w.pid}
    return pids


def test_worker_processes_compute_dask_collections():
    import dask
    import dask.array as da
    import dask.bag as db

    with LocalCluster(n_workers=2, threads_per_worker=1, **NO_DASHBOARD) as cluster:
        assert cluster.status == Status.running and cluster.processes
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert sorted(cluster.workers) == [0, 1]
        assert cluster.dashboard_link is None
        client = Client(cluster)
        try:
            assert client.cluster is cluster
            assert sorted(client.nthreads().values()) == [1, 1]
            handles = cluster.workers.values()
            assert set(client.nthreads()) == {w.address for w in handles}
            pids = client.run(os.getpid)
            assert sorted(pids.values()) == sorted(w.pid for w in handles)
            assert os.getpid() not in pids.values()
            # a worker by its name, as the cluster knows it
            assert client.run(os.getpid, workers=[1]) == {
                cluster.workers[1].address: cluster.workers[1].pid}
            (x,) = client.scatter([5], workers=[1])
            assert client.who_has([x]) == {x.key: (cluster.workers[1].address,)}
            assert client.restart_workers([0]) == {0: "OK"}
            x = da.arange(10_000, chunks=1000)
            assert int((x * 2).sum().compute()) == 2 * sum(range(10_000))
            assert db.from_sequence(range(10), npartitions=3).map(inc).sum().compute() \
                == 55
            assert dask.compute(dask.delayed(inc)(1))[0] == 2
            assert "workers=2, threads=2" in repr(cluster)
        finally:
            client.close()
        # Closing a client leaves the cluster running.
        assert cluster.status == Status.running
        with Client(address=cluster, set_as_default=False) as again:
            assert again.submit(inc, 1).result(timeout=10) == 2
            logs = cluster.get_logs()
            assert "Scheduler" in logs and set(again.nthreads()) <= set(logs)
        pids = cluster_pids(cluster)
    assert cluster.status == Status.closed
    assert gone(pids)


def test_workers_in_this_process():
    old = logging.getLogger("dask_ipy").level
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False,
                      silence_logs=logging.ERROR, **NO_DASHBOARD) as cluster:
        assert logging.getLogger("dask_ipy").level == logging.ERROR
        assert all(isinstance(w, Worker) for w in cluster.workers.values())
        assert [w.name for w in cluster.workers.values()] == [0, 1]
        workers = list(cluster.workers.values())
        with Client(cluster) as client:
            assert client.cluster is cluster
            assert sorted(client.nthreads().values()) == [2, 2]
            assert set(client.run(os.getpid).values()) == {os.getpid()}
            assert client.gather(client.map(inc, range(10))) == list(range(1, 11))
    assert logging.getLogger("dask_ipy").level == old
    assert [w.status for w in workers] == ["closed", "closed"]
    assert cluster.scheduler.closed.is_set()


@pytest.mark.parametrize("processes", [True, False])
def test_memory_limit_and_resources_reach_the_workers(processes, tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                      memory_limit="1GiB", resources={"GPU": 2},
                      local_directory=str(tmp_path),
                      dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        workers = client.scheduler_info()["workers"].values()
        assert [w["memory_limit"] for w in workers] == [GiB, GiB]
        assert [w["resources"] for w in workers] == [{"GPU": 2}, {"GPU": 2}]
        assert all(w["local_directory"].startswith(str(tmp_path)) for w in workers)
        assert "memory=2.00 GiB" in repr(cluster)
        futures = client.map(inc, range(6), resources={"GPU": 2})
        assert client.gather(futures) == list(range(1, 7))
        # The dashboard: on loopback, a free port, its token in the link.
        link = cluster.dashboard_link
        assert link.startswith("http://127.0.0.1:") and "token=" in link
        assert client.dashboard_link == link
        with urllib.request.urlopen(link, timeout=10) as page:
            assert page.status == 200



@pytest.mark.parametrize("processes", [True, False])
def test_auto_memory_is_the_hosts_shared_among_the_workers_once_they_are_up(processes):
    """As dask.distributed's: each of n workers has the host's memory / n as soon
    as the cluster returns (or a `scale` is waited for); the Client's repr says
    so."""
    total = host_memory()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                      **NO_DASHBOARD) as cluster, \
            Client(cluster, set_as_default=False) as client:
        def limits():
            return [w["memory_limit"] for w in
                    client.scheduler_info()["workers"].values()]
        assert limits() == [total // 2] * 2
        assert repr(client) == (f"<Client: {cluster.scheduler_address!r} processes=2 "
                                f"threads=2, memory={format_bytes(total // 2 * 2)}>")
        assert client.scheduler.address == cluster.scheduler_address
        cluster.scale(3)
        cluster.wait_for_workers(3, timeout=30)
        assert limits() == [total // 3] * 3
        cluster.scale(1)
        wait_for(lambda: limits() == [total], timeout=30,
                 message=lambda: f"the limits {limits()} to be [{total}]")
    assert repr(client) == "<Client: No scheduler connected>"


def test_scale_up_and_down_keeps_the_data():
    with LocalCluster(n_workers=1, threads_per_worker=1, **NO_DASHBOARD) as cluster, \
            Client(cluster, set_as_default=False) as client:
        cluster.scale(3)                     # returns at once
        cluster.wait_for_workers(3, timeout=30)
        assert sorted(cluster.workers) == [0, 1, 2]
        assert len(client.nthreads()) == 3
        # Results on each worker, those that will leave too.
        futures = [client.submit(inc, i, workers=[cluster.workers[i % 3].address])
                   for i in range(30)]
        client.gather(futures)
        assert len({a for who in client.who_has(futures).values() for a in who}) == 3
        leaving = cluster_pids(cluster) - {cluster.scheduler.pid}
        cluster.scale(1)                     # the newest go, gracefully
        scaled(cluster, [0])
        assert list(client.nthreads()) == [cluster.workers[0].address]
        assert client.gather(futures) == list(range(1, 31))
        stay = {cluster.workers[0].pid, cluster.workers[0].supervisor_pid}
        wait_for(lambda: gone(leaving - stay), timeout=10,
                 message="the retired workers' processes to end")
        cluster.scale(cores=2)               # names are not reused
        scaled(cluster, [0, 3])
        cluster.scale(0)
        scaled(cluster, [])
        assert cluster.workers == {} and client.nthreads() == {}


def test_scale_up_scale_down_plan_observed_and_get_client():
    """dask.distributed's other ways to size a cluster and reach it: scale_up never
    shrinks, scale_down retires the workers named (by name or address), plan and
    requested name the workers asked for, observed those running; get_client gives
    the default client if it is of this cluster, else a new one."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      **NO_DASHBOARD) as cluster:
        cluster.scale_up(3)
        assert cluster.plan == cluster.requested == {0, 1, 2}
        scaled(cluster, [0, 1, 2])
        assert cluster.observed == {0, 1, 2}
        cluster.scale_up(2)                       # never fewer
        assert cluster.plan == {0, 1, 2}
        cluster.scale_up(cores=4)                 # one thread per worker
        scaled(cluster, [0, 1, 2, 3])
        cluster.scale_down([3])
        scaled(cluster, [0, 1, 2])
        cluster.scale_down([1, cluster.workers[2].address])
        assert cluster.plan == {0}
        scaled(cluster, [0])
        assert cluster.observed == {0}
        with cluster.get_client() as client:
            assert client.cluster is cluster
            assert client.submit(inc, 1).result(timeout=30) == 2
            assert cluster.get_client() is client  # the default, of this cluster
        other = cluster.get_client()
        assert other is not client and other.cluster is cluster
        other.close()


def adapt_threads():
    return [t for t in dask_ipy_threads() if t.name == "dask-ipy-cluster-adapt"]


def record_where(path, value):
    """Append "value worker-address" to ``path`` (one line per execution)."""
    with open(path, "a") as f:
        f.write(f"{value} {get_worker().address}\n")
    return value


def test_adapt_grows_under_a_burst_and_shrinks_back_keeping_the_data(tmp_path):
    runs = str(tmp_path / "runs")
    with LocalCluster(n_workers=1, threads_per_worker=1, **NO_DASHBOARD) as cluster, \
            Client(cluster, set_as_default=False) as client:
        adaptive = cluster.adapt(minimum=1, maximum=3, interval="100ms", wait_count=3,
                                 target_duration="1s")
        assert adaptive.state == "running" and len(adapt_threads()) == 1
        # 30 tasks of 0.4 s: 12 s of work on one thread, wanted in 1 s; each
        # result is recorded once it is made.
        slept = client.map(sleep, [0.4] * 30, range(30), pure=False)
        futures = client.map(record_where, [runs] * 30, slept, pure=False)
        del slept
        sizes = []

        def size_is(n):
            sizes.append(len(cluster.workers))
            return sizes[-1] == n and len(client.nthreads()) == n
        wait_for(lambda: size_is(3), timeout=20,
                 message="the cluster to grow to its maximum")
        assert client.gather(futures) == list(range(30))
        # Results were made on workers that will go.  Where they are now says
        # nothing: shrinking may have begun as the last tasks ran.
        with open(runs) as f:
            makers = {line.split()[1] for line in f}
        assert len(makers) > 1
        wait_for(lambda: size_is(1), timeout=20,
                 message="the idle cluster to shrink to its minimum")
        assert max(sizes) == 3
        assert max(e.get("n", 0) for _, e in adaptive.log) == 3
        assert {e["status"] for _, e in adaptive.log} == {"up", "down"}
        # The retired workers' results moved to the one left: none was made again.
        [address] = client.nthreads()
        assert {who for who in client.who_has(futures).values()} == {(address,)}
        assert client.gather(futures) == list(range(30))
        assert count_lines(runs) == 30
        adaptive.stop()
        assert adaptive.state == "stopped" and not adapt_threads()


def test_adapt_stops_on_stop_scale_and_close(monkeypatch, caplog):
    # A round that fails is logged, and the next one goes on.
    asked = []
    original = Client.adaptive_target

    def failing_once(self, *args, **kwargs):
        asked.append(1)
        if len(asked) == 1:
            raise RuntimeError("a round that fails")
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Client, "adaptive_target", failing_once)
    cluster = LocalCluster(n_workers=0, threads_per_worker=1, **NO_DASHBOARD)
    with cluster:
        adaptive = cluster.adapt(minimum=2, maximum=2, interval="50ms")
        wait_for(lambda: len(cluster.workers) == 2, timeout=20,
                 message="the cluster to grow to its minimum")
        assert "an adaptive scaling round failed" in caplog.text
        assert "a round that fails" in caplog.text
        adaptive.stop()
        assert adaptive.state == "stopped" and not adapt_threads()
        cluster.scale(1)
        scaled(cluster, [0])
        n = len(asked)
        time.sleep(0.3)
        assert len(cluster.workers) == 1 and len(asked) == n
        # scale() stops adaptivity, as does a new adapt() the one before it.
        first = cluster.adapt(minimum=2, maximum=2, interval="50ms")
        second = cluster.adapt(minimum=2, maximum=2, interval="50ms")
        assert first.state == "stopped" and len(adapt_threads()) == 1
        wait_for(lambda: len(cluster.workers) == 2, timeout=20,
                 message="the cluster to grow to its minimum again")
        cluster.scale(1)
        assert second.state == "stopped" and not adapt_threads()
        wait_for(lambda: len(cluster.workers) == 1, timeout=30,
                 message="the cluster to shrink")
        # close() while a round starts workers: it waits for that round, then
        # stops everything (the fixture checks that no process or thread is left).
        n = len(asked)
        cluster.adapt(minimum=3, maximum=3, interval="10ms")
        wait_for(lambda: len(asked) > n, timeout=10, message="a round to run")
    assert cluster.status == Status.closed and not adapt_threads()
    assert cluster.workers == {}


def test_adapt_arguments():
    with LocalCluster(n_workers=0, threads_per_worker=2, processes=False,
                      memory_limit="1GiB", **NO_DASHBOARD) as cluster:
        adaptive = cluster.adapt(minimum_cores=3, maximum_cores=9,
                                 maximum_memory="3.5GiB", interval="2s",
                                 target_duration="1 minute")
        assert (adaptive.minimum, adaptive.maximum) == (2, 3)
        assert (adaptive.interval, adaptive.target_duration) == (2, 60)
        assert adaptive.wait_count == 3 and adaptive.cluster is cluster
        with pytest.raises(ValueError, match="minimum"):
            cluster.adapt(minimum=3, maximum=2)
        with pytest.raises(ValueError, match="interval"):
            cluster.adapt(interval=0)
        with pytest.raises(TypeError):
            cluster.adapt(1, 3)                     # keywords only
        assert adaptive.state == "running"          # a refused adapt() changes nothing
    assert adaptive.state == "stopped"
    with pytest.raises(RuntimeError, match="closed"):
        cluster.adapt()


def test_context_managers_and_close_twice():
    cluster = LocalCluster(n_workers=1, processes=False, **NO_DASHBOARD)
    with cluster:
        with Client(cluster, set_as_default=False) as client:
            assert client.submit(inc, 1).result(timeout=10) == 2
        assert cluster.status == Status.running
        with Client(cluster, set_as_default=False) as client:
            assert client.submit(inc, 2).result(timeout=10) == 3
    assert cluster.status == Status.closed
    cluster.close()
    cluster.close()
    with pytest.raises(RuntimeError, match="already closed or closing Cluster"):
        Client(cluster)                             # dask.distributed's words
    with pytest.raises(RuntimeError, match="closed"):
        cluster.scale(2)


def test_restart_and_a_killed_worker_come_back():
    with LocalCluster(n_workers=2, threads_per_worker=1, **NO_DASHBOARD) as cluster, \
            Client(cluster, set_as_default=False) as client:
        future = client.submit(inc, 1)
        assert future.result(timeout=10) == 2
        client.restart(timeout=30)
        assert len(client.nthreads()) == 2
        assert client.who_has() == {} and client.submit(inc, 5).result(timeout=10) == 6
        # A worker killed (a segfault, the OOM killer): its supervisor starts another.
        victim = cluster.workers[1]
        old_pid, old_address = victim.pid, victim.address
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: victim.pid != old_pid and victim.registered.is_set(),
                 timeout=30, message="a new worker process to register")
        assert victim.address != old_address
        wait_for(lambda: set(client.nthreads()) == {cluster.workers[0].address,
                                                     victim.address}, timeout=30,
                 message="the scheduler to see the new worker, not the old one")
        assert client.gather(client.map(inc, range(8))) == list(range(1, 9))


def environment_variable(name):
    """``name`` in the environment of the process running this (os.environ.get
    itself would be pickled with the caller's environment)."""
    return os.environ.get(name)


def print_status_like_lines():
    print("dask-ipy worker\nmemory_limit: 100\nregistered: tcp://nowhere:1\n"
          "scheduler: tcp://nowhere:1", flush=True)
    return os.getpid()


def test_a_task_printing_lines_like_the_workers_own_changes_nothing(capfd):
    """A worker's own status lines carry the tag its launcher gave it: a task that
    prints "memory_limit: 100" is output, and neither the supervisor (which would
    kill a worker past 100 bytes within 0.3 s) nor the cluster takes it as status."""
    with LocalCluster(n_workers=1, threads_per_worker=1, **NO_DASHBOARD) as cluster, \
            Client(cluster, set_as_default=False) as client:
        worker = cluster.workers[0]
        before = (worker.pid, worker.address, worker.memory_limit)
        assert client.submit(print_status_like_lines, pure=False).result(timeout=30) \
            == worker.pid
        time.sleep(1.5)
        assert client.submit(os.getpid, pure=False).result(timeout=30) == worker.pid
        assert (worker.pid, worker.address, worker.memory_limit) == before
        assert worker.registered.is_set()
        # The tag is the worker's alone: what its tasks start does not inherit it.
        assert client.submit(environment_variable, "DASK_IPY_STATUS_TAG",
                             pure=False).result(timeout=30) is None
    out = capfd.readouterr().out
    assert "memory_limit: 100\nregistered: tcp://nowhere:1" in out


def config_value(name):
    return dask.config.get(name, "unset")


@pytest.mark.parametrize("processes", [True, False])
def test_the_cluster_takes_this_process_dask_config(processes):
    """As a dask.distributed user expects: settings made here before the cluster
    starts reach its workers (dask's own config, dask_ipy's, dask.distributed's
    names) and its scheduler (allowed-failures, transition-log-length); a worker
    started later, the settings of then."""
    settings = {"distributed.scheduler.allowed-failures": 0,
                "distributed.scheduler.transition-log-length": 0,
                "dask-ipy.worker.memory.target": 0.42,
                "array.chunk-size": "7MiB", "my-setting": {"x": 1}}
    with dask.config.set(settings):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=processes,
                               **NO_DASHBOARD)
    with cluster, Client(cluster, set_as_default=False) as client:
        if processes:       # threads here see this process's config as it is now
            names = ["dask-ipy.worker.memory.target", "array.chunk-size", "my-setting.x"]
            [seen] = client.run(lambda: [config_value(n) for n in names]).values()
            assert seen == [0.42, "7MiB", 1]
        [limit] = client.run(lambda dask_worker: dask_worker.memory_fractions["target"]
                             ).values()
        assert limit == 0.42
        # No transitions kept for stories; the first worker to die under a task
        # ends it (allowed-failures 0).
        future = client.submit(inc, 1)
        assert future.result(timeout=30) == 2 and client.story(future.key) == []
        if processes:
            doomed = client.submit(die, pure=False)
            with pytest.raises(KilledWorker):
                doomed.result(timeout=60)
            # A worker started later takes the config of when it starts.
            with dask.config.set({"my-setting.x": 2}):
                cluster.scale(2)
            client.wait_for_workers(2, timeout=30)     # the one killed is back too
            seen = client.run(lambda: config_value("my-setting.x")).values()
            assert sorted(seen) == [1, 2]


def unknown_task_duration(dask_scheduler):
    return dask_scheduler.UNKNOWN_TASK_DURATION


@pytest.mark.parametrize("processes", [True, False])
def test_expected_task_durations_come_from_this_process_dask_config(processes):
    """dask.distributed's ``unknown-task-duration`` and ``default-task-durations``
    set here before the cluster starts are what its scheduler expects of tasks
    not measured yet: here, in the workers adaptivity asks for."""
    settings = {"distributed.scheduler.unknown-task-duration": "2s",
                "distributed.scheduler.default-task-durations": {"load": "10s"}}
    with dask.config.set(settings):
        cluster = LocalCluster(n_workers=0, processes=processes, **NO_DASHBOARD)
    with cluster, Client(cluster, set_as_default=False) as client:
        futures = ([client.submit(inc, i, key=f"load-{i}") for i in range(3)]
                   + [client.submit(inc, i, key=f"other-{i}") for i in range(4)])
        # No worker to run them: 3 x 10 s + 4 x 2 s = 38 s, two threads for 20 s
        # (at 0.5 s each, one).
        wait_for(lambda: client.adaptive_target("20s")["target"] == 2, timeout=10,
                 message=lambda: f"target 2, not {client.adaptive_target('20s')}")
        client.cancel(futures)
        assert client.run_on_scheduler(unknown_task_duration) == 2.0



@pytest.mark.parametrize("processes", [True, False])
def test_a_worker_retired_by_a_client_leaves_the_cluster(processes, caplog):
    """``Client.retire_workers`` ends a worker for good: `scale` counts the
    workers left, not those started; the new one takes this process's config
    while a default Client has put its own scheduler (a function) there."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                      **NO_DASHBOARD) as cluster, Client(cluster) as client:
        retired = sorted(client.nthreads())[0]
        client.retire_workers([retired])
        wait_for(lambda: len(client.nthreads()) == 1, timeout=30,
                 message="the worker to retire")
        with dask.config.set({"my-setting.x": 3}), caplog.at_level(logging.WARNING):
            cluster.scale(2)
        cluster.wait_for_workers(2, timeout=30)
        assert len(cluster.workers) == 2
        assert retired not in {w.address for w in cluster.workers.values()}
        if processes:
            seen = client.run(lambda: config_value("my-setting.x")).values()
            assert sorted(seen, key=str) == [3, "unset"]
        assert "dask.config" not in caplog.text


SETTINGS_READ = """
import json, warnings
warnings.simplefilter("ignore")
import dask
from dask_ipy import config
def read():
    return [config.transition_log_length("scheduler"), config.allowed_failures()]
user = {"distributed.scheduler.transition-log-length": 0,
        "distributed.scheduler.allowed-failures": 0}
out = [read()]
with dask.config.set(user):
    out.append(read())
import distributed
out.append(read())
with dask.config.set(user):
    out.append(read())
with dask.config.set({"distributed.admin.low-level-log-length": 5}):
    out.append(read())
print(json.dumps(out))
"""


def test_dask_distributed_settings_count_whether_it_is_imported_or_not():
    """Imported, dask.distributed registers defaults of its own (a log of 1,000
    transitions) and renames transition-log-length to admin.low-level-log-length:
    what a user set counts, by either name; its defaults do not (in a process of
    its own: the import cannot be undone)."""
    r = subprocess.run([sys.executable, "-c", SETTINGS_READ], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [[10_000, None], [0, 0], [10_000, None], [0, 0],
                                    [5, None]]


@pytest.mark.parametrize("processes", [True, False])
def test_client_shutdown_closes_the_cluster(processes):
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                           **NO_DASHBOARD)
    pids = cluster_pids(cluster) if processes else set()
    client = Client(cluster, set_as_default=False)
    client.shutdown()
    wait_for(lambda: cluster.status == Status.closed, timeout=20,
             message="the cluster to close")
    wait_for(lambda: gone(pids), timeout=10, message="its processes to end")
    cluster.close()


def test_a_cluster_in_asynchronous_code():
    async def main():
        async with LocalCluster(n_workers=1, processes=False, asynchronous=True,
                                **NO_DASHBOARD) as cluster:
            assert cluster.status == Status.running
            async with Client(cluster, asynchronous=True,
                              set_as_default=False) as client:
                assert await client.submit(inc, 1) == 2
                await cluster.scale(2)
                await cluster.wait_for_workers(2, timeout=10)
                assert len(await client.nthreads()) == 2
                assert "Scheduler" in await cluster.get_logs()
        assert cluster.status == Status.closed
        pending = LocalCluster(asynchronous=True, **NO_DASHBOARD)    # never awaited
        assert pending.status == Status.created
        await pending.close()
        assert pending.status == Status.closed

    asyncio.run(main())


@pytest.mark.parametrize("end", ["exit", "SIGKILL"])
def test_the_processes_end_with_this_one(tmp_path, end):
    """At interpreter exit the cluster closes; and killed outright, its children
    find their stdin closed and stop."""
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        from dask_ipy import LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1,
                               dashboard_address=None)
        pids = [cluster.scheduler.pid] + [p for w in cluster.workers.values()
                                          for p in (w.supervisor_pid, w.pid)]
        print(json.dumps(pids), flush=True)
        if {end!r} == "SIGKILL":
            time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            text=True)
    try:
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 5 and all(psutil.pid_exists(p) for p in pids)
        if end == "SIGKILL":
            proc.kill()
        assert proc.wait(30) == (0 if end == "exit" else -signal.SIGKILL)
        wait_for(lambda: gone(pids), timeout=20,
                 message="the cluster's processes to end")
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_arguments():
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        LocalCluster(bogus=1)
    with pytest.raises(TypeError, match="not supported"):
        LocalCluster(blocked_handlers=["run_function"])
    with pytest.raises(ValueError, match="tcp"):
        LocalCluster(protocol="ucx://")
    with pytest.raises(ValueError):
        LocalCluster(threads_per_worker=0)
    with pytest.raises(ValueError):
        LocalCluster(memory_limit="lots")
    assert not psutil.Process().children()           # refused before starting
    with pytest.warns(DeprecationWarning, match="use host"):
        LocalCluster(n_workers=0, processes=False, ip="127.0.0.1",
                     **NO_DASHBOARD).close()
    # What means nothing here is taken and ignored; empty unsupported ones too.
    with LocalCluster(n_workers=0, processes=False, loop=None, start=None,
                      worker_dashboard_address=None, services={}, interface=None,
                      scheduler_sync_interval=1, protocol="tcp://",
                      death_timeout=30, lifetime=None, lifetime_stagger=None,
                      **NO_DASHBOARD) as cluster:
        assert cluster.workers == {}
        assert repr(cluster).endswith("workers=0, threads=0)")
    with pytest.raises(TypeError, match="worker lifetimes"):
        LocalCluster(n_workers=0, processes=False, lifetime="1 hour", **NO_DASHBOARD)
    # dask.distributed's sizes, by the host's cores.
    assert default_sizes(None, None, True, 2) == (2, 1)
    assert default_sizes(None, None, True, 16) == (4, 4)
    assert default_sizes(None, None, False, 8) == (1, 8)
    assert default_sizes(3, None, True, 8) == (3, 3)
    assert default_sizes(None, 2, True, 8) == (4, 2)


def test_dashboard_address():
    assert dashboard_port(None, "127.0.0.1") is None
    assert dashboard_port(":0", "127.0.0.1") == 0
    assert dashboard_port("localhost:0", "127.0.0.1") == 0
    with pytest.raises(ValueError, match="where the scheduler does"):
        dashboard_port("10.1.2.3:8787", "127.0.0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert dashboard_port(f":{port}", "127.0.0.1") == 0
        assert "already in use" in str(caught[0].message)
