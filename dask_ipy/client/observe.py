"""Seeing what the cluster did: the task stream, performance reports, worker logs,
the final states of a block's keys (`get_task_metadata`), and what its hardware can
do (`benchmark_hardware`, measuring transfers through the task stream).

    workers ── "task-stream" ──▶ scheduler: `taskstream.TaskStream` (numbered records,
                                 a bounded ring)
    client.get_task_stream() ──▶ "get-task-stream" pages of at most 100 000 records,
                                 asked again from `next` until `end`
        dicts as dask.distributed's          (`taskstream.records`)
        sums per group / thread / pair       (`taskstream.Breakdown`, bounded)
        ── `performance_report` ──▶ `charts.report_html`: one HTML file (+ JSON)

A block of work (`get_task_stream`, `performance_report`) is told by record numbers,
not by clocks: on entry the client notes how many records the scheduler has had, on
exit it asks for those that came since.  A worker sends a task's record to the
scheduler no later than the task's result, but a small result may come to the client
straight from its worker, ahead of the record: so on exit the client first runs
nothing on every worker (`_workers_heard_op`), whose answers reach the scheduler
behind all that the worker sent before, and only then asks.  Every task whose result
the block waited for is in it.
Records and memory samples carry the workers' clocks; a report's time axis is the
client's, so hosts with skewed clocks shift their lanes.
"""

from __future__ import annotations

import datetime
import json as _json
import os
import random
import time
import uuid

from .. import charts, hardware, profiling
from ..addresses import dashboard_url
from ..logs import worker_logs
from ..plugins import TaskMetadata, take_task_metadata
from ..protocol import serialize
from ..taskstream import Breakdown, records, report_data
from .cluster import run_results
from .futures import Waiter, exception_of
from .waits import then

PAGE = 100_000                # records asked for at once (the scheduler's cap too)
PROFILE_TIMEOUT = 10.0        # seconds the scheduler waits for the workers' profiles


