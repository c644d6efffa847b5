"""``%dsched`` and ``%%dget`` driven through a real IPython ``InteractiveShell``:
first against a scheduler and workers in this process (``%dsched connect``), then
booted on a real two-engine ipcluster (``%dsched start``)."""

import os
import threading
import time
from operator import add

import pytest
from helpers import dask_ipy_threads, inc, local_cluster, reaped, wait_for
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

import dask_ipy
from dask_ipy.notebook.magics import DaskMagics, parse_targets, resolve_targets

SEED = "from operator import add\n{'x': 1, 'y': (add, 'x', 2)}"


@pytest.fixture(autouse=True)
def no_threads_left():
    """Set up first, so checked last: after the shell's client and the cluster."""
    yield
    wait_for(lambda: not dask_ipy_threads(), timeout=10, message="threads to stop")


@pytest.fixture(scope="module")
def shell():
    """One real shell for the module: no history file, no colours."""
    InteractiveShell.clear_instance()
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=cfg)
    sh.colors = "nocolor"
    try:
        yield sh
    finally:
        InteractiveShell.clear_instance()


@pytest.fixture
def ip(shell):
    """The shell with the extension loaded; unloaded (closing its client) after."""
    shell.run_line_magic("load_ext", "dask_ipy")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "dask_ipy")
        for name in [n for n in shell.user_ns if not n.startswith("_")
                     and n not in shell.user_ns_hidden]:
            del shell.user_ns[name]


def run(ip, code, error=None):
    """Run a cell; returns (its result, what it printed on stdout and stderr).
    ``error``: the exception type the cell must raise (else it must succeed)."""
    with capture_output() as cap:
        r = ip.run_cell(code)
    if error is None:
        assert r.success, f"{code!r} failed: {r.error_before_exec or r.error_in_exec}" \
                          f"\n{cap.stdout}\n{cap.stderr}"
    else:
        assert isinstance(r.error_in_exec or r.error_before_exec, error), (
            f"{code!r}: expected {error.__name__}, got "
            f"{r.error_before_exec or r.error_in_exec!r}\n{cap.stdout}")
        r.exception = r.error_in_exec or r.error_before_exec
    return r, cap.stdout + cap.stderr


@pytest.fixture
def scheduler():
    """A scheduler and two workers in this process, and no client (the threads left
    are checked by `no_threads_left`)."""
    with local_cluster(client=False) as (s, _, _):
        yield s


@pytest.fixture
def connected(ip, scheduler):
    """The shell with ``c``, a client of ``scheduler``, and ``add`` and ``inc``."""
    run(ip, f"c = %dsched connect {scheduler.address_to_clients}")
    ip.user_ns.update(add=add, inc=inc)
    return ip


# ---------------------------------------------------------------- pure helpers

def test_parse_targets():
    assert parse_targets("all") == "all"
    assert parse_targets("") == "all"
    assert parse_targets("3") == [3]
    assert parse_targets("0,2,5-7") == [0, 2, 5, 6, 7]
    assert parse_targets("::2") == slice(None, None, 2)
    assert parse_targets("1:") == slice(1, None)
    for bad in ("x", "1-", "1:2:3:4", "a:b"):
        with pytest.raises(UsageError):
            parse_targets(bad)


def test_resolve_targets():
    assert resolve_targets("all", [0, 1, 2]) == "all"
    assert resolve_targets(slice(None, None, 2), [0, 1, 2]) == [0, 2]
    assert resolve_targets([1], [0, 1, 2]) == [1]
    with pytest.raises(UsageError, match="no engine with id"):
        resolve_targets([5], [0, 1])
    with pytest.raises(UsageError, match="selects no engine"):
        resolve_targets(slice(5, None), [0, 1])


