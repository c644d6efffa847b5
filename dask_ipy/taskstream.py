"""The task stream: what every task did, where and when; and the workers' memory over
time.  Pure data structures and arithmetic, no clock, no I/O: the worker's and the
scheduler's shells feed them, the report and the dashboard read them.

    worker pool thread ── timings ──▶ worker I/O thread: one record per task ended,
                                      queued beside the messages of the next flush
          "task-stream" {a batch} ──▶ scheduler I/O thread: `TaskStream.add_batch`
                                      (columns in arrays, a ring once full)
    client "get-task-stream" ◀──────  `TaskStream.page`: columns as bytes
           `records(page)`            dicts as dask.distributed's task stream gives
           `Breakdown.add_page(page)` sums per group, worker thread, pair of workers

A record, as `pack` takes it and `unpack` gives it back, is one tuple (`RECORD`)::

    (key, start, stop, thread, status, nbytes, typename, deserialize, serialize, extra)

``start``/``stop`` bound the computation (worker clock, seconds since the epoch);
``deserialize`` seconds before it (unpickling the task), ``serialize`` seconds after
it (pickling a small result sent along with "task-finished"); ``status`` one of
`STATUSES` by index; ``extra`` None or a tuple of ``(action, start, stop, source,
nbytes)``: "transfer" of an input from the worker ``source``, "disk-read" of spilled
inputs.  A transfer is charged to the first task that used the data.

On the wire the records of one flush travel as one *batch* of columns (`pack`,
`unpack`): ``keys`` and ``types`` (lists), ``numbers`` (bytes: per record
`NUMBERS`, start, stop, deserialize, serialize, thread, nbytes, status) and
``extra`` ([(index, extras)], rare).  Neither side makes an object per record but
its key: the worker packs a struct, the scheduler casts the bytes of many batches
into its columns at once.

The scheduler's stream keeps the last `CAPACITY` records (as dask.distributed's task
stream does), 33 bytes each in arrays plus its key (shared with the scheduler's task
while it lives) and the rare extras, and overwrites the oldest beyond that: a
million-task run costs the same memory as one of 100 000.  Records are stored in
bulk, column by column.
"""

from __future__ import annotations

import struct
from array import array

from .keys import key_prefix

STATUSES = ("OK", "error", "cancelled")
_STATUS = {i: i for i in range(len(STATUSES))}
CAPACITY = 100_000

# (key, start, stop, thread, status, nbytes, typename, deserialize, serialize, extra)
RECORD = ("key", "start", "stop", "thread", "status", "nbytes", "typename",
          "deserialize", "serialize", "extra")

# start, stop, deserialize, serialize, thread, nbytes, status: all 8 bytes wide, so
# that a batch's bytes cast to doubles or integers give each column by a stride.
NUMBERS = struct.Struct("<4dQ2q")
_WIDTH = 7

_COLUMNS = (("worker", "i"), ("thread", "Q"), ("status", "b"), ("nbytes", "q"),
            ("type", "i"), ("start", "d"), ("stop", "d"), ("deserialize", "d"),
            ("serialize", "d"))


