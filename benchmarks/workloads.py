"""The workloads: ``fn(system, size) -> dict of figures``.

Each one warms up once, then times with ``time.perf_counter`` (median of
``system.repeats`` runs unless said otherwise), checks its results, and raises
on anything wrong. Every wait has a timeout (``system.settings["wait_timeout"]``).
Keys never repeat between runs, so no run finds a previous run's results.

    a  tiny tasks through map + gather                    tasks/s
    b  ``get`` of three graph shapes                       tasks/s
    c  submit-to-result round trip                         ms
    d  a large numpy array made on worker A, used on B     GB/s
    e  a very large graph: throughput, per-task overhead against a 10,000-task
       graph of the same shape, scheduler peak RSS per task
    f  bootstrap on a fresh two-engine ipcluster            s
    g  idle RSS of the scheduler and of each worker        MB
    h-m  real dask workloads (benchmarks.dask_workloads)   s, peak RSS per worker
    n  8 client processes at once against one alone        tasks/s (manyclients.py)
"""

import gc
import math
import statistics
import time
from time import perf_counter

from . import chain, dask_workloads, manyclients, procs, tasks
from .runs import fresh
from .systems import ENGINES, ipcluster



def _timeout(system):
    return system.settings.get("wait_timeout", 600.0)


def many_clients(system, size):
    """n. eight client processes at once against one alone (manyclients.py)."""
    return manyclients.many_clients(system, size, _timeout(system), fresh)


def _check(ok, what):
    if not ok:
        raise AssertionError(f"wrong result: {what}")


def _timed_runs(system, run, warmup_arg, arg, repeats=None):
    """Warm up once with ``warmup_arg``, then time ``repeats`` (default
    ``system.repeats``) runs with ``arg``."""
    run(warmup_arg)
    gc.collect()
    system.settle()
    times = []
    for _ in range(repeats or system.repeats):
        times.append(run(arg))
        gc.collect()
        system.settle()
    return times


def _rates(count, times):
    """Median and best rate over timed runs. The best is the least disturbed by
    other work on the machine; the median is what the table shows by default."""
    return {
        "seconds": times,
        "tasks_per_s": count / statistics.median(times),
        "best_tasks_per_s": count / min(times),
    }


