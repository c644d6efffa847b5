"""The transition logs `Client.story` reads: the scheduler's (every transition, with
its recommendations, its stimulus and the shell's time) and a worker's, literally."""

import pytest

from dask_ipy.scheduler.state import SchedulerState
from dask_ipy.worker.state import WorkerState
from test_scheduler_state import A, B, take

pytestmark = pytest.mark.timeout(60)


def scheduler(length=100, workers=("w1",)):
    """Client 'c' and one-thread workers w1 (A), w2 (B)..., keeping ``length``
    transitions."""
    s = SchedulerState(validate=True, transition_log_length=length)
    s.add_client("c")
    for wid, address in zip(workers, (A, B)):
        s.add_worker(wid, address)
    take(s)
    return s


def finished(s, wid, key, now):
    s.handle_worker_message(wid, {"op": "task-finished", "key": key, "nbytes": 8,
                                  "type": "int"}, now=now)


def run_chain(s):
    """y of x: submitted at 10, x done at 11, y at 12, y released at 13."""
    s.tell_time(10.0)
    s.handle_client_message("c", {"op": "update-graph", "keys": ["y"], "tasks": [
        ("x", "spec-x", [], 0), ("y", "spec-y", ["x"], 1)]})
    finished(s, "w1", "x", 11.0)
    finished(s, "w1", "y", 12.0)
    s.tell_time(13.0)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["y"]})


def test_a_keys_story_from_submit_to_forgotten():
    s = scheduler()
    run_chain(s)
    # Its own transitions and those recommending it a state (y's, once done, releases
    # x), each with the stimulus that caused it: "<message kind>-<time>".
    assert s.story("x") == [
        ("x", "released", "waiting", {"x": "processing"}, "update-graph-10.0", 10.0),
        ("x", "waiting", "processing", {}, "update-graph-10.0", 10.0),
        ("x", "processing", "memory", {"y": "processing"}, "task-finished-11.0", 11.0),
        ("y", "processing", "memory", {"x": "released"}, "task-finished-12.0", 12.0),
        ("x", "memory", "released", {"x": "forgotten"}, "task-finished-12.0", 12.0),
        # Not forgotten yet: y, alive, depends on it.
        ("x", "released", "released", {}, "task-finished-12.0", 12.0),
        ("y", "memory", "forgotten", {"x": "forgotten"},
         "client-releases-keys-13.0", 13.0),
        ("x", "released", "forgotten", {}, "client-releases-keys-13.0", 13.0),
    ]
    assert s.story("y", s.story("y")[0][4]) == [
        ("x", "released", "waiting", {"x": "processing"}, "update-graph-10.0", 10.0),
        ("x", "waiting", "processing", {}, "update-graph-10.0", 10.0),
        ("y", "released", "waiting", {}, "update-graph-10.0", 10.0),
        ("x", "processing", "memory", {"y": "processing"}, "task-finished-11.0", 11.0),
        ("y", "waiting", "processing", {}, "task-finished-11.0", 11.0),
        ("y", "processing", "memory", {"x": "released"}, "task-finished-12.0", 12.0),
        ("y", "memory", "forgotten", {"x": "forgotten"},
         "client-releases-keys-13.0", 13.0),
    ]
    # A stimulus id alone: all it caused.
    assert s.story("task-finished-11.0") == [
        ("x", "processing", "memory", {"y": "processing"}, "task-finished-11.0", 11.0),
        ("y", "waiting", "processing", {}, "task-finished-11.0", 11.0),
    ]
    assert s.story("nothing-like-it", "task-finished-99.0", ("x", 1)) == []


def test_the_story_is_asked_for_by_message_and_takes_task_states_and_tuple_keys():
    s = scheduler()
    s.tell_time(5.0)
    s.handle_client_message("c", {"op": "update-graph", "keys": [("x", 1)],
                                  "tasks": [(("x", 1), "spec", [], 0)]})
    ts = s.tasks[("x", 1)]
    assert s.story(ts) == s.story(("x", 1)) == [
        (("x", 1), "released", "waiting", {("x", 1): "processing"},
         "update-graph-5.0", 5.0),
        (("x", 1), "waiting", "processing", {}, "update-graph-5.0", 5.0)]
    take(s)
    s.handle_client_message("c", {"op": "get-story", "request_id": "r1",
                                  "keys": [("x", 1)]})
    assert take(s) == [("client", "c", {"op": "reply", "request_id": "r1",
                                        "result": s.story(ts)})]


def test_a_lost_worker_is_the_stimulus_of_what_its_loss_causes():
    s = scheduler(workers=("w1", "w2"))
    s.tell_time(1.0)
    s.handle_client_message("c", {"op": "update-graph", "keys": ["x"],
                                  "tasks": [("x", "spec", [], 0)]})
    lost = s.tasks["x"].processing_on.id
    s.tell_time(2.0)
    s.remove_worker(lost, reason="connection lost")
    assert s.story("x")[2:] == [
        ("x", "processing", "released", {"x": "waiting"}, "remove-worker-2.0", 2.0),
        ("x", "released", "waiting", {"x": "processing"}, "remove-worker-2.0", 2.0),
        ("x", "waiting", "processing", {}, "remove-worker-2.0", 2.0)]
    # A worker removed while a message is handled: the message's stimulus goes on
    # after it.
    assert s.stimulus == "update-graph"


