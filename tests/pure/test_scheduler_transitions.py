"""Each entry of the scheduler's transition table, reached the way the scheduler
reaches it, literally: the state changes (as scheduler plugins see them), the
messages out, and `validate()` at the end.  Also the client handlers that change no
task state ("client-desires-keys", "monitor")."""

import pytest

from dask_ipy.scheduler.state import SchedulerState
from test_scheduler_state import A, B, C, CHAIN, CHAIN_ORDER, compute, states, take

pytestmark = pytest.mark.timeout(60)


def cluster(nworkers=1):
    """Client 'c', one-thread workers 'w1' (A), 'w2' (B)...; state changes recorded."""
    s = SchedulerState(validate=True)
    s.add_client("c")
    for i in range(nworkers):
        s.add_worker(f"w{i + 1}", (A, B, C)[i], nthreads=1)
    take(s)
    s.plugin_events = []
    return s


def changes(s):
    """[(key, start, finish)] since the last call."""
    out = [e[1:4] for e in s.plugin_events if e[0] == "transition"]
    s.plugin_events.clear()
    return out


def finish(s, wid, key, nbytes=8):
    s.handle_worker_message(wid, {"op": "task-finished", "key": key, "nbytes": nbytes,
                                  "type": "int"})


def err(s, wid, key):
    s.handle_worker_message(wid, {"op": "task-erred", "key": key, "type": "Boom",
                                  "text": "boom", "exception": None, "traceback": None,
                                  "traceback_text": ""})


def scatter(s, wid, key, request_id=1):
    """The client scatters a value under ``key``; worker ``wid`` stores it."""
    s.handle_client_message("c", {"op": "scatter", "request_id": request_id,
                                  "data": {key: "blob"},
                                  "workers": [s.workers[wid].address]})
    assert take(s) == [("worker", wid, {"op": "put-data", "data": {key: "blob"}})]
    s.handle_worker_message(wid, {"op": "add-keys", "keys": [(key, 8, "int")]})


def key_in_memory(key, cid="c"):
    return ("client", cid, {"op": "key-in-memory", "key": key, "type": "int",
                            "nbytes": 8})


def scattered(key, request_id=1):
    return ("client", "c", {"op": "scattered", "request_id": request_id, "key": key})


def four_roots(s):
    """t0..t2 on w1 (a thread and a queue of two), t3 queued."""
    keys = [f"t{i}" for i in range(4)]
    s.update_graph("c", {k: (f"spec-{k}", []) for k in keys}, keys,
                   {k: i for i, k in enumerate(keys)})
    assert [m["key"] for _, _, m in take(s)] == ["t0", "t1", "t2"]
    assert states(s)["t3"] == "queued"
    changes(s)


# ---------------------------------------------------------------- released -> ...

def test_released_waiting_processing_memory():
    s = cluster()
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    assert changes(s) == [("x", "released", "waiting"), ("x", "waiting", "processing"),
                          ("y", "released", "waiting"), ("z", "released", "waiting")]
    assert take(s) == [("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]
    finish(s, "w1", "x")
    assert changes(s) == [("x", "processing", "memory"), ("y", "waiting", "processing")]
    assert take(s) == [("worker", "w1", compute("y", "spec-y", (0, 1, 1), {"x": [A]},
                                                {"x": 8}))]
    s.validate()


def test_memory_forgotten_when_the_client_lets_go():
    s = cluster()
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    finish(s, "w1", "x")
    take(s)
    changes(s)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    assert changes(s) == [("x", "memory", "forgotten")]
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    assert s.tasks == {} and s.groups["x"].states["memory"] == 0
    s.validate()


def test_memory_released_while_a_dependent_lives_then_forgotten_with_it():
    s = cluster()
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", ["x"])}, ["x", "y"])
    finish(s, "w1", "x")
    finish(s, "w1", "y")
    take(s)
    changes(s)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    assert changes(s) == [("x", "memory", "released")]
    s.validate()
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["y"]})
    assert changes(s) == [("y", "memory", "forgotten"), ("x", "released", "forgotten")]
    assert s.tasks == {}
    s.validate()


