"""Variable, Queue, Lock, Semaphore and Event on a scheduler and two workers of two
threads in their own processes: tasks on different workers contending for a Lock,
Futures passed through a Queue and kept by a Variable, an Event that tasks wait on,
a Semaphore's limit, timeouts, the asynchronous client, and a client killed while it
holds a Lock.  Overlap is read from the intervals the tasks record (one clock: the
host's monotonic one), never from sleeps."""

import asyncio
import subprocess
import sys
import threading
import time
import uuid

import pytest

from dask_ipy import (Client, ClosedClientError, Event, Lock, MultiLock, Queue, Semaphore,
                      Variable, get_client)
from helpers import inc, wait_for

pytestmark = pytest.mark.timeout(60)

PROCESS_CLUSTER = {"nthreads": 2}


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker_addresses(c):
    return sorted(c.scheduler_info()["workers"])


def max_overlap(intervals):
    """The most intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] +
                   [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


# ---------------------------------------------------------------- tasks

def hold_lock(lock_name, arrived, go, hold):
    """Say so once running, wait for the word, then hold the lock for ``hold`` s."""
    Queue(arrived).put(1)
    assert Event(go).wait(timeout=30)
    with Lock(lock_name):
        start = time.monotonic()
        time.sleep(hold)
        return start, time.monotonic()


def hold_semaphore(sem, hold):
    with sem:
        start = time.monotonic()
        time.sleep(hold)
        return start, time.monotonic()


def put_futures(queue_name, n):
    """Futures of this task's client go into the queue; the task ends, and its
    client lets its own Futures go."""
    c = get_client()
    q = Queue(queue_name)
    for i in range(n):
        q.put(c.submit(inc, 100 + i, pure=False))
    return n


def result_of_queued_future(queue_name):
    return Queue(queue_name).get(timeout=30).result(timeout=30)


def wait_for_event(name, arrived):
    Queue(arrived).put(1)
    assert Event(name).wait(timeout=30)
    return time.monotonic()


def timeouts_in_a_task(lock_name):
    t = time.monotonic()
    got = Lock(lock_name).acquire(timeout=0.2)
    waited = time.monotonic() - t
    try:
        Queue(unique("empty")).get(timeout=0.1)
        raised = False
    except TimeoutError:
        raised = True
    return got, waited, raised


# ---------------------------------------------------------------- tests

def contend(c, lock_names):
    """Two tasks, one per worker, each holding its lock for a while, released at
    once when both are running; their (start, end) intervals."""
    arrived, go = unique("arrived"), unique("go")
    futures = [c.submit(hold_lock, name, arrived, go, 0.3, workers=[w], pure=False)
               for name, w in zip(lock_names, worker_addresses(c))]
    assert Queue(arrived).get(timeout=30, batch=2) == [1, 1]
    Event(go).set()
    return [f.result(timeout=30) for f in futures]


def test_tasks_on_two_workers_take_a_lock_in_turn(c):
    name = unique("lock")
    assert max_overlap(contend(c, [name, name])) == 1
    # The same tasks with a lock each do overlap: the run can show a broken lock.
    assert max_overlap(contend(c, [unique("lock"), unique("lock")])) == 2
    assert not Lock(name).locked()


def hold_multilock(names, hold):
    with MultiLock(names):
        start = time.monotonic()
        time.sleep(hold)
        return start, time.monotonic()


def test_multilocks_sharing_a_name_take_turns(c):
    x, y, z = unique("x"), unique("y"), unique("z")
    apart = c.gather([c.submit(hold_multilock, names, 0.3, pure=False)
                      for names in ([x, y], [y, z])])
    assert max_overlap(apart) == 1                 # y in common
    together = c.gather([c.submit(hold_multilock, names, 0.3, pure=False)
                         for names in ([x], [z])])
    assert max_overlap(together) == 2
    held = MultiLock([x, y])
    assert held.acquire(timeout=1) and held.locked()
    assert MultiLock([y, z]).acquire(timeout=0.1) is False
    assert MultiLock([y, z]).acquire(num_locks=1, blocking=False) is True    # z
    assert held.release() is None                  # as dask.distributed's
    assert not held.locked()
    with pytest.raises(ValueError):
        held.release()
    with pytest.raises(ValueError, match="num_locks"):
        MultiLock([x]).acquire(num_locks=2)


def test_a_semaphore_lets_max_leases_tasks_run_at_once(c):
    sem = Semaphore(max_leases=2, name=unique("sem"))
    # Four threads in all: without the semaphore four of these would overlap.
    intervals = c.gather(c.map(hold_semaphore, [sem] * 6, [0.2] * 6, pure=False))
    assert max_overlap(intervals) == 2
    assert sem.get_value() == 0


def test_futures_go_from_a_task_to_the_client_through_a_queue_and_back(c):
    name = unique("q")
    assert c.submit(put_futures, name, 3, pure=False).result(timeout=30) == 3
    q = Queue(name)
    futures = [q.get(timeout=10) for _ in range(3)]
    assert [f.result(timeout=10) for f in futures] == [101, 102, 103]
    assert q.qsize() == 0
    back = unique("q")
    Queue(back).put(c.submit(inc, 7, pure=False))
    assert c.submit(result_of_queued_future, back, pure=False).result(timeout=30) == 8
    # What the queue held is let go once taken and dropped.
    del futures
    wait_for(lambda: c.scheduler_info()["ntasks"] == 0, message="keys released")


def test_a_variable_keeps_a_future_its_client_let_go(pc, c):
    name = unique("var")
    other = Client(pc.file, set_as_default=False)
    try:
        f = other.submit(inc, 41, pure=False)
        key = f.key
        Variable(name, client=other).set(f)
        assert f.result(timeout=10) == 42
        del f
    finally:
        other.close()
    got = Variable(name, client=c).get(timeout=10)
    assert got.key == key and got.result(timeout=10) == 42
    Variable(name, client=c).delete()
    assert c.scheduler_info()["ntasks"] == 1        # still ours
    del got
    wait_for(lambda: c.scheduler_info()["ntasks"] == 0, message="key released")


def divide(x, y):
    return x / y


def test_futures_got_from_a_variable_or_a_queue_know_at_once_how_their_keys_ended(pc, c):
    """Straight after the get, not once the scheduler has answered the client's
    word that it wants the keys: the answer to the get says how they ended."""
    var, queue = unique("var"), unique("q")
    done, erred = c.submit(inc, 1, pure=False), c.submit(divide, 1, 0, pure=False)
    Variable(var).set(done)
    Queue(queue).put(erred)
    Queue(queue).put([done, erred])
    assert c.gather(done) == 2 and erred.exception(timeout=10) is not None
    other = Client(pc.file, set_as_default=False)
    try:
        got = Variable(var, client=other).get(timeout=10)
        assert got.status == "finished"
        got = Queue(queue, client=other).get(timeout=10)
        assert got.status == "error"
        assert isinstance(got.exception(timeout=0), ZeroDivisionError)
        [[a, b]] = Queue(queue, client=other).get(timeout=10, batch=True)
        assert (a.status, b.status) == ("finished", "error")
    finally:
        other.close()
    # The same client, having let go of its Futures (the value holds the key).
    key = done.key
    del done, erred, got, a, b
    again = Variable(var).get(timeout=10)
    assert again.key == key and again.status == "finished"
    Variable(var).delete()


def test_closing_a_queue_lets_go_of_the_futures_in_it(c):
    q = Queue(unique("q"))
    q.put(c.submit(inc, 1, pure=False))
    q.put(2)
    wait_for(lambda: c.scheduler_info()["ntasks"] == 1, message="the queued key kept")
    assert q.close() is None and q.qsize() == 0
    wait_for(lambda: c.scheduler_info()["ntasks"] == 0, message="the key let go")
    q.put(3)                                        # still usable
    assert q.get(timeout=10) == 3


def test_an_unknown_keyword_is_a_type_error_not_a_wait_for_ever(c):
    # queue.Queue's get(block=False) would otherwise wait for an item that never comes
    q, v = Queue(unique("q")), Variable(unique("v"))
    with pytest.raises(TypeError, match="'block'"):
        q.get(block=False)
    with pytest.raises(TypeError, match="'block'"):
        v.get(block=False)
    with pytest.raises(TypeError, match="'block'"):
        q.put(1, block=False)
    assert q.qsize() == 0
    q.put(1, callback_timeout=10)                   # what a client's calls take
    assert q.get(timeout=10, asynchronous=False) == 1


def test_tasks_waiting_on_an_event_go_on_once_the_client_sets_it(c):
    name, arrived = unique("event"), unique("arrived")
    futures = c.map(wait_for_event, [name] * 2, [arrived] * 2, pure=False)
    Queue(arrived).get(timeout=30, batch=2)         # both are waiting now
    assert not Event(name).is_set()
    set_at = time.monotonic()
    Event(name).set()
    assert all(t >= set_at for t in c.gather(futures))
    assert Event(name).is_set() and Event(name).wait(timeout=0)
    Event(name).clear()
    assert not Event(name).is_set()


def test_timeouts_and_a_withdrawn_acquire_never_takes_the_lock(c):
    name = unique("lock")
    holder = Lock(name)
    assert holder.acquire()
    t = time.monotonic()
    assert Lock(name).acquire(timeout=0.2) is False
    assert 0.2 <= time.monotonic() - t < 5
    assert Lock(name).acquire(blocking=False) is False
    got, waited, raised = c.submit(timeouts_in_a_task, name, pure=False).result(30)
    assert got is False and 0.2 <= waited < 5 and raised
    holder.release()
    with pytest.raises(RuntimeError):
        holder.release()
    # Those that gave up are not waiting for it any more: it is free.
    assert Lock(name).acquire(blocking=False) is True
    with pytest.raises(TimeoutError):
        Variable(unique("var")).get(timeout=0.1)
    with pytest.raises(TimeoutError):
        Queue(unique("q")).get(timeout=0.1)
    full = Queue(unique("q"), maxsize=1)
    full.put(1)
    with pytest.raises(TimeoutError):
        full.put(2, timeout=0.1)
    assert full.qsize() == 1 and full.get() == 1
    assert Event(unique("event")).wait(timeout=0.1) is False
    sem = Semaphore(1, unique("sem"))
    assert sem.acquire(timeout=0.1) and not Semaphore(1, sem.name).acquire(timeout=0.1)
    with pytest.raises(ValueError, match="max leases"):
        Semaphore(2, sem.name).acquire()


HOLD_AND_BLOCK = """
import sys
import threading
from dask_ipy import Client, Lock
c = Client(sys.argv[1])
assert Lock(sys.argv[2]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_by_a_client_that_dies_is_released(pc, c):
    name = unique("lock")
    p = subprocess.Popen([sys.executable, "-c", HOLD_AND_BLOCK, pc.file, name],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert Lock(name).acquire(timeout=0.2) is False
        p.kill()
        p.wait(10)
        assert Lock(name).acquire(timeout=20) is True
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stdin.close()
        p.stdout.close()


def test_the_primitives_awaited_with_an_asynchronous_client(pc, c):
    name = unique("lock")
    held = Lock(name)
    assert held.acquire()

    async def main():
        async with Client(pc.file, asynchronous=True, set_as_default=False) as ac:
            lock = Lock(name, client=ac)
            assert await lock.acquire(timeout=0.1) is False
            # An acquire cancelled while it waits gives up its place in line.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(lock.acquire(), 0.2)
            held.release()
            async with lock:
                assert await lock.locked()
            assert not await lock.locked()
            q = Queue(unique("q"), client=ac)
            await q.put(ac.submit(inc, 1, pure=False))
            assert await (await q.get(timeout=10)) == 2
            v = Variable(unique("var"), client=ac)
            await v.set({"a": 1})
            assert await v.get() == {"a": 1}
            with pytest.raises(TimeoutError):
                await Variable(unique("var"), client=ac).get(timeout=0.1)
            e = Event(unique("event"), client=ac)
            waiter = asyncio.ensure_future(e.wait(timeout=10))
            await e.set()
            assert await waiter
            sem = Semaphore(2, unique("sem"), client=ac)
            async with sem:
                assert await sem.get_value() == 1
    asyncio.run(main())
    # Nothing waits for the lock any more (the cancelled acquire withdrew).
    assert Lock(name).acquire(timeout=5)


def parked_gets(name, dask_scheduler):
    """For run_on_scheduler: how many gets of queue ``name`` wait there."""
    q = dask_scheduler.state.coordination.queues.get(name)
    return 0 if q is None else len(q.getters)


def test_an_item_granted_to_an_interrupted_get_goes_back_to_the_queue(pc, c):
    """The get is cancelled once its item is on its way (in the client, unread): the
    item goes back to the front of the queue, its Future still alive."""
    name = unique("q")

    async def main():
        async with Client(pc.file, asynchronous=True, set_as_default=False) as ac:
            getting = asyncio.ensure_future(Queue(name, client=ac).get())
            while not c.run_on_scheduler(parked_gets, name):
                await asyncio.sleep(0.01)
            # While this event loop is held up, the item reaches the client.
            Queue(name, client=c).put(c.submit(inc, 1, key=f"{name}-item"))
            wait_for(lambda: not ac.shell.state.requests, message="the item to arrive")
            getting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getting
    asyncio.run(main())
    q = Queue(name, client=c)
    q.put("second")
    item = q.get(timeout=10)
    assert item.key == f"{name}-item" and item.result(timeout=10) == 2
    assert q.get(timeout=10) == "second"


@pytest.mark.parametrize("batch", [False, 3])
def test_a_get_parked_when_its_client_closes_takes_nothing(pc, c, batch):
    """What a batch held goes back to the queue; the get fails, as the client is
    closed."""
    name = unique("q")
    q = Queue(name, client=c)
    other = Client(pc.file, set_as_default=False)
    errors = []

    def get():
        try:
            Queue(name, client=other).get(batch=batch)
        except Exception as e:
            errors.append(e)
    getting = threading.Thread(target=get)
    getting.start()
    wait_for(lambda: c.run_on_scheduler(parked_gets, name), message="the parked get")
    if batch:
        q.put(1)                               # the batch holds it
        q.put(2)
    other.close()
    getting.join(10)
    assert [type(e) for e in errors] == [ClosedClientError]
    q.put(3)
    assert q.get(batch=3 if batch else 1, timeout=10) == ([1, 2, 3] if batch else [3])


def hold_scheduler(path, seconds):
    """For run_on_scheduler: keep the scheduler's I/O thread busy a while."""
    open(path, "w").close()
    time.sleep(seconds)


def test_an_item_on_its_way_to_a_client_that_closes_is_not_lost(pc, c, tmp_path):
    """While the scheduler is busy, a put is on its way to a parked get of a client
    that then closes: that get still has the item."""
    name = unique("q")
    other = Client(pc.file, set_as_default=False)
    got, errors = [], []

    def run(fn, *args):
        try:
            got.append(fn(*args))
        except Exception as e:
            errors.append(e)
    getting = threading.Thread(target=run, args=(Queue(name, client=other).get,))
    getting.start()
    wait_for(lambda: c.run_on_scheduler(parked_gets, name), message="the parked get")
    busy = tmp_path / "busy"
    holding = threading.Thread(target=c.run_on_scheduler,
                               args=(hold_scheduler, str(busy), 1.0))
    holding.start()
    wait_for(busy.exists, message="the scheduler to be busy")
    # Both go out before the scheduler reads them: the put first.
    putting = threading.Thread(target=run, args=(Queue(name, client=other).put, 1))
    putting.start()
    wait_for(lambda: len(other.shell.state.parked) == 2,    # the get's and the put's
             message="the put to be on its way")
    other.close()
    for thread in (holding, putting, getting):
        thread.join(10)
    assert 1 in got, errors
