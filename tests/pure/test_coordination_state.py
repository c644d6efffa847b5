"""The scheduler's Variables, Queues, Locks, Semaphores, Events and MultiLocks alone: requests
in, effects out, literally; every race between a grant and a withdraw; a client that
leaves; and, through SchedulerState, the keys of stored Futures kept alive."""

import pytest

from dask_ipy.messages import WITHDRAWN
from dask_ipy.scheduler.coordination import Coordination, Reply, Unwant, Want
from dask_ipy.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(60)


class Co(Coordination):
    """Checks its invariants after every call, and numbers requests per client."""

    def __init__(self):
        super().__init__()
        self.rids = {}

    def ask(self, cid, what, **fields):
        rid = self.rids[cid] = self.rids.get(cid, 0) + 1
        out = self.handle(cid, {"op": "coordinate", "what": what, "request_id": rid,
                                **fields})
        self.validate()
        return out

    def give_up(self, cid, rid):
        out = self.withdraw(cid, {"op": "withdraw", "request": rid})
        self.validate()
        return out

    def leave(self, cid):
        out = self.remove_client(cid)
        self.validate()
        return out


@pytest.fixture
def co():
    return Co()


def empty(co):
    return not (co.variables or co.var_waiters or co.queues or co.semaphores
                or co.events or co.multi_locks or co.multi_leases or co.parked)


# ---------------------------------------------------------------- Variable

def test_variable_get_waits_for_a_set_and_keeps_its_futures_alive(co):
    assert co.ask("b", "variable-get", name="v") == []            # parked
    assert co.ask("a", "variable-set", name="v", data="blob1", keys=["x"]) == [
        Want(("variable", "v", 1), ["x"]),
        Want("b", ["x"]), Reply("b", 1, {"data": "blob1", "keys": ["x"]}),
        Reply("a", 1, True)]
    assert co.ask("b", "variable-get", name="v") == [
        Want("b", ["x"]), Reply("b", 2, {"data": "blob1", "keys": ["x"]})]
    # A new value: its keys are held before the old ones are let go.
    assert co.ask("a", "variable-set", name="v", data="blob2", keys=["y"]) == [
        Want(("variable", "v", 2), ["y"]), Unwant(("variable", "v", 1), ["x"]),
        Reply("a", 2, True)]
    assert co.ask("a", "variable-delete", name="v") == [
        Unwant(("variable", "v", 2), ["y"]), Reply("a", 3, True)]
    assert co.ask("a", "variable-delete", name="v") == [Reply("a", 4, False)]
    assert empty(co)


def test_requests_that_must_not_wait_are_withdrawn_at_once(co):
    assert co.ask("a", "variable-get", name="v", wait=False) == [Reply("a", 1, WITHDRAWN)]
    co.ask("a", "variable-set", name="v", data=1)
    assert co.ask("a", "variable-get", name="v", wait=False) == [
        Reply("a", 3, {"data": 1, "keys": []})]
    assert co.ask("a", "queue-get", name="q", wait=False) == [Reply("a", 4, WITHDRAWN)]
    assert co.ask("a", "event-wait", name="e", wait=False) == [Reply("a", 5, WITHDRAWN)]
    co.ask("a", "queue-put", name="q", maxsize=1, data=1, wait=False)
    assert co.ask("a", "queue-put", name="q", maxsize=1, data=2, keys=["x"],
                  wait=False) == [Want(("queue", "q", 3), ["x"]),
                                  Unwant(("queue", "q", 3), ["x"]),
                                  Reply("a", 7, WITHDRAWN)]
    assert co.ask("a", "queue-get", name="q", wait=False) == [
        Reply("a", 8, {"data": 1, "keys": []})]
    co.ask("a", "variable-delete", name="v")
    assert empty(co)


def test_variable_get_withdrawn_before_or_after_the_set(co):
    co.ask("b", "variable-get", name="v")
    assert co.give_up("b", 1) == [Reply("b", 1, WITHDRAWN)]
    assert empty(co)
    # The set answered the get first: the withdraw finds nothing to do, and the
    # client keeps the value its request was answered with.
    co.ask("b", "variable-get", name="v")
    assert co.ask("a", "variable-set", name="v", data="d")[0] == Reply(
        "b", 2, {"data": "d", "keys": []})
    assert co.give_up("b", 2) == []


