"""Variable, Queue, Lock, Semaphore, Event and MultiLock: dask.distributed's
coordination primitives, named objects on the scheduler that every client and every task shares.

    Lock("x").acquire() ── "coordinate" {what: "acquire", lease} ──▶ scheduler
            ◀── "reply" True ──────────────────────────────────────  (now, or once
                                                                       released)
    ... timeout passed ── "withdraw" {request} ──▶ answered "withdrawn", unless the
                                                     grant was already on its way

The state lives on the scheduler (scheduler/coordination.py); here each call is one
request, written once as an operation (see `waits`), so that with an asynchronous
client every method returns a coroutine, as dask.distributed's do.  A call that may
wait (acquire, get, put on a full queue, wait) is parked on the scheduler; its
timeout is counted here.  On timeout the client withdraws the request, then reads the
one answer it gets: "withdrawn", or the grant that crossed the withdraw.  A late lease
is released at once (acquire returns False), a late value is returned (an item never
vanishes).  An interrupted wait (KeyboardInterrupt, a cancelled coroutine) withdraws
too, releases a lease it may have been given, and gives queue items taken for it
back to the front of their queue.  A client that closes withdraws its waiting
requests first and reads their answers (`ClientState.begin_close`): a get then has
the item that was on its way, if any.

Without ``client=`` an object uses `get_client`'s client when first used: the default
client, or inside a task the worker's client, which is also what an object passed to
a task (pickled by name) uses there.  Values are anything picklable; Futures in them
keep their keys alive on the scheduler while stored, and come back as Futures of the
client that gets them, finished or erred at once if their keys had ended when the
scheduler answered (it says how, with the value).
"""

from __future__ import annotations

import uuid
from collections import deque

from .. import hooks
from ..messages import WITHDRAWN
from ..protocol import serialize
from .futures import Acknowledgement, futures_in, load, seconds
from .waits import Answer, KeptAnswer, then


def _within(timeout):
    """The end of a timeout's message: ``timeout`` (seconds, a string such as
    "300ms", or a timedelta) in seconds."""
    return f"within {seconds(timeout):g} s"


def _sync_options(method, kwargs):
    """The keyword arguments a call passes on besides its own: only those of a
    client's blocking-or-awaitable machinery (``asynchronous``,
    ``callback_timeout``), which change nothing here.  Any other (``block=False``
    of `queue.Queue`) is a TypeError rather than silently ignored, which could wait
    for ever."""
    extra = set(kwargs) - {"asynchronous", "callback_timeout"}
    if extra:
        raise TypeError(f"{method}() got an unexpected keyword argument "
                        f"{sorted(extra)[0]!r}")


def _checked(answer):
    if isinstance(answer, dict) and "error" in answer:
        raise (ValueError if answer.get("type") == "ValueError" else
               RuntimeError)(answer["error"])
    return answer


def _granted(answer):
    return answer != WITHDRAWN and not (isinstance(answer, dict) and "error" in answer)


def _abandoned(token, undo):
    """The answer to a request its caller gave up on (interrupted): a grant is
    undone."""
    if token.exception() is None and _granted(token.result()):
        undo(token.result())


def _packed(value):
    return {"data": serialize(value), "keys": [f.key for f in futures_in(value)]}


def _loaded(answer, client):
    """The value(s) of a get's answer, as ``client``'s.  Their Futures start with
    what the scheduler said, in the answer, of how their keys had ended."""
    if "items" in answer:
        values = [load(blob, client) for blob in answer["items"]]
    else:
        values = load(answer["data"], client)
    client.shell.learn(answer.get("reports"))
    return values


class _Named:
    """A named object on the scheduler, reached through a client."""

    prefix = "named"

    def __init__(self, name=None, client=None):
        self.name = name or f"{self.prefix}-{uuid.uuid4().hex}"
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = hooks.current_client()
        return self._client

    def _message(self, what, **fields):
        return {"op": "coordinate", "what": what, "name": self.name, **fields}

    def _request_op(self, what, timeout=None, **fields):
        """Ask, and return the answer (it never waits on the scheduler)."""
        answer = yield from self.client.shell.request_op(self._message(what, **fields),
                                                         timeout=seconds(timeout))
        return _checked(answer)

    def _run(self, op):
        return self.client.run_op(op)

    def _waiting_op(self, what, timeout, undo=None, abandon=None, **fields):
        """Ask, the request parked on the scheduler until it can be answered:
        (True, the answer), or (False, None) once ``timeout`` seconds passed and it
        was withdrawn.  ``undo(answer)``: what to do with a grant that comes after
        its caller gave up (timed out, or was interrupted); without it, a grant that
        crossed the withdraw of a timeout is the answer.  ``abandon(answer)``: what
        to do with one that comes after its caller was interrupted, if not undo."""
        shell = self.client.shell
        shell.check_open()
        timeout = seconds(timeout)
        msg = self._message(what, **fields)
        if timeout is not None and timeout <= 0:
            msg["wait"] = False                # answered at once, parked or not
            timeout = None
        token = shell.request_future(msg)      # gives msg its request id
        withdraw = {"op": "withdraw", "request": msg["request_id"]}
        text = f"{what!r} of {self.name!r}"
        try:
            answer = yield KeptAnswer(token, timeout, text)
        except TimeoutError:
            shell.send(withdraw)
            # The one answer the request gets: "withdrawn", or a grant on its way.
            answer = yield Answer(token, None, text)
            if undo is not None and _granted(answer):
                undo(answer)
                return False, None
        except BaseException:
            shell.send(withdraw)
            abandon = abandon or undo
            if abandon is not None:
                token.add_done_callback(lambda t: _abandoned(t, abandon))
            raise
        if answer == WITHDRAWN:
            shell.check_open()                 # withdrawn as the client closed
            return False, None
        return True, _checked(answer)

    def __await__(self):
        """``q = await Queue("x")``: the object itself, as dask.distributed's
        Queue, Semaphore, Lock and Event give once registered (nothing is
        registered here: a name's state is made on the scheduler when used)."""
        return _itself(self).__await__()

    def __repr__(self):
        return f"<{type(self).__name__}: {self.name}>"

    def __reduce__(self):
        return (type(self), (self.name,))


