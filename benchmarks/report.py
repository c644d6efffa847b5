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
    def __init__(self, key, workload, label, get, unit, better, versus=DISTRIBUTED):
        self.key = key
        self.workload = workload
        self.label = label
        self.get = get
        self.unit = unit
        self.better = better
        self.versus = versus


def rows(sizes):
    a, b, c, d, e = (sizes[k] for k in "abcde")
    return [
        Row("a", "a", f"a. {a:,} tiny tasks, map + gather", lambda r: r["tasks_per_s"], "tasks/s", "higher"),
        Row("b1", "b", f"b. get: {b:,} independent tasks",
            lambda r: r["independent"]["tasks_per_s"], "tasks/s", "higher"),
        Row("b2", "b", f"b. get: 1 root, {b:,} children",
            lambda r: r["fan_out"]["tasks_per_s"], "tasks/s", "higher"),
        Row("b3", "b", f"b. get: tree sum of {tree_leaves(b):,} leaves",
            lambda r: r["tree_sum"]["tasks_per_s"], "tasks/s", "higher"),
        Row("c", "c", f"c. submit -> result, median of {c}", lambda r: r["median_ms"], "ms", "lower"),
        Row("d", "d", f"d. {d / 1e6:g} MB array, worker A -> B", lambda r: r["gb_per_s"], "GB/s", "higher"),
        Row("e1", "e", f"e. {e:,}-task graph", lambda r: r["tasks_per_s"], "tasks/s", "higher"),
        Row("e2", "e", f"e. per-task time, {e:,} vs {min(10_000, e // 10):,}",
            lambda r: r["overhead_ratio"], "x", "lower"),
        Row("e3", "e", "e. scheduler peak RSS per task",
            lambda r: r["peak_bytes_per_task"] / 1e3, "kB/task", "lower"),
        Row("f", "f", "f. bootstrap on ipcluster [ipp: become_dask]",
            lambda r: r["connected_s"], "s", "lower", versus=("ipyparallel",)),
        Row("g1", "g", "g. idle RSS, scheduler (all its processes)",
            lambda r: r["scheduler_rss"] / 1e6, "MB", "lower"),
        Row("g2", "g", "g. idle PSS, scheduler (all its processes)",
            lambda r: r["scheduler_pss"] / 1e6, "MB", "lower"),
        Row("g3", "g", "g. idle RSS, per worker (mean)",
            lambda r: r["worker_rss_mean"] / 1e6, "MB", "lower"),
    ]


def build(results, sizes, systems, only):
    """The table as data: [{row, label, unit, better, values, cells, ratio}]."""
    table = []
    for row in rows(sizes):
        if row.workload not in only:
            continue
        values, cells = {}, {}
        for name in SYSTEMS:
            values[name], cells[name] = None, ""
            if name not in systems:
                continue
            if name not in WORKLOADS[row.workload].systems:
                cells[name] = "n/a"
                continue
            data = results.get(name, {}).get(row.workload)
            if data is None:
                cells[name] = "-"
            elif "error" in data:
                cells[name] = "ERROR"
            else:
                try:
                    values[name] = float(row.get(data))
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
