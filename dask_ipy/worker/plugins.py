"""The worker plugins of one worker: set up and torn down on a thread of their own,
one at a time, in the order the scheduler sent them; told of transitions on the
worker's I/O thread.

    scheduler ─ "plugin-add" ────▶ WorkerPlugins.add ──────┐
              ─ "plugin-remove" ─▶ WorkerPlugins.remove ───┤ Jobs, first in first out
    restart-worker ──────────────▶ WorkerPlugins.remove_all┘
                                                           ▼
        plugin thread: unpickle, tear the old one of that name down, setup(worker)
                                                           │ loop.call_soon(done)
                                                           ▼
        I/O thread: the plugin joins `plugins` and is told the transitions it
        missed meanwhile; its outcome goes to the scheduler
    WorkerState.transition_log ──▶ WorkerPlugins.transitions (after each event)

While a job is pending the state machine starts no task ("plugins-busy", then
"plugins-done") and a `Client.run` function waits (`after`), so that each finds done
the set-ups the scheduler sent before it: on the workers there when the plugin was
registered, and on one that joins later (the scheduler sends it every plugin as it
registers, before any task).  A restart waits for the teardowns.  The I/O thread
goes on meanwhile: heartbeats, data for peers and clients, the results of the tasks
running already.  A plugin is told of every transition after its "plugin-add" came,
as it would have been had its set-up run on the I/O thread: those while it was set
up wait in its job, and it gets them first.

The state machine records transitions only while a plugin watches them, or may.

State, documented once:

    plugins:  {name: plugin}  set up (or failed to) (I/O thread)
    watching: {name: plugin}  those of them with a `transition` hook (I/O thread)
    arriving: {name: Job}     the latest "add" of each name, not done yet (I/O thread)
    pending:  [Job]           queued or running, oldest first (I/O thread)
    after_jobs: [fn]          calls waiting for `pending` to empty (I/O thread)
    live:     {name: plugin}  what the plugin thread has set up (that thread only)
"""

from __future__ import annotations

import queue
import threading

from ..errors import raised
from ..log import logger
from ..plugins import call, overrides
from ..protocol import deserialize

OK = {"status": "OK"}
CLOSE_WARNING = 5.0        # seconds a close waits for a set-up before it says so


class Job:
    """One set-up or teardown for the plugin thread."""

    __slots__ = ("kind", "name", "blob", "reply", "seen", "cancelled", "ended")

    def __init__(self, kind, name=None, blob=None, reply=None):
        self.kind = kind          # "add", "remove", "remove-all" or "close"
        self.name = name
        self.blob = blob          # "add": the pickled plugin
        self.reply = reply        # called on the I/O thread with the outcome, or None
        self.seen = []            # "add": [(key, start, finish)] while it waits
        self.cancelled = False    # not to run: a restart or a close came after it
        self.ended = threading.Event()    # set by the plugin thread once it ran


