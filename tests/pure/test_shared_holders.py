"""Tasks wanted by one client alone, or held by one worker alone, share one 1-tuple
for it: changing one task's wanters or holders changes no other task's."""

from dask_ipy.scheduler.state import SchedulerState

A, B = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"


def finish(s, key):
    s.handle_worker_message("w1", {"op": "task-finished", "key": key, "nbytes": 8,
                                   "type": "int", "duration": 0.001})


def test_tasks_share_a_lone_wanter_and_holder_and_part_ways_alone():
    s = SchedulerState(validate=True)
    for c in ("c", "d"):
        s.add_client(c)
    s.add_worker("w1", A, nthreads=1)
    s.add_worker("w2", B, nthreads=1)
    s.update_graph("c", {"x": ("spec", []), "y": ("spec", [])}, ["x", "y"])
    x, y = s.tasks["x"], s.tasks["y"]
    assert x.who_wants is y.who_wants and set(x.who_wants) == {"c"}
    s.take_messages()
    for key in ("x", "y"):
        ws = x.processing_on if key == "x" else y.processing_on
        s.handle_worker_message(ws.id, {"op": "task-finished", "key": key, "nbytes": 8,
                                        "type": "int", "duration": 0.001})
    if x.processing_on is None and set(x.who_has) == set(y.who_has):
        assert x.who_has is y.who_has
    # Another client wants x too: y's wanters stay as they were.
    s.update_graph("d", {}, ["x"])
    assert set(x.who_wants) == {"c", "d"} and set(y.who_wants) == {"c"}
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["y"]})
    assert "y" not in s.tasks and set(x.who_wants) == {"c", "d"}
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    assert set(x.who_wants) == {"d"} and x.state == "memory"


def test_a_tasks_waiters_share_its_dependents_and_waiting_on_its_dependencies():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.update_graph("c", {"a": ("spec", []), "b": ("spec", []), "c": ("spec", []),
                         "s": ("spec", ["a", "b", "c", "a"])}, ["s"])
    a, b, c, total = (s.tasks[k] for k in "abcs")
    assert a.waiters is a.dependents and set(a.waiters) == {total}
    assert total.waiting_on is total.dependencies
    s.take_messages()
    finish(s, "a")                  # one left in a set, the tuple untouched
    assert set(total.waiting_on) == {b, c} and total.dependencies == (a, b, c, a)
    finish(s, "b")
    assert set(total.waiting_on) == {c} and total.state == "waiting"
    finish(s, "c")
    assert not total.waiting_on and total.state == "processing"
    s.validate()


def test_waiting_on_some_dependencies_only():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.update_graph("c", {"a": ("spec", [])}, ["a"])
    finish(s, "a")
    s.update_graph("c", {"b": ("spec", []), "s": ("spec", ["a", "b"])}, ["s"])
    a, b, total = (s.tasks[k] for k in "abs")
    assert set(total.waiting_on) == {b} and total.waiting_on is not total.dependencies
    assert set(a.waiters) == {total} and set(a.dependents) == {total}
    s.take_messages()
    finish(s, "b")
    assert total.state == "processing"
    s.validate()
