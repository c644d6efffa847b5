"""Tasks that launch tasks, in the state machines alone: a seceded task is still
running (its result is to come) but holds no thread slot, on the worker and in the
scheduler's count; a rejoin takes a slot back, waiting for one.  Invariants are
checked after every event."""

import pytest

from dask_ipy.scheduler.state import SchedulerState
from dask_ipy.worker.state import Execute, Rejoin, Send, WorkerState

pytestmark = pytest.mark.timeout(30)

ME, A = "tcp://10.0.0.9:1", "tcp://10.0.0.1:1"


def started(key):
    return [Send({"op": "task-started", "key": key}), Execute(key, "spec-" + key, {})]


def compute(ws, key):
    return ws.handle("compute-task", key=key, run_spec="spec-" + key, priority=(0, key))


def success(ws, key, value=1):
    return ws.handle("execute-success", key=key, value=value, nbytes=8, type="int",
                     start=1.0, stop=2.0)


# ---------------------------------------------------------------- worker

@pytest.fixture
def w():
    return WorkerState(ME, nthreads=1, validating=True)


def test_a_seceded_task_frees_its_slot_for_the_next_task(w):
    assert compute(w, "a") == started("a")
    assert compute(w, "b") == []                  # one thread: b waits
    assert w.handle("secede", key="a") == [
        Send({"op": "task-seceded", "key": "a"})] + started("b")
    assert w.executing == {"b"} and w.seceded == {"a"}
    assert w.tasks["a"].state == "executing"      # still running: its result is to come
    # A seceded task ends like any task; its slot was given away already.
    assert success(w, "a", 5) == [Send({"op": "task-finished", "key": "a", "nbytes": 8,
                                        "type": "int", "duration": 1.0, "start": 1.0})]
    assert w.seceded == set() and w.executing == {"b"} and w.data == {"a": 5}


def test_rejoin_waits_for_a_free_slot_and_goes_before_ready_tasks(w):
    compute(w, "a")
    w.handle("secede", key="a")
    compute(w, "b")                               # runs in a's slot
    assert compute(w, "c") == []
    assert w.handle("rejoin", key="a") == []      # no slot free: a waits
    assert w.rejoining == ["a"]
    # b ends: the slot goes to a, which asked first, not to the ready c.
    assert success(w, "b") == [
        Send({"op": "task-finished", "key": "b", "nbytes": 8, "type": "int",
              "duration": 1.0, "start": 1.0}),
        Send({"op": "task-rejoined", "key": "a"}), Rejoin("a")]
    assert w.executing == {"a"} and w.seceded == set() and w.rejoining == []
    assert w.tasks["c"].state == "ready"
    assert success(w, "a")[-1] == Execute("c", "spec-c", {})


def test_rejoin_with_a_free_slot_is_immediate_and_secede_twice_is_once(w):
    compute(w, "a")
    assert w.handle("secede", key="a") == [Send({"op": "task-seceded", "key": "a"})]
    assert w.handle("secede", key="a") == []
    assert w.handle("rejoin", key="a") == [Send({"op": "task-rejoined", "key": "a"}),
                                           Rejoin("a")]
    assert w.handle("rejoin", key="a") == []      # not seceded any more
    assert w.executing == {"a"}


def test_a_seceded_task_released_ends_as_dropped(w):
    compute(w, "a")
    w.handle("secede", key="a")
    assert w.handle("free-keys", keys=["a"]) == []
    assert w.tasks["a"].state == "executing"      # a Python thread cannot be stopped
    assert success(w, "a") == [Send({"op": "task-dropped", "key": "a"})]
    assert w.tasks == {} and w.seceded == set()


def test_a_paused_worker_still_lets_a_seceded_task_rejoin(w):
    compute(w, "a")
    w.handle("secede", key="a")
    w.handle("pause")
    compute(w, "b")
    assert w.handle("rejoin", key="a") == [Send({"op": "task-rejoined", "key": "a"}),
                                           Rejoin("a")]
    assert w.tasks["b"].state == "ready"          # nothing new starts while paused


