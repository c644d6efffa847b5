"""SchedulerState alone: messages in, messages out, invariants checked after every
transition.  No sockets, threads or clocks; run specs are plain strings here because
the scheduler only forwards them."""

import itertools

import pytest

from dask_ipy.errors import CycleError, KilledWorker, MissingDependency, rebuild_error
from dask_ipy.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(60)

A, B, C = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1", "tcp://10.0.0.3:1"


def states(s):
    return {key: ts.state for key, ts in s.tasks.items()}


# Hints for the worker, and the run's id, which do not change what it is asked to do.
HINTS = ("duration", "want_data", "confirm", "clients", "run_id")


def take(s):
    """The outbox, with compute-task hints left out so that comparisons stay literal
    about what matters: which worker computes which key, from which inputs."""
    out = []
    for kind, ident, msg in s.take_messages():
        if msg.get("op") == "compute-task":
            msg = {k: v for k, v in msg.items() if k not in HINTS}
        out.append((kind, ident, msg))
    return out


def finished(s, wid, key, nbytes=8, type="int"):
    assert s.handle_worker_message(wid, {"op": "task-finished", "key": key,
                                         "nbytes": nbytes, "type": type,
                                         "duration": 0.1})
    return take(s)


def test_a_rescheduled_task_is_placed_again_and_its_thread_is_free(s):
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    [(_, wid, msg)] = take(s)
    assert msg["op"] == "compute-task"
    s.handle_worker_message(wid, {"op": "task-started", "key": "x"})
    s.handle_worker_message(wid, {"op": "reschedule", "key": "x"})
    ws = s.workers[wid]
    assert not ws.stale and not ws.executing    # no thread held by the old run
    out = take(s)
    assert ("worker", wid, {"op": "free-keys", "keys": ["x"]}) in out
    [(_, again, msg)] = [m for m in out if m[2]["op"] == "compute-task"]
    assert msg["key"] == "x"
    assert s.tasks["x"].state == "processing" and s.tasks["x"].suspicious == 0
    # A late word from a worker the task no longer runs on changes nothing.
    s.handle_worker_message("w2" if again == "w1" else "w1",
                            {"op": "reschedule", "key": "x"})
    assert take(s) == [] and s.tasks["x"].processing_on.id == again
    finished(s, again, "x")
    assert s.tasks["x"].state == "memory"


def erred(s, wid, key, text="boom"):
    s.handle_worker_message(wid, {"op": "task-erred", "key": key,
                                  "type": "ZeroDivisionError", "text": text,
                                  "exception": None, "traceback": None,
                                  "traceback_text": "Traceback: " + text})
    return take(s)


def compute(key, spec, priority, who_has=None, nbytes=None):
    msg = {"op": "compute-task", "key": key, "run_spec": spec, "priority": priority}
    if who_has is not None:
        msg["who_has"] = who_has
        msg["nbytes"] = nbytes
    return msg


@pytest.fixture
def s():
    """One client 'c' and workers 'w1' (A) and 'w2' (B), one thread each."""
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.add_worker("w2", B, nthreads=1)
    assert take(s) == [("worker", "w1", {"op": "registered"}),
                                 ("worker", "w2", {"op": "registered"})]
    return s


@pytest.fixture
def s1():
    """One client 'c' and a single one-thread worker 'w1' (A)."""
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    take(s)
    return s


CHAIN = {"x": ("spec-x", []), "y": ("spec-y", ["x"]), "z": ("spec-z", ["y"])}
CHAIN_ORDER = {"x": 0, "y": 1, "z": 2}


def test_chain_runs_step_by_step_and_frees_intermediates(s1):
    s = s1
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    assert take(s) == [("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]
    assert states(s) == {"x": "processing", "y": "waiting", "z": "waiting"}

    assert finished(s, "w1", "x") == [
        ("worker", "w1", compute("y", "spec-y", (0, 1, 1), {"x": [A]}, {"x": 8}))]
    assert states(s) == {"x": "memory", "y": "processing", "z": "waiting"}

    # y done: nobody needs x any more, and z starts where y is.
    assert finished(s, "w1", "y", nbytes=16) == [
        ("worker", "w1", {"op": "free-keys", "keys": ["x"]}),
        ("worker", "w1", compute("z", "spec-z", (0, 1, 2), {"y": [A]}, {"y": 16}))]

    assert finished(s, "w1", "z", type="builtins.int") == [
        ("client", "c", {"op": "key-in-memory", "key": "z", "type": "builtins.int",
                         "nbytes": 8}),
        ("worker", "w1", {"op": "free-keys", "keys": ["y"]})]
    # Intermediates stay as lineage (released) while the result is held.
    assert states(s) == {"x": "released", "y": "released", "z": "memory"}
    assert {ts.key for ts in s.workers["w1"].has_what} == {"z"}
    assert s.workers["w1"].processing == {}


def test_client_release_forgets_everything(s1):
    s = s1
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    for key in "xyz":
        finished(s, "w1", key)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["z"]})
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["z"]})]
    assert s.tasks == {}
    assert s.workers["w1"].has_what == set()
    assert s.workers["w1"].nbytes == 0
    assert s.clients["c"].wants_what == set()


def test_released_keys_go_to_each_worker_in_one_message_in_order(s):
    tasks = {f"k{i}": (f"spec-{i}", []) for i in range(4)}
    s.update_graph("c", tasks, list(tasks), {k: i for i, k in enumerate(tasks)})
    where = {msg["key"]: wid for _, wid, msg in take(s)}
    for key, wid in where.items():
        finished(s, wid, key)
    assert sorted(where.values()) == ["w1", "w1", "w2", "w2"]
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["k0", "k1", "k2"]})
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["k3"]})
    got = take(s)
    assert sorted(wid for _, wid, _ in got) == ["w1", "w2"]
    assert sorted(k for _, _, m in got for k in m["keys"]) == ["k0", "k1", "k2", "k3"]
    assert all(m["op"] == "free-keys" for _, _, m in got)
    # Another message to the worker in between: the keys after it go in a new one
    # (a key freed, then computed again there, stays freed before it is computed).
    more = {f"e{i}": (f"spec-e{i}", []) for i in range(4)}
    s.update_graph("c", more, list(more), {k: i for i, k in enumerate(more)})
    for _, wid, msg in take(s):
        finished(s, wid, msg["key"])
    x, y = sorted(ts.key for ts in s.workers["w1"].has_what)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": [x]})
    s.send_worker(s.workers["w1"], {"op": "ping"})
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": [y]})
    assert [m for _, wid, m in take(s) if wid == "w1"] == [
        {"op": "free-keys", "keys": [x]}, {"op": "ping"}, {"op": "free-keys", "keys": [y]}]


def test_keys_freed_after_the_outbox_was_emptied_in_place_go_in_a_new_message(s1):
    s = s1
    s.update_graph("c", {"c1": ("spec", []), "c2": ("spec", [])}, ["c1", "c2"],
                   {"c1": 0, "c2": 1})
    for _, _, msg in take(s):
        finished(s, "w1", msg["key"])
    take(s)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["c1"]})
    s.outbox.clear()
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["c2"]})
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["c2"]})]


def test_release_while_processing_tells_the_worker(s1):
    s = s1
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["z"]})
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    assert s.tasks == {}
    # A late result for a forgotten key is dropped on the worker.
    assert finished(s, "w1", "x") == [("worker", "w1", {"op": "free-keys",
                                                        "keys": ["x"]})]


def eight_tiny_tasks(s):
    """Submit eight root tasks; the keys handed out at once."""
    keys = [f"t{i}" for i in range(8)]
    s.update_graph("c", {k: (f"spec-{k}", []) for k in keys}, keys,
                   {k: i for i, k in enumerate(keys)})
    return [m[2]["key"] for m in take(s)]


