"""The client's state machine: what a client knows of its keys and its requests; no I/O.

Calls come in from the shell (`shell.ClientShell`), which makes them under one lock from
any thread: user threads hold and drop keys and start requests; the I/O thread hands
over the scheduler's messages (`handle`) and the connection's events (`answered`, the
scheduler's answer to the hello after each connection, and `disconnected`).  Messages
for the scheduler collect in `outbox` (`take_messages`); what the shell must do comes
back as instructions:

    Done(state)             a key is done (finished, erred, cancelled or lost): wake
                            the threads waiting on it and run its done callbacks
    Reset(state)            a key thought done is being computed again
    Resolve(token, value)   answer a request: ``token`` is whatever the shell waits on
    Reject(token, error)    fail a request with the exception ``error``
    Close(reason)           the scheduler shuts down: close this client
    Warn(warning)           tell the user (a worker has stayed paused for long)
    Connect(address)        connect to this worker's peer socket and ask for small
                            results there ("subscribe-results")

A small result comes either straight from the worker that computed it
("task-result", three hops from the submit) or through the scheduler
("key-in-memory", with the value when no gather of this client's answers it; else
the value in a "gather-result").  Of a value that came straight the scheduler says
nothing: no "key-in-memory", and a gather that waited only for such values (sent
with "direct": every key pending here) has no answer, since it was answered here
as soon as they had all come.  A gather that also waited for others is answered
with those, listing as "direct" the ones sent here: one not here yet (overtaken,
or lost with its connection) is asked for again, value and all.  Both may come
(a "report-keys" answered, an answer overtaking the worker's): whichever comes
first finishes the key, the other changes nothing; neither touches a key released
or cancelled here.  A gather sent with "direct" ends, unanswered, when a key it
waits for is released here (`end_gathers`: its caller, who held the key, gave up),
and so does the scheduler's copy of it: a release that overtook the worker's word
finds it there, answered here long since.

A value sent straight comes of the run the worker was asked for.  A key let go of
(or cancelled) while it may have run, then submitted again (perhaps, under an
explicit key, as another computation), could get a value of that earlier run, sent
before its worker heard of the release: such a key takes no value sent straight,
and its graph asks the scheduler ("indirect") to send the value the long way.

A value sent straight is lost only with its connection: when one drops, the keys
pending here are asked for again ("report-keys", ``lost``), and the scheduler tells
this client of that worker's values from then on as if none came straight.  A key
finished by a value that came straight is `unconfirmed`: the scheduler may not know
yet that it is done, so messages that read or act on the scheduler's view (`info`,
the task stream, moves of data, user code in the scheduler...) wait until none is,
after a "report-keys" asking the scheduler to say when it knows (`confirming`);
those of the hot path (`UNORDERED`: graphs, gathers, releases, cancels) do not,
the scheduler being right about those keys either way.  The client connects to a
worker lazily, the first time a "key-in-memory" names it (a small result that
could have come straight): a client reaches only the workers that compute for it,
and the scheduler announces none.

Key states (`FutureState.status`)::

    pending ──▶ finished ──▶ (pending again: its data was lost, it is recomputed)
       │  └───▶ error | cancelled | lost (the connection was lost meanwhile)
                error ──▶ (pending again: the user retries it, `retry`)

State, documented once:

    futures:    {key: FutureState}     keys held by Futures (or by a running `get`)
    refcount:   {key: int}             how many hold each of them
    let_go:     {key: FutureState}     weakly: states cancelled (let go) that a Future
                                       still has; a graph on one of them is cancelled
    suspects:   {key: True}            keys let go of that may have been running: a
                                       value of that run may yet come straight
    indirect:   {key}                  held keys that were suspects when submitted:
                                       their values come through the scheduler only
    requests:   {request_id: token}    requests waiting for their answer
    parked:     {request_id}           those of them that may be parked on the
                                       scheduler (Lock, Queue...: "coordinate")
    scatters:   {request_id: ({key not stored yet}, token)}
    releases:   [key]                  keys nobody holds any more, not yet told: they
                                       leave as one message, in their place among the
                                       others (after a graph sent before they were
                                       dropped, which may depend on them; before one
                                       sent after, which may submit them again)
    outbox:     [msg]                  messages for the scheduler; the first, and the
                                       first after a reconnection, says this client's
                                       options ("client-options").  They wait until the
                                       handshake has named the scheduler
    epoch:      bytes | None           the start of the scheduler answering at `address`
    scheduler:  bytes | None           its identity: the recipient of every message
                                       (both from the handshake, see protocol.py)
    relay_port: int | None             the scheduler's relay for large values (bulk.py),
                                       from "welcome"; None: none, or it failed us
    dashboard:  dict | None            its HTTP page {host, port, prefix, token}, from
                                       "welcome"; None: it serves none
    started:    float | None           when the scheduler started (time.time()), from
                                       "welcome"
    address_to_workers: str | None     where its workers connect, from "welcome"
    paused_warning: seconds | None     warn of a worker paused longer than this
    FutureState.data: Serialized | None  a small result that came with its key's
                                       end, straight from its worker or along with
                                       "key-in-memory", kept while the key is held
                                       (at most `MAX_KEPT` of them, `MAX_KEPT_BYTES`
                                       in all: `kept`, `kept_bytes`)
    gathers:    {request_id: [msg, token, {key not here yet}]}  gathers in flight,
                answered here once their keys' values have all come straight
    by_key:     {key: {request_id}}    which of those wait for a key
    workers:    {address}              workers connected to for small results
    unconfirmed: {key}                 finished by a value that came straight, before
                                       the scheduler's "key-in-memory" (or error,
                                       cancel): later messages outside `UNORDERED`
                                       wait for it
    confirming: {key}                  of those, the ones a "report-keys" has asked
                                       the scheduler's word of
    status:     "connecting" | "running" | "reconnecting" | "closed"
    lost:       bool                   the connection is down (reconnecting)
    waits:      {token}                each stands for another client's messages,
                                       which the scheduler must have before those
                                       queued here after `wait_for` (a `_Wait` in
                                       `outbox` marks the place) leave; until `waited`
    monitoring: bool                   monitor snapshots are subscribed to
    topics:     {topic}                the workers' events subscribed to
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import ClosedClientError, KeyReleased, PausedWorkerWarning, SchedulerLost
from ..units import format_bytes

PENDING, FINISHED, ERROR, CANCELLED, LOST = "pending", "finished", "error", "cancelled", "lost"

# The reasons of cancels the client knows of itself (dask.distributed's words): a
# graph on a key cancelled here, and the scheduler's restart.
LOST_DEPENDENCIES = "lost dependencies"
SCHEDULER_RESTART = "scheduler-restart"


class FutureState:
    """What the client knows of one key, shared by every Future of that key.

    ``status`` (see the module docstring), ``error`` (the error record, for "error"
    and "lost"; for "cancelled", why: ``{"reason", "msg"}``), ``type`` (the result's
    type name, once finished).  ``event`` and ``callbacks`` belong to the shell: the
    Event waiters sleep on and the done callbacks, made only once someone waits (a
    graph may make a hundred thousand states)."""

    __slots__ = ("key", "status", "error", "type", "event", "callbacks", "data",
                 "__weakref__")

    def __init__(self, key):
        self.key = key
        self.status = PENDING
        self.error = None
        self.type = None
        self.event = None
        self.callbacks = None
        self.data = None

    def done(self):
        return self.status != PENDING

    def __repr__(self):
        return f"<FutureState {self.key!r} {self.status}>"


@dataclass(slots=True)
class Done:
    state: FutureState


@dataclass(slots=True)
class Reset:
    state: FutureState


@dataclass(slots=True)
class Resolve:
    token: object
    value: object


@dataclass
class Reject:
    token: object
    error: BaseException

    def __eq__(self, other):        # exceptions compare by type and text in tests
        return (type(other) is Reject and other.token == self.token
                and type(other.error) is type(self.error)
                and str(other.error) == str(self.error))


@dataclass(slots=True)
class Connect:
    address: str


@dataclass
class Close:
    reason: str


@dataclass
class Warn:
    warning: Warning

    def __eq__(self, other):        # warnings compare by type and text in tests
        return (type(other) is Warn and type(other.warning) is type(self.warning)
                and str(other.warning) == str(self.warning))


def _size(data):
    """Bytes of a kept value (a Serialized; anything else, as tests give, counts 0)."""
    return getattr(data, "nbytes", 0)


def _reply(data):
    """A gather's answer made here from values kept here."""
    return {"data": data, "missing": [], "errors": {}}