def test_deleting_a_variable_leaves_waiting_gets_waiting(co):
    co.ask("b", "variable-get", name="v")
    co.ask("a", "variable-delete", name="v")
    assert co.parked
    assert co.ask("a", "variable-set", name="v", data=3)[0] == Reply("b", 1, {"data": 3,
                                                                       "keys": []})


# ---------------------------------------------------------------- Queue

def test_queue_is_first_in_first_out_and_hands_items_to_waiting_getters(co):
    assert co.ask("b", "queue-get", name="q") == []
    assert co.ask("b", "queue-get", name="q") == []
    assert co.ask("a", "queue-put", name="q", data="one", keys=["x"]) == [
        Want(("queue", "q", 1), ["x"]), Reply("a", 1, True),
        Want("b", ["x"]), Unwant(("queue", "q", 1), ["x"]),
        Reply("b", 1, {"data": "one", "keys": ["x"]})]
    co.ask("a", "queue-put", name="q", data="two")
    co.ask("a", "queue-put", name="q", data="three")
    assert co.ask("a", "queue-size", name="q") == [Reply("a", 4, 1)]
    assert co.ask("c", "queue-get", name="q") == [Reply("c", 1, {"data": "three", "keys": []})]
    assert empty(co)


def test_closing_a_queue_drops_its_items_and_lets_a_putter_in(co):
    assert co.ask("a", "queue-close", name="q") == [Reply("a", 1, True)]
    co.ask("a", "queue-put", name="q", maxsize=1, data="one", keys=["x"])
    assert co.ask("a", "queue-put", name="q", maxsize=1, data="two", keys=["y"]) == [
        Want(("queue", "q", 2), ["y"])]                              # parked
    assert co.ask("b", "queue-close", name="q") == [
        Unwant(("queue", "q", 1), ["x"]), Reply("a", 3, True), Reply("b", 1, True)]
    assert co.ask("b", "queue-close", name="q") == [
        Unwant(("queue", "q", 2), ["y"]), Reply("b", 2, True)]
    assert empty(co)
    # A get waiting goes on waiting.
    assert co.ask("c", "queue-get", name="q") == []
    assert co.ask("b", "queue-close", name="q") == [Reply("b", 3, True)]
    assert co.ask("a", "queue-put", name="q", data="three")[-1] == Reply(
        "c", 1, {"data": "three", "keys": []})
    assert empty(co)


def test_queue_maxsize_parks_putters_until_there_is_room(co):
    assert co.ask("a", "queue-put", name="q", maxsize=1, data=1) == [Reply("a", 1, True)]
    assert co.ask("a", "queue-put", name="q", maxsize=1, data=2, keys=["x"]) == [
        Want(("queue", "q", 2), ["x"])]                     # held while it waits
    assert co.ask("b", "queue-get", name="q") == [
        Reply("b", 1, {"data": 1, "keys": []}), Reply("a", 2, True)]
    assert co.ask("a", "queue-size", name="q") == [Reply("a", 3, 1)]


def test_queue_put_withdrawn_lets_its_value_go(co):
    co.ask("a", "queue-put", name="q", maxsize=1, data=1)
    co.ask("a", "queue-put", name="q", maxsize=1, data=2, keys=["x"])
    assert co.give_up("a", 2) == [Unwant(("queue", "q", 2), ["x"]),
                                  Reply("a", 2, WITHDRAWN)]
    assert co.ask("b", "queue-get", name="q") == [Reply("b", 1, {"data": 1, "keys": []})]
    assert empty(co)


def test_queue_put_accepted_before_its_withdraw_stays_in_the_queue(co):
    co.ask("a", "queue-put", name="q", maxsize=1, data=1)
    co.ask("a", "queue-put", name="q", maxsize=1, data=2)
    co.ask("b", "queue-get", name="q")            # room: the put is answered True
    assert co.give_up("a", 2) == []
    assert co.ask("b", "queue-get", name="q") == [Reply("b", 2, {"data": 2, "keys": []})]


def test_queue_get_withdrawn_loses_nothing(co):
    co.ask("b", "queue-get", name="q")
    assert co.give_up("b", 1) == [Reply("b", 1, WITHDRAWN)]
    co.ask("a", "queue-put", name="q", data=1)
    assert co.ask("a", "queue-size", name="q") == [Reply("a", 2, 1)]