def test_line_form_parsing(shell):
    m = DaskMagics(shell)

    def parse(line):
        args, expr, keys = m._parse_line(line)
        return args.output, args.asynchronous, expr, keys
    assert parse("dsk") == (None, False, "dsk", [])
    assert parse("dsk y") == (None, False, "dsk", ["y"])
    assert parse("-o r --async dsk y z") == ("r", True, "dsk", ["y", "z"])
    assert parse("{'x': 1,  'y': (add, 'x', 2)} y") == \
        (None, False, "{'x': 1,  'y': (add, 'x', 2)}", ["y"])
    assert parse("f(a, b)") == (None, False, "f(a, b)", [])
    assert parse("x + y") == (None, False, "x + y", [])
    assert parse("""dsk "('t', 0)" """) == (None, False, "dsk", ["('t', 0)"])
    with pytest.raises(UsageError):
        parse("-o r")
    with pytest.raises(UsageError):
        parse(")(")


# ---------------------------------------------------------------- no scheduler

def test_without_a_scheduler_every_magic_says_what_to_do(ip):
    for code in ("%%dget y\n" + SEED, "%dget {'x': 1}", "%dsched", "%dsched status",
                 "%dsched stop", "%dsched restart"):
        r, out = run(ip, code, error=UsageError)
        assert "%dsched start" in str(r.exception), code
        assert "%dsched connect ADDRESS" in str(r.exception), code
        assert "UsageError" in out


def test_bad_arguments_are_usage_errors(ip):
    run(ip, "%dsched launch", error=UsageError)
    run(ip, "%dsched connect", error=UsageError)
    run(ip, "%dsched stop tcp://127.0.0.1:1", error=UsageError)
    run(ip, "%dsched start --scheduler cloud", error=UsageError)


def test_help_documents_every_option(ip):
    doc = ip.find_line_magic("dsched").__doc__
    for word in ("start", "connect", "status", "stop", "restart", "-n N", "--profile",
                 "--cluster-id", "--url", "--targets", "--nthreads", "--scheduler"):
        assert word in doc, word
    doc = ip.find_cell_magic("dget").__doc__
    for word in ("KEY", "-o NAME", "--async", "%dget"):
        assert word in doc, word


# ---------------------------------------------------------------- %dsched connect

def test_connect_returns_the_active_client(ip, scheduler):
    r, _ = run(ip, f"c = %dsched connect {scheduler.address_to_clients}\nc")
    c = ip.user_ns["c"]
    assert isinstance(c, dask_ipy.Client) and r.result is c
    assert c.address == scheduler.address_to_clients
    assert len(c.scheduler_info()["workers"]) == 2
    # a connection file works too, and the new client replaces the old one
    run(ip, f"c2 = %dsched connect {scheduler.connection_file}")
    c2 = ip.user_ns["c2"]
    assert c2 is not c and c.status == "closed" and c2.status == "running"
    r, _ = run(ip, "%%dget y\n" + SEED)
    assert r.result == 3


def test_options_that_cannot_be_applied_are_refused(ip, scheduler):
    for line in ("--nthreads 0", "-n 0", "--new -1"):
        r, _ = run(ip, f"%dsched start {line}", error=UsageError)
        assert "at least 1" in str(r.exception), line
    run(ip, f"c = %dsched connect {scheduler.address_to_clients}")
    c = ip.user_ns["c"]
    r, _ = run(ip, "%dsched start --targets 9 --url missing.json --scheduler local",
               error=UsageError)
    assert str(r.exception) == (
        f"already connected to {c.address}: --url, --targets, --scheduler not "
        f"applied (`%dsched stop` first to boot a new one)")
    # Without options, the active client again (a cell run twice).
    r, out = run(ip, "%dsched start")
    assert r.result is c and "already connected" in out


def test_connect_to_nothing_fails_fast_saying_what_is_wrong(ip, tmp_path):
    def error(target, options=""):
        r, _ = run(ip, f"%dsched connect {target} {options}", error=UsageError)
        assert f"could not connect to {target}" in str(r.exception)
        return str(r.exception)

    assert "no such file" in error(tmp_path / "missing.json")
    assert "no such file" in error("missing.json")
    assert "neither an address (tcp://host:port) nor a connection file" in \
        error("nonsense")
    assert "expected tcp://host:port" in error("tcp://127.0.0.1")
    assert "no key known for tcp://127.0.0.1:1" in error("tcp://127.0.0.1:1")
    # A connection file of a scheduler that is gone: the key is known, no answer.
    with local_cluster(client=False) as (s, _, _):
        dead = tmp_path / "dead.json"
        dead.write_text(open(s.connection_file).read())
    assert "no scheduler answered within 1 s" in error(dead, "--timeout 1")


