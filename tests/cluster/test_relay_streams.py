"""Large values relayed between workers that cannot reach each other stream through
the scheduler's relay (bulk.BulkRelay) in bounded chunks; an encrypted cluster keeps
relaying them in one ZeroMQ message, within the scheduler's cap.

A worker that tells everyone an address leading nowhere (`silent_port`) holds the
value; another worker needs it and must get it through the scheduler."""

import contextlib
import hashlib
import threading

import numpy as np
import pytest

from dask_ipy import Security, TransferError, Worker, bulk, wait
from dask_ipy.protocol import MAX_FRAME_BYTES

from helpers import local_cluster, processes, silent_port, wait_for

pytestmark = pytest.mark.timeout(120)

SIZE = 24 * MAX_FRAME_BYTES          # past the floor of streams, and many frames
CAP = 8 << 20                        # a relay cap far under SIZE


def make(nbytes):
    return np.arange(nbytes // 8, dtype="i8")


def check(a, nbytes=SIZE):
    return a.nbytes == nbytes and int(a[0]) == 0 and int(a[-1]) == nbytes // 8 - 1


def make_bytes(n):
    return bytes(range(256)) * (n // 256)


def digest_bytes(data):
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def unreachable_holder(s, security=None):
    """A third worker in this process whose address leads nowhere."""
    with silent_port() as address:
        w = Worker(scheduler=s.address_to_workers, contact_address=address,
                   security=security, validate=True)
        try:
            wait_for(lambda: len(s.state.workers) == 3, message="the third worker")
            yield w
        finally:
            w.close()


def test_a_value_over_the_relay_cap_streams_between_workers():
    with local_cluster({"max_relay_bytes": CAP}, {"connect_timeout": 1.0}) as (
            s, (wa, _), c):
        with unreachable_holder(s) as w:
            x = c.submit(make, SIZE, workers=[w.address])
            wait([x], timeout=60)
            received = s.bytes_received
            assert c.submit(check, x, workers=[wa.address]).result(timeout=60)
            assert wa.state.unreachable == {w.address}
            # Through the relay, never through the scheduler's ZeroMQ sockets.
            assert s.relay.relayed >= SIZE
            assert s.bytes_received - received < SIZE // 4
            assert wa.relay_failures == 0


def test_an_encrypted_cluster_relays_in_one_message_within_the_cap():
    security = Security.temporary(encrypt=True)
    options = {"security": security}
    with local_cluster({**options, "max_relay_bytes": CAP},
                       {**options, "connect_timeout": 1.0}, options) as (s, (wa, _), c):
        assert s.relay is None and wa.relay_port is None
        with unreachable_holder(s, security) as w:
            small = c.submit(make, 2 << 20, workers=[w.address])
            big = c.submit(make, SIZE, workers=[w.address])
            wait([small, big], timeout=60)
            received = s.bytes_received
            assert c.submit(check, small, 2 << 20, workers=[wa.address]).result(
                timeout=60)
            assert s.bytes_received - received >= 2 << 20      # held by the scheduler
            with pytest.raises(TransferError, match=r"Scheduler\(max_relay_bytes=...\)"):
                c.submit(check, big, workers=[wa.address]).result(timeout=60)


def test_a_holder_that_dies_mid_stream_ends_in_a_recomputation(tmp_path, monkeypatch):
    """The fetching worker is in this process, the holder and the scheduler are
    processes: the download stops after the stream's header until the holder is
    killed, then goes on and fails short; the key is found missing and computed
    again, where it can be."""
    # Far more than the buffers on the way can hold while the download stalls (the
    # sockets' on loopback may grow to tens of MiB, the relay's pipe holds 1 MiB):
    # the holder is still sending when it dies.
    n = 128 << 20
    started, killed = threading.Event(), threading.Event()
    original = bulk._recv_exact

    def stalling(s, nbytes, tagger=None):
        if (nbytes >= n and not started.is_set()
                and threading.current_thread().name == "dask-ipy-relay-fetch"):
            started.set()
            assert killed.wait(60)
        return original(s, nbytes, tagger)

    monkeypatch.setattr(bulk, "_recv_exact", stalling)
    with silent_port() as hole, processes(tmp_path, nworkers=0) as (pc, c):
        holder = pc.start_worker(contact_address=hole)
        pc.workers.append(holder)
        wait_for(lambda: len(c.scheduler_info()["workers"]) == 1, message="the holder")
        fetcher = Worker(scheduler=pc.file, connect_timeout=1.0, validate=True)
        try:
            x = c.submit(make_bytes, n, workers=[hole], allow_other_workers=True)
            wait([x], timeout=60)
            assert c.who_has([x])[x.key] == (hole,)
            y = c.submit(digest_bytes, x, workers=[fetcher.address])
            assert started.wait(60)
            holder.kill()
            holder.wait(10)
            killed.set()
            assert y.result(timeout=60) == digest_bytes(make_bytes(n))
            assert fetcher.relay_failures == 1
            assert c.who_has([x])[x.key] == (fetcher.address,)      # computed again
        finally:
            killed.set()
            fetcher.close()


def test_a_download_waiting_for_a_holder_that_left_ends_at_once(monkeypatch):
    """The holder announced its stream, but leaves before its upload reaches the
    relay: the fetcher, waiting there, is let go at once (not after the relay's
    60 s); the key is computed again."""
    stalled, release = threading.Event(), threading.Event()
    original = bulk.upload

    def stalling(*args, **kwargs):
        stalled.set()
        release.wait(60)
        return original(*args, **kwargs)

    with local_cluster({"max_relay_bytes": CAP}, {"connect_timeout": 1.0}) as (
            s, (wa, _), c):
        with unreachable_holder(s) as w:
            x = c.submit(make, SIZE, workers=[w.address], allow_other_workers=True)
            wait([x], timeout=60)
            monkeypatch.setattr(bulk, "upload", stalling)
            y = c.submit(check, x, workers=[wa.address])
            closing = threading.Thread(target=w.close)
            try:
                assert stalled.wait(30)
                closing.start()
                wait_for(lambda: len(s.state.workers) == 2, timeout=30,
                         message="the scheduler to drop the holder")
                # The download waiting at the relay ends now, not when its ticket
                # expires (60 s).
                wait_for(lambda: wa.relay_failures == 1, timeout=10,
                         message="the download to be let go")
                assert y.result(timeout=30)
                holder = w.address
                assert holder not in c.who_has([x])[x.key]        # computed again
            finally:
                release.set()
                if closing.is_alive() or closing.ident:
                    closing.join(30)


# ---------------------------------------------------------------- scatter

def closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_large_scattered_value_streams_to_its_worker():
    with local_cluster() as (s, (wa, wb), c):
        received = s.bytes_received
        [f] = c.scatter([make(SIZE)], workers=[wb.address])
        assert s.bytes_received - received < SIZE // 4
        # Counted once the relay's thread is done, which may be after the worker is.
        wait_for(lambda: s.relay.relayed >= SIZE, message="the relay's count")
        assert c.who_has([f])[f.key] == (wb.address,)
        assert c.submit(check, f, workers=[wb.address]).result(timeout=60)
        # Broadcast: one stream per worker, small values beside them in the message.
        relayed = s.relay.relayed
        futures = c.scatter({"big": make(SIZE), "small": make(800)}, broadcast=True)
        wait_for(lambda: s.relay.relayed >= relayed + 2 * SIZE,
                 message="the relay's count")
        assert sorted(c.who_has([futures["big"]])["big"]) == sorted(
            [wa.address, wb.address])
        assert check(futures["small"].result(timeout=60), 800)


def test_a_scatter_a_worker_cannot_download_goes_again_over_zeromq():
    with local_cluster() as (s, (wa, wb), c):
        # Registered at the scheduler is not yet welcomed: the welcome would set the
        # real port again.
        wait_for(lambda: wb.relay_port is not None, message="the worker's welcome")
        wb.relay_port = closed_port()
        received = s.bytes_received
        [f] = c.scatter([make(SIZE)], workers=[wb.address], timeout=60)
        assert s.bytes_received - received >= SIZE
        assert c.shell.state.relay_port is None          # no more streams asked for
        assert c.submit(check, f, workers=[wb.address]).result(timeout=60)
        # The client's upload, waiting at the relay, was given up at once.
        wait_for(lambda: c.shell.uploads.running == 0 and not s.relay._expected,
                 timeout=10, message="the upload to be given up")


def test_an_encrypted_cluster_scatters_over_zeromq():
    security = Security.temporary(encrypt=True)
    options = {"security": security}
    with local_cluster(options, options, options) as (s, (wa, wb), c):
        [f] = c.scatter([make(SIZE)], workers=[wb.address])
        assert s.bytes_received >= SIZE
        assert c.submit(check, f, workers=[wa.address]).result(timeout=60)
