"""What code inside a task can find: the worker running it and the task's key (each
pool thread's own), and, outside tasks, the workers living in this process (a worker
inside an ipyparallel engine, for code the engine runs).

`hooks.task_client(worker)` makes the client tasks of ``worker`` use (`get_client`);
the package sets it, since a worker knows nothing of clients.  `task_get` is what dask's
``compute`` calls in a worker process with no scheduler of its own chosen: inside a
task, the worker's client; elsewhere, dask's threads."""

from __future__ import annotations

import threading
import weakref

from .. import hooks

task = threading.local()       # .worker, .key, .seceded on a thread running a task
_workers = []                  # weak references, oldest first
_lock = threading.Lock()


def enter(worker, key):
    task.worker = worker
    task.key = key
    task.seceded = False


def leave():
    """End the task on this thread; returns whether it had seceded."""
    seceded = getattr(task, "seceded", False)
    task.worker = task.key = None
    task.seceded = False
    return seceded


def current_key():
    return getattr(task, "key", None)


def add_worker(worker):
    with _lock:
        _workers[:] = [r for r in _workers if r() is not None]
        _workers.append(weakref.ref(worker))


def get_worker():
    """The worker running the current task; outside a task, the newest worker of
    this process still open (in an engine: the engine's worker)."""
    worker = getattr(task, "worker", None)
    if worker is not None:
        return worker
    with _lock:
        live = [w for w in (r() for r in _workers)
                if w is not None and not w.closed.is_set()]
    if live:
        return live[-1]
    raise ValueError("no dask_ipy worker found: get_worker() works inside a task, or "
                     "in a process running a Worker")


def install():
    """dask's ``compute`` in this process goes through `task_get`, unless a scheduler
    is chosen already (a default Client, say)."""
    import dask

    with _lock:
        if dask.config.get("scheduler", None) is None:
            dask.config.set(scheduler=task_get)


def uninstall():
    """Once no worker is left open here, dask's ``compute`` is as it was."""
    import dask

    with _lock:
        if any(r() is not None and not r().closed.is_set() for r in _workers):
            return
        if dask.config.get("scheduler", None) is task_get:
            dask.config.set(scheduler=None)


def task_get(dsk, keys, **kwargs):
    worker = getattr(task, "worker", None)
    if worker is None:
        import dask.threaded

        return dask.threaded.get(dsk, keys, **kwargs)
    return hooks.task_client(worker).get(dsk, keys, **kwargs)