class TaskStream:
    """The scheduler's record of tasks that ended, at most ``capacity`` of them.

    Records are numbered from 0 in the order they arrived (``total`` is the next
    number); the oldest are overwritten once ``capacity`` are held.  Columns::

        keys       [key]                 the task's key
        worker     array of int          index into `workers` (addresses)
        thread     array of int          the worker thread's identifier
        status     array of int          index into STATUSES
        nbytes     array of int          the result's size (0 on error)
        type       array of int          index into `types` (type names)
        start, stop, deserialize, serialize   array of float (seconds)
        extra      {slot: ((action, start, stop, source, nbytes), ...)}
    """

    def __init__(self, capacity=CAPACITY, batch=4096):
        self.capacity = max(int(capacity), 1)
        self._total = 0
        self.keys = []
        self.columns = {name: array(code) for name, code in _COLUMNS}
        self._cols = [self.columns[name] for name, _ in _COLUMNS]
        self.extra = {}
        self.workers = []
        self.types = []
        self._worker_index = {}
        self._type_index = {}
        # Records wait here as they came, and are stored column by column in bulk
        # once ``batch`` of them wait or someone reads: a record costs about half as
        # much so as one by one, on the scheduler's busiest path.
        self._pending = []
        self._npending = 0
        self.batch = batch

    def __len__(self):
        self.flush()
        return len(self.keys)

    @property
    def total(self):
        """The number of records ever received (the next record's number)."""
        self.flush()
        return self._total

    @property
    def first(self):
        """The number of the oldest record held."""
        self.flush()
        return self._total - len(self.keys)

    def _index(self, table, index, name):
        i = index.get(name)
        if i is None:
            i = index[name] = len(table)
            table.append(name)
        return i

    def add(self, worker, records, key_of=None):
        """Keep ``records`` (tuples, `RECORD`) of the worker at address ``worker``;
        a malformed record is dropped.  ``key_of`` as in `add_batch`."""
        batch = pack(records)
        if batch["keys"]:
            self.add_batch(worker, batch, key_of)

    def add_batch(self, worker, batch, key_of=None):
        """Keep the records of one ``batch`` (see `pack`) of the worker at address
        ``worker``.  ``key_of``: a function giving the scheduler's own object for an
        equal key, if it still has one (one copy of each key in memory), else None.
        A malformed batch is dropped whole."""
        try:
            keys, types, numbers = batch["keys"], batch["types"], batch["numbers"]
            extra = batch.get("extra") or ()
            n = len(keys)
            if len(types) != n or len(numbers) != n * NUMBERS.size:
                return
        except (TypeError, KeyError, AttributeError):
            return
        self._pending.append((worker, keys, types, numbers, extra, key_of))
        self._npending += n
        if self._npending >= self.batch:
            self.flush()

    def flush(self):
        """Store the records waiting."""
        if not self._pending:
            return
        pending, self._pending, self._npending = self._pending, [], 0
        try:
            self._store_all(pending)
        except (TypeError, ValueError, OverflowError, IndexError, KeyError):
            # Some batch is malformed: one by one, dropping the bad ones.
            for one in pending:
                try:
                    self._store_all([one])
                except (TypeError, ValueError, OverflowError, IndexError, KeyError):
                    pass

    def _store_all(self, pending):
        """Every waiting batch at once, converted column by column; raises before
        changing anything if one is malformed."""
        workers, keys, typenames, blobs, extras = array("i"), [], [], [], []
        for worker, ks, ts, numbers, extra, key_of in pending:
            w = self._worker_index.get(worker)
            if w is None:
                w = self._index(self.workers, self._worker_index, worker)
            base = len(keys)
            workers.extend(array("i", (w,)) * len(ks))
            if key_of is None:
                keys.extend(ks)
            else:
                for k in ks:
                    own = key_of(k)
                    keys.append(k if own is None else own)
            typenames.extend(ts)
            blobs.append(numbers)
            for i, x in extra:
                if not 0 <= i < len(ks):
                    raise IndexError("an extra out of its batch")
                extras.append((base + i, tuple(tuple(e) for e in x)))
        n = len(keys)
        if not n:
            return
        view = memoryview(b"".join(blobs))
        floats, unsigned, signed = view.cast("d"), view.cast("Q"), view.cast("q")
        status = array("b", signed[6::_WIDTH])
        if min(status) < 0 or max(status) >= len(STATUSES):
            raise ValueError("a status out of range")
        types = list(map(self._type_index.get, typenames))
        for i, t in enumerate(types):
            if t is None:
                types[i] = self._index(self.types, self._type_index, str(typenames[i]))
        new = (workers, _column("Q", unsigned, 4), status, _column("q", signed, 5),
               array("i", types), _column("d", floats, 0), _column("d", floats, 1),
               _column("d", floats, 2), _column("d", floats, 3))
        # Nothing has changed yet: from here on, nothing raises.
        cap = self.capacity
        # Record number k sits in slot k until the ring is full, then in k % cap;
        # the ring ends up with the last `cap` records, the extras of those only.
        extras = [(i, x) for i, x in extras if i >= n - cap]
        number = self._total
        slots = []                             # (slot, index in new, run)
        i = 0
        room = cap - len(self.keys)
        if room > 0:
            run = min(room, n)
            self.keys.extend(keys[:run])
            for col, values in zip(self._cols, new):
                col.extend(values[:run])
            slots.append((number, 0, run))
            i = run
        while i < n:
            slot = (number + i) % cap
            run = min(n - i, cap - slot)
            self.keys[slot:slot + run] = keys[i:i + run]
            for col, values in zip(self._cols, new):
                col[slot:slot + run] = values[i:i + run]
            if self.extra:
                for s in range(slot, slot + run):
                    self.extra.pop(s, None)
            slots.append((slot, i, run))
            i += run
        for i, x in extras:
            for slot, at, run in slots:
                if at <= i < at + run:
                    self.extra[slot + i - at] = x
                    break
        self._total += n

    def _slot(self, index):
        return index % self.capacity if len(self.keys) == self.capacity else index

    def index_at(self, when):
        """The number of the first record that ended at ``when`` or later (records
        arrive about in the order they end)."""
        lo, hi = self.first, self.total
        stop = self.columns["stop"]
        while lo < hi:
            mid = (lo + hi) // 2
            if stop[self._slot(mid)] < when:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def page(self, since=None, count=None, start=None, stop=None, limit=None):
        """Records ``[since, since + count)`` by number (``since`` None: from the
        oldest; a negative ``count``: the last ``-count``), or those that ended between
        the times ``start`` and ``stop``; at most ``limit``.  The answer is plain data
        (columns as bytes, see `records` and `columns`): records ``[first, next)``;
        ``end``: where the range asked for ends, had there been no ``limit`` (ask
        again from ``next``, with ``count`` ``end - next``)."""
        first, total = self.first, self.total
        lo = first if since is None else max(int(since), first)
        hi = total
        if start is not None:
            lo = max(lo, self.index_at(start))
        if stop is not None:
            hi = min(hi, self.index_at(stop))
        if count is not None:
            count = int(count)
            if count < 0:
                lo = max(lo, hi + count)
            else:
                hi = min(hi, lo + count)
        end = max(hi, lo)
        if limit is not None:
            hi = min(hi, lo + int(limit))
        hi = max(hi, lo)
        spans = self._spans(lo, hi)
        out = {"first": lo, "next": hi, "end": end, "total": total,
               "dropped": max(first - int(since), 0) if since is not None else 0,
               "workers": list(self.workers), "types": list(self.types),
               "keys": [k for a, b in spans for k in self.keys[a:b]]}
        for name, _ in _COLUMNS:
            col = self.columns[name]
            out[name] = b"".join(col[a:b].tobytes() for a, b in spans)
        extras = []
        offset = 0
        for a, b in spans:
            if self.extra:
                for slot in range(a, b):
                    e = self.extra.get(slot)
                    if e is not None:
                        extras.append((offset + slot - a, e))
            offset += b - a
        out["extra"] = extras
        return out

    def recent(self, since, limit=2000):
        """The records from number ``since`` on (the last ``limit`` of them) as
        rectangles of a live chart: ``[[worker, thread, start, stop, group, action,
        status]]``, a task's transfers before its computation."""
        lo = max(int(since), self.total - limit, self.first)
        cols = self.columns
        workers = self.workers
        out = []
        for a, b in self._spans(lo, self.total):
            for slot in range(a, b):
                worker, thread = workers[cols["worker"][slot]], cols["thread"][slot]
                group = key_prefix(self.keys[slot])
                status = STATUSES[cols["status"][slot]]
                for action, start, stop, _, _ in self.extra.get(slot, ()):
                    out.append([worker, thread, start, stop, group, action, status])
                out.append([worker, thread, cols["start"][slot], cols["stop"][slot],
                            group, "compute", status])
        return out

    def _spans(self, lo, hi):
        """Slot ranges holding records ``[lo, hi)``, in order (two once wrapped)."""
        if lo >= hi:
            return []
        a, b = self._slot(lo), self._slot(hi - 1) + 1
        if a < b:
            return [(a, b)]
        return [(a, len(self.keys)), (0, b)]


