"""Wire format: signed batches of small dicts, with pickled payloads as zero-copy frames.

A wire message is a list of frames that goes straight to ``send_multipart(copy=False)``::

    [mac, header, body_1 ... body_k, payload_0, payload_1, ...]

    mac     32 bytes: keyed BLAKE3 over the header, or, when more frames follow, over
            (frame count, every frame length, header, the other frames) with another
            key; a frame of 1 MiB or more enters as its Poly1305 tag under a one-time
            key derived from the (unique) envelope and the frame's index
    header  fixed envelope, then the sender and recipient ids, then the msgpack body
            envelope  <u16 version><16s epoch><u64 counter><u16 len(sender)>
                      <u16 len(to)><u32 k><u32 n_payload>
            body      msgpack list of dicts (the messages of this batch); past
                      `MAX_FRAME_BYTES` it goes on in the k body frames
    payload the buffers of `Serialized` values too big to inline, never copied or
            joined by the sender; each is cut into frames of at most `MAX_FRAME_BYTES`

No frame is larger than `MAX_FRAME_BYTES` (``frame_limit=None`` lifts that for the bulk
side channel, which has no ZeroMQ between its ends), so every socket facing the
network refuses larger frames (ZMQ_MAXMSGSIZE) without capping what users send: a
value of any size travels as many frames, joined once, by the receiver that unpickles
it (the scheduler only forwards the frames).

Epochs.  A scheduler draws a random epoch when it starts; every message of its cluster
carries it (inside the MAC), and a receiver refuses any other, so nothing recorded
against one scheduler is accepted by another started with the same key.  A peer learns
the epoch by the handshake, the only exchange signed without one (the null epoch)::

    peer ──hello {nonce}──────────────▶ scheduler   (no state is created)
    peer ◀──hello-reply {nonce, epoch, id}── scheduler

The reply echoes the peer's random nonce, so an old one cannot be passed off as fresh;
a replayed hello only earns its sender a reply.  Only those two operations may travel
with the null epoch, and only they may leave the recipient empty: every other message
names its recipient (`WrongRecipient`), which a Session accepts as its identity or one
of its ``aliases`` (a worker's address, for peers that know it by that).

Rules, in the order ``Session.loads`` applies them (nothing is decoded before the MAC):

1. the total size is capped before any hashing when the Session has a cap
   (`MessageTooLarge`);
2. the MAC covers every frame, each length-prefixed, so frames cannot be swapped,
   dropped, added or re-split without detection (`BadSignature`);
3. the version sits at byte 0 of the header in every version, so a peer speaking another
   version is named as such rather than reported as garbage (`VersionMismatch`);
4. the epoch must be this cluster's (`WrongEpoch`), the envelope's sender the routing
   id the ROUTER saw (`WrongSender`), the recipient us (`WrongRecipient`), and the
   sender's counter fresh (`ReplayedMessage`, see below);
5. only then is the body decoded (`MalformedMessage` on any structural error).

`Serialized` values travel as msgpack ExtType: inlined when small, otherwise as
references (start index, frames per buffer) into the payload frames. ``loads`` hands
them back as `Serialized` over the received buffers (a buffer that came in several
frames as a `Chunked`); unpickling, and joining, is left to whoever needs the object,
so the scheduler forwards user data without ever running pickle on it.

Replay protection. A sender numbers its messages with one counter per recipient field,
from 1 (identities are random per endpoint and epochs per scheduler, so a (sender,
recipient, counter) triple is never reused).  Each such stream travels one socket, in
order.  A receiver accepts each counter of a stream at most once, and nothing older
than the last `replay_window` counters it accepted from that stream: a little slack,
never needed by the shells; ``replay_window=0`` gives the strict rule.

No sockets, threads, clocks or event loops here; a Session belongs to one thread.
"""

from __future__ import annotations

import hmac
import itertools
import mmap
import pickle
import struct
from collections import deque
from functools import partial

