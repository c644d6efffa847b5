"""System adapters: each starts a two-worker cluster, gives a client, and stops it.

An adapter has

- ``name``, ``kind`` (``"dask"`` for a client with the dask.distributed-style API,
  ``"ipp"`` for ipyparallel)
- ``start(timeout)``, ``stop()``, ``running``
- ``client`` (and ``view``, a LoadBalancedView, for ipyparallel)
- ``wait(futures, timeout)``: the library's own ``wait``
- ``worker_ids()``: what ``submit(..., workers=[...])`` takes
- ``scheduler_pids()``, ``worker_pids()``: processes to measure
- ``describe()``: versions, addresses and pids for the JSON

Every cluster has two workers of one thread each.
"""

import contextlib
import os
import subprocess
import sys
import time

from . import procs, tasks

ENGINES = 2


class System:
    name = "?"
    kind = "dask"

    def __init__(self, log_path, settings=None):
        self.log_path = log_path
        self.settings = settings or {}
        self.repeats = self.settings.get("repeats", 3)
        self.repeats_given = self.settings.get("repeats_given", False)   # --repeats N
        self.quick = self.settings.get("quick", False)
        self.client = None
        self.running = False

    def stop(self):
        raise NotImplementedError

    def describe(self):
        return {}

    def settle(self, seconds=0.3):
        """Let released results and bookkeeping drain between timed runs."""
        time.sleep(seconds)


_cli = None


def has_cli():
    """Whether ``python -m dask_ipy scheduler`` and ``... worker`` exist (asked once)."""
    global _cli
    if _cli is None:
        _cli = True
        for command in ("scheduler", "worker"):
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "dask_ipy", command, "--help"], cwd=str(procs.ROOT),
                    env=procs.child_env(), capture_output=True, timeout=30,
                )
                _cli = _cli and done.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _cli = False
    return _cli


class DaskIpy(System):
    """dask_ipy: a Scheduler and two Workers, each in a process of its own.

    Started with the ``dask-ipy scheduler`` / ``dask-ipy worker`` commands
    (``python -m dask_ipy ...``) where they exist, else with ``benchmarks.hosts``.
    """

    name = "dask_ipy"

    def __init__(self, log_path, settings=None):
        super().__init__(log_path, settings)
        self.hosts = []
        self.info = {}
        self.workers = []

    def start(self, timeout=60.0):
        import dask_ipy
        from dask_ipy import Client

        missing = [n for n in ("Scheduler", "Worker", "wait") if not hasattr(dask_ipy, n)]
        if missing:
            raise ImportError(f"dask_ipy lacks {', '.join(missing)}")

        self.module = dask_ipy
        self.running = True
        deadline = time.monotonic() + timeout
        self.launch = "dask-ipy command" if has_cli() else "benchmarks.hosts"
        if self.launch == "dask-ipy command":
            sched = procs.HostProcess(
                ["-m", "dask_ipy", "scheduler", "--host", "127.0.0.1"], self.log_path,
                parse=procs.ready_fields("address_to_clients"), terminate=True,
            )
        else:
            sched = procs.HostProcess(["-m", "benchmarks.hosts", "dask_ipy-scheduler"], self.log_path)
        self.hosts.append(sched)
        self.info = sched.ready(timeout)
        address = self.info["address_to_workers"]
        for _ in range(ENGINES):
            if self.launch == "dask-ipy command":
                host = procs.HostProcess(
                    ["-m", "dask_ipy", "worker", address, "--nthreads", "1"], self.log_path,
                    parse=procs.ready_fields("address"), terminate=True,
                )
            else:
                host = procs.HostProcess(
                    ["-m", "benchmarks.hosts", "dask_ipy-worker", address, "1"], self.log_path
                )
            self.hosts.append(host)
        self.workers = [h.ready(max(1.0, deadline - time.monotonic())) for h in self.hosts[1:]]
        for info, host in zip(self.workers, self.hosts[1:]):
            info.setdefault("pid", host.pid)
        self.info.setdefault("pid", sched.pid)
        self.client = Client(self.info["address_to_clients"])
        procs.wait_until(
            lambda: len(self.client.nthreads()) >= ENGINES,
            max(1.0, deadline - time.monotonic()),
            what=f"{ENGINES} workers connected",
        )

    def wait(self, futures, timeout):
        done, not_done = self.module.wait(futures, timeout=timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} futures not done after {timeout} s")

    def worker_ids(self):
        return [w["address"] for w in self.workers]

    def scheduler_pids(self):
        return [self.info["pid"]]

    def worker_pids(self):
        return [w["pid"] for w in self.workers]

    def stop(self):
        self.running = False
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        for host in self.hosts[1:] + self.hosts[:1]:  # the workers, then the scheduler
            host.stop()
        self.hosts = []

    def describe(self):
        return {
            "version": getattr(self.module, "__version__", None),
            "cluster": f"Scheduler and 2 Workers (nthreads=1), one process each, "
            f"started with {self.launch}",
            "scheduler": self.info,
            "workers": self.workers,
        }