def _column(code, view, i):
    """Field ``i`` of every record in ``view`` (a batch's numbers, cast)."""
    col = array(code)
    col.frombytes(view[i::_WIDTH].tobytes())
    return col


def pack(records):
    """A batch of ``records`` (`RECORD` tuples), the malformed ones left out."""
    keys, types, numbers, extras = [], [], [], []
    for rec in records:
        try:
            key, start, stop, thread, status, nbytes, typename, deser, ser, extra = rec
            if status not in _STATUS:
                continue
            packed = NUMBERS.pack(float(start), float(stop), float(deser), float(ser),
                                  int(thread) & 0xFFFFFFFFFFFFFFFF, min(max(int(nbytes), 0), 2**62),
                                  status)
            extra = tuple(tuple(e) for e in extra) if extra else None
        except (TypeError, ValueError, OverflowError, struct.error):
            continue
        if extra:
            extras.append((len(keys), extra))
        keys.append(key)
        types.append(str(typename))
        numbers.append(packed)
    return {"keys": keys, "types": types, "numbers": b"".join(numbers), "extra": extras}


def unpack(batch):
    """The `RECORD` tuples of a batch."""
    extra = dict(batch.get("extra") or ())
    out = []
    for i, (key, typename, nums) in enumerate(zip(
            batch["keys"], batch["types"], NUMBERS.iter_unpack(batch["numbers"]))):
        start, stop, deser, ser, thread, nbytes, status = nums
        x = extra.get(i)
        out.append((key, start, stop, thread, status, nbytes, typename, deser, ser,
                    None if x is None else tuple(tuple(e) for e in x)))
    return out