@pytest.mark.parametrize("ending", ["task-dropped", "task-finished", "task-erred"])
@pytest.mark.parametrize("how", ["release", "restart"])
def test_a_task_forgotten_while_it_runs_holds_its_thread_until_it_is_over(s1, how,
                                                                           ending):
    """However the worker says the task is over (dropped; or finished or erred
    before the release reached it, a small result already sent straight to its
    client), the thread is free and the queued tasks go to it."""
    s = s1
    s.update_graph("c", {"long": ("spec-long", [])}, ["long"])
    take(s)
    s.handle_worker_message("w1", {"op": "task-started", "key": "long"})
    if how == "release":
        s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["long"]})
        assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["long"]})]
    else:
        s.handle_client_message("c", {"op": "restart", "request_id": 1})
        take(s)
    assert s.tasks == {} and list(s.workers["w1"].stale) == ["long"]
    (shown,) = s.snapshot(0.0)["workers"]
    assert (shown["executing"], shown["processing"]) == (1, 1)     # busy, not queued
    # Its only thread runs on: nothing is handed to it, not even for its queue.
    assert eight_tiny_tasks(s) == []
    # Word of a task it did not count changes nothing; word of that one frees it.
    s.handle_worker_message("w1", {"op": "task-dropped", "key": "t7"})
    assert take(s) == []
    s.handle_worker_message("w1", {"op": ending, "key": "long", "nbytes": 8})
    assert [m[2]["key"] for m in take(s) if m[2]["op"] == "compute-task"] == \
        ["t0", "t1", "t2"]
    assert s.workers["w1"].stale == {}


def four_on_w1(s):
    """x on w1, then y0..y3 (inputs: x) all on w1, the only worker; y0 has started."""
    graph = {"x": ("spec-x", []), **{f"y{i}": (f"spec-y{i}", ["x"]) for i in range(4)}}
    s.update_graph("c", graph, [f"y{i}" for i in range(4)],
                   {key: i for i, key in enumerate(graph)})
    take(s)
    finished(s, "w1", "x")
    s.handle_worker_message("w1", {"op": "task-started", "key": "y0"})
    assert all(s.tasks[f"y{i}"].processing_on.id == "w1" for i in range(4))


def test_a_new_worker_steals_from_the_back_of_a_busy_workers_queue(s1):
    s = s1
    four_on_w1(s)
    s.add_worker("w2", B, nthreads=1)
    assert take(s) == [("worker", "w2", {"op": "registered"}),
                       ("worker", "w1", {"op": "steal-request", "key": "y3"})]
    # Given up: it runs on the thief.  There, once done, the thief asks for more.
    s.handle_worker_message("w1", {"op": "steal-response", "key": "y3",
                                   "released": True, "state": "ready"})
    assert take(s) == [("worker", "w2", compute("y3", "spec-y3", (0, 1, 4), {"x": [A]},
                                                {"x": 8}))]
    out = finished(s, "w2", "y3")
    assert out[-1] == ("worker", "w1", {"op": "steal-request", "key": "y2"})
    # Refused, because it has started: known to run there, it is never asked again,
    # and the next in line is.
    s.handle_worker_message("w1", {"op": "steal-response", "key": "y2",
                                   "released": False, "state": "executing"})
    assert take(s) == [("worker", "w1", {"op": "steal-request", "key": "y1"})]
    assert s.tasks["y2"] in s.workers["w1"].executing
    # The victim finished it before the request came: the late answer changes nothing.
    finished(s, "w1", "y1")
    s.handle_worker_message("w1", {"op": "steal-response", "key": "y1",
                                   "released": False, "state": "memory"})
    assert take(s) == [] and s.steals == {} and s.stolen == 1


def test_an_answer_about_a_task_released_meanwhile_changes_nothing(s1):
    s = s1
    four_on_w1(s)
    s.add_worker("w2", B, nthreads=1)
    assert take(s)[1:] == [("worker", "w1", {"op": "steal-request", "key": "y3"})]
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["y3"]})
    # The thief, with nothing coming, asks for the next one.
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["y3"]}),
                       ("worker", "w1", {"op": "steal-request", "key": "y2"})]
    assert list(s.steals) == ["y2"]
    s.handle_worker_message("w1", {"op": "steal-response", "key": "y3",
                                   "released": True, "state": "ready"})
    assert take(s) == [] and "y3" not in s.tasks and list(s.steals) == ["y2"]


def test_no_steal_of_tiny_tasks_of_restricted_ones_or_for_a_busy_worker(s1):
    s = s1
    four_on_w1(s)
    s.tasks["y3"].restrictions = {A}
    w1 = s.workers["w1"]
    for ts in w1.processing:
        w1.processing[ts] = 0.001 if ts.key != "y2" else 0.5    # expected seconds
    w1.occupancy = sum(w1.processing.values())
    s.add_worker("w2", B, nthreads=1)
    assert take(s)[1:] == [("worker", "w1", {"op": "steal-request", "key": "y2"})]
    s.remove_worker("w2")                   # the thief left: the task goes where it can
    s.handle_worker_message("w1", {"op": "steal-response", "key": "y2",
                                   "released": True, "state": "ready"})
    assert [m["key"] for _, _, m in take(s) if m["op"] == "compute-task"] == ["y2"]
    assert s.tasks["y2"].processing_on.id == "w1" and s.steals == {} and s.stolen == 0


