"""Worker resources, restrictions and per-key annotations in the two state machines,
literally: which worker is asked to compute what, and when a worker starts a task
that needs resources.  Invariants are checked after every event."""

import pytest

from dask_ipy.scheduler.state import SchedulerState
from dask_ipy.worker.state import Execute, Send, WorkerState

pytestmark = pytest.mark.timeout(60)

A, B, C = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1", "tcp://10.0.0.3:1"
ME = "tcp://10.0.0.9:1"
HINTS = ("duration", "want_data", "confirm", "clients", "run_id")


def take(s):
    out = []
    for kind, ident, msg in s.take_messages():
        if msg.get("op") == "compute-task":
            msg = {k: v for k, v in msg.items() if k not in HINTS}
        out.append((kind, ident, msg))
    return out


def computed(s):
    """[(worker id, key)] of the compute-task messages in the outbox."""
    return [(ident, msg["key"]) for _, ident, msg in take(s)
            if msg.get("op") == "compute-task"]


@pytest.fixture
def s():
    """Client 'c'; 'gpu' (A) has GPU=2 and one thread, 'cpu' (B) has none."""
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("gpu", A, nthreads=1, resources={"GPU": 2})
    s.add_worker("cpu", B, nthreads=1)
    take(s)
    return s


def test_a_task_needing_resources_goes_only_where_they_are_and_says_so(s):
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"], resources={"GPU": 1})
    assert take(s) == [("worker", "gpu", {"op": "compute-task", "key": "x",
                                          "run_spec": "spec-x", "priority": (0, 1, 0),
                                          "resources": {"GPU": 1}})]
    # More than their worker's threads: still all there (the worker runs them as its
    # resources allow), none on the idle worker without a GPU.
    keys = [f"g{i}" for i in range(4)]
    s.update_graph("c", {k: ("spec", []) for k in keys}, keys, resources={"GPU": 1})
    assert computed(s) == [("gpu", k) for k in keys]
    s.validate()


def test_more_than_any_worker_has_waits_for_a_worker_that_has_it(s):
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"], resources={"GPU": 3})
    assert take(s) == []
    assert s.tasks["x"].state == "no-worker"
    s.add_worker("big", C, nthreads=1, resources={"GPU": 4.0, "MEM": 1e9})
    assert computed(s) == [("big", "x")]
    s.validate()


def test_an_idle_worker_without_the_resource_never_steals_it(s):
    keys = [f"g{i}" for i in range(4)]
    s.update_graph("c", {k: ("spec", []) for k in keys}, keys, resources={"GPU": 1})
    take(s)
    gpu = s.workers["gpu"]
    for ts in gpu.processing:
        gpu.processing[ts] = 1.0            # long: worth stealing, were it allowed
    gpu.occupancy = sum(gpu.processing.values())
    s.fill_workers()
    assert [m for m in take(s) if m[2]["op"] == "steal-request"] == []
    # A worker that has the resource takes some.
    s.add_worker("gpu2", C, nthreads=1, resources={"GPU": 1})
    steals = [(ident, m["key"]) for _, ident, m in take(s) if m["op"] == "steal-request"]
    assert steals == [("gpu", "g3")]
    s.validate()


def test_resources_with_worker_restrictions_need_both(s):
    s.add_worker("gpu3", C, nthreads=1, resources={"GPU": 1})
    take(s)
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"], resources={"GPU": 1},
                   workers=[C, B])
    assert computed(s) == [("gpu3", "x")]
    s.validate()


def test_a_worker_is_named_by_address_name_host_name_or_the_host_of_its_address():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1, name="alice", host="node-1", ip="10.0.0.1")
    s.add_worker("w2", B, nthreads=1, name="bob", host="node-2", ip="10.0.0.2")
    take(s)
    for i, named in enumerate([B, "bob", "node-2", "10.0.0.2"]):
        s.update_graph("c", {f"x{i}": ("spec", [])}, [f"x{i}"], workers=[named])
        assert computed(s) == [("w2", f"x{i}")], named
    s.validate()


def test_a_name_given_as_a_number_or_as_its_text_is_the_same_name():
    """A LocalCluster's worker 1 is named 1 in its process and "1" on the command
    line of a worker process: ``workers=[1]`` and ``workers=["1"]`` find either."""
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1, name=0)
    s.add_worker("w2", B, nthreads=1, name="1")
    take(s)
    for i, (named, wid) in enumerate([(1, "w2"), ("1", "w2"), (0, "w1"), ("0", "w1")]):
        s.update_graph("c", {f"x{i}": ("spec", [])}, [f"x{i}"], workers=[named])
        assert computed(s) == [(wid, f"x{i}")], named
    s.validate()


def test_allow_other_workers_makes_restrictions_a_preference(s):
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", [])}, ["x", "y"],
                   workers=["tcp://10.0.0.99:1"], allow_other_workers=True)
    assert sorted(k for _, k in computed(s)) == ["x", "y"]
    # Where the preferred worker exists, it is the one chosen.
    s.update_graph("c", {"z": ("spec-z", [])}, ["z"], workers=[B],
                   allow_other_workers=True)
    assert computed(s) == [("cpu", "z")]
    s.validate()


