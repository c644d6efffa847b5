"""Futures of remote results, `wait`, `as_completed`, and a concurrent.futures Executor.

A `Future` is a handle on one key on the cluster.  All Futures of a key in one client
share a `FutureState` (status, error; see `state.ClientState`); the client counts
Futures per key and tells the scheduler to release the key when the last one is
garbage-collected.

    scheduler ─key-in-memory / task-erred / cancelled─▶ client I/O thread: ClientState
                                                          │ Done(state): wake waiters,
                                                          ▼ run done callbacks
                                     Future.result() ─gather─▶ value

Results are fetched when asked for (`result`, `gather`, ``await future``), never
pushed.  What waits (`result`, `exception`, `wait`, `as_completed`) is written once as
an operation (see `waits`): blocking, or awaited for an asynchronous client; ``await``
works on a Future of either kind of client.

What a Future asks of its client, all public: ``client.shell`` holds and drops keys
(`ClientShell.hold`, `drop`) and gathers them (`gather_states`, `gather_async`);
``client.cancel`` and, for the Executor, ``client.submit_call``.  Waiting on a key
needs no client: `wait_until_done` and `when_done` below, under `LOCK`, the lock the
client shells take around their state machines too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import html
import importlib
import queue
import threading
import time
from collections import deque, namedtuple
from datetime import timedelta
from functools import partial

from dask._task_spec import DataNode, Task, TaskRef
from dask.base import is_dask_collection
from dask.utils import parse_timedelta

from .. import hooks
from ..errors import SchedulerLost, rebuild_error
from ..log import logger
from ..protocol import deserialize
from .default import default_client
from .state import CANCELLED, ERROR, FINISHED, LOST, FutureState
from .waits import (Answer, Flag, Signal, in_loop, resolve, run_async, run_blocking,
                    within)

FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION
ALL_COMPLETED = cf.ALL_COMPLETED

CancelledError = cf.CancelledError


class FutureCancelledError(CancelledError):
    """A Future's key was cancelled, for ``reason``: the one given to the cancel,
    "lost dependencies" (work submitted on a cancelled Future), "scheduler-restart",
    or "unknown" when none is known.  ``msg``: more words, or None.  A
    concurrent.futures CancelledError, as dask.distributed's."""

    def __init__(self, key, reason, msg=None):
        self.key = key
        self.reason = reason or "unknown"
        self.msg = msg

    def __str__(self):
        text = f"{self.key} cancelled for reason: {self.reason}."
        return f"{text}\n{self.msg}" if self.msg else text

    def __reduce__(self):
        return type(self), (self.key, self.reason, self.msg)


class CancelledFuturesGroup:
    """The errors of the Futures cancelled for one ``reason`` (in a
    `FuturesCancelledError`)."""

    __slots__ = ("errors", "reason")

    def __init__(self, errors, reason):
        self.errors = errors
        self.reason = reason

    def __str__(self):
        n = len(self.errors)
        s = "s" if n > 1 else ""
        msg = next((e.msg for e in self.errors if e.msg), None)
        return (f"{n} Future{s} cancelled for reason: {self.reason}.\n"
                f"Message: {msg}\nFuture{s}: {[e.key for e in self.errors]}")


class FuturesCancelledError(CancelledError):
    """Futures were cancelled (raised by `wait` and `Client.futures_of`, as
    dask.distributed's): ``error_groups`` holds their errors by reason, the largest
    group first."""

    def __init__(self, error_groups):
        self.error_groups = sorted(error_groups, key=lambda g: len(g.errors),
                                   reverse=True)

    def __str__(self):
        n = sum(len(g.errors) for g in self.error_groups)
        lines = [f"{n} Future{'s' if n > 1 else ''} cancelled:", "Reasons:"]
        return "\n".join(lines + [str(g) for g in self.error_groups])

    def __reduce__(self):
        return type(self), (self.error_groups,)


