"""The worker's state machine: which tasks to fetch, run and keep; no I/O.

Events go in through `handle(event)`, or several in a row through `handle_all`; the
result is a list of instructions for the shell: `Execute` (run a task in the thread
pool), `GatherDep` (ask a peer for data), `Send` (a message for the scheduler) and
`ToClient` (a small result straight to a client waiting for it).  Time, sockets and
threads stay in the shell.

Task states on a worker::

    fetch ──▶ flight ──▶ memory          (a dependency held by a peer)
      ▲          │
      └─ missing ◀┘                      (no peer had it: the scheduler is told)

A dependency held only by peers this worker cannot reach (`unreachable`) is in flight
from `RELAY`: the scheduler fetches it from a holder and forwards it, or has the
holder stream it through the scheduler's relay for the shell to download.
    waiting ──▶ ready ───────────▶ executing ──▶ memory   (a task this worker computes)
       └──────▶ constrained ───┘      └──▶ error or rescheduled: let go at once
                (needs resources)           (the scheduler keeps the error)

State, documented once:

    tasks:     {key: WTask}
    data:      MutableMapping {key: value}; a dict or a spill-to-disk store
    ready:     heap of (priority, seq, key) for tasks whose inputs are all in memory
               (in state "ready", or "constrained" when they need resources)
    fetching:  {key} in state "fetch" (so no event walks over every task)
    executing: {key}                  at most `nthreads` (more when tiny tasks are
                                      handed to the pool in batches)
    short:     {key}                  of those, the tiny ones handed over in batches:
                                      never behind a thread held by a longer task
    resources: {name: amount}         what this worker has in all (worker resources)
    available: {name: amount}         what its running tasks leave free
    holding:   {key: {name: amount}}  what each running task holds
    constrained: heap like `ready`    ready tasks waiting for resources to be free
    seceded:   {key}                  tasks running (state "executing") that gave
                                      their thread slot back (`secede`): they wait
                                      for other work and count for no thread
    rejoining: [key]                  seceded tasks asking for a slot again, first
                                      asked first served, before any ready task
    in_flight: {peer address: [key]}  one request at a time per peer (or RELAY)
    unreachable: {peer address}       peers that did not connect or answer in time
    WTask.waiting_for: {key}          dependencies not in memory yet
    WTask.dependents:  {key}          local tasks that need this one
    WTask.who_has:     {address}      peers said to hold a dependency
                       (these three start as NO_KEYS, one empty set shared by all
                       tasks, and become sets of their own once filled)
    WTask.reported:    bool           the scheduler knows this worker holds the data;
                                      data it does not know of (fetched copies) is
                                      dropped as soon as no local task needs it
    WTask.replica:     bool           a copy the scheduler asked for ("acquire-
                                      replicas"): kept and reported once fetched
    WTask.interrupted: bool           stopped for memory while running, or freed
                                      while running and asked for again with
                                      another run_spec: whatever its run ends with
                                      is dropped (and the task runs again if asked)
    WTask.clients:     (client id,)   the clients waiting for its result (from
                                      "compute-task")
    clients:   {client id}            clients that asked for their small results on
                                      their connection to this worker's peer socket
                                      ("subscribe-results"), until it is gone
    managed:   int                    bytes (by sizeof) of the results in `data`
    transfer_limit: int or None       bytes of inputs asked of peers at once, at most
    paused:    bool                   memory is high: no task starts and no input is
                                      fetched; running tasks go on, and peers are
                                      still served
    setting_up: bool                  worker plugins are being set up or torn down
                                      (on a thread of the shell's): no task starts,
                                      so that each finds the set-ups sent before it
                                      done; all else goes on
    transition_log:    [(key, start, finish)] or None: every change of a task's state,
                       while `observe_transitions` is on (for worker plugins)
    story_log:         deque of the latest changes or None, once `keep_story` is on:
                       (key, start, finish, stimulus, clock), the kind of the event
                       that caused it and the shell's time (see stories.py)
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from dataclasses import dataclass, field

from .. import stories

SHORT_TASK = 0.001     # seconds: tasks this short are handed to the pool in batches
PREFETCH = 8           # tasks per thread handed to the pool when they are short
RELAY = "relay"        # the pseudo-peer of fetches through the scheduler
TO_RUN = frozenset({"waiting", "ready", "constrained"})   # tasks to run here, not begun
REQUEST_BYTES = 50 << 20   # inputs asked of one peer in one request, at most


@dataclass
class Execute:
    key: object
    run_spec: object
    inputs: dict
    want_data: bool = False      # send a small result along with "task-finished"


@dataclass
class GatherDep:
    peer: str
    keys: list


@dataclass
class Send:
    msg: dict


@dataclass
class ToClient:
    """Send ``msg`` (a "task-result") to the client ``client`` on the peer socket."""
    client: bytes
    msg: dict


@dataclass
class Rejoin:
    """A seceded task may go on: it holds a thread slot again."""
    key: object


class EventsFailed(Exception):
    """From `WorkerState.handle_all`, once every event was handled: ``errors``, the
    [(op, exception)] of the events whose handlers raised; ``out``, the instructions
    of all the others, to be carried out all the same (one event going wrong must
    not lose the results that arrived with it)."""

    def __init__(self, errors, out):
        super().__init__("; ".join(f"{op}: {e!r}" for op, e in errors))
        self.errors = errors
        self.out = out


class _NoKeys(frozenset):
    """The empty set that a task's `dependents`, `waiting_for` and `who_has` start
    as, shared by all tasks: most (a map's) never hold anything there, and three sets
    of their own would cost each task their making, their freeing and the cyclic
    collector's scans while it lives.  Emptying it does nothing; a task given
    something to hold there gets a set of its own first."""

    __slots__ = ()

    def discard(self, item):
        pass

    def clear(self):
        pass


NO_KEYS = _NoKeys()


def _of_run(ts, msg):
    """``msg`` on task ``ts`` naming the run it answers (the scheduler's "run_id"),
    so that the scheduler can tell it from a word on an earlier run of the key."""
    if ts is not None and ts.run_id is not None:
        msg["run_id"] = ts.run_id
    return msg


class WTask:
    __slots__ = ("key", "state", "run_spec", "ran", "priority", "dependencies",
                 "dependents", "waiting_for", "who_has", "nbytes", "reported",
                 "cancelled", "computed", "duration", "want_data", "confirm", "replica",
                 "interrupted", "resources", "clients", "run_id")

    def __init__(self, key):
        self.key = key
        self.state = "released"
        self.run_spec = None
        # The task as it ran, kept as long as its result: a result may depend on
        # objects only the task holds (a weakref.proxy to what the function's
        # closure keeps), as it can under dask's own schedulers.
        self.ran = None
        self.priority = (0,)
        self.dependencies = ()
        self.dependents = NO_KEYS         # each a set of its own once not empty
        self.waiting_for = NO_KEYS
        self.who_has = NO_KEYS
        self.nbytes = 0
        self.reported = False
        self.cancelled = False
        self.computed = False        # the scheduler asked this worker to compute it
        self.duration = None         # the scheduler's estimate, seconds
        self.want_data = False
        self.confirm = False         # start only on the scheduler's "go"
        self.replica = False         # a copy asked for: report it once here
        self.interrupted = False
        self.resources = None        # {name: amount} it needs while it runs
        self.clients = ()            # clients waiting for its result
        self.run_id = None           # the scheduler's, of the "compute-task" it answers

    def __repr__(self):
        return f"<WTask {self.key!r} {self.state}>"


@dataclass
class WorkerState:
    address: str
    nthreads: int = 1
    data: object = field(default_factory=dict)
    validating: bool = False
    resources: dict = None
    transfer_limit: int = None        # bytes of inputs in flight at most (None: any)

    def __post_init__(self):
        self.tasks = {}
        self.ready = []
        self.executing = set()
        self.short = set()
        self.resources = dict(self.resources or {})
        self.available = dict(self.resources)
        self.holding = {}
        self.constrained = []
        self.seceded = set()
        self.rejoining = []
        self.in_flight = {}
        self.nbytes = {}              # {key: bytes} of what is in data
        self.fetching = set()         # keys in state "fetch"
        self.unconfirmed = {}         # {key: Execute} waiting for the scheduler's "go"
        self.unreachable = set()      # peers whose data comes through the scheduler
        self.managed = 0
        self.paused = False
        self.setting_up = False
        self.again = {}               # {key: compute-task} asked for while stopped
        self.clients = set()          # clients taking small results straight
        self._one_client = (None,)    # the last 1-tuple of clients a task was given
        self.transition_log = None
        self.story_log = None
        self.observed = False         # changes of tasks' states are recorded
        self.stimulus = "start"       # the kind of event handled now
        self.clock = 0.0              # the shell's time of the events handled now
        self._seq = itertools.count()
        # {kind: handler}: the scheduler's messages and the shell's own events
        # (messages.KINDS, messages.SHELL_EVENTS)
        self.handlers = {name[4:].replace("_", "-"): getattr(self, name)
                         for name in dir(self) if name.startswith("_on_")}

    # ------------------------------------------------------------ entry point

    def handle(self, op, **kw):
        return self.handle_all(((op, kw),))

    def handle_all(self, events, now=0.0):
        """Events [(op, {argument: value})] one after another, as many `handle`s
        would, but with tasks started and fetches asked for once, after the last: a
        batch of "compute-task" or of results that arrived together costs one pass
        over the ready tasks, and the highest of them start first.  ``now``: the
        shell's clock, for `story_log`."""
        out = []
        errors = []
        handlers = self.handlers
        self.clock = now
        for op, kw in events:
            self.stimulus = op
            try:
                handlers[op](out, **kw)
            except Exception as e:
                errors.append((op, e))
        self._ensure_computing(out)
        self._ensure_communicating(out)
        if errors:
            raise EventsFailed(errors, out) from errors[0][1]
        if self.validating:
            self.validate()
        return out

    # ------------------------------------------------------------ scheduler ops

    def _on_compute_task(self, out, key, run_spec, priority=(0,), who_has=None,
                         nbytes=None, duration=None, want_data=False, confirm=False,
                         resources=None, clients=(), run_id=None):
        ts = self.tasks.get(key)
        if ts is None:
            ts = self.tasks[key] = WTask(key)
        elif ts.state == "executing" and ts.cancelled and run_spec != ts.run_spec:
            # Freed while it ran, and now another computation under the same key
            # (an explicit key= reused): what that run ends with is not this
            # task's result; the new one runs once it ends.
            ts.interrupted = True
        ts.computed = True
        ts.resources = resources or None
        ts.confirm = confirm
        ts.duration = duration
        ts.want_data = want_data
        ts.clients = self._clients_tuple(clients)
        ts.run_spec = run_spec
        ts.priority = tuple(priority)
        if ts.state == "executing":
            ts.cancelled = False             # freed then asked for again: keep it,
            if ts.interrupted:               # unless its run is not this task's:
                self.again[key] = dict(      # then again once that run ends
                    key=key, run_spec=run_spec, priority=priority, who_has=who_has,
                    nbytes=nbytes, duration=duration, want_data=want_data,
                    confirm=confirm, resources=resources, clients=clients,
                    run_id=run_id)
            else:
                ts.run_id = run_id           # the run under way answers this one
            return
        ts.run_id = run_id
        if ts.state == "memory":
            self._report(out, ts)
            return
        if ts.state in ("fetch", "flight", "missing"):
            # We were fetching it as a dependency; computing it ourselves wins.
            self._forget_flight(ts)
        if not who_has:                      # no inputs (most root tasks)
            ts.dependencies = ()
            ts.waiting_for = NO_KEYS
            self._make_ready(ts)
            return
        nbytes = nbytes or {}
        deps = []
        ts.waiting_for = set()
        for dkey, holders in who_has.items():
            dts = self.tasks.get(dkey)
            if dts is None:
                dts = self.tasks[dkey] = WTask(dkey)
            if dts.dependents is NO_KEYS:
                dts.dependents = set()
            dts.dependents.add(key)
            dts.nbytes = nbytes.get(dkey, dts.nbytes)
            deps.append(dts)
            if dts.state != "memory":
                ts.waiting_for.add(dkey)
                self._add_holders(dts, holders)
                if dts.state in ("released", "missing"):
                    self._fetch_or_missing(dts)
                    if dts.state == "missing":
                        out.append(Send({"op": "missing-data", "key": key, "dep": dkey,
                                         "holder": None}))
        ts.dependencies = tuple(deps)
        if ts.waiting_for:
            self._set_state(ts, "waiting")
        else:
            self._make_ready(ts)

    def _clients_tuple(self, clients):
        """``clients`` as a tuple: the one given last time when it holds the same
        one client (a map's tasks all name the client that made them)."""
        if len(clients) == 1 and clients[0] == self._one_client[0]:
            return self._one_client
        clients = tuple(clients)
        if len(clients) == 1:
            self._one_client = clients
        return clients

    def _report(self, out, ts):
        """Asked to compute a key already held here (a fetched copy): it is done."""
        ts.reported = True
        out.append(Send(_of_run(ts, {"op": "task-finished", "key": ts.key,
                                     "nbytes": ts.nbytes, "type": None})))

    def _make_ready(self, ts):
        if self.observed and ts.state != "waiting":
            self._set_state(ts, "waiting")    # observers see every task wait first
        self._set_state(ts, "ready" if ts.resources is None else "constrained")
        heapq.heappush(self.ready, (ts.priority, next(self._seq), ts.key))

    def _on_free_keys(self, out, keys):
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                self._drop_data(key)
                continue
            ts.computed = False
            ts.reported = False
            ts.replica = False
            if ts.state == "executing":
                ts.cancelled = True
                continue
            if ts.dependents and any(self.tasks.get(d) is not None
                                     and self.tasks[d].state in TO_RUN
                                     for d in ts.dependents):
                continue                     # still an input of a local task
            self._release(ts)

    def _release(self, ts):
        """Forget a task and, transitively, fetched inputs nobody here needs."""
        tasks = self.tasks
        stack = [ts]
        while stack:
            ts = stack.pop()
            key = ts.key
            if tasks.get(key) is not ts:
                continue
            del tasks[key]
            ts.ran = None
            if self.observed:
                self._record_forgotten(ts)
            self._forget_flight(ts)
            if ts.state == "memory" or key in self.nbytes:
                self._drop_data(key)
            for dts in ts.dependencies:
                dts.dependents.discard(ts.key)
                if not dts.dependents and not dts.computed and not dts.reported \
                        and dts.state != "executing" and not dts.replica:
                    stack.append(dts)
            for dkey in ts.dependents:
                d = self.tasks.get(dkey)
                if d is not None and d.state in TO_RUN:
                    if d.waiting_for is NO_KEYS:
                        d.waiting_for = set()
                    d.waiting_for.add(ts.key)

    def _add_holders(self, ts, holders):
        """``ts`` is held by ``holders`` (addresses; this worker's own left out)."""
        if ts.who_has is NO_KEYS:
            ts.who_has = set()
        ts.who_has.update(h for h in holders if h != self.address)

    def _forget_flight(self, ts):
        if ts.state == "flight":
            for peer, keys in self.in_flight.items():
                if ts.key in keys:
                    keys.remove(ts.key)      # the reply is ignored for this key

    def _drop_data(self, key):
        self.managed -= self.nbytes.pop(key, 0)
        try:
            del self.data[key]
        except KeyError:
            pass

    def _on_who_has(self, out, who_has):
        for key, holders in who_has.items():
            ts = self.tasks.get(key)
            if ts is None or ts.state == "memory":
                continue
            self._add_holders(ts, holders)
            if ts.state == "missing":
                self._fetch_or_missing(ts)

    def _on_worker_removed(self, out, address):
        """A peer died: fetches from it fail now rather than after a timeout."""
        self.unreachable.discard(address)
        for ts in self.tasks.values():
            ts.who_has.discard(address)
        for key in self.in_flight.pop(address, ()):
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "flight":
                self._retry_or_missing(out, ts, address)
        for key in list(self.fetching):
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "fetch" and not ts.who_has:
                self.fetching.discard(key)
                self._set_state(ts, "missing")
                self._missing(out, ts, address)

    def _on_put_data(self, out, data, sizes):
        keys = []
        for key, value in data.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WTask(key)
            self._store(ts, value, sizes[key][0])
            ts.reported = True
            keys.append((key, sizes[key][0], sizes[key][1]))
        out.append(Send({"op": "add-keys", "keys": keys}))

    def _on_restart(self, out):
        if self.observed:
            for ts in self.tasks.values():
                if ts.state != "executing":
                    self._record_forgotten(ts)
        for ts in self.tasks.values():       # no copies kept either (see `_drop`)
            ts.replica = False
        for key in self.unconfirmed:         # never handed to a thread: just forget
            self._stop_executing(key)
            self._drop(out, key)
        self.unconfirmed.clear()
        self.again.clear()
        for ts in self.tasks.values():
            if ts.state == "executing":
                ts.cancelled = True
        self.tasks = {ts.key: ts for ts in self.tasks.values() if ts.state == "executing"}
        self.ready.clear()
        self.constrained.clear()
        self.fetching.clear()
        self.in_flight.clear()
        self.unreachable.clear()
        self.nbytes.clear()
        self.managed = 0
        self.data.clear()

    def _on_steal_request(self, out, key):
        """The scheduler would rather run `key` on an idle worker: give it up unless it
        has started."""
        ts = self.tasks.get(key)
        state = ts.state if ts is not None else None
        released = state is None or state in TO_RUN
        if ts is not None and released:
            self._release(ts)
        out.append(Send({"op": "steal-response", "key": key, "released": released,
                         "state": state}))

    def _on_go(self, out, key):
        """The scheduler knows that `key` (started with "confirm") is running."""
        inst = self.unconfirmed.pop(key, None)
        if inst is None:
            return
        ts = self.tasks.get(key)
        if ts is None or ts.cancelled:       # freed meanwhile: no need to run it
            self._stop_executing(key)
            self._drop(out, key)
            return
        out.append(inst)

    # ------------------------------------------------------------ local events

    def _on_execute_success(self, out, key, value, nbytes, type=None, start=0.0,
                            stop=0.0, data=None, ran=None):
        self._ended(key)
        ts = self.tasks.get(key)
        if ts is None or ts.cancelled:
            self._drop(out, key)
            return
        if ts.interrupted:
            self._run_again(out, ts)
            return
        self._store(ts, value, nbytes)
        if ran is not None:
            ts.ran, ts.run_spec = ran, None    # the spec is not run again
        ts.reported = True
        msg = {"op": "task-finished", "key": key, "nbytes": nbytes, "type": type,
               "duration": stop - start, "start": start}
        if ts.run_id is not None:
            msg["run_id"] = ts.run_id
        if data is not None:
            msg["data"] = data
            # Straight to the clients waiting for it that can take it, before the
            # scheduler hears of it: it then lists them, so as not to send it again.
            # Only when nothing else waits to run here: a hop saved matters to a
            # client waiting on this result, while behind a queue of tasks the
            # batches through the scheduler cost every process less.
            direct = () if self.ready else [c for c in ts.clients if c in self.clients]
            if direct:
                result = {"op": "task-result", "key": key, "data": data, "type": type,
                          "nbytes": nbytes}
                out.extend(ToClient(c, result) for c in direct)
                msg["direct"] = direct
        out.append(Send(msg))
        if ts.dependencies:
            self._done_with_inputs(ts)

    def _on_execute_failure(self, out, key, error, start=0.0, stop=0.0):
        self._give_back(out, key, {"op": "task-erred", "key": key, **error}, "error")

    def _on_execute_reschedule(self, out, key, start=0.0, stop=0.0):
        """The task raised `Reschedule`: the scheduler places it again."""
        self._give_back(out, key, {"op": "reschedule", "key": key}, "rescheduled")

    def _give_back(self, out, key, msg, state):
        """A task that ended without a result: the scheduler hears ``msg``, and the
        task (in ``state`` for a moment) and the inputs it held are let go here: the
        scheduler keeps the error."""
        self._ended(key)
        ts = self.tasks.get(key)
        if ts is None or ts.cancelled:
            self._drop(out, key)
            return
        if ts.interrupted:
            self._run_again(out, ts)
            return
        out.append(Send(_of_run(ts, msg)))
        self._set_state(ts, state)
        ts.computed = False
        self._done_with_inputs(ts)
        self._release(ts)

    def _ended(self, key):
        self._stop_executing(key)
        if self.seceded:
            self.seceded.discard(key)
            if key in self.rejoining:     # a task cannot end while it waits to rejoin
                self.rejoining.remove(key)

    def _on_client_subscribed(self, out, client):
        self.clients.add(client)

    def _on_client_gone(self, out, client):
        self.clients.discard(client)

    # ------------------------------------------------------------ tasks that wait

    def _on_secede(self, out, key):
        """A running task waits for other work (its own sub-tasks, say): its thread
        slot is free for another task; it still runs, and its result is still to
        come.  The scheduler hears of it and counts the slot free too."""
        ts = self.tasks.get(key)
        if ts is None or ts.state != "executing" or key not in self.executing:
            return
        # A short task seceding is a long one after all.  Its resources stay held:
        # it still runs, and may use them.
        self.executing.discard(key)
        self.short.discard(key)
        self.seceded.add(key)
        out.append(Send(_of_run(ts, {"op": "task-seceded", "key": key})))

    def _on_rejoin(self, out, key):
        """A seceded task wants a thread slot again: it gets one as soon as one is
        free, before any task waiting to start (`_ensure_computing`)."""
        if key in self.seceded and key not in self.rejoining:
            self.rejoining.append(key)

    def _drop(self, out, key):
        """A task the scheduler released ends here without a result: tell it that the
        thread the task held is free again, and forget the task."""
        out.append(Send({"op": "task-dropped", "key": key}))
        self.again.pop(key, None)
        ts = self.tasks.get(key)
        if ts is not None:
            ts.interrupted = False
            self._set_state(ts, "released")
            if ts.replica:
                # The scheduler asked for a copy after freeing the run (rebalance,
                # replicate, retire): fetched as asked, else it would wait for an
                # "add-keys" or "missing-data" that never comes.
                ts.cancelled = False
                self._retry_or_missing(out, ts, None)
            else:
                self._release(ts)

    def _run_again(self, out, ts):
        """A run stopped for memory ended, and the scheduler has asked for the task
        again meanwhile: that run's thread is free, and the task waits for its turn."""
        ts.interrupted = False
        out.append(Send({"op": "task-dropped", "key": ts.key}))
        request = self.again.pop(ts.key, None)
        self._done_with_inputs(ts)
        self._set_state(ts, "released")
        if request is None:
            self._release(ts)
        else:
            self._on_compute_task(out, **request)

    # ------------------------------------------------------------ memory

    def _on_pause(self, out):
        """Memory passed the pause fraction: start nothing new."""
        self.paused = True

    def _on_resume(self, out):
        self.paused = False

    # ------------------------------------------------------------ plugins

    def _on_plugins_busy(self, out):
        """Worker plugins are being set up or torn down: start nothing new."""
        self.setting_up = True

    def _on_plugins_done(self, out):
        self.setting_up = False

    def _on_memory_exceeded(self, out, keys, rss, limit, action):
        """Memory passed the terminate fraction while ``keys`` ran: they are being
        stopped (``action`` "interrupt") or the worker is about to exit ("exit").
        The scheduler decides what happens to them; whatever their runs end with is
        dropped here."""
        stopped = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "executing" and not ts.interrupted:
                ts.interrupted = True
                ts.cancelled = True
                stopped.append(key)
        out.append(Send({"op": "memory-exceeded", "keys": stopped, "rss": rss,
                         "limit": limit, "action": action}))

    def _done_with_inputs(self, ts):
        for dts in ts.dependencies:
            dts.dependents.discard(ts.key)
            if not dts.dependents and not dts.reported and not dts.computed \
                    and not dts.replica:
                self._release(dts)
        ts.dependencies = ()

    def _store(self, ts, value, nbytes):
        # The size first: a store that weighs its values (SpillStore.sizes) reads
        # it there rather than measuring the value again.
        key = ts.key
        self.managed += nbytes - self.nbytes.get(key, 0)
        self.nbytes[key] = nbytes
        self.data[key] = value
        ts.nbytes = nbytes
        self._set_state(ts, "memory")
        if ts.who_has:
            ts.who_has.clear()
        for dkey in ts.dependents:
            d = self.tasks.get(dkey)
            if d is not None and d.state == "waiting":
                d.waiting_for.discard(ts.key)
                if not d.waiting_for:
                    self._make_ready(d)

    def _on_gather_done(self, out, peer, data, sizes, missing=(), errors=None):
        """A peer (or the relay) answered: the values it sent, keys it did not have,
        and keys it could not send or the relay forward ({key: error})."""
        keys = self.in_flight.pop(peer, [])
        copies = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state != "flight":
                continue
            if key in data:
                self._store(ts, data[key], sizes.get(key, 0))
                if ts.replica:
                    copies.append(self._keep_copy(ts))
            elif errors and key in errors:
                self._give_up_dependents(out, ts, errors[key])
            elif peer == RELAY:
                # The scheduler found no holder with it and knows that already.
                ts.who_has.clear()
                self._missing(out, ts, None)
            else:
                ts.who_has.discard(peer)
                self._retry_or_missing(out, ts, peer)
        if copies:
            out.append(Send({"op": "add-keys", "keys": copies}))

    def _keep_copy(self, ts):
        """A copy the scheduler asked for is here: kept, and reported as
        (key, bytes, type) for "add-keys" (the type is known where it was made)."""
        ts.replica = False
        ts.reported = True
        return (ts.key, ts.nbytes, None)

    def _on_acquire_replicas(self, out, who_has, nbytes=None):
        """Keep copies of these keys (the scheduler moves data): fetch each from its
        holders, then report it ("add-keys") as any key kept here.  A copy no holder
        had is reported as "missing-data" without a task."""
        nbytes = nbytes or {}
        copies = []
        for key, holders in who_has.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WTask(key)
            ts.replica = True
            if ts.state == "memory":
                copies.append(self._keep_copy(ts))
                continue
            ts.nbytes = nbytes.get(key, ts.nbytes)
            self._add_holders(ts, holders)
            if ts.state in ("released", "missing"):
                self._retry_or_missing(out, ts, None)
        if copies:
            out.append(Send({"op": "add-keys", "keys": copies}))

    def _on_gather_failed(self, out, peer):
        """No answer from ``peer`` (or the relay) in time, or the relay's streams
        failed: fetch those keys again."""
        for key in self.in_flight.pop(peer, ()):
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "flight":
                self._set_state(ts, "fetch")
                self.fetching.add(key)

    def _on_peer_unreachable(self, out, peer):
        """``peer`` did not connect or did not answer in time: its data comes through
        the scheduler from now on, and the scheduler hears of it (placement avoids the
        pair)."""
        if peer not in self.unreachable:
            self.unreachable.add(peer)
            out.append(Send({"op": "peer-unreachable", "address": peer}))
        self._on_gather_failed(out, peer)

    def _on_peer_reachable(self, out, peer):
        if peer in self.unreachable:
            self.unreachable.discard(peer)
            out.append(Send({"op": "peer-reachable", "address": peer}))

    def _give_up_dependents(self, out, ts, error):
        """An input cannot be brought here (its holder could not pickle it, or the
        relay could not carry it): every local task waiting for it is given back, for
        the scheduler to run where the input is ("input-unmovable")."""
        for dkey in list(ts.dependents):
            d = self.tasks.get(dkey)
            if d is None or d.state not in TO_RUN:
                continue
            out.append(Send(_of_run(d, {"op": "input-unmovable", "key": dkey,
                                        "dep": ts.key, **error})))
            self._set_state(d, "released")
            d.computed = False
            self._done_with_inputs(d)
            self._release(d)
        if ts.replica:
            ts.replica = False
            out.append(Send({"op": "missing-data", "key": None, "dep": ts.key,
                             "holder": None}))
        if self.tasks.get(ts.key) is ts and ts.state == "flight":
            self._set_state(ts, "released")
            self._release(ts)

    def _fetch_or_missing(self, ts):
        if ts.who_has:
            self._set_state(ts, "fetch")
            self.fetching.add(ts.key)
        else:
            self._set_state(ts, "missing")

    def _retry_or_missing(self, out, ts, peer):
        self._fetch_or_missing(ts)
        if ts.state == "missing":
            self._missing(out, ts, peer)

    def _missing(self, out, ts, peer):
        self._set_state(ts, "missing")
        for dkey in ts.dependents:
            out.append(Send({"op": "missing-data", "key": dkey, "dep": ts.key,
                             "holder": peer}))
        if ts.replica:
            ts.replica = False
            out.append(Send({"op": "missing-data", "key": None, "dep": ts.key,
                             "holder": peer}))
            if not ts.dependents and not ts.computed:
                self._release(ts)

    # ------------------------------------------------------------ scheduling

    def _ensure_computing(self, out):
        """Start ready tasks, highest priority first.  Tasks known to be tiny are
        handed to the pool a few at a time, so the pool runs them back to back
        instead of waiting for this thread between each; others one per thread,
        announced with "task-started" (the scheduler blames those when a worker dies).
        Tiny tasks go to the pool only while a thread is free of longer tasks: in
        the pool's queue they cannot be given to another worker, and would wait
        behind a task that may run for long.  A task needing resources starts once
        the running ones leave enough of them free; until then lower ones may go.
        """
        while self.rejoining and len(self.executing) < self.nthreads:
            # Even while paused: the task runs already and waits on this slot.
            key = self.rejoining.pop(0)
            self.seceded.discard(key)
            self.executing.add(key)
            out.append(Send(_of_run(self.tasks.get(key),
                                    {"op": "task-rejoined", "key": key})))
            out.append(Rejoin(key))
        if self.paused or self.setting_up or self.rejoining:
            return
        ready, tasks, executing = self.ready, self.tasks, self.executing
        nthreads, data = self.nthreads, self.data
        while ready:
            ts = tasks.get(ready[0][2])
            if ts is None or ts.state != "ready" and ts.state != "constrained":
                heapq.heappop(ready)
                continue
            short = ts.duration is not None and ts.duration < SHORT_TASK
            if short:
                held = len(executing) - len(self.short)   # by longer tasks
                free = nthreads - held
                limit = held + free * PREFETCH if free > 0 else 0
            else:
                limit = nthreads
            if len(executing) >= limit:
                return
            entry = heapq.heappop(ready)
            if ts.resources is not None and not self._take_resources(ts):
                heapq.heappush(self.constrained, entry)
                continue
            self._set_state(ts, "executing")
            ts.cancelled = False
            key = ts.key
            executing.add(key)
            if short:
                self.short.add(key)
            inputs = ({d.key: data[d.key] for d in ts.dependencies} if ts.dependencies
                      else {})
            run = Execute(key, ts.run_spec, inputs, ts.want_data)
            if ts.confirm:
                # It was running on a worker that died.  It runs once the scheduler
                # has seen "task-started", so that if it kills this worker too, the
                # scheduler knows for sure which task to blame.  Its inputs are taken
                # now: once started, nothing here keeps them.
                self.unconfirmed[ts.key] = run
                out.append(Send(_of_run(ts, {"op": "task-started", "key": ts.key,
                                             "confirm": True})))
                continue
            if not short:
                out.append(Send(_of_run(ts, {"op": "task-started", "key": ts.key})))
            out.append(run)

    def _on_long_running(self, out, keys):
        """Tasks that were started as tiny (unannounced, with more tiny ones let into
        the pool behind them) run long: the scheduler hears that they run, and they
        hold their threads like any long task."""
        for key in keys:
            if key in self.short:
                self.short.discard(key)
                out.append(Send(_of_run(self.tasks.get(key),
                                        {"op": "task-started", "key": key})))

    def _take_resources(self, ts):
        """Hold what ``ts`` needs while it runs, if that much is free."""
        need = ts.resources
        available = self.available
        if any(available.get(name, 0) < amount for name, amount in need.items()):
            return False
        for name, amount in need.items():
            available[name] -= amount
        self.holding[ts.key] = need
        return True

    def _stop_executing(self, key):
        """``key`` no longer runs here: its thread and its resources are free, and
        tasks that waited for those resources are ready again."""
        self.executing.discard(key)
        self.short.discard(key)
        if not self.holding:
            return
        need = self.holding.pop(key, None)
        if need is None:
            return
        for name, amount in need.items():
            self.available[name] += amount
        while self.constrained:
            heapq.heappush(self.ready, heapq.heappop(self.constrained))

    def _ensure_communicating(self, out):
        """Ask peers for the inputs to fetch: one request per peer, each of at
        most `REQUEST_BYTES`, and all in flight at most ``transfer_limit`` bytes
        (as the scheduler sized them); one input is always asked for when nothing
        is in flight, however large.  A peer reads what it is asked for into memory
        to send it, and this worker receives it there: unbounded, a few stolen
        tasks' inputs could take either past its limit."""
        if self.paused or not self.fetching:
            return
        room = (float("inf") if self.transfer_limit is None
                else self.transfer_limit - self.in_flight_bytes())
        wanted = {}
        sizes = {}
        relay = []
        for key in list(self.fetching):
            ts = self.tasks.get(key)
            if ts is None or ts.state != "fetch":
                self.fetching.discard(key)
                continue
            direct = (ts.who_has if not self.unreachable else
                      [p for p in ts.who_has if p not in self.unreachable])
            if not direct:
                peer = RELAY
                if RELAY in self.in_flight:
                    continue
            else:
                idle = [p for p in direct if p not in self.in_flight]
                if not idle:
                    continue
                peer = min(idle, key=lambda p: sizes.get(p, 0))
            size = max(ts.nbytes, 0)
            if (size > room or sizes.get(peer, 0) + size > REQUEST_BYTES) and (
                    self.in_flight or wanted or relay):
                continue
            room -= size
            sizes[peer] = sizes.get(peer, 0) + size
            (relay if peer == RELAY else wanted.setdefault(peer, [])).append(ts)
        if relay:
            wanted[RELAY] = relay
        for peer, tss in wanted.items():
            for ts in tss:
                self._set_state(ts, "flight")
                self.fetching.discard(ts.key)
            keys = [ts.key for ts in tss]
            self.in_flight[peer] = keys
            out.append(GatherDep(peer, list(keys)))

    # ------------------------------------------------------------ observers

    def observe_transitions(self):
        """Record every change of a task's state in `transition_log` from now on, as
        (key, start, finish); a task dropped goes through "released" to "forgotten"
        (for worker plugins; the shell takes the log after each event)."""
        if self.transition_log is None:
            self.transition_log = []
            self.observed = True

    def ignore_transitions(self):
        """No `transition_log` from now on (no plugin watches)."""
        self.transition_log = None
        self.observed = self.story_log is not None

    def keep_story(self, length):
        """Keep the latest ``length`` changes of tasks' states in `story_log`, for
        `story`."""
        self.story_log = deque(maxlen=length)
        self.observed = True

    def story(self, *keys_or_stimuli):
        """What `story_log` holds of these keys and stimulus ids, oldest first, in the
        shape of dask.distributed's worker log: [(key, start, state asked for, state
        reached, recommendations, stimulus_id, time)]; a state here is set, not
        recommended, so the two states are the same and there are no
        recommendations.  Any thread may ask."""
        return [(key, start, finish, finish, recs, stimulus_id, when)
                for key, start, finish, recs, stimulus_id, when
                in stories.story(self.story_log or (), None, keys_or_stimuli)]

    def _set_state(self, ts, state):
        """The one way a task's state changes (a new task starts "released"): the
        change is recorded if anyone observes."""
        if self.observed and ts.state != state:
            self._record(ts.key, ts.state, state)
        ts.state = state

    def _record_forgotten(self, ts):
        """``ts`` is dropped: observers see it released (unless it was), then
        forgotten."""
        if ts.state != "released":
            self._record(ts.key, ts.state, "released")
        self._record(ts.key, "released", "forgotten")

    def _record(self, key, start, finish):
        if self.transition_log is not None:
            self.transition_log.append((key, start, finish))
        if self.story_log is not None:
            self.story_log.append((key, start, finish, self.stimulus, self.clock))

    def take_transitions(self):
        out = list(self.transition_log)
        self.transition_log.clear()
        return out

    # ------------------------------------------------------------ views

    @property
    def executing_count(self):
        """Tasks running on the task threads now (dask.distributed's name)."""
        return len(self.executing)

    def task_counts(self):
        """{state: how many tasks here are in it}, of the states some task is in
        (counted when asked, once a heartbeat: not kept up on every transition)."""
        return dict(Counter(ts.state for ts in self.tasks.values()))

    def in_flight_bytes(self):
        """Bytes (as the scheduler sized them) of the data asked of peers now."""
        return sum(self.tasks[key].nbytes for keys in self.in_flight.values()
                   for key in keys if key in self.tasks)

    def get_data(self, keys):
        found, missing = {}, []
        for key in keys:
            try:
                found[key] = self.data[key]
            except KeyError:
                missing.append(key)
        return found, missing

    def validate(self):
        assert len(self.executing) <= self.nthreads * PREFETCH
        assert set(self.unconfirmed) <= self.executing
        for key, ts in self.tasks.items():
            assert ts.key == key
            if ts.state == "memory":
                assert key in self.data, ts
            else:
                assert ts.ran is None, ts
            if ts.state == "waiting":
                assert ts.waiting_for, ts
                for dkey in ts.waiting_for:
                    assert self.tasks[dkey].state != "memory", (ts, dkey)
            if ts.state == "executing":
                assert (key in self.executing) != (key in self.seceded), ts
            if ts.state == "fetch":
                assert key in self.fetching, ts
            if ts.state == "flight":
                assert any(key in keys for keys in self.in_flight.values()), ts
        for key in self.executing | self.seceded:
            assert self.tasks[key].state == "executing", key
        assert self.short <= self.executing
        assert set(self.holding) <= self.executing | self.seceded
        for name, total in self.resources.items():
            held = sum(need.get(name, 0) for need in self.holding.values())
            assert abs(self.available[name] + held - total) < 1e-9, (name, held)
            assert self.available[name] >= -1e-9, (name, self.available)
        assert set(self.rejoining) <= self.seceded, (self.rejoining, self.seceded)
        assert len(set(self.rejoining)) == len(self.rejoining), self.rejoining
        assert self.managed == sum(self.nbytes.values()), (self.managed, self.nbytes)
        for ts in self.tasks.values():
            assert not ts.interrupted or ts.state == "executing", ts
