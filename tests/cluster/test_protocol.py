"""Wire protocol: round trips, zero copy, and every way a message is rejected."""

import contextlib
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest
import zmq

from dask_ipy import protocol
from dask_ipy.comm import recv_frames
from helpers import CreateFileOnLoad
from dask_ipy.protocol import (
    BadSignature,
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    ReplayedMessage,
    SerializationError,
    Serialized,
    Session,
    VersionMismatch,
    WrongRecipient,
    WrongSender,
    deserialize,
    serialize,
)

pytestmark = pytest.mark.timeout(30)

KEY = b"k" * 32
EPOCH = b"e" * 16            # one start of a scheduler


@pytest.fixture
def worker():
    return Session(KEY, b"worker-1", epoch=EPOCH)


@pytest.fixture
def scheduler():
    return Session(KEY, b"scheduler", epoch=EPOCH)


def received(frames):
    """Copies of the frames in fresh writable buffers, as a socket would deliver them."""
    return [memoryview(bytearray(f)) for f in frames]


def one_payload_message(session, fill):
    value = Serialized([b"head", np.full(100_000, fill, dtype="u1")])
    return session.dumps([{"op": "data", "value": value}], b"scheduler")


# --- round trips -------------------------------------------------------------------


def test_round_trip_nested_values(worker, scheduler):
    msg = {
        "op": "update-graph",
        "keys": [("x", 0), ("x", 1), "y", 3, 2.5],
        "deps": {("x", 0): [("y", 1)], 3: [], 2.5: None, "s": {"nested": [True, False]}},
        "blob": b"\x00\xff" * 10,
        "text": "héllo",
        "none": None,
        "big": 2**63 - 1,
        "neg": -(2**63),
    }
    [out] = scheduler.loads(received(worker.dumps([msg], b"scheduler")))
    assert out["keys"] == (("x", 0), ("x", 1), "y", 3, 2.5)
    assert out["deps"][("x", 0)] == (("y", 1),)
    assert out["deps"][3] == () and out["deps"][2.5] is None
    assert out["deps"]["s"] == {"nested": (True, False)}
    assert out["blob"] == b"\x00\xff" * 10 and type(out["blob"]) is bytes
    assert out["text"] == "héllo"
    assert out["none"] is None and out["big"] == 2**63 - 1 and out["neg"] == -(2**63)
    assert {k: 1 for k in out["keys"]}  # tuples come back hashable


def test_round_trip_batch_keeps_order(worker, scheduler):
    msgs = [{"op": "task-finished", "key": ("x", i), "nbytes": i} for i in range(100)]
    assert scheduler.loads(worker.dumps(msgs, b"scheduler")) == msgs


def test_single_dict_is_a_batch_of_one(worker, scheduler):
    assert scheduler.loads(worker.dumps({"op": "ping"}, b"scheduler")) == [{"op": "ping"}]


def test_small_serialized_is_inlined(worker, scheduler):
    value = serialize({"a": [1, 2, 3]})
    frames = worker.dumps([{"op": "x", "value": value}], b"scheduler")
    assert len(frames) == 2
    [out] = scheduler.loads(frames)
    assert isinstance(out["value"], Serialized)
    assert out["value"] == value
    assert deserialize(out["value"]) == {"a": [1, 2, 3]}


def test_big_array_is_out_of_band_and_zero_copy(worker, scheduler):
    arr = np.arange(100_000, dtype="f8")            # under MAX_FRAME_BYTES: one frame
    frames = worker.dumps([{"op": "data", "key": ("x", 0), "value": serialize(arr)}], b"scheduler")
    assert len(frames) == 3  # the small pickle stream rides inline in the header
    assert np.shares_memory(np.frombuffer(frames[2], "u1"), arr)  # sent without a copy

    wire = received(frames)
    [out] = scheduler.loads(wire)
    assert out["value"].nbytes >= arr.nbytes
    result = deserialize(out["value"])
    assert np.array_equal(result, arr)
    assert np.shares_memory(result, np.frombuffer(wire[2], "u1"))
    assert result.flags.writeable


