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

DRAIN_LIMIT = 1000     # messages taken from one socket before looking at the others
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

    # -- from any thread

    def call_soon(self, fn, *args):
        self.calls.append((fn, args))
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
                frames = sock.recv_multipart(_NOBLOCK, copy=False)
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
        self.context.destroy(linger=0)
        self.waker.close()


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


def tune(sock):
    sock.linger = 0
    sock.sndhwm = 0
    sock.rcvhwm = 0
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)


def bind_router(context, security, host="127.0.0.1", port=0):
    """A ROUTER bound on host:port (port 0: ZeroMQ picks); returns (socket, port).

    Sending to a peer that is gone raises at once (ROUTER_MANDATORY): the shells use
    that to find which peer a disconnect event was about."""
    sock = context.socket(zmq.ROUTER)
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


def connect_dealer(context, security, identity, address, heartbeat=True):
    sock = context.socket(zmq.DEALER)
    tune(sock)
    sock.routing_id = identity
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if heartbeat:
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10_000)
    security.configure_client(sock)
    sock.connect(address)
    return sock


def new_id(prefix):
    return f"{prefix}-{os.urandom(6).hex()}".encode()
