"""What the tests share besides fixtures (those are in conftest.py): waiting, clusters
in this process, in processes and on ipyparallel, and the task functions they run.

Task functions live here, at module level, so that worker processes import them by
reference (tests/ and its tier folders are on their PYTHONPATH): keep this module's
imports cheap.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
# The tiers: pure functions and state machines; processes and sockets; ipcluster
# and notebooks; a browser.
TIERS = [os.path.join(TESTS, tier) for tier in ("pure", "cluster", "notebook", "browser")]


# ---------------------------------------------------------------- waiting

def dask_ipy_threads():
    return [t for t in threading.enumerate() if t.name.startswith("dask-ipy")]


def wait_for(predicate, timeout=10.0, interval=0.01, message="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            if callable(message):
                message = message()
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


# ---------------------------------------------------------------- clusters

@contextlib.contextmanager
def silent_port():
    """An address that takes TCP connections (the kernel completes them) and never
    says a word: what a peer behind a black-holing firewall looks like."""
    import socket

    with socket.create_server(("127.0.0.1", 0), backlog=64) as s:
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def local_cluster(scheduler_options=None, worker_options=None, client_options=None,
                  client=True):
    """(scheduler, [worker, worker], client) in this process, invariants checked;
    everything is closed and no thread may be left behind.  With ``client=False``
    there is no client (None), and the threads of clients made meanwhile are the
    caller's to check."""
    from dask_ipy import Client, Scheduler, Worker

    s = Scheduler(**{"validate": True, **(scheduler_options or {})})
    workers = [Worker(scheduler=s.address_to_workers,
                      **{"validate": True, **(worker_options or {})}) for _ in range(2)]
    c = None
    try:
        if client:
            c = Client(s.address_to_clients, **(client_options or {}))
        wait_for(lambda: len(s.state.workers) == 2, message="workers to register")
        yield s, workers, c
    finally:
        if c is not None:
            c.close()
        for w in workers:
            w.close()
        s.close()
    if client:
        wait_for(lambda: not dask_ipy_threads(), timeout=5,
                 message=lambda: f"threads to stop: {dask_ipy_threads()}")


# Each process ends when the test process that started it does, even when that one
# is killed: otherwise a scheduler and its workers keep each other alive, and hold
# the pipes of whoever runs the tests open.
ORPHAN_WATCH = """
import os, threading, time
def _exit_when_orphaned(parent=os.getppid()):
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
threading.Thread(target=_exit_when_orphaned, daemon=True).start()
"""

SCHEDULER_SCRIPT = ORPHAN_WATCH + """
import sys, json
from dask_ipy import Scheduler
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
s = Scheduler(connection_file=sys.argv[1], heartbeat_timeout=float(sys.argv[2]),
              idle_timeout=60, **options)
print("ready", flush=True)
s.wait()
"""

WORKER_SCRIPT = ORPHAN_WATCH + """
import sys, json
from dask_ipy import Worker
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
w = Worker(scheduler=sys.argv[1], nthreads=int(sys.argv[2]), heartbeat_interval=0.2,
           **options)
print(w.address, flush=True)
w.wait()
"""


