"""Small results straight from the worker to the waiting client, on real sockets and
processes: after a worker's first result for a client, the scheduler says nothing
of the values that came straight (unless asked), done callbacks run once, and
cancel, errors, retries, encryption, a worker dying and a connection to a worker
dropping stay correct."""

import concurrent.futures as cf
import threading
import time

import pytest
import zmq

from dask_ipy.errors import KeyReleased
from dask_ipy.security import Security
from helpers import (Boom, fail, fail_until, inc, local_cluster, processes, slow_inc,
                     wait_for)

pytestmark = pytest.mark.timeout(120)


def watch(c):
    """Record what the scheduler tells the client: the values its gather answers
    and its "key-in-memory" messages carry, and the keys it says are in memory; and the keys the client asks for
    again, with their values, because the worker's message has not come (yet: it
    may be overtaken by the scheduler's answer, which then answers the retry)."""
    seen = {"values": [], "in_memory": [], "asked_again": [], "requests": set(),
            "answers": 0, "straight": []}
    gather = c.shell.state.gather
    from_worker = c.shell.state.handle_worker

    def on_result(msg):
        seen["straight"].append(msg["key"])
        return from_worker(msg)

    c.shell.state.handle_worker = on_result

    def on_gather(msg, token, here=None):
        if msg.get("direct") is False:
            seen["asked_again"] += msg["keys"]
        out = gather(msg, token, here)
        seen["requests"].add(msg.get("request_id"))
        return out

    c.shell.state.gather = on_gather
    table = c.shell.from_scheduler
    answer, done = table["gather-result"], table["key-in-memory"]

    def on_answer(msg):
        if msg["request_id"] in seen["requests"]:     # not one asked for before
            seen["values"] += list(msg["data"])
            if msg["data"] or msg.get("direct"):
                seen["answers"] += 1    # not one of a key released meanwhile
        answer(msg)

    def on_done(msg):
        seen["in_memory"].append(msg["key"])
        if "data" in msg:               # a small value that went the long way
            seen["values"].append(msg["key"])
        done(msg)

    table["gather-result"], table["key-in-memory"] = on_answer, on_done
    return seen


def warm(c, addresses):
    """Results from each worker until one comes straight: the client connected to
    it after the first one, and the worker has its subscription."""
    for address in addresses:
        def straight():
            before = c.shell.direct_results
            assert c.submit(inc, 1, workers=[address], pure=False).result(timeout=30) == 2
            return c.shell.direct_results > before
        wait_for(straight, timeout=30, message=f"a result straight from {address}")
    assert set(c.shell.result_sockets) == set(addresses)


def test_small_results_come_straight_from_the_worker(tmp_path):
    with processes(tmp_path) as (pc, c):
        addresses = [w.first_line for w in pc.workers]
        warm(c, addresses)
        seen = watch(c)
        before = c.shell.direct_results
        calls = []
        # At once: a result finished while others wait to run on its worker takes
        # the scheduler's batches; the last one on each worker comes straight.
        futures = [c.submit(inc, i) for i in range(20)]
        for f in futures:
            f.add_done_callback(lambda f: calls.append(f.key))
        assert [f.result(timeout=30) for f in futures] == list(range(1, 21))
        keys = {f.key for f in futures}
        straight = c.shell.direct_results - before
        assert 1 <= straight <= 20
        # The scheduler says a key is done to the client only when its value did
        # not come straight.
        wait_for(lambda: keys - set(seen["straight"]) <= set(seen["in_memory"]),
                 message="key-in-memory")
        assert not set(seen["straight"]) & set(seen["in_memory"])
        # Each of the others came from the scheduler; one that came straight did
        # too only if the scheduler's answer overtook the worker's value and the
        # client asked for it again.
        from_scheduler = len(keys & set(seen["values"]))
        again = len(keys & set(seen["asked_again"]))
        assert 20 - straight <= from_scheduler <= 20 - straight + again
        wait_for(lambda: len(calls) == 20, message="done callbacks")
        assert sorted(calls) == sorted(keys)

        seen = watch(c)
        before = c.shell.direct_results
        silent = []
        for i in range(20, 25):                                 # one at a time
            f = c.submit(inc, i)
            assert f.result(timeout=30) == i + 1
            silent.append(f.key)
        wait_for(lambda: c.shell.direct_results - before == 5, message="5 straight")
        # Each came straight, and the scheduler says nothing of it: no
        # "key-in-memory", no answer to the gather of result() (but "missing",
        # when the release of the key overtook the worker's word).
        time.sleep(0.5)
        assert seen["in_memory"] == [] and seen["answers"] == 0
        singles = []
        for i in range(25, 30):
            f = c.submit(inc, i)
            assert f.result(timeout=30) == i + 1
            singles.append(f.key)
            # Questions asked at once see what the client saw (the scheduler's word
            # may come after the value: such questions ask for it and wait).
            assert c.who_has(f)[f.key] != (), "the scheduler does not know yet"
            assert f.key in [r["key"] for r in c.get_task_stream(count=5)]
        wait_for(lambda: c.shell.direct_results - before == 10, message="10 straight")
        # Asked, the scheduler said so, never with a value unless asked again.
        wait_for(lambda: set(singles) <= set(seen["in_memory"]),
                 message="key-in-memory")
        assert set(seen["values"]) <= set(seen["asked_again"])
        # A large result takes the long way, value and all.
        big = c.submit(lambda n: b"x" * n, 100_000)
        assert len(big.result(timeout=30)) == 100_000
        assert big.key in seen["values"] and big.key not in seen["asked_again"]


