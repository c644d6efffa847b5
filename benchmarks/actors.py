"""Actors, dask_ipy beside dask.distributed in one run:
``python -m benchmarks.actors [--quick] [--systems dask_ipy,distributed]``.

A counter actor (``submit(Counter, actor=True)``) on one of two one-thread worker
processes; the client is in the benchmark process.  Figures, in calls per second:

    sequential  ``counter.increment().result()``, one call at a time
    pipelined   that many calls sent, then all their results waited for
    attribute   ``counter.n`` read one at a time (waited for)
    from_task   a task on the other worker calling the actor one at a time

Each figure is the median of three timed runs after a warm-up (one run with
``--quick``), and every run checks the counter's value.  Whether pipelined calls ran
in the order they were sent is recorded too (dask_ipy's do, one caller at a time;
dask.distributed's need not).  Clusters as in ``benchmarks.memory``: each system's
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``.  The class is
pickled by value, so the workers need not import this module.  The JSON
(``--json``, default ``benchmarks/results/actors.json``) keeps every sample.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from .clusters import DaskIpyCluster, DistributedCluster, finish

HERE = Path(__file__).resolve().parent
SIZES = {"full": {"sequential": 3000, "pipelined": 10000, "attribute": 3000,
                  "from_task": 3000},
         "quick": {"sequential": 50, "pipelined": 200, "attribute": 50,
                   "from_task": 50}}


class Counter:
    n = 0

    def increment(self):
        self.n += 1
        return self.n


def call_from_task(counter, calls):
    """Run as a task on the worker that does not hold the actor."""
    start = time.perf_counter()
    for _ in range(calls):
        counter.increment().result()
    return calls / (time.perf_counter() - start)


# ---------------------------------------------------------------- the workload


def measure(cluster, sizes, repeats):
    client = cluster.client
    workers = sorted(client.nthreads())
    counter = client.submit(Counter, actor=True, workers=[workers[0]]).result()
    expected = 0
    samples = {name: [] for name in sizes}
    in_order = []                            # pipelined calls ran in the order sent

    def check(value):
        assert value == expected, (value, expected)

    for run in range(repeats + 1):           # the first run warms up
        n = sizes["sequential"]
        start = time.perf_counter()
        for _ in range(n):
            value = counter.increment().result()
        rate = n / (time.perf_counter() - start)
        expected += n
        check(value)
        if run:
            samples["sequential"].append(rate)

        n = sizes["pipelined"]
        start = time.perf_counter()
        futures = [counter.increment() for _ in range(n)]
        values = [f.result() for f in futures]
        rate = n / (time.perf_counter() - start)
        assert sorted(values) == list(range(expected + 1, expected + n + 1))
        expected += n
        in_order.append(values == sorted(values))
        if run:
            samples["pipelined"].append(rate)

        n = sizes["attribute"]
        start = time.perf_counter()
        for _ in range(n):
            value = counter.n
        rate = n / (time.perf_counter() - start)
        check(value)
        if run:
            samples["attribute"].append(rate)

        n = sizes["from_task"]
        rate = client.submit(call_from_task, counter, n, workers=[workers[1]],
                             pure=False).result()
        expected += n
        check(counter.n)
        if run:
            samples["from_task"].append(rate)
    figures = {name: {"median": statistics.median(v), "samples": v}
               for name, v in samples.items()}
    figures["pipelined_in_order"] = all(in_order)
    return figures


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.actors",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default="dask_ipy,distributed")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--json", default=str(HERE / "results" / "actors.json"))
    args = p.parse_args(argv)
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sizes = SIZES["quick" if args.quick else "full"]
    repeats = args.repeats or (1 if args.quick else 3)
    results = {"python": platform.python_version(), "quick": args.quick,
               "sizes": sizes, "load_before": os.getloadavg(), "runs": []}
    classes = {"dask_ipy": DaskIpyCluster, "distributed": DistributedCluster}
    for system in args.systems.split(","):
        print(f"actors: {system} ...", file=sys.stderr, flush=True)
        cluster = classes[system]()
        try:
            figures = {"ok": True, **measure(cluster, sizes, repeats)}
        except Exception as e:
            figures = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        finally:
            cluster.close()
        figures.update(system=system, load=os.getloadavg())
        results["runs"].append(figures)
    return finish(results, args.json, table)


def table(results):
    runs = {r["system"]: r for r in results["runs"]}
    names = list(SIZES["full"])
    lines = ["| calls/s (median) | " + " | ".join(runs) + " | dask_ipy / distributed |",
             "|---|" + "---|" * (len(runs) + 1)]
    for name in names:
        cells, values = [], {}
        for system, r in runs.items():
            if not r.get("ok"):
                cells.append("FAILED")
                continue
            values[system] = r[name]["median"]
            cells.append(f"{r[name]['median']:,.0f}")
        ratio = (f"{values['dask_ipy'] / values['distributed']:.1f}x"
                 if {"dask_ipy", "distributed"} <= set(values) else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    for r in results["runs"]:
        if not r.get("ok"):
            lines.append(f"\n{r['system']} failed: {r['error']}")
    lines.append("\npipelined calls ran in the order sent: " + ", ".join(
        f"{r['system']} {r.get('pipelined_in_order')}" for r in results["runs"]))
    lines.append(f"\nload average (1 min) after each: "
                 + ", ".join(f"{r['system']} {r['load'][0]:.1f}" for r in results["runs"]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
