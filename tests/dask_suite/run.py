"""Run dask's installed tests forced through one system and print per-module counts.

    python tests/dask_suite/run.py dask_ipy [--ci | MODULE ...] [--report PATH] [--gate]

Without modules: every module of MODULES (the long run); ``--ci``: CI_MODULES.  The
exit status is pytest's, or the gate's with ``--gate`` (see dask_suite.py).
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FAILURES = os.path.join(HERE, "distributed_failures.txt")

# The part of the run every CI run makes (4 minutes on an idle 2-core machine, 7 on
# one loaded by other test runs); the rest, about 30 minutes idle, with:
#   pytest -m dask_suite tests/cluster/test_dask_suite.py
CI_MODULES = [
    "dask.tests.test_base",
    "dask.tests.test_delayed",
    "dask.tests.test_composite_expr",
    "dask.bag.tests.test_bag",
    "dask.array.tests.test_array_core",
    "dask.array.tests.test_reductions",
    "dask.dataframe.tests.test_shuffle",
]
LONG_MODULES = [
    "dask.dataframe.tests.test_groupby",
    "dask.dataframe.tests.test_dataframe",
    "dask.dataframe.tests.test_multi",
    # 38 more, about 15 minutes on an idle machine (dask.array's image tests need
    # scikit-image, which the test extras leave out: without it that module skips
    # whole, so it is not listed; nor are modules that test dask's local schedulers,
    # its command line, documentation or configuration, or need a GPU or a network)
    "dask.tests.test_graph_manipulation",
    "dask.array.tests.test_slicing",
    "dask.array.tests.test_creation",
    "dask.array.tests.test_rechunk",
    "dask.array.tests.test_overlap",
    "dask.array.tests.test_percentiles",
    "dask.array.tests.test_masked",
    "dask.array.tests.test_routines",
    "dask.array.tests.test_ufunc",
    "dask.array.tests.test_gufunc",
    "dask.array.tests.test_random",
    "dask.array.tests.test_atop",
    "dask.array.tests.test_fft",
    "dask.array.tests.test_reshape",
    "dask.array.tests.test_map_blocks",
    "dask.array.tests.test_shuffle",
    "dask.array.tests.test_optimization",
    "dask.array.tests.test_wrap",
    "dask.bag.tests.test_text",
    "dask.bag.tests.test_random",
    "dask.dataframe.tests.test_rolling",
    "dask.dataframe.tests.test_indexing",
    "dask.dataframe.tests.test_arithmetics_reduction",
    "dask.dataframe.tests.test_reshape",
    "dask.dataframe.tests.test_categorical",
    "dask.dataframe.tests.test_ufunc",
    "dask.dataframe.tests.test_accessors",
    "dask.dataframe.tests.test_extensions",
    "dask.dataframe.tests.test_hashing",
    "dask.dataframe.tests.test_hyperloglog",
    "dask.dataframe.tests.test_boolean",
    "dask.dataframe.tests.test_numeric",
    "dask.dataframe.tests.test_map",
    "dask.dataframe.tests.test_merge_column_and_index",
    "dask.dataframe.io.tests.test_io",
    "dask.dataframe.io.tests.test_csv",
    "dask.dataframe.io.tests.test_demo",
    "dask.dataframe.io.tests.test_json",
    # 70 more: dask-expr's own tests, parquet and the other I/O, resampling,
    # linalg and stats (scipy), dask's expressions, graphs and tokenizing; about
    # 15 minutes more on a loaded machine (those of sparse, xarray, avro and
    # graphviz skip whole without those packages, which the test extras leave out)
    "dask.array._array_expr.tests.test_collection",
    "dask.array.tests.test_api",
    "dask.array.tests.test_array_expr_incompatible",
    "dask.array.tests.test_array_function",
    "dask.array.tests.test_array_utils",
    "dask.array.tests.test_chunk",
    "dask.array.tests.test_dispatch",
    "dask.array.tests.test_numpy_compat",
    "dask.bytes.tests.test_bytes_utils",
    "dask.bytes.tests.test_compression",
    "dask.bytes.tests.test_local",
    "dask.dataframe.dask_expr.io.tests.test_delayed",
    "dask.dataframe.dask_expr.io.tests.test_from_pandas",
    "dask.dataframe.dask_expr.io.tests.test_io",
    "dask.dataframe.dask_expr.io.tests.test_parquet",
    "dask.dataframe.dask_expr.tests.test_align_partitions",
    "dask.dataframe.dask_expr.tests.test_categorical",
    "dask.dataframe.dask_expr.tests.test_collection",
    "dask.dataframe.dask_expr.tests.test_concat",
    "dask.dataframe.dask_expr.tests.test_core",
    "dask.dataframe.dask_expr.tests.test_cumulative",
    "dask.dataframe.dask_expr.tests.test_datasets",
    "dask.dataframe.dask_expr.tests.test_datetime",
    "dask.dataframe.dask_expr.tests.test_describe",
    "dask.dataframe.dask_expr.tests.test_dummies",
    "dask.dataframe.dask_expr.tests.test_format",
    "dask.dataframe.dask_expr.tests.test_fusion",
    "dask.dataframe.dask_expr.tests.test_groupby",
    "dask.dataframe.dask_expr.tests.test_indexing",
    "dask.dataframe.dask_expr.tests.test_interchange",
    "dask.dataframe.dask_expr.tests.test_map_partitions_overlap",
    "dask.dataframe.dask_expr.tests.test_merge",
    "dask.dataframe.dask_expr.tests.test_merge_asof",
    "dask.dataframe.dask_expr.tests.test_partitioning_knowledge",
    "dask.dataframe.dask_expr.tests.test_predicate_pushdown",
    "dask.dataframe.dask_expr.tests.test_quantiles",
    "dask.dataframe.dask_expr.tests.test_reductions",
    "dask.dataframe.dask_expr.tests.test_repartition",
    "dask.dataframe.dask_expr.tests.test_reshape",
    "dask.dataframe.dask_expr.tests.test_rolling",
    "dask.dataframe.dask_expr.tests.test_shuffle",
    "dask.dataframe.dask_expr.tests.test_string_accessor",
    "dask.dataframe.dask_expr.tests.test_ufunc",
    "dask.dataframe.io.tests.test_orc",
    "dask.dataframe.io.tests.test_parquet",
    "dask.dataframe.tests.test_api",
    "dask.dataframe.tests.test_methods",
    "dask.dataframe.tests.test_pyarrow",
    "dask.dataframe.tests.test_pyarrow_compat",
    "dask.dataframe.tests.test_utils_dataframe",
    "dask.dataframe.tseries.tests.test_resample",
    "dask.dataframe.tseries.tests.test_resample_expr",
    "dask.tests.test_backends",
    "dask.tests.test_core",
    "dask.tests.test_datasets",
    "dask.tests.test_expr",
    "dask.tests.test_hashing",
    "dask.tests.test_highgraph",
    "dask.tests.test_hlgexpr",
    "dask.tests.test_layers",
    "dask.tests.test_ml",
    "dask.tests.test_optimization",
    "dask.tests.test_order",
    "dask.tests.test_rewrite",
    "dask.tests.test_sizeof",
    "dask.tests.test_task_spec",
    "dask.tests.test_tokenize",
    "dask.tests.test_utils",
    "dask.array.tests.test_linalg",
    "dask.array.tests.test_stats",
]
MODULES = CI_MODULES + LONG_MODULES


def command(system, modules, report, gate=None, extra=()):
    """The pytest command line of a forced run; `gate`: the list of failures."""
    import dask

    root = os.path.dirname(os.path.dirname(dask.__file__))
    cmd = [sys.executable, "-m", "pytest", "-c", os.path.join(HERE, "forced.ini"),
           f"--rootdir={root}", f"--confcutdir={root}", "-p", "no:cacheprovider",
           "-p", "dask_suite", f"--dask-suite={system}",
           f"--dask-suite-report={report}", "--tb=line", "-q", *extra]
    if gate:
        cmd.append(f"--dask-suite-gate={gate}")
    return cmd + ["--pyargs", *modules]


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (HERE, env.get("PYTHONPATH")) if p)
    return env


def module_of(test_id):
    return test_id.partition("::")[0][:-3].replace("/", ".")


def summary(report):
    """{module: Counter(outcome), with "seconds"}"""
    out = collections.defaultdict(collections.Counter)
    for tid, outcome in report["outcomes"].items():
        out[module_of(tid)][outcome] += 1
    for tid, seconds in report["durations"].items():
        out[module_of(tid)]["seconds"] += seconds
    return out


def print_summary(report, wall):
    rows = summary(report)
    kinds = ["passed", "failed", "error", "skipped", "xfailed", "xpassed"]
    print(f"{report['system']}: {wall:.0f} s")
    print(f"{'module':40s}" + "".join(f"{k:>9s}" for k in kinds) + f"{'seconds':>9s}")
    total = collections.Counter()
    for module in sorted(rows):
        total.update(rows[module])
        print(f"{module:40s}" + "".join(f"{rows[module][k]:9d}" for k in kinds)
              + f"{rows[module]['seconds']:9.0f}")
    print(f"{'total':40s}" + "".join(f"{total[k]:9d}" for k in kinds)
          + f"{total['seconds']:9.0f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("system", choices=["dask_ipy", "distributed"])
    p.add_argument("modules", nargs="*")
    p.add_argument("--ci", action="store_true", help="only the modules CI runs")
    p.add_argument("--report", default=None, help="where to keep the JSON report")
    p.add_argument("--gate", action="store_true",
                   help="fail only on failures dask.distributed does not have")
    p.add_argument("-k", default=None, help="pytest's -k")
    args = p.parse_intermixed_args(argv)
    modules = args.modules or (CI_MODULES if args.ci else MODULES)
    report = args.report or tempfile.mktemp(prefix="dask-suite-", suffix=".json")
    extra = ["-k", args.k] if args.k else []
    start = time.monotonic()
    gate = FAILURES if args.gate else None
    status = subprocess.call(command(args.system, modules, report, gate, extra),
                             env=environment())
    wall = time.monotonic() - start
    if os.path.exists(report):
        with open(report) as f:
            print_summary(json.load(f), wall)
    return status


if __name__ == "__main__":
    sys.exit(main())
