"""Small results straight from the worker to the waiting client, on real sockets and
processes: after a worker's first result for a client, the scheduler no longer
sends the values (it only says the keys are done), done callbacks run once, and
cancel, errors, retries, encryption and a worker dying stay correct."""

import concurrent.futures as cf
import threading

import pytest
import zmq

from dask_ipy.security import Security
from helpers import (Boom, fail, fail_until, inc, local_cluster, processes, slow_inc,
                     wait_for)

pytestmark = pytest.mark.timeout(120)


def watch(c):
    """Record what the scheduler tells the client: the values its gather answers
    and its "key-in-memory" messages carry, and the keys it says are in memory; and the keys the client asks for
    again, with their values, because the worker's message has not come (yet: it
    may be overtaken by the scheduler's answer, which then answers the retry)."""
    seen = {"values": [], "in_memory": [], "asked_again": [], "requests": set()}
    gather = c.shell.state.gather

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
        assert 1 <= straight < 20
        wait_for(lambda: keys <= set(seen["in_memory"]), message="key-in-memory")
        # Each of the others came from the scheduler; one that came straight did
        # too only if the scheduler's word overtook the worker's and the client
        # asked for it again (both answers carry the value then).
        from_scheduler = len(keys & set(seen["values"]))
        again = len(keys & set(seen["asked_again"]))
        assert 20 - straight <= from_scheduler <= 20 - straight + again
        # One done callback each, though both the worker and the scheduler said so.
        wait_for(lambda: len(calls) == 20, message="done callbacks")
        assert sorted(calls) == sorted(keys)

        seen = watch(c)
        before = c.shell.direct_results
        singles = []
        for i in range(20, 30):                                 # one at a time
            f = c.submit(inc, i)
            assert f.result(timeout=30) == i + 1
            singles.append(f.key)
            # Questions asked at once see what the client saw (the scheduler's word
            # may come after the value, and such questions wait for it).
            assert c.who_has(f)[f.key] != (), "the scheduler does not know yet"
            assert f.key in [r["key"] for r in c.get_task_stream(count=5)]
        wait_for(lambda: c.shell.direct_results - before == 10, message="10 straight")
        # The scheduler still learns of every one (and says so), never with its
        # value unless asked again.
        wait_for(lambda: set(singles) <= set(seen["in_memory"]), message="key-in-memory")
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
