"""WorkerState alone: events in, instructions out, compared literally.  Invariants
are checked after every event (``validating=True``)."""

import pytest

from dask_ipy.worker.state import (NO_KEYS, RELAY, Execute, GatherDep, Send,
                                   WorkerState)

pytestmark = pytest.mark.timeout(30)

ME, A, B = "tcp://10.0.0.9:1", "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"


@pytest.fixture
def ws():
    return WorkerState(ME, nthreads=1, validating=True)


def states(ws):
    return {key: ts.state for key, ts in ws.tasks.items()}


def started(key, spec, inputs):
    return [Send({"op": "task-started", "key": key}), Execute(key, spec, inputs)]


def success(ws, key, value, nbytes=8, type="int"):
    return ws.handle("execute-success", key=key, value=value, nbytes=nbytes, type=type,
                     start=10.0, stop=10.25)


def test_root_task_runs_and_reports(ws):
    assert ws.handle("compute-task", key="x", run_spec="spec-x",
                     priority=(0, 1, 0)) == started("x", "spec-x", {})
    assert states(ws) == {"x": "executing"}
    assert success(ws, "x", 41) == [Send({"op": "task-finished", "key": "x",
                                          "nbytes": 8, "type": "int",
                                          "duration": 0.25, "start": 10.0})]
    assert ws.data == {"x": 41}
    assert states(ws) == {"x": "memory"}


def test_inputs_held_by_peers_are_fetched_then_the_task_runs(ws):
    out = ws.handle("compute-task", key="z", run_spec="spec-z", priority=(0, 1, 2),
                    who_has={"x": [A], "y": [B, ME]}, nbytes={"x": 10, "y": 20})
    # One request per peer; our own address is never a source.
    assert sorted(out, key=lambda i: i.peer) == [GatherDep(A, ["x"]), GatherDep(B, ["y"])]
    assert states(ws) == {"z": "waiting", "x": "flight", "y": "flight"}
    assert ws.in_flight == {A: ["x"], B: ["y"]}

    assert ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 10}) == []
    assert states(ws) == {"z": "waiting", "x": "memory", "y": "flight"}
    assert ws.handle("gather-done", peer=B, data={"y": 2},
                     sizes={"y": 20}) == started("z", "spec-z", {"x": 1, "y": 2})

    assert success(ws, "z", 3) == [Send({"op": "task-finished", "key": "z",
                                         "nbytes": 8, "type": "int",
                                         "duration": 0.25, "start": 10.0})]
    # Fetched copies the scheduler does not know about are dropped at once.
    assert ws.data == {"z": 3}
    assert states(ws) == {"z": "memory"}
    assert ws.nbytes == {"z": 8}


def test_tasks_share_one_empty_set_until_they_hold_keys_or_holders(ws):
    """A task's `dependents`, `waiting_for` and `who_has` are the shared `NO_KEYS`
    until something is put there; filling one never fills another task's."""
    ws.handle("plugins-busy")                    # nothing starts: all stay put
    ws.handle("compute-task", key="root", run_spec="r", priority=(0, 0))
    ws.handle("compute-task", key="z", run_spec="z", priority=(0, 1),
              who_has={"x": [A]}, nbytes={"x": 10})
    ws.handle("who-has", who_has={"w": [B]})      # a key not held: ignored
    ws.handle("acquire-replicas", who_has={"c": [B]}, nbytes={"c": 5})
    c = ws.tasks["c"]
    assert c.who_has == {B} and c.dependents is NO_KEYS
    ws.handle("worker-removed", address=B)       # "c" loses its only holder
    assert c.who_has == set() and "c" not in ws.tasks
    root, z, x = (ws.tasks[k] for k in ("root", "z", "x"))
    assert root.dependents is root.waiting_for is root.who_has is NO_KEYS
    assert (z.waiting_for, z.dependents, z.who_has) == ({"x"}, set(), set())
    assert (x.dependents, x.who_has) == ({"z"}, {A})
    assert not NO_KEYS and type(x.who_has) is set
    ws.handle("free-keys", keys=["z"])
    ws.handle("steal-request", key="root")
    assert "x" not in ws.tasks and not NO_KEYS