def test_key_in_memory_goes_to_every_client_that_wants_it(s1):
    s = s1
    s.add_client("d")
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    s.update_graph("d", {"x": ("spec-x", [])}, ["x"])
    assert take(s) == [("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]
    out = finished(s, "w1", "x")
    assert sorted(out, key=repr) == [
        ("client", "c", {"op": "key-in-memory", "key": "x", "type": "int", "nbytes": 8}),
        ("client", "d", {"op": "key-in-memory", "key": "x", "type": "int", "nbytes": 8})]
    # One client letting go keeps the data for the other.
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    assert take(s) == []
    assert states(s) == {"x": "memory"}
    s.remove_client("d")
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    assert s.tasks == {}


def test_a_late_client_gets_a_key_already_in_memory(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    take(s)
    finished(s, "w1", "x")
    s.add_client("d")
    s.update_graph("d", {"x": ("spec-x", [])}, ["x"])
    assert take(s) == [("client", "d", {"op": "key-in-memory", "key": "x",
                                                  "type": "int", "nbytes": 8})]


def test_error_propagates_to_dependents_and_reaches_the_client(s1):
    s = s1
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    out = erred(s, "w1", "x")
    assert out == [("client", "c", {
        "op": "task-erred", "key": "z", "type": "ZeroDivisionError", "text": "boom",
        "exception": None, "traceback": None, "traceback_text": "Traceback: boom",
        "chain": None, "origin": "x", "worker": A})]
    assert states(s) == {"x": "erred", "y": "erred", "z": "erred"}
    assert s.workers["w1"].processing == {}
    assert [e["key"] for e in s.errors] == ["x"]
    # A new client asking for z hears the error at once.
    s.add_client("d")
    s.update_graph("d", {}, ["z"])
    assert take(s)[0][:2] == ("client", "d")
    s.remove_client("c")
    s.remove_client("d")
    assert s.tasks == {}


def test_error_does_not_stop_independent_work(s):
    s.update_graph("c", {"a": ("spec-a", []), "b": ("spec-b", []),
                         "ab": ("spec-ab", ["a"])}, ["ab", "b"],
                   {"a": 0, "ab": 1, "b": 2})
    out = take(s)
    assert sorted(m[2]["key"] for m in out) == ["a", "b"]
    where = {m[2]["key"]: m[1] for m in out}
    erred(s, where["a"], "a")
    out = finished(s, where["b"], "b")
    assert ("client", "c", {"op": "key-in-memory", "key": "b", "type": "int",
                            "nbytes": 8}) in out
    assert states(s) == {"a": "erred", "ab": "erred", "b": "memory"}


def test_retries_recompute_then_err(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"], retries=1)
    assert take(s) == [("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]
    s.handle_worker_message("w1", {"op": "task-started", "key": "x"})
    # The failed attempt is released (the worker has already dropped it, and its
    # thread is free), then the task is sent again.
    assert erred(s, "w1", "x") == [("worker", "w1", {"op": "free-keys", "keys": ["x"]}),
                                   ("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]
    assert states(s) == {"x": "processing"} and s.workers["w1"].stale == {}
    out = erred(s, "w1", "x", text="again")
    assert [(kind, msg["op"], msg["text"]) for kind, _, msg in out] == [
        ("client", "task-erred", "again")]
    assert states(s) == {"x": "erred"}


def test_killed_worker_after_four_deaths_while_executing(s1):
    """allowed_failures (3) deaths are retried; the fourth errs."""
    s = s1
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    for i in range(4):
        (wid,) = s.workers
        assert take(s)[-1] == ("worker", wid, compute("x", "spec-x",
                                                                (0, 1, 0)))
        s.handle_worker_message(wid, {"op": "task-started", "key": "x"})
        s.remove_worker(wid, reason="segfault")
        if i < 3:
            assert states(s) == {"x": "no-worker"}
            assert take(s) == []
        s.add_worker(f"v{i}", f"tcp://10.0.1.{i}:1")
    out = take(s)
    assert out[0] == ("client", "c", {
        "op": "task-erred", "key": "x", "type": "KilledWorker",
        "text": "Attempted to run task 'x' on 4 different workers, but all those "
                "workers died while running it. The last worker that attempted to run "
                "the task was tcp://10.0.1.2:1: segfault.",
        "args": ["x", "tcp://10.0.1.2:1", 3, "segfault"]})
    assert states(s) == {"x": "erred"}
    exc, _ = rebuild_error(out[0][2])
    assert type(exc) is KilledWorker and str(exc) == out[0][2]["text"]
    assert (exc.task, exc.last_worker.address, exc.allowed_failures, exc.reason) == \
        ("x", "tcp://10.0.1.2:1", 3, "segfault")


def test_queued_tasks_do_not_count_as_suspects(s1):
    """Only the executing task is blamed when a worker dies."""
    s = s1
    s.update_graph("c", {"bad": ("spec-bad", []), "ok": ("spec-ok", [])},
                   ["bad", "ok"], {"bad": 0, "ok": 1})
    take(s)
    for i in range(4):
        (wid,) = s.workers
        s.handle_worker_message(wid, {"op": "task-started", "key": "bad"})
        s.remove_worker(wid, reason="segfault")
        s.add_worker(f"v{i}", f"tcp://10.0.1.{i}:1")
    assert s.tasks["bad"].suspicious == 4
    assert s.tasks["ok"].suspicious == 0
    assert states(s) == {"bad": "erred", "ok": "processing"}


def test_expected_removal_blames_nobody(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    s.handle_worker_message("w1", {"op": "task-started", "key": "x"})
    s.remove_worker("w1", expected=True)
    assert s.tasks["x"].suspicious == 0
    assert states(s) == {"x": "no-worker"}


def test_lost_worker_data_is_recomputed_from_lineage(s):
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", []),
                         "z": ("spec-z", ["x", "y"])}, ["z"],
                   {"x": 0, "y": 1, "z": 2})
    assert take(s) == [("worker", "w1", compute("x", "spec-x", (0, 1, 0))),
                                 ("worker", "w2", compute("y", "spec-y", (0, 1, 1)))]
    assert finished(s, "w1", "x") == []
    s.remove_worker("w1", reason="gone")
    assert take(s) == [("worker", "w2", {"op": "worker-removed",
                                                   "address": A}),
                                 ("worker", "w2", compute("x", "spec-x", (0, 1, 0)))]
    assert states(s) == {"x": "processing", "y": "processing", "z": "waiting"}
    finished(s, "w2", "x")
    assert finished(s, "w2", "y") == [("worker", "w2", compute(
        "z", "spec-z", (0, 1, 2), {"x": [B], "y": [B]}, {"x": 8, "y": 8}))]
    out = finished(s, "w2", "z")
    assert out[0] == ("client", "c", {"op": "key-in-memory", "key": "z",
                                      "type": "int", "nbytes": 8})


def test_lost_result_is_recomputed_for_its_client(s):
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", ["x"])}, ["y"],
                   {"x": 0, "y": 1})
    take(s)
    finished(s, "w1", "x")
    finished(s, "w1", "y")
    s.remove_worker("w1")
    out = take(s)
    assert out[-1] == ("worker", "w2", compute("x", "spec-x", (0, 1, 0)))
    assert states(s) == {"x": "processing", "y": "waiting"}
    finished(s, "w2", "x")
    assert finished(s, "w2", "y")[0] == ("client", "c", {
        "op": "key-in-memory", "key": "y", "type": "int", "nbytes": 8})


def test_dependent_on_a_lost_key_is_rescheduled(s):
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", ["x"])}, ["y"],
                   {"x": 0, "y": 1}, restrictions={"y": [B]})
    take(s)
    assert finished(s, "w1", "x") == [("worker", "w2", compute(
        "y", "spec-y", (0, 1, 1), {"x": [A]}, {"x": 8}))]
    # w2 could not fetch x: the only copy is gone, so x is computed again.
    s.handle_worker_message("w2", {"op": "missing-data", "key": "y", "dep": "x",
                                   "holder": A})
    assert take(s) == [("worker", "w1", compute("x", "spec-x", (0, 1, 0))),
                                 ("worker", "w2", {"op": "free-keys", "keys": ["y"]})]
    assert states(s) == {"x": "processing", "y": "waiting"}


def unmovable(s, wid, key, dep):
    s.handle_worker_message(wid, {"op": "input-unmovable", "key": key, "dep": dep,
                                  "type": "TypeError",
                                  "text": f"result of {dep!r} could not be serialized"})
    return take(s)


def test_a_task_whose_input_cannot_be_sent_runs_where_the_input_is(s):
    # x (a generator, say) is on w1, busy with a long task; y went to the idle w2,
    # whose fetch x's holder could not pickle: y runs on w1, as does every later task
    # needing x, and no steal moves one.
    s.update_graph("c", {"x": ("spec-x", []), "long": ("spec-long", [])},
                   ["x", "long"], {"x": 0, "long": 1}, restrictions={"x": [A],
                                                                 "long": [A]})
    take(s)
    finished(s, "w1", "x")
    s.handle_worker_message("w1", {"op": "task-started", "key": "long"})
    s.update_graph("c", {"y": ("spec-y", ["x"])}, ["y"], {"y": 2})
    assert take(s) == [("worker", "w2", compute("y", "spec-y", (0, 2, 2), {"x": [A]},
                                                {"x": 8}))]
    assert unmovable(s, "w2", "y", "x") == [("worker", "w1", compute(
        "y", "spec-y", (0, 2, 2), {"x": [A]}, {"x": 8}))]
    assert s.unmovable == {"x": "result of 'x' could not be serialized"}
    graph = {f"z{i}": (f"spec-z{i}", ["x"]) for i in range(4)}
    s.update_graph("c", graph, list(graph), {k: 3 + i for i, k in enumerate(graph)})
    assert {wid for _, wid, msg in take(s)} == {"w1"}
    s.fill_workers(s.workers["w2"])             # w2 is idle: still nothing moves
    assert take(s) == [] and s.steals == {}
    # Once x is released, its mark goes with it.
    s.handle_client_message("c", {"op": "client-releases-keys",
                                  "keys": ["x", "long", "y", *graph]})
    assert s.unmovable == {} and s.tasks == {}


def test_a_task_that_may_not_run_where_its_unmovable_input_is_errs(s):
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", ["x"])}, ["y"],
                   {"x": 0, "y": 1}, restrictions={"x": [A], "y": [B]})
    take(s)
    finished(s, "w1", "x")
    out = unmovable(s, "w2", "y", "x")
    assert out[0] == ("client", "c", {
        "op": "task-erred", "key": "y", "type": "TypeError",
        "text": "result of 'x' could not be serialized"})
    assert states(s) == {"x": "released", "y": "erred"} and s.unmovable == {}
    # A late word, about a run since ended, changes nothing.
    assert unmovable(s, "w2", "y", "x") == []

def test_missing_data_with_other_replicas_sends_who_has(s):
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", ["x"])}, ["y"],
                   {"x": 0, "y": 1}, restrictions={"x": [A], "y": [C]})
    s.add_worker("w3", C)
    take(s)
    finished(s, "w1", "x")
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [("x", 8, "int")]})
    take(s)
    s.handle_worker_message("w3", {"op": "missing-data", "key": "y", "dep": "x",
                                   "holder": A})
    assert take(s) == [("worker", "w3", {"op": "who-has",
                                                   "who_has": {"x": [B]}})]
    assert {ws.address for ws in s.tasks["x"].who_has} == {B}


def test_queued_root_tasks_handed_out_as_workers_free_up(s1):
    s = s1
    keys = [f"t{i}" for i in range(8)]
    s.update_graph("c", {k: (f"spec-{k}", []) for k in keys}, keys,
                   {k: i for i, k in enumerate(keys)})
    # One thread plus a small queue beyond it (saturation 2): three at a time, in
    # priority order.
    assert [m[2]["key"] for m in take(s)] == ["t0", "t1", "t2"]
    assert [states(s)[k] for k in keys] == ["processing"] * 3 + ["queued"] * 5
    out = finished(s, "w1", "t0")
    assert out == [("client", "c", {"op": "key-in-memory", "key": "t0", "type": "int",
                                    "nbytes": 8}),
                   ("worker", "w1", compute("t3", "spec-t3", (0, 1, 3)))]
    # A new worker takes from the queue at once.
    s.add_worker("w2", B, nthreads=1)
    out = take(s)
    assert out == [("worker", "w2", {"op": "registered"}),
                   ("worker", "w2", compute("t4", "spec-t4", (0, 1, 4))),
                   ("worker", "w2", compute("t5", "spec-t5", (0, 1, 5))),
                   ("worker", "w2", compute("t6", "spec-t6", (0, 1, 6)))]


@pytest.mark.parametrize("nbytes, held", [(8 << 10, 21), (2 << 20, 5), (3 << 20, 3),
                                          (8_000_000, 2), (8 << 20, 2), (64 << 20, 2)])
def test_root_tasks_queue_at_most_queue_bytes_of_results(s1, nbytes, held):
    """Quick root tasks (1 ms each) queue about `queue_seconds` (20 ms) of work beyond
    the thread, so they travel in batches, when their results are small (8 kB).  The
    worker runs queued roots ahead of the tasks that consume their results, and holds
    those: the queue beyond the thread holds at most `queue_bytes` (8 MiB) of results
    (by the group's mean, whole ones: two 3 MiB results, one 8 MB block), and at least
    one task."""
    s = s1
    keys = [f"t-{i}" for i in range(40)]          # one group: "t"
    s.update_graph("c", {k: ("spec", []) for k in keys}, keys,
                   {k: i for i, k in enumerate(keys)})
    assert len(take(s)) == 3               # no estimate yet: saturation (2) beyond
    s.handle_worker_message("w1", {"op": "task-finished", "key": "t-0",
                                   "nbytes": nbytes, "type": "ndarray",
                                   "duration": 0.001})
    take(s)
    assert s.tasks["t-0"].group.nbytes == nbytes
    # Too many already (3 > 2) hand out none until some finish.
    assert len(s.workers["w1"].processing) == max(held, 2)
    for k in ("t-1", "t-2"):
        s.handle_worker_message("w1", {"op": "task-finished", "key": k,
                                       "nbytes": nbytes, "type": "ndarray",
                                       "duration": 0.001})
    take(s)
    assert len(s.workers["w1"].processing) == held
    s.validate()


def test_user_priority_jumps_the_queue(s1):
    s = s1
    low = [f"low{i}" for i in range(5)]
    s.update_graph("c", {k: ("spec", []) for k in low}, low,
                   {k: i for i, k in enumerate(low)})
    take(s)
    s.update_graph("c", {"urgent": ("spec", [])}, ["urgent"], user_priority=10)
    finished(s, "w1", "low0")
    assert s.tasks["urgent"].state == "processing"
    assert s.tasks["low3"].state == "queued"


def test_data_locality_sends_the_task_to_its_big_input(s):
    s.update_graph("c", {"big": ("spec-big", []), "small": ("spec-small", [])},
                   ["big", "small"], restrictions={"big": [B], "small": [A]})
    take(s)
    finished(s, "w2", "big", nbytes=100_000_000)
    finished(s, "w1", "small", nbytes=10)
    s.update_graph("c", {"f": ("spec-f", ["big", "small"])}, ["f"])
    assert take(s) == [("worker", "w2", compute(
        "f", "spec-f", (0, 2, 0), {"big": [B], "small": [A]},
        {"big": 100_000_000, "small": 10}))]


def test_restrictions_to_an_unknown_worker_wait_for_it(s):
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"], restrictions={"x": [C]})
    assert take(s) == []
    assert states(s) == {"x": "no-worker"}
    s.add_worker("w3", C)
    assert take(s) == [("worker", "w3", {"op": "registered"}),
                                 ("worker", "w3", compute("x", "spec-x", (0, 1, 0)))]


def test_graph_before_any_worker_runs_when_one_arrives():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    assert take(s) == []
    assert states(s) == {"x": "no-worker", "y": "waiting", "z": "waiting"}
    s.add_worker("w1", A)
    assert take(s) == [("worker", "w1", {"op": "registered"}),
                                 ("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]


def test_missing_dependency_errs_the_task_with_a_clear_message(s1):
    s = s1
    s.update_graph("c", {"y": ("spec-y", ["nowhere"])}, ["y"])
    ((kind, cid, msg),) = take(s)
    assert (kind, cid, msg["op"], msg["type"]) == ("client", "c", "task-erred",
                                                   "MissingDependency")
    assert "'nowhere'" in msg["text"] and "'y'" in msg["text"]
    # The client rebuilds it as the exception it is, keys and all.
    exc, _ = rebuild_error(msg)
    assert type(exc) is MissingDependency and isinstance(exc, KeyError)
    assert (exc.key, exc.missing) == ("y", ("nowhere",))
    assert str(exc) == "Task 'y' depends on missing key(s): 'nowhere'"


def test_errors_of_the_scheduler_are_rebuilt_even_from_text_alone():
    exc, _ = rebuild_error({"type": "MissingDependency", "text": "y needs x"})
    assert type(exc) is MissingDependency and str(exc) == "y needs x"
    exc, _ = rebuild_error({"type": "CycleError", "text": "Cycle: 'a' -> 'b'"})
    assert type(exc) is CycleError and str(exc) == "Cycle: 'a' -> 'b'"
    exc, _ = rebuild_error({"type": "KilledWorker", "text": "died"})
    assert type(exc) is KilledWorker and str(exc) == "died"


def test_a_graph_may_depend_on_keys_the_scheduler_holds(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    take(s)
    finished(s, "w1", "x")
    s.update_graph("c", {"y": ("spec-y", ["x"])}, ["y"])
    assert take(s) == [("worker", "w1", compute(
        "y", "spec-y", (0, 2, 0), {"x": [A]}, {"x": 8}))]


def test_cancel_releases_and_tells_the_client(s1):
    s = s1
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    s.handle_client_message("c", {"op": "cancel", "keys": ["z"], "request_id": 7})
    out = take(s)
    # The canceller is answered once done; it cancelled its own Futures already.
    assert [m for kind, _, m in out if kind == "client"] == [
        {"op": "reply", "request_id": 7, "result": None}]
    assert ("worker", "w1", {"op": "free-keys", "keys": ["x"]}) in out
    assert s.tasks == {}


def test_scatter_then_gather_bookkeeping(s):
    s.handle_client_message("c", {"op": "scatter", "request_id": 7,
                                  "data": {"a": "blob-a", "b": "blob-b"},
                                  "broadcast": False, "workers": None})
    out = take(s)
    # Spread over the two workers, one key each.
    assert sorted((m[1], m[2]["op"], tuple(m[2]["data"])) for m in out) == [
        ("w1", "put-data", ("a",)), ("w2", "put-data", ("b",))]
    s.handle_worker_message("w1", {"op": "add-keys", "keys": [("a", 100, "int")]})
    assert take(s) == [("client", "c", {"op": "scattered", "request_id": 7,
                                                  "key": "a"})]
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [("b", 200, "int")]})
    assert take(s) == [("client", "c", {"op": "scattered", "request_id": 7,
                                                  "key": "b"})]
    assert states(s) == {"a": "memory", "b": "memory"}
    assert s.workers["w1"].nbytes == 100 and s.workers["w2"].nbytes == 200

    s.handle_client_message("c", {"op": "gather", "request_id": 8, "keys": ["a", "b",
                                                                           "nope"]})
    out = take(s)
    requests = {m[1]: m[2] for m in out}
    assert requests["w1"]["keys"] == ["a"] and requests["w2"]["keys"] == ["b"]
    gid = requests["w1"]["request_id"]
    s.handle_worker_message("w1", {"op": "data", "request_id": gid,
                                   "data": {"a": "blob-a"}, "missing": [],
                                   "errors": {}})
    assert take(s) == []          # still waiting for w2
    s.handle_worker_message("w2", {"op": "data", "request_id": gid,
                                   "data": {"b": "blob-b"}, "missing": [],
                                   "errors": {}})
    assert take(s) == [("client", "c", {
        "op": "gather-result", "request_id": 8, "data": {"a": "blob-a", "b": "blob-b"},
        "missing": ["nope"], "errors": {}, "types": {"a": "int", "b": "int"}})]
    assert s.gathers == {}


def test_a_gather_keeps_its_answer_under_the_clients_cap(s):
    from dask_ipy.protocol import Serialized
    from dask_ipy.scheduler.state import GATHER_MARGIN

    sizes = {"a": 50_000, "b": 30_000, "c": 10_000}
    s.handle_client_message("c", {"op": "scatter", "request_id": 1,
                                  "data": dict.fromkeys(sizes, "blob"),
                                  "broadcast": False, "workers": None})
    for _, wid, put in take(s):
        s.handle_worker_message(wid, {"op": "add-keys", "keys": [
            (k, sizes[k], "bytes") for k in put["data"]]})
    take(s)
    s.handle_client_message("c", {"op": "gather", "request_id": 2, "keys": list(sizes),
                                  "max_bytes": GATHER_MARGIN + 61_000})
    for _, wid, request in take(s):
        s.handle_worker_message(wid, {
            "op": "data", "request_id": request["request_id"], "missing": [], "errors": {},
            "data": {k: Serialized([b"." * sizes[k]]) for k in request["keys"]}})
    [(_, _, reply)] = [m for m in take(s) if m[2]["op"] == "gather-result"]
    # Two of the three fit; the third is an error naming it, not a refused message.
    [too_big] = reply["errors"]
    assert set(reply["data"]) == set(sizes) - {too_big}
    assert sum(sizes[k] for k in reply["data"]) <= 61_000
    assert reply["errors"][too_big]["type"] == "MessageTooLarge"
    assert repr(too_big) in reply["errors"][too_big]["text"]


def test_broadcast_scatter_puts_data_on_every_worker(s):
    s.handle_client_message("c", {"op": "scatter", "request_id": 1,
                                  "data": {"a": "blob"}, "broadcast": True})
    out = take(s)
    assert sorted(m[1] for m in out) == ["w1", "w2"]
    s.handle_worker_message("w1", {"op": "add-keys", "keys": [("a", 4, "int")]})
    assert take(s) == []          # until every copy is in place
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [("a", 4, "int")]})
    assert take(s) == [("client", "c", {"op": "scattered", "request_id": 1,
                                                  "key": "a"})]
    assert {ws.address for ws in s.tasks["a"].who_has} == {A, B}