def columns(page):
    """The columns of a page as arrays (and ``keys``, ``extra`` as {row: extras})."""
    out = {"keys": list(page["keys"]), "extra": dict(page.get("extra") or ())}
    for name, code in _COLUMNS:
        col = array(code)
        col.frombytes(page[name])
        out[name] = col
    return out


def records(page):
    """A page as dask.distributed's task stream gives it: one dict per task with
    ``key``, ``worker``, ``thread``, ``status``, ``nbytes``, ``typename`` and
    ``startstops`` ([{action, start, stop[, source, nbytes]}]: transfers of inputs
    and reads from disk, then deserialize, compute, serialize)."""
    cols = columns(page)
    workers, types = page["workers"], page["types"]
    out = []
    extra = cols["extra"]
    for i, key in enumerate(cols["keys"]):
        start, stop = cols["start"][i], cols["stop"][i]
        startstops = []
        for action, a, b, source, nbytes in extra.get(i, ()):
            startstops.append({"action": action, "start": a, "stop": b,
                               "source": source, "nbytes": nbytes})
        deser, ser = cols["deserialize"][i], cols["serialize"][i]
        if deser > 0:
            startstops.append({"action": "deserialize", "start": start - deser,
                               "stop": start})
        startstops.append({"action": "compute", "start": start, "stop": stop})
        if ser > 0:
            startstops.append({"action": "serialize", "start": stop,
                               "stop": stop + ser})
        out.append({"key": key, "worker": workers[cols["worker"][i]],
                    "thread": cols["thread"][i],
                    "status": STATUSES[cols["status"][i]],
                    "nbytes": cols["nbytes"][i], "typename": types[cols["type"][i]],
                    "startstops": startstops})
    return out


# ---------------------------------------------------------------- memory over time

class MemoryHistory:
    """Each worker's memory, sampled: ``{address: [(time, process, managed,
    spilled)]}``.  A series that reaches ``capacity`` samples drops every other one
    (the oldest half at half the resolution), so a long run is covered whole at
    bounded cost."""

    def __init__(self, capacity=2048):
        self.capacity = max(int(capacity), 4)
        self.series = {}

    def add(self, address, when, memory, managed, spilled):
        s = self.series.get(address)
        if s is None:
            s = self.series[address] = []
        s.append((when, memory, managed, spilled))
        if len(s) >= self.capacity:
            half = len(s) // 2
            s[:half] = s[:half:2]

    def forget(self, keep):
        """Drop the series of workers not in ``keep`` whose last sample is older
        than every sample kept (bounded history of departed workers)."""
        if len(self.series) <= 4 * max(len(keep), 1):
            return
        gone = sorted((s[-1][0], a) for a, s in self.series.items() if a not in keep)
        for _, address in gone[: len(self.series) - 4 * max(len(keep), 1)]:
            del self.series[address]

    def since(self, when=None):
        return {address: [list(x) for x in s if when is None or x[0] >= when]
                for address, s in self.series.items()}


# ---------------------------------------------------------------- aggregation

ACTIONS = ("compute", "transfer", "deserialize", "serialize", "disk-read")


