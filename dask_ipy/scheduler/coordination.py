"""Named Variables, Queues, Locks, Semaphores, Events and MultiLocks, kept by the
scheduler for every client (the state behind client/coordination.py).  Pure: no sockets, threads
or clocks; a request goes in, effects come out, which `SchedulerState` carries out.

    client ── "coordinate" {what, name, ...} ──▶ Coordination.handle ──▶ [Reply,
           ── "withdraw" {request} ──────────▶ Coordination.withdraw      Want, Unwant]

A request that cannot be answered yet (a lock held, an empty queue, a full queue, a
variable never set, an event not set) is parked under its client's request id and
answered when it can be.  Timeouts are the client's business: when it gives up it
sends "withdraw", and the parked request is answered ``WITHDRAWN`` instead.  Messages
of one client arrive in order, so a withdraw either finds the request parked or comes
after it was granted; the client then waits for the one answer its request will get,
and knows which happened.  So a grant that crosses a withdraw is never lost: the
client releases a lease granted too late, keeps a value taken too late, and gives
back ("queue-unget") queue items taken for a caller that was interrupted.

Values are opaque blobs (the scheduler never unpickles them) with the keys of the
Futures inside.  A stored value keeps those keys alive with a holder of its own
(``("variable", name, n)``, ``("queue", name, n)``), as a published dataset does, until
it is replaced, deleted or taken.  A client given a value is made a wanter of its keys
(`Want`) before the value's holder lets go (`Unwant`), so nothing is forgotten between
the reply and the Futures it holds.

A client that leaves: its parked requests are dropped and its leases released, each
granted to the next in line (there are no lease timeouts).

State, each record dropped once it is back to its default (nothing leaks per name):

    variables:   {name: Value}
    var_waiters: {name: deque[Parked]}           gets before any set
    queues:      {name: QueueState}              items, maxsize, getters, putters
    semaphores:  {(kind, name): SemaphoreState}  kind "lock" or "semaphore"
    events:      {name: EventState}              set, or waited on
    multi_locks: {name: deque[Parked]}           MultiLock requests in line for a
                                                 name; the first holds it
    multi_leases: {lease: (Parked, [name])}      granted MultiLocks, the names held
    parked:      {(client, request id): Parked}  every parked request, once

A MultiLock request joins the line of each of its names at once (so every line has
the requests in the order they came, and no two wait for each other); it is granted
when it is first in as many lines as it needs, keeps that many names and leaves the
other lines.  Its names are its own namespace, apart from those of Lock.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import NamedTuple

from ..messages import WITHDRAWN


class Reply(NamedTuple):
    """Answer request ``request_id`` of client ``cid`` with ``result``."""
    cid: object
    request_id: int
    result: object


class Want(NamedTuple):
    """``who`` (a client or a holder) wants ``keys``: they stay in memory."""
    who: object
    keys: list


class Unwant(NamedTuple):
    """``who`` no longer wants ``keys``."""
    who: object
    keys: list


class Value:
    """A stored value: its blob, the keys of its Futures, and their holder."""
    __slots__ = ("data", "keys", "holder")

    def __init__(self, data, keys, holder):
        self.data, self.keys, self.holder = data, keys, holder


class Parked:
    """A request waiting on the scheduler.  ``need``/``taken``: items a queue get
    waits for and those it has so far; ``value``: what a put waits to store;
    ``lease``: the lease an acquire asks for."""
    __slots__ = ("cid", "rid", "kind", "name", "need", "batch", "taken", "value", "lease")

    def __init__(self, cid, rid, kind, name, *, need=1, batch=False, value=None,
                 lease=None):
        self.cid, self.rid, self.kind, self.name = cid, rid, kind, name
        self.need, self.batch, self.taken = need, batch, []
        self.value, self.lease = value, lease

    @property
    def id(self):
        return (self.cid, self.rid)


class QueueState:
    __slots__ = ("items", "maxsize", "getters", "putters")

    def __init__(self, maxsize):
        self.items = deque()       # [Value], oldest first
        self.maxsize = maxsize     # 0: no limit
        self.getters = deque()     # [Parked], oldest first; only the first holds items
        self.putters = deque()     # [Parked] with their values, waiting for room


class SemaphoreState:
    __slots__ = ("max_leases", "leases", "waiters")

    def __init__(self, max_leases):
        self.max_leases = max_leases
        self.leases = {}           # {lease id: client}
        self.waiters = deque()     # [Parked]


class EventState:
    __slots__ = ("is_set", "waiters")

    def __init__(self):
        self.is_set = False
        self.waiters = []          # [Parked]


def _taken(values, batch):
    """The answer to a queue get: the items, and the keys of the Futures in each
    (for a client that gives them back)."""
    if batch:
        return {"items": [v.data for v in values], "keys": [v.keys for v in values]}
    return {"data": values[0].data, "keys": values[0].keys}


class Coordination:
    def __init__(self):
        self.variables = {}
        self.var_waiters = {}
        self.queues = {}
        self.semaphores = {}
        self.events = {}
        self.multi_locks = {}
        self.multi_leases = {}
        self.parked = {}
        self._seq = itertools.count(1)
        self._out = []

    # ---------------------------------------------------------------- entry points

    def handle(self, cid, msg):
        """A "coordinate" request of client ``cid``; its effects."""
        handler = self.HANDLERS.get(msg.get("what"))
        if handler is None:
            self._reply(cid, msg, {"error": f"unknown request {msg.get('what')!r}"})
            return self._effects()
        handler(self, cid, msg)
        if msg.get("wait", True) is False:
            # Not to wait (a timeout of 0): parked is as good as withdrawn.
            self._withdraw(cid, msg["request_id"])
        return self._effects()

    def withdraw(self, cid, msg):
        """Client ``cid`` gives up its request ``msg["request"]``: answered WITHDRAWN
        if it is parked; nothing if it was answered already (the client has that
        answer, or will have it before any other)."""
        self._withdraw(cid, msg["request"])
        return self._effects()

    def _withdraw(self, cid, rid):
        p = self.parked.get((cid, rid))
        if p is not None:
            self._unpark(p)
            self._out.append(Reply(cid, rid, WITHDRAWN))

    def remove_client(self, cid):
        """Client ``cid`` is gone: its parked requests dropped, its leases released."""
        for p in [p for p in self.parked.values() if p.cid == cid]:
            if self.parked.get(p.id) is p:     # not granted as another left a line
                self._unpark(p)
        for sid, s in list(self.semaphores.items()):
            gone = [lease for lease, holder in s.leases.items() if holder == cid]
            for lease in gone:
                del s.leases[lease]
            if gone:
                self._serve_semaphore(sid)
        for p, held in [(p, held) for p, held in self.multi_leases.values()
                        if p.cid == cid]:
            del self.multi_leases[p.lease]
            self._leave_multi_locks(p, held)
        return self._effects()

    def _effects(self):
        out, self._out = self._out, []
        return out

    def _reply(self, cid, msg, result):
        self._out.append(Reply(cid, msg["request_id"], result))

    def _park(self, p, line):
        self.parked[p.id] = p
        line.append(p)

    def _stored(self, kind, name, msg):
        """A new Value of a "data"/"keys" message; its keys are held at once."""
        value = Value(msg["data"], list(msg.get("keys", ())), (kind, name, next(self._seq)))
        if value.keys:
            self._out.append(Want(value.holder, value.keys))
        return value

    def _give(self, cid, values):
        """``cid`` takes ``values``: it wants their keys before their holders let go."""
        keys = [k for v in values for k in v.keys]
        if keys:
            self._out.append(Want(cid, keys))
        self._drop(values)

    def _drop(self, values):
        for v in values:
            if v.keys:
                self._out.append(Unwant(v.holder, v.keys))

    def _unpark(self, p):
        """Take ``p`` off its line: what a partial queue get holds goes back to the
        front of its queue, what a put waited to store is let go."""
        del self.parked[p.id]
        if p.kind == "variable":
            waiters = self.var_waiters[p.name]
            waiters.remove(p)
            if not waiters:
                del self.var_waiters[p.name]
        elif p.kind == "get":
            q = self.queues[p.name]
            q.getters.remove(p)
            q.items.extendleft(reversed(p.taken))
            self._serve_queue(p.name)
        elif p.kind == "put":
            self.queues[p.name].putters.remove(p)
            self._drop([p.value])
            self._serve_queue(p.name)
        elif p.kind == "event":
            e = self.events[p.name]
            e.waiters.remove(p)
            self._tidy_event(p.name)
        elif p.kind == "multi-acquire":        # p.name: the names asked for
            self._leave_multi_locks(p, p.name)
        else:                                  # "acquire"; p.name: (kind, name)
            s = self.semaphores[p.name]
            s.waiters.remove(p)
            self._serve_semaphore(p.name)

    # ---------------------------------------------------------------- Variable

    def _variable_set(self, cid, msg):
        name = msg["name"]
        new = self._stored("variable", name, msg)
        old = self.variables.get(name)
        self.variables[name] = new
        if old is not None:
            self._drop([old])
        for p in self.var_waiters.pop(name, ()):
            del self.parked[p.id]
            self._give_variable(p.cid, p.rid, new)
        self._reply(cid, msg, True)

    def _give_variable(self, cid, rid, value):
        if value.keys:
            self._out.append(Want(cid, value.keys))
        self._out.append(Reply(cid, rid, {"data": value.data, "keys": value.keys}))

    def _variable_get(self, cid, msg):
        name = msg["name"]
        value = self.variables.get(name)
        if value is not None:
            self._give_variable(cid, msg["request_id"], value)
        else:
            self._park(Parked(cid, msg["request_id"], "variable", name),
                       self.var_waiters.setdefault(name, deque()))

    def _variable_delete(self, cid, msg):
        # Gets parked before any set go on waiting, for a set to come.
        old = self.variables.pop(msg["name"], None)
        if old is not None:
            self._drop([old])
        self._reply(cid, msg, old is not None)

    # ---------------------------------------------------------------- Queue

    def _queue(self, msg):
        q = self.queues.get(msg["name"])
        if q is None:
            q = self.queues[msg["name"]] = QueueState(msg.get("maxsize", 0) or 0)
        return q

    def _queue_put(self, cid, msg):
        name = msg["name"]
        q = self._queue(msg)
        p = Parked(cid, msg["request_id"], "put", name, value=self._stored("queue", name, msg))
        self._park(p, q.putters)
        self._serve_queue(name)

    def _queue_get(self, cid, msg):
        name, batch = msg["name"], msg.get("batch", False)
        q = self._queue(msg)
        if batch is True:
            # Everything there now, at once, even nothing; room for the putters.
            values = list(q.items)
            q.items.clear()
            self._give(cid, values)
            self._reply(cid, msg, _taken(values, True))
            self._serve_queue(name)
            return
        need = 1 if batch is False else int(batch)
        p = Parked(cid, msg["request_id"], "get", name, need=need, batch=batch is not False)
        self._park(p, q.getters)
        self._serve_queue(name)

    def _queue_unget(self, cid, msg):
        """Items a client was given for a get its caller gave up on (interrupted)
        go back to the front of their queue, in their order; room or not."""
        name = msg["name"]
        q = self._queue(msg)
        q.items.extendleft(reversed([self._stored("queue", name, item)
                                     for item in msg["items"]]))
        self._serve_queue(name)
        self._reply(cid, msg, True)

    def _queue_close(self, cid, msg):
        """The items stored now are dropped, for every client (the keys of their
        Futures let go); gets and puts waiting go on waiting, and a put waiting for
        room finds it."""
        name = msg["name"]
        q = self.queues.get(name)
        if q is not None:
            dropped = list(q.items)
            q.items.clear()
            self._drop(dropped)
            self._serve_queue(name)
        self._reply(cid, msg, True)

    def _queue_size(self, cid, msg):
        q = self.queues.get(msg["name"])
        self._reply(cid, msg, 0 if q is None else len(q.items))

    def _serve_queue(self, name):
        """Items go to the getters, oldest first; putters fill the room left; until
        neither can go on.  An empty queue nobody waits on is forgotten."""
        q = self.queues[name]
        moved = True
        while moved:
            moved = False
            while q.getters and q.items:
                p = q.getters[0]
                p.taken.append(q.items.popleft())
                moved = True
                if len(p.taken) >= p.need:
                    q.getters.popleft()
                    del self.parked[p.id]
                    self._give(p.cid, p.taken)
                    self._out.append(Reply(p.cid, p.rid, _taken(p.taken, p.batch)))
            while q.putters and (not q.maxsize or len(q.items) < q.maxsize):
                p = q.putters.popleft()
                del self.parked[p.id]
                q.items.append(p.value)
                self._out.append(Reply(p.cid, p.rid, True))
                moved = True
        if not (q.items or q.getters or q.putters):
            del self.queues[name]

    # ---------------------------------------------------------------- Lock, Semaphore

    def _sid(self, msg):
        return (msg.get("kind", "semaphore"), msg["name"])

    def _acquire(self, cid, msg):
        sid = self._sid(msg)
        s = self.semaphores.get(sid)
        if s is None:
            # The first to come sets the number of leases; it lives while leased
            # or waited for.
            s = self.semaphores[sid] = SemaphoreState(int(msg.get("max_leases", 1)))
        elif s.max_leases != int(msg.get("max_leases", 1)):
            self._reply(cid, msg, {"error": f"inconsistent max leases of {sid[1]!r}: "
                                            f"{msg.get('max_leases')}, expected "
                                            f"{s.max_leases}", "type": "ValueError"})
            return
        if len(s.leases) < s.max_leases and not s.waiters:
            s.leases[msg["lease"]] = cid
            self._reply(cid, msg, True)
        else:
            self._park(Parked(cid, msg["request_id"], "acquire", sid, lease=msg["lease"]),
                       s.waiters)

    def _release(self, cid, msg):
        sid = self._sid(msg)
        s = self.semaphores.get(sid)
        held = s is not None and s.leases.pop(msg["lease"], None) is not None
        if held:
            self._serve_semaphore(sid)
        self._reply(cid, msg, held)

    def _semaphore_value(self, cid, msg):
        s = self.semaphores.get(self._sid(msg))
        self._reply(cid, msg, 0 if s is None else len(s.leases))

    def _serve_semaphore(self, sid):
        s = self.semaphores[sid]
        while s.waiters and len(s.leases) < s.max_leases:
            p = s.waiters.popleft()
            del self.parked[p.id]
            s.leases[p.lease] = p.cid
            self._out.append(Reply(p.cid, p.rid, True))
        if not (s.leases or s.waiters):
            del self.semaphores[sid]

    # ---------------------------------------------------------------- Event

    def _event_set(self, cid, msg):
        e = self.events.setdefault(msg["name"], EventState())
        e.is_set = True
        for p in e.waiters:
            del self.parked[p.id]
            self._out.append(Reply(p.cid, p.rid, True))
        e.waiters = []
        self._reply(cid, msg, True)

    def _event_clear(self, cid, msg):
        e = self.events.get(msg["name"])
        if e is not None:
            e.is_set = False
            self._tidy_event(msg["name"])
        self._reply(cid, msg, True)

    def _event_is_set(self, cid, msg):
        e = self.events.get(msg["name"])
        self._reply(cid, msg, e is not None and e.is_set)

    def _event_wait(self, cid, msg):
        e = self.events.setdefault(msg["name"], EventState())
        if e.is_set:
            self._reply(cid, msg, True)
        else:
            self._park(Parked(cid, msg["request_id"], "event", msg["name"]), e.waiters)

    def _tidy_event(self, name):
        e = self.events[name]
        if not (e.is_set or e.waiters):
            del self.events[name]

    # ---------------------------------------------------------------- MultiLock

    def _multi_acquire(self, cid, msg):
        names = tuple(dict.fromkeys(msg["names"]))
        need = int(msg.get("num_locks") or len(names))
        if not 0 < need <= len(names):
            self._reply(cid, msg, {"error": f"num_locks must be from 1 to {len(names)} "
                                            f"(the names given), not {need}",
                                   "type": "ValueError"})
            return
        p = Parked(cid, msg["request_id"], "multi-acquire", names, need=need,
                   lease=msg["lease"])
        self.parked[p.id] = p
        for name in names:
            self.multi_locks.setdefault(name, deque()).append(p)
        self._serve_multi_locks(names)

    def _serve_multi_locks(self, names):
        """Grant the waiting request first in line for one of ``names`` once it is
        first in as many lines as it needs: it keeps those names, and leaves the
        other lines (which may let others through)."""
        for name in names:
            line = self.multi_locks.get(name)
            if not line or self.parked.get(line[0].id) is not line[0]:
                continue                       # free, or held by a granted request
            p = line[0]
            held = [n for n in p.name if self.multi_locks[n][0] is p][:p.need]
            if len(held) < p.need:
                continue
            del self.parked[p.id]
            self.multi_leases[p.lease] = (p, held)
            self._out.append(Reply(p.cid, p.rid, True))
            self._leave_multi_locks(p, [n for n in p.name if n not in held])

    def _leave_multi_locks(self, p, names):
        """``p`` leaves the lines of ``names``; the next in those it was first in may
        be granted."""
        freed = []
        for name in names:
            line = self.multi_locks[name]
            if line[0] is p:
                freed.append(name)
            line.remove(p)
            if not line:
                del self.multi_locks[name]
        self._serve_multi_locks(freed)

    def _multi_release(self, cid, msg):
        entry = self.multi_leases.pop(msg["lease"], None)
        if entry is not None:
            self._leave_multi_locks(*entry)
        self._reply(cid, msg, entry is not None)

    HANDLERS = {
        "variable-set": _variable_set,
        "variable-get": _variable_get,
        "variable-delete": _variable_delete,
        "queue-put": _queue_put,
        "queue-get": _queue_get,
        "queue-size": _queue_size,
        "queue-unget": _queue_unget,
        "queue-close": _queue_close,
        "acquire": _acquire,
        "release": _release,
        "semaphore-value": _semaphore_value,
        "event-set": _event_set,
        "event-clear": _event_clear,
        "event-is-set": _event_is_set,
        "event-wait": _event_wait,
        "multi-acquire": _multi_acquire,
        "multi-release": _multi_release,
    }

    # ---------------------------------------------------------------- invariants

    def values(self):
        """Every value stored, or waiting to be."""
        values = list(self.variables.values())
        for q in self.queues.values():
            values += list(q.items) + [p.value for p in q.putters]
            values += [v for p in q.getters for v in p.taken]
        return values

    def forget_keys(self):
        """Every task was forgotten (a restart): values keep no keys any more (a
        Future in them is of a key that is gone)."""
        for v in self.values():
            v.keys = []

    def validate(self):
        lines = [p for w in self.var_waiters.values() for p in w]
        for name, w in self.var_waiters.items():
            assert w and name not in self.variables, name
        for name, q in self.queues.items():
            assert q.items or q.getters or q.putters, name
            assert not (q.getters and q.items), name
            assert all(not p.taken for p in list(q.getters)[1:]), name
            assert all(len(p.taken) < p.need for p in q.getters), name
            assert not q.putters or (q.maxsize and len(q.items) >= q.maxsize), name
            lines += list(q.getters) + list(q.putters)
        for sid, s in self.semaphores.items():
            assert s.leases or s.waiters, sid
            assert len(s.leases) <= s.max_leases, sid
            assert not s.waiters or len(s.leases) == s.max_leases, sid
            lines += list(s.waiters)
        for name, e in self.events.items():
            assert e.is_set or e.waiters, name
            assert not (e.is_set and e.waiters), name
            lines += e.waiters
        waiting = {}
        for name, line in self.multi_locks.items():
            assert line, name
            assert all(name in p.name for p in line), name
            # Only the first in a line may be a granted request.
            assert all(self.parked.get(p.id) is p for p in list(line)[1:]), name
            waiting.update((p.id, p) for p in line if self.parked.get(p.id) is p)
        for p in waiting.values():
            assert sum(self.multi_locks[n][0] is p for n in p.name) < p.need, p.name
        for lease, (p, held) in self.multi_leases.items():
            assert p.lease == lease and len(held) == p.need, lease
            assert all(self.multi_locks[n][0] is p for n in held), lease
            assert all(p not in self.multi_locks.get(n, ()) for n in p.name
                       if n not in held), lease
        lines += list(waiting.values())
        assert len(lines) == len(self.parked), (lines, self.parked)
        assert all(self.parked.get(p.id) is p for p in lines), lines
