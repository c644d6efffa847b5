"""Shared fixtures: isolated runtime directories, an in-process cluster, a cluster of
real processes, and a real ipcluster.  Everything binds 127.0.0.1 on random ports and
is torn down even when a test fails; leftover threads or processes fail the test."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session", autouse=True)
def isolated_dirs():
    """Connection files, Jupyter and IPython state live in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="dask-ipy-tests-") as d:
        old = {k: os.environ.get(k) for k in
               ("DASK_IPY_RUNTIME_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR",
                "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "PYTHONPATH")}
        os.environ["DASK_IPY_RUNTIME_DIR"] = os.path.join(d, "dask-ipy")
        os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(d, "jupyter-runtime")
        os.environ["IPYTHONDIR"] = os.path.join(d, "ipython")
        os.environ["JUPYTER_CONFIG_DIR"] = os.path.join(d, "jupyter-config")
        # Worker processes import functions defined in test modules by reference.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (TESTS, old["PYTHONPATH"]) if p)
        yield d
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


@contextlib.contextmanager
def local_cluster(scheduler_options=None, worker_options=None, client_options=None):
    """(scheduler, [worker, worker], client) in this process, invariants checked;
    everything is closed and no thread may be left behind."""
    from dask_ipy import Client, Scheduler, Worker

    s = Scheduler(**{"validate": True, **(scheduler_options or {})})
    workers = [Worker(scheduler=s.address_to_workers,
                      **{"validate": True, **(worker_options or {})}) for _ in range(2)]
    c = Client(s.address_to_clients, **(client_options or {}))
    try:
        wait_for(lambda: len(s.state.workers) == 2, message="workers to register")
        yield s, workers, c
    finally:
        c.close()
        for w in workers:
            w.close()
        s.close()
    wait_for(lambda: not dask_ipy_threads(), timeout=5,
             message=lambda: f"threads to stop: {dask_ipy_threads()}")


@pytest.fixture
def cluster():
    """(scheduler, [worker, worker], client) in this process, invariants checked."""
    with local_cluster() as parts:
        yield parts


SCHEDULER_SCRIPT = """
import sys, json
from dask_ipy import Scheduler
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
s = Scheduler(connection_file=sys.argv[1], heartbeat_timeout=float(sys.argv[2]),
              idle_timeout=60, **options)
print("ready", flush=True)
s.wait()
"""

WORKER_SCRIPT = """
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
        p = subprocess.Popen([sys.executable, "-c", script, *args],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
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


@pytest.fixture
def process_cluster(tmp_path):
    pc = ProcessCluster(str(tmp_path))
    try:
        yield pc
    finally:
        pc.close()


@pytest.fixture(scope="module")
def ipcluster():
    """A real two-engine ipcluster with fast heartbeats, in a temporary IPYTHONDIR."""
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=2, load_profile=False, delay=0,
                          controller_args=["--ping=200"], log_level=40)
    rc = cluster.start_and_connect_sync(activate=False)
    rc.wait_for_engines(2, timeout=60)
    try:
        yield cluster, rc
    finally:
        try:
            rc.close()
        finally:
            cluster.stop_cluster_sync()


@pytest.fixture(scope="module")
def pc(tmp_path_factory):
    """A process cluster shared by the tests of one module."""
    cluster = ProcessCluster(str(tmp_path_factory.mktemp("cluster")))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def c(pc):
    """A client of the module's process cluster, starting from an empty scheduler whose
    workers' threads are all free (a task an earlier test let go may still be ending)."""
    client = pc.client()

    def clean():
        info = client.scheduler_info()
        return info["ntasks"] == 0 and not any(w["executing"]
                                               for w in info["workers"].values())
    try:
        wait_for(clean, message="a clean slate")
        yield client
    finally:
        client.close()
