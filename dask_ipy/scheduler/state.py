"""The scheduler's state machine: all task, worker and client state, and no I/O.

Messages go in (`handle_worker_messages`, `handle_client_message`, `add_worker`,
`remove_worker`, `add_client`, `remove_client`, `check_heartbeats`); messages for
workers and clients come out in `outbox` as ``(kind, id, msg)`` with kind "worker" or
"client", and orders for the shell's relay of large values (bulk.py) as ``("relay",
ticket, sizes)``: let through a stream a worker announced with those frame sizes (for
a client's gather, or for a worker that cannot reach the holder), or, with sizes None,
give it up.  Nothing here touches a socket, a thread or a clock: time arrives as an
argument.  User data and functions are `Serialized` blobs the scheduler forwards and
never opens.

Task states and what holds them::

    released ──▶ waiting ──▶ queued ──▶ processing ──▶ memory
        ▲          │           │  no-worker ─┘   │          │
        └──────────┴───────────┴─────────────────┴─▶ erred  ▼
                                                       forgotten (deleted)

State, documented once:

    tasks:      {key: TaskState}
    workers:    {worker_id: WorkerRecord}     by_address: {address: WorkerRecord}
    clients:    {client_id: ClientRecord}
    queued:     `RootQueue` of (priority, seq, TaskState); entries whose task has left
                the "queued" state are skipped when popped
    TaskState.dependencies: (TaskState,)     .dependents: {TaskState}
    TaskState.waiting_on:   {TaskState}      dependencies not yet in memory
    TaskState.waiters:      {TaskState}      dependents that still need this result
    TaskState.who_has:      {WorkerRecord}   .who_wants: {client_id | holder}
                            a holder keeps keys wanted with no client: a published
                            dataset, ("dataset", name), FIRE_AND_FORGET, which
                            holds a task only until it ends (in memory or erred),
                            or ("task", key), a task whose arguments carry Futures
                            of these keys, until it ends (`task_holds`)
                            these five "sets" are EMPTY, a tuple or a set: change
                            them only with `_add` and `_discard` (or set EMPTY);
                            waiting_on may be the dependencies tuple itself
    TaskState.data:         a small result (opaque Serialized) the worker sent with
                            "task-finished" because a client wants it: gathers of it
                            are answered without asking the worker, and the clients
                            it did not reach straight get it with "key-in-memory"
    TaskState.direct:       (client id,) the clients the worker sent that small result
                            to straight ("task-result"): they hear nothing of the key
                            from here (no "key-in-memory"; a gather of theirs lists it
                            as "direct", and one that only waited for such keys has
                            no answer), unless they asked (`ClientRecord.reports`);
                            never a client `ClientRecord.wary` of that worker
    parked:     {key: gather id, or {gather id} when several}  gathers waiting for
                keys to finish, so a client's `result()` costs one request (one
                gather waits for most keys: its id alone is no object to collect);
                a client's gather sent with "direct" ends unanswered when that
                client releases a key it waits for (`_drop_gathers`)
    steals:     {key: (victim, thief)}  steal requests not answered yet; ended when
                the task leaves the victim (thief None: nobody waits for it)
    WorkerRecord.processing: {TaskState: estimated duration}
    WorkerRecord.executing:  {TaskState}  of those, the ones known to have started
    WorkerRecord.seceded:    {TaskState}  of those, tasks that gave their thread back
                             to wait for other work (`secede`): still processing (their
                             result is to come) but counted for no thread and no
                             occupancy (estimated duration 0) until they rejoin
    WorkerRecord.stale:      {key: estimated duration}  tasks released while running
                             there: their threads stay busy until the worker says so
    WorkerRecord.has_what:   {TaskState}
    WorkerRecord.stealing:   int  entries of `steals` whose thief it is (a steal pass
                             counts them without walking every steal in flight)
    WorkerRecord.unreachable: {WorkerRecord}  peers it could not connect to: it gets
                             their data through the scheduler ("relay"), and placement
                             avoids the pair
    WorkerRecord.status:     "running"; "paused" (its memory passed the pause
                             fraction: nothing new is placed there, its queued tasks
                             may be stolen, it still serves its data); or
                             "closing_gracefully" while it retires (no new tasks; its
                             data moves to the others, paused or not); "closed" once
                             removed.  paused_since (None: not paused, whatever the
                             status) and time_paused (seconds, ended pauses) say for
                             how long its memory has kept it paused
    memory_failures: {key: text}  why a task was last stopped for memory
    lost:       {token: Held(address, pid, reason, note, keys)}  supervised workers (by
                the token their supervisor gave them) whose connection was lost while
                tasks ran there for the last time they may:
                those tasks wait in "released" (nothing recommends them on) for the
                supervisor's word on how the process ended (`worker_died`), or for
                the shell's bounded wait to end (`death_unexplained`); then they err
                with that word, or with ``reason`` ("connection lost"); ``note``: its
                memory at its last heartbeat if that was high, said after either
    moves:      {move id: moves.Move}  data being moved between workers (retire,
                replicate, rebalance), see moves.py
    indirect:   {key: {client id}}     clients that take no value of the key straight
                from a worker (their graph said so: one of an earlier run of the key
                could come that way): the worker is not told of them
    task_holds: {task key: [key]}      keys a task holds until it ends (Futures of
                them travel inside its arguments: `_hold_for_tasks`)
    run_count:  the run id of the latest "compute-task"; each names its run, and a
                worker's word on a task names the run it is about (`_is_current`)
    worker_plugins: {name: Serialized}  set-up code every worker gets, when it joins
                and when it restarts; opaque here
    plugin_events:  [event] for the scheduler's plugins, which its shell runs (None
                when there are none): ("transition", key, start, finish) or, for a
                task that ended on a worker, ("transition", key, start, finish,
                {keyword: value}) (`_ended_on`),
                ("add_worker", address), ("remove_worker", address), ("add_client",
                id), ("remove_client", id), ("update_graph", client, keys, tasks,
                annotations, {key: priority}),
                ("restart",), ("log_event", topic, msg)
    transition_log: deque of the latest transitions (None: kept off), oldest first:
                (key, start, finish, stimulus, clock); the stimulus is the kind of
                message (or event: "add-worker", "remove-worker", "remove-client")
                that caused it (see stories.py)
    transition_recs: deque beside it: the recommendations {key: state} of each, or
                None (apart: a tuple holding a dict stays tracked by the garbage
                collector, which would then walk every entry again and again)

Transitions are a table ``{(start, finish): method}``; each method returns
recommendations ``{key: finish}`` which `transitions` applies until none remain.
A task changes state only in those methods (with ``validate`` on, `_set_state`
refuses anywhere else); only `restart` drops every task at once.  `validate()`
checks the invariants; tests switch it on after every transition.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque, namedtuple
from operator import attrgetter

from ..errors import ERROR_TYPES, error_info
from ..keys import key_prefix, key_split
from ..messages import log_event_fields
from ..units import format_bytes
from ..protocol import Serialized
from .. import stories
from .coordination import Coordination, Reply, Want
from .moves import Move, plan_rebalance, plan_replicas, plan_retirement

RELEASED = "released"
WAITING = "waiting"
QUEUED = "queued"
NO_WORKER = "no-worker"
PROCESSING = "processing"
MEMORY = "memory"
ERRED = "erred"
FORGOTTEN = "forgotten"

ALL_STATES = (RELEASED, WAITING, QUEUED, NO_WORKER, PROCESSING, MEMORY, ERRED)

RUNNING = "running"                        # worker statuses
PAUSED = "paused"                          # memory: nothing new starts there
CLOSING_GRACEFULLY = "closing_gracefully"  # retiring: no new tasks, data moves off
CLOSED = "closed"

# The holder of `fire_and_forget`'s keys in who_wants (no client id is a tuple).
FIRE_AND_FORGET = ("fire-and-forget",)

UNKNOWN_DURATION = 0.5     # seconds a task of a group never measured is expected to
                           # take (``distributed.scheduler.unknown-task-duration``)
# {task prefix: seconds} for groups never measured, dask.distributed's defaults of
# ``distributed.scheduler.default-task-durations``: tasks that only cut their input
# into pieces.  A shell's settings are added to these.
TASK_DURATIONS = {"rechunk-split": 1e-6, "split-shuffle": 1e-6,
                  "split-taskshuffle": 1e-6, "split-stage": 1e-6}


#: The tasks a lost supervised worker's death would end, waiting for its
#: supervisor's word (`SchedulerState.lost`): ``reason`` how it was lost, ``note``
#: its memory at its last heartbeat if high (said after any reason).
Held = namedtuple("Held", "address pid reason note keys")


class InvalidTransition(RuntimeError):
    pass


class TaskGroup:
    """Tasks sharing a key prefix: progress counts and a running duration estimate."""

    __slots__ = ("name", "states", "total", "done", "erred", "duration", "expected",
                 "nbytes", "seq")

    def __init__(self, name, seq, expected=UNKNOWN_DURATION):
        self.name = name
        self.seq = seq
        self.expected = expected   # seconds a task takes until one has been measured
        self.states = dict.fromkeys(ALL_STATES, 0)
        self.total = 0          # tasks ever added to the group
        self.done = 0           # tasks that reached memory (once each)
        self.erred = 0
        self.duration = None    # exponentially weighted mean, seconds
        self.nbytes = 0         # of a result: exponentially weighted mean; 0 unknown

    @property
    def live(self):
        return sum(self.states.values())

    @property
    def estimate(self):
        """Seconds a task of the group is expected to run: the measured mean, else
        `expected`."""
        return self.expected if self.duration is None else self.duration

    def add_duration(self, seconds):
        if self.duration is None:
            self.duration = seconds
        else:
            self.duration = 0.8 * self.duration + 0.2 * seconds

    def add_nbytes(self, nbytes):
        if not isinstance(nbytes, (int, float)) or nbytes < 0:
            return                          # a worker's message without a usable size
        self.nbytes = nbytes if not self.nbytes else 0.8 * self.nbytes + 0.2 * nbytes


class _NoneYet(frozenset):
    """The shared empty set a TaskState starts with: a task holds a container only
    once something is added (see `_add`), which halves the scheduler's memory per
    task on large graphs.  Removing from it is a no-op."""

    def discard(self, item):
        pass

    def clear(self):
        pass


EMPTY = _NoneYet()


def _add(ts, name, item, alone=None):
    """Add ``item`` to the set attribute ``name`` of ``ts``.

    Such a set is EMPTY, then a 1-tuple, then a real set once a second item comes:
    most tasks of a large graph have one dependent, one waiter, one holder and at
    most one wanter, and a 1-tuple takes 48 bytes where a one-item set takes 216.
    A tuple is read like a set (iteration, ``in``, ``len``, truth) but never
    changes: `_add` and `_discard` put another in its place.  (It does not compare
    equal to a set: compare ``set(ts.who_has)``.)  So tasks may share one: ``alone``
    is ``(item,)``, made once for many tasks (a client wanting a graph's keys, a
    worker holding results).  A longer tuple is a task's dependencies, all waited
    for (`_released_waiting`)."""
    items = getattr(ts, name)
    if items is EMPTY:
        setattr(ts, name, (item,) if alone is None else alone)
    elif type(items) is tuple:
        if item not in items:
            setattr(ts, name, {*items, item})
    else:
        items.add(item)


def _discard(ts, name, item):
    """Remove ``item`` from the set attribute ``name`` of ``ts``, if there."""
    items = getattr(ts, name)
    if type(items) is tuple:
        if len(items) == 1:
            old = items[0]
            if old is item or old == item:
                setattr(ts, name, EMPTY)
        elif item in items:
            # Once, from a task's dependencies: a set from now on (or what is left).
            rest = {x for x in items if x is not item and x != item}
            setattr(ts, name, EMPTY if not rest else (*rest,) if len(rest) == 1 else rest)
    else:
        items.discard(item)


class TaskState:
    __slots__ = (
        "key", "run_spec", "state", "priority", "group",
        "dependencies", "dependents", "waiting_on", "waiters",
        "who_has", "who_wants", "processing_on", "nbytes", "type",
        "retries", "suspicious", "restrictions", "loose", "resources", "error",
        "done_once", "data", "direct", "run_id",
    )

    def __init__(self, key, run_spec, group):
        self.key = key
        self.run_spec = run_spec
        self.state = RELEASED
        self.priority = (0,)
        self.group = group
        self.dependencies = ()
        self.dependents = EMPTY
        self.waiting_on = EMPTY
        self.waiters = EMPTY
        self.who_has = EMPTY
        self.who_wants = EMPTY
        self.processing_on = None
        self.nbytes = -1
        self.type = None
        self.retries = 0
        self.suspicious = 0
        self.restrictions = None     # frozenset of worker addresses, or None
        self.loose = False           # restrictions are a preference (allow_other_workers)
        self.resources = None        # {resource: amount} a worker must have, or None
        self.error = None            # dict sent to clients when erred
        self.done_once = False
        self.data = None             # small result (Serialized) sent along by the worker
        self.direct = ()             # clients the worker sent it to straight
        self.run_id = 0              # of its latest "compute-task" (`_is_current`)

    def __repr__(self):
        return f"<TaskState {self.key!r} {self.state}>"

    def __lt__(self, other):         # heap ties
        return self.priority < other.priority


class WorkerRecord:
    __slots__ = ("id", "address", "name", "host", "ip", "pid", "nthreads", "memory_limit",
                 "processing", "executing", "seceded", "stale", "has_what", "occupancy",
                 "nbytes", "last_seen", "metrics", "since", "_status", "unreachable",
                 "memory_fractions", "paused_since", "time_paused", "shares_host",
                 "resources", "local_directory", "streams", "alone", "stealing",
                 "supervised")

    # Bumped by every change of any worker's status: the scheduler's cached list of
    # running workers is rebuilt only after one (placement must not walk every
    # worker for every task on a large cluster).
    status_changes = 0

    def __init__(self, id, address, nthreads=1, name=None, host="", pid=None,
                 memory_limit=0, now=0.0, resources=None):
        self.id = id
        self.address = address
        self.name = name if name is not None else address
        self.host = host                 # the machine's name, as the worker tells it
        self.ip = None                   # the host in its address (from the shell)
        self.pid = pid
        self.nthreads = max(int(nthreads), 1)
        self.memory_limit = memory_limit
        self.processing = {}
        self.executing = set()
        self.seceded = set()
        # {key: expected duration} of tasks released while they ran here: each holds a
        # thread (and its share of occupancy) until the worker says it has finished.
        self.stale = {}
        self.has_what = set()
        self.unreachable = set()
        self.occupancy = 0.0
        self.nbytes = 0
        self.last_seen = now
        self.since = now
        self.metrics = {}
        self.status = RUNNING
        self.memory_fractions = None     # {target, spill, pause, terminate}, as told
        self.paused_since = None
        self.time_paused = 0.0
        self.shares_host = False         # its limits are shares of its host's
        # {resource: amount} it has in all; the worker itself runs at once only the
        # tasks whose needs fit in what its running tasks leave
        self.resources = dict(resources or {})
        self.local_directory = None      # its working directory, as told
        self.supervised = None           # its supervisor's token: it tells how the
                                         # process ended (`worker_died`)
        self.streams = deque(maxlen=STREAMS_KEPT)  # relay tickets it is an end of
        self.alone = (self,)             # who_has of the tasks it alone holds (_add)
        self.stealing = 0                # steal requests in flight for it

    @property
    def status(self):
        return self._status

    @status.setter
    def status(self, value):
        self._status = value
        WorkerRecord.status_changes += 1

    def __repr__(self):
        return f"<WorkerRecord {self.address} processing={len(self.processing)}>"

    def known_as(self, names):
        """Is this worker named in ``names`` (by address, name, host name or the
        host of its address, as a user of dask.distributed may name it)?"""
        return self.address in names or str(self.name) in names \
            or self.host in names or self.ip in names


class ClientRecord:
    """A client.  ``reports``: {TaskState} of `wants_what` whose end it asked to
    hear of even if the value goes to it straight ("report-keys"), to confirm keys
    it has (its questions about the cluster wait for that).  ``wary``: {worker
    address} whose connection to it dropped once: whether what such a worker sends
    it straight arrives is unknown, so it is told of those values as of values that
    did not go straight (its connection made again, and a send into the dropped
    one, cannot be told apart)."""

    __slots__ = ("id", "wants_what", "monitor", "paused_warning", "warned", "streams",
                 "reports", "wary")

    def __init__(self, id):
        self.id = id
        self.wants_what = set()
        self.reports = set()
        self.wary = set()
        self.monitor = False
        self.paused_warning = None    # seconds: warn of workers paused longer
        self.warned = set()           # {(worker id, paused since)} warned of
        self.streams = deque(maxlen=STREAMS_KEPT)  # relay tickets it is an end of


class RootQueue:
    """Queued root tasks, taken in priority order: entries (priority, seq, TaskState).

    A graph's tasks are queued in priority order, and most after every task already
    queued: those go to the end of a sorted deque and leave from its front at no
    cost; the others (a graph of higher priority) go to a heap.  The smaller of the
    two fronts is taken first, so the order is a single heap's."""

    __slots__ = ("in_order", "heap")

    def __init__(self):
        self.in_order = deque()
        self.heap = []

    def __len__(self):
        return len(self.in_order) + len(self.heap)

    def __iter__(self):
        return itertools.chain(self.in_order, self.heap)

    def push(self, entry):
        in_order = self.in_order
        if not in_order or in_order[-1] < entry:
            in_order.append(entry)
        else:
            heapq.heappush(self.heap, entry)

    def first(self):
        """The entry `pop` takes next (None: the queue is empty)."""
        heap, in_order = self.heap, self.in_order
        if heap and (not in_order or heap[0] < in_order[0]):
            return heap[0]
        return in_order[0] if in_order else None

    def pop(self):
        """The first entry, taken out (None: the queue is empty)."""
        heap, in_order = self.heap, self.in_order
        if heap and (not in_order or heap[0] < in_order[0]):
            return heapq.heappop(heap)
        return in_order.popleft() if in_order else None

    def clear(self):
        self.in_order.clear()
        self.heap.clear()


def _compact_spec(run_spec):
    """A run spec as the scheduler keeps it: the bytes of a `Serialized` of one small
    frame (one object instead of three; `_assign` wraps it again), else as given."""
    if type(run_spec) is Serialized:
        frames = run_spec.frames
        if len(frames) == 1 and type(frames[0]) is bytes:
            return frames[0]
    return run_spec


def _consume(items):
    """Iterate over a list, dropping each item from it as it is handed out."""
    for i, item in enumerate(items):
        items[i] = None
        yield item


_priority = attrgetter("priority")


# What a client sends is checked here too: a malformed value is ignored, it never
# stops the scheduler.

def _number(value, default=0):
    return value if type(value) in (int, float) and value == value else default


def _names(workers):
    """Worker restrictions: a list of addresses, names or hosts, or None.  Names are
    compared as text: a worker named 0 in one process is "0" on a command line."""
    if isinstance(workers, (str, int)):
        workers = [workers]
    if not isinstance(workers, (list, tuple, set, frozenset)) or not workers:
        return None
    return [str(w) for w in workers if isinstance(w, (str, int))] or None


