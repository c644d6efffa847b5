"""What tasks print and warn (`dask_ipy.print`, `dask_ipy.warn`: worker/printing.py),
shown by a client: the handlers of the "print" and "warn" events it subscribes to
(see `Client`'s ``task_output``).  They run on the client's I/O thread.

A warning is issued with the task's category when the client can import it (a class
of the client's ``__main__`` too), else as a UserWarning whose text starts with the
category's name; at the file and line of the task that warned (the client's own
file for code it sent by value, from a notebook's cell say), so that the client's
filters and its once-per-line rule apply as to a warning of its own.

This module names no ``print`` of its own: ``print`` here is the builtin.
"""

from __future__ import annotations

import sys
import warnings

from ..errors import DYNAMIC_CODE, code_here
from ..messages import PRINT, WARN
from .futures import resolve_type


def handle_print(event):
    """A task's print, printed here (on sys.stdout or sys.stderr of the moment)."""
    _, msg = event
    if not isinstance(msg, dict):           # an event logged by hand: its text
        print(msg)
        return
    file = sys.stderr if msg.get("file") == "stderr" else sys.stdout
    print(*msg.get("args", ()), sep=msg.get("sep"), end=msg.get("end"), file=file,
          flush=msg.get("flush", False))


# As a module's __warningregistry__, one per file of the tasks that warned: under the
# "default" filter a warning shows once per line of the task, not once per task.
_registries = {}


def handle_warn(event):
    """A task's warning, issued here."""
    _, msg = event
    if not isinstance(msg, dict):           # an event logged by hand: its text
        warnings.warn(str(msg), UserWarning)
        return
    text, name = msg["message"], msg.get("category", "")
    try:
        category = resolve_type(name)
    except Exception:                       # its module fails to import here
        category = None
    if not (isinstance(category, type) and issubclass(category, Warning)):
        category, text = UserWarning, f"{name}: {text}" if name else text
    filename, line = msg.get("filename", "sys"), msg.get("lineno", 1)
    if filename == DYNAMIC_CODE:            # code of this client's, sent by value
        code = code_here(msg.get("module"), msg.get("function"), line)
        filename = filename if code is None else code.co_filename
    warnings.warn_explicit(text, category, filename, line, module=msg.get("module"),
                           registry=_registries.setdefault(filename, {}))


HANDLERS = {PRINT: handle_print, WARN: handle_warn}
