"""Actors on real sockets: an object kept on one worker, its methods called straight
from the client or from tasks (not through the scheduler), results as ActorFutures;
what happens when it is released, when its worker dies, and to a caller without the
cluster's key."""

import os
import pickle

import pytest
import zmq

from dask_ipy import Actor, ActorFuture, ActorLost
from dask_ipy.comm import connect_dealer
from dask_ipy.protocol import Session
from dask_ipy.security import Security
from helpers import (AsyncCounter, Boom, Caller, Counter, call_actor, local_cluster,
                     processes, wait_for)

pytestmark = pytest.mark.timeout(120)


def test_a_counter_actor_from_the_client():
    with local_cluster() as (s, workers, c):
        future = c.submit(Counter, 10, actor=True, workers=[workers[0].address])
        counter = future.result(timeout=20)
        assert isinstance(counter, Actor) and counter.worker == workers[0].address
        assert counter.calls_to == workers[0].actor_address != counter.worker
        call = counter.increment()
        assert isinstance(call, ActorFuture)
        assert call.result(timeout=10) == 11
        assert counter.increment(by=5).result(timeout=10) == 16
        assert counter.n == 16                            # an attribute: its value
        obj = workers[0].actors[future.key]
        assert isinstance(obj, Counter) and obj.n == 16   # the object is on the worker
        # Calls from one caller run in the order they were made.
        calls = [counter.increment() for _ in range(200)]
        assert [f.result(timeout=10) for f in calls] == list(range(17, 217))
        # Errors come back with their type and the remote traceback.
        with pytest.raises(Boom, match="actor says no"):
            counter.fail().result(timeout=10)
        assert isinstance(counter.fail().exception(timeout=10), Boom)
        with pytest.raises(AttributeError):
            counter.missing()
        # The calls went to the worker, not through the task graph.
        assert set(s.state.tasks) == {future.key}


def test_calls_go_straight_to_the_worker_not_the_scheduler():
    with local_cluster() as (s, workers, c):
        counter = c.submit(Counter, actor=True).result(timeout=20)
        handled = []
        original = s.state.handle_client_message
        s.state.handle_client_message = lambda cid, msg: (
            handled.append(msg["op"]), original(cid, msg))[1]
        for _ in range(20):
            counter.increment().result(timeout=10)
        s.state.handle_client_message = original
        assert handled == []


def test_tasks_call_an_actor_on_another_worker():
    with local_cluster() as (s, workers, c):
        a, b = workers
        counter = c.submit(Counter, actor=True, workers=[a.address]).result(timeout=20)
        got = c.submit(call_actor, counter, 5, workers=[b.address],
                       pure=False).result(timeout=30)
        assert got == [1, 2, 3, 4, 5]
        assert counter.n == 5


def test_map_makes_one_actor_per_item():
    with local_cluster() as (s, workers, c):
        counters = c.gather(c.map(Counter, [1, 2, 3], actor=True))
        assert [x.increment().result(timeout=10) for x in counters] == [2, 3, 4]
        assert len({x.key for x in counters}) == 3


def test_the_object_goes_when_the_last_handle_goes():
    with local_cluster() as (s, workers, c):
        future = c.submit(Counter, actor=True)
        counter = future.result(timeout=20)
        key = future.key
        holder = next(w for w in workers if w.address == counter.worker)
        assert key in holder.actors
        del future                          # the handle still holds the key
        assert counter.increment().result(timeout=10) == 1
        copy = pickle.loads(pickle.dumps(counter))   # a handle rebuilt holds it too
        del counter
        assert copy.increment().result(timeout=10) == 2
        del copy
        wait_for(lambda: key not in holder.actors, message="the actor to be dropped")
        wait_for(lambda: key not in s.state.tasks, message="the key to be forgotten")


