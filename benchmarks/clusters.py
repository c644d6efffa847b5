"""The two clusters the benchmarks with a cluster per run compare, each a scheduler
and two one-thread worker processes with a client in this process: dask_ipy's
``LocalCluster(processes=True)`` (``dask-ipy scheduler`` and ``dask-ipy worker``
processes, each worker under its supervisor) and dask.distributed's.  Their
processes write to this one's standard output and error.  ``memory_limit`` None
leaves each system's default."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


class DaskIpyCluster:
    name = "dask_ipy"

    def __init__(self, memory_limit=None, blas_threads=None):
        from dask_ipy import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1,
                                    memory_limit=memory_limit or "auto",
                                    blas_threads=blas_threads, dashboard_address=None)
        self.client = Client(self.cluster)

    def worker_pids(self):
        return [w.pid for w in self.cluster.workers.values()]

    def wait(self, collection):
        from dask_ipy import wait

        wait([v for v in dict(collection.__dask_graph__()).values()
              if hasattr(v, "key")], timeout=600)

    def close(self):
        with contextlib.suppress(Exception):
            self.client.close()
        self.cluster.close()


class DistributedCluster:
    name = "distributed"

    def __init__(self, memory_limit=None, blas_threads=None):
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


def finish(results, path, table, log=None) -> int:
    """Write a run's ``results`` to the JSON file at ``path``, print its table (and
    where its processes logged, if they did); 0 if every run went through, else 1."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1, default=str))
    print(table(results))
    if log is not None:
        print(f"log: {log}", file=sys.stderr)
    return 0 if all(r.get("ok") for r in results["runs"]) else 1