# ---------------------------------------------------------------- %%dget

def test_dget_seed_graph(connected):
    ip = connected
    r, out = run(ip, "%%dget y\n" + SEED)
    assert r.result == 3
    assert "Out[" in out and "3" in out
    r, _ = run(ip, "%%dget\n" + SEED)           # the output keys
    assert r.result == {"y": 3}
    r, _ = run(ip, "%%dget x y\n" + SEED)
    assert r.result == {"x": 1, "y": 3}


def test_dget_output_variable(connected):
    ip = connected
    r, _ = run(ip, "%%dget y -o answer\n" + SEED)
    assert ip.user_ns["answer"] == 3 == r.result
    run(ip, "%%dget -o 1bad y\n" + SEED, error=UsageError)


def test_dget_runs_the_cell_in_the_user_namespace(connected):
    ip = connected
    r, _ = run(ip, "%%dget total\n"
                   "n = 4\n"
                   "dsk = {('t', i): (inc, i) for i in range(n)}\n"
                   "dsk['total'] = (sum, [('t', i) for i in range(n)])\n"
                   "dsk")
    assert r.result == 1 + 2 + 3 + 4
    assert ip.user_ns["n"] == 4 and "dsk" in ip.user_ns
    r, _ = run(ip, """%%dget "('t', 2)"\ndsk""")         # a tuple key, quoted
    assert r.result == 3
    r, _ = run(ip, """%%dget "('t', 0)" total\ndsk""")
    assert r.result == {("t", 0): 1, "total": 10}
    r, _ = run(ip, "%%dget nothere\ndsk", error=UsageError)
    assert str(r.exception).startswith(
        "%%dget: 'nothere' is not a key of the cell's graph (its keys: ('t', 0), ")


def test_dget_dask_collections(connected):
    ip = connected
    r, _ = run(ip, "%%dget\nimport dask.array as da\n"
                   "x = da.arange(100, chunks=10)\n(x * 2).sum()")
    assert r.result == 2 * sum(range(100))
    r, _ = run(ip, "%%dget\nimport dask.bag as db\n"
                   "db.from_sequence(range(5), npartitions=2).map(lambda v: v + 1)")
    assert r.result == [1, 2, 3, 4, 5]
    # a list mixing collections, graphs, Futures and plain values
    r, _ = run(ip, "%%dget -o both\nimport dask\n"
                   "f = c.submit(lambda: 40)\n"
                   "[dask.delayed(sum)([1, 2]), {'a': 1, 'b': (add, 'a', 1)}, f,"
                   " 'plain']")
    assert r.result == [3, {"b": 2}, 40, "plain"]
    assert ip.user_ns["both"] == r.result
    r, _ = run(ip, "%%dget\nc.map(lambda v: v * 10, range(3))")
    assert r.result == [0, 10, 20]
    r, _ = run(ip, "%%dget\nc.map(inc, [])")
    assert r.result == []
    # a graph holding a Future: the Future's data stays on the cluster
    r, _ = run(ip, "%%dget\nten = c.submit(inc, 9)\n{'a': ten, 'b': (add, 'a', 1)}")
    assert r.result == {"b": 11}
    r, _ = run(ip, "%%dget a\n{'a': ten, 'b': (add, 'a', 1)}")
    assert r.result == 10