def _resources(resources):
    """{name: amount} of a task's needs, or None (none, or malformed)."""
    if not isinstance(resources, dict) or not resources:
        return None
    out = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or type(amount) not in (int, float) \
                or not amount >= 0:
            return None
        out[name] = amount
    return out


def _is_current(ts, ws, msg):
    """Whether a worker's word on a task (``msg``, from ``ws``) is of its current run
    there: it runs on ``ws`` and the word names that run's "compute-task" (a run
    released before and ended after the key was given to ``ws`` again does not)."""
    return (ts is not None and ts.processing_on is ws
            and msg.get("run_id", ts.run_id) == ts.run_id)


def _ended_on(ts, state, ws, startstops):
    """What scheduler plugins are told, as keyword arguments, of a task that ended on
    worker ``ws`` in ``state`` (dask.distributed's names): ``startstops``, when it
    computed, its start and stop on the worker's clock."""
    if state == MEMORY:       # the type's name as dask.utils.typename gives it
        typename = ts.type.removeprefix("builtins.") if ts.type else ts.type
        return {"worker": ws.address, "nbytes": ts.nbytes, "typename": typename,
                "startstops": startstops}
    error = ts.error or {}
    return {"worker": ws.address, "exception_text": error.get("text", ""),
            "traceback_text": error.get("traceback_text", "")}


def _per_key_annotations(annotations):
    """A function giving one task its (priority, retries, restrictions, loose,
    resources) from dask.annotate's per-key values, else from those it would get
    (None: no per-key annotations)."""
    if not isinstance(annotations, dict) or not annotations:
        return None

    def table(name):
        t = annotations.get(name)
        return t if isinstance(t, dict) else {}
    priority, retries, workers = table("priority"), table("retries"), table("workers")
    loose, resources = table("allow_other_workers"), table("resources")
    missing = object()

    def apply(key, prio, n, r, default_loose, default_resources):
        p = priority.get(key, missing)
        if p is not missing and type(p) in (int, float):
            prio = (-p,) + prio[1:]
        k = retries.get(key, missing)
        if type(k) is int and k >= 0:
            n = k
        w = workers.get(key, missing)
        if w is not missing:
            r = _names(w) or r
        ok = loose.get(key, default_loose)
        res = resources.get(key, missing)
        res = default_resources if res is missing else _resources(res)
        return prio, n, r, bool(ok), res
    return apply


GATHER_MARGIN = 65_536      # bytes of a gather's answer kept for all but the values
STEAL_MIN_DURATION = 0.005  # seconds: a shorter task is not worth a steal's round trip
STEAL_SCAN = 50             # tasks looked at in one victim's queue per attempt
SEARCH = 20                 # workers looked at for one placement on a larger cluster
ALLOWED_FAILURES = 3        # workers a task may see die under it before KilledWorker
MAX_DEATH_TEXT = 200        # characters of a supervisor's word on how a worker ended
# Relay tickets remembered per worker and client, the latest: when one leaves, the
# streams it was to upload or download end at once, not at the relay's timeout.
# Cancelling a ticket already used is harmless.
STREAMS_KEPT = 1024
QUEUE_BYTES = 8 << 20      # results of root tasks queued beyond the threads, per thread
RELAY_FACTOR = 3            # a relayed byte costs as much as this many sent directly
RELAY_DELAY = 0.05          # seconds added per input that must be relayed: placement
                            # prefers any worker that can fetch directly
# Values relayed between workers in one ZeroMQ message (the scheduler holds them
# whole): when the cluster encrypts, or after the fetcher's streams failed.  Streamed
# values have no cap: the relay holds one chunk of them at a time.
MAX_RELAY_BYTES = 256 << 20
EVENTS_KEPT = 10_000        # latest events kept per topic, for `Client.get_events`
MAX_COPY_ATTEMPTS = 3       # copies of a retiring worker's key that may fail before
                            # the worker is kept instead


def _holding(ws):
    """Tasks placed on ``ws`` that hold (or wait for) one of its thread slots."""
    return len(ws.processing) - len(ws.seceded)


def _free_threads(ws):
    """Threads of ``ws`` neither running nor promised to a task."""
    return ws.nthreads - len(ws.stale) - _holding(ws)


def _has_resources(ts, ws):
    """Does ``ws`` have, in all, the resources ``ts`` needs?"""
    have = ws.resources
    return all(have.get(name, 0) >= amount for name, amount in ts.resources.items())


def _allowed(ts, ws):
    """May ``ts`` run on ``ws``: its resources there, and one of its workers (unless
    the restriction is loose: `_valid_workers` relaxes it when none is left)?"""
    if ts.resources is not None and not _has_resources(ts, ws):
        return False
    return ts.restrictions is None or ts.loose or ws.known_as(ts.restrictions)


def _constrained(ts):
    return ts.restrictions is not None or ts.resources is not None


def _may_give(ws):
    """Has ``ws`` tasks waiting for a thread that an idle worker could take?  A
    paused worker starts nothing: every task waiting in its queue may go."""
    return (_holding(ws) + len(ws.stale) > ws.nthreads
            or ws.status == PAUSED and len(ws.processing) > len(ws.executing))


def _relayed(dep, ws):
    """Would ``ws`` get ``dep`` through the scheduler (no holder it can reach)?"""
    return all(holder in ws.unreachable for holder in dep.who_has)


def _memory_text(ws, msg):
    """What a worker's "memory-exceeded" says, for a person."""
    name = f" ({ws.name})" if ws.name != ws.address else ""
    fractions = ws.memory_fractions or {}
    terminate = fractions.get("terminate")
    at = f", stopped at {terminate:.0%} of it" if terminate else ""
    action = ("the task was interrupted; the worker's process lives on"
              if msg.get("action") == "interrupt" else "the worker was restarted")
    return (f"worker {ws.address}{name} reached {format_bytes(msg.get('rss', 0))} of "
            f"its {format_bytes(msg.get('limit', ws.memory_limit))} memory limit{at}; "
            f"{action}")


def _memory_note(ws):
    """A dead worker's memory at its last heartbeat, if that was high."""
    memory = ws.metrics.get("memory", 0)
    pause = (ws.memory_fractions or {}).get("pause") or 0.8
    if not ws.memory_limit or memory < pause * ws.memory_limit:
        return ""
    return (f"; its memory at its last heartbeat: {format_bytes(memory)} of its "
            f"{format_bytes(ws.memory_limit)} limit")


