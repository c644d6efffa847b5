"""A side channel for large data between workers: one plain TCP connection per transfer.

ZeroMQ carries a 100 MB frame over loopback at about 1 GB/s on a small VM, where a plain
socket receiving straight into its destination buffer reaches 2-3 GB/s.  So a worker
asked for data that comes to `BULK_FROM` bytes or more answers on ZeroMQ with a ticket
and streams the message itself over TCP::

    B ──get-data, bulk ok──────────────▶ A           (ZeroMQ, signed)
    B ◀──data-bulk: ticket, port─────── A           (ZeroMQ, signed, small)
    B ──connect to port, ticket───────▶ A's BulkServer
    B ◀──frame sizes, then the frames── A           (the signed "data" message)

Trust comes from the message, not from the channel: the frames are exactly what A would
have sent over ZeroMQ, a Session message signed by A for B, which B checks (MAC over every
byte) before using anything; replays are refused because B accepts one message carrying
the random request id it is waiting for, once.  A ticket is random, used once and
expires; presenting it only selects which frames A sends, which anyone on the path can
read from the unencrypted stream anyway.  With encryption on (CURVE) workers do not use
this channel: data stays on the encrypted sockets.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import threading
import time

from .log import logger
from .protocol import POLY1305_FROM

#: Replies of this many bytes or more take the side channel.
BULK_FROM = 4 << 20
TICKET_BYTES = 16
MAX_FRAMES = 1 << 16
HUGE_PAGE = 2 << 20
CHUNK = 1 << 20          # bytes sent between updates of a frame's tag
MAC_BYTES = 32
IO_TIMEOUT = 60.0        # seconds a served connection may stall
_COUNT = struct.Struct("<I")


class BulkServer:
    """Listens on ``host``; `offer` returns a ticket for one download of a message.

    One thread accepts; each connection is served on a thread of its own, so a slow
    reader holds up nobody else.  Unclaimed offers are dropped after ``ttl`` seconds.
    """

    def __init__(self, host, ttl=60.0):
        self.ttl = ttl
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(1.0)    # the accept loop notices `close` within a second
        self.port = self.sock.getsockname()[1]
        self._offers = {}            # {ticket: (session, header, payload, deadline)}
        self._lock = threading.Lock()
        self._closed = False
        self.sent = 0                # payload bytes streamed so far
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name="dask-ipy-bulk")
        self._thread.start()

    def offer(self, session, header, payload) -> bytes:
        """A ticket for the message `session.encode` made as (header, payload); it is
        sealed (signed) while it streams."""
        ticket = os.urandom(TICKET_BYTES)
        now = time.monotonic()
        with self._lock:
            for t in [t for t, offer in self._offers.items() if offer[3] < now]:
                del self._offers[t]
            self._offers[ticket] = (session, header, payload, now + self.ttl)
        return ticket

    def _claim(self, ticket):
        with self._lock:
            offer = self._offers.pop(ticket, None)
        return offer if offer is not None and offer[3] >= time.monotonic() else None

    def _accept(self):
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="dask-ipy-bulk-send").start()

    def _serve(self, conn):
        """Stream: frame count, sizes, header, payload frames, then the MAC, computed
        from Poly1305 tags taken of each large frame while it leaves."""
        with conn:
            try:
                conn.settimeout(IO_TIMEOUT)
                offer = self._claim(bytes(_recv_exact(conn, TICKET_BYTES)))
                if offer is None:
                    return
                session, header, payload, _ = offer
                views = [memoryview(f).cast("B") for f in payload]
                conn.sendall(_COUNT.pack(len(views)) + struct.pack(
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
                with self._lock:
                    self.sent += sum(v.nbytes for v in views)
            except (OSError, ValueError) as e:
                logger.debug("bulk: transfer to a peer failed: %s", e)

    def close(self):
        self._closed = True
        with self._lock:
            self._offers.clear()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes accept() at once on Linux
        except OSError:
            pass
        self.sock.close()


def fetch(session, host, port, ticket, timeout, max_bytes, connect_timeout=None):
    """Download the message offered under ``ticket`` at host:port, connecting within
    ``connect_timeout`` seconds and waiting at most ``timeout`` for each read.

    Returns (frames, tags) for ``session.loads(frames, tags=tags)``: tags of the large
    frames are taken as their bytes arrive, so checking the MAC does not read them
    again.  Frames are received in place into fresh buffers (see `_buffer`) and never
    copied afterwards.  Raises OSError (also on a short or oversized stream)."""
    with socket.create_connection((host, port), timeout=connect_timeout or timeout) as s:
        s.settimeout(timeout)
        s.sendall(ticket)
        (count,) = _COUNT.unpack(_recv_exact(s, _COUNT.size))
        if count > MAX_FRAMES:
            raise OSError(f"bulk: {count} frames announced")
        sizes = struct.unpack(f"<{count + 1}Q", _recv_exact(s, 8 * (count + 1)))
        if sum(sizes) > max_bytes:
            raise OSError(f"bulk: {sum(sizes)} bytes announced, more than {max_bytes}")
        header = bytes(_recv_exact(s, sizes[0]))
        payload, tags = [], {}
        for i, n in enumerate(sizes[1:]):
            tagger = session.frame_tagger(header, i) if n >= POLY1305_FROM else None
            payload.append(_recv_exact(s, n, tagger))
            if tagger is not None:
                tags[i] = tagger.finalize()
        mac = bytes(_recv_exact(s, MAC_BYTES))
        return [mac, header, *payload], tags


def _buffer(n):
    """A writable buffer of n bytes.  Large ones are private anonymous maps, rounded up
    to whole huge pages and advised to use them: the kernel then faults in 2 MiB at a
    time instead of 4 KiB, which more than doubles the rate at which a socket can fill
    them (2.5 against 0.9 GB/s over loopback on a small VM)."""
    if n < HUGE_PAGE:
        return bytearray(n)
    m = mmap.mmap(-1, -(-n // HUGE_PAGE) * HUGE_PAGE,
                  flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(m)[:n]


def _recv_exact(s, n, tagger=None):
    if n == 0:
        return b""
    buf = _buffer(n)
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
