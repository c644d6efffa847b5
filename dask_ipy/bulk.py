"""Side channels for large data: plain TCP connections, one per transfer.

ZeroMQ carries a 100 MB message over loopback at about 1 GB/s on a small VM, where a
plain socket receiving straight into its destination buffer reaches 2-3 GB/s.  Two
side channels use that:

Between workers (`BulkServer`, on every worker).  A worker asked for data that comes
to `BULK_FROM` bytes or more answers on ZeroMQ with a ticket and streams the message
itself over TCP::

    B ──get-data, bulk ok──────────────▶ A           (ZeroMQ, signed)
    B ◀──data-bulk: ticket, port, sizes── A           (ZeroMQ, signed, small)
    B ──connect to port, ticket───────▶ A's BulkServer
    B ◀──frame sizes, then the frames── A           (the signed "data" message)

Through the scheduler (`BulkRelay`, on the scheduler), for values a client gathers:
the worker streams its signed message for the client into the scheduler's relay port,
the client downloads it from there, and the relay passes the bytes along without
keeping them (workers and clients can always reach the scheduler; it reaches nobody)::

    W ──data: streams [ticket, sizes]──▶ S ──gather-result: streams──▶ C   (ZeroMQ)
    W ──connect, "U" + ticket, stream──▶ S's BulkRelay ◀──"D" + ticket── C
                                            └──── the same bytes ────▶ C

The same way, a worker's values go to a worker that cannot reach it ("relay-data"
names the streams), and a client's large scattered values to their workers (the
client uploads, "put-data" names the streams).

Trust comes from the message, not from the channel: the frames are exactly what the
sender would have sent over ZeroMQ, a Session message signed for the receiver, which
checks it (MAC over every byte) before using anything; replays are refused because the
receiver accepts one message carrying the random id it is waiting for, once.  The
sizes of the stream come in the signed ZeroMQ message, and the receiver allocates
nothing beyond them.  A ticket is random, used once and expires; presenting it only
selects which bytes flow, which anyone on the path can read from the unencrypted stream
anyway.  With encryption on (CURVE) neither channel is used: data stays on the
encrypted sockets.

Both listeners are bounded: one thread accepts and reads tickets (a selector), a
connection that has not presented a valid ticket within `TICKET_SECONDS` is closed, at
most `MAX_PENDING` connections wait for their ticket at once (more are closed at
once), and at most `MAX_ACTIVE` transfers run at a time, each on a pool thread.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .log import logger
from .protocol import POLY1305_FROM, ProtocolError, writable_buffer

#: Replies of this many bytes or more take a side channel.
BULK_FROM = 4 << 20
TICKET_BYTES = 16
MAX_FRAMES = 1 << 16
CHUNK = 1 << 20          # bytes sent between updates of a frame's tag
MAC_BYTES = 32
IO_TIMEOUT = 60.0        # seconds a transfer may stall
TICKET_SECONDS = 1.0     # to present a valid ticket after connecting
REGISTER_SECONDS = 5.0   # for the relay to hear of an uploader's ticket
MAX_PENDING = 128        # connections waiting for their ticket (or their partner)
MAX_ACTIVE = 8           # transfers streaming at once
UPLOAD, DOWNLOAD = b"U", b"D"
_COUNT = struct.Struct("<I")


def stream_sizes(header, payload) -> list:
    """The frame sizes a receiver is told to expect: [header, payload frames...]."""
    return [memoryview(header).nbytes] + [memoryview(f).nbytes for f in payload]


def stream_length(sizes) -> int:
    """Bytes on the wire of a stream of frames of `sizes` (count, sizes, frames, MAC)."""
    return _COUNT.size + 8 * len(sizes) + sum(sizes) + MAC_BYTES


class Pool:
    """At most `size` threads run queued calls; a thread ends when the queue is empty."""

    def __init__(self, name, size=MAX_ACTIVE):
        self.name = name
        self.size = size
        self.queue = collections.deque()
        self.lock = threading.Lock()
        self.running = 0
        self.sockets = set()          # of the transfers in progress (`holding`)

    @contextlib.contextmanager
    def holding(self, sock):
        """Count `sock` among the transfers `stop` ends."""
        with self.lock:
            self.sockets.add(sock)
        try:
            yield sock
        finally:
            with self.lock:
                self.sockets.discard(sock)

    def stop(self):
        """End the transfers in progress now, and drop those not started."""
        with self.lock:
            self.queue.clear()
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def submit(self, fn, *args):
        with self.lock:
            self.queue.append((fn, args))
            if self.running >= self.size:
                return
            self.running += 1
        threading.Thread(target=self._run, daemon=True, name=self.name).start()

    def _run(self):
        while True:
            with self.lock:
                if not self.queue:
                    self.running -= 1
                    return
                fn, args = self.queue.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("%s: transfer failed", self.name)


class _Desk:
    """Accepts connections on one thread and reads a fixed-size preamble from each
    within `TICKET_SECONDS`.  `_admit(conn, preamble, accepted)` (on that thread)
    decides what becomes of a connection: it hands it to the pool, or closes it, and
    returns None; or returns a deadline until which the connection waits (without
    being read) for `_admit` to be asked again, after each `wake`."""

    preamble_size = TICKET_BYTES

    def __init__(self, host, name):
        self.name = name
        self.sock = socket.create_server((host, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.pool = Pool(name + "-send")
        self.lock = threading.Lock()
        self.closed = False
        self.refused = 0                 # connections closed without a transfer
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._reading = {}               # {conn: (accepted, bytearray)}
        self._waiting = {}               # {conn: (deadline, preamble, accepted)}
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def wake(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _run(self):
        try:
            while not self.closed:
                deadlines = [a + TICKET_SECONDS for a, _ in self._reading.values()]
                deadlines += [d for d, _, _ in self._waiting.values()]
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                woken = False
                for key, _ in self._selector.select(timeout):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        woken = True
                        try:
                            os.read(self._wake_r, 4096)
                        except OSError:
                            pass
                    else:
                        self._read(key.fileobj)
                self._expire(woken)
        except Exception:
            if not self.closed:
                logger.exception("%s: listener failed", self.name)
        finally:
            for conn in list(self._reading) + list(self._waiting):
                self._drop(conn)

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._reading) + len(self._waiting) >= MAX_PENDING:
                self.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            self._reading[conn] = (time.monotonic(), bytearray())
            self._selector.register(conn, selectors.EVENT_READ, "conn")

    def _read(self, conn):
        accepted, got = self._reading[conn]
        try:
            data = conn.recv(self.preamble_size - len(got))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        got += data
        if len(got) < self.preamble_size:
            return
        self._selector.unregister(conn)
        del self._reading[conn]
        self._consider(conn, bytes(got), accepted)

    def _consider(self, conn, preamble, accepted):
        wait = self._admit(conn, preamble, accepted)
        if wait is None:
            return
        if time.monotonic() >= wait:
            self._drop(conn)
            return
        self._waiting[conn] = (wait, preamble, accepted)

    def _expire(self, woken):
        """Close connections past their deadline; after a wake-up, ask again about
        every waiting one."""
        now = time.monotonic()
        for conn, (accepted, _) in list(self._reading.items()):
            if now >= accepted + TICKET_SECONDS:
                self._drop(conn)
        for conn in list(self._waiting):
            entry = self._waiting.pop(conn, None)   # a partner may have taken it
            if entry is None:
                continue
            deadline, preamble, accepted = entry
            if woken:
                self._consider(conn, preamble, accepted)
            elif now >= deadline:
                self._drop(conn)
            else:
                self._waiting[conn] = entry

    def _drop(self, conn):
        self.refused += 1
        if self._reading.pop(conn, None) is not None:
            try:
                self._selector.unregister(conn)
            except (KeyError, ValueError):
                pass
        self._waiting.pop(conn, None)
        conn.close()

    def _refuse(self, conn):
        self.refused += 1
        conn.close()
        return None

    def _hand_over(self, fn, *args, conns=()):
        """Run ``fn(*args)`` on the pool; ``conns`` are closed after it, and shut down
        at once if the listener closes first."""
        def run():
            with contextlib.ExitStack() as stack:
                for conn in conns:
                    stack.enter_context(conn)
                    stack.enter_context(self.pool.holding(conn))
                fn(*args)
        self.pool.submit(run)

    def _admit(self, conn, preamble, accepted):
        raise NotImplementedError

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self.wake()
        self._thread.join(5)
        self.pool.stop()                 # transfers in progress end now
        try:
            self.sock.close()
        finally:
            self._selector.close()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass


class BulkServer(_Desk):
    """Listens on ``host``; `offer` returns a ticket for one download of a message.
    Unclaimed offers are dropped after ``ttl`` seconds."""

    def __init__(self, host, ttl=60.0):
        self.ttl = ttl
        self._offers = {}            # {ticket: (session, header, payload, deadline)}
        self.sent = 0                # payload bytes streamed so far
        super().__init__(host, "dask-ipy-bulk")

    def offer(self, session, header, payload) -> bytes:
        """A ticket for the message `session.encode` made as (header, payload); it is
        sealed (signed) while it streams."""
        ticket = os.urandom(TICKET_BYTES)
        now = time.monotonic()
        with self.lock:
            for t in [t for t, offer in self._offers.items() if offer[3] < now]:
                del self._offers[t]
            self._offers[ticket] = (session, header, payload, now + self.ttl)
        return ticket

    def _admit(self, conn, ticket, accepted):
        with self.lock:
            offer = self._offers.pop(ticket, None)
        if offer is None or offer[3] < time.monotonic():
            return self._refuse(conn)
        self._hand_over(self._serve, conn, offer, conns=(conn,))
        return None

    def _serve(self, conn, offer):
        try:
            conn.setblocking(True)
            conn.settimeout(IO_TIMEOUT)
            session, header, payload, _ = offer
            sent = send_stream(conn, session, header, payload)
            with self.lock:
                self.sent += sent
        except (OSError, ValueError) as e:
            logger.debug("bulk: transfer to a peer failed: %s", e)

    def close(self):
        with self.lock:
            self._offers.clear()
        super().close()


class BulkRelay(_Desk):
    """The scheduler's relay: pairs the upload and the download of one ticket and
    passes exactly the announced number of bytes from one to the other, through a
    buffer of `CHUNK` bytes.  A ticket is `expect`ed when the uploader's signed message
    announces it; it expires after ``ttl`` seconds if its two ends have not both
    come.  An uploader may connect before the announcement has been read: it waits up
    to `REGISTER_SECONDS` for it."""

    preamble_size = 1 + TICKET_BYTES

    def __init__(self, host, ttl=60.0):
        self.ttl = ttl
        self._expected = {}          # {ticket: [nbytes, deadline, {role: conn}]}
        self._gone = collections.OrderedDict()   # tickets cancelled or expired, latest
        self.relayed = 0             # bytes passed on so far
        super().__init__(host, "dask-ipy-relay")

    def expect(self, ticket, nbytes):
        """Let the two ends of ``ticket`` meet (any thread)."""
        if type(ticket) is not bytes or len(ticket) != TICKET_BYTES:
            return
        with self.lock:
            if ticket not in self._expected and ticket not in self._gone:
                self._expected[ticket] = [int(nbytes), time.monotonic() + self.ttl, {}]
        self.wake()

    def cancel(self, ticket):
        """Give up ``ticket``: an end waiting for it is closed (any thread)."""
        if type(ticket) is not bytes:
            return
        with self.lock:
            self._forget(ticket)
        self.wake()

    def _forget(self, ticket):
        self._expected.pop(ticket, None)
        self._gone[ticket] = None
        while len(self._gone) > 4096:
            self._gone.popitem(last=False)

    def _admit(self, conn, preamble, accepted):
        role, ticket = preamble[:1], preamble[1:]
        if role not in (UPLOAD, DOWNLOAD):
            return self._refuse(conn)
        now = time.monotonic()
        with self.lock:
            entry = self._expected.get(ticket)
            if entry is not None and entry[1] < now:
                self._forget(ticket)
                entry = None
            if entry is None:
                if role == UPLOAD and ticket not in self._gone:
                    return accepted + REGISTER_SECONDS     # announced soon, or never
                return self._refuse(conn)
            ends = entry[2]
            if ends.get(role, conn) is not conn:
                return self._refuse(conn)
            ends[role] = conn
            if len(ends) < 2:
                return entry[1]
            del self._expected[ticket]
        up, down = ends[UPLOAD], ends[DOWNLOAD]
        self._waiting.pop(up, None)
        self._waiting.pop(down, None)
        self._hand_over(self._pump, up, down, entry[0], conns=(up, down))
        return None

    def _pump(self, up, down, nbytes):
        try:
            (_splice if SPLICE else _copy)(up, down, nbytes)
        except OSError as e:
            logger.debug("relay: a transfer failed: %s", e)
            return
        with self.lock:
            self.relayed += nbytes

    def close(self):
        with self.lock:
            self._expected.clear()
        super().close()


#: Pass relayed bytes kernel to kernel (Linux): no copy through this process.
SPLICE = hasattr(os, "splice")


def _copy(up, down, nbytes):
    """Pass `nbytes` from `up` to `down` through a buffer; raises OSError if they do
    not all come."""
    view = memoryview(bytearray(CHUNK))
    for s in (up, down):
        s.setblocking(True)
        s.settimeout(IO_TIMEOUT)
    left = nbytes
    while left:
        k = up.recv_into(view[:min(left, CHUNK)])
        if k == 0:
            raise OSError(f"upload ended {left} bytes short")
        down.sendall(view[:k])
        left -= k


def _splice(up, down, nbytes):
    """`_copy` through a pipe, with splice(2): the bytes never enter user space.  The
    sockets block, with kernel timeouts (a Python timeout would make them
    non-blocking, which splice does not wait on)."""
    import fcntl

    timeout = struct.pack("ll", int(IO_TIMEOUT), 0)
    for s in (up, down):
        s.settimeout(None)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
    r, w = os.pipe()
    try:
        try:
            fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
        except OSError:
            pass                                   # the default size works, slower
        left = nbytes
        while left:
            k = os.splice(up.fileno(), w, min(left, CHUNK))
            if k == 0:
                raise OSError(f"upload ended {left} bytes short")
            while k:
                sent = os.splice(r, down.fileno(), k)
                k -= sent
                left -= sent
    finally:
        os.close(r)
        os.close(w)


def send_stream(conn, session, header, payload) -> int:
    """Stream a message: frame count, sizes, header, payload frames, then the MAC,
    computed from Poly1305 tags taken of each large frame while it leaves.  Returns
    the payload bytes sent."""
    views = [memoryview(f).cast("B") for f in payload]
    conn.sendall(_COUNT.pack(len(views) + 1) + struct.pack(
        f"<{len(views) + 1}Q", len(header), *(v.nbytes for v in views)))
    conn.sendall(header)
    tags = {}
    for i, view in enumerate(views):
        if view.nbytes < POLY1305_FROM:
            conn.sendall(view)
            continue
        tagger = session.frame_tagger(header, i)
        sent = 0
        while sent < view.nbytes:
            k = conn.send(view[sent:sent + CHUNK])
            tagger.update(view[sent:sent + k])
            sent += k
        tags[i] = tagger.finalize()
    conn.sendall(session.seal(header, payload, tags))
    return sum(v.nbytes for v in views)


def upload(session, host, port, ticket, header, payload, timeout, connect_timeout=None,
           pool=None):
    """Stream a message into the relay at host:port under ``ticket`` (a transfer of
    ``pool``, which may end it)."""
    return upload_on(open_upload(host, port, ticket, timeout, connect_timeout), session,
                     header, payload, pool)


def open_upload(host, port, ticket, timeout, connect_timeout=None):
    """A connection to the relay at host:port presenting ``ticket`` for an upload:
    one who must know at once whether the relay is there opens it first, and streams
    later (`upload_on`)."""
    s = socket.create_connection((host, port), timeout=connect_timeout or timeout)
    try:
        s.settimeout(timeout)
        s.sendall(UPLOAD + ticket)
    except BaseException:
        s.close()
        raise
    return s


def upload_on(s, session, header, payload, pool=None):
    """Stream a message on ``s`` (from `open_upload`), then close it."""
    with s, (pool.holding(s) if pool is not None else contextlib.nullcontext()):
        return send_stream(s, session, header, payload)


def fetch(session, host, port, preamble, timeout, sizes, connect_timeout=None):
    """Download the message offered under ``preamble`` (a ticket, or the relay's role
    and ticket) at host:port, connecting within ``connect_timeout`` seconds and waiting
    at most ``timeout`` for each read.  ``sizes`` are the frame sizes the signed offer
    announced: the stream must announce exactly those, so nothing larger is ever
    allocated.

    Returns (frames, tags) for ``session.loads(frames, tags=tags)``: tags of the large
    frames are taken as their bytes arrive, so checking the MAC does not read them
    again.  Frames are received in place into fresh buffers (see
    `protocol.writable_buffer`) and never copied afterwards.  Raises OSError (also on a
    short stream, or one other than announced)."""
    sizes = [int(n) for n in sizes]
    if not sizes or len(sizes) > MAX_FRAMES or min(sizes) < 0:
        raise OSError("bulk: no valid sizes announced")
    with socket.create_connection((host, port), timeout=connect_timeout or timeout) as s:
        s.settimeout(timeout)
        s.sendall(preamble)
        (count,) = _COUNT.unpack(_recv_exact(s, _COUNT.size))
        if count != len(sizes):
            raise OSError(f"bulk: {count} frames in the stream, {len(sizes)} announced")
        got = struct.unpack(f"<{count}Q", _recv_exact(s, 8 * count))
        if list(got) != sizes:
            raise OSError("bulk: the stream's frame sizes are not those announced")
        header = bytes(_recv_exact(s, sizes[0]))
        payload, tags = [], {}
        for i, n in enumerate(sizes[1:]):
            tagger = session.frame_tagger(header, i) if n >= POLY1305_FROM else None
            payload.append(_recv_exact(s, n, tagger))
            if tagger is not None:
                tags[i] = tagger.finalize()
        mac = bytes(_recv_exact(s, MAC_BYTES))
        return [mac, header, *payload], tags


def receive(session, host, port, streams, timeout=IO_TIMEOUT, connect_timeout=5.0):
    """{key: Serialized}: the values of ``streams`` (each {ticket, sizes, keys}, as the
    scheduler announced them), downloaded from the relay at host:port, all at once (a
    sender waits for its stream to be taken; none must wait for another).  Each is one
    "data" message signed for this endpoint and carrying its ticket, so an old one
    cannot be passed off as it.  Raises OSError or ProtocolError."""
    def one(stream):
        ticket = stream["ticket"]
        frames, tags = fetch(session, host, port, DOWNLOAD + ticket, timeout,
                             stream["sizes"], connect_timeout)
        msgs = session.loads(frames, check_replay=False, tags=tags)
        if len(msgs) != 1 or msgs[0].get("op") != "data" or msgs[0].get("ticket") != ticket:
            raise ProtocolError("the relay brought another message than announced")
        return msgs[0]["data"]

    data = {}
    if len(streams) == 1:
        data.update(one(streams[0]))
        return data
    with ThreadPoolExecutor(min(len(streams), MAX_ACTIVE),
                            thread_name_prefix="dask-ipy-receive") as pool:
        for values in pool.map(one, streams):
            data.update(values)
    return data


def _recv_exact(s, n, tagger=None):
    if n == 0:
        return b""
    buf = writable_buffer(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(view[got:])
        if k == 0:
            raise OSError(f"bulk: connection closed after {got} of {n} bytes")
        if tagger is not None:
            tagger.update(view[got:got + k])
        got += k
    return buf
