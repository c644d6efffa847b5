"""`Status`: the states a client, a worker and a LocalCluster report, by
dask.distributed's names.

`Client.status` and `Worker.status` are plain strings, `LocalCluster.status` a
member; each member of `Status` is equal to its string (``Status.running ==
"running"``), so code that compares them with `Status` members works either way,
and ``Status(c.status)`` gives the member.
"""

from __future__ import annotations

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
