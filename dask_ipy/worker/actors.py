"""Where a worker runs its actors' calls: one lane per actor.

    actor socket thread ──submit(key, call)──▶ lane of that actor: a thread runs its
            ▲                                  calls one at a time, in order
            │ replies (woken by a pipe)                 │ an ``async def`` method:
            └───────────────────────────────────────────┤ its coroutine goes to
                                                        ▼
                                              the actors' event loop thread

Calls to one actor run one at a time, in the order they came, so an actor's state
needs no lock.  Calls to different actors are independent: an actor with calls
waiting has a thread of its own (an idle one, else a new one; a thread idle for
IDLE_SECONDS ends), so a method may wait on another actor, on this worker or
another, and nothing else waits for it.

A method that calls its own actor through a handle would wait for itself on its
lane: that call runs at once instead, on the same thread, as ``self.method()`` would
(`call_here`).  From an ``async def`` method such a call goes through the lane as
any other.

An ``async def`` method's coroutine runs on an event loop the worker keeps for its
actors (`CoroutineLoop`): the lane starts it and goes on to the next call, so the
coroutines of one actor interleave at their awaits, with one another and with its
plain methods.  A coroutine that blocks (a ``.result()`` inside it) holds up the
other coroutines, as on any event loop: ``await`` instead."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import inspect
import threading

from ..log import logger

IDLE_SECONDS = 10.0

running = threading.local()    # .worker, .key: the actor call running on this thread


class _Idle:
    """A lane thread waiting for an actor to serve: `ActorLanes.submit` sets ``key``
    (None: the lanes closed) and the event."""

    __slots__ = ("event", "key")

    def __init__(self):
        self.event = threading.Event()
        self.key = None


class ActorLanes:
    """Calls queued by actor, each actor's run by one thread at a time.

    ``run(key, call)`` runs one call (on a lane thread; it must not raise)."""

    def __init__(self, run, name="dask-ipy-actor-lane"):
        self._run = run
        self._name = name
        self._lock = threading.Lock()
        self._lanes = {}         # {key: deque of calls}: actors with a call queued or running
        self._idle = []          # [_Idle]: threads waiting for an actor to serve
        self._closed = False

    def submit(self, key, call):
        """Queue ``call`` behind the calls to actor ``key`` (any thread); False once
        closed."""
        with self._lock:
            if self._closed:
                return False
            lane = self._lanes.get(key)
            if lane is not None:           # a thread serves it: it takes this one too
                lane.append(call)
                return True
            self._lanes[key] = collections.deque([call])
            if self._idle:
                idle = self._idle.pop()
                idle.key = key
                idle.event.set()
                return True
        threading.Thread(target=self._serve, args=(key,), daemon=True,
                         name=self._name).start()
        return True

    def busy(self):
        """The actors with calls queued or running."""
        with self._lock:
            return set(self._lanes)

    def _serve(self, key):
        while key is not None:
            self._drain(key)
            idle = _Idle()
            with self._lock:
                if self._closed:
                    return
                self._idle.append(idle)
            if not idle.event.wait(IDLE_SECONDS):
                with self._lock:
                    if idle.key is None:           # nobody chose it meanwhile: it ends
                        if idle in self._idle:
                            self._idle.remove(idle)
                        return
            key = idle.key

    def _drain(self, key):
        while True:
            with self._lock:
                lane = self._lanes[key]
                if not lane or self._closed:
                    del self._lanes[key]
                    return
                call = lane.popleft()
            try:
                self._run(key, call)
            except BaseException:              # never leave the lane without a thread
                logger.exception("actor call on %r failed", key)

    def close(self):
        """Calls queued are dropped; idle threads end, busy ones after their call."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for waiting in idle:
            waiting.event.set()


class CoroutineLoop:
    """An asyncio event loop on a thread of its own, started by the first coroutine."""

    def __init__(self, name="dask-ipy-actor-loop"):
        self._name = name
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._closed = False

    def submit(self, coro):
        """Run ``coro`` there (any thread): a `concurrent.futures.Future` of its value."""
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("the worker is closing")
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever,
                                                daemon=True, name=self._name)
                self._thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self, timeout=2):
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:                # never started, or closed already
            return

        def stop():
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(stop)
        if thread is not threading.current_thread():
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()


def call_here(key, kind, name, args, kwargs):
    """A call through a handle of actor ``key`` made by a plain method of that same
    actor, on its lane: run at once on this thread, as ``self.<name>(...)`` would, for
    the lane waits for this method.  A `concurrent.futures.Future` of the reply; None
    anywhere else (the call goes to the lane)."""
    worker = getattr(running, "worker", None)
    if worker is None or getattr(running, "key", None) != key:
        return None
    obj = worker.actors.get(key)
    if obj is None:
        return None
    future = cf.Future()
    try:
        value = getattr(obj, name)
        if kind == "call":
            value = value(*args, **kwargs)
        if inspect.iscoroutine(value):
            inner = worker.actor_loop.submit(value)
            inner.add_done_callback(lambda f: _settle(future, f))
            return future
    except BaseException as e:
        future.set_exception(e)
    else:
        future.set_result({"status": "here", "value": value})
    return future


def _settle(future, done):
    if done.cancelled():
        future.set_exception(cf.CancelledError())
    elif done.exception() is not None:
        future.set_exception(done.exception())
    else:
        future.set_result({"status": "here", "value": done.result()})
