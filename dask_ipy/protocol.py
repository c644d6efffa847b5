"""Wire format: signed batches of small dicts, with pickled payloads as zero-copy frames.

A wire message is a list of frames that goes straight to ``send_multipart(copy=False)``::

    [mac, header, payload_0, payload_1, ...]

    mac     32 bytes: keyed BLAKE3 over the header, or, when there are payload frames,
            over (frame count, every frame length, header, payloads) with another key;
            a payload frame of 1 MiB or more enters as its Poly1305 tag under a
            one-time key derived from the (unique) header and the frame's index
    header  fixed envelope, then the sender and recipient ids, then the msgpack body
            envelope  <u16 version><u64 counter><u16 len(sender)><u16 len(to)><u32 n_payload>
            body      msgpack list of dicts (the messages of this batch)
    payload the frames of `Serialized` values too big to inline, never copied or joined

Rules, in the order ``Session.loads`` applies them (nothing is decoded before the MAC):

1. the total size is capped before any hashing (`MessageTooLarge`);
2. the MAC covers every frame, each length-prefixed, so frames cannot be swapped,
   dropped, added or re-split without detection (`BadSignature`);
3. the version sits at byte 0 of the header in every version, so a peer speaking another
   version is named as such rather than reported as garbage (`VersionMismatch`);
4. the envelope's sender must be the routing id the ROUTER saw (`WrongSender`), the
   recipient must be empty or us (`WrongRecipient`), and the sender's counter must be
   fresh (`ReplayedMessage`, see below);
5. only then is the body decoded (`MalformedMessage` on any structural error).

`Serialized` values travel as msgpack ExtType: inlined when small, otherwise as
references (start index, count) into the payload frames. ``loads`` hands them back as
`Serialized` over the received buffers; unpickling is left to whoever needs the object,
so the scheduler forwards user data without ever running pickle on it.

Replay protection. A sender numbers its messages with one counter per recipient field,
from 1 (identities are random per endpoint, so a (sender, recipient, counter) triple is
never reused).  Each such stream travels one socket, in order.  A receiver accepts each
counter of a stream at most once, and nothing older than the last `replay_window`
counters it accepted from that stream: a little slack, never needed by the shells;
``replay_window=0`` gives the strict rule.  A message with an empty recipient can be
replayed once to each *other* endpoint of the cluster; set ``to`` whenever the peer is
known.

No sockets, threads, clocks or event loops here; a Session belongs to one thread.
"""

from __future__ import annotations

import hmac
import itertools
from collections import deque
import pickle
import struct

import blake3
from cryptography.hazmat.primitives.poly1305 import Poly1305
import cloudpickle
import msgpack

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_MESSAGE_BYTES",
    "REPLAY_WINDOW",
    "ProtocolError",
    "BadSignature",
    "ReplayedMessage",
    "MalformedMessage",
    "VersionMismatch",
    "MessageTooLarge",
    "WrongRecipient",
    "WrongSender",
    "SerializationError",
    "Serialized",
    "serialize",
    "deserialize",
    "Session",
]

PROTOCOL_VERSION: int = 1
MAX_MESSAGE_BYTES: int = 2**31
# Counters remembered per sender: how far a message may be overtaken by later ones.
REPLAY_WINDOW: int = 256

# Below this size a buffer is cheaper to copy than to give its own frame.
INLINE_LIMIT = 64 * 1024

#: Payload frames this large are authenticated through a Poly1305 tag (see `_mac`).
POLY1305_FROM = 1 << 20
# The MAC is single-threaded on purpose: BLAKE3's multithreaded mode starts a global
# thread pool that a forked child inherits without its threads, so the child's first
# large hash hangs forever. One thread already runs at memory speed, and blake3
# releases the GIL, so hashing overlaps the other Python threads anyway.

_MAC_SIZE = 32
_MAC_CONTEXT = "dask_ipy protocol message authentication key"
_ENVELOPE = struct.Struct("<HQHHI")  # version, counter, len(sender), len(to), n_payload
_VERSION = struct.Struct("<H")
_REF = struct.Struct("<II")  # first payload index, number of frames