def test_queue_item_granted_before_the_withdraw_is_the_answer(co):
    """The item crossed the withdraw: the request's one answer is the item, which
    the client keeps (it does not vanish), and the withdraw changes nothing."""
    co.ask("b", "queue-get", name="q")
    assert co.ask("a", "queue-put", name="q", data="it") == [
        Reply("a", 1, True), Reply("b", 1, {"data": "it", "keys": []})]
    assert co.give_up("b", 1) == []
    assert empty(co)


def test_queue_batch_takes_all_now_or_waits_for_that_many(co):
    assert co.ask("b", "queue-get", name="q", batch=True) == [Reply("b", 1, {"items": [], "keys": []})]
    assert co.ask("b", "queue-get", name="q", batch=2) == []
    co.ask("a", "queue-put", name="q", data=1)
    assert co.queues["q"].getters[0].taken[0].data == 1
    assert co.ask("a", "queue-put", name="q", data=2) == [
        Reply("a", 2, True), Reply("b", 2, {"items": [1, 2], "keys": [[], []]})]
    for i in range(3):
        co.ask("a", "queue-put", name="q", data=i)
    assert co.ask("b", "queue-get", name="q", batch=True) == [
        Reply("b", 3, {"items": [0, 1, 2], "keys": [[], [], []]})]


def test_queue_batch_withdrawn_puts_what_it_took_back_in_front(co):
    co.ask("b", "queue-get", name="q", batch=3)
    co.ask("a", "queue-put", name="q", data=1, keys=["x"])
    co.ask("a", "queue-put", name="q", data=2)
    co.ask("c", "queue-get", name="q")                      # waits behind b
    # Back in the queue, in order: c, next in line, takes the first at once.
    assert co.give_up("b", 1) == [Want("c", ["x"]),
                                  Unwant(("queue", "q", 1), ["x"]),
                                  Reply("c", 1, {"data": 1, "keys": ["x"]}), Reply("b", 1, WITHDRAWN)]
    assert co.ask("c", "queue-get", name="q") == [Reply("c", 2, {"data": 2, "keys": []})]


def test_queue_items_given_back_go_to_the_front_in_order(co):
    """A client whose get was interrupted as the items came gives them back: the
    next getter has them, before those put since; their keys held meanwhile."""
    co.ask("a", "queue-put", name="q", maxsize=2, data=3)
    co.ask("a", "queue-put", name="q", maxsize=2, data=4)
    co.ask("a", "queue-put", name="q", maxsize=2, data=5)         # waits for room
    assert co.ask("b", "queue-unget", name="q", maxsize=2,
                  items=[{"data": 1, "keys": ["x"]}, {"data": 2, "keys": []}]) == [
        Want(("queue", "q", 4), ["x"]), Reply("b", 1, True)]
    assert co.ask("c", "queue-get", name="q", batch=True) == [
        Want("c", ["x"]), Unwant(("queue", "q", 4), ["x"]),
        Reply("c", 1, {"items": [1, 2, 3, 4], "keys": [["x"], [], [], []]}),
        Reply("a", 3, True)]
    # To an empty queue, and straight to a getter waiting there.
    co.ask("c", "queue-get", name="q", batch=True)
    co.ask("c", "queue-get", name="q")
    assert co.ask("b", "queue-unget", name="q", items=[{"data": 0, "keys": []}]) == [
        Reply("c", 3, {"data": 0, "keys": []}), Reply("b", 2, True)]
    assert empty(co)


def test_queue_batch_with_maxsize_takes_items_as_they_come(co):
    """A batch larger than maxsize is served: what it holds leaves room."""
    co.ask("b", "queue-get", name="q", maxsize=1, batch=3)
    for i in range(3):
        out = co.ask("a", "queue-put", name="q", maxsize=1, data=i)
    assert out == [Reply("a", 3, True), Reply("b", 1, {"items": [0, 1, 2], "keys": [[], [], []]})]


# ---------------------------------------------------------------- Lock, Semaphore

def acquire(co, cid, lease, name="l", kind="lock", max_leases=1, **kw):
    return co.ask(cid, "acquire", name=name, kind=kind, max_leases=max_leases,
                  lease=lease, **kw)


def release(co, cid, lease, name="l", kind="lock"):
    return co.ask(cid, "release", name=name, kind=kind, lease=lease)