def test_cancel_release_error_and_retries_stay_correct(tmp_path):
    with processes(tmp_path) as (pc, c):
        warm(c, [w.first_line for w in pc.workers])
        seen = watch(c)
        slow = c.submit(slow_inc, 1, delay=1.0)
        wait_for(lambda: c.processing() and any(c.processing().values()),
                 message="the slow task to run")
        slow.cancel()
        assert slow.cancelled()
        with pytest.raises(cf.CancelledError):
            slow.result(timeout=10)
        # Released while it runs: nothing comes of it, the next ones still do.
        gone = c.submit(slow_inc, 2, delay=0.5)
        key = gone.key
        del gone
        assert c.submit(inc, 5).result(timeout=30) == 6
        assert key not in c.shell.state.futures
        with pytest.raises(Boom):
            c.submit(fail, 1).result(timeout=30)
        path = str(tmp_path / "attempts")
        assert c.submit(fail_until, path, 3, retries=2, pure=False).result(timeout=30) == 3
        assert slow.cancelled()
        assert set(seen["values"]) <= set(seen["asked_again"])


def test_a_worker_dying_falls_back_to_the_long_way(tmp_path):
    with processes(tmp_path, heartbeat_timeout=2.0) as (pc, c):
        addresses = [w.first_line for w in pc.workers]
        warm(c, addresses)
        victim, other = pc.workers[0], addresses[1]
        f = c.submit(slow_inc, 7, delay=2.0, workers=[addresses[0]],
                     allow_other_workers=True)
        wait_for(lambda: f.key in c.processing().get(addresses[0], ()),
                 message="the task to run on the first worker")
        victim.kill()
        assert f.result(timeout=60) == 8            # computed again on the other one
        # The client lets the dead worker's connection go, and keeps the other.
        wait_for(lambda: set(c.shell.result_sockets) == {other},
                 message="the dead worker's connection to close")
        before = c.shell.direct_results
        assert c.submit(inc, 41).result(timeout=30) == 42
        wait_for(lambda: c.shell.direct_results == before + 1, message="one straight")


def test_direct_results_on_an_encrypted_cluster():
    options = {"security": Security.temporary(encrypt=True)}
    with local_cluster(options, options, options) as (s, workers, c):
        warm(c, [w.address for w in workers])
        before = c.shell.direct_results
        assert [c.submit(inc, i).result(timeout=30) for i in range(5)] == [1, 2, 3, 4, 5]
        wait_for(lambda: c.shell.direct_results == before + 5, message="5 straight")


def test_a_client_without_the_key_gets_nothing_straight():
    with local_cluster() as (s, workers, c):
        warm(c, [w.address for w in workers])
        # A stranger with another key connects to a worker's peer socket: refused,
        # so the worker never counts it as a client to send results to.
        from dask_ipy.comm import connect_dealer, send
        from dask_ipy.protocol import Session
        stranger = Security.temporary()
        sock = connect_dealer(workers[0].loop.context, stranger, b"stranger",
                              workers[0].address)
        try:
            session = Session(stranger.key, b"stranger")
            session.epoch = b"e" * 16
            try:
                send(sock, session.dumps([{"op": "subscribe-results"}],
                                         workers[0].address.encode()))
            except zmq.Again:
                pass            # refused already: no connection is left to send on
            assert c.submit(inc, 1, workers=[workers[0].address]).result(timeout=30) == 2
            done = threading.Event()
            workers[0].loop.call_soon(done.set)
            assert done.wait(10)
            assert b"stranger" not in workers[0].state.clients
            assert c.shell.id in workers[0].state.clients
        finally:
            sock.close(linger=0)