# ---------------------------------------------------------------- scheduler

@pytest.fixture
def s():
    """One client 'c', one one-thread worker 'w1', four root tasks a..d placed: three
    on the worker (its thread and a queue of two), d queued."""
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.take_messages()
    s.update_graph("c", {k: ("spec-" + k, []) for k in "abcd"}, list("abcd"),
                   {k: i for i, k in enumerate("abcd")})
    assert [msg["key"] for _, _, msg in s.take_messages()] == ["a", "b", "c"]
    assert s.tasks["d"].state == "queued"
    s.handle_worker_message("w1", {"op": "task-started", "key": "a"})
    return s


def placed(s):
    return [(wid, msg["key"]) for _, wid, msg in s.take_messages()
            if msg["op"] == "compute-task"]


def test_scheduler_counts_a_seceded_slot_free(s):
    ws = s.workers["w1"]
    assert ws.occupancy == pytest.approx(1.5)
    s.handle_worker_message("w1", {"op": "task-seceded", "key": "a"})
    assert placed(s) == [("w1", "d")]             # the freed slot is filled at once
    a = s.tasks["a"]
    assert a.state == "processing" and a in ws.seceded and ws.processing[a] == 0.0
    assert ws.occupancy == pytest.approx(1.5)     # a's 0.5 left, d's 0.5 came
    s.handle_worker_message("w1", {"op": "task-seceded", "key": "a"})   # said twice
    assert placed(s) == []

    s.handle_worker_message("w1", {"op": "task-rejoined", "key": "a"})
    assert ws.seceded == set() and ws.processing[a] == 0.5
    assert ws.occupancy == pytest.approx(2.0)

    s.handle_worker_message("w1", {"op": "task-finished", "key": "a", "nbytes": 8,
                                   "type": "int", "duration": 0.5})
    assert s.tasks["a"].state == "memory" and a not in ws.processing


def test_a_seceded_task_finishing_leaves_no_thread_held(s):
    ws = s.workers["w1"]
    s.handle_worker_message("w1", {"op": "task-seceded", "key": "a"})
    s.take_messages()
    s.handle_worker_message("w1", {"op": "task-finished", "key": "a", "nbytes": 8,
                                   "type": "int", "duration": 0.5})
    assert ws.seceded == set() and ws.stale == {}
    assert {ts.key for ts in ws.processing} == {"b", "c", "d"}


def test_a_seceded_task_released_holds_no_thread(s):
    ws = s.workers["w1"]
    s.handle_worker_message("w1", {"op": "task-seceded", "key": "a"})
    s.take_messages()
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["a"]})
    assert ws.stale == {} and ws.seceded == set()
    # If it rejoins before it ends, it holds a thread until the worker drops it.
    s.handle_worker_message("w1", {"op": "task-rejoined", "key": "a"})
    assert list(ws.stale) == ["a"]
    s.handle_worker_message("w1", {"op": "task-dropped", "key": "a"})
    assert ws.stale == {}


def test_a_seceded_task_is_never_stolen_and_its_worker_is_no_victim():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.take_messages()
    s.update_graph("c", {"a": ("spec-a", [])}, ["a"], {"a": 0})
    s.take_messages()
    s.handle_worker_message("w1", {"op": "task-started", "key": "a"})
    s.handle_worker_message("w1", {"op": "task-seceded", "key": "a"})
    s.add_worker("w2", "tcp://10.0.0.2:1", nthreads=1)
    assert [m["op"] for _, _, m in s.take_messages()] == ["registered"]
    assert s.steals == {}


def test_a_worker_removed_forgets_its_seceded_tasks(s):
    s.handle_worker_message("w1", {"op": "task-seceded", "key": "a"})
    s.remove_worker("w1", reason="gone")
    assert s.tasks["a"].state in ("released", "no-worker", "queued", "waiting")