# ExtType codes for Serialized values in the msgpack body.
_EXT_INLINE = 1  # data: the single frame
_EXT_REFS = 2  # data: _REF; every frame is a payload frame
_EXT_HEAD_INLINE = 3  # data: _REF + frame 0; frames[1:] are payload frames


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


class WrongRecipient(ProtocolError):
    """The message was addressed to another endpoint."""


class WrongSender(ProtocolError):
    """The envelope's sender is not the peer the socket saw."""


class SerializationError(TypeError):
    """An object could not be pickled, even by value."""


def _buffer(frame):
    """The buffer behind a frame: zmq.Frame exposes it as `.buffer`."""
    return getattr(frame, "buffer", frame)


def _nbytes(buf) -> int:
    if type(buf) is bytes:
        return len(buf)
    return memoryview(buf).nbytes


def _byte_view(frame) -> memoryview:
    return memoryview(_buffer(frame)).cast("B")


class Serialized:
    """An opaque pickled payload: frames[0] is the pickle stream (protocol 5), frames[1:]
    out-of-band buffers (numpy, bytes...). The scheduler forwards these without ever
    unpickling them."""

    __slots__ = ("frames",)

    def __init__(self, frames: list):
        frames = list(frames)
        if not frames:
            raise ValueError("Serialized needs at least the pickle stream frame")
        self.frames = frames

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(_buffer(f)) for f in self.frames)

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
            frames = [pickle.PickleBuffer(_buffer(f)) for f in self.frames]
        else:
            frames = [bytes(_byte_view(f)) for f in self.frames]
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
        kind = type(obj)
        raise SerializationError(
            f"cannot serialize object of type {kind.__module__}.{kind.__qualname__}: "
            f"{type(e).__name__}: {e}"
        ) from e


def deserialize(s: Serialized) -> object:
    """Unpickle a `Serialized`; out-of-band frames are used in place, not copied."""
    if not isinstance(s, Serialized):
        raise TypeError(f"deserialize expects Serialized, got {type(s).__name__}")
    frames = [_buffer(f) for f in s.frames]
    return pickle.loads(frames[0], buffers=frames[1:])


def _mac_keys(key: bytes) -> tuple[bytes, bytes]:
    """(key for header-only messages, key for messages with payload frames).

    Always derived, never the raw secret: the same secret also seeds the CURVE keypair
    (security.py) and distinct contexts keep the uses independent. Two keys let the
    common header-only message skip the length prefix: a MAC made for one frame layout
    can never verify under the other.
    """
    return (
        blake3.blake3(key, derive_key_context=_MAC_CONTEXT + " (header only)").digest(),
        blake3.blake3(key, derive_key_context=_MAC_CONTEXT + " (with payload)").digest(),
    )


def _frame_key(key: bytes) -> bytes:
    """The key from which one-time Poly1305 keys for large frames are drawn."""
    return blake3.blake3(key, derive_key_context=_MAC_CONTEXT + " (frame keys)").digest()


def _encode_serialized(s: Serialized, payload: list) -> msgpack.ExtType:
    frames = s.frames
    head = _buffer(frames[0])
    if _nbytes(head) < INLINE_LIMIT:
        head = bytes(head) if type(head) is bytes else bytes(_byte_view(head))
        if len(frames) == 1:
            return msgpack.ExtType(_EXT_INLINE, head)
        ref = _REF.pack(len(payload), len(frames) - 1)
        payload.extend(_buffer(f) for f in frames[1:])
        return msgpack.ExtType(_EXT_HEAD_INLINE, ref + head)
    ref = _REF.pack(len(payload), len(frames))
    payload.extend(_buffer(f) for f in frames)
    return msgpack.ExtType(_EXT_REFS, ref)