def test_a_value_lost_with_its_connection_comes_from_the_scheduler():
    """A value sent straight on a connection that then drops never comes, and the
    scheduler, told it went straight, said nothing of it: the dropped connection
    makes the client ask for its pending keys again, and from then on the
    scheduler tells it of every key, value and all."""
    with local_cluster() as (s, workers, c):
        addresses = [w.address for w in workers]
        warm(c, addresses)
        lost = threading.Event()
        on_frames = c.shell._on_worker_frames

        def lose_results(frames):           # what the dying connection would carry
            lost.set()
        c.shell._on_worker_frames = lose_results
        # The handler is looked up when the socket is registered: register again.
        for address, (sock, _) in c.shell.result_sockets.items():
            c.shell.loop.call_soon(c.shell.loop.add_socket, sock, lose_results)
        f = c.submit(inc, 1, workers=[addresses[0]], pure=False)
        calls = []
        f.add_done_callback(lambda f: calls.append(f.key))
        assert lost.wait(30), "no value sent straight"
        with pytest.raises(cf.TimeoutError):
            f.result(timeout=0.5)           # nothing else comes...
        assert not f.done()
        c.shell._on_worker_frames = on_frames
        for address in addresses:           # ...until the connections drop
            c.shell.loop.call_soon(c.shell._worker_lost, address)
        assert f.result(timeout=30) == 2
        wait_for(lambda: calls == [f.key], message="one done callback")
        # Later keys still end right (long way or straight), a gather of several
        # too.
        futures = c.map(inc, range(10), pure=False)
        assert c.gather(futures) == list(range(1, 11))
        assert [g.result(timeout=30) for g in
                [c.submit(inc, i, pure=False) for i in range(3)]] == [1, 2, 3]
        assert c.who_has(futures[0])[futures[0].key]


def test_round_trips_leave_no_request_or_gather_behind():
    """Values come straight and each Future is let go at once, its release often
    overtaking the worker's word to the scheduler: no request, gather or report
    is left on either side, and none is answered for nothing."""
    with local_cluster() as (s, workers, c):
        warm(c, [w.address for w in workers])
        seen = watch(c)
        before = c.shell.direct_results
        for i in range(200):
            assert c.submit(inc, i).result(timeout=30) == i + 1
        assert c.shell.direct_results - before >= 150
        state = c.shell.state
        wait_for(lambda: not state.requests and not state.gathers and not state.by_key,
                 message="no request left in the client")
        done = threading.Event()
        s.loop.call_soon(done.set)
        assert done.wait(10)
        wait_for(lambda: not s.state.gathers and not s.state.parked,
                 message="no gather left in the scheduler")
        assert all(not cr.reports for cr in s.state.clients.values())
        assert seen["in_memory"] == [] and seen["values"] == []


def test_a_future_released_while_its_result_is_awaited_fails_the_wait():
    with local_cluster() as (s, workers, c):
        warm(c, [w.address for w in workers])
        f = c.submit(slow_inc, 1, delay=1.0, pure=False)
        outcome = []
        waiting = threading.Thread(target=lambda: outcome.append(
            _raised(lambda: f.result(timeout=20))))
        waiting.start()
        wait_for(lambda: c.shell.state.gathers, message="the gather to be sent")
        f.release()
        waiting.join(30)
        assert outcome and isinstance(outcome[0], KeyReleased), outcome


def _raised(fn):
    try:
        return fn()
    except BaseException as e:
        return e


def test_a_value_the_worker_could_not_send_comes_from_the_scheduler():
    """The client's connection to a worker is gone without its knowing (nothing
    told it): the worker's send fails, and its task-finished no longer says the
    value went straight, so the scheduler sends it."""
    with local_cluster() as (s, workers, c):
        addresses = [w.address for w in workers]
        warm(c, addresses)
        done = threading.Event()

        def close():
            c.shell._close_worker_socket(c.shell.result_sockets, addresses[0])
            done.set()
        c.shell.loop.call_soon(close)
        assert done.wait(10)
        time.sleep(0.5)                 # the worker's end of it closes too
        before = c.shell.direct_results
        f = c.submit(inc, 41, workers=[addresses[0]], pure=False)
        assert f.result(timeout=20) == 42
        assert c.shell.direct_results == before
        wait_for(lambda: c.shell.id not in workers[0].state.clients,
                 message="the worker to forget the client")