def test_a_caller_without_the_key_is_refused():
    """A connection without the cluster's key is refused; a call signed with
    another key on a connection that was let in is dropped unanswered."""
    with local_cluster() as (s, workers, c):
        counter = c.submit(Counter, actor=True).result(timeout=20)
        holder = next(w for w in workers if w.address == counter.worker)
        call = {"op": "actor-call", "key": counter.key, "name": "increment",
                "kind": "call", "request_id": 1}
        ctx = zmq.Context()
        try:
            refused = holder.loop.refused.total
            stranger = connect_dealer(ctx, Security.temporary(), b"stranger",
                                      counter.calls_to)
            wait_for(lambda: holder.loop.refused.total > refused,
                     message="the connection to be refused")
            stranger.close(linger=0)

            rejected = holder.rejections.total
            forger = connect_dealer(ctx, holder.security, b"forger", counter.calls_to)
            session = Session(Security.temporary().key, b"forger")
            session.epoch = holder.session.epoch
            forger.send_multipart(session.dumps([call], counter.calls_to.encode()))
            wait_for(lambda: holder.rejections.total > rejected,
                     message="the worker to refuse the call")
            assert forger.poll(200) == 0               # and no answer
            forger.close(linger=0)
        finally:
            ctx.destroy(linger=0)
        assert counter.n == 0                          # the call never ran


def test_an_actor_on_a_worker_process_and_its_death(tmp_path):
    with processes(tmp_path, nworkers=2, nthreads=1) as (pc, c):
        counter = c.submit(Counter, actor=True).result(timeout=30)
        pid = counter.where().result(timeout=10)
        assert pid != os.getpid()
        assert [counter.increment().result(timeout=10) for _ in range(3)] == [1, 2, 3]
        victim = next(p for p in pc.workers if p.first_line == counter.worker)
        victim.kill()
        victim.wait(10)
        # The state lived only in that process: it is lost, and callers are told.
        with pytest.raises(ActorLost, match="gone"):
            counter.increment().result(timeout=30)
        with pytest.raises(ActorLost):
            counter.increment().result(timeout=10)


def test_actors_and_task_clients_on_an_encrypted_cluster():
    """CURVE everywhere: a task's client and actor calls use the cluster's Security
    as it is, nothing more to hand out."""
    from helpers import fib

    options = {"security": Security.temporary(encrypt=True)}
    with local_cluster(options, options, options) as (s, workers, c):
        assert c.submit(fib, 10).result(timeout=60) == 55
        counter = c.submit(Counter, actor=True).result(timeout=20)
        assert [counter.increment().result(timeout=10) for _ in range(3)] == [1, 2, 3]
        got = c.submit(call_actor, counter, 2, pure=False).result(timeout=30)
        assert got == [4, 5]


def test_actor_futures_can_be_awaited():
    import asyncio

    with local_cluster() as (s, workers, c):
        counter = c.submit(Counter, actor=True).result(timeout=20)

        async def calls():
            return [await counter.increment() for _ in range(3)]
        assert asyncio.run(asyncio.wait_for(calls(), 30)) == [1, 2, 3]


def test_a_worker_restarted_in_place_drops_its_actors():
    with local_cluster() as (s, workers, c):
        counter = c.submit(Counter, actor=True).result(timeout=20)
        assert counter.increment().result(timeout=10) == 1
        holder = next(w for w in workers if w.address == counter.worker)
        assert c.restart_workers([counter.worker]) == {counter.worker: "OK"}
        assert holder.actors == {}
        with pytest.raises(ActorLost, match="state is lost"):
            counter.increment().result(timeout=10)


def test_a_first_call_to_a_worker_already_gone_fails(tmp_path):
    """A caller that never reached the worker before it died is told too: its
    connection is refused."""
    with processes(tmp_path, nworkers=2, nthreads=1) as (pc, c):
        counter = c.submit(Counter, actor=True).result(timeout=30)
        victim = next(p for p in pc.workers if p.first_line == counter.worker)
        victim.kill()
        victim.wait(10)
        from dask_ipy import Client

        with Client(pc.file) as fresh:      # the default now; never called that worker
            other = pickle.loads(pickle.dumps(counter))
            with pytest.raises(ActorLost):      # at once: no waiting for a timeout
                other.increment().result(timeout=10)


