"""Tiny tasks queued behind a long one on a busy worker: they stay stealable there
(never handed to a pool thread held by the long task), and an idle worker takes
them in a batch."""

import pytest

from dask_ipy.scheduler.state import SchedulerState
from dask_ipy.worker.state import EventsFailed, Execute, Send, WorkerState

pytestmark = pytest.mark.timeout(60)

A, B, ME = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1", "tcp://10.0.0.9:1"


def test_tiny_tasks_wait_outside_the_pool_while_a_long_task_holds_the_thread():
    ws = WorkerState(ME, nthreads=1, validating=True)
    assert ws.handle("compute-task", key="long", run_spec="long", priority=(0, 1, 0),
                     duration=5.0) == [Send({"op": "task-started", "key": "long"}),
                                       Execute("long", "long", {})]
    for i in range(3):
        assert ws.handle("compute-task", key=f"t{i}", run_spec=f"t{i}",
                         priority=(0, 1, 1 + i), duration=0.0001) == []
    assert ws.executing == {"long"}
    # So the scheduler may still move them: the worker gives them up.
    out = ws.handle("steal-request", key="t2")
    assert out == [Send({"op": "steal-response", "key": "t2", "released": True,
                         "state": "ready"})]
    # Once the thread is free they go to the pool in a batch.
    out = ws.handle("execute-success", key="long", value=1, nbytes=8, type="int",
                    start=1.0, stop=6.0)
    assert [i.key for i in out if isinstance(i, Execute)] == ["t0", "t1"]
    ws.validate()


def test_an_idle_worker_takes_tiny_tasks_queued_behind_a_long_one():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    keys = [f"t{i}" for i in range(4)]
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    s.take_messages()
    s.handle_worker_message("w1", {"op": "task-finished", "key": "x", "nbytes": 8,
                                   "type": "int", "duration": 0.0001})
    s.update_graph("c", {"long": ("spec-long", [])}, ["long"])
    s.handle_worker_message("w1", {"op": "task-started", "key": "long"})
    s.update_graph("c", {k: ("spec-t", ["x"]) for k in keys}, keys)
    w1 = s.workers["w1"]
    assert {ts.key for ts in w1.processing} == {"long", *keys}
    w1.occupancy -= w1.processing[s.tasks["long"]] - 30.0
    w1.processing[s.tasks["long"]] = 30.0        # known to block for long
    for k in keys:                               # each known to be tiny
        w1.occupancy -= w1.processing[s.tasks[k]] - 0.0001
        w1.processing[s.tasks[k]] = 0.0001
    s.take_messages()
    s.add_worker("w2", B, nthreads=1)
    steals = sorted(m["key"] for _, ident, m in s.take_messages()
                    if m["op"] == "steal-request")
    # All of them for its one idle thread: each is tiny, but waits long there.
    assert steals == keys
    for k in keys:
        s.handle_worker_message("w1", {"op": "steal-response", "key": k,
                                       "released": True, "state": "ready"})
    assert {ts.key for ts in s.workers["w2"].processing} == set(keys)
    s.validate()


def test_a_tiny_task_that_runs_long_is_announced_and_holds_its_thread():
    """A task of a tiny group that blocks (a lock, a file, a future): once the shell
    says it has run for a heartbeat, the scheduler hears that it runs, and no more
    tiny tasks go into the pool behind it."""
    ws = WorkerState(ME, nthreads=1, validating=True)
    out = ws.handle("compute-task", key="t0", run_spec="t0", priority=(0, 1, 0),
                    duration=0.0001)
    assert out == [Execute("t0", "t0", {})]                 # not announced: tiny
    out = ws.handle("compute-task", key="t1", run_spec="t1", priority=(0, 1, 1),
                    duration=0.0001)
    assert [i.key for i in out if isinstance(i, Execute)] == ["t1"]   # prefetched
    assert ws.handle("long-running", keys=["t0"]) == [
        Send({"op": "task-started", "key": "t0"})]
    assert ws.short == {"t1"}
    # Held by a long task now: the next tiny one waits outside the pool.
    assert ws.handle("compute-task", key="t2", run_spec="t2", priority=(0, 1, 2),
                     duration=0.0001) == []
    assert ws.handle("long-running", keys=["t0", "gone"]) == []      # once only
    ws.validate()


def test_events_handled_together_start_tasks_once_highest_priority_first():
    """`handle_all`: a batch of "compute-task" is taken in before any starts, so the
    highest of the batch go to the pool first; results in one batch free their
    slots before the next tasks start."""
    ws = WorkerState(ME, nthreads=1, validating=True)
    batch = [("compute-task", dict(key=f"t{i}", run_spec=f"t{i}", priority=(0, 9 - i),
                                   duration=0.0001)) for i in range(10)]
    out = ws.handle_all(batch)
    assert [i.key for i in out] == [f"t{i}" for i in range(9, 1, -1)]   # PREFETCH
    done = [("execute-success", dict(key=k, value=1, nbytes=8, type="int"))
            for k in ("t9", "t8")]
    out = ws.handle_all(done)
    assert [m.msg["key"] for m in out if isinstance(m, Send)] == ["t9", "t8"]
    assert [i.key for i in out if isinstance(i, Execute)] == ["t1", "t0"]


def test_an_event_failing_in_a_batch_loses_none_of_the_others():
    class Refusing(dict):
        def __setitem__(self, key, value):
            if key == "bad":
                raise OSError("store refused")
            super().__setitem__(key, value)

    ws = WorkerState(ME, nthreads=1, data=Refusing())
    ws.handle_all([("compute-task", dict(key=k, run_spec=k, priority=(0, i),
                                         duration=0.0001))
                   for i, k in enumerate(["bad", "good", "next"]
                                         + [f"t{i}" for i in range(8)])])
    with pytest.raises(EventsFailed) as info:
        ws.handle_all([("execute-success", dict(key=k, value=1, nbytes=8, type="int"))
                       for k in ("bad", "good")])
    assert [op for op, _ in info.value.errors] == ["execute-success"]
    assert isinstance(info.value.errors[0][1], OSError)
    out = info.value.out
    assert [m.msg["key"] for m in out if isinstance(m, Send)] == ["good"]
    assert ws.tasks["good"].state == "memory"
    # Both threads' slots are free again (the failing one's before its store):
    # the next tasks start.
    assert [i.key for i in out if isinstance(i, Execute)] == ["t5", "t6"]