def test_many_serialized_values_map_to_their_frames(worker, scheduler):
    arrays = [np.full(20_000 * (i + 1), i, dtype="u1") for i in range(5)]
    values = [serialize(a) for a in arrays]
    big_stream = serialize(list(range(30_000)))  # pickle stream itself over the inline limit
    assert len(big_stream.frames) == 1 and big_stream.nbytes >= protocol.INLINE_LIMIT
    msgs = [{"op": "data", "key": i, "value": v} for i, v in enumerate(values)]
    msgs.append({"op": "data", "key": "list", "value": big_stream, "more": [values[0], 1]})
    out = scheduler.loads(received(worker.dumps(msgs, b"scheduler")))
    for i, a in enumerate(arrays):
        assert np.array_equal(deserialize(out[i]["value"]), a)
    assert deserialize(out[5]["value"]) == list(range(30_000))
    assert np.array_equal(deserialize(out[5]["more"][0]), arrays[0])


def test_serialized_is_forwarded_without_unpickling(tmp_path, worker, scheduler):
    marker = tmp_path / "ran"
    value = Serialized([pickle.dumps(CreateFileOnLoad(str(marker)))])
    client = Session(KEY, b"client-1", epoch=EPOCH)
    [at_scheduler] = scheduler.loads(client.dumps([{"op": "x", "value": value}], b"scheduler"))
    [at_worker] = worker.loads(scheduler.dumps([at_scheduler], to=b"worker-1"))
    assert not marker.exists()
    assert at_worker["value"] == value
    deserialize(at_worker["value"])
    assert marker.exists()


