"""The scheduler on a large cluster: a placement and a steal pass look at a bounded
number of workers, whatever the cluster's size, and the bookkeeping that makes it so
(the running workers, the workers that may give tasks) stays right."""

import collections

import pytest

from dask_ipy.scheduler import state as S
from dask_ipy.scheduler.state import SEARCH, SchedulerState

pytestmark = pytest.mark.timeout(60)


def cluster(n, validate=False):
    s = SchedulerState(validate=validate)
    s.add_client("c")
    for i in range(n):
        s.add_worker(f"w{i}", f"tcp://10.0.{i // 256}.{i % 256}:1", nthreads=1)
    s.take_messages()
    return s


def placed(s):
    """{worker id: [keys]} of the compute-task messages sent."""
    out = collections.defaultdict(list)
    for kind, wid, msg in s.take_messages():
        if kind == "worker" and msg["op"] == "compute-task":
            out[wid].append(msg["key"])
    return out


def counting(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(cls, name, counted)
    return calls


def test_a_root_placement_looks_at_a_window_of_a_large_cluster(monkeypatch):
    s = cluster(500)
    rooms = counting(monkeypatch, SchedulerState, "_room")
    s.update_graph("c", {"x-0": ("spec", [])}, keys=["x-0"])
    assert len(rooms) == SEARCH                     # not 500
    assert placed(s) == {"w0": ["x-0"]}
    # The next search starts where this one ended: roots go round the cluster.
    s.update_graph("c", {"x-1": ("spec", [])}, keys=["x-1"])
    assert placed(s) == {f"w{SEARCH}": ["x-1"]}


def test_roots_fill_a_large_cluster_evenly():
    s = cluster(100, validate=True)
    tasks = {f"x-{i}": ("spec", []) for i in range(300)}
    s.update_graph("c", tasks, keys=list(tasks))
    where = placed(s)
    # Each worker has room for three (a thread and a queue of two): all placed, each
    # worker full, none queued on the scheduler.
    assert sorted(len(v) for v in where.values()) == [3] * 100
    assert not s.queued


def test_a_small_cluster_is_searched_whole():
    """Up to SEARCH workers a placement compares them all, as it always did: the one
    with most room wins, the first in joining order on ties."""
    s = cluster(3)
    s.update_graph("c", {"a-0": ("spec", []), "a-1": ("spec", [])}, keys=["a-0", "a-1"])
    assert placed(s) == {"w0": ["a-0"], "w1": ["a-1"]}


def test_a_placement_with_inputs_looks_at_their_holders_and_a_window(monkeypatch):
    s = cluster(300)
    s.update_graph("c", {"r-0": ("spec", []), "r-1": ("spec", [])}, keys=["r-0", "r-1"])
    for wid, keys in placed(s).items():
        for key in keys:
            s.handle_worker_message(wid, {"op": "task-finished", "key": key,
                                          "nbytes": 10**9, "type": "bytes",
                                          "duration": 1.0})
    holders = {ws.id for k in ("r-0", "r-1") for ws in s.tasks[k].who_has}
    s.take_messages()
    looked = counting(monkeypatch, SchedulerState, "_window")
    s.update_graph("c", {"s-0": ("spec", ["r-0", "r-1"])}, keys=["s-0"])
    assert len(looked) == 1
    (wid, keys), = placed(s).items()
    assert keys == ["s-0"] and wid in holders       # a gigabyte is not moved


def queue_long_tasks(s, n_workers):
    """Three long tasks queued on every worker of ``s`` but w0, free to move."""
    tasks = {}
    restrictions = {}
    for i in range(1, n_workers):
        for j in range(3):
            key = f"long-{i}-{j}"
            tasks[key] = ("spec", [])
            restrictions[key] = [f"tcp://10.0.{i // 256}.{i % 256}:1"]
    s.update_graph("c", tasks, keys=list(tasks), restrictions=restrictions)
    for key in tasks:
        s.tasks[key].restrictions = None                  # free to move from now on
    s.take_messages()


def test_a_steal_pass_looks_at_a_bounded_number_of_victims(monkeypatch):
    s = cluster(400)
    queue_long_tasks(s, 400)                              # w0 is idle
    assert len(s.may_give) == 399
    looked = counting(monkeypatch, S, "_may_give")
    s.fill_workers(s.workers["w0"])
    assert len(looked) <= SEARCH
    steals = [m for _, _, m in s.take_messages() if m["op"] == "steal-request"]
    assert len(steals) == 1                               # one idle thread
    # The workers looked at went to the back: the next pass looks at others.
    first = list(s.may_give)[:SEARCH]
    assert all(ws.id != "w1" for ws in first)


def test_a_worker_with_nothing_to_give_leaves_the_set_when_looked_at():
    s = cluster(3, validate=True)
    tasks = {f"t-{i}": ("spec", ["d"]) for i in range(4)}
    tasks["d"] = ("spec", [])
    s.update_graph("c", tasks, keys=list(tasks),
                   restrictions={k: ["tcp://10.0.0.1:1"] for k in tasks})
    msgs = placed(s)
    s.handle_worker_message("w1", {"op": "task-finished", "key": "d", "nbytes": 8,
                                   "type": "int", "duration": 1.0})
    msgs = placed(s)
    assert sorted(msgs["w1"]) == ["t-0", "t-1", "t-2", "t-3"]
    assert s.workers["w1"] in s.may_give
    for key in sorted(msgs["w1"]):
        s.handle_worker_message("w1", {"op": "task-finished", "key": key, "nbytes": 8,
                                       "type": "int", "duration": 1.0})
    s.fill_workers(s.workers["w0"])                       # a pass reads the set
    assert s.workers["w1"] not in s.may_give


def test_the_running_workers_follow_pauses_and_removals():
    s = cluster(30, validate=True)
    before = s._running_workers()
    assert len(before) == 30
    s.handle_worker_message("w3", {"op": "heartbeat",
                                   "metrics": {"status": "paused"}}, now=1.0)
    assert s.workers["w3"].status == "paused"
    s.remove_worker("w4")
    running = s._running_workers()
    assert [ws.id for ws in running] == [f"w{i}" for i in range(30) if i not in (3, 4)]
    s.validate()
    s.handle_worker_message("w3", {"op": "heartbeat",
                                   "metrics": {"status": "running"}}, now=2.0)
    assert "w3" in [ws.id for ws in s._running_workers()]
    s.validate()


class Unwalkable(dict):
    """The steals in flight, which a steal pass may look up but not walk."""

    def _walked(self, *args):
        raise AssertionError("a steal pass walked every steal in flight")

    __iter__ = values = items = keys = _walked


def test_a_steal_pass_counts_its_thiefs_steals_without_walking_them_all():
    s = cluster(400)
    s.add_worker("thief", "tcp://10.1.0.1:1", nthreads=2)
    queue_long_tasks(s, 400)
    thief = s.workers["thief"]
    # Steals in flight for many workers, one of them for the thief.
    for i in range(1, 300):
        ts = s.tasks[f"long-{i}-2"]
        s._request_steal(ts, ts.processing_on, s.workers[f"w{(i + 1) % 400}"])
    ts = s.tasks["long-399-2"]
    s._request_steal(ts, ts.processing_on, thief)
    assert thief.stealing == 1 and s.workers["w2"].stealing == 1
    s.take_messages()
    s.steals = Unwalkable(s.steals)
    s.fill_workers(thief)
    steals = [m for _, _, m in s.take_messages() if m["op"] == "steal-request"]
    assert len(steals) == 1                       # two threads, one steal in flight
    assert thief.stealing == 2
    # An answer ends the thief's count, a lost one too.
    s.steals = dict(dict.items(s.steals))
    s.handle_worker_message(ts.processing_on.id, {"op": "steal-response", "key": ts.key,
                                                  "released": False, "state": "ready"})
    assert thief.stealing == 1
    s.remove_worker("thief")
    s.validate()


def test_new_work_is_stolen_for_the_idle_workers_alone(monkeypatch):
    s = cluster(400, validate=True)
    passes = counting(monkeypatch, SchedulerState, "_steal_for")
    s.update_graph("c", {"x": ("spec", [])}, keys=["x"])
    assert passes == []                 # nothing waits anywhere: nothing to steal
    (wid, _), = placed(s).items()
    s.handle_worker_message(wid, {"op": "task-finished", "key": "x", "nbytes": 8,
                                  "type": "int", "duration": 1.0})
    s.take_messages()
    # One task running on each worker but w0 and w1, and two more waiting on w2.
    tasks, restrictions = {}, {}
    for i in range(2, 400):
        tasks[f"b-{i}"] = ("spec", [])
        restrictions[f"b-{i}"] = [f"tcp://10.0.{i // 256}.{i % 256}:1"]
    for j in range(2):
        tasks[f"q-{j}"] = ("spec", [])
        restrictions[f"q-{j}"] = ["tcp://10.0.0.2:1"]
    s.update_graph("c", tasks, keys=list(tasks), restrictions=restrictions)
    for key in tasks:
        s.tasks[key].restrictions = None
    s.take_messages()
    passes.clear()
    s.fill_workers()
    assert sorted(ws.id for _, ws in passes) == ["w0", "w1"]      # not 400
    steals = [m["key"] for _, _, m in s.take_messages() if m["op"] == "steal-request"]
    assert sorted(steals) == ["q-0", "q-1"]


def test_a_queue_is_handed_to_the_workers_that_gained_room_alone(monkeypatch):
    s = cluster(400, validate=True)
    tasks = {f"x-{i}": ("spec", []) for i in range(2000)}
    s.update_graph("c", tasks, keys=list(tasks))
    assert sum(len(v) for v in placed(s).values()) == 1200 and len(s.queued) == 800
    fills = counting(monkeypatch, SchedulerState, "_fill")
    s.fill_workers()
    assert fills == [] and placed(s) == {}            # all full: none looked at
    # A task given up on w7 frees its thread: w7 alone is filled.
    w7 = s.workers["w7"]
    ts = next(iter(w7.processing))
    s.handle_client_message("c", {"op": "cancel", "keys": [ts.key]})
    assert [ws.id for _, ws in fills] == ["w7"]
    assert list(placed(s)) == ["w7"] and len(s.queued) == 799