def test_task_counts_follow_the_states_and_the_bytes_in_flight(ws):
    assert ws.task_counts() == {} and ws.in_flight_bytes() == 0
    ws.handle("compute-task", key="z", run_spec="spec-z", priority=(0,),
              who_has={"x": [A], "y": [B]}, nbytes={"x": 10, "y": 20})
    assert ws.task_counts() == {"waiting": 1, "flight": 2}
    assert ws.in_flight_bytes() == 30
    ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 10})
    assert ws.task_counts() == {"waiting": 1, "flight": 1, "memory": 1}
    assert ws.in_flight_bytes() == 20
    ws.handle("gather-done", peer=B, data={"y": 2}, sizes={"y": 20})
    assert ws.task_counts() == {"executing": 1, "memory": 2}
    success(ws, "z", 3)
    assert ws.task_counts() == {"memory": 1}      # the fetched copies are dropped
    ws.handle("compute-task", key="r", run_spec="spec-r", priority=(0,))
    ws.handle("restart")
    assert ws.task_counts() == {"executing": 1}
    ws.handle("free-keys", keys=["r"])
    success(ws, "r", 1)
    assert ws.task_counts() == {}


def test_several_inputs_from_one_peer_come_in_one_request(ws):
    out = ws.handle("compute-task", key="s", run_spec="spec-s", priority=(0,),
                    who_has={"a": [A], "b": [A], "c": [A]}, nbytes={})
    assert len(out) == 1 and out[0].peer == A
    assert sorted(out[0].keys) == ["a", "b", "c"]


def asked(out):
    return sorted(key for i in out if isinstance(i, GatherDep) for key in i.keys)


def test_inputs_in_flight_stay_under_the_transfer_limit():
    """A peer reads what it is asked for into memory, and this worker receives it
    there: at most ``transfer_limit`` bytes are asked for at once (one input
    always, when nothing is in flight), the rest when those have come."""
    ws = WorkerState(ME, nthreads=1, validating=True, transfer_limit=25)
    out = ws.handle("compute-task", key="s", run_spec="spec-s", priority=(0,),
                    who_has={k: [A] for k in "abcd"}, nbytes={k: 10 for k in "abcd"})
    first = asked(out)
    assert len(first) == 2 and ws.in_flight_bytes() == 20
    out = ws.handle("gather-done", peer=A, data={k: 1 for k in first},
                    sizes={k: 10 for k in first})
    assert [i.peer for i in out] == [A]
    assert asked(out) == [k for k in "abcd" if k not in first]
    assert ws.handle("gather-done", peer=A, data={k: 1 for k in "abcd" if k not in first},
                     sizes={k: 10 for k in "abcd"}) == started(
        "s", "spec-s", {k: 1 for k in "abcd"})
    # One input larger than the whole limit still comes, alone.
    out = ws.handle("compute-task", key="t", run_spec="spec-t", priority=(0,),
                    who_has={"big": [B], "small": [B]}, nbytes={"big": 100, "small": 1})
    assert len(asked(out)) == 1


def test_one_request_asks_for_at_most_request_bytes(ws):
    from dask_ipy.worker.state import REQUEST_BYTES

    out = ws.handle("compute-task", key="s", run_spec="spec-s", priority=(0,),
                    who_has={k: [A] for k in "abc"},
                    nbytes={k: REQUEST_BYTES // 2 for k in "abc"})
    assert len(asked(out)) == 2


def test_local_inputs_are_used_without_fetching(ws):
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0, 1, 0))
    success(ws, "x", 5)
    assert ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0, 1, 1),
                     who_has={"x": [ME]}, nbytes={"x": 8}) == started("y", "spec-y",
                                                                      {"x": 5})
    success(ws, "y", 6)
    # x was computed here and reported: it stays until the scheduler frees it.
    assert ws.data == {"x": 5, "y": 6}
    assert ws.handle("free-keys", keys=["x"]) == []
    assert ws.data == {"y": 6}


