"""Errors: the exception classes of dask_ipy, and the error record that carries a
task's exception from a worker (or the scheduler) to the client.

    worker: error_payload(exc, tb) ─▶ {"type", "text", "exception", "traceback",
                                        "traceback_text", "chain" (if chained)}
                                                            (pickles travel opaque)
    scheduler: error_info(kind, text, key) ─▶ {"type", "text", "key"}   (text only)
        ──▶ client: rebuild_error(record) ─▶ (exception, traceback)

The record is plain data: the scheduler keeps it and forwards it without opening the
pickles inside.  The worker sends an exception that pickle cannot rebuild (its
``__init__`` takes other arguments than its ``args``) as its class, args and
attributes.  The exceptions chained to it (``__cause__``, ``__context__``), which
pickle leaves out, go as records of their own in its ``"chain"``.  The client raises
the original exception type with the remote traceback; when the exception does not
unpickle there (its class cannot be imported), a type of `ERROR_TYPES` by name, else
`RemoteError` with the remote traceback as text.
"""

from __future__ import annotations

import builtins
import collections
import inspect
import os
import sys
import traceback as tb_module
import types

from .protocol import deserialize, serialize

MAX_ERROR_TEXT = 10_000

class Reschedule(Exception):
    """Raised by a task: it stops, and the scheduler places it again (on any worker,
    this one too), as if it had never run."""


class WorkerAddress(collections.namedtuple("WorkerAddress", "address")):
    """A worker named by its address (`KilledWorker.last_worker`)."""


class KilledWorker(RuntimeError):
    """Task ``task`` was running on ``allowed_failures`` + 1 workers that died
    while running it, the last one ``last_worker`` (its ``.address``), as
    dask.distributed's; ``reason``: how that worker died.  ``KilledWorker(text)``
    is a message alone."""

    def __init__(self, task, last_worker=None, allowed_failures=0, reason=""):
        super().__init__(task, last_worker, allowed_failures, reason)

    @property
    def task(self):
        return self.args[0]

    @property
    def last_worker(self):
        return None if self.args[1] is None else WorkerAddress(self.args[1])

    @property
    def allowed_failures(self):
        return self.args[2]

    @property
    def reason(self):
        return self.args[3]

    def __str__(self):
        task, worker, allowed, reason = self.args
        if worker is None:
            return str(task)
        return self._message(task, worker, allowed, reason)

    @staticmethod
    def _message(task, worker, allowed, reason):
        return (f"Attempted to run task {task!r} on {allowed + 1} different workers, "
                f"but all those workers died while running it. The last worker that "
                f"attempted to run the task was {worker}"
                + (f": {reason}." if reason else "."))


class MemoryLimitExceeded(KilledWorker, MemoryError):
    """A task took its worker past the terminate fraction of its memory limit
    ``allowed_failures`` + 1 times; the message names the task, the worker, the
    limit and the memory reached (``reason``).  Caught by ``except KilledWorker``
    and ``except MemoryError``."""

    @staticmethod
    def _message(task, worker, allowed, reason):
        return (f"task {task!r} was stopped {allowed + 1} times for exceeding a "
                f"worker's memory limit (allowed_failures={allowed}); last time: "
                f"{reason}")


class PausedWorkerWarning(RuntimeWarning):
    """A worker has stayed paused (its memory past the pause fraction) for longer
    than ``dask-ipy.client.paused-warning`` seconds."""


class RemoteError(RuntimeError):
    """A remote exception that could not be rebuilt as its own type."""


class ClosedClientError(RuntimeError):
    """The client is closed: it sends nothing any more."""


class KeyReleased(KeyError):
    """A key's last Future was let go while a gather of it still waited: the wait
    ends with this (its caller, who held the key, had given up)."""


class SchedulerLost(ConnectionError):
    """The connection to the scheduler was lost before the result arrived."""


class TransferError(ConnectionError):
    """A task's input could not be brought to its worker: no holder of it is reachable
    from there, and relaying it through the scheduler failed (too large, most often)."""


class ActorLost(ConnectionError):
    """An actor's object is gone (its worker died or restarted, or its key was
    released), and its state with it."""


class CycleError(RuntimeError):
    """The graph has a cycle; ``cycle`` lists its keys, first key repeated last.

    An arrow ``'a' -> 'b'`` reads "a depends on b".
    """

    def __init__(self, cycle):
        self.cycle = list(cycle)
        super().__init__(
            "Cycle detected in graph: " + " -> ".join(map(repr, self.cycle))
        )

    @classmethod
    def from_text(cls, text):
        """Rebuilt from a message alone (the cycle's keys unknown)."""
        exc = cls(())
        exc.args = (text,)
        return exc