class Breakdown:
    """Sums over task stream pages, in bounded memory whatever the number of tasks:

    ``groups``    {group: {count, errors, nbytes, compute, transfer, deserialize,
                  serialize, disk-read}}  seconds, bytes
    ``threads``   {(worker, thread): {tasks, compute, transfer, ...}}
    ``transfers`` {(source, worker): {count, nbytes, seconds}}
    ``rects``     the task stream chart: up to ``max_rects`` rectangles
                  (lane, start, stop, group, action, key, status); past that, each
                  lane's time between ``t0`` and ``t1`` in ``bins`` columns of
                  seconds per group (``binned`` True)
    """

    def __init__(self, t0=None, t1=None, max_rects=4000, bins=600):
        self.t0, self.t1 = t0, t1
        self.max_rects = max_rects
        self.nbins = bins
        self.groups = {}
        self.threads = {}
        self.transfers = {}
        self.rects = []
        self.binned = False
        self.bins = {}               # {lane: [{group: seconds}] * nbins}
        self.count = 0
        self.first = None            # earliest start and latest stop seen
        self.last = None

    def _lane(self, worker, thread):
        lane = (worker, thread)
        t = self.threads.get(lane)
        if t is None:
            t = self.threads[lane] = dict.fromkeys(("tasks",) + ACTIONS, 0.0)
            t["tasks"] = 0
        return lane, t

    def _group(self, name):
        g = self.groups.get(name)
        if g is None:
            g = self.groups[name] = dict.fromkeys(ACTIONS, 0.0)
            g.update(count=0, errors=0, nbytes=0)
        return g

    def add(self, worker, thread, key, status, nbytes, start, stop, deser=0.0, ser=0.0,
            extra=()):
        """One task (as in a record; ``status`` a name of STATUSES)."""
        name = key_prefix(key)
        g = self._group(name)
        lane, t = self._lane(worker, thread)
        g["count"] += 1
        t["tasks"] += 1
        if status == "error":
            g["errors"] += 1
        g["nbytes"] += max(int(nbytes), 0)
        spans = [("compute", start, stop)]
        if deser > 0:
            spans.append(("deserialize", start - deser, start))
        if ser > 0:
            spans.append(("serialize", stop, stop + ser))
        for action, a, b, source, size in extra or ():
            spans.append((action, a, b))
            if action == "transfer":
                pair = (source, worker)
                x = self.transfers.get(pair)
                if x is None:
                    x = self.transfers[pair] = {"count": 0, "nbytes": 0, "seconds": 0.0}
                x["count"] += 1
                x["nbytes"] += max(int(size or 0), 0)
                x["seconds"] += max(b - a, 0.0)
        for action, a, b in spans:
            d = max(b - a, 0.0)
            g[action] = g.get(action, 0.0) + d
            t[action] = t.get(action, 0.0) + d
            self.first = a if self.first is None else min(self.first, a)
            self.last = b if self.last is None else max(self.last, b)
            self._draw(lane, a, b, name, action, key, status)
        self.count += 1

    def add_page(self, page):
        cols = columns(page)
        workers, extra = page["workers"], cols["extra"]
        for i, key in enumerate(cols["keys"]):
            self.add(workers[cols["worker"][i]], cols["thread"][i], key,
                     STATUSES[cols["status"][i]], cols["nbytes"][i], cols["start"][i],
                     cols["stop"][i], cols["deserialize"][i], cols["serialize"][i],
                     extra.get(i, ()))

    # -- the chart's rectangles, bounded

    def _draw(self, lane, a, b, group, action, key, status):
        if not self.binned:
            self.rects.append((lane, a, b, group, action, key, status))
            if len(self.rects) > self.max_rects and self.t0 is not None \
                    and self.t1 is not None and self.t1 > self.t0:
                self.binned = True
                rects, self.rects = self.rects, []
                for r in rects:
                    self._bin(r[0], r[1], r[2], r[3] if r[4] == "compute" else r[4])
            return
        self._bin(lane, a, b, group if action == "compute" else action)

    def _bin(self, lane, a, b, label):
        width = (self.t1 - self.t0) / self.nbins
        row = self.bins.get(lane)
        if row is None:
            row = self.bins[lane] = [None] * self.nbins
        a, b = max(a, self.t0), min(b, self.t1)
        if b <= a:
            return
        i = min(int((a - self.t0) / width), self.nbins - 1)
        while i < self.nbins:
            lo = self.t0 + i * width
            hi = lo + width
            d = min(b, hi) - max(a, lo)
            if d > 0:
                cell = row[i]
                if cell is None:
                    cell = row[i] = {}
                cell[label] = cell.get(label, 0.0) + d
            if b <= hi:
                break
            i += 1

    def binned_rects(self):
        """The binned chart as rectangles (lane, start, stop, label, busy fraction):
        each bin drawn in the colour of what took most of its time, runs of equal
        bins joined."""
        width = (self.t1 - self.t0) / self.nbins
        out = []
        for lane, row in self.bins.items():
            run = None
            for i, cell in enumerate(row + [None]):
                if cell:
                    label = max(cell, key=cell.get)
                    busy = min(sum(cell.values()) / width, 1.0)
                else:
                    label, busy = None, 0.0
                if run is not None and (label != run[3] or abs(busy - run[4]) > 0.25):
                    out.append((lane, self.t0 + run[1] * width, self.t0 + i * width,
                                run[3], run[4]))
                    run = None
                if label is not None and run is None:
                    run = [lane, i, None, label, busy]
        return out

    # -- summaries

    def idle(self, nthreads, t0=None, t1=None):
        """Thread-seconds of the workers in ``nthreads`` ({address: threads}) between
        ``t0`` and ``t1`` (default: what was seen) when no task of theirs ran or
        fetched: what their threads could have done minus what they did."""
        t0 = self.first if t0 is None else t0
        t1 = self.last if t1 is None else t1
        if t0 is None or t1 is None or t1 <= t0:
            return 0.0
        busy = sum(t["compute"] + t["transfer"] + t["deserialize"] + t["serialize"]
                   + t["disk-read"] for (w, _), t in self.threads.items()
                   if w in nthreads)
        return max(sum(nthreads.values()) * (t1 - t0) - busy, 0.0)