class ProcessCluster:
    """A scheduler and workers in their own processes, for tests that kill them."""

    def __init__(self, directory, nworkers=2, nthreads=1, heartbeat_timeout=10.0,
                 scheduler_options=None, worker_options=None):
        """`scheduler_options`, `worker_options`: more keyword arguments of Scheduler
        and of each Worker (JSON-able)."""
        self.directory = directory
        self.file = os.path.join(directory, f"scheduler-{time.monotonic_ns()}.json")
        self.heartbeat_timeout = heartbeat_timeout
        self.nthreads = nthreads
        self.workers = []
        self.scheduler = self._spawn(SCHEDULER_SCRIPT, self.file, str(heartbeat_timeout),
                                     json.dumps(scheduler_options or {}))
        try:
            for _ in range(nworkers):
                self.workers.append(self.start_worker(**(worker_options or {})))
        except BaseException:
            self.close()
            raise

    def _spawn(self, script, *args):
        # Killed at the end, they cannot remove their temporary files: those go to
        # the test's directory, removed with it.
        p = subprocess.Popen([sys.executable, "-c", script, *args],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                             env={**os.environ, "TMPDIR": self.directory})
        line = p.stdout.readline()
        if not line:
            p.kill()
            raise RuntimeError("process did not start")
        p.first_line = line.strip()
        return p

    def start_worker(self, **options):
        """A worker process; `options`: more keyword arguments of Worker (JSON-able)."""
        return self._spawn(WORKER_SCRIPT, self.file, str(self.nthreads),
                           json.dumps(options))

    def client(self, **kw):
        from dask_ipy import Client

        c = Client(self.file, **kw)
        wait_for(lambda: len(c.scheduler_info()["workers"]) >= len(
            [w for w in self.workers if w.poll() is None]), message="workers")
        return c

    def close(self):
        for p in self.workers + [self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            p.stdout.close()


@contextlib.contextmanager
def processes(tmp_path, **options):
    """(ProcessCluster, Client); all killed and closed at the end, even on failure."""
    threads = set(dask_ipy_threads())          # those of clients alive before
    pc = ProcessCluster(str(tmp_path), **options)
    c = None
    try:
        c = pc.client()
        yield pc, c
    finally:
        if c is not None:
            c.close()
        pc.close()
        wait_for(lambda: set(dask_ipy_threads()) <= threads, timeout=5,
                 message="threads to stop")


def read_info(proc, last=None):
    """The ``name: value`` lines a ``dask-ipy`` process prints as it starts, read up
    to the ``last`` name (a scheduler's address_to_clients, a worker's scheduler)."""
    info = {}
    last = last or ("address_to_clients" if "scheduler" in proc.args else "scheduler")
    while last not in info:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"{proc.args} exited early: {info}")
        name, sep, value = line.partition(":")
        if sep:
            info[name.strip()] = value.strip()
    return info


def kill_tree(pid):
    """Kill a process and its children (a supervisor and its worker)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    kill_all(procs)


def kill_all(procs, timeout=10):
    """Kill the psutil processes ``procs`` (those still there) and reap them."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)


# Every process a test starts inherits a marker in its environment, however deep and
# even once orphaned (the children of an ipyparallel controller its launcher killed
# belong to init): the one sure way to find them all at the end.
MARKER = "DASK_IPY_TEST_MARKER"


def marked(marker):
    """The processes (but this one) whose environment carries ``marker``."""
    import psutil

    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get(MARKER) == marker:
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


