"""ZeroMQ plumbing shared by the scheduler, worker and client shells.

Each shell owns one `IOLoop`: a thread that alone touches the shell's sockets (ZeroMQ
sockets are not thread-safe).  Other threads hand it work with `call_soon`, which
queues a callable and wakes the loop through a pipe::

    user / pool threads ──call_soon──▶ deque ──pipe byte──▶ IOLoop thread ──▶ sockets
                                                              │  poll, drain every
                                                              │  readable socket,
                                                              ▼  then flush()

Batching without timers: after the loop has drained everything readable it calls the
shell's flush hooks once, so messages produced meanwhile leave together, and a lone
message leaves at once.

Sockets facing the network are bounded: no frame over `MAX_FRAME_BYTES`
(ZMQ_MAXMSGSIZE), at most `RCVHWM` messages queued per peer, a ZeroMQ handshake done
within `HANDSHAKE_SECONDS`, and a binding socket admits only peers that hold the key
(PLAIN or CURVE, checked by the loop's ZAP handler).  Rejections are counted and
logged at most once per `REJECTION_LOG_INTERVAL` (`RejectionLog`).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections import deque

import zmq

from .log import logger
from .protocol import EPOCH_BYTES, MAX_FRAME_BYTES

DRAIN_LIMIT = 1000     # messages taken from one socket before looking at the others
RCVHWM = 1000          # messages queued per peer before ZeroMQ stops reading its connection
HANDSHAKE_SECONDS = 5.0    # a connection that has not completed ZeroMQ's handshake by
                           # then is closed (idle or slow strangers hold no descriptor)
REJECTION_LOG_INTERVAL = 10.0
FRAME_OVERHEAD = 4096      # what CURVE adds to a frame on the wire (its box and nonce)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class Waker:
    """A self-pipe: `wake()` from any thread makes the loop's poll return."""

    def __init__(self):
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.pending = False

    def fileno(self):
        return self._r

    def wake(self):
        if not self.pending:
            self.pending = True
            try:
                os.write(self._w, b"x")
            except (BlockingIOError, OSError):
                pass

    def clear(self):
        # Drain first, then re-arm: a wake() that saw `pending` set is still seen,
        # since the loop runs its queued calls after clearing.
        try:
            os.read(self._r, 4096)      # one byte per wake-up armed: one read suffices
        except (BlockingIOError, OSError):
            pass
        self.pending = False

    def close(self):
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


class IOLoop:
    def __init__(self, name):
        self.name = name
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.handlers = {}
        self.flush_hooks = []
        self.calls = deque()
        self.timers = []
        self._timer_seq = itertools.count()
        self.waker = Waker()
        self.poller.register(self.waker.fileno(), zmq.POLLIN)
        self.thread = None
        self.running = False
        self.stopped = threading.Event()
        self.zap = None
        self.refused = None                  # RejectionLog of refused handshakes

    # -- set-up (before start, or from the loop thread)

    def add_socket(self, sock, handler):
        self.handlers[sock] = handler
        self.poller.register(sock, zmq.POLLIN)

    def remove_socket(self, sock):
        self.handlers.pop(sock, None)
        try:
            self.poller.unregister(sock)
        except KeyError:
            pass

    def add_flush(self, fn):
        self.flush_hooks.append(fn)

    def serve_zap(self, security, who):
        """Answer ZeroMQ's authentication requests for the sockets this loop binds
        (ZAP is per context; call before binding, from the set-up thread)."""
        if self.zap is None:
            self.refused = RejectionLog(self, f"{who}: refused a connection",
                                        "connections")
            self.zap = ZapHandler(self, security)

    # -- from any thread

    def call_soon(self, fn, *args):
        self.calls.append((fn, args))
        self.waker.wake()

    def wake(self):
        """Make the loop go round, and so flush, once more (a burst of wake-ups from
        other threads costs one)."""
        self.waker.wake()

    def in_loop(self):
        return threading.current_thread() is self.thread

    def call_later(self, delay, fn, *args):
        """Run ``fn`` on the loop after ``delay`` seconds (loop thread only)."""
        entry = [time.monotonic() + delay, next(self._timer_seq), fn, args, True]
        heapq.heappush(self.timers, entry)
        return entry

    @staticmethod
    def cancel_timer(entry):
        if entry is not None:
            entry[4] = False

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def stop(self, timeout=5):
        if self.thread is None:
            self._close()
            return
        if self.running:
            self.call_soon(self._halt)
        if not self.in_loop():
            self.thread.join(timeout)

    def _halt(self):
        self.running = False

    # -- the loop

    def _run(self):
        try:
            # Set-up code may have queued messages before start (a worker's
            # registration): send them now, not after the first poll times out.
            self._flush()
            while self.running:
                timeout = None
                if self.calls:
                    timeout = 0
                elif self.timers:
                    timeout = max(0, (self.timers[0][0] - time.monotonic()) * 1000)
                events = self.poller.poll(timeout)
                for sock, _ in events:
                    if sock == self.waker.fileno():
                        self.waker.clear()
                        continue
                    self._drain(sock)
                self._run_calls()
                self._run_timers()
                self._flush()
        except Exception:
            logger.exception("%s: I/O loop crashed", self.name)
        finally:
            self.running = False
            self._close()
            self.stopped.set()

    def _drain(self, sock):
        handler = self.handlers.get(sock)
        if handler is None:
            return
        for i in range(DRAIN_LIMIT):
            try:
                # The poll said the first is there; for the next ones, asking is
                # cheaper than a receive that raises zmq.Again.
                if i and not sock.getsockopt(_EVENTS) & _POLLIN:
                    return
                frames = recv_frames(sock)
            except zmq.ZMQError as e:
                if e.errno != zmq.EAGAIN:
                    logger.debug("%s: receive failed: %s", self.name, e)
                return
            try:
                handler(frames)
            except Exception:
                logger.exception("%s: error while handling a message", self.name)
            if sock not in self.handlers:
                return

    def _run_calls(self):
        for _ in range(len(self.calls)):
            fn, args = self.calls.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("%s: error in %r", self.name, fn)

    def _run_timers(self):
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, fn, args, live = heapq.heappop(self.timers)
            if live:
                try:
                    fn(*args)
                except Exception:
                    logger.exception("%s: error in timer %r", self.name, fn)

    def _flush(self):
        for fn in self.flush_hooks:
            try:
                fn()
            except Exception:
                logger.exception("%s: error while sending", self.name)

    def _close(self):
        for sock in list(self.handlers):
            self.remove_socket(sock)
        if self.zap is not None:
            self.zap.close()
        if self.refused is not None:
            self.refused.close()
        self.context.destroy(linger=0)
        self.waker.close()


