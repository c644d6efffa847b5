"""The cluster's state as plain data, for debugging: `Client.dump_cluster_state` and
`Client.nbytes`.

    client ── run_on_scheduler(scheduler_state) ──▶ the scheduler's tasks, workers,
                                                    clients, groups and latest logs
           ── run(worker_state) ─────────────────▶ each worker's tasks, data and
                                                    logs, read on its I/O thread
           ── write(state, filename, format) ────▶ filename.msgpack.gz | .yaml

Everything is msgpack- and YAML-able: keys are written as text (``str(key)``), sets
and tuples as lists, and user data and functions (run specs, results, pickled
exceptions) are left out; an error is its text.  The scheduler's side imports no
dask (a scheduler process never does).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import os

from .keys import key_prefix
from .versions import versions

FORMATS = {"msgpack": ".msgpack.gz", "yaml": ".yaml"}


def _text(ident):
    """An id (bytes on the wire), a holder or a name as text."""
    return ident.decode() if isinstance(ident, bytes) else str(ident)


def _keys(tasks):
    return sorted(str(ts.key) for ts in tasks)


def _error(error):
    """A task's error record as text only (its pickles stay out)."""
    if error is None:
        return None
    return {"type": error.get("type"), "text": error.get("text"),
            "traceback": error.get("traceback_text")}


def _scheduler_task(ts):
    return {
        "key": str(ts.key), "state": ts.state, "group": ts.group.name,
        "priority": list(ts.priority), "dependencies": _keys(ts.dependencies),
        "dependents": _keys(ts.dependents), "waiting_on": _keys(ts.waiting_on),
        "waiters": _keys(ts.waiters), "who_has": sorted(ws.address for ws in ts.who_has),
        "who_wants": sorted(map(_text, ts.who_wants)),
        "processing_on": None if ts.processing_on is None else ts.processing_on.address,
        "nbytes": ts.nbytes, "type": ts.type, "retries": ts.retries,
        "suspicious": ts.suspicious,
        "restrictions": None if ts.restrictions is None else sorted(ts.restrictions),
        "loose": ts.loose, "resources": ts.resources, "error": _error(ts.error),
    }


def _scheduler_worker(ws):
    return {
        "id": _text(ws.id), "address": ws.address, "name": _text(ws.name),
        "host": ws.host, "pid": ws.pid, "status": ws.status, "nthreads": ws.nthreads,
        "memory_limit": ws.memory_limit, "nbytes": ws.nbytes,
        "occupancy": ws.occupancy, "last_seen": ws.last_seen,
        "processing": _keys(ws.processing), "executing": _keys(ws.executing),
        "seceded": _keys(ws.seceded), "has_what": _keys(ws.has_what),
        "unreachable": sorted(w.address for w in ws.unreachable),
        "resources": dict(ws.resources), "metrics": dict(ws.metrics),
        "local_directory": ws.local_directory,
    }


def scheduler_state(dask_scheduler):
    """The scheduler's state (run in its process, on its I/O thread)."""
    s = dask_scheduler
    return {
        "id": _text(s.id), "address_to_clients": s.address_to_clients,
        "address_to_workers": s.address_to_workers, "started": s.started,
        "tasks": {str(k): _scheduler_task(ts) for k, ts in s.tasks.items()},
        "workers": {a: _scheduler_worker(ws) for a, ws in s.workers.items()},
        "clients": {_text(cid): {"wants_what": _keys(cs.wants_what)}
                    for cid, cs in s.clients.items()},
        "task_groups": {name: {"total": tg.total, "done": tg.done, "erred": tg.erred,
                               "duration": tg.duration, "nbytes": tg.nbytes,
                               "states": dict(tg.states)}
                        for name, tg in s.state.groups.items()},
        "logs": [list(line) for line in s.get_logs()],
        "versions": versions(),
    }


def _worker_task(ts):
    return {
        "key": str(ts.key), "state": ts.state, "priority": list(ts.priority),
        "dependencies": sorted(str(k) for k in ts.dependencies),
        "dependents": sorted(map(str, ts.dependents)),
        "waiting_for": sorted(map(str, ts.waiting_for)),
        "who_has": sorted(ts.who_has), "nbytes": ts.nbytes, "computed": ts.computed,
        "resources": ts.resources,
    }


def _worker_snapshot(worker):
    st = worker.state
    return {
        "address": worker.address, "name": _text(worker.name), "status": worker.status,
        "nthreads": worker.nthreads, "memory_limit": worker.memory_limit,
        "tasks": {str(k): _worker_task(ts) for k, ts in st.tasks.items()},
        "data": sorted(map(str, st.nbytes)), "managed_bytes": st.managed,
        "executing": sorted(map(str, st.executing)),
        "ready": sorted(str(key) for _, _, key in st.ready),
        "in_flight": {peer: sorted(map(str, keys))
                      for peer, keys in st.in_flight.items()},
        "unreachable": sorted(st.unreachable), "paused": st.paused,
        "resources": dict(st.resources), "available_resources": dict(st.available),
        "plugins": list(worker.plugins),
        "logs": [list(line) for line in worker.get_logs()],
        "versions": versions(),
    }


def worker_state(dask_worker):
    """A worker's state (run by `Client.run`: read on its I/O thread, which alone
    changes it, so the picture is of one moment)."""
    taken = concurrent.futures.Future()

    def take():
        try:
            taken.set_result(_worker_snapshot(dask_worker))
        except BaseException as e:
            taken.set_exception(e)
    dask_worker.loop.call_soon(take)
    return taken.result()


def drop_names(node, names):
    """``node`` without the entries named in ``names``, at any depth."""
    if isinstance(node, dict):
        return {k: drop_names(v, names) for k, v in node.items() if k not in names}
    if isinstance(node, list):
        return [drop_names(v, names) for v in node]
    return node


def task_sizes(keys=None, summary=True, dask_scheduler=None):
    """`Client.nbytes` (run in the scheduler): {key: bytes of its result} of
    ``keys`` (KeyError for one the scheduler does not know), or of every key whose
    size is known; with ``summary``, summed by key prefix (``"inc"``)."""
    tasks = dask_scheduler.tasks
    if keys is None:
        sizes = {k: ts.nbytes for k, ts in tasks.items() if ts.nbytes >= 0}
    else:
        sizes = {k: tasks[k].nbytes for k in keys}
    if not summary:
        return sizes
    out = {}
    for k, n in sizes.items():
        out[key_prefix(k)] = out.get(key_prefix(k), 0) + n
    return out


def write(state, filename, format="msgpack"):
    """Write ``state`` to ``filename`` (its suffix, ``.msgpack.gz`` or ``.yaml``,
    added if missing): gzipped msgpack, or YAML; the path written."""
    if format not in FORMATS:
        raise ValueError(f"Unsupported format {format!r}: 'msgpack' or 'yaml'")
    path = os.fspath(filename)
    if not path.endswith(FORMATS[format]):
        path += FORMATS[format]
    if format == "msgpack":
        import msgpack

        with gzip.open(path, "wb") as f:
            msgpack.pack(state, f)
    else:
        import yaml

        with open(path, "w") as f:
            yaml.safe_dump(state, f)
    return path