@contextlib.contextmanager
def connected_pair(routing_id):
    """A ROUTER and a DEALER named ``routing_id`` connected in this process; closed
    afterwards."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        for s in (router, dealer):
            s.linger = 0
        dealer.routing_id = routing_id
        router.bind(f"inproc://pair-{routing_id.decode()}")
        dealer.connect(f"inproc://pair-{routing_id.decode()}")
        yield router, dealer
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


def test_round_trip_through_zmq_frames():
    with connected_pair(b"worker-1") as (router, dealer):
        sender, receiver = Session(KEY, b"worker-1", epoch=EPOCH), Session(KEY, b"scheduler", epoch=EPOCH)
        arr = np.arange(100_000, dtype="i8")
        dealer.send_multipart(sender.dumps([{"op": "data", "v": serialize(arr)}],
                                           b"scheduler"), copy=False)
        assert router.poll(5000)
        routing_id, *frames = router.recv_multipart(copy=False)
        [out] = receiver.loads(frames, sender=routing_id)
        result = deserialize(out["v"])
        assert np.array_equal(result, arr)
        assert np.shares_memory(result, np.frombuffer(frames[2].buffer, "u1"))


def test_recv_frames_takes_one_whole_message_at_a_time():
    with connected_pair(b"peer") as (router, dealer):
        dealer.send_multipart([b"a", b"bb", b"ccc"])
        dealer.send(b"alone")
        assert router.poll(5000)
        assert [f.bytes for f in recv_frames(router)] == [b"peer", b"a", b"bb", b"ccc"]
        assert router.poll(5000)
        assert [f.bytes for f in recv_frames(router)] == [b"peer", b"alone"]
        with pytest.raises(zmq.Again):
            recv_frames(router)


def test_numpy_scalars_travel_as_numbers(worker, scheduler):
    msg = {"nbytes": np.int64(800), "duration": np.float32(0.5), "ok": np.bool_(True)}
    [out] = scheduler.loads(worker.dumps([msg], b"scheduler"))
    assert out == {"nbytes": 800, "duration": 0.5, "ok": True}
    assert type(out["nbytes"]) is int


def test_dumps_refuses_non_message_types(worker):
    with pytest.raises(TypeError, match="ndarray"):
        worker.dumps([{"op": "x", "v": np.zeros(3)}], b"scheduler")
    with pytest.raises(TypeError, match="set"):
        worker.dumps([{"op": "x", "v": {1, 2}}], b"scheduler")
    with pytest.raises(ValueError):
        worker.dumps([{"op": "x"}], to="scheduler")


# --- rejections --------------------------------------------------------------------


def test_wrong_key_is_rejected(scheduler):
    other = Session(b"x" * 32, b"worker-1", epoch=EPOCH)
    with pytest.raises(BadSignature):
        scheduler.loads(other.dumps([{"op": "x"}], b"scheduler"))


def test_forged_mac_is_rejected(worker, scheduler):
    frames = worker.dumps([{"op": "x"}], b"scheduler")
    with pytest.raises(BadSignature):
        scheduler.loads([b"\x00" * 32, *frames[1:]])
    with pytest.raises(BadSignature):
        scheduler.loads([frames[0][:16], *frames[1:]])


def test_tampered_header_is_rejected(worker, scheduler):
    frames = worker.dumps([{"op": "x", "n": 1}], b"scheduler")
    header = bytearray(frames[1])
    header[-1] ^= 1
    with pytest.raises(BadSignature):
        scheduler.loads([frames[0], bytes(header)])


def test_tampered_payload_is_rejected(worker, scheduler):
    frames = one_payload_message(worker, 1)
    payload = bytearray(frames[2])
    payload[50_000] ^= 1
    with pytest.raises(BadSignature):
        scheduler.loads([frames[0], frames[1], payload])


def test_payload_swapped_between_messages_is_rejected(worker, scheduler):
    a, b = one_payload_message(worker, 1), one_payload_message(worker, 2)
    assert len(a) == len(b) == 3 and len(a[2]) == len(b[2])
    with pytest.raises(BadSignature):
        scheduler.loads([a[0], a[1], b[2]])


def test_resplit_payload_is_rejected(worker, scheduler):
    frames = worker.dumps([{"v": Serialized([b"h", b"a" * 70_000, b"b" * 70_000])}], b"scheduler")
    joined = bytes(frames[2]) + bytes(frames[3])
    with pytest.raises(BadSignature):
        scheduler.loads([frames[0], frames[1], joined[:60_000], joined[60_000:]])


def test_truncated_and_extended_frame_lists_are_rejected(worker, scheduler):
    frames = one_payload_message(worker, 1)
    with pytest.raises(BadSignature):
        scheduler.loads(frames[:-1])
    with pytest.raises(BadSignature):
        scheduler.loads([*frames, b"extra"])
    with pytest.raises(BadSignature):
        scheduler.loads([*worker.dumps([{"op": "x"}], b"scheduler"), b"extra"])
    with pytest.raises(MalformedMessage):
        scheduler.loads(frames[:1])
    with pytest.raises(MalformedMessage):
        scheduler.loads([])


def test_replay_is_rejected(worker, scheduler):
    first, second = worker.dumps([{"op": "a"}], b"scheduler"), worker.dumps([{"op": "b"}], b"scheduler")
    scheduler.loads(first)
    with pytest.raises(ReplayedMessage):
        scheduler.loads(first)
    scheduler.loads(second)
    with pytest.raises(ReplayedMessage):
        scheduler.loads(first)
    with pytest.raises(ReplayedMessage):
        scheduler.loads(received(second))


def test_overtaken_message_is_accepted_once(worker, scheduler):
    """Two connections between one pair of endpoints may reorder messages."""
    earlier, later = worker.dumps([{"op": "a"}], b"scheduler"), worker.dumps([{"op": "b"}], b"scheduler")
    assert scheduler.loads(later) == [{"op": "b"}]
    assert scheduler.loads(earlier) == [{"op": "a"}]
    with pytest.raises(ReplayedMessage):
        scheduler.loads(earlier)


def test_messages_older_than_the_window_are_rejected(worker):
    receiver = Session(KEY, b"scheduler", replay_window=4, epoch=EPOCH)
    messages = [worker.dumps([{"i": i}], b"scheduler") for i in range(7)]
    for frames in messages[2:]:
        receiver.loads(frames)
    for frames in messages:  # duplicates, or overtaken by more than the window
        with pytest.raises(ReplayedMessage):
            receiver.loads(frames)
    assert len(receiver._freshness[(b"worker-1", b"scheduler")].seen) == 4


def test_strict_replay_window(worker):
    receiver = Session(KEY, b"scheduler", replay_window=0, epoch=EPOCH)
    earlier, later = worker.dumps([{"op": "a"}], b"scheduler"), worker.dumps([{"op": "b"}], b"scheduler")
    receiver.loads(later)
    with pytest.raises(ReplayedMessage):
        receiver.loads(earlier)
    receiver.loads(worker.dumps([{"op": "c"}], b"scheduler"))


def test_replay_memory_is_bounded(worker, scheduler):
    for i in range(3 * protocol.REPLAY_WINDOW):
        scheduler.loads(worker.dumps([{"i": i}], b"scheduler"))
    fresh = scheduler._freshness[(b"worker-1", b"scheduler")]
    assert len(fresh.seen) == len(fresh.order) == protocol.REPLAY_WINDOW


def test_counters_are_tracked_per_sender(scheduler):
    """Two senders number their messages alike: one's counter does not make the
    other's stale, and a replay is refused for the sender it came from only."""
    a, b = Session(KEY, b"a", epoch=EPOCH), Session(KEY, b"b", epoch=EPOCH)
    early_b = b.dumps([{"op": "from-b"}], b"scheduler")
    first_a = a.dumps([{"op": "from-a"}], b"scheduler")
    assert scheduler.loads(first_a) == [{"op": "from-a"}]
    assert scheduler.loads(early_b) == [{"op": "from-b"}]
    for frames in (first_a, early_b):
        with pytest.raises(ReplayedMessage):
            scheduler.loads(frames)
    assert scheduler.loads(b.dumps([{"op": "b-again"}], b"scheduler")) == [{"op": "b-again"}]
    assert set(scheduler._freshness) == {(b"a", b"scheduler"), (b"b", b"scheduler")}