def test_threads_limit_concurrency_and_priority_picks_the_next(ws):
    ws2 = WorkerState(ME, nthreads=2, validating=True)
    out = []
    for key, prio in [("late", (0, 1, 9)), ("early", (0, 1, 1)), ("mid", (0, 1, 5))]:
        out += ws2.handle("compute-task", key=key, run_spec=key, priority=prio)
    assert [i.key for i in out if isinstance(i, Execute)] == ["late", "early"]
    assert states(ws2)["mid"] == "ready"
    ws2.handle("compute-task", key="first", run_spec="first", priority=(0, 0, 0))
    out = success(ws2, "late", 1)
    assert out[1:] == started("first", "first", {})
    out = success(ws2, "early", 1)
    assert out[1:] == started("mid", "mid", {})


def steal(ws, key):
    (answer,) = ws.handle("steal-request", key=key)
    return answer.msg["released"], answer.msg["state"]


def test_a_task_not_started_is_given_up_to_a_thief(ws):
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,))
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(1,))
    ws.handle("compute-task", key="z", run_spec="spec-z", priority=(2,),
              who_has={"d": [A]}, nbytes={"d": 10})
    assert states(ws) == {"x": "executing", "y": "ready", "z": "waiting", "d": "flight"}
    assert steal(ws, "x") == (False, "executing")
    assert steal(ws, "y") == (True, "ready")
    assert steal(ws, "z") == (True, "waiting")
    assert steal(ws, "gone") == (True, None)            # not here: nothing to give up
    # The input on its way is dropped when it lands: no task here needs it.
    assert ws.handle("gather-done", peer=A, data={"d": 1}, sizes={"d": 10}) == []
    assert states(ws) == {"x": "executing"} and ws.data == {}
    # Once x is done nothing else runs: y went to the thief.
    assert success(ws, "x", 1)[0].msg["op"] == "task-finished"
    assert states(ws) == {"x": "memory"}


def test_the_task_that_ran_lives_as_long_as_its_result(ws):
    """A result may depend on what only its task holds (a weakref.proxy to an object
    the function's closure keeps): the task that ran stays while the result does."""
    import gc
    import weakref

    class Task:
        pass

    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,))
    task = Task()
    alive = weakref.ref(task)
    ws.handle("execute-success", key="x", value=1, nbytes=8, ran=task)
    del task
    gc.collect()
    assert alive() is not None and ws.tasks["x"].ran is alive()
    assert ws.tasks["x"].run_spec is None           # held once, not twice
    ws.handle("free-keys", keys=["x"])
    gc.collect()
    assert alive() is None and ws.tasks == {}


def test_free_keys_while_executing_discards_the_result(ws):
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,))
    assert ws.handle("free-keys", keys=["x"]) == []
    assert states(ws) == {"x": "executing"}           # the thread is still running
    # No result: only word that its thread is free.
    assert success(ws, "x", 1) == [Send({"op": "task-dropped", "key": "x"})]
    assert ws.tasks == {} and ws.data == {}


def test_freed_then_asked_again_while_executing_keeps_the_result(ws):
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,))
    ws.handle("free-keys", keys=["x"])
    assert ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,)) == []
    assert success(ws, "x", 1)[0].msg["op"] == "task-finished"
    assert ws.data == {"x": 1}


def test_freed_then_asked_again_for_another_computation_runs_that_one(ws):
    """A key reused (``key=`` given again) for another call while the first run,
    freed, still goes on: that run's value is never the new task's result."""
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,))
    ws.handle("free-keys", keys=["x"])
    assert ws.handle("compute-task", key="x", run_spec="spec-x2", priority=(0,)) == []
    out = success(ws, "x", 1)
    assert out[0] == Send({"op": "task-dropped", "key": "x"})
    assert [i for i in out if isinstance(i, Execute)] == [
        Execute("x", "spec-x2", {}, False)]
    assert ws.data == {}
    assert success(ws, "x", 2)[0].msg["op"] == "task-finished"
    assert ws.data == {"x": 2}


