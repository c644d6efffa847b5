"""The benchmark suite: its graphs and table are right, and a quick run works.

The smoke run uses the dask.distributed baseline, which needs nothing from
dask_ipy; it starts its own processes and leaves none behind.
"""

import json
import subprocess
import sys
from pathlib import Path

import dask
import pytest

from benchmarks import report, workloads

# Timed runs of the benchmarks (ours and dask.distributed's): without coverage.
pytestmark = pytest.mark.uncovered

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "build, size, ntasks",
    [
        (workloads.independent_graph, 300, 300),
        (workloads.fan_out_graph, 300, 301),
    ],
)
def test_flat_graphs(build, size, ntasks):
    dsk, keys, ok = build("x", size)
    assert len(dsk) == ntasks
    assert ok(dask.get(dsk, keys))
    assert not ok([0] * len(keys))


def test_tree_graph():
    assert workloads.tree_leaves(10_000) == 4096
    dsk, root, ok = workloads.tree_graph("t", 64)
    assert len(dsk) == 127
    assert ok(dask.get(dsk, root))


def test_reduction_graph_sizes():
    dsk, root, expected = workloads.reduction_graph("e", 10_000)
    assert len(dsk) == 10_000
    assert dask.get(dsk, root) == expected
    assert workloads._reduction_count(990_000) == 1_000_000


def test_table_ratio_and_cells():
    sizes = workloads.SIZES["quick"]
    results = {
        "dask_ipy": {"c": {"median_ms": 2.0}, "a": {"error": "boom"}},
        "distributed": {"c": {"median_ms": 8.0}, "a": {"tasks_per_s": 500.0}},
        "distributed-inf": {"c": {"median_ms": 4.0}},
    }
    systems = ["dask_ipy", "distributed", "distributed-inf", "ipyparallel"]
    table = {r["row"]: r for r in report.build(results, sizes, systems, ["a", "c", "d"])}
    assert table["c"]["ratio"] == pytest.approx(0.5)  # against the better one (lower is better)
    assert table["a"]["cells"]["dask_ipy"] == "ERROR"
    assert table["a"]["ratio"] is None
    assert table["d"]["cells"]["ipyparallel"] == "n/a"
    assert table["d"]["cells"]["distributed-inf"] == "-"
    text = report.render(list(table.values()), systems)
    assert "dask_ipy/best" in text and "0.50x" in text


@pytest.mark.timeout(300)
@pytest.mark.parametrize("system", ["dask_ipy", "distributed"])
def test_quick_run(tmp_path, system):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--systems", system,
         "--only", "a,b,c,d,e,g", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["errors"] == [], data["errors"]
    values = {row["row"]: row["values"][system] for row in data["table"]}
    for row in ("a", "b1", "b2", "b3", "c", "d", "e1", "e2", "e3", "g1", "g2", "g3"):
        assert values[row] is not None and values[row] > 0, (row, values[row])
    assert data["results"][system]["e"]["tasks"] >= 20_000
    assert "dask_ipy/best" in proc.stdout


@pytest.mark.timeout(300)
def test_actors_quick_run(tmp_path):
    out = tmp_path / "actors.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.actors", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = {r["system"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"dask_ipy", "distributed"}
    for run in runs.values():
        assert run["ok"], run
        for figure in ("sequential", "pipelined", "attribute", "from_task"):
            assert run[figure]["median"] > 0, (run["system"], figure)
    assert runs["dask_ipy"]["pipelined_in_order"] is True
    assert "| sequential |" in proc.stdout


def test_scale_simulation_quick(tmp_path):
    """The scheduler driven by simulated workers: every task of the tree completes
    (the run asserts it), and the table and JSON hold every case."""
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--quick",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert [(x["workers"], x["requested"]) for x in data["runs"]] == \
        [(2, 200), (2, 2000), (20, 200), (20, 2000)]
    assert all(x["complete_us"] > 0 and x["intake_us"] > 0 for x in data["runs"])
    assert all(x["bytes_per_task"] > 0 for x in data["memory"])
    assert all(x["steals_asked"] == 1 for x in data["decisions"])
    assert "per-task cost at" in r.stdout


@pytest.mark.timeout(300)
def test_relay_quick_run(tmp_path):
    """Both modes of the relay benchmark run; only the streamed one passes its bytes
    through the scheduler's TCP relay."""
    out = tmp_path / "relay.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.relay", "--quick",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    runs = {run["mode"]: run for run in data["runs"]}
    assert set(runs) == {"stream", "one-message"}
    for run in runs.values():
        assert run["ok"], run
        assert run["MB_s"] > 0 and run["idle_ms"]["n"] == 30
        assert run["scatter_MB_s"] > 0
    assert runs["stream"]["relayed_by_stream"] >= data["nbytes"]
    assert runs["one-message"]["relayed_by_stream"] == 0
    assert "| stream |" in r.stdout
