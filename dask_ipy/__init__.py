"""dask_ipy: a distributed task scheduler for dask graphs and futures over ZeroMQ,
booted on an ipyparallel cluster and at home in the notebook."""

import importlib
import sys

# Public names and the modules that define them.  They load on first use, so a
# process that is only a scheduler never imports dask or the client machinery.
_PUBLIC = {
    "Scheduler": ".scheduler.server",
    "Worker": ".worker.server",
    "Client": ".client.client",
    "LocalCluster": ".local",
    "default_client": ".client.default",
    "Future": ".client.futures",
    "wait": ".client.futures",
    "as_completed": ".client.futures",
    "futures_of": ".client.futures",
    "fire_and_forget": ".client.futures",
    "TimeoutError": ".errors",
    "KilledWorker": ".errors",
    "Reschedule": ".errors",
    "MemoryLimitExceeded": ".errors",
    "PausedWorkerWarning": ".errors",
    "CancelledError": ".client.futures",
    "FutureCancelledError": ".client.futures",
    "FuturesCancelledError": ".client.futures",
    "CancelledFuturesGroup": ".client.futures",
    "RemoteError": ".errors",
    "SchedulerLost": ".errors",
    "TransferError": ".errors",
    "CycleError": ".errors",
    "MissingDependency": ".errors",
    "Security": ".security",
    "WorkerPlugin": ".plugins",
    "SchedulerPlugin": ".plugins",
    "UploadFile": ".plugins",
    "Environ": ".plugins",
    "UploadDirectory": ".plugins",
    "InstallPlugin": ".plugins",
    "PipInstall": ".plugins",
    "Status": ".status",
    "get_task_stream": ".client.observe",
    "get_task_metadata": ".client.observe",
    "performance_report": ".client.observe",
    "Monitor": ".notebook.widget",              # ipywidgets loads only when a widget is wanted
    "get_worker": ".dynamic",
    "get_client": ".dynamic",
    "secede": ".dynamic",
    "rejoin": ".dynamic",
    "worker_client": ".dynamic",
    "local_client": ".dynamic",
    "Actor": ".client.actors",
    "ActorFuture": ".client.actors",
    "ActorLost": ".errors",
    "ClosedClientError": ".errors",
    "Variable": ".client.coordination",
    "Queue": ".client.coordination",
    "Lock": ".client.coordination",
    "Semaphore": ".client.coordination",
    "Event": ".client.coordination",
    "MultiLock": ".client.coordination",
    "print": ".worker.printing",
    "warn": ".worker.printing",
}

__version__ = "0.1.0"

from . import hooks as _hooks  # noqa: E402

if "dask" in sys.modules:
    # dask-ipy.* settings readable through dask.config at once; a scheduler process,
    # which never imports dask, skips this.
    from . import config  # noqa: F401


def _task_client(worker):
    from .dynamic import task_client

    return task_client(worker)


def _task_host():
    from .worker import context

    worker = getattr(context.task, "worker", None)
    if worker is None:
        raise ValueError("not inside a task running on a worker")
    return worker, context.current_key()


def _current_client():
    from .dynamic import get_client

    return get_client()


def _seceded():
    from .dynamic import seceded

    return seceded()


def _actor_call_here(key, kind, name, args, kwargs):
    from .worker.actors import call_here

    return call_here(key, kind, name, args, kwargs)


def _local_cluster(**kwargs):
    from .local import LocalCluster

    return LocalCluster(**kwargs)


_hooks.task_client = _task_client
_hooks.local_cluster = _local_cluster
_hooks.actor_call_here = _actor_call_here
_hooks.task_host = _task_host
_hooks.current_client = _current_client
_hooks.seceded = _seceded


def dask_client_from_ipclient(ipclient, targets="all", **options):
    """Start a scheduler and one worker per ipyparallel engine; return a Client."""
    from .bootstrap import dask_client_from_ipclient as boot

    return boot(ipclient, targets, **options)


def progress(*futures_or_collections, **kwargs):
    """Print a text progress bar until the given Futures or collections are done."""
    from .notebook.widget import progress as show

    return show(*futures_or_collections, **kwargs)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'dask_ipy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


def load_ipython_extension(ip):
    from .notebook.magics import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip):
    from .notebook.magics import unload_ipython_extension as unload

    unload(ip)


__all__ = ["Scheduler", "Worker", "Client", "Future", "wait", "as_completed",
           "dask_client_from_ipclient", "KilledWorker", "Reschedule", "MemoryLimitExceeded",
           "PausedWorkerWarning", "CancelledError", "FutureCancelledError",
           "FuturesCancelledError", "CancelledFuturesGroup", "RemoteError", "LocalCluster",
           "SchedulerLost", "TransferError", "CycleError", "MissingDependency", "Security",
           "default_client", "Monitor", "progress", "WorkerPlugin", "SchedulerPlugin",
           "UploadFile", "Environ", "UploadDirectory", "InstallPlugin", "PipInstall",
           "Status", "get_task_stream", "get_task_metadata", "performance_report",
           "get_worker", "get_client", "secede", "rejoin", "worker_client",
           "local_client", "Actor", "ActorFuture", "ActorLost",
           "futures_of", "fire_and_forget", "TimeoutError", "ClosedClientError",
           "Variable", "Queue", "Lock", "Semaphore", "Event", "MultiLock", "print",
           "warn"]