def test_released_erred_for_a_missing_input():
    s = cluster()
    s.update_graph("c", {"y": ("spec-y", ["nowhere"])}, ["y"])
    assert changes(s) == [("y", "released", "erred")]
    ((_, _, msg),) = take(s)
    assert (msg["op"], msg["key"], msg["type"]) == ("task-erred", "y",
                                                    "MissingDependency")
    s.validate()


def test_released_memory_when_scattered():
    s = cluster()
    scatter(s, "w1", "x")
    assert changes(s) == [("x", "released", "memory")]
    assert take(s) == [scattered("x")]
    assert [ws.id for ws in s.tasks["x"].who_has] == ["w1"]
    s.validate()


# ---------------------------------------------------------------- waiting -> ...

def test_waiting_released_when_cancelled():
    s = cluster()
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    changes(s)
    s.handle_client_message("c", {"op": "cancel", "keys": ["z"]})
    assert changes(s) == [("z", "waiting", "released"), ("z", "released", "forgotten"),
                          ("y", "waiting", "released"), ("y", "released", "forgotten"),
                          ("x", "processing", "released"),
                          ("x", "released", "forgotten")]
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    assert s.tasks == {}
    s.validate()


def test_waiting_memory_when_its_key_is_scattered():
    s = cluster()
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    changes(s)
    scatter(s, "w1", "z")
    assert changes(s) == [("z", "waiting", "memory")]
    assert take(s) == [scattered("z"), key_in_memory("z")]
    # Nobody needs y any more: once done, it is dropped (lineage of z, like x).
    finish(s, "w1", "x")
    finish(s, "w1", "y")
    assert states(s) == {"x": "released", "y": "released", "z": "memory"}
    assert {ts.key for ts in s.workers["w1"].has_what} == {"z"}
    s.validate()


def test_waiting_erred_when_an_input_errs():
    s = cluster()
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    changes(s)
    err(s, "w1", "x")
    assert sorted(changes(s)) == [("x", "processing", "erred"),
                                  ("y", "waiting", "erred"), ("z", "waiting", "erred")]
    ((_, _, msg),) = take(s)
    assert (msg["op"], msg["key"], msg["origin"]) == ("task-erred", "z", "x")
    s.validate()


# ---------------------------------------------------------------- queued -> ...

def test_queued_processing_as_a_thread_frees():
    s = cluster()
    four_roots(s)
    # A recommendation alone does not jump the queue's order.
    s.transitions({"t3": "processing"})
    assert changes(s) == [] and take(s) == []
    finish(s, "w1", "t0")
    assert changes(s) == [("t0", "processing", "memory"), ("t3", "queued", "processing")]
    assert take(s) == [key_in_memory("t0"),
                       ("worker", "w1", compute("t3", "spec-t3", (0, 1, 3)))]
    s.validate()


def test_queued_released_when_cancelled():
    s = cluster()
    four_roots(s)
    s.handle_client_message("c", {"op": "cancel", "keys": ["t3"]})
    assert changes(s) == [("t3", "queued", "released"), ("t3", "released", "forgotten")]
    assert take(s) == []             # the canceller knows
    # Its entry in the queue is skipped.
    finish(s, "w1", "t0")
    assert take(s) == [key_in_memory("t0")]
    s.validate()


def test_queued_memory_when_its_key_is_scattered():
    s = cluster()
    four_roots(s)
    scatter(s, "w1", "t3")
    assert changes(s) == [("t3", "queued", "memory")]
    assert take(s) == [scattered("t3"), key_in_memory("t3")]
    finish(s, "w1", "t0")
    assert take(s) == [key_in_memory("t0")]
    assert states(s) == {"t0": "memory", "t1": "processing", "t2": "processing",
                         "t3": "memory"}
    s.validate()


# ---------------------------------------------------------------- no-worker -> ...

def no_worker_x():
    """x may only run on C, which is not there; w1 and w2 are."""
    s = cluster(2)
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"], restrictions={"x": [C]})
    assert changes(s) == [("x", "released", "waiting"), ("x", "waiting", "no-worker")]
    assert take(s) == []
    return s


