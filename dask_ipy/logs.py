"""The recent log lines of a process: a bounded buffer on the "dask_ipy" logger.

A worker keeps one (`LogBuffer`), and `Client.get_worker_logs` runs `worker_logs` on
every worker (by reference, through `Client.run`): each answers its latest lines as
dask.distributed's workers do, ``[(level name, formatted line)]``, newest first.  The
scheduler keeps one too, which answers "get-logs" (`Client.get_scheduler_logs`).  The
buffer holds what the logger lets through: warnings and errors unless the "dask_ipy"
logger's level is lowered (``dask-ipy worker --log-level info``).  Workers sharing a
process share its log.
"""

from __future__ import annotations

import logging
from collections import deque

LOGGER = "dask_ipy"
FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class LogBuffer(logging.Handler):
    def __init__(self, n=10_000, logger=LOGGER):
        super().__init__()
        self.records = deque(maxlen=n)
        self.setFormatter(logging.Formatter(FORMAT))
        self.logger = logging.getLogger(logger)

    def emit(self, record):
        self.records.append(record)

    def attach(self):
        self.logger.addHandler(self)
        return self

    def detach(self):
        self.logger.removeHandler(self)

    def lines(self, n=None):
        """[(level name, formatted line)], newest first; at most ``n``."""
        out = []
        for record in reversed(self.records):
            if n is not None and len(out) >= n:
                break
            try:
                out.append((record.levelname, self.format(record)))
            except Exception:              # a record whose arguments do not format
                out.append((record.levelname, str(record.msg)))
        return out


def worker_logs(n=None, dask_worker=None):
    """Run on a worker (`Client.run`): its latest log lines."""
    return dask_worker.get_logs(n)
