"""One implementation, two faces: the client's operations are generators that yield
what they wait for, and two drivers run them, one blocking, one asyncio.

    op = client._gather_op(futures)       builds and sends requests; yields each wait
          │                               (an answer, a key done, a signal, a join)
          ├── run_blocking(op)            blocks the calling thread on each wait
          └── run_async(op)               awaits each wait in the running event loop

An operation holds all the logic (which requests, what to do with their answers,
retries, errors); a driver only waits, so the blocking client and the asynchronous one
cannot drift apart.  Every wait has both forms: ``block()`` and ``await wait()``.

The answers come from the client's own I/O thread, never from the event loop: an
asynchronous wait registers a callback that the I/O thread runs, which hands the
result to the loop with ``loop.call_soon_threadsafe``.  So a coroutine awaiting the
client never blocks the loop, the I/O thread never waits for the loop, and no loop is
ever nested in another (a notebook's running loop included).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading


_OVER = object()


def _step(op, value, error):
    """Hand ``op`` the outcome of its last wait: (its next wait, None), or (_OVER, its
    return value)."""
    try:
        return (op.send(value) if error is None else op.throw(error)), None
    except StopIteration as stop:
        return _OVER, stop.value


def run_blocking(op):
    """Run operation ``op`` to its end in this thread; its return value."""
    value = error = None
    while True:
        wait, result = _step(op, value, error)
        if wait is _OVER:
            return result
        value = error = None
        try:
            value = wait.block()
        except BaseException as e:        # handed to the operation, which may handle it
            error = e


async def run_async(op):
    """Run operation ``op`` in the running event loop; its return value."""
    value = error = None
    while True:
        wait, result = _step(op, value, error)
        if wait is _OVER:
            return result
        value = error = None
        try:
            value = await wait.wait()
        except BaseException as e:
            error = e


def done(value=None):
    """An operation that waits for nothing and returns ``value``."""
    return value
    yield  # a generator, like every other operation


def then(op, fn):
    """The operation ``op``, its value passed through ``fn``."""
    return fn((yield from op))


def in_loop(loop, fn, *args):
    """Call ``fn(*args)`` in ``loop`` from any thread; nothing if the loop is closed
    (its coroutines are gone, so nobody waits any more)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def resolve(fut, value):
    """Settle an asyncio future unless it is done already (cancelled by a timeout)."""
    if not fut.done():
        fut.set_result(value)


async def within(fut, timeout):
    """``await fut``, for at most ``timeout`` seconds (None: no limit)."""
    if timeout is None:
        return await fut
    return await asyncio.wait_for(fut, timeout)


class Answer:
    """The answer to a request: a `concurrent.futures.Future` that the I/O thread
    settles.  ``what`` is the text of the TimeoutError after ``timeout`` seconds."""

    __slots__ = ("future", "timeout", "what")

    def __init__(self, future, timeout=None, what="an answer"):
        self.future = future
        self.timeout = timeout
        self.what = what

    def _late(self):
        return TimeoutError(f"no answer within {self.timeout} s to {self.what}")

    def block(self):
        try:
            return self.future.result(self.timeout)
        except cf.TimeoutError:
            raise self._late() from None

    async def wait(self):
        # wrap_future hands the result over with call_soon_threadsafe
        try:
            return await within(asyncio.wrap_future(self.future), self.timeout)
        except TimeoutError:
            raise self._late() from None


class KeptAnswer(Answer):
    """An `Answer` whose future outlives its timeout: asyncio cancels what a timed-out
    wait awaited, so this one awaits it shielded, and an answer that comes late can
    still be read from the future (a request withdrawn on timeout gets one)."""

    __slots__ = ()

    async def wait(self):
        try:
            return await within(asyncio.shield(asyncio.wrap_future(self.future)),
                                self.timeout)
        except TimeoutError:
            raise self._late() from None


class Signal:
    """A flag set once, from any thread, that threads and coroutines wait for."""

    def __init__(self):
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.callbacks = []

    def is_set(self):
        return self.event.is_set()

    def set(self):
        with self.lock:
            if self.event.is_set():
                return
            self.event.set()
            callbacks, self.callbacks = self.callbacks, []
        for cb in callbacks:
            cb()

    def subscribe(self, cb):
        """Call ``cb()`` once the flag is set (at once if it is)."""
        with self.lock:
            if not self.event.is_set():
                self.callbacks.append(cb)
                return
        cb()


class Flag:
    """Wait until ``signal`` is set: True, or False after ``timeout`` seconds."""

    __slots__ = ("signal", "timeout")

    def __init__(self, signal, timeout=None):
        self.signal = signal
        self.timeout = timeout

    def block(self):
        return self.signal.event.wait(self.timeout)

    async def wait(self):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.signal.subscribe(lambda: in_loop(loop, resolve, fut, True))
        try:
            return await within(fut, self.timeout)
        except TimeoutError:
            return False


class Call:
    """A call that blocks for a while (joining a thread): made in the calling thread,
    or, from a coroutine, in the loop's executor so that the loop runs on."""

    __slots__ = ("fn", "args")

    def __init__(self, fn, *args):
        self.fn = fn
        self.args = args

    def block(self):
        return self.fn(*self.args)

    async def wait(self):
        return await asyncio.get_running_loop().run_in_executor(None, self.fn, *self.args)