import blake3
from cryptography.hazmat.primitives.poly1305 import Poly1305
import cloudpickle
import msgpack

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_MESSAGE_BYTES",
    "MAX_FRAME_BYTES",
    "REPLAY_WINDOW",
    "EPOCH_BYTES",
    "HANDSHAKE_OPS",
    "ProtocolError",
    "BadSignature",
    "ReplayedMessage",
    "MalformedMessage",
    "VersionMismatch",
    "MessageTooLarge",
    "WrongEpoch",
    "WrongRecipient",
    "WrongSender",
    "SerializationError",
    "Serialized",
    "Chunked",
    "serialize",
    "check_serializable",
    "deserialize",
    "new_epoch",
    "writable_buffer",
    "Session",
]

PROTOCOL_VERSION: int = 2
#: No cap on a whole message unless a Session is given one: what bounds memory is the
#: frame size below and who may send (see security.py), not the size of user data.
MAX_MESSAGE_BYTES = None
#: The largest frame on the wire: sockets facing the network refuse larger ones.
MAX_FRAME_BYTES: int = 1 << 20
# Counters remembered per sender: how far a message may be overtaken by later ones.
REPLAY_WINDOW: int = 256
EPOCH_BYTES = 16
#: The only operations signed without an epoch, and the only ones without a recipient.
HANDSHAKE_OPS = frozenset({"hello", "hello-reply"})

# Below this size a buffer is cheaper to copy than to give its own frame.
INLINE_LIMIT = 64 * 1024

# The first buffer of a message body (msgpack grows it as needed).  msgpack's own,
# 256 KiB, was past glibc's mmap threshold, which a worker then kept fixed at 128 KiB
# (supervisor.py): every message mapped and unmapped fresh pages, doubling the
# time to pack a few small messages.  A small buffer costs nothing wherever it lives.
PACK_BUFFER = 16 * 1024

#: Frames this large are authenticated through a Poly1305 tag (see `_mac`).
POLY1305_FROM = 1 << 20
# The MAC is single-threaded on purpose: BLAKE3's multithreaded mode starts a global
# thread pool that a forked child inherits without its threads, so the child's first
# large hash hangs forever. One thread already runs at memory speed, and blake3
# releases the GIL, so hashing overlaps the other Python threads anyway.

HUGE_PAGE = 2 << 20

_MAC_SIZE = 32
_MAC_CONTEXT = "dask_ipy protocol message authentication key"
# version, epoch, counter, len(sender), len(to), body frames, payload frames
_ENVELOPE = struct.Struct("<H16sQHHII")
_VERSION = struct.Struct("<H")
_REF = struct.Struct("<II")  # first payload frame, number of buffers; then frames per buffer
_NO_EPOCH = bytes(EPOCH_BYTES)

# ExtType codes for Serialized values in the msgpack body.
_EXT_INLINE = 1  # data: the single buffer
_EXT_REFS = 2  # data: _REF + counts; every buffer is in payload frames
_EXT_HEAD_INLINE = 3  # data: _REF + counts + buffer 0; buffers[1:] are in payload frames


class ProtocolError(Exception):
    """A received message was rejected; nothing of it was used."""


class BadSignature(ProtocolError):
    """The MAC does not match: wrong key, or frames altered, added, dropped or reordered."""


class ReplayedMessage(ProtocolError):
    """The sender's counter was seen before, or is older than the replay window."""


class MalformedMessage(ProtocolError):
    """The frames are not a message of this protocol."""


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version."""


class MessageTooLarge(ProtocolError):
    """The message exceeds the receiving session's size cap."""


class WrongEpoch(ProtocolError):
    """The message belongs to another start of the scheduler (or to none)."""


class WrongRecipient(ProtocolError):
    """The message was addressed to another endpoint, or to nobody."""


class WrongSender(ProtocolError):
    """The envelope's sender is not the peer the socket saw."""


class SerializationError(TypeError):
    """An object could not be pickled, even by value."""


def new_epoch() -> bytes:
    """A random epoch for one start of a scheduler."""
    import os

    epoch = os.urandom(EPOCH_BYTES)
    return epoch if epoch != _NO_EPOCH else new_epoch()


def _buffer(frame):
    """The buffer behind a frame: zmq.Frame exposes it as `.buffer`."""
    return getattr(frame, "buffer", frame)


