"""The client: the user's API over a connection to the scheduler (`shell`).

    user threads ── submit / map / get / gather / scatter ──▶ ClientShell ──▶ scheduler
                 ◀── Futures, values ◀──────────────────────  (state.ClientState inside)

`Client` turns the user's calls into graphs and requests: it tokenizes calls into keys
(`calls`), normalizes, culls and orders graphs (`graph`), and hands the rest to its
shell, which holds the keys' states and talks to the scheduler.  Key reference
counting: each `Future` object counts once; when the last one of a key is
garbage-collected the scheduler is told the key is no longer wanted.

Blocking or asynchronous: every method that waits is written once, as an operation
(``_<name>_op``, a generator yielding its waits), and run by `run_op`: blocking for
``Client(...)``, as a coroutine for ``Client(..., asynchronous=True)`` (see `waits`).
The cluster-management methods are in `cluster` (`ClusterMethods`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import inspect
import os
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Iterator, MutableMapping

import dask
from dask._task_spec import TaskRef
from dask.base import is_dask_collection, tokenize
from dask.utils import format_bytes, funcname, parse_bytes

from .. import config as cfg
from .. import graph as g
from .. import hooks
from ..discovery import resolve_scheduler
from ..errors import SchedulerLost
from ..log import logger
from ..protocol import INLINE_LIMIT, MAX_MESSAGE_BYTES, SerializationError, serialize
from ..security import write_connection_file
from . import default, printing
from .actors import actor_key, create_actor
from .calls import TaskSerializer, call_spec, call_token, function_token, unpicklable_part
from .cluster import ClusterMethods, worker_filter, worker_names
from .default import default_client
from .futures import (CancelledError, ClientExecutor, Future, Waiter, futures_in,
                      futures_of, load, pickled_futures, seconds, task_frames)
from .observe import ObserveMethods
from .options import (AnnotationWarning, graph_options, kept_annotations,
                      per_key_annotations)
from .shell import ClientShell
from .state import FINISHED
from .waits import Answer, done, run_async, run_blocking, then


def _pack_futures(obj, values):
    if isinstance(obj, Future):
        return values[obj.key]
    t = type(obj)
    if t in (list, tuple, set):
        return t(_pack_futures(x, values) for x in obj)
    if t is dict:
        return {k: _pack_futures(v, values) for k, v in obj.items()}
    return obj


def _acknowledged(fut):
    """Wait for the scheduler's acknowledgement ``fut``; a scheduler out of reach (or
    a closed client) has nothing left to cancel."""
    try:
        yield from _answer(fut, "'cancel'")
    except (SchedulerLost, RuntimeError):
        pass


def _answer(fut, op):
    """Wait for the scheduler's answer ``fut`` to ``op``."""
    yield Answer(fut, None, f"{op} from the scheduler")


def _typename(value):
    """``module.qualname`` of ``value``'s class, as a task's result is recorded (so
    `Future.type` can import it)."""
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def _check_other_workers(allow_other_workers, workers):
    """``allow_other_workers`` of `submit` or `map`: a preference for ``workers``,
    so meaningless without them."""
    if allow_other_workers not in (True, False, None):
        raise TypeError(f"allow_other_workers must be True or False, not "
                        f"{allow_other_workers!r}")
    if allow_other_workers and workers is None:
        raise ValueError("allow_other_workers=True needs workers=: it lets the tasks "
                         "run elsewhere than on those workers")


def _options(extra, method, **options):
    """The placement options of one call; what it cannot honour is refused or
    named in a warning."""
    wanted = [extra.pop(name, None) for name in ("actor", "actors")]
    # ``actors=`` may be a collection (whose results would become actors): never
    # asked for its truth, and never ignored, which would compute something else.
    if any(not (a is None or a is False or (isinstance(a, (list, tuple, set, dict))
                                             and not a)) for a in wanted):
        raise NotImplementedError(f"{method}(actor(s)=...) is not supported: actors "
                                  f"are made by submit(cls, actor=True) or map(cls, "
                                  f"..., actor=True)")
    if extra.pop("fifo_timeout", None) is not None:
        warnings.warn(f"{method}(fifo_timeout=...) not honoured: tasks run in the "
                      f"order they were submitted, then by priority",
                      AnnotationWarning, stacklevel=3)
    if extra:
        warnings.warn(f"{method}() ignores {', '.join(map(repr, sorted(extra)))}: "
                      f"not an option of dask_ipy", AnnotationWarning, stacklevel=3)
    return options


class Datasets(MutableMapping):
    """A client's published datasets, as a mapping (blocking clients only: an
    asynchronous one awaits `get_dataset` and the others)."""

    def __init__(self, client):
        if client.asynchronous:
            raise TypeError("an asynchronous client's datasets: await get_dataset(), "
                            "publish_dataset(), unpublish_dataset() or list_datasets()")
        self.client = client

    def __getitem__(self, name):
        return self.client.get_dataset(name)

    def __setitem__(self, name, value):
        self.client.publish_dataset(value, name=name)

    def __delitem__(self, name):
        self.client.unpublish_dataset(name)

    def __iter__(self):
        return iter(self.client.list_datasets())

    def __len__(self):
        return len(self.client.list_datasets())


#: Every Client of this process, for `_Borrowing`.
_CLIENTS = weakref.WeakSet()
_CLIENTS_LOCK = threading.Lock()


