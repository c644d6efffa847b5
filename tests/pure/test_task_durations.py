"""What a task is expected to take before any of its group has been measured:
dask.distributed's ``distributed.scheduler.default-task-durations`` for its task
prefix (dask's `key_split` of the key), else ``unknown-task-duration``, given to
`SchedulerState` as numbers; placement, queues, stealing and adaptivity all count
with it."""

import dask
import pytest

from dask_ipy import config
from dask_ipy.cli import parse_args
from dask_ipy.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(60)


def scheduler(nthreads=1, workers=1):
    s = SchedulerState(validate=True, unknown_duration=2.0,
                       task_durations={"load": 10.0, "tiny": 0.001})
    s.add_client("c")
    for i in range(1, workers + 1):
        s.add_worker(f"w{i}", f"tcp://10.0.0.{i}:1", nthreads=nthreads)
    s.take_messages()
    return s


def submit(s, keys):
    s.update_graph("c", {key: ("spec", []) for key in keys}, list(keys))


def computed(s):
    """{key: the duration hint of its compute-task}"""
    return {msg["key"]: msg["duration"] for kind, _, msg in s.take_messages()
            if msg["op"] == "compute-task"}


def test_placed_tasks_count_their_prefix_default_else_the_unknown_duration():
    s = scheduler(nthreads=2)
    # 'load-x1-3' is in group 'load-x1' but of dask's prefix 'load', as
    # dask.distributed names it; 'rechunk-split' has dask.distributed's default.
    submit(s, ["load-x1-3", "other-1", "rechunk-split-9f86d081884c"])
    assert computed(s) == {"load-x1-3": 10.0, "other-1": 2.0,
                           "rechunk-split-9f86d081884c": 1e-6}
    ws = s.workers["w1"]
    assert s.groups["load-x1"].expected == 10.0
    assert {ts.key: d for ts, d in ws.processing.items()} == {
        "load-x1-3": 10.0, "other-1": 2.0, "rechunk-split-9f86d081884c": 1e-6}
    assert ws.occupancy == pytest.approx(12.000001)
    # Once one is measured, the group's mean counts.
    s.handle_worker_message("w1", {"op": "task-finished", "key": "load-x1-3",
                                   "nbytes": 8, "type": "int", "duration": 3.0})
    s.take_messages()
    submit(s, ["load-x1-4"])
    assert computed(s) == {"load-x1-4": 3.0}
    assert ws.occupancy == pytest.approx(5.000001)


def test_a_task_forgotten_before_it_started_holds_its_thread_for_its_expected_time():
    s = scheduler()
    submit(s, ["load-1"])
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["load-1"]})
    s.take_messages()
    ws = s.workers["w1"]
    assert s.tasks == {} and ws.occupancy == 0.0
    s.handle_worker_message("w1", {"op": "task-started", "key": "load-1"})
    assert ws.stale == {"load-1": 10.0} and ws.occupancy == 10.0
    s.handle_worker_message("w1", {"op": "task-started", "key": "else-1"})
    assert ws.stale == {"load-1": 10.0, "else-1": 2.0} and ws.occupancy == 12.0


def test_tiny_tasks_by_their_prefix_default_fill_a_deeper_queue():
    s = scheduler()
    submit(s, [f"tiny-{i}" for i in range(100)] + [f"slow-{i}" for i in range(100)])
    sent = computed(s)
    # One thread, and its queue holds 20 ms of 1 ms tasks (`SchedulerState._room`);
    # the group of 2 s tasks: one queued behind the running one, as saturation says.
    assert sum(key.startswith("tiny") for key in sent) == 21
    s2 = scheduler()
    submit(s2, [f"slow-{i}" for i in range(100)])
    assert len(computed(s2)) == 3


def test_adaptive_target_counts_the_expected_durations():
    s = scheduler(workers=0)
    submit(s, [f"load-{i}" for i in range(3)] + [f"tiny-{i}" for i in range(1000)]
           + [f"other-{i}" for i in range(4)])
    # 3 x 10 s + 1000 x 1 ms + 4 x 2 s = 39 s: 8 threads for 5 s.
    assert s.adaptive_target(5.0) == 8


def test_dask_config_reaches_the_scheduler_as_seconds():
    """The launcher's options for a ``dask-ipy scheduler`` (which reads no dask
    config) carry dask.distributed's settings, and the parser reads them back."""
    settings = {"distributed.scheduler.unknown-task-duration": "1500ms",
                "distributed.scheduler.default-task-durations": {"load": "1m",
                                                                  "tiny": 0.001}}
    mine = {"load": 60.0, "tiny": 0.001}     # (with dask.distributed's, if imported)
    with dask.config.set(settings):
        unknown, by_prefix = config.task_durations()
        assert unknown == 1.5 and by_prefix.items() >= mine.items()
        args = parse_args(["scheduler", *config.scheduler_flags()])
    assert args.unknown_task_duration == 1.5
    assert args.default_task_durations.items() >= mine.items()
    assert parse_args(["scheduler"]).unknown_task_duration is None
    with pytest.raises(SystemExit):
        parse_args(["scheduler", "--default-task-durations", '{"x": "soon"}'])
