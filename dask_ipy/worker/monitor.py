"""The worker's memory watch and its task threads' limits: the shell side of
`worker.limits`.

    "dask-ipy-worker-memory" thread, every monitor-interval:
        RSS (psutil), results in memory ──▶ limits.decide ──▶ Spill    store.spill
                                                           ├─▶ Pause/Resume  loop
                                                           └─▶ Terminate
            action "interrupt" (in-process, e.g. an ipyparallel engine): a
                TaskMemoryError is raised inside each running task's thread; the
                process lives on
            action "exit" (under `dask-ipy worker`'s supervisor): the worker tells
                the scheduler, removes its files and exits; the supervisor starts
                a new one

The watch runs on a thread of its own, not on the I/O thread, so that a long
handler there cannot delay it; numpy releases the GIL while it fills memory, so the
watch sees a task's allocation grow.  Code that holds the GIL throughout (one huge
``bytes`` operation) is seen only once it returns; outside an engine the supervisor,
a separate process, watches the worker's RSS too.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import time

from ..log import logger
from ..units import format_bytes
from . import limits as L

EXIT_MEMORY = 75        # a worker's exit code when its memory passed terminate
TRIM = 1.0              # seconds between two heap trims for the memory watch
HEAP_SLACK = 32 * 2**20  # bytes of heap an idle worker may keep for reuse, untrimmed
COLLECT_SHARE = 0.05    # at most this share of the time in the collector, for memory


class TaskMemoryError(MemoryError):
    """Raised inside a task whose worker passed its memory limit's terminate
    fraction (a worker inside an engine stops the task, not the engine)."""

    def __str__(self):
        return (self.args[0] if self.args else
                "the worker's memory passed its terminate fraction: task interrupted")


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


def raise_in_thread(ident, exc_type):
    """Make ``exc_type`` raise in thread ``ident`` at its next Python instruction."""
    return _set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


def clear_in_thread(ident):
    """Drop an exception set by `raise_in_thread` and not raised yet."""
    return _set_async_exc(ctypes.c_ulong(ident), ctypes.c_void_p(None))


class RunningTasks:
    """{thread ident: key} of the tasks running now, for the memory watch to interrupt.

    A task is stopped only while it is registered here: its thread unregisters under
    the same lock and clears any exception not raised yet, so a TaskMemoryError can
    never land in the worker's own code after the task ended."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_thread = {}
        self.interrupted = set()      # keys already stopped

    def start(self, key):
        with self.lock:
            self.by_thread[threading.get_ident()] = key

    def end(self):
        ident = threading.get_ident()
        with self.lock:
            key = self.by_thread.pop(ident, None)
            if key in self.interrupted:
                self.interrupted.discard(key)
                clear_in_thread(ident)

    def keys(self):
        with self.lock:
            return list(self.by_thread.values())

    def interrupt(self, before=None):
        """Raise TaskMemoryError in every running task not stopped yet; returns their
        keys.  ``before(keys)`` runs first (the scheduler must hear of it before any
        result of those tasks)."""
        with self.lock:
            targets = {ident: key for ident, key in self.by_thread.items()
                       if key not in self.interrupted}
            if not targets:
                return []
            keys = list(targets.values())
            if before is not None:
                before(keys)
            for ident, key in targets.items():
                raise_in_thread(ident, TaskMemoryError)
                self.interrupted.add(key)
            return keys


class ThrottledCollector:
    """Python's cyclic garbage collector run for memory, not for object counts: a
    few large arrays in reference cycles are few allocations, so the collector's own
    schedule may leave them for a long time, counted against the worker.  At most
    `share` of the time goes to it, as a full collection of a heap of many objects can
    take a second."""

    def __init__(self, share=COLLECT_SHARE, clock=time.monotonic):
        self.share = share
        self.clock = clock
        self.started = None             # when the last collection began
        self.took = 0.0                 # and how long it took

    def collect(self):
        """Collect, unless the last collection took more than `share` of the time
        since it began; whether it ran."""
        start = self.clock()
        if self.started is not None and self.took > self.share * (start - self.started):
            return False
        gc.collect()
        self.started = start
        self.took = self.clock() - start
        return True


