"""The pure core stays pure: the state machines, the graph and the wire format know
nothing of sockets, threads or clocks; only the shells do."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "dask_ipy"
PURE = ["scheduler/state.py", "worker/state.py", "graph.py", "protocol.py", "keys.py"]
FORBIDDEN = {"zmq", "socket", "threading", "time", "asyncio", "select", "selectors",
             "subprocess", "concurrent"}


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module):
    bad = set(imported_modules(PACKAGE / module)) & FORBIDDEN
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_notebook_layer_uses_only_the_public_api():
    for name in ("notebook/magics.py", "notebook/widget.py"):
        path = PACKAGE / name
        if not path.exists():
            pytest.fail(f"{name} is missing")
        text = path.read_text()
        for internal in ("scheduler.state", "worker.state", ".state import"):
            assert internal not in text, f"{name} reaches into {internal}"


def test_a_scheduler_process_never_imports_dask():
    import subprocess
    import sys

    code = ("import sys, dask_ipy.cli, dask_ipy.scheduler.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dask'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