def test_free_keys_of_a_ready_task_drops_it_and_its_fetched_inputs(ws):
    ws.handle("compute-task", key="busy", run_spec="b", priority=(0,))
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(1,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 8})
    assert states(ws) == {"busy": "executing", "y": "ready", "x": "memory"}
    assert ws.handle("free-keys", keys=["y"]) == []
    assert states(ws) == {"busy": "executing"}
    assert ws.data == {}
    # Nothing runs y later.
    out = success(ws, "busy", 0)
    assert [i for i in out if isinstance(i, Execute)] == []


def test_free_keys_during_a_fetch_ignores_the_late_reply(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("free-keys", keys=["y"])
    assert ws.tasks == {}
    assert ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 8}) == []
    assert ws.data == {} and ws.in_flight == {}


def test_execution_failure_reports_the_error_and_releases(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 8})
    error = {"type": "ValueError", "text": "ValueError: bad", "exception": None,
             "traceback": None, "traceback_text": "Traceback..."}
    assert ws.handle("execute-failure", key="y", error=error) == [
        Send({"op": "task-erred", "key": "y", **error})]
    assert ws.tasks == {} and ws.data == {}


def test_a_task_raising_reschedule_is_given_back_and_released(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 8})
    assert ws.handle("execute-reschedule", key="y") == [
        Send({"op": "reschedule", "key": "y"})]
    assert ws.tasks == {} and ws.data == {}


def test_missing_data_is_reported_to_the_scheduler(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    assert ws.handle("gather-done", peer=A, data={}, sizes={}, missing=["x"]) == [
        Send({"op": "missing-data", "key": "y", "dep": "x", "holder": A})]
    assert states(ws) == {"y": "waiting", "x": "missing"}
    # The scheduler answers with another holder.
    assert ws.handle("who-has", who_has={"x": [B]}) == [GatherDep(B, ["x"])]
    assert ws.handle("gather-done", peer=B, data={"x": 7},
                     sizes={"x": 8}) == started("y", "spec-y", {"x": 7})


def test_a_dependency_with_no_holder_at_all_is_missing_at_once(ws):
    assert ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
                     who_has={"x": []}, nbytes={"x": 8}) == [
        Send({"op": "missing-data", "key": "y", "dep": "x", "holder": None})]


def test_an_unreachable_holder_is_skipped_for_a_reachable_one(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A, B]}, nbytes={"x": 8})
    (first,) = ws.in_flight
    other = B if first == A else A
    assert ws.handle("peer-unreachable", peer=first) == [
        Send({"op": "peer-unreachable", "address": first}), GatherDep(other, ["x"])]


# ---------------------------------------------------------------- the relay

def test_data_of_unreachable_peers_comes_through_the_relay(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("compute-task", key="z", run_spec="spec-z", priority=(1,),
              who_has={"w": [A]}, nbytes={"w": 8})
    assert ws.in_flight == {A: ["x"]}
    # Both keys of A go to the relay in one request; A is never asked again.
    told, relay = ws.handle("peer-unreachable", peer=A)
    assert told == Send({"op": "peer-unreachable", "address": A})
    assert relay.peer == RELAY and sorted(relay.keys) == ["w", "x"]
    assert states(ws) == {"y": "waiting", "x": "flight", "z": "waiting", "w": "flight"}
    assert ws.handle("gather-done", peer=RELAY, data={"x": 1, "w": 2},
                     sizes={"x": 8, "w": 8}) == [
        *started("y", "spec-y", {"x": 1})]
    # Later fetches from A go straight to the relay, and A's return is announced.
    ws.handle("compute-task", key="v", run_spec="spec-v", priority=(2,),
              who_has={"u": [A]}, nbytes={"u": 8})
    assert ws.in_flight == {RELAY: ["u"]}
    assert ws.handle("peer-reachable", peer=A) == [
        Send({"op": "peer-reachable", "address": A})]
    assert ws.unreachable == set()


def test_a_relay_that_times_out_is_asked_again(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("peer-unreachable", peer=A)
    assert ws.handle("gather-failed", peer=RELAY) == [GatherDep(RELAY, ["x"])]


def test_a_value_too_large_to_relay_gives_back_the_tasks_that_need_it(ws):
    # For the scheduler to run them where the value is (or fail them, saying why).
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8}, run_id=3)
    ws.handle("peer-unreachable", peer=A)
    error = {"type": "TransferError", "text": "too big"}
    assert ws.handle("gather-done", peer=RELAY, data={}, sizes={},
                     errors={"x": error}) == [
        Send({"op": "input-unmovable", "key": "y", "dep": "x", "type": "TransferError",
              "text": "too big", "run_id": 3})]
    assert ws.tasks == {} and ws.in_flight == {}


