"""Actors: a stateful object kept on one worker, called from clients and tasks.

``client.submit(Cls, *args, actor=True)`` runs `create_actor` as a task on a worker:
it builds the object, leaves it with that worker (`Worker.actors`, under the task's
key) and returns an `Actor`, a small handle (class, worker address, key, and the
address of the worker's actor socket) that pickles and travels like any value.
Calls through the handle do not go through the scheduler or the task graph: the
caller's client sends "actor-call" straight to the worker's actor socket, guarded
and signed with the cluster's key like every socket and message, and the worker's
actor socket queues it on that actor's lane and answers "actor-result" (calls to one
actor run one at a time, in the order they came; different actors' independently: see
worker/actors.py).  One round trip per call; the result comes back as an
`ActorFuture`.  A call a method makes to its own actor runs at once, in place
(`hooks.actor_call_here`).

The object lives only in its worker's memory: when that worker dies the state is
lost, and calls in flight or made afterwards raise `ActorLost`.  When the actor's
key is released (its Future dropped), the worker drops the object.

The worker running the current task and the client a handle uses (a task's own,
else the default client) come from `hooks`, which the package fills."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import uuid

from .. import hooks
from ..errors import ActorLost, rebuild_error
from ..protocol import deserialize, serialize
from .default import default_client
from .futures import Future, unpickling_client


def create_actor(cls, args, kwargs):
    """The task behind ``submit(cls, ..., actor=True)``: on the worker."""
    worker, key = hooks.task_host()
    obj = cls(*args, **kwargs)
    return Actor(cls, worker.address, key, worker.add_actor(key, obj))


def actor_key(cls):
    return f"{getattr(cls, '__name__', 'actor')}-{uuid.uuid4().hex}"


class ActorFuture:
    """The result of one actor call, to come: ``result(timeout)``, ``done()``,
    ``exception()``, or ``await`` it."""

    __slots__ = ("_future",)

    def __init__(self, future):
        self._future = future

    def result(self, timeout=None):
        return _unpack(self._future.result(timeout))

    def exception(self, timeout=None):
        try:
            self.result(timeout)
        except (cf.TimeoutError, cf.CancelledError):
            raise
        except BaseException as e:
            return e
        return None

    def done(self):
        return self._future.done()

    def __await__(self):
        reply = yield from asyncio.wrap_future(self._future).__await__()
        return _unpack(reply)

    def __repr__(self):
        return f"<ActorFuture {'done' if self.done() else 'pending'}>"


def _unpack(reply):
    if reply.get("status") == "here":       # a call an actor made to itself
        return reply["value"]
    if reply.get("status") == "OK":
        return deserialize(reply["result"])
    if reply.get("status") == "lost":
        raise ActorLost(reply["text"])
    exc, tb = rebuild_error(reply)
    raise exc.with_traceback(tb)


def _rebuild_actor(cls, address, key, calls_to):
    client = unpickling_client()
    if client is None:
        try:
            client = default_client()
        except ValueError:
            client = None        # a worker with no client: the caller holds the key
    future = Future(key, client, inform=True) if client is not None else None
    return Actor(cls, address, key, calls_to, future)


class Actor:
    """A handle of an actor: its methods return `ActorFuture`s; reading any other
    attribute returns its value (one round trip, waited for)."""

    def __init__(self, cls, address, key, calls_to, future=None):
        self._cls = cls
        self._address = address
        self._calls_to = calls_to      # the worker's socket for actor calls
        self._key = key
        # In a client, the handle holds the key, as a Future would: the object lives
        # while a handle of it does.
        self._future = future
        self._client = future.client if future is not None else None

    def __reduce__(self):
        return (_rebuild_actor, (self._cls, self._address, self._key, self._calls_to))

    def __repr__(self):
        return f"<Actor {self._cls.__name__} {self._key!r} on {self._address}>"

    def __dir__(self):
        return sorted(set(dir(self._cls)) | set(object.__dir__(self)))

    @property
    def key(self):
        return self._key

    @property
    def worker(self):
        """The address of the worker holding the object."""
        return self._address

    @property
    def calls_to(self):
        """The address of that worker's socket for actor calls."""
        return self._calls_to

    def _send(self, kind, name, args=(), kwargs=None):
        here = hooks.actor_call_here(self._key, kind, name, args, kwargs or {})
        if here is not None:          # from a method of this very actor, on its lane
            return ActorFuture(here)
        client = self._client
        if client is None or client.status == "closed":
            client = self._client = hooks.current_client()
        msg = {"op": "actor-call", "key": self._key, "name": name, "kind": kind}
        if args or kwargs:
            msg["args"] = serialize((args, kwargs or {}))
        return ActorFuture(client.shell.actor_call(self._calls_to, msg))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._cls, name, None)
        if callable(attr):
            def call(*args, separate_thread=True, **kwargs):
                # ``separate_thread``: every call runs off the worker's I/O thread
                return self._send("call", name, args, kwargs)
            call.__name__ = name
            call.__doc__ = getattr(attr, "__doc__", None)
            return call
        return self._send("get", name).result()