def raise_if_cancelled(futures):
    """Raise `FuturesCancelledError` if any of our Futures in ``futures`` was
    cancelled."""
    by_reason = {}
    for f in futures:
        if isinstance(f, Future) and f.cancelled():
            error = cancelled_error(f.state)
            by_reason.setdefault(error.reason, []).append(error)
    if by_reason:
        raise FuturesCancelledError([CancelledFuturesGroup(errors, reason)
                                     for reason, errors in by_reason.items()])


# What `wait` returns, as `concurrent.futures.wait` does.
DoneAndNotDoneFutures = namedtuple("DoneAndNotDoneFutures", "done not_done")


# Guards every client's state machine and the waiters on its keys: a status changes,
# and a waiter registers, under it.  Reentrant: a Future collected by the garbage
# collector while it is held drops its key under it again.
LOCK = threading.RLock()


class Acknowledgement:
    """What an asynchronous client's `Future.cancel` (or `Variable.delete`)
    returns: the request is sent already; awaited, it waits for the scheduler's
    word ``answer`` (a concurrent.futures.Future).  Left alone, it is dropped
    without a warning, as a coroutine never awaited would not be."""

    __slots__ = ("answer", "what")

    def __init__(self, answer, what="cancel"):
        self.answer = answer
        self.what = what

    @classmethod
    def sent(cls, what):
        """For a message sent that has no answer: awaiting it returns at once."""
        answer = cf.Future()
        answer.set_result(None)
        return cls(answer, what)

    def __await__(self):
        return run_async(self._op()).__await__()

    def _op(self):
        try:
            yield Answer(self.answer, None, f"{self.what!r} from the scheduler")
        except (SchedulerLost, RuntimeError):      # nothing left to cancel there
            pass


def seconds(timeout):
    """A timeout in seconds: given as a number or a duration string ("500ms",
    "2s"), as dask.distributed takes them; None (no limit) as it is."""
    return None if timeout is None else parse_timedelta(timeout, "s")


def wait_until_done(state, timeout=None):
    """Block until ``state`` is done; False if ``timeout`` passed first."""
    with LOCK:
        if state.done():
            return True
        if state.event is None:
            state.event = threading.Event()
        event = state.event
    return event.wait(timeout)


def when_done(state, callback):
    """Call ``callback()`` once ``state`` is done (at once if it is)."""
    with LOCK:
        if not state.done():
            if state.callbacks is None:
                state.callbacks = []
            state.callbacks.append(callback)
            return
    callback()


def _when_ended(futures, fn):
    """``fn(future)`` once each of ``futures`` is done, at once on the thread that
    learns it (the waits of this module: short, and never waiting themselves).  The
    lock is taken once for all of them: the I/O thread, finishing keys meanwhile,
    would take it in turns with a wait of many futures.  A future may be a
    concurrent.futures.Future too (`wait` takes those)."""
    ready = []
    with LOCK:
        for future in futures:
            if not isinstance(future, Future):
                continue
            state = future.state
            if state.done():
                ready.append(future)
                continue
            if state.callbacks is None:
                state.callbacks = []
            state.callbacks.append(partial(fn, future))
    for future in futures:
        if not isinstance(future, Future):
            future.add_done_callback(fn)
    for future in ready:
        fn(future)


class KeyDone:
    """A wait (see `waits`) until ``state`` is done: True, or False after
    ``timeout`` seconds."""

    __slots__ = ("state", "timeout")

    def __init__(self, state, timeout=None):
        self.state = state
        self.timeout = timeout

    def block(self):
        return wait_until_done(self.state, self.timeout)

    async def wait(self):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        when_done(self.state, lambda: in_loop(loop, resolve, fut, True))
        try:
            return await within(fut, self.timeout)
        except TimeoutError:
            return False


def take_waiters(state):
    """(event, callbacks) of a state just done, taken off it; call under `LOCK`."""
    event, callbacks, state.callbacks = state.event, state.callbacks, None
    return event, callbacks


def wake(state, event, callbacks):
    """Wake what waited on a state (outside `LOCK`: callbacks may do anything)."""
    if event is not None:
        event.set()
    for cb in callbacks or ():
        try:
            cb()
        except Exception:
            logger.exception("error in a done callback of %r", state.key)


