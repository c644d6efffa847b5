"""The worker's statistical profiler: a thread that samples the stacks of the threads
running tasks.

Every ``interval`` seconds it reads which pool threads run which key (`RunningTasks`:
the memory watch's table) and, only if some do, their frames
(`sys._current_frames`), and counts each stack into the current cycle under the
key's group (`profiling.add_sample`).  Idle threads, the I/O thread and the worker's
own frames below a task cost nothing.  Every ``cycle`` seconds the current cycle goes
into a bounded history (a ring of ``history`` cycles; cycles without a sample are not
kept).  The I/O thread answers "get-profile" with `select`, under the lock the
sampler counts under.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque

from .. import profiling


def call_stacks(running, keys=None):
    """{key: its thread's stack as text, one string per frame, outermost first (as
    `traceback.format_stack` gives it)} of the tasks running now (`RunningTasks`), of
    ``keys`` only if given."""
    with running.lock:
        by_thread = dict(running.by_thread)
    frames = sys._current_frames()
    try:
        return {key: [line.rstrip("\n") for line in traceback.format_stack(frames[ident])]
                for ident, key in by_thread.items()
                if ident in frames and (keys is None or key in keys)}
    finally:
        frames = None                   # every local of every thread


class Sampler:
    def __init__(self, running, interval=0.01, cycle=1.0, history=1000, stop=()):
        self.running = running
        self.interval = float(interval)
        self.cycle_length = float(cycle)
        self.history = deque(maxlen=int(history))
        self.stop_codes = frozenset(stop)
        self.lock = threading.Lock()
        self.current = profiling.new_cycle(time.time())
        self.samples = 0
        self._groups = {}
        self._closed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="dask-ipy-worker-sampler")

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self._closed.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(2)

    def _run(self):
        wait = self._closed.wait
        interval = self.interval
        while not wait(interval):
            self.sample(time.time())

    def sample(self, now):
        """One look at the running tasks' stacks (on the sampler thread; public for
        tests)."""
        running = self.running
        with running.lock:
            by_thread = dict(running.by_thread) if running.by_thread else None
        with self.lock:
            current = self.current
            if now - current["start"] >= self.cycle_length:
                current["stop"] = now
                if current["trees"]:
                    self.history.append(current)
                current = self.current = profiling.new_cycle(now)
            if by_thread is None:
                return
            frames = sys._current_frames()
            try:
                for ident, key in by_thread.items():
                    frame = frames.get(ident)
                    if frame is not None and profiling.add_sample(
                            current, key, frame, self.stop_codes, self._groups):
                        self.samples += 1
            finally:
                # Frames hold every local of every thread: none outlives the sample.
                frame = frames = None

    def select(self, start=None, stop=None, key=None):
        """The merged tree of the cycles in [start, stop], of ``key``'s group."""
        now = time.time()
        with self.lock:
            return profiling.select(list(self.history) + [self.current], start, stop,
                                    key, now)
