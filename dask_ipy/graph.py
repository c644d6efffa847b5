"""The dask graph specification, as the scheduler, workers and clients need it.

Pure functions over plain data: no sockets, threads or clocks.

Data flow::

    client                                   scheduler                    worker
    ------                                   ---------                    ------
    collections_to_graph(colls)  -> graph, keys, finalize
    normalize(dsk)               -> graph ----> dependencies(graph) -> deps
                                                check(graph, deps, known)
                                                cull(graph, deps, keys)
                                                order(graph, deps)   -> priority
                                                                ----> execute(node, data)
    pack(keys, results)          <- results of flatten_keys(keys)

Shapes, documented once:

- ``graph: {key: GraphNode}``, the nodes of ``dask._task_spec``: ``Task``,
  ``Alias``, ``DataNode`` (and the containers ``List``, ``Dict``...). A key is a
  str, int, float or a tuple of them. Graph order (insertion order) is kept by
  every function that returns keys, so results are stable.
- ``deps: {key: frozenset[key]}``, the direct dependencies of each node: the keys
  it references explicitly (``TaskRef``/``Alias``). They may name keys outside
  ``graph`` (data already held by the scheduler, or missing keys: ``check`` tells).
- ``priority: {key: int}``, distinct ints; lower runs first.

Conversion itself is dask's (``convert_legacy_graph``); this module adds checks
that never recurse (100,000-long chains are fine), culling, ordering for huge
graphs, and the ``get`` protocol's key structures.

Building a large graph allocates many small objects, which makes CPython's cyclic
garbage collector run over and over on a growing heap; ``normalize``, ``check``,
``cull`` and ``order`` pause it (see ``_gc_paused``): ``normalize`` runs two to
three times faster.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import sys
from collections.abc import Mapping, Set

from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef, convert_legacy_graph

from .errors import CycleError, MissingDependency

__all__ = [
    "CycleError",
    "MissingDependency",
    "as_dict",
    "normalize",
    "dependencies",
    "check",
    "cull",
    "order",
    "output_keys",
    "flatten_keys",
    "pack",
    "execute",
    "collections_to_graph",
    "collections_to_persist",
    "DASK_ORDER_LIMIT",
]

#: Graphs with more nodes than this are ordered by ``_depth_first_order``
#: instead of ``dask.order.order`` (see ``order`` for the measurements).
DASK_ORDER_LIMIT = 50_000


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while a graph is built or walked.

    Only re-enables it if it was enabled on entry, so nesting and a caller who
    disabled it on purpose are both respected.
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _EitherContainer:
    """``x in self`` if ``x`` is in any of the containers (no union is built)."""

    __slots__ = ("containers",)

    def __init__(self, *containers):
        self.containers = containers

    def __contains__(self, x):
        for c in self.containers:
            if x in c:
                return True
        return False


def as_dict(dsk) -> dict:
    """A plain ``{key: value}`` dict from a dict, HighLevelGraph, expression or
    collection (anything with ``__dask_graph__``), or any Mapping."""
    if type(dsk) is dict:
        return dsk
    if not isinstance(dsk, Mapping) and hasattr(dsk, "__dask_graph__"):
        dsk = dsk.__dask_graph__()
        if type(dsk) is dict:
            return dsk
    if hasattr(dsk, "layers"):  # HighLevelGraph: merge its layers, cheaper than items()
        from dask.utils import ensure_dict

        return ensure_dict(dsk)
    if isinstance(dsk, Mapping):
        return dict(dsk)
    raise TypeError(f"Expected a dask graph (a Mapping), got {type(dsk).__name__}")


def normalize(dsk, known=frozenset()) -> dict:
    """Return ``{key: GraphNode}`` for a graph in any form dask produces.

    ``dsk`` may be a plain dict in the dask specification (legacy tuples
    ``(func, *args)``, literals, lists walked recursively, a string value naming
    another key is an alias, nested tasks), a dict of ``Task``/``Alias``/
    ``DataNode``, a ``HighLevelGraph``, any Mapping, or an expression or
    collection with ``__dask_graph__``.

    ``known`` (optional, any container): keys held elsewhere (e.g. by the
    scheduler). A string or tuple argument equal to one of them becomes a
    reference to it, as it does for keys of ``dsk``; any other value that is not a
    key of the graph stays a literal.

    Measured here (one core): 100,000 chained tasks ``{'x%d': (inc, 'x%d')}`` in
    0.3-0.4 s (0.7-0.9 s without pausing the garbage collector).
    """
    dsk = as_dict(dsk)
    all_keys = set(dsk)
    if known:
        all_keys = _EitherContainer(all_keys, known)
    with _gc_paused():
        graph = convert_legacy_graph(dsk, all_keys=all_keys)
    _refuse_p2p(graph)
    return graph


def _refuse_p2p(graph: Mapping) -> None:
    """NotImplementedError if ``graph`` holds a step of dask.distributed's P2P
    shuffle or rechunk (asked for with ``shuffle_method="p2p"``,
    ``rechunk(method="p2p")`` or dask's config): its tasks talk to
    dask.distributed's own workers and scheduler extension, and would fail here
    only once they ran.  Every P2P operation has one barrier task, of a class of
    ``distributed.shuffle``; a graph can hold one only if that module is loaded."""
    core = sys.modules.get("distributed.shuffle._core")
    barrier = getattr(core, "P2PBarrierTask", None)
    if barrier is None:
        return
    for key, node in graph.items():
        if type(node) is barrier:
            raise NotImplementedError(
                f"{key!r} belongs to dask.distributed's P2P shuffle or rechunk, which "
                "runs only on dask.distributed's workers; dask_ipy runs the same "
                "operation as tasks: leave the method unset (a dask_ipy client makes "
                "'tasks' the default) or pass shuffle_method='tasks' "
                "(rechunk: method='tasks')")


def dependencies(graph: Mapping) -> dict:
    """``{key: frozenset}``: the keys each node references explicitly.

    In the legacy spec a string argument that is not a key is a literal, so only
    references made when normalizing (or written as ``TaskRef``/``Alias``) count.
    Keys outside ``graph`` are kept: ``check`` tells held ones from missing ones.
    """
    return {k: node.dependencies for k, node in graph.items()}


def check(graph: Mapping, deps: Mapping, known=frozenset()) -> None:
    """Raise if ``graph`` cannot run; return None if it can.

    - ``MissingDependency`` for the first task (graph order) that depends on a
      key neither in ``graph`` nor in ``known`` (keys the scheduler already holds).
    - ``CycleError`` naming the keys on a cycle.

    Iterative depth-first search (no recursion limit): O(nodes + edges).
    """
    referenced = set().union(*deps.values()) if deps else set()
    absent = {d for d in referenced if d not in graph and d not in known}
    if absent:
        for key in graph:
            ds = deps.get(key)
            if ds and not absent.isdisjoint(ds):
                raise MissingDependency(key, _graph_sorted(absent.intersection(ds), graph))
    with _gc_paused():
        _check_acyclic(graph, deps)


def needing(deps: Mapping, keys) -> set:
    """The keys of a graph (``deps``: {key: the keys it references}) that need any of
    ``keys``, directly or through other keys of the graph."""
    dependents = {}
    for key, ds in deps.items():
        for d in ds:
            dependents.setdefault(d, []).append(key)
    found = set()
    stack = list(keys)
    while stack:
        for key in dependents.get(stack.pop(), ()):
            if key not in found:
                found.add(key)
                stack.append(key)
    return found


def _check_acyclic(graph: Mapping, deps: Mapping) -> None:
    done = set()
    for root in graph:
        if root in done:
            continue
        # path[i] is on the current DFS path; on_path maps a key to its index.
        path = [root]
        on_path = {root: 0}
        iters = [iter(deps.get(root, ()))]
        while iters:
            for child in iters[-1]:
                if child in done or child not in graph:
                    continue
                if child in on_path:
                    raise CycleError(path[on_path[child]:] + [child])
                on_path[child] = len(path)
                path.append(child)
                iters.append(iter(deps.get(child, ())))
                break
            else:
                iters.pop()
                node = path.pop()
                del on_path[node]
                done.add(node)


def _graph_sorted(keys, graph):
    """Keys in graph order where they are in the graph, the others after, by repr."""
    inside = [k for k in keys if k in graph]
    outside = sorted((k for k in keys if k not in graph), key=repr)
    if len(inside) > 1:
        index = {k: i for i, k in enumerate(graph)}
        inside.sort(key=index.__getitem__)
    return inside + outside


def _keys_collection(keys) -> list:
    """A requested-keys argument as a flat list: one key (tuples are keys) or
    nested lists, sets, frozensets or dict views of keys."""
    if isinstance(keys, Set):
        return list(keys)
    return flatten_keys(keys)


def cull(graph: Mapping, deps: Mapping, keys) -> dict:
    """The part of ``graph`` that ``keys`` need, in graph order.

    ``keys``: one key, (nested) lists of keys, or a set of keys. Keys not in
    ``graph`` are skipped (they may be held by the scheduler; the caller decides
    whether that is an error). Iterative.
    """
    with _gc_paused():
        return _cull(graph, deps, keys)


def _cull(graph: Mapping, deps: Mapping, keys) -> dict:
    needed = set()
    stack = [k for k in _keys_collection(keys) if k in graph]
    while stack:
        k = stack.pop()
        if k in needed:
            continue
        needed.add(k)
        for d in deps.get(k, ()):
            if d not in needed and d in graph:
                stack.append(d)
    if len(needed) == len(graph):
        return dict(graph)
    return {k: v for k, v in graph.items() if k in needed}


def order(graph: Mapping, deps: Mapping) -> dict:
    """``{key: int}`` priorities: distinct, lower first, every dependency before
    its dependents.

    Up to ``DASK_ORDER_LIMIT`` nodes this is ``dask.order.order`` (the order
    dask's own schedulers use, tuned to keep memory low); above, a depth-first
    post-order from the output keys, in graph order, linear time.

    Measured here (one core, garbage collector paused, seconds) on a map
    (``n/2`` inputs, ``n/2`` independent tasks) and a binary tree reduction
    (``n/2`` leaves and their pairwise sums):

    ==========  =========  =========  ===========  ===========
    nodes n     dask map   dask tree  depth-first  depth-first
                                      map          tree
    ==========  =========  =========  ===========  ===========
    10,000      0.11       0.13       0.01         0.02
    100,000     1.5        1.7        0.12         0.24
    1,000,000   26         32         2.0          3.2
    ==========  =========  =========  ===========  ===========

    dask.order costs 11-17 us per node, growing with the graph (about 30 us at
    a million), against 1-3 us for the depth-first walk. Ordering runs before
    anything else of the submission can proceed, so it is capped near 1.5 s:
    ``DASK_ORDER_LIMIT = 50_000`` nodes (``normalize`` alone costs 2-5 us per
    node, ``check`` about 1.5 us).

    The depth-first order assumes an acyclic graph (``check`` first); on a
    cycle it still returns distinct priorities, where dask.order raises.
    """
    if not graph:
        return {}
    if not any(deps.values()):
        # Independent tasks (a map): graph order is as good as any.
        return {k: i for i, k in enumerate(graph)}
    with _gc_paused():
        if len(graph) <= DASK_ORDER_LIMIT:
            from dask.order import order as dask_order

            prio = dask_order(graph)
            if len(prio) != len(graph):  # keep exactly the graph's keys
                prio = {k: prio[k] for k in graph}
            return prio
        return _depth_first_order(graph, deps)


def _depth_first_order(graph: Mapping, deps: Mapping) -> dict:
    """Post-order of a depth-first walk from each output key in graph order,
    visiting dependencies in graph order: finish one branch before the next."""
    index = {k: i for i, k in enumerate(graph)}

    def children(k):
        ds = deps.get(k)
        if not ds:
            return iter(())
        if len(ds) == 1:
            return iter(ds)
        return iter(sorted((d for d in ds if d in index), key=index.__getitem__))

    prio = {}
    entered = set()
    # A graph that is all cycle has no roots; such nodes still get a priority.
    for root in itertools.chain(output_keys(deps), graph):
        if root in entered or root not in index:
            continue
        entered.add(root)
        stack = [(root, children(root))]
        while stack:
            node, it = stack[-1]
            for child in it:
                if child not in entered and child in index:
                    entered.add(child)
                    stack.append((child, children(child)))
                    break
            else:
                stack.pop()
                prio[node] = len(prio)
    return prio


def output_keys(deps: Mapping) -> list:
    """Keys nothing depends on, in the order of ``deps`` (graph order)."""
    if not deps:
        return []
    has_dependents = set().union(*deps.values())
    return [k for k in deps if k not in has_dependents]


def flatten_keys(keys) -> list:
    """The keys of a ``get`` request as a flat list, in order.

    A request is one key or (nested) lists of keys. Tuples are keys:
    ``('x', 0)`` is one key; only lists give structure.
    """
    if not isinstance(keys, list):
        return [keys]
    out = []
    stack = [iter(keys)]
    while stack:
        for k in stack[-1]:
            if isinstance(k, list):
                stack.append(iter(k))
                break
            out.append(k)
        else:
            stack.pop()
    return out


def pack(keys, results: Mapping):
    """Rebuild the structure of a ``get`` request from ``{key: value}``.

    One key gives its value; a list of keys a tuple of values; nested lists
    nested tuples: ``pack([['x'], 'y'], {'x': 1, 'y': 2}) == ((1,), 2)``.
    A key absent from ``results`` raises KeyError.
    """
    if isinstance(keys, list):
        if not any(isinstance(k, list) for k in keys):
            return tuple([results[k] for k in keys])
        return tuple(pack(k, results) for k in keys)
    return results[keys]


def call(fn, args, kwargs, refs=()):
    """A plain call ``(fn, args, kwargs, refs)``: what travels for most tasks.  `refs`
    are the positions in `args` that hold a key, to be replaced by its value."""
    return (fn, tuple(args), kwargs, tuple(refs))


def compact(node):
    """The plain call for a Task whose arguments are literals or references to keys
    (almost every task of submit, map and legacy graphs); it pickles several times
    faster than the Task.  Other nodes are returned as they are."""
    if type(node) is not Task:
        return node
    for v in node.kwargs.values():
        if isinstance(v, (GraphNode, TaskRef)):
            return node
    refs = []
    args = node.args
    for i, a in enumerate(args):
        if isinstance(a, TaskRef):
            if not refs:
                args = list(args)
            refs.append(i)
            args[i] = a.key
        elif isinstance(a, (GraphNode, list, tuple, dict, set)):
            return node                  # containers keep the Task's own semantics
    return call(node.func, args, node.kwargs, refs)


def expand(key, spec):
    """The dask node a spec stands for (the inverse of `compact`)."""
    if type(spec) is not tuple:
        return spec
    fn, args, kwargs, refs = spec
    args = list(args)
    for i in refs:
        args[i] = TaskRef(args[i])
    return Task(key, fn, *args, **kwargs)


def execute(node: GraphNode, data: Mapping):
    """Run one node given ``data``, a Mapping holding (at least) the values of its
    dependencies. Only those are read, so ``data`` may be a whole worker's store.

    A dependency absent from ``data`` raises KeyError.
    """
    if type(node) is tuple:          # a plain call, see `call`
        fn, args, kwargs, refs = node
        if refs:
            args = list(args)
            for i in refs:
                args[i] = data[args[i]]
        return fn(*args, **kwargs)
    if isinstance(node, DataNode):
        return node.value
    if isinstance(node, Alias):
        return data[node.target]
    ds = node.dependencies
    return node({k: data[k] for k in ds} if ds else {})


def collections_to_graph(collections, optimize=True, annotations=None):
    """``(graph, keys, finalize)`` to compute dask collections as ``dask.compute``
    would.

    ``collections``: one dask collection (array, bag, dataframe, delayed, any
    object following the collection protocol) or a list/tuple of them.

    The graph is built by dask's own machinery, as ``dask.compute`` does:
    ``collections_to_expr`` (with the collections' low-level optimizations when
    ``optimize``), wrapped in ``FinalizeCompute`` and optimized. Each
    collection's ``__dask_postcompute__`` therefore runs as a task of the graph
    (dask skips it where it is a no-op, e.g. for delayed), so ``keys[i]`` is the
    one key holding the final value of ``collections[i]``. Keys repeat when a
    collection is given twice.

    ``finalize(results)`` takes ``{key: value}`` for ``keys`` and returns the list
    of final values, one per collection.

    ``annotations``: a dict to fill with the graph's per-key annotations
    (``{name: {key: value}}``, from ``dask.annotate`` around the collections'
    construction).
    """
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    if not isinstance(collections, (list, tuple)):
        collections = [collections]
    collections = _checked(collections)
    if not collections:
        return {}, [], lambda results: []

    expr = collections_to_expr(collections, optimize)
    expr = FinalizeCompute(expr).optimize()
    if annotations is not None:
        annotations.update(expr.__dask_annotations__() or {})
    groups = [flatten_keys(list(ks)) for ks in expr.__dask_keys__()]
    graph = normalize(expr)
    if all(len(g) == 1 for g in groups):
        keys = [g[0] for g in groups]
    else:
        # Not seen with dask's collections: keep every key, rebuild per group.
        keys = [k for g in groups for k in g]

    def finalize(results: Mapping) -> list:
        return [results[g[0]] if len(g) == 1 else pack(g, results) for g in groups]

    return graph, keys, finalize


def _checked(collections):
    """``collections`` as a list, each a dask collection (else TypeError)."""
    from dask.base import is_dask_collection

    collections = list(collections)
    for c in collections:
        if not is_dask_collection(c):
            raise TypeError(f"Not a dask collection: {type(c).__name__}")
    return collections


def collections_to_persist(collections, optimize=True, annotations=None):
    """``(graph, keys, rebuild)`` to persist dask collections as ``dask.persist``
    would.

    All collections become one expression (``collections_to_expr``), optimized
    once; ``keys`` are that expression's output keys, flat, one group per
    collection.  ``rebuild({key: value})`` returns the list of persisted
    collections, each made by the ORIGINAL collection's ``__dask_postpersist__``
    from its own group of keys (a collection exposing child expressions through
    ``__dask_exprs__`` is rebuilt child by child).

    Why not ``dask.optimize`` and the optimized collections' own keys: for
    expression-backed collections (dataframes) ``dask.optimize`` rebuilds each
    collection from the whole graph, so its keys are the graph's first keys in
    sorted order (an input, silently), and it materializes expressions that have
    not been lowered (``set_index`` fails).

    ``annotations``: a dict to fill with the graph's per-key annotations, as in
    `collections_to_graph`.
    """
    from dask._expr import CompositeExpr, _ExprSequence
    from dask.base import collections_to_expr

    collections = _checked(collections)
    if not collections:
        return {}, [], lambda values: []

    expr = collections_to_expr(collections, optimize)
    parts = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    composite = any(isinstance(p, CompositeExpr) for p in parts)
    expr = expr.optimize()
    if annotations is not None:
        annotations.update(expr.__dask_annotations__() or {})
    parts = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    if not composite or len(parts) != len(collections):
        parts = [None] * len(collections)
    groups = [_flat(ks) for ks in expr.__dask_keys__()]
    if len(groups) != len(collections):
        raise RuntimeError(f"{len(collections)} collections gave {len(groups)} groups "
                           f"of keys")
    graph = normalize(expr)

    def rebuild(values: Mapping) -> list:
        out = []
        for c, part, keys in zip(collections, parts, groups):
            if isinstance(part, CompositeExpr):
                out.append(_rebuild_composite(c, part, values))
            else:
                fn, args = c.__dask_postpersist__()
                out.append(fn({k: values[k] for k in keys}, *args))
        return out

    return graph, [k for ks in groups for k in ks], rebuild


def _flat(keys) -> list:
    """Keys of one collection (nested lists, as arrays give them), flat."""
    return flatten_keys(keys if isinstance(keys, list) else [keys])


def _rebuild_composite(collection, expr, values):
    """A collection made of child expressions, rebuilt child by child from the
    values of each child's keys, then reassembled by the collection itself."""
    from dask._collections import new_collection

    children = []
    for child_expr in expr.exprs:
        fn, args = new_collection(child_expr).__dask_postpersist__()
        keys = _flat(child_expr.__dask_keys__())
        children.append(fn({k: values[k] for k in keys}, *args).expr)
    return collection.__dask_rebuild_from_exprs__(children)