def cancelled_error(state):
    """The FutureCancelledError of a cancelled key: why, as its state says."""
    why = state.error or {}
    return FutureCancelledError(state.key, why.get("reason"), why.get("msg"))


def raise_error(state):
    if state.status == CANCELLED:
        raise cancelled_error(state)
    exc, tb = rebuild_error(state.error or {})
    raise exc.with_traceback(tb)


def task_frames(call, *args):
    """``call(*args)``; a task's exception it raises (by `raise_error`) leaves with
    the task's own frames only, below the caller's: not those of the client's
    machinery on the way (a short traceback, as the user wants to read)."""
    try:
        return call(*args)
    except Exception as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code is not raise_error.__code__:
            tb = tb.tb_next
        if tb is None:
            raise
        raise e.with_traceback(tb.tb_next)


def exception_of(state):
    if state.status in (ERROR, LOST):
        return rebuild_error(state.error)[0]
    return None


class Future(TaskRef):
    """A remote result: ``f.result()``, ``f.done()``, ``f.cancel()``...

    Futures may be passed to `Client.submit` before they finish; the task then waits
    for them on the cluster, and their data never comes back to the client.

    A Future is a dask `TaskRef` to its key (as distributed's futures are): dask's
    graph machinery then treats one as a dependency wherever it sits, in a legacy
    graph, in a `Task`'s arguments (``dask.delayed(f)(future)``) or inside the
    subgraph of a fused task.

    ``Future(key, client=None)`` makes one of a key already on the scheduler (of
    the default client without ``client``), as dask.distributed's: the client then
    wants that key, and learns its status.
    """

    __slots__ = ("client", "state", "__weakref__")

    def __init__(self, key, client=None, state=None, inform=True):
        if client is None:
            client = default_client()
        if state is not None and not isinstance(state, FutureState):
            state = None                # not ours (dask.distributed's takes others)
        self.key = key
        self.client = client
        self.state = client.shell.hold(key, state, inform)

    @classmethod
    def of_hold(cls, key, client, state):
        """A Future that takes over a hold of ``key`` already counted (`hold_many`),
        with its ``state``: no second hold to count, and none to let go of."""
        future = cls.__new__(cls)
        future.key = key
        future.client = client
        future.state = state
        return future

    @property
    def status(self):
        return self.state.status

    @property
    def executor(self):
        """The client that made this Future (its executor)."""
        return self.client

    def done(self):
        return self.state.done()

    def cancelled(self):
        return self.state.status == CANCELLED

    def _live_client(self):
        """This Future's client: a released Future has none, and is cancelled."""
        if self.client is None:
            raise FutureCancelledError(self.key, None, "This Future was released.")
        return self.client

    def _run(self, op):
        """Run ``op`` as this Future's client does: blocking, or as a coroutine for
        an asynchronous client."""
        return self._live_client().run_op(op)

    def _wait_op(self, timeout):
        timeout = seconds(timeout)
        if not (yield KeyDone(self.state, timeout)):
            raise cf.TimeoutError(f"{self.key!r} not done after {timeout} s")

    def _result_op(self, timeout):
        values = yield from self._live_client().shell.gather_states_op(
            [self.state], timeout=seconds(timeout))
        return values[self.key]

    def result(self, timeout=None):
        """The value (a coroutine of it for an asynchronous client)."""
        return task_frames(self._run, self._result_op(timeout))

    def __await__(self):
        """``await future``: its value, whatever kind of client made it."""
        return run_async(self._result_op(None)).__await__()

    def _exception_op(self, timeout):
        yield from self._wait_op(timeout)
        return exception_of(self.state)

    def exception(self, timeout=None):
        """The exception of a failed task; None if it finished or was cancelled
        (as dask.distributed's: `result` is what raises for a cancelled one)."""
        return self._run(self._exception_op(timeout))

    def _traceback_op(self, timeout):
        yield from self._wait_op(timeout)
        if self.state.status in (ERROR, LOST):
            return rebuild_error(self.state.error)[1]
        return None

    def traceback(self, timeout=None):
        return self._run(self._traceback_op(timeout))

    def cancel(self, reason=None, msg=None, force=False):
        """Cancel this Future (and what depends on it) at once, for ``reason`` and
        with ``msg`` (`Client.cancel`); a blocking client also waits until the
        scheduler has."""
        if self.client.asynchronous:
            # Cancelled at once; ``await f.cancel()`` waits for the scheduler, as
            # with dask.distributed's asynchronous client.
            return Acknowledgement(self.client.shell.cancel(
                [self.state], [self.key], force, reason, msg))
        self.client.cancel([self], force=force, reason=reason, msg=msg)
        return True

    def retry(self):
        """Compute this erred Future again (`Client.retry`)."""
        return self._live_client().retry([self])

    def add_done_callback(self, fn):
        """Call ``fn(future)`` once the future is done, on the client's callback
        thread: callbacks run one at a time, in the order their Futures end, and
        may wait on other Futures (the I/O thread that would answer is not theirs)."""
        ref = self
        pool = self._live_client().shell.callbacks

        def cb():
            try:
                fn(ref)
            except Exception:
                logger.exception("error in done callback %r", fn)
        when_done(self.state, lambda: pool.submit(cb))

    def release(self):
        """Let go of the key: once no Future of this client holds it, the scheduler
        may forget it, and this Future is cancelled."""
        client = self._drop()
        if client is not None:
            client.shell.released(self.state)

    def _drop(self):
        client, self.client = self.client, None
        if client is not None:
            client.shell.drop((self.key,))
        return client

    def __del__(self):
        try:
            self._drop()
        except Exception:
            pass

    def __reduce__(self):
        pickled = getattr(_pickling, "keys", None)
        if pickled is not None:
            pickled.append(self.key)
        return _rebuild_future, (self.key,)

    @property
    def type(self):
        """The class of the value once it is known (None before, or when this
        process cannot import it)."""
        return resolve_type(self.state.type)

    def __repr__(self):
        typ = self.state.type
        if typ:          # as dask.utils.typename names it: "int", "numpy.ndarray"
            typ = f", type: {typ.removeprefix('builtins.')}"
        # The key as printed, not quoted: ``key: inc-3f2a...``, ``key: ('x', 0)``.
        return f"<Future: {self.status}{typ or ''}, key: {self.key}>"

    __str__ = __repr__          # as dask.distributed's (TaskRef's str is the key)

    def _repr_html_(self):
        rows = [("status", self.status), ("key", self.key)]
        if self.state.type:
            rows.append(("type", self.state.type))
        return "<strong>Future</strong>: " + ", ".join(
            f"{name} <code>{html.escape(str(value))}</code>" for name, value in rows)

    # Each Future is itself, as in dask.distributed: two Futures of one key are two
    # (`wait` counts both, both may be dict keys); TaskRef's equality is by key.
    def __hash__(self):
        return object.__hash__(self)

    def __eq__(self, other):
        return self is other

    # A token names the holding, not only the key: dask caches an expression by its
    # token-derived name, so a collection persisted again by another client (or after
    # its Futures here were let go) would otherwise come back as the older
    # expression, holding Futures of a closed client or cancelled ones, while the
    # new Futures were dropped and their keys released.  The state lives as long as
    # any Future of it, and so as long as anything tokenized from one.
    def __dask_tokenize__(self):
        return ("dask-ipy-future", self.key, id(self.state))


