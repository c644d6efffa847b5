"""WorkerState asked for copies of keys by the scheduler ("acquire-replicas": retire,
replicate, rebalance), and observed by worker plugins (`observe_transitions`).
Events in, instructions out, compared literally."""

import pytest

from dask_ipy.worker.state import Execute, GatherDep, Send, WorkerState

pytestmark = pytest.mark.timeout(30)

ME, A, B = "tcp://10.0.0.9:1", "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"


@pytest.fixture
def ws():
    return WorkerState(ME, nthreads=1, validating=True)


def test_a_copy_is_fetched_kept_and_reported(ws):
    out = ws.handle("acquire-replicas", who_has={"x": [A], "y": [B]},
                    nbytes={"x": 10, "y": 20})
    assert sorted(out, key=lambda i: i.peer) == [GatherDep(A, ["x"]), GatherDep(B, ["y"])]
    assert ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 10}) == [
        Send({"op": "add-keys", "keys": [("x", 10, None)]})]
    # kept: a task that used it and ended would not drop it
    assert ws.data == {"x": 1} and ws.tasks["x"].reported
    ws.handle("gather-done", peer=B, data={"y": 2}, sizes={"y": 20})
    assert ws.data == {"x": 1, "y": 2}


def test_a_copy_already_here_is_reported_at_once(ws):
    ws.handle("compute-task", key="z", run_spec="spec-z", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 10})
    ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 10})
    # x is here as an input of z, unknown to the scheduler: asked for, it stays
    assert ws.handle("acquire-replicas", who_has={"x": [A]}) == [
        Send({"op": "add-keys", "keys": [("x", 10, None)]})]
    out = ws.handle("execute-success", key="z", value=2, nbytes=8, type="int")
    assert out[0].msg["op"] == "task-finished"
    assert ws.data == {"x": 1, "z": 2}


def test_a_copy_in_flight_as_an_input_survives_its_dependent(ws):
    ws.handle("compute-task", key="z", run_spec="spec-z", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 10})
    assert ws.handle("acquire-replicas", who_has={"x": [A]}) == []
    ws.handle("free-keys", keys=["z"])          # z goes; x is still wanted as a copy
    assert "x" in ws.tasks
    assert ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 10}) == [
        Send({"op": "add-keys", "keys": [("x", 10, None)]})]
    assert ws.data == {"x": 1}


def test_a_copy_no_holder_has_is_reported_missing_without_a_task(ws):
    ws.handle("acquire-replicas", who_has={"x": [A]})
    assert ws.handle("gather-done", peer=A, data={}, sizes={}, missing=["x"]) == [
        Send({"op": "missing-data", "key": None, "dep": "x", "holder": A})]
    assert "x" not in ws.tasks and ws.data == {}


def test_transitions_are_recorded_only_once_observed(ws):
    ws.handle("compute-task", key="a", run_spec="spec", priority=(0,))
    assert ws.transition_log is None
    ws.observe_transitions()
    ws.handle("execute-success", key="a", value=1, nbytes=8, type="int")
    ws.handle("compute-task", key="b", run_spec="spec", priority=(0,),
              who_has={"a": [ME], "c": [A]}, nbytes={"a": 8, "c": 8})
    ws.handle("gather-done", peer=A, data={"c": 3}, sizes={"c": 8})
    ws.handle("execute-success", key="b", value=4, nbytes=8, type="int")
    ws.handle("free-keys", keys=["a", "b"])
    assert ws.take_transitions() == [
        ("a", "executing", "memory"),
        ("c", "released", "fetch"), ("b", "released", "waiting"),
        ("c", "fetch", "flight"), ("c", "flight", "memory"), ("b", "waiting", "ready"),
        ("b", "ready", "executing"), ("b", "executing", "memory"),
        ("c", "memory", "released"), ("c", "released", "forgotten"),
        ("a", "memory", "released"), ("a", "released", "forgotten"),
        ("b", "memory", "released"), ("b", "released", "forgotten")]
    assert ws.take_transitions() == []
    assert ws.data == {}


def test_observed_tasks_wait_before_ready_and_an_error_is_let_go_through_released(ws):
    # The sequences a worker plugin of dask.distributed sees.
    ws.observe_transitions()
    ws.handle("compute-task", key="a", run_spec="spec", priority=(0,))
    ws.handle("execute-success", key="a", value=1, nbytes=8, type="int")
    ws.handle("compute-task", key="b", run_spec="spec", priority=(0,),
              who_has={"a": [ME]}, nbytes={"a": 8})
    ws.handle("execute-failure", key="b", error={"type": "Boom"})
    ws.handle("free-keys", keys=["a"])
    assert ws.take_transitions() == [
        ("a", "released", "waiting"), ("a", "waiting", "ready"),
        ("a", "ready", "executing"), ("a", "executing", "memory"),
        ("b", "released", "waiting"), ("b", "waiting", "ready"),
        ("b", "ready", "executing"), ("b", "executing", "error"),
        ("b", "error", "released"), ("b", "released", "forgotten"),
        ("a", "memory", "released"), ("a", "released", "forgotten")]
    assert ws.tasks == {} and ws.data == {}


def test_observing_changes_nothing_the_worker_does():
    def run(observe):
        ws = WorkerState(ME, nthreads=1, validating=True)
        if observe:
            ws.observe_transitions()
        out = ws.handle("compute-task", key="b", run_spec="s", priority=(0,),
                        who_has={"c": [A]}, nbytes={"c": 8})
        out += ws.handle("gather-done", peer=A, data={"c": 3}, sizes={"c": 8})
        out += ws.handle("execute-success", key="b", value=4, nbytes=8, type="int",
                         start=1.0, stop=2.0)
        return out, dict(ws.data)
    assert run(True) == run(False)
    out, data = run(False)
    assert Execute("b", "s", {"c": 3}) in out and data == {"b": 4}
