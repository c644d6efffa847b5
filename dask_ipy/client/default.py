"""The default client of this process: the Client made default most recently.

Unpickled Futures join it, the notebook layer and `progress` use it, and while a Client
is the default, dask's own ``compute`` runs on it (see `Client`)."""

from __future__ import annotations

import threading

_current = []          # clients made default, most recent last
_lock = threading.Lock()


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
    with _lock:
        _current.append(client)


def remove(client):
    """``client`` is no default any more; the default now (None if none)."""
    with _lock:
        if client in _current:
            _current.remove(client)
        return _current[-1] if _current else None
