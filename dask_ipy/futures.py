"""Futures of remote results, `wait`, `as_completed`, and a concurrent.futures Executor.

A `Future` is a handle on one key on the cluster.  All Futures of a key in one client
share a `FutureState` (status, error, done event); the client counts Futures per key
and tells the scheduler to release the key when the last one is garbage-collected.

    scheduler ─key-in-memory / task-erred / cancelled─▶ client loop ─▶ FutureState
                                                                         │ done event,
                                                                         ▼ callbacks
                                     Future.result() ─gather─▶ value

Results are fetched when asked for (`result`, `gather`), never pushed.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import logging
import queue
import sys
import threading
import types

from dask._task_spec import TaskRef

from .graph import CycleError, MissingDependency

logger = logging.getLogger("dask_ipy")

FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION
ALL_COMPLETED = cf.ALL_COMPLETED

CancelledError = cf.CancelledError


class KilledWorker(RuntimeError):
    """A task was running on `allowed_failures` workers that died while running it."""


class MemoryLimitExceeded(KilledWorker, MemoryError):
    """A task took its worker past the terminate fraction of its memory limit
    `allowed_failures` times; the message names the task, the worker, the limit and
    the memory reached.  Caught by ``except KilledWorker`` and ``except MemoryError``."""


class PausedWorkerWarning(RuntimeWarning):
    """A worker has stayed paused (its memory past the pause fraction) for longer
    than ``dask-ipy.client.paused-warning`` seconds."""


class RemoteError(RuntimeError):
    """A remote exception that could not be rebuilt as its own type."""


class SchedulerLost(ConnectionError):
    """The connection to the scheduler was lost before the result arrived."""


class TransferError(ConnectionError):
    """A task's input could not be brought to its worker: no holder of it is reachable
    from there, and relaying it through the scheduler failed (too large, most often)."""


ERROR_TYPES = {
    "KilledWorker": KilledWorker,
    "MemoryLimitExceeded": MemoryLimitExceeded,
    "KeyError": KeyError,
    "MissingDependency": MissingDependency,
    "CycleError": CycleError,
    "SerializationError": TypeError,
    "SchedulerLost": SchedulerLost,
    "TransferError": TransferError,
}


def _code_objects(namespace):
    """Every code object of the functions and classes in `namespace`, nested ones
    (inner functions, lambdas, comprehensions) included."""
    stack = []
    for obj in list(namespace.values()):
        members = list(vars(obj).values()) if isinstance(obj, type) else [obj]
        for member in members:
            try:        # user objects may do anything on attribute access
                code = getattr(inspect.unwrap(member), "__code__", None)
            except Exception:
                continue
            if isinstance(code, types.CodeType):
                stack.append(code)
    while stack:
        code = stack.pop()
        yield code
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))


def restore_filenames(frames):
    """Give back their file names to the frames, in a tblib traceback dict, of code
    this process sent by value: cloudpickle names all such code "<dynamic-code>".

    The code is looked for by module, name and line among the functions and classes of
    the module the frame ran in (for a notebook, the cells' namespace), so that
    IPython shows the cell and its source lines again."""
    found = {}
    while frames is not None:
        frame = frames["tb_frame"]
        f_code = frame["f_code"]
        if f_code["co_filename"] == "<dynamic-code>":
            name = frame.get("f_globals", {}).get("__name__")
            if name not in found:
                found[name] = list(_code_objects(_namespace(name)))
            line = frames["tb_lineno"]
            for code in found[name]:
                if code.co_name == f_code["co_name"] and any(
                        ln == line for _, _, ln in code.co_lines()):
                    f_code["co_filename"] = code.co_filename
                    break
        frames = frames["tb_next"]


def _namespace(module_name):
    """The namespace of the module called `module_name` here: the user's namespace
    of IPython for "__main__" when IPython runs."""
    if module_name == "__main__" and "IPython" in sys.modules:
        shell = sys.modules["IPython"].get_ipython()
        if shell is not None:
            return shell.user_ns
    module = sys.modules.get(module_name)
    return vars(module) if module is not None else {}


def rebuild_error(info):
    """(exception, traceback) from an error record sent by a worker or the scheduler."""
    from .protocol import deserialize

    exc = None
    if info.get("exception") is not None:
        try:
            exc = deserialize(info["exception"])
            if not isinstance(exc, BaseException):
                exc = None
            else:
                # Some exceptions come back from pickle half-built (numpy's AxisError
                # loses the attributes its __str__ needs): use the text instead.
                str(exc)
        except Exception:
            exc = None
    if exc is None:
        cls = ERROR_TYPES.get(info.get("type"), RemoteError)
        text = info.get("text", "")
        if cls is RemoteError and info.get("traceback_text"):
            text = f"{text}\n\nRemote traceback:\n{info['traceback_text']}"
        exc = cls(text)
    tb = None
    if info.get("traceback") is not None:
        try:
            import tblib

            frames = deserialize(info["traceback"])
            restore_filenames(frames)
            tb = tblib.Traceback.from_dict(frames).as_traceback()
        except Exception:
            tb = None
    return exc, tb


_state_lock = threading.Lock()    # guards status changes against waiters registering


class FutureState:
    """What is known of one key: shared by every Future of that key in a client.

    Cheap to make (a graph may create a hundred thousand): the Event a waiter sleeps
    on and the callback list exist only once someone waits or registers a callback.
    """

    __slots__ = ("key", "status", "error", "type", "_event", "callbacks", "__weakref__")

    def __init__(self, key):
        self.key = key
        self.status = "pending"
        self.error = None          # error record (dict) when status is "error"/"lost"
        self.type = None
        self._event = None
        self.callbacks = None

    def done(self):
        return self.status != "pending"

    def wait(self, timeout=None):
        with _state_lock:
            if self.status != "pending":
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def _finish(self, status):
        with _state_lock:
            self.status = status
            event, callbacks, self.callbacks = self._event, self.callbacks, None
        if event is not None:
            event.set()
        for cb in callbacks or ():
            try:
                cb()
            except Exception:
                logger.exception("error in a done callback of %r", self.key)

    def finish(self, type=None):
        self.type = type
        self._finish("finished")

    def fail(self, error):
        self.error = error
        self._finish("error")

    def cancel(self):
        self._finish("cancelled")

    def lose(self, reason):
        self.error = {"type": "SchedulerLost", "text": reason}
        self._finish("lost")

    def reset(self):
        """The data was lost and is being computed again."""
        with _state_lock:
            self.status = "pending"
            self.error = None
            if self._event is not None:
                self._event.clear()

    def raise_error(self):
        if self.status == "cancelled":
            raise CancelledError(f"{self.key!r} was cancelled")
        exc, tb = rebuild_error(self.error or {})
        raise exc.with_traceback(tb)

    def exception(self):
        if self.status in ("error", "lost"):
            return rebuild_error(self.error)[0]
        return None

    def add_callback(self, cb):
        with _state_lock:
            if self.status == "pending":
                if self.callbacks is None:
                    self.callbacks = []
                self.callbacks.append(cb)
                return
        cb()


class Future(TaskRef):
    """A remote result: ``f.result()``, ``f.done()``, ``f.cancel()``...

    Futures may be passed to `Client.submit` before they finish; the task then waits
    for them on the cluster, and their data never comes back to the client.

    A Future is a dask `TaskRef` to its key (as distributed's futures are): dask's
    graph machinery then treats one as a dependency wherever it sits, in a legacy
    graph, in a `Task`'s arguments (``dask.delayed(f)(future)``) or inside the
    subgraph of a fused task.
    """

    __slots__ = ("client", "_state", "__weakref__")

    def __init__(self, key, client, state=None, inform=False):
        self.key = key
        self.client = client
        self._state = client._retain(key, state, inform)

    @property
    def status(self):
        return self._state.status

    def done(self):
        return self._state.done()

    def cancelled(self):
        return self._state.status == "cancelled"

    def _wait(self, timeout):
        if not self._state.wait(timeout):
            raise cf.TimeoutError(f"{self.key!r} not done after {timeout} s")

    def result(self, timeout=None):
        if self.client is None:
            raise RuntimeError(f"{self.key!r} was released")
        return self.client._gather_futures([self], timeout=timeout)[self.key]

    def _raise(self):
        self._state.raise_error()

    def exception(self, timeout=None):
        self._wait(timeout)
        if self._state.status == "cancelled":
            raise CancelledError(f"{self.key!r} was cancelled")
        if self._state.status in ("error", "lost"):
            return rebuild_error(self._state.error)[0]
        return None

    def traceback(self, timeout=None):
        self._wait(timeout)
        if self._state.status in ("error", "lost"):
            return rebuild_error(self._state.error)[1]
        return None

    def cancel(self, force=False):
        self.client.cancel([self], force=force)
        return True

    def add_done_callback(self, fn):
        """Call ``fn(future)`` once the future is done (on the client's I/O thread)."""
        ref = self

        def cb():
            try:
                fn(ref)
            except Exception:
                logger.exception("error in done callback %r", fn)
        self._state.add_callback(cb)

    def release(self):
        client, self.client = self.client, None
        if client is not None:
            client._release(self.key)

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass

    def __reduce__(self):
        return _rebuild_future, (self.key,)

    def __repr__(self):
        typ = f", type: {self._state.type}" if self._state.type else ""
        return f"<Future: {self.status}{typ}, key: {self.key!r}>"

    def __hash__(self):
        return hash(("dask-ipy-future", self.key))

    def __eq__(self, other):
        return isinstance(other, Future) and other.key == self.key

    def __dask_tokenize__(self):
        return ("dask-ipy-future", self.key)


class _DataLost(Exception):
    """Internal: a key in memory was gone when gathered; wait for its recomputation."""


_unpickling = threading.local()


def _rebuild_future(key):
    from .client import default_client

    client = getattr(_unpickling, "client", None)
    if client is None:
        try:
            client = default_client()
        except ValueError:
            # No client here (a worker loading a task that holds a Future): a plain
            # reference, which the task resolves to the key's value.
            return TaskRef(key)
    return Future(key, client, inform=True)


# ---------------------------------------------------------------- wait, as_completed

def wait(fs, timeout=None, return_when=ALL_COMPLETED):
    """Wait for Futures (ours or concurrent.futures'); returns ``(done, not_done)``."""
    fs = set(fs)
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(f"unknown return_when {return_when!r}")
    lock = threading.Lock()
    event = threading.Event()
    done = set()

    def failed(f):
        if isinstance(f, Future):
            return f.status in ("error", "lost")
        return not f.cancelled() and f.exception() is not None

    def on_done(f):
        # Each future reports once, so waiting costs O(n), not O(n) per completion.
        with lock:
            done.add(f)
            if (len(done) == len(fs) or return_when == FIRST_COMPLETED
                    or (return_when == FIRST_EXCEPTION and failed(f))):
                event.set()

    if not fs:
        event.set()
    for f in fs:
        f.add_done_callback(on_done)
    event.wait(timeout)
    with lock:
        finished = set(done)
    return cf._base.DoneAndNotDoneFutures(finished, fs - finished)


class as_completed:
    """Iterate over Futures as they finish; ``with_results=True`` yields
    ``(future, result)``.  More futures can be added while iterating."""

    def __init__(self, futures=(), with_results=False, raise_errors=True):
        self.queue = queue.SimpleQueue()
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.count = 0
        self.lock = threading.Lock()
        for f in futures:
            self.add(f)

    def add(self, future):
        with self.lock:
            self.count += 1
        future.add_done_callback(self.queue.put)

    def update(self, futures):
        for f in futures:
            self.add(f)

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            if self.count == 0:
                raise StopIteration
            self.count -= 1
        f = self.queue.get()
        if self.with_results:
            try:
                return f, f.result()
            except Exception as e:
                if self.raise_errors:
                    raise
                return f, e
        return f

    def next_batch(self, block=True):
        batch = [next(self)]
        while not self.queue.empty() and self.count:
            batch.append(next(self))
        return batch


# ---------------------------------------------------------------- Executor

class ClientExecutor(cf.Executor):
    """A `concurrent.futures.Executor` on the cluster; its futures are genuine
    `concurrent.futures.Future` objects, so the standard `wait` and `as_completed`
    work on them."""

    def __init__(self, client, **submit_kwargs):
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
        remote = self.client._submit(fn, args, kwargs, **options)
        local = cf.Future()
        local.set_running_or_notify_cancel()
        local._dask_ipy_remote = remote
        with self.lock:
            self.futures.add(local)

        def settle(_):
            with self.lock:
                self.futures.discard(local)
            if remote.status == "cancelled":
                _cancel(local)
                return
            if remote.status != "finished":
                exc, tb = rebuild_error(remote._state.error or {})
                _set_exception(local, exc.with_traceback(tb))
                return
            self.client._gather_keys_async([remote.key], lambda r: _settle_gather(local, remote.key, r))
        remote.add_done_callback(settle)
        return local

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self.lock:
            self.shut_down = True
            pending = list(self.futures)
        if cancel_futures:
            remotes = [f._dask_ipy_remote for f in pending if not f.done()]
            if remotes:
                self.client.cancel(remotes)
            for f in pending:
                if not f.done():
                    _cancel(f)
        if wait:
            cf.wait(pending)


def _set_exception(local, exc):
    if not local.done():
        try:
            local.set_exception(exc)
        except cf.InvalidStateError:
            pass


def _cancel(local):
    """Cancel a running concurrent.futures.Future (the remote task was cancelled)."""
    with local._condition:
        if local._state in (cf._base.FINISHED, cf._base.CANCELLED_AND_NOTIFIED):
            return
        local._state = cf._base.CANCELLED_AND_NOTIFIED
        for waiter in local._waiters:
            waiter.add_cancelled(local)
        local._condition.notify_all()
    local._invoke_callbacks()


def _settle_gather(local, key, outcome):
    kind, value = outcome
    if local.done():
        return
    try:
        if kind == "ok":
            local.set_result(value[key])
        else:
            local.set_exception(value)
    except cf.InvalidStateError:
        pass