class MissingDependency(KeyError):
    """Task ``key`` depends on ``missing`` keys that nobody holds or computes."""

    def __init__(self, key, missing):
        self.key = key
        self.missing = tuple(missing)
        self.text = None
        super().__init__(key, self.missing)

    @classmethod
    def from_text(cls, text):
        """Rebuilt from a message alone (key and missing keys unknown)."""
        exc = cls(None, ())
        exc.text = text
        return exc

    def __str__(self):
        if self.text is not None:
            return self.text
        return "Task {!r} depends on missing key(s): {}".format(
            self.key, ", ".join(map(repr, self.missing))
        )


# dask.distributed exports the builtin under its own name (``except
# distributed.TimeoutError``): every wait here that runs out raises it, as asyncio
# and concurrent.futures do since Python 3.11.
TimeoutError = builtins.TimeoutError


class WorkerStartTimeoutError(TimeoutError):
    """`Client.wait_for_workers` ran out of time: ``available_workers`` of the
    ``expected_workers`` had come after ``timeout`` (as it was given)."""

    def __init__(self, available_workers, expected_workers, timeout):
        # One argument: an OSError takes two or three as (errno, strerror, filename)
        super().__init__(f"Only {available_workers}/{expected_workers} workers "
                         f"arrived after {timeout}")
        self.available_workers = available_workers
        self.expected_workers = expected_workers
        self.timeout = timeout

    def __reduce__(self):
        return type(self), (self.available_workers, self.expected_workers, self.timeout)


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


# ---------------------------------------------------------------- building records

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


# dask's own code that calls a graph task's function (Task.__call__ and the like).
_TASK_CALLERS = (os.sep + os.path.join("dask", "_task_spec.py"),
                 os.sep + os.path.join("dask", "core.py"))


def _machinery(code):
    """Is ``code`` this package's or dask's task calling, not the user's?"""
    name = code.co_filename
    return name.startswith(_PACKAGE_DIR) or name.endswith(_TASK_CALLERS)


def user_frames(tb):
    """`tb` without its leading frames of this package (the pool thread, the graph
    executor) and of dask's task calling: a user sees their own code first.  All of
    it if nothing else is left."""
    first = tb
    while first is not None and _machinery(first.tb_frame.f_code):
        first = first.tb_next
    return first if first is not None else tb


def without_machinery(tb):
    """``tb`` without any frame of this package or of dask's task calling (a
    traceback raised through the client's own calls, for the magics to show)."""
    kept = [t for t in _frames(tb) if not _machinery(t.tb_frame.f_code)]
    if not kept:
        return tb
    out = None
    for t in reversed(kept):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


