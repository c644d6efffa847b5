"""Real dask workloads: collections computed with ``dask.compute`` on the system's
Client (the default client of the child process, as a user's would be).

    h  dask.array: ``(x + x.T)[::2, n/2:].mean(axis=1)`` of an n x n array   s
    i  dask.array.linalg: tall-skinny ``svd`` of a rows x 50 array            s
    j  dask.dataframe: groupby-agg of a timeseries, one partition a day        s
    k  dask.dataframe: ``set_index("id")`` of that timeseries (a shuffle)      s
    l  dask.bag: word frequencies of generated text                            s
    m  many small ``dask.delayed`` calls summed                               s

Every block of data depends only on a seed and its position, so each run computes
the same numbers under new keys (a run number goes into every graph).  The result
of each timed run is checked against dask's synchronous scheduler's, computed once
in this process; large results are compared through a summary computed by the
graph's last tasks (set_index) or on the client (the SVD's factors).  Each worker's
peak RSS is the kernel's high-water mark (VmHWM), reset before every timed run.
"""

import gc
import os
import statistics
from time import perf_counter

from . import procs, tasks
from .runs import fresh

SEED = 42
SVD_COLUMNS = 50
SVD_CHUNKS = 40               # row blocks of the tall-skinny array
ROWS_PER_DAY = 86_400         # the timeseries: one row a second
QUICK_ROWS_PER_DAY = 2_000
LINES_PER_PART = 5_000        # bag partitions; ten words a line


# ---------------------------------------------------------------- collections