async def _itself(obj):
    return obj


class _Held:
    """``with`` and ``async with``: acquired on the way in, released on the way out."""

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    async def __aenter__(self):
        await self.acquire()
        return self

    async def __aexit__(self, *exc):
        await self.release()


class Variable(_Named):
    """A named value every client and task shares (dask.distributed's Variable).

    >>> v = Variable("x"); v.set(1); v.get()
    1

    A Future stored here stays in memory until the variable is set again or
    deleted, even once no client holds it."""

    prefix = "variable"

    def set(self, value, timeout=None, **kwargs):
        _sync_options("Variable.set", kwargs)
        op = self._request_op("variable-set", timeout, **_packed(value))
        return self._run(then(op, lambda _: None))

    def get(self, timeout=None, **kwargs):
        """The value, waiting until one is set; TimeoutError after ``timeout``."""
        _sync_options("Variable.get", kwargs)
        return self._run(self._get_op(timeout))

    def _get_op(self, timeout):
        got, answer = yield from self._waiting_op("variable-get", timeout)
        if not got:
            raise TimeoutError(f"variable {self.name!r} not set {_within(timeout)}")
        return _loaded(answer, self.client)

    def delete(self):
        """Forget the value (for every client); gets wait for the next set.  An
        asynchronous client sends it at once, as dask.distributed's does: awaiting
        what it returns waits for the scheduler, and leaving it alone is fine."""
        if self.client.asynchronous:
            return Acknowledgement(
                self.client.shell.request_future(self._message("variable-delete")),
                "variable-delete")
        op = self._request_op("variable-delete")
        return self._run(then(op, lambda _: None))


class Queue(_Named):
    """A named first-in first-out queue every client and task shares
    (dask.distributed's Queue).  ``maxsize`` > 0: a put waits for room."""

    prefix = "queue"

    def __init__(self, name=None, client=None, maxsize=0):
        super().__init__(name, client)
        self.maxsize = maxsize

    def put(self, value, timeout=None, **kwargs):
        """Put ``value`` at the end; TimeoutError if there was no room in time."""
        _sync_options("Queue.put", kwargs)
        return self._run(self._put_op(value, timeout))

    def _put_op(self, value, timeout):
        put, _ = yield from self._waiting_op("queue-put", timeout, maxsize=self.maxsize,
                                             **_packed(value))
        if not put:
            raise TimeoutError(f"no room in queue {self.name!r} {_within(timeout)}")

    def get(self, timeout=None, batch=False, **kwargs):
        """The first item, waiting for one; TimeoutError after ``timeout``.
        ``batch=True``: a list of every item there now (maybe none), at once;
        ``batch=n``: a list of the first n, waiting until there are n."""
        _sync_options("Queue.get", kwargs)
        return self._run(self._get_op(timeout, batch))

    def _get_op(self, timeout, batch):
        got, answer = yield from self._waiting_op("queue-get", timeout,
                                                  abandon=self._give_back,
                                                  maxsize=self.maxsize, batch=batch)
        if not got:
            raise TimeoutError(f"queue {self.name!r} had no item {_within(timeout)}")
        return _loaded(answer, self.client)

    def _give_back(self, answer):
        """Items taken for a get whose caller was interrupted go back to the front of
        the queue; the keys of their Futures held here until the queue holds them
        again (then let go, unless a Future here holds them)."""
        if "items" in answer:
            items = [{"data": data, "keys": keys}
                     for data, keys in zip(answer["items"], answer["keys"])]
        else:
            items = [{"data": answer["data"], "keys": answer["keys"]}]
        keys = [key for item in items for key in item["keys"]]
        shell = self.client.shell
        shell.hold_many(keys)
        shell.request_future(self._message("queue-unget", maxsize=self.maxsize,
                                           items=items))
        shell.drop(keys)

    def qsize(self, **kwargs):
        _sync_options("Queue.qsize", kwargs)
        return self._run(self._request_op("queue-size"))

    def close(self):
        """Drop the items in the queue now, for every client: the Futures in them
        are no longer kept.  Returns at once (sent in order with this client's
        later calls); the queue stays usable, and gets waiting go on waiting."""
        self.client.shell.request_future(self._message("queue-close"))

    def __reduce__(self):
        return (type(self), (self.name, None, self.maxsize))