def _nbytes(buf) -> int:
    if type(buf) is bytes:
        return len(buf)
    if type(buf) is Chunked:
        return buf.nbytes
    return memoryview(buf).nbytes


def _byte_view(frame) -> memoryview:
    if type(frame) is Chunked:
        return memoryview(b"".join(_byte_view(p) for p in frame.parts))
    return memoryview(_buffer(frame)).cast("B")


def writable_buffer(n):
    """A writable buffer of n bytes.  Large ones are private anonymous maps, rounded up
    to whole huge pages and advised to use them: the kernel then faults in 2 MiB at a
    time instead of 4 KiB, which more than doubles the rate at which a socket or a copy
    can fill them; and a page costs memory only once written."""
    if n < HUGE_PAGE:
        return bytearray(n)
    m = mmap.mmap(-1, -(-n // HUGE_PAGE) * HUGE_PAGE,
                  flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(m)[:n]


class Chunked:
    """One buffer received as several frames: kept as they came (the scheduler
    forwards them as they are) until `join` makes one contiguous buffer of them."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, parts):
        self.parts = list(parts)
        self.nbytes = sum(_nbytes(_buffer(p)) for p in self.parts)

    def join(self):
        """The parts copied into one buffer, each let go once copied (so the joined
        buffer and the parts never both stay whole in memory)."""
        out = writable_buffer(self.nbytes)
        view = memoryview(out)
        offset = 0
        parts = self.parts
        while parts:
            part = memoryview(_buffer(parts.pop(0))).cast("B")
            view[offset:offset + part.nbytes] = part
            offset += part.nbytes
            del part
        self.parts = [out]
        return out

    def __repr__(self):
        return f"Chunked({len(self.parts)} parts, {self.nbytes} bytes)"


class Serialized:
    """An opaque pickled payload: frames[0] is the pickle stream (protocol 5), frames[1:]
    out-of-band buffers (numpy, bytes...). The scheduler forwards these without ever
    unpickling them.  A frame may be a `Chunked` buffer, as received."""

    __slots__ = ("frames",)

    def __init__(self, frames: list):
        frames = list(frames)
        if not frames:
            raise ValueError("Serialized needs at least the pickle stream frame")
        self.frames = frames

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(_buffer(f)) for f in self.frames)

    def buffers(self) -> list:
        """The frames as contiguous buffers, joining (once) those that came chunked."""
        frames = self.frames
        for i, f in enumerate(frames):
            if type(f) is Chunked:
                frames[i] = f.join()
        return [_buffer(f) for f in frames]

    def __eq__(self, other):
        if not isinstance(other, Serialized):
            return NotImplemented
        return len(self.frames) == len(other.frames) and all(
            _byte_view(a) == _byte_view(b) for a, b in zip(self.frames, other.frames)
        )

    __hash__ = None  # frames may be mutable buffers

    def __repr__(self):
        return f"Serialized({self.nbytes} bytes)"

    def __reduce_ex__(self, protocol):
        # Nested inside another pickle, keep big frames out of band when the protocol allows.
        if protocol >= 5:
            frames = [pickle.PickleBuffer(f) for f in self.buffers()]
        else:
            frames = [bytes(memoryview(f).cast("B")) for f in self.buffers()]
        return (Serialized, (frames,))


class _BufferAsOutOfBand:
    """Pickles a large bytes/bytearray through an out-of-band buffer instead of copying
    it into the stream (the C pickler writes bytes in-band and offers no hook for them)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return (type(self.data), (pickle.PickleBuffer(self.data),))


def _pickle(dumps, obj) -> Serialized:
    buffers = []

    def keep_large_out_of_band(pickle_buffer):
        view = pickle_buffer.raw()
        if view.nbytes < INLINE_LIMIT:
            return True  # in-band
        buffers.append(view)
        return False

    stream = dumps(obj, protocol=5, buffer_callback=keep_large_out_of_band)
    return Serialized([stream, *buffers])


def serialize(obj) -> Serialized:
    """Pickle `obj` (protocol 5, large buffers out of band), by value where needed.

    The C pickler runs first; cloudpickle takes over when it fails (lambdas, closures)
    or when the stream refers to ``__main__``, whose functions and classes exist only in
    the sending process.
    """
    target = obj
    if type(obj) in (bytes, bytearray) and len(obj) >= INLINE_LIMIT:
        target = _BufferAsOutOfBand(obj)
    try:
        s = _pickle(pickle.dumps, target)
        if b"__main__" not in s.frames[0]:
            return s
    except Exception:
        pass
    try:
        return _pickle(cloudpickle.dumps, target)
    except Exception as e:
        raise _unserializable(obj, e) from e


FUNCTIONS_KEPT = 100          # functions a process keeps unpickled (`load_function`)
_functions = {}


def load_function(blob):
    """The function that ``blob`` pickles by value (`FunctionBlob`): unpickled once,
    then kept (the latest FUNCTIONS_KEPT), so that the tasks of a graph share one
    function object in a process, as they do under dask's threaded scheduler."""
    fn = _functions.get(blob)
    if fn is None:
        fn = pickle.loads(blob)
        if len(_functions) >= FUNCTIONS_KEPT:
            _functions.pop(next(iter(_functions)), None)
        _functions[blob] = fn
    return fn


class FunctionBlob:
    """A function pickled by value once (``blob``, cloudpickle's), which any number
    of task pickles carry as those bytes: it pickles as `load_function(blob)`."""

    __slots__ = ("blob",)

    def __init__(self, blob):
        self.blob = blob

    def __reduce__(self):
        return (load_function, (self.blob,))


def function_blob(fn, limit=100_000):
    """A `FunctionBlob` of ``fn`` if it must travel by value (a function of
    ``__main__``, a lambda, a closure) in at most ``limit`` bytes; None for one
    pickled by reference (cheaper) or that cannot be pickled."""
    try:
        if b"__main__" not in pickle.dumps(fn, protocol=5):
            return None
    except Exception:
        pass
    try:
        blob = cloudpickle.dumps(fn, protocol=5)
    except Exception:
        return None
    return FunctionBlob(blob) if len(blob) <= limit else None


def serialize_plain(obj) -> Serialized:
    """`serialize` for an object known to hold nothing of ``__main__`` and nothing
    the C pickler refuses (plain values, `FunctionBlob`): no second look."""
    return _pickle(pickle.dumps, obj)


def _unserializable(obj, e):
    kind = type(obj)
    return SerializationError(
        f"cannot serialize object of type {kind.__module__}.{kind.__qualname__}: "
        f"{type(e).__name__}: {e}")


class _Discard:
    """A file that forgets what is written to it."""

    @staticmethod
    def write(data):
        return len(data)


def _out_of_band(buffer):
    return False


def check_serializable(obj) -> None:
    """Raise `SerializationError` (as `serialize` would) if ``obj`` cannot be
    pickled; keeps nothing: large buffers are never copied, the stream is dropped."""
    try:
        pickle.Pickler(_Discard(), protocol=5, buffer_callback=_out_of_band).dump(obj)
        return
    except Exception:
        pass
    try:
        cloudpickle.CloudPickler(_Discard(), protocol=5,
                                 buffer_callback=_out_of_band).dump(obj)
    except Exception as e:
        raise _unserializable(obj, e) from e


def deserialize(s: Serialized) -> object:
    """Unpickle a `Serialized`; out-of-band frames are used in place, not copied (those
    that arrived in several frames are joined first, once)."""
    if not isinstance(s, Serialized):
        raise TypeError(f"deserialize expects Serialized, got {type(s).__name__}")
    frames = s.frames
    if len(frames) == 1 and type(frames[0]) is not Chunked:
        return pickle.loads(_buffer(frames[0]))     # the common case: a stream alone
    frames = s.buffers()
    return pickle.loads(frames[0], buffers=frames[1:])


def _mac_keys(key: bytes) -> tuple[bytes, bytes]:
    """(key for header-only messages, key for messages with more frames).

    Always derived, never the raw secret: the same secret also seeds the CURVE keypair
    and the ZeroMQ handshake's password (security.py), and distinct contexts keep the
    uses independent. Two keys let the common header-only message skip the length
    prefix: a MAC made for one frame layout can never verify under the other.
    """
    return (
        blake3.blake3(key, derive_key_context=_MAC_CONTEXT + " (header only)").digest(),
        blake3.blake3(key, derive_key_context=_MAC_CONTEXT + " (with payload)").digest(),
    )


def _frame_key(key: bytes) -> bytes:
    """The key from which one-time Poly1305 keys for large frames are drawn."""
    return blake3.blake3(key, derive_key_context=_MAC_CONTEXT + " (frame keys)").digest()


def _split(buf, limit, out: list) -> int:
    """Append `buf` to `out` as frames of at most `limit` bytes (views, no copy);
    returns how many."""
    if type(buf) is Chunked:
        return sum(_split(_buffer(p), limit, out) for p in buf.parts)
    n = _nbytes(buf)
    if limit is None or n <= limit:
        out.append(buf)
        return 1
    view = memoryview(buf).cast("B")
    count = 0
    for start in range(0, n, limit):
        out.append(view[start:start + limit])
        count += 1
    return count


# msgpack.ExtType(code, data) for arguments known to be valid: ExtType's own
# constructor checks them in Python, at a cost comparable to packing a small message.
_ext_type = partial(tuple.__new__, msgpack.ExtType)


def _encode_serialized(s: Serialized, payload: list, limit) -> msgpack.ExtType:
    frames = s.frames
    head = frames[0]
    if type(head) is bytes and len(frames) == 1 and len(head) < INLINE_LIMIT:
        # The common case, a small value pickled here or received inline: as it is.
        return _ext_type((_EXT_INLINE, head))
    head = _buffer(head)
    inline = type(head) is not Chunked and _nbytes(head) < INLINE_LIMIT
    if inline and len(frames) == 1:
        return msgpack.ExtType(_EXT_INLINE, bytes(memoryview(head).cast("B")))
    rest = frames[1:] if inline else frames
    first = len(payload)
    counts = [_split(_buffer(f), limit, payload) for f in rest]
    ref = _REF.pack(first, len(counts)) + struct.pack(f"<{len(counts)}I", *counts)
    if inline:
        return msgpack.ExtType(_EXT_HEAD_INLINE, ref + bytes(memoryview(head).cast("B")))
    return msgpack.ExtType(_EXT_REFS, ref)


def _inline_serialized(data: bytes) -> Serialized:
    """Serialized([data]) without __init__'s copy and check: one per result or task
    a message carries, on every receiver's busiest path."""
    s = _new_object(Serialized)
    s.frames = [data]
    return s


_new_object = object.__new__


def _decode_serialized(code: int, data: bytes, payload: list):
    """A value other than a small inline one (`Session.loads` builds those itself,
    with `_inline_serialized`, on its busiest path)."""
    if code == _EXT_REFS or code == _EXT_HEAD_INLINE:
        start, count = _REF.unpack_from(data)
        end = _REF.size + 4 * count
        counts = struct.unpack_from(f"<{count}I", data, _REF.size)
        if (start + sum(counts) > len(payload) or 0 in counts
                or (code == _EXT_REFS and count == 0) or len(data) < end):
            raise ValueError("Serialized refers to missing payload frames")
        frames = []
        for n in counts:
            frames.append(payload[start] if n == 1 else Chunked(payload[start:start + n]))
            start += n
        if code == _EXT_HEAD_INLINE:
            frames.insert(0, data[end:])
        return Serialized(frames)
    raise ValueError(f"unknown ExtType code {code}")


class _Freshness:
    """The counters accepted from one sender.

    floor   every counter <= floor is refused (too old, or already evicted)
    seen    accepted counters above floor: {counter}
    order   the same counters in arrival order, oldest first, to evict from
    """

    __slots__ = ("floor", "seen", "order")

    def __init__(self):
        self.floor = -1
        self.seen: set[int] = set()
        self.order: deque[int] = deque()

    def admit(self, counter: int, window: int) -> bool:
        if counter <= self.floor or counter in self.seen:
            return False
        if window <= 0:
            self.floor = counter
            return True
        self.seen.add(counter)
        self.order.append(counter)
        if len(self.order) > window:
            oldest = self.order.popleft()
            self.seen.discard(oldest)
            if oldest > self.floor:
                self.floor = oldest
        return True


class Session:
    """Signs and verifies messages for one endpoint (a scheduler, a worker, a client).

    State: the cluster's `epoch` (None until the handshake tells it), the next counter
    to sign with per recipient, and ``{(sender, recipient): _Freshness}`` for replay
    protection (at most `replay_window` counters per stream). ``dumps`` and ``loads``
    may be called from different threads.
    """

    def __init__(
        self,
        key: bytes,
        identity: bytes,
        *,
        epoch: bytes | None = None,
        aliases=(),
        max_message_bytes=MAX_MESSAGE_BYTES,
        replay_window=REPLAY_WINDOW,
    ):
        """`key` is the shared secret (any length; 32-byte MAC keys are derived from
        it), `identity` this endpoint's id, `epoch` the cluster's (a scheduler draws it
        with `new_epoch`; other endpoints learn it by the handshake), `aliases` other
        names messages to this endpoint may carry as recipient, `max_message_bytes`
        an optional cap on received messages, `replay_window` how many counters per
        stream to remember (0: strictly increasing)."""
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ValueError("Session key must be non-empty bytes")
        if not isinstance(identity, bytes) or not identity:
            raise ValueError("Session identity must be non-empty bytes")
        if len(identity) > 0xFFFF:
            raise ValueError("Session identity is too long")
        self.identity = identity
        self.epoch = epoch
        self.aliases = frozenset(aliases)
        self.max_message_bytes = None if max_message_bytes is None else int(max_message_bytes)
        self.replay_window = int(replay_window)
        header_key, payload_key = _mac_keys(bytes(key))
        self._header_hasher = blake3.blake3(key=header_key)
        self._payload_hasher = blake3.blake3(key=payload_key)
        self._frame_key_hasher = blake3.blake3(key=_frame_key(bytes(key)))
        # One counter per recipient field: each (sender, recipient) stream then travels
        # one socket, in order, so a message held up behind others on one socket can
        # never look stale to a receiver that got later messages on another socket.
        self._counters: dict[bytes, itertools.count] = {}
        self._freshness: dict[tuple, _Freshness] = {}

    def __repr__(self):
        return f"Session(identity={self.identity!r})"

    @property
    def epoch(self):
        return self._epoch

    @epoch.setter
    def epoch(self, value):
        if value is not None and (type(value) is not bytes or len(value) != EPOCH_BYTES
                                  or value == _NO_EPOCH):
            raise ValueError(f"an epoch is {EPOCH_BYTES} random bytes")
        self._epoch = value

    def _mac(self, header, rest: list, sizes: list, tags=None) -> bytes:
        """`sizes` are the byte sizes of the header and the frames after it, in order;
        `tags` {index in `rest`: Poly1305 tag} those of large frames already computed."""
        if not rest:
            h = self._header_hasher.copy()
            h.update(header)
            return h.digest()
        h = self._payload_hasher.copy()
        h.update(struct.pack(f"<{len(sizes) + 1}Q", len(sizes), *sizes))
        h.update(header)
        tagger = None
        for i, buf in enumerate(rest):
            if sizes[i + 1] < POLY1305_FROM:
                h.update(buf)
            elif tags is not None and i in tags:
                h.update(tags[i])
            else:
                if tagger is None:
                    tagger = self._tagger_base(header)
                t = Poly1305(self._one_time_key(tagger, i))
                t.update(buf)
                h.update(t.finalize())
        return h.digest()

    def _tagger_base(self, header):
        """The frame-key hasher fed with the envelope and the two ids: unique per
        message (epoch, sender, recipient, counter), and short whatever the body."""
        view = memoryview(header).cast("B")
        if view.nbytes < _ENVELOPE.size:
            raise ValueError("header too short")
        sender_len, to_len = struct.unpack_from("<HH", view, 26)
        base = self._frame_key_hasher.copy()
        base.update(view[:_ENVELOPE.size + sender_len + to_len])
        return base

    @staticmethod
    def _one_time_key(base, index: int) -> bytes:
        otk = base.copy()
        otk.update(index.to_bytes(4, "little"))
        return otk.digest()

    def frame_tagger(self, header, index: int) -> Poly1305:
        """The Poly1305 state for frame ``index`` after the header of the message with
        ``header`` (frames of `POLY1305_FROM` bytes or more).

        A large frame enters the MAC as its Poly1305 tag (three times BLAKE3's speed on
        one core) under a one-time key drawn from the envelope, which is unique (epoch,
        sender, recipient, counter).  Exposed so that a stream can tag a frame while it
        moves (see `seal` and ``loads(tags=...)``)."""
        return Poly1305(self._one_time_key(self._tagger_base(header), index))

    def dumps(self, msgs: list[dict], to: bytes | None = None, *, handshake=False,
              frame_limit=MAX_FRAME_BYTES) -> list:
        """Frames for ``socket.send_multipart(copy=False)``, for the endpoint `to`."""
        header, rest = self.encode(msgs, to, handshake=handshake, frame_limit=frame_limit)
        return [self.seal(header, rest), header, *rest]

    def seal(self, header, rest: list, tags=None) -> bytes:
        """The MAC frame of an `encode`d message; `tags` as in `_mac`."""
        if not rest:
            return self._mac(header, rest, None)
        sizes = [_nbytes(header)]
        sizes.extend(_nbytes(b) for b in rest)
        return self._mac(header, rest, sizes, tags)

    def encode(self, msgs: list[dict], to: bytes | None = None, *, handshake=False,
               frame_limit=MAX_FRAME_BYTES) -> tuple[bytes, list]:
        """(header, frames after it) of a message, unsigned: `seal` makes its MAC.
        Takes the next counter of the stream to `to`.  A handshake message (`hello`,
        `hello-reply`) carries the null epoch and may leave `to` empty; every other
        one needs the epoch and a recipient.  `frame_limit` None: no frame is cut."""
        if type(msgs) is dict:
            msgs = [msgs]
        if to is None:
            to = b""
        if type(to) is not bytes or len(to) > 0xFFFF:
            raise ValueError("recipient must be bytes")
        epoch = self._epoch
        if handshake:
            if any(m.get("op") not in HANDSHAKE_OPS for m in msgs):
                raise ValueError(f"only {sorted(HANDSHAKE_OPS)} go without an epoch")
            epoch = _NO_EPOCH
        elif not to:
            raise ValueError("a message needs a recipient")
        elif epoch is None:
            raise ValueError("no epoch yet: the handshake has not been answered")
        payload = []

        def default(obj):
            if isinstance(obj, Serialized):
                return _encode_serialized(obj, payload, frame_limit)
            if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:
                return obj.item()  # numpy scalars, e.g. sizes and timings, as Python numbers
            raise TypeError(
                f"cannot put {type(obj).__qualname__} in a message; wrap it with serialize()"
            )

        body = msgpack.Packer(default=default, buf_size=PACK_BUFFER).pack(msgs)
        counter = self._counters.get(to)
        if counter is None:
            counter = self._counters[to] = itertools.count(1)
        rest = []
        prefix_len = _ENVELOPE.size + len(self.identity) + len(to)
        if frame_limit is not None and prefix_len + len(body) > frame_limit:
            room = max(frame_limit - prefix_len, 0)
            view = memoryview(body)
            rest = [view[i:i + frame_limit] for i in range(room, len(body), frame_limit)]
            body = view[:room]
        envelope = _ENVELOPE.pack(PROTOCOL_VERSION, epoch, next(counter),
                                  len(self.identity), len(to), len(rest), len(payload))
        header = b"".join((envelope, self.identity, to, body))
        rest.extend(payload)
        return header, rest

    def loads(self, frames: list, sender: bytes | None = None, *,
              check_replay: bool = True, tags=None) -> list[dict]:
        """Authenticate, check and decode one received message.

        `frames` items may be bytes, memoryviews or zmq.Frame (received with copy=False).
        `sender` is the routing id a ROUTER socket saw, when there is one.
        ``check_replay=False`` skips the counter check (and leaves the sender's counters
        alone, so it may run on another thread): only for a message whose freshness the
        caller establishes itself, e.g. by a one-time nonce in its body.  `tags`
        {index after the header: tag}: Poly1305 tags the caller computed over large
        frames as they arrived (with `frame_tagger`), instead of reading them again.
        Raises only `ProtocolError` subclasses for bad input.
        """
        try:
            bufs = [getattr(f, "buffer", f) for f in frames]
            sizes = [len(b) if type(b) is bytes else memoryview(b).nbytes for b in bufs]
        except Exception:
            raise MalformedMessage("frames must be bytes-like") from None
        if len(bufs) < 2:
            raise MalformedMessage(f"a message has at least 2 frames, got {len(bufs)}")
        if self.max_message_bytes is not None:
            total = sum(sizes)
            if total > self.max_message_bytes:
                raise MessageTooLarge(
                    f"message of {total} bytes exceeds the cap of {self.max_message_bytes}"
                )
        if sizes[0] != _MAC_SIZE:
            raise BadSignature("bad MAC frame")
        header, rest = bufs[1], bufs[2:]
        try:
            expected = self._mac(header, rest, sizes[1:], tags)
        except Exception:
            raise MalformedMessage("frames must be contiguous buffers") from None
        if not hmac.compare_digest(expected, bytes(bufs[0])):
            raise BadSignature("message signature does not match")

        try:
            (version, epoch, counter, sender_len, to_len,
             n_body, n_payload) = _ENVELOPE.unpack_from(header)
        except struct.error:
            version = _VERSION.unpack_from(header)[0] if sizes[1] >= _VERSION.size else None
            if version in (None, PROTOCOL_VERSION):
                raise MalformedMessage("header too short") from None
        if version != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"peer speaks protocol version {version}, this endpoint speaks "
                f"version {PROTOCOL_VERSION}"
            )
        start = _ENVELOPE.size
        body_start = start + sender_len + to_len
        if body_start > sizes[1] or n_body + n_payload != len(rest):
            raise MalformedMessage("envelope does not match the frames")
        view = memoryview(header)
        origin = bytes(view[start : start + sender_len])
        to = bytes(view[start + sender_len : body_start])

        handshake = epoch == _NO_EPOCH
        if not handshake and epoch != self._epoch:
            raise WrongEpoch(f"message from {origin!r} belongs to another scheduler start"
                             if self._epoch is not None else
                             f"message from {origin!r} before the handshake")
        if sender is not None:
            seen = sender if type(sender) is bytes else bytes(getattr(sender, "buffer", sender))
            if origin != seen:
                raise WrongSender(f"envelope sender {origin!r} arrived from {seen!r}")
        if to != self.identity and to not in self.aliases and (to or not handshake):
            raise WrongRecipient(f"message for {to!r} arrived at {self.identity!r}")
        if check_replay:
            fresh = self._freshness.get((origin, to))
            if fresh is None:
                fresh = self._freshness[(origin, to)] = _Freshness()
            if not fresh.admit(counter, self.replay_window):
                raise ReplayedMessage(f"replayed or stale message from {origin!r}")

        body = view[body_start:]
        if n_body:
            body = b"".join([body, *rest[:n_body]])
        payload = rest[n_body:]
        try:
            msgs = msgpack.unpackb(
                body,
                use_list=False,
                strict_map_key=False,
                raw=False,
                ext_hook=lambda code, data: (_inline_serialized(data) if code == _EXT_INLINE
                                             else _decode_serialized(code, data, payload)),
            )
        except Exception as e:
            raise MalformedMessage(f"undecodable body from {origin!r}: {type(e).__name__}") from None
        if type(msgs) is not tuple:
            raise MalformedMessage(f"body from {origin!r} is not a list of dicts")
        for m in msgs:
            if type(m) is not dict:
                raise MalformedMessage(f"body from {origin!r} is not a list of dicts")
            if handshake and m.get("op") not in HANDSHAKE_OPS:
                raise WrongEpoch(f"message from {origin!r} without an epoch")
        return list(msgs)