class MemoryMonitor:
    """Samples the worker's memory and carries out `limits.decide`.

    ``worker``: the shell (its ``loop``, ``state``, ``data``, ``running``); ``limit``:
    bytes or None; ``fractions``: {target, spill, pause, terminate}; ``action``:
    "interrupt" or "exit"."""

    def __init__(self, worker, limit, fractions, action="interrupt", interval=0.1,
                 margin=0.05, sample=None):
        self.worker = worker
        self.limit = limit
        self.fractions = fractions
        self.action = action
        self.interval = interval
        self.margin = margin
        self.paused = False
        self.spilling = False
        self.rss = 0
        self.managed = 0
        self.peak = 0
        self._sample = sample or worker.process.memory_info
        self._stop = threading.Event()
        self._warned = False
        self._trimmed = 0.0
        self._floor = None          # memory other than results, after the last idle trim
        self._busy = 0.0            # when the worker last had a task to run
        self._lean = False          # freed blocks go back to the system at once
        self.collector = ThrottledCollector()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="dask-ipy-worker-memory")

    def start(self):
        self.thread.start()

    def stop(self, timeout=5):
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def managed_bytes(self):
        store = self.worker.data
        memory = getattr(store, "memory", None)
        if isinstance(memory, int):
            return memory
        return self.worker.state.managed

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                logger.exception("worker %s: memory watch failed", self.worker.address)

    def check(self):
        try:
            rss = self._sample().rss
        except Exception:
            return
        managed = self.managed_bytes()
        instructions = L.decide(rss, managed, self.limit, self.fractions, self.paused,
                                self.margin)
        acts = any(not isinstance(inst, L.Resume) for inst in instructions)
        idle = self._idle_with_free_heap(rss, managed)
        if (acts or self.paused or idle) and self._free_heap(collect=acts or self.paused):
            rss = self._sample().rss
            if idle:
                self._floor = rss - managed
            instructions = L.decide(rss, managed, self.limit, self.fractions,
                                    self.paused, self.margin)
        self.rss, self.managed = rss, managed
        self.peak = max(self.peak, rss)
        lean = L.lean_heap(rss, self.limit, self.fractions, self._lean, self.margin)
        if lean != self._lean:
            from .system import reuse_heap

            self._lean = lean
            reuse_heap(not lean)
        for inst in instructions:
            if isinstance(inst, L.Terminate):
                self._terminate(inst)
            elif isinstance(inst, L.Pause):
                self.paused = True
                self.worker.loop.call_soon(self.worker.memory_paused, True, rss)
            elif isinstance(inst, L.Resume):
                self.paused = False
                self.worker.loop.call_soon(self.worker.memory_paused, False, rss)
            elif isinstance(inst, L.Spill):
                self._spill(inst.nbytes)

    def _idle_with_free_heap(self, rss, managed):
        """Whether the worker has run nothing for `TRIM` seconds (not a pause between
        tasks while inputs come) and its memory other than results is `HEAP_SLACK`
        past what it was after its last trim while idle: what a computation freed,
        most often, kept in the heap for reuse."""
        state, now = self.worker.state, time.monotonic()
        if state.executing or state.ready:
            self._busy = now
            return False
        if now - self._busy < TRIM:
            return False
        if self._floor is None:
            self._floor = rss - managed
        return rss - managed > self._floor + HEAP_SLACK

    def _free_heap(self, collect=True):
        """Before spilling, pausing or stopping for the RSS, while paused, and once a
        computation is over: give back memory that is free but still counted, at
        most once per `TRIM` seconds.  Freed results may sit in the heap (blocks
        under the worker's mmap threshold stay there for reuse,
        `supervisor.HEAP_SETTINGS`), or, when ``collect``, in reference cycles
        nobody reaches (a stopped task's, most often): the collector holds the GIL
        throughout, so a worker trimmed only for being idle (an engine, maybe,
        running your code) is spared it.  Whether it ran."""
        from .system import malloc_trim

        now = time.monotonic()
        if self.spilling or now - self._trimmed <= TRIM:
            return False
        self._trimmed = now
        if collect:
            self.collector.collect()
        return malloc_trim()

    def _spill(self, nbytes):
        spill = getattr(self.worker.data, "spill", None)
        if spill is None:
            if not self._warned:
                self._warned = True
                logger.warning("worker %s: memory above the spill fraction, and its "
                               "data mapping cannot spill", self.worker.address)
            return
        if self.spilling:
            return
        self.spilling = True

        def after():
            from .system import malloc_trim

            # What was spilled is freed only once nothing refers to it, a cycle
            # neither: else the next look still sees it and spills more.
            self.collector.collect()
            malloc_trim()
            self.spilling = False
        if not spill(nbytes, after):
            self.spilling = False

    def _terminate(self, inst):
        worker = self.worker
        if self.action == "exit":
            worker.exit_for_memory(inst.rss, inst.limit, worker.running.keys())
            return

        def tell(keys):
            logger.warning("worker %s: memory %s passed %.0f%% of its %s limit: "
                           "interrupting %s", worker.address, format_bytes(inst.rss),
                           100 * self.fractions["terminate"], format_bytes(inst.limit),
                           keys)
            worker.loop.call_soon(worker.handle_memory_exceeded, keys, inst.rss,
                                  inst.limit, "interrupt")
        worker.running.interrupt(before=tell)


