"""What the tasks of one submission get besides their code: priority, retries,
workers, allow_other_workers, resources.

They come from three places, as with dask.distributed: the keyword arguments of
`submit`, `map`, `compute`, `persist` and `get` (never passed on to the user's
function), the annotations of ``with dask.annotate(...)`` around the call (for every
task sent), and annotations a collection kept per key from ``dask.annotate`` around
its construction.  A keyword argument wins over the first kind of annotation, and a
per-key annotation wins over both.  An annotation this scheduler cannot honour is
named in a warning, never ignored silently.
"""

from __future__ import annotations

import warnings

import dask

HONOURED = ("priority", "retries", "workers", "allow_other_workers", "resources")
# Hints for dask's own graph optimization, used before anything is sent.
DASK_INTERNAL = frozenset({"fuse"})


class AnnotationWarning(UserWarning):
    """An annotation or a keyword argument that this scheduler does not honour."""


def check_resources(resources):
    """``{name: amount}`` a task needs, or None; raises on a malformed value (it
    would otherwise be dropped by the scheduler and the task run anywhere)."""
    if resources is None or resources == {}:
        return None
    if not isinstance(resources, dict):
        raise TypeError(f"resources= must be a dict such as {{'GPU': 1}}, not "
                        f"{type(resources).__name__}")
    for name, amount in resources.items():
        if not isinstance(name, str) or isinstance(amount, bool) \
                or not isinstance(amount, (int, float)) or not amount >= 0:
            raise ValueError(f"resources= takes names and amounts of at least 0, "
                             f"such as {{'GPU': 1}}; got {name!r}: {amount!r}")
    return {name: amount for name, amount in resources.items()}


def _worker_list(workers):
    if workers is None:
        return None
    if isinstance(workers, (str, int)):
        return [workers]
    return list(workers) or None


def _unhonoured(names, where):
    names = sorted(set(names) - set(HONOURED) - DASK_INTERNAL)
    if names:
        warnings.warn(f"{where} {', '.join(map(repr, names))} not honoured: dask_ipy "
                      f"honours {', '.join(HONOURED)}", AnnotationWarning, stacklevel=5)


def graph_options(keys, *, priority=0, retries=0, workers=None, resources=None,
                  allow_other_workers=False, annotations=None):
    """The fields of an "update-graph" message for tasks ``keys``.

    ``annotations``: ``{name: {key: value}}`` a collection kept per key (see
    `per_key_annotations`)."""
    ambient = dask.get_annotations()
    _unhonoured(ambient, "dask.annotate")
    merged = {}
    for name in HONOURED:
        if name in ambient:
            merged[name] = ambient[name]
    explicit = {"priority": priority, "retries": retries, "workers": workers,
                "resources": resources, "allow_other_workers": allow_other_workers}
    for name, value in explicit.items():
        if value:                       # as dask.distributed: only a given value wins
            merged[name] = value
    per_key = {name: dict(table) for name, table in (annotations or {}).items()}
    for name, value in list(merged.items()):
        if callable(value):             # dask.annotate(x=f): f(key) for each task
            table = per_key.setdefault(name, {})
            for key in keys:
                table.setdefault(key, value(key))
            del merged[name]
    msg = {"user_priority": merged.get("priority", 0) or 0,
           "retries": merged.get("retries", 0) or 0}
    if not isinstance(msg["user_priority"], (int, float)):
        raise TypeError(f"priority must be a number, not {msg['user_priority']!r}")
    if not isinstance(msg["retries"], int) or msg["retries"] < 0:
        raise TypeError(f"retries must be a whole number of at least 0, not "
                        f"{msg['retries']!r}")
    w = _worker_list(merged.get("workers"))
    if w is not None:
        msg["workers"] = w
    if merged.get("allow_other_workers"):
        msg["allow_other_workers"] = True
    r = check_resources(merged.get("resources"))
    if r is not None:
        msg["resources"] = r
    if per_key:
        wanted = set(keys)
        tables = {}
        for name, table in per_key.items():
            table = {k: v for k, v in table.items() if k in wanted}
            if name == "resources":
                table = {k: check_resources(v) for k, v in table.items()}
            elif name == "workers":
                table = {k: _worker_list(v) for k, v in table.items()}
            if table:
                tables[name] = table
        if tables:
            msg["annotations"] = tables
    return msg


def per_key_annotations(source):
    """``{name: {key: value}}`` that ``dask.annotate`` left on a graph or an
    expression (the ones this scheduler honours; a warning names the others)."""
    get = getattr(source, "__dask_annotations__", None)
    if get is None:
        return None
    try:
        found = get() or {}
    except Exception:                   # a graph type without per-key annotations
        return None
    return kept_annotations(found)


def kept_annotations(found):
    """The honoured ones of ``{name: {key: value}}`` (a warning names the others)."""
    _unhonoured(found, "annotations")
    return {name: dict(found[name]) for name in HONOURED if found.get(name)} or None