def test_dget_async_returns_futures(connected):
    ip = connected
    r, _ = run(ip, "%%dget --async y -o fut\n" + SEED)
    fut = ip.user_ns["fut"]
    assert isinstance(fut, dask_ipy.Future) and r.result is fut
    assert fut.key == "y" and fut.result(timeout=10) == 3
    r, _ = run(ip, "%%dget --async\n" + SEED)
    assert list(r.result) == ["y"] and r.result["y"].result(timeout=10) == 3
    r, _ = run(ip, "%%dget --async\nimport dask\ndask.delayed(add)(1, 2)")
    assert isinstance(r.result, dask_ipy.Future)
    assert r.result.result(timeout=10) == 3
    r, _ = run(ip, "%%dget --async\nimport dask\n"
                   "[dask.delayed(add)(2, 2), c.submit(inc, 1)]")
    assert all(isinstance(f, dask_ipy.Future) for f in r.result)
    assert [f.result(timeout=10) for f in r.result] == [4, 2]


def test_dget_line_form(connected):
    ip = connected
    ip.user_ns["dsk"] = {"x": 1, "y": (add, "x", 2)}
    assert run(ip, "%dget dsk y")[0].result == 3
    assert run(ip, "%dget dsk")[0].result == {"y": 3}
    assert run(ip, "%dget -o got {'a': 10, 'b': (add, 'a', 'a')} b")[0].result == 20
    assert ip.user_ns["got"] == 20
    r, _ = run(ip, "%dget --async dsk y")
    assert r.result.result(timeout=10) == 3
    r, _ = run(ip, "%dget undefined_name", error=UsageError)
    assert str(r.exception) == "%dget undefined_name: 'undefined_name' is not defined"
    r, _ = run(ip, "%dget [f(x) for x in dsk] y", error=UsageError)
    assert str(r.exception).endswith(": 'f' is not defined")
    ip.user_ns["f"] = lambda x: dsk_of(x)          # defined, fails when run: its own
    run(ip, "%dget [f(x) for x in dsk] y", error=NameError)


def test_dget_needs_something_to_compute(connected):
    ip = connected
    r, _ = run(ip, "%%dget\nv = 1", error=UsageError)
    assert "end with an expression" in str(r.exception)
    r, _ = run(ip, "%%dget\n42", error=UsageError)
    assert "int" in str(r.exception)
    r, _ = run(ip, "%%dget y\nimport dask\ndask.delayed(inc)(1)", error=UsageError)
    assert "graph dict" in str(r.exception)


CELL_ERROR = """%%dget
def explode(x):
    raise ValueError(f"exploded on {x}")  # the remote line
{'a': 1, 'b': (explode, 'a')}
"""


def test_remote_error_shows_the_remote_traceback(connected):
    ip = connected
    r, out = run(ip, CELL_ERROR, error=ValueError)
    assert str(r.exception) == "exploded on 1"
    assert 'raise ValueError(f"exploded on {x}")  # the remote line' in out
    assert "ValueError: exploded on 1" in out
    # Only the user's frames: not the worker's, dask's task calling or the client's.
    assert "dask_ipy" + os.sep not in out and "_task_spec" not in out, out
    r, out = run(ip, "%%dget\nimport dask\ndask.delayed(explode)(2)", error=ValueError)
    assert "dask_ipy" + os.sep not in out and "_task_spec" not in out, out
    assert '# the remote line' in out
    # the cluster is unharmed
    assert run(ip, "%%dget y\n" + SEED)[0].result == 3


def test_a_remote_error_in_a_cells_function_shows_that_cell(connected):
    """The function went by value (cloudpickle renames its code "<dynamic-code>"):
    its frame names its cell and line again, with the source, and the worker's own
    frames are left out."""
    ip = connected
    run(ip, "def halve(x):\n    if x % 2:\n        raise ValueError(f'odd: {x}')\n"
            "    return x // 2")
    r, out = run(ip, "c.submit(halve, 3).result()", error=ValueError)
    assert "<dynamic-code>" not in out
    assert "line 3, in halve" in out
    assert "raise ValueError(f'odd: {x}')" in out
    assert "worker/server.py" not in out and "dask_ipy/graph.py" not in out


def test_cell_errors_are_the_cells_own(connected):
    r, out = run(connected, "%%dget\n1 / 0", error=ZeroDivisionError)
    assert "1 / 0" in out


