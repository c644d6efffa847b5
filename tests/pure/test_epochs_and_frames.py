"""The wire's epochs, recipients and frame limit, without sockets.

Every message but the handshake carries its scheduler's epoch and names its
recipient; no frame exceeds MAX_FRAME_BYTES, whatever the size of the values, and a
value cut into frames comes back whole, joined once, only where it is unpickled."""

import numpy as np
import pytest

from dask_ipy import protocol
from dask_ipy.comm import Handshake, hello_reply
from dask_ipy.protocol import (MAX_FRAME_BYTES, BadSignature, Chunked, Serialized, Session,
                               WrongEpoch, WrongRecipient, deserialize, new_epoch,
                               serialize)

pytestmark = pytest.mark.timeout(30)

KEY = b"k" * 32


def pair(epoch=None):
    epoch = epoch or new_epoch()
    return (Session(KEY, b"worker-1", epoch=epoch, aliases=[b"tcp://w1:1"]),
            Session(KEY, b"scheduler", epoch=epoch))


def wire(frames):
    """The frames as a socket delivers them: fresh buffers, none over the limit."""
    assert all(memoryview(f).nbytes <= MAX_FRAME_BYTES for f in frames)
    return [memoryview(bytearray(f)) for f in frames]


# ---------------------------------------------------------------- epochs


def test_a_message_of_another_scheduler_start_is_refused():
    worker, scheduler = pair()
    old = Session(KEY, b"worker-1", epoch=new_epoch())
    with pytest.raises(WrongEpoch, match="another scheduler start"):
        scheduler.loads(old.dumps([{"op": "run"}], b"scheduler"))
    # Refused before its counter was looked at: the same counter is still fresh.
    assert scheduler.loads(worker.dumps([{"op": "run"}], b"scheduler")) == [{"op": "run"}]


def test_without_an_epoch_only_the_handshake_travels():
    worker, scheduler = pair()
    stranger = Session(KEY, b"client-9")                       # no epoch known yet
    with pytest.raises(ValueError, match="no epoch"):
        stranger.dumps([{"op": "register-client"}], b"scheduler")
    with pytest.raises(ValueError, match="go without an epoch"):
        stranger.dumps([{"op": "register-client"}], b"", handshake=True)
    with pytest.raises(WrongEpoch, match="before the handshake"):
        stranger.loads(worker.dumps([{"op": "x"}], b"client-9"))
    hello = stranger.dumps([{"op": "hello", "nonce": b"n" * 16}], b"", handshake=True)
    assert scheduler.loads(hello) == [{"op": "hello", "nonce": b"n" * 16}]


def test_the_handshake_tells_the_epoch_only_in_answer_to_the_latest_hello():
    scheduler = Session(KEY, b"scheduler", epoch=new_epoch())
    client = Session(KEY, b"client-1")
    shake = Handshake()

    def answer(hello_frames):
        [hello] = scheduler.loads(hello_frames)
        reply = hello_reply(scheduler, hello, b"scheduler")
        [msg] = client.loads(scheduler.dumps([reply], b"client-1", handshake=True))
        return msg

    first = answer(shake.hello(client))
    second = answer(shake.hello(client))
    assert shake.answer(first) is None               # an older hello's reply
    assert shake.answer(second) == (scheduler.epoch, b"scheduler")
    assert shake.answer(second) is None              # and only once
    assert hello_reply(scheduler, {"op": "hello", "nonce": b"short"}, b"s") is None


# ---------------------------------------------------------------- recipients


def test_a_message_names_its_recipient_and_only_that_one_takes_it():
    worker, scheduler = pair()
    with pytest.raises(ValueError, match="recipient"):
        worker.dumps([{"op": "x"}])
    with pytest.raises(WrongRecipient):
        scheduler.loads(worker.dumps([{"op": "x"}], b"worker-2"))
    # A worker answers to its identity and to its address (peers know it by that).
    assert worker.loads(scheduler.dumps([{"op": "x"}], b"tcp://w1:1")) == [{"op": "x"}]
    with pytest.raises(WrongRecipient):
        worker.loads(scheduler.dumps([{"op": "x"}], b"tcp://w2:1"))


def test_an_epoch_needs_sixteen_random_bytes():
    for bad in (b"", b"x" * 15, bytes(16), "e" * 16):
        with pytest.raises(ValueError):
            Session(KEY, b"s", epoch=bad)
    assert len({new_epoch() for _ in range(100)}) == 100


# ---------------------------------------------------------------- frames


