"""The shared fixtures: isolated runtime directories, an in-process cluster, a cluster of
real processes per module, and a real ipcluster.  Everything binds 127.0.0.1 on random
ports and is torn down even when a test fails; leftover threads or processes fail the
test.  What they are built from is in helpers.py."""

import os
import tempfile

import pytest

from helpers import TESTS, TIERS, ProcessCluster, local_cluster, started_ipcluster, wait_for


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
            p for p in (TESTS, *TIERS, old["PYTHONPATH"]) if p)
        yield d
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def cluster():
    """(scheduler, [worker, worker], client) in this process, invariants checked."""
    with local_cluster() as parts:
        yield parts


@pytest.fixture
def gate(tmp_path):
    """A file whose creation lets `wait_for_file` tasks finish; made at the end of the
    test whatever happens, so no task is left running."""
    path = tmp_path / "gate"
    yield path
    path.touch()


@pytest.fixture(scope="module")
def ipcluster():
    """A real two-engine ipcluster shared by the tests of one module."""
    with started_ipcluster() as parts:
        yield parts


@pytest.fixture
def own_ipcluster():
    """A real two-engine ipcluster of one test's own: it may kill engines or stop it."""
    with started_ipcluster() as parts:
        yield parts


@pytest.fixture(scope="module")
def pc(request, tmp_path_factory):
    """A process cluster shared by the tests of one module.  A module may set
    ``PROCESS_CLUSTER`` to a dict of `ProcessCluster` options (``nthreads=2``...)."""
    cluster = ProcessCluster(str(tmp_path_factory.mktemp("cluster")),
                             **getattr(request.module, "PROCESS_CLUSTER", {}))
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