def test_oversize_is_rejected_before_hashing(worker):
    small = Session(KEY, b"scheduler", max_message_bytes=10_000, epoch=EPOCH)
    frames = one_payload_message(worker, 1)
    with pytest.raises(MessageTooLarge):
        small.loads(frames)
    with pytest.raises(MessageTooLarge):  # a bogus MAC is never even checked
        small.loads([b"\x00" * 32, frames[1], frames[2]])
    assert small.loads(worker.dumps([{"op": "x"}], b"scheduler")) == [{"op": "x"}]


def test_version_mismatch_names_both_versions(worker, scheduler, monkeypatch):
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 7)
    frames = worker.dumps([{"op": "x"}], b"scheduler")
    monkeypatch.undo()
    with pytest.raises(VersionMismatch, match=r"version 7.*version 2"):
        scheduler.loads(frames)


def test_wrong_recipient_is_rejected(worker, scheduler):
    with pytest.raises(WrongRecipient):
        scheduler.loads(worker.dumps([{"op": "x"}], to=b"worker-2"))
    assert scheduler.loads(worker.dumps([{"op": "x"}], to=b"scheduler")) == [{"op": "x"}]


def test_sender_mismatch_is_rejected(worker, scheduler):
    with pytest.raises(WrongSender):
        scheduler.loads(worker.dumps([{"op": "x"}], b"scheduler"), sender=b"mallory")
    assert scheduler.loads(worker.dumps([{"op": "x"}], b"scheduler"), sender=b"worker-1") == [{"op": "x"}]


def test_rejected_messages_do_not_consume_the_counter(worker, scheduler):
    frames = worker.dumps([{"op": "x"}], b"scheduler")
    with pytest.raises(WrongSender):
        scheduler.loads(frames, sender=b"mallory")
    assert scheduler.loads(frames, sender=b"worker-1") == [{"op": "x"}]


def test_malicious_pickle_with_bad_mac_never_runs(tmp_path, scheduler):
    marker = tmp_path / "pwned"
    evil = Serialized([pickle.dumps(CreateFileOnLoad(str(marker)))])
    attacker = Session(b"guessed-key", b"worker-1", epoch=EPOCH)
    for frames in (attacker.dumps([{"op": "data", "value": evil}], b"scheduler"), [b"\x00" * 32, b"\x00" * 40]):
        with pytest.raises(BadSignature):
            scheduler.loads(frames)
    assert not marker.exists()