class WorkerPlugins:
    def __init__(self, worker, busy):
        """``busy(True)`` when jobs start to be pending, ``busy(False)`` when none is
        left (on the I/O thread)."""
        self.worker = worker
        self.busy = busy
        self.plugins = {}
        self.watching = {}
        self.arriving = {}
        self.pending = []
        self.after_jobs = []
        self.live = {}
        self.jobs = queue.SimpleQueue()
        self.thread = None
        self.closed = False

    # ---------------------------------------------------------------- I/O thread

    def add(self, name, blob, reply):
        """Set up the plugin pickled in ``blob`` under ``name``, replacing the one of
        that name; ``reply(outcome)`` once done: {"status": "OK"} or an error record,
        as "run-result" says it."""
        self._forget(name)                    # being torn down: told nothing more
        self.worker.state.observe_transitions()
        self.arriving[name] = job = Job("add", name, blob, reply)
        self._queue(job)

    def remove(self, name, reply):
        """Tear the plugin ``name`` down and forget it; ``reply(outcome)``."""
        self._forget(name)
        self.arriving.pop(name, None)
        self._observe()
        self._queue(Job("remove", name, reply=reply))

    def remove_all(self):
        """Tear every plugin down, the last set up first, once the job running now
        has ended, and wait for that (the worker restarts: its new self finds
        nothing of the old plugins); jobs not started yet are dropped, their outcome
        is nobody's (the scheduler sends the plugins again)."""
        self._cancel()
        if self.thread is not None:           # else none was ever set up
            job = Job("remove-all")
            self._queue(job)
            self._wait(job.ended)

    def after(self, fn):
        """Call ``fn()`` once every set-up and teardown sent before has ended: at
        once if none is pending (`Client.run` finds the plugins set up, as it did
        when they were set up on the I/O thread)."""
        if self.pending:
            self.after_jobs.append(fn)
        else:
            fn()

    def close(self):
        """As `remove_all`, then the thread ends; waits for it (the worker closes)."""
        self._cancel()
        self.closed = True
        thread, self.thread = self.thread, None
        if thread is None:
            return
        job = Job("close")
        self.jobs.put(job)
        self._wait(job.ended)

    def _wait(self, ended):
        """Wait until the plugin thread sets ``ended`` (a job's), saying so when the
        work under way takes long."""
        if not ended.wait(CLOSE_WARNING):
            logger.warning("worker %s: waiting for a plugin's set-up or teardown to "
                           "end", self.worker.address)
            ended.wait()

    def stop(self):
        """The thread ends after its jobs, tearing nothing down (the I/O thread is
        gone: nobody would hear the outcomes)."""
        thread, self.thread = self.thread, None
        if thread is not None:
            self.jobs.put(None)

    def transitions(self, log):
        for job in self.arriving.values():
            job.seen.extend(log)
        for plugin in list(self.watching.values()):
            self._tell(plugin, log)

    def _tell(self, plugin, log):
        for key, start, finish in log:
            try:
                plugin.transition(key, start, finish)
            except Exception:
                logger.exception("worker %s: plugin transition failed",
                                 self.worker.address)

    def _forget(self, name):
        self.plugins.pop(name, None)
        self.watching.pop(name, None)

    def _observe(self):
        """Transitions are recorded only while a plugin watches, or may."""
        if not self.watching and not self.arriving:
            self.worker.state.ignore_transitions()

    def _cancel(self):
        self.plugins.clear()
        self.watching.clear()
        self.arriving.clear()
        self._observe()
        for job in self.pending:
            job.cancelled = True
            job.reply = None

    def _queue(self, job):
        if self.closed:
            return
        if not self.pending:
            self.busy(True)
        self.pending.append(job)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True,
                                           name="dask-ipy-worker-plugins")
            self.thread.start()
        self.jobs.put(job)

    def _done(self, job, plugin, outcome):
        if self.closed:
            return
        self.pending.remove(job)
        if self.arriving.get(job.name) is job:
            del self.arriving[job.name]
            if plugin is not None:
                self.plugins[job.name] = plugin
                if overrides(plugin, "transition"):
                    self.watching[job.name] = plugin
                    self._tell(plugin, job.seen)
            self._observe()
        if job.reply is not None:
            job.reply(outcome)
        if not self.pending:
            self.busy(False)
            waiting, self.after_jobs = self.after_jobs, []
            for fn in waiting:
                fn()

    # ---------------------------------------------------------------- plugin thread

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            plugin, outcome = None, OK
            if job.kind == "add" and not job.cancelled:
                plugin, outcome = self._set_up(job.name, job.blob)
            elif job.kind == "remove" and not job.cancelled:
                outcome = self._tear_down(job.name)
            elif job.kind in ("remove-all", "close"):
                for name in reversed(list(self.live)):
                    self._tear_down(name)
            job.ended.set()
            if job.kind == "close":
                return
            self.worker.loop.call_soon(self._done, job, plugin, outcome)

    def _set_up(self, name, blob):
        """(the plugin or None, the outcome)"""
        plugin = None
        try:
            plugin = deserialize(blob)
            self._tear_down(name)
            self.live[name] = plugin
            call(plugin.setup, worker=self.worker)
        except BaseException as e:    # the client gets it; this thread goes on
            logger.exception("worker %s: plugin %r failed to set up",
                             self.worker.address, name)
            return plugin, {"status": "error", **raised(e)}
        return plugin, OK

    def _tear_down(self, name):
        plugin = self.live.pop(name, None)
        if plugin is None or not hasattr(plugin, "teardown"):
            return OK
        try:
            call(plugin.teardown, worker=self.worker)
        except BaseException as e:
            logger.exception("worker %s: plugin %r failed to tear down",
                             self.worker.address, name)
            return {"status": "error", **raised(e)}
        return OK
