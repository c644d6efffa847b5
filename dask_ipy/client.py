"""The client: talks only to the scheduler, owns Futures, speaks dask's `get`.

    user threads ── submit / get / gather ──▶ call_soon ──▶ IOLoop thread ──DEALER──▶
                                                                 scheduler
    user threads ◀── FutureState events, request replies ◀── IOLoop thread ◀────────

Requests that expect an answer carry a ``request_id``; the answer completes a
`concurrent.futures.Future` the caller waits on.  Key reference counting: each
`Future` object counts once; when the last one of a key is garbage-collected the
scheduler is told the key is no longer wanted.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import sys
import threading
import time
import types
import uuid
import weakref
from collections import Counter

import dask
import zmq
from dask._task_spec import Task, TaskRef, parse_input
from dask.base import is_dask_collection, tokenize
from dask.utils import funcname

from . import graph as g
from .comm import IOLoop, send, connect_dealer, logger, new_id
from .futures import (ClientExecutor, Future, FutureState, SchedulerLost, _DataLost,
                      _set_exception, _unpickling, rebuild_error)
from .protocol import (INLINE_LIMIT, MAX_MESSAGE_BYTES, MessageTooLarge,
                       ProtocolError, Session, deserialize, serialize)
from .worker.server import resolve_scheduler

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


def _walk_futures(obj, found):
    """Replace Futures nested in lists, tuples, sets and dicts by TaskRefs."""
    if isinstance(obj, Future):
        found[obj.key] = obj
        return TaskRef(obj.key)
    t = type(obj)
    if t in (list, tuple, set):
        items = [_walk_futures(x, found) for x in obj]
        return t(items)
    if t is dict:
        return {k: _walk_futures(v, found) for k, v in obj.items()}
    return obj


def _flatten_futures(obj, out):
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set)):
        for x in obj:
            _flatten_futures(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _flatten_futures(x, out)
    return out


def _pack_futures(obj, values):
    if isinstance(obj, Future):
        return values[obj.key]
    t = type(obj)
    if t in (list, tuple, set):
        return t(_pack_futures(x, values) for x in obj)
    if t is dict:
        return {k: _pack_futures(v, values) for k, v in obj.items()}
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
    found = {}
    args2 = _walk_futures(list(args), found)
    kwargs2 = _walk_futures(kwargs, found) if kwargs else {}
    if not found:
        return g.call(fn, args, kwargs), found
    # parse_input: references nested in containers (``submit(sum, [f1, f2])``) resolve
    return Task(key, fn, *[parse_input(a) for a in args2],
                **{k: parse_input(v) for k, v in kwargs2.items()}), found


class Client:
    """A connection to a scheduler.

    >>> c = Client(s.address_to_clients)      # or a connection file path
    >>> c.get({'x': 1, 'y': (add, 'x', 2)}, 'y')
    3
    """

    # dask asks this of a client given as ``scheduler=``: its blocking `get` serves.
    asynchronous = False

    def __init__(self, address=None, *, security=None, timeout=10.0,
                 set_as_default=True, name=None, max_message_bytes=MAX_MESSAGE_BYTES):
        if hasattr(address, "address_to_clients"):          # a Scheduler object
            security = security or address.security
            address = address.address_to_clients
        self.address, self.security = resolve_scheduler(address, security,
                                                         "address_to_clients")
        self.id = new_id("client")
        self.name = name
        # The cap on what this client receives; gathers ask for no more than that.
        self.session = Session(self.security.key, self.id,
                               max_message_bytes=max_message_bytes)
        self.loop = IOLoop("dask-ipy-client")
        self.socket = connect_dealer(self.loop.context, self.security, self.id,
                                     self.address)
        self.monitor_socket = self.socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.loop.add_socket(self.socket, self._on_frames)
        self.loop.add_socket(self.monitor_socket, self._on_socket_event)
        self.loop.add_flush(self._flush)
        self.outgoing = []
        self.releases = []             # keys whose last Future was dropped
        self.states = {}               # {key: FutureState}
        self.refcount = Counter()      # {key: number of live Future objects}
        self.lock = threading.RLock()  # RLock: Future.__del__ may run inside it (gc)
        self.requests = {}             # {request_id: concurrent.futures.Future}
        self.scatter_waits = {}        # {request_id: [remaining keys, cf.Future]}
        self.monitor_callbacks = []
        self.last_snapshot = None
        self.connected = threading.Event()
        self.scheduler_info_cache = None
        self._ids = itertools.count(1)
        self._lost = False
        self.status = "connecting"
        self._status_lock = threading.Lock()   # one close, even from two threads
        self._previous_scheduler = None
        self.loop.start()
        try:
            welcome = self._request({"op": "register-client"}, timeout=timeout,
                                    reply_op="welcome")
        except BaseException:
            self.close()               # no thread or socket outlives a failed connect
            raise
        self.scheduler_id = welcome["id"]
        with self._status_lock:
            if self.status == "closed":    # the scheduler shut down meanwhile
                raise SchedulerLost(f"the scheduler at {self.address} was shut down")
            self.status = "running"
            if set_as_default:
                self._set_default()

    def __repr__(self):
        return f"<Client {self.address} {self.status}>"

    def _repr_html_(self):
        from .widget import client_summary

        return client_summary(self)[1]

    def _repr_mimebundle_(self, include=None, exclude=None):
        """In a kernel: the live Monitor widget (text and HTML as fallbacks);
        in a terminal: a plain-text summary."""
        from .widget import client_mimebundle

        return client_mimebundle(self)

    # ---------------------------------------------------------------- default client

    def _set_default(self):
        global _shuffle_set
        with _lock:
            _current.append(self)
            if dask.config.get("dataframe.shuffle.method", None) is None:
                # dask's own choice without a dask.distributed client is "disk": files
                # in a directory of the machine of one worker, which workers on other
                # machines cannot read (their rows would be lost, silently).
                dask.config.set({"dataframe.shuffle.method": "tasks"})
                _shuffle_set = True
        self._previous_scheduler = dask.config.get("scheduler", None)
        dask.config.set(scheduler=self.get)

    def _unset_default(self):
        global _shuffle_set
        with _lock:
            if self in _current:
                _current.remove(self)
            nxt = _current[-1] if _current else None
            if nxt is None and _shuffle_set:
                _shuffle_set = False
                if dask.config.get("dataframe.shuffle.method", None) == "tasks":
                    dask.config.set({"dataframe.shuffle.method": None})
        if dask.config.get("scheduler", None) == self.get:
            dask.config.set(scheduler=nxt.get if nxt else self._previous_scheduler)

    @classmethod
    def current(cls):
        return default_client()

    def as_current(self):
        return dask.config.set(scheduler=self.get)

    # ---------------------------------------------------------------- I/O thread

    def _send(self, msg):
        """Queue a message for the scheduler (any thread)."""
        self.loop.call_soon(self.outgoing.append, msg)

    def _flush(self):
        if self.releases:
            # Releases of many dropped Futures leave as one message.
            self.outgoing.insert(0, {"op": "client-releases-keys", "keys": self.releases})
            self.releases = []
        if self.outgoing:
            msgs, self.outgoing = self.outgoing, []
            try:
                send(self.socket, self.session.dumps(msgs))
            except zmq.ZMQError as e:
                logger.warning("client: could not send to the scheduler: %s", e)

    def _on_socket_event(self, frames):
        from zmq.utils.monitor import parse_monitor_message

        event = parse_monitor_message([f.bytes for f in frames])["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connected.set()
            if self._lost:
                self._lost = False
                self.status = "running"
                self.outgoing.append({"op": "register-client"})
                if self.monitor_callbacks:     # the scheduler forgot the subscription
                    self.outgoing.append({"op": "monitor", "on": True})
        elif event == zmq.EVENT_DISCONNECTED and self.status != "closed":
            self.connected.clear()
            self._on_scheduler_lost(f"lost the connection to the scheduler at "
                                    f"{self.address}")

    def _on_scheduler_lost(self, reason):
        """Fail everything in flight at once: nothing waits on a dead scheduler."""
        self._lost = True
        self.status = "reconnecting"
        logger.warning("client: %s", reason)
        self._fail_pending(reason)

    def _fail_pending(self, reason):
        """Every pending Future and request fails with SchedulerLost(reason)."""
        for key, state in list(self.states.items()):
            if not state.done():
                state.lose(reason)
        for rid, fut in list(self.requests.items()):
            if rid == "welcome":
                continue
            self.requests.pop(rid, None)
            _set_exception(fut, SchedulerLost(reason))
        for rid, (keys, fut) in list(self.scatter_waits.items()):
            self.scatter_waits.pop(rid, None)
            _set_exception(fut, SchedulerLost(reason))

    def _on_scheduler_closing(self, msg):
        """The scheduler shuts down: what waits on it fails, and this client closes."""
        if self.status == "closed":
            return
        logger.info("client: the scheduler at %s shuts down", self.address)
        self._fail_pending(f"the scheduler at {self.address} was shut down")
        self.close()

    def _on_frames(self, frames):
        try:
            msgs = self.session.loads(frames)
        except ProtocolError as e:
            logger.warning("client: rejected a message: %s", e)
            return
        for msg in msgs:
            handler = self._handlers.get(msg["op"])
            if handler is not None:
                handler(self, msg)

    def _on_key_in_memory(self, msg):
        state = self.states.get(msg["key"])
        if state is not None:
            state.finish(msg.get("type"))

    def _on_task_erred(self, msg):
        state = self.states.get(msg["key"])
        if state is not None:
            state.fail(msg)

    def _on_cancelled(self, msg):
        state = self.states.get(msg["key"])
        if state is not None:
            state.cancel()

    def _on_restarted(self, msg):
        for state in self.states.values():
            if not state.done() or state.status == "finished":
                state.cancel()

    def _complete(self, rid, value):
        fut = self.requests.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _on_reply(self, msg):
        self._complete(msg["request_id"], msg["result"])

    def _on_gather_result(self, msg):
        for key in msg.get("missing", ()):
            # A key thought done is gone (its worker died): it is being computed
            # again.  Reset here, on this thread, before any later "key-in-memory".
            state = self.states.get(key)
            if state is not None and state.status == "finished":
                state.reset()
        self._complete(msg["request_id"], msg)

    def _on_welcome(self, msg):
        self._complete("welcome", msg)

    def _on_scattered(self, msg):
        entry = self.scatter_waits.get(msg["request_id"])
        if entry is None:
            return
        keys, fut = entry
        keys.discard(msg["key"])
        if not keys:
            del self.scatter_waits[msg["request_id"]]
            fut.set_result(True)

    def _on_scatter_failed(self, msg):
        entry = self.scatter_waits.pop(msg["request_id"], None)
        if entry is not None:
            entry[1].set_exception(RuntimeError(msg["text"]))

    def _on_monitor_snapshot(self, msg):
        self.last_snapshot = msg
        for cb in list(self.monitor_callbacks):
            try:
                cb(msg)
            except Exception:
                logger.exception("client: monitor callback failed")

    _handlers = {
        "key-in-memory": _on_key_in_memory,
        "task-erred": _on_task_erred,
        "cancelled": _on_cancelled,
        "restarted": _on_restarted,
        "reply": _on_reply,
        "gather-result": _on_gather_result,
        "run-result": _on_gather_result,
        "welcome": _on_welcome,
        "scattered": _on_scattered,
        "scatter-failed": _on_scatter_failed,
        "monitor-snapshot": _on_monitor_snapshot,
        "scheduler-closing": _on_scheduler_closing,
    }

    # ---------------------------------------------------------------- requests

    def _request_future(self, msg, reply_op=None):
        fut = cf.Future()
        rid = "welcome" if reply_op == "welcome" else next(self._ids)
        if reply_op != "welcome":
            msg["request_id"] = rid

        def go():
            if self.status == "closed":    # closed on this thread since the call
                fut.set_exception(RuntimeError("this Client is closed"))
                return
            if self._lost and msg["op"] != "register-client":
                fut.set_exception(SchedulerLost(f"not connected to {self.address}"))
                return
            self.requests[rid] = fut
            self.outgoing.append(msg)
        self.loop.call_soon(go)
        return fut

    def _request(self, msg, timeout=None, reply_op=None):
        self._check_open()
        fut = self._request_future(msg, reply_op)
        try:
            return fut.result(timeout)
        except cf.TimeoutError:
            raise TimeoutError(f"no answer from the scheduler at {self.address} "
                               f"within {timeout} s to {msg['op']!r}") from None

    def _check_open(self):
        if self.status == "closed":
            raise RuntimeError("this Client is closed")

    # ---------------------------------------------------------------- refcounts

    def _retain(self, key, state=None, inform=False):
        """Count a new Future of ``key`` (any thread); returns the shared state."""
        with self.lock:
            st = self.states.get(key)
            if st is None:
                st = self.states[key] = state or FutureState(key)
            self.refcount[key] += 1
            first = self.refcount[key] == 1
        if inform and first:
            self._send({"op": "client-desires-keys", "keys": [key]})
        return st

    def _release(self, key):
        """A Future of ``key`` was dropped (any thread, e.g. the garbage collector)."""
        self._release_many((key,))

    def _retain_many(self, keys):
        """Hold ``keys`` without Future objects (for `get`); {key: state}."""
        out = {}
        with self.lock:
            for key in keys:
                st = self.states.get(key)
                if st is None:
                    st = self.states[key] = FutureState(key)
                self.refcount[key] += 1
                out[key] = st
        return out

    def _release_many(self, keys):
        if self.status == "closed":
            return
        gone = []
        with self.lock:
            for key in keys:
                self.refcount[key] -= 1
                if self.refcount[key] <= 0:
                    del self.refcount[key]
                    self.states.pop(key, None)
                    gone.append(key)
        if gone:
            self.loop.call_soon(self.releases.extend, gone)

    # ---------------------------------------------------------------- graphs

    def _submit_graph(self, tasks, wanted, priorities=None, user_priority=0, retries=0,
                      workers=None, futures=True):
        """Send ``tasks`` [(key, node, deps)] and return {key: Future} for ``wanted``
        (or {key: FutureState}, held until `_release_many`, with ``futures=False``).

        The keys are held before the graph leaves, so no answer can be missed."""
        held = self._retain_many(wanted)
        # Each task goes as (key, spec, deps, priority): the scheduler decodes a
        # million-task graph at once, so no second copy of every key (a priorities
        # dict), and a spec that is one small pickle goes as plain bytes (which the
        # scheduler keeps as they are) rather than as a Serialized.
        priority_of = (priorities or {}).get
        payload = []
        for key, node, deps in tasks:
            try:
                spec = serialize(g.compact(node))
            except Exception as e:
                self._release_many(wanted)
                raise TypeError(f"could not serialize task {key!r}: {e}") from e
            head = spec.frames[0]
            if len(spec.frames) == 1 and type(head) is bytes and len(head) < INLINE_LIMIT:
                spec = head
            payload.append((key, spec, list(deps), priority_of(key, 0)))
        msg = {"op": "update-graph", "tasks": payload, "keys": list(wanted),
               "user_priority": user_priority, "retries": retries}
        if workers is not None:
            if isinstance(workers, str):
                workers = [workers]
            msg["restrictions"] = {key: list(workers) for key in wanted}
        self._send(msg)
        if not futures:
            return held
        out = {key: Future(key, self) for key in wanted}
        self._release_many(wanted)        # the Futures hold the keys now
        return out

    def _graph_tasks(self, dsk, wanted, known_futures):
        """Normalize, cull, check and order a graph; returns ([(key, node, deps)],
        priorities)."""
        known = set(known_futures)
        graph = g.normalize(dsk, known=known)
        deps = g.dependencies(graph)
        graph = g.cull(graph, deps, wanted)
        deps = {k: deps[k] for k in graph}
        # dask turns our Futures (TaskRefs) into references to their keys wherever
        # they sit, even inside fused subgraphs: a graph may depend on any key this
        # client holds a Future of.
        with self.lock:
            known.update(self.states)
        g.check(graph, deps, known=known)
        priorities = g.order(graph, deps)
        return [(k, node, deps[k]) for k, node in graph.items()], priorities

    def get(self, dsk, keys, *, sync=True, retries=0, priority=0, workers=None,
            **kwargs):
        """Compute ``keys`` of the dask graph ``dsk`` on the cluster (dask's `get`)."""
        self._check_open()
        if is_dask_collection(dsk) and not isinstance(dsk, dict):
            dsk = dsk.__dask_graph__()
        dsk = g._as_dict(dsk) if not isinstance(dsk, dict) else dsk
        flat = g.flatten_keys(keys)
        # Futures as graph values are data already on the cluster.
        known_futures = {}
        plain = {}
        for k, v in dsk.items():
            if isinstance(v, Future):
                if v.key == k:
                    known_futures[k] = v
                else:
                    known_futures[v.key] = v
                    plain[k] = TaskRef(v.key)
            else:
                plain[k] = v
        for k in flat:
            if k not in plain and k not in known_futures:
                raise KeyError(k)
        needed = list(dict.fromkeys(k for k in flat if k in plain))
        tasks, priorities = self._graph_tasks(plain, needed, known_futures)
        states = self._submit_graph(tasks, needed, priorities, priority, retries,
                                    workers, futures=False)
        try:
            wanted = list(states.values())
            wanted += [known_futures[k]._state for k in dict.fromkeys(flat)
                       if k in known_futures]
            results = self._gather_states(wanted)
        finally:
            self._release_many(needed)
        return g.pack(keys, results)

    # ---------------------------------------------------------------- futures API

    def submit(self, fn, /, *args, key=None, pure=True, retries=0, workers=None,
               priority=0, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the cluster; returns a Future at once."""
        return self._submit(fn, args, kwargs, key=key, pure=pure, retries=retries,
                            workers=workers, priority=priority)

    def _submit(self, fn, args, kwargs, key=None, pure=True, retries=0, workers=None,
                priority=0):
        """`submit` with the call's keyword arguments kept apart from the options,
        so that a function may take ``key=`` or ``workers=`` itself (the Executor)."""
        self._check_open()
        if not callable(fn):
            raise TypeError("first argument of submit must be callable")
        if key is None:
            if pure:
                key = f"{funcname(fn)}-{call_token(function_token(fn, kwargs), args)}"
            else:
                key = f"{funcname(fn)}-{uuid.uuid4().hex}"
        node, found = call_spec(key, fn, args, kwargs)
        if key in self.states and self.refcount.get(key, 0) > 0:
            return Future(key, self)
        futures = self._submit_graph([(key, node, list(found))], [key], None, priority,
                                     retries, workers)
        return futures[key]

    def map(self, fn, /, *iterables, key=None, pure=True, retries=0, workers=None,
            priority=0, batch_size=None, **kwargs):
        """Map ``fn`` over iterables; returns a list of Futures at once."""
        self._check_open()
        if not callable(fn):
            raise TypeError("first argument of map must be callable")
        rows = list(zip(*iterables))
        name = key if isinstance(key, str) else funcname(fn)
        if isinstance(key, (list, tuple)):
            keys = list(key)
        elif pure:
            fn_token = function_token(fn, kwargs)
            keys = [f"{name}-{call_token(fn_token, row)}" for row in rows]
        else:
            base = uuid.uuid4().hex
            keys = [f"{name}-{base}-{i}" for i in range(len(rows))]
        tasks = []
        seen = {}
        for k, row in zip(keys, rows):
            if k in seen:
                continue
            seen[k] = None
            node, found = call_spec(k, fn, row, kwargs)
            tasks.append((k, node, list(found)))
        priorities = {k: i for i, k in enumerate(keys)}
        futures = self._submit_graph(tasks, list(seen), priorities, priority, retries,
                                     workers)
        out = []
        for k in keys:               # a repeated key gets a Future of its own
            out.append(futures.pop(k) if k in futures else Future(k, self))
        return out

    def _gather_keys(self, keys, deadline=None, wait=False):
        """Fetch values of keys; with ``wait`` the scheduler answers once they are all
        done.  Raises _DataLost if a key is missing (erred, cancelled, or lost and
        being computed again)."""
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
        reply = self._request({"op": "gather", "keys": list(keys), "wait": wait,
                               "max_bytes": self.session.max_message_bytes},
                              timeout=timeout)
        return self._unpack_gather(reply)

    def _unpack_gather(self, reply):
        if reply["errors"]:
            key, info = next(iter(reply["errors"].items()))
            if info.get("type") == "MessageTooLarge":
                raise MessageTooLarge(info["text"])
            raise TypeError(info["text"])
        if reply["missing"]:
            raise _DataLost(reply["missing"])
        _unpickling.client = self
        try:
            return {k: deserialize(v) for k, v in reply["data"].items()}
        finally:
            _unpickling.client = None

    def _gather_keys_async(self, keys, callback):
        """Fetch values without blocking the caller; ``callback(("ok", values))`` or
        ``callback(("error", exception))`` runs when they arrive."""
        fut = self._request_future({"op": "gather", "keys": list(keys),
                                    "max_bytes": self.session.max_message_bytes})

        def done(f):
            try:
                callback(("ok", self._unpack_gather(f.result())))
            except _DataLost:
                states = [self.states.get(k) for k in keys]
                waiting = [s for s in states if s is not None]
                if waiting:
                    waiting[0].add_callback(lambda: self._gather_keys_async(keys, callback))
                else:
                    callback(("error", KeyError(keys)))
            except BaseException as e:
                callback(("error", e))
        fut.add_done_callback(done)

    def _gather_futures(self, futures, errors="raise", timeout=None):
        """Values of Futures by key."""
        states = {f.key: f._state for f in futures}
        return self._gather_states(list(states.values()), errors, timeout)

    def _gather_states(self, states, errors="raise", timeout=None):
        """Values by key.  A single request waits and fetches: the scheduler answers
        as soon as the last key is done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            bad = [st for st in states if st.done() and st.status != "finished"]
            if bad and errors == "raise":
                bad[0].raise_error()
            keys = [st.key for st in states if st not in bad]
            try:
                values = self._gather_keys(keys, deadline, wait=True) if keys else {}
            except _DataLost as e:
                for key in e.args[0]:
                    state = self.states.get(key)
                    remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
                    if state is not None and not state.wait(remaining):
                        raise TimeoutError(f"{key!r} not done after {timeout} s") from None
                continue
            for st in bad:
                values[st.key] = st.exception()
            return values

    def gather(self, futures, errors="raise", timeout=None):
        """Values of Futures, in the same (nested) structure."""
        self._check_open()
        flat = _flatten_futures(futures, [])
        values = self._gather_futures(flat, errors, timeout)
        return _pack_futures(futures, values)

    def scatter(self, data, broadcast=False, workers=None, hash=True, timeout=None):
        """Put local data on workers; returns Futures in the same structure."""
        self._check_open()
        if isinstance(data, dict):
            items = dict(data)
        elif isinstance(data, (list, tuple, set)):
            items = {}
            for x in data:
                k = f"{type(x).__name__}-{tokenize(x) if hash else uuid.uuid4().hex}"
                items[k] = x
        else:
            k = f"{type(data).__name__}-{tokenize(data) if hash else uuid.uuid4().hex}"
            items = {k: data}
        blobs = {k: serialize(v) for k, v in items.items()}
        if isinstance(workers, str):
            workers = [workers]
        futures = {k: Future(k, self) for k in items}
        fut = cf.Future()
        rid = next(self._ids)

        def go():
            if self.status == "closed":
                fut.set_exception(RuntimeError("this Client is closed"))
                return
            self.scatter_waits[rid] = (set(items), fut)
            self.outgoing.append({"op": "scatter", "request_id": rid, "data": blobs,
                                  "broadcast": broadcast, "workers": workers})
        self.loop.call_soon(go)
        fut.result(timeout)
        for k, f in futures.items():
            f._state.finish(type(items[k]).__name__)
        if isinstance(data, dict):
            return futures
        if isinstance(data, (list, tuple, set)):
            keys = list(items)
            if len(keys) == len(data):
                return type(data)(futures[k] for k in keys) if not isinstance(data, set) \
                    else [futures[k] for k in keys]
            return [futures[f"{type(x).__name__}-{tokenize(x)}"] for x in data]
        return next(iter(futures.values()))

    def cancel(self, futures, force=False):
        flat = _flatten_futures(futures, [])
        keys = [f.key for f in flat]
        for f in flat:
            if not f.done() or f.status == "finished":
                f._state.cancel()
        self._send({"op": "cancel", "keys": keys, "force": force})

    def compute(self, collections, sync=False, optimize_graph=True, priority=0,
                retries=0, workers=None, **kwargs):
        """Start computing dask collections; returns a Future per collection (or the
        results with ``sync=True``).  Other keyword arguments (those dask forwards to
        its scheduler) are accepted and ignored."""
        single = not isinstance(collections, (list, tuple))
        colls = [collections] if single else list(collections)
        dsk, keys, _ = g.collections_to_graph(colls, optimize=optimize_graph)
        futures = self._graph_futures(dsk, keys, priority, retries, workers)
        result = [futures[k] for k in keys]
        if sync:
            result = self.gather(result)
        return result[0] if single else result

    def persist(self, collections, optimize_graph=True, priority=0, retries=0,
                workers=None, **kwargs):
        """Start computing collections and return them backed by data on the cluster.

        As ``dask.persist`` does: one optimized expression for all collections, and
        each ORIGINAL collection rebuilt by its ``__dask_postpersist__`` from Futures
        of its own output keys.  Other keyword arguments (those dask forwards to its
        scheduler) are accepted and ignored."""
        single = not isinstance(collections, (list, tuple))
        colls = [collections] if single else list(collections)
        dsk, keys, rebuild = g.collections_to_persist(colls, optimize=optimize_graph)
        out = rebuild(self._graph_futures(dsk, keys, priority, retries, workers))
        return out[0] if single else out

    def _graph_futures(self, dsk, keys, priority, retries, workers):
        """Submit what ``keys`` need of a normalized graph; {key: Future} for every
        key.  A key outside the graph is data a Future of this client already holds
        (a persisted collection's): dask turned those Futures into references."""
        wanted = [k for k in dict.fromkeys(keys) if k in dsk]
        tasks, priorities = self._graph_tasks(dsk, wanted, ())
        futures = self._submit_graph(tasks, wanted, priorities, priority, retries,
                                     workers)
        for k in keys:
            if k not in futures:
                futures[k] = Future(k, self)
        return futures

    # ---------------------------------------------------------------- shared names

    def set_collection(self, name, collection):
        """Store a dask collection (its graph, not its data) for every client."""
        self._request({"op": "set-collection", "name": name,
                       "data": serialize(collection)})

    def get_collection(self, name):
        blob = self._request({"op": "info", "what": "get-collection", "name": name})
        if blob is None:
            raise KeyError(name)
        return self._load(blob)

    def list_collections(self):
        return list(self._request({"op": "info", "what": "list-collections"}))

    def _load(self, blob):
        _unpickling.client = self
        try:
            return deserialize(blob)
        finally:
            _unpickling.client = None

    def publish_dataset(self, *args, name=None, override=False, **kwargs):
        """Keep named data (values or Futures) on the cluster for every client."""
        if args:
            if name is None:
                raise ValueError("publish_dataset(value, name=...) needs a name")
            kwargs[name] = args[0]
        for dname, value in kwargs.items():
            keys = [f.key for f in _flatten_futures(value, [])]
            if is_dask_collection(value):
                keys += [k for k, v in dict(value.__dask_graph__()).items()
                         if isinstance(v, Future)]
            reply = self._request({"op": "publish-dataset", "name": dname,
                                   "data": serialize(value), "keys": keys,
                                   "override": override})
            if isinstance(reply, dict) and "error" in reply:
                raise KeyError(reply["error"])

    def get_dataset(self, name, default=KeyError):
        blob = self._request({"op": "info", "what": "get-dataset", "name": name})
        if blob is None:
            if default is KeyError:
                raise KeyError(f"no dataset named {name!r}")
            return default
        return self._load(blob)

    def list_datasets(self):
        return list(self._request({"op": "info", "what": "list-datasets"}))

    def unpublish_dataset(self, name):
        if not self._request({"op": "unpublish-dataset", "name": name}):
            raise KeyError(f"no dataset named {name!r}")

    # ---------------------------------------------------------------- cluster

    def get_executor(self, **submit_kwargs):
        """A `concurrent.futures.Executor` running on the cluster."""
        return ClientExecutor(self, **submit_kwargs)

    def run(self, function, *args, workers=None, wait=True, **kwargs):
        """Run ``function(*args, **kwargs)`` on workers: ``{worker address: result}``."""
        if isinstance(workers, str):
            workers = [workers]
        reply = self._request({"op": "run", "function": serialize((function, args, kwargs)),
                               "workers": workers})
        out = {}
        for address, r in reply["results"].items():
            if r.get("status") == "OK":
                out[address] = self._load(r["result"])
            else:
                exc, tb = rebuild_error(r)
                raise exc.with_traceback(tb)
        return out

    def _info(self, what, **kw):
        return self._request({"op": "info", "what": what, **kw})

    def scheduler_info(self):
        info = self._info("scheduler-info")
        info["address"] = self.address
        info["id"] = self.scheduler_id
        return info

    def who_has(self, futures=None):
        keys = None if futures is None else [f.key for f in _flatten_futures(futures, [])]
        return {k: list(v) for k, v in self._info("who-has", keys=keys).items()}

    def has_what(self):
        return {k: list(v) for k, v in self._info("has-what").items()}

    def nthreads(self):
        return dict(self._info("nthreads"))

    ncores = nthreads

    def restart(self, timeout=30):
        """Forget every task and drop all data on the workers.

        The worker processes stay: a task already running finishes on its thread (a
        Python thread cannot be stopped) and its result is dropped; the worker runs
        new tasks on its other threads meanwhile, and on that one once it is free."""
        self._request({"op": "restart"}, timeout=timeout)
        return self

    def subscribe_monitor(self, callback):
        """Call ``callback(snapshot)`` (on the I/O thread) about twice a second."""
        self.monitor_callbacks.append(callback)
        if len(self.monitor_callbacks) == 1:
            self._send({"op": "monitor", "on": True})

    def unsubscribe_monitor(self, callback):
        if callback in self.monitor_callbacks:
            self.monitor_callbacks.remove(callback)
        if not self.monitor_callbacks and self.status != "closed":
            self._send({"op": "monitor", "on": False})

    # ---------------------------------------------------------------- life

    def close(self, timeout=5):
        """Close the connection (any thread, the I/O thread included: it is then not
        waited for)."""
        with self._status_lock:
            if self.status == "closed":
                return
            self.status = "closed"
        self._unset_default()

        def bye():
            self.outgoing.append({"op": "close-client"})
            self._flush()
            self.loop.running = False
        if self.loop.running:
            self.loop.call_soon(bye)
        self.loop.stop(timeout)
        for state in list(self.states.values()):
            if not state.done():
                state.cancel()
        # Threads still waiting for an answer (a get() in another thread) wake up.
        waits = list(self.requests.values())
        waits += [fut for _, fut in self.scatter_waits.values()]
        for fut in waits:
            _set_exception(fut, RuntimeError("this Client is closed"))

    def shutdown(self, timeout=10):
        """Stop the scheduler and its workers, then close this client."""
        try:
            self._request({"op": "shutdown"}, timeout=timeout)
        except (TimeoutError, SchedulerLost):
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        # A connection is not copied: a deep copy of dask's config, which holds this
        # client's `get` while it is the default, shares it.
        return self

    def __del__(self):
        try:
            if self.status != "closed" and self.loop.running:
                self.close(timeout=1)
        except Exception:
            pass