def test_scatters_of_one_key_at_once_are_each_told_how_it_ended(s):
    """The second (another client's, or this one's) waits for the first: it is not
    put on workers twice, and neither caller is forgotten."""
    s.add_client("d")
    s.handle_client_message("c", {"op": "scatter", "request_id": 1,
                                  "data": {"a": "blob"}, "workers": [A]})
    assert [m[1] for m in take(s)] == ["w1"]
    s.handle_client_message("c", {"op": "scatter", "request_id": 2,
                                  "data": {"a": "blob"}, "workers": [A]})
    s.handle_client_message("d", {"op": "scatter", "request_id": 5,
                                  "data": {"a": "blob"}, "workers": [A]})
    assert take(s) == []
    s.handle_worker_message("w1", {"op": "add-keys", "keys": [("a", 4, "int")]})
    assert sorted((m[1], m[2]["request_id"]) for m in take(s)
                  if m[2] == {"op": "scattered", "key": "a",
                              "request_id": m[2]["request_id"]}) == [
        ("c", 1), ("c", 2), ("d", 5)]
    assert s.scatters == {}
    # Once the first fails, so do those waiting for it.
    s.handle_client_message("c", {"op": "scatter", "request_id": 3,
                                  "data": {"b": "blob"}, "workers": [A]})
    s.handle_client_message("d", {"op": "scatter", "request_id": 6,
                                  "data": {"b": "blob"}, "workers": [A]})
    take(s)
    s.remove_worker("w1")
    failed = [m[1:] for m in take(s) if m[2]["op"] == "scatter-failed"]
    assert sorted((cid, m["request_id"]) for cid, m in failed) == [("c", 3), ("d", 6)]


