"""Tasks that launch tasks: what code inside a task uses to reach its worker and the
cluster (`get_worker`, `get_client`), and to give its thread slot back while it waits
for the work it launched (`secede`, `rejoin`, `worker_client`, and its former
name `local_client`), with
dask.distributed's names and meaning.

A task's client is one per worker, made on first use and kept until the worker
closes.  It connects to the scheduler's client socket with the worker's own
`Security` (the same key signs both), so nothing new is handed out.  A seceded task
still runs and its result is still to come, but neither its worker nor the scheduler
counts it against the worker's threads: that is what lets a task wait for its own
sub-tasks on a cluster of one-thread workers without a deadlock."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from .client.client import Client
from .client.default import default_client
from .discovery import with_scheme
from .worker import context


def get_worker():
    """The `Worker` running the current task; outside a task, the newest open worker
    of this process (code run by an ipyparallel engine finds the engine's worker).
    ValueError if there is none."""
    return context.get_worker()


def task_client(worker):
    """``worker``'s client for its tasks: made once, reused by every task there."""
    with worker.task_client_lock:
        client = worker.task_client
        if client is not None and client.status != "closed":
            return client
        if worker.clients_address is None:
            raise ValueError(f"worker {worker.address} is not registered with a "
                             "scheduler yet")
        # No task output: the worker's process printed its tasks' already, and this
        # client would print there the output of every task of the cluster (a
        # dask.distributed worker's client does); the user's clients show it.
        client = Client(worker.clients_address, security=worker.security,
                        set_as_default=False, name=f"tasks on {worker.address}",
                        task_output=False)
        worker.task_client = client
        return client


def get_client(address=None, timeout=None, resolve_address=True):
    """Inside a task: a client connected to the worker's scheduler, shared by the
    tasks of that worker.  Elsewhere: the default client, else (code an engine runs)
    the client of this process's worker.  ``timeout`` is accepted for compatibility
    (the connection waits for the scheduler as any Client does).

    With ``address``: that client if it is connected there, else a new client of
    the scheduler at ``address`` (``resolve_address``: accepted, an address is
    taken as it is written)."""
    try:
        client = _found_client()
    except ValueError:
        if address is None:
            raise
        client = None
    if address is None or (client is not None
                           and client.address == with_scheme(address)):
        return client
    return Client(address, timeout=10 if timeout is None else timeout)


def _found_client():
    worker = getattr(context.task, "worker", None)
    if worker is None:
        try:
            return default_client()
        except ValueError:
            try:
                worker = context.get_worker()
            except ValueError:
                # dask.distributed's words, whole (code matches them): make a
                # Client(address) first, or call get_client(address).
                raise ValueError("No global client found and no address "
                                 "provided") from None
    return task_client(worker)


def _task_worker(what):
    worker = getattr(context.task, "worker", None)
    if worker is None:
        raise ValueError(f"{what}() is called from inside a task running on a worker")
    return worker


def secede():
    """Give this task's thread slot back: the worker starts another task in its place
    and the scheduler counts the slot free.  The task goes on running; call `rejoin`
    before heavy work again (or use `worker_client`, which does both)."""
    _task_worker("secede").secede()


def rejoin():
    """Take a thread slot back after `secede`, waiting until one is free."""
    _task_worker("rejoin").rejoin()


@contextmanager
def seceded():
    """The task running on this thread, if any (and not seceded already), seceded
    for the block and rejoined at its end: a blocking `Client.get` inside a task
    (dask's compute there) waits so, as in dask.distributed, leaving its thread slot
    to the work it waits for."""
    worker = getattr(context.task, "worker", None)
    if worker is None or context.task.seceded:
        yield
        return
    worker.secede()
    try:
        yield
    finally:
        worker.rejoin()


@contextmanager
def worker_client(timeout=None, separate_thread=True):
    """The task's client, with the task seceded for the duration of the block (its
    thread slot free for the work it launches), rejoined at its end.

    >>> def fib(n):
    ...     if n < 2:
    ...         return n
    ...     with worker_client() as c:
    ...         a, b = c.submit(fib, n - 1), c.submit(fib, n - 2)
    ...         return a.result() + b.result()
    """
    if separate_thread:
        _task_worker("worker_client")
    client = get_client(timeout=timeout)
    if separate_thread:
        secede()
    try:
        yield client
    finally:
        if separate_thread:
            rejoin()


def local_client(timeout=None, separate_thread=True):
    """`worker_client` under its former name, with a warning."""
    warnings.warn("local_client is the former name of worker_client: use "
                  "worker_client", stacklevel=2)
    return worker_client(timeout, separate_thread)
