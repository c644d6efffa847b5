"""The client's side of a request that waits on the scheduler, step by step against a
stand-in shell: what it sends when its timeout passes or it is interrupted, and what
it makes of the one answer its request then gets (withdrawn, or a grant that crossed
the withdraw).  No sockets, no clocks: the waits are handed their outcomes."""

import concurrent.futures as cf
import itertools

import pytest

from dask_ipy.client.coordination import Event, Lock, MultiLock, Queue, Semaphore, Variable
from dask_ipy.client.waits import Answer, KeptAnswer
from dask_ipy.messages import WITHDRAWN
from dask_ipy.protocol import serialize

pytestmark = pytest.mark.timeout(30)


class Shell:
    def __init__(self):
        self.sent = []
        self.tokens = {}
        self.ids = itertools.count(1)

    def check_open(self):
        pass

    def request_future(self, msg):
        msg["request_id"] = rid = next(self.ids)
        self.tokens[rid] = cf.Future()
        self.sent.append(msg)
        return self.tokens[rid]

    def send(self, msg):
        self.sent.append(msg)

    def hold_many(self, keys):
        self.sent.append(("hold", keys))

    def drop(self, keys):
        self.sent.append(("drop", keys))

    def learn(self, reports):
        if reports:
            self.sent.append(("learn", reports))

    def ops(self):
        return [(m["op"], m.get("what"), m.get("request_id", m.get("request")))
                for m in self.sent if isinstance(m, dict)]


class FakeClient:
    def __init__(self):
        self.shell = Shell()


@pytest.fixture
def client():
    return FakeClient()


def timed_out(op):
    """Start ``op``, let its timed wait pass: the wait for its one answer."""
    assert type(next(op)) is KeptAnswer
    wait = op.throw(TimeoutError("late"))
    assert type(wait) is Answer and wait.timeout is None
    return wait


def finish(op, answer):
    with pytest.raises(StopIteration) as stop:
        op.send(answer)
    return stop.value.value


def test_an_acquire_that_times_out_is_withdrawn(client):
    lock = Lock("l", client=client)
    op = lock._acquire_op(0.1)
    timed_out(op)
    assert finish(op, WITHDRAWN) is False
    assert client.shell.ops() == [("coordinate", "acquire", 1), ("withdraw", None, 1)]
    assert not lock._leases


def test_a_lease_granted_as_the_acquire_timed_out_is_released(client):
    lock = Lock("l", client=client)
    op = lock._acquire_op(0.1)
    timed_out(op)
    assert finish(op, True) is False
    lease = client.shell.sent[0]["lease"]
    assert client.shell.ops() == [("coordinate", "acquire", 1), ("withdraw", None, 1),
                                  ("coordinate", "release", 2)]
    assert client.shell.sent[2]["lease"] == lease
    assert not lock._leases


def test_an_interrupted_acquire_withdraws_and_releases_a_lease_granted_later(client):
    lock = Lock("l", client=client)
    op = lock._acquire_op(None)
    next(op)
    with pytest.raises(KeyboardInterrupt):
        op.throw(KeyboardInterrupt())
    assert client.shell.ops() == [("coordinate", "acquire", 1), ("withdraw", None, 1)]
    client.shell.tokens[1].set_result(True)                      # the grant, late
    assert client.shell.ops()[-1] == ("coordinate", "release", 2)
    # Withdrawn in time: nothing to release.
    op = lock._acquire_op(None)
    next(op)
    with pytest.raises(KeyboardInterrupt):
        op.throw(KeyboardInterrupt())
    client.shell.tokens[3].set_result(WITHDRAWN)
    assert client.shell.ops()[-1] == ("withdraw", None, 3)


def test_a_queue_item_that_crossed_the_withdraw_is_returned(client):
    q = Queue("q", client=client)
    op = q._get_op(0.1, False)
    timed_out(op)
    assert finish(op, {"data": serialize("item")}) == "item"
    assert client.shell.ops() == [("coordinate", "queue-get", 1), ("withdraw", None, 1)]


