"""The default client of this process: the Client made default most recently.

Unpickled Futures join it, the notebook layer and `progress` use it, and while a Client
is the default, dask's own ``compute`` runs on it (see `Client`)."""

from __future__ import annotations

import threading

import dask

_current = []          # clients made default, most recent last
_lock = threading.Lock()
_shuffle_set = False   # dataframe.shuffle.method was set by a default client


def default_client():
    with _lock:
        if _current:
            return _current[-1]
    raise ValueError("no dask_ipy Client is running; create one with Client(address)")


def default_clients():
    """The clients made default, most recent last."""
    with _lock:
        return list(_current)


def push(client):
    global _shuffle_set
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