def test_lock_is_held_by_one_lease_at_a_time_in_order(co):
    assert acquire(co, "a", "L1") == [Reply("a", 1, True)]
    assert acquire(co, "b", "L2") == []
    assert acquire(co, "c", "L3") == []
    assert acquire(co, "a", "L4", wait=False) == [Reply("a", 2, WITHDRAWN)]
    assert co.ask("a", "semaphore-value", name="l", kind="lock") == [Reply("a", 3, 1)]
    assert release(co, "a", "L1") == [Reply("b", 1, True), Reply("a", 4, True)]
    assert release(co, "a", "L1") == [Reply("a", 5, False)]      # not held any more
    assert release(co, "b", "L2") == [Reply("c", 1, True), Reply("b", 2, True)]
    release(co, "c", "L3")
    assert empty(co)


def test_a_lock_and_a_semaphore_of_one_name_are_two_things(co):
    acquire(co, "a", "L1")
    assert acquire(co, "b", "S1", kind="semaphore") == [Reply("b", 1, True)]


def test_semaphore_grants_max_leases(co):
    for i, cid in enumerate("abc"):
        out = acquire(co, cid, f"S{i}", name="s", kind="semaphore", max_leases=2)
    assert out == []                                              # c waits
    assert co.ask("a", "semaphore-value", name="s") == [Reply("a", 2, 2)]
    assert release(co, "a", "S0", name="s", kind="semaphore") == [
        Reply("c", 1, True), Reply("a", 3, True)]


def test_a_semaphore_in_use_refuses_another_number_of_leases(co):
    acquire(co, "a", "S1", name="s", kind="semaphore", max_leases=2)
    assert acquire(co, "b", "S2", name="s", kind="semaphore", max_leases=3) == [
        Reply("b", 1, {"error": "inconsistent max leases of 's': 3, expected 2",
                       "type": "ValueError"})]
    release(co, "a", "S1", name="s", kind="semaphore")
    # Unused, it is forgotten: a new number is a new semaphore.
    assert acquire(co, "b", "S2", name="s", kind="semaphore", max_leases=3) == [
        Reply("b", 2, True)]


def test_acquire_withdrawn_while_waiting(co):
    acquire(co, "a", "L1")
    acquire(co, "b", "L2")
    assert co.give_up("b", 1) == [Reply("b", 1, WITHDRAWN)]
    assert release(co, "a", "L1") == [Reply("a", 2, True)]        # nobody to give it to
    assert empty(co)


def test_lease_granted_before_the_withdraw_is_released_by_the_client(co):
    """The grant crossed the withdraw: the withdraw does nothing; the client, whose
    request was answered True after it gave up, releases the lease, which goes to
    the next in line."""
    acquire(co, "a", "L1")
    acquire(co, "b", "L2")
    acquire(co, "c", "L3")
    assert release(co, "a", "L1")[0] == Reply("b", 1, True)
    assert co.give_up("b", 1) == []
    assert release(co, "b", "L2") == [Reply("c", 1, True), Reply("b", 2, True)]


def test_a_client_that_leaves_gives_its_leases_to_the_next_and_stops_waiting(co):
    acquire(co, "a", "L1")
    acquire(co, "a", "S1", name="s", kind="semaphore", max_leases=1)
    acquire(co, "b", "L2")
    co.ask("a", "event-wait", name="e")
    co.ask("a", "queue-get", name="q")
    co.ask("a", "variable-get", name="v")
    assert co.leave("a") == [Reply("b", 1, True)]
    assert list(co.parked) == []
    assert co.semaphores[("lock", "l")].leases == {"L2": "b"}
    # The queue item is not sent to the client that left.
    co.ask("b", "queue-put", name="q", data=1)
    assert co.ask("b", "queue-size", name="q") == [Reply("b", 3, 1)]


def test_a_client_that_leaves_gives_back_what_its_batch_took(co):
    co.ask("a", "queue-get", name="q", batch=2)
    co.ask("b", "queue-put", name="q", data=1, keys=["x"])
    assert co.leave("a") == []
    assert co.ask("b", "queue-get", name="q") == [
        Want("b", ["x"]), Unwant(("queue", "q", 1), ["x"]), Reply("b", 2, {"data": 1, "keys": ["x"]})]


# ---------------------------------------------------------------- Event

