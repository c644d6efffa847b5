"""dask_ipy: a distributed task scheduler for dask graphs and futures over ZeroMQ,
booted on an ipyparallel cluster and at home in the notebook."""

from .client import Client, default_client
from .futures import (CancelledError, Future, KilledWorker, RemoteError, SchedulerLost,
                      as_completed, wait)
from .graph import CycleError, MissingDependency
from .scheduler.server import Scheduler
from .security import Security
from .worker.server import Worker

__version__ = "0.1.0"


def dask_client_from_ipclient(ipclient, targets="all", **options):
    """Start a scheduler and one worker per ipyparallel engine; return a Client."""
    from .ipp import dask_client_from_ipclient as boot

    return boot(ipclient, targets, **options)


def progress(*futures_or_collections, **kwargs):
    """Print a text progress bar until the given Futures or collections are done."""
    from .widget import progress as show

    return show(*futures_or_collections, **kwargs)


def __getattr__(name):
    if name == "Monitor":              # ipywidgets loads only when a widget is wanted
        from .widget import Monitor

        return Monitor
    raise AttributeError(f"module 'dask_ipy' has no attribute {name!r}")


def load_ipython_extension(ip):
    from .magics import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip):
    from .magics import unload_ipython_extension as unload

    unload(ip)


__all__ = ["Scheduler", "Worker", "Client", "Future", "wait", "as_completed",
           "dask_client_from_ipclient", "KilledWorker", "CancelledError", "RemoteError",
           "SchedulerLost", "CycleError", "MissingDependency", "Security",
           "default_client", "Monitor", "progress"]