def test_a_scatter_to_no_workers_fails(s):
    """``workers=[]`` names none (None: any), as with dask.distributed."""
    s.handle_client_message("c", {"op": "scatter", "request_id": 1,
                                  "data": {"a": "blob"}, "workers": []})
    assert take(s) == [("client", "c", {
        "op": "scatter-failed", "request_id": 1,
        "text": "no workers available to hold scattered data"})]


def test_gather_from_a_dying_worker_uses_another_replica(s):
    s.handle_client_message("c", {"op": "scatter", "request_id": 1,
                                  "data": {"a": "blob"}, "broadcast": True})
    s.handle_worker_message("w1", {"op": "add-keys", "keys": [("a", 4, "int")]})
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [("a", 4, "int")]})
    take(s)
    s.handle_client_message("c", {"op": "gather", "request_id": 2, "keys": ["a"]})
    ((_, first, req),) = take(s)
    s.remove_worker(first)
    other = {"w1": "w2", "w2": "w1"}[first]
    out = take(s)
    assert out[-1] == ("worker", other, {"op": "send-data", "keys": ["a"],
                                         "request_id": req["request_id"]})


def test_scattered_data_lost_with_its_worker_is_an_error(s):
    s.handle_client_message("c", {"op": "scatter", "request_id": 1,
                                  "data": {"a": "blob"}, "workers": [A]})
    s.handle_worker_message("w1", {"op": "add-keys", "keys": [("a", 4, "int")]})
    take(s)
    s.remove_worker("w1")
    out = take(s)
    assert out[-1][:2] == ("client", "c")
    assert out[-1][2]["op"] == "task-erred" and out[-1][2]["type"] == "KeyError"
    assert "scattered" in out[-1][2]["text"]


