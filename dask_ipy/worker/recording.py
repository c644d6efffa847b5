"""What a worker records of its own work, for the task stream and the metrics.

    pool thread: timings of one task ──▶ I/O thread: `Recorder.ended` ─▶ pending
    I/O thread: a fetch answered ──────▶ `Recorder.fetched_from` ─▶ fetched {key}
    the shell's flush ◀── `Recorder.take` ── "task-stream" {records}, in the same
                                             batch as the task's "task-finished"

A record is queued before the state machine hears that its task ended, so it leaves
no later than the task's result: whoever learns of the result can already ask the
scheduler for the record.  Both buffers are bounded: records wait only while the
scheduler cannot be reached, fetches only until a task that used them ends.
No clock here: the shell gives the times (see taskstream.py for the record).
"""

from __future__ import annotations

from collections import deque

OK, ERROR, CANCELLED = 0, 1, 2     # indices into taskstream.STATUSES


class Recorder:
    def __init__(self, on=True, max_pending=100_000, max_fetched=100_000):
        self.on = on
        self.pending = deque(maxlen=max_pending)
        self.fetched = {}               # {key: (start, stop, source, nbytes)}
        self.max_fetched = max_fetched
        self.started = {}               # {peer: start} of the fetch in flight
        self.bytes_in = 0               # fetched from peers (and the relay), ever
        self.bytes_out = 0              # served to peers, ever

    def fetch_started(self, peer, when):
        self.started[peer] = when

    def fetched_from(self, peer, when, sizes, source=None):
        """A fetch from ``peer`` ended at ``when`` with ``sizes`` {key: bytes}; the
        data came from ``source`` (default: the peer)."""
        start = self.started.pop(peer, when)
        self.bytes_in += sum(sizes.values())
        if not self.on:
            return
        source = peer if source is None else source
        for key, nbytes in sizes.items():
            self.fetched[key] = (start, when, source, nbytes)
        if len(self.fetched) > self.max_fetched:
            # Inputs of tasks that never ran here (stolen, released): oldest first.
            for key in list(self.fetched)[: len(self.fetched) - self.max_fetched]:
                del self.fetched[key]

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
        self.pending.append((key, start, stop, thread, status, nbytes or 0,
                             typename or "", loaded - begin, serialized, extra))

    def take(self):
        """The records to send now (emptied)."""
        out = list(self.pending)
        self.pending.clear()
        return out