@pytest.mark.parametrize("batch, answer, items", [
    (False, {"data": "b1", "keys": ["x"]}, [{"data": "b1", "keys": ["x"]}]),
    (2, {"items": ["b1", "b2"], "keys": [["x"], []]},
     [{"data": "b1", "keys": ["x"]}, {"data": "b2", "keys": []}])])
def test_queue_items_taken_for_an_interrupted_get_are_given_back(client, batch,
                                                                 answer, items):
    op = Queue("q", client=client, maxsize=3)._get_op(None, batch)
    next(op)
    with pytest.raises(KeyboardInterrupt):
        op.throw(KeyboardInterrupt())
    assert client.shell.ops() == [("coordinate", "queue-get", 1), ("withdraw", None, 1)]
    client.shell.tokens[1].set_result(answer)                    # the items, late
    # Back to the front of the queue, their keys held here until it holds them.
    assert client.shell.sent[2:] == [
        ("hold", ["x"]),
        {"op": "coordinate", "what": "queue-unget", "name": "q", "maxsize": 3,
         "items": items, "request_id": 2},
        ("drop", ["x"])]
    # Withdrawn in time: nothing to give back.
    op = Queue("q", client=client)._get_op(None, batch)
    next(op)
    with pytest.raises(KeyboardInterrupt):
        op.throw(KeyboardInterrupt())
    client.shell.tokens[3].set_result(WITHDRAWN)
    assert client.shell.ops()[-1] == ("withdraw", None, 3)


def test_a_get_withdrawn_in_time_raises_timeout_error(client):
    for op in (Queue("q", client=client)._get_op(0.1, False),
               Variable("v", client=client)._get_op(0.1)):
        timed_out(op)
        with pytest.raises(TimeoutError):
            op.send(WITHDRAWN)


def test_an_event_wait_answered_as_it_timed_out_is_true(client):
    e = Event("e", client=client)
    op = e._waiting_op("event-wait", 0.1)
    timed_out(op)
    assert finish(op, True) == (True, True)


def test_a_timeout_of_zero_asks_not_to_wait(client):
    op = Lock("l", client=client)._acquire_op(0)
    wait = next(op)
    assert wait.timeout is None and client.shell.sent[0]["wait"] is False
    assert finish(op, WITHDRAWN) is False


def test_releasing_more_than_acquired_is_an_error_before_anything_is_sent(client):
    sem = Semaphore(name="s", client=client)
    with pytest.raises(RuntimeError, match="^Released too often: semaphore 's'"):
        sem.release()
    with pytest.raises(RuntimeError, match="^Released too often: lock 'l'"):
        Lock("l", client=client).release()
    with pytest.raises(ValueError, match="Lock is not yet acquired"):
        MultiLock(["a"], client=client).release()
    assert client.shell.sent == []


@pytest.mark.parametrize("timeout", ["300ms", 0.3, __import__("datetime").timedelta(
    milliseconds=300)])
def test_a_timeout_is_told_in_seconds_however_it_was_given(client, timeout):
    for op, text in [(Queue("q", client=client)._get_op(timeout, False),
                      "queue 'q' had no item within 0.3 s"),
                     (Queue("q", client=client)._put_op(1, timeout),
                      "no room in queue 'q' within 0.3 s"),
                     (Variable("v", client=client)._get_op(timeout),
                      "variable 'v' not set within 0.3 s")]:
        timed_out(op)
        with pytest.raises(TimeoutError) as info:
            op.send(WITHDRAWN)
        assert str(info.value) == text


def test_each_lock_object_has_an_id_of_its_own(client):
    objects = [Lock("l", client=client), Lock("l", client=client),
               Semaphore(name="s", client=client), MultiLock(["l"], client=client)]
    ids = [o.id for o in objects]
    assert len(set(ids)) == 4 and all(type(i) is str for i in ids)
    import pickle
    copy = pickle.loads(pickle.dumps(objects[0]))
    assert copy.name == "l" and copy.id != objects[0].id