def _why(reason, text):
    """The fields of a cancel that say why: those given."""
    return {name: value for name, value in (("reason", reason), ("msg", text))
            if value is not None}


def paused_text(info):
    """A warning about a worker paused for long, from its memory figures."""
    name = info.get("name") or info.get("address")
    where = f"{name} ({info['address']})" if name != info.get("address") else name
    limit = info.get("memory_limit")
    of = f" of its {format_bytes(limit)} limit" if limit else ""
    return (f"worker {where} has been paused for {info.get('seconds', 0):.0f} s: its "
            f"process holds {format_bytes(info.get('memory', 0))}{of} "
            f"({format_bytes(info.get('managed', 0))} of results in memory, "
            f"{format_bytes(info.get('spilled', 0))} spilled to disk).  It starts no "
            "task until its memory falls: release results you no longer need, "
            "persist less at once, or give workers more memory (memory_limit=).")


# Small values that came with their keys' ends kept at once, at most (each is under
# 16 kB): beyond, a key's value is used for the gathers waiting for it, then fetched
# when asked for.
MAX_KEPT = 65_536
MAX_KEPT_BYTES = 64 * 2**20
SUSPECTS_KEPT = 100_000   # keys let go of while they may have run (`_suspect`)

WELCOME = "welcome"    # the request id of registration: its answer carries no id

