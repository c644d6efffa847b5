"""Values far larger than a frame, on every path: gathered through the scheduler's
relay, or over ZeroMQ in frames when the relay cannot be used (encryption, a failed
stream), scattered, passed between workers, and served from a spill file."""

import socket
import time

import numpy as np
import pytest

from helpers import local_cluster, wait_for
from dask_ipy import Security, Worker
from dask_ipy.protocol import MAX_FRAME_BYTES
from dask_ipy.worker.store import SpillStore

pytestmark = pytest.mark.timeout(120)

SIZE = 24 * MAX_FRAME_BYTES          # bytes: many frames, and past the side channels' floor


def make(nbytes):
    a = np.arange(nbytes // 8, dtype="i8")
    return a


def check(a, nbytes=SIZE):
    return a.nbytes == nbytes and int(a[0]) == 0 and int(a[-1]) == nbytes // 8 - 1


def test_a_large_result_streams_to_the_client_through_the_relay():
    with local_cluster() as (s, (wa, wb), c):
        x = c.submit(make, SIZE, workers=[wa.address])
        assert check(x.result(timeout=60))
        assert s.relay.relayed >= SIZE
        # Several at once, from both workers, with small ones beside them.
        ys = [c.submit(make, SIZE, workers=[w.address], pure=False) for w in (wa, wb)]
        small = c.submit(make, 800)
        got = c.gather(ys + [small], timeout=60)
        assert all(check(v) for v in got[:2]) and check(got[2], 800)
        assert s.relay.relayed >= 3 * SIZE
        # The scheduler never held the values: its counters saw only small messages.
        assert s.bytes_received < SIZE


def closed_port():
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_when_the_stream_fails_the_value_comes_over_zeromq_at_once():
    with local_cluster() as (s, (wa, wb), c):
        x = c.submit(make, SIZE, workers=[wa.address])
        x.result(timeout=60)
        # The worker's uploads now go nowhere: it says so, the scheduler gives the
        # ticket up, and the client asks again without a stream.
        wa.relay_port = closed_port()
        relayed = s.relay.relayed
        start = time.monotonic()
        assert check(x.result(timeout=60))
        # Not after the relay's ticket expires (its ttl, 60 s): half of it is a wide
        # margin for a busy machine.
        assert time.monotonic() - start < s.relay.ttl / 2
        assert s.relay.relayed == relayed
        assert c.shell.state.relay_port is None         # no more streams asked for
        assert check(c.submit(make, SIZE, pure=False).result(timeout=60))


def test_a_client_that_cannot_reach_the_relay_gets_the_value_over_zeromq():
    with local_cluster() as (s, (wa, wb), c):
        x = c.submit(make, SIZE, workers=[wa.address])
        x.result(timeout=60)
        c.shell.state.relay_port = closed_port()
        start = time.monotonic()
        assert check(x.result(timeout=60))
        assert c.shell.state.relay_port is None
        # The worker's stream, waiting at the relay for the client, is given up at
        # once rather than at the relay's timeout.
        wait_for(lambda: wa.uploads.running == 0 and not s.relay._expected, timeout=10,
                 message="the stream to be given up")
        assert time.monotonic() - start < s.relay.ttl / 2     # not at its expiry


def test_an_encrypted_cluster_gathers_large_values_over_zeromq():
    security = Security.temporary(encrypt=True)
    options = {"security": security}
    with local_cluster(options, options, options) as (s, (wa, wb), c):
        assert s.relay is None and c.shell.state.relay_port is None
        x = c.submit(make, SIZE, workers=[wa.address])
        assert check(x.result(timeout=60))
        assert s.bytes_received >= SIZE


def test_large_scattered_data_reaches_a_worker_and_comes_back():
    with local_cluster() as (s, (wa, wb), c):
        data = make(SIZE)
        [f] = c.scatter([data], workers=[wb.address])
        assert c.submit(check, f, workers=[wa.address]).result(timeout=60)
        assert check(f.result(timeout=60))
        wait_for(lambda: s.relay.relayed >= SIZE, message="the way back by the relay")


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_spilled_value_goes_from_its_file_to_a_peer_and_the_client(tmp_path, encrypt):
    """A value on disk leaves as the frames of its file, never unpickled by its
    holder, and like any other value: signed for its receiver, on the side channels
    whole, or (encrypted) over ZeroMQ in frames the sockets' limit lets through."""
    security = Security.temporary(encrypt=encrypt)
    options = {"security": security}
    store = SpillStore(memory_limit=MAX_FRAME_BYTES, directory=str(tmp_path))
    with local_cluster(options, options, options) as (s, (wa, _), c):
        w = Worker(scheduler=s.address_to_workers, data=store, security=security,
                   validate=True)
        try:
            wait_for(lambda: len(s.state.workers) == 3, message="the third worker")
            x = c.submit(make, SIZE, workers=[w.address])
            x.result(timeout=60)
            wait_for(lambda: len(store.slow) == 1 and not store.fast,
                     message="the value to be spilled")
            assert c.submit(check, x, workers=[wa.address], pure=False).result(timeout=60)
            assert check(c.gather(x, timeout=60))
            # Straight from peer to peer: no detour through the scheduler.
            assert not wa.state.unreachable
            if encrypt:                           # two gathers, nothing else
                assert 2 * SIZE <= s.bytes_received < 3 * SIZE
            else:
                assert s.relay.relayed >= SIZE and s.bytes_received < SIZE
                assert w.bulk.sent >= SIZE
        finally:
            w.close()
            store.close()