class ZapHandler:
    """ZeroMQ's authentication requests (ZAP) for a loop's context, answered on a
    thread of their own, so that a loop busy for a while (a huge graph) does not make
    handshakes time out.  A request is a few hundred bytes; refusals are counted on
    the loop (`IOLoop.refused`)."""

    def __init__(self, loop, security):
        self.loop = loop
        self.security = security
        context = loop.context
        self.rep = context.socket(zmq.REP)
        self.rep.linger = 0
        self.rep.bind(ZAP_ENDPOINT)
        stop = f"inproc://dask-ipy-zap-stop-{id(self)}"
        self._stop_r = context.socket(zmq.PAIR)
        self._stop_r.bind(stop)
        self._stop_w = context.socket(zmq.PAIR)
        self._stop_w.linger = 0
        self._stop_w.connect(stop)
        self.thread = threading.Thread(target=self._run, daemon=True, name="dask-ipy-zap")
        self.thread.start()

    def _run(self):
        poller = zmq.Poller()
        poller.register(self.rep, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        try:
            while True:
                if self._stop_r in dict(poller.poll()):
                    return
                request = self.rep.recv_multipart()
                allowed, reason = self.security.zap_verdict(request)
                rid = request[1] if len(request) > 1 else b""
                self.rep.send_multipart([b"1.0", rid, b"200" if allowed else b"400",
                                         reason.encode(), b"", b""])
                if not allowed:
                    address = (request[3].decode("utf-8", "replace")
                               if len(request) > 3 else "?")
                    self.loop.call_soon(self.loop.refused, address, reason)
        except zmq.ZMQError as e:
            logger.debug("ZAP handler stopped: %s", e)
        finally:
            self.rep.close(linger=0)
            self._stop_r.close(linger=0)

    def close(self):
        """Stop the thread (from the thread that owns the loop's sockets)."""
        if self._stop_w.closed:
            return
        try:
            self._stop_w.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.thread.join(5)
        self._stop_w.close(linger=0)


# ---------------------------------------------------------------- sockets

COPY_THRESHOLD = 65536


def send(sock, frames):
    """Send a multipart message: small frames are copied (cheaper than tracking them),
    large ones go zero-copy.

    Never blocks the I/O thread: when a DEALER has no peer to queue for (its
    handshakes fail, or the peer went away for good) this raises zmq.Again, and the
    caller drops the message instead of hanging there."""
    copy = True
    for f in frames:
        if (f.nbytes if isinstance(f, memoryview) else len(f)) >= COPY_THRESHOLD:
            copy = False
            break
    # Frame by frame with plain int flags: send_multipart's checks and flag enums
    # cost more than the sends of a small message.
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, _NOBLOCK_MORE if i < last else _NOBLOCK, copy=copy)