def test_datasets_keep_keys_alive_until_unpublished(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    take(s)
    finished(s, "w1", "x")
    s.handle_client_message("c", {"op": "publish-dataset", "request_id": 1,
                                  "name": "ds", "data": "blob", "keys": ["x"]})
    assert take(s) == [("client", "c", {"op": "reply", "request_id": 1,
                                                  "result": True})]
    s.remove_client("c")
    assert states(s) == {"x": "memory"}
    s.add_client("d")
    s.handle_client_message("d", {"op": "info", "what": "list-datasets",
                                  "request_id": 2})
    assert take(s) == [("client", "d", {"op": "reply", "request_id": 2,
                                                  "result": ["ds"]})]
    s.handle_client_message("d", {"op": "unpublish-dataset", "request_id": 3,
                                  "name": "ds"})
    assert take(s) == [
        ("worker", "w1", {"op": "free-keys", "keys": ["x"]}),
        ("client", "d", {"op": "reply", "request_id": 3, "result": True})]
    assert s.tasks == {}


def test_collections_are_shared_between_clients(s1):
    s = s1
    s.add_client("d")
    s.handle_client_message("c", {"op": "set-collection", "request_id": 1,
                                  "name": "bag", "data": "blob"})
    s.handle_client_message("d", {"op": "info", "what": "get-collection",
                                  "name": "bag", "request_id": 2})
    assert take(s) == [
        ("client", "c", {"op": "reply", "request_id": 1, "result": True}),
        ("client", "d", {"op": "reply", "request_id": 2, "result": "blob"})]


def test_run_collects_one_result_per_worker(s):
    s.handle_client_message("c", {"op": "run", "request_id": 5, "function": "fn",
                                  "workers": None})
    out = take(s)
    assert sorted(m[1] for m in out) == ["w1", "w2"]
    rid = out[0][2]["request_id"]
    s.handle_worker_message("w1", {"op": "run-result", "request_id": rid,
                                   "status": "OK", "result": "r1"})
    s.remove_worker("w2", reason="crash")
    out = take(s)
    assert out[-1] == ("client", "c", {"op": "run-result", "request_id": 5, "results": {
        A: {"status": "OK", "result": "r1"},
        B: {"status": "error", "text": "worker died: crash"}}})


def test_heartbeats_remove_silent_workers(s):
    s.handle_worker_message("w1", {"op": "heartbeat", "metrics": {"memory": 1}},
                            now=100.0)
    s.check_heartbeats(now=105.0, timeout=10.0)
    assert set(s.workers) == {"w1"}
    assert s.workers["w1"].metrics == {"memory": 1}


def test_unknown_worker_messages_are_refused(s):
    assert s.handle_worker_message("ghost", {"op": "task-finished", "key": "x"}) is False


def test_snapshot_counts_tasks_by_state_and_group(s1):
    s = s1
    keys = [f"inc-{i}" for i in range(5)]
    s.update_graph("c", {k: ("spec", []) for k in keys}, keys,
                   {k: i for i, k in enumerate(keys)})
    finished(s, "w1", "inc-0")
    snap = s.snapshot(now=0.0)
    assert snap["counts"]["memory"] == 1
    assert snap["counts"]["processing"] == 3
    assert snap["counts"]["queued"] == 1
    (group,) = snap["groups"]
    assert (group["name"], group["total"], group["done"]) == ("inc", 5, 1)


# ---------------------------------------------------------------- large graphs

def run_to_completion(s, wanted, validate_every=0):
    """Play the workers: finish every task they are sent until the client has every
    wanted key.  Returns the number of compute-task messages seen."""
    remaining = set(wanted)
    computed = 0
    for batch in itertools.count(1):
        if not remaining:
            break
        out = take(s)
        assert out, f"stuck with {len(remaining)} keys to go"
        for kind, ident, msg in out:
            if kind == "client":
                assert msg["op"] == "key-in-memory", msg
                remaining.discard(msg["key"])
            elif msg["op"] == "compute-task":
                computed += 1
                s.handle_worker_message(ident, {"op": "task-finished",
                                                "key": msg["key"], "nbytes": 8,
                                                "type": "int", "duration": 0.001})
        if validate_every and batch % validate_every == 0:
            s.validate()
    return computed


def tree_graph(n):
    """n // 2 roots, one map task each, then a binary tree of sums: about 1.5 n tasks
    for n inputs; returns (tasks, final key)."""
    tasks = {}
    layer = []
    for i in range(n // 2):
        tasks[("load", i)] = ("spec", [])
        tasks[("inc", i)] = ("spec", [("load", i)])
        layer.append(("inc", i))
    level = 0
    while len(layer) > 1:
        nxt = []
        for j in range(0, len(layer), 2):
            key = ("sum", level, j // 2)
            tasks[key] = ("spec", layer[j:j + 2])
            nxt.append(key)
        layer = nxt
        level += 1
    return tasks, layer[0]


def many_workers(validate):
    s = SchedulerState(validate=validate)
    s.add_client("c")
    for i in range(4):
        s.add_worker(f"w{i}", f"tcp://10.0.0.{i}:1", nthreads=2)
    take(s)
    return s


def test_10_000_tasks_complete_with_validation():
    # validate() walks every task; running it after each of the ~20,000 transitions
    # calls would be quadratic, so it runs after every tenth simulated batch of
    # messages (about 40 times here) and at the end.
    s = many_workers(validate=False)
    tasks, final = tree_graph(6_700)
    assert len(tasks) >= 10_000
    s.update_graph("c", tasks, [final], {k: i for i, k in enumerate(tasks)})
    s.validate()
    assert run_to_completion(s, [final], validate_every=10) == len(tasks)
    s.validate()
    assert states(s)[final] == "memory"
    assert sum(1 for st in states(s).values() if st == "memory") == 1
    s.remove_client("c")
    s.validate()
    assert s.tasks == {}


def test_100_000_tasks_complete():
    s = many_workers(validate=False)
    tasks, final = tree_graph(66_700)
    assert len(tasks) >= 100_000
    s.update_graph("c", tasks, [final], {k: i for i, k in enumerate(tasks)})
    assert run_to_completion(s, [final]) == len(tasks)
    s.validate()
    assert states(s)[final] == "memory"
    # Only the final result is held; every intermediate was freed.
    assert sum(len(ws.has_what) for ws in s.workers.values()) == 1


def test_20_000_independent_tasks_queue_without_flooding_workers():
    s = many_workers(validate=False)
    keys = [("map", i) for i in range(20_000)]
    s.update_graph("c", {k: ("spec", []) for k in keys}, keys,
                   {k: i for i, k in enumerate(keys)})
    out = take(s)
    # 4 workers x (2 threads + 4 queued beyond them)
    assert len(out) == 4 * 6
    assert sum(1 for ts in s.tasks.values() if ts.state == "queued") == 20_000 - 24
    for kind, ident, msg in out:
        s.handle_worker_message(ident, {"op": "task-finished", "key": msg["key"],
                                        "nbytes": 8, "type": "int"})
    assert run_to_completion(s, keys[24:]) == 20_000 - 24
    s.validate()


def test_one_item_sets_are_tuples_then_sets_and_empty_out():
    from dask_ipy.scheduler.state import EMPTY, TaskState, _add, _discard

    ts = TaskState("x", "spec-x", None)
    assert ts.waiters is EMPTY and not ts.waiters
    _add(ts, "waiters", "a")
    one = ts.waiters
    assert one == ("a",)
    assert one and len(one) == 1 and list(one) == ["a"] and "a" in one and "b" not in one
    _add(ts, "waiters", "a")                     # already there: stays the same
    assert ts.waiters is one
    _discard(ts, "waiters", "b")
    assert ts.waiters is one
    _discard(ts, "waiters", "a")                 # emptied: back to the shared EMPTY
    assert ts.waiters is EMPTY
    _discard(ts, "waiters", "a")
    assert ts.waiters is EMPTY
    _add(ts, "waiters", "b")
    _add(ts, "waiters", "c")                     # a second item: a real set
    assert type(ts.waiters) is set and ts.waiters == {"b", "c"}
    _add(ts, "waiters", "d")
    _discard(ts, "waiters", "b")
    assert ts.waiters == {"c", "d"}
    # Items are compared like a set's: by equality, not only identity.
    _add(ts, "who_wants", ("dataset", "d"))
    assert ("dataset", "d") in ts.who_wants
    _add(ts, "who_wants", ("dataset", "d"))
    assert ts.who_wants == (("dataset", "d"),)
    _discard(ts, "who_wants", ("dataset", "d"))
    assert ts.who_wants is EMPTY
    # A longer tuple (a task's dependencies): what is left, once one goes.
    ts.waiting_on = ("p", "q", "r", "p")
    _add(ts, "waiting_on", "q")
    assert ts.waiting_on == ("p", "q", "r", "p")
    _discard(ts, "waiting_on", "p")             # every copy
    assert type(ts.waiting_on) is set and ts.waiting_on == {"q", "r"}
    ts.waiting_on = ("p", "q")
    _discard(ts, "waiting_on", "p")
    assert ts.waiting_on == ("q",)
    _discard(ts, "waiting_on", "q")
    assert ts.waiting_on is EMPTY
    ts.waiting_on = ("p", "q")
    _add(ts, "waiting_on", "r")
    assert ts.waiting_on == {"p", "q", "r"}


def test_a_missing_dependency_errs_its_dependents_too(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", ["x", "nowhere"]),
                         "z": ("spec-z", ["y"])}, ["z"], {"x": 0, "y": 1, "z": 2})
    out = take(s)
    assert ("worker", "w1", compute("x", "spec-x", (0, 1, 0))) in out
    ((kind, cid, msg),) = [m for m in out if m[0] == "client"]
    # The client hears of the key it wants, with the error of the key that failed.
    assert (kind, cid, msg["op"], msg["key"], msg["type"]) == (
        "client", "c", "task-erred", "z", "MissingDependency")
    assert "'nowhere'" in msg["text"] and "'y'" in msg["text"]
    assert states(s) == {"x": "processing", "y": "erred", "z": "erred"}


def test_update_graph_message_as_a_client_sends_it(s1):
    """Entries (key, spec, deps, priority); a spec of one bytes frame is kept as its
    bytes and sent to the worker as a Serialized again; the task list is consumed."""
    from dask_ipy.protocol import Serialized

    s = s1
    big = Serialized([b"head", bytearray(b"buffer")])     # out-of-band frames: kept
    tasks = [("x", b"pickle-x", (), 1), ("y", Serialized([b"pickle-y"]), ("x",), 2),
             ("z", big, ("y",), 0)]
    msg = {"op": "update-graph", "tasks": tuple(tasks), "keys": ("z",),
           "user_priority": 0, "retries": 0}
    s.handle_client_message("c", msg)
    assert "tasks" not in msg
    assert s.tasks["x"].run_spec == b"pickle-x"
    assert s.tasks["y"].run_spec == b"pickle-y"
    assert s.tasks["z"].run_spec is big
    assert [s.tasks[k].priority for k in "xyz"] == [(0, 1, 1), (0, 1, 2), (0, 1, 0)]
    assert take(s) == [("worker", "w1", compute("x", Serialized([b"pickle-x"]), (0, 1, 1)))]
    assert finished(s, "w1", "x") == [("worker", "w1", compute(
        "y", Serialized([b"pickle-y"]), (0, 1, 2), {"x": [A]}, {"x": 8}))]
    out = finished(s, "w1", "y")
    assert out[-1] == ("worker", "w1", compute("z", big, (0, 1, 0), {"y": [A]}, {"y": 8}))
    assert type(out[-1][2]["run_spec"]) is Serialized


def test_update_graph_reads_entries_once_and_keeps_none():
    from dask_ipy.scheduler.state import _consume

    items = [("x", "spec-x", ()), ("y", "spec-y", ("x",))]
    seen = []
    for item in _consume(items):
        seen.append(item)
        assert items[len(seen) - 1] is None
    assert seen == [("x", "spec-x", ()), ("y", "spec-y", ("x",))]
    assert items == [None, None]
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.update_graph("c", iter([("x", "spec-x", ()), ("y", "spec-y", ["x"], 5)]), ["y"])
    assert s.tasks["y"].dependencies == (s.tasks["x"],)
    assert s.tasks["y"].priority == (0, 1, 5) and s.tasks["x"].priority == (0, 1, 0)
    assert states(s) == {"x": "no-worker", "y": "waiting"}


def test_keys_of_a_collection_share_their_name():
    s = SchedulerState(validate=True)
    s.add_client("c")
    # Names as a decoded message has them: equal strings, distinct objects.
    names = ["".join(["inc-", "9f86d081884c"]) for _ in range(3)]
    assert names[0] is not names[1]
    tasks = [((names[i], i), "spec", ()) for i in range(3)] + [("x-1", "spec", ())]
    s.update_graph("c", tasks, [("inc-9f86d081884c", 2)])
    keys = [k for k in s.tasks if type(k) is tuple]
    assert keys == [("inc-9f86d081884c", i) for i in range(3)]
    assert keys[0][0] is keys[1][0] is keys[2][0]
    assert {ts.group.name for ts in s.tasks.values()} == {"inc", "x"}
    assert s.groups["inc"].total == 3 and s.groups["x"].total == 1
    assert s.tasks[("inc-9f86d081884c", 1)].key is keys[1]


# ---------------------------------------------------------------- unreachable peers

def test_placement_avoids_a_worker_that_cannot_reach_the_input(s):
    s.add_worker("w3", C, nthreads=1)
    s.update_graph("c", {"x": ("spec-x", []), "busy": ("spec-busy", [])},
                   ["x", "busy"], restrictions={"x": [A], "busy": [A]})
    take(s)
    finished(s, "w1", "x", nbytes=1000)
    # A is busy; B and C are idle and equally far from x: B wins the tie ...
    s.update_graph("c", {"f": ("spec-f", ["x"])}, ["f"])
    assert [m[1] for m in take(s)] == ["w2"]
    s.handle_client_message("c", {"op": "cancel", "keys": ["f"]})
    take(s)
    # ... unless B cannot reach A: its copy of x would come through the relay.
    s.handle_worker_message("w2", {"op": "peer-unreachable", "address": A})
    assert s.info()["workers"][B]["unreachable"] == [A]
    s.update_graph("c", {"g": ("spec-g", ["x"])}, ["g"])
    assert [m[1] for m in take(s)] == ["w3"]
    s.handle_worker_message("w2", {"op": "peer-reachable", "address": A})
    assert s.info()["workers"][B]["unreachable"] == []


def test_unreachable_pairs_end_with_either_worker(s):
    s.handle_worker_message("w2", {"op": "peer-unreachable", "address": A})
    s.remove_worker("w1", reason="test")
    assert s.workers["w2"].unreachable == set()


def relay_setup(s, nbytes=8):
    from dask_ipy.protocol import Serialized

    s.update_graph("c", {"x": ("spec-x", [])}, ["x"], restrictions={"x": [A]})
    take(s)
    finished(s, "w1", "x", nbytes=nbytes)
    s.handle_worker_message("w2", {"op": "relay", "keys": ["x"], "request_id": "r1"})
    [(_, wid, ask)] = take(s)
    assert (wid, ask["op"], ask["keys"], ask["max_bytes"]) == (
        "w1", "send-data", ["x"], s.max_relay_bytes)
    return ask, Serialized([b"." * nbytes])


def test_the_relay_forwards_the_holders_answer_to_the_worker(s):
    ask, blob = relay_setup(s)
    s.handle_worker_message("w1", {"op": "data", "request_id": ask["request_id"],
                                   "data": {"x": blob}, "missing": [], "errors": {}})
    assert take(s) == [("worker", "w2", {"op": "relay-data", "request_id": "r1",
                                         "data": {"x": blob}, "missing": [],
                                         "errors": {}})]
    assert s.gathers == {}


def test_a_value_over_the_relay_cap_is_an_error_naming_both_workers():
    s = SchedulerState(validate=True, max_relay_bytes=100_000)
    s.add_client("c")
    s.add_worker("w1", A)
    s.add_worker("w2", B)
    take(s)
    ask, blob = relay_setup(s, nbytes=200_000)
    s.handle_worker_message("w1", {"op": "data", "request_id": ask["request_id"],
                                   "data": {"x": blob}, "missing": [], "errors": {}})
    [(_, wid, reply)] = take(s)
    assert (wid, reply["op"], reply["data"]) == ("w2", "relay-data", {})
    error = reply["errors"]["x"]
    assert error["type"] == "TransferError"
    assert error["text"].startswith(
        f"worker {B} cannot reach worker {A}, which holds 'x', and the relay through "
        f"the scheduler failed: 'x' is 200000 bytes")
    assert "Scheduler(max_relay_bytes=...)" in error["text"]


def test_a_relay_for_a_worker_that_left_is_dropped(s):
    ask, blob = relay_setup(s)
    s.remove_worker("w2", reason="test")
    take(s)
    assert s.gathers == {}
    s.handle_worker_message("w1", {"op": "data", "request_id": ask["request_id"],
                                   "data": {"x": blob}, "missing": [], "errors": {}})
    assert take(s) == []


# ---------------------------------------------------------------- events, metadata

def info(s, what, **kw):
    s.handle_client_message("c", {"op": "info", "what": what, "request_id": 1, **kw})
    [(kind, cid, reply)] = take(s)
    assert (kind, cid, reply["op"]) == ("client", "c", "reply")
    return reply["result"]


def test_events_are_kept_per_topic_and_sent_to_subscribers(s, monkeypatch):
    import dask_ipy.scheduler.state as state
    monkeypatch.setattr(state, "EVENTS_KEPT", 2)
    s.add_client("d")
    s.handle_client_message("d", {"op": "subscribe-topic", "topic": "t"})
    s.handle_client_message("c", {"op": "log-event", "topics": ["t", "u"],
                                  "event": (1.0, {"a": 1})})
    assert take(s) == [("client", "d", {"op": "event", "topic": "t",
                                        "event": (1.0, {"a": 1})})]
    s.handle_worker_message("w1", {"op": "log-event", "topics": ["t"], "event": (2.0, "x")})
    s.handle_worker_message("w1", {"op": "log-event", "topics": ["t"], "event": (3.0, "y")})
    assert [list(m["event"]) for _, _, m in take(s)] == [[2.0, "x"], [3.0, "y"]]
    # the latest EVENTS_KEPT of each topic
    assert info(s, "events", topic="t") == [(2.0, "x"), (3.0, "y")]
    assert info(s, "events", topic="nothing") == []
    events = info(s, "events")                  # with the scheduler's own, below
    assert {t: events[t] for t in ("t", "u")} == {"t": [(2.0, "x"), (3.0, "y")],
                                                  "u": [(1.0, {"a": 1})]}


def test_a_workers_event_of_a_dict_names_the_worker_under_each_topic(s):
    s.handle_worker_message("w1", {"op": "log-event", "topics": ["t", "u"],
                                   "event": (1.0, {"a": 1})})
    w1 = s.workers["w1"].address
    assert info(s, "events", topic="t") == info(s, "events", topic="u") == [
        (1.0, {"a": 1, "worker": w1})]


def test_the_scheduler_logs_workers_and_clients_coming_and_going(s):
    """As dask.distributed's scheduler: under "all" naming them, and a worker's under
    its address, a client's under its id; a removed worker's event lists its tasks
    running and the results lost with it, computed or scattered."""
    s.tell_time(5.0)
    s.update_graph("c", {"x": ("spec-x", []), "y": ("spec-y", [])}, ["x", "y"])
    where = {m["key"]: wid for _, wid, m in take(s)}
    wid = where["x"]
    finished(s, wid, "x")
    address = s.workers[wid].address
    s.update_graph("c", {"z": ("spec-z", [])}, ["z"], workers=[address])
    assert [to for _, to, _ in take(s)] == [wid]
    s.handle_client_message("c", {"op": "scatter", "request_id": 7, "data": {"d": "blob"},
                                  "broadcast": False, "workers": [address]})
    take(s)
    s.handle_worker_message(wid, {"op": "add-keys", "keys": [("d", 8, "int")]})
    s.tell_time(6.0)
    s.remove_worker(wid, reason="connection lost")
    take(s)
    assert info(s, "events", topic=address) == [
        (0.0, {"action": "add-worker"}),
        (6.0, {"action": "remove-worker", "processing-tasks": ["z"],
               "lost-computed-tasks": ["x"], "lost-scattered-tasks": ["d"],
               "expected": False, "reason": "connection lost"})]
    s.add_client("e")
    s.remove_client("e")
    assert [e for _, e in info(s, "events", topic="all")] == [
        {"action": "add-client", "client": "c"},
        {"action": "add-worker", "worker": A},
        {"action": "add-worker", "worker": B},
        {"action": "remove-worker", "processing-tasks": ["z"],
         "lost-computed-tasks": ["x"], "lost-scattered-tasks": ["d"],
         "expected": False, "reason": "connection lost", "worker": address},
        {"action": "add-client", "client": "e"},
        {"action": "remove-client", "client": "e"}]
    assert info(s, "events", topic="c") == [(0.0, {"action": "add-client", "client": "c"})]
    assert info(s, "events", topic="e") == []         # dropped with the client


def test_metadata_is_a_tree_of_values_under_paths_of_names(s):
    def put(keys, value):
        s.handle_client_message("c", {"op": "set-metadata", "keys": keys, "value": value,
                                      "request_id": 1})
        assert take(s) == [("client", "c", {"op": "reply", "request_id": 1,
                                            "result": True})]
    put(["a"], "v1")
    assert info(s, "get-metadata", keys=["a"]) == {"value": "v1"}
    put(["a", "b", "c"], "v2")            # a value on the way becomes a dict
    put(["a", "d"], "v3")
    assert info(s, "get-metadata", keys=["a"]) == {"value": {"b": {"c": "v2"}, "d": "v3"}}
    assert info(s, "get-metadata", keys=["a", "b", "c"]) == {"value": "v2"}
    assert info(s, "get-metadata", keys=["a", "x"]) == {}
    # under a leaf: nothing, and the client is told the path goes through a value
    assert info(s, "get-metadata", keys=["a", "d", "e"]) == {"through": True}


def test_cancel_reaches_the_results_that_depend_on_the_key(s1):
    s = s1
    s.add_client("d")
    s.update_graph("c", {"a": ("spec-a", []), "b": ("spec-b", ["a"]),
                         "i": ("spec-i", ["b"]), "z": ("spec-z", ["i"])}, ["a", "b", "z"])
    s.update_graph("d", {"other": ("spec-o", ["a"])}, ["other"])
    take(s)
    s.handle_client_message("c", {"op": "cancel", "keys": ["a"]})
    out = take(s)
    # a goes for c only (d's "other" needs it); b and z, through the intermediate i,
    # were c's alone: cancelled too (c is told of those it did not name)
    assert sorted(m["key"] for kind, cid, m in out if m["op"] == "cancelled") == [
        "b", "z"]
    assert all(cid == "c" for kind, cid, m in out if kind == "client")
    assert sorted(s.tasks) == ["a", "other"] and not s.tasks["a"].who_wants


def test_cancel_stops_at_a_result_another_client_wants_unless_forced(s1):
    s = s1
    s.add_client("d")
    s.update_graph("c", {"a": ("spec-a", []), "b": ("spec-b", ["a"])}, ["a", "b"])
    s.update_graph("d", {"b": ("spec-b", ["a"])}, ["b"])
    take(s)
    s.handle_client_message("c", {"op": "cancel", "keys": ["a"]})
    out = take(s)
    # b is d's too: c's Future of b is cancelled, b stays (and a for it)
    assert sorted((cid, m["key"]) for kind, cid, m in out if m["op"] == "cancelled") == [
        ("c", "b")]
    assert sorted(s.tasks) == ["a", "b"] and set(s.tasks["b"].who_wants) == {"d"}
    s.handle_client_message("c", {"op": "cancel", "keys": ["a"], "force": True,
                                  "reason": "R", "msg": "M"})
    out = take(s)
    # d is told why, as the canceller said
    assert ("client", "d", {"op": "cancelled", "key": "b", "reason": "R",
                            "msg": "M"}) in out
    assert s.tasks == {}


def test_info_gives_a_workers_figures_under_dask_distributed_names_too(s1):
    s = s1
    s.handle_worker_message("w1", {"op": "heartbeat", "metrics": {
        "memory": 500, "managed": 200, "spilled": 50, "cpu": 12.5}}, now=1234.0)
    w = s.info()["workers"][A]
    assert w["type"] == "Worker" and w["last_seen"] == 1234.0
    assert w["metrics"] == {"cpu": 12.5, "memory": 500, "managed_bytes": 200,
                            "spilled_bytes": {"memory": 200, "disk": 50},
                            "executing": 0, "in_memory": 0, "time": 1234.0}
    # The worker's own figures pass as it sent them.
    own = {"task_counts": {"memory": 2}, "num_fds": 30,
           "bandwidth": {"total": 5e7, "workers": {}, "types": {}},
           "transfer": {"incoming_bytes": 0, "incoming_count": 0,
                        "incoming_count_total": 4, "outgoing_count_total": 1},
           "host_net_io": {"read_bps": 1.0, "write_bps": 2.0},
           "host_disk_io": {"read_bps": 3.0, "write_bps": 4.0}}
    s.handle_worker_message("w1", {"op": "heartbeat", "metrics": {"memory": 500,
                                                                  **own}}, now=1235.0)
    metrics = s.info()["workers"][A]["metrics"]
    assert {name: metrics[name] for name in own} == own


def test_a_forced_cancel_leaves_a_published_datasets_key(s1):
    s = s1
    s.update_graph("c", {"a": ("spec-a", [])}, ["a"])
    s.handle_client_message("c", {"op": "publish-dataset", "name": "d", "data": "blob",
                                  "keys": ["a"], "request_id": 1})
    take(s)
    s.handle_client_message("c", {"op": "cancel", "keys": ["a"], "force": True})
    assert take(s) == []
    assert set(s.tasks["a"].who_wants) == {("dataset", "d")}


def test_a_task_holds_the_keys_its_arguments_carry_futures_of_until_it_ends(s):
    """A Future inside a task's arguments (a persisted collection, an object of the
    user's) reaches the worker as a Future, not as an input: the task holds its key
    until it ends, though the client lets go of it at once (the worker's client
    says it wants it only once the task starts)."""
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    finished(s, take(s)[0][1], "x")
    for end in ("memory", "erred", "cancelled"):
        s.handle_client_message("c", {"op": "update-graph", "keys": ["t"],
                                      "tasks": [("t", "spec-t", [], 0)],
                                      "holds": {"t": ["x", "unknown"]}})
        [(_, wid, _)] = take(s)
        s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
        assert s.tasks["x"].state == "memory" and s.task_holds == {"t": ["x"]}
        if end == "memory":
            finished(s, wid, "t")
        elif end == "erred":
            erred(s, wid, "t")
        else:
            s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["t"]})
        assert "x" not in s.tasks and s.task_holds == {}, end
        take(s)
        s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["t"]})
        s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
        [wid] = [w for _, w, m in take(s) if m["op"] == "compute-task"]
        finished(s, wid, "x")
