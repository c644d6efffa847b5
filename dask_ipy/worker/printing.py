"""`print` and `warn` for code in tasks, with dask.distributed's names and meaning:
what a task prints or warns shows in its worker process as usual, and in the clients
of the cluster too (client/printing.py shows it there).

    task ── print(...) ──▶ builtins.print, in the worker process
        └── Worker.log_event("print", text) ──▶ scheduler ──"event"──▶ each client
            subscribed to the topic ──▶ builtins.print there

The arguments become text here (``str`` of each, as print does), and a warning's
category travels by name: nothing is pickled, so anything printable works and neither
the scheduler nor a client unpickles anything.  Outside a task both are
``builtins.print`` and ``warnings.warn``, nothing more.

This module's ``print`` shadows the builtin in it: the builtin is ``builtins.print``.
"""

from __future__ import annotations

import builtins
import inspect
import sys
import warnings

from ..messages import PRINT, WARN
from . import context


def _in_task():
    """The worker running the task on this thread, or None."""
    return getattr(context.task, "worker", None)


def _stream(file):
    """The name of the clients' stream that ``file`` stands for."""
    if file is None or file is sys.stdout or file is sys.__stdout__:
        return "stdout"
    if file is sys.stderr or file is sys.__stderr__:
        return "stderr"
    raise TypeError(f"print in a task goes to sys.stdout or sys.stderr (the clients' "
                    f"own), not to {file!r}")


def print(*args, sep=" ", end="\n", file=None, flush=False):
    """``builtins.print``; in a task, printed by every client too (``file``: None,
    sys.stdout or sys.stderr: the client's stream of that name)."""
    worker = _in_task()
    if worker is None:
        builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    stream = _stream(file)
    texts = [str(a) for a in args]          # once: str may have side effects
    # Printed here first: print's own TypeError (sep=1...) stops the task before
    # anything is sent.
    builtins.print(*texts, sep=sep, end=end, file=file, flush=flush)
    worker.log_event(PRINT, {"args": texts, "sep": sep, "end": end, "file": stream,
                             "flush": bool(flush)})


def warn(message, category=UserWarning, stacklevel=1, source=None):
    """``warnings.warn``; in a task, issued by every client too, at the task's line
    that warned (the worker's warning filters do not apply there: each client's
    own do)."""
    worker = _in_task()
    if worker is not None:
        if isinstance(message, Warning):
            category = type(message)          # as warnings.warn does
        if not (isinstance(category, type) and issubclass(category, Warning)):
            raise TypeError(f"category must be a Warning subclass, not "
                            f"{type(category).__name__}")
        frame = inspect.currentframe()
        for _ in range(max(stacklevel, 1)):               # 1: the caller's
            frame = frame and frame.f_back
        if frame is None:           # beyond the stack: where warnings.warn puts it
            where = {"filename": "sys", "lineno": 1, "module": "sys"}
        else:
            where = {"filename": frame.f_code.co_filename, "lineno": frame.f_lineno,
                     "module": frame.f_globals.get("__name__"),
                     "function": frame.f_code.co_name}
        worker.log_event(WARN, {"message": str(message), **where,
                                "category": f"{category.__module__}."
                                            f"{category.__qualname__}"})
    warnings.warn(message, category, stacklevel + 1, source)
