"""The worker shell: sockets, a thread pool and a `WorkerState`.

    scheduler ◀──DEALER── IOLoop thread ──ROUTER──▶ peers fetching our data,
                               │  ▲                    clients taking small results
                               │  ▲      ──DEALER──▶ peers holding our inputs
                        Execute│  │results (one call_soon a batch)
                               ▼  │
                        nthreads pool threads: deserialize the task, run it

The loop thread owns the sockets and the state machine; pool threads only run user
code and hand results back.  Inputs fetched from peers arrive zero-copy.

After each ZeroMQ handshake with the scheduler the worker says "hello" and learns the
scheduler's epoch (see protocol.py): the first time it then registers; a new epoch
means a new scheduler at the same address, which it registers with afresh.  Messages
to peers carry the peer's address as recipient (a worker knows its peers by address).

A client that asked for them ("subscribe-results" on the peer socket) gets the small
results of its keys from here, straight ("task-result"), in the same flush as, and
before, the "task-finished" that tells the scheduler; a client gone by then makes the
send fail at once (ROUTER_MANDATORY) and is forgotten, and the "task-finished" no
longer lists it among those the value went to: the scheduler sends it the value.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import queue
import socket
import tempfile
import threading
import time

import psutil
import zmq
from dask.sizeof import sizeof

from .. import bulk, messages
from .. import config as cfg
from ..addresses import host_of, local_ip_towards, split_address
from ..comm import (Handshake, IOLoop, RejectionLog, send, bind_router, connect_dealer,
                    new_id)
from ..discovery import resolve_scheduler
from ..errors import ActorLost, Reschedule, error_payload, raised
from ..graph import execute
from ..log import logger
from ..logs import LogBuffer
from ..plugins import accepts
from ..protocol import (MAX_MESSAGE_BYTES, ProtocolError,
                        Session, deserialize, serialize)
from ..security import Security
from ..units import check_nthreads, format_bytes, parse_resources
from . import context, limits
from .actors import ActorLanes, CoroutineLoop, running
from .executor import Call, TaskThreads
from .monitor import (EXIT_MEMORY, MemoryMonitor, MemorySettings, RunningTasks,
                      TaskMemoryError, TaskThreadLimits)
from .plugins import WorkerPlugins
from .recording import CANCELLED, ERROR, OK, Recorder
from .sampler import Sampler, call_stacks
from .state import (RELAY, EventsFailed, Execute, GatherDep, Rejoin, Send, ToClient,
                    WorkerState)
from .store import SpillStore, Spilled
from .system import (host_cores, host_memory, io_counters, io_rates, malloc_trim,
                     open_files)

RETIRE = object()          # a pool thread taking this leaves: a seceded one rejoined
SEND_MARGIN = 65_536       # bytes kept for the envelope of a message of results
INLINE_RESULT = 16_384     # bytes
RELAY_STREAM_TRIES = 2     # streamed relays failing in a row before one-message relays
REGISTER_TIMEOUT = 60.0    # seconds `await Worker(...)` waits for the scheduler's welcome
TRANSFER_FRACTION = 0.1    # of the memory limit: inputs in flight from peers at most
TO_STATE = None            # in `from_scheduler`: a kind the state machine handles


def inline(value, nbytes, job):
    """A small result a client waits for travels with "task-finished", saving the
    scheduler a request to this worker when the client gathers it."""
    if not job.want_data or nbytes > INLINE_RESULT:
        return None
    try:
        blob = serialize(value)
    except Exception:
        return None                  # reported when gathered, with the key named
    frames = blob.frames                 # one frame: the pickle stream, bytes
    return blob if len(frames) == 1 and len(frames[0]) <= INLINE_RESULT else None


# What a peer connection's monitor reports: its handshakes, and its drops (a dead
# route is found by ZeroMQ's heartbeats within PEER_HEARTBEAT_TIMEOUT ms).
PEER_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
PEER_HEARTBEAT_TIMEOUT = 3_000


def _event_id(frames):
    """The event number of a ZeroMQ monitor message."""
    first = frames[0]
    data = first.bytes if hasattr(first, "bytes") else bytes(first)
    return int.from_bytes(data[:2], "little")


def typename(value):
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


#: What `Worker.scheduler` gives: the scheduler's address.
SchedulerRef = collections.namedtuple("SchedulerRef", "address")


class Worker:
    """A worker: runs tasks and serves its data to peers.

    >>> w = Worker(scheduler=s.address_to_workers)          # data={} by default
    >>> w = Worker(scheduler=..., hostname=..., port_to_workers=1234, data=mapping,
    ...            nthreads=2)

    A peer that does not complete a connection within ``connect_timeout`` seconds, or
    does not answer a request within ``gather_timeout``, is unreachable: data it holds
    comes through the scheduler instead (see `WorkerState`), and every
    ``unreachable_retry`` seconds a new connection is tried in the background.
    ``contact_address`` is the address peers are told to use, when it is not the one
    bound (a port forward, a NAT).  ``host``: dask.distributed's name for
    ``hostname``.  ``await Worker(...)`` and ``async with`` give it once welcomed.

    Memory (see the README): ``memory_limit`` is "auto" (this host's memory, or its
    cgroup's limit, shared among the workers of this scheduler on this host), bytes,
    a string such as "2GiB", a fraction of the host, or None for no limit.  With a
    limit and no ``data``, results spill to a private directory under
    ``local_directory`` (default: dask's temporary-directory, else the system's).
    The ``memory_*_fraction`` arguments override ``dask-ipy.worker.memory.*`` in
    dask.config.  ``memory_terminate_action``: what a task that takes the process
    past the terminate fraction meets: "interrupt" (a TaskMemoryError inside the
    task; the process lives on: for workers inside engines) or "exit" (the worker
    exits for its supervisor to start a new one; `dask-ipy worker` does this).
    ``supervised``: the token of a supervisor that watches this process and tells
    the scheduler how it ended (`dask-ipy worker`'s does), or None: tasks its death
    would end wait a moment for that word.
    ``blas_threads``: threads of BLAS/OpenMP pools inside tasks ("auto", a number,
    or False to leave them alone; default ``dask-ipy.worker.blas-threads``).
    ``resources``: what this worker has, ``{"GPU": 2, "MEM": 10e9}`` (or the string
    ``"GPU=2,MEM=10e9"``): tasks submitted with ``resources=`` go only to workers
    having that much in all, and run here only while their needs fit in what the
    running tasks leave (dask.distributed's worker resources).
    ``task_stream``: record every task for the task stream (default
    ``dask-ipy.worker.task-stream``, on).  `get_logs`: the worker's latest log lines.
    ``executor`` (also ``executors["default"]``): the task threads as a
    concurrent.futures Executor (see executor.py).
    """

    def __init__(self, scheduler=None, hostname=None, port_to_workers=0, data=None, *,
                 nthreads=1, security=None, name=None, heartbeat_interval=0.5,
                 connect_timeout=5.0, gather_timeout=30.0, unreachable_retry=30.0,
                 contact_address=None, validate=False,
                 max_message_bytes=MAX_MESSAGE_BYTES, memory_limit="auto",
                 local_directory=None, memory_target_fraction=None,
                 memory_spill_fraction=None, memory_pause_fraction=None,
                 memory_terminate_fraction=None, memory_terminate_action="interrupt",
                 memory_monitor_interval=None, blas_threads=None, resources=None,
                 task_stream=None, host=None, supervised=None):
        hostname = host or hostname         # dask.distributed's name
        self.supervised = supervised
        nthreads = check_nthreads(nthreads)
        self.resources = parse_resources(resources)
        self.max_message_bytes = max_message_bytes  # cap on what this worker receives
        self.scheduler_address, self.security = resolve_scheduler(
            scheduler, security, "address_to_workers")
        self.security = self.security or Security.temporary()
        self.nthreads = nthreads
        self.max_send_bytes = None      # the scheduler's cap, if it has one, from "welcome"
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout = connect_timeout
        self.gather_timeout = gather_timeout
        self.unreachable_retry = unreachable_retry
        self.loop = IOLoop("dask-ipy-worker")
        self.rejections = RejectionLog(self.loop, "worker: rejected a message")
        if hostname is None:
            hostname = local_ip_towards(self.scheduler_address)
        self.peer_socket, port = bind_router(self.loop, self.security, hostname,
                                             port_to_workers, who="worker")
        self.address = contact_address or f"tcp://{hostname}:{port}"
        # Large data for peers leaves through a plain TCP side channel (see bulk.py),
        # unless the cluster encrypts: then it stays on the CURVE sockets.
        self.bulk = None if self.security.encrypt else bulk.BulkServer(
            "0.0.0.0" if hostname in ("", "*", "0.0.0.0") else hostname,
            ttl=gather_timeout)
        self.no_bulk = set()                   # peers whose side channel failed us
        self.relay_port = None                 # the scheduler's relay, from "welcome"
        self.relay_failures = 0                # streamed relays failed in a row
        self.uploads = bulk.Pool("dask-ipy-upload")
        self.name = name if name is not None else self.address
        self.process = psutil.Process()
        self.io_read = (time.monotonic(), io_counters())   # the host's traffic, then
        self._setup_memory(data, memory_limit, local_directory, memory_target_fraction,
                           memory_spill_fraction, memory_pause_fraction,
                           memory_terminate_fraction, memory_terminate_action,
                           memory_monitor_interval, blas_threads)
        # The I/O thread never waits for a disk: a spilling store gives it a view
        # whose reads of spilled values return markers (see worker/store.py).
        self.state = WorkerState(self.address, nthreads,
                                 getattr(self.data, "nonblocking", self.data), validate,
                                 self.resources)
        if isinstance(self.data, SpillStore):
            self.data.sizes = self.state.nbytes     # measured once, as tasks end
        self._set_transfer_limit()
        self.plugin_host = WorkerPlugins(self, self._plugins_busy)
        self.recorder = Recorder(cfg.get("worker.task-stream") if task_stream is None
                                 else bool(task_stream))
        story_length = cfg.transition_log_length("worker")
        if story_length:
            self.state.keep_story(story_length)
        self.log_buffer = LogBuffer().attach()
        self.outgoing = []                     # messages for the scheduler
        self.to_clients = {}                   # {client id: [task-result]}
        self.peers = {}                        # {address: DEALER socket}
        self.connecting = {}                   # {address: timer of its handshake}
        self.peer_monitors = {}                # {address: monitor of its socket}
        self.gather_timers = {}                # {address or RELAY: (id, timer, keys)}
        self.jobs = queue.SimpleQueue()
        # The task threads as an Executor (dask.distributed's names; executor.py).
        self.executor = TaskThreads(self.jobs.put)
        self.executors = {"default": self.executor}
        self.finished = collections.deque()    # results of the pool for the loop
        self.finished_queued = False           # a `_tasks_done` call is queued
        self.threads = []
        self.closed = threading.Event()
        self.clients_address = None            # the scheduler's, from "welcome"
        self.task_client = None                # made by the first get_client() here
        self.task_client_lock = threading.Lock()
        self.rejoin_events = {}                # {key: Event} of seceded tasks waiting
        self.actors = {}                       # {key: object} of the actors held here
        self.actor_address = None              # the actor thread's socket, once bound
        self.actor_lock = threading.Lock()
        self.actor_lanes = ActorLanes(self._run_actor_call)   # calls, one lane per actor
        self.actor_loop = CoroutineLoop()      # the coroutines of `async def` methods
        self.actor_replies = []                # [(peer, session, reply)] to send
        self.actor_wake = None                 # (read fd, write fd): replies are waiting
        self.actor_replies_lock = threading.Lock()
        self.from_scheduler = messages.handlers(messages.SCHEDULER, messages.WORKER, self,
                                                self.FROM_SCHEDULER, TO_STATE)
        self.loop.add_socket(self.peer_socket, self._on_peer_request)
        self.loop.add_flush(self._flush)
        self._connect()
        for _ in range(nthreads):
            self._start_pool_thread()
        context.add_worker(self)
        context.install()
        self.loop.call_later(heartbeat_interval, self._heartbeat)
        self.sampler = self._start_sampler()
        self.loop.start()
        if self.monitor is not None:
            self.monitor.start()

    def __repr__(self):
        return f"<Worker {self.address} nthreads={self.nthreads} keys={len(self.data)}>"

    @property
    def plugins(self):
        """{name: plugin} of the worker plugins set up here."""
        return self.plugin_host.plugins

    @property
    def id(self):
        """This worker's identity at the scheduler (a str, as dask.distributed's;
        new after each reconnection)."""
        return self.identity.decode()

    @property
    def ip(self):
        """The host in its address."""
        return host_of(self.address)

    host = ip

    @property
    def port(self):
        """The port in its address (peers fetch data there)."""
        return split_address(self.address)[2]

    @property
    def worker_address(self):
        """Its address, under dask.distributed's other name for it."""
        return self.address

    @property
    def scheduler(self):
        """The scheduler, as dask.distributed's Worker names it: its ``address``,
        the one clients join (as `Client.scheduler`'s), once the scheduler has
        welcomed this worker."""
        return SchedulerRef(self.clients_address or self.scheduler_address)

    @property
    def memory_manager(self):
        """This worker's memory settings under dask.distributed's names
        (`MemorySettings`), read live."""
        return MemorySettings(self)

    @property
    def status(self):
        """"running", "paused" (its memory is past the pause fraction) or
        "closed"."""
        if self.closed.is_set():
            return "closed"
        return "paused" if self.state.paused else "running"

    def get_logs(self, n=None):
        """The latest log lines of this worker's process: [(level, line)], newest
        first (as dask.distributed's)."""
        return self.log_buffer.lines(n)

    def get_current_task(self):
        """The key of the task of this worker that the calling thread runs (None
        elsewhere): dask.distributed's name, for code inside a task."""
        return context.current_key() if getattr(context.task, "worker", None) is self \
            else None

    def story(self, *keys_or_stimuli):
        """This worker's transitions of these keys or stimulus ids, oldest first:
        [(key, start, state asked for, state reached, recommendations, stimulus_id,
        time)] (`WorkerState.story`); the latest ``dask-ipy.worker.transition-log-
        length`` transitions are kept (10,000 by default; 0: none)."""
        return self.state.story(*keys_or_stimuli)

    def get_call_stack(self, keys=None):
        """{key: [frames as text, outermost first]} of the tasks running here now
        (of ``keys`` only, if given)."""
        return call_stacks(self.running, None if keys is None else set(keys))

    def log_event(self, topic, msg):
        """Log ``msg`` (msgpack-able data, else TypeError) under ``topic`` (or each of
        a list of topics) at the scheduler, which keeps the topic's latest events and
        sends each to the topic's subscribers; a dict is told this worker's address
        as "worker" there (any thread)."""
        self.loop.call_soon(self._queue, {
            "op": "log-event", **messages.log_event_fields(topic, msg, time.time())})

    # ---------------------------------------------------------------- memory

    def _setup_memory(self, data, memory_limit, local_directory, target, spill, pause,
                      terminate, action, interval, blas_threads):
        if action not in ("interrupt", "exit"):
            raise ValueError(f"memory_terminate_action must be 'interrupt' or 'exit', "
                             f"not {action!r}")
        self.memory_setting = memory_limit
        self.host_memory = host_memory()
        self.host_workers = 1
        self.memory_limit = limits.memory_limit_bytes(memory_limit, self.host_memory)
        self.memory_fractions = cfg.memory_fractions(
            target=target, spill=spill, pause=pause, terminate=terminate)
        self.local_directory = local_directory or cfg.dask.config.get(
            "temporary-directory", None) or tempfile.gettempdir()
        self._owns_data = data is None
        if data is None:
            if self.memory_limit and (self.memory_fractions["target"]
                                      or self.memory_fractions["spill"]):
                data = SpillStore(self._store_budget(), directory=self.local_directory)
            else:
                data = {}
        self.data = data
        self.running = RunningTasks()
        self._running_at_beat = set()     # task keys running at the last heartbeat
        self.monitor = None
        if self.memory_limit:
            interval = interval or cfg.get("worker.memory.monitor-interval")
            self.monitor = MemoryMonitor(self, self.memory_limit, self.memory_fractions,
                                         action, float(interval),
                                         float(cfg.get("worker.memory.resume-margin")))
        self.blas_setting = (cfg.get("worker.blas-threads") if blas_threads is None
                             else blas_threads)
        threads = limits.blas_threads(self.blas_setting, host_cores(), self.nthreads)
        self.thread_limits = TaskThreadLimits(threads) if threads else None
        self._exiting = False
        self.limit_listeners = []       # called with the new limit when it changes
        self.registered_listeners = []  # called each time the scheduler welcomes it

    def _set_transfer_limit(self):
        """Inputs in flight from peers at most a fraction of the memory limit:
        dask.distributed's ``distributed.worker.memory.transfer`` where a user set
        it, else `TRANSFER_FRACTION` (its default)."""
        fraction = cfg.distributed_setting("distributed.worker.memory.transfer")
        fraction = TRANSFER_FRACTION if fraction is None else float(fraction)
        self.state.transfer_limit = (int(self.memory_limit * fraction)
                                     if self.memory_limit else None)

    def _store_budget(self):
        target = self.memory_fractions["target"]
        return self.memory_limit * target if target else float("inf")

    def _on_host_workers(self, msg):
        """The scheduler counts ``n`` workers on this host: an "auto" limit and "auto"
        task thread pools take their share."""
        self.host_workers = max(int(msg["n"]), 1)
        if self.thread_limits is not None and self.blas_setting == "auto":
            self.thread_limits.threads = limits.blas_threads(
                "auto", max(host_cores() // self.host_workers, 1), self.nthreads)
        if self.memory_setting != "auto" or self.monitor is None:
            return
        new = limits.memory_limit_bytes("auto", self.host_memory, self.host_workers)
        if new == self.memory_limit:
            return
        logger.info("worker %s: %d workers on this host; memory limit %s",
                    self.address, self.host_workers, format_bytes(new))
        self.memory_limit = self.monitor.limit = new
        self._set_transfer_limit()
        if self._owns_data and isinstance(self.data, SpillStore):
            self.data.memory_limit = self._store_budget()
        for listener in self.limit_listeners:
            listener(new)
        self._send_heartbeat()            # the scheduler's figure, now too

    def memory_paused(self, paused, rss):
        """From the memory watch (on the loop): stop or start taking tasks, and tell
        the scheduler at once (with a heartbeat)."""
        if paused == self.state.paused:
            return
        if paused:
            logger.warning("worker %s: memory %s is past %.0f%% of its %s limit: paused",
                           self.address, format_bytes(rss),
                           100 * self.memory_fractions["pause"],
                           format_bytes(self.memory_limit))
        else:
            logger.warning("worker %s: memory %s: running again", self.address,
                           format_bytes(rss))
        self._handle("pause" if paused else "resume")
        self._send_heartbeat()

    def handle_memory_exceeded(self, keys, rss, limit, action):
        """From the memory watch (on the loop): running tasks were stopped."""
        self._handle("memory-exceeded", keys=keys, rss=rss, limit=limit, action=action)

    def exit_for_memory(self, rss, limit, keys):
        """From the memory watch: tell the scheduler which tasks ran, remove this
        worker's files, and exit for the supervisor to start a new worker."""
        if self._exiting:
            return
        self._exiting = True
        told = threading.Event()

        def tell():
            self._handle("memory-exceeded", keys=keys, rss=rss, limit=limit,
                         action="exit")
            self._flush()
            told.set()
        self.loop.call_soon(tell)
        told.wait(1.0)
        logger.error("worker %s: memory %s passed %.0f%% of its %s limit while running "
                     "%s: exiting to be restarted", self.address, format_bytes(rss),
                     100 * self.memory_fractions["terminate"], format_bytes(limit), keys)
        time.sleep(0.05)                  # the message leaves ZeroMQ's queue
        if isinstance(self.data, SpillStore):
            self.data.remove_files()
        os._exit(EXIT_MEMORY)

    def _memory_metrics(self):
        store = self.data
        managed = store.memory if isinstance(store, SpillStore) else self.state.managed
        spilled = store.spilled_bytes if isinstance(store, SpillStore) else 0
        return {"managed": managed, "spilled": spilled,
                "memory_limit": self.memory_limit,
                "status": "paused" if self.state.paused else "running"}

    # ---------------------------------------------------------------- scheduler link

    def _connect(self):
        """Connect to the scheduler under a fresh identity; registration follows the
        handshake (`_on_hello_reply`)."""
        self.identity = new_id("worker")     # its ZeroMQ identity, new per connection
        aliases = (self.address.encode(),)
        if self.actor_address is not None:
            aliases += (self.actor_address.encode(),)
        self.session = Session(self.security.key, self.identity, aliases=aliases,
                               max_message_bytes=self.max_message_bytes)
        self.scheduler_id = None
        self.handshake = Handshake()
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED
        self.scheduler_socket = connect_dealer(self.loop.context, self.security,
                                               self.identity, self.scheduler_address,
                                               events=events)
        self.loop.add_socket(self.scheduler_socket, self._on_scheduler_frames)
        self.scheduler_monitor = self.scheduler_socket.get_monitor_socket(events)
        self.loop.add_socket(self.scheduler_monitor, self._on_scheduler_connected)

    def _on_scheduler_connected(self, frames):
        try:
            send(self.scheduler_socket, self.handshake.hello(self.session))
        except zmq.ZMQError as e:
            logger.debug("worker %s: could not greet the scheduler: %s", self.address, e)

    def _on_hello_reply(self, msg):
        answer = self.handshake.answer(msg)
        if answer is None:
            return
        epoch, scheduler_id = answer
        if self.session.epoch is None:
            self.session.epoch, self.scheduler_id = epoch, scheduler_id
            self.outgoing.insert(0, {
                "op": "register-worker", "address": self.address,
                "nthreads": self.nthreads, "name": self.name,
                "host": socket.gethostname(), "pid": os.getpid(),
                "memory_limit": self.memory_limit,
                "memory_fractions": self.memory_fractions,
                "resources": self.resources,
                "local_directory": self.local_directory,
                "supervised": self.supervised,
                "shares_host": self.memory_setting == "auto" or (
                    self.thread_limits is not None and self.blas_setting == "auto")})
        elif (epoch, scheduler_id) != (self.session.epoch, self.scheduler_id):
            self._reconnect("a new scheduler answers at its address")
            return False

    def _reconnect(self, why="the scheduler does not know us", level=logging.WARNING):
        if self._exiting:
            # Exiting for memory: registered again, it would be given the tasks of
            # the worker it was, and never run them.
            return
        logger.log(level, "worker %s: %s; registering again", self.address, why)
        for sock in (self.scheduler_socket, self.scheduler_monitor):
            self.loop.remove_socket(sock)
        self.scheduler_socket.disable_monitor()
        self.scheduler_monitor.close(linger=0)
        self.scheduler_socket.close(linger=0)
        self.outgoing.clear()
        self._handle("restart")
        # Connections to peers carry the old identity, which the new one's signature
        # would contradict (peers would refuse every request): open new ones.
        for peer in list(self.peers):
            self._drop_peer(peer)
        self._connect()

    def _on_scheduler_frames(self, frames):
        try:
            msgs = self.session.loads(frames)
        except ProtocolError as e:
            self.rejections("the scheduler", e)
            return
        frames.clear()             # received buffers live on only in the values
        # Messages for the state machine in a row go in together (a batch of
        # "compute-task" costs one pass over the ready tasks); in order with the
        # others, which the shell handles.
        events = []
        for msg in msgs:
            op = msg.get("op")
            handler = self.from_scheduler.get(op, False)
            if handler is TO_STATE:
                del msg["op"]
                events.append((op, msg))
                continue
            if events:
                self._handle_all(events)
                events = []
            if handler is False:
                logger.debug("worker %s: ignored a message %r", self.address, op)
                continue
            if handler(msg) is False:
                return                 # the rest of the batch is for a worker gone
        if events:
            self._handle_all(events)

    def _to_state(self, msg):
        self._handle(msg.pop("op"), **msg)

    def _on_worker_removed(self, msg):
        self._drop_peer(msg["address"])
        self._to_state(msg)

    def _on_relay_data(self, msg):
        """Data the scheduler fetched for a relay: in the message, or, large, streamed
        by its holders into the scheduler's relay, downloaded from there on a thread
        of its own (bulk.receive checks each stream as a client does: the announced
        sizes, the MAC of a message signed for this worker, its ticket)."""
        streams = msg.get("streams")
        if not streams:
            self._gather_done(RELAY, msg)
            return
        pending = self.gather_timers.get(RELAY)
        if pending is None or pending[0] != msg.get("request_id"):
            self._give_up_streams(streams)       # a fetch given up meanwhile
            return
        # The download has timeouts of its own (connecting, each read): the fetch's
        # timer would cut a long stream short.
        IOLoop.cancel_timer(pending[1])
        self.gather_timers[RELAY] = (pending[0], None, pending[2])
        self._download(msg["streams"], lambda data: self._relay_streamed(msg, data),
                       lambda: self._relay_stream_failed(msg),
                       "a relayed input; asking the relay again")

    def _download(self, streams, done, failed, what):
        """Download ``streams`` from the scheduler's relay on a thread of its own;
        then, on the I/O thread, ``done(data)``, or ``failed()`` if any stream did
        not come through as announced (logged, saying ``what`` it was)."""
        def receive():
            try:
                data = bulk.receive(self.session, host_of(self.scheduler_address),
                                    self.relay_port, streams, self.gather_timeout,
                                    self.connect_timeout)
            except (OSError, ProtocolError, KeyError, TypeError, ValueError) as e:
                logger.warning("worker %s: a stream through the scheduler's relay "
                               "failed (%s): %s", self.address, e, what)
                self.loop.call_soon(failed)
                return
            self.loop.call_soon(done, data)
        threading.Thread(target=receive, daemon=True, name="dask-ipy-relay-fetch").start()

    def _relay_streamed(self, msg, data):
        self.relay_failures = 0
        msg["data"] = {**msg.get("data", {}), **data}
        self._gather_done(RELAY, msg)

    def _relay_stream_failed(self, msg):
        """The holder died, the relay or the scheduler went away, a stream was not
        what was announced: the keys are fetched again (the scheduler then finds
        them elsewhere, or missing).  After `RELAY_STREAM_TRIES` failures in a row
        they are asked for in one message instead, within the scheduler's cap."""
        self._give_up_streams(msg["streams"])
        if self._take_pending(RELAY, msg.get("request_id")) is None:
            return
        self.relay_failures += 1
        self._handle("gather-failed", peer=RELAY)

    def _give_up_streams(self, streams):
        """The uploads waiting at the relay for these streams end now."""
        for stream in streams:
            self.outgoing.append({"op": "stream-failed", "ticket": stream.get("ticket")})

    def _on_put_data(self, msg):
        """Scattered values: in the message, or streamed by the client into the
        scheduler's relay, downloaded on a thread as a relay's are."""
        streams = msg.get("streams")
        if not streams:
            self._put_data(msg["data"])
            return
        self._download(streams, self._put_data, lambda: self._put_failed(streams),
                       "scattered data")

    def _put_failed(self, streams):
        self._give_up_streams(streams)
        self.outgoing.append({"op": "put-failed",
                              "keys": [key for stream in streams for key in stream["keys"]]})

    def _on_welcome(self, msg):
        self.max_send_bytes = msg.get("max_message_bytes")
        self.relay_port = msg.get("relay_port")
        self.relay_failures = 0
        clients = msg.get("address_to_clients")
        if clients:
            # Reached the way this worker reaches the scheduler (it may bind a
            # wildcard or a name only it resolves).
            port = clients.rsplit(":", 1)[1]
            self.clients_address = self.scheduler_address.rsplit(":", 1)[0] + ":" + port
        for listener in self.registered_listeners:
            listener()

    def _on_send_data(self, msg):
        self._send_data(msg["keys"], msg["request_id"], msg.get("max_bytes"),
                        msg.get("for"))

    def _on_run(self, msg):
        # After the plugins' set-ups sent before it, as a task.
        self.plugin_host.after(
            lambda: self._run_function(msg["function"], msg["request_id"]))

    def _on_unknown_worker(self, msg):
        self._reconnect()
        return False

    def _on_close(self, msg):
        # Shut down with the cluster, or retired: nothing is left behind.
        self.loop.call_soon(self._close_from_loop)
        return False

    def _on_plugin_add(self, msg):
        self.plugin_host.add(msg["name"], msg["plugin"],
                             lambda result: self._plugin_done(msg, result))

    def _on_plugin_remove(self, msg):
        self.plugin_host.remove(msg["name"],
                                lambda result: self._plugin_done(msg, result))

    def _plugin_done(self, msg, result):
        # Plugins a worker gets when it registers come without a request: nobody waits.
        if "request_id" in msg:
            self.outgoing.append({"op": "run-result", "request_id": msg["request_id"],
                                  **result})

    def _plugins_busy(self, busy):
        """Plugins are set up or torn down on their thread (see plugins.py): tasks
        wait until they are done."""
        self._handle("plugins-busy" if busy else "plugins-done")

    def _on_restart_worker(self, msg):
        """Restart in place: the process stays (an ipyparallel engine, with its
        namespace), the worker starts afresh under a new identity."""
        self.plugin_host.remove_all()
        self._reconnect("restarting on request", logging.INFO)
        return False                   # the rest of the batch was for the old one

    def _on_get_profile(self, msg):
        tree = (self.sampler.select(msg.get("start"), msg.get("stop"), msg.get("key"))
                if self.sampler is not None else None)
        self.outgoing.append({"op": "profile", "token": msg["token"], "profile": tree})

    def _on_ping(self, msg):
        """Pings only test that this worker is reachable; "registered" needs no
        answer either ("welcome" follows)."""

    FROM_SCHEDULER = {
        "hello-reply": _on_hello_reply,
        "worker-removed": _on_worker_removed,
        "relay-data": _on_relay_data,
        "put-data": _on_put_data,
        "welcome": _on_welcome,
        "host-workers": _on_host_workers,
        "send-data": _on_send_data,
        "run": _on_run,
        "unknown-worker": _on_unknown_worker,
        "close": _on_close,
        "scheduler-closing": _on_close,
        "plugin-add": _on_plugin_add,
        "plugin-remove": _on_plugin_remove,
        "restart-worker": _on_restart_worker,
        "ping": _on_ping,
        "registered": _on_ping,
        "get-profile": _on_get_profile,
    }

    def _handle(self, op, **kw):
        self._handle_all(((op, kw),))

    def _handle_all(self, events):
        """Events [(op, {argument: value})] through the state machine, and its
        instructions carried out."""
        try:
            instructions = self.state.handle_all(events, time.time())
        except EventsFailed as e:
            for op, error in e.errors:
                logger.error("worker %s: handling %r failed", self.address, op,
                             exc_info=error)
            instructions = e.out
        runs = []
        announced = False
        outgoing = self.outgoing       # replaced by `_flush`, which the loop never calls
        for inst in instructions:
            kind = type(inst)
            if kind is Send:
                outgoing.append(inst.msg)
                announced = announced or inst.msg["op"] == "task-started"
            elif kind is Execute:
                runs.append(inst)
            elif kind is ToClient:
                self.to_clients.setdefault(inst.client, []).append(inst.msg)
            elif kind is GatherDep:
                self._gather(inst.peer, inst.keys)
            elif kind is Rejoin:
                event = self.rejoin_events.pop(inst.key, None)
                if event is not None:
                    event.set()
        if self.actors and any(op in ("free-keys", "restart") for op, _ in events):
            self._drop_actors()
        if self.state.transition_log:
            self.plugin_host.transitions(self.state.take_transitions())
        if runs:
            if announced:
                # "task-started" leaves before the task runs: if it kills this
                # process, the scheduler blames the right task.  (Tiny tasks are
                # not announced, and their results keep travelling in batches.)
                self._flush()
            for inst in runs:
                self.jobs.put(inst)

    def _queue(self, msg):
        # Looked up on the loop: `_flush` replaces the list, and a message appended
        # to the one it took would be lost.
        self.outgoing.append(msg)

    def _flush(self):
        # Until the handshake has told the epoch, messages wait (the registration
        # goes first).  Task stream records ride along with whatever leaves.
        if self.to_clients:
            self._flush_clients()
        if self.recorder.keys and self.scheduler_id is not None:
            self.outgoing.append({"op": "task-stream", **self.recorder.take()})
        if self.outgoing and self.scheduler_id is not None:
            msgs, self.outgoing = self.outgoing, []
            try:
                send(self.scheduler_socket, self.session.dumps(msgs, self.scheduler_id))
            except Exception as e:
                logger.warning("worker %s: could not reach the scheduler: %s",
                               self.address, e)

    def _flush_clients(self):
        """Results straight to their clients, before the scheduler hears of them."""
        batches, self.to_clients = self.to_clients, {}
        for client, msgs in batches.items():
            try:
                send(self.peer_socket, [client] + self.session.dumps(msgs, client))
            except Exception as e:
                # Gone: the scheduler, told the values did not go straight, sends
                # them to the client itself.
                logger.debug("worker %s: client %r went away: %s", self.address,
                             client, e)
                self._handle("client-gone", client=client)
                for msg in self.outgoing:
                    direct = msg.get("direct")
                    if direct and client in direct:
                        direct.remove(client)
                        if not direct:
                            del msg["direct"]

    def _heartbeat(self):
        self._send_heartbeat()
        # Tasks running since the last beat or before: the state machine decides
        # which of them were started as tiny and are not.
        running = set(self.running.keys())
        long_running = running & self._running_at_beat
        self._running_at_beat = running
        if long_running:
            self._handle("long-running", keys=list(long_running))
        self.loop.call_later(self.heartbeat_interval, self._heartbeat)

    def _send_heartbeat(self):
        if self.scheduler_id is None:        # not registered: nobody to tell
            return
        try:
            mem = self.process.memory_info().rss
            cpu = self.process.cpu_percent()
        except psutil.Error:
            mem = cpu = 0
        metrics = {
            "memory": mem, "cpu": cpu, "executing": len(self.state.executing),
            "ready": len(self.state.ready), "keys": len(self.data),
            "sent": time.time(), "transfer_in": self.recorder.bytes_in,
            "transfer_out": self.recorder.bytes_out,
            "task_counts": self.state.task_counts(),
            "bandwidth": self.recorder.take_bandwidth(),
            "transfer": {"incoming_bytes": self.state.in_flight_bytes(),
                         "incoming_count": len(self.state.in_flight),
                         "incoming_count_total": self.recorder.fetches,
                         "outgoing_count_total": self.recorder.served},
            **self._host_io(), **self._memory_metrics()}
        fds = open_files(self.process)
        if fds is not None:
            metrics["num_fds"] = fds
        self.outgoing.append({"op": "heartbeat", "metrics": metrics})

    def _host_io(self):
        """The host's network and disk traffic (bytes per second) since the last
        heartbeat."""
        then, before = self.io_read
        self.io_read = now, after = time.monotonic(), io_counters()
        return io_rates(before, after, now - then)

    # ---------------------------------------------------------------- running tasks

    def _start_pool_thread(self):
        t = threading.Thread(target=self._pool_thread, daemon=True,
                             name=f"dask-ipy-worker-task-{len(self.threads)}")
        t.start()
        self.threads = [th for th in self.threads if th.is_alive()] + [t]

    def _start_sampler(self):
        """Stacks of the threads running tasks, sampled for `Client.profile` (see
        sampler.py), unless ``dask-ipy.worker.profile.enabled`` is off."""
        settings = cfg.profile_settings()
        if settings is None:
            return None
        interval, cycle, history = settings
        return Sampler(self.running, interval, cycle, history,
                       stop=(Worker._run_job.__code__,)).start()

    def secede(self):
        """On a task's thread: give its thread slot back while it waits for other
        work.  Another pool thread takes the slot at once; this one finishes the task
        (or `rejoin`s) and then leaves."""
        key = context.current_key()
        if key is None or context.task.seceded:
            return
        context.task.seceded = True
        self._start_pool_thread()
        self.loop.call_soon(lambda: self._handle("secede", key=key))

    def rejoin(self):
        """On a seceded task's thread: wait for a thread slot, then go on holding it
        (a pool thread leaves, so the pool keeps its size)."""
        key = context.current_key()
        if key is None or not context.task.seceded:
            return
        event = threading.Event()

        def ask():
            if self.closed.is_set():
                event.set()
                return
            self.rejoin_events[key] = event
            self._handle("rejoin", key=key)
        self.loop.call_soon(ask)
        # A worker closing wakes those waiting; one whose loop stopped before it
        # heard the ask is seen closed here.
        while not event.wait(0.5):
            if self.closed.is_set():
                return
        if self.closed.is_set():
            return
        context.task.seceded = False
        self.jobs.put(RETIRE)

    def _pool_thread(self):
        limits_ = self.thread_limits
        busy = False                    # in a stretch of tasks: thread pools capped
        while True:
            try:
                job = self.jobs.get()
            except TaskMemoryError:     # a stop meant for a task that had ended
                continue
            if job is None or job is RETIRE:
                if busy:
                    limits_.leave()
                return
            if type(job) is Call:       # Worker.executor's: no task
                job.run()
                job = None
                continue
            if limits_ is not None and not busy:
                limits_.enter()
                busy = True
            result = None
            while result is None:
                try:
                    result = self._run_job(job)
                except TaskMemoryError as e:      # landed just around the task
                    self.running.end()
                    now = time.time()
                    result = ("execute-failure", {
                        "key": job.key, "error": error_payload(e, None),
                        "start": now, "stop": now},
                        (now, now, now, now, 0.0, threading.get_ident(), False))
            job = None
            seceded = context.leave()
            if result[0] == "execute-failure" and \
                    result[1]["error"]["type"] == TaskMemoryError.__name__:
                malloc_trim()           # what the stopped task held, back to the system
            if busy and (seceded or self.jobs.empty()):
                # Before the result is out: whoever hears of it and then runs code
                # in this process (a %px cell) finds the process's own settings.
                limits_.leave()
                busy = False
            if not self.closed.is_set():
                self._hand_back(result)
            # Nothing of a finished task outlives it on this thread: its result and
            # the task that ran live in the store, for as long as the scheduler
            # wants them.
            result = None
            if seceded:
                return                  # its slot went to another thread

    def _run_job(self, job):
        """(event, its arguments, timings for the task stream: see Recorder.ended)"""
        start = loaded = began = stop = time.time()
        disk = False
        sent = 0.0                      # seconds pickling a result sent inline
        running = self.running
        try:
            running.start(job.key)
            context.enter(self, job.key)
            try:
                node = deserialize(job.run_spec)
                loaded = time.time()
                inputs = job.inputs
                if inputs and any(type(v) is Spilled for v in inputs.values()):
                    disk = True
                    inputs = {k: v.load() if type(v) is Spilled else v
                              for k, v in inputs.items()}
                began = time.time()
                value = execute(node, inputs)
                if inspect.iscoroutine(value):   # an async def task: its value
                    value = asyncio.run(value)
            finally:
                running.end()
            stop = time.time()
            nbytes = sizeof(value)
            data = inline(value, nbytes, job)
            end = time.time()
            if data is not None:
                sent = end - stop
            event = ("execute-success", {"key": job.key, "value": value,
                                         "nbytes": nbytes, "type": typename(value),
                                         "start": start, "stop": end, "data": data,
                                         "ran": node})
        except Reschedule:
            running.end()
            stop = time.time()
            event = ("execute-reschedule", {"key": job.key, "start": start, "stop": stop})
        except BaseException as e:  # a task may raise anything, SystemExit too
            running.end()
            stop = time.time()
            event = ("execute-failure", {"key": job.key, "error": raised(e),
                                         "start": start, "stop": stop})
        return (*event, (start, loaded, began, stop, sent, threading.get_ident(), disk))

    def _hand_back(self, result):
        """From a pool thread: a task's result, for the loop.  Results that pile up
        while the loop is busy go to the state machine together, in one call."""
        self.finished.append(result)
        if not self.finished_queued:
            # Set before the loop runs the call, and cleared there before it takes
            # the results: a result appended meanwhile is taken by that call or
            # queues another (at worst one finding nothing).
            self.finished_queued = True
            self.loop.call_soon(self._tasks_done)

    def _tasks_done(self):
        self.finished_queued = False
        finished = self.finished
        events = []
        recorder = self.recorder
        tasks = self.state.tasks
        while finished:
            op, kw, timing = finished.popleft()
            if recorder.on:
                # Before the state machine hears of it: the record then leaves with
                # the result, or before it (see recording.py).
                key = kw["key"]
                ts = tasks.get(key)
                if ts is None or ts.cancelled:
                    status = CANCELLED
                else:
                    status = OK if op == "execute-success" else ERROR
                inputs = ([d.key for d in ts.dependencies]
                          if ts is not None and recorder.fetched else ())
                recorder.ended(key, status, timing, kw.get("nbytes"), kw.get("type"),
                               inputs)
            events.append((op, kw))
        if events:
            self._handle_all(events)

    def _run_function(self, function, request_id):
        """`Client.run`: an arbitrary function, on its own thread, result sent back."""
        def target():
            try:
                fn, args, kwargs = deserialize(function)
                if accepts(fn, "dask_worker"):
                    kwargs["dask_worker"] = self
                value = fn(*args, **kwargs)
                if inspect.iscoroutine(value):      # an async function: its value
                    value = asyncio.run(value)
                reply = {"status": "OK", "result": serialize(value)}
            except BaseException as e:
                reply = {"status": "error", **raised(e)}
            reply.update(op="run-result", request_id=request_id)
            self.loop.call_soon(self._queue, reply)
        threading.Thread(target=target, daemon=True, name="dask-ipy-run").start()

    # ---------------------------------------------------------------- data

    def _put_data(self, data):
        values, sizes = {}, {}
        for key, blob in data.items():
            value = deserialize(blob)
            values[key] = value
            sizes[key] = (sizeof(value), typename(value))
        self._handle("put-data", data=values, sizes=sizes)

    def _serialize_data(self, keys, then):
        """Call ``then(data, missing, errors)`` on the loop with the values of
        ``keys`` serialized: at once, or, when some are on disk, once the store's
        unspill thread has read their frames (the loop never waits for a disk)."""
        found, missing = self.state.get_data(keys)
        data, errors, spilled = {}, {}, []
        for key, value in found.items():
            if type(value) is Spilled:
                spilled.append(key)
                continue
            try:
                data[key] = serialize(value)
            except Exception as e:
                errors[key] = {"type": type(e).__name__,
                               "text": f"result of {key!r} could not be serialized: {e}"}
        if not spilled:
            then(data, missing, errors)
            return

        def read(more, lost):                  # on the unspill thread
            self.loop.call_soon(finish, more, lost)

        def finish(more, lost):
            data.update(more)
            then(data, list(missing) + list(lost), errors)
        self.data.read_in_background(spilled, read)

    def _send_data(self, keys, request_id, max_bytes=None, recipient=None):
        """Values for the scheduler: a client's gather, or a relay to a worker that
        cannot reach this one (``max_bytes``: the relay's cap).  Large values for a
        client (``recipient``, its id) stream into the scheduler's relay instead."""
        self._serialize_data(keys, lambda data, missing, errors: self._reply_data(
            request_id, max_bytes, recipient, data, missing, errors))

    def _reply_data(self, request_id, max_bytes, recipient, data, missing, errors):
        if (recipient is not None and self.relay_port
                and sum(blob.nbytes for blob in data.values()) >= bulk.BULK_FROM):
            self._flush()
            self.outgoing.append({"op": "data", "request_id": request_id, "data": {},
                                  "missing": missing, "errors": errors,
                                  "streams": [self._stream(data, recipient)]})
            self._flush()
            return
        # The reply must fit under the scheduler's cap, if it has one, or the scheduler
        # drops it and the client waits forever: what does not fit is an error naming
        # the key.
        limit = float("inf") if self.max_send_bytes is None else (
            self.max_send_bytes - SEND_MARGIN)
        if max_bytes is None:
            cap = (f"the scheduler accepts in one message ({self.max_send_bytes} bytes, "
                   "Scheduler(max_message_bytes=...))")
        else:
            limit = min(limit, max_bytes)
            cap = (f"the scheduler relays between workers ({max_bytes} bytes, "
                   "Scheduler(max_relay_bytes=...))")
        room = limit
        for key, blob in list(data.items()):
            if blob.nbytes <= room:
                room -= blob.nbytes
                continue
            del data[key]
            alone = blob.nbytes <= limit
            errors[key] = {"type": "MessageTooLarge", "text": (
                f"{key!r} is {blob.nbytes} bytes: "
                + ("with the other values asked for at the same time, that is "
                   if alone else "")
                + f"more than {cap}")}
        self._flush()          # a message of its own: if refused, nothing else is lost
        self.outgoing.append({"op": "data", "request_id": request_id, "data": data,
                              "missing": missing, "errors": errors})
        self._flush()

    def _stream(self, data, recipient):
        """Start streaming ``data`` as a message for ``recipient`` into the
        scheduler's relay; returns its announcement for the scheduler."""
        ticket = os.urandom(bulk.TICKET_BYTES)
        header, payload = self.session.encode([{"op": "data", "ticket": ticket,
                                                "data": data}], recipient,
                                              frame_limit=None)
        host = host_of(self.scheduler_address)

        def upload():
            try:
                bulk.upload(self.session, host, self.relay_port, ticket, header, payload,
                            self.gather_timeout, self.connect_timeout, self.uploads)
            except OSError as e:
                logger.warning("worker %s: could not stream data through the scheduler's "
                               "relay: %s", self.address, e)
                self.loop.call_soon(self._queue, {"op": "stream-failed", "ticket": ticket})
        self.uploads.submit(upload)
        return {"ticket": ticket, "sizes": bulk.stream_sizes(header, payload),
                "keys": list(data)}

    def _on_peer_request(self, frames):
        peer = frames[0].bytes
        try:
            msgs = self.session.loads(frames[1:], sender=peer)
        except ProtocolError as e:
            self.rejections(peer[:32], e)
            return
        for msg in msgs:
            if msg.get("op") == "subscribe-results":
                self._handle("client-subscribed", client=peer)
                continue
            if msg.get("op") != "get-data":
                continue
            self._serialize_data(
                msg["keys"], lambda data, missing, errors, msg=msg: self._reply_peer(
                    peer, msg, data, missing, errors))

    def _reply_peer(self, peer, msg, data, missing, errors):
        """Values for a peer: a spilled one as the frames of its file, never
        unpickled here; signed for that peer like any message, cut into frames of
        `MAX_FRAME_BYTES` on ZeroMQ, whole on the side channel.  ``errors``: {key:
        why it could not be pickled}, for the tasks there that wait for it."""
        reply = {"op": "data", "request_id": msg["request_id"], "data": data,
                 "missing": list(missing)}
        if errors:
            reply["errors"] = errors
        self.recorder.bytes_out += sum(blob.nbytes for blob in data.values())
        self.recorder.served += 1
        if (msg.get("bulk") and self.bulk is not None
                and sum(blob.nbytes for blob in data.values()) >= bulk.BULK_FROM):
            # Over the side channel in whole frames: no ZeroMQ in between.
            header, payload = self.session.encode([reply], peer, frame_limit=None)
            ticket = self.bulk.offer(self.session, header, payload)
            frames = self.session.dumps([{
                "op": "data-bulk", "request_id": msg["request_id"],
                "ticket": ticket, "port": self.bulk.port,
                "sizes": bulk.stream_sizes(header, payload)}], to=peer)
        else:
            frames = self.session.dumps([reply], peer)
        try:
            send(self.peer_socket, [peer] + frames)
        except Exception as e:
            logger.debug("worker %s: peer %r went away: %s", self.address, peer, e)

    def _gather(self, peer, keys):
        # 64 random bits: a reply over the side channel is accepted for this id only
        request_id = os.urandom(8).hex()
        self.gather_timers[peer] = (request_id, self.loop.call_later(
            self.gather_timeout, self._gather_timed_out, peer, request_id), keys)
        msg = {"op": "get-data", "keys": list(keys), "request_id": request_id}
        self.recorder.fetch_started(peer, time.time())
        if peer == RELAY:
            msg["op"] = "relay"
            # Large values may stream here through the scheduler's relay (none when
            # the cluster encrypts: no relay is named then).
            msg["stream"] = (bool(self.relay_port)
                             and self.relay_failures < RELAY_STREAM_TRIES)
            self.outgoing.append(msg)
            return
        sock = self.peers.get(peer) or self._connect_peer(peer)
        msg["bulk"] = self.bulk is not None and peer not in self.no_bulk
        try:
            send(sock, self.session.dumps([msg], peer.encode()))
        except Exception as e:            # no way to the peer: fail the fetch now
            logger.warning("worker %s: could not ask %s for data: %s", self.address,
                           peer, e)
            self.loop.call_soon(self._gather_timed_out, peer, request_id)

    def _connect_peer(self, peer):
        """A connection to ``peer``, watched for its life: if its handshake has not
        succeeded after ``connect_timeout`` seconds (no route, a firewall, a wrong
        address, a one-way link), the peer is unreachable; if it drops while data is
        asked of the peer (ZeroMQ's heartbeats find a dead route within
        `PEER_HEARTBEAT_TIMEOUT`), the fetch fails at once instead of at
        ``gather_timeout``."""
        # The monitor exists before the connection starts (connect_dealer makes it,
        # get_monitor_socket returns that one): its first handshake is never missed.
        sock = connect_dealer(self.loop.context, self.security, self.identity, peer,
                              events=PEER_EVENTS,
                              heartbeat_timeout=PEER_HEARTBEAT_TIMEOUT)
        monitor = sock.get_monitor_socket()
        self.peers[peer] = sock
        self.peer_monitors[peer] = monitor
        self.loop.add_socket(sock, lambda frames: self._on_peer_reply(peer, frames))
        self.loop.add_socket(monitor, lambda frames: self._on_peer_event(peer, frames))
        self.connecting[peer] = self.loop.call_later(
            self.connect_timeout, self._connect_timed_out, peer)
        return sock

    def _on_peer_event(self, peer, frames):
        event = _event_id(frames)
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._connected(peer)
        elif event == zmq.EVENT_DISCONNECTED and peer in self.gather_timers:
            logger.warning("worker %s: lost the connection to %s while fetching from "
                           "it; its data comes through the scheduler", self.address,
                           peer)
            self._unreachable(peer)
        # A drop with nothing asked: ZeroMQ reconnects, the next fetch will see.

    def _connected(self, peer):
        IOLoop.cancel_timer(self.connecting.pop(peer, None))
        if peer in self.state.unreachable:
            logger.info("worker %s: %s is reachable again", self.address, peer)
            self._handle("peer-reachable", peer=peer)

    def _stop_watching(self, peer):
        IOLoop.cancel_timer(self.connecting.pop(peer, None))
        monitor = self.peer_monitors.pop(peer, None)
        if monitor is None:
            return
        self.loop.remove_socket(monitor)
        sock = self.peers.get(peer)
        if sock is not None:
            sock.disable_monitor()
        monitor.close(linger=0)

    def _connect_timed_out(self, peer):
        if self.connecting.pop(peer, None) is None:
            return
        # A loop kept busy past the deadline (long handlers, task threads holding the
        # GIL) runs this timer before it reads what arrived meanwhile: a handshake that
        # succeeded in time waits unread in the monitor, and the peer is fine.
        monitor = self.peer_monitors.get(peer)
        while monitor is not None:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if _event_id(frames) == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected(peer)
                return
        logger.warning("worker %s: no connection to %s after %.1f s; its data comes "
                       "through the scheduler", self.address, peer, self.connect_timeout)
        self._unreachable(peer)

    def _unreachable(self, peer):
        self._drop_peer(peer)
        self._handle("peer-unreachable", peer=peer)
        self.loop.call_later(self.unreachable_retry, self._probe, peer)

    def _probe(self, peer):
        """Try again, in the background, to connect to a peer found unreachable."""
        if peer in self.state.unreachable and peer not in self.peers:
            self._connect_peer(peer)

    def _take_pending(self, peer, request_id):
        """The gather from ``peer`` (request id, timer, keys) if ``request_id`` is the
        one in flight, now ended; else None (a late answer to one given up on)."""
        pending = self.gather_timers.get(peer)
        if pending is None or pending[0] != request_id:
            return None
        del self.gather_timers[peer]
        IOLoop.cancel_timer(pending[1])
        return pending

    def _gather_timed_out(self, peer, request_id):
        if self._take_pending(peer, request_id) is None:
            return
        logger.warning("worker %s: %s did not answer in %.0f s", self.address,
                       "the relay" if peer == RELAY else peer, self.gather_timeout)
        if peer == RELAY:
            self._handle("gather-failed", peer=peer)
        else:
            self._unreachable(peer)

    def _drop_peer(self, peer):
        """Forget a peer: its connection, any gather from it in flight, and whether its
        side channel failed (a new worker may come at the same address)."""
        pending = self.gather_timers.pop(peer, None)
        if pending is not None:
            IOLoop.cancel_timer(pending[1])
        self.no_bulk.discard(peer)
        self._stop_watching(peer)
        sock = self.peers.pop(peer, None)
        if sock is not None:
            self.loop.remove_socket(sock)
            sock.close(linger=0)

    def _on_peer_reply(self, peer, frames):
        try:
            msgs = self.session.loads(frames)
        except ProtocolError as e:
            self.rejections(peer, e)
            return
        frames.clear()
        for msg in msgs:
            pending = self.gather_timers.get(peer)
            if msg.get("op") != "data-bulk":
                self._gather_done(peer, msg)
            elif pending is not None and pending[0] == msg.get("request_id"):
                threading.Thread(target=self._fetch_bulk, args=(peer, msg), daemon=True,
                                 name="dask-ipy-bulk-fetch").start()

    def _gather_done(self, peer, msg):
        if self._take_pending(peer, msg.get("request_id")) is None:
            return
        values, sizes, missing = {}, {}, list(msg.get("missing", ()))
        for key, blob in msg.get("data", {}).items():
            try:
                values[key] = deserialize(blob)
                sizes[key] = sizeof(values[key])
            except Exception as e:
                logger.error("worker %s: could not load %r from %s: %s",
                             self.address, key, peer, e)
                missing.append(key)
        self.recorder.fetched_from(peer, time.time(),
                                   {key: msg["data"][key].nbytes for key in values},
                                   source="scheduler" if peer == RELAY else None,
                                   types=map(typename, values.values()))
        self._handle("gather-done", peer=peer, data=values, sizes=sizes,
                     missing=missing, errors=msg.get("errors"))

    def _fetch_bulk(self, peer, offer):
        """On a thread of its own: download a "data" message over the side channel and
        hand it to the loop.  Its MAC is checked here; its freshness by the request id,
        which must be the one the loop is waiting for (checked again there)."""
        try:
            frames, tags = bulk.fetch(self.session, host_of(peer), offer["port"],
                                      offer["ticket"], self.gather_timeout, offer["sizes"],
                                      connect_timeout=self.connect_timeout)
            msgs = self.session.loads(frames, check_replay=False, tags=tags)
            if (len(msgs) != 1 or msgs[0].get("op") != "data"
                    or msgs[0].get("request_id") != offer["request_id"]):
                raise ProtocolError("not the data asked for")
        except (OSError, ProtocolError, KeyError, TypeError, ValueError) as e:
            logger.warning("worker %s: side channel from %s failed (%s); asking again "
                           "over ZeroMQ", self.address, peer, e)
            self.loop.call_soon(self._bulk_failed, peer, offer["request_id"])
            return
        self.loop.call_soon(self._gather_done, peer, msgs[0])

    def _bulk_failed(self, peer, request_id):
        pending = self._take_pending(peer, request_id)
        if pending is None:
            return
        self.no_bulk.add(peer)
        self._gather(peer, pending[2])

    # ---------------------------------------------------------------- actors

    def add_actor(self, key, obj):
        """From the task that made it (see client/actors.py): keep ``obj`` as the
        actor of ``key``, until the key is released here.  Returns the address
        callers send its calls to."""
        with self.actor_lock:
            if self.actor_address is None:
                self._start_actor_thread()
        self.actors[key] = obj
        return self.actor_address

    def _start_actor_thread(self):
        """Actor calls have a socket and a thread of their own: the thread receives
        calls, queues each on its actor's lane (see actors.py) and sends the replies
        the lanes hand back (a pipe wakes it).  It owns its socket, as the I/O thread
        owns the others; the cluster's key guards it the same way (`bind_router`) and
        signs every message (the worker's `Session`)."""
        host = host_of(self.address)
        sock, port = bind_router(self.loop, self.security,
                                 "0.0.0.0" if host in ("", "*", "0.0.0.0") else host, 0,
                                 who="worker")
        self.actor_address = self.address.rsplit(":", 1)[0] + f":{port}"
        self.session.aliases = self.session.aliases | {self.actor_address.encode()}
        self.actor_wake = os.pipe()
        for fd in self.actor_wake:
            os.set_blocking(fd, False)
        t = threading.Thread(target=self._actor_thread, args=(sock,), daemon=True,
                             name="dask-ipy-worker-actors")
        t.start()
        self.actor_thread = t

    def _actor_thread(self, sock):
        wake = self.actor_wake[0]
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        try:
            while not self.closed.is_set():
                ready = dict(poller.poll(100))  # now and then: has the worker closed?
                if wake in ready:
                    self._send_actor_replies(sock, wake)
                if sock not in ready:
                    continue
                frames = sock.recv_multipart(copy=False)
                peer = frames[0].bytes
                session = self.session          # a new one after a reconnection
                try:
                    msgs = session.loads(frames[1:], sender=peer)
                except ProtocolError as e:
                    self.loop.call_soon(self.rejections, peer[:32], e)
                    continue
                frames = None
                for msg in msgs:
                    if msg.get("op") == "actor-call":
                        self._queue_actor_call(peer, session, msg)
        except zmq.ZMQError as e:
            if not self.closed.is_set():
                logger.error("worker %s: the actor socket failed: %s", self.address, e)
        finally:
            sock.close(linger=0)
            with self.actor_replies_lock:
                fds, self.actor_wake = self.actor_wake, None
                self.actor_replies = []
            for fd in fds:
                os.close(fd)

    def _queue_actor_call(self, peer, session, msg):
        key = msg.get("key")
        try:
            self.actor_lanes.submit(key, (peer, session, msg))
        except TypeError:                       # an unhashable key: no actor's
            self._actor_replied(peer, session, {
                "op": "actor-result", "request_id": msg.get("request_id"),
                "status": "error", **raised(ActorLost(f"no actor {key!r}"))})

    def _actor_replied(self, peer, session, reply):
        """From a lane or the actors' event loop: ``reply`` goes to ``peer``."""
        with self.actor_replies_lock:
            if self.actor_wake is None:         # the socket closed
                return
            self.actor_replies.append((peer, session, reply))
            if len(self.actor_replies) == 1:    # else the actor thread is woken already
                os.write(self.actor_wake[1], b"\0")

    def _send_actor_replies(self, sock, wake):
        with self.actor_replies_lock:
            try:
                os.read(wake, 4096)
            except BlockingIOError:
                pass
            replies, self.actor_replies = self.actor_replies, []
        to = {}
        for peer, session, reply in replies:    # one message per caller, in order
            to.setdefault((peer, session), []).append(reply)
        for (peer, session), batch in to.items():
            try:
                send(sock, [peer] + session.dumps(batch, peer))
            except Exception as e:
                logger.debug("worker %s: caller %r went away: %s",
                             self.address, peer, e)

    def _stop_actor_thread(self):
        """Before the loop's context goes: the actor thread closes its socket."""
        thread = getattr(self, "actor_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)

    def _run_actor_call(self, key, call):
        """On actor ``key``'s lane: run one call; its reply goes back to the caller
        (a coroutine's when it ends, from the actors' event loop)."""
        peer, session, msg = call
        reply = {"op": "actor-result", "request_id": msg.get("request_id")}
        try:
            obj = self.actors.get(key)
            if obj is None:
                raise ActorLost(f"no actor {key!r} on worker {self.address}: "
                                "it was released, or the worker restarted, and its "
                                "state is lost")
            attr = getattr(obj, msg["name"])
            if msg.get("kind") == "call":
                args, kwargs = deserialize(msg["args"]) if "args" in msg else ((), {})
                running.worker, running.key = self, key
                try:
                    attr = attr(*args, **kwargs)
                finally:
                    running.worker = running.key = None
                if inspect.iscoroutine(attr):
                    self.actor_loop.submit(attr).add_done_callback(
                        lambda done: self._actor_replied(
                            peer, session, self._coroutine_reply(reply, done)))
                    return
            reply.update(status="OK", result=serialize(attr))
        except BaseException as e:    # the caller gets it, with its traceback
            reply.update(status="error", **raised(e))
        self._actor_replied(peer, session, reply)

    @staticmethod
    def _coroutine_reply(reply, done):
        try:
            reply.update(status="OK", result=serialize(done.result()))
        except BaseException as e:
            reply.update(status="error", **raised(e))
        return reply

    def _drop_actors(self):
        """Actors whose key this worker no longer holds go (their Future was
        released, or the worker restarted)."""
        tasks = self.state.tasks
        for key in [k for k in self.actors if k not in tasks
                    or tasks[k].state not in ("memory", "executing")]:
            del self.actors[key]

    # ---------------------------------------------------------------- life

    def _close_from_loop(self):
        self.plugin_host.close()
        self.outgoing.append({"op": "unregister"})
        self._flush()
        if self.bulk is not None:
            self.bulk.close()
        self.uploads.stop()
        self.loop.running = False
        self.closed.set()
        self._stop_actor_thread()
        for _ in self.threads:
            self.jobs.put(None)
        self._release_resources()

    def close(self, timeout=5):
        # The tasks' client first, while the scheduler is surely there to hear it go
        # (from the loop, `_release_resources` can only leave it to a thread).
        client, self.task_client = self.task_client, None
        if client is not None and not self.loop.in_loop():
            client.close()
        elif client is not None:
            self.task_client = client
        if self.loop.running and not self.loop.in_loop():
            self.loop.call_soon(self._close_from_loop)
        self.loop.stop(timeout)
        self.rejections.close()
        if self.bulk is not None:
            self.bulk.close()
        self.uploads.stop()
        self.closed.set()
        for _ in self.threads:
            self.jobs.put(None)
        self._release_resources()

    def _release_resources(self):
        """The memory watch stops; a store this worker made removes its files; tasks
        waiting to rejoin wake (they end with the worker); the client tasks used
        closes; calls of `executor` not started are cancelled; the plugins' thread
        ends."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.plugin_host.stop()
        for event in list(self.rejoin_events.values()):
            event.set()
        self.actors.clear()
        self.actor_lanes.close()
        self.actor_loop.close()
        client, self.task_client = self.task_client, None
        if client is not None:
            if self.loop.in_loop():
                threading.Thread(target=client.close, daemon=True,
                                 name="dask-ipy-close-task-client").start()
            else:
                client.close()
        context.uninstall()
        sampler = getattr(self, "sampler", None)
        if sampler is not None:
            sampler.close()
        self.log_buffer.detach()
        if self.monitor is not None:
            self.monitor.stop()
        if self._owns_data and isinstance(self.data, SpillStore):
            self.data.close()

    def wait(self, timeout=None):
        self.loop.stopped.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __await__(self):
        """``await Worker(...)``: the worker, once the scheduler has welcomed it
        (TimeoutError after `REGISTER_TIMEOUT` s), as dask.distributed's."""
        return self._registered().__await__()

    async def _registered(self):
        registered = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.registered_listeners.append(
            lambda: loop.call_soon_threadsafe(registered.set))
        if self.clients_address is None:        # not welcomed before the line above
            await asyncio.wait_for(registered.wait(), REGISTER_TIMEOUT)
        return self

    async def __aenter__(self):
        return await self

    async def __aexit__(self, *exc):
        await asyncio.to_thread(self.close)