def _walk(obj, deep):
    """The Futures in ``obj``, in the order met: in lists, tuples, sets and dict
    values; with ``deep`` also behind dask collections, whose graphs hold them as
    data (a persisted collection) or as arguments of tasks."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, Future):
            yield x
            continue
        if isinstance(x, (list, tuple, set)):
            children = x
        elif isinstance(x, dict):
            children = x.values()
        elif not deep:
            continue
        elif isinstance(x, DataNode):
            children = (x.value,)
        elif isinstance(x, Task):            # its nested containers are Tasks too
            children = (*x.args, *x.kwargs.values())
        elif is_dask_collection(x):
            children = dict(x.__dask_graph__()).values()
        else:
            continue
        stack.extend(reversed(list(children)))      # popped in their order


def futures_in(obj):
    """The Futures in ``obj``, walking lists, tuples, sets and dict values."""
    return list(_walk(obj, False))


def futures_of(obj, client=None):
    """The Futures in ``obj``, each once, in the order met (dask.distributed's
    `futures_of`): as `futures_in` finds them, and behind dask collections.  Two
    Futures of one key are two (a Future is equal only to itself).  With
    ``client``, a cancelled one is an error (`FuturesCancelledError`)."""
    futures = list(dict.fromkeys(_walk(obj, True)))
    if client is not None:
        raise_if_cancelled(futures)
    return futures


def fire_and_forget(obj):
    """Run the tasks of the Futures in ``obj`` (as `futures_of` finds them), and
    those they need, to their end even once no Future of them is left and their
    client has closed; the scheduler then forgets each one unless a client wants it
    (dask.distributed's `fire_and_forget`)."""
    keys = {}
    for f in futures_of(obj):
        if f.client is not None:
            keys.setdefault(f.client, {})[f.key] = None
    for client, of_client in keys.items():
        # In order with its other messages: before any release of these keys.
        client.shell.send({"op": "fire-and-forget", "keys": list(of_client)})


_unpickling = threading.local()
_pickling = threading.local()


@contextlib.contextmanager
def pickled_futures():
    """A list of the keys of the Futures pickled on this thread within the block
    (in a task's arguments, those travel as Futures, not as its inputs)."""
    outer = getattr(_pickling, "keys", None)
    _pickling.keys = keys = []
    try:
        yield keys
    finally:
        _pickling.keys = outer


def load(blob, client):
    """``deserialize(blob)``; Futures in it belong to ``client``."""
    _unpickling.client = client
    try:
        return deserialize(blob)
    finally:
        _unpickling.client = None


def load_all(blobs, client):
    """{key: value} of {key: blob}; Futures in them belong to ``client``."""
    _unpickling.client = client
    try:
        return {k: deserialize(v) for k, v in blobs.items()}
    finally:
        _unpickling.client = None


def unpickling_client():
    """The client loading values on this thread now, if any."""
    return getattr(_unpickling, "client", None)


def resolve_type(name):
    """The class named ``module.qualname`` by a worker, or None."""
    if not name:
        return None
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj if isinstance(obj, type) else None
    return None


def _rebuild_future(key):
    """A Future unpickled: of the client loading it; inside a task, of the task's
    client (`get_client`'s there, as in dask.distributed: a persisted collection
    passed to a task computes there, and that client holds its keys meanwhile);
    elsewhere of the default client."""
    client = getattr(_unpickling, "client", None)
    if client is None:
        client = _task_client()
    if client is None:
        try:
            client = default_client()
        except ValueError:
            # No client here (a worker loading data outside a task): a plain
            # reference to the key.
            return TaskRef(key)
    return Future(key, client, inform=True)


def _task_client():
    """The client of the tasks of the worker running a task on this thread; None
    outside tasks."""
    try:
        worker, _ = hooks.task_host()
    except ValueError:
        return None
    return hooks.task_client(worker)


# ---------------------------------------------------------------- wait, as_completed

def wait(fs, timeout=None, return_when=ALL_COMPLETED):
    """Wait for Futures (ours or concurrent.futures'); returns ``(done, not_done)``,
    or a coroutine of it when a Future belongs to an asynchronous client.  ``fs``
    may be one Future, or hold Futures anywhere `futures_of` finds them (a persisted
    collection, a dict...).  Once they are done, if any of our Futures was
    cancelled, it raises `FuturesCancelledError` instead, as dask.distributed's.

    ``timeout`` (seconds, or a string such as ``"500ms"``): `TimeoutError` if
    ``return_when`` does not hold by then, as dask.distributed's `wait` (unlike
    `concurrent.futures.wait`, which returns what is done; `Client.get_executor`
    gives that one its own futures)."""
    if isinstance(fs, (Future, cf.Future)):
        fs = [fs]
    elif not (isinstance(fs, (list, tuple, set, frozenset))
              and all(isinstance(f, (Future, cf.Future)) for f in fs)):
        fs = futures_of(fs)
    if isinstance(timeout, (Future, cf.Future)) or not (
            timeout is None or isinstance(timeout, (int, float, str, timedelta))):
        raise TypeError(f"wait(): timeout must be a number of seconds or a duration, "
                        f"not {type(timeout).__name__}; Futures go in a list: "
                        f"wait([x, y]), not wait(x, y)")
    timeout = seconds(timeout)
    waiter = Waiter(fs, return_when)
    op = _refusing_cancelled(_in_time(waiter, timeout))
    return run_async(op) if _asynchronous(waiter.fs) else run_blocking(op)


def _in_time(waiter, timeout):
    """``waiter``'s ``(done, not_done)``; TimeoutError if its condition does not hold
    within ``timeout`` seconds."""
    yield Flag(waiter.signal, timeout)
    if not waiter.signal.is_set():
        raise TimeoutError(f"{len(waiter.fs) - len(waiter.done)} of {len(waiter.fs)} "
                           f"futures not done after {timeout} s")
    return (yield from waiter.wait_op(0))


def _refusing_cancelled(op):
    done = yield from op
    raise_if_cancelled(done.done)
    return done


def _asynchronous(fs):
    return any(isinstance(f, Future) and f.client is not None and f.client.asynchronous
               for f in fs)


class Waiter:
    """What `wait` waits with: a done callback on each future, registered once, so
    that `wait` may be asked again and again (a progress bar redrawing meanwhile)."""

    def __init__(self, fs, return_when=ALL_COMPLETED):
        self.fs = set(fs)
        if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
            raise ValueError(f"unknown return_when {return_when!r}")
        self.return_when = return_when
        self.lock = threading.Lock()
        self.signal = Signal()
        self.done = set()
        if not self.fs:
            self.signal.set()
        _when_ended(self.fs, self._on_done)

    @staticmethod
    def _failed(f):
        if isinstance(f, Future):
            return f.status in (ERROR, LOST)
        return not f.cancelled() and f.exception() is not None

    def _on_done(self, f):
        # Each future reports once, so waiting costs O(n), not O(n) per completion.
        with self.lock:
            self.done.add(f)
            ready = (len(self.done) == len(self.fs) or self.return_when == FIRST_COMPLETED
                     or (self.return_when == FIRST_EXCEPTION and self._failed(f)))
        if ready:
            self.signal.set()

    def wait_op(self, timeout=None):
        """``(done, not_done)`` once ``return_when`` holds, or after ``timeout``."""
        yield Flag(self.signal, timeout)
        with self.lock:
            finished = set(self.done)
        return DoneAndNotDoneFutures(finished, self.fs - finished)

    def wait(self, timeout=None):
        return run_blocking(self.wait_op(timeout))


class _Finished:
    """`as_completed.queue`: its finished futures not handed out yet, with the reads
    of a `queue.Queue` (`get`, `get_nowait`, `qsize`, `empty`).  What `get` takes
    is handed out, as by ``next``: with its result for ``with_results=True``."""

    def __init__(self, completed):
        self.completed = completed

    def qsize(self):
        return len(self.completed.ready)

    def empty(self):
        return not self.completed.ready

    def get(self, block=True, timeout=None):
        """The next finished future; `queue.Empty` if there is none (once
        ``timeout`` seconds passed, when ``block``)."""
        ac = self.completed
        with ac.cond:
            if block:
                ac.cond.wait_for(lambda: ac.ready, timeout)
            if not ac.ready:
                raise queue.Empty
            f = ac.ready.popleft()
        return run_blocking(ac._outcome(f))

    def get_nowait(self):
        return self.get(block=False)


class as_completed:
    """Iterate over Futures as they finish, with ``for`` or ``async for``;
    ``with_results=True`` yields ``(future, result)``: an erred Future's exception
    is raised, or with ``raise_errors=False`` its result is ``(type, exception,
    traceback)``; a cancelled one's result is its CancelledError, never raised.
    More futures can be added while iterating (`add`, `update`); `next_batch` and
    `batches` hand out all those finished at once, `clear` drops the rest.  A future added twice comes out twice,
    as in dask.distributed.  ``timeout``: seconds from now after which waiting for
    the next one raises TimeoutError."""

    def __init__(self, futures=(), with_results=False, raise_errors=True, *,
                 timeout=None):
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.deadline = (None if timeout is None else
                         time.monotonic() + seconds(timeout))
        self.waiting = 0                     # futures added and not finished yet
        self.ready = deque()                 # finished, not yet handed out
        self.epoch = 0                       # bumped by `clear`: earlier adds are void
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.wakers = []                     # coroutines waiting: call to wake them
        self.update(futures)

    def add(self, future):
        self.update((future,))

    def update(self, futures):
        """Add ``futures``: none unless all are Futures (TypeError)."""
        futures = list(futures)
        for f in futures:
            if not isinstance(f, (Future, cf.Future)):
                raise TypeError(f"Input must be a future, got {f!r}")
        with self.lock:
            self.waiting += len(futures)
            epoch = self.epoch
        _when_ended(futures, partial(self._on_done, epoch=epoch))

    def _on_done(self, future, epoch):
        with self.lock:
            if epoch != self.epoch:          # cleared since it was added
                return
            self.waiting -= 1
            self.ready.append(future)
            self._wake()

    def _wake(self):
        """Under the lock: waiters look again (all of them: when the last future
        comes, the others must see that none is left)."""
        self.cond.notify_all()
        wakers, self.wakers = self.wakers, []
        for wake_one in wakers:
            wake_one()                       # only schedules work in a loop

    def count(self):
        """How many futures are still to be handed out, finished or not."""
        with self.lock:
            return self.waiting + len(self.ready)

    __len__ = count

    def is_empty(self):
        return not self.count()

    def has_ready(self):
        """Are finished futures waiting to be handed out?"""
        return bool(self.ready)

    @property
    def queue(self):
        """The finished futures not handed out yet, read as a `queue.Queue`."""
        return _Finished(self)

    def __repr__(self):
        with self.lock:
            return f"<as_completed: waiting={self.waiting} done={len(self.ready)}>"

    def clear(self):
        """Forget every future not handed out yet: iteration ends."""
        with self.lock:
            self.epoch += 1
            self.waiting = 0
            self.ready.clear()
            self._wake()

    def _outcome(self, f):
        """The operation of what to hand out for ``f``."""
        if not self.with_results:
            return f
        try:
            return f, (yield from f._result_op(None))
        except CancelledError as e:         # handed out, never raised: not an error
            return f, e
        except Exception as e:
            if self.raise_errors:
                raise
            tb = yield from f._traceback_op(None)      # the task's, not this frame's
            return f, (type(e), e, tb)

    def _pop_ready(self):
        with self.lock:
            return self.ready.popleft() if self.ready else None

    def __iter__(self):
        return self

    def _left(self):
        """Seconds left before the timeout (None: no timeout); TimeoutError if none."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self.waiting} futures not done within the timeout "
                               f"of as_completed")
        return left

    def __next__(self):
        with self.cond:
            while not self.ready:
                if not self.waiting:
                    raise StopIteration
                self.cond.wait(self._left())
            f = self.ready.popleft()
        return run_blocking(self._outcome(f))

    next = __next__

    def __aiter__(self):
        return self

    async def __anext__(self):
        loop = asyncio.get_running_loop()
        while True:
            with self.lock:
                if self.ready:
                    f = self.ready.popleft()
                    break
                if not self.waiting:
                    raise StopAsyncIteration
                left = self._left()
                fut = loop.create_future()
                self.wakers.append(lambda fut=fut: in_loop(loop, resolve, fut, None))
            try:
                await within(fut, left)
            except TimeoutError:
                self._left()                 # raises, the deadline being past
        return await run_async(self._outcome(f))

    def next_batch(self, block=True):
        """Every future finished now; with ``block``, at least one (waiting for it,
        StopIteration if none is left), else maybe none."""
        batch = [next(self)] if block else []
        while (f := self._pop_ready()) is not None:
            batch.append(run_blocking(self._outcome(f)))
        return batch

    def batches(self):
        """`next_batch` after `next_batch`, until every future is handed out."""
        while True:
            try:
                yield self.next_batch(block=True)
            except StopIteration:
                return


# ---------------------------------------------------------------- Executor

class ClientExecutor(cf.Executor):
    """A `concurrent.futures.Executor` on the cluster; its futures are genuine
    `concurrent.futures.Future` objects, so the standard `wait` and `as_completed`
    work on them.

    A future stays pending until its task's outcome is here (the task may be queued
    or running on a worker meanwhile), so ``future.cancel()`` cancels the task
    wherever it is, as it would a queued call of the standard executors.  Tasks are
    impure unless ``pure=True`` is given: each call runs, as a call does."""

    SUBMIT_OPTIONS = ("pure", "workers", "resources", "allow_other_workers", "retries",
                      "priority")

    def __init__(self, client, **submit_kwargs):
        unknown = sorted(set(submit_kwargs) - set(self.SUBMIT_OPTIONS))
        if unknown:
            raise TypeError(f"unsupported arguments to ClientExecutor: {unknown} "
                            f"(get_executor's options are "
                            f"{', '.join(self.SUBMIT_OPTIONS)})")
        self.client = client
        self.submit_kwargs = submit_kwargs
        self.futures = set()
        self.lock = threading.Lock()
        self.shut_down = False

    def submit(self, fn, /, *args, **kwargs):
        with self.lock:
            if self.shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
        options = dict(self.submit_kwargs)
        options.setdefault("pure", False)
        remote = self.client.submit_call(fn, args, kwargs, **options)
        local = cf.Future()
        local._dask_ipy_remote = remote
        with self.lock:
            self.futures.add(local)

        local.add_done_callback(partial(_cancel_task, remote))

        def settle(_):
            with self.lock:
                self.futures.discard(local)
            if remote.status == CANCELLED:
                local.cancel()
                return
            if remote.status != FINISHED:
                exc, tb = rebuild_error(remote.state.error or {})
                if _start(local):
                    local.set_exception(exc.with_traceback(tb))
                return
            self.client.shell.gather_async(
                [remote.key], lambda r: _settle_gather(local, remote.key, r))
        _when_ended((remote,), settle)
        return local

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self.lock:
            self.shut_down = True
            pending = list(self.futures)
        if cancel_futures:
            for f in pending:
                f.cancel()                  # its task too (see `submit`)
        if wait:
            cf.wait(pending)


def _cancel_task(remote, local):
    """The done callback of an Executor's future ``local``: once it is cancelled,
    its task ``remote`` is, without waiting for the scheduler's answer (this runs on
    the thread that cancelled).  Bound to ``remote`` alone, so that a future
    dropped is freed at once, without a cycle through itself."""
    if local.cancelled():
        _start(local)                   # tells `wait` and `as_completed` it is done
        if remote.status not in (CANCELLED, FINISHED):
            remote.client.shell.cancel([remote.state], [remote.key], False)


_STARTING = threading.Lock()


def _start(local):
    """``local.set_running_or_notify_cancel()``, called once whoever calls first:
    the thread that cancelled it, or the one with the outcome.  True: the outcome
    may be set (the future now runs, and can no longer be cancelled)."""
    with _STARTING:
        if getattr(local, "_dask_ipy_started", False):
            return False
        local._dask_ipy_started = True
        return local.set_running_or_notify_cancel()


def set_exception(local, exc):
    """Fail a concurrent.futures.Future unless it is done already."""
    if not local.done():
        try:
            local.set_exception(exc)
        except cf.InvalidStateError:
            pass


def _settle_gather(local, key, outcome):
    kind, value = outcome
    if not _start(local):                               # cancelled meanwhile
        return
    if kind == "ok":
        local.set_result(value[key])
    else:
        local.set_exception(value)