def _when(value, now):
    """A time as seconds since the epoch: a number is one already; a datetime; a
    string is a duration ago ("10 s", "2 minutes")."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, datetime.timedelta):
        return now - value.total_seconds()
    if isinstance(value, str):
        from dask.utils import parse_timedelta

        return now - parse_timedelta(value, "s")
    raise TypeError(f"a time must be a number, a datetime or a duration string, "
                    f"not {value!r}")


class ObserveMethods:
    """Part of `Client`: the task stream, worker logs, the dashboard's link (see the
    module docstring)."""

    def _stream_pages_op(self, each, since=None, count=None, start=None, stop=None):
        """Ask for the records in range page by page, handing each page to ``each``;
        the number of the next record (where a later block would start)."""
        msg = {"op": "get-task-stream", "since": since, "count": count,
               "start": start, "stop": stop, "limit": PAGE}
        while True:
            page = yield from self.shell.request_op(msg)
            each(page)
            if page["next"] >= page["end"] or page["next"] <= page["first"]:
                return page["next"]
            msg = {"op": "get-task-stream", "since": page["next"],
                   "count": page["end"] - page["next"], "limit": PAGE}

    def _records_op(self, **kw):
        out = []
        yield from self._stream_pages_op(lambda page: out.extend(records(page)), **kw)
        return out

    def _workers_heard_op(self):
        """Until the scheduler has taken in what every worker sent before now: a
        `run` of nothing on each, whose answer follows the worker's earlier
        messages on its one connection."""
        yield from self.shell.request_op({"op": "run", "workers": None,
                                          "function": serialize((_nothing, (), {}))})

    def _block_records_op(self, since):
        """The records of a block of work that began at record ``since``."""
        yield from self._workers_heard_op()
        return (yield from self._records_op(since=since))

    def get_task_stream(self, start=None, stop=None, count=None):
        """What the workers ran: a tuple of one dict per task, as dask.distributed's
        (``key``, ``worker``, ``thread``, ``status``, ``nbytes``, ``typename`` and
        ``startstops``: transfers of inputs with their ``source`` and ``nbytes``,
        reads from disk, deserialize, compute, serialize).  ``start``/``stop``:
        tasks that ended between these times (seconds since the epoch, a datetime, or
        a duration ago such as "30 s"); ``count``: only the last ``count``.  The
        scheduler keeps the last 100 000 tasks (``task_stream_length``)."""
        now = time.time()
        return self.run_op(then(self._records_op(
            count=None if count is None else -int(count),
            start=_when(start, now), stop=_when(stop, now)), tuple))

    @property
    def dashboard_link(self):
        """The URL of the scheduler's live page, its token included; None if it
        serves none (``Scheduler(dashboard_port=...)``, ``dask-ipy scheduler
        --dashboard-port``)."""
        return dashboard_url(self.shell.state.dashboard)

    def _stream_mark_op(self):
        page = yield from self.shell.request_op({"op": "get-task-stream", "count": 0})
        return page["total"]

    def get_worker_logs(self, n=None, workers=None, nanny=False):
        """The latest log lines of each worker, newest first: ``{address: [(level,
        line)]}`` (at most ``n`` each).  Workers keep what the "dask_ipy" logger lets
        through (warnings and errors unless its level is lowered).  ``nanny``: a
        worker's supervisor logs nothing of its own here; accepted for
        compatibility."""
        return self.run(worker_logs, n, workers=workers)

    def get_scheduler_logs(self, n=None):
        """The scheduler's latest log lines, newest first: ``((level, line), ...)`` (at
        most ``n``), what its process's "dask_ipy" logger let through."""
        op = self.shell.request_op({"op": "get-logs", "n": n})
        return self.run_op(then(op, lambda lines: tuple(tuple(x) for x in lines)))

    def _profile_op(self, key=None, start=None, stop=None, workers=None,
                    merge_workers=True, timeout=PROFILE_TIMEOUT):
        if isinstance(workers, (str, int)):
            workers = [workers]
        return (yield from self.shell.request_op(
            {"op": "get-profile", "key": key, "start": start, "stop": stop,
             "workers": None if workers is None else list(workers),
             "merge_workers": bool(merge_workers), "timeout": timeout},
            timeout=timeout + 30))

    def profile(self, key=None, start=None, stop=None, workers=None,
                merge_workers=True, plot=False, filename=None):
        """What the workers' task threads spent their time on: the stacks sampled
        every 10 ms (``dask-ipy.worker.profile.interval``) as a call tree, the shape
        dask.distributed's profile has (nested dicts of "identifier", "count",
        "description" {"filename", "name", "line_number", "line"} and "children").

        ``key``: only tasks of this group ("inc", or a key such as "inc-ab12" standing
        for its group); ``start``/``stop``: samples of this span (seconds since the
        epoch, a datetime, or a duration ago such as "30 s"; kept per second, for
        the last 1000 seconds with samples); ``workers``: addresses (or names) to ask,
        default all; ``merge_workers=False``: {address: tree}.  Workers that do not
        answer within 10 s are left out.  ``filename``: write the flame chart (one
        HTML file, no network needed), and ``plot=True`` returns (tree, chart)
        instead of the tree (``plot="save"`` writes "dask-profile.html")."""
        now = time.time()
        op = self._profile_op(key, _when(start, now), _when(stop, now), workers,
                              merge_workers)
        if plot == "save" and not filename:
            filename = "dask-profile.html"
        if filename or plot:
            op = then(op, lambda state: _profile_chart(state, filename, key))
        return self.run_op(op)

    # -- the hardware

    def benchmark_hardware(self):
        """Measure the workers' disk, memory and network bandwidths: ``{"disk":
        {size: bytes/s}, "memory": {...}, "network": {...}}``, each the mean over
        the workers (the network's over pairs of workers; none with one worker).
        See `hardware`."""
        return self.run_op(self._benchmark_op())

    def _benchmark_op(self):
        reply = yield from self.shell.request_op(
            {"op": "run", "function": serialize((hardware.local_bandwidths, (), {})),
             "workers": None})
        local = run_results(reply, "raise", self)
        network = yield from self._network_op(list(local))
        return {"disk": hardware.mean_of(r["disk"] for r in local.values()),
                "memory": hardware.mean_of(r["memory"] for r in local.values()),
                "network": network}

    def _network_op(self, workers):
        """Blocks of each size made on one worker of each pair and taken by a task
        on the other: the rates of those transfers, from the task stream."""
        random.shuffle(workers)        # not always the same pairs
        pairs = hardware.pairs(workers)
        if not pairs:
            return {}
        since = yield from self._stream_mark_op()
        labels = {}                    # {key of a task taking a block: its size}
        for label, size in hardware.NETWORK_SIZES.items():
            for _ in range(hardware.NETWORK_REPEATS):
                taken = []
                for sender, receiver in pairs:
                    block = self.submit(os.urandom, size, workers=[sender], pure=False)
                    taken.append(self.submit(len, block, workers=[receiver],
                                             pure=False))
                    labels[taken[-1].key] = label
                yield from Waiter(taken).wait_op()
                for f in taken:
                    if f.status != "finished":
                        raise exception_of(f.state) or RuntimeError(
                            f"a network benchmark task was {f.status}")
        records = yield from self._block_records_op(since)
        return hardware.transfer_rates(records, labels)

    # -- used by performance_report

    def _report_op(self, since, began, title):
        ended = time.time()
        yield from self._workers_heard_op()
        breakdown = Breakdown(began, ended)
        yield from self._stream_pages_op(breakdown.add_page, since=since)
        memory = yield from self.shell.request_op({"op": "get-memory-history",
                                                   "since": began})
        info = yield from self.shell.request_op({"op": "info", "what": "scheduler-info"})
        workers = {a: {"nthreads": w["nthreads"], "name": w["name"], "host": w["host"]}
                   for a, w in info["workers"].items()}
        profile = yield from self._profile_op(start=began, stop=ended)
        data = report_data(breakdown, memory, workers, began, ended, title,
                           self.address)
        data["profile"] = profile
        return data


class ProfileChart:
    """A flame chart of a profile: ``html`` (the whole page), shown as SVG in a
    notebook."""

    def __init__(self, html_page, svg):
        self.html = html_page
        self.svg = svg

    def _repr_html_(self):
        return self.svg