def test_no_worker_waiting_when_a_worker_arrives():
    s = no_worker_x()
    s.add_worker("w3", C)
    assert changes(s) == [("x", "no-worker", "waiting"), ("x", "waiting", "processing")]
    assert take(s) == [("worker", "w3", {"op": "registered"}),
                       ("worker", "w3", compute("x", "spec-x", (0, 1, 0)))]
    s.validate()


def test_no_worker_released_when_cancelled():
    s = no_worker_x()
    s.handle_client_message("c", {"op": "cancel", "keys": ["x"]})
    assert changes(s) == [("x", "no-worker", "released"), ("x", "released", "forgotten")]
    assert take(s) == []
    assert s.unrunnable == set()
    s.validate()


def test_no_worker_memory_when_its_key_is_scattered():
    s = no_worker_x()
    scatter(s, "w1", "x")
    assert changes(s) == [("x", "no-worker", "memory")]
    assert take(s) == [scattered("x"), key_in_memory("x")]
    assert s.unrunnable == set()
    s.add_worker("w3", C)                   # nothing left to run there
    assert take(s) == [("worker", "w3", {"op": "registered"})]
    s.validate()


def test_a_task_waiting_for_a_worker_waits_again_for_an_input_it_lost():
    s = cluster(2)
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", ["x"])}, ["y"],
                   {"x": 0, "y": 1}, restrictions={"y": [C]})
    take(s)
    finish(s, "w1", "x")
    assert states(s) == {"x": "memory", "y": "no-worker"}
    changes(s)
    s.remove_worker("w1")
    assert changes(s) == [("x", "memory", "released"), ("x", "released", "waiting"),
                          ("x", "waiting", "processing"), ("y", "no-worker", "released"),
                          ("y", "released", "waiting")]
    assert take(s)[-1] == ("worker", "w2", compute("x", "spec-x", (0, 1, 0)))
    # Its worker arrives before its input is back: it waits for the input.
    s.add_worker("w3", C)
    take(s)
    assert states(s) == {"x": "processing", "y": "waiting"}
    finish(s, "w2", "x")
    assert take(s) == [("worker", "w3", compute("y", "spec-y", (0, 1, 1), {"x": [B]},
                                                {"x": 8}))]
    s.validate()


# ---------------------------------------------------------------- processing -> ...

def test_processing_waiting_when_given_back_with_no_thief():
    s = cluster()
    graph = {"x": ("spec-x", []), **{f"y{i}": (f"spec-y{i}", ["x"]) for i in range(4)}}
    s.update_graph("c", graph, [f"y{i}" for i in range(4)],
                   {key: i for i, key in enumerate(graph)})
    finish(s, "w1", "x")
    s.handle_worker_message("w1", {"op": "task-started", "key": "y0"})
    s.add_worker("w2", B, nthreads=1)
    assert take(s)[-1] == ("worker", "w1", {"op": "steal-request", "key": "y3"})
    s.remove_worker("w2")
    take(s)
    changes(s)
    s.handle_worker_message("w1", {"op": "steal-response", "key": "y3",
                                   "released": True, "state": "ready"})
    assert changes(s) == [("y3", "processing", "waiting"),
                          ("y3", "waiting", "processing")]
    assert take(s) == [("worker", "w1", compute("y3", "spec-y3", (0, 1, 4), {"x": [A]},
                                                {"x": 8}))]
    s.validate()


def test_processing_released_when_the_client_lets_go():
    s = cluster()
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    take(s)
    changes(s)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    assert changes(s) == [("x", "processing", "released"), ("x", "released", "forgotten")]
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    s.validate()


def test_processing_erred_when_the_task_fails():
    s = cluster()
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    take(s)
    changes(s)
    err(s, "w1", "x")
    # Plugins are told where it ended, and why, as dask.distributed tells them.
    assert s.plugin_events == [("transition", "x", "processing", "erred", {
        "worker": A, "exception_text": "boom", "traceback_text": ""})]
    assert changes(s) == [("x", "processing", "erred")]
    ((_, cid, msg),) = take(s)
    assert (cid, msg["op"], msg["type"], msg["worker"]) == ("c", "task-erred", "Boom", A)
    s.validate()


