"""The package's public names: `__all__` against the documented list, lazy loading
through `__getattr__`/`__dir__`, `__version__`, and `default_client()`."""

import importlib.metadata
import subprocess
import sys

import pytest

import dask_ipy

pytestmark = pytest.mark.timeout(60)

# The contract (DESIGN.md): code outside this repository imports these names.
DOCUMENTED = {"Scheduler", "Worker", "Client", "Future", "wait", "as_completed",
              "dask_client_from_ipclient", "KilledWorker"}
# dask.distributed's top-level names that code moving over uses.
DISTRIBUTED = {"futures_of", "fire_and_forget", "TimeoutError", "as_completed", "wait",
               "CancelledError", "get_client", "secede", "rejoin", "worker_client",
               "print", "warn", "UploadFile", "Environ", "MultiLock",
               "Reschedule", "UploadDirectory", "InstallPlugin", "PipInstall", "Status",
               "get_task_metadata", "local_client"}
# Defined in the package's own module rather than loaded lazily.
EAGER = {"dask_client_from_ipclient", "progress"}


def test_all_lists_the_documented_names_and_each_one_resolves():
    public = set(dask_ipy.__all__)
    assert len(public) == len(dask_ipy.__all__), "a name listed twice"
    assert DOCUMENTED <= public, DOCUMENTED - public
    assert DISTRIBUTED <= public, DISTRIBUTED - public
    assert public == set(dask_ipy._PUBLIC) | EAGER
    for name in dask_ipy.__all__:
        value = getattr(dask_ipy, name)
        assert value.__name__ == name, (name, value)
    namespace = {}
    exec("from dask_ipy import *", namespace)
    assert set(namespace) - {"__builtins__"} == public


def test_dir_lists_lazy_names_before_they_load_and_unknown_names_fail():
    """In a fresh interpreter: nothing loads for `dir()`, each name loads on use."""
    code = """
import sys, dask_ipy
names = dir(dask_ipy)
assert set(dask_ipy.__all__) <= set(names), set(dask_ipy.__all__) - set(names)
assert "__version__" in names
assert "dask_ipy.client.client" not in sys.modules and "dask" not in sys.modules
assert dask_ipy.Client.__module__ == "dask_ipy.client.client"
assert "dask_ipy.client.client" in sys.modules
try:
    dask_ipy.NoSuchThing
except AttributeError as e:
    assert "NoSuchThing" in str(e)
else:
    raise SystemExit("an unknown name did not raise AttributeError")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=50)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_version_is_the_installed_distributions():
    assert isinstance(dask_ipy.__version__, str)
    assert dask_ipy.__version__ == importlib.metadata.version("dask_ipy")


def test_default_client_is_the_latest_client_made_default():
    from dask_ipy import Client, Scheduler, default_client

    with pytest.raises(ValueError, match="no dask_ipy Client"):
        default_client()
    s = Scheduler()
    first = second = aside = None
    try:
        first = Client(s.address_to_clients)
        assert default_client() is first
        aside = Client(s.address_to_clients, set_as_default=False)
        assert default_client() is first
        second = Client(s.address_to_clients)
        assert default_client() is second
        second.close()
        assert default_client() is first
        first.close()
        with pytest.raises(ValueError, match="no dask_ipy Client"):
            default_client()
    finally:
        for c in (second, aside, first):
            if c is not None:
                c.close()
        s.close()
