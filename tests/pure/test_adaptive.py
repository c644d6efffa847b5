"""Adaptivity's decisions, without processes: how many workers the scheduler wants
for its work and which it would retire (`SchedulerState.adaptive_target`, the
"adaptive-target" request), and when a `LocalCluster` acts on that
(`AdaptivePolicy`: up at once, down after ``wait_count`` rounds in a row)."""

import pytest

from dask_ipy.local import AdaptivePolicy
from dask_ipy.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(60)

A, B, C = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1", "tcp://10.0.0.3:1"


def scheduler(*workers, nthreads=1, memory_limit=0):
    s = SchedulerState(validate=True)
    s.add_client("c")
    for i, address in enumerate(workers, 1):
        s.add_worker(f"w{i}", address, nthreads=nthreads, memory_limit=memory_limit)
    s.take_messages()
    return s


def ask(s, target_duration=5.0, minimum=0, maximum=None):
    s.handle_client_message("c", {"op": "adaptive-target", "request_id": 7,
                                  "target_duration": target_duration,
                                  "minimum": minimum, "maximum": maximum})
    [(kind, cid, reply)] = s.take_messages()
    assert (kind, cid, reply["op"], reply["request_id"]) == ("client", "c", "reply", 7)
    return reply["result"]


def submit(s, n, prefix="slow", **kwargs):
    s.update_graph("c", {f"{prefix}-{i}": ("spec", []) for i in range(n)},
                   [f"{prefix}-{i}" for i in range(n)], **kwargs)


def finish(s, wid, key, nbytes=8, duration=0.1):
    s.handle_worker_message(wid, {"op": "task-finished", "key": key, "nbytes": nbytes,
                                  "type": "int", "duration": duration})


def held(s, key, address, nbytes):
    """A result of ``nbytes`` computed on the worker at ``address`` and kept."""
    s.update_graph("c", {key: ("spec", [])}, [key], workers=[address])
    finish(s, s.by_address[address].id, key, nbytes)
    s.take_messages()


# ---------------------------------------------------------------- the scheduler

def test_without_workers_queued_work_asks_for_workers_by_its_duration():
    s = scheduler()
    assert s.adaptive_target() == 0 and ask(s) == {"target": 0, "retire": []}
    submit(s, 10)                  # no duration measured yet: 0.5 s each, 5 s in all
    assert {ts.state for ts in s.tasks.values()} == {"no-worker"}
    assert s.adaptive_target(5.0) == 1
    assert s.adaptive_target(1.0) == 5
    assert s.adaptive_target(0.1) == 10          # never more threads than tasks
    assert ask(s, 1.0, maximum=3) == {"target": 3, "retire": []}


def test_measured_durations_and_threads_per_worker_count():
    s = scheduler(A, B, nthreads=2)
    submit(s, 40)                   # no duration measured yet: 0.5 s each
    s.take_messages()
    running = [ts for ts in s.tasks.values() if ts.state == "processing"]
    assert len(running) == 12 and len(s.tasks) == 40
    # 40 x 0.5 s = 20 s: 4 threads for 5 s, two workers of two threads
    assert s.adaptive_target(5.0) == 2
    for ts in running:              # they took 1.5 s each
        finish(s, ts.processing_on.id, ts.key, duration=1.5)
    s.take_messages()
    # 28 left at 1.5 s: 42 s, 9 threads for 5 s, 5 workers of two threads
    assert s.groups["slow"].duration == pytest.approx(1.5)
    assert s.adaptive_target(5.0) == 5
    assert ask(s, 5.0, maximum=3) == {"target": 3, "retire": []}


def test_a_few_long_tasks_ask_for_no_more_workers_than_tasks():
    s = scheduler(A)
    submit(s, 1, prefix="long")
    [(_, wid, _)] = s.take_messages()
    finish(s, wid, "long-0", duration=100.0)
    s.update_graph("c", {"long-1": ("spec", []), "long-2": ("spec", []),
                         "long-3": ("spec", []), "long-4": ("spec", ["long-3"])},
                   ["long-1", "long-2", "long-4"])
    s.take_messages()
    # 400 s of work (one task of it waiting for its input): 80 threads for 5 s,
    # yet only 3 tasks can run now
    assert s.adaptive_target(5.0) == 3


