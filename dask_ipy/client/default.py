"""The default client of this process: the Client made default most recently, or
inside ``with client.as_current():`` that client (in that thread or task only).

Unpickled Futures join it, the notebook layer and `progress` use it, and while a Client
is the default, dask's own ``compute`` runs on it (see `Client`), ``scheduler=
"distributed"`` too once a Client was made default or current in this process."""

from __future__ import annotations

import contextlib
import contextvars
import threading

import dask

_current = []          # clients made default, most recent last
_context = contextvars.ContextVar("dask_ipy_client", default=None)   # as_current's
_lock = threading.Lock()
_shuffle_set = False   # dataframe.shuffle.method was set by a default client


def default_client():
    client = _default_or_none()
    if client is not None:
        return client
    raise ValueError("No clients found: no dask_ipy Client is running; create one "
                     "with Client(address)")


def _default_or_none():
    """The client of the innermost `as_current` block here, else the default one,
    else None."""
    client = current_context()
    if client is None:
        with _lock:
            client = _current[-1] if _current else None
    return client


def current_context():
    """The client of the innermost `as_current` block here, or None."""
    return _context.get()


@contextlib.contextmanager
def as_current(client, scheduler):
    """``client`` is the default client, and ``scheduler`` dask's, inside the block,
    in this thread or asyncio task."""
    _name_the_distributed_scheduler()
    token = _context.set(client)
    try:
        with dask.config.set(scheduler=scheduler):
            yield client
    finally:
        _context.reset(token)


class _NamedDistributed:
    """dask's ``scheduler="distributed"`` (and "dask.distributed"): the dask_ipy
    client in use here, else dask.distributed's own, as dask would find it.
    dask's ``persist`` asks it to persist (`persist`): the data stays on the
    cluster, as with a client."""

    def __call__(self, dsk, keys, **kwargs):
        client = _default_or_none()
        if client is not None:
            return client.dask_get(dsk, keys, **kwargs)
        return self._other().get(dsk, keys, **kwargs)

    def persist(self, collections, **kwargs):
        client = _default_or_none() or self._other()
        return client.persist(collections, **kwargs)

    @staticmethod
    def _other():
        try:
            from distributed import get_client

            return get_client()
        except (ImportError, ValueError):
            raise RuntimeError("Requested distributed scheduler but no Client "
                               "active.") from None

    def __repr__(self):
        return "<dask_ipy: the default client>"


_named_distributed = _NamedDistributed()


def _name_the_distributed_scheduler():
    """Make ``scheduler="distributed"`` (and "dask.distributed") mean this process's
    dask_ipy client from now on (dask looks its named schedulers up first)."""
    from dask.base import named_schedulers

    for name in ("distributed", "dask.distributed"):
        named_schedulers.setdefault(name, _named_distributed)


def default_clients():
    """The clients made default, most recent last."""
    with _lock:
        return list(_current)


def push(client):
    global _shuffle_set
    _name_the_distributed_scheduler()
    with _lock:
        _current.append(client)
        if dask.config.get("dataframe.shuffle.method", None) is None:
            # dask's own choice without a dask.distributed client is "disk": files in
            # a directory of the machine of one worker, which workers on other
            # machines cannot read (their rows would be lost, silently).
            dask.config.set({"dataframe.shuffle.method": "tasks"})
            _shuffle_set = True


def remove(client):
    """``client`` is no default any more; the default now (None if none)."""
    global _shuffle_set
    with _lock:
        if client in _current:
            _current.remove(client)
        nxt = _current[-1] if _current else None
        if nxt is None and _shuffle_set:
            _shuffle_set = False
            if dask.config.get("dataframe.shuffle.method", None) == "tasks":
                dask.config.set({"dataframe.shuffle.method": None})
        return nxt
