"""Memory and thread-pool benchmarks, dask_ipy beside dask.distributed in one run:
``python -m benchmarks.memory [--only pressure,runaway,svd] [--quick]``.

    pressure  a 4 GB random array persisted on two one-thread workers with
              memory_limit=1 GiB each (2 GB per worker: twice its limit), then
              reduced twice (sum, then mean): seconds, and each worker's peak RSS
              (the kernel's high-water mark of the worker process)
    runaway   a task that allocates 3 GB on those workers: seconds until the
              client gets the error, its type and text, and a computation run
              afterwards (the cluster must keep working)
    svd       ``da.linalg.svd`` of a 400,000 x 50 array in 10,000-row chunks (the
              array of workload i of ``python -m benchmarks``), generation included: median seconds of 5 runs after a
              warm-up; dask_ipy with its BLAS threads capped (the default) and
              left alone (``--blas-threads off``)

Every system gets fresh processes for each workload, one workload at a time (the
big ones must not overlap on a shared machine), each ``LocalCluster(n_workers=2,
threads_per_worker=1, memory_limit="1GiB", processes=True)``: dask_ipy's (a
``dask-ipy scheduler`` and two ``dask-ipy worker`` processes, each worker under its
supervisor) and dask.distributed's.  The JSON (``--json``, default
``benchmarks/results/memory.json``) keeps every figure; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from . import procs
from .clusters import DaskIpyCluster, DistributedCluster, finish
from .dask_workloads import optimized_tasks, tall_skinny

GiB = 2**30
HERE = Path(__file__).resolve().parent


def allocate(nbytes):
    import numpy as np

    return float(np.ones(int(nbytes) // 8).sum())


def inc(x):
    return x + 1


# ---------------------------------------------------------------- workloads


def pressure(cluster, quick):
    import dask.array as da

    c = cluster.client
    shape = (5_000, 10_000) if quick else (50_000, 10_000)      # 0.4 or 4 GB
    pids = cluster.worker_pids()
    start = time.perf_counter()
    x = da.random.random(shape, chunks=(4096, 4096))
    x = c.persist(x)
    cluster.wait(x)
    persisted = time.perf_counter() - start
    total = x.sum().compute()
    mean = x.mean().compute()
    seconds = time.perf_counter() - start
    n = shape[0] * shape[1]
    if not (abs(mean - 0.5) < 1e-3 and abs(total / n - mean) < 1e-9):
        raise AssertionError(f"wrong results: sum {total}, mean {mean}")
    peaks = [procs.peak_rss(p) for p in pids]
    info = {}
    if cluster.name == "dask_ipy":
        info = {a: {k: w.get(k) for k in ("memory", "managed", "spilled", "time_paused")}
                for a, w in c.scheduler_info()["workers"].items()}
    del x
    return {"seconds": seconds, "persist_seconds": persisted, "nbytes": n * 8,
            "peak_rss": peaks, "peak_rss_gib": [p / GiB for p in peaks if p],
            "workers": info}


def runaway(cluster, quick):
    c = cluster.client
    nbytes = 1.5 * GiB if quick else 3e9
    start = time.perf_counter()
    fut = c.submit(allocate, nbytes, pure=False)
    try:
        fut.result(timeout=600)
        error = None
    except Exception as e:
        error = e
    seconds = time.perf_counter() - start
    if error is None:
        raise AssertionError("the runaway task finished")
    start = time.perf_counter()
    after = c.gather(c.map(inc, range(100), pure=False))
    if after != list(range(1, 101)):
        raise AssertionError("the cluster computes wrong results after the runaway")
    return {"seconds": seconds, "error_type": type(error).__name__,
            "error": str(error)[:600], "after_seconds": time.perf_counter() - start}


def cpu_seconds(pids):
    """User and system CPU seconds used so far by the processes ``pids``."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def svd(cluster, quick, repeats=5):
    """Also the workers' CPU seconds per run: other work on a shared machine
    stretches the wall time, while threads that spin show in the CPU time."""
    import dask

    rows = 40_000 if quick else 400_000
    pids = cluster.worker_pids()
    runs = itertools.count(1)

    def run():
        u, s, v = tall_skinny(rows, next(runs))
        cpu = cpu_seconds(pids)
        t = time.perf_counter()
        u, s, v = dask.compute(u, s, v)
        return time.perf_counter() - t, cpu_seconds(pids) - cpu

    run()
    times, cpus = [], []
    for _ in range(1 if quick else repeats):
        seconds, cpu = run()
        times.append(seconds)
        cpus.append(cpu)
    return {"seconds": times, "median": statistics.median(times), "best": min(times),
            "cpu_seconds": cpus, "median_cpu": statistics.median(cpus),
            "ntasks": optimized_tasks(tall_skinny(rows, 0))}


WORKLOADS = {"pressure": pressure, "runaway": runaway, "svd": svd}


def variants(workload, systems):
    """(label, cluster class, options) for a workload."""
    out = []
    for system in systems:
        if system == "dask_ipy":
            out.append(("dask_ipy", DaskIpyCluster, {}))
            if workload == "svd":
                out.append(("dask_ipy, blas threads not capped", DaskIpyCluster,
                            {"blas_threads": "off"}))
        else:
            out.append(("distributed", DistributedCluster, {}))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(WORKLOADS))
    p.add_argument("--systems", default="dask_ipy,distributed")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every system this many times, taking turns (other work on "
                        "a shared machine drifts: turns spread it over all systems)")
    p.add_argument("--json", default=str(HERE / "results" / "memory.json"))
    args = p.parse_args(argv)
    results = {"python": platform.python_version(), "quick": args.quick,
               "load_before": os.getloadavg(), "runs": []}
    for workload in args.only.split(","):
        for label, cls, options in variants(workload, args.systems.split(",")) \
                * args.rounds:
            print(f"{workload}: {label} ...", file=sys.stderr, flush=True)
            memory_limit = "1GiB" if workload != "svd" else "auto"
            cluster = cls(memory_limit=memory_limit, **options)
            try:
                figures = WORKLOADS[workload](cluster, args.quick)
                figures["ok"] = True
            except Exception as e:
                figures = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            finally:
                cluster.close()
            figures.update(workload=workload, system=label, load=os.getloadavg())
            results["runs"].append(figures)
            print(json.dumps(figures, default=str)[:400], file=sys.stderr, flush=True)
    finish(results, args.json, table)


def table(results):
    lines = ["| workload | system | figure | load |", "|---|---|---|---|"]
    for r in results["runs"]:
        if not r.get("ok"):
            lines.append(f"| {r['workload']} | {r['system']} | FAILED: {r['error']} |")
        elif r["workload"] == "pressure":
            peaks = ", ".join(f"{p:.2f}" for p in r["peak_rss_gib"])
            lines.append(f"| pressure | {r['system']} | {r['seconds']:.1f} s; peak RSS "
                         f"per worker {peaks} GiB | {r['load'][0]:.1f} |")
        elif r["workload"] == "runaway":
            lines.append(f"| runaway | {r['system']} | {r['error_type']} after "
                         f"{r['seconds']:.1f} s; 100 tasks after it: "
                         f"{r['after_seconds']:.2f} s | {r['load'][0]:.1f} |")
        else:
            lines.append(f"| svd | {r['system']} | median {r['median']:.2f} s, best "
                         f"{r['best']:.2f} s; workers' CPU {r['median_cpu']:.2f} s | "
                         f"{r['load'][0]:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
