"""The worker shell: sockets, a thread pool and a `WorkerState`.

    scheduler ◀──DEALER── IOLoop thread ──ROUTER──▶ peers fetching our data
                               │  ▲      ──DEALER──▶ peers holding our inputs
                        Execute│  │call_soon(result)
                               ▼  │
                        nthreads pool threads: deserialize the task, run it

The loop thread owns the sockets and the state machine; pool threads only run user
code and hand results back.  Inputs fetched from peers arrive zero-copy.
"""

from __future__ import annotations

import copy
import os
import queue
import socket
import threading
import time
import traceback as tb_module

import psutil
import zmq
from dask.sizeof import sizeof

from .. import bulk
from ..comm import IOLoop, send, bind_router, connect_dealer, logger, new_id
from ..graph import execute
from ..protocol import (MAX_MESSAGE_BYTES, ProtocolError, Session,
                        deserialize, serialize)
from ..security import Security, find_security, read_connection_file
from .state import RELAY, Execute, GatherDep, Send, WorkerState

MAX_ERROR_TEXT = 10_000
SEND_MARGIN = 65_536       # bytes kept for the envelope of a message of results
INLINE_RESULT = 16_384     # bytes


def resolve_scheduler(address, security, which):
    """An address or connection file, plus the key: explicit, from the file, or found
    in this user's runtime directory for schedulers on this machine."""
    if address is None:
        address = os.environ.get("DASK_IPY_SCHEDULER_FILE")
        if address is None:
            raise ValueError("no scheduler address or connection file given")
    if os.path.isfile(str(address)):
        info, file_security = read_connection_file(address)
        return info[which], security or file_security
    if security is None:
        security = find_security(address)
        if security is None:
            raise ValueError(
                f"no key known for {address}: pass security= or the scheduler's "
                "connection file (written next to the scheduler, owner-only)")
    return address, security