def _warmup_size(n):
    return min(n, max(200, n // 10))


# ------------------------------------------------------------------ a


def tiny_tasks(system, size):
    """a. ``size`` tiny tasks through map + gather."""
    if system.kind == "ipp":
        return _tiny_tasks_ipp(system, size)
    c, timeout = system.client, _timeout(system)

    def run(n):
        start = fresh() * 10**9
        t0 = perf_counter()
        futures = c.map(tasks.inc, range(start, start + n))
        system.wait(futures, timeout)
        results = c.gather(futures)
        dt = perf_counter() - t0
        _check(sum(results) == n * start + n * (n + 1) // 2, "sum of map results")
        return dt

    times = _timed_runs(system, run, _warmup_size(size), size)
    return {"path": "Client.map, wait, Client.gather", "tasks": size, **_rates(size, times)}


def _tiny_tasks_ipp(system, size):
    view, timeout = system.view, _timeout(system)

    def run_map(n):
        start = fresh() * 10**9
        t0 = perf_counter()
        results = view.map_async(tasks.inc, range(start, start + n)).get(timeout=timeout)
        dt = perf_counter() - t0
        _check(sum(results) == n * start + n * (n + 1) // 2, "sum of map results")
        return dt

    def run_apply(n):
        start = fresh() * 10**9
        t0 = perf_counter()
        ars = [view.apply_async(tasks.inc, x) for x in range(start, start + n)]
        system.wait(ars, timeout)
        results = [ar.get(timeout=timeout) for ar in ars]
        dt = perf_counter() - t0
        _check(sum(results) == n * start + n * (n + 1) // 2, "sum of apply results")
        return dt

    variants = {
        "LoadBalancedView.map_async (chunksize=1, one task per item)": run_map,
        "LoadBalancedView.apply_async per item": run_apply,
    }
    # Both paths warm up and race at the warm-up size; the faster one is timed in full.
    trial = _warmup_size(size)
    trials = {}
    for name, run in variants.items():
        run(trial)
        trials[name] = trial / run(trial)
        system.client.purge_everything()
        system.settle()
    best = max(trials, key=trials.get)
    times = _timed_runs(system, variants[best], trial, size)
    system.client.purge_everything()
    return {
        "path": best,
        "tasks": size,
        "trial_tasks": trial,
        "trial_tasks_per_s": trials,
        **_rates(size, times),
    }


# ------------------------------------------------------------------ b


def independent_graph(prefix, n):
    dsk = {(prefix, i): (tasks.inc, i) for i in range(n)}
    return dsk, list(dsk), lambda r: sum(r) == n * (n + 1) // 2


def fan_out_graph(prefix, n):
    root = (prefix, "root")
    dsk = {root: (tasks.inc, 0)}
    dsk.update({(prefix, i): (tasks.add, root, i) for i in range(n)})
    keys = [(prefix, i) for i in range(n)]
    return dsk, keys, lambda r: sum(r) == n + n * (n - 1) // 2


def tree_graph(prefix, leaves):
    """A binary tree sum over ``leaves`` (a power of two) leaves: 2 * leaves - 1 tasks."""
    dsk = {(prefix, 0, i): (tasks.inc, i) for i in range(leaves)}
    level, width = 0, leaves
    while width > 1:
        for j in range(width // 2):
            dsk[(prefix, level + 1, j)] = (tasks.add, (prefix, level, 2 * j), (prefix, level, 2 * j + 1))
        level, width = level + 1, width // 2
    return dsk, (prefix, level, 0), lambda r: r == leaves * (leaves + 1) // 2


def tree_leaves(size):
    """4,096 leaves for 10,000 tasks; the same proportion, rounded down to a power of two."""
    return 2 ** int(math.log2(max(2, size * 0.41)))


def graphs(system, size):
    """b. ``Client.get`` of independent tasks, a fan-out and a tree sum."""
    c = system.client
    shapes = {
        "independent": (independent_graph, size),
        "fan_out": (fan_out_graph, size),
        "tree_sum": (tree_graph, tree_leaves(size)),
    }
    out = {}
    for name, (build, n) in shapes.items():

        def run(m, build=build, name=name):
            dsk, keys, ok = build(f"b-{name}-{fresh()}", m)
            t0 = perf_counter()
            result = c.get(dsk, keys)
            dt = perf_counter() - t0
            _check(ok(result), f"{name} graph")
            return dt, len(dsk)

        warm = n if name == "tree_sum" else _warmup_size(n)  # a tree needs 2**k leaves
        runs = _timed_runs(system, run, warm, n)
        times = [t for t, _ in runs]
        ntasks = runs[0][1]
        out[name] = {"size": n, "tasks": ntasks, **_rates(ntasks, times)}
    return out


# ------------------------------------------------------------------ c


def round_trip(system, size):
    """c. submit one tiny task and wait for its result, ``size`` times; median."""
    timeout = _timeout(system)
    if system.kind == "ipp":
        view = system.view

        def call(x):
            return view.apply_async(tasks.inc, x).get(timeout=timeout)

        path = "LoadBalancedView.apply_async(...).get()"
    else:
        c = system.client

        def call(x):
            return c.submit(tasks.inc, x).result(timeout=timeout)

        path = "Client.submit(...).result()"
    start = fresh() * 10**9
    for i in range(max(5, size // 10)):
        call(-start - i)
    samples = []
    for i in range(size):
        t0 = perf_counter()
        r = call(start + i)
        samples.append((perf_counter() - t0) * 1e3)
        _check(r == start + i + 1, "round trip result")
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else samples * 9
    out = {
        "path": path,
        "round_trips": size,
        "median_ms": statistics.median(samples),
        "p10_ms": q[0],
        "p90_ms": q[-1],
        "min_ms": min(samples),
        "mean_ms": statistics.fmean(samples),
    }
    if system.name == "dask_ipy":
        # The floor, in the same run: three bare ZeroMQ hops between three
        # processes (dask_ipy's smallest round trip is three hops).
        floor = chain.measure(system.log_path, size)
        out["chain"] = floor
        out["vs_chain"] = out["median_ms"] / floor["median_ms"]
        out["best_vs_chain"] = out["min_ms"] / floor["min_ms"]
    return out


# ------------------------------------------------------------------ d


def transfer(system, size):
    """d. an array of ``size`` bytes made on worker A, used by a task on worker B."""
    c, timeout = system.client, _timeout(system)
    workers = system.worker_ids()
    if len(workers) < 2:
        raise RuntimeError(f"need two workers, have {workers}")
    a, b = workers[:2]

    def run(nbytes):
        x = c.submit(tasks.make_array, nbytes, fresh(), workers=[a])
        system.wait([x], timeout)
        t0 = perf_counter()
        y = c.submit(tasks.probe_array, x, workers=[b])
        got, maker, user = y.result(timeout=timeout)
        dt = perf_counter() - t0
        _check(got == nbytes // 8 * 8, "array size")
        if maker == user:
            raise RuntimeError("the array was made and used in the same process: nothing moved")
        del x, y
        return dt

    # A run takes well under a second, and page faults and other work on the machine
    # move single runs by 2x either way: ten runs (unless --repeats says otherwise).
    repeats = None if system.quick or system.repeats_given else TRANSFER_REPEATS
    times = _timed_runs(system, run, size, size, repeats)
    return {
        "path": "submit(make_array, workers=[A]); wait; then time submit(use, x, workers=[B]).result()",
        "bytes": size,
        "seconds": times,
        "gb_per_s": size / statistics.median(times) / 1e9,
        "best_gb_per_s": size / min(times) / 1e9,
    }


# ------------------------------------------------------------------ e

FAN_IN = 100
TRANSFER_REPEATS = 10


def _reduction_count(leaves):
    total, width = leaves, leaves
    while width > 1:
        width = -(-width // FAN_IN)
        total += width
    return total


def reduction_graph(prefix, ntasks):
    """About ``ntasks`` tasks: leaves ``inc(i)``, summed FAN_IN at a time, level by level.

    990,000 leaves give exactly 1,000,000 tasks; the result is one small integer,
    so the figure measures the scheduler, not the transfer of results.
    """
    lo, hi = 1, ntasks
    while lo < hi:  # the most leaves whose graph has at most ntasks tasks
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _reduction_count(mid) <= ntasks else (lo, mid - 1)
    leaves = lo
    dsk = {(prefix, 0, i): (tasks.inc, i) for i in range(leaves)}
    level, width = 0, leaves
    while width > 1:
        nxt = -(-width // FAN_IN)
        for j in range(nxt):
            members = [(prefix, level, i) for i in range(j * FAN_IN, min(width, (j + 1) * FAN_IN))]
            dsk[(prefix, level + 1, j)] = (tasks.total, members)
        level, width = level + 1, nxt
    return dsk, (prefix, level, 0), leaves * (leaves + 1) // 2


def big_graph(system, size):
    """e. a ``size``-task graph against a 10,000-task one (``size // 10`` if smaller)."""
    c = system.client
    ref_size = min(10_000, max(1, size // 10))
    pids = system.scheduler_pids()

    def run(n, memory=False):
        t0 = perf_counter()
        dsk, root, expected = reduction_graph(f"e-{fresh()}", n)
        built = perf_counter() - t0
        gc.collect()
        before = procs.rss(pids)
        with procs.PeakSampler(pids) as sampler:
            t0 = perf_counter()
            result = c.get(dsk, root)
            dt = perf_counter() - t0
        _check(result == expected, f"sum over a {len(dsk)}-task graph")
        out = {"tasks": len(dsk), "seconds": dt, "graph_build_seconds": built}
        if memory:
            out.update(
                scheduler_rss_before=before,
                scheduler_rss_peak=sampler.peak,
                peak_bytes_per_task=(sampler.peak - before) / len(dsk),
            )
        del dsk
        gc.collect()
        system.settle()
        return out

    run(min(2_000, ref_size))  # warm-up
    refs = [run(ref_size) for _ in range(system.repeats)]
    ref = min(refs, key=lambda r: r["seconds"])
    big = run(size, memory=True)
    us_big = big["seconds"] / big["tasks"] * 1e6
    us_ref = statistics.median(r["seconds"] for r in refs) / ref["tasks"] * 1e6
    return {
        "path": "Client.get(graph, root key); leaves summed 100 at a time",
        **big,
        "tasks_per_s": big["tasks"] / big["seconds"],
        "us_per_task": us_big,
        "ref_tasks": ref["tasks"],
        "ref_seconds": [r["seconds"] for r in refs],
        "ref_us_per_task": us_ref,
        "overhead_ratio": us_big / us_ref,
        "scheduler_pids": pids,
    }


# ------------------------------------------------------------------ f


def bootstrap(system, size):
    """f. time from a connected ipyparallel Client to a connected dask client.

    dask_ipy: ``dask_client_from_ipclient(rc)``; ipyparallel: ``rc.become_dask()``
    (a dask.distributed scheduler in the controller, a worker in each engine).
    Each run on a fresh two-engine ipcluster; one untimed run first unless quick.
    """
    timeout = _timeout(system)
    if system.name == "dask_ipy":
        from dask_ipy import dask_client_from_ipclient

        def connect(rc):
            return dask_client_from_ipclient(rc)

        def disconnect(rc, client):
            client.shutdown()

        path = "dask_ipy.dask_client_from_ipclient(rc); client.shutdown()"
    else:

        def connect(rc):
            return rc.become_dask()

        def disconnect(rc, client):
            client.close()
            rc.stop_dask()

        path = "rc.become_dask(); client.close(); rc.stop_dask()"

    runs = []
    warmups = 0 if system.quick else 1
    for i in range(warmups + size):
        with ipcluster(ENGINES, timeout=min(timeout, 120)) as (_, rc):
            t0 = perf_counter()
            client = connect(rc)
            connected = perf_counter() - t0
            try:
                procs.wait_until(
                    lambda: len(client.nthreads()) >= ENGINES, timeout, what="workers connected"
                )
                workers = perf_counter() - t0
                _check(client.submit(tasks.inc, 1).result(timeout=timeout) == 2, "first task")
                first = perf_counter() - t0
            finally:
                t1 = perf_counter()
                disconnect(rc, client)
                stopped = perf_counter() - t1
        if i >= warmups:
            runs.append(
                {
                    "connected_s": connected,
                    "workers_s": workers,
                    "first_result_s": first,
                    "stop_s": stopped,
                }
            )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    best = {f"best_{k}": min(r[k] for r in runs) for k in runs[0]}
    return {"path": path, "runs": runs, **med, **best}


# ------------------------------------------------------------------ g


def idle_memory(system, size):
    """g. RSS of the scheduler's processes and of each worker, idle for ``size`` s after one task."""
    timeout = _timeout(system)
    if system.kind == "ipp":
        system.client[:].apply_sync(tasks.getpid)
        _check(system.view.apply_async(tasks.inc, 1).get(timeout=timeout) == 2, "warm-up task")
    else:
        system.client.run(tasks.getpid)
        _check(system.client.submit(tasks.inc, 1).result(timeout=timeout) == 2, "warm-up task")
    gc.collect()
    time.sleep(size)
    sched = [procs.memory(pid) for pid in system.scheduler_pids()]
    workers = [procs.memory(pid) for pid in system.worker_pids()]
    return {
        "idle_seconds": size,
        "scheduler_processes": len(sched),
        "scheduler_rss": sum(m["rss"] for m in sched),
        "scheduler_uss": sum(m["uss"] or 0 for m in sched),
        "scheduler_pss": sum(m["pss"] or 0 for m in sched),
        "worker_rss": [m["rss"] for m in workers],
        "worker_uss": [m["uss"] for m in workers],
        "worker_pss": [m["pss"] for m in workers],
        "worker_rss_mean": statistics.fmean(m["rss"] for m in workers),
    }


# ------------------------------------------------------------------ registry


class Workload:
    def __init__(self, letter, fn, systems, summary, needs_cluster=True):
        self.letter = letter
        self.fn = fn
        self.systems = systems
        self.summary = summary  # with {n}, the size
        self.needs_cluster = needs_cluster


DASK = ("dask_ipy", "distributed", "distributed-inf")
ALL = DASK + ("ipyparallel",)

WORKLOADS = {
    w.letter: w
    for w in (
        Workload("a", tiny_tasks, ALL, "{n:,} tiny tasks, map + gather (tasks/s)"),
        Workload("b", graphs, DASK, "get of {n:,} independent tasks, 1 root + {n:,} children, "
                 "a tree sum (tasks/s)"),
        Workload("c", round_trip, ALL, "submit -> result round trip, median of {n} (ms)"),
        Workload("d", transfer, DASK, "{n:,}-byte array made on worker A, used on B (GB/s)"),
        Workload("e", big_graph, DASK, "{n:,}-task graph: throughput, per-task time against "
                 "10,000 tasks, scheduler peak RSS per task"),
        Workload("f", bootstrap, ("dask_ipy", "ipyparallel"), "bootstrap on a fresh ipcluster: "
                 "dask_client_from_ipclient vs become_dask, median of {n} (s)",
                 needs_cluster=False),
        Workload("g", idle_memory, ALL, "idle RSS of the scheduler and each worker (MB)"),
        Workload("h", dask_workloads.array_workload, DASK,
                 "dask.array: mean of (x + x.T)[::2, n/2:] along rows, x {n:,}^2 (s)"),
        Workload("i", dask_workloads.svd_workload, DASK,
                 "dask.array.linalg: tall-skinny svd of {n:,} x 50 (s)"),
        Workload("j", dask_workloads.groupby_workload, DASK,
                 "dask.dataframe: groupby-agg of a {n}-day timeseries (s)"),
        Workload("k", dask_workloads.shuffle_workload, DASK,
                 "dask.dataframe: set_index of a {n}-day timeseries, a shuffle (s)"),
        Workload("l", dask_workloads.bag_workload, DASK,
                 "dask.bag: word frequencies of {n:,} lines (s)"),
        Workload("m", dask_workloads.delayed_workload, DASK,
                 "{n:,} small delayed calls, summed in a tree, unoptimized (s)"),
        Workload("n", many_clients, DASK, "8 client processes x {n:,} tiny tasks at once: "
                 "aggregate against one client alone (tasks/s)"),
    )
}

# The order a child runs them in: idle memory on a fresh cluster first, the
# heaviest last, and the bootstrap after the system's own cluster is stopped.
ORDER = "gcabndhijklmef"

SIZES = {
    "full": {"a": 10_000, "b": 10_000, "c": 300, "d": 100_000_000, "e": 1_000_000, "f": 3, "g": 2,
             "h": 16_000, "i": 400_000, "j": 30, "k": 30, "l": 200_000, "m": 20_000,
             "n": 5_000},
    "quick": {"a": 200, "b": 2_000, "c": 20, "d": 1_000_000, "e": 20_000, "f": 1, "g": 1,
              "h": 2_000, "i": 20_000, "j": 3, "k": 3, "l": 20_000, "m": 500, "n": 200},
}

# Hard deadlines (s) the runner enforces per workload, on top of the waits' own timeouts.
DEADLINES = {
    "full": {"a": 900, "b": 900, "c": 300, "d": 300, "e": 3600, "f": 900, "g": 120,
             "h": 600, "i": 600, "j": 600, "k": 600, "l": 600, "m": 600, "n": 1200},
    "quick": {"a": 60, "b": 90, "c": 60, "d": 60, "e": 120, "f": 180, "g": 60,
              "h": 90, "i": 90, "j": 90, "k": 90, "l": 90, "m": 90, "n": 180},
}