def test_processing_memory_when_its_key_is_scattered_elsewhere():
    s = cluster(2)
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"], restrictions={"x": [A]})
    take(s)
    changes(s)
    scatter(s, "w2", "x")
    assert changes(s) == [("x", "processing", "memory")]
    assert take(s) == [scattered("x"), key_in_memory("x")]
    assert s.workers["w1"].processing == {}
    # The computed copy, when it comes, is one more replica.
    finish(s, "w1", "x")
    assert sorted(ws.id for ws in s.tasks["x"].who_has) == ["w1", "w2"]
    s.validate()


# ---------------------------------------------------------------- erred -> ...

def erred_x():
    s = cluster()
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    err(s, "w1", "x")
    take(s)
    changes(s)
    return s


def test_erred_released_when_the_client_lets_go():
    s = erred_x()
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    assert changes(s) == [("x", "erred", "released"), ("x", "released", "forgotten")]
    assert take(s) == [] and s.tasks == {}
    s.validate()


def test_erred_memory_when_its_key_is_scattered():
    s = erred_x()
    scatter(s, "w1", "x")
    assert changes(s) == [("x", "erred", "memory")]
    assert take(s) == [scattered("x"), key_in_memory("x")]
    assert s.tasks["x"].error is None
    s.validate()


# ---------------------------------------------------------------- handlers

def test_client_desires_keys_answers_for_each_key():
    s = cluster()
    s.update_graph("c", {"done": ("spec", []), "bad": ("spec", []),
                         "running": ("spec", [])}, ["done", "bad", "running"],
                   {"done": 0, "bad": 1, "running": 2})
    take(s)
    finish(s, "w1", "done")
    err(s, "w1", "bad")
    take(s)
    s.add_client("d")
    s.handle_client_message("d", {"op": "client-desires-keys",
                                  "keys": ["done", "bad", "running", "nowhere"]})
    out = take(s)
    assert out[0] == key_in_memory("done", "d")
    assert [(cid, m["op"], m["key"], m["type"]) for _, cid, m in out[1:]] == [
        ("d", "task-erred", "bad", "Boom"), ("d", "task-erred", "nowhere", "KeyError")]
    assert out[2][2]["text"] == "no task 'nowhere' on the scheduler"
    assert s.tasks["running"].who_wants == {"c", "d"}
    assert {ts.key for ts in s.clients["d"].wants_what} == {"done", "bad", "running"}
    # The one still running is announced to both once done, and kept for either.
    finish(s, "w1", "running")
    assert sorted(take(s)) == [key_in_memory("running"), key_in_memory("running", "d")]
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["running"]})
    assert take(s) == [] and states(s)["running"] == "memory"
    s.validate()


def test_client_desires_keys_the_scheduler_does_not_have():
    s = cluster()
    s.handle_client_message("c", {"op": "client-desires-keys", "keys": [("x", 1)]})
    ((kind, cid, msg),) = take(s)
    assert (kind, cid, msg["op"], msg["key"], msg["type"]) == (
        "client", "c", "task-erred", ("x", 1), "KeyError")
    s.handle_client_message("gone", {"op": "client-desires-keys", "keys": ["x"]})
    assert take(s) == []            # nobody to tell
    s.validate()


def test_monitor_switches_a_clients_snapshots_on_and_off():
    s = cluster()
    s.add_client("d")
    assert s.monitors() == []
    s.handle_client_message("c", {"op": "monitor"})
    s.handle_client_message("d", {"op": "monitor", "on": True})
    assert s.monitors() == ["c", "d"]
    s.handle_client_message("c", {"op": "monitor", "on": False})
    s.handle_client_message("gone", {"op": "monitor", "on": True})
    assert s.monitors() == ["d"]
    s.remove_client("d")
    assert s.monitors() == [] and take(s) == []
    s.validate()