def test_event_set_wakes_every_waiter_and_clear_resets(co):
    assert co.ask("a", "event-wait", name="e") == []
    assert co.ask("b", "event-wait", name="e") == []
    assert co.ask("c", "event-is-set", name="e") == [Reply("c", 1, False)]
    assert co.ask("c", "event-set", name="e") == [
        Reply("a", 1, True), Reply("b", 1, True), Reply("c", 2, True)]
    assert co.ask("a", "event-wait", name="e") == [Reply("a", 2, True)]
    assert co.ask("c", "event-is-set", name="e") == [Reply("c", 3, True)]
    co.ask("c", "event-clear", name="e")
    assert empty(co)
    assert co.ask("a", "event-wait", name="e") == []
    assert co.give_up("a", 3) == [Reply("a", 3, WITHDRAWN)]
    assert empty(co)


def test_event_wait_answered_before_its_withdraw(co):
    co.ask("a", "event-wait", name="e")
    co.ask("b", "event-set", name="e")
    assert co.give_up("a", 1) == []


def test_unknown_request_is_an_error(co):
    assert co.ask("a", "frobnicate", name="x") == [
        Reply("a", 1, {"error": "unknown request 'frobnicate'"})]


# ---------------------------------------------------------------- with the scheduler

def scheduler():
    s = SchedulerState(validate=True)
    s.add_worker("w1", address="tcp://10.0.0.1:1", nthreads=1)
    s.take_messages()
    return s


def ask(s, cid, rid, what, **fields):
    s.handle_client_message(cid, {"op": "coordinate", "what": what, "request_id": rid,
                                  **fields})
    return [m for m in s.take_messages() if m[0] == "client"]


def in_memory(s, cid, key):
    s.add_client(cid)
    s.update_graph(cid, {key: ("spec", [])}, [key])
    s.take_messages()
    s.handle_worker_message("w1", {"op": "task-finished", "key": key, "nbytes": 8,
                                   "type": "int", "duration": 0.1})
    s.take_messages()


def test_a_variable_keeps_a_future_alive_after_its_client_let_go():
    s = scheduler()
    in_memory(s, "a", "x")
    ask(s, "a", 1, "variable-set", name="v", data="blob", keys=["x"])
    s.handle_client_message("a", {"op": "client-releases-keys", "keys": ["x"]})
    s.remove_client("a")
    assert s.tasks["x"].state == "memory"
    s.add_client("b")
    assert ask(s, "b", 1, "variable-get", name="v") == [
        ("client", "b", {"op": "reply", "request_id": 1, "result": {
            "data": "blob", "keys": ["x"],
            "reports": [{"op": "key-in-memory", "key": "x", "type": "int",
                         "nbytes": 8}]}})]
    # b now wants x itself: deleting the variable does not forget it ...
    ask(s, "b", 2, "variable-delete", name="v")
    assert s.tasks["x"].state == "memory"
    # ... until b lets go too.
    s.handle_client_message("b", {"op": "client-releases-keys", "keys": ["x"]})
    assert "x" not in s.tasks


def test_a_value_given_says_how_the_keys_of_its_futures_ended():
    s = scheduler()
    in_memory(s, "a", "x")
    s.update_graph("a", {"y": ("spec", []), "z": ("spec", [])}, ["y", "z"])
    s.take_messages()
    s.handle_worker_message("w1", {"op": "task-erred", "key": "y", "type": "E",
                                   "text": "bad", "duration": 0.1})
    s.take_messages()
    ask(s, "a", 1, "queue-put", name="q", data="b1", keys=["x", "y"])
    ask(s, "a", 2, "queue-put", name="q", data="b2", keys=["z", "x"])
    ask(s, "a", 3, "variable-set", name="v", data="b3", keys=["y"])
    s.add_client("b")
    [(_, _, reply)] = ask(s, "b", 1, "queue-get", name="q", batch=True)
    assert reply["result"]["keys"] == [["x", "y"], ["z", "x"]]
    # Each key that has ended once, a pending one ("z") not at all.
    assert [(r["op"], r["key"]) for r in reply["result"]["reports"]] == [
        ("key-in-memory", "x"), ("task-erred", "y")]
    [(_, _, reply)] = ask(s, "b", 2, "variable-get", name="v")
    [erred] = reply["result"]["reports"]
    assert erred["op"] == "task-erred" and erred["text"] == "bad"
    # A value without Futures says nothing more.
    ask(s, "a", 4, "variable-set", name="w", data="b4")
    assert ask(s, "b", 3, "variable-get", name="w") == [
        ("client", "b", {"op": "reply", "request_id": 3,
                         "result": {"data": "b4", "keys": []}})]