def kill_marked(marker, grace=20):
    """Give the processes carrying ``marker`` ``grace`` seconds to end by themselves,
    kill those left and return their command lines."""
    import psutil

    deadline = time.monotonic() + grace
    left = marked(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = marked(marker)
    commands = []
    for p in left:
        try:
            commands.append(p.cmdline())
        except psutil.Error:
            pass
    kill_all(left)
    return commands


@contextlib.contextmanager
def reaped(grace=10):
    """A block whose processes (all those started in it, and theirs) carry a new
    marker, yielded; at the end, even on failure or timeout, those still running get
    ``grace`` seconds to end and are then killed."""
    marker = uuid.uuid4().hex
    old = os.environ.get(MARKER)
    os.environ[MARKER] = marker
    try:
        yield marker
    finally:
        if old is None:
            del os.environ[MARKER]
        else:
            os.environ[MARKER] = old
        kill_marked(marker, grace)


@contextlib.contextmanager
def started_ipcluster():
    """A real two-engine ipcluster with fast heartbeats (in the IPYTHONDIR of the test
    session): (cluster, ipyparallel client); stopped at the end."""
    import ipyparallel as ipp
    import psutil

    cluster = ipp.Cluster(n=2, load_profile=False, delay=0,
                          controller_args=["--ping=200"], log_level=40)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    started = []                    # the controller and engines this start made
    rc = None
    try:
        try:
            rc = cluster.start_and_connect_sync(activate=False)
            rc.wait_for_engines(2, timeout=60)
        finally:
            started = [p for p in me.children(recursive=True) if p.pid not in before]
        yield cluster, rc
    finally:
        try:
            if rc is not None:
                rc.close()
        finally:
            try:
                cluster.stop_cluster_sync()
            finally:
                # A test that killed engines, or stopped the cluster its own way,
                # can leave the controller without anyone to stop it.
                kill_all(psutil.wait_procs(started, timeout=5)[1])


# ---------------------------------------------------------------- task functions

def inc(x):
    return x + 1


def dec(x):
    return x - 1


def add(x, y):
    return x + y


async def add_later(x, y, delay=0.01):
    """`add` as an async function."""
    import asyncio

    await asyncio.sleep(delay)
    return x + y


async def fail_later(x=None):
    import asyncio

    await asyncio.sleep(0)
    raise Boom(f"failed later on {x!r}")


def double(x):
    return 2 * x


def total(*args, **kwargs):
    """Sum of everything passed, walking lists, tuples and dict values."""
    def walk(obj):
        if isinstance(obj, (list, tuple, set)):
            return sum(walk(x) for x in obj)
        if isinstance(obj, dict):
            return sum(walk(x) for x in obj.values())
        return obj
    return walk(args) + walk(kwargs)


def identity(x):
    return x


def slow_inc(x, delay=0.2):
    time.sleep(delay)
    return x + 1


def sleep(seconds, value=None):
    time.sleep(seconds)
    return value


def wait_for_file(path, timeout=30.0, value=None):
    """Block until ``path`` exists: a task the test lets finish when it wants."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


class Boom(ValueError):
    """An exception type of our own, to check that types survive the trip."""


def fail(x=None):
    raise Boom(f"failed on {x!r}")


def fail_deeply(x):
    return _inner_failure(x)


def _inner_failure(x):
    raise ZeroDivisionError(f"inner failure with {x}")


def fail_until(path, succeed_on):
    """Fail until this has been called ``succeed_on`` times (counted in a file)."""
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        calls = len(f.read())
    if calls < succeed_on:
        raise RuntimeError(f"attempt {calls} fails")
    return calls


def record(path, value):
    """Append a line to ``path`` (one per execution) and return ``value``."""
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


def count_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def pid():
    return os.getpid()


def where(x=None):
    """The process and thread that ran this task."""
    return os.getpid(), threading.get_ident()


def array_of(nbytes, fill=1):
    import numpy as np

    return np.full(nbytes, fill, dtype="u1")


def array_sum(a):
    return int(a.sum())


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def make_unpicklable(x=None):
    return Unpicklable()


def length(x):
    return len(x)


def worker_keys(dask_worker=None):
    """For Client.run: the keys held by the worker in this process."""
    import gc

    from dask_ipy import Worker

    return sorted(str(k) for w in gc.get_objects() if isinstance(w, Worker)
                  for k in w.data)


class NeedsTwo(Exception):
    """Pickle rebuilds exceptions from ``args``: it cannot rebuild this one (nor
    keep its attribute)."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")
        self.total = a + b


class SlotsOnly(Exception):
    """Rebuilt by pickle without its slot, so its ``__str__`` fails afterwards (as
    numpy's AxisError does)."""

    __slots__ = ("detail",)

    def __init__(self, detail):
        super().__init__()
        self.detail = detail

    def __str__(self):
        return f"detail is {self.detail}"


class KeywordOnly(Exception):
    """Pickle cannot rebuild this one either: its argument is keyword-only."""

    def __init__(self, *, code):
        super().__init__(f"code {code}")
        self.code = code


def raise_needs_two():
    raise NeedsTwo(1, 2)


def raise_chained():
    """NeedsTwo(3, 4) raised from a KeyError while handling NeedsTwo(1, 2)."""
    try:
        raise NeedsTwo(1, 2)
    except NeedsTwo:
        raise NeedsTwo(3, 4) from KeyError("b")


def raise_keyword_only():
    raise KeywordOnly(code=3)


def raise_base_exception(kind, *args):
    """Raise SystemExit(*args) or KeyboardInterrupt(*args): not an Exception."""
    raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}[kind](*args)


def recurse(n):
    return recurse(n + 1)


def raise_slots_only():
    raise SlotsOnly("lost")


def die(*_):
    """Kill the worker process running this task, at once."""
    os._exit(1)