def test_an_input_its_holder_cannot_pickle_gives_back_the_tasks_that_need_it(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("compute-task", key="z", run_spec="spec-z", priority=(1,),
              who_has={"x": [A]}, nbytes={"x": 8})
    error = {"type": "TypeError", "text": "result of 'x' could not be serialized"}
    out = ws.handle("gather-done", peer=A, data={}, sizes={}, errors={"x": error})
    assert sorted(m.msg["key"] for m in out) == ["y", "z"]
    assert all(m.msg["op"] == "input-unmovable" and m.msg["dep"] == "x" for m in out)
    assert ws.tasks == {} and ws.in_flight == {}


def test_a_key_the_relay_did_not_find_is_missing(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("peer-unreachable", peer=A)
    assert ws.handle("gather-done", peer=RELAY, data={}, sizes={}, missing=["x"]) == [
        Send({"op": "missing-data", "key": "y", "dep": "x", "holder": None})]
    assert states(ws) == {"y": "waiting", "x": "missing"}


def test_a_removed_peer_is_no_longer_unreachable(ws):
    ws.handle("peer-unreachable", peer=A)
    ws.handle("worker-removed", address=A)
    assert ws.unreachable == set()


def test_worker_removed_fails_the_fetch_in_flight(ws):
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    assert ws.handle("worker-removed", address=A) == [
        Send({"op": "missing-data", "key": "y", "dep": "x", "holder": A})]
    assert ws.in_flight == {}
    assert states(ws) == {"y": "waiting", "x": "missing"}


def test_worker_removed_fails_queued_fetches_too(ws):
    # One request per peer at a time: the second dependency from A waits.
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("compute-task", key="z", run_spec="spec-z", priority=(1,),
              who_has={"w": [A]}, nbytes={"w": 8})
    assert states(ws)["w"] == "fetch"
    out = ws.handle("worker-removed", address=A)
    assert sorted(i.msg["dep"] for i in out) == ["w", "x"]
    assert states(ws) == {"y": "waiting", "x": "missing", "z": "waiting",
                          "w": "missing"}


def test_put_data_reports_the_keys(ws):
    assert ws.handle("put-data", data={"a": [1, 2]}, sizes={"a": (72, "list")}) == [
        Send({"op": "add-keys", "keys": [("a", 72, "list")]})]
    assert ws.data == {"a": [1, 2]}
    # Scattered data is known to the scheduler: a task using it keeps it.
    ws.handle("compute-task", key="b", run_spec="spec-b", priority=(0,),
              who_has={"a": [ME]}, nbytes={"a": 72})
    success(ws, "b", 3)
    assert ws.data == {"a": [1, 2], "b": 3}


def test_asked_to_compute_a_key_already_held_reports_it(ws):
    # A copy fetched for a local task, then the scheduler wants it computed here
    # (its only other copy was lost): no need to run it again.
    ws.handle("compute-task", key="busy", run_spec="b", priority=(0,))
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(1,),
              who_has={"x": [A]}, nbytes={"x": 8})
    ws.handle("gather-done", peer=A, data={"x": 1}, sizes={"x": 8})
    assert ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,)) == [
        Send({"op": "task-finished", "key": "x", "nbytes": 8, "type": None})]
    success(ws, "busy", 0)
    success(ws, "y", 2)
    # Reported now, so kept after y is done with it.
    assert ws.data == {"x": 1, "busy": 0, "y": 2}


