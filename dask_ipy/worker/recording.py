"""What a worker records of its own work, for the task stream and the metrics.

    pool thread: timings of one task ──▶ I/O thread: `Recorder.ended` ─▶ columns
    I/O thread: a fetch answered ──────▶ `Recorder.fetched_from` ─▶ fetched {key},
                                                                   bandwidth
    the shell's flush ◀── `Recorder.take` ── "task-stream" {keys, types, numbers,
                                             extra}, in the same batch as the
                                             task's "task-finished"

A record is queued before the state machine hears that its task ended, so it leaves
no later than the task's result: whoever learns of the result can already ask the
scheduler for the record.  Both buffers are bounded: records wait only while the
scheduler cannot be reached, fetches only until a task that used them ends.
No clock here: the shell gives the times (see taskstream.py for the record).
A record costs one small `struct` pack and three appends here, and no object of its
own on the wire or at the scheduler, which stores the numbers of a whole batch at
once (the task stream must not slow the tasks it watches).
"""

from __future__ import annotations

import struct

from ..taskstream import NUMBERS

OK, ERROR, CANCELLED = 0, 1, 2     # indices into taskstream.STATUSES

# Bytes: the time a smaller fetch takes is mostly its round trip, not the link's speed.
BANDWIDTH_FROM = 1_000_000
BANDWIDTH_WEIGHT = 0.05            # of each new fetch in the moving average


class Recorder:
    def __init__(self, on=True, max_pending=100_000, max_fetched=100_000):
        self.on = on
        # The records waiting, column by column (see taskstream.py: a batch).
        self.keys = []
        self.types = []
        self.numbers = []               # NUMBERS-packed bytes, one per record
        self.extra = []                 # [(index in keys, extras)]
        self.max_pending = max_pending
        self.fetched = {}               # {key: (start, stop, source, nbytes)}
        self.max_fetched = max_fetched
        self.started = {}               # {peer: start} of the fetch in flight
        self.bytes_in = 0               # fetched from peers (and the relay), ever
        self.bytes_out = 0              # served to peers, ever
        self.fetches = 0                # fetches started, ever
        self.served = 0                 # requests of peers answered, ever
        # Bytes per second of the fetches of BANDWIDTH_FROM bytes or more: a moving
        # average (None until one is measured), and sums since `take_bandwidth`:
        # {peer: (sum of bytes per second, fetches)}, {type name: (sum, fetches)}
        # of those that brought values of one type only.
        self.bandwidth = None
        self.bandwidth_peers = {}
        self.bandwidth_types = {}

    def fetch_started(self, peer, when):
        self.started[peer] = when
        self.fetches += 1

    def fetched_from(self, peer, when, sizes, source=None, types=()):
        """A fetch from ``peer`` ended at ``when`` with ``sizes`` {key: bytes}; the
        data came from ``source`` (default: the peer); ``types``: the type names of
        its values."""
        start = self.started.pop(peer, when)
        nbytes = sum(sizes.values())
        self.bytes_in += nbytes
        if nbytes >= BANDWIDTH_FROM:
            self._measured(nbytes / max(when - start, 1e-3),
                           peer if source is None else None, set(types))
        if not self.on:
            return
        source = peer if source is None else source
        for key, nbytes in sizes.items():
            self.fetched[key] = (start, when, source, nbytes)
        if len(self.fetched) > self.max_fetched:
            # Inputs of tasks that never ran here (stolen, released): oldest first.
            for key in list(self.fetched)[: len(self.fetched) - self.max_fetched]:
                del self.fetched[key]

    def _measured(self, speed, peer, types):
        if self.bandwidth is None:
            self.bandwidth = speed
        else:
            self.bandwidth += (speed - self.bandwidth) * BANDWIDTH_WEIGHT
        if peer is not None:
            _add_speed(self.bandwidth_peers, peer, speed)
        if len(types) == 1:
            _add_speed(self.bandwidth_types, types.pop(), speed)

    def take_bandwidth(self):
        """{"total": the moving average, "workers": {peer: (sum, fetches)},
        "types": {type name: (sum, fetches)}} (dask.distributed's figures); the
        sums start again."""
        out = {"total": self.bandwidth, "workers": self.bandwidth_peers,
               "types": self.bandwidth_types}
        self.bandwidth_peers, self.bandwidth_types = {}, {}
        return out

    def ended(self, key, status, timing, nbytes, typename, inputs=()):
        """A task ended: ``timing`` from its pool thread, (begin, loaded, start,
        stop, serialize seconds, thread, disk): unpickling the task from ``begin``
        to ``loaded``, then reading spilled inputs (if ``disk``) until ``start``;
        ``inputs``: the keys it used."""
        begin, loaded, start, stop, serialized, thread, disk = timing
        extra = None
        if self.fetched and inputs:
            spans = {}
            for dep in inputs:
                got = self.fetched.pop(dep, None)
                if got is not None:
                    # One fetch brings several keys: one span, their bytes summed.
                    a, b, source, n = got
                    span = spans.get((a, b, source))
                    spans[(a, b, source)] = n if span is None else span + n
            if spans:
                extra = [("transfer", a, b, source, n)
                         for (a, b, source), n in spans.items()]
        if disk:
            extra = (extra or []) + [("disk-read", loaded, start, None, 0)]
        try:
            numbers = _pack(start, stop, loaded - begin, serialized, thread,
                            nbytes or 0, status)
        except (struct.error, TypeError):
            return                      # not a number the record can hold: no record
        keys = self.keys
        if extra:
            self.extra.append((len(keys), extra))
        keys.append(key)
        self.types.append(typename or "")
        self.numbers.append(numbers)
        if len(keys) > self.max_pending:
            # Only while the scheduler cannot be reached; a tenth at a time, so
            # that a long wait does not shift the lists at every record.
            self._drop_oldest(len(keys) - self.max_pending + self.max_pending // 10)

    def _drop_oldest(self, n):
        del self.keys[:n], self.types[:n], self.numbers[:n]
        self.extra = [(i - n, x) for i, x in self.extra if i >= n]

    def take(self):
        """The records to send now, as one batch (see taskstream.py), or None;
        emptied."""
        if not self.keys:
            return None
        batch = {"keys": self.keys, "types": self.types,
                 "numbers": b"".join(self.numbers), "extra": self.extra}
        self.keys, self.types, self.numbers, self.extra = [], [], [], []
        return batch


def _add_speed(sums, name, speed):
    total, count = sums.get(name, (0.0, 0))
    sums[name] = (total + speed, count + 1)


_pack = NUMBERS.pack