def exit_with(code):
    """End the worker process running this task with exit code ``code``."""
    os._exit(code)


def segfault(*_):
    """Crash the worker process running this task: a read at address 0."""
    import ctypes

    ctypes.string_at(0)


def sigkill(*_):
    """The worker process running this task is killed, as the kernel's
    out-of-memory killer kills."""
    os.kill(os.getpid(), signal.SIGKILL)


def fail_huge(nbytes):
    raise Boom("x" * nbytes)


def make_lock(*_):
    return threading.Lock()


def big_array(nbytes):
    """`nbytes` bytes, first 1 and last 7.  Only those two are written: writing every
    page of a gigabyte costs seconds and proves nothing more."""
    import numpy as np

    a = np.empty(nbytes, dtype=np.uint8)
    a[0] = 1
    a[-1] = 7
    return a


def array_summary(a):
    return int(a.nbytes), int(a[0]), int(a[-1])


def payload(nbytes, fill=1):
    """`nbytes` bytes whose value is easy to check."""
    return bytes([fill]) * nbytes


def type_name(x):
    return type(x).__name__


def block_until_file(path, value, timeout=60.0):
    """Return `value` once `path` exists (a task that waits for the test to release it)."""
    return wait_for_file(path, timeout, value)


def _record(log_dir, kind):
    """Leave a file per execution: counting them counts runs across processes."""
    if log_dir is not None:
        with open(os.path.join(log_dir, f"{kind}-{uuid.uuid4().hex}"), "w"):
            pass


def runs(log_dir, kind):
    return sum(1 for name in os.listdir(log_dir) if name.startswith(kind + "-"))


def leaf(log_dir, i):
    _record(log_dir, "leaf")
    return i


def gated_total(log_dir, gate, *parts):
    """Sum `parts` once `gate` exists (when `gate` is given)."""
    _record(log_dir, "sum")
    if gate is not None:
        block_until_file(gate, None)
    return sum(parts)