class Distributed(System):
    """dask.distributed's LocalCluster(n_workers=2, threads_per_worker=1, processes=True)."""

    name = "distributed"
    saturation = ""

    def __init__(self, log_path, settings=None):
        super().__init__(log_path, settings)
        self.host = None
        self.info = {}

    def start(self, timeout=60.0):
        import distributed

        self.module = distributed
        self.running = True
        deadline = time.monotonic() + timeout
        args = ["distributed"] + ([self.saturation] if self.saturation else [])
        self.host = procs.HostProcess(["-m", "benchmarks.hosts", *args], self.log_path)
        self.info = self.host.ready(timeout)
        self.client = distributed.Client(
            self.info["address"], timeout=max(1.0, deadline - time.monotonic())
        )
        self.client.wait_for_workers(ENGINES, timeout=max(1.0, deadline - time.monotonic()))
        self._worker_pids = self.client.run(os.getpid)

    def wait(self, futures, timeout):
        self.module.wait(futures, timeout=timeout)

    def worker_ids(self):
        return sorted(self.client.scheduler_info()["workers"])

    def scheduler_pids(self):
        return [self.info["pid"]]

    def worker_pids(self):
        return list(self._worker_pids.values())

    def stop(self):
        self.running = False
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=10)
            self.client = None
        if self.host is not None:
            self.host.stop()
            self.host = None

    def describe(self):
        return {
            "version": self.module.__version__,
            "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True) "
            "in its own process; Client in the benchmark process",
            "scheduler": self.info,
            "worker_pids": self._worker_pids,
        }


class DistributedInf(Distributed):
    """The same, with distributed.scheduler.worker-saturation set to inf."""

    name = "distributed-inf"
    saturation = "inf"


@contextlib.contextmanager
def ipcluster(n=ENGINES, timeout=60.0):
    """A fresh ipyparallel cluster and a connected client; always stopped."""
    import ipyparallel as ipp

    cluster = ipp.Cluster(
        n=n, load_profile=False, delay=0, controller_args=["--ping=200"], engine_timeout=int(timeout)
    )
    rc = None
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(n, timeout=timeout)
        yield cluster, rc
    finally:
        if rc is not None:
            with contextlib.suppress(Exception):
                rc.close()
        # Collected before stopping: the engines' nannies outlive them for a while.
        leftovers = _alive(cluster_pids(cluster))
        with contextlib.suppress(Exception):
            cluster.stop_cluster_sync()
        procs.kill_procs([p for p in leftovers if p.is_running()], timeout=5)


def cluster_pids(cluster):
    """The pids of an ipyparallel cluster's controller and engines."""
    pids = []
    with contextlib.suppress(Exception):
        pids.append(cluster.controller.process.pid)
    with contextlib.suppress(Exception):
        for engine_set in cluster.engines.values():
            for launcher in getattr(engine_set, "launchers", {}).values():
                pids.append(launcher.process.pid)
    return pids


def _alive(pids):
    import psutil

    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            out.extend(p.children(recursive=True))
            out.append(p)
    return out


class Ipyparallel(System):
    """ipyparallel: a controller and two engines; tasks through a LoadBalancedView."""

    name = "ipyparallel"
    kind = "ipp"

    def __init__(self, log_path, settings=None):
        super().__init__(log_path, settings)
        self._cm = None
        self.view = None

    def start(self, timeout=60.0):
        import ipyparallel

        self.module = ipyparallel
        self.running = True
        self._cm = ipcluster(ENGINES, timeout)
        self.cluster, self.client = self._cm.__enter__()
        self.view = self.client.load_balanced_view()
        self._worker_pids = self.client[:].apply_sync(tasks.getpid)

    def wait(self, results, timeout):
        if not self.client.wait(results, timeout=timeout):
            raise TimeoutError(f"results not done after {timeout} s")

    def worker_ids(self):
        return list(self.client.ids)

    def scheduler_pids(self):
        """The controller and the scheduler processes it started."""
        import psutil

        pid = self.cluster.controller.process.pid
        return [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]

    def worker_pids(self):
        return list(self._worker_pids)

    def stop(self):
        self.running = False
        self.view = None
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)
        self.client = None

    def describe(self):
        return {
            "version": self.module.__version__,
            "cluster": "ipyparallel.Cluster(n=2, load_profile=False, delay=0, "
            "controller_args=['--ping=200']); LoadBalancedView",
            "controller_pids": self.scheduler_pids() if self.running else None,
            "worker_pids": self._worker_pids,
        }


ADAPTERS = {cls.name: cls for cls in (DaskIpy, Distributed, DistributedInf, Ipyparallel)}