class _Borrowing:
    """What a graph (or call) of ``client`` may use without computing it: the keys it
    holds, and those another open client of this process holds on the same scheduler
    (a collection one persisted and the other computes, a Future of one in the
    other's submit or delayed call).  The scheduler keeps such a key for the tasks
    that need it, even once its client lets go of it or closes.

    Another client's key is borrowed: that client holds it once more until the
    scheduler has taken in what ``client`` sends meanwhile (the tasks that need it,
    its own hold of it), so that the lender's release, which leaves on another
    connection, cannot overtake them.  And while the key is pending there, the
    lender may not have told the scheduler of it yet: what ``client`` sends waits
    for the lender's next answer from the scheduler.  A lender closing waits for its
    loans.  ``key in borrowing`` (`need`) tells, and borrows; `give_back`, at the end
    of a ``with`` block, once sent.
    ``lent``: [(lender, key)]; ``loans``: {lender: a concurrent.futures.Future
    settled once given back}; ``heard``: {lender} waited for; ``lost``: {key} of
    Futures cancelled here that a graph referenced."""

    def __init__(self, client):
        self.client = client
        self.others = None
        self.lent = []
        self.loans = {}
        self.heard = set()
        self.lost = set()

    def need(self, key):
        """Whether ``key`` is this client's, or borrowed now from another."""
        return self.client.shell.is_held(key) or self.borrow(key)

    def __contains__(self, key):
        """Whether a graph may use ``key``: `need`; or a key of a Future cancelled
        here, which joins ``lost`` (the tasks needing it are cancelled, as in
        dask.distributed, rather than the graph refused)."""
        if self.need(key):
            return True
        if self.client.shell.was_cancelled(key):
            self.lost.add(key)
            return True
        return False

    def need_futures(self, futures):
        """`need` the keys of those of ``futures`` that are another client's; False
        if one is cancelled: work on it can never run, and is cancelled too (as in
        dask.distributed, where its result raises CancelledError)."""
        for f in futures:
            if f.cancelled():
                return False
            if f.client is not self.client:
                self.need(f.key)
        return True

    def borrow(self, key):
        """Borrow ``key`` from another client that holds it; whether one did."""
        if self.others is None:
            with _CLIENTS_LOCK:
                clients = list(_CLIENTS)
            sid = self.client.scheduler_id
            self.others = [c for c in clients if c is not self.client and sid is not None
                           and c.scheduler_id == sid and c.status != "closed"]
        for other in self.others:
            if other.shell.is_held(key):
                if other not in self.loans:
                    loan = self.loans[other] = cf.Future()
                    other._loans.add(loan)
                    loan.add_done_callback(other._loans.discard)
                if not other.shell.hold(key).done() and other not in self.heard:
                    self.heard.add(other)
                    self.client.shell.wait_for(other.shell.request_future(
                        {"op": "info", "what": "task-states", "keys": [key]}))
                self.lent.append((other, key))
                return True
        return False

    def future(self, key):
        """A Future of ``key`` of this client, which may be another's key: the
        scheduler learns that this client wants it too (or tells it is gone)."""
        self.need(key)
        return Future(key, self.client, inform=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.give_back()

    def give_back(self):
        """Let the lenders drop the keys lent once the scheduler answers a request
        sent now, after all that needed them (or at once if the request fails)."""
        if not self.lent:
            return
        lent, self.lent = self.lent, []
        loans, self.loans = self.loans, {}

        def back(_):
            for lender, key in lent:
                lender.shell.drop((key,))
            for loan in loans.values():
                loan.set_result(None)
        # Any answer will do: the scheduler takes a client's messages in order.
        self.client.shell.request_future({"op": "info", "what": "task-states",
                                          "keys": [key for _, key in lent]}
                                         ).add_done_callback(back)


#: The placement options of `Client.get`, and their defaults.
_GET_OPTIONS = {"priority": 0, "retries": 0, "workers": None, "resources": None,
                "allow_other_workers": False}


#: dask.distributed's Client options that have nothing to tune here, taken and
#: ignored so that code passing them runs: results come straight from the workers
#: when small (``direct_to_workers``), the connection's liveness is ZeroMQ's
#: (``heartbeat_interval``), one socket carries everything (``connection_limit``),
#: values are pickled (``serializers``, ``deserializers``), the client has no
#: event loop of tornado's (``loop``) nor extensions.
_NOT_NEEDED = ("direct_to_workers", "heartbeat_interval", "connection_limit",
               "serializers", "deserializers", "extensions", "loop")


def _warn_if_large(nbytes):
    """Warn, as dask.distributed does, of a graph whose pickled tasks pass
    ``distributed.admin.large-graph-warning-threshold`` (10 MB): data a task
    carries travels with it, and is better scattered or loaded by dask."""
    limit = dask.config.get("distributed.admin.large-graph-warning-threshold", "10MB")
    if limit is not None and nbytes > parse_bytes(limit):
        warnings.warn(f"Sending large graph of size {format_bytes(nbytes)}.\n"
                      "This may cause some slowdown.  Consider scattering the data "
                      "(Client.scatter) or loading it with dask, and passing the "
                      "Futures or collections to the tasks instead.",
                      UserWarning, stacklevel=4)


def _run_here(task):
    """Run ``(node, {input key: value})`` in this process, as a worker runs it: a
    coroutine it gives (an ``async def`` task) to its value."""
    value = g.execute(*task)
    return asyncio.run(value) if inspect.iscoroutine(value) else value


def _scheduler_file(path, timeout):
    """``path`` once the file is there: a scheduler started beside this client
    writes it when it is up.  FileNotFoundError after ``timeout`` seconds."""
    limit = seconds(timeout)
    deadline = None if limit is None else time.monotonic() + limit
    while not os.path.isfile(path):
        if deadline is not None and time.monotonic() > deadline:
            raise FileNotFoundError(f"no scheduler file {path!r} after {limit} s")
        time.sleep(0.05)
    return os.fspath(path)


class SchedulerRef(collections.namedtuple("SchedulerRef", "address")):
    """`Client.scheduler`: where the scheduler is."""


class Client(ClusterMethods, ObserveMethods):
    """A connection to a scheduler.

    >>> c = Client(s.address_to_clients)      # or a connection file path
    >>> c.get({'x': 1, 'y': (add, 'x', 2)}, 'y')
    3
    >>> c = Client(LocalCluster(n_workers=2))  # a cluster: c.cluster is that one
    >>> c = Client(n_workers=2)                # a LocalCluster of its own

    Without an address (and without ``DASK_IPY_SCHEDULER_FILE`` naming a connection
    file) the client starts a `LocalCluster` with ``cluster_kwargs``, as
    dask.distributed's does, and stops it when it closes.

    With ``asynchronous=True`` every method that waits returns a coroutine, and the
    client itself is awaited once (``c = await Client(addr, asynchronous=True)`` or
    ``async with Client(addr, asynchronous=True) as c``); Futures are awaitable with
    either kind of client (``await c.submit(f, x)``).

    ``task_output``: print and warn here what tasks print and warn with
    `dask_ipy.print` and `dask_ipy.warn` (as dask.distributed's clients do).

    ``scheduler_file``: a connection file (`write_scheduler_file`, ``dask-ipy
    scheduler --connection-file``), waited for up to ``timeout`` seconds if it is
    not there yet (its scheduler may be starting); it is the address then.
    """

    def __init__(self, address=None, *, security=None, timeout=10.0,
                 set_as_default=True, name=None, max_message_bytes=MAX_MESSAGE_BYTES,
                 asynchronous=False, task_output=True, scheduler_file=None,
                 **cluster_kwargs):
        self._cluster = None
        self._own_cluster = None        # the LocalCluster this client started
        timeout = seconds(timeout)
        self.scheduler_file = scheduler_file
        if scheduler_file is not None:
            address = _scheduler_file(scheduler_file, timeout)
        # Accepted and kept (values travel through the scheduler either way).
        self.direct_to_workers = cluster_kwargs.pop("direct_to_workers", None)
        for option in _NOT_NEEDED:
            cluster_kwargs.pop(option, None)
        if address is None and not os.environ.get("DASK_IPY_SCHEDULER_FILE"):
            address = self._own_cluster = hooks.local_cluster(**cluster_kwargs)
        elif cluster_kwargs:
            raise TypeError(f"Client() got {', '.join(map(repr, cluster_kwargs))}: "
                            "arguments of the LocalCluster a Client without an "
                            "address starts, not of one that joins a scheduler")
        if isinstance(address, type):
            raise TypeError(f"Scheduler address must be a string or a Cluster "
                            f"instance, got {address}")
        if hasattr(address, "scheduler_address"):           # a LocalCluster
            if address.scheduler_address is None or address.status in (
                    "closed", "closing"):
                raise RuntimeError("Trying to connect to an already closed or closing "
                                   f"Cluster: {address!r}")
            self._cluster = address
            security = security or address.security
            address = address.scheduler_address
        elif hasattr(address, "address_to_clients"):        # a Scheduler object
            security = security or address.security
            address = address.address_to_clients
        self.address, self.security = resolve_scheduler(address, security,
                                                         "address_to_clients")
        self.name = name
        self._asynchronous = bool(asynchronous)
        self.scheduler_id = None
        self._status_lock = threading.Lock()   # one close, even from two threads
        self._previous_scheduler = None
        self._monitor = None                   # the widget a display of this client shows
        self._set_as_default = set_as_default
        # Seconds a worker may stay paused before this client warns (dask.config)
        self.paused_warning = cfg.paused_warning()
        self.shell = ClientShell(self, self.address, self.security, max_message_bytes,
                                 on_scheduler_closing=self._close_now,
                                 paused_warning=self.paused_warning, name=name)
        self._loans = set()     # of keys lent to other clients (`_Borrowing`)
        with _CLIENTS_LOCK:
            _CLIENTS.add(self)
        if task_output:
            # Queued ahead of the registration and sent with it: no round trip more,
            # and in effect once the client is (re-sent after a reconnection).
            for topic, handler in printing.HANDLERS.items():
                self.shell.subscribe_topic(topic, handler)
        # Registration leaves now; its answer is waited for here, or when awaited.
        self._welcome = Answer(self.shell.request_future({"op": "register-client"},
                                                         welcome=True),
                               timeout, f"'register-client' from {self.address}")
        if not asynchronous:
            run_blocking(self._start_op())

    def _start_op(self):
        if self.scheduler_id is not None:
            return self
        try:
            welcome = yield self._welcome
        except BaseException:
            # no thread or socket outlives a failed connect
            yield from self._close_op()
            raise
        with self._status_lock:
            if self.scheduler_id is not None:       # awaited twice at once
                return self
            if not self.shell.start():     # the scheduler shut down meanwhile
                raise SchedulerLost(f"the scheduler at {self.address} was shut down")
            self.scheduler_id = welcome["id"]
            if self._set_as_default:
                self._set_default()
        return self

    def run_op(self, op):
        """Run an operation (a generator of waits, see `waits`) as this client does:
        to its end, or as a coroutine for an asynchronous client."""
        return run_async(op) if self.asynchronous else run_blocking(op)

    def __await__(self):
        return run_async(self._start_op()).__await__()

    async def __aenter__(self):
        return await self

    async def __aexit__(self, *exc):
        await run_async(self._close_op())

    @property
    def id(self):
        """A str unique to this client: "client-", its ``name`` if given, and a
        random part."""
        return self.shell.id.decode()

    @property
    def asynchronous(self):
        """Made with ``asynchronous=True``: its methods that wait return
        coroutines."""
        return self._asynchronous

    @property
    def status(self):
        """"connecting", "running", "reconnecting" (the connection is lost for now)
        or "closed"."""
        return self.shell.status

    @property
    def last_snapshot(self):
        """The latest monitor snapshot (see `subscribe_monitor`)."""
        return self.shell.last_snapshot

    @property
    def futures(self):
        """{key: its state} of the keys this client's Futures hold (each state's
        ``status``: "pending", "finished", "error", "cancelled" or "lost")."""
        return self.shell.held_states()[0]

    @property
    def refcount(self):
        """{key: how many hold it} (its Futures, and a `get` running); 0 for a key
        not held, as dask.distributed's defaultdict."""
        return collections.defaultdict(int, self.shell.held_states()[1])

    @property
    def cluster(self):
        """The `LocalCluster` this client was made with (``Client(cluster)``), else
        None (dask.distributed's is None for a client of an address too).  Closing
        the client leaves the cluster running; `shutdown` stops it."""
        return self._cluster

    @property
    def monitor_callbacks(self):
        return list(self.shell.monitor_callbacks)

    @property
    def scheduler(self):
        """The scheduler, as dask.distributed's Client names it: its ``address``
        (its remote calls are this Client's methods)."""
        return SchedulerRef(self.address)

    def __repr__(self):
        """dask.distributed's: ``<Client: 'tcp://...' processes=2 threads=2,
        memory=16.00 GiB>``, from one short request (not from the client's own I/O
        thread: then its status); ``<Client: No scheduler connected>`` once it is
        closed."""
        head = f"<Client: {self.address!r}"
        if self.status == "closed":
            return "<Client: No scheduler connected>"     # as dask.distributed's
        if self.status != "running" or self.shell.loop.in_loop():
            return f"{head} {self.status}>"
        try:
            info = self.scheduler_info(n_workers=0, timeout=1.0)
        except Exception:
            return f"{head} {self.status}>"
        return (f"{head} processes={info['n_workers']} threads={info['total_threads']}"
                f", memory={format_bytes(info['total_memory'] or 0)}>")

    def _repr_html_(self):
        from ..notebook.widget import client_summary

        return client_summary(self)[1]

    def _repr_mimebundle_(self, include=None, exclude=None):
        """In a kernel: the live Monitor widget (text and HTML as fallbacks);
        in a terminal: a plain-text summary."""
        from ..notebook.widget import client_mimebundle

        bundle, self._monitor = client_mimebundle(self, self._monitor)
        return bundle

    # ---------------------------------------------------------------- default client

    def _set_default(self):
        default.push(self)
        self._previous_scheduler = dask.config.get("scheduler", None)
        dask.config.set(scheduler=self._dask_scheduler())

    def _unset_default(self):
        nxt = default.remove(self)
        if dask.config.get("scheduler", None) == self._dask_scheduler():
            dask.config.set(scheduler=nxt._dask_scheduler() if nxt
                            else self._previous_scheduler)

    def _dask_scheduler(self):
        """What dask's ``compute`` calls while this client is the default: `get`, or
        for an asynchronous client `dask_get` (dask wants a value, not a coroutine)."""
        return DaskScheduler(self.dask_get if self.asynchronous else self.get)

    @classmethod
    def current(cls, allow_global=True):
        """The client of the innermost `as_current` block, else (``allow_global``)
        the default client."""
        if allow_global:
            return default_client()
        client = default.current_context()
        if client is None:
            raise ValueError("not inside a Client.as_current() block")
        return client

    def as_current(self):
        """A context manager: inside it, this thread's (or asyncio task's)
        `default_client`, `get_client` and dask's ``compute`` use this client, and
        Futures unpickled there join it."""
        return default.as_current(self, self._dask_scheduler())

    def dask_get(self, dsk, keys, **kwargs):
        """`get`, blocking whatever the client: dask's own ``compute`` calls it (the
        client's I/O thread answers, so it blocks but never deadlocks a loop)."""
        kwargs.pop("sync", None)
        options = _options(kwargs, "get", **{name: kwargs.pop(name, default) for name, default
                                             in _GET_OPTIONS.items()})
        return self._blocking_get(dsk, keys, options)

    def _check_open(self):
        self.shell.check_open()

    # ---------------------------------------------------------------- graphs

    def _submit_graph(self, tasks, wanted, priorities=None, options=None, futures=True,
                      annotations=None, lost=()):
        """Send ``tasks`` [(key, node, deps)] and return {key: Future} for ``wanted``
        (or {key: FutureState}, held until dropped, with ``futures=False``).
        ``options``: the keyword arguments of `options.graph_options` (priority,
        retries, workers, resources, allow_other_workers); ``annotations``: those a
        collection kept per key; ``lost``: wanted keys not in ``tasks``, which
        need a key cancelled here: they are cancelled at once.

        The keys are held before the graph leaves, so no answer can be missed."""
        tasks = list(tasks)
        fields = graph_options([key for key, _, _ in tasks], annotations=annotations,
                               **(options or {}))
        held, indirect = self.shell.hold_graph(wanted)
        # Each task goes as (key, spec, deps, priority): the scheduler decodes a
        # million-task graph at once, so no second copy of every key (a priorities
        # dict), and a spec that is one small pickle goes as plain bytes (which the
        # scheduler keeps as they are) rather than as a Serialized.
        priority_of = (priorities or {}).get
        payload = []
        serialize_task = TaskSerializer()
        nbytes = 0
        holds = {}                 # {task key: [key of a Future in its arguments]}
        with pickled_futures() as pickled:
            for key, node, deps in tasks:
                before = len(pickled)
                try:
                    spec = serialize_task(g.compact(node))
                except Exception as e:
                    self.shell.drop(wanted)
                    part = unpicklable_part(g.compact(node))
                    if part is None:
                        raise SerializationError(
                            f"Could not serialize task {key!r}: {e}") from e
                    # One short error naming the culprit; the pickler's chain of
                    # tracebacks would only end by naming a tuple.
                    raise SerializationError(
                        f"Could not serialize task {key!r}: {part}") from None
                if len(pickled) > before:
                    holds[key] = pickled[before:]
                head = spec.frames[0]
                if (len(spec.frames) == 1 and type(head) is bytes
                        and len(head) < INLINE_LIMIT):
                    spec = head
                    nbytes += len(head)
                else:
                    nbytes += sum(memoryview(f).nbytes for f in spec.frames)
                payload.append((key, spec, list(deps), priority_of(key, 0)))
        _warn_if_large(nbytes)
        msg = {"op": "update-graph", "tasks": payload,
               "keys": [k for k in wanted if k not in lost], **fields}
        if indirect:                     # their values the long way (ClientState)
            msg["indirect"] = indirect
        if holds:                        # kept for those tasks until they end
            msg["holds"] = holds
        if payload or msg["keys"]:
            self.shell.send(msg)
        if futures:                           # the Futures take the holds over
            out = {key: Future.of_hold(key, self, held[key]) for key in wanted}
        else:
            out = held
        if lost:
            self.shell.lose([k for k in wanted if k in lost])
        return out

    def _graph_tasks(self, dsk, wanted, known_futures, borrowing):
        """Normalize, cull, check and order a graph; returns ([(key, node, deps)],
        priorities, {key} lost: those needing a key cancelled here, left out).
        ``borrowing``: a `_Borrowing` of this client."""
        graph = g.normalize(dsk, known=set(known_futures))
        deps = g.dependencies(graph)
        graph = g.cull(graph, deps, wanted)
        deps = {k: deps[k] for k in graph}
        # dask turns our Futures (TaskRefs) into references to their keys wherever
        # they sit, even inside fused subgraphs, and optimizes the Futures themselves
        # away: a graph may depend on any key a Future holds, this client's or
        # another's.
        g.check(graph, deps, known=borrowing)
        priorities = g.order(graph, deps)
        lost = g.needing(deps, borrowing.lost) if borrowing.lost else set()
        tasks = [(k, node, deps[k]) for k, node in graph.items() if k not in lost]
        return tasks, priorities, lost

    def get(self, dsk, keys, *, sync=True, retries=0, priority=0, workers=None,
            resources=None, allow_other_workers=False, **kwargs):
        """Compute ``keys`` of the dask graph ``dsk`` on the cluster (dask's `get`);
        ``sync=False``: Futures of ``keys`` at once, in the same structure."""
        options = _options(kwargs, "get", priority=priority, retries=retries,
                           workers=workers, resources=resources,
                           allow_other_workers=allow_other_workers)
        if not sync:
            submitted, known, flat, needed = self._get_graph(dsk, keys, options, True)
            return g.pack(keys, {**known, **submitted})
        if self.asynchronous:
            return self.run_op(self._get_op(dsk, keys, options))
        return self._blocking_get(dsk, keys, options)

    def _blocking_get(self, dsk, keys, options):
        """`get` to its end; inside a task, the task secedes while it waits (as in
        dask.distributed), so that a task computing a collection on one-thread
        workers leaves its slot to the collection's tasks."""
        with hooks.seceded():
            return run_blocking(self._get_op(dsk, keys, options))

    def _get_op(self, dsk, keys, options):
        states, known, flat, needed = self._get_graph(dsk, keys, options, False)
        try:
            wanted = list(states.values())
            wanted += [known[k].state for k in dict.fromkeys(flat) if k in known]
            results = yield from self.shell.gather_states_op(wanted)
        finally:
            self.shell.drop(needed)
        return g.pack(keys, results)

    def _get_graph(self, dsk, keys, options, futures):
        """Send the part of ``dsk`` that ``keys`` need: ({key: Future or held state}
        of what was sent, {key: Future} given in ``dsk``, the keys flat, the keys
        sent)."""
        self._check_open()
        annotations = per_key_annotations(dsk)
        if is_dask_collection(dsk) and not isinstance(dsk, dict):
            dsk = dsk.__dask_graph__()
            annotations = annotations or per_key_annotations(dsk)
        dsk = g.as_dict(dsk) if not isinstance(dsk, dict) else dsk
        flat = g.flatten_keys(keys)
        # Futures as graph values are data already on the cluster; another
        # client's become this client's own.
        known_futures = {}
        plain = {}
        with _Borrowing(self) as borrowing:
            for k, v in dsk.items():
                if isinstance(v, Future):
                    if v.client is not self:
                        v = borrowing.future(v.key)
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
            tasks, priorities, lost = self._graph_tasks(plain, needed, known_futures,
                                                        borrowing)
            sent = self._submit_graph(tasks, needed, priorities, options,
                                      futures=futures, annotations=annotations,
                                      lost=lost)
        return sent, known_futures, flat, needed

    # ---------------------------------------------------------------- futures API

    def submit(self, fn, /, *args, key=None, pure=True, retries=0, workers=None,
               priority=0, resources=None, allow_other_workers=False, fifo_timeout=None,
               actor=False, actors=False, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the cluster; returns a Future at once.

        The other keyword arguments are the client's, never the function's (as
        with dask.distributed): ``retries``, ``priority`` (higher runs first),
        ``workers`` (addresses, names or hosts it may run on),
        ``allow_other_workers`` (those are a preference), ``resources``
        (``{"GPU": 1}``: only on workers started with at least that much, and
        never more at once there than they have).  ``actor=True`` (or
        ``actors=True``): ``fn`` is a class, and the object made stays on the worker
        as an actor; the Future's result is its `Actor` handle (client/actors.py)."""
        if actor or actors:
            if not isinstance(fn, type):
                raise TypeError("submit(..., actor=True) takes a class")
            return self.submit_call(create_actor, (fn, args, kwargs), {},
                                    key=key or actor_key(fn), pure=False, retries=0,
                                    workers=workers, priority=priority,
                                    resources=resources,
                                    allow_other_workers=allow_other_workers,
                                    fifo_timeout=fifo_timeout)
        return self.submit_call(fn, args, kwargs, key=key, pure=pure, retries=retries,
                                workers=workers, priority=priority, resources=resources,
                                allow_other_workers=allow_other_workers,
                                fifo_timeout=fifo_timeout, actor=actor or actors)

    def submit_call(self, fn, args, kwargs, key=None, pure=True, retries=0, workers=None,
                    priority=0, resources=None, allow_other_workers=False,
                    fifo_timeout=None, actor=False):
        """`submit` with the call's keyword arguments kept apart from the options,
        so that a function may take ``key=`` or ``workers=`` itself (the Executor)."""
        self._check_open()
        _check_other_workers(allow_other_workers, workers)
        options = _options({"fifo_timeout": fifo_timeout, "actor": actor}, "submit",
                           priority=priority, retries=retries, workers=workers,
                           resources=resources, allow_other_workers=allow_other_workers)
        if not callable(fn):
            raise TypeError("first argument of submit must be callable")
        if key is None:
            if pure:
                key = f"{funcname(fn)}-{call_token(function_token(fn, kwargs), args)}"
            else:
                key = f"{funcname(fn)}-{uuid.uuid4().hex}"
        node, found = call_spec(key, fn, args, kwargs)
        if self.shell.is_held(key):
            return Future(key, self, inform=False)
        with _Borrowing(self) as borrowing:
            if borrowing.need_futures(found.values()):
                tasks, lost = [(key, node, list(found))], ()
            else:
                tasks, lost = [], {key}
            futures = self._submit_graph(tasks, [key], None, options, lost=lost)
        return futures[key]

    def map(self, fn, /, *iterables, key=None, pure=True, retries=0, workers=None,
            priority=0, batch_size=None, resources=None, allow_other_workers=False,
            fifo_timeout=None, actor=False, actors=False, **kwargs):
        """Map ``fn`` over iterables; returns a list of Futures at once.  The
        keyword arguments of `submit` are the client's; the others go to ``fn``.
        ``actor=True``: one actor per row, as `submit` makes them."""
        _check_other_workers(allow_other_workers, workers)
        if actor or actors:
            return [self.submit(fn, *row, workers=workers, priority=priority,
                                resources=resources,
                                allow_other_workers=allow_other_workers,
                                fifo_timeout=fifo_timeout, actor=True, **kwargs)
                    for row in zip(*iterables)]
        self._check_open()
        options = _options({"fifo_timeout": fifo_timeout, "actor": actor or actors},
                           "map", priority=priority, retries=retries, workers=workers,
                           resources=resources, allow_other_workers=allow_other_workers)
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
        lost = set()
        with _Borrowing(self) as borrowing:
            for k, row in zip(keys, rows):
                if k in seen:
                    continue
                seen[k] = None
                node, found = call_spec(k, fn, row, kwargs)
                if borrowing.need_futures(found.values()):
                    tasks.append((k, node, list(found)))
                else:
                    lost.add(k)
            priorities = {k: i for i, k in enumerate(keys)}
            futures = self._submit_graph(tasks, list(seen), priorities, options,
                                         lost=lost)
        out = []
        for k in keys:               # a repeated key gets a Future of its own
            out.append(futures.pop(k) if k in futures
                       else Future(k, self, inform=False))
        return out

    def gather(self, futures, errors="raise", timeout=None, direct=None):
        """Values of Futures, in the same (nested) structure.  ``errors="raise"``: the
        first failed Future's exception is raised; ``"skip"``: failed Futures are left
        out of a top-level list and stand as None anywhere else.  An iterator gives
        an iterator of the values.  ``direct`` is
        accepted for dask.distributed's sake: values take the way the cluster allows
        (straight from a worker when small, else through the scheduler).  Futures
        of another client are a ValueError, as in dask.distributed (gather them
        with their own client)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        if not isinstance(futures, Iterator):
            others = [f for f in futures_in(futures)
                      if isinstance(f, Future) and f.client is not self]
            if others:
                raise ValueError(f"Cannot gather Futures created by another client: "
                                 f"{len(others)} of them, the first {others[0]!r}")
        if isinstance(futures, Iterator):
            # An iterator (a generator, a queue's) may be endless or still being
            # filled: an iterator of the values, each gathered once reached, as
            # dask.distributed's gather gives.
            return (self.gather(f, errors, timeout) for f in futures)
        return task_frames(self.run_op, self._gather_op(futures, errors,
                                                        seconds(timeout)))

    def _gather_op(self, futures, errors="raise", timeout=None):
        self._check_open()
        states = {f.key: f.state for f in futures_in(futures)}
        values = yield from self.shell.gather_states_op(list(states.values()), errors,
                                                        timeout)
        if errors == "skip":
            failed = {key for key, st in states.items() if st.status != FINISHED}
            if failed:
                if type(futures) is list:
                    futures = [f for f in futures
                               if not (isinstance(f, Future) and f.key in failed)]
                values = {key: None if key in failed else v for key, v in values.items()}
        return _pack_futures(futures, values)

    def scatter(self, data, broadcast=False, workers=None, hash=True, timeout=None,
                direct=None):
        """Put local data on workers; returns Futures in the same structure.
        ``direct`` is accepted for dask.distributed's sake: values always take the
        way the cluster allows (ZeroMQ, or the scheduler's relay when large)."""
        return self.run_op(self._scatter_op(data, broadcast, workers, hash,
                                            seconds(timeout)))

    def _scatter_op(self, data, broadcast, workers, hash, timeout):
        self._check_open()
        # A dict keeps its keys; a list, tuple, set or frozenset gives one of the
        # same kind (a range or an iterator: a list), a value of each in order, one
        # Future per distinct value when hashed; anything else is one value.
        many = isinstance(data, (list, tuple, set, frozenset, range, Iterator))
        names = None
        if isinstance(data, dict):
            items = dict(data)
        else:
            values = list(data) if many else [data]
            names = [f"{type(x).__name__}-{tokenize(x) if hash else uuid.uuid4().hex}"
                     for x in values]
            items = dict(zip(names, values))
        kind = type(data) if type(data) in (tuple, set, frozenset) else list
        if not items:                  # nothing to put anywhere: no answer would come
            return {} if names is None else kind()
        blobs = {k: serialize(v) for k, v in items.items()}
        workers = worker_filter(workers)
        futures = {k: Future(k, self, inform=False) for k in items}
        msg = {"op": "scatter", "data": blobs, "broadcast": broadcast, "workers": workers}
        # Large values stream through the scheduler's relay when it has one: it then
        # never holds them whole.  Should a worker not get its stream, all go again
        # over ZeroMQ (keys already stored are answered at once).
        streams = yield from self.shell.scatter_streams_op(blobs, broadcast, workers,
                                                          timeout)
        if not streams:
            yield from self.shell.scatter_op(msg, items, timeout)
        else:
            streamed = {key for stream in streams for key in stream["keys"]}
            try:
                yield from self.shell.scatter_op(
                    {**msg, "streams": streams,
                     "data": {k: b for k, b in blobs.items() if k not in streamed}},
                    items, timeout)
            except RuntimeError as e:
                logger.warning("client: a scatter through the scheduler's relay failed "
                               "(%s); scattering over ZeroMQ", e)
                self.shell.streams_off()
                yield from self.shell.scatter_op(msg, items, timeout)
        self.shell.finished([(f.state, _typename(items[k])) for k, f in futures.items()])
        if names is None:
            return futures
        if not many:
            return futures[names[0]]
        return kind(futures[k] for k in names)

    def cancel(self, futures, force=False, reason=None, msg=None):
        """Cancel the Futures in ``futures``, a structure or dask collections (as
        `futures_of` finds them), and the tasks that depend on them.  Their results
        raise `FutureCancelledError` with ``reason`` ("unknown" if None) and
        ``msg``."""
        flat = futures_of(futures)
        # Cancelled here at once; then the wait for the scheduler, which has told of
        # the dependents it cancelled by then.
        ack = self.shell.cancel([f.state for f in flat], [f.key for f in flat], force,
                                reason, msg)
        return self.run_op(_acknowledged(ack))

    def recreate_error_locally(self, future):
        """Run here the task that made ``future`` (or the first erred Future in a
        structure or collections) fail, with its inputs gathered from the cluster:
        its exception is raised in this process, where a debugger (``%debug``,
        ``pdb.pm()``) sees its frames.  Waits for the Futures first; ValueError if
        none erred."""
        return self.run_op(then(self._erred_task_op(future), _run_here))

    def recreate_task_locally(self, future):
        """Run here the task that makes ``future`` (a Future, or the first Future
        of a structure or collection), whether it succeeds or fails, with its
        inputs gathered from the cluster; its value, or its exception raised, as
        dask.distributed's.  Waits for the Future first."""
        return self.run_op(then(self._task_op(future), _run_here))

    def _task_op(self, futures):
        """(the node that makes the first Future, {input key: value})."""
        fs = futures_of(futures, client=self)
        if not fs:
            raise ValueError("no Future among those given")
        yield from Waiter(fs[:1]).wait_op()
        return (yield from self._run_spec_op(fs[0].key))

    def _run_spec_op(self, key):
        task = yield from self.shell.request_op({"op": "info", "what": "run-spec",
                                                 "key": key})
        if task is None:
            raise KeyError(f"the scheduler no longer has the task {key!r}")
        inputs = self._submit_graph([], task["dependencies"])   # computed again if
        values = yield from self._gather_op(inputs)             # they were released
        return self._load(task["spec"]), values

    def _erred_task_op(self, futures):
        """(the node that raised, {input key: value}) of the first erred Future."""
        fs = futures_of(futures, client=self)
        yield from Waiter(fs).wait_op()
        erred = [f for f in fs if f.status == "error"]
        if not erred:
            raise ValueError("No errored futures passed: none of those given erred")
        record = erred[0].state.error
        origin = record.get("origin", record.get("key", erred[0].key))
        return (yield from self._run_spec_op(origin))

    def retry(self, futures):
        """Compute erred Futures again, with the erred inputs they erred from;
        returns (or, awaited, ends) once the scheduler has them again.  ``futures``
        as `futures_of` finds them (in a structure, behind collections)."""
        answer = self.shell.retry(list(dict.fromkeys(f.key for f in futures_of(futures))))
        return self.run_op(_answer(answer, "'retry'"))

    def futures_of(self, futures):
        """`futures_of` (the Futures in a structure or behind dask collections);
        a cancelled one is an error."""
        return futures_of(futures, client=self)

    def compute(self, collections, sync=False, optimize_graph=True, priority=0,
                retries=0, workers=None, resources=None, allow_other_workers=False,
                fifo_timeout=None, actors=False, traverse=True, **kwargs):
        """Start computing dask collections; returns a Future per collection (or the
        results with ``sync=True``).  ``workers``, ``resources``,
        ``allow_other_workers``, ``retries``: for every task of the graph, as with
        `submit`.

        As in dask.distributed: a list, tuple or set gives a list; anything else is
        one.  With ``traverse``, a list, set, tuple, dict or iterator among them is
        computed whole (as `dask.delayed` of it: one Future of it, its collections
        computed inside); a value that is no dask collection comes back as it is."""
        options = _options({"fifo_timeout": fifo_timeout, "actor": actors, **kwargs},
                           "compute", priority=priority, retries=retries,
                           workers=workers, resources=resources,
                           allow_other_workers=allow_other_workers)
        single = not isinstance(collections, (list, tuple, set, frozenset))
        colls = [collections] if single else list(collections)
        if traverse:
            colls = [dask.delayed(c) if isinstance(c, (list, set, tuple, dict, Iterator))
                     else c for c in colls]
        found = [c for c in colls if is_dask_collection(c)]
        annotations = {}
        dsk, keys, _ = g.collections_to_graph(found, optimize=optimize_graph,
                                              annotations=annotations)
        futures = self._graph_futures(dsk, keys, options, annotations)
        computed = iter(keys)
        result = [futures[next(computed)] if is_dask_collection(c) else c for c in colls]
        if sync:
            return self.run_op(self._gather_op(result[0] if single else result))
        return result[0] if single else result

    def persist(self, collections, optimize_graph=True, priority=0, retries=0,
                workers=None, resources=None, allow_other_workers=False,
                fifo_timeout=None, actors=False, **kwargs):
        """Start computing collections and return them backed by data on the cluster
        (the placement keyword arguments as with `compute`).

        As ``dask.persist`` does: one optimized expression for all collections, and
        each ORIGINAL collection rebuilt by its ``__dask_postpersist__`` from Futures
        of its own output keys."""
        options = _options({"fifo_timeout": fifo_timeout, "actor": actors, **kwargs},
                           "persist", priority=priority, retries=retries,
                           workers=workers, resources=resources,
                           allow_other_workers=allow_other_workers)
        single = not isinstance(collections, (list, tuple))
        colls = [collections] if single else list(collections)
        annotations = {}
        dsk, keys, rebuild = g.collections_to_persist(colls, optimize=optimize_graph,
                                                      annotations=annotations)
        out = rebuild(self._graph_futures(dsk, keys, options, annotations))
        return out[0] if single else out

    def normalize_collection(self, collection):
        """``collection`` with the tasks of the keys this client holds Futures of
        replaced by those Futures, and what only they needed dropped: computing it
        computes none of them again.  The collection itself if none of its keys is
        held.  TypeError for a collection that its ``__dask_postpersist__`` cannot
        rebuild on another graph with the same keys (dataframes, whose expressions
        are rebuilt lowered)."""
        graph = dict(collection.__dask_graph__())
        held = [k for k in self.shell.held() if k in graph]
        if not held:
            return collection
        graph.update((k, Future(k, self, inform=False)) for k in held)
        deps = g.dependencies(g.normalize(graph))
        graph = g.cull(graph, deps, g.flatten_keys(collection.__dask_keys__()))
        rebuild, args = collection.__dask_postpersist__()
        normal = rebuild(graph, *args)
        if normal.__dask_keys__() != collection.__dask_keys__():
            raise TypeError(f"normalize_collection: a {type(collection).__name__} "
                            f"cannot be rebuilt on another graph with the same keys")
        return normal

    def _graph_futures(self, dsk, keys, options, annotations):
        """Submit what ``keys`` need of a normalized graph; {key: Future} for every
        key.  A key outside the graph is data a Future already holds (a persisted
        collection's), this client's or another's: dask turned those Futures into
        references.
        ``annotations``: the graph's, ``{name: {key: value}}``."""
        wanted = [k for k in dict.fromkeys(keys) if k in dsk]
        with _Borrowing(self) as borrowing:
            tasks, priorities, lost = self._graph_tasks(dsk, wanted, (), borrowing)
            futures = self._submit_graph(tasks, wanted, priorities, options,
                                         annotations=kept_annotations(annotations),
                                         lost=lost)
            for k in keys:
                if k not in futures:
                    futures[k] = borrowing.future(k)
        return futures

    # ---------------------------------------------------------------- shared names

    def set_collection(self, name, collection):
        """Store a dask collection (its graph, not its data) for every client."""
        op = self.shell.request_op({"op": "set-collection", "name": name,
                                    "data": serialize(collection)})
        return self.run_op(then(op, lambda _: None))

    def get_collection(self, name):
        def loaded(blob):
            if blob is None:
                raise KeyError(name)
            return self._load(blob)
        return self._info("get-collection", name=name, after=loaded)

    def list_collections(self):
        return self._info("list-collections", after=list)

    def _load(self, blob):
        return load(blob, self)

    def publish_dataset(self, *args, name=None, override=False, **kwargs):
        """Keep named data (values or Futures) on the cluster for every client."""
        if args:
            if name is None:
                raise ValueError("publish_dataset(value, name=...) needs a name")
            kwargs[name] = args[0]
        return self.run_op(self._publish_op(kwargs, override))

    def _publish_op(self, datasets, override):
        for dname, value in datasets.items():
            keys = [f.key for f in futures_of(value)]
            reply = yield from self.shell.request_op(
                {"op": "publish-dataset", "name": dname, "data": serialize(value),
                 "keys": keys, "override": override})
            if isinstance(reply, dict) and "error" in reply:
                raise KeyError(reply["error"])

    def get_dataset(self, name, default=KeyError):
        """The dataset published as ``name`` (a list of names: a list of them);
        KeyError if there is none, unless a ``default`` is given."""
        return self.run_op(self._get_datasets_op(name, default))

    def _get_datasets_op(self, name, default):
        values = []
        for one in name if isinstance(name, list) else [name]:
            blob = yield from self.shell.request_op(
                {"op": "info", "what": "get-dataset", "name": one})
            if blob is None:
                if default is KeyError:
                    raise KeyError(f"Dataset {one!r} not found")
                values.append(default)
            else:
                values.append(self._load(blob))
        return values if isinstance(name, list) else values[0]

    def list_datasets(self):
        """The names of the published datasets, a tuple."""
        return self._info("list-datasets", after=tuple)

    def unpublish_dataset(self, name):
        """Forget the dataset ``name`` (a list of names: each of them); nothing if
        there is none."""
        return self.run_op(self._unpublish_op(name))

    def _unpublish_op(self, name):
        for one in name if isinstance(name, list) else [name]:
            yield from self.shell.request_op({"op": "unpublish-dataset", "name": one})

    @property
    def datasets(self):
        """The published datasets as a mapping: ``c.datasets[name] = value``,
        ``c.datasets[name]``, ``del c.datasets[name]``, ``list(c.datasets)``."""
        return Datasets(self)

    # ---------------------------------------------------------------- cluster

    def get_executor(self, **submit_kwargs):
        """A `concurrent.futures.Executor` running on the cluster; ``submit_kwargs``
        (``pure``, ``workers``, ``resources``, ``allow_other_workers``,
        ``retries``, ``priority``) apply to every task; any other is a TypeError."""
        return ClientExecutor(self, **submit_kwargs)

    def _info(self, what, timeout=None, after=None, **kw):
        op = self.shell.request_op({"op": "info", "what": what, **kw}, timeout=timeout)
        return self.run_op(op if after is None else then(op, after))

    def scheduler_info(self, n_workers=-1, timeout=None):
        """The scheduler and its workers, with dask.distributed's keys ("type",
        "id", "address", "services", "started", "n_workers", "total_threads",
        "total_memory", "workers") and dask_ipy's ("ntasks", "nclients"...);
        ``n_workers``: the details of the first n workers only (-1: all).

        A dict, never a coroutine, for an asynchronous client too: its I/O thread
        asks the scheduler while the caller waits (one round trip)."""
        def complete(info):
            info.update(type="Scheduler", address=self.address, id=self.scheduler_id,
                        started=self.shell.state.started, services=self._services())
            for worker in info["workers"].values():
                if isinstance(worker.get("id"), bytes):     # as `Worker.id`: a str
                    worker["id"] = worker["id"].decode()
            return info
        op = self.shell.request_op({"op": "info", "what": "scheduler-info",
                                    "n_workers": n_workers}, timeout=timeout)
        return run_blocking(then(op, complete))

    def _services(self):
        """The scheduler's services by name: {"dashboard": port} if it serves one."""
        dashboard = self.shell.state.dashboard
        return {} if not dashboard else {"dashboard": dashboard["port"]}

    def write_scheduler_file(self, scheduler_file):
        """Write the scheduler's connection file (its addresses and this client's
        key, readable only by its owner) to ``scheduler_file``: a `Client`, or
        ``dask-ipy worker``, given that path connects to the same scheduler.
        ValueError if this client has a scheduler file already (it was made from
        one, or wrote one), as dask.distributed's."""
        if self.scheduler_file is not None:
            raise ValueError("Scheduler file already set")
        self.scheduler_file = scheduler_file
        write_connection_file({"address_to_workers": self.shell.state.address_to_workers,
                               "address_to_clients": self.address,
                               "id": self.scheduler_id}, self.security, scheduler_file)

    def who_has(self, futures=None):
        """{key: (workers holding it)}, of the Futures in ``futures`` (as
        `futures_of` finds them) or of all keys."""
        keys = None if futures is None else [f.key for f in futures_of(futures)]
        if keys == []:
            return self.run_op(done({}))
        return self._info("who-has", keys=keys,
                          after=lambda r: {k: tuple(v) for k, v in r.items()})

    def has_what(self, workers=None):
        """{worker address: (keys it holds)}, of ``workers`` (addresses or names)
        or all."""
        return self._info("has-what", workers=worker_names(workers),
                          after=lambda r: {k: tuple(v) for k, v in r.items()})

    def nthreads(self, workers=None):
        """{worker address: threads}, of ``workers`` (addresses or names) or all."""
        return self._info("nthreads", workers=worker_names(workers), after=dict)

    ncores = nthreads

    def subscribe_monitor(self, callback):
        """Call ``callback(snapshot)`` (on the I/O thread) about twice a second."""
        self.shell.subscribe_monitor(callback)

    def unsubscribe_monitor(self, callback):
        self.shell.unsubscribe_monitor(callback)

    # ---------------------------------------------------------------- life

    def close(self, timeout=5):
        """Close the connection (any thread, the I/O thread included: it is then not
        waited for)."""
        return self.run_op(self._close_op(seconds(timeout)))

    def _close_now(self, timeout=5):
        run_blocking(self._close_op(timeout))

    def _close_op(self, timeout=5):
        if not self.shell.loop.in_loop():
            # Keys lent to another client stay until the scheduler has its work,
            # which travels on that client's own connection.
            for loan in list(self._loans):
                try:
                    yield Answer(loan, timeout, "the return of keys lent")
                except TimeoutError:
                    pass
        with self._status_lock:
            if not self.shell.begin_close():
                return
        self._unset_default()
        # Threads still waiting for an answer (a get() in another thread) wake up.
        yield from self.shell.finish_close_op(timeout)
        if self._own_cluster is not None:
            self._own_cluster.close()

    def shutdown(self, timeout=10):
        """Stop the scheduler and its workers, then close this client."""
        return self.run_op(self._shutdown_op(seconds(timeout)))

    def _shutdown_op(self, timeout):
        try:
            yield from self.shell.request_op({"op": "shutdown"}, timeout=timeout)
        except (TimeoutError, SchedulerLost):
            pass
        yield from self._close_op()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close_now()

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        # A connection is not copied: a deep copy of dask's config, which holds this
        # client's `get` while it is the default, shares it.
        return self

    def __del__(self):
        try:
            if self.status != "closed" and self.shell.loop.running:
                self._close_now(timeout=1)
        except Exception:
            pass


class DaskScheduler:
    """dask.config's ``scheduler`` while a Client is the default: its `get` (or
    `dask_get`), equal to that bound method, ``__self__`` the client (dask's
    `persist` asks the client to persist).  Pickled, as dask.config is on its way
    to another process, it becomes dask.distributed's own setting there,
    "dask.distributed": the default client of that process, if it has one (a
    client does not travel)."""

    __slots__ = ("method", "__self__")

    def __init__(self, method):
        self.method = method
        self.__self__ = method.__self__

    def __call__(self, dsk, keys, **kwargs):
        return self.method(dsk, keys, **kwargs)

    def __eq__(self, other):
        if isinstance(other, DaskScheduler):
            other = other.method
        return self.method == other

    def __hash__(self):
        return hash(self.method)

    def __reduce__(self):
        return str, ("dask.distributed",)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):        # a copy of dask.config, in this process
        return self

    def __repr__(self):
        return repr(self.method)