def tree_reduction(leaves, fanin=4, prefix="tree", log_dir=None, gate=None):
    """A classic dask graph: `leaves` leaf tasks summed `fanin` at a time up to one root.

    Second-level sums wait for the file `gate`, so a test can hold the reduction in
    the middle (there are leaves / fanin**2 of them: as many threads they may hold).
    Every leaf and sum leaves a file in `log_dir` when it runs.  Returns (graph, root
    key, expected value, first-level keys); leaf i holds i, so the root is the sum of
    range(leaves).
    """
    dsk = {}
    level = []
    for i in range(leaves):
        key = (f"{prefix}-leaf", i)
        dsk[key] = (leaf, log_dir, i)
        level.append(key)
    depth = 0
    first = None
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), fanin):
            key = (f"{prefix}-sum-{depth}", j // fanin)
            dsk[key] = (gated_total, log_dir, gate if depth == 2 else None,
                        *level[j:j + fanin])
            nxt.append(key)
        level = nxt
        if first is None:
            first = list(level)
    return dsk, level[0], sum(range(leaves)), first


def mark_and_wait(marker_dir, release, value):
    """Leave a marker naming this worker process, then wait for `release`."""
    with open(os.path.join(marker_dir, f"{os.getpid()}-{value}"), "w"):
        pass
    return block_until_file(release, value)


def markers_of(marker_dir, pid):
    return [n for n in os.listdir(marker_dir) if n.startswith(f"{pid}-")]


class SlowToSend:
    """A value that a worker takes `delay` seconds to send to a peer.

    Pickling it in a worker's I/O thread (which serves peers) first leaves a file
    named after the worker's process id: the test knows who is sending, and when.
    Elsewhere (the client scattering it) it pickles at once.
    """

    def __init__(self, value, marker_dir, delay):
        self.value = value
        self.marker_dir = marker_dir
        self.delay = delay

    def __reduce__(self):
        if threading.current_thread().name == "dask-ipy-worker":
            path = os.path.join(self.marker_dir, f"sending-{os.getpid()}")
            with open(path, "w"):
                pass
            time.sleep(self.delay)
        return (SlowToSend, (self.value, self.marker_dir, self.delay))


def make_slow_to_send(value, marker_dir, delay):
    return SlowToSend(value, marker_dir, delay)


def unwrap(x):
    return x.value


def worker_stats():
    """What the Worker objects of this process hold (for Client.run)."""
    import gc

    from dask_ipy.worker.server import Worker

    found = [o for o in gc.get_objects() if isinstance(o, Worker)]
    return [{"data": len(w.data), "tasks": len(w.state.tasks),
             "executing": len(w.state.executing)} for w in found]


# A pickle whose loading would create a file: the proof that nothing received from the
# network was unpickled is that the file never appears.
class CreateFileOnLoad:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def combine(seed, *inputs):
    """A cheap task for random graphs: a small number from its seed and its inputs."""
    return (seed * 31 + sum(inputs)) % 1_000_003


def slow_combine(delay, seed, *inputs):
    """`combine` that first sleeps `delay` seconds."""
    time.sleep(delay)
    return combine(seed, *inputs)


def random_graph(rng, ntasks, prefix, delay=0.0):
    """A random DAG of `ntasks` `combine` tasks, each on up to four earlier ones, in
    the legacy tuple form; returns (graph, output keys: those nobody depends on).
    With `delay`, each task first sleeps between 0 and twice that many seconds."""
    dsk = {}
    keys = []
    used = set()
    for i in range(ntasks):
        key = (prefix, i)
        ndeps = min(len(keys), rng.choice((0, 1, 1, 2, 2, 3, 4)))
        deps = rng.sample(keys[-50:], ndeps) if ndeps else []
        used.update(deps)
        if delay:
            dsk[key] = (slow_combine, rng.random() * 2 * delay, rng.randrange(1000), *deps)
        else:
            dsk[key] = (combine, rng.randrange(1000), *deps)
        keys.append(key)
    return dsk, [k for k in keys if k not in used]


# ---------------------------------------------------------------- plugins and code on workers
# Plugin classes are imported by reference in worker and scheduler processes, so they
# live here; this module imports no dask (a scheduler process must not).

from dask_ipy.plugins import SchedulerPlugin, WorkerPlugin  # noqa: E402


class RecordingSchedulerPlugin(SchedulerPlugin):
    """Keeps every event the scheduler reports, in order."""

    name = "recorder"

    def __init__(self):
        self.events = []
        self.graphs = []           # (annotations, {key: priority}) of each graph

    def start(self, scheduler):
        self.events.append(("start", scheduler.address))

    def transition(self, key, start, finish, *args, stimulus_id, **kwargs):
        extra = [kwargs] if kwargs else []          # where a task ended, and how
        self.events.append(("transition", key, start, finish, *extra))

    def add_worker(self, scheduler, worker):
        self.events.append(("add_worker", worker))

    def remove_worker(self, scheduler, worker, *, stimulus_id, **kwargs):
        self.events.append(("remove_worker", worker))

    def update_graph(self, scheduler, *, client, keys, tasks, annotations, priority,
                     **kwargs):
        self.events.append(("update_graph", sorted(map(str, keys))))
        self.graphs.append((annotations, {str(k): p for k, p in priority.items()}))


def plugin_events(name, dask_scheduler):
    """For run_on_scheduler: the events a RecordingSchedulerPlugin kept."""
    return list(dask_scheduler.plugins[name].events)


def plugin_graphs(name, dask_scheduler):
    """For run_on_scheduler: the graphs' annotations and priorities it was told of."""
    return list(dask_scheduler.plugins[name].graphs)


def dask_modules():
    """The dask modules (not dask_ipy's) this process has imported."""
    return sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))


class MarkingWorkerPlugin(WorkerPlugin):
    """Leaves a file per setup and per teardown in `directory` (named by the worker's
    process id), and keeps the transitions it sees."""

    def __init__(self, directory, name="marker"):
        self.directory = directory
        self.name = name

    def _mark(self, what):
        path = os.path.join(self.directory, f"{what}-{os.getpid()}-{uuid.uuid4().hex}")
        with open(path, "w"):
            pass

    def setup(self, worker):
        self.transitions = []
        self._mark("setup")

    def teardown(self, worker):
        self._mark("teardown")

    def transition(self, key, start, finish, **kwargs):
        self.transitions.append((key, start, finish))


