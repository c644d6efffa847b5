"""Cluster processes for the benchmarks: ``python -m benchmarks.hosts KIND [ARGS]``.

KIND is one of

- ``dask_ipy-scheduler``            a ``dask_ipy.Scheduler()``
- ``dask_ipy-worker ADDRESS N``     a ``dask_ipy.Worker(scheduler=ADDRESS, nthreads=N)``
- ``distributed [inf]``             ``LocalCluster(n_workers=2, threads_per_worker=1,
                                    processes=True)``, optionally with
                                    ``distributed.scheduler.worker-saturation: inf``

Each host prints one line ``BENCHMARK-HOST-READY {json}`` (its addresses and pid)
once it is up, then lives until its stdin reaches end of file (the parent closed
it, or died), shuts down, and exits. The LocalCluster lives in a host of its own
so that, as with dask_ipy, the scheduler's process holds no client.
"""

import json
import os
import sys
import threading

from .procs import READY_MARK

SHUTDOWN_GRACE = 20.0


def announce(**info):
    info.setdefault("pid", os.getpid())
    sys.stdout.write(READY_MARK + json.dumps(info) + "\n")
    sys.stdout.flush()


def wait_for_stdin_eof():
    try:
        sys.stdin.buffer.read()
    except (OSError, ValueError):
        pass
    # Whatever happens during shutdown, do not outlive the grace period.
    timer = threading.Timer(SHUTDOWN_GRACE, os._exit, args=(3,))
    timer.daemon = True
    timer.start()


def dask_ipy_scheduler():
    from dask_ipy import Scheduler

    s = Scheduler()
    announce(address_to_workers=s.address_to_workers, address_to_clients=s.address_to_clients)
    wait_for_stdin_eof()
    s.close()


def dask_ipy_worker(address, nthreads="1"):
    from dask_ipy import Worker

    w = Worker(scheduler=address, nthreads=int(nthreads))
    announce(address=w.address)
    wait_for_stdin_eof()
    w.close()


def distributed_cluster(mode=""):
    import dask
    from distributed import LocalCluster

    config = {}
    if mode == "inf":
        config["distributed.scheduler.worker-saturation"] = float("inf")
    with dask.config.set(config):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
        announce(
            address=cluster.scheduler_address,
            dashboard=cluster.dashboard_link,
            worker_saturation=cluster.scheduler.WORKER_SATURATION,
        )
        wait_for_stdin_eof()
        cluster.close(timeout=SHUTDOWN_GRACE / 2)


KINDS = {
    "dask_ipy-scheduler": dask_ipy_scheduler,
    "dask_ipy-worker": dask_ipy_worker,
    "distributed": distributed_cluster,
}


def main(argv):
    kind, *args = argv
    KINDS[kind](*args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait on threads a closed server may have left


if __name__ == "__main__":
    main(sys.argv[1:])