def recv_frames(sock):
    """The frames of one message, zero-copy, without waiting.  Each frame says
    itself whether more follow: recv_multipart asks the socket after each one,
    through an option lookup that costs more than the receive of a small frame."""
    frame = sock.recv(_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def tune(sock):
    sock.linger = 0
    sock.sndhwm = 0
    sock.rcvhwm = RCVHWM
    sock.maxmsgsize = MAX_FRAME_BYTES + FRAME_OVERHEAD
    sock.handshake_ivl = int(HANDSHAKE_SECONDS * 1000)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)


def bind_router(loop, security, host="127.0.0.1", port=0, who="dask-ipy"):
    """A ROUTER of ``loop`` bound on host:port (port 0: ZeroMQ picks); returns
    (socket, port).  Only peers holding the key complete a connection.

    Sending to a peer that is gone raises at once (ROUTER_MANDATORY): the shells use
    that to find which peer a disconnect event was about."""
    if not security.encrypt:
        loop.serve_zap(security, who)
    sock = loop.context.socket(zmq.ROUTER)
    tune(sock)
    sock.router_mandatory = 1
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10_000)
    security.configure_server(sock)
    bind_host = "0.0.0.0" if host in ("", "*", "0.0.0.0") else host
    if port:
        sock.bind(f"tcp://{bind_host}:{port}")
    else:
        port = sock.bind_to_random_port(f"tcp://{bind_host}")
    return sock, port


def connect_dealer(context, security, identity, address, heartbeat=True, events=0,
                   heartbeat_timeout=10_000):
    """A DEALER connected to ``address``.  With ``events``, its monitor socket
    (``sock.get_monitor_socket()``) exists before the connection starts, so the first
    handshake is not missed.  ``heartbeat_timeout``: milliseconds without a word from
    the other side (pings are sent every second) before the connection is dropped."""
    sock = context.socket(zmq.DEALER)
    tune(sock)
    if events:
        sock.get_monitor_socket(events)
    sock.routing_id = identity
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if heartbeat:
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_timeout)
    security.configure_client(sock)
    sock.connect(address)
    return sock


class RejectionLog:
    """Counts what an endpoint refuses and logs it without flooding: each one at
    DEBUG, and at WARNING the first one, then at most one line per `interval` seconds
    with the count since the last line (a timer of `loop` writes the last count of a
    burst).  Call from the loop's thread."""

    def __init__(self, loop, what, things="messages", interval=None):
        self.loop = loop
        self.what = what
        self.things = things
        self.interval = REJECTION_LOG_INTERVAL if interval is None else interval
        self.total = 0
        self.pending = 0              # counted, not yet in a WARNING line
        self.last = None              # (peer, reason) of the latest
        self.quiet_until = float("-inf")
        self.timer = None

    def __call__(self, peer, reason):
        self.total += 1
        self.last = (peer, reason)
        logger.debug("%s from %r: %s", self.what, peer, reason)
        now = time.monotonic()
        if now >= self.quiet_until:
            logger.warning("%s from %r: %s", self.what, peer, reason)
            self.quiet_until = now + self.interval
            return
        self.pending += 1
        if self.timer is None and self.loop is not None:
            self.timer = self.loop.call_later(self.quiet_until - now, self._report)

    def _report(self):
        self.timer = None
        if self.pending:
            peer, reason = self.last
            logger.warning("%s: %d more %s in %.0f s, the latest from %r: %s",
                           self.what, self.pending, self.things, self.interval, peer,
                           reason)
            self.pending = 0
            self.quiet_until = time.monotonic() + self.interval

    def close(self):
        """Write what is still counted (the loop is stopping)."""
        if self.timer is not None:
            IOLoop.cancel_timer(self.timer)
            self.timer = None
        self._report()


class Handshake:
    """The peer side of the handshake that binds a connection to one start of its
    scheduler (see protocol.py): `hello` after each ZeroMQ handshake, then `answer`
    with each "hello-reply"; only the reply to the latest hello counts."""

    def __init__(self):
        self.nonce = None

    def hello(self, session):
        self.nonce = os.urandom(16)
        return session.dumps([{"op": "hello", "nonce": self.nonce}], b"", handshake=True)

    def answer(self, msg):
        """(epoch, scheduler identity) from a reply to our latest hello, else None."""
        if self.nonce is None or msg.get("nonce") != self.nonce:
            return None
        self.nonce = None
        epoch, ident = msg.get("epoch"), msg.get("id")
        if (type(epoch) is not bytes or len(epoch) != EPOCH_BYTES
                or type(ident) is not bytes or not ident):
            return None
        return epoch, ident


def hello_reply(session, msg, scheduler_id):
    """The scheduler's answer to a "hello": its epoch, echoing the nonce.  None for a
    hello without a proper nonce."""
    nonce = msg.get("nonce")
    if type(nonce) is not bytes or len(nonce) != 16:
        return None
    return {"op": "hello-reply", "nonce": nonce, "epoch": session.epoch, "id": scheduler_id}


def new_id(prefix):
    return f"{prefix}-{os.urandom(6).hex()}".encode()