def _sign(session, header, payload=()):
    sizes = [len(header), *(len(p) for p in payload)]
    return [session._mac(header, list(payload), sizes if payload else None), header, *payload]


def _header(body, sender=b"worker-1", to=b"scheduler", n_payload=0, counter=1):
    envelope = protocol._ENVELOPE.pack(2, EPOCH, counter, len(sender), len(to), 0,
                                       n_payload)
    return envelope + sender + to + body


MALFORMED = {
    "empty header": b"",
    "version only": b"\x02\x00",
    "short envelope": b"\x02\x00\x01\x00\x00",
    "reserved msgpack byte": _header(b"\xc1"),
    "truncated array": _header(b"\x92\x01"),
    "item not a dict": _header(b"\x91\x01"),
    "dict not a list": _header(b"\x81\x01\x02"),
    "unhashable key": _header(b"\x91\x81\x81\xa1a\x01\x01"),
    "reference past the frames": _header(
        b"\x91\x81\xa1v\xc7\x08\x02" + protocol._REF.pack(5, 1)
    ),
    "unknown ext code": _header(b"\x91\x81\xa1v\xd4\x09\x00"),
    "frame count mismatch": _header(b"\x90", n_payload=1),
    "sender past the header": protocol._ENVELOPE.pack(2, EPOCH, 1, 500, 0, 0, 0) + b"w" * 10,
    "trailing data": _header(b"\x90\x90"),
}


@pytest.mark.parametrize("header", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_body_with_good_mac(scheduler, header):
    with pytest.raises(MalformedMessage):
        scheduler.loads(_sign(scheduler, header))


def test_garbage_raises_only_protocol_errors(scheduler):
    rng = np.random.default_rng(0)
    cases = [None, 1, [1, 2], ["a", "b"], [b"x"], [b"", b""], [object(), b"x"]]
    cases += [[rng.bytes(int(n)) for n in rng.integers(0, 100, k)] for k in range(2, 6)] * 20
    for frames in cases:
        with pytest.raises(ProtocolError):
            scheduler.loads(frames)


def test_concurrent_loads_accept_each_message_once(worker, scheduler):
    messages = [worker.dumps([{"op": "x", "i": i}], b"scheduler") for i in range(200)]
    accepted = []

    def consume():
        for frames in messages:
            try:
                accepted.extend(scheduler.loads(frames))
            except ReplayedMessage:
                pass

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The window (256) holds all 200 counters: each message is taken by exactly one
    # of the threads, whatever order they interleave in.
    assert protocol.REPLAY_WINDOW >= len(messages)
    assert sorted(m["i"] for m in accepted) == list(range(200))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_big_messages_can_be_signed_in_a_forked_child(worker, scheduler):
    big = [{"op": "data", "v": serialize(np.ones(2_000_000))}]
    scheduler.loads(worker.dumps(big, b"scheduler"))
    pid = os.fork()
    if pid == 0:  # the child must not inherit a dead hashing thread pool
        status = 1
        try:
            got = Session(KEY, b"scheduler", epoch=EPOCH).loads(worker.dumps(big, b"scheduler"))
            status = 0 if np.array_equal(deserialize(got[0]["v"]), np.ones(2_000_000)) else 2
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(status)
    # A generous bound: signing 16 MB takes milliseconds; only a hang gets near it.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, \
                "the forked child could not sign and check a big message"
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("signing hung in the forked child")


def test_session_validates_its_arguments():
    with pytest.raises(ValueError):
        Session(b"", b"x", epoch=EPOCH)
    with pytest.raises(ValueError):
        Session(KEY, b"", epoch=EPOCH)
    with pytest.raises(ValueError):
        Session(KEY, "not-bytes")
    assert "worker" in repr(Session(KEY, b"worker", epoch=EPOCH)) and "k" * 32 not in repr(Session(KEY, b"w", epoch=EPOCH))


# --- serialize ---------------------------------------------------------------------


def test_serialize_falls_back_to_cloudpickle_for_lambdas():
    offset = 10
    s = serialize(lambda x: x + offset)
    assert deserialize(s)(1) == 11


def test_serialize_pickles_main_functions_by_value(monkeypatch):
    import __main__

    def double(x):
        return 2 * x

    double.__module__, double.__qualname__ = "__main__", "double_for_test"
    monkeypatch.setattr(__main__, "double_for_test", double, raising=False)
    s = serialize(double)
    monkeypatch.delattr(__main__, "double_for_test")
    assert deserialize(s)(21) == 42  # the receiving side has no such name in __main__


def test_serialization_error_names_the_type():
    with pytest.raises(SerializationError, match="lock") as info:
        serialize({"a": threading.Lock()})
    assert isinstance(info.value, TypeError)


def test_small_buffers_stay_in_band_and_big_ones_do_not():
    assert len(serialize(np.zeros(100)).frames) == 1
    s = serialize([np.zeros(100_000), np.zeros(10), np.ones(100_000)])
    assert len(s.frames) == 3
    out = deserialize(s)
    assert out[0].sum() == 0 and out[2].sum() == 100_000 and out[1].shape == (10,)


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_go_out_of_band(kind):
    data = kind(b"abc" * 50_000)
    s = serialize(data)
    assert len(s.frames) == 2 and len(s.frames[0]) < 200
    out = deserialize(s)
    assert type(out) is kind and out == data
    small = serialize(kind(b"abc"))
    assert len(small.frames) == 1 and deserialize(small) == kind(b"abc")


def test_fortran_order_array_round_trips():
    arr = np.asfortranarray(np.arange(200_000, dtype="f4").reshape(400, 500))
    out = deserialize(serialize(arr))
    assert np.array_equal(out, arr) and out.flags.f_contiguous


def test_serialized_basics():
    s = Serialized([b"abc", memoryview(b"defg")])
    assert s.nbytes == 7
    assert repr(s) == "Serialized(7 bytes)"
    assert s == Serialized([bytearray(b"abc"), b"defg"])
    assert s != Serialized([b"abc", b"defh"]) and s != Serialized([b"abc"])
    assert pickle.loads(pickle.dumps(s)) == s
    assert pickle.loads(pickle.dumps(s, protocol=5)) == s
    with pytest.raises(ValueError):
        Serialized([])
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError):
        deserialize(b"not serialized")


