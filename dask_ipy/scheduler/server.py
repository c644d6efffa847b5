"""The scheduler shell: two ROUTER sockets around a `SchedulerState`.

    workers ──DEALER──▶ ROUTER address_to_workers ─┐
                                                   ├─ IOLoop thread: loads, state, dumps
    clients ──DEALER──▶ ROUTER address_to_clients ─┘

Only holders of the key complete a connection (see security.py).  Every received
message is authenticated before it is decoded (`Session.loads`) and must carry this
start's random epoch, which peers learn by the "hello" handshake (see protocol.py); a
bad one is counted, logged sparingly and dropped, and its sender hears nothing.  Task
payloads are forwarded as opaque blobs: the scheduler never unpickles them.  It runs
user code only when a client asks for it explicitly: scheduler plugins and
`run_on_scheduler` (`plugins`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time

import zmq

from .. import bulk, messages, profiling, stories
from ..addresses import ANY_HOST, advertised_host, dashboard_url, host_of
from ..addresses import dashboard_port as dashboard_port_of   # its argument's name
from ..comm import IOLoop, RejectionLog, send, bind_router, hello_reply, new_id
from ..errors import error_payload
from ..log import logger
from ..logs import LogBuffer
from ..protocol import HANDSHAKE_OPS, MAX_MESSAGE_BYTES, ProtocolError, Session, new_epoch
from ..security import (Security, remove_connection_file, remove_stale_connection_files,
                        write_connection_file)
from ..taskstream import CAPACITY, MemoryHistory, TaskStream
from .plugins import SchedulerPlugins, run_function
from .state import (ALLOWED_FAILURES, MAX_DEATH_TEXT, MAX_RELAY_BYTES, UNKNOWN_DURATION,
                    SchedulerState)

MONITOR_INTERVAL = 0.5
PAGE = 100_000             # task stream records in one answer at most
FIRST_JOIN_TIMEOUT = 60.0  # seconds an idle timeout waits at least for the first to
                           # join (its launcher's workers and client may start slowly)
DEATH_WAIT = 5.0           # seconds a task a lost supervised worker would end waits for
                           # the supervisor's word on how its process ended (it comes
                           # in 0.1 s as a rule; the supervisor loads ZeroMQ first)


def _configured():
    """The scheduler's settings set in dask.config, where this process has loaded
    dask; {} in a scheduler process of its own, which never does (its launcher
    passes them as options)."""
    if "dask" not in sys.modules:
        return {}
    from .. import config

    unknown, by_prefix = config.task_durations()
    found = {"transition_log_length": config.transition_log_length("scheduler"),
             "allowed_failures": config.allowed_failures(),
             "unknown_task_duration": unknown, "default_task_durations": by_prefix}
    return {name: value for name, value in found.items() if value is not None}


class Scheduler:
    """A scheduler listening for workers and clients.

    >>> s = Scheduler()                      # 127.0.0.1, ports chosen by ZeroMQ
    >>> s.address_to_workers, s.address_to_clients

    The task stream keeps the last ``task_stream_length`` tasks the workers ran.
    ``dashboard_port``: serve a live page and Prometheus metrics over HTTP on this
    port (0: any free one; None, the default: no HTTP at all), on ``hostname``, under
    the path ``dashboard_prefix`` (see dashboard.py; `dashboard_link`).
    ``transition_log_length``: the latest transitions kept for `story` (0: none);
    ``allowed_failures``: how many workers a task may see die under it before it
    ends in `KilledWorker`.  Both by default from dask.config where this process
    has loaded dask (``dask-ipy.scheduler.*``, else dask.distributed's settings of
    the same names), else 10,000 and 3.
    ``unknown_task_duration`` (seconds) and ``default_task_durations`` ({task
    prefix: seconds}): what a task of a group not measured yet is expected to take,
    for placement, stealing and adaptivity; by default dask.distributed's
    ``distributed.scheduler.unknown-task-duration`` and ``default-task-durations``
    where this process has loaded dask, else 0.5 s and dask.distributed's defaults.
    ``idle_timeout``: close after that many seconds with no worker and no client
    (before the first has joined, at least `FIRST_JOIN_TIMEOUT`).

    dask.distributed's names are taken too: ``host`` for ``hostname``, ``port`` for
    ``port_to_clients`` (its ``address``), ``dashboard_address`` (":8787", ":0"
    for any free port, None for none) for ``dashboard_port``.
    """

    def __init__(self, hostname="127.0.0.1", port_to_workers=0, port_to_clients=0, *,
                 security=None, connection_file=None, heartbeat_timeout=10.0,
                 idle_timeout=None, allowed_failures=None, validate=False,
                 max_message_bytes=MAX_MESSAGE_BYTES, max_relay_bytes=MAX_RELAY_BYTES,
                 task_stream_length=CAPACITY, dashboard_port=None, dashboard_prefix="",
                 transition_log_length=None, host=None, port=None,
                 dashboard_address=None, unknown_task_duration=None,
                 default_task_durations=None):
        hostname = host or hostname
        port_to_clients = port or port_to_clients
        if dashboard_address is not None and dashboard_port is None:
            dashboard_port = dashboard_port_of(dashboard_address, hostname)
        self.security = security or Security.temporary()
        self.id = new_id("scheduler")
        self.session = Session(self.security.key, self.id, epoch=new_epoch(),
                               max_message_bytes=max_message_bytes)
        configured = _configured()
        if transition_log_length is None:
            transition_log_length = configured.get("transition_log_length", stories.LENGTH)
        if allowed_failures is None:
            allowed_failures = configured.get("allowed_failures", ALLOWED_FAILURES)
        if unknown_task_duration is None:
            unknown_task_duration = configured.get("unknown_task_duration",
                                                   UNKNOWN_DURATION)
        if default_task_durations is None:
            default_task_durations = configured.get("default_task_durations")
        self.state = SchedulerState(allowed_failures=allowed_failures, validate=validate,
                                    max_relay_bytes=max_relay_bytes,
                                    transition_log_length=transition_log_length,
                                    unknown_duration=unknown_task_duration,
                                    task_durations=default_task_durations)
        self.heartbeat_timeout = heartbeat_timeout
        self.idle_timeout = idle_timeout
        self.started = time.time()
        self.rejected = 0
        self.bytes_received = 0
        self.task_stream = TaskStream(task_stream_length)
        self.memory_history = MemoryHistory()
        self._stream_shown = 0                 # task stream records in snapshots sent
        self.profiles = {}                     # {token: profile gather in flight}
        self.loop_lag = 0.0                    # how late the last monitor tick ran
        self.log_buffer = LogBuffer().attach()  # its latest log records (get_logs)
        host = advertised_host(hostname)
        self.dashboard = None
        if dashboard_port is not None:
            # First, so that a port in use fails before anything else exists.  Its
            # own thread and event loop: HTTP never runs on the I/O thread.
            from .dashboard import Dashboard

            self.dashboard = Dashboard("0.0.0.0" if hostname in ANY_HOST else hostname,
                                       host, dashboard_port, dashboard_prefix)
        self.loop = IOLoop("dask-ipy-scheduler")
        self.rejections = RejectionLog(self.loop, "scheduler: rejected a message")
        self.worker_socket, port_to_workers = bind_router(
            self.loop, self.security, hostname, port_to_workers, who="scheduler")
        self.client_socket, port_to_clients = bind_router(
            self.loop, self.security, hostname, port_to_clients, who="scheduler")
        self.address_to_workers = f"tcp://{host}:{port_to_workers}"
        self.address_to_clients = f"tcp://{host}:{port_to_clients}"
        # Large values a client gathers, and those relayed between workers that
        # cannot reach each other, pass through a plain TCP relay, not through this
        # thread (see bulk.py); not when the cluster encrypts.
        self.relay = None if self.security.encrypt else bulk.BulkRelay(
            "0.0.0.0" if hostname in ("", "*", "0.0.0.0") else hostname)
        self.state.relay_streams = self.relay is not None
        # The state's kinds map to this one object: `_on_worker_frames` batches them.
        self._to_state = self._worker_to_state
        self.from_workers = messages.handlers(messages.WORKER, messages.SCHEDULER, self,
                                              self.FROM_WORKERS, self._to_state)
        self.from_clients = messages.handlers(messages.CLIENT, messages.SCHEDULER, self,
                                              self.FROM_CLIENTS,
                                              self.state.handle_client_message)
        self.loop.add_socket(self.worker_socket, self._on_worker_frames)
        self.loop.add_socket(self.client_socket, self._on_client_frames)
        # A dead peer's connection closes at once: on each disconnect, find out which
        # peers are gone by trying to reach them, instead of waiting for heartbeats.
        for sock in (self.worker_socket, self.client_socket):
            mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self.loop.add_socket(mon, self._on_disconnect)
        self.plugin_host = SchedulerPlugins(self)
        self.loop.add_flush(self._flush)
        remove_stale_connection_files()
        self.connection_file = write_connection_file(
            {"address_to_workers": self.address_to_workers,
             "address_to_clients": self.address_to_clients,
             "id": self.id.decode(), "pid": os.getpid(), "host": socket.gethostname()},
            self.security, connection_file)
        self._idle_since = time.monotonic()
        self._joined = False              # a worker or client has joined, ever
        self.closed = threading.Event()
        self.loop.call_later(1.0, self._check_heartbeats)
        self._tick_due = time.monotonic() + MONITOR_INTERVAL
        self.loop.call_later(MONITOR_INTERVAL, self._monitor_tick)
        self.loop.start()

    def __repr__(self):
        return (f"<Scheduler {self.address_to_clients} workers={len(self.state.workers)}"
                f" clients={len(self.state.clients)}>")

    # What `run_on_scheduler` functions and plugins look at, by dask.distributed's
    # names (the records are this scheduler's own: `state.TaskState`...).

    @property
    def tasks(self):
        """{key: TaskState}"""
        return self.state.tasks

    @property
    def workers(self):
        """{address: WorkerRecord}"""
        return self.state.by_address

    @property
    def clients(self):
        """{client id: ClientRecord}"""
        return self.state.clients

    @property
    def address(self):
        return self.address_to_clients

    @property
    def plugins(self):
        """{name: scheduler plugin}"""
        return self.plugin_host.plugins

    @property
    def UNKNOWN_TASK_DURATION(self):
        """Seconds a task of a group not measured yet is expected to take, unless its
        prefix has a default of its own (``distributed.scheduler.*``)."""
        return self.state.unknown_duration

    def story(self, *keys_or_stimuli):
        """The transitions of these keys (or TaskStates) or stimulus ids:
        [(key, start, finish, recommendations, stimulus_id, time)]
        (`SchedulerState.story`)."""
        return self.state.story(*keys_or_stimuli)

    def log_event(self, topic, msg):
        """Log ``msg`` under ``topic`` (or each of a list): kept among the topic's
        latest events and sent to its subscribers.  From `run_on_scheduler`
        functions and scheduler plugins (this scheduler's I/O thread)."""
        self.state.log_event(topic, msg)

    def get_logs(self, n=None):
        """The latest log lines of this scheduler's process: [(level, line)], newest
        first (as dask.distributed's)."""
        return self.log_buffer.lines(n)

    # ---------------------------------------------------------------- receive

    def _decode(self, frames):
        peer = frames[0].bytes
        self.bytes_received += sum(map(len, frames))
        try:
            return peer, self.session.loads(frames[1:], sender=peer)
        except ProtocolError as e:
            self.rejected += 1
            self.rejections(peer[:32], e)
            return peer, ()

    def _answer_hello(self, sock, peer, msg):
        """Tell a peer this start's epoch, at once (see protocol.py); a "hello" never
        reaches the state."""
        reply = hello_reply(self.session, msg, self.id)
        if reply is None:
            return
        try:
            send(sock, [peer] + self.session.dumps([reply], peer, handshake=True))
        except zmq.ZMQError as e:
            logger.debug("scheduler: could not answer %r: %s", peer[:32], e)

    def _on_worker_frames(self, frames):
        wid, msgs = self._decode(frames)
        now = time.time()
        # Consecutive messages for the state go to it together (a batch of results
        # is handled in one pass: `SchedulerState.handle_worker_messages`).
        for_state = []
        for msg in msgs:
            handler = self.from_workers.get(msg.get("op"))
            if handler is None:
                logger.debug("scheduler: ignored a message %r", msg.get("op"))
                continue
            if handler is self._to_state:
                for_state.append(msg)
                continue
            if for_state and not self._worker_to_state(wid, for_state, now):
                return                 # the rest of the batch comes from a stranger
            for_state = []
            if handler(wid, msg, now) is False:
                return
        if for_state:
            self._worker_to_state(wid, for_state, now)

    def _on_worker_hello(self, wid, msg, now):
        self._answer_hello(self.worker_socket, wid, msg)

    def _on_register_worker(self, wid, msg, now):
        self._joined = True
        token = msg.get("supervised")           # its supervisor's, if it has one
        ws = self.state.add_worker(wid, msg["address"], msg.get("nthreads", 1),
                                   msg.get("name"), msg.get("host", ""), msg.get("pid"),
                                   msg.get("memory_limit", 0), now=now,
                                   memory_fractions=msg.get("memory_fractions"),
                                   shares_host=msg.get("shares_host", False),
                                   resources=msg.get("resources"),
                                   ip=host_of(msg["address"]),
                                   local_directory=msg.get("local_directory"),
                                   supervised=token if type(token) is str else None)
        # The worker keeps what it sends us under our cap (results it cannot send
        # become errors naming the key, instead of dropped messages).
        self.state.send_worker(ws, {"op": "welcome",
                                    "max_message_bytes": self.session.max_message_bytes,
                                    "relay_port": self.relay and self.relay.port,
                                    "address_to_clients": self.address_to_clients})

    def _on_unregister(self, wid, msg, now):
        self.state.remove_worker(wid, reason="worker closed", expected=True)

    def _on_worker_died(self, wid, msg, now):
        """A worker's supervisor, on a connection of its own, says how the worker's
        process ended (`supervisor.tell_scheduler`)."""
        token, pid, reason = msg.get("token"), msg.get("pid"), msg.get("reason")
        if not (type(token) is str and type(pid) is int and type(reason) is str):
            return
        reason = reason[:MAX_DEATH_TEXT]
        self.state.tell_time(now)
        address = self.state.worker_died(token, pid, reason)
        if address is not None:
            logger.warning("scheduler: worker %s (pid %d): %s", address, pid, reason)

    def _on_task_stream(self, wid, msg, now):
        ws = self.state.workers.get(wid)
        if ws is not None:
            self.task_stream.add_batch(ws.address, msg, self._own_key)

    def _own_key(self, key):
        try:
            ts = self.state.tasks.get(key)
        except TypeError:              # not a key at all
            return None
        return None if ts is None else ts.key

    def _on_stream_failed(self, wid, msg, now):
        if self.relay is not None:
            self.relay.cancel(msg.get("ticket"))

    def _on_profile(self, wid, msg, now):
        pending = self.profiles.get(msg.get("token"))
        if pending is None or wid not in pending["waiting"]:
            return                     # late, after the timeout: the client has its answer
        pending["waiting"].discard(wid)
        ws = self.state.workers.get(wid)
        if ws is not None and msg.get("profile") is not None:
            pending["trees"][ws.address] = msg["profile"]
        if not pending["waiting"]:
            self._answer_profile(msg["token"])

    def _worker_to_state(self, wid, msgs, now):
        if not self.state.handle_worker_messages(wid, msgs, now):
            self.state.outbox.append(("worker", wid, {"op": "unknown-worker"}))
            return False
        return True

    FROM_WORKERS = {
        "hello": _on_worker_hello,
        "register-worker": _on_register_worker,
        "unregister": _on_unregister,
        "worker-died": _on_worker_died,
        "stream-failed": _on_stream_failed,
        "task-stream": _on_task_stream,
        "profile": _on_profile,
    }

    def _on_disconnect(self, frames):
        # The monitor event can come before the socket has dropped the dead peer's
        # pipe (that happens when the socket next processes its commands), and a
        # ping into that pipe still "succeeds": look again a little later.
        self._find_lost_peers()
        for delay in (0.02, 0.1, 0.4):
            self.loop.call_later(delay, self._find_lost_peers)

    def _find_lost_peers(self):
        self.state.tell_time(time.time())
        for wid in list(self.state.workers):
            if not self._reachable(self.worker_socket, wid):
                ws = self.state.remove_worker(wid, reason="connection lost", lost=True)
                if ws is not None and ws.supervised in self.state.lost:
                    self.loop.call_later(DEATH_WAIT, self.state.death_unexplained,
                                         ws.supervised)
        for cid in list(self.state.clients):
            if not self._reachable(self.client_socket, cid):
                self.state.remove_client(cid)

    def _reachable(self, sock, ident):
        try:
            sock.send_multipart([ident] + self.session.dumps([{"op": "ping"}], to=ident))
            return True
        except zmq.ZMQError:
            return False

    def _on_client_frames(self, frames):
        cid, msgs = self._decode(frames)
        # Decoded messages hold no reference to the received bytes except through
        # the payload frames of their Serialized values: let the rest go now, not
        # after the handlers (a million-task graph is some 100 MB).
        frames.clear()
        self.state.tell_time(time.time())
        last = len(msgs) - 1
        for i, msg in enumerate(msgs):
            op = msg.get("op")
            # A "hello" creates no state: it only earns its sender the epoch.
            if cid not in self.state.clients and op not in HANDSHAKE_OPS:
                self.state.add_client(cid)
            handler = self.from_clients.get(op)
            if handler is None:
                logger.debug("scheduler: ignored a message %r", op)
                continue
            handler(cid, msg)
            if op == "update-graph" and i < last:
                # The tasks a graph hands out leave now, not after the rest of the
                # batch (the gather waiting for their results, as a rule).
                self._flush()

    def _on_client_hello(self, cid, msg):
        self._answer_hello(self.client_socket, cid, msg)

    def _on_register_client(self, cid, msg):
        self._joined = True
        self.state.send_client(cid, {"op": "welcome", "id": self.id.decode(),
                                     "address_to_workers": self.address_to_workers,
                                     "relay_port": self.relay and self.relay.port,
                                     "dashboard": self.dashboard and self.dashboard.info,
                                     "started": self.started})

    def _on_close_client(self, cid, msg):
        self.state.remove_client(cid)

    def _on_shutdown(self, cid, msg):
        state = self.state
        # Monitors see the end of the work before they hear of the end: a widget's
        # last word shows every task that finished, not a snapshot up to 0.5 s old.
        self._publish_snapshot(time.time())
        for ws in state.workers.values():
            state.send_worker(ws, {"op": "close"})
        # The other clients hear it now; the one asking gets its answer and closes
        # itself.
        for other in state.clients:
            if other != cid:
                state.send_client(other, {"op": "scheduler-closing"})
        state.send_client(cid, {"op": "reply", "request_id": msg["request_id"],
                                "result": True})
        self.loop.call_later(0.05, self._shutdown)

    def _answer(self, cid, msg, result):
        self.state.send_client(cid, {"op": "reply", "request_id": msg["request_id"],
                                     "result": result})

    def _on_register_scheduler_plugin(self, cid, msg):
        self._answer(cid, msg, self.plugin_host.add(msg["name"], msg["plugin"],
                                                    msg.get("idempotent", False)))

    def _on_unregister_scheduler_plugin(self, cid, msg):
        if self.plugin_host.remove(msg["name"]):
            self._answer(cid, msg, {"status": "OK"})
        else:
            error = ValueError(f"Could not find plugin {msg['name']!r} among the "
                               "current scheduler plugins")
            self._answer(cid, msg, {"status": "error", **error_payload(error, None)})

    def _on_get_task_stream(self, cid, msg):
        limit = min(int(msg.get("limit") or PAGE), PAGE)
        self._answer(cid, msg, self.task_stream.page(
            msg.get("since"), msg.get("count"), msg.get("start"), msg.get("stop"),
            limit))

    def _on_get_logs(self, cid, msg):
        self._answer(cid, msg, self.get_logs(msg.get("n")))

    def _on_get_memory_history(self, cid, msg):
        self._answer(cid, msg, self.memory_history.since(msg.get("since")))

    def _on_run_on_scheduler(self, cid, msg):
        self._answer(cid, msg, run_function(self, msg["function"]))

    def _on_wait_for_workers(self, cid, msg):
        token = self.state.wait_for_workers(cid, msg["request_id"], msg["n"])
        if msg.get("timeout") is not None:
            self.loop.call_later(msg["timeout"], self.state.stop_waiting_for_workers,
                                 token)

    def _on_restart_workers(self, cid, msg):
        token = self.state.restart_workers(cid, msg["request_id"], msg["workers"])
        self.loop.call_later(msg.get("timeout", 60.0), self.state.restart_timed_out,
                             token)

    def _on_get_profile(self, cid, msg):
        """Ask the workers (all, or those named by address or name) for their sampled
        call trees; answer once all have, or after ``timeout`` seconds with the trees
        of those that did: merged (`profiling.merge`), or {address: tree}."""
        named = msg.get("workers")
        workers = list(self.state.workers.values())
        if named is not None:
            named = set(named)
            workers = [ws for ws in workers if ws.address in named or ws.name in named]
        token = new_id("profile").decode()
        self.profiles[token] = {"cid": cid, "request_id": msg["request_id"],
                                "merge": msg.get("merge_workers", True),
                                "waiting": {ws.id for ws in workers}, "trees": {}}
        if not workers:
            self._answer_profile(token)
            return
        ask = {"op": "get-profile", "token": token, "start": msg.get("start"),
               "stop": msg.get("stop"), "key": msg.get("key")}
        for ws in workers:
            self.state.send_worker(ws, dict(ask))
        self.loop.call_later(float(msg.get("timeout") or 10.0), self._answer_profile,
                             token)

    def _skip_gone_profilers(self):
        """A worker that left while its profile was awaited will not answer: the
        others' trees go to the client now, not at the timeout."""
        for token, pending in list(self.profiles.items()):
            waiting = pending["waiting"]
            if not waiting.issubset(self.state.workers):
                waiting.intersection_update(self.state.workers)
                if not waiting:
                    self._answer_profile(token)

    def _answer_profile(self, token):
        pending = self.profiles.pop(token, None)
        if pending is None:
            return                     # every worker answered before the timeout
        if pending["waiting"]:
            logger.info("scheduler: %d workers did not send their profile in time",
                        len(pending["waiting"]))
        trees = pending["trees"]
        result = (profiling.merge(*trees.values()) if pending["merge"]
                  else dict(sorted(trees.items())))
        self.state.send_client(pending["cid"], {"op": "reply",
                                                "request_id": pending["request_id"],
                                                "result": result})

    FROM_CLIENTS = {
        "hello": _on_client_hello,
        "register-client": _on_register_client,
        "close-client": _on_close_client,
        "shutdown": _on_shutdown,
        "register-scheduler-plugin": _on_register_scheduler_plugin,
        "unregister-scheduler-plugin": _on_unregister_scheduler_plugin,
        "run-on-scheduler": _on_run_on_scheduler,
        "wait-for-workers": _on_wait_for_workers,
        "restart-workers": _on_restart_workers,
        "get-task-stream": _on_get_task_stream,
        "get-memory-history": _on_get_memory_history,
        "get-logs": _on_get_logs,
        "get-profile": _on_get_profile,
    }

    # ---------------------------------------------------------------- send

    def _flush(self):
        if self.profiles:
            self._skip_gone_profilers()
        out = self.state.take_messages()
        if not out:
            return
        batches = {}
        for kind, ident, msg in out:
            if kind == "relay":
                # Before any answer leaves: a client told of a stream finds the
                # relay expecting it.
                self._order_relay(ident, msg)
                continue
            batch = batches.get((kind, ident))
            if batch is None:
                batch = batches[(kind, ident)] = []
            batch.append(msg)
        for (kind, ident), msgs in batches.items():
            sock = self.worker_socket if kind == "worker" else self.client_socket
            try:
                send(sock, [ident] + self.session.dumps(msgs, to=ident))
            except Exception as e:          # the peer is gone; its state goes too
                logger.debug("scheduler: could not send to %r: %s", ident, e)

    def _order_relay(self, ticket, sizes):
        """Let a stream a worker announced through the relay, as many bytes as its
        signed message said (``sizes``), or give it up (None)."""
        if self.relay is None:
            return
        if sizes is None:
            self.relay.cancel(ticket)
            return
        try:
            self.relay.expect(ticket, bulk.stream_length(sizes))
        except (TypeError, ValueError):
            logger.warning("scheduler: a malformed stream announcement")

    # ---------------------------------------------------------------- timers

    def _check_heartbeats(self):
        self.state.check_heartbeats(time.time(), self.heartbeat_timeout)
        if self.idle_timeout is not None:
            if self.state.workers or self.state.clients:
                self._idle_since = time.monotonic()
            elif time.monotonic() - self._idle_since > (
                    self.idle_timeout if self._joined
                    else max(self.idle_timeout, FIRST_JOIN_TIMEOUT)):
                logger.info("scheduler: idle for %.0f s, closing", self.idle_timeout)
                self._shutdown()
                return
        self.loop.call_later(0.5, self._check_heartbeats)

    def _monitor_tick(self):
        tick = time.monotonic()
        self.loop_lag = max(tick - self._tick_due, 0.0)
        now = time.time()
        history = self.memory_history
        for ws in self.state.workers.values():
            m = ws.metrics
            history.add(ws.address, now, m.get("memory", 0), m.get("managed", 0),
                        m.get("spilled", 0))
        history.forget(self.state.by_address)
        self._publish_snapshot(now)
        self._tick_due = tick + MONITOR_INTERVAL
        self.loop.call_later(MONITOR_INTERVAL, self._monitor_tick)

    def _publish_snapshot(self, now):
        """A snapshot of the cluster to the clients that monitor it, and the
        dashboard."""
        monitors = self.state.monitors()
        if monitors or self.dashboard is not None:
            snap = self.state.snapshot(now)
            snap.update(op="monitor-snapshot", address=self.address_to_clients,
                        uptime=now - self.started, now=now,
                        stream=self.task_stream.recent(self._stream_shown))
            for cid in monitors:
                self.state.send_client(cid, snap)
            if self.dashboard is not None:
                self.dashboard.publish(snap, snap["stream"], self._metrics(snap))
            self.state.trim_groups()
        # A monitor sees the tasks that ended since the last snapshot, from when it
        # subscribed on.
        self._stream_shown = self.task_stream.total

    def _metrics(self, snap):
        """What /metrics tells (see dashboard.py), as plain data."""
        per_worker = {}
        for w in snap["workers"]:
            ws = self.state.by_address.get(w["address"])
            m = ws.metrics if ws is not None else {}
            per_worker[w["address"]] = {
                "managed": w.get("managed", 0), "unmanaged": w.get("unmanaged", 0),
                "spilled": w.get("spilled", 0),
                "transfer_in": m.get("transfer_in", 0),
                "transfer_out": m.get("transfer_out", 0),
                "latency": m.get("latency")}
        return {"tasks": snap["counts"], "finished": self.state.finished_total,
                "erred": self.state.erred_total, "workers": len(snap["workers"]),
                "clients": snap["nclients"], "per_worker": per_worker,
                "loop_lag": self.loop_lag, "records": self.task_stream.total}

    @property
    def dashboard_link(self):
        """The URL of the live page, token included (None without a dashboard)."""
        return None if self.dashboard is None else dashboard_url(self.dashboard.info)

    # ---------------------------------------------------------------- life

    def _shutdown(self):
        self.plugin_host.dispatch()
        self._flush()
        self.plugin_host.close()
        self.loop.running = False
        if self.relay is not None:
            self.relay.close()
        if self.dashboard is not None:
            self.dashboard.close()

    def close(self, timeout=5):
        if self.closed.is_set():
            return
        self.closed.set()
        if self.loop.running and not self.loop.in_loop():
            def bye():
                for ws in self.state.workers.values():
                    self.state.send_worker(ws, {"op": "scheduler-closing"})
                self._shutdown()
            self.loop.call_soon(bye)
        self.loop.stop(timeout)
        self.rejections.close()
        self.log_buffer.detach()
        if self.relay is not None:
            self.relay.close()
        if self.dashboard is not None:
            self.dashboard.close()
        remove_connection_file(self.connection_file)

    def wait(self, timeout=None):
        """Block until the scheduler stops (shutdown by a client or idle timeout)."""
        self.loop.stopped.wait(timeout)
        if self.loop.stopped.is_set():
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __await__(self):
        """``await Scheduler()``: it listens from the start, as dask.distributed's
        does once awaited."""
        return self._started().__await__()

    async def _started(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await asyncio.to_thread(self.close)