class TaskThreadLimits:
    """Caps the thread pools of BLAS and OpenMP libraries (threadpoolctl) while the
    worker's task threads are busy, and gives the process its own settings back once
    they are idle: code run in the process outside tasks (a user's ``%px`` cell in an
    idle engine) keeps the engine's settings.  Libraries loaded by a task are found
    when the next busy stretch starts."""

    def __init__(self, threads):
        self.threads = threads
        self.lock = threading.Lock()
        self.busy = 0
        self.controller = None
        self.limiter = None
        self._modules = -1

    def enter(self):
        with self.lock:
            self.busy += 1
            if self.busy == 1 or len(sys.modules) != self._modules:
                self._apply()

    def leave(self):
        with self.lock:
            self.busy = max(self.busy - 1, 0)
            if self.busy == 0 and self.limiter is not None:
                try:
                    self.limiter.restore_original_limits()
                except Exception:
                    logger.debug("could not restore thread pool limits", exc_info=True)
                self.limiter = None

    def _apply(self):
        try:
            from threadpoolctl import ThreadpoolController

            if self.controller is None or len(sys.modules) != self._modules:
                if self.limiter is not None:
                    self.limiter.restore_original_limits()
                    self.limiter = None
                self._modules = len(sys.modules)
                self.controller = ThreadpoolController()
            if self.limiter is None and len(self.controller):
                # (None loaded yet: nothing to cap, nor to give back at the end.)
                self.limiter = self.controller.limit(limits=self.threads)
        except Exception:
            logger.debug("could not limit thread pools", exc_info=True)


class MemorySettings:
    """A worker's memory settings as dask.distributed's ``Worker.memory_manager``
    shows them, read from the worker each time: ``memory_limit`` (bytes, or None),
    the ``memory_target_fraction``, ``memory_spill_fraction`` and
    ``memory_pause_fraction`` (False: that step is off), ``memory_monitor_interval``
    (seconds; None without a limit), ``max_spill`` (False: spilling has no cap here)
    and ``data`` (the worker's store)."""

    max_spill = False

    def __init__(self, worker):
        self._worker = worker

    @property
    def memory_limit(self):
        return self._worker.memory_limit

    @property
    def memory_target_fraction(self):
        return self._worker.memory_fractions["target"]

    @property
    def memory_spill_fraction(self):
        return self._worker.memory_fractions["spill"]

    @property
    def memory_pause_fraction(self):
        return self._worker.memory_fractions["pause"]

    @property
    def memory_monitor_interval(self):
        monitor = self._worker.monitor
        return None if monitor is None else monitor.interval

    @property
    def data(self):
        return self._worker.data

    def __repr__(self):
        return (f"<MemorySettings limit={self.memory_limit} "
                f"target={self.memory_target_fraction} "
                f"spill={self.memory_spill_fraction} "
                f"pause={self.memory_pause_fraction}>")