class Semaphore(_Held, _Named):
    """At most ``max_leases`` holders at once, across clients and tasks
    (dask.distributed's Semaphore).  Leases of a client that disconnects are
    released; there are no lease timeouts."""

    prefix = "semaphore"
    kind = "semaphore"

    def __init__(self, max_leases=1, name=None, *, client=None):
        super().__init__(name, client)
        self.max_leases = max_leases
        self.id = uuid.uuid4().hex             # this object's (a copy gets its own)
        self._leases = deque()                 # this object's leases, oldest first

    def acquire(self, timeout=None):
        """True once a lease is held; False if none came within ``timeout``."""
        return self._run(self._acquire_op(timeout))

    def _acquire_op(self, timeout):
        lease = uuid.uuid4().hex
        got, _ = yield from self._waiting_op(
            "acquire", timeout, undo=lambda _: self._release_lease(lease),
            kind=self.kind, max_leases=self.max_leases, lease=lease)
        if got:
            self._leases.append(lease)
        return got

    def _release_lease(self, lease):
        self.client.shell.request_future(self._message("release", kind=self.kind,
                                                       lease=lease))

    def release(self):
        """Give back this object's oldest lease; RuntimeError if it holds none."""
        if not self._leases:
            raise RuntimeError(self._unheld())
        op = self._request_op("release", kind=self.kind, lease=self._leases.popleft())
        return self._run(op)

    def _unheld(self):
        return (f"Released too often: semaphore {self.name!r} has no lease of this "
                "object's left to release")

    def get_value(self):
        """How many leases are held now (by anyone)."""
        return self._run(self._request_op("semaphore-value", kind=self.kind))

    def __reduce__(self):
        return (type(self), (self.max_leases, self.name))


class Lock(Semaphore):
    """A named lock across clients and tasks (dask.distributed's Lock): one holder
    at a time, not reentrant (a second acquire of the same Lock waits, as with
    threading.Lock).  Released if its client disconnects."""

    prefix = "lock"
    kind = "lock"

    def __init__(self, name=None, client=None):
        super().__init__(1, name, client=client)

    def acquire(self, blocking=True, timeout=None):
        """True once held; False if not within ``timeout`` (at once if not
        ``blocking``)."""
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        return super().acquire(timeout)

    def _unheld(self):
        return f"Released too often: lock {self.name!r} is not acquired by this object"

    def locked(self):
        """Whether anyone holds the lock."""
        op = self._request_op("semaphore-value", kind=self.kind)
        return self._run(then(op, lambda n: n > 0))

    def __reduce__(self):
        return (type(self), (self.name,))


class Event(_Named):
    """A named flag that tasks and clients wait for (dask.distributed's Event)."""

    prefix = "event"

    def set(self):
        """Set the flag: every waiter wakes, later waits return at once."""
        return self._run(then(self._request_op("event-set"), lambda _: None))

    def clear(self):
        return self._run(then(self._request_op("event-clear"), lambda _: None))

    def is_set(self):
        return self._run(self._request_op("event-is-set"))

    def wait(self, timeout=None):
        """True once the flag is set; False if not within ``timeout``."""
        return self._run(then(self._waiting_op("event-wait", timeout), lambda r: r[0]))


class MultiLock(_Held, _Named):
    """Several named locks taken together (dask.distributed's MultiLock): `acquire`
    returns once this holds ``num_locks`` of ``names`` (default: all), never fewer.
    Requests line up per name in the order they came, so two MultiLocks never wait
    for each other.  Their names are apart from `Lock`'s.  Released if its client
    disconnects."""

    prefix = "multilock"

    def __init__(self, names=None, client=None):
        super().__init__(None, client)
        self.names = list(names or [])
        self.id = uuid.uuid4().hex             # this object's (a copy gets its own)
        self._lease = None

    def acquire(self, blocking=True, timeout=None, num_locks=None):
        """True once held; False if not within ``timeout`` (at once if not
        ``blocking``)."""
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        return self._run(self._acquire_op(timeout, num_locks))

    def _acquire_op(self, timeout, num_locks):
        lease = uuid.uuid4().hex
        got, _ = yield from self._waiting_op(
            "multi-acquire", timeout, undo=lambda _: self._release_lease(lease),
            names=self.names, num_locks=num_locks or len(self.names), lease=lease)
        if got:
            self._lease = lease
        return got

    def _release_lease(self, lease):
        self.client.shell.request_future(self._message("multi-release", lease=lease))

    def release(self):
        """Give the names back; ValueError if they are not held."""
        if self._lease is None:
            raise ValueError("Lock is not yet acquired")
        lease, self._lease = self._lease, None
        return self._run(then(self._request_op("multi-release", lease=lease),
                              lambda _: None))

    def locked(self):
        """Whether this MultiLock holds its names."""
        return self._lease is not None

    def __reduce__(self):
        return (type(self), (self.names,))
