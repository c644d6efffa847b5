"""The table: one row per figure, one column per system, and dask_ipy's ratio.

The ratio is dask_ipy divided by the best of dask.distributed's two settings
(for the bootstrap row: by ipyparallel's ``become_dask``). Whether a ratio above
one is good depends on the row: see its "better" column.
"""

import math

from . import SYSTEMS
from .workloads import WORKLOADS, tree_leaves

DISTRIBUTED = ("distributed", "distributed-inf")


class Row:
    """One figure: ``data[*path][key]`` (``best`` instead of ``key`` with --stat best) / scale."""

    def __init__(self, key, workload, label, field, unit, better, best=None, path=(),
                 scale=1.0, versus=DISTRIBUTED, only=None):
        self.key = key
        self.workload = workload
        self.label = label
        self.field = field
        self.best = best or field
        self.path = path
        self.scale = scale
        self.unit = unit
        self.better = better
        self.versus = versus
        self.only = only          # the systems measuring this figure (None: all)

    def get(self, data, stat="median"):
        for step in self.path:
            data = data[step]
        return data[self.best if stat == "best" else self.field] / self.scale


def rows(sizes):
    a, b, c, d, e = (sizes[k] for k in "abcde")
    n = sizes.get("n", 5_000)
    rate = dict(field="tasks_per_s", best="best_tasks_per_s", unit="tasks/s", better="higher")
    return [
        Row("a", "a", f"a. {a:,} tiny tasks, map + gather", **rate),
        Row("b1", "b", f"b. get: {b:,} independent tasks", path=("independent",), **rate),
        Row("b2", "b", f"b. get: 1 root, {b:,} children", path=("fan_out",), **rate),
        Row("b3", "b", f"b. get: tree sum of {tree_leaves(b):,} leaves", path=("tree_sum",), **rate),
        Row("c", "c", f"c. submit -> result round trip, {c} in turn", "median_ms", "ms", "lower", best="min_ms"),
        Row("c2", "c", f"c. bare three-hop ZeroMQ chain, {c} in turn (the floor)", "median_ms", "ms",
            "lower", best="min_ms", path=("chain",), versus=(), only=("dask_ipy",)),
        Row("c3", "c", "c. round trip / bare three-hop chain", "vs_chain", "x", "lower",
            best="best_vs_chain", versus=(), only=("dask_ipy",)),
        Row("d", "d", f"d. {d / 1e6:g} MB array, worker A -> B", "gb_per_s", "GB/s", "higher",
            best="best_gb_per_s"),
        Row("e1", "e", f"e. {e:,}-task graph", "tasks_per_s", "tasks/s", "higher"),
        Row("e2", "e", f"e. per-task time, {e:,} vs {min(10_000, e // 10):,}",
            "overhead_ratio", "x", "lower"),
        Row("e3", "e", "e. scheduler peak RSS per task", "peak_bytes_per_task", "kB/task", "lower",
            scale=1e3),
        Row("f", "f", "f. bootstrap on ipcluster [ipp: become_dask]", "connected_s", "s", "lower",
            best="best_connected_s", versus=("ipyparallel",)),
        Row("g1", "g", "g. idle RSS, scheduler (all its processes)", "scheduler_rss", "MB", "lower",
            scale=1e6),
        Row("g2", "g", "g. idle PSS, scheduler (all its processes)", "scheduler_pss", "MB", "lower",
            scale=1e6),
        Row("g3", "g", "g. idle RSS, per worker (mean)", "worker_rss_mean", "MB", "lower", scale=1e6),
        Row("n1", "n", f"n. 8 clients x {n:,} tasks at once, aggregate", **rate),
        Row("n2", "n", f"n. 1 client, {8 * n:,} tasks alone", "single_tasks_per_s", "tasks/s",
            "higher", best="best_single_tasks_per_s"),
        Row("n3", "n", "n. 8 clients' aggregate / 1 client's", "aggregate_over_single", "x",
            "higher", best="best_aggregate_over_single"),
    ] + [
        row
        for letter, label in (
            ("h", f"h. array: mean of x + x.T, {sizes.get('h', 0):,}^2"),
            ("i", f"i. array: tall-skinny svd, {sizes.get('i', 0):,} x 50"),
            ("j", f"j. dataframe: groupby-agg, {sizes.get('j', 0)} days"),
            ("k", f"k. dataframe: set_index, {sizes.get('k', 0)} days"),
            ("l", f"l. bag: word frequencies, {sizes.get('l', 0):,} lines"),
            ("m", f"m. {sizes.get('m', 0):,} small delayed calls, summed"),
        )
        for row in (
            Row(letter, letter, label, "median_s", "s", "lower", best="best_s"),
            Row(f"{letter}2", letter, f"{letter}. peak RSS, the larger worker", "worker_peak_rss_max",
                "MB", "lower", scale=1e6),
        )
    ]


def build(results, sizes, systems, only, stat="median"):
    """The table as data: [{row, label, unit, better, values, cells, ratio}].

    ``stat``: "median" of the timed runs, or "best" of them (least disturbed by
    other work on the machine). Rows measured once are the same either way.
    """
    table = []
    for row in rows(sizes):
        if row.workload not in only:
            continue
        values, cells = {}, {}
        for name in SYSTEMS:
            values[name], cells[name] = None, ""
            if name not in systems:
                continue
            if name not in WORKLOADS[row.workload].systems or (
                    row.only is not None and name not in row.only):
                cells[name] = "n/a"
                continue
            data = results.get(name, {}).get(row.workload)
            if data is None:
                cells[name] = "-"
            elif "error" in data:
                cells[name] = "ERROR"
            else:
                try:
                    values[name] = float(row.get(data, stat))
                    cells[name] = fmt(values[name])
                except (KeyError, TypeError, ValueError):
                    cells[name] = "?"
        ratio = None
        others = [values[s] for s in row.versus if values.get(s) is not None]
        if values["dask_ipy"] is not None and others:
            best = max(others) if row.better == "higher" else min(others)
            ratio = values["dask_ipy"] / best if best else None
        table.append(
            {
                "row": row.key,
                "label": row.label,
                "unit": row.unit,
                "better": row.better,
                "versus": list(row.versus),
                "values": values,
                "cells": cells,
                "ratio": ratio,
                "stat": stat,
            }
        )
    return table


def fmt(x):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def render(table, systems):
    cols = [s for s in SYSTEMS if s in systems]
    header = ["workload", "unit", "better", *cols, "dask_ipy/best"]
    lines = [
        [r["label"], r["unit"], r["better"], *(r["cells"][s] for s in cols),
         "" if r["ratio"] is None else f"{r['ratio']:.2f}x"]
        for r in table
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]

    def line(cells):
        first = f"{cells[0]:<{widths[0]}}"
        rest = [f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells[1:], widths[1:]))]
        return "  ".join([first, *rest]).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(cells) for cells in lines]
    return "\n".join(out)


def errors(results):
    out = []
    for system, by_workload in results.items():
        for letter, data in sorted(by_workload.items()):
            if "error" in data:
                out.append({"system": system, "workload": letter, "error": data["error"]})
    return out