def test_streams_to_different_recipients_do_not_age_each_other(worker):
    """Messages to one recipient field travel one socket; a burst on another socket
    (here: more than the replay window) must not make them look stale."""
    receiver = Session(KEY, b"scheduler", replay_window=4, epoch=EPOCH,
                       aliases=[b"tcp://h:1"])
    held_up = worker.dumps([{"op": "request"}], b"tcp://h:1")      # to its address
    for i in range(10):
        receiver.loads(worker.dumps([{"op": "reply", "i": i}], to=b"scheduler"))
    assert receiver.loads(held_up) == [{"op": "request"}]
    with pytest.raises(ReplayedMessage):
        receiver.loads(held_up)


def test_large_frames_are_authenticated_too():
    """Frames past POLY1305_FROM enter the MAC as Poly1305 tags: a changed byte, or a
    large frame moved from another message, is still caught."""
    sender, receiver = Session(KEY, b"w", epoch=EPOCH), Session(KEY, b"s", epoch=EPOCH)
    big = np.arange(protocol.POLY1305_FROM // 4, dtype="i8")       # 2 MiB
    first = sender.dumps([{"op": "data", "v": serialize(big)}], b"s")
    second = sender.dumps([{"op": "data", "v": serialize(big + 1)}], b"s")
    tampered = list(first)
    frame = bytearray(tampered[2])
    frame[len(frame) // 2] ^= 1
    tampered[2] = bytes(frame)
    with pytest.raises(BadSignature):
        receiver.loads(tampered)
    swapped = [first[0], first[1], second[2]]
    with pytest.raises(BadSignature):
        receiver.loads(swapped)
    (msg,) = receiver.loads(first)
    assert (deserialize(msg["v"]) == big).all()
