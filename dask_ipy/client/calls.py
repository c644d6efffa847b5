"""What `Client.submit` and `Client.map` send: the key of a call (a deterministic
token of the function and its arguments, for ``pure=True``) and what a worker runs."""

from __future__ import annotations

import hashlib
import sys
import types
import weakref

from dask._task_spec import DataNode, Task, TaskRef, parse_input
from dask.base import tokenize
from dask.utils import funcname

from .. import graph as g
from ..protocol import (SerializationError, check_serializable, function_blob, serialize,
                        serialize_plain)
from .futures import Future


def _walk_futures(obj, found):
    """Replace Futures nested in lists, tuples, sets and dicts by TaskRefs (those in
    namedtuples are only recorded in ``found``)."""
    if isinstance(obj, Future):
        found[obj.key] = obj
        return TaskRef(obj.key)
    t = type(obj)
    if t in (list, tuple, set):
        items = [_walk_futures(x, found) for x in obj]
        return t(items)
    if t is dict:
        return {k: _walk_futures(v, found) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(t, "_fields"):
        # A namedtuple: dask's parse_input rebuilds it (through its __getnewargs__
        # or __getnewargs_ex__) around the values of the Futures found here.
        for x in obj:
            _walk_futures(x, found)
    return obj


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


_FN_TOKENS = weakref.WeakKeyDictionary()


def function_token(fn, kwargs):
    """``tokenize(fn, kwargs)``, remembered for functions of imported modules called
    without keyword arguments: those are tokenized by reference (module and name), so
    their token never changes.  Functions of ``__main__`` are tokenized by value, their
    globals included, and are never remembered."""
    cacheable = (not kwargs and type(fn) is types.FunctionType
                 and fn.__module__ not in (None, "__main__")
                 and getattr(sys.modules.get(fn.__module__), fn.__qualname__, None) is fn)
    if not cacheable:
        return tokenize(fn, kwargs)
    token = _FN_TOKENS.get(fn)
    if token is None:
        token = _FN_TOKENS[fn] = tokenize(fn, kwargs)
    return token


def call_token(fn_token, args):
    """Deterministic token of a call.  Arguments of plain types are hashed from their
    repr, which is exact for them and far cheaper than a general tokenize."""
    if all(type(a) in _PLAIN for a in args):
        return hashlib.md5(f"{fn_token}{args!r}".encode()).hexdigest()
    return tokenize(fn_token, args)


def call_spec(key, fn, args, kwargs):
    """What a worker runs for submit/map: a plain call when no Future is among the
    arguments (cheap to pickle), else a dask Task whose references to the Futures'
    keys the worker resolves; plus {key: Future}."""
    if not kwargs and all(type(a) in _PLAIN for a in args):
        return g.call(fn, args, kwargs), {}     # nothing to look into (map's usual row)
    found = {}
    args2 = _walk_futures(list(args), found)
    kwargs2 = _walk_futures(kwargs, found) if kwargs else {}
    if not found:
        return g.call(fn, args, kwargs), found
    # parse_input: references nested in containers (``submit(sum, [f1, f2])``) resolve
    return Task(key, fn, *[parse_input(a) for a in args2],
                **{k: parse_input(v) for k, v in kwargs2.items()}), found


def _plain_values(values):
    """Whether ``values`` are all of plain types, or keys (tuples of them)."""
    for v in values:
        t = type(v)
        if t not in _PLAIN and not (t is tuple and all(type(x) in _PLAIN for x in v)):
            return False
    return True


class TaskSerializer:
    """`serialize` for the tasks of one graph.  A plain call (`graph.call`) of a
    function that must travel by value (one of ``__main__``, as a notebook's are, a
    lambda, a closure), with arguments of plain types or keys, carries that function
    as bytes pickled once for the whole graph (`protocol.FunctionBlob`), which a
    worker unpickles once: not cloudpickle's work again for every task, on both
    sides.  Anything else is serialized as it is."""

    def __init__(self):
        self._blobs = {}        # id(fn): (fn, FunctionBlob | None)

    def __call__(self, node):
        if (type(node) is tuple and len(node) == 4 and type(node[0]) is types.FunctionType
                and _plain_values(node[1]) and _plain_values(node[2].values())):
            blob = self._blob(node[0])
            if blob is not None:
                return serialize_plain((blob, *node[1:]))
        return serialize(node)

    def _blob(self, fn):
        entry = self._blobs.get(id(fn))
        if entry is None or entry[0] is not fn:
            entry = self._blobs[id(fn)] = (fn, function_blob(fn))
        return entry[1]


def _pickle_error(obj):
    """Why ``obj`` cannot be pickled (the pickler's own words), or None if it can."""
    try:
        check_serializable(obj)
    except SerializationError as e:
        cause = e.__cause__
        return f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
    return None


def _typename(obj):
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else \
        f"{t.__module__}.{t.__qualname__}"


def unpicklable_part(node):
    """``"argument 0 (_thread.lock): TypeError: cannot pickle ..."``: which part of
    a task (its function, a variable the function uses, an argument) cannot be
    pickled; None when that cannot be told."""
    if type(node) is tuple and len(node) == 4:
        fn, args, kwargs = node[0], node[1], node[2]
    elif isinstance(node, Task):
        fn, args, kwargs = node.func, node.args, node.kwargs
    else:
        return None
    name = funcname(fn)
    parts = [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in (kwargs or {}).items()]
    code = getattr(fn, "__code__", None)
    if code is not None:
        # What a function takes along: its closure, and the globals it names (a
        # function of __main__ travels by value, with those).
        for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
            try:
                parts.append((f"{var!r}, which {name} uses", cell.cell_contents))
            except ValueError:          # an empty cell
                pass
        names = getattr(fn, "__globals__", {})
        parts += [(f"{var!r}, which {name} uses", names[var])
                  for var in code.co_names if var in names]
    parts.append((f"the function {name}", fn))
    for what, value in parts:
        if isinstance(value, DataNode):
            value = value.value
        reason = _pickle_error(value)
        if reason is not None:
            return f"{what} ({_typename(value)}) cannot be pickled: {reason}"
    return None