def _frames(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def error_payload(exc, tb):
    """A task's exception for the wire: the pickled exception (`_exception_blob`), the
    traceback as data (`_traceback_dict`), and text for humans and for the scheduler."""
    tb = user_frames(tb)
    text = _cut(f"{type(exc).__name__}: {exc}")
    tb_text = "".join(tb_module.format_exception(type(exc), exc, tb))
    if len(tb_text) > MAX_ERROR_TEXT:
        tb_text = "... (truncated)\n" + tb_text[-MAX_ERROR_TEXT:]
    try:
        traceback = serialize(_traceback_dict(tb)) if tb is not None else None
    except Exception:
        traceback = None
    record = {"type": type(exc).__name__, "text": text,
              "exception": _exception_blob(exc), "traceback": traceback,
              "traceback_text": tb_text}
    if exc.__cause__ is not None or exc.__context__ is not None:
        record["chain"] = _chain_records(exc)
    return record


def raised(exc):
    """The error record of what user code (a task, `Client.run`'s function, an
    actor's method, a worker plugin) raised.  SystemExit and KeyboardInterrupt,
    raised again where the result is awaited, would end that program: they become an
    error it can catch."""
    tb = exc.__traceback__
    if not isinstance(exc, Exception):
        exc = RemoteError(f"the code raised {exc!r}")
    return error_payload(exc, tb)


MAX_TRACEBACK_FRAMES = 100


def _traceback_dict(tb):
    """``tb`` as plain data, in tblib's dict layout, each code with its first line
    too: a traceback rebuilt from it then places each line in its function (a
    notebook shows the cell's lines right, not numbered from the failing line).

    Of a traceback deeper than MAX_TRACEBACK_FRAMES (a runaway recursion) only the
    first and last half of that are kept: pickling nested dicts a thousand deep
    fails, and the frames left out repeat those kept."""
    frames = list(_frames(tb))
    if len(frames) > MAX_TRACEBACK_FRAMES:
        half = MAX_TRACEBACK_FRAMES // 2
        frames = frames[:half] + frames[-half:]
    out = None
    for t in reversed(frames):
        frame, code = t.tb_frame, t.tb_frame.f_code
        out = {"tb_frame": {"f_globals": {k: v for k, v in frame.f_globals.items()
                                          if k in ("__file__", "__name__")},
                            "f_code": {"co_filename": code.co_filename,
                                       "co_name": code.co_name,
                                       "co_firstlineno": code.co_firstlineno},
                            "f_lineno": frame.f_lineno},
               "tb_lineno": t.tb_lineno, "tb_next": out}
    return out


class _TracebackMaker(Exception):
    pass


def traceback_from_dict(frames):
    """A real traceback from a `_traceback_dict`: one stub frame per entry, raising at
    its line, with the name, file and first line of the code it stands for."""
    top = last = None
    while frames is not None:
        frame = frames["tb_frame"]
        code = frame["f_code"]
        line = frames["tb_lineno"]
        first = code.get("co_firstlineno")
        if not isinstance(first, int) or not 0 < first <= line:
            first = line
        stub = compile("\n" * (line - first) + "raise __traceback_maker",
                       code["co_filename"], "exec").replace(
            co_firstlineno=first, co_name=code["co_name"])
        namespace = dict(frame.get("f_globals") or {})
        namespace["__traceback_maker"] = _TracebackMaker()
        try:
            exec(stub, namespace)
        except _TracebackMaker:
            tb = sys.exc_info()[2].tb_next
        if top is None:
            top = tb
        else:
            last.tb_next = tb
        last = tb
        frames = frames["tb_next"]
    return top


MAX_EXCEPTION_BYTES = 10 * MAX_ERROR_TEXT
MAX_CHAIN = 8     # exceptions chained to the one raised (causes, contexts) sent with it


def _chain_records(exc):
    """How ``exc`` is chained to the exceptions that led to it, as plain data that
    pickle would leave out: ``[{"cause": i, "context": j, "suppress_context": bool}]``
    for ``exc`` (first) and each exception of its chain, which the entries after the
    first also carry as ``"type"``, ``"text"`` and ``"exception"`` (as a record's;
    the pickles within MAX_EXCEPTION_BYTES in all); ``i``, ``j``: indexes in the
    list, or None.  Each exception is there once (a chain that meets itself again
    stays so), at most MAX_CHAIN besides ``exc``."""
    chain = [exc]
    index = {id(exc): 0}

    def index_of(linked):
        if linked is None:
            return None
        if id(linked) not in index:
            if len(chain) > MAX_CHAIN:
                return None
            index[id(linked)] = len(chain)
            chain.append(linked)
        return index[id(linked)]

    records = []
    room = MAX_EXCEPTION_BYTES        # for the pickles of the chain, all together
    for e in chain:       # grows as the loop goes: breadth first
        record = {"cause": index_of(e.__cause__), "context": index_of(e.__context__),
                  "suppress_context": e.__suppress_context__}
        if records:
            blob = _exception_blob(e)
            if blob is not None and blob.nbytes > room:
                blob = None
            room -= blob.nbytes if blob is not None else 0
            record.update(type=type(e).__name__, text=_cut(f"{type(e).__name__}: {e}"),
                          exception=blob)
        records.append(record)
    return records


def _exception_blob(exc):
    """``exc`` pickled for the client, or None.  Kept only if it unpickles here (its
    ``str`` working too) and fits in MAX_EXCEPTION_BYTES, tried in turn: pickle's
    own way; the exception rebuilt from its parts (`_ExceptionParts`); those parts
    with the message cut to MAX_ERROR_TEXT and no attributes."""
    for candidate in _pickle_candidates(exc):
        try:
            blob = serialize(candidate)
            if blob.nbytes <= MAX_EXCEPTION_BYTES:
                str(deserialize(blob))
                return blob
        except Exception:
            pass
    return None


def _pickle_candidates(exc):
    yield _OwnPickle(exc)
    yield _ExceptionParts(exc, exc.args, _attributes(exc))
    yield _ExceptionParts(exc, (_cut(str(exc)),), {})


def _cut(text):
    if len(text) > MAX_ERROR_TEXT:
        return text[:MAX_ERROR_TEXT] + "... (truncated)"
    return text


def _attributes(exc):
    """An exception's own attributes: those of its ``__dict__`` (``__notes__``
    among them) and its slots."""
    out = dict(getattr(exc, "__dict__", {}))
    for cls in type(exc).__mro__:
        slots = vars(cls).get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(exc, name):
                out[name] = getattr(exc, name)
    return out


class _OwnPickle:
    """Pickles as ``exc``'s class says (its ``__reduce_ex__``), whatever copyreg
    says: tblib's pickling (dask.multiprocessing installs it) would take its chain
    and tracebacks along, and a client that cannot import one of those would lose
    the exception itself.  The chain goes apart (`_chain_records`)."""

    __slots__ = ("exc",)

    def __init__(self, exc):
        self.exc = exc

    def __reduce__(self):
        return self.exc.__reduce_ex__(5)


class _ExceptionParts:
    """Pickles as an exception of the class of ``exc`` with these ``args`` and
    attributes, made without calling the class (`_exception_from_parts`).

    Pickle's own way calls ``cls(*exc.args)``: that fails for an exception whose
    ``__init__`` takes arguments other than its ``args`` (two that make one message,
    keyword-only ones), and its slots are lost.  Pickling the traceback with it can
    fail too, when tblib's pickling is installed (dask.multiprocessing does it)."""

    __slots__ = ("cls", "args", "attributes")

    def __init__(self, exc, args, attributes):
        self.cls, self.args, self.attributes = type(exc), args, attributes

    def __reduce__(self):
        return _exception_from_parts, (self.cls, self.args, self.attributes)


def _exception_from_parts(cls, args, attributes):
    exc = cls.__new__(cls, *args)
    for name, value in attributes.items():
        setattr(exc, name, value)
    return exc


def error_info(kind, text, key, args=None):
    """An error raised by the scheduler itself, sent as text: no pickles involved.
    ``args``: plain values the client builds the exception of ``kind`` from (for
    exceptions that take more than a message, e.g. `MissingDependency`)."""
    info = {"type": kind, "text": text, "key": key}
    if args is not None:
        info["args"] = list(args)
    return info


# ---------------------------------------------------------------- reading records

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
    this process sent by value: cloudpickle names all such code `DYNAMIC_CODE`.

    The code is looked for by module, name and line among the functions and classes of
    the module the frame ran in (for a notebook, the cells' namespace), so that
    IPython shows the cell and its source lines again."""
    found = {}
    while frames is not None:
        frame = frames["tb_frame"]
        f_code = frame["f_code"]
        if f_code["co_filename"] == DYNAMIC_CODE:
            code = code_here(frame.get("f_globals", {}).get("__name__"),
                             f_code["co_name"], frames["tb_lineno"], found)
            if code is not None:
                f_code["co_filename"] = code.co_filename
                f_code["co_firstlineno"] = code.co_firstlineno
        frames = frames["tb_next"]


DYNAMIC_CODE = "<dynamic-code>"     # cloudpickle's file name of code sent by value


def code_here(module_name, name, line, found=None):
    """The code object here that ran as ``name`` at ``line`` of module
    ``module_name`` where this process sent it by value, or None.  ``found``: a
    dict that caches the code objects of each module between calls."""
    found = {} if found is None else found
    if module_name not in found:
        found[module_name] = list(_code_objects(_namespace(module_name)))
    for code in found[module_name]:
        if code.co_name == name and any(ln == line for _, _, ln in code.co_lines()):
            return code
    return None


def _namespace(module_name):
    """The namespace of the module called `module_name` here: the user's namespace
    of IPython for "__main__" when IPython runs."""
    if module_name == "__main__" and "IPython" in sys.modules:
        shell = sys.modules["IPython"].get_ipython()
        if shell is not None:
            return shell.user_ns
    module = sys.modules.get(module_name)
    return vars(module) if module is not None else {}


def _build(cls, text, args):
    """``cls`` from its own arguments when the record has them, else from the text;
    an exception whose constructor takes something else keeps the text as its
    message (never a TypeError about the constructor instead of the error)."""
    if isinstance(args, (list, tuple)):
        try:
            return cls(*args)
        except Exception:
            pass
    if getattr(cls, "from_text", None) is not None:
        return cls.from_text(text)
    try:
        return cls(text)
    except Exception:
        return RemoteError(f"{cls.__name__}: {text}")


def rebuild_error(info):
    """(exception, traceback) from an error record sent by a worker or the scheduler."""
    exc = _exception_of(info)
    if info.get("chain"):
        _rebuild_chain(exc, info["chain"])
    tb = None
    if info.get("traceback") is not None:
        try:
            frames = deserialize(info["traceback"])
            restore_filenames(frames)
            tb = traceback_from_dict(frames)
        except Exception:
            tb = None
    return exc, tb


def _rebuild_chain(exc, chain):
    """Link ``exc`` to the exceptions of its chain again (`_chain_records`); one
    that does not unpickle here is a type of `ERROR_TYPES` or `RemoteError`."""
    built = [exc] + [_exception_of(record) for record in chain[1:]]

    def at(i):
        return built[i] if isinstance(i, int) and 0 <= i < len(built) else None

    for e, record in zip(built, chain):
        e.__cause__ = at(record.get("cause"))
        e.__context__ = at(record.get("context"))
        e.__suppress_context__ = bool(record.get("suppress_context"))


def _exception_of(info):
    """The exception of an error record: its own, unpickled, else one built from
    its type's name and its text."""
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
        exc = _build(cls, text, info.get("args"))
    return exc