# ---------------------------------------------------------------- status, restart, stop

def test_status_as_text_in_a_terminal(connected):
    ip = connected
    run(ip, "%%dget y\n" + SEED)
    _, out = run(ip, "%dsched")
    c = ip.user_ns["c"]
    assert f"dask_ipy scheduler {c.address}" in out
    assert "2 workers, 2 threads" in out
    assert "tasks:" in out
    _, out2 = run(ip, "%dsched status")
    assert f"dask_ipy scheduler {c.address}" in out2


def c_has_data(c):
    return any(c.has_what().values())


def test_restart(connected):
    ip = connected
    run(ip, "done = c.submit(inc, 1)\ndone.result()")
    _, out = run(ip, "%dsched restart")
    assert "restarted" in out
    wait_for(lambda: ip.user_ns["done"].cancelled(), message="cancel on restart")
    wait_for(lambda: not c_has_data(ip.user_ns["c"]), message="data dropped")
    assert run(ip, "%%dget y\n" + SEED)[0].result == 3


def test_stop_shuts_the_scheduler_down(connected, scheduler):
    ip = connected
    c = ip.user_ns["c"]
    _, out = run(ip, "%dsched stop")
    assert "stopped" in out
    assert c.status == "closed"
    wait_for(lambda: scheduler.loop.stopped.is_set(), message="the scheduler to stop")
    run(ip, "%%dget y\n" + SEED, error=UsageError)


def test_stop_closes_the_earlier_clients_of_that_scheduler(ip, scheduler):
    """A client made default before `%dsched connect` to the same scheduler closes
    with it: afterwards both forms of %dget say how to start a scheduler."""
    from dask_ipy.client.default import default_client

    earlier = dask_ipy.Client(scheduler.address_to_clients)
    try:
        run(ip, f"c = %dsched connect {scheduler.address_to_clients}")
        run(ip, "%dsched stop")
        for code in ("%%dget y\n" + SEED, "%dget 1"):
            r, _ = run(ip, code, error=UsageError)
            assert "%dsched start" in str(r.exception), code
        assert earlier.status == "closed"
        with pytest.raises(ValueError):
            default_client()
    finally:
        earlier.close()


def test_unload_closes_the_client_only(ip, scheduler):
    run(ip, f"c = %dsched connect {scheduler.address_to_clients}")
    c = ip.user_ns["c"]
    ip.run_line_magic("unload_ext", "dask_ipy")
    assert c.status == "closed"
    assert not scheduler.loop.stopped.is_set()
    assert ip.find_line_magic("dsched") is None
    ip.run_line_magic("load_ext", "dask_ipy")
    assert ip.find_line_magic("dsched") is not None


# ---------------------------------------------------------------- a real ipcluster

def client_file(cluster):
    return os.path.join(cluster.profile_dir, "security",
                        f"ipcontroller-{cluster.cluster_id}-client.json")


def engine_threads():
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith("dask-ipy"))


def assert_engines_clean(rc):
    """The engines run on, with no dask_ipy thread or child process left."""
    import psutil

    def clean():
        threads = rc[:].apply_sync(engine_threads)
        pids = rc[:].apply_sync(os.getpid)
        children = []
        for pid in pids:
            for p in psutil.Process(pid).children(recursive=True):
                try:
                    if "ipyparallel.engine.nanny" not in p.cmdline():
                        children.append(p)
                except psutil.NoSuchProcess:
                    pass
        return not any(threads) and not children
    wait_for(clean, timeout=20, interval=0.2, message="engines to be clean")
    assert len(rc.ids) == 2