def local_ip_towards(address):
    """The IP of this machine on the route to ``address`` (no packet is sent)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_frames(tb):
    """`tb` without its leading frames of this package (the pool thread, the graph
    executor): a user sees their own code first.  All of it if nothing else is left."""
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        first = first.tb_next
    return first if first is not None else tb


def error_payload(exc, tb):
    """A task's exception for the wire: the pickled exception when it pickles, the
    traceback as data (tblib), and text for humans and for the scheduler."""
    import tblib

    tb = user_frames(tb)
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > MAX_ERROR_TEXT:
        text = text[:MAX_ERROR_TEXT] + "... (truncated)"
    tb_text = "".join(tb_module.format_exception(type(exc), exc, tb))
    if len(tb_text) > MAX_ERROR_TEXT:
        tb_text = "... (truncated)\n" + tb_text[-MAX_ERROR_TEXT:]
    try:
        exception = serialize(exc)
        if exception.nbytes > 10 * MAX_ERROR_TEXT:
            exception = _shortened(exc)
    except Exception:
        exception = None
    try:
        traceback = serialize(tblib.Traceback(tb).as_dict()) if tb is not None else None
    except Exception:
        traceback = None
    return {"type": type(exc).__name__, "text": text, "exception": exception,
            "traceback": traceback, "traceback_text": tb_text}


def _shortened(exc):
    """The exception with its message cut to MAX_ERROR_TEXT, for one too big to send
    whole: the client still raises the original type.  None if that fails."""
    try:
        short = copy.copy(exc)
        short.args = (str(exc)[:MAX_ERROR_TEXT] + "... (truncated)",)
        blob = serialize(short)
    except Exception:
        return None
    return blob if blob.nbytes <= 10 * MAX_ERROR_TEXT else None


def inline(value, nbytes, job):
    """A small result a client waits for travels with "task-finished", saving the
    scheduler a request to this worker when the client gathers it."""
    if not job.want_data or nbytes > INLINE_RESULT:
        return None
    try:
        blob = serialize(value)
    except Exception:
        return None                  # reported when gathered, with the key named
    return blob if len(blob.frames) == 1 and blob.nbytes <= INLINE_RESULT else None


def typename(value):
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


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
    bound (a port forward, a NAT).
    """

    def __init__(self, scheduler=None, hostname=None, port_to_workers=0, data=None, *,
                 nthreads=1, security=None, name=None, heartbeat_interval=0.5,
                 connect_timeout=5.0, gather_timeout=30.0, unreachable_retry=30.0,
                 contact_address=None, validate=False,
                 max_message_bytes=MAX_MESSAGE_BYTES):
        self.max_message_bytes = max_message_bytes  # cap on what this worker receives
        self.scheduler_address, self.security = resolve_scheduler(
            scheduler, security, "address_to_workers")
        self.security = self.security or Security.temporary()
        self.nthreads = nthreads
        self.max_send_bytes = MAX_MESSAGE_BYTES    # the scheduler's cap, from "welcome"
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout = connect_timeout
        self.gather_timeout = gather_timeout
        self.unreachable_retry = unreachable_retry
        self.loop = IOLoop("dask-ipy-worker")
        if hostname is None:
            hostname = local_ip_towards(self.scheduler_address)
        self.peer_socket, port = bind_router(self.loop.context, self.security, hostname,
                                             port_to_workers)
        self.address = contact_address or f"tcp://{hostname}:{port}"
        # Large data for peers leaves through a plain TCP side channel (see bulk.py),
        # unless the cluster encrypts: then it stays on the CURVE sockets.
        self.bulk = None if self.security.encrypt else bulk.BulkServer(
            "0.0.0.0" if hostname in ("", "*", "0.0.0.0") else hostname,
            ttl=gather_timeout)
        self.no_bulk = set()                   # peers whose side channel failed us
        self.name = name if name is not None else self.address
        self.data = data if data is not None else {}
        self.state = WorkerState(self.address, nthreads, self.data, validate)
        self.process = psutil.Process()
        self.outgoing = []                     # messages for the scheduler
        self.peers = {}                        # {address: DEALER socket}
        self.connecting = {}                   # {address: (monitor socket, timer)}
        self.gather_timers = {}                # {address or RELAY: (id, timer, keys)}
        self.jobs = queue.SimpleQueue()
        self.threads = []
        self.closed = threading.Event()
        self.loop.add_socket(self.peer_socket, self._on_peer_request)
        self.loop.add_flush(self._flush)
        self._connect()
        for i in range(nthreads):
            t = threading.Thread(target=self._pool_thread, daemon=True,
                                 name=f"dask-ipy-worker-task-{i}")
            t.start()
            self.threads.append(t)
        self.loop.call_later(heartbeat_interval, self._heartbeat)
        self.loop.start()

    def __repr__(self):
        return f"<Worker {self.address} nthreads={self.nthreads} keys={len(self.data)}>"

    # ---------------------------------------------------------------- scheduler link

    def _connect(self):
        """(Re)register with the scheduler under a fresh identity."""
        self.id = new_id("worker")
        self.session = Session(self.security.key, self.id,
                               max_message_bytes=self.max_message_bytes)
        self.scheduler_socket = connect_dealer(self.loop.context, self.security, self.id,
                                               self.scheduler_address)
        self.loop.add_socket(self.scheduler_socket, self._on_scheduler_frames)
        self.outgoing.append({
            "op": "register-worker", "address": self.address, "nthreads": self.nthreads,
            "name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
            "memory_limit": psutil.virtual_memory().total})

    def _reconnect(self):
        logger.warning("worker %s: the scheduler does not know us; registering again",
                       self.address)
        self.loop.remove_socket(self.scheduler_socket)
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
            logger.warning("worker %s: rejected a message: %s", self.address, e)
            return
        for msg in msgs:
            op = msg.pop("op")
            if op == "worker-removed":
                self._drop_peer(msg["address"])
                self._handle(op, **msg)
            elif op in ("compute-task", "free-keys", "who-has", "restart", "go",
                        "steal-request"):
                self._handle(op, **msg)
            elif op == "relay-data":
                self._gather_done(RELAY, msg)
            elif op == "put-data":
                self._put_data(msg["data"])
            elif op == "welcome":
                self.max_send_bytes = msg.get("max_message_bytes", self.max_send_bytes)
            elif op == "send-data":
                self._send_data(msg["keys"], msg["request_id"], msg.get("max_bytes"))
            elif op == "run":
                self._run_function(msg["function"], msg["request_id"])
            elif op == "unknown-worker":
                self._reconnect()
                return
            elif op in ("close", "scheduler-closing"):
                # Shut down with the cluster: nothing is left behind.
                self.loop.call_soon(self._close_from_loop)
                return
            elif op != "ping":          # pings only test that this worker is reachable
                logger.debug("worker %s: ignored a message %r", self.address, op)

    def _handle(self, op, **kw):
        runs = []
        announced = False
        for inst in self.state.handle(op, **kw):
            if isinstance(inst, Send):
                self.outgoing.append(inst.msg)
                announced = announced or inst.msg["op"] == "task-started"
            elif isinstance(inst, Execute):
                runs.append(inst)
            elif isinstance(inst, GatherDep):
                self._gather(inst.peer, inst.keys)
        if runs:
            if announced:
                # "task-started" leaves before the task runs: if it kills this
                # process, the scheduler blames the right task.  (Tiny tasks are
                # not announced, and their results keep travelling in batches.)
                self._flush()
            for inst in runs:
                self.jobs.put(inst)

    def _flush(self):
        if self.outgoing:
            msgs, self.outgoing = self.outgoing, []
            try:
                send(self.scheduler_socket, self.session.dumps(msgs))
            except Exception as e:
                logger.warning("worker %s: could not reach the scheduler: %s",
                               self.address, e)

    def _heartbeat(self):
        try:
            mem = self.process.memory_info().rss
            cpu = self.process.cpu_percent()
        except psutil.Error:
            mem = cpu = 0
        self.outgoing.append({"op": "heartbeat", "metrics": {
            "memory": mem, "cpu": cpu, "executing": len(self.state.executing),
            "ready": len(self.state.ready), "keys": len(self.data)}})
        self.loop.call_later(self.heartbeat_interval, self._heartbeat)

    # ---------------------------------------------------------------- running tasks

    def _pool_thread(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            start = time.time()
            try:
                node = deserialize(job.run_spec)
                value = execute(node, job.inputs)
                nbytes = sizeof(value)
                result = ("execute-success", {"key": job.key, "value": value,
                                              "nbytes": nbytes, "type": typename(value),
                                              "start": start, "stop": time.time(),
                                              "data": inline(value, nbytes, job),
                                              "ran": node})
            except BaseException as e:  # a task may raise anything, SystemExit too
                result = ("execute-failure", {"key": job.key,
                                              "error": error_payload(e, e.__traceback__),
                                              "start": start, "stop": time.time()})
                del e
            # Nothing of this task outlives it on this thread: the result and the
            # task live in the store, for as long as the scheduler wants them.
            job = node = value = None
            if self.closed.is_set():
                continue
            self.loop.call_soon(self._task_done, result)

    def _task_done(self, result):
        op, kw = result
        self._handle(op, **kw)

    def _run_function(self, function, request_id):
        """`Client.run`: an arbitrary function, on its own thread, result sent back."""
        def target():
            try:
                fn, args, kwargs = deserialize(function)
                value = fn(*args, **kwargs)
                reply = {"status": "OK", "result": serialize(value)}
            except BaseException as e:
                reply = {"status": "error", **error_payload(e, e.__traceback__)}
            reply.update(op="run-result", request_id=request_id)
            self.loop.call_soon(self.outgoing.append, reply)
        threading.Thread(target=target, daemon=True, name="dask-ipy-run").start()

    # ---------------------------------------------------------------- data

    def _put_data(self, data):
        values, sizes = {}, {}
        for key, blob in data.items():
            value = deserialize(blob)
            values[key] = value
            sizes[key] = (sizeof(value), typename(value))
        self._handle("put-data", data=values, sizes=sizes)

    def _serialize_data(self, keys):
        found, missing = self.state.get_data(keys)
        data, errors = {}, {}
        for key, value in found.items():
            try:
                data[key] = serialize(value)
            except Exception as e:
                errors[key] = {"type": type(e).__name__,
                               "text": f"result of {key!r} could not be serialized: {e}"}
        return data, missing, errors

    def _send_data(self, keys, request_id, max_bytes=None):
        """Values for the scheduler: a client's gather, or a relay to a worker that
        cannot reach this one (``max_bytes``: the relay's cap)."""
        data, missing, errors = self._serialize_data(keys)
        # The reply must fit under the scheduler's cap, or the scheduler drops it and
        # the client waits forever: what does not fit is an error naming the key.
        limit = self.max_send_bytes - SEND_MARGIN
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

    def _on_peer_request(self, frames):
        peer = frames[0].bytes
        try:
            msgs = self.session.loads(frames[1:], sender=peer)
        except ProtocolError as e:
            logger.warning("worker %s: rejected a peer message: %s", self.address, e)
            return
        for msg in msgs:
            if msg.get("op") != "get-data":
                continue
            data, missing, errors = self._serialize_data(msg["keys"])
            missing = list(missing) + list(errors)
            reply = {"op": "data", "request_id": msg["request_id"], "data": data,
                     "missing": missing}
            header, payload = self.session.encode([reply], to=peer)
            if (msg.get("bulk") and self.bulk is not None
                    and sum(memoryview(f).nbytes for f in payload) >= bulk.BULK_FROM):
                ticket = self.bulk.offer(self.session, header, payload)
                frames = self.session.dumps([{
                    "op": "data-bulk", "request_id": msg["request_id"],
                    "ticket": ticket, "port": self.bulk.port}], to=peer)
            else:
                frames = [self.session.seal(header, payload), header, *payload]
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
        if peer == RELAY:
            msg["op"] = "relay"
            self.outgoing.append(msg)
            return
        sock = self.peers.get(peer) or self._connect_peer(peer)
        msg["bulk"] = self.bulk is not None and peer not in self.no_bulk
        try:
            send(sock, self.session.dumps([msg]))
        except Exception as e:            # no way to the peer: fail the fetch now
            logger.warning("worker %s: could not ask %s for data: %s", self.address,
                           peer, e)
            self.loop.call_soon(self._gather_timed_out, peer, request_id)

    def _connect_peer(self, peer):
        """A connection to ``peer``, watched: if its handshake has not succeeded after
        ``connect_timeout`` seconds (no route, a firewall, a wrong address, a
        one-way link), the peer is unreachable."""
        sock = connect_dealer(self.loop.context, self.security, self.id, peer)
        self.peers[peer] = sock
        self.loop.add_socket(sock, lambda frames: self._on_peer_reply(peer, frames))
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.loop.add_socket(monitor, lambda frames: self._connected(peer))
        self.connecting[peer] = (monitor, self.loop.call_later(
            self.connect_timeout, self._connect_timed_out, peer))
        return sock

    def _connected(self, peer):
        self._stop_watching(peer)
        if peer in self.state.unreachable:
            logger.info("worker %s: %s is reachable again", self.address, peer)
            self._handle("peer-reachable", peer=peer)

    def _stop_watching(self, peer):
        monitor, timer = self.connecting.pop(peer, (None, None))
        if monitor is None:
            return
        IOLoop.cancel_timer(timer)
        self.loop.remove_socket(monitor)
        sock = self.peers.get(peer)
        if sock is not None:
            sock.disable_monitor()
        monitor.close(linger=0)

    def _connect_timed_out(self, peer):
        if peer not in self.connecting:
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
            logger.warning("worker %s: rejected a reply from %s: %s", self.address, peer, e)
            return
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
        self._handle("gather-done", peer=peer, data=values, sizes=sizes,
                     missing=missing, errors=msg.get("errors"))

    def _fetch_bulk(self, peer, offer):
        """On a thread of its own: download a "data" message over the side channel and
        hand it to the loop.  Its MAC is checked here; its freshness by the request id,
        which must be the one the loop is waiting for (checked again there)."""
        host = peer.split("://", 1)[-1].rsplit(":", 1)[0]
        try:
            frames, tags = bulk.fetch(self.session, host, offer["port"], offer["ticket"],
                                      self.gather_timeout, self.max_message_bytes,
                                      connect_timeout=self.connect_timeout)
            msgs = self.session.loads(frames, check_replay=False, tags=tags)
            if (len(msgs) != 1 or msgs[0].get("op") != "data"
                    or msgs[0].get("request_id") != offer["request_id"]):
                raise ProtocolError("not the data asked for")
        except (OSError, ProtocolError) as e:
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

    # ---------------------------------------------------------------- life

    def _close_from_loop(self):
        self.outgoing.append({"op": "unregister"})
        self._flush()
        if self.bulk is not None:
            self.bulk.close()
        self.loop.running = False
        self.closed.set()
        for _ in self.threads:
            self.jobs.put(None)

    def close(self, timeout=5):
        if self.loop.running and not self.loop.in_loop():
            self.loop.call_soon(self._close_from_loop)
        self.loop.stop(timeout)
        if self.bulk is not None:
            self.bulk.close()
        self.closed.set()
        for _ in self.threads:
            self.jobs.put(None)

    def wait(self, timeout=None):
        self.loop.stopped.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
