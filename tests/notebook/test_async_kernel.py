"""The asynchronous client with top-level ``await``: in a real Jupyter kernel (a
notebook run by nbclient, its cells in the kernel's running event loop) and in an
IPython shell (its own loop, run cell by cell), against a scheduler and workers in
their own processes.  Nothing deadlocks against the client's I/O thread, no loop is
nested, and a blocking client works beside an asynchronous one."""

import asyncio

import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell
from nbclient import NotebookClient
from traitlets.config import Config

pytestmark = pytest.mark.timeout(180)


def notebook(cells):
    """A notebook of ``[(tag, source)]``."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": [tag]})
                for tag, src in cells]
    return nb


def result(nb, tag):
    (c,) = [c for c in nb.cells if tag in c.metadata["tags"]]
    errors = [o for o in c.outputs if o.output_type == "error"]
    assert not errors, (tag, errors[0].ename, errors[0].evalue)
    (out,) = [o for o in c.outputs if o.output_type == "execute_result"]
    return out.data["text/plain"]


CELLS = [
    ("setup", "import asyncio\n"
              "from dask_ipy import Client, as_completed, wait\n"
              "def inc(x):\n"
              "    return x + 1"),
    ("client", "c = await Client(PATH, asynchronous=True)\nc.status"),
    ("display", "c"),
    ("await", "await c.submit(inc, 1)"),
    ("gather", "await c.gather(c.map(inc, range(5)))"),
    ("as_completed", "sorted([r async for _, r in as_completed(c.map(inc, range(10, 13)),"
                     " with_results=True)])"),
    ("wait", "done, not_done = await wait(c.map(inc, range(3)))\n"
             "len(done), len(not_done)"),
    ("many", "await asyncio.gather(*c.map(inc, range(100))) == list(range(1, 101))"),
    ("loop", "asyncio.get_running_loop().is_running()"),
    ("blocking", "b = Client(PATH, set_as_default=False)\nb.submit(inc, 100).result()"),
    ("mixed", "await b.submit(inc, 200)"),
    ("async-with", "async with Client(PATH, asynchronous=True, set_as_default=False)"
                   " as c3:\n"
                   "    r = await c3.submit(inc, 300)\n"
                   "r, c3.status"),
    ("compute", "import dask\nawait c.compute(dask.delayed(inc)(41))"),
    ("close", "b.close()\nawait c.close()\nc.status, b.status"),
]

EXPECTED = {
    "client": "'running'", "await": "2", "gather": "[1, 2, 3, 4, 5]",
    "as_completed": "[11, 12, 13]", "wait": "(3, 0)", "many": "True", "loop": "True",
    "blocking": "101", "mixed": "201", "async-with": "(301, 'closed')",
    "compute": "42", "close": "('closed', 'closed')",
}


def test_top_level_await_in_a_jupyter_kernel(pc, tmp_path):
    cells = [("path", f"PATH = {pc.file!r}")] + CELLS
    nb = notebook(cells)
    NotebookClient(nb, kernel_name="python3", timeout=60,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert {tag: result(nb, tag) for tag in EXPECTED} == EXPECTED
    # an asynchronous client shows itself without blocking or awaiting anything
    shown = result(nb, "display")
    assert shown.startswith("<Client tcp://") and "running" in shown
    stderr = "".join(o.text for c in nb.cells for o in c.outputs
                     if o.output_type == "stream" and o.name == "stderr")
    assert "never awaited" not in stderr and "Traceback" not in stderr, stderr


@pytest.fixture
def shell():
    InteractiveShell.clear_instance()
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=cfg)
    try:
        yield sh
    finally:
        InteractiveShell.clear_instance()


def test_top_level_await_in_an_ipython_shell(pc, shell):
    assert shell.autoawait and shell.loop_runner is not None
    shell.user_ns["PATH"] = pc.file
    got = {}
    # (a cell without await runs outside any loop here: no "loop" cell)
    for tag, src in [(t, s) for t, s in CELLS if t not in ("loop", "display")]:
        res = shell.run_cell(src)
        assert res.error_in_exec is None and res.error_before_exec is None, (
            tag, res.error_in_exec or res.error_before_exec)
        if tag in EXPECTED:
            got[tag] = repr(res.result)
    assert got == {k: v for k, v in EXPECTED.items() if k != "loop"}
    # each cell ran to its end in the shell's loop: nothing runs here now
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