def transpose_mean(n, run, quick=False):
    """h. ``x + x.T``, every other row of its right half, averaged along rows."""
    import dask.array as da
    import numpy as np

    chunk = min(1000, max(1, n // 4))
    blocks = tuple((min(chunk, n - i),) for i in range(0, n, chunk))
    chunks = (sum(blocks, ()),) * 2
    x = da.map_blocks(tasks.array_block, SEED, run, chunks=chunks, dtype=float,
                      meta=np.empty((0, 0)))
    y = x + x.T
    return (y[::2, n // 2:].mean(axis=1),)


def tall_skinny(rows, run, quick=False):
    """i. ``u, s, v`` of the tall-skinny SVD of a ``rows`` x 50 array in 40 row blocks."""
    import dask.array as da
    import numpy as np

    step = max(rows // SVD_CHUNKS, SVD_COLUMNS)
    x = da.map_blocks(tasks.array_block, SEED, run, chunks=((step,) * (rows // step), (SVD_COLUMNS,)),
                      dtype=float, meta=np.empty((0, 0)))
    return da.linalg.svd(x)


def timeseries(days, run, quick=False):
    import dask.dataframe as dd

    rows = QUICK_ROWS_PER_DAY if quick else ROWS_PER_DAY
    meta = tasks.timeseries_partition(0, 1).iloc[:0]
    return dd.from_map(tasks.timeseries_partition, range(days), args=(rows,), meta=meta,
                       label="timeseries", seed=SEED, run=run)


def groupby_agg(days, run, quick=False):
    """j. per name: sum and mean of x, max of y, count of id."""
    df = timeseries(days, run, quick)
    return (df.groupby("name").agg({"x": ["sum", "mean"], "y": "max", "id": "count"}),)


def set_index(days, run, quick=False):
    """k. the frame sorted by ``id`` (a full shuffle), then one summary row per
    output partition."""
    import pandas as pd

    meta = tasks.frame_summary(pd.DataFrame({"name": pd.Series([], dtype=object),
                                             "x": [], "y": []}, index=pd.Index([], dtype="int64")))
    df = timeseries(days, run, quick).set_index("id")
    return (df.map_partitions(tasks.frame_summary, meta=meta),)


def word_frequencies(lines, run, quick=False):
    """l. words counted over ``lines`` lines of ten words, 5,000 lines a partition."""
    import dask.bag as db

    per = min(LINES_PER_PART, lines)
    parts = [(run, i, min(per, lines - i * per)) for i in range(-(-lines // per))]
    b = db.from_sequence(parts, npartitions=len(parts)).map(tasks.text_lines, seed=SEED)
    return (b.flatten().str.split().flatten().frequencies(),)


def small_delayed(n, run, quick=False):
    """m. ``n`` small ``delayed`` calls as a dask tutorial writes them: ``inc(i)``
    then ``add(that, i)`` for each of ``n / 2`` numbers, then summed 100 at a time
    and those sums summed (``delayed`` makes new keys every time).  Computed
    without dask's graph optimization (``COMPUTE_OPTIONS``): culling a graph of
    20,000 one-task layers costs dask itself seconds in the client, whatever the
    scheduler, which would hide the scheduler; so does handing dask one call of
    10,000 collections (``dask.compute(*parts)`` or ``delayed(sum)(parts)``)."""
    import dask

    parts = [dask.delayed(tasks.add)(dask.delayed(tasks.inc)(i), i) for i in range(n // 2)]
    sums = [dask.delayed(tasks.total)(parts[i:i + 100]) for i in range(0, len(parts), 100)]
    return (dask.delayed(tasks.total)(sums),)


# Options of ``dask.compute`` for a workload, its reference run included.
COMPUTE_OPTIONS = {small_delayed: {"optimize_graph": False}}


# ---------------------------------------------------------------- summaries and checks


def _array_close(got, want, what, rtol=1e-9, atol=1e-12):
    import numpy as np

    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        raise AssertionError(f"wrong result: {what} differs from the synchronous scheduler's")


def summary_plain(results):
    return results


def check_array(got, want):
    _array_close(got[0], want[0], "the mean of x + x.T")


def summary_svd(results):
    """The singular values, and the factors up to each vector's sign (which the
    same arithmetic gives alike, but which is all that defines them), every 97th row
    of u."""
    import numpy as np

    u, s, v = results
    signs = np.sign(v[:, :1])
    signs[signs == 0] = 1
    return {"u_shape": u.shape, "s": s, "v": v * signs, "u": u[::97] * signs.T}


def check_svd(got, want):
    if got["u_shape"] != want["u_shape"]:
        raise AssertionError(f"wrong result: u is {got['u_shape']}, not {want['u_shape']}")
    for name in ("s", "v", "u"):
        _array_close(got[name], want[name], f"the SVD's {name}", rtol=1e-7, atol=1e-9)


def check_frame(got, want):
    import pandas as pd

    pd.testing.assert_frame_equal(got[0].sort_index(), want[0].sort_index(),
                                  check_exact=False, rtol=1e-9)


def summary_sorted(results):
    """Totals over the sorted frame's partitions, and whether it is sorted: each
    partition in order, and each one's first index at or after the last one's
    (the partitions' bounds depend on the sampled divisions; the totals do not)."""
    parts = results[0]
    parts = parts[parts["rows"] > 0]
    ordered = bool(parts["sorted"].all()) and bool(
        (parts["first"].to_numpy()[1:] >= parts["last"].to_numpy()[:-1]).all())
    return {
        "rows": int(parts["rows"].sum()),
        "index_sum": int(parts["index_sum"].sum()),
        "x_sum": float(parts["x_sum"].sum()),
        "y_sum": float(parts["y_sum"].sum()),
        "names": int(parts["names"].sum()),
        "sorted": ordered,
    }


def check_sorted(got, want):
    import math

    if not got["sorted"]:
        raise AssertionError("wrong result: the frame set_index returned is not sorted")
    for k in ("rows", "index_sum", "names"):
        if got[k] != want[k]:
            raise AssertionError(f"wrong result: {k} {got[k]} != {want[k]}")
    for k in ("x_sum", "y_sum"):
        if not math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-6):
            raise AssertionError(f"wrong result: {k} {got[k]} != {want[k]}")


def summary_frequencies(results):
    return dict(results[0])


def check_equal(got, want):
    if got != want:
        raise AssertionError("wrong result: differs from the synchronous scheduler's")


# ---------------------------------------------------------------- the runner


def reference(build, size, quick, summarize):
    """The summary of dask's synchronous scheduler's result (a task shuffle: the
    system's client may have chosen a method only a cluster runs)."""
    import dask

    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        collections = build(size, 0, quick)
        return summarize(dask.compute(*collections, scheduler="sync",
                                      **COMPUTE_OPTIONS.get(build, {})))


def optimized_tasks(collections, optimize=True):
    """Tasks in the graph dask hands a scheduler for these collections."""
    import dask

    try:
        expr = dask.base.collections_to_expr(list(collections), optimize)
        expr = expr.optimize() if optimize else expr
        return len(expr.__dask_graph__())
    except Exception:       # a dask without expressions for this collection
        return None


class WorkerPeaks:
    """Each worker's RSS high-water mark over a block of code (VmHWM, reset on entry),
    and its RSS on entry."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.peaks = self.before = None

    def __enter__(self):
        # What a worker still holds from earlier work is in its peak too: say how much.
        self.before = [procs.rss([pid]) for pid in self.pids]
        self.reset = [procs.reset_peak(pid) for pid in self.pids]
        return self

    def __exit__(self, *exc):
        self.peaks = [procs.peak_rss(pid) if ok else None
                      for pid, ok in zip(self.pids, self.reset)]


def measure(system, size, build, summarize, check):
    import dask

    quick = system.quick
    options = COMPUTE_OPTIONS.get(build, {})
    t0 = perf_counter()
    want = reference(build, size, quick, summarize)
    reference_seconds = perf_counter() - t0
    pids = system.worker_pids()
    collections = build(size, fresh(), quick)
    t0 = perf_counter()
    ntasks = optimized_tasks(collections, options.get("optimize_graph", True))
    graph_seconds = perf_counter() - t0
    del collections

    def run():
        collections = build(size, fresh(), quick)
        gc.collect()
        with WorkerPeaks(pids) as peaks:
            t = perf_counter()
            results = dask.compute(*collections, **options)
            seconds = perf_counter() - t
        check(summarize(results), want)
        del collections, results
        gc.collect()
        system.settle()
        return seconds, peaks.peaks, peaks.before

    run()           # warm-up: imports and first-use costs on the workers
    runs = [run() for _ in range(system.repeats)]
    times = [t for t, _, _ in runs]
    per_worker = [max((p[i] or 0) for _, p, _ in runs) or None for i in range(len(pids))]
    known = [p for p in per_worker if p]
    return {
        "path": "dask.compute(*collections) on the default client",
        "compute_options": options,
        "size": size,
        "tasks": ntasks,
        "seconds": times,
        "median_s": statistics.median(times),
        "best_s": min(times),
        "worker_pids": pids,
        "worker_peak_rss": per_worker,
        "worker_peak_rss_runs": [p for _, p, _ in runs],
        "worker_rss_before_runs": [b for _, _, b in runs],
        "worker_peak_rss_max": max(known) if known else None,
        "reference_seconds": reference_seconds,
        # dask's own optimization of the graph, in the client, once and untimed: a
        # part of each timed run (unless compute_options skip it) no scheduler changes
        "optimize_seconds": graph_seconds,
        "load_average": list(os.getloadavg()),
    }


def array_workload(system, size):
    """h. elementwise and transpose reduction of a ``size`` x ``size`` array."""
    return measure(system, size, transpose_mean, summary_plain, check_array)


def svd_workload(system, size):
    """i. tall-skinny SVD of a ``size`` x 50 array."""
    return measure(system, size, tall_skinny, summary_svd, check_svd)


def groupby_workload(system, size):
    """j. groupby-agg of a ``size``-day timeseries."""
    return measure(system, size, groupby_agg, summary_plain, check_frame)


def shuffle_workload(system, size):
    """k. set_index of a ``size``-day timeseries."""
    return measure(system, size, set_index, summary_sorted, check_sorted)


def bag_workload(system, size):
    """l. word frequencies of ``size`` lines."""
    return measure(system, size, word_frequencies, summary_frequencies, check_equal)


def delayed_workload(system, size):
    """m. ``size`` small delayed calls."""
    return measure(system, size, small_delayed, summary_plain, check_equal)