def test_tasks_waiting_for_inputs_count_as_work():
    s = scheduler(A)
    s.update_graph("c", {"x": ("spec", []), "y": ("spec", ["x"]),
                         "z": ("spec", ["y"])}, ["z"])
    s.take_messages()
    # x processing, y and z waiting: 1.5 s of work, yet one task that can run
    assert s.adaptive_target(1.0) == 1
    s.add_worker("w2", B)
    s.take_messages()
    assert ask(s, 1.0) == {"target": 1, "retire": [B]}


def test_idle_workers_retire_emptiest_first_and_data_keeps_one():
    s = scheduler(A, B, C)
    assert ask(s) == {"target": 0, "retire": [A, B, C]}
    assert ask(s, minimum=2) == {"target": 2, "retire": [A]}
    held(s, "big", B, 100)
    held(s, "small", A, 10)
    # Results held and no memory limits: one worker stays, the fullest.
    assert ask(s) == {"target": 1, "retire": [C, A]}
    assert ask(s, minimum=3) == {"target": 3, "retire": []}


def test_memory_limits_keep_room_for_twice_the_data():
    s = scheduler(A, B, C, memory_limit=1000)
    held(s, "x", A, 900)
    assert ask(s) == {"target": 2, "retire": [B]}       # 1800 needs two of 1000
    held(s, "y", B, 300)
    assert ask(s) == {"target": 3, "retire": []}        # 2400 needs three


def test_workers_running_tasks_stay_unless_the_maximum_says_otherwise():
    s = scheduler(A, B, C)
    held(s, "data", C, 100)
    s.update_graph("c", {"run": ("spec", [])}, ["run"], workers=[A])
    s.take_messages()
    # One task: one worker, the one running it; C holds data but is idle: it goes
    # after B, which holds nothing.
    assert ask(s) == {"target": 1, "retire": [B, C]}
    s.update_graph("c", {"run2": ("spec", [])}, ["run2"], workers=[B])
    s.take_messages()
    assert ask(s) == {"target": 2, "retire": [C]}
    # Below the workers running tasks: the idle one first, then the busy ones,
    # least data first (a tie: by address).
    assert ask(s, maximum=1) == {"target": 1, "retire": [C, A]}


def test_a_retiring_worker_is_neither_counted_nor_named():
    s = scheduler(A, B, C)
    s.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                  "request_id": 1, "close": False, "remove": False})
    s.take_messages()
    assert ask(s, minimum=1) == {"target": 1, "retire": [B]}


# ---------------------------------------------------------------- the cluster

def test_the_policy_scales_up_at_once_and_down_after_wait_count_rounds():
    policy = AdaptivePolicy(wait_count=3)
    workers = {0: A, 1: B}
    assert policy.decide({"target": 4, "retire": []}, workers) == ("up", 4)
    assert policy.decide({"target": 2, "retire": []}, workers) == ("same", None)
    down = {"target": 1, "retire": [B]}
    assert policy.decide(down, workers) == ("same", None)
    assert policy.decide(down, workers) == ("same", None)
    assert policy.decide(down, workers) == ("down", [1])
    assert policy.counts == {}


def test_the_count_restarts_when_a_round_does_not_name_the_worker():
    policy = AdaptivePolicy(wait_count=2)
    workers = {0: A, 1: B, 2: C}
    assert policy.decide({"target": 1, "retire": [C, B]}, workers) == ("same", None)
    assert policy.counts == {2: 1, 1: 1}
    # B is no longer named: its count starts again; C's goes on.
    assert policy.decide({"target": 2, "retire": [C]}, workers) == ("down", [2])
    assert policy.decide({"target": 1, "retire": [B]}, workers) == ("same", None)
    # A round that wants more (or as many) forgets every count.
    assert policy.decide({"target": 3, "retire": []}, workers) == ("same", None)
    assert policy.counts == {}
    assert policy.decide({"target": 1, "retire": [B]}, workers) == ("same", None)
    assert policy.counts == {1: 1}


def test_workers_not_the_clusters_are_left_alone():
    policy = AdaptivePolicy(wait_count=1)
    # C joined the scheduler from elsewhere: the cluster retires only its own.
    assert policy.decide({"target": 1, "retire": [C, B]}, {0: A, 1: B}) == \
        ("down", [1])