def test_per_key_annotations_win_over_the_graphs_options(s1_big):
    s = s1_big
    graph = {"a": ("spec-a", []), "b": ("spec-b", []), "c": ("spec-c", []),
             "d": ("spec-d", [])}
    s.update_graph("c", graph, list(graph), {"a": 0, "b": 1, "c": 2, "d": 3},
                   user_priority=1, retries=1,
                   annotations={"priority": {"d": 10},
                                "retries": {"b": 3},
                                "workers": {"c": [B]},
                                "resources": {"a": {"GPU": 1}}})
    tasks = s.tasks
    assert [tasks[k].priority[0] for k in "abcd"] == [-1, -1, -1, -10]
    assert [tasks[k].retries for k in "abcd"] == [1, 3, 1, 1]
    assert tasks["c"].restrictions == {B}
    assert tasks["a"].resources == {"GPU": 1} and tasks["b"].resources is None
    placed = dict((k, w) for w, k in computed(s))
    assert placed["a"] == "gpu" and placed["c"] == "cpu"
    s.validate()


@pytest.fixture
def s1_big():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("gpu", A, nthreads=4, resources={"GPU": 1})
    s.add_worker("cpu", B, nthreads=4)
    take(s)
    return s


def test_malformed_values_from_a_client_are_ignored_not_fatal(s):
    s.handle_client_message("c", {"op": "update-graph",
                                  "tasks": [("x", "spec-x", [], 0)], "keys": ["x"],
                                  "user_priority": "high", "resources": {"GPU": "one"},
                                  "workers": 5.5, "annotations": {"priority": [1]}})
    assert [k for _, k in computed(s)] == ["x"]
    assert s.tasks["x"].resources is None and s.tasks["x"].restrictions is None
    s.validate()


def test_scheduler_info_lists_each_workers_resources(s):
    shown = {a: w["resources"] for a, w in s.info()["workers"].items()}
    assert shown == {A: {"GPU": 2}, B: {}}


# ---------------------------------------------------------------- the worker side

def run(key):
    return [Send({"op": "task-started", "key": key}), Execute(key, key, {})]


def success(ws, key):
    return ws.handle("execute-success", key=key, value=1, nbytes=8, type="int",
                     start=1.0, stop=2.0)


def test_a_worker_runs_at_once_only_what_its_resources_allow():
    ws = WorkerState(ME, nthreads=3, validating=True, resources={"GPU": 1})
    assert ws.handle("compute-task", key="g1", run_spec="g1", priority=(0, 1, 0),
                     resources={"GPU": 1}) == run("g1")
    # A free thread, but no GPU left: g2 waits, a task needing none runs meanwhile.
    assert ws.handle("compute-task", key="g2", run_spec="g2", priority=(0, 1, 1),
                     resources={"GPU": 1}) == []
    assert ws.handle("compute-task", key="plain", run_spec="plain",
                     priority=(0, 1, 2)) == run("plain")
    assert ws.available == {"GPU": 0} and ws.holding == {"g1": {"GPU": 1}}
    out = success(ws, "g1")
    assert out[-2:] == run("g2")
    assert ws.holding == {"g2": {"GPU": 1}}
    # A failure gives them back too.
    out = ws.handle("execute-failure", key="g2", error={"type": "X", "text": "x"},
                    start=1.0, stop=2.0)
    assert ws.available == {"GPU": 1} and ws.holding == {}
    ws.validate()


def test_tasks_waiting_for_resources_keep_their_priority_order():
    ws = WorkerState(ME, nthreads=4, validating=True, resources={"GPU": 2})
    assert ws.handle("compute-task", key="big", run_spec="big", priority=(0, 1, 0),
                     resources={"GPU": 2}) == run("big")
    for i, key in enumerate(["late", "early"]):
        assert ws.handle("compute-task", key=key, run_spec=key,
                         priority=(0, 1, 9 - i * 5), resources={"GPU": 1}) == []
    out = success(ws, "big")
    assert [i.key for i in out if isinstance(i, Execute)] == ["early", "late"]
    ws.validate()


def test_a_task_needing_resources_is_constrained_until_it_runs_and_may_be_stolen():
    # The states a worker plugin of dask.distributed sees for such a task.
    ws = WorkerState(ME, nthreads=2, validating=True, resources={"GPU": 1})
    ws.observe_transitions()
    ws.handle("compute-task", key="g1", run_spec="g1", priority=(0, 1, 0),
              resources={"GPU": 1})
    ws.handle("compute-task", key="g2", run_spec="g2", priority=(0, 1, 1),
              resources={"GPU": 1})
    assert (ws.tasks["g1"].state, ws.tasks["g2"].state) == ("executing", "constrained")
    out = ws.handle("steal-request", key="g2")
    assert out == [Send({"op": "steal-response", "key": "g2", "released": True,
                         "state": "constrained"})]
    success(ws, "g1")
    ws.handle("free-keys", keys=["g1"])
    assert ws.take_transitions() == [
        ("g1", "released", "waiting"), ("g1", "waiting", "constrained"),
        ("g1", "constrained", "executing"),
        ("g2", "released", "waiting"), ("g2", "waiting", "constrained"),
        ("g2", "constrained", "released"), ("g2", "released", "forgotten"),
        ("g1", "executing", "memory"),
        ("g1", "memory", "released"), ("g1", "released", "forgotten")]
    assert ws.tasks == {}
    ws.validate()