def marks(directory, what, pid=None):
    prefix = f"{what}-" if pid is None else f"{what}-{pid}-"
    return sum(1 for name in os.listdir(directory) if name.startswith(prefix))


def worker_transitions(name, dask_worker):
    """For Client.run: the transitions a MarkingWorkerPlugin saw on this worker."""
    return list(dask_worker.plugins[name].transitions)


def module_value(name):
    """`VALUE` of the module `name`, imported here (an uploaded file)."""
    import importlib

    return importlib.import_module(name).VALUE


def relayed_bytes(dask_scheduler):
    """Bytes the scheduler's relay has passed on to clients so far."""
    return dask_scheduler.relay.relayed


def log_message(logger_name, text, level=30):
    import logging

    logging.getLogger(logger_name).log(level, "%s from a task", text)
    return text


# ---------------------------------------------------------------- memory

MiB = 2**20


def filled_mib(i, mib=10):
    """An array of ``mib`` MiB filled with ``i``."""
    import numpy as np

    return np.full(mib * MiB // 8, i, dtype="f8")


def logged_mib(log_dir, i, mib=10):
    """`filled_mib`, each run counted (see `runs`)."""
    _record(log_dir, "filled")
    return filled_mib(i, mib)


def grow(step_mib=20, up_to_mib=4096):
    """Allocate step by step (a runaway): only a stop for memory ends it early."""
    import numpy as np

    held = []
    for _ in range(up_to_mib // step_mib):
        held.append(np.ones(step_mib * MiB // 8))
    return len(held)


def allocate(mib):
    """One allocation in one call."""
    import numpy as np

    return float(np.ones(mib * MiB // 8).sum())


def hold_memory(mib):
    """Keep ``mib`` MiB alive outside any result (unmanaged memory)."""
    import builtins

    import numpy as np

    builtins._dask_ipy_test_held = np.ones(mib * MiB // 8)
    return mib


def drop_in_a_cycle(mib):
    """Leave ``mib`` MiB behind in a reference cycle that nothing reaches, in the
    collector's oldest generation: freed only by a full collection."""
    import gc

    import numpy as np

    cycle = {"data": np.ones(mib * MiB // 8)}
    cycle["self"] = cycle
    gc.collect()                # survived: the oldest generation now
    return mib


def collected(dask_worker):
    """For Client.run: whether the worker's memory watch has run the collector."""
    return dask_worker.monitor.collector.started is not None


def release_memory():
    import builtins

    from dask_ipy.worker.system import malloc_trim

    builtins.__dict__.pop("_dask_ipy_test_held", None)
    malloc_trim()
    return True


def blas_threads(*ignored):
    """The thread counts of the BLAS pools loaded in this process (numpy's, loaded by
    the first call: a worker caps the pools it finds when its tasks start)."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})


def hold_to_pause(pid, limit):
    """MiB to hold in process ``pid`` so that it lands between its pause and
    terminate fractions, whatever it uses already: measured once its memory is low
    and steady (what an earlier task freed may take a moment to go)."""
    import psutil

    proc = psutil.Process(pid)

    def steady():
        before = proc.memory_info().rss
        time.sleep(0.1)
        after = proc.memory_info().rss
        return after < 0.7 * limit and abs(after - before) < 4 * MiB
    wait_for(steady, timeout=30, message=lambda: f"memory to settle below "
             f"{0.7 * limit / MiB:.0f} MiB: RSS {proc.memory_info().rss / MiB:.0f} MiB")
    return int((0.875 * limit - proc.memory_info().rss) // MiB)


def alone(path, seconds=0.05):
    """Hold ``path`` (created exclusively) for a moment: False if another task held
    it meanwhile, i.e. two such tasks ran at the same time."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    try:
        time.sleep(seconds)
    finally:
        os.close(fd)
        os.unlink(path)
    return True


# ---------------------------------------------------------------- tasks that launch tasks

def fib(n):
    """Recursive Fibonacci, each call a task that waits for its two sub-tasks with
    its thread slot given back (a deadlock on one-thread workers otherwise)."""
    from dask_ipy import worker_client

    if n < 2:
        return n
    with worker_client() as c:
        a, b = c.submit(fib, n - 1), c.submit(fib, n - 2)
        return a.result() + b.result()


def fib_holding_thread(n):
    """The same, but the waiting task keeps its thread."""
    from dask_ipy import get_client

    if n < 2:
        return n
    c = get_client()
    a, b = c.submit(fib_holding_thread, n - 1), c.submit(fib_holding_thread, n - 2)
    return a.result(timeout=5) + b.result(timeout=5)


def scatter_and_sum(values):
    """Scatter data from inside a task and compute on it elsewhere."""
    from dask_ipy import get_client, secede, rejoin

    c = get_client()
    parts = c.scatter(list(values))
    totals = c.map(inc, parts)
    secede()
    out = sum(c.gather(totals))
    rejoin()
    return out


def compute_inside(n):
    """dask.compute inside a task: runs on the cluster, through the worker's client."""
    import dask
    import dask.bag as db

    from dask_ipy import get_worker, worker_client

    with worker_client():
        (total,) = dask.compute(db.from_sequence(range(n), npartitions=4).map(inc).sum())
    return total, get_worker().address


def task_client_identity(_=None):
    from dask_ipy import get_client, get_worker

    return id(get_client()), get_worker().address


# ---------------------------------------------------------------- actors

class Counter:
    """A stateful object for actor tests."""

    n = 0

    def __init__(self, start=0):
        self.n = start

    def increment(self, by=1):
        self.n += by
        return self.n

    def where(self):
        return os.getpid()

    def fail(self):
        raise Boom("actor says no")


def call_actor(counter, times):
    """A task calling an actor it was given: its values, one at a time."""
    return [counter.increment().result() for _ in range(times)]


class Caller:
    """An actor whose methods call actors, itself among them, through handles."""

    def __init__(self):
        self.seen = []

    def call(self, other, times=1):
        return [other.increment().result(timeout=30) for _ in range(times)]

    def record(self, x):
        self.seen.append(x)
        return len(self.seen)

    def record_through(self, me, x):
        """Calls its own actor: a method, then an attribute."""
        n = me.record(x).result(timeout=30)
        return n, me.seen

    def fail_through(self, me):
        return me.fail().result(timeout=30)

    def fail(self):
        raise Boom("caller says no")

    def wait_for_file(self, path, timeout=60):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {path}")
            time.sleep(0.01)
        return len(self.seen)


class AsyncCounter:
    """An actor of ``async def`` methods."""

    n = 0

    async def increment(self, by=1):
        import asyncio

        await asyncio.sleep(0)
        self.n += by
        return self.n

    async def wait_open(self):
        await self._opened().wait()
        return "opened"

    async def open(self):
        self._opened().set()
        return "open"

    def _opened(self):
        import asyncio

        if "opened" not in self.__dict__:
            self.opened = asyncio.Event()
        return self.opened

    async def fail(self):
        import asyncio

        await asyncio.sleep(0)
        raise Boom("async actor says no")

    async def ask(self, other):
        """Awaits a call to another actor."""
        return await other.increment()

    async def twice(self, me):
        """Awaits two calls to its own actor."""
        return [await me.increment(), await me.increment()]

    def increment_through(self, me):
        """A plain method waiting on an async one of its own actor."""
        return me.increment().result(timeout=30)

    async def count_through(self, me):
        """Awaits a plain method of its own actor."""
        return await me.count()

    def count(self):
        return self.n


def fail_inside_worker_client(x):
    """An error inside worker_client's block: it still rejoins, and the error is the
    task's."""
    from dask_ipy import worker_client

    with worker_client() as c:
        c.submit(inc, x).result()
        raise Boom(f"failed after launching {x}")


def spin(seconds, value=None):
    """Keep a thread busy in Python code (the profiler sees this function)."""
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    return value


def spin_elsewhere(seconds, value=None):
    """The same work under another name, for tests that tell two tasks apart."""
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    return value


def log_worker_event(topic, msg):
    """Log an event from inside a task, as a worker (`Worker.log_event`)."""
    import dask_ipy

    dask_ipy.get_worker().log_event(topic, msg)
    return msg
