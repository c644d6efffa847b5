"""The side channel for large data between workers: streams, tickets, tampering, fallback."""

import socket
import threading

import numpy as np
import pytest

from helpers import local_cluster, wait_for
from dask_ipy import bulk
from dask_ipy.protocol import BadSignature, Session, deserialize, serialize

pytestmark = pytest.mark.timeout(60)

KEY = b"k" * 32
EPOCH = b"e" * 16


@pytest.fixture
def server():
    s = bulk.BulkServer("127.0.0.1", ttl=5)
    try:
        yield s
    finally:
        s.close()
    s._thread.join(5)
    assert not s._thread.is_alive()


@pytest.fixture
def sessions():
    return Session(KEY, b"worker-a", epoch=EPOCH), Session(KEY, b"worker-b", epoch=EPOCH)


def offer_array(server, a, size=3_000_000, request_id="r1"):
    value = np.arange(size // 8, dtype="f8")
    header, payload = a.encode([{"op": "data", "request_id": request_id,
                                 "data": {"x": serialize(value)}}], to=b"worker-b",
                               frame_limit=None)
    offer_array.sizes = bulk.stream_sizes(header, payload)
    return value, server.offer(a, header, payload)


def test_a_message_streams_whole_and_verifies_with_tags_taken_on_the_way(server, sessions):
    a, b = sessions
    value, ticket = offer_array(server, a)
    frames, tags = bulk.fetch(b, "127.0.0.1", server.port, ticket, 5, offer_array.sizes)
    assert list(tags) == [0]                   # the one large frame was tagged in flight
    [msg] = b.loads(frames, check_replay=False, tags=tags)
    got = deserialize(msg["data"]["x"])
    np.testing.assert_array_equal(got, value)
    assert got.flags.writeable                 # received in place into a private map
    assert server.sent >= value.nbytes
    # Without the tags the receiver reads the frames again: same verdict.
    assert b.loads(frames, check_replay=False)[0]["request_id"] == "r1"
    with pytest.raises(BadSignature):
        b.loads(frames, check_replay=False, tags={0: b"\0" * 16})


def test_a_ticket_is_used_once_and_unknown_or_expired_tickets_get_nothing(server, sessions):
    a, b = sessions
    _, ticket = offer_array(server, a)
    bulk.fetch(b, "127.0.0.1", server.port, ticket, 5, offer_array.sizes)
    with pytest.raises(OSError, match="closed|reset"):
        bulk.fetch(b, "127.0.0.1", server.port, ticket, 5, offer_array.sizes)
    with pytest.raises(OSError, match="closed|reset"):
        bulk.fetch(b, "127.0.0.1", server.port, b"x" * bulk.TICKET_BYTES, 5,
                   offer_array.sizes)
    server.ttl = 0                              # offers expire at once
    _, ticket = offer_array(server, a)
    with pytest.raises(OSError, match="closed|reset"):
        bulk.fetch(b, "127.0.0.1", server.port, ticket, 5, offer_array.sizes)
    assert server._offers == {}


def test_a_stream_other_than_announced_is_refused_before_it_is_read(server, sessions):
    """The receiver allocates what the signed offer announced, nothing more."""
    a, b = sessions
    _, ticket = offer_array(server, a)
    with pytest.raises(OSError, match="2 frames in the stream, 1 announced"):
        bulk.fetch(b, "127.0.0.1", server.port, ticket, 5, [1000])
    _, ticket = offer_array(server, a)
    bigger = [offer_array.sizes[0], offer_array.sizes[1] - 8]
    with pytest.raises(OSError, match="not those announced"):
        bulk.fetch(b, "127.0.0.1", server.port, ticket, 5, bigger)


def test_replay_protection_is_left_to_the_caller(sessions):
    """check_replay=False neither checks nor records counters."""
    a, b = sessions
    frames = a.dumps([{"op": "x"}], to=b"worker-b")
    b.loads(frames, check_replay=False)
    b.loads(frames, check_replay=False)
    assert b._freshness == {}
    b.loads(frames)                             # the first time it is counted


def flipping_relay(target_port, offset):
    """A TCP relay that flips one byte of what the server sends, at ``offset``."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run():
        conn, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        upstream.sendall(conn.recv(bulk.TICKET_BYTES))
        seen = 0
        while True:
            chunk = bytearray(upstream.recv(1 << 16))
            if not chunk:
                break
            if seen <= offset < seen + len(chunk):
                chunk[offset - seen] ^= 1
            seen += len(chunk)
            conn.sendall(chunk)
        conn.close()
        upstream.close()
        listener.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return listener.getsockname()[1], t


def test_a_byte_changed_in_transit_fails_the_mac(server, sessions):
    a, b = sessions
    _, ticket = offer_array(server, a)
    port, relay = flipping_relay(server.port, offset=2_000_000)
    frames, tags = bulk.fetch(b, "127.0.0.1", port, ticket, 5, offer_array.sizes)
    relay.join(5)
    with pytest.raises(BadSignature):
        b.loads(frames, check_replay=False, tags=tags)


# ---------------------------------------------------------------- through workers


def make(size):
    return np.ones(size // 8)


def total(x):
    return float(x.sum())


def test_large_data_between_workers_takes_the_side_channel():
    with local_cluster() as (s, (wa, wb), c):
        x = c.submit(make, 40_000_000, workers=[wa.address])
        assert c.submit(total, x, workers=[wb.address]).result(timeout=30) == 5_000_000
        assert wa.bulk.sent >= 40_000_000
        # Small data keeps to ZeroMQ.
        sent = wa.bulk.sent
        y = c.submit(make, 800_000, workers=[wa.address])
        assert c.submit(total, y, workers=[wb.address]).result(timeout=30) == 100_000
        assert wa.bulk.sent == sent


def test_when_the_side_channel_fails_data_comes_over_zeromq(caplog):
    with local_cluster() as (s, (wa, wb), c):
        x = c.submit(make, 40_000_000, workers=[wa.address])
        c.submit(len, x, workers=[wa.address]).result(timeout=30)
        wa.bulk.close()                         # its port now refuses connections
        assert c.submit(total, x, workers=[wb.address]).result(timeout=30) == 5_000_000
        assert wa.address in wb.no_bulk
        assert "side channel" in caplog.text
        assert wa.bulk.sent == 0


def test_an_encrypted_cluster_keeps_data_on_the_encrypted_sockets():
    from dask_ipy import Security

    security = Security.temporary(encrypt=True)
    with local_cluster({"security": security}, {"security": security},
                       {"security": security}) as (s, (wa, wb), c):
        assert wa.bulk is None and wb.bulk is None
        x = c.submit(make, 40_000_000, workers=[wa.address])
        assert c.submit(total, x, workers=[wb.address]).result(timeout=30) == 5_000_000


def test_garbage_on_the_bulk_port_changes_nothing():
    with local_cluster() as (s, (wa, wb), c):
        for payload in (b"", b"short", b"\xff" * 1000):
            with socket.create_connection(("127.0.0.1", wa.bulk.port)) as sock:
                try:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                    assert sock.recv(10) == b""      # closed without a word
                except (ConnectionResetError, BrokenPipeError, OSError):
                    pass                             # ... or with unread bytes: reset
        x = c.submit(make, 40_000_000, workers=[wa.address])
        assert c.submit(total, x, workers=[wb.address]).result(timeout=30) == 5_000_000
        wait_for(lambda: wa.bulk.sent >= 40_000_000)