def _decode_serialized(code: int, data: bytes, payload: list):
    if code == _EXT_INLINE:
        return Serialized([data])
    if code == _EXT_REFS or code == _EXT_HEAD_INLINE:
        start, count = _REF.unpack_from(data)
        if start + count > len(payload) or (code == _EXT_REFS and count == 0):
            raise ValueError("Serialized refers to missing payload frames")
        frames = payload[start : start + count]
        if code == _EXT_HEAD_INLINE:
            frames.insert(0, data[_REF.size :])
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

    State: the next counter to sign with, and ``{sender identity: _Freshness}`` for
    replay protection (at most `replay_window` counters per sender). ``dumps`` and
    ``loads`` may be called from different threads.
    """

    def __init__(
        self,
        key: bytes,
        identity: bytes,
        *,
        max_message_bytes=MAX_MESSAGE_BYTES,
        replay_window=REPLAY_WINDOW,
    ):
        """`key` is the shared secret (any length; a 32-byte MAC key is derived from it),
        `identity` this endpoint's id, `max_message_bytes` the cap on received messages,
        `replay_window` how many counters per sender to remember (0: strictly increasing)."""
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ValueError("Session key must be non-empty bytes")
        if not isinstance(identity, bytes) or not identity:
            raise ValueError("Session identity must be non-empty bytes")
        if len(identity) > 0xFFFF:
            raise ValueError("Session identity is too long")
        self.identity = identity
        self.max_message_bytes = int(max_message_bytes)
        self.replay_window = int(replay_window)
        header_key, payload_key = _mac_keys(bytes(key))
        self._header_hasher = blake3.blake3(key=header_key)
        self._payload_hasher = blake3.blake3(key=payload_key)
        self._frame_key_hasher = blake3.blake3(key=_frame_key(bytes(key)))
        # One counter per recipient field: each (sender, recipient) stream then travels
        # one socket, in order, so a message held up behind others on one socket can
        # never look stale to a receiver that got later messages on another socket.
        # Identities are random per endpoint, so counting from 1 never repeats a
        # (sender, recipient, counter).  A Session is used by one thread.
        self._counters: dict[bytes, itertools.count] = {}
        self._freshness: dict[tuple, _Freshness] = {}

    def __repr__(self):
        return f"Session(identity={self.identity!r})"

    def _mac(self, header, payload: list, sizes: list, tags=None) -> bytes:
        """`sizes` are the byte sizes of header and payload frames, in order; `tags`
        {payload index: Poly1305 tag} those of large frames already computed."""
        if not payload:
            h = self._header_hasher.copy()
            h.update(header)
            return h.digest()
        h = self._payload_hasher.copy()
        h.update(struct.pack(f"<{len(sizes) + 1}Q", len(sizes), *sizes))
        h.update(header)
        for i, buf in enumerate(payload):
            if sizes[i + 1] < POLY1305_FROM:
                h.update(buf)
            elif tags is not None and i in tags:
                h.update(tags[i])
            else:
                tagger = self.frame_tagger(header, i)
                tagger.update(buf)
                h.update(tagger.finalize())
        return h.digest()

    def frame_tagger(self, header, index: int) -> Poly1305:
        """The Poly1305 state for payload frame ``index`` of the message with ``header``
        (frames of `POLY1305_FROM` bytes or more).

        A large frame enters the MAC as its Poly1305 tag (three times BLAKE3's speed on
        one core) under a one-time key drawn from the header, which is unique (sender,
        recipient, counter).  Exposed so that a stream can tag a frame while it moves
        (see `seal` and ``loads(tags=...)``)."""
        otk = self._frame_key_hasher.copy()
        otk.update(header)
        otk.update(index.to_bytes(4, "little"))
        return Poly1305(otk.digest())

    def dumps(self, msgs: list[dict], to: bytes = b"") -> list:
        """Frames for ``socket.send_multipart(copy=False)``; `to` b"" means any recipient."""
        header, payload = self.encode(msgs, to)
        return [self.seal(header, payload), header, *payload]

    def seal(self, header, payload: list, tags=None) -> bytes:
        """The MAC frame of an `encode`d message; `tags` as in `_mac`."""
        if not payload:
            return self._mac(header, payload, None)
        sizes = [len(header)]
        sizes.extend(_nbytes(b) for b in payload)
        return self._mac(header, payload, sizes, tags)

    def encode(self, msgs: list[dict], to: bytes = b"") -> tuple[bytes, list]:
        """(header, payload frames) of a message, unsigned: `seal` makes its MAC.
        Takes the next counter of the stream to ``to``."""
        if isinstance(msgs, dict):
            msgs = [msgs]
        if type(to) is not bytes or len(to) > 0xFFFF:
            raise ValueError("recipient must be bytes")
        payload = []

        def default(obj):
            if isinstance(obj, Serialized):
                return _encode_serialized(obj, payload)
            if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:
                return obj.item()  # numpy scalars, e.g. sizes and timings, as Python numbers
            raise TypeError(
                f"cannot put {type(obj).__qualname__} in a message; wrap it with serialize()"
            )

        body = msgpack.packb(msgs, default=default)
        counter = self._counters.get(to)
        if counter is None:
            counter = self._counters[to] = itertools.count(1)
        envelope = _ENVELOPE.pack(
            PROTOCOL_VERSION, next(counter), len(self.identity), len(to), len(payload)
        )
        return b"".join((envelope, self.identity, to, body)), payload

    def loads(self, frames: list, sender: bytes | None = None, *,
              check_replay: bool = True, tags=None) -> list[dict]:
        """Authenticate, check and decode one received message.

        `frames` items may be bytes, memoryviews or zmq.Frame (received with copy=False).
        `sender` is the routing id a ROUTER socket saw, when there is one.
        ``check_replay=False`` skips the counter check (and leaves the sender's counters
        alone, so it may run on another thread): only for a message whose freshness the
        caller establishes itself, e.g. by a one-time nonce in its body.  `tags`
        {payload index: tag}: Poly1305 tags the caller computed over large frames as
        they arrived (with `frame_tagger`), instead of reading them again.  Raises only
        `ProtocolError` subclasses for bad input.
        """
        try:
            bufs = [getattr(f, "buffer", f) for f in frames]
            sizes = [len(b) if type(b) is bytes else memoryview(b).nbytes for b in bufs]
        except Exception:
            raise MalformedMessage("frames must be bytes-like") from None
        if len(bufs) < 2:
            raise MalformedMessage(f"a message has at least 2 frames, got {len(bufs)}")
        total = sum(sizes)
        if total > self.max_message_bytes:
            raise MessageTooLarge(
                f"message of {total} bytes exceeds the cap of {self.max_message_bytes}"
            )
        if sizes[0] != _MAC_SIZE:
            raise BadSignature("bad MAC frame")
        header, payload = bufs[1], bufs[2:]
        try:
            expected = self._mac(header, payload, sizes[1:], tags)
        except Exception:
            raise MalformedMessage("frames must be contiguous buffers") from None
        if not hmac.compare_digest(expected, bytes(bufs[0])):
            raise BadSignature("message signature does not match")

        try:
            version, counter, sender_len, to_len, n_payload = _ENVELOPE.unpack_from(header)
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
        if body_start > sizes[1] or n_payload != len(payload):
            raise MalformedMessage("envelope does not match the frames")
        view = memoryview(header)
        origin = bytes(view[start : start + sender_len])
        to = bytes(view[start + sender_len : body_start])

        if sender is not None:
            seen = sender if type(sender) is bytes else bytes(getattr(sender, "buffer", sender))
            if origin != seen:
                raise WrongSender(f"envelope sender {origin!r} arrived from {seen!r}")
        if to and to != self.identity:
            raise WrongRecipient(f"message for {to!r} arrived at {self.identity!r}")
        if check_replay:
            fresh = self._freshness.get((origin, to))
            if fresh is None:
                fresh = self._freshness[(origin, to)] = _Freshness()
            if not fresh.admit(counter, self.replay_window):
                raise ReplayedMessage(f"replayed or stale message from {origin!r}")

        try:
            msgs = msgpack.unpackb(
                view[body_start:],
                use_list=False,
                strict_map_key=False,
                raw=False,
                ext_hook=lambda code, data: _decode_serialized(code, data, payload),
            )
        except Exception as e:
            raise MalformedMessage(f"undecodable body from {origin!r}: {type(e).__name__}") from None
        if type(msgs) is not tuple:
            raise MalformedMessage(f"body from {origin!r} is not a list of dicts")
        for m in msgs:
            if type(m) is not dict:
                raise MalformedMessage(f"body from {origin!r} is not a list of dicts")
        return list(msgs)
