"""The worker's task threads as a `concurrent.futures.Executor`: ``Worker.executor``
(and ``Worker.executors["default"]``), with dask.distributed's names.

    executor.submit(fn) ──Call──▶ worker.jobs ──▶ a pool thread, between two tasks:
                                                  runs fn, settles the cf.Future

A call shares the pool with the tasks: it runs on the threads that run tasks, in
turn with them, and neither the worker's state machine nor the scheduler counts it
(as in dask.distributed).  So a task that submits a call and waits for it on a
one-thread worker waits forever unless it secedes first.  The worker shuts the
executor down as it closes: calls not started yet are cancelled, none is left
waiting.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading


class Call:
    """One submitted call, queued among the worker's jobs."""

    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future, fn, args, kwargs):
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self):
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as e:
            self.future.set_exception(e)
        else:
            self.future.set_result(result)


class TaskThreads(cf.Executor):
    """An Executor whose calls run on a worker's task threads; ``put`` queues a
    `Call` where those threads take their jobs."""

    def __init__(self, put):
        self._put = put
        self._lock = threading.Lock()
        self._shut = False
        self._pending = set()          # {cf.Future} submitted and not done yet

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown "
                                   "(the worker is closed)")
            future = cf.Future()
            self._pending.add(future)
        future.add_done_callback(self._done)
        self._put(Call(future, fn, args, kwargs))
        return future

    def _done(self, future):
        with self._lock:
            self._pending.discard(future)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No more calls; ``cancel_futures``: those not started are cancelled;
        ``wait``: until the others have ended."""
        with self._lock:
            self._shut = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            cf.wait(pending)