class SchedulerState:
    def __init__(self, *, allowed_failures=ALLOWED_FAILURES, validate=False,
                 bandwidth=100e6, unknown_duration=UNKNOWN_DURATION, task_durations=None,
                 saturation=2.0, queue_seconds=0.02, queue_bytes=QUEUE_BYTES, max_depth=100,
                 max_error_text=10_000, max_relay_bytes=MAX_RELAY_BYTES,
                 transition_log_length=stories.LENGTH):
        self.tasks = {}
        self.workers = {}
        self.by_address = {}
        self.clients = {}
        self.groups = {}
        self.queued = RootQueue()
        self.unrunnable = set()              # tasks in "no-worker"
        self.datasets = {}                   # {name: {"data": Serialized, "keys": [...]}}
        self.coordination = Coordination()   # Variables, Queues, Locks... (its module)
        self.collections = {}                # {name: Serialized}
        self.gathers = {}                    # {gather id: pending gather}
        self.parked = {}                     # {key: gather id(s)} waiting for results
        self.runs = {}                       # {run id: pending run}
        self.scatters = {}                   # {key: pending scatter, and "also" the
                                             # other requests that wait for it}
        self.steals = {}                     # {key: (victim, thief)} asked, not answered
        # Workers that may have queued tasks to give to idle ones, as an ordered set
        # ({worker: None}): every such worker is in it (validate() checks); a steal
        # pass looks at the first SEARCH, drops those with nothing to give and moves
        # the others to the back, so that the next pass looks at others first.
        self.may_give = {}
        # Workers that may have a thread free, as an ordered set: every running worker
        # with one is in it once the running workers are up to date (validate()
        # checks); a worker goes in when a thread frees up, and all running workers
        # when a status changes or a worker joins; `fill_workers` drops the busy ones
        # it finds.  So new work is stolen for idle workers without looking at every
        # worker of a large cluster.
        self.idle = {}
        self._running_cache = ((), None)     # (running workers, when built)
        self._cursor = 0                     # where the next windowed search starts
        self.memory_failures = {}            # {key: text} last stop for memory
        # {key: why}: results in memory that could not be sent to another worker
        # (they cannot be pickled, or the relay could not carry them): their
        # dependents run where they are
        self.unmovable = {}
        self.lost = {}                       # {token: Held}
        self.clock = 0.0                     # the latest time the shell told us
        self.run_count = 0                   # "compute-task"s sent: the last run id
        self.indirect = {}                   # {key: {client}} sent no value straight
        self.task_holds = {}                 # {task key: [key]} (`_hold_for_tasks`)
        self.stimulus = "start"              # what the events handled now came from
        self.transition_log = self.transition_recs = None
        if transition_log_length:
            self.transition_log = deque(maxlen=transition_log_length)
            self.transition_recs = deque(maxlen=transition_log_length)
        self.moves = {}                      # {move id: Move} (see moves.py)
        self.worker_plugins = {}             # {name: Serialized}
        self.plugin_events = None            # [event] for scheduler plugins, or None
        self.worker_waiters = {}             # {id: (client, request id, n workers)}
        self.restarting = {}                 # {id: pending restart_workers}
        self.subscribers = {}                # {topic: {client id}} of worker events
        self.events = {}                     # {topic: deque([(time, msg)])}, the latest
        self.metadata = {}                   # nested {name: ... Serialized} of clients
        self._advancing = self._advance_again = False
        self._finish_times = None            # (key, startstops) for plugins, finishing
        self._batching = False               # in handle_worker_messages
        self._fill_after = None              # the worker to fill after "task-finished"s
        self.stolen = 0                      # tasks moved so, ever
        self.finished_total = 0              # tasks that reached memory, ever
        self.erred_total = 0                 # tasks that erred, ever
        self.errors = deque(maxlen=20)       # latest errors for monitors
        self.outbox = []
        self._freeing = {}      # {worker id: (index, its last "free-keys" in outbox)}
        self.allowed_failures = allowed_failures
        self.bandwidth = bandwidth
        # Expected seconds of tasks until their group has a measured mean: by the
        # task prefix (dask's `key_split` of a key, as dask.distributed names them),
        # else `unknown_duration`; looked up once per group.
        self.unknown_duration = unknown_duration
        self.task_durations = {**TASK_DURATIONS, **(task_durations or {})}
        self.saturation = saturation
        self.queue_seconds = queue_seconds
        self.queue_bytes = queue_bytes
        self.max_depth = max_depth
        self.max_error_text = max_error_text
        self.max_relay_bytes = max_relay_bytes
        # Set by a shell with a relay for large values (bulk.py): a client's gather, or
        # a worker's relay, may then ask the holders to stream them through it.
        self.relay_streams = False
        self.validating = validate
        self.generation = 0
        self.transition_count = 0
        self._in_transition = 0              # depth of table methods running (validate)
        self._seq = itertools.count()
        self._heads = {}                     # {key name: (that str, its group name)}
        self._ids = itertools.count(1)
        self._transitions = {
            (RELEASED, WAITING): self._released_waiting,
            (RELEASED, FORGOTTEN): self._released_forgotten,
            (RELEASED, ERRED): self._any_erred,
            (RELEASED, MEMORY): self._released_memory,
            (WAITING, PROCESSING): self._waiting_processing,
            (WAITING, RELEASED): self._waiting_released,
            (WAITING, MEMORY): self._waiting_memory,
            (WAITING, ERRED): self._any_erred,
            (QUEUED, PROCESSING): self._queued_processing,
            (QUEUED, RELEASED): self._queued_released,
            (QUEUED, MEMORY): self._waiting_memory,
            (NO_WORKER, WAITING): self._no_worker_waiting,
            (NO_WORKER, RELEASED): self._no_worker_released,
            (NO_WORKER, MEMORY): self._waiting_memory,
            (PROCESSING, WAITING): self._processing_waiting,
            (PROCESSING, MEMORY): self._processing_memory,
            (PROCESSING, RELEASED): self._processing_released,
            (PROCESSING, ERRED): self._processing_erred,
            (MEMORY, RELEASED): self._memory_released,
            (MEMORY, FORGOTTEN): self._memory_forgotten,
            (ERRED, RELEASED): self._erred_released,
            (ERRED, MEMORY): self._erred_memory,
        }
        # No (queued, erred) or (no-worker, erred): only root tasks are queued, and a
        # task waits for a worker only while its inputs are in memory (one that
        # leaves sends it back to waiting), so no input of theirs can err.

    # ------------------------------------------------------------------ plumbing

    def send_worker(self, ws, msg):
        if self._freeing:
            self._freeing.pop(ws.id, None)
        self.outbox.append(("worker", ws.id, msg))

    def _free_keys(self, ws, keys):
        """Tell ``ws`` to drop ``keys``.  Keys for one worker join its last
        "free-keys" while no other message to it followed (their order is kept): a
        client releasing thousands of results sends each worker one message, which
        its state machine handles as one event, not one per key."""
        outbox = self.outbox
        last = self._freeing.get(ws.id)
        if last is not None:
            i, msg = last
            # Still there (whoever takes the outbox may also empty it in place).
            if i < len(outbox) and outbox[i][2] is msg:
                msg["keys"].extend(keys)
                return
        msg = {"op": "free-keys", "keys": list(keys)}
        self.send_worker(ws, msg)
        self._freeing[ws.id] = (len(outbox) - 1, msg)

    def send_client(self, cid, msg):
        if cid in self.clients:
            self.outbox.append(("client", cid, msg))

    def take_messages(self):
        out, self.outbox = self.outbox, []
        self._freeing.clear()
        return out

    def _group(self, key):
        name = key_prefix(key)
        tg = self.groups.get(name)
        if tg is None:
            tg = self.groups[name] = TaskGroup(name, next(self._seq),
                                               self._expected(key))
        return tg

    def _expected(self, key):
        """Seconds a task of ``key``'s prefix is expected to take, none measured."""
        return self.task_durations.get(key_split(key), self.unknown_duration)

    def _new_task(self, key, run_spec):
        if type(key) is tuple and key and type(key[0]) is str:
            # The keys of a collection, ("name-token", i, ...), arrive each with its
            # own copy of the name: the tasks share one, and its group is looked up
            # once per name rather than parsed out of every key.
            head = key[0]
            seen = self._heads.get(head)
            if seen is None:
                if len(self._heads) >= 10_000:
                    self._heads.clear()
                seen = self._heads[head] = (head, key_prefix(head))
            elif seen[0] is not head:
                key = (seen[0], *key[1:])
            tg = self.groups.get(seen[1])
            if tg is None:
                tg = self._group(key)
        else:
            tg = self._group(key)
        ts = self.tasks[key] = TaskState(key, run_spec, tg)
        tg.total += 1
        tg.states[RELEASED] += 1
        return ts

    # -------------------------------------------------------------- transitions

    def transitions(self, recommendations):
        """Apply recommendations ``{key: state}`` until the system is steady."""
        self._drain(dict(recommendations))
        if self.validating:
            self.validate()

    def _drain(self, recs):
        """Apply the recommendations in ``recs`` (emptied) and all that follow."""
        tasks, transition = self.tasks, self._transition
        while recs:
            key, finish = recs.popitem()
            ts = tasks.get(key)
            if ts is None or ts.state == finish:
                continue
            more = transition(ts, finish)
            if more:
                recs.update(more)

    def _transition(self, ts, finish, *args):
        """The one way a task changes state: the table's method for ``(start,
        finish)``; ``args`` go to it (the worker `fill_workers` chose)."""
        start = ts.state
        func = self._transitions.get((start, finish))
        if func is None:
            # Anything else goes through "released", whose recommendations then
            # decide between computing again and forgetting.
            func = self._transitions.get((start, RELEASED))
            if func is None:
                raise InvalidTransition(f"{ts.key!r}: {start} -> {finish}")
        self.transition_count += 1
        if self.validating:
            self._in_transition += 1
            try:
                recs = func(ts, *args)
            finally:
                self._in_transition -= 1
        elif args:
            recs = func(ts, *args)
        else:
            recs = func(ts)                 # without *args: a cheaper call
        log = self.transition_log
        if log is not None:
            # Objects that exist already, nothing formatted.
            log.append((ts.key, start, ts.state, self.stimulus, self.clock))
            self.transition_recs.append(recs or None)
        return recs

    def _set_state(self, ts, state, ran_on=None):
        """``ran_on``: the worker a task ended on, for plugins (`_ended_on`)."""
        if self.validating:
            assert self._in_transition, f"{ts.key!r}: {ts.state} -> {state} outside " \
                "the transition table"
        if self.plugin_events is not None:
            event = ("transition", ts.key, ts.state, state)
            if ran_on is not None:
                times = self._finish_times
                startstops = times[1] if times is not None and times[0] == ts.key else []
                event += (_ended_on(ts, state, ran_on, startstops),)
            self.plugin_events.append(event)
        counts = ts.group.states
        counts[ts.state] -= 1
        if state != FORGOTTEN:
            counts[state] += 1
        ts.state = state

    # released -> ...

    def _released_waiting(self, ts):
        recs = {}
        if ts.run_spec is None:
            # Scattered data lost with its worker: there is nothing to compute it from.
            ts.error = error_info(
                "KeyError", f"data of {ts.key!r} was lost with its worker and cannot be "
                "recomputed (it was scattered, not computed)", ts.key)
            return {ts.key: ERRED}
        self._set_state(ts, WAITING)
        for dep in ts.dependencies:
            if dep.state == ERRED:
                ts.error = dep.error
                return {ts.key: ERRED}
        deps = ts.dependencies
        waiting = 0
        for dep in deps:
            # Most tasks have one dependent, then also their one waiter: one 1-tuple.
            dependents = dep.dependents
            _add(dep, "waiters", ts, dependents if dependents == (ts,) else None)
            if dep.state != MEMORY:
                waiting += 1
                if dep.state == RELEASED:
                    recs[dep.key] = WAITING
        if not waiting:
            recs[ts.key] = PROCESSING
        elif waiting == len(deps):
            ts.waiting_on = deps            # all of them: no set of its own yet
        else:
            for dep in deps:
                if dep.state != MEMORY:
                    _add(ts, "waiting_on", dep)
        return recs

    def _released_forgotten(self, ts):
        if ts.who_wants or ts.waiters or ts.dependents:      # dependents are all alive
            return {}
        return self._forget(ts)

    def _forget(self, ts):
        """Drop a task nobody needs, and recommend forgetting its inputs that nobody
        needs either."""
        recs = {}
        for dep in ts.dependencies:
            _discard(dep, "dependents", ts)
            _discard(dep, "waiters", ts)
            if not dep.dependents and not dep.who_wants:
                # Whatever its state (still computing, or held in memory), nobody
                # needs it any more: forgotten (a result at once, anything else
                # through "released").
                recs[dep.key] = FORGOTTEN
        self._set_state(ts, FORGOTTEN)
        del self.tasks[ts.key]
        if self.memory_failures:
            self.memory_failures.pop(ts.key, None)
        if self.unmovable:
            self.unmovable.pop(ts.key, None)
        if self.indirect:
            self.indirect.pop(ts.key, None)
        if self.task_holds:
            self._end_holds(ts, recs)
        if self.metadata and ts.key in self.metadata:
            del self.metadata[ts.key]       # set under the task's key: gone with it
        if ts.key in self.parked:
            self._unpark(ts.key, ok=False)
        return recs

    def _hold_for_tasks(self, holds):
        """``holds`` {task key: [key]}: keys whose Futures travel inside the task's
        arguments (a persisted collection, an object of the user's), not as its
        inputs.  The task holds them until it ends, as a client would: the client
        that submitted it may let go of them at once, before the client of the
        task's worker, which the task's Futures belong to there, says it wants
        them."""
        for tkey, keys in holds.items():
            ts = self.tasks.get(tkey)
            if ts is None or ts.state in (MEMORY, ERRED) or tkey in self.task_holds:
                continue
            holder = ("task", tkey)
            held = [key for key in keys if key in self.tasks]
            for key in held:
                _add(self.tasks[key], "who_wants", holder)
            if held:
                self.task_holds[tkey] = held

    def _end_holds(self, ts, recs):
        """``ts`` ended (or was forgotten): the keys it held (`_hold_for_tasks`) that
        nobody else needs are forgotten."""
        held = self.task_holds.pop(ts.key, None)
        if held is None:
            return
        holder = ("task", ts.key)
        for key in held:
            hts = self.tasks.get(key)
            if hts is not None and holder in hts.who_wants:
                _discard(hts, "who_wants", holder)
                if not hts.who_wants and not hts.waiters:
                    recs[key] = FORGOTTEN

    def _released_memory(self, ts):
        # Only reached through add-keys (scatter) for a key that was released.
        self._set_state(ts, MEMORY)
        for cid in ts.who_wants:
            cr = self.clients.get(cid)
            if cr is not None:
                cr.reports.discard(ts)
        return {}

    # waiting -> ...

    def _waiting_processing(self, ts):
        if ts.waiting_on:
            return {}
        if not self.workers:
            self._set_state(ts, NO_WORKER)
            self.unrunnable.add(ts)
            return {}
        if not ts.dependencies and not _constrained(ts):
            # Root tasks wait in a queue and are handed out as workers free up, so a
            # huge map never floods the workers' memory, and siblings stay together.
            ws = None if self.queued else self._worker_with_room(ts)
            if ws is None:
                self._set_state(ts, QUEUED)
                self.queued.push((ts.priority, next(self._seq), ts))
                return {}
        else:
            ws = self.decide_worker(ts)
            if ws is None:
                self._set_state(ts, NO_WORKER)
                self.unrunnable.add(ts)
                return {}
        self._set_state(ts, PROCESSING)
        self._assign(ts, ws)
        return {}

    def _waiting_released(self, ts):
        for dep in ts.dependencies:
            _discard(dep, "waiters", ts)
        ts.waiting_on = EMPTY
        self._set_state(ts, RELEASED)
        return self._release_recs(ts)

    def _waiting_memory(self, ts):
        # Data arrived (scatter) for a key that was waiting to be computed (or
        # queued, or without a worker: a queued one's heap entry is skipped).
        if ts.state == NO_WORKER:
            self.unrunnable.discard(ts)
        for dep in ts.dependencies:
            _discard(dep, "waiters", ts)
        ts.waiting_on = EMPTY
        self._set_state(ts, MEMORY)
        return self._after_memory(ts)

    def _queued_processing(self, ts, ws=None):
        # `fill_workers` pops the task off the queue for a worker with room.  Asked
        # without one (a recommendation), it stays queued: the queue hands tasks out
        # in priority order.
        if ws is None:
            return {}
        self._set_state(ts, PROCESSING)
        self._assign(ts, ws)
        return {}

    def _queued_released(self, ts):
        self._set_state(ts, RELEASED)        # the heap entry is skipped when popped
        return self._release_recs(ts)

    def _no_worker_waiting(self, ts):
        self.unrunnable.discard(ts)
        self._set_state(ts, WAITING)
        return {ts.key: PROCESSING}

    def _no_worker_released(self, ts):
        self.unrunnable.discard(ts)
        self._set_state(ts, RELEASED)
        return self._release_recs(ts)

    # processing -> ...

    def _processing_memory(self, ts):
        # The caller has set ts.who_has / nbytes; here the bookkeeping.
        ws = ts.processing_on
        self._unassign(ts)
        self._set_state(ts, MEMORY, ws)
        if not ts.done_once:
            ts.done_once = True
            ts.group.done += 1
        self.finished_total += 1
        return self._after_memory(ts)

    def _after_memory(self, ts):
        gathering = ()                  # clients whose gathers get the value now
        if ts.key in self.parked:
            gathering = self._unpark(ts.key, ok=True)
        recs = {}
        for dts in ts.waiters:
            _discard(dts, "waiting_on", ts)
            if not dts.waiting_on and dts.state == WAITING:
                recs[dts.key] = PROCESSING
        for dep in ts.dependencies:
            _discard(dep, "waiters", ts)
            if not dep.waiters and not dep.who_wants and dep.state == MEMORY:
                recs[dep.key] = RELEASED
        clients = self.clients
        for cid in ts.who_wants:
            cr = clients.get(cid)
            if cr is None:
                continue                # a holder, or a client gone
            asked = False
            if cr.reports:
                asked = ts in cr.reports
                cr.reports.discard(ts)
            if cid in ts.direct:
                if not asked:
                    continue            # it has the value, and knows the key is done
                # It has the value and asked to hear that the key is done here.
                self.send_client(cid, {"op": "key-in-memory", "key": ts.key,
                                       "type": ts.type, "nbytes": ts.nbytes})
                continue
            self.send_client(cid, self._in_memory(ts, cid not in gathering))
        if FIRE_AND_FORGET in ts.who_wants:
            _discard(ts, "who_wants", FIRE_AND_FORGET)   # its work is done
        if self.task_holds:
            self._end_holds(ts, recs)
        if not ts.waiters and not ts.who_wants:
            recs[ts.key] = FORGOTTEN
        return recs

    def _in_memory(self, ts, value):
        """The "key-in-memory" of ``ts`` for a client that may not have its value:
        for a small result, where it could have come from straight, so that the
        client connects there; and with ``value``, the small value itself, so that
        the client's gather of it needs no request."""
        msg = {"op": "key-in-memory", "key": ts.key, "type": ts.type,
               "nbytes": ts.nbytes}
        if ts.data is not None and ts.who_has:
            msg["worker"] = next(iter(ts.who_has)).address
            if value:
                msg["data"] = ts.data
        return msg

    def _processing_waiting(self, ts):
        # Given back unstarted by its worker with nowhere it was meant to go (a steal
        # whose thief left): placed afresh.
        self._unassign(ts)
        self._set_state(ts, WAITING)
        return {ts.key: PROCESSING}

    def _processing_released(self, ts):
        ws = ts.processing_on
        if ws is not None and ts in ws.executing and ts not in ws.seceded:
            # Its thread runs on (a Python thread cannot be stopped).
            ws.stale[ts.key] = ws.processing[ts]
            ws.occupancy += ws.processing[ts]
        self._unassign(ts)
        if ws is not None and ws.id in self.workers:
            self._free_keys(ws, (ts.key,))
        for dep in ts.dependencies:
            _discard(dep, "waiters", ts)
        self._set_state(ts, RELEASED)
        return self._release_recs(ts)

    def _processing_erred(self, ts):
        ws = ts.processing_on
        self._unassign(ts)
        return self._any_erred(ts, ws)

    def _any_erred(self, ts, ran_on=None):
        for dep in ts.dependencies:
            _discard(dep, "waiters", ts)
        ts.waiting_on = EMPTY
        self._set_state(ts, ERRED, ran_on)
        ts.group.erred += 1
        self.erred_total += 1
        if ts.key in self.parked:
            self._unpark(ts.key, ok=False)
        recs = {}
        for dts in ts.dependents:
            if dts.state in (WAITING, QUEUED, NO_WORKER, RELEASED) and dts.key in self.tasks:
                if dts.state != RELEASED or dts.who_wants:
                    dts.error = ts.error
                    recs[dts.key] = ERRED
        for dts in ts.waiters:
            if dts.state == PROCESSING:
                dts.error = ts.error
                recs[dts.key] = ERRED
        ts.waiters = EMPTY
        for dep in ts.dependencies:
            if not dep.waiters and not dep.who_wants and dep.state == MEMORY:
                recs[dep.key] = RELEASED
        if ts.error and ts.error.get("origin", ts.key) == ts.key:
            self.errors.append({"key": ts.key, "group": ts.group.name,
                                "type": ts.error.get("type"),
                                "text": ts.error.get("text", "")})
        for cid in ts.who_wants:
            cr = self.clients.get(cid)
            if cr is not None and cr.reports:
                cr.reports.discard(ts)
            self.send_client(cid, {"op": "task-erred", **ts.error, "key": ts.key})
        if FIRE_AND_FORGET in ts.who_wants:
            # Ended too.  Kept while dependents (erred with it) are: their retry
            # starts from it, and the last to go forgets it.
            _discard(ts, "who_wants", FIRE_AND_FORGET)
            if not ts.who_wants and not ts.dependents:
                recs[ts.key] = FORGOTTEN
        if self.task_holds:
            self._end_holds(ts, recs)
        return recs

    # memory / erred -> released

    def _memory_released(self, ts):
        recs = {}
        for dts in ts.waiters:
            # A dependent already sent to a worker can no longer fetch this result;
            # one waiting for a worker would be sent without it.
            if dts.state in (PROCESSING, NO_WORKER):
                recs[dts.key] = RELEASED
        if self.unmovable:
            self.unmovable.pop(ts.key, None)
        self._free_copies(ts)
        self._set_state(ts, RELEASED)
        recs.update(self._release_recs(ts))
        return recs

    def _memory_forgotten(self, ts):
        # In one step what "released" then "forgotten" would do, when neither a client
        # nor another task needs the result (plugins see memory -> forgotten).
        if ts.who_wants or ts.waiters or ts.dependents:
            return self._memory_released(ts)
        self._free_copies(ts)
        return self._forget(ts)

    def _free_copies(self, ts):
        """The workers holding the result let it go."""
        for ws in ts.who_has:
            ws.has_what.discard(ts)
            ws.nbytes -= max(ts.nbytes, 0)
            self._free_keys(ws, (ts.key,))
        ts.who_has = EMPTY
        ts.data = None
        ts.direct = ()

    def _erred_released(self, ts):
        ts.error = None
        self._set_state(ts, RELEASED)
        return self._release_recs(ts)

    def _erred_memory(self, ts):
        # A value was put under the key of a task that erred (scatter): it holds now.
        # Dependents that erred with it stay erred.
        ts.error = None
        self._set_state(ts, MEMORY)
        return self._after_memory(ts)

    def _release_recs(self, ts):
        """After a task is released: compute it again if still needed, else forget;
        one held for a lost worker's supervisor (`lost`) waits."""
        if ts.who_wants or ts.waiters and any(
                w.state in (WAITING, PROCESSING, QUEUED, NO_WORKER) for w in ts.waiters):
            if self.lost and any(ts.key in held.keys for held in self.lost.values()):
                return {}
            return {ts.key: WAITING}
        return {ts.key: FORGOTTEN}

    # ------------------------------------------------------------ placement

    def _room(self, ws, ts):
        """How many more tasks like ``ts`` the worker may hold.  Beyond its threads it
        keeps a short queue, so a finished task starts the next without a round trip;
        the queue holds about `queue_seconds` of work, so tiny tasks travel in batches.
        But a queued root task runs as soon as a thread is free, ahead of the tasks
        that wait for transfers to consume what the roots made, and its result waits
        in the worker's memory: the queue holds at most `queue_bytes` of results (by
        the group's mean) per thread, and at least one task per thread, enough to
        spare the round trip.  Threads still running tasks released meanwhile
        (`WorkerRecord.stale`) count for nothing."""
        depth = self.saturation
        group = ts.group
        duration = group.duration
        if duration is None:
            duration = group.expected               # (`estimate`, inline: called often)
        if duration > 0:
            depth = min(max(depth, self.queue_seconds / duration), self.max_depth)
        threads = ws.nthreads - len(ws.stale)      # threads not held by forgotten tasks
        queue = math.ceil(threads * depth)
        if group.nbytes:
            # As many whole results as the bytes hold: one 8 MB block in 8 MiB, not two.
            queue = min(queue, max(int(threads * self.queue_bytes / group.nbytes), threads))
        return threads + queue - _holding(ws)

    def _running_workers(self):
        """The running workers in the order they joined, rebuilt only after a
        worker's status changed or a worker came or went."""
        running, built = self._running_cache
        stamp = (WorkerRecord.status_changes, len(self.workers))
        if built != stamp:
            running = tuple(ws for ws in self.workers.values() if ws.status == RUNNING)
            self._running_cache = (running, stamp)
            self.idle = dict.fromkeys(running)      # joined or resumed: may be idle
        return running

    def _window(self, workers):
        """At most SEARCH of ``workers``, from where the last window ended: on a large
        cluster a placement looks at a few workers, a different few each time."""
        n = len(workers)
        if n <= SEARCH:
            return list(workers)
        start = self._cursor % n
        self._cursor = start + SEARCH
        return [workers[(start + i) % n] for i in range(SEARCH)]

    def _worker_with_room(self, ts):
        """The running worker with the most room for root task ``ts`` (of those, the
        one holding the least data).  Up to SEARCH workers it looks at all; beyond,
        it goes round the cluster from where it last stopped and takes the best of
        the first SEARCH that have room, so a root costs as much to place on 3,000
        workers as on 30."""
        running = self._running_workers()
        n = len(running)
        windowed = n > SEARCH
        start = self._cursor % n if windowed else 0
        best, best_room, found, i = None, 0, 0, 0
        for i in range(n):
            ws = running[(start + i) % n]
            room = self._room(ws, ts)
            if room > 0:
                # Ties go to the worker holding the least data, as with
                # dask.distributed: roots submitted one by one spread out.
                if room > best_room or room == best_room and ws.nbytes < best.nbytes:
                    best, best_room = ws, room
                found += 1
                if windowed and found >= SEARCH:
                    break
        if windowed:
            self._cursor = start + i + 1
        return best

    def _stale_duration(self, ts, key):
        """`TaskGroup.estimate` of a task released while it ran, maybe forgotten here
        since (its group may be kept)."""
        if ts is not None:
            return ts.group.estimate
        tg = self.groups.get(key_prefix(key))
        return self._expected(key) if tg is None else tg.estimate

    def _valid_workers(self, ts):
        running = self._running_workers()
        if not _constrained(ts):
            return running
        valid = [ws for ws in running if _allowed(ts, ws)]
        if ts.loose and ts.restrictions is not None:
            # allow_other_workers: its own workers if any can take it, else any other
            preferred = [ws for ws in valid if ws.known_as(ts.restrictions)]
            if self.unmovable:      # a preference gives way to inputs that stay put
                preferred = self._near_unmovable(ts, preferred)
            if preferred:
                return preferred
        return valid

    def decide_worker(self, ts):
        """The worker where the task can start soonest: queued work plus transfers."""
        valid = self._valid_workers(ts)
        if not valid:
            return None
        if len(valid) > SEARCH and ts.dependencies:
            # The workers holding inputs, and a window of others (not all of them:
            # a placement must not cost more on a larger cluster).
            holders = {ws for dep in ts.dependencies for ws in dep.who_has}
            if valid is self._running_cache[0]:
                near = [ws for ws in holders if ws.status == RUNNING]
            else:
                allowed = set(valid)
                near = [ws for ws in holders if ws in allowed]
            valid = near + self._window(valid)
        if self.unmovable:
            valid = self._near_unmovable(ts, valid) or valid
        deps = ts.dependencies
        bandwidth = self.bandwidth

        def start_time(ws):
            missing = 0
            relayed = 0
            for dep in deps:
                if ws not in dep.who_has:
                    if ws.unreachable and _relayed(dep, ws):
                        relayed += 1
                        missing += RELAY_FACTOR * max(dep.nbytes, 0)
                    else:
                        missing += max(dep.nbytes, 0)
            # Ties go to the worker holding the least data, as with dask.distributed.
            return (ws.occupancy / ws.nthreads + missing / bandwidth
                    + relayed * RELAY_DELAY, len(ws.processing), ws.nbytes,
                    ws.address)

        return min(valid, key=start_time)

    def _near_unmovable(self, ts, valid):
        """Those of ``valid`` holding every input of ``ts`` that cannot be sent to
        another worker (`unmovable`)."""
        pinned = [dep for dep in ts.dependencies if dep.key in self.unmovable]
        if not pinned:
            return valid
        return [ws for ws in valid if all(ws in dep.who_has for dep in pinned)]

    # ------------------------------------------------------------ stealing

    def _steal_for(self, thief):
        """Ask busier workers to give up tasks for `thief`'s idle threads: tasks that
        wait in their queues (never one known to run), last in line first, worth a
        round trip, and whose inputs move faster than they compute.  A worker gives a
        task up only if it has not started it ("steal-response").

        A task is worth a round trip when it is long, or when it would wait long
        behind the tasks ahead of it there: tiny tasks queued behind a long one go
        to an idle worker, each idle thread taking up to `queue_seconds` of them."""
        idle = _free_threads(thief)
        if idle <= 0 or thief.status != "running":
            return
        idle -= thief.stealing
        victims = []
        may_give = self.may_give
        for ws in list(itertools.islice(may_give, SEARCH)):
            del may_give[ws]
            if self.workers.get(ws.id) is ws and _may_give(ws):
                may_give[ws] = None
                if ws is not thief:
                    victims.append(ws)
        victims.sort(key=lambda w: (w.status != PAUSED, -w.occupancy / w.nthreads,
                                    w.address))
        for victim in victims:
            if idle <= 0:
                return
            if victim.status == PAUSED:
                waiting = len(victim.processing) - len(victim.executing)
            else:
                waiting = _holding(victim) + len(victim.stale) - victim.nthreads
            scanned = list(itertools.islice(reversed(victim.processing), STEAL_SCAN))
            ahead = self._wait_ahead(victim, scanned)
            candidates = [ts for ts in scanned
                          if self._worth_stealing(ts, victim, thief, ahead.get(ts, 0.0))]
            candidates.sort(key=attrgetter("priority"), reverse=True)
            batch = 0.0                 # seconds of tiny tasks the last thread takes
            for ts in candidates:
                if waiting <= 0:
                    break
                duration = victim.processing[ts]
                if duration < STEAL_MIN_DURATION and batch >= duration:
                    batch -= duration   # along with the tiny ones taken before
                elif idle > 0:
                    idle -= 1
                    batch = (self.queue_seconds - duration
                             if duration < STEAL_MIN_DURATION else 0.0)
                else:
                    break
                waiting -= 1
                self._request_steal(ts, victim, thief)

    @staticmethod
    def _wait_ahead(ws, scanned):
        """{task: seconds} each of ``scanned`` (the last tasks given to ``ws``) would
        wait there for a thread: the worker's work goes first but for the task itself
        and those of lower priority among them (the others came earlier).  Only the
        scanned tasks are sorted: a steal pass costs the same whatever the queue's
        length."""
        left = ws.occupancy
        ahead = {}
        for ts in sorted(scanned, key=_priority, reverse=True):     # last in line first
            left -= ws.processing[ts]
            ahead[ts] = max(left, 0.0) / ws.nthreads
        return ahead

    def _worth_stealing(self, ts, victim, thief, wait=0.0):
        """``wait``: seconds ``ts`` would wait on ``victim`` before a thread takes
        it."""
        duration = victim.processing[ts]
        gain = max(duration, wait)
        if (ts in victim.executing or ts.key in self.steals
                or gain < STEAL_MIN_DURATION and victim.status != PAUSED
                or _constrained(ts) and not _allowed(ts, thief)
                or thief.unreachable and any(_relayed(dep, thief)
                                             for dep in ts.dependencies)
                or self.unmovable and not self._near_unmovable(ts, (thief,))):
            return False
        if victim.status == PAUSED:
            return True                 # it would wait there until memory falls
        missing = sum(max(dep.nbytes, 0) for dep in ts.dependencies
                      if thief not in dep.who_has)
        return missing / self.bandwidth <= gain

    def _request_steal(self, ts, victim, thief):
        """Ask ``victim`` to give ``ts`` up, for ``thief`` (None: to place it afresh)."""
        self.steals[ts.key] = (victim, thief)
        if thief is not None:
            thief.stealing += 1
        self.send_worker(victim, {"op": "steal-request", "key": ts.key})

    def _end_steal(self, key):
        """The steal request for ``key`` is over: its (victim, thief), or (None,
        None) if there was none."""
        victim, thief = self.steals.pop(key, (None, None))
        if thief is not None:
            thief.stealing -= 1
        return victim, thief

    def _on_steal_response(self, ws, msg):
        victim, thief = self._end_steal(msg["key"])
        ts = self.tasks.get(msg["key"])
        if victim is not ws or ts is None or ts.processing_on is not ws:
            return                      # about a task since done, forgotten or moved
        if not msg.get("released"):
            if msg.get("state") == "executing":
                ws.executing.add(ts)    # it runs there: never asked for again,
                if thief is not None:   # so the thief may ask for the next in line
                    self._steal_for(thief)
            return
        if (thief is not None and thief.status == "running"
                and (not _constrained(ts) or _allowed(ts, thief))):
            self._unassign(ts)          # processing still, on another worker
            self._assign(ts, thief)
            self.stolen += 1
        else:                           # the thief left: placed afresh
            self.transitions({ts.key: WAITING})

    def _assign(self, ts, ws):
        """Send a task that is now processing to ``ws``."""
        if self.validating:
            assert ws.status == RUNNING, (ts, ws)     # nothing new for a paused one
        duration = ts.group.estimate
        ts.processing_on = ws
        ws.processing[ts] = duration
        ws.occupancy += duration
        self._note_queue(ws)
        run_spec = ts.run_spec
        if type(run_spec) is bytes:
            run_spec = Serialized([run_spec])
        self.run_count += 1
        ts.run_id = self.run_count
        msg = {"op": "compute-task", "key": ts.key, "run_spec": run_spec,
               "priority": ts.priority, "duration": duration,
               "run_id": self.run_count}
        clients = [cid for cid in ts.who_wants if cid in self.clients]   # no holders
        if clients:
            msg["want_data"] = True
            # The clients waiting for it: the worker sends a small result straight
            # to those it has a connection from (three hops, not four).
            if self.indirect and ts.key in self.indirect:
                clients = [cid for cid in clients if cid not in self.indirect[ts.key]]
            if clients:
                msg["clients"] = clients
        if ts.resources is not None:
            msg["resources"] = ts.resources     # the worker runs it when they are free
        if ts.suspicious:
            # It was running on a worker that died: the worker waits for "go" after
            # "task-started", so a death while it runs is surely blamed on it.
            msg["confirm"] = True
        if ts.dependencies:
            msg["who_has"] = {dep.key: [w.address for w in dep.who_has]
                              for dep in ts.dependencies}
            msg["nbytes"] = {dep.key: dep.nbytes for dep in ts.dependencies}
        self.send_worker(ws, msg)

    def _note_queue(self, ws):
        if _may_give(ws):
            self.may_give[ws] = None

    def _unassign(self, ts):
        ws = ts.processing_on
        if self.steals:
            self._end_steal(ts.key)             # an answer about it will be stale
        if ws is not None:
            duration = ws.processing.pop(ts, 0.0)
            ws.occupancy = max(ws.occupancy - duration, 0.0)
            ws.executing.discard(ts)
            ws.seceded.discard(ts)
            ts.processing_on = None
            self.idle[ws] = None

    def fill_workers(self, ws=None):
        """Hand queued root tasks to workers with room, siblings together.

        After a task finishes only its worker has gained room, so only it is
        filled; ``ws=None`` (new tasks, workers coming or going) tries the workers
        that may have a thread free (`idle`).  That is enough: a task is queued only
        once no worker has room (`_worker_with_room` looked at them all), and a
        worker gains room only as a thread frees up, which puts it in `idle`, or as
        the estimates of the first group queued change; then it is filled when its
        next task ends, as it has none free.  With no queued task left, idle threads
        steal work waiting on busier workers.
        """
        if not self.queued:
            if len(self.workers) < 2:
                return
            if ws is not None:
                self._steal_for(ws)
            elif self.may_give:         # else no worker has anything to give
                self._running_workers()             # (brings `idle` up to date)
                idle = self.idle
                for thief in list(idle):
                    if _free_threads(thief) > 0 and thief.status == RUNNING:
                        self._steal_for(thief)
                    else:
                        del idle[thief]
            return
        if ws is not None:
            self._fill(ws)
            return
        self._running_workers()
        idle = self.idle
        for ws in sorted(idle, key=lambda w: len(w.processing)):
            if not self.queued:
                break
            self._fill(ws)
            if _free_threads(ws) <= 0 or ws.status != RUNNING:
                del idle[ws]

    def _fill(self, ws):
        queued = self.queued
        first = queued.first()
        if ws.status != RUNNING or first is None:
            return
        room = self._room(ws, first[2])
        while room > 0:
            entry = queued.pop()
            if entry is None:
                break
            ts = entry[2]
            if ts.state != QUEUED:
                continue
            self._transition(ts, PROCESSING, ws)
            room -= 1

    # ------------------------------------------------------------ graph intake

    def update_graph(self, client, tasks, keys, priorities=None, user_priority=0,
                     retries=0, restrictions=None, annotations=None, workers=None,
                     allow_other_workers=False, resources=None):
        """Add tasks wanted as ``keys`` by client.

        ``tasks`` is ``{key: (run_spec, dependencies)}``, or an iterable of entries
        ``(key, run_spec, dependencies)`` or ``(key, run_spec, dependencies,
        priority)`` as a client sends them; an entry's priority takes the place of
        ``priorities[key]``.  Entries are read once, in order, and not kept: a
        consuming iterable lets a huge graph's decoded message go as it is taken in.
        A run spec that is a `Serialized` of one bytes frame is kept as its bytes.

        What every new task gets (dask.distributed's meanings): ``user_priority``
        (higher runs first), ``retries``, ``workers`` (addresses, names or hosts it
        may run on; ``restrictions`` gives them per key), ``allow_other_workers``
        (those workers are a preference), ``resources`` ({name: amount} a worker
        must have, in all, to run it).  ``annotations`` ({"priority" | "retries" |
        "workers" | "allow_other_workers" | "resources": {key: value}}, from
        dask.annotate) override them per key.

        Dependencies must be keys of ``tasks`` or keys the scheduler already has;
        tasks that need anything else err with a missing-dependency error.
        """
        self.generation += 1
        priority_of = (priorities or {}).get
        restrictions = restrictions or {}
        per_key = _per_key_annotations(annotations)
        if isinstance(tasks, dict):
            tasks = [(key, spec, deps) for key, (spec, deps) in tasks.items()]
        up, generation = -_number(user_priority), self.generation
        workers = _names(workers)
        resources = _resources(resources)
        loose = bool(allow_other_workers)
        known = self.tasks
        new = []
        for entry in tasks:
            key, run_spec, deps = entry[0], entry[1], entry[2]
            ts = known.get(key)
            if ts is None:
                ts = self._new_task(key, _compact_spec(run_spec))
            elif ts.run_spec is None and run_spec is not None:
                ts.run_spec = _compact_spec(run_spec)
                if ts.state == MEMORY:
                    continue
            else:
                continue
            order = entry[3] if len(entry) > 3 else priority_of(key, 0)
            ts.retries = retries.get(key, 0) if isinstance(retries, dict) else retries
            r = restrictions.get(key) or workers
            ts.priority = (up, generation, order)
            if per_key is not None:
                ts.priority, ts.retries, r, ts.loose, ts.resources = per_key(
                    key, ts.priority, ts.retries, r, loose, resources)
            else:
                ts.loose, ts.resources = loose, resources
            ts.restrictions = frozenset(r) if r else None
            # The keys of its dependencies for now: TaskStates once all tasks exist.
            ts.dependencies = deps
            new.append(ts)
        erred = {}
        for ts in new:
            deps = ts.dependencies
            if not deps:
                ts.dependencies = ()
                continue
            missing = []
            dependencies = []
            for dkey in deps:
                try:
                    dts = known.get(dkey)
                except TypeError:            # not a key at all
                    dts = None
                if dts is None:
                    missing.append(dkey)
                    continue
                dependencies.append(dts)
                _add(dts, "dependents", ts)
            ts.dependencies = tuple(dependencies)
            if missing:
                ts.error = error_info(
                    "MissingDependency",
                    f"task {ts.key!r} depends on {missing!r}, which the scheduler "
                    "does not have", ts.key, args=(ts.key, missing))
                erred[ts.key] = ERRED
        client_state = self.clients.get(client)
        alone = (client,)                    # shared by the tasks it alone wants
        for key in keys:
            ts = known.get(key)
            if ts is None:
                continue
            _add(ts, "who_wants", client, alone)
            if client_state is not None:
                client_state.wants_what.add(ts)
            if ts.state == MEMORY:
                self.send_client(client, {"op": "key-in-memory", "key": key,
                                          "type": ts.type, "nbytes": ts.nbytes})
            elif ts.state == ERRED:
                self.send_client(client, {"op": "task-erred", **ts.error, "key": key})
        # Tasks missing a dependency err first, so that their dependents err too
        # when reached.  Then the new tasks start in priority order, one at a time
        # (no dict of a million recommendations), so that root tasks are handed out
        # in graph order.
        new.sort(key=_priority)
        if self.plugin_events is not None:      # before any of the tasks moves
            self.plugin_events.append((
                "update_graph", client, list(keys), [ts.key for ts in new],
                annotations or {}, {ts.key: ts.priority for ts in new}))
        self._drain(erred)
        for ts in new:
            if ts.state == RELEASED:
                # (a copy: the transition log keeps what it recommended)
                self._drain(dict(self._transition(ts, WAITING)))
        del new
        recs = {}
        # Wanted tasks that exist but were released earlier are needed again.
        for key in keys:
            ts = known.get(key)
            if ts is not None and ts.state == RELEASED:
                recs[key] = WAITING
        self.transitions(recs)
        self.fill_workers()

    # ------------------------------------------------------------ workers

    def add_worker(self, wid, address, nthreads=1, name=None, host="", pid=None,
                   memory_limit=0, keys=(), now=0.0, memory_fractions=None,
                   shares_host=False, resources=None, ip=None, local_directory=None,
                   supervised=None):
        """``ip``: the host in ``address``, by which users may name it too;
        ``local_directory``: where it keeps its files, as it says.
        ``supervised``: the token of the supervisor that watches its process and
        tells how it ended (`worker_died`), or None.
        ``shares_host``: the worker's limits ("auto" memory, task thread pools) are
        shares of its host's; it is told how many workers its host has
        ("host-workers") whenever that changes.  ``resources``: {name: amount} it
        has (dask.distributed's worker resources)."""
        if wid in self.workers:
            return self.workers[wid]
        self.stimulus = "add-worker"
        old = self.by_address.get(address)
        if old is not None:                  # same address, new incarnation
            self.remove_worker(old.id, reason="replaced by a new worker")
        ws = WorkerRecord(wid, address, nthreads, name, host, pid, memory_limit, now,
                          _resources(resources))
        ws.memory_fractions = memory_fractions
        ws.shares_host = shares_host
        ws.ip = ip
        ws.local_directory = local_directory
        ws.supervised = supervised
        self.clock = max(self.clock, now)
        self.workers[wid] = ws
        self.by_address[address] = ws
        self.send_worker(ws, {"op": "registered"})
        self._count_host(ws.host)
        # Plugins are set up before the worker's first task (messages keep their order).
        for pname, blob in self.worker_plugins.items():
            self.send_worker(ws, {"op": "plugin-add", "name": pname, "plugin": blob})
        if keys:
            self.send_worker(ws, {"op": "free-keys", "keys": list(keys)})
        self._log_event(address, [now, {"action": "add-worker"}])
        self._log_event("all", [now, {"action": "add-worker", "worker": address}])
        if self.plugin_events is not None:
            self.plugin_events.append(("add_worker", address))
        if self.unrunnable:
            self.transitions({ts.key: WAITING for ts in self.unrunnable})
        self.fill_workers(ws)           # only the new worker has room it had not
        if self.worker_waiters:
            self._answer_worker_waiters()
        if self.restarting:
            self._restarted(ws)
        return ws

    def remove_worker(self, wid, reason="", expected=False, memory=None, lost=False):
        """``memory``: the worker is gone because its memory passed its terminate
        fraction (a text saying so); the tasks it ran are blamed with it.  ``lost``:
        its connection was lost and nobody has said why yet: a supervised worker's
        tasks that would end now wait for the supervisor's word (`lost`)."""
        ws = self.workers.pop(wid, None)
        if ws is None:
            return None
        # What follows comes of the removal, whoever asked for it; then the caller's
        # own stimulus goes on.
        outer, self.stimulus = self.stimulus, "remove-worker"
        self.by_address.pop(ws.address, None)
        self._end_streams(ws)
        recs = {}
        suspects = ws.executing or set(ws.processing)
        note = "" if expected or memory is not None else _memory_note(ws)
        reason += note
        held = [] if lost and ws.supervised and not expected and memory is None else None
        only_here = [ts for ts in ws.has_what if len(ts.who_has) == 1]   # ws alone
        self._log_worker_event(ws, {
            "action": "remove-worker", "processing-tasks": [ts.key for ts in ws.processing],
            "lost-computed-tasks": [ts.key for ts in only_here if ts.run_spec is not None],
            "lost-scattered-tasks": [ts.key for ts in only_here if ts.run_spec is None],
            "expected": expected, "reason": reason})
        for ts in list(ws.processing):
            if not expected and ts in suspects:
                ts.suspicious += 1
                if memory is not None:
                    self.memory_failures[ts.key] = memory
                elif self.memory_failures:
                    self.memory_failures.pop(ts.key, None)    # not memory, this time
                if ts.suspicious > self.allowed_failures:
                    if held is None:
                        ts.error = self._killed_error(ts, ws.address, reason)
                        recs[ts.key] = ERRED
                        continue
                    held.append(ts.key)          # released, it waits there
            recs[ts.key] = RELEASED
        if held:
            self.lost[ws.supervised] = Held(ws.address, ws.pid, reason, note, held)
        for ts in ws.has_what:
            _discard(ts, "who_has", ws)
            if not ts.who_has and ts.state == MEMORY:
                recs[ts.key] = RELEASED
        ws.has_what = set()
        ws.processing = {}
        ws.executing = set()
        ws.seceded = set()
        ws.status = CLOSED
        self._count_host(ws.host)
        for other in self.workers.values():
            other.unreachable.discard(ws)
        if ws.stealing:                 # its own tasks' steals went with them
            self.steals = {k: (v, None if t is ws else t)
                           for k, (v, t) in self.steals.items()}
            ws.stealing = 0
        for other in self.workers.values():
            # Peers fail their fetches from it now rather than after a timeout.
            self.send_worker(other, {"op": "worker-removed", "address": ws.address})
        for gid, g in list(self.gathers.items()):
            if g["worker"] is ws:
                del self.gathers[gid]           # a relay for it: nobody to answer
                self._give_up_streams(g)
            elif wid in g["pending"]:
                self._gather_worker_failed(gid, wid)
        for rid, r in list(self.runs.items()):
            if wid in r["pending"]:
                r["pending"].discard(wid)
                r["results"][ws.address] = {"status": "error",
                                            "text": f"worker died: {reason}"}
                self._maybe_finish_run(rid)
        for key, sc in list(self.scatters.items()):
            if wid in sc["pending"]:
                self._scatter_target_lost(key, wid, f"the worker receiving {key!r} died")
        if self.plugin_events is not None:
            self.plugin_events.append(("remove_worker", ws.address))
        if self.moves:
            self._worker_gone(ws)
        self.transitions(recs)
        self.fill_workers()
        if self.moves:
            self._advance_moves()
        self.stimulus = outer
        return ws

    def tell_time(self, now):
        """The shell's clock: what happens next is logged at this time
        (`transition_log`)."""
        if now > self.clock:
            self.clock = now

    def check_heartbeats(self, now, timeout):
        """Remove workers silent for longer than ``timeout`` seconds; warn clients of
        workers paused for longer than they asked to be warned after."""
        self.clock = max(self.clock, now)
        for ws in list(self.workers.values()):
            if now - ws.last_seen > timeout:
                self.remove_worker(ws.id, reason=f"no heartbeat for {now - ws.last_seen:.1f} s")
            elif ws.status == PAUSED:
                self._warn_paused(ws, now)

    # ------------------------------------------------------------ memory

    def _count_host(self, host):
        """Workers whose limits are shares of their host's learn how many workers
        share it."""
        peers = [w for w in self.workers.values() if w.host == host]
        for w in peers:
            if w.shares_host:
                self.send_worker(w, {"op": "host-workers", "n": len(peers)})

    def _pause(self, ws, now):
        """A retiring worker stays retiring (its data still moves off); only its
        pause is timed."""
        if ws.status == RUNNING:
            ws.status = PAUSED
            self._note_queue(ws)
        ws.paused_since = now
        if self.moves:
            self._recipient_paused(ws)
        # Its queued tasks would wait for its memory to fall: idle workers take them.
        if len(self.workers) > 1:
            for other in self.workers.values():
                if other.status == RUNNING:
                    self._steal_for(other)

    def _resume(self, ws, now):
        if ws.paused_since is not None:
            ws.time_paused += max(now - ws.paused_since, 0.0)
        ws.paused_since = None
        if ws.status != PAUSED:
            return                          # retiring: it takes nothing new
        ws.status = RUNNING
        if self.unrunnable:
            self.transitions({ts.key: WAITING for ts in self.unrunnable})
        self.fill_workers()
        if self.worker_waiters:                 # a paused worker does not count
            self._answer_worker_waiters()

    def paused_for(self, ws, now=None):
        """Seconds ``ws`` has been paused (0 if it runs), and its total."""
        now = self.clock if now is None else now
        current = max(now - ws.paused_since, 0.0) if ws.paused_since is not None else 0.0
        return current, ws.time_paused + current

    def _warn_paused(self, ws, now):
        seconds = now - ws.paused_since
        for cs in self.clients.values():
            after = cs.paused_warning
            if after is None or seconds < after or (ws.id, ws.paused_since) in cs.warned:
                continue
            cs.warned.add((ws.id, ws.paused_since))
            m = ws.metrics
            self.send_client(cs.id, {
                "op": "worker-paused-long", "address": ws.address, "name": ws.name,
                "seconds": seconds, "memory": m.get("memory", 0),
                "managed": m.get("managed", 0), "spilled": m.get("spilled", 0),
                "memory_limit": ws.memory_limit})

    def _on_memory_exceeded(self, ws, msg):
        """The worker's memory passed its terminate fraction while ``keys`` ran there.
        "exit": it is restarting (under its supervisor), so it is gone now; its tasks
        are blamed.  "interrupt": those tasks are being stopped in a process that
        lives on (an engine); each counts a failure, is run elsewhere, and errs once
        it has failed ``allowed_failures`` times."""
        text = _memory_text(ws, msg)
        if msg.get("action") == "exit":
            self.remove_worker(ws.id, reason=text + "; the worker restarts", memory=text)
            return
        for key in msg.get("keys", ()):
            ts = self.tasks.get(key)
            if ts is None or ts.processing_on is not ws:
                continue
            ts.suspicious += 1
            self.memory_failures[key] = text
            # Its thread runs on until the stop lands (the worker then says
            # "task-dropped"): released, it counts as stale there.
            ws.executing.add(ts)
            if ts.suspicious > self.allowed_failures:
                ts.error = self._killed_error(ts, ws.address, text)
                if ts not in ws.seceded:
                    ws.stale[key] = ws.processing[ts]
                    ws.occupancy += ws.processing[ts]
                self.transitions({key: ERRED})
            else:
                self.transitions({key: RELEASED})
        self.fill_workers()

    def _killed_error(self, ts, address, reason):
        """The error of a task that ended ``allowed_failures`` workers (or runs), the
        last at ``address``: it names memory when memory was the last cause."""
        memory = self.memory_failures.get(ts.key)
        kind = "KilledWorker" if memory is None else "MemoryLimitExceeded"
        args = (ts.key, address, ts.suspicious - 1, memory or reason)
        return error_info(kind, str(ERROR_TYPES[kind](*args)), ts.key, args)

    def worker_died(self, token, pid, reason):
        """The supervisor of token ``token`` says how its worker's process ``pid``
        ended (``reason``: "its process exited with code 3"...).  The worker, if
        still registered (its lost connection not noticed yet), is removed with that
        reason; tasks held for it (`lost`) err with it.  The worker's address, or None
        if no worker of that token and process is known."""
        if not token:                           # an unsupervised worker has none
            return None
        reason = str(reason)[:MAX_DEATH_TEXT]
        for ws in self.workers.values():        # a death is rare: no index kept
            if ws.supervised == token and ws.pid == pid:
                self._log_worker_event(ws, {"action": "worker-died", "reason": reason})
                self.remove_worker(ws.id, reason=reason)
                return ws.address
        held = self.lost.get(token)
        if held is None or held.pid != pid:
            return None
        self._log_worker_event(held, {"action": "worker-died", "reason": reason})
        self._end_wait(token, reason + held.note, "worker-died")
        return held.address

    def death_unexplained(self, token):
        """The shell waited long enough for the word of the supervisor of token
        ``token``: the tasks held for its worker err with the reason it was lost."""
        held = self.lost.get(token)
        if held is not None:
            self._end_wait(token, held.reason, "death-unexplained")

    def _end_wait(self, token, reason, stimulus):
        held = self.lost.pop(token)
        outer, self.stimulus = self.stimulus, stimulus
        recs = {}
        for key in held.keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state != RELEASED:
                continue                   # forgotten, or asked for again meanwhile
            if ts.who_wants or ts.waiters:
                ts.error = self._killed_error(ts, held.address, reason)
                recs[key] = ERRED
            else:
                recs[key] = FORGOTTEN
        self.transitions(recs)
        self.stimulus = outer

    def handle_worker_message(self, wid, msg, now=0.0):
        return self.handle_worker_messages(wid, (msg,), now)

    def handle_worker_messages(self, wid, msgs, now=0.0):
        """Messages of worker ``wid``, in order (a batch it sent).  False, and the
        rest is ignored, once the worker is unknown (or removed): the shell tells it.

        After a run of "task-finished" messages, the worker gets queued tasks
        (`fill_workers`) once, not after each: the same tasks in the same order, in
        one pass instead of one per message."""
        self._batching = True
        self.tell_time(now)
        try:
            for msg in msgs:
                ws = self.workers.get(wid)
                if ws is None:
                    return False
                ws.last_seen = now
                op = msg["op"]
                if op != "task-finished" and self._fill_after is not None:
                    self._fill_finished()
                self.stimulus = op
                handler = self.FROM_WORKERS.get(op)
                if handler is None:
                    continue
                handler(self, ws, msg)
                if self.moves and ws.status == CLOSING_GRACEFULLY:
                    # A retiring worker's task ended or was given back: it may be done.
                    self._advance_moves()
            return True
        finally:
            self._batching = False
            if self._fill_after is not None:
                self._fill_finished()

    def _fill_finished(self):
        ws, self._fill_after = self._fill_after, None
        if self.workers.get(ws.id) is ws:
            self.stimulus = "task-finished"
            self.fill_workers(ws)

    def _on_heartbeat(self, ws, msg):
        metrics = ws.metrics = msg.get("metrics", {})
        if "sent" in metrics:
            # The worker's clock against ours: skewed by their difference across hosts.
            metrics["latency"] = max(ws.last_seen - metrics["sent"], 0.0)
        limit = metrics.get("memory_limit")
        if limit is not None:
            ws.memory_limit = limit
        status = metrics.get("status")
        if status == PAUSED and ws.paused_since is None:
            self._pause(ws, ws.last_seen)
        elif status == RUNNING and ws.paused_since is not None:
            self._resume(ws, ws.last_seen)

    def _on_task_started(self, ws, msg):
        key = msg["key"]
        ts = self.tasks.get(key)
        if _is_current(ts, ws, msg):
            ws.executing.add(ts)
        elif key not in ws.stale:
            # Released before this word came: it holds a thread all the same, until
            # the worker says it is over.
            duration = self._stale_duration(ts, key)
            ws.stale[key] = duration
            ws.occupancy += duration
            self._note_queue(ws)
        if msg.get("confirm"):
            # Always answered, even when stale: the worker holds a thread for it.
            self.send_worker(ws, {"op": "go", "key": msg["key"]})

    def _on_task_finished(self, ws, msg):
        freed = ws.stale and self._thread_freed(ws, msg["key"])
        ts = self.tasks.get(msg["key"])
        if not _is_current(ts, ws, msg):
            # Stale: cancelled, or rerouted elsewhere.  Keep the data only if useful
            # and of this run (a key released and submitted again may name another
            # computation).  An earlier run of a key running here again ended after
            # its release: the worker let its value go on that release's "free-keys",
            # and nothing is to be done.
            if ts is None or ts.processing_on is not ws:
                if (ts is not None and ts.state == MEMORY and ws not in ts.who_has
                        and msg.get("run_id", ts.run_id) == ts.run_id):
                    self._add_replica(ts, ws)
                else:
                    self._free_keys(ws, (msg["key"],))
            if freed:                   # its thread is free for the queued tasks
                self._fill_after_finish(ws)
            return
        ts.nbytes = msg.get("nbytes", 0)
        ts.type = msg.get("type")
        ts.data = msg.get("data")
        direct = msg.get("direct")
        if direct and ts.data is not None:
            clients = self.clients
            # Not a client that takes no value of the key straight: the worker
            # was told of it before the client said so.
            indirect = self.indirect.get(ts.key, ()) if self.indirect else ()
            ts.direct = tuple(cid for cid in direct if cid in clients
                              and ws.address not in clients[cid].wary
                              and cid not in indirect)
        else:
            ts.direct = ()
        if "duration" in msg:
            ts.group.add_duration(msg["duration"])
        ts.group.add_nbytes(ts.nbytes)
        self._add_replica(ts, ws)
        if self.plugin_events is not None and "start" in msg:
            start = msg["start"]
            self._finish_times = (ts.key, [{"action": "compute", "start": start,
                                            "stop": start + msg.get("duration", 0.0)}])
        self.transitions(self._transition(ts, MEMORY))
        self._finish_times = None
        self._fill_after_finish(ws)

    def _fill_after_finish(self, ws):
        """``ws`` has a thread free: fill it now, or after the run of "task-finished"
        messages this one is part of (`handle_worker_messages`)."""
        if self._batching:
            self._fill_after = ws
        else:
            self.fill_workers(ws)

    def _on_task_seceded(self, ws, msg):
        """A running task gave its thread back to wait for other work: the slot is
        free for another task (here, or stolen for), and the task's estimate leaves
        the worker's occupancy, until it rejoins."""
        key = msg["key"]
        ts = self.tasks.get(key)
        if _is_current(ts, ws, msg):
            if ts in ws.seceded:
                return
            ws.executing.add(ts)
            ws.seceded.add(ts)
            self.idle[ws] = None
            ws.occupancy = max(ws.occupancy - ws.processing[ts], 0.0)
            ws.processing[ts] = 0.0
        elif not self._thread_freed(ws, key):
            return
        self.fill_workers(ws)

    def _on_task_rejoined(self, ws, msg):
        """A seceded task took a thread slot back (the worker waited for one)."""
        key = msg["key"]
        ts = self.tasks.get(key)
        if _is_current(ts, ws, msg):
            if ts in ws.seceded:
                ws.seceded.discard(ts)
                ws.processing[ts] = ts.group.estimate
                ws.occupancy += ws.processing[ts]
                self._note_queue(ws)          # its queue may wait behind it again
        elif key not in ws.stale:
            # Released while it waited: it holds a thread until the worker drops it.
            duration = self._stale_duration(ts, key)
            ws.stale[key] = duration
            ws.occupancy += duration

    def _on_task_dropped(self, ws, msg):
        """A task released while it ran (or waited for "go") there is over; its result,
        if any, was dropped."""
        if self._thread_freed(ws, msg["key"]):
            self.fill_workers(ws)

    def _on_reschedule(self, ws, msg):
        """A task raised `Reschedule` on ``ws``, whose thread is free again: placed
        anew, as if it had not run."""
        ts = self.tasks.get(msg["key"])
        if not _is_current(ts, ws, msg):
            self._on_task_dropped(ws, msg)          # released meanwhile: stale there
            return
        ws.executing.discard(ts)
        self.transitions({ts.key: RELEASED})
        self.fill_workers()

    def _thread_freed(self, ws, key):
        """`key`, if counted in ``ws.stale``, no longer holds a thread there."""
        duration = ws.stale.pop(key, None)
        if duration is None:
            return False
        ws.occupancy = max(ws.occupancy - duration, 0.0)
        self.idle[ws] = None
        return True

    def _add_replica(self, ts, ws):
        if ws not in ts.who_has:
            _add(ts, "who_has", ws, ws.alone)
            ws.has_what.add(ts)
            ws.nbytes += max(ts.nbytes, 0)

    def _on_task_erred(self, ws, msg):
        freed = ws.stale and self._thread_freed(ws, msg["key"])
        ts = self.tasks.get(msg["key"])
        if not _is_current(ts, ws, msg):
            if freed:
                self.fill_workers(ws)
            return
        ws.executing.discard(ts)        # over: a release now frees its thread
        self._note_queue(ws)
        if ts.retries > 0:
            ts.retries -= 1
            self.transitions({ts.key: RELEASED})
            if ts.key in self.tasks and ts.state == RELEASED:
                self.transitions({ts.key: WAITING})
            self.fill_workers()
            return
        text = msg.get("text", "")
        if len(text) > self.max_error_text:
            text = text[: self.max_error_text] + "... (truncated)"
        tb = msg.get("traceback_text", "")
        if len(tb) > self.max_error_text:
            tb = "... (truncated)" + tb[-self.max_error_text:]
        ts.error = {"type": msg.get("type", "Exception"), "text": text,
                    "exception": msg.get("exception"), "traceback": msg.get("traceback"),
                    "traceback_text": tb, "chain": msg.get("chain"), "origin": ts.key,
                    "worker": ws.address}
        self.transitions({ts.key: ERRED})
        self.fill_workers()

    def _on_input_unmovable(self, ws, msg):
        """``ws`` could not be sent input ``dep`` of task ``key`` (its holder could
        not pickle it, or the relay could not carry it) and gave the task up: placed
        afresh where its unmovable inputs are, or, if no worker it may run on holds
        them all, erred saying why."""
        kind, text = msg.get("type", "Exception"), msg.get("text", "")
        dts = self.tasks.get(msg["dep"])
        if dts is not None and dts.state == MEMORY:
            self.unmovable[dts.key] = text
        ts = self.tasks.get(msg["key"])
        if not _is_current(ts, ws, msg):
            return
        if self._near_unmovable(ts, self._valid_workers(ts)):
            self.transitions({ts.key: WAITING})
        else:
            ts.error = error_info(kind, text, ts.key)
            self.transitions({ts.key: ERRED})
        self.fill_workers()

    def _on_missing_data(self, ws, msg):
        """A worker could not get ``dep`` from ``holder``: that replica is gone.
        Without a task (``key`` None) it was a copy asked for by a move."""
        dts = self.tasks.get(msg["dep"])
        holder = self.by_address.get(msg.get("holder"))
        if dts is None:
            if msg.get("key") is None and self.moves:
                self._copy_failed(ws, msg["dep"])
            return
        if holder is not None and holder in dts.who_has:
            _discard(dts, "who_has", holder)
            holder.has_what.discard(dts)
            holder.nbytes -= max(dts.nbytes, 0)
        if dts.state == MEMORY and not dts.who_has:
            # First, so that its dependents are sent back to wait for it rather
            # than rescheduled with nowhere to fetch it from.
            self.transitions({dts.key: RELEASED})
        ts = self.tasks.get(msg.get("key"))
        recs = {}
        if ts is not None and ts.state == PROCESSING and ts.processing_on is ws:
            if dts.who_has:
                # Tell the worker where else the data lives.
                self.send_worker(ws, {"op": "who-has", "who_has": {
                    dts.key: [w.address for w in dts.who_has]}})
            else:
                recs[ts.key] = RELEASED
        self.transitions(recs)
        self.fill_workers()
        if msg.get("key") is None and self.moves:
            self._copy_failed(ws, msg["dep"])

    def _on_peer_unreachable(self, ws, msg):
        other = self.by_address.get(msg["address"])
        if other is not None and other is not ws:
            ws.unreachable.add(other)

    def _on_peer_reachable(self, ws, msg):
        ws.unreachable.discard(self.by_address.get(msg["address"]))

    def _on_relay(self, ws, msg):
        """``ws`` cannot reach the workers holding these keys: ask a holder for them
        and forward its answer as it came (opaque blobs, never unpickled), within
        `max_relay_bytes`; or, when ``ws`` can take streams, let the holder stream
        large values to it through the shell's relay, uncapped (the answer lists
        them as a client's gather does)."""
        self._new_gather(None, ws, msg["request_id"], list(msg["keys"]),
                         self.max_relay_bytes,
                         stream=bool(msg.get("stream")) and self.relay_streams)

    def _on_add_keys(self, ws, msg):
        """Data was put on a worker (scatter) or copied to it (a move)."""
        for key, nbytes, typ in msg["keys"]:
            ts = self.tasks.get(key)
            if ts is None:
                self._free_keys(ws, (key,))
                continue
            ts.nbytes = nbytes
            ts.type = typ or ts.type
            self._add_replica(ts, ws)
            sc = self.scatters.get(key)
            if sc is not None:
                sc["pending"].discard(ws.id)
                sc["acked"] = True
                if not sc["pending"]:
                    self._end_scatter(key, {"op": "scattered", "key": key})
            if ts.state != MEMORY:
                self.transitions({ts.key: MEMORY})
        self.fill_workers()
        if self.moves:
            self._copies_made(ws, [entry[0] for entry in msg["keys"]])

    def _on_put_failed(self, ws, msg):
        """``ws`` could not download values streamed to it for a scatter."""
        for key in msg["keys"]:
            sc = self.scatters.get(key)
            if sc is not None and ws.id in sc["pending"]:
                self._scatter_target_lost(key, ws.id, (
                    f"{key!r} did not reach worker {ws.address} through the scheduler's "
                    "relay"))

    def _on_data(self, ws, msg):
        gid = msg["request_id"]
        g = self.gathers.get(gid)
        if g is None:
            return
        g["pending"].discard(ws.id)
        g["data"].update(msg.get("data", {}))
        g["errors"].update(msg.get("errors", {}))
        receiver = g["worker"] if g["worker"] is not None else self.clients.get(g["client"])
        for stream in msg.get("streams", ()):
            g["streams"].append(stream)
            g["streamed"].update(stream["keys"])
            self._announce_stream(stream, ws, receiver)
        missing = msg.get("missing", ())
        for key in missing:
            ts = self.tasks.get(key)
            if ts is not None and ws in ts.who_has:
                _discard(ts, "who_has", ws)
                ws.has_what.discard(ts)
                if not ts.who_has and ts.state == MEMORY:
                    self.transitions({key: RELEASED})
        g["missing"].extend(missing)
        self._maybe_finish_gather(gid)

    def _on_log_event(self, ws, msg):
        """A worker's event (a forwarded log record...); a dict says which worker
        logged it, as in dask.distributed."""
        when, what = msg["event"]
        if isinstance(what, dict):
            what = {**what, "worker": ws.address}
        for topic in msg["topics"]:
            self._log_event(topic, [when, what])

    def _log_worker_event(self, ws, msg):
        """``msg`` about the worker (or `Held` record) ``ws``: an event of its address's
        topic, and of "all" naming it, as dask.distributed's scheduler logs them."""
        self._log_event(ws.address, [self.clock, msg])
        self._log_event("all", [self.clock, {**msg, "worker": ws.address}])

    def _log_event(self, topic, event):
        """``event`` [time, msg] of ``topic``: kept among the topic's latest, and sent
        as it came to the clients subscribed to the topic."""
        kept = self.events.get(topic)
        if kept is None:
            kept = self.events[topic] = deque(maxlen=EVENTS_KEPT)
        kept.append(tuple(event))
        for cid in self.subscribers.get(topic, ()):
            self.send_client(cid, {"op": "event", "topic": topic, "event": event})
        if self.plugin_events is not None:
            self.plugin_events.append(("log_event", topic, event))

    def _on_run_result(self, ws, msg):
        r = self.runs.get(msg["request_id"])
        if r is None:
            return
        r["pending"].discard(ws.id)
        r["results"][ws.address] = {k: v for k, v in msg.items()
                                    if k not in ("op", "request_id")}
        self._maybe_finish_run(msg["request_id"])

    FROM_WORKERS = {
        "heartbeat": _on_heartbeat,
        "task-started": _on_task_started,
        "task-finished": _on_task_finished,
        "task-erred": _on_task_erred,
        "reschedule": _on_reschedule,
        "task-dropped": _on_task_dropped,
        "task-seceded": _on_task_seceded,
        "task-rejoined": _on_task_rejoined,
        "steal-response": _on_steal_response,
        "missing-data": _on_missing_data,
        "input-unmovable": _on_input_unmovable,
        "peer-unreachable": _on_peer_unreachable,
        "peer-reachable": _on_peer_reachable,
        "relay": _on_relay,
        "add-keys": _on_add_keys,
        "put-failed": _on_put_failed,
        "data": _on_data,
        "run-result": _on_run_result,
        "memory-exceeded": _on_memory_exceeded,
        "log-event": _on_log_event,
    }

    # ------------------------------------------------------------ clients

    def add_client(self, cid):
        if cid not in self.clients:
            self.clients[cid] = ClientRecord(cid)
            event = [self.clock, {"action": "add-client", "client": cid}]
            self._log_event("all", event)
            self._log_event(cid, event)
            if self.plugin_events is not None:
                self.plugin_events.append(("add_client", cid))
        return self.clients[cid]

    def remove_client(self, cid):
        cs = self.clients.pop(cid, None)
        if cs is None:
            return
        self.stimulus = "remove-client"
        for subscribed in self.subscribers.values():
            subscribed.discard(cid)
        for key, clients in list(self.indirect.items()):
            clients.discard(cid)
            if not clients:
                del self.indirect[key]
        self._log_event("all", [self.clock, {"action": "remove-client", "client": cid}])
        self.events.pop(cid, None)              # nobody reads a gone client's own
        for token, (client, _, _) in list(self.worker_waiters.items()):
            if client == cid:
                del self.worker_waiters[token]
        if self.plugin_events is not None:
            self.plugin_events.append(("remove_client", cid))
        self._end_streams(cs)
        self._coordinated(self.coordination.remove_client(cid))
        self._release_keys(cid, [ts.key for ts in cs.wants_what])

    def _release_keys(self, cid, keys):
        if self.parked:
            self._drop_gathers(cid, keys)
        recs = {}
        cs = self.clients.get(cid)
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            _discard(ts, "who_wants", cid)
            if cs is not None:
                cs.wants_what.discard(ts)
                cs.reports.discard(ts)
            if not ts.who_wants and not ts.waiters:
                recs[key] = FORGOTTEN
        self.transitions(recs)
        self.fill_workers()

    def desire_keys(self, cid, keys):
        cs = self.clients.get(cid)
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            _add(ts, "who_wants", cid)
            if cs is not None:
                cs.wants_what.add(ts)

    def handle_client_message(self, cid, msg):
        op = self.stimulus = msg["op"]
        handler = self.FROM_CLIENTS.get(op)
        if handler is not None:
            handler(self, cid, msg)

    def _on_update_graph(self, cid, msg):
        # The task list leaves the message and is consumed entry by entry: what
        # update_graph does not keep of a huge graph is freed as it goes.
        tasks = list(msg.pop("tasks", ()))
        self._take_indirect(cid, msg)
        self.update_graph(cid, _consume(tasks), msg.get("keys", ()),
                          msg.get("priorities"), msg.get("user_priority", 0),
                          msg.get("retries", 0), msg.get("restrictions"),
                          msg.get("annotations"), msg.get("workers"),
                          msg.get("allow_other_workers", False), msg.get("resources"))
        if msg.get("holds"):
            self._hold_for_tasks(msg["holds"])

    def _on_client_releases_keys(self, cid, msg):
        self._release_keys(cid, msg["keys"])

    def _take_indirect(self, cid, msg):
        for key in msg.get("indirect", ()):
            # The client takes no value of these straight from a worker: one of an
            # earlier run of the key could come that way (see client/state.py).
            self.indirect.setdefault(key, set()).add(cid)

    def _on_client_desires_keys(self, cid, msg):
        self._take_indirect(cid, msg)
        self.desire_keys(cid, msg["keys"])
        for key in msg["keys"]:
            self._report(cid, key)

    def _on_report_keys(self, cid, msg):
        """A client asks to hear how these keys of its end, even those whose value
        its worker sends it straight: to confirm keys it has (``lost`` None), or
        because its connection to the worker at ``lost`` dropped, so that values
        sent on it may never have come.  Then these are the keys pending there:
        those whose value the scheduler was told went straight are sent again,
        value and all, and the client is `wary` of that worker from now on (the
        others come the long way, or straight from another worker)."""
        cr = self.clients.get(cid)
        if cr is None:
            return
        lost = msg.get("lost")
        if lost is not None:
            cr.wary.add(lost)
            for key in msg["keys"]:
                ts = self.tasks.get(key)
                if ts is not None and ts.state == MEMORY and cid in ts.direct:
                    self.send_client(cid, self._in_memory(ts, True))
            return
        for key in msg["keys"]:
            ts = self.tasks.get(key)
            if (ts is not None and ts.state not in (MEMORY, ERRED)
                    and ts in cr.wants_what):
                cr.reports.add(ts)      # told when it ends (`_after_memory`)
            else:
                self._report(cid, key)

    def _report(self, cid, key):
        """Tell ``cid`` how ``key`` ended, if it has (or that there is no such task);
        a key still to run is reported when it ends."""
        report = self._report_of(key)
        if report is not None:
            self.send_client(cid, report)

    def _report_of(self, key):
        """The message that tells a client how ``key`` ended: "key-in-memory",
        "task-erred" (also when there is no such task), or None while it runs."""
        ts = self.tasks.get(key)
        if ts is None:
            return {"op": "task-erred", "key": key,
                    **error_info("KeyError", f"no task {key!r} on the scheduler", key)}
        if ts.state == MEMORY:
            return {"op": "key-in-memory", "key": key, "type": ts.type,
                    "nbytes": ts.nbytes}
        if ts.state == ERRED:
            return {"op": "task-erred", **ts.error, "key": key}
        return None

    def _on_fire_and_forget(self, cid, msg):
        """Run these keys to their end even if no client wants them any more: the
        FIRE_AND_FORGET holder wants each one not ended yet (and so its inputs, which
        it waits on) and lets go when it ends (`_after_memory`, `_any_erred`)."""
        recs = {}
        for key in msg["keys"]:
            ts = self.tasks.get(key)
            if ts is None or ts.state in (MEMORY, ERRED):
                continue
            _add(ts, "who_wants", FIRE_AND_FORGET)
            if ts.state == RELEASED:
                recs[key] = WAITING
        self.transitions(recs)
        self.fill_workers()

    def _on_retry(self, cid, msg):
        """Compute erred keys again, with the erred inputs they erred from (dask.
        distributed's `Client.retry`).  Every key asked for is reported again once
        it ends: the client waits on those it thought erred."""
        closure, stack = {}, [self.tasks.get(key) for key in msg["keys"]]
        while stack:
            ts = stack.pop()
            if ts is None or ts.state != ERRED or ts.key in closure:
                continue
            closure[ts.key] = ts
            stack.extend(ts.dependencies)
        # Released all first, so that no task waiting again finds an erred input;
        # then those wanted wait (their inputs with them) and the others are forgotten
        # once no dependent holds them.
        recs = {}
        for ts in closure.values():
            recs.update(self._transition(ts, RELEASED))
        self.transitions(recs)
        self.fill_workers()
        for key in msg["keys"]:
            if key not in closure:
                self._report(cid, key)
        self._reply(cid, msg, None)

    def _on_cancel(self, cid, msg):
        """A client gives up keys: its Futures of them, and of every result that
        depends on them, are cancelled (as in dask.distributed).  A key another
        client also wants stays for that client, with what depends on it, unless
        ``force``: then it is cancelled for every client.  Holders (a dataset, a
        Variable's value...) keep theirs either way.  The clients told hear why, if
        the canceller said ("reason", "msg")."""
        force = msg.get("force")
        why = {name: msg[name] for name in ("reason", "msg") if name in msg}
        recs = {}
        asked = set(msg["keys"])
        todo = list(asked)
        seen = set()
        while todo:
            key = todo.pop()
            ts = self.tasks.get(key)
            if ts is None or key in seen:
                continue
            seen.add(key)
            if force or all(c == cid for c in ts.who_wants):
                todo.extend(dts.key for dts in ts.dependents)
            if force:
                wanters = [c for c in ts.who_wants if c in self.clients]
            else:
                wanters = [cid] if key in asked or cid in ts.who_wants else []
            for c in wanters:
                _discard(ts, "who_wants", c)
                cs = self.clients.get(c)
                if cs is not None:
                    cs.wants_what.discard(ts)
                    cs.reports.discard(ts)
                if c != cid or key not in asked:      # the canceller knows those
                    self.send_client(c, {"op": "cancelled", "key": key, **why})
            if not ts.who_wants:
                # Dependents that were only there for this key go too.
                recs[key] = RELEASED
        self.transitions(recs)
        for key in recs:
            ts = self.tasks.get(key)
            if ts is not None and not ts.who_wants and not ts.waiters:
                self.transitions({key: FORGOTTEN})
        self.fill_workers()
        if "request_id" in msg:
            self._reply(cid, msg, None)

    def _on_gather(self, cid, msg):
        """Send values of keys to a client.  With ``wait``, keys still being computed
        are waited for here, so the answer leaves as soon as the last one is done."""
        max_bytes = msg.get("max_bytes")
        stream = bool(msg.get("stream")) and self.relay_streams and max_bytes is None
        if self.relay_streams:
            # Streams of an earlier answer the client could not take: their senders,
            # waiting at the relay, give up now.
            for ticket in msg.get("unwanted", ()):
                self.outbox.append(("relay", ticket, None))
        self._new_gather(cid, None, msg["request_id"], list(msg["keys"]),
                         max_bytes, msg.get("wait"), stream, msg.get("direct", True))

    def _new_gather(self, cid, ws, request_id, keys, max_bytes, wait=False, stream=False,
                    direct=False):
        """Values of ``keys`` for a client (``cid``) or, relayed, for a worker (``ws``).
        With `stream`, holders may send large values straight to that receiver
        through the shell's relay: the answer then lists those streams (opaque:
        ticket, sizes, keys) beside the values."""
        gid = next(self._ids)
        g = self.gathers[gid] = {"client": cid, "worker": ws, "request_id": request_id,
                                 "pending": set(), "data": {}, "missing": [], "errors": {},
                                 "keys": keys, "waiting": set(), "max_bytes": max_bytes,
                                 "holders": {}, "stream": stream, "streams": [],
                                 "streamed": set(), "direct": [] if direct else None}
        if wait:
            tasks, parked, waiting = self.tasks, self.parked, g["waiting"]
            for key in keys:
                ts = tasks.get(key)
                if ts is not None and ts.state not in (MEMORY, ERRED):
                    waiting.add(key)
                    gids = parked.get(key)
                    if gids is None:
                        parked[key] = gid
                    elif type(gids) is int:
                        parked[key] = {gids, gid}
                    else:
                        gids.add(gid)
        if not g["waiting"]:
            self._start_gather(gid, keys)

    def _unpark(self, key, ok):
        """The gathers parked on ``key`` go on: [their clients]."""
        clients = []
        gids = self.parked.pop(key, ())
        for gid in (gids,) if type(gids) is int else gids:
            g = self.gathers.get(gid)
            if g is None:
                continue
            clients.append(g["client"])
            if not ok:
                # An erred or forgotten key ends the wait: the client sees why.
                for other in g["waiting"]:
                    self._unpark_one(other, gid)
                g["waiting"].clear()
                g["missing"].append(key)
                self._maybe_finish_gather(gid)
                continue
            g["waiting"].discard(key)
            if not g["waiting"]:
                self._start_gather(gid, [k for k in g["keys"] if k not in g["missing"]])
        return clients

    def _drop_gathers(self, cid, keys):
        """Gathers of client ``cid`` sent with "direct" and waiting for one of the
        ``keys`` it releases end without an answer: it answered them itself (the
        values came straight, before the worker's word came here), or their
        callers gave up, and it ended them as it let the keys go
        (`ClientState.end_gathers`)."""
        parked, gathers = self.parked, self.gathers
        for key in keys:
            gids = parked.get(key)
            if gids is None:
                continue
            for gid in (gids,) if type(gids) is int else list(gids):
                g = gathers.get(gid)
                if (g is None or g["client"] != cid or g["worker"] is not None
                        or g["direct"] is None):
                    continue
                del gathers[gid]
                for other in g["waiting"]:
                    self._unpark_one(other, gid)

    def _unpark_one(self, key, gid):
        """Gather ``gid`` no longer waits for ``key``."""
        gids = self.parked.get(key)
        if gids == gid:
            del self.parked[key]
        elif type(gids) is set:
            gids.discard(gid)

    def _start_gather(self, gid, keys):
        g = self.gathers[gid]
        by_worker = {}
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state != MEMORY or not ts.who_has:
                g["missing"].append(key)
                continue
            if ts.data is not None:
                if g["direct"] is not None and g["client"] in ts.direct:
                    g["direct"].append(key)     # the client has it, or asks again
                else:
                    g["data"][key] = ts.data
                continue
            ws = min(ts.who_has, key=lambda w: len(w.processing))
            by_worker.setdefault(ws, []).append(key)
        for ws, wkeys in by_worker.items():
            g["pending"].add(ws.id)
            msg = {"op": "send-data", "keys": wkeys, "request_id": gid}
            if g["stream"]:
                # Whom the holder signs the streamed message for: its receiver.
                msg["for"] = g["client"] if g["worker"] is None else g["worker"].id
            if g["worker"] is not None:
                msg["max_bytes"] = g["max_bytes"]
                g["holders"].update(dict.fromkeys(wkeys, ws.address))
            self.send_worker(ws, msg)
        self._maybe_finish_gather(gid)

    def _gather_worker_failed(self, gid, wid):
        g = self.gathers[gid]
        g["pending"].discard(wid)
        # Keys that worker was to send are retried where replicas remain, or missing.
        wanted = [k for k in g["keys"] if k not in g["data"] and k not in g["missing"]
                  and k not in g["streamed"]]
        pending_elsewhere = set()
        for key in wanted:
            ts = self.tasks.get(key)
            if ts is not None:
                for ws in ts.who_has:
                    if ws.id in g["pending"]:
                        pending_elsewhere.add(key)
        retry = [k for k in wanted if k not in pending_elsewhere]
        if retry:
            self._start_gather(gid, retry)
        else:
            self._maybe_finish_gather(gid)

    def _maybe_finish_gather(self, gid):
        g = self.gathers.get(gid)
        if g is None or g["pending"] or g["waiting"]:
            return
        del self.gathers[gid]
        if g["max_bytes"] is not None:
            self._fit_gather(g)
        msg = {"request_id": g["request_id"], "data": g["data"],
               "missing": g["missing"], "errors": g["errors"]}
        ws = g["worker"]
        if g["streams"]:
            if (self.clients.get(g["client"]) is None if ws is None
                    else self.workers.get(ws.id) is not ws):
                self._give_up_streams(g)      # nobody left to download them
            msg["streams"] = g["streams"]
        if ws is None:
            # The client learns the type of each key answered, which it may not
            # know yet: the answer can overtake the word that the key is done.
            tasks = self.tasks
            types = {key: tasks[key].type for key in g["data"] if key in tasks}
            if types:
                msg["types"] = types
            if g["direct"]:
                if len(g["direct"]) == len(g["keys"]) and not (
                        g["data"] or g["missing"] or g["errors"] or g["streams"]):
                    # Every value went to the client straight: it has answered
                    # this gather itself (or will ask again, "report-keys", if a
                    # value was lost with its connection to a worker).
                    return
                msg["direct"] = g["direct"]
            self.send_client(g["client"], {"op": "gather-result", **msg})
            return
        for key, error in g["errors"].items():
            g["errors"][key] = {"type": "TransferError", "text": (
                f"worker {ws.address} cannot reach worker "
                f"{g['holders'].get(key, '(none)')}, which holds {key!r}, and "
                f"the relay through the scheduler failed: {error['text']}")}
        if self.workers.get(ws.id) is ws:
            self.send_worker(ws, {"op": "relay-data", **msg})

    def _announce_stream(self, stream, uploader, downloader):
        """Let the relay pass ``stream`` from one end to the other (records of
        workers or clients; None for one gone), each of which remembers its ticket."""
        for end in (uploader, downloader):
            if end is not None:
                end.streams.append(stream["ticket"])
        self.outbox.append(("relay", stream["ticket"], stream["sizes"]))

    def _end_streams(self, end):
        """``end`` (a worker or client record) has left: the relay gives up the
        streams it was to upload or download; the other end of each learns it at
        once."""
        for ticket in end.streams:
            self.outbox.append(("relay", ticket, None))
        end.streams.clear()

    def _give_up_streams(self, g):
        """The holders' streams of gather ``g`` will never be downloaded: their
        uploads, waiting at the relay, end now rather than at the relay's timeout."""
        for stream in g["streams"]:
            self.outbox.append(("relay", stream["ticket"], None))

    @staticmethod
    def _fit_gather(g):
        """Keep a gather's answer under the receiver's cap: values that do not fit
        become errors naming their key (the receiver would refuse the whole message,
        and wait forever)."""
        room = g["max_bytes"] - GATHER_MARGIN
        for key, blob in list(g["data"].items()):
            need = blob.nbytes + len(str(key)) + 64
            if need <= room:
                room -= need
                continue
            del g["data"][key]
            cap = ("the scheduler relays between workers in one message "
                   f"({g['max_bytes']} bytes, Scheduler(max_relay_bytes=...))"
                   if g["worker"] is not None else
                   "this client accepts in one message "
                   f"({g['max_bytes']} bytes, Client(max_message_bytes=...))")
            g["errors"][key] = {"type": "MessageTooLarge", "text": (
                f"{key!r} is {blob.nbytes} bytes: with the other values asked for "
                f"at the same time, more than {cap}")}

    def _scatter_workers(self, msg):
        """The running workers a scatter may put data on, least loaded first."""
        running = [ws for ws in self.workers.values() if ws.status == "running"]
        allowed = msg.get("workers")
        if allowed is not None:           # [] names none
            running = [ws for ws in running if ws.known_as(allowed)]
        return sorted(running, key=lambda w: (w.nbytes, len(w.has_what)))

    @staticmethod
    def _scatter_targets(ordered, i, broadcast):
        return ordered if broadcast else [ordered[i % len(ordered)]]

    def _on_scatter_targets(self, cid, msg):
        """Where the large values of a scatter are to go ({key: [worker id]}), so
        that the client streams each through the shell's relay signed for its
        worker and announces the streams in "scatter"; None without a relay."""
        ordered = self._scatter_workers(msg) if self.relay_streams else []
        self._reply(cid, msg, {key: [ws.id for ws in self._scatter_targets(
            ordered, i, msg.get("broadcast"))] for i, key in enumerate(msg["keys"])}
            if ordered else None)

    def _on_scatter(self, cid, msg):
        """Put client data on workers; the client hears back once a worker holds it.
        Values streamed through the relay (``streams``, each for the worker chosen
        by "scatter-targets") are downloaded by their workers."""
        ordered = self._scatter_workers(msg)
        streams = msg.get("streams", ())
        if not ordered:
            for stream in streams:
                self.outbox.append(("relay", stream["ticket"], None))
            self.send_client(cid, {"op": "scatter-failed", "request_id": msg["request_id"],
                                   "text": "no workers available to hold scattered data"})
            return
        per_worker = {}
        for i, (key, value) in enumerate(msg["data"].items()):
            if not self._scattering(cid, msg["request_id"], key):
                continue
            targets = self._scatter_targets(ordered, i, msg.get("broadcast"))
            self.scatters[key]["pending"].update(ws.id for ws in targets)
            for ws in targets:
                per_worker.setdefault(ws, {})[key] = value
        for ws, wdata in per_worker.items():
            self.send_worker(ws, {"op": "put-data", "data": wdata})
        # Streams for workers still there first: a broadcast that lost a worker
        # meanwhile is then done once the others hold the key.
        for stream in sorted(streams, key=lambda st: st.get("worker") not in self.workers):
            ws = self.workers.get(stream.get("worker"))
            [key] = stream["keys"]
            if not self._scattering(cid, msg["request_id"], key) or ws is None:
                self.outbox.append(("relay", stream["ticket"], None))
                if ws is None:
                    self._scatter_target_lost(key, None, (
                        f"the worker chosen to receive {key!r} left"))
                continue
            self.scatters[key]["pending"].add(ws.id)
            self._announce_stream(stream, self.clients.get(cid), ws)
            self.send_worker(ws, {"op": "put-data", "data": {}, "streams": [stream]})

    def _scattering(self, cid, request_id, key):
        """Whether ``key`` is to be put on workers (its pending scatter is made), or
        is in memory already (the client is told so at once)."""
        ts = self.tasks.get(key)
        if ts is None:
            ts = self._new_task(key, None)
        _add(ts, "who_wants", cid)
        cs = self.clients.get(cid)
        if cs is not None:
            cs.wants_what.add(ts)
        if ts.state == MEMORY:
            self.send_client(cid, {"op": "scattered", "request_id": request_id,
                                   "key": key})
            return False
        sc = self.scatters.get(key)
        if sc is None:
            self.scatters[key] = {"client": cid, "request_id": request_id,
                                  "pending": set(), "acked": False, "also": []}
        elif (sc["client"], sc["request_id"]) != (cid, request_id):
            # The same value is being put on workers for another scatter (two
            # at once, from one client or two): this one ends as that one does.
            if (cid, request_id) not in sc["also"]:
                sc["also"].append((cid, request_id))
            return False
        return True

    def _end_scatter(self, key, msg):
        """Tell each scatter waiting for ``key`` how it ended (``msg`` without its
        request id): the one putting it on workers, and the others of that key."""
        sc = self.scatters.pop(key)
        for cid, rid in [(sc["client"], sc["request_id"]), *sc["also"]]:
            self.send_client(cid, {**msg, "request_id": rid})

    def _scatter_target_lost(self, key, wid, text):
        """A worker that was to store ``key`` will not (``wid``; None: none was
        found): once no other one is pending, the client hears that the key is
        stored (another worker has it) or failed."""
        sc = self.scatters.get(key)
        if sc is None:
            return
        sc["pending"].discard(wid)
        if sc["pending"]:
            return
        if sc["acked"]:
            self._end_scatter(key, {"op": "scattered", "key": key})
        else:
            self._end_scatter(key, {"op": "scatter-failed", "text": text})

    def _on_run(self, cid, msg):
        self._fan_out(cid, msg["request_id"], {"op": "run", "function": msg["function"]},
                      msg.get("workers"))

    def _fan_out(self, cid, request_id, msg, allowed=None):
        """Send ``msg`` to the running workers (those named in ``allowed``, if given);
        the client gets each one's answer, by address, in one "run-result"."""
        rid = next(self._ids)
        # Paused ones too (a plugin must be there when they run again); not those
        # retiring, which may be gone before they answer.
        targets = [ws for ws in self.workers.values() if ws.status in (RUNNING, PAUSED)]
        if allowed:
            targets = [ws for ws in targets
                       if ws.address in allowed or ws.name in allowed or ws.id in allowed]
        self.runs[rid] = {"client": cid, "request_id": request_id,
                          "pending": {ws.id for ws in targets}, "results": {}}
        for ws in targets:
            self.send_worker(ws, {**msg, "request_id": rid})
        self._maybe_finish_run(rid)

    def _maybe_finish_run(self, rid):
        r = self.runs.get(rid)
        if r is None or r["pending"]:
            return
        del self.runs[rid]
        self.send_client(r["client"], {"op": "run-result", "request_id": r["request_id"],
                                       "results": r["results"]})

    def _reply(self, cid, msg, result):
        self.send_client(cid, {"op": "reply", "request_id": msg["request_id"],
                               "result": result})

    def _on_info(self, cid, msg):
        what = msg["what"]
        # The workers asked about: those named ("workers"), else all.
        named = self.workers.values() if msg.get("workers") is None else \
            self._named(msg["workers"])
        if what == "scheduler-info":
            result = self.info(msg.get("n_workers", -1))
        elif what == "who-has":
            keys = msg.get("keys") or list(self.tasks)
            result = {k: [ws.address for ws in self.tasks[k].who_has]
                      for k in keys if k in self.tasks}
        elif what == "has-what":
            result = {ws.address: [ts.key for ts in ws.has_what] for ws in named}
        elif what == "nthreads":
            result = {ws.address: ws.nthreads for ws in named}
        elif what == "list-collections":
            result = sorted(self.collections)
        elif what == "list-datasets":
            result = sorted(self.datasets, key=str)
        elif what == "get-collection":
            result = self.collections.get(msg["name"])
        elif what == "get-dataset":
            d = self.datasets.get(msg["name"])
            result = None if d is None else d["data"]
        elif what == "task-states":
            keys = msg.get("keys") or list(self.tasks)
            result = {k: self.tasks[k].state for k in keys if k in self.tasks}
        elif what == "events":
            topic = msg.get("topic")
            result = (list(self.events.get(topic, ())) if topic is not None else
                      {t: list(kept) for t, kept in self.events.items()})
        elif what == "get-metadata":
            result = self._metadata_at(msg["keys"])
        elif what == "run-spec":
            ts = self.tasks.get(msg["key"])
            result = None if ts is None or ts.run_spec is None else {
                "spec": Serialized([ts.run_spec]) if type(ts.run_spec) is bytes
                else ts.run_spec,
                "dependencies": [dts.key for dts in ts.dependencies]}
        elif what == "processing":
            result = {ws.address: [ts.key for ts in ws.processing] for ws in named}
        else:
            result = None
        self._reply(cid, msg, result)

    def _on_client_log_event(self, cid, msg):
        for topic in msg["topics"]:
            self._log_event(topic, msg["event"])

    def log_event(self, topic, msg):
        """Log ``msg`` (msgpack-able data) under ``topic``, or each of a list of
        topics, at the latest time known here: an event of the scheduler's own
        (dask.distributed's `Scheduler.log_event`, from `run_on_scheduler`)."""
        self._on_client_log_event(None, log_event_fields(topic, msg, self.clock))

    def _on_set_metadata(self, cid, msg):
        """Store a client's value under the path ``keys`` of nested names; a value
        on the way to it is replaced by a dict."""
        *path, last = msg["keys"]
        node = self.metadata
        for name in path:
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
        node[last] = msg["value"]
        self._reply(cid, msg, True)

    def _metadata_at(self, keys):
        """{"value": what is stored under the path ``keys``} or {} if nothing is;
        {"through": True} if the path goes through a value that is not a dict."""
        node = self.metadata
        for name in keys:
            if not isinstance(node, dict):
                return {"through": True}
            if name not in node:
                return {}
            node = node[name]
        return {"value": node}

    def _on_set_collection(self, cid, msg):
        self.collections[msg["name"]] = msg["data"]
        self._reply(cid, msg, True)

    def _on_publish_dataset(self, cid, msg):
        name = msg["name"]
        if name in self.datasets and not msg.get("override"):
            self._reply(cid, msg, {"error": f"Dataset {name!r} already exists"})
            return
        self._unpublish(name)
        holder = ("dataset", name)
        keys = [k for k in msg.get("keys", ()) if k in self.tasks]
        for key in keys:
            _add(self.tasks[key], "who_wants", holder)
        self.datasets[name] = {"data": msg["data"], "keys": keys}
        self._reply(cid, msg, True)

    def _unpublish(self, name):
        d = self.datasets.pop(name, None)
        if d is not None:
            self._release_keys(("dataset", name), d["keys"])
        return d is not None

    def _on_unpublish_dataset(self, cid, msg):
        self._reply(cid, msg, self._unpublish(msg["name"]))

    def _on_coordinate(self, cid, msg):
        self._coordinated(self.coordination.handle(cid, msg))

    def _on_withdraw(self, cid, msg):
        self._coordinated(self.coordination.withdraw(cid, msg))

    def _coordinated(self, effects):
        """Carry out what `Coordination` asks: replies, and keys kept or let go for
        its values (a holder's or a client's).  A reply that gives values also
        says how the keys of their Futures ended ("reports": the messages of
        `_report_of`), so that the client's new Futures of them start finished or
        erred, not pending until its "client-desires-keys" is answered."""
        for e in effects:
            if type(e) is Reply:
                result = e.result
                if type(result) is dict and result.get("keys"):
                    keys = result["keys"]
                    if "items" in result:          # a batch: the keys of each item
                        keys = [k for of_item in keys for k in of_item]
                    result = {**result, "reports": self._reports_of(keys)}
                self.send_client(e.cid, {"op": "reply", "request_id": e.request_id,
                                         "result": result})
            elif type(e) is Want:
                self.desire_keys(e.who, e.keys)
            else:
                self._release_keys(e.who, e.keys)

    def _reports_of(self, keys):
        """`_report_of` each of ``keys`` that has ended, each once."""
        return [r for r in map(self._report_of, dict.fromkeys(keys)) if r is not None]

    def _on_get_story(self, cid, msg):
        self._reply(cid, msg, self.story(*msg["keys"]))

    def _on_client_options(self, cid, msg):
        cs = self.clients.get(cid)
        if cs is not None and "paused_warning" in msg:
            after = msg["paused_warning"]
            cs.paused_warning = None if after is None else float(after)

    def _on_monitor(self, cid, msg):
        cs = self.clients.get(cid)
        if cs is not None:
            cs.monitor = bool(msg.get("on", True))

    def _on_restart(self, cid, msg):
        """Forget every task; workers drop their data.  Clients' futures are cancelled."""
        keys = list(self.tasks)
        for c in self.clients:
            self.send_client(c, {"op": "restarted"})
        for ws in self.workers.values():
            self.send_worker(ws, {"op": "restart"})
            for ts in ws.executing - ws.seceded:
                ws.stale[ts.key] = ws.processing[ts]
            ws.processing.clear()
            ws.executing.clear()
            ws.seceded.clear()
            ws.has_what.clear()
            ws.occupancy = sum(ws.stale.values())
            ws.nbytes = 0
            self.idle[ws] = None
        log = self.transition_log
        for key in keys:
            ts = self.tasks.pop(key)
            ts.group.states[ts.state] -= 1
            if log is not None:
                log.append((key, ts.state, FORGOTTEN, self.stimulus, self.clock))
                self.transition_recs.append(None)
        for cs in self.clients.values():
            cs.wants_what.clear()
            cs.reports.clear()
        self.indirect.clear()
        self.task_holds.clear()
        self.queued.clear()
        self.unrunnable.clear()
        self.gathers.clear()
        self.parked.clear()
        self.scatters.clear()
        self.steals.clear()
        for ws in self.workers.values():
            ws.stealing = 0
        self.memory_failures.clear()
        self.unmovable.clear()
        self.lost.clear()
        self.datasets.clear()
        self.coordination.forget_keys()
        self._reply(cid, msg, True)
        if self.plugin_events is not None:
            self.plugin_events.append(("restart",))
        if self.moves:                    # no data is left to move
            for move in self.moves.values():
                move.pending.clear()
            self._advance_moves()

    # ------------------------------------------------------------ code on workers

    def _on_register_worker_plugin(self, cid, msg):
        """Keep a worker plugin (an opaque blob) for every worker, and set it up on
        the running ones now: the client hears each one's outcome."""
        name = msg["name"]
        if name in self.worker_plugins and msg.get("idempotent"):
            self.send_client(cid, {"op": "run-result", "request_id": msg["request_id"],
                                   "results": {}})
            return
        self.worker_plugins[name] = msg["plugin"]
        self._fan_out(cid, msg["request_id"],
                      {"op": "plugin-add", "name": name, "plugin": msg["plugin"]})

    def _on_unregister_worker_plugin(self, cid, msg):
        name = msg["name"]
        if self.worker_plugins.pop(name, None) is None:
            self.send_client(cid, {"op": "run-result", "request_id": msg["request_id"],
                                   "results": {}, "unknown": name})
            return
        self._fan_out(cid, msg["request_id"], {"op": "plugin-remove", "name": name})

    def _on_subscribe_topic(self, cid, msg):
        """Workers' events of a topic go to this client (or no longer, ``on`` false)."""
        if msg.get("on", True):
            self.subscribers.setdefault(msg["topic"], set()).add(cid)
        else:
            self.subscribers.get(msg["topic"], set()).discard(cid)

    # ------------------------------------------------------------ cluster management

    def _named(self, names):
        """The workers among ``names`` (addresses or names)."""
        names = {str(n) for n in names}
        return [ws for ws in self.workers.values()
                if ws.address in names or str(ws.name) in names]

    def worker_info(self, ws):
        """What `info` says of one worker."""
        return self.info()["workers"].get(ws.address)

    def wait_for_workers(self, cid, request_id, n):
        """Answer the client once ``n`` workers run (at once if they do); returns a
        token for `stop_waiting_for_workers` (the shell's timeout)."""
        token = next(self._ids)
        self.worker_waiters[token] = (cid, request_id, n)
        self._answer_worker_waiters()
        return token

    def _answer_worker_waiters(self):
        running = len(self._running_workers())
        for token, (cid, rid, n) in list(self.worker_waiters.items()):
            if running >= n:
                del self.worker_waiters[token]
                self.send_client(cid, {"op": "reply", "request_id": rid,
                                       "result": {"ok": True, "workers": running}})

    def stop_waiting_for_workers(self, token):
        entry = self.worker_waiters.pop(token, None)
        if entry is not None:
            cid, rid, _ = entry
            self.send_client(cid, {"op": "reply", "request_id": rid,
                                   "result": {"ok": False,
                                              "workers": len(self._running_workers())}})

    def restart_workers(self, cid, request_id, workers):
        """Restart workers in place: each drops its tasks, its data and its plugins,
        and registers again at its address (its plugins set up anew).  The client
        hears ``{worker as named: "OK" | "unknown" | "timed out"}`` once every one is
        back; returns a token for `restart_timed_out` (the shell's timeout).  Their
        data is lost (recomputed when needed) and their tasks go elsewhere."""
        token = next(self._ids)
        pending, result = {}, {}
        for name in workers:
            found = self._named([name])
            if not found:
                result[name] = "unknown"
                continue
            ws = found[0]
            pending[ws.address] = name
            self.send_worker(ws, {"op": "restart-worker"})
            self.remove_worker(ws.id, reason="restarted on request", expected=True)
        event = [self.clock, {"action": "restart-workers", "workers": list(pending),
                              "client": cid}]
        self._log_event("all", event)
        self._log_event(cid, event)
        self.restarting[token] = {"client": cid, "request_id": request_id,
                                  "pending": pending, "result": result}
        self._maybe_restarted(token)
        return token

    def _restarted(self, ws):
        for token, r in list(self.restarting.items()):
            name = r["pending"].pop(ws.address, None)
            if name is not None:
                r["result"][name] = "OK"
                self._maybe_restarted(token)

    def _maybe_restarted(self, token):
        r = self.restarting[token]
        if not r["pending"]:
            del self.restarting[token]
            self.send_client(r["client"], {"op": "reply", "request_id": r["request_id"],
                                           "result": r["result"]})

    def restart_timed_out(self, token):
        r = self.restarting.get(token)
        if r is not None:
            for name in r["pending"].values():
                r["result"][name] = "timed out"
            r["pending"].clear()
            self._maybe_restarted(token)

    def adaptive_target(self, target_duration=5.0):
        """How many workers the work wants now (dask.distributed's
        `Scheduler.adaptive_target`): enough threads that the tasks not done
        (waiting for inputs, queued, without a worker, processing), at their groups'
        mean durations (or expected ones: `TaskGroup.estimate`), take about
        ``target_duration`` seconds, but no more threads than tasks that can run now;
        counted in workers of this cluster's mean size (one thread each without
        workers).  And at least: one while a task can run;
        the workers running tasks; while results are held, enough workers for their
        memory limits to hold twice the data (one, without limits), so that an idle
        cluster keeps what its Futures hold."""
        work = 0.0                 # seconds of work left, all threads together
        runnable = 0               # tasks that can run now (queued, without a worker,
                                   # processing)
        for tg in self.groups.values():
            ready = tg.states[QUEUED] + tg.states[NO_WORKER]
            later = tg.states[WAITING]
            if ready or later:
                work += (ready + later) * tg.estimate
                runnable += ready
        busy = data = nthreads = 0
        limits = []
        for ws in self.workers.values():
            work += ws.occupancy
            running = len(ws.processing) + len(ws.stale)
            runnable += running
            if running and ws.status != CLOSING_GRACEFULLY:
                busy += 1
            data += ws.nbytes
            nthreads += ws.nthreads
            limits.append(ws.memory_limit or 0)
        threads = min(math.ceil(work / target_duration), runnable)
        n = len(self.workers)
        wanted = math.ceil(threads * n / nthreads) if n else threads
        hold = 0
        if data:
            hold = math.ceil(2 * data * n / sum(limits)) if all(limits) else 1
        return max(wanted, busy, hold, 1 if runnable else 0)

    def workers_to_close(self, n=None):
        """Whom to retire.  With ``n``: the ``n`` workers cheapest to retire, those
        with no task to run before the others, least data first (adaptivity; paused
        workers too).  Without: whom a retirement naming nobody retires, the idle
        running workers, least data first, all of them but one if every worker is
        idle."""
        if n is not None:
            order = sorted((ws for ws in self.workers.values()
                            if ws.status != CLOSING_GRACEFULLY),
                           key=lambda w: (bool(w.processing or w.stale), w.nbytes,
                                          w.address))
            return order[:max(n, 0)]
        running = list(self._running_workers())
        idle = sorted((ws for ws in running if not ws.processing and not ws.stale),
                      key=lambda w: (w.nbytes, w.address))
        return idle[:len(idle) - 1] if len(idle) == len(running) else idle

    def _on_adaptive_target(self, cid, msg):
        """Adaptivity's question: how many workers (`adaptive_target`, kept within
        ``minimum`` and ``maximum``, None for no maximum), and which to retire to get
        there from the workers here, cheapest first: {"target": n, "retire":
        [address]}."""
        duration = _number(msg.get("target_duration"), 5.0)
        target = self.adaptive_target(duration if duration > 0 else 5.0)
        maximum = _number(msg.get("maximum"), None)
        if maximum is not None:
            target = min(target, int(maximum))
        target = max(target, int(_number(msg.get("minimum"))))
        staying = sum(ws.status != CLOSING_GRACEFULLY for ws in self.workers.values())
        retire = self.workers_to_close(n=staying - target)
        self._reply(cid, msg, {"target": target,
                               "retire": [ws.address for ws in retire]})

    def _on_retire_workers(self, cid, msg):
        """Retire workers gracefully: they take no new tasks and give back those not
        started; once their running tasks end, their unique data is copied to the
        workers that stay, then they are removed (``remove``) and closed (``close``).
        The client hears ``{address: what it was}`` of those retired; a worker whose
        data has nowhere to go stays, and is not in the answer."""
        names = msg.get("workers")
        if names is None:
            names = msg.get("names")
        wss = self._named(names) if names is not None else self.workers_to_close()
        move = Move("retire", cid, msg["request_id"], close=msg.get("close", False),
                    remove=msg.get("remove", True))
        for ws in wss:
            move.retiring[ws.id] = ws.status
            move.info[ws.id] = self.worker_info(ws)
            ws.status = CLOSING_GRACEFULLY
            self._hand_back(ws)
        self.moves[next(self._ids)] = move
        self._advance_moves()

    def _hand_back(self, ws):
        """A retiring worker gives up the tasks it has not started: they go elsewhere
        (a steal without a thief)."""
        for ts in list(ws.processing):
            if ts not in ws.executing and ts.key not in self.steals:
                self._request_steal(ts, ws, None)

    def _on_replicate(self, cid, msg):
        """Copies of keys on ``n`` workers (all of them: None), among ``workers``
        if given: missing copies are made, extra ones dropped (moves.plan_replicas)."""
        allowed = self._named(msg["workers"]) if msg.get("workers") else list(self._running_workers())
        allowed = [ws for ws in allowed if ws.status == RUNNING]
        tss = {}
        for key in msg["keys"]:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == MEMORY:
                tss[key] = ts
        acquire, drop = plan_replicas(
            {k: (ts.nbytes, [w.address for w in ts.who_has]) for k, ts in tss.items()},
            msg.get("n"), [ws.address for ws in allowed],
            {ws.address: ws.nbytes for ws in allowed})
        for key, addresses in drop.items():
            for address in addresses:
                self._drop_copy(tss[key], self.by_address[address])
        move = Move("replicate", cid, msg["request_id"])
        self._ask_copies(move, [(tss[key], self.by_address[address], None)
                                for key, addresses in acquire.items()
                                for address in addresses])
        self.moves[next(self._ids)] = move
        self._advance_moves()

    def _on_rebalance(self, cid, msg):
        """Even out the bytes the workers (``workers``, or all) hold by moving keys
        (``keys``, or all) from the heaviest to the lightest (moves.plan_rebalance).
        Keys not in memory fail the whole request."""
        scope = self._named(msg["workers"]) if msg.get("workers") else list(self._running_workers())
        scope = [ws for ws in scope if ws.status == RUNNING]
        if msg.get("keys") is None:
            tss = {ts.key: ts for ws in scope for ts in ws.has_what}
        else:
            tss = {k: self.tasks.get(k) for k in msg["keys"]}
            missing = [k for k, ts in tss.items() if ts is None or ts.state != MEMORY]
            if missing:
                self._reply(cid, msg, {"status": "partial-fail", "keys": missing})
                return
        plan = plan_rebalance(
            {k: (ts.nbytes, [w.address for w in ts.who_has]) for k, ts in tss.items()},
            {ws.address: ws.nbytes for ws in scope})
        move = Move("rebalance", cid, msg["request_id"])
        self._ask_copies(move, [(tss[key], self.by_address[recipient],
                                 self.by_address[sender].id)
                                for key, sender, recipient in plan])
        self.moves[next(self._ids)] = move
        self._advance_moves()

    def _ask_copies(self, move, copies):
        """Ask workers for copies: [(task, recipient, sender id or None)]; one
        "acquire-replicas" per recipient."""
        asked = {}
        for ts, ws, sender in copies:
            move.pending[(ts.key, ws.id)] = sender
            asked.setdefault(ws, []).append(ts)
        for ws, tss in asked.items():
            self.send_worker(ws, {"op": "acquire-replicas",
                                  "who_has": {ts.key: [w.address for w in ts.who_has]
                                              for ts in tss},
                                  "nbytes": {ts.key: ts.nbytes for ts in tss}})

    def _drop_copy(self, ts, ws):
        """``ws`` no longer keeps ``ts`` (another copy remains)."""
        _discard(ts, "who_has", ws)
        ws.has_what.discard(ts)
        ws.nbytes -= max(ts.nbytes, 0)
        self._free_keys(ws, (ts.key,))

    def _copies_made(self, ws, keys):
        """``ws`` confirmed copies ("add-keys"): a rebalance drops the sender's."""
        for move in list(self.moves.values()):
            for key in keys:
                entry = (key, ws.id)
                if entry not in move.pending:
                    continue
                sender = self.workers.get(move.pending.pop(entry))
                ts = self.tasks.get(key)
                if (sender is not None and ts is not None and sender in ts.who_has
                        and len(ts.who_has) > 1):
                    self._drop_copy(ts, sender)
        self._advance_moves()

    def _copy_failed(self, ws, key):
        """``ws`` could not fetch a copy of ``key`` from any holder."""
        for move in self.moves.values():
            if (key, ws.id) in move.pending:
                del move.pending[(key, ws.id)]
                move.failed.append(key)
                move.attempts[key] = move.attempts.get(key, 0) + 1
        self._advance_moves()

    def _recipient_paused(self, ws):
        """Copies asked of ``ws``, now paused, would wait for its memory to fall:
        they count as failed (a retirement asks a running worker instead).  One
        that comes later is kept as any copy."""
        for move in self.moves.values():
            for key, wid in [e for e in move.pending if e[1] == ws.id]:
                del move.pending[(key, wid)]
                move.failed.append(key)
                move.attempts[key] = move.attempts.get(key, 0) + 1
        self._advance_moves()

    def _worker_gone(self, ws):
        """A worker left: copies asked of it failed; a retiring one is retired."""
        for move in self.moves.values():
            for entry in [e for e in move.pending if e[1] == ws.id]:
                del move.pending[entry]
                move.failed.append(entry[0])
            if move.retiring.pop(ws.id, None) is not None:
                move.retired[ws.address] = move.info.get(ws.id)

    def _advance_moves(self):
        """Carry retirements on, and answer the moves that are over.  Reentrant:
        removing a retired worker comes back here, and is then only noted."""
        if self._advancing:
            self._advance_again = True
            return
        self._advancing = True
        try:
            self._advance_again = True
            while self._advance_again:
                self._advance_again = False
                for mid, move in list(self.moves.items()):
                    if move.kind == "retire":
                        self._advance_retirement(move)
                        over = not move.retiring   # copies still coming are extra
                    else:
                        over = not move.pending
                    if over and mid in self.moves:
                        del self.moves[mid]
                        self._finish_move(move)
        finally:
            self._advancing = False

    def _advance_retirement(self, move):
        # Copies go to running workers only: a paused one takes nothing new.  A key
        # a paused worker also holds is kept there, so it is not unique.
        stay = list(self._running_workers())
        for wid, before in list(move.retiring.items()):
            ws = self.workers[wid]
            if ws.processing:
                continue               # its running tasks end there first
            unique = {ts.key: ts for ts in ws.has_what
                      if not any(h.status in (RUNNING, PAUSED) for h in ts.who_has)}
            if not unique:
                del move.retiring[wid]
                self._retired(move, ws)
                continue
            asked = {key for key, _ in move.pending}
            todo = {key: ts.nbytes for key, ts in unique.items() if key not in asked}
            if not stay or any(move.attempts.get(key, 0) >= MAX_COPY_ATTEMPTS
                               for key in todo):
                # Its data has nowhere to go: it is not retired.
                del move.retiring[wid]
                if before == CLOSING_GRACEFULLY:      # another retirement goes on
                    ws.status = before
                else:                  # paused or not as its memory is now
                    ws.status = PAUSED if ws.paused_since is not None else RUNNING
                self._note_queue(ws)
                continue
            plan = plan_retirement(todo, {w.address: w.nbytes for w in stay})
            self._ask_copies(move, [(unique[key], self.by_address[address], None)
                                    for key, address in plan.items()])

    def _retired(self, move, ws):
        move.retired[ws.address] = move.info.get(ws.id)
        if move.remove:
            self.remove_worker(ws.id, reason="retired", expected=True)
        if move.close:
            self.send_worker(ws, {"op": "close"})

    def _finish_move(self, move):
        if move.kind == "retire":
            result = move.retired
        elif move.failed:
            result = {"status": "partial-fail", "keys": sorted(set(move.failed), key=str)}
        else:
            result = {"status": "OK"}
        self.send_client(move.client, {"op": "reply", "request_id": move.request_id,
                                       "result": result})

    FROM_CLIENTS = {
        "update-graph": _on_update_graph,
        "client-releases-keys": _on_client_releases_keys,
        "client-desires-keys": _on_client_desires_keys,
        "report-keys": _on_report_keys,
        "fire-and-forget": _on_fire_and_forget,
        "retry": _on_retry,
        "cancel": _on_cancel,
        "gather": _on_gather,
        "scatter": _on_scatter,
        "scatter-targets": _on_scatter_targets,
        "run": _on_run,
        "info": _on_info,
        "set-collection": _on_set_collection,
        "publish-dataset": _on_publish_dataset,
        "unpublish-dataset": _on_unpublish_dataset,
        "coordinate": _on_coordinate,
        "withdraw": _on_withdraw,
        "monitor": _on_monitor,
        "restart": _on_restart,
        "client-options": _on_client_options,
        "get-story": _on_get_story,
        "register-worker-plugin": _on_register_worker_plugin,
        "unregister-worker-plugin": _on_unregister_worker_plugin,
        "subscribe-topic": _on_subscribe_topic,
        "log-event": _on_client_log_event,
        "set-metadata": _on_set_metadata,
        "retire-workers": _on_retire_workers,
        "adaptive-target": _on_adaptive_target,
        "replicate": _on_replicate,
        "rebalance": _on_rebalance,
    }

    # ------------------------------------------------------------ views

    def story(self, *keys_or_stimuli):
        """What `transition_log` holds of these keys (or TaskStates) and stimulus ids,
        oldest first, as dask.distributed's: [(key, start, finish, recommendations,
        stimulus_id, time)] (see stories.py)."""
        keys = [k.key if isinstance(k, TaskState) else k for k in keys_or_stimuli]
        return stories.story(self.transition_log or (), self.transition_recs or (), keys)

    def memory_info(self, ws, now=None):
        """A worker's memory as it last reported it: process (RSS), managed (results
        in memory, by sizeof), unmanaged (the rest of RSS), spilled (bytes on disk),
        its limit and fractions, and whether and how long it has been paused."""
        m = ws.metrics
        rss = m.get("memory", 0)
        managed = m.get("managed", 0)
        paused_for, time_paused = self.paused_for(ws, now)
        return {"memory": rss, "managed": managed,
                "unmanaged": max(rss - managed, 0), "spilled": m.get("spilled", 0),
                "memory_limit": ws.memory_limit,
                "memory_fractions": ws.memory_fractions,
                "status": ws.status, "paused": ws.paused_since is not None,
                "paused_for": paused_for, "time_paused": time_paused}

    # Figures a worker reports under dask.distributed's names, shown as it sent them
    # (those it sent): task_counts {state: n}; num_fds; bandwidth {"total":
    # bytes/s or None, "workers": {peer: (sum, n)}, "types": {type: (sum, n)}};
    # transfer {"incoming_bytes", "incoming_count", "incoming_count_total",
    # "outgoing_count_total"}; host_net_io and host_disk_io {"read_bps", "write_bps"}.
    WORKER_METRICS = ("task_counts", "num_fds", "bandwidth", "transfer", "host_net_io",
                      "host_disk_io")

    @classmethod
    def _metrics(cls, ws):
        """A worker's last reported figures under dask.distributed's names."""
        m = ws.metrics
        out = {"cpu": m.get("cpu", 0), "memory": m.get("memory", 0),
               "managed_bytes": m.get("managed", 0),
               "spilled_bytes": {"memory": m.get("managed", 0), "disk": m.get("spilled", 0)},
               "executing": len(ws.executing) + len(ws.stale),
               "in_memory": len(ws.has_what), "time": ws.last_seen}
        out.update((name, m[name]) for name in cls.WORKER_METRICS if name in m)
        return out

    def info(self, n_workers=-1):
        """The cluster as `Client.scheduler_info` shows it (dask.distributed's keys
        and more): totals over all workers, details of the first ``n_workers`` (-1:
        all)."""
        workers = list(self.workers.values())
        shown = workers if n_workers == -1 else workers[:max(n_workers, 0)]
        return {
            "n_workers": len(workers),
            "total_threads": sum(ws.nthreads for ws in workers),
            "total_memory": sum(ws.memory_limit or 0 for ws in workers),
            "workers": {ws.address: {"id": ws.id, "name": ws.name, "host": ws.host,
                                     "pid": ws.pid, "nthreads": ws.nthreads,
                                     "local_directory": ws.local_directory,
                                     "services": {}, "nanny": None,
                                     "executing": len(ws.executing) + len(ws.stale),
                                     "unreachable": sorted(w.address
                                                           for w in ws.unreachable),
                                     "resources": dict(ws.resources),
                                     "type": "Worker", "last_seen": ws.last_seen,
                                     "metrics": self._metrics(ws),
                                     **self.memory_info(ws)}
                        for ws in shown},
            "ntasks": len(self.tasks),
            "nclients": len(self.clients),
            "stolen": self.stolen,
        }

    def task_counts(self):
        counts = dict.fromkeys(ALL_STATES, 0)
        for tg in self.groups.values():
            for state, n in tg.states.items():
                counts[state] += n
        return counts

    def snapshot(self, now):
        """What a monitor shows: small, built from counters, no walk over tasks."""
        workers = []
        for ws in self.workers.values():
            # A task released while it runs still holds its thread: it counts here.
            workers.append({
                "address": ws.address, "name": ws.name, "host": ws.host, "pid": ws.pid,
                "nthreads": ws.nthreads, "executing": len(ws.executing) + len(ws.stale),
                "processing": len(ws.processing) + len(ws.stale), "keys": len(ws.has_what),
                "nbytes": ws.nbytes, "cpu": ws.metrics.get("cpu", 0),
                "last_seen": now - ws.last_seen, **self.memory_info(ws, now),
            })
        groups = []
        for tg in sorted(self.groups.values(), key=lambda g: g.seq)[-50:]:
            groups.append({"name": tg.name, "total": tg.total, "done": tg.done,
                           "erred": tg.erred, "states": dict(tg.states)})
        return {"workers": workers, "counts": self.task_counts(), "groups": groups,
                "errors": list(self.errors), "ntasks": len(self.tasks),
                "nclients": len(self.clients)}

    def monitors(self):
        return [cs.id for cs in self.clients.values() if cs.monitor]

    def trim_groups(self, keep=200):
        """Drop the oldest groups that have no live task once there are many."""
        if len(self.groups) <= keep:
            return
        idle = sorted((g for g in self.groups.values() if g.live == 0),
                      key=lambda g: g.seq)
        for tg in idle[: len(self.groups) - keep]:
            del self.groups[tg.name]

    # ------------------------------------------------------------ invariants

    def validate(self):
        running, built = self._running_cache
        if built == (WorkerRecord.status_changes, len(self.workers)):
            assert running == tuple(ws for ws in self.workers.values()
                                    if ws.status == RUNNING), running
        for ws in self.workers.values():
            assert not _may_give(ws) or ws in self.may_give, ws
        for cr in self.clients.values():
            # A report is asked of a key the client wants, until that key ends.
            assert cr.reports <= cr.wants_what, cr.id
            assert all(ts.state not in (MEMORY, ERRED) for ts in cr.reports), cr.id
        for key, ts in self.tasks.items():
            assert ts.key == key
            assert ts.state in ALL_STATES, ts
            if ts.state in (MEMORY, ERRED):
                assert FIRE_AND_FORGET not in ts.who_wants, ts     # it let go at the end
            if ts.state == MEMORY:
                assert ts.who_has, ts
                assert not ts.waiting_on, ts
            else:
                assert not ts.who_has, (ts, ts.who_has)
            if ts.state == PROCESSING:
                ws = ts.processing_on
                assert ws is not None and ts in ws.processing, ts
                assert ws.id in self.workers, ts
                assert all(dep.state == MEMORY for dep in ts.dependencies), ts
                assert not _constrained(ts) or _allowed(ts, ws), (ts, ws)
            else:
                assert ts.processing_on is None, ts
            if ts.state == WAITING:
                assert ts.waiting_on, ts
                for dep in ts.waiting_on:
                    assert dep.state != MEMORY, (ts, dep)
                    assert ts in dep.waiters, (ts, dep)
            if ts.state == NO_WORKER:
                assert ts in self.unrunnable, ts
                # (so none of its inputs can err: no no-worker -> erred transition)
                assert all(dep.state == MEMORY for dep in ts.dependencies), ts
            for dep in ts.dependencies:
                assert dep.key in self.tasks, (ts, dep)
                assert ts in dep.dependents, (ts, dep)
            for dts in ts.dependents:
                assert self.tasks.get(dts.key) is dts, (ts, dts)
            for w in ts.waiters:
                assert ts in w.dependencies, (ts, w)
            for ws in ts.who_has:
                assert ts in ws.has_what, (ts, ws)
        for ws in self.workers.values():
            for ts in ws.processing:
                assert ts.processing_on is ws, (ws, ts)
                assert ts.key in self.tasks and ts.state == PROCESSING, (ws, ts)
            for ts in ws.has_what:
                assert ws in ts.who_has, (ws, ts)
            for other in ws.unreachable:
                assert self.workers.get(other.id) is other and other is not ws, (ws, other)
            assert ws.executing <= set(ws.processing), ws
            assert ws.seceded <= ws.executing, ws
            assert all(ws.processing[ts] == 0.0 for ts in ws.seceded), ws
            expected = sum(ws.processing.values()) + sum(ws.stale.values())
            assert abs(ws.occupancy - expected) < 1e-6 * max(expected, 1.0), ws
            assert ws.status in (RUNNING, PAUSED, CLOSING_GRACEFULLY), ws
            assert ws.status != PAUSED or ws.paused_since is not None, ws
            assert ws.status != RUNNING or ws.paused_since is None, ws
            assert ws.time_paused >= 0, ws
        running, built = self._running_cache
        if built == (WorkerRecord.status_changes, len(self.workers)):
            for ws in running:
                assert _free_threads(ws) <= 0 or ws in self.idle, ws
        stealing = dict.fromkeys(self.workers.values(), 0)
        for key, (victim, thief) in self.steals.items():
            assert self.tasks[key].processing_on is victim, (key, victim)
            if thief is not None:
                stealing[thief] += 1
        for ws, n in stealing.items():
            assert ws.stealing == n, (ws, ws.stealing, n)
        for move in self.moves.values():
            for key, wid in move.pending:
                assert wid in self.workers, (move, key)
            for wid in move.retiring:
                assert self.workers[wid].status == CLOSING_GRACEFULLY, (move, wid)
        for ts in self.unrunnable:
            assert ts.state == NO_WORKER, ts
        for key in self.unmovable:
            assert self.tasks[key].state == MEMORY, key
        self.coordination.validate()
        for v in self.coordination.values():
            for key in v.keys:
                assert key not in self.tasks or v.holder in self.tasks[key].who_wants, v
        counts = self.task_counts()
        actual = dict.fromkeys(ALL_STATES, 0)
        for ts in self.tasks.values():
            actual[ts.state] += 1
        assert counts == actual, (counts, actual)
