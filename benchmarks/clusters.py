"""The two clusters the benchmarks with a cluster per run compare, each a scheduler
and two one-thread worker processes with a client in this process: dask_ipy's
(``dask-ipy scheduler`` and ``dask-ipy worker``, each under its supervisor) and
dask.distributed's (``LocalCluster(processes=True)``).  ``memory_limit`` None leaves
each system's default."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from . import procs


class DaskIpyCluster:
    name = "dask_ipy"

    def __init__(self, log, memory_limit=None, blas_threads=None):
        self.hosts = []
        sched = procs.HostProcess(["-m", "dask_ipy", "scheduler", "--host", "127.0.0.1"],
                                  log, parse=procs.ready_fields("address_to_clients"),
                                  terminate=True)
        self.hosts.append(sched)
        info = sched.ready(60)
        argv = ["-m", "dask_ipy", "worker", info["address_to_workers"], "--nthreads", "1"]
        if memory_limit is not None:
            argv += ["--memory-limit", str(memory_limit)]
        if blas_threads is not None:
            argv += ["--blas-threads", str(blas_threads)]
        for _ in range(2):
            self.hosts.append(procs.HostProcess(argv, log,
                                                parse=procs.ready_fields("scheduler"),
                                                terminate=True))
        self.workers = [h.ready(60) for h in self.hosts[1:]]
        from dask_ipy import Client

        self.client = Client(info["address_to_clients"])
        procs.wait_until(lambda: len(self.client.nthreads()) >= 2, 60, what="2 workers")

    def worker_pids(self):
        return [w["pid"] for w in self.workers]

    def wait(self, collection):
        from dask_ipy import wait

        wait([v for v in dict(collection.__dask_graph__()).values()
              if hasattr(v, "key")], timeout=600)

    def close(self):
        with contextlib.suppress(Exception):
            self.client.close()
        for h in self.hosts[1:] + self.hosts[:1]:
            h.stop()


class DistributedCluster:
    name = "distributed"

    def __init__(self, log, memory_limit=None, blas_threads=None):
        import distributed

        self.module = distributed
        self.cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=memory_limit or "auto",
            processes=True, dashboard_address=None)
        self.client = distributed.Client(self.cluster)
        self.client.wait_for_workers(2, timeout=60)

    def worker_pids(self):
        return list(self.client.run(os.getpid).values())

    def wait(self, collection):
        self.module.wait(collection, timeout=600)

    def close(self):
        with contextlib.suppress(Exception):
            self.client.close()
        with contextlib.suppress(Exception):
            self.cluster.close(timeout=30)


def finish(results, path, table, log) -> int:
    """Write a run's ``results`` to the JSON file at ``path``, print its table (and
    where its processes logged); 0 if every run went through, else 1."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1, default=str))
    print(table(results))
    print(f"log: {log}", file=sys.stderr)
    return 0 if all(r.get("ok") for r in results["runs"]) else 1