def _key_text(key):
    return key if isinstance(key, str) else repr(key)


def report_data(breakdown, memory, workers, start, stop, title="dask_ipy report",
                scheduler=""):
    """The data of a performance report, plain JSON-able: what `charts.report_html`
    draws, and what a report exports as JSON.  ``memory``: `MemoryHistory.since`;
    ``workers``: {address: {"nthreads", "name", ...}} of the workers that took part
    (those of the scheduler's info, and any seen in the stream)."""
    b = breakdown
    duration = max(stop - start, 0.0)
    seen = {w for w, _ in b.threads}
    workers = {a: dict(w) for a, w in workers.items()}
    for a in seen:
        workers.setdefault(a, {"nthreads": len({t for w, t in b.threads if w == a})})
    nthreads = {a: int(w.get("nthreads") or 1) for a, w in workers.items()}
    lanes = sorted(b.threads, key=lambda lane: (lane[0], lane[1]))
    lane_index = {lane: i for i, lane in enumerate(lanes)}
    busy_actions = ACTIONS
    groups = [{"name": name, **{k: g[k] for k in
                                ("count", "errors", "nbytes") + busy_actions}}
              for name, g in sorted(b.groups.items(),
                                    key=lambda kv: -kv[1]["compute"])]
    threads = []
    for lane in lanes:
        t = b.threads[lane]
        busy = sum(t[a] for a in busy_actions)
        threads.append({"worker": lane[0], "thread": lane[1], "tasks": t["tasks"],
                        **{a: t[a] for a in busy_actions},
                        "idle": max(duration - busy, 0.0)})
    if b.binned:
        rects = [[lane_index[r[0]], r[1], r[2], r[3], round(r[4], 3)]
                 for r in b.binned_rects()]
    else:
        rects = [[lane_index[r[0]], r[1], r[2], r[3], r[4], _key_text(r[5]), r[6]]
                 for r in b.rects]
    total = {a: sum(g[a] for g in b.groups.values()) for a in busy_actions}
    return {
        "version": 1, "title": title, "scheduler": scheduler,
        "start": start, "stop": stop,
        "workers": workers,
        "summary": {"tasks": b.count,
                    "errors": sum(g["errors"] for g in b.groups.values()),
                    "duration": duration, "threads": sum(nthreads.values()),
                    **total, "idle": b.idle(nthreads, start, stop),
                    "transfer_bytes": sum(x["nbytes"] for x in b.transfers.values())},
        "groups": groups,
        "threads": threads,
        "transfers": [{"source": s, "destination": d, **x}
                      for (s, d), x in sorted(b.transfers.items(), key=str)],
        "memory": memory,
        "stream": {"binned": b.binned, "lanes": [list(lane) for lane in lanes],
                   "rects": rects},
    }