def test_actor_methods_call_actors_of_their_own_worker(tmp_path):
    """Calls to different actors are independent: a method waiting on another actor
    of the same worker gets its answer; one calling its own actor through a handle
    runs that call at once, as ``self.method()`` would."""
    with processes(tmp_path, nworkers=2, nthreads=1) as (pc, c):
        counter = c.submit(Counter, actor=True).result(timeout=30)
        caller = c.submit(Caller, actor=True, workers=[counter.worker]).result(timeout=30)
        assert caller.worker == counter.worker
        assert caller.call(counter, 3).result(timeout=30) == [1, 2, 3]
        assert counter.n == 3
        assert caller.record_through(caller, "a").result(timeout=30) == (1, ["a"])
        assert caller.record_through(caller, "b").result(timeout=30) == (2, ["a", "b"])
        with pytest.raises(Boom, match="caller says no"):
            caller.fail_through(caller).result(timeout=30)
        # separate_thread= is accepted (every call runs off the worker's I/O thread)
        assert counter.increment(separate_thread=False).result(timeout=10) == 4
        assert counter.increment(separate_thread=True).result(timeout=10) == 5


def test_a_busy_actor_holds_up_its_own_calls_only(tmp_path):
    gate = tmp_path / "gate"
    with local_cluster() as (s, workers, c):
        where = [workers[0].address]
        busy = c.submit(Caller, actor=True, workers=where).result(timeout=20)
        counter = c.submit(Counter, actor=True, workers=where).result(timeout=20)
        try:
            blocked = busy.wait_for_file(str(gate))
            queued = [busy.record(i) for i in range(50)]
            # the worker's other actor answers meanwhile
            assert [counter.increment().result(timeout=10) for _ in range(3)] == [1, 2, 3]
            assert not blocked.done() and not any(f.done() for f in queued)
        finally:
            gate.touch()
        assert blocked.result(timeout=20) == 0
        # the busy actor's calls then run one at a time, in the order they came
        assert [f.result(timeout=20) for f in queued] == list(range(1, 51))
        assert busy.seen == list(range(50))


def test_async_methods():
    with local_cluster() as (s, workers, c):
        actor = c.submit(AsyncCounter, actor=True).result(timeout=20)
        assert actor.increment().result(timeout=10) == 1
        calls = [actor.increment(by=2) for _ in range(3)]
        assert [f.result(timeout=10) for f in calls] == [3, 5, 7]
        assert actor.n == 7
        # the coroutines of one actor interleave at their awaits
        waiting = actor.wait_open()
        assert actor.open().result(timeout=10) == "open"
        assert waiting.result(timeout=10) == "opened"
        with pytest.raises(Boom, match="async actor says no"):
            actor.fail().result(timeout=10)
        # one awaits a call to another actor
        counter = c.submit(Counter, actor=True, workers=[actor.worker]).result(timeout=20)
        assert actor.ask(counter).result(timeout=10) == 1
        # and calls its own actor through a handle, from either kind of method
        assert actor.twice(actor).result(timeout=10) == [8, 9]
        assert actor.increment_through(actor).result(timeout=10) == 10
        assert actor.count_through(actor).result(timeout=10) == 10


def test_lanes_keep_each_actors_calls_in_order_and_actors_apart():
    """The worker's lanes alone: a call that waits holds up later calls to its actor
    and no other's; idle threads serve the next actors, and end on close."""
    import threading

    from dask_ipy.worker.actors import ActorLanes

    ran = {"a": [], "b": [], "c": []}
    release = threading.Event()

    def run(key, call):
        if call == "wait":
            assert release.wait(20)
        ran[key].append(call)

    def lane_threads():
        return [t for t in threading.enumerate() if t.name == "test-lane"]

    lanes = ActorLanes(run, name="test-lane")
    try:
        lanes.submit("a", "wait")
        for i in range(20):
            lanes.submit("a", i)
            lanes.submit("b", i)
        wait_for(lambda: ran["b"] == list(range(20)))
        assert ran["a"] == []
        wait_for(lambda: lanes.busy() == {"a"})
        release.set()
        wait_for(lambda: len(ran["a"]) == 21)
        assert ran["a"] == ["wait", *range(20)]
        wait_for(lambda: lanes.busy() == set())
        assert len(lane_threads()) == 2                  # idle, kept for later calls
        lanes.submit("c", 1)                             # served by an idle one
        wait_for(lambda: ran["c"] == [1])
        assert len(lane_threads()) == 2
    finally:
        release.set()
        lanes.close()
    wait_for(lambda: not lane_threads())
    assert lanes.submit("a", 2) is False