def test_a_restart_forgets_every_task_in_the_story():
    s = scheduler()
    s.tell_time(1.0)
    s.handle_client_message("c", {"op": "update-graph", "keys": ["x"],
                                  "tasks": [("x", "spec", [], 0)]})
    s.tell_time(2.0)
    s.handle_client_message("c", {"op": "restart", "request_id": "r"})
    assert s.story("x")[-1] == ("x", "processing", "forgotten", {}, "restart-2.0", 2.0)


def test_the_log_keeps_the_latest_transitions_only_or_none():
    s = scheduler(length=3)
    run_chain(s)
    assert [t[:3] for t in s.transition_log] == [
        ("x", "released", "released"), ("y", "memory", "forgotten"),
        ("x", "released", "forgotten")]
    assert [t[:3] for t in s.story("x")] == [
        ("x", "released", "released"), ("y", "memory", "forgotten"),
        ("x", "released", "forgotten")]

    s = scheduler(length=0)
    run_chain(s)
    assert s.transition_log is None and s.story("x") == []
    assert s.tasks == {} and s.transition_count == 10      # the same transitions ran


# ---------------------------------------------------------------- a worker's


def fetch_and_run(ws):
    """z of x (held by A): asked at 1, x arrives at 2, z done at 3, z freed at 4."""
    ws.handle_all([("compute-task", dict(key="z", run_spec="spec-z", priority=(0,),
                                         who_has={"x": [A]}, nbytes={"x": 8}))], 1.0)
    ws.handle_all([("gather-done", dict(peer=A, data={"x": 1}, sizes={"x": 8}))], 2.0)
    ws.handle_all([("execute-success", dict(key="z", value=2, nbytes=8, type="int",
                                            start=2.0, stop=3.0))], 3.0)
    ws.handle_all([("free-keys", dict(keys=["z"]))], 4.0)


def test_a_workers_story_of_a_fetched_input_and_of_its_task():
    ws = WorkerState(B, validating=True)
    ws.keep_story(100)
    fetch_and_run(ws)
    # dask.distributed's worker shape: start, state asked for, state reached (the
    # same here), no recommendations.
    assert ws.story("x") == [
        ("x", "released", "fetch", "fetch", {}, "compute-task-1.0", 1.0),
        ("x", "fetch", "flight", "flight", {}, "compute-task-1.0", 1.0),
        ("x", "flight", "memory", "memory", {}, "gather-done-2.0", 2.0),
        # An input nobody here needs any more, and the scheduler did not ask to keep.
        ("x", "memory", "released", "released", {}, "execute-success-3.0", 3.0),
        ("x", "released", "forgotten", "forgotten", {}, "execute-success-3.0", 3.0)]
    assert ws.story("z") == [
        ("z", "released", "waiting", "waiting", {}, "compute-task-1.0", 1.0),
        ("z", "waiting", "ready", "ready", {}, "gather-done-2.0", 2.0),
        ("z", "ready", "executing", "executing", {}, "gather-done-2.0", 2.0),
        ("z", "executing", "memory", "memory", {}, "execute-success-3.0", 3.0),
        ("z", "memory", "released", "released", {}, "free-keys-4.0", 4.0),
        ("z", "released", "forgotten", "forgotten", {}, "free-keys-4.0", 4.0)]
    assert ws.story("execute-success-3.0") == [
        ("z", "executing", "memory", "memory", {}, "execute-success-3.0", 3.0),
        ("x", "memory", "released", "released", {}, "execute-success-3.0", 3.0),
        ("x", "released", "forgotten", "forgotten", {}, "execute-success-3.0", 3.0)]


def test_a_workers_story_is_bounded_and_beside_the_plugins_log():
    ws = WorkerState(B, validating=True)
    ws.observe_transitions()
    ws.keep_story(2)
    fetch_and_run(ws)
    assert [t[:3] for t in ws.story("x", "z")] == [
        ("z", "memory", "released"), ("z", "released", "forgotten")]
    assert ws.take_transitions() == [
        ("x", "released", "fetch"), ("z", "released", "waiting"),
        ("x", "fetch", "flight"), ("x", "flight", "memory"), ("z", "waiting", "ready"),
        ("z", "ready", "executing"), ("z", "executing", "memory"),
        ("x", "memory", "released"), ("x", "released", "forgotten"),
        ("z", "memory", "released"), ("z", "released", "forgotten")]


def test_a_worker_keeping_no_story_tells_none():
    ws = WorkerState(B, validating=True)
    fetch_and_run(ws)
    assert ws.story("x", "z") == [] and ws.story_log is None and not ws.observed


def test_what_is_no_key_is_in_no_story():
    s = scheduler()
    run_chain(s)
    assert s.story({"not": "a key"}, ["nor", "this"], "x")[0][:3] == (
        "x", "released", "waiting")
    assert s.story({"not": "a key"}) == []