def test_custom_mapping_receives_results():
    class Recording(dict):
        def __init__(self):
            super().__init__()
            self.writes = []

        def __setitem__(self, key, value):
            self.writes.append(key)
            super().__setitem__(key, value)

    store = Recording()
    ws = WorkerState(ME, nthreads=1, data=store, validating=True)
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,))
    success(ws, "x", "value")
    assert store.writes == ["x"] and store["x"] == "value"


def test_restart_drops_everything_and_cancels_running_work(ws):
    ws.handle("put-data", data={"a": 1}, sizes={"a": (28, "int")})
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,))
    ws.handle("compute-task", key="y", run_spec="spec-y", priority=(1,))
    assert ws.handle("restart") == []
    assert ws.data == {}
    assert states(ws) == {"x": "executing"}
    assert success(ws, "x", 1) == [Send({"op": "task-dropped", "key": "x"})]
    assert ws.tasks == {} and ws.data == {}


def test_get_data_serves_what_is_held(ws):
    ws.handle("put-data", data={"a": 1}, sizes={"a": (28, "int")})
    assert ws.get_data(["a", "b"]) == ({"a": 1}, ["b"])


def test_a_copy_asked_for_while_a_freed_run_ends_is_fetched(ws):
    """A worker still running a task the scheduler freed (its client left) is asked
    for a copy of that key (a rebalance of the same key computed again elsewhere):
    once the run ends the copy is fetched and confirmed.  It used to be forgotten
    with the run, and the rebalance waited for ever."""
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0, 1, 0))
    assert ws.handle("free-keys", keys=["x"]) == []
    assert ws.handle("acquire-replicas", who_has={"x": [A]}, nbytes={"x": 8}) == []
    assert success(ws, "x", 1) == [Send({"op": "task-dropped", "key": "x"}),
                                   GatherDep(A, ["x"])]
    assert states(ws) == {"x": "flight"}
    assert ws.handle("gather-done", peer=A, data={"x": 2}, sizes={"x": 8}) == [
        Send({"op": "add-keys", "keys": [("x", 8, None)]})]
    assert ws.data == {"x": 2} and states(ws) == {"x": "memory"}


def test_a_copy_asked_for_while_a_freed_run_ends_no_holder_is_missing(ws):
    ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0, 1, 0))
    ws.handle("free-keys", keys=["x"])
    ws.handle("acquire-replicas", who_has={"x": []}, nbytes={"x": 8})
    assert success(ws, "x", 1) == [
        Send({"op": "task-dropped", "key": "x"}),
        Send({"op": "missing-data", "key": None, "dep": "x", "holder": None})]
    assert states(ws) == {}


def test_while_plugins_are_set_up_no_task_starts_but_inputs_are_fetched(ws):
    """Tasks wait for the worker plugins sent before them; fetches, results of what
    runs already and data served go on.  A task stolen meanwhile is given up."""
    assert ws.handle("compute-task", key="r", run_spec="spec-r",
                     priority=(0, 0, 0)) == started("r", "spec-r", {})
    assert ws.handle("plugins-busy") == []
    assert ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0, 1, 0)) == []
    assert ws.handle("compute-task", key="y", run_spec="spec-y", priority=(0, 1, 1),
                     who_has={"d": [A]}, nbytes={"d": 10}) == [GatherDep(A, ["d"])]
    assert success(ws, "r", 1) == [Send({"op": "task-finished", "key": "r",
                                         "nbytes": 8, "type": "int",
                                         "duration": 0.25, "start": 10.0})]
    assert ws.handle("gather-done", peer=A, data={"d": 2}, sizes={"d": 10}) == []
    assert states(ws) == {"r": "memory", "x": "ready", "y": "ready", "d": "memory"}
    assert ws.get_data(["r"]) == ({"r": 1}, [])
    assert ws.handle("steal-request", key="y")[0].msg["state"] == "ready"
    assert ws.handle("plugins-done") == started("x", "spec-x", {})