def test_a_queue_item_keeps_its_future_alive_until_taken():
    s = scheduler()
    in_memory(s, "a", "x")
    ask(s, "a", 1, "queue-put", name="q", data="blob", keys=["x"])
    s.remove_client("a")
    assert s.tasks["x"].state == "memory"
    s.add_client("b")
    ask(s, "b", 1, "queue-get", name="q")
    assert set(s.tasks["x"].who_wants) == {"b"}
    s.remove_client("b")
    assert "x" not in s.tasks


def test_a_lease_of_a_client_that_is_removed_goes_to_the_next():
    s = scheduler()
    s.add_client("a")
    s.add_client("b")
    ask(s, "a", 1, "acquire", name="l", kind="lock", max_leases=1, lease="L1")
    assert ask(s, "b", 1, "acquire", name="l", kind="lock", max_leases=1,
               lease="L2") == []
    s.remove_client("a")
    assert s.take_messages() == [
        ("client", "b", {"op": "reply", "request_id": 1, "result": True})]


def test_after_a_restart_stored_values_hold_no_keys():
    """Their tasks are gone; a task of the same key made later is not theirs."""
    s = scheduler()
    in_memory(s, "a", "x")
    ask(s, "a", 1, "variable-set", name="v", data="blob", keys=["x"])
    ask(s, "a", 2, "queue-put", name="q", data="blob", keys=["x"])
    s.handle_client_message("a", {"op": "restart", "request_id": 3})
    in_memory(s, "a", "x")
    s.validate()
    assert set(s.tasks["x"].who_wants) == {"a"}
    ask(s, "a", 4, "variable-delete", name="v")
    assert s.tasks["x"].state == "memory"


# ---------------------------------------------------------------- MultiLock

def test_multilock_is_granted_all_its_names_or_waits(co):
    assert co.ask("a", "multi-acquire", names=["x", "y"], lease="A") == [
        Reply("a", 1, True)]
    # Wants y, held by A: waits, and meanwhile holds z (first in its line).
    assert co.ask("b", "multi-acquire", names=["y", "z"], lease="B") == []
    assert co.ask("c", "multi-acquire", names=["z"], lease="C") == []
    assert co.ask("d", "multi-acquire", names=["x"], lease="D") == []
    assert co.ask("a", "multi-release", lease="A") == [
        Reply("d", 1, True), Reply("b", 1, True), Reply("a", 2, True)]
    assert co.ask("b", "multi-release", lease="B") == [Reply("c", 1, True),
                                                        Reply("b", 2, True)]
    assert co.ask("b", "multi-release", lease="B") == [Reply("b", 3, False)]
    co.ask("c", "multi-release", lease="C")
    co.ask("d", "multi-release", lease="D")
    assert empty(co)


def test_multilock_num_locks_takes_the_first_free_names(co):
    co.ask("a", "multi-acquire", names=["x"], lease="A")
    assert co.ask("b", "multi-acquire", names=["x", "y", "z"], num_locks=2,
                  lease="B") == [Reply("b", 1, True)]
    assert co.multi_leases["B"][1] == ["y", "z"]
    # B left the line of x: C gets it once A lets go.
    assert co.ask("c", "multi-acquire", names=["x"], lease="C") == []
    assert co.ask("a", "multi-release", lease="A") == [Reply("c", 1, True),
                                                        Reply("a", 2, True)]
    assert co.ask("d", "multi-acquire", names=["x"], num_locks=2, lease="D") == [
        Reply("d", 1, {"error": "num_locks must be from 1 to 1 (the names given), "
                                "not 2", "type": "ValueError"})]


def test_a_withdrawn_or_departed_multilock_lets_the_next_through(co):
    co.ask("a", "multi-acquire", names=["x"], lease="A")
    assert co.ask("b", "multi-acquire", names=["x", "y"], lease="B") == []
    assert co.ask("c", "multi-acquire", names=["y"], lease="C") == []
    # B held y while it waited for x; withdrawn, C gets y.
    assert co.give_up("b", 1) == [Reply("c", 1, True), Reply("b", 1, WITHDRAWN)]
    assert co.ask("b", "multi-acquire", names=["x", "y"], lease="B2") == []
    assert co.ask("b", "multi-acquire", names=["x"], lease="B3", wait=False) == [
        Reply("b", 3, WITHDRAWN)]
    assert co.leave("a") == []                 # x goes to B2, which still needs y
    assert co.leave("c") == [Reply("b", 2, True)]
    assert co.leave("b") == []
    assert empty(co)
