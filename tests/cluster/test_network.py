"""Workers that reach the scheduler but not each other.

Each test runs a scheduler and workers as processes (tests/helpers.py).  Worker A
tells everyone an address that leads nowhere useful: a port that accepts connections
and never answers, or a proxy that carries bytes towards A and drops every byte back.
Worker B then cannot fetch from A directly: A's data must come through the scheduler.
"""

import contextlib
import hashlib
import selectors
import socket
import threading
import time

import pytest

from dask_ipy import TransferError

from helpers import processes, silent_port, wait_for

pytestmark = pytest.mark.timeout(90)


def make_bytes(n):
    return bytes(range(256)) * (n // 256)


def digest(data):
    return hashlib.sha256(data).hexdigest()


def start_workers(pc, c, *options):
    for opts in options:
        pc.workers.append(pc.start_worker(**opts))
    wait_for(lambda: len(c.scheduler_info()["workers"]) == len(options),
             message="workers")
    return [p.first_line for p in pc.workers]


@contextlib.contextmanager
def _proxy(target_port, forwards):
    """A proxy to 127.0.0.1:target_port on its own thread: a byte read from the
    client (``to_target`` True) or from the target is passed on when
    ``forwards(to_target)``, else dropped.  Yields its address."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    stop = threading.Event()
    conns = []

    def run():
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                if key.data is None:
                    client, _ = listener.accept()
                    upstream = socket.create_connection(("127.0.0.1", target_port))
                    conns.extend((client, upstream))
                    sel.register(client, selectors.EVENT_READ, (upstream, True))
                    sel.register(upstream, selectors.EVENT_READ, (client, False))
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                peer, to_target = key.data
                if not data:
                    sel.unregister(key.fileobj)
                elif forwards(to_target):
                    peer.sendall(data)

    t = threading.Thread(target=run, name="test-proxy", daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        sel.close()
        for sock in conns + [listener]:
            sock.close()


@contextlib.contextmanager
def one_way_proxy(target_port):
    """Forwards what clients send and drops every byte coming back: a link that
    works in one direction only."""
    with _proxy(target_port, lambda to_target: to_target) as address:
        yield address


@contextlib.contextmanager
def breakable_proxy(target_port):
    """Forwards both ways until the event it yields is set, then drops every byte
    both ways on the connections it holds: a route that goes dead under an
    established connection."""
    dead = threading.Event()
    with _proxy(target_port, lambda to_target: not dead.is_set()) as address:
        yield address, dead


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_of_a_silent_peer_comes_through_the_scheduler(tmp_path):
    with silent_port() as hole, processes(tmp_path, nworkers=0) as (pc, c):
        a, b = start_workers(pc, c, {"contact_address": hole},
                             {"connect_timeout": 5.0})
        assert a == hole
        x = c.submit(make_bytes, 1 << 20, workers=[a])
        x.result(timeout=30)
        start = time.monotonic()
        first = c.submit(digest, x, workers=[b])
        assert first.result(timeout=30) == digest(make_bytes(1 << 20))
        assert time.monotonic() - start >= 5.0          # the connection was tried
        assert list(c.scheduler_info()["workers"][b]["unreachable"]) == [a]
        # Known now: the next fetch goes to the relay at once.
        start = time.monotonic()
        again = c.submit(len, x, workers=[b])
        assert again.result(timeout=30) == 1 << 20
        # Trying the peer again would take its connect timeout (5 s); a relayed fetch
        # takes milliseconds, so 4 s is a wide margin on a busy machine.
        assert time.monotonic() - start < 4.0
        # Left free, a task that needs x runs where x is (B would need the relay).
        assert c.submit(len, x, key="anywhere").result(timeout=30) == 1 << 20
        assert c.who_has([x])[x.key] == (a,)


def test_data_over_a_one_way_link_comes_through_the_scheduler(tmp_path):
    port = free_port()
    with processes(tmp_path, nworkers=0) as (pc, c), one_way_proxy(port) as proxy:
        a, b = start_workers(
            pc, c, {"hostname": "127.0.0.1", "port_to_workers": port,
                    "contact_address": proxy},
            {"connect_timeout": 1.0})
        # Large enough for the side channel a reachable peer would offer.
        n = 8 << 20
        x = c.submit(make_bytes, n, workers=[a])
        assert c.submit(digest, x, workers=[b]).result(timeout=30) == digest(
            make_bytes(n))
        assert list(c.scheduler_info()["workers"][b]["unreachable"]) == [a]


def test_a_value_too_large_to_relay_errs_the_task_naming_both_workers(tmp_path):
    with silent_port() as hole, processes(tmp_path, nworkers=0,
                                       scheduler_options={"max_relay_bytes": 1 << 20}) as (pc, c):
        a, b = start_workers(pc, c, {"contact_address": hole},
                             {"connect_timeout": 1.0})
        # Under the floor of streams (bulk.BULK_FROM): relayed in one message.
        big = c.submit(make_bytes, 2 << 20, workers=[a])
        small = c.submit(make_bytes, 1 << 10, workers=[a])
        failed = c.submit(len, big, workers=[b])
        with pytest.raises(TransferError) as info:
            failed.result(timeout=30)
        text = str(info.value)
        assert f"worker {b} cannot reach worker {a}, which holds {big.key!r}" in text
        assert "Scheduler(max_relay_bytes=...)" in text
        # Nothing else is harmed: small values still travel, the big one stays put.
        assert c.submit(len, small, workers=[b]).result(timeout=30) == 1 << 10
        assert c.submit(len, big, key="on-a", workers=[a]).result(timeout=30) == 2 << 20


def test_a_peer_is_reachable_though_the_loop_was_busy_past_the_connect_timeout(cluster):
    """The connection succeeds while the worker's loop is busy (task threads holding
    the GIL, a long handler) past ``connect_timeout``: the timer runs before the loop
    reads the handshake, which is there all the same."""
    s, (w1, w2), c = cluster
    assert w2.address not in w1.peers
    w1.connect_timeout = 0.1
    done = threading.Event()

    def connect_then_stall():
        start = time.monotonic()
        w1._connect_peer(w2.address)
        # The loop, stalled until the handshake has succeeded (its event waits
        # unread) and past the timeout.
        assert w1.peer_monitors[w2.address].poll(10_000)
        time.sleep(max(0.0, 0.2 - (time.monotonic() - start)))
        w1.loop.call_soon(done.set)

    w1.loop.call_soon(connect_then_stall)
    assert done.wait(10)
    wait_for(lambda: not w1.connecting, message="the connection to be settled")
    assert w2.address not in w1.state.unreachable and w2.address in w1.peers
    assert c.submit(len, c.submit(make_bytes, 1 << 10, workers=[w2.address]),
                    workers=[w1.address]).result(timeout=10) == 1 << 10


def test_a_connection_that_goes_dead_is_found_within_seconds(tmp_path):
    """Data comes straight from the peer while the route works; once it goes dead
    under the established connection, the next fetch comes through the relay within
    seconds (heartbeats), not after the 30 s a fetch may take."""
    port = free_port()
    with processes(tmp_path, nworkers=0) as (pc, c), breakable_proxy(port) as (
            proxy, dead):
        a, b = start_workers(
            pc, c, {"hostname": "127.0.0.1", "port_to_workers": port,
                    "contact_address": proxy}, {})
        x = c.submit(make_bytes, 1 << 10, workers=[a])
        assert c.submit(digest, x, workers=[b]).result(timeout=30) == digest(
            make_bytes(1 << 10))
        assert c.scheduler_info()["workers"][b]["unreachable"] == ()
        dead.set()
        y = c.submit(make_bytes, 2 << 10, workers=[a])
        y.result(timeout=30)
        start = time.monotonic()
        assert c.submit(digest, y, workers=[b]).result(timeout=60) == digest(
            make_bytes(2 << 10))
        assert time.monotonic() - start < 20          # was the gather timeout, 30 s
        assert list(c.scheduler_info()["workers"][b]["unreachable"]) == [a]
