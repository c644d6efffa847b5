"""`Status`: the states a client, a worker and a LocalCluster report, by
dask.distributed's names.

`Client.status` and `Worker.status` are plain strings, `LocalCluster.status` a
member; each member of `Status` is equal to its string (``Status.running ==
"running"``), so code that compares them with `Status` members works either way,
and ``Status(c.status)`` gives the member.

Also the status lines a ``dask-ipy`` process prints for whoever launched it (`say`).
"""

from __future__ import annotations

import os
from enum import Enum


class Status(str, Enum):
    created = "created"                  # a LocalCluster(asynchronous=True) not awaited
    connecting = "connecting"            # a client before the scheduler welcomed it
    running = "running"                  # a client connected; a worker taking tasks
    reconnecting = "reconnecting"        # a client that lost its scheduler for now
    paused = "paused"                    # a worker past its memory's pause fraction
    closing_gracefully = "closing_gracefully"   # a worker retiring (scheduler_info)
    closing = "closing"                  # a LocalCluster stopping its processes
    closed = "closed"

    def __str__(self):
        return self.value


# ---------------------------------------------------------------- status lines

#: Set by a launcher (`LocalCluster`, a worker's supervisor) in its child's
#: environment: the child starts each of its own status lines (``name: value``)
#: with it, and the launcher takes only such lines as status.  Whatever else the
#: child prints (a task's ``print("memory_limit: 1")``) passes through as output.
STATUS_TAG = "DASK_IPY_STATUS_TAG"


_tag = None       # this process's tag, once `take_tag` has taken it


def take_tag():
    """Keep this process's tag and take it out of its environment: a process that
    runs user code calls this first, so that what that code starts (a task's
    subprocess) does not print with it."""
    global _tag
    _tag = os.environ.pop(STATUS_TAG, None)


def say(text):
    """Print ``text``, this process's own status lines, each after its launcher's
    tag if it set one (none for a person at a terminal)."""
    tag = _tag or os.environ.get(STATUS_TAG)
    if tag:
        text = "\n".join(f"{tag} {line}" for line in text.split("\n"))
    print(text, flush=True)


def own_line(line, tag):
    """``line`` without ``tag`` if it is a status line with that tag, else None."""
    prefix = tag + " "
    return line[len(prefix):] if line.startswith(prefix) else None