def test_start_dget_status_stop_on_ipcluster(ip, ipcluster):
    cluster, rc = ipcluster
    r, out = run(ip, f"c = %dsched start --url {client_file(cluster)} -n 2\nc")
    c = ip.user_ns["c"]
    assert isinstance(c, dask_ipy.Client) and r.result is c
    wait_for(lambda: len(c.scheduler_info()["workers"]) == 2, timeout=20,
             message="a worker per engine")
    assert run(ip, "%%dget y\n" + SEED)[0].result == 3
    run(ip, "%%dget y -o seed\n" + SEED)
    assert ip.user_ns["seed"] == 3
    r, _ = run(ip, "%%dget\nimport dask.bag as db\n"
                   "db.from_sequence(range(6), npartitions=3).map(lambda v: v * v)")
    assert r.result == [v * v for v in range(6)]
    r, _ = run(ip, "%%dget --async y\n" + SEED)
    assert isinstance(r.result, dask_ipy.Future) and r.result.result(timeout=20) == 3
    # the task ran in an engine process; its traceback still shows the cell's line
    r, out = run(ip, CELL_ERROR, error=ValueError)
    assert 'raise ValueError(f"exploded on {x}")  # the remote line' in out
    _, out = run(ip, "%dsched")
    assert "2 workers" in out
    # starting again keeps the running one
    r, out = run(ip, "%dsched start")
    assert r.result is c and "already connected" in out
    _, out = run(ip, "%dsched stop")
    assert "stopped" in out and c.status == "closed"
    assert_engines_clean(rc)
    run(ip, "%%dget y\n" + SEED, error=UsageError)


def test_waiting_for_more_engines_than_there_are_says_so(ip, ipcluster):
    cluster, rc = ipcluster
    r, out = run(ip, f"%dsched start --cluster-id {cluster.cluster_id} -n 4 "
                     "--timeout 1", error=UsageError)
    assert "2 of 4 engines up; waiting up to 1 s" in out
    assert "only 2 of 4 engines came up within 1 s" in str(r.exception)
    assert "-n N waits until the ipcluster has N engines" in str(r.exception)


def test_start_new_starts_and_stops_a_local_ipcluster(ip):
    import ipyparallel

    with reaped():          # whatever `%dsched stop` may leave of the ipcluster
        r, out = run(ip, "c = %dsched start --new 2 --scheduler local")
        c = ip.user_ns["c"]
        magics = ip.find_line_magic("dsched").__self__
        cluster = magics.ipcluster
        try:
            assert "started a local ipcluster of 2 engines" in out
            assert len(c.scheduler_info()["workers"]) == 2
            assert run(ip, "%%dget y\n" + SEED)[0].result == 3
        finally:
            _, out = run(ip, "%dsched stop")
    assert "stopped the ipcluster" in out and magics.ipcluster is None
    with pytest.raises((OSError, TimeoutError)):
        ipyparallel.Client(cluster_id=cluster.cluster_id, timeout=1)


def test_start_with_options_on_ipcluster(ip, ipcluster):
    cluster, rc = ipcluster
    r, _ = run(ip, f"c = %dsched start --cluster-id {cluster.cluster_id} --targets 1 "
                   "--nthreads 2 --scheduler local --resources GPU=1")
    c = ip.user_ns["c"]
    try:
        wait_for(lambda: len(c.scheduler_info()["workers"]) == 1, timeout=20,
                 message="one worker")
        (w,) = c.scheduler_info()["workers"].values()
        assert w["nthreads"] == 2 and w["resources"] == {"GPU": 1}
        assert w["pid"] == rc[1].apply_sync(os.getpid)
        assert run(ip, "%%dget y\n" + SEED)[0].result == 3
    finally:
        run(ip, "%dsched stop")
    assert_engines_clean(rc)


def test_start_without_an_ipcluster_is_a_usage_error(ip, ipcluster):
    r, _ = run(ip, "%dsched start --cluster-id no-such-cluster --timeout 1",
               error=UsageError)
    assert "could not connect to an ipcluster" in str(r.exception)
    assert "--new 4" in str(r.exception)
    # With the default timeout it gives up as ipyparallel does, not after 60 s.
    start = time.monotonic()
    run(ip, "%dsched start --cluster-id no-such-cluster", error=UsageError)
    assert time.monotonic() - start < 40
    run(ip, f"%dsched start --cluster-id {ipcluster[0].cluster_id} --targets 7",
        error=UsageError)