def test_a_large_buffer_travels_in_frames_of_at_most_the_limit_and_comes_back_whole():
    worker, scheduler = pair()
    arr = np.arange(5 * MAX_FRAME_BYTES // 8 + 1000, dtype="f8")
    frames = worker.dumps([{"op": "data", "v": serialize(arr)}], b"scheduler")
    assert len(frames) == 2 + 6
    # Cut without a copy: every payload frame is a view of the array.
    assert all(np.shares_memory(np.frombuffer(f, "u1"), arr) for f in frames[2:])
    [msg] = scheduler.loads(wire(frames))
    [chunked] = msg["v"].frames[1:]
    assert type(chunked) is Chunked and chunked.nbytes == arr.nbytes
    out = deserialize(msg["v"])
    assert np.array_equal(out, arr) and out.flags.writeable
    assert type(msg["v"].frames[1]) is not Chunked        # joined once, kept joined
    assert np.array_equal(deserialize(msg["v"]), arr)


def test_a_forwarder_passes_frames_on_without_joining_them():
    """The scheduler forwards what it got, frame for frame, never unpickling."""
    client, scheduler = pair()
    worker = Session(KEY, b"worker-2", epoch=scheduler.epoch)
    arr = np.ones(3 * MAX_FRAME_BYTES // 8)
    [at_scheduler] = scheduler.loads(wire(client.dumps([{"v": serialize(arr)}],
                                                       b"scheduler")))
    parts = at_scheduler["v"].frames[1].parts
    onward = scheduler.dumps([at_scheduler], b"worker-2")
    assert all(any(np.shares_memory(np.frombuffer(f, "u1"), np.frombuffer(p, "u1"))
                   for p in parts) for f in onward[2:])
    [at_worker] = worker.loads(wire(onward))
    assert np.array_equal(deserialize(at_worker["v"]), arr)


def test_joining_lets_go_of_each_part_once_copied():
    import weakref

    parts = [np.full(10, 97, "u1"), np.full(5, 98, "u1")]
    gone = [weakref.ref(p) for p in parts]
    chunked = Chunked(parts)
    del parts
    joined = chunked.join()
    assert bytes(joined) == b"a" * 10 + b"b" * 5
    assert chunked.parts == [joined] and all(ref() is None for ref in gone)


def test_a_large_body_continues_in_body_frames_that_the_mac_covers():
    worker, scheduler = pair()
    tasks = [(f"task-{i}", b"x" * 100, [f"task-{i - 1}"], i) for i in range(30_000)]
    frames = worker.dumps([{"op": "update-graph", "tasks": tasks}], b"scheduler")
    assert len(frames) > 3                                   # header plus body frames
    [msg] = scheduler.loads(wire(frames))
    assert len(msg["tasks"]) == 30_000 and msg["tasks"][-1][0] == "task-29999"
    tampered = wire(worker.dumps([{"op": "update-graph", "tasks": tasks}], b"scheduler"))
    tampered[2][100] ^= 1
    with pytest.raises(BadSignature):
        scheduler.loads(tampered)


def test_without_a_frame_limit_buffers_keep_one_frame_each():
    """For the bulk side channels, which have no ZeroMQ in between."""
    worker, scheduler = pair()
    arr = np.ones(3 * MAX_FRAME_BYTES // 8)
    header, rest = worker.encode([{"v": serialize(arr)}], b"scheduler", frame_limit=None)
    assert len(rest) == 1 and memoryview(rest[0]).nbytes == arr.nbytes
    [msg] = scheduler.loads([worker.seal(header, rest), header, *rest])
    assert np.array_equal(deserialize(msg["v"]), arr)


def test_a_serialized_with_chunked_frames_pickles_whole():
    import pickle

    s = Serialized([b"head", Chunked([b"ab", b"cd"])])
    assert s.nbytes == 8 and s == Serialized([b"head", b"abcd"])
    assert pickle.loads(pickle.dumps(s, protocol=5)) == Serialized([b"head", b"abcd"])


def test_references_to_missing_frames_are_malformed():
    worker, scheduler = pair()
    frames = worker.dumps([{"v": serialize(np.ones(3 * MAX_FRAME_BYTES // 8))}],
                          b"scheduler")
    header = bytearray(frames[1])
    # One buffer in 3 frames; announce 5 frames for it, as a key holder might.
    count_at = bytes(header).rindex((3).to_bytes(4, "little"))
    header[count_at] = 5
    forged = [worker._mac(bytes(header), frames[2:],
                          [len(header)] + [memoryview(f).nbytes for f in frames[2:]]),
              bytes(header), *frames[2:]]
    with pytest.raises(protocol.MalformedMessage):
        scheduler.loads(forged)


def test_small_and_large_values_keep_their_wire_form_and_come_back_as_serialized():
    import msgpack

    sender, receiver = pair()
    small, large = serialize(3), serialize(np.arange(20_000))
    header, rest = sender.encode([{"op": "x", "small": small, "large": large}], b"scheduler")
    # The small value is inlined exactly as msgpack.ExtType(1, its pickle) would be.
    assert msgpack.packb(msgpack.ExtType(1, small.frames[0])) in bytes(header)
    frames = [sender.seal(header, rest), header, *rest]
    [msg] = receiver.loads(wire(frames), sender=b"worker-1")
    assert type(msg["small"]) is Serialized and type(msg["large"]) is Serialized
    assert msg["small"] == small and deserialize(msg["small"]) == 3
    assert (deserialize(msg["large"]) == np.arange(20_000)).all()
