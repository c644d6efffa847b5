"""The example notebooks run top to bottom in a real kernel (nbclient) and show what
they promise.  Each notebook starts and stops its own ipcluster in a fresh IPYTHONDIR;
every process it starts carries a marker in its environment, and none may outlive the
run."""

import os
import re
import sys
import uuid

import nbformat
import pytest
from helpers import MARKER, ROOT, kill_marked, marked, reaped, wait_for
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(ROOT, "notebooks")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def execute(name, tmp_path):
    """Run notebooks/<name> in a python3 kernel; returns the executed notebook."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    # One cell more, at the end: which interpreter ran the notebook.
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nsys.executable",
                                              metadata={"tags": ["interpreter"]}))
    marker = uuid.uuid4().hex
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"))
    env[MARKER] = marker
    client = NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute(env=env)
    finally:
        left = kill_marked(marker)
    assert not left, f"processes left behind: {left}"
    return nb


def cell(nb, tag):
    (c,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return c


def result(nb, tag):
    (out,) = [o for o in cell(nb, tag).outputs if o.output_type == "execute_result"]
    return out.data["text/plain"]


def stream(nb, tag):
    return "".join(o.text for o in cell(nb, tag).outputs if o.output_type == "stream")


def errors(nb):
    return {tuple(c.metadata.get("tags", [])): o for c in nb.cells
            if c.cell_type == "code" for o in c.outputs if o.output_type == "error"}


def widget_values(nb):
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return {mid: m["state"].get("value") for mid, m in state.items()}


def test_quickstart(tmp_path):
    nb = execute("quickstart.ipynb", tmp_path)
    assert result(nb, "interpreter") == repr(sys.executable)
    assert result(nb, "seed") == "3"                     # the seed graph
    assert result(nb, "futures") == "55"
    assert result(nb, "gather") == "[0, 1, 4, 9, 16, 25]"
    mean = float(re.search(r"[\d.]+(?=\)?$)", result(nb, "array")).group())
    assert abs(mean - 1.0) < 0.01
    # the only error is the intended one, with the remote source line in it
    ((tags, err),) = errors(nb).items()
    assert "error" in tags
    assert (err.ename, err.evalue) == ("ValueError", "3 is too large")
    text = ANSI.sub("", "\n".join(err.traceback))
    assert "raise ValueError(f'{v} is too large')" in text
    # The cell's frame points at the raise, not at the def, and shows only the
    # user's frames.
    assert re.search(r"----> 3 +raise ValueError\(f'\{v\} is too large'\)", text), text
    assert "dask_ipy" + os.sep not in text and "_task_spec" not in text, text
    # the widget was shown, and kept updating after it was displayed
    (shown,) = [o for o in cell(nb, "widget").outputs
                if o.output_type == "display_data"]
    assert "application/vnd.jupyter.widget-view+json" in shown.data
    values = [v for v in widget_values(nb).values() if isinstance(v, str)]
    assert any('data-dask-ipy="header"' in v and 'data-workers="2"' in v
               for v in values)
    assert any('data-group="slow_inc"' in v and 'data-done="40"' in v for v in values)
    assert "stopped the scheduler" in stream(nb, "cleanup")


def test_collections(tmp_path):
    nb = execute("collections.ipynb", tmp_path)
    assert result(nb, "interpreter") == repr(sys.executable)
    assert not errors(nb)
    assert result(nb, "set") == "['mybag']"
    assert result(nb, "get") == "['mybag']"
    out = stream(nb, "compare")
    assert "client 1: [1, 2, 3, 4, 5]" in out
    assert "client 2: [1, 2, 3, 4, 5]" in out
    assert result(nb, "compare") == "True"
    assert result(nb, "dataset") == "[0, 1, 4, 9, 16]"
    assert "stopped the scheduler" in stream(nb, "cleanup")


@pytest.mark.parametrize("name", ["quickstart.ipynb", "collections.ipynb"])
def test_notebooks_are_stored_clean(name):
    """Stored without outputs or execution counts; no empty code cell."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None
            assert c.source.strip()
    assert nb.metadata.kernelspec.name == "python3"


def test_leftover_processes_are_found():
    """The leak check above sees a marked process (else it would prove nothing)."""
    import subprocess

    marker = uuid.uuid4().hex
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         env=dict(os.environ, **{MARKER: marker}))
    try:
        assert [q.pid for q in marked(marker)] == [p.pid]
    finally:
        p.kill()
        p.wait(10)
    assert marked(marker) == []


def test_the_orphaned_children_of_a_killed_controller_are_reaped(tmp_path):
    """ipyparallel's launcher kills a controller still running 5 s after its SIGTERM,
    as when one of its children missed the signal (under coverage, whose SIGTERM
    handler a monitored-queue child runs only when it returns from ZeroMQ, which it
    may never do).  Its children, orphans of init then, were left running for good;
    those of a `reaped` block are killed at its end."""
    import subprocess

    with reaped(grace=0) as marker:
        controller = subprocess.Popen(
            [sys.executable, "-m", "ipyparallel.controller", "--ip=127.0.0.1"],
            env=dict(os.environ, IPYTHONDIR=str(tmp_path)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(marked(marker)) >= 3, timeout=60,
                 message="the controller's children")
        controller.kill()
        controller.wait(10)
        orphans = marked(marker)
        assert orphans and controller.pid not in [p.ppid() for p in orphans]
    assert marked(marker) == []