# What may overtake the scheduler's word on a key whose value came straight: none
# of these reads the scheduler's view of a key it may still think is computing.
UNORDERED = frozenset({"update-graph", "gather", "client-releases-keys",
                       "client-desires-keys", "cancel", "scatter", "client-options",
                       "register-client", "close-client", "monitor", "subscribe-topic",
                       "fire-and-forget", "report-keys"})


class _Wait:
    """The place in `ClientState.outbox` of a `wait_for`: no message, it never
    leaves."""

    __slots__ = ("token",)

    def __init__(self, token):
        self.token = token


class ClientState:
    def __init__(self, address, paused_warning=None):
        self.address = address
        self.paused_warning = paused_warning
        self.futures = {}
        self.refcount = {}
        self.let_go = weakref.WeakValueDictionary()
        self.suspects = OrderedDict()
        self.indirect = set()
        self.requests = {}
        self.parked = set()
        self.scatters = {}
        self.releases = []
        self.outbox = [self._options()]
        self.status = "connecting"
        self.lost = False
        self.monitoring = False
        self.topics = set()
        self.epoch = None
        self.scheduler = None
        self.relay_port = None
        self.dashboard = None
        self.started = None
        self.address_to_workers = None
        self.gathers = {}
        self.by_key = {}
        self.workers = set()
        self.unconfirmed = set()
        self.confirming = set()
        self.waits = set()
        self.kept = 0                   # FutureState.data values held
        self.kept_bytes = 0             # and their sizes summed
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ holders

    def hold(self, key, state=None, inform=False):
        """One more holder of ``key``; its (shared) state.  ``inform``: the holder came
        from elsewhere (an unpickled Future), so the scheduler learns that this
        client wants the key."""
        st = self.futures.get(key)
        if st is None:
            st = self.futures[key] = state or FutureState(key)
            if self.suspects and self.suspects.pop(key, False):
                self.indirect.add(key)
            if inform:
                self._queue({"op": "client-desires-keys", "keys": [key],
                             **({"indirect": [key]} if key in self.indirect else {})})
        self.refcount[key] = self.refcount.get(key, 0) + 1
        return st

    def hold_many(self, keys):
        """Hold ``keys`` without Futures (a `get` waiting for them): {key: state}."""
        return {key: self.hold(key) for key in keys}

    def drop(self, keys):
        """One holder fewer of each of ``keys``; the keys nobody holds are released."""
        if self.status == "closed":
            return []
        gone = []
        for key in keys:
            n = self.refcount.get(key, 0) - 1
            if n > 0:
                self.refcount[key] = n
                continue
            self.refcount.pop(key, None)
            st = self.futures.pop(key, None)
            if st is not None:
                self._drop_value(st)
                if st.status == PENDING:
                    self._suspect(key)
                elif self.indirect:
                    self.indirect.discard(key)
            self._confirmed(key)
            gone.append(key)
        self.releases.extend(gone)
        return gone

    def end_gathers(self, gone):
        """Gathers sent with "direct" that wait here for keys just released (`drop`
        -> ``gone``): their callers gave up (a caller holds the keys it waits for),
        and the scheduler, seeing the release, drops them without an answer: they
        fail here, and are forgotten."""
        out = []
        for key in gone:
            for rid in list(self.by_key.get(key, ())):
                if self.gathers[rid][0].get("direct"):
                    self._end_gather(rid)
                    token = self.requests.pop(rid, None)
                    if token is not None:
                        out.append(Reject(token, KeyReleased(
                            f"{key!r} was released while gathered")))
        return out

    def is_held(self, key):
        """Whether a Future of ``key`` that is not cancelled exists here."""
        return key in self.futures

    def released(self, st):
        """A Future's `release` let go of state ``st``: if no Future holds its key
        now, it is cancelled for the Futures that kept it (as dask.distributed's:
        their `result` raises, `wait` and `as_completed` see it cancelled)."""
        if self.futures.get(st.key) is st or st.status == CANCELLED:
            return []
        return self._set_cancelled(st)

    # ------------------------------------------------------------ to the scheduler

    def send(self, msg):
        self._queue(msg)

    def _queue(self, msg):
        self._queue_releases()
        self.outbox.append(msg)

    def _queue_releases(self):
        if self.releases:
            self.outbox.append({"op": "client-releases-keys", "keys": self.releases})
            self.releases = []

    def take_messages(self):
        """What leaves for the scheduler now, for `scheduler`, in the order it came
        (releases of keys dropped one after another as one message).  Nothing before
        the handshake has told whom to address (and the epoch to sign with): the
        messages wait."""
        if self.scheduler is None:
            return []
        self._queue_releases()
        if self.unconfirmed or self.waits:
            for i, msg in enumerate(self.outbox):
                if type(msg) is _Wait:
                    out, self.outbox = self.outbox[:i], self.outbox[i:]
                    return out
                if self.unconfirmed and msg["op"] not in UNORDERED:
                    out, self.outbox = self.outbox[:i], self.outbox[i:]
                    ask = self.unconfirmed - self.confirming
                    if ask:
                        # The scheduler says nothing of them unless asked.
                        self.confirming |= ask
                        out.append({"op": "report-keys", "keys": list(ask)})
                    return out
        out, self.outbox = self.outbox, []
        return out

    def wait_for(self, token):
        """The messages queued from now on leave once `waited` (``token``): they
        need what another client has sent, on its own connection, to reach the
        scheduler first."""
        self.waits.add(token)
        self._queue(_Wait(token))

    def waited(self, token):
        if token in self.waits:
            self.waits.discard(token)
            self.outbox = [msg for msg in self.outbox
                           if type(msg) is not _Wait or msg.token is not token]

    def request(self, msg, token, welcome=False):
        """Send ``msg`` and wait for its answer with ``token``.  ``msg`` gets a
        request id (registration does not: its answer is "welcome")."""
        if not welcome:
            msg["request_id"] = next(self._ids)
        if self.status == "closed":
            return [Reject(token, ClosedClientError("this Client is closed"))]
        if self.lost and msg["op"] != "register-client":
            return [Reject(token, SchedulerLost(f"not connected to {self.address}"))]
        self.requests[WELCOME if welcome else msg["request_id"]] = token
        if msg["op"] == "coordinate":
            self.parked.add(msg["request_id"])
        self._queue(msg)
        return []

    def scatter(self, msg, keys, token):
        """Send a scatter; ``token`` is answered once every key is stored."""
        rid = msg["request_id"] = next(self._ids)
        if self.status == "closed":
            return [Reject(token, ClosedClientError("this Client is closed"))]
        self.scatters[rid] = (set(keys), token)
        self._queue(msg)
        return []

    def gather_message(self, keys, wait=False, max_bytes=None):
        """A request for the values of ``keys``: large ones may come streamed through
        the scheduler's relay when there is one (the scheduler decides which)."""
        return {"op": "gather", "keys": list(keys), "wait": wait, "max_bytes": max_bytes,
                "stream": self.relay_port is not None}

    def gather(self, msg, token, here=None):
        """Send the gather ``msg`` (from `gather_message`) and answer ``token`` with
        its reply, made here from the values that came straight when they all have;
        only keys not here yet are asked for.  ``here``: values known already."""
        here = {} if here is None else here
        for key in msg["keys"]:
            st = self.futures.get(key)
            if st is not None and st.data is not None and st.status == FINISHED:
                here[key] = st.data
        keys = [key for key in msg["keys"] if key not in here]
        if not keys:
            return [Resolve(token, _reply(here))]
        msg["keys"] = keys
        if "direct" not in msg:
            # Values sent here straight may be left out of the answer (and, if all
            # are, the answer too) only while they are still to come: a key done
            # here without its value (not kept) needs it from the scheduler.
            msg["direct"] = all(
                st is not None and st.status == PENDING
                for st in map(self.futures.get, keys))
        out = self.request(msg, token)
        if not out:
            rid = msg["request_id"]
            self.gathers[rid] = [msg, here, set(msg["keys"])]
            for key in msg["keys"]:
                self.by_key.setdefault(key, set()).add(rid)
        return out

    def _end_gather(self, rid):
        entry = self.gathers.pop(rid, None)
        if entry is not None:
            for key in entry[2]:
                rids = self.by_key.get(key)
                if rids is not None:
                    rids.discard(rid)
                    if not rids:
                        del self.by_key[key]
        return entry

    def streams_failed(self, msg, streams):
        """The ``streams`` of the answer to the gather ``msg`` did not come through
        the relay: the request to send again, for values on the ZeroMQ connection,
        naming the streams given up so that their senders stop at once.  No more
        streams until a "welcome" names the relay again."""
        self.relay_port = None
        retry = {k: v for k, v in msg.items() if k != "request_id"}
        retry.update(stream=False, direct=False,
                     unwanted=[stream["ticket"] for stream in streams])
        return retry

    def monitor(self, on):
        self.monitoring = on
        self._queue({"op": "monitor", "on": on})

    def _options(self):
        """What the scheduler keeps per client: when to warn of a paused worker."""
        return {"op": "client-options", "paused_warning": self.paused_warning}

    def subscribe(self, topic, on):
        """Subscribe to the workers' events of ``topic`` (or no longer)."""
        if on:
            self.topics.add(topic)
        else:
            self.topics.discard(topic)
        self._queue({"op": "subscribe-topic", "topic": topic, "on": on})

    # ------------------------------------------------------------ known here first

    def finish(self, done):
        """``done``: [(state, type name)] known to be in memory (scattered here)."""
        out = []
        for st, typ in done:
            st.type = typ
            out += self._set(st, FINISHED)
        return out

    def learn(self, reports):
        """``reports``: the scheduler's "key-in-memory" and "task-erred" messages of
        keys that had ended when it answered with values holding Futures of them (a
        Variable's, a Queue's).  The Futures just made of those keys, pending here,
        start finished or erred.  Only a pending state changes: one that had ended
        keeps what this client learnt, in order, from the scheduler."""
        out = []
        for msg in reports:
            st = self.futures.get(msg["key"])
            if st is not None and st.status == PENDING:
                out += self.handle(msg)
        return out

    def cancel(self, states, keys, force, reason, text, token):
        """The user cancels keys: their states are cancelled at once, and let go of:
        the Futures cancelled keep theirs, and a key submitted again gets a state of
        its own (as in dask.distributed).  ``reason`` and ``text`` (or None) say why,
        here and to the clients of the dependents cancelled with them.  ``token`` is
        answered once the scheduler has cancelled them, and their dependents (whose
        "cancelled" come first)."""
        out = []
        for st in states:
            if not st.done() or st.status == FINISHED:
                out += self._set_cancelled(st, reason, text)
            self._let_go(st)
        for key in keys:
            self._confirmed(key)
        msg = {"op": "cancel", "keys": keys, "force": force}
        msg.update(_why(reason, text))
        return out + self.request(msg, token)

    def retry(self, keys, token):
        """The user computes erred keys again: they are pending until the scheduler
        reports them (it reports every key asked for once it ends).  ``token`` is
        answered once the scheduler has them again."""
        out = self.request({"op": "retry", "keys": list(keys)}, token)
        if out:                     # refused: closed, or the scheduler out of reach
            return out
        for key in keys:
            st = self.futures.get(key)
            if st is not None and st.status == ERROR:
                st.status = PENDING
                st.error = None
                out.append(Reset(st))
        return out

    # ------------------------------------------------------------ the connection

    def start(self):
        """Registered (the first "welcome"): False if closed meanwhile."""
        if self.status == "closed":
            return False
        self.status = "running"
        return True

    def answered(self, epoch, scheduler):
        """The scheduler answered the hello said after each connection, with its
        epoch and identity: messages leave now, for it.  Another epoch than the
        known one is another start of the scheduler at this address: what was in
        flight there fails, as when the connection is lost.  After a loss, register
        again (the scheduler forgot this client, its options and its monitor
        subscription)."""
        out = []
        if self.epoch is not None and epoch != self.epoch and not self.lost:
            out = self.disconnected(f"a new scheduler answers at {self.address}")
        self.epoch, self.scheduler = epoch, scheduler
        if not self.lost:
            return out
        self.lost = False
        self.status = "running"
        self._queue(self._options())
        self._queue({"op": "register-client"})
        if self.monitoring:
            self._queue({"op": "monitor", "on": True})
        for topic in sorted(self.topics):
            self._queue({"op": "subscribe-topic", "topic": topic, "on": True})
        return out

    def disconnected(self, reason):
        """The connection is down: everything in flight fails at once, nothing waits
        on a dead scheduler."""
        if self.status == "closed":
            return []
        self.lost = True
        self.status = "reconnecting"
        return self._fail_pending(reason)

    def _fail_pending(self, reason):
        out = []
        self.gathers.clear()
        self.by_key.clear()
        self.unconfirmed.clear()
        self.confirming.clear()
        for st in list(self.futures.values()):
            if not st.done():
                st.error = {"type": "SchedulerLost", "text": reason}
                out += self._set(st, LOST)
        self.parked.clear()
        for rid, token in list(self.requests.items()):
            if rid == WELCOME:
                continue
            del self.requests[rid]
            out.append(Reject(token, SchedulerLost(reason)))
        for rid, (_, token) in list(self.scatters.items()):
            del self.scatters[rid]
            out.append(Reject(token, SchedulerLost(reason)))
        return out

    def begin_close(self):
        """Closing: False if it already was.  A last message tells the scheduler;
        before it, requests that may be parked there are withdrawn, so that each
        gets its one answer (withdrawn, or a grant already on its way, such as a
        queue item, which is then not lost with the connection)."""
        if self.status == "closed":
            return False
        self.status = "closed"
        # Nothing of this client's is kept any more: what waited goes now.
        self.waits.clear()
        self.outbox = [msg for msg in self.outbox if type(msg) is not _Wait]
        for rid in sorted(self.parked):
            self._queue({"op": "withdraw", "request": rid})
        self._queue({"op": "close-client"})
        return True

    def parked_tokens(self):
        """The tokens of the requests that may be parked on the scheduler."""
        return [self.requests[rid] for rid in sorted(self.parked)]

    def closed(self):
        """Closed and the connection gone: every key is cancelled (a finished one's
        value is dropped), as dask.distributed's, but one lost with the scheduler
        keeps the error that says so; every request fails."""
        out = []
        for st in list(self.futures.values()):
            if st.status not in (CANCELLED, LOST):
                st.data = None
                out += self._set_cancelled(st)
        self.gathers.clear()
        self.by_key.clear()
        self.unconfirmed.clear()
        self.confirming.clear()
        tokens = list(self.requests.values())
        tokens += [token for _, token in self.scatters.values()]
        for token in tokens:
            out.append(Reject(token, ClosedClientError("this Client is closed")))
        return out

    # ------------------------------------------------------------ the scheduler's messages

    def handle(self, msg):
        return self.FROM_SCHEDULER[msg["op"]](self, msg)

    def _set(self, st, status):
        st.status = status
        return [Done(st)]

    def _set_cancelled(self, st, reason=None, text=None):
        st.error = {"reason": reason, "msg": text}
        return self._set(st, CANCELLED)

    def _confirmed(self, key):
        """The scheduler's word on ``key`` came (or is no longer needed)."""
        self.unconfirmed.discard(key)
        self.confirming.discard(key)

    def _on_key_in_memory(self, msg):
        st = self.futures.get(msg["key"])
        out = []
        self._confirmed(msg["key"])
        worker = msg.get("worker")
        if worker is not None and worker not in self.workers and not self.lost:
            self.workers.add(worker)
            out.append(Connect(worker))
        if st is None or st.status == FINISHED:
            return out                   # its value came straight first
        st.type = msg.get("type")
        st.status = FINISHED
        out.append(Done(st))
        data = msg.get("data")
        if data is not None:
            # A small value that went the long way, through the scheduler: a gather
            # of it needs no request.
            out += self._keep(st, data)
        return out

    def _let_go(self, st):
        """``st`` stays its Futures' alone (cancelled): the key, submitted again,
        gets a state of its own.  The Futures still count as holders."""
        if self.futures.get(st.key) is st:
            del self.futures[st.key]
            self._drop_value(st)
            self._suspect(st.key)
        self.let_go[st.key] = st

    def _suspect(self, key):
        """``key`` was let go of, or cancelled, perhaps while it ran: a value of that
        run may still come straight from its worker, after the key is submitted
        again (maybe as another computation, under an explicit key).  Submitted
        again, the key is `indirect`: its value comes through the scheduler, which
        its graph asks for ("indirect"), and no value sent straight is taken.  The
        latest SUSPECTS_KEPT such keys are remembered."""
        self.indirect.discard(key)
        self.suspects[key] = True
        if len(self.suspects) > SUSPECTS_KEPT:
            self.suspects.popitem(last=False)

    def indirect_among(self, keys):
        """Those of ``keys`` (just held) whose values must come through the
        scheduler (`_suspect`)."""
        if not self.indirect:
            return []
        return [key for key in keys if key in self.indirect]

    def was_cancelled(self, key):
        """Whether ``key`` is not held here but a Future of it, cancelled, lives."""
        return key not in self.futures and key in self.let_go

    def lose(self, keys):
        """Keys of a graph that need a key cancelled here: they can never run, and
        are cancelled here at once, never sent (dask.distributed cancels them for
        their "lost dependencies")."""
        out = []
        for key in keys:
            st = self.futures.get(key)
            if st is not None:
                out += self._set_cancelled(st, LOST_DEPENDENCIES)
                self._let_go(st)
        return out

    def _drop_value(self, st):
        """Forget a small value kept here (it no longer counts in `kept`)."""
        if st.data is not None:
            self.kept_bytes -= _size(st.data)
            st.data = None
            self.kept -= 1

    def _keep(self, st, data):
        """Keep the small value of ``st`` if there is room, and answer the gathers
        waiting only for it."""
        size = _size(data)
        if self.kept < MAX_KEPT and self.kept_bytes + size <= MAX_KEPT_BYTES:
            st.data = data
            self.kept += 1
            self.kept_bytes += size
        out = []
        for rid in self.by_key.pop(st.key, ()):
            entry = self.gathers.get(rid)
            if entry is None:
                continue
            entry[1][st.key] = data
            entry[2].discard(st.key)
            if not entry[2]:
                self._end_gather(rid)
                out += self._answer(rid, _reply(entry[1]))
        return out

    def _on_task_result(self, msg):
        """A small result straight from its worker: kept, and any gather waiting only
        for it answered.  Not for a key released or cancelled here, one that erred,
        or one whose value came already."""
        key = msg["key"]
        st = self.futures.get(key)
        if (st is None or st.status not in (PENDING, FINISHED) or st.data is not None
                or key in self.indirect):
            return []
        out = []
        if st.status == PENDING:
            st.type = msg.get("type")
            st.status = FINISHED
            self.unconfirmed.add(key)
            out.append(Done(st))
        return out + self._keep(st, msg["data"])

    def worker_lost(self, address):
        """The connection to a worker taking small results dropped: connect again
        when a result names it.  Values it sent that had not come are lost with it,
        and the scheduler, told they came straight, would not send them: every key
        pending here is asked for again, and from now on the scheduler sends this
        client the values of that worker as if they had not come straight
        ("report-keys", ``lost``)."""
        self.workers.discard(address)
        if self.status == "closed" or self.lost:
            return
        pending = [key for key, st in self.futures.items() if st.status == PENDING]
        self._queue({"op": "report-keys", "keys": pending, "lost": address})

    def _on_task_erred(self, msg):
        self._confirmed(msg["key"])
        st = self.futures.get(msg["key"])
        if st is None:
            return []
        st.error = msg
        return self._set(st, ERROR)

    def _on_cancelled(self, msg):
        """Another client's forced cancel, or the cancel of an input, reached this
        key: its Futures are cancelled (for the reason of that cancel), and the key,
        submitted again, starts anew."""
        self._confirmed(msg["key"])
        st = self.futures.get(msg["key"])
        if st is None:
            return []
        self._let_go(st)
        return self._set_cancelled(st, msg.get("reason"), msg.get("msg"))

    def _on_restarted(self, msg):
        self.unconfirmed.clear()
        self.confirming.clear()
        out = []
        for st in list(self.futures.values()):
            if not st.done() or st.status == FINISHED:
                out += self._set_cancelled(st, SCHEDULER_RESTART,
                                           "The scheduler restarted and forgot every "
                                           "task: submit the work again.")
            self._let_go(st)
        return out

    def _answer(self, rid, value):
        self.parked.discard(rid)
        token = self.requests.pop(rid, None)
        return [] if token is None else [Resolve(token, value)]

    def _on_reply(self, msg):
        return self._answer(msg["request_id"], msg["result"])

    def _on_gather_result(self, msg):
        out = []
        for key in msg.get("missing", ()):
            # A key thought done is gone (its worker died): it is being computed
            # again.  Reset here, before any later "key-in-memory".
            st = self.futures.get(key)
            if st is not None and st.status == FINISHED:
                st.status = PENDING
                st.error = None
                self._drop_value(st)
                self._confirmed(key)
                out.append(Reset(st))
        types = msg.get("types", {})
        for key in msg.get("data", ()):
            st = self.futures.get(key)
            if st is not None and st.status == PENDING:
                # The scheduler answered with the value before the worker's word
                # (a value sent straight, still on its way, or lost with its
                # connection) came: the key is done, as the caller will see.
                st.type = types.get(key)
                st.status = FINISHED
                out.append(Done(st))
        rid = msg["request_id"]
        entry = self._end_gather(rid)
        if entry is None:
            return out + self._answer(rid, msg)
        data = msg["data"]
        data.update(entry[1])
        lacking = []
        for key in msg.get("direct", ()):
            st = self.futures.get(key)
            if st is not None and st.data is not None:
                data[key] = st.data
            else:
                lacking.append(key)
        if lacking:
            # Sent straight but not here (that connection dropped): asked for again,
            # values and all, under the same request.
            again = {k: v for k, v in entry[0].items() if k != "request_id"}
            again.update(keys=lacking, direct=False, wait=False)
            token = self.requests.pop(rid, None)
            if token is not None:
                out += self.gather(again, token, here=data)
            return out
        return out + self._answer(rid, msg)

    def _on_welcome(self, msg):
        # Each registration's answer (again after a reconnection) says where the
        # relay is.
        self.relay_port = msg.get("relay_port")
        self.dashboard = msg.get("dashboard")
        self.started = msg.get("started")
        self.address_to_workers = msg.get("address_to_workers")
        return self._answer(WELCOME, msg)

    def _on_scattered(self, msg):
        entry = self.scatters.get(msg["request_id"])
        if entry is None:
            return []
        keys, token = entry
        keys.discard(msg["key"])
        if keys:
            return []
        del self.scatters[msg["request_id"]]
        return [Resolve(token, True)]

    def _on_scatter_failed(self, msg):
        entry = self.scatters.pop(msg["request_id"], None)
        return [] if entry is None else [Reject(entry[1], RuntimeError(msg["text"]))]

    def _on_scheduler_closing(self, msg):
        if self.status == "closed":
            return []
        reason = f"the scheduler at {self.address} was shut down"
        return self._fail_pending(reason) + [Close(reason)]

    def _on_worker_paused_long(self, msg):
        return [Warn(PausedWorkerWarning(paused_text(msg)))]

    FROM_SCHEDULER = {
        "key-in-memory": _on_key_in_memory,
        "task-erred": _on_task_erred,
        "cancelled": _on_cancelled,
        "restarted": _on_restarted,
        "reply": _on_reply,
        "gather-result": _on_gather_result,
        "run-result": _on_gather_result,
        "welcome": _on_welcome,
        "scattered": _on_scattered,
        "scatter-failed": _on_scatter_failed,
        "scheduler-closing": _on_scheduler_closing,
        "worker-paused-long": _on_worker_paused_long,
    }

    def handle_worker(self, msg):
        return self.FROM_WORKERS[msg["op"]](self, msg)

    FROM_WORKERS = {
        "task-result": _on_task_result,
    }

    # ------------------------------------------------------------ checks

    def validate(self):
        # Cancelled Futures still count, with states of their own (let go of).
        assert set(self.futures) <= set(self.refcount), "held keys without counts"
        assert all(n > 0 for n in self.refcount.values()), self.refcount
        for key, st in self.futures.items():
            assert st.key == key, (key, st)
            assert st.status in (PENDING, FINISHED, ERROR, CANCELLED, LOST), st
        assert not set(self.requests) & set(self.scatters), "a request id used twice"
        assert set(self.gathers) <= set(self.requests), "a gather without its request"
        assert self.parked <= set(self.requests), "a parked request without its request"
        assert self.unconfirmed <= set(self.futures), "unconfirmed keys not held"
        assert self.confirming <= self.unconfirmed, "a report asked of a key confirmed"
        assert self.waits == {msg.token for msg in self.outbox
                              if type(msg) is _Wait}, "a wait without its place"
        assert self.kept == sum(st.data is not None for st in self.futures.values())
        assert self.kept_bytes == sum(_size(st.data) for st in self.futures.values()
                                      if st.data is not None)
        assert self.kept <= MAX_KEPT and self.kept_bytes <= MAX_KEPT_BYTES
        for key, rids in self.by_key.items():
            assert rids and all(key in self.gathers[rid][2] for rid in rids), key
        assert (self.status == "reconnecting") == self.lost or self.status == "closed"
        assert (self.epoch is None) == (self.scheduler is None), "half a handshake"