def _profile_chart(state, filename, key):
    """(state, chart), the page written to ``filename`` if given."""
    trees = state if "children" not in state else {"": state}
    title = "dask_ipy profile" + (f" of {profiling.group_of(key)}" if key else "")
    page = charts.profile_html(trees, title)
    if filename:
        with open(filename, "w", encoding="utf-8") as f:
            f.write(page)
    return state, ProfileChart(page, "".join(charts.flame_svg(t, label=w)
                                             for w, t in trees.items()))


def _client(client):
    if client is None:
        from .default import default_client

        client = default_client()
    return client


def _nothing():
    """Run on every worker by `_workers_heard_op`."""


class get_task_stream:
    """The tasks run during a block of code, as dask.distributed's::

        with get_task_stream(client) as ts:
            x.compute()
        ts.data          # [{"key", "worker", "thread", "status", "startstops", ...}]

    ``async with`` for an asynchronous client."""

    def __init__(self, client=None):
        self.client = _client(client)
        self.data = []
        self._since = None

    def __enter__(self):
        self._since = self.client.run_op(self.client._stream_mark_op())
        return self

    def __exit__(self, *exc):
        self.data.extend(self.client.run_op(self.client._block_records_op(self._since)))

    async def __aenter__(self):
        self._since = await self.client.run_op(self.client._stream_mark_op())
        return self

    async def __aexit__(self, *exc):
        self.data.extend(await self.client.run_op(
            self.client._block_records_op(self._since)))


class get_task_metadata:
    """The final state of the keys clients ask for during a block of code::

        with get_task_metadata() as tasks:
            x.compute()
        tasks.state      # {key: "memory" | "erred"}
        tasks.metadata   # {key: None}: dask_ipy keeps no metadata per task

    Kept by a scheduler plugin (`plugins.TaskMetadata`) while the block runs: the
    keys of every client's graphs that reach memory or err meanwhile.  ``async
    with`` for an asynchronous client."""

    def __init__(self, client=None):
        self.client = _client(client)
        self.name = f"task-metadata-{uuid.uuid4().hex}"
        self.metadata = None
        self.state = None

    def _start(self):
        return self.client.register_plugin(TaskMetadata(), name=self.name)

    def _stop(self):
        return self.client.run_on_scheduler(take_task_metadata, self.name)

    def _keep(self, found):
        self.metadata, self.state = found["metadata"], found["state"]

    # A small result may reach its client straight from its worker before the
    # scheduler hears of it: on exit, what the workers sent first is in, then the
    # states are taken.

    def __enter__(self):
        self._start()
        return self

    def __exit__(self, *exc):
        self.client.run_op(self.client._workers_heard_op())
        self._keep(self._stop())

    async def __aenter__(self):
        await self._start()
        return self

    async def __aexit__(self, *exc):
        await self.client.run_op(self.client._workers_heard_op())
        self._keep(await self._stop())


class performance_report:
    """Write what a block of code made the cluster do into one HTML file::

        with performance_report("report.html"):
            x.compute()

    The file needs no network to open (see `charts`): the task stream per worker
    thread, time per task group (compute, transfer, (de)serialization, disk, idle
    threads), the workers' memory over time and the bytes moved between workers; the
    same data is inside it as JSON (a link saves it), and in ``data_filename`` if
    given.  ``report.data`` holds it afterwards.  At most 4000 tasks are drawn one
    by one; past that the chart shows, per lane, what took most of each short span
    of time.  ``async with`` for an asynchronous client.

    dask.distributed's keywords: ``storage_options`` (a ``filename`` that fsspec
    opens, ``s3://...``, with these options); ``stacklevel`` and ``mode`` are taken
    and change nothing (the report never includes the calling code, and its
    scripts are always inline)."""

    def __init__(self, filename="dask-report.html", client=None, data_filename=None,
                 title="dask_ipy performance report", *, stacklevel=1, mode=None,
                 storage_options=None):
        self.filename = filename
        self.storage_options = storage_options
        self.data_filename = data_filename
        self.title = title
        self.client = _client(client)
        self.data = None
        self._since = self._began = None

    def _op(self):
        return then(self.client._report_op(self._since, self._began, self.title),
                    self._write)

    def _write(self, data):
        self.data = data
        if self.storage_options is None:
            with open(self.filename, "w", encoding="utf-8") as f:
                f.write(charts.report_html(data))
        else:
            import fsspec

            with fsspec.open(self.filename, "w", encoding="utf-8",
                             **self.storage_options) as f:
                f.write(charts.report_html(data))
        if self.data_filename is not None:
            with open(self.data_filename, "w", encoding="utf-8") as f:
                _json.dump(data, f, default=str)
        return data

    def __enter__(self):
        self._since = self.client.run_op(self.client._stream_mark_op())
        self._began = time.time()
        return self

    def __exit__(self, *exc):
        self.client.run_op(self._op())

    async def __aenter__(self):
        self._since = await self.client.run_op(self.client._stream_mark_op())
        self._began = time.time()
        return self

    async def __aexit__(self, *exc):
        await self.client.run_op(self._op())
