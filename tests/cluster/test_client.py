"""The Client against a scheduler and two workers in their own processes: submit,
map, gather, scatter, cancel, datasets, run, cluster queries and errors."""

import gc
import queue
import threading
import time
import traceback

import pytest

from helpers import (Boom, KeywordOnly, NeedsTwo, SlotsOnly, Unpicklable, add,
                     add_later, fail_later,
                     count_lines, fail, fail_deeply, fail_until, identity, inc,
                     log_worker_event, make_unpicklable, pid, raise_chained,
                     raise_keyword_only,
                     raise_needs_two, raise_slots_only, record, recurse, slow_inc, total,
                     wait_for, type_name, wait_for_file, worker_keys)
import dask
import dask_ipy
from dask_ipy import (CancelledError, Client, CycleError, Future, FutureCancelledError,
                      MissingDependency, as_completed, wait)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def workers(c):
    """{address: pid} of the two worker processes."""
    info = c.scheduler_info()["workers"]
    assert len(info) == 2
    return {address: w["pid"] for address, w in info.items()}


def forgotten(c, key):
    return key not in c.who_has()


# ---------------------------------------------------------------- submit and map

def test_pure_submit_gives_deterministic_keys(c):
    a, b = c.submit(inc, 1), c.submit(inc, 1)
    assert a.key == b.key
    assert a.key.startswith("inc-")
    assert c.submit(inc, 2).key != a.key
    assert c.submit(add, 1, y=2).key != c.submit(add, 1, y=3).key
    assert a.result(timeout=10) == 2


def test_allow_other_workers_needs_workers(c):
    for call in (lambda **kw: c.submit(inc, 1, **kw), lambda **kw: c.map(inc, [1, 2], **kw)):
        with pytest.raises(ValueError, match="workers="):
            call(allow_other_workers=True)
        with pytest.raises(TypeError, match="True or False"):
            call(allow_other_workers="yes", workers=list(c.nthreads()))
    assert c.gather(c.map(inc, [1, 2], workers=list(c.nthreads()),
                          allow_other_workers=True)) == [2, 3]
    assert c.submit(inc, 1, allow_other_workers=None).result(timeout=10) == 2


def test_impure_submit_gives_fresh_keys(c, tmp_path):
    path = str(tmp_path / "calls")
    fs = [c.submit(record, path, 1, pure=False) for _ in range(3)]
    assert len({f.key for f in fs}) == 3
    assert c.gather(fs) == [1, 1, 1]
    assert count_lines(path) == 3


def test_explicit_key(c):
    f = c.submit(inc, 10, key="my-key")
    assert f.key == "my-key"
    assert f.result(timeout=10) == 11
    assert c.who_has([f]).keys() == {"my-key"}


def test_map_keys_follow_the_same_rules(c):
    fs = c.map(add, [1, 2, 3], [10, 20, 30])
    assert c.gather(fs) == [11, 22, 33]
    assert [f.key for f in fs] == [f.key for f in c.map(add, [1, 2, 3], [10, 20, 30])]
    assert all(f.key.startswith("add-") for f in fs)
    assert len({f.key for f in c.map(inc, [1, 1, 1], pure=False)}) == 3
    named = c.map(inc, [1, 2], key=["one", "two"])
    assert [f.key for f in named] == ["one", "two"]
    assert c.gather(named) == [2, 3]
    assert c.gather(c.map(slow_inc, [1, 2], delay=0.01)) == [2, 3]


def test_map_of_ten_thousand_then_gather(c):
    fs = c.map(inc, range(10_000))
    assert len({f.key for f in fs}) == 10_000
    assert c.gather(fs) == list(range(1, 10_001))


def test_retries_rerun_a_failing_task(c, tmp_path):
    path = str(tmp_path / "attempts")
    f = c.submit(fail_until, path, 3, retries=2)
    assert f.result(timeout=10) == 3
    g = c.submit(fail_until, str(tmp_path / "other"), 3, retries=1)
    with pytest.raises(RuntimeError, match="attempt 2 fails"):
        g.result(timeout=10)


def test_workers_restricts_placement(c, workers):
    for address, worker_pid in workers.items():
        fs = [c.submit(pid, pure=False, workers=[address]) for _ in range(4)]
        assert c.gather(fs) == [worker_pid] * 4
        assert all(v == (address,) for v in c.who_has(fs).values())
    address = next(iter(workers))
    many = c.map(inc, range(20), workers=address)
    c.gather(many)
    assert all(v == (address,) for v in c.who_has(many).values())


def test_priority_runs_urgent_work_first(c, workers, tmp_path):
    address = next(iter(workers))
    gate, log = tmp_path / "gate", str(tmp_path / "order")
    blocker = c.submit(wait_for_file, str(gate), workers=[address], pure=False)
    wait_for(lambda: blocker.key in _processing(c), message="the blocker to start")
    # Fresh key prefixes: no duration estimate yet, so the worker holds these back
    # in its own priority queue rather than handing them to its pool at once.
    low = c.submit(record, log, "low", workers=[address], priority=0,
                   key=f"routine-{tmp_path.name}")
    high = c.submit(record, log, "high", workers=[address], priority=10,
                    key=f"urgent-{tmp_path.name}")
    wait_for(lambda: {low.key, high.key} <= set(_processing(c)), message="queueing")
    gate.touch()
    wait([blocker, low, high], timeout=10)
    with open(log) as f:
        assert f.read().split() == ["high", "low"]


def _processing(c):
    return {k for k, state in c._info("task-states").items() if state == "processing"}


# ---------------------------------------------------------------- futures as arguments

def test_futures_are_arguments_before_they_finish(c, tmp_path):
    gate = tmp_path / "gate"
    slow = c.submit(wait_for_file, str(gate), value=5, pure=False)
    a, b = c.submit(inc, 1), c.submit(inc, 2)
    f = c.submit(total, [a, (b, {"k": slow})], extra={"x": slow, "y": [a]})
    assert not f.done()
    gate.touch()
    assert f.result(timeout=10) == 2 + 3 + 5 + 5 + 2
    # The data of the arguments never came back to this client.
    g = c.submit(add, f, a)
    assert g.result(timeout=10) == 19


def test_gather_keeps_the_structure(c):
    a, b, d = c.submit(inc, 1), c.submit(inc, 2), c.submit(inc, 3)
    out = c.gather({"list": [a, b], "tuple": (d, 7), "nested": {"x": [[a]]}, "plain": 1})
    assert out == {"list": [2, 3], "tuple": (4, 7), "nested": {"x": [[2]]}, "plain": 1}
    assert c.gather(a) == 2
    assert c.gather([]) == []


def test_gather_of_an_iterator_is_an_iterator_of_the_values(c):
    fs = c.map(inc, range(3))
    out = c.gather(f for f in fs)
    assert not isinstance(out, list) and list(out) == [1, 2, 3]
    assert list(c.gather(iter(fs))) == [1, 2, 3]
    q = queue.Queue()                    # one still being filled, read as it goes
    for f in fs:
        q.put(f)
    q.put(None)
    assert list(c.gather(iter(q.get, None))) == [1, 2, 3]


def test_gather_raises_the_first_error(c):
    bad = c.submit(fail, 3)
    with pytest.raises(Boom):
        c.gather([c.submit(inc, 1), bad])


def test_gather_can_skip_failed_futures(c, tmp_path):
    gate, late_gate = tmp_path / "gate", tmp_path / "late"
    ok, early = c.submit(inc, 1), c.submit(fail, 3)
    wait([ok, early])
    slow = c.submit(wait_for_file, str(gate), value=5)
    # fails while the gather waits
    late = c.submit(fail, c.submit(wait_for_file, str(late_gate), value=1))
    got = []
    t = threading.Thread(target=lambda: got.append(c.gather([ok, early, slow, late, 7],
                                                           errors="skip")))
    t.start()
    late_gate.touch()
    wait(late)
    gate.touch()
    t.join(timeout=30)
    # left out of a top-level list; None in any other place
    assert got == [[2, 5, 7]]
    assert c.gather({"a": [ok, early], "b": late}, errors="skip") == {"a": [2, None],
                                                                       "b": None}
    assert c.gather(early, errors="skip") is None
    with pytest.raises(Boom):
        c.gather([ok, early])
    with pytest.raises(ValueError, match="errors"):
        c.gather([ok], errors="ignore")


def test_get_without_waiting_gives_futures_in_the_shape_of_the_keys(c):
    given = c.submit(inc, 100)
    dsk = {"x": (inc, 1), "y": (add, "x", 10), "f": given, "z": (add, "f", "y")}
    out = c.get(dsk, [["x", "y"], "z", "f"], sync=False)
    (fx, fy), fz, ff = out
    assert all(isinstance(f, Future) for f in (fx, fy, fz, ff))
    assert [fx.key, fy.key, fz.key, ff.key] == ["x", "y", "z", "f"]
    assert c.gather(out) == ((2, 12), 113, 101)      # the shape `get` gives its values
    assert c.get(dsk, "y", sync=False).result() == 12
    # a Future under its own key is given back as it is
    assert c.get({given.key: given, "w": (inc, given.key)}, [given.key, "w"],
                 sync=False)[0] is given
    with pytest.raises(KeyError):
        c.get(dsk, "nothing", sync=False)


# ---------------------------------------------------------------- scatter

def test_scatter_list_dict_and_single_values(c):
    fs = c.scatter([1, 2, 3])
    assert [f.status for f in fs] == ["finished"] * 3
    assert c.gather(fs) == [1, 2, 3]
    d = c.scatter({"a": 10, "b": 20})
    assert set(d) == {"a", "b"} and d["a"].key == "a"
    one = c.scatter("value")
    assert one.result(timeout=10) == "value"
    assert c.submit(add, d["a"], d["b"]).result(timeout=10) == 30
    assert c.gather(c.map(inc, fs)) == [2, 3, 4]
    assert c.gather(c.scatter([5, 6], direct=True)) == [5, 6]    # dask.distributed's hint


def test_scatter_keeps_the_kind_of_container_and_each_value(c):
    import numpy as np
    s, fz = c.scatter({1, 2}), c.scatter(frozenset([3]))
    assert type(s) is set and sorted(f.result(timeout=10) for f in s) == [1, 2]
    assert type(fz) is frozenset and [f.result(timeout=10) for f in fz] == [3]
    t = c.scatter((1, 2, 1))
    assert type(t) is tuple and t[0].key == t[2].key and c.gather(list(t)) == [1, 2, 1]
    fresh = c.scatter([7, 7], hash=False)
    assert fresh[0].key != fresh[1].key and c.gather(fresh) == [7, 7]
    assert c.gather(c.scatter(range(3))) == [0, 1, 2]
    assert c.gather(c.scatter(iter("ab"))) == ["a", "b"]
    assert c.scatter(np.ones(3)).type is np.ndarray      # as a task's result
    assert c.scatter([1])[0].type is int


@pytest.mark.timeout(10)
def test_scatter_of_nothing_returns_an_empty_container_at_once(c):
    assert c.scatter([]) == [] and c.scatter({}) == {}
    assert c.scatter(()) == () and c.scatter(set()) == set()


def test_scatter_spreads_over_workers_and_broadcasts(c, workers):
    fs = c.scatter(list(range(10)))
    holders = {addr for v in c.who_has(fs).values() for addr in v}
    assert holders == set(workers)
    b = c.scatter([100], broadcast=True)[0]
    assert sorted(c.who_has([b])[b.key]) == sorted(workers)
    assert b.result(timeout=10) == 100
    address = next(iter(workers))
    [only] = c.scatter([200], workers=[address])
    assert c.who_has([only])[only.key] == (address,)


# ---------------------------------------------------------------- cancel

def test_cancel_a_running_task(c, tmp_path):
    gate = tmp_path / "gate"
    f = c.submit(wait_for_file, str(gate), value=1, pure=False)
    wait_for(lambda: f.key in _processing(c), message="the task to start")
    c.cancel([f])
    wait_for(f.cancelled, message="the cancellation")
    assert f.status == "cancelled" and f.done()
    with pytest.raises(CancelledError):
        f.result(timeout=5)
    wait_for(lambda: f.key not in c._info("task-states"),
             message="the scheduler to forget it")
    # A thread cannot be interrupted: the task runs to its end, and its result is
    # thrown away.
    gate.touch()
    assert c.gather(c.map(inc, range(4))) == [1, 2, 3, 4]
    assert forgotten(c, f.key)
    assert not any(f.key in keys for keys in c.run(worker_keys).values())


def test_cancel_waiting_dependents_too(c, tmp_path):
    gate = tmp_path / "gate"
    a = c.submit(wait_for_file, str(gate), value=1, pure=False)
    b = c.submit(inc, a)
    b.cancel()
    wait_for(b.cancelled, message="cancellation")
    gate.touch()
    assert a.result(timeout=10) == 1
    wait_for(lambda: b.key not in c._info("task-states"), message="b to be forgotten")


def test_cancel_reaches_the_futures_that_depend_on_it(c, tmp_path):
    gate = tmp_path / "gate"
    a = c.submit(wait_for_file, str(gate), value=1, pure=False)
    b = c.submit(inc, a)
    d = c.submit(add, b, 10)
    a.cancel()
    for f in (a, b, d):
        with pytest.raises(CancelledError):
            f.result(timeout=10)
    gate.touch()
    wait_for(lambda: not {a.key, b.key, d.key} & set(c._info("task-states")),
             message="all three forgotten")


# ---------------------------------------------------------------- errors

def test_remote_exception_keeps_its_type_and_traceback(c):
    f = c.submit(fail_deeply, 7)
    with pytest.raises(ZeroDivisionError, match="inner failure with 7") as info:
        f.result(timeout=10)
    text = "".join(traceback.format_exception(info.value))
    assert "_inner_failure" in text and "fail_deeply" in text
    assert "helpers.py" in text
    # The worker's own frames (its pool thread, the graph executor) are left out.
    assert "worker/server.py" not in text and "dask_ipy/graph.py" not in text
    assert c.submit(fail, 1).exception(timeout=10).__class__ is Boom


@pytest.mark.parametrize("fn, cls, text", [
    (raise_needs_two, NeedsTwo, "1 and 2"), (raise_keyword_only, KeywordOnly, "code 3"),
    (raise_slots_only, SlotsOnly, "detail is lost")])
def test_an_exception_pickle_cannot_rebuild_keeps_its_type(c, fn, cls, text):
    f = c.submit(fn)
    with pytest.raises(cls, match=text) as info:
        f.result(timeout=10)
    assert fn.__name__ in "".join(traceback.format_exception(info.value))
    with pytest.raises(cls, match=text):
        c.submit(inc, f).result(timeout=10)


def test_an_exception_keeps_its_cause_and_context(c):
    """Pickle leaves out ``__cause__`` and ``__context__``; NeedsTwo pickle cannot
    rebuild at all."""
    e = c.submit(raise_chained).exception(timeout=10)
    assert (type(e), str(e), e.total) == (NeedsTwo, "3 and 4", 7)
    assert (type(e.__cause__), str(e.__cause__)) == (KeyError, "'b'")
    assert (type(e.__context__), str(e.__context__)) == (NeedsTwo, "1 and 2")
    assert e.__context__.total == 3 and e.__suppress_context__
    assert e.__cause__.__cause__ is None and e.__context__.__context__ is None
    shown = "".join(traceback.format_exception(e))
    assert "KeyError: 'b'\n\nThe above exception was the direct cause" in shown


def test_an_exception_class_sent_by_value_keeps_its_type(c):
    class Local(Exception):         # not importable: cloudpickle sends it by value
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")
            self.total = a + b

    def fail_locally():
        raise Local(1, 2)

    f = c.submit(fail_locally)
    with pytest.raises(Local, match="1 and 2") as info:
        f.result(timeout=10)
    assert info.value.total == 3
    with pytest.raises(Local):
        c.submit(inc, f).result(timeout=10)


def test_a_runaway_recursion_is_a_recursion_error(c):
    f = c.submit(recurse, 0)
    with pytest.raises(RecursionError):
        f.result(timeout=30)
    assert [fr.name for fr in traceback.extract_tb(f.traceback())][-1] == "recurse"
    with pytest.raises(RecursionError):
        c.submit(inc, f).result(timeout=30)


def test_errors_reach_dependents_and_get(c):
    bad = c.submit(fail, "x")
    dependent = c.submit(inc, bad)
    with pytest.raises(Boom, match="failed on 'x'"):
        dependent.result(timeout=10)
    with pytest.raises(Boom):
        c.get({"a": (fail, 1), "b": (inc, "a")}, "b")


def test_unpicklable_argument_is_a_clear_error_naming_the_key(c):
    with pytest.raises(TypeError) as info:
        c.submit(identity, Unpicklable(), key="bad-arg")
    assert str(info.value) == (
        "Could not serialize task 'bad-arg': argument 0 (helpers.Unpicklable) cannot "
        "be pickled: TypeError: this object refuses to be pickled")
    # One error, not a chain of the pickler's.
    assert info.value.__suppress_context__ and info.value.__cause__ is None
    lock = threading.Lock()
    with pytest.raises(TypeError, match="'lock', which lambda uses "
                                        r"\(_thread.lock\) cannot be pickled"):
        c.submit(lambda: lock, key="closure")
    with pytest.raises(TypeError, match="keyword argument 'x' \\(list\\)"):
        c.submit(identity, x=[lock])
    assert c.submit(inc, 1).result(timeout=10) == 2


def test_as_completed_shows_its_counts_and_reads_as_a_queue(c, gate):
    slow = c.submit(wait_for_file, str(gate), pure=False)
    fast = c.submit(inc, 1, pure=False)
    ac = as_completed([fast, slow], with_results=True)
    wait_for(lambda: ac.queue.qsize() == 1, message="the fast one done")
    assert repr(ac) == "<as_completed: waiting=1 done=1>"
    assert ac.queue.get(timeout=10) == (fast, 2)
    assert ac.queue.empty()
    with pytest.raises(queue.Empty):
        ac.queue.get(timeout=0.1)
    with pytest.raises(queue.Empty):
        ac.queue.get_nowait()
    gate.touch()
    assert next(ac)[0] is slow
    assert repr(ac) == "<as_completed: waiting=0 done=0>" and list(ac) == []
    with pytest.raises(TypeError, match="Input must be a future, got 1"):
        as_completed([fast, 1])


def test_an_unpicklable_result_stays_usable_and_errs_only_where_it_must_move(c):
    # As under dask.distributed: the task finished, and its value stays on its
    # worker for the tasks there; only fetching it raises, naming the key.
    first, second = sorted(c.nthreads())
    f = c.submit(make_unpicklable, key="bad-result", workers=[first])
    done, not_done = wait(f, timeout=10)          # one Future, as with a list
    assert done == {f} and not not_done
    assert f.status == "finished" and f.exception(timeout=10) is None
    assert [g.status for g in as_completed([f])] == ["finished"]
    with pytest.raises(TypeError) as info:
        f.result(timeout=10)
    assert "bad-result" in str(info.value) and "could not be serialized" in str(
        info.value)
    assert f.status == "finished"                 # still there for the tasks below
    here = c.submit(type_name, f, workers=[first])
    assert here.result(timeout=10) == "Unpicklable"
    # Needed on another worker, it cannot go there: that task errs, saying why,
    # rather than waiting for a copy that can never come.
    there = c.submit(type_name, f, workers=[second], pure=False)
    with pytest.raises(TypeError, match="'bad-result' could not be serialized"):
        there.result(timeout=10)
    assert there.status == "error"
    # Where it may go elsewhere, it runs where the value is.
    loose = c.submit(type_name, f, workers=[second], allow_other_workers=True,
                     pure=False)
    assert loose.result(timeout=10) == "Unpicklable"
    # A value no client waits for: the same, inside a graph.
    graph = {"made": (make_unpicklable,), "name": (type_name, "made")}
    assert c.get(graph, "name", workers=[first]) == "Unpicklable"


def test_a_task_needing_an_unpicklable_value_waits_for_its_busy_holder(c, tmp_path):
    # The idle worker is tried first, as the value is small; it cannot get it, so
    # the task waits for the worker holding it, as do later ones (dask's
    # test_from_delayed_iterator: a bag of generators).
    first, second = sorted(c.nthreads())
    made = c.submit(make_unpicklable, workers=[first])
    made.exception(timeout=10)
    gate = tmp_path / "gate"
    busy = c.submit(wait_for_file, str(gate), workers=[first], pure=False)
    wait_for(lambda: c.processing()[first], timeout=10)
    names = [c.submit(type_name, made, pure=False) for _ in range(4)]
    wait_for(lambda: all(k in c.processing()[first] for k in
                           (f.key for f in names)), timeout=10)
    gate.touch()
    assert c.gather(names) == ["Unpicklable"] * 4 and busy.result(timeout=10) is None


def test_get_errors_before_anything_runs(c, tmp_path):
    from dask._task_spec import Task, TaskRef

    path = str(tmp_path / "ran")
    with pytest.raises(KeyError):
        c.get({"x": 1}, "y")
    with pytest.raises(CycleError) as info:
        c.get({"a": (record, path, "b"), "b": (inc, "c"), "c": (inc, "b")}, "a")
    assert "'b'" in str(info.value) and "'c'" in str(info.value)
    with pytest.raises(MissingDependency, match="nowhere"):
        c.get({"a": Task("a", record, path, 1),
               "b": Task("b", add, TaskRef("a"), TaskRef("nowhere"))}, ["a", "b"])
    assert count_lines(path) == 0
    assert c.scheduler_info()["ntasks"] == 0


# ---------------------------------------------------------------- reference counts

def test_dropping_the_last_future_releases_the_data(c):
    f = c.submit(inc, 41, key="dropped")
    assert f.result(timeout=10) == 42
    assert any("dropped" in keys for keys in c.run(worker_keys).values())
    g = c.submit(inc, 41, key="dropped")        # a second Future of the same key
    del f
    gc.collect()
    assert "dropped" in c.who_has()
    del g
    gc.collect()
    wait_for(lambda: forgotten(c, "dropped"), message="the scheduler to forget it")
    wait_for(lambda: not any("dropped" in keys for keys in c.run(worker_keys).values()),
             message="workers to free the data")


def test_reference_counts_are_shared_across_clients(c, pc):
    other = pc.client(set_as_default=False)
    try:
        mine = c.submit(inc, 1, key="shared")
        theirs = other.submit(inc, 1, key="shared")
        assert mine.result(timeout=10) == theirs.result(timeout=10) == 2
        del mine
        gc.collect()
        assert theirs.result(timeout=10) == 2
        assert "shared" in c.who_has()
        del theirs
        gc.collect()
        wait_for(lambda: forgotten(c, "shared"), message="release by both clients")
    finally:
        other.close()



def test_another_clients_new_future_given_to_submit_and_map_outlives_its_release(c, pc):
    # Each client's messages go on its own connection: the other client's tasks
    # must reach the scheduler after the Future's own and before its release.
    other = pc.client(set_as_default=False)
    try:
        for i in range(30):
            f = c.submit(inc, i, pure=False)
            g = other.submit(inc, f)
            (h,) = other.map(add, [f], [10])
            del f
            assert g.result(timeout=10) == i + 2
            assert h.result(timeout=10) == i + 11
    finally:
        other.close()



def test_a_client_closing_right_after_another_used_its_future_leaves_it_to_that_one(c, pc):
    import dask

    for i in range(15):
        first = pc.client(set_as_default=False)
        f = first.submit(inc, i, pure=False)
        g = c.submit(inc, f)
        total = c.compute(dask.delayed(add)(f, 10))
        first.close()     # on its own connection: must not reach the scheduler first
        assert g.result(timeout=10) == i + 2
        assert total.result(timeout=10) == i + 11


def test_a_closed_client_releases_its_keys(c, pc):
    other = pc.client(set_as_default=False)
    f = other.submit(inc, 5, key="short-lived")
    assert f.result(timeout=10) == 6
    other.close()
    wait_for(lambda: forgotten(c, "short-lived"), message="release on close")


def test_a_future_used_by_ten_tasks_is_computed_once(c, tmp_path):
    path = str(tmp_path / "runs")
    x = c.submit(record, path, 5, pure=False)
    ys = [c.submit(add, x, i) for i in range(10)]
    assert c.gather(ys) == [5 + i for i in range(10)]
    assert count_lines(path) == 1
    assert x.result(timeout=10) == 5
    assert count_lines(path) == 1


# ---------------------------------------------------------------- datasets

def test_datasets_are_shared_between_clients(c, pc):
    other = pc.client(set_as_default=False)
    try:
        f = c.submit(inc, 99, key="published")
        c.publish_dataset(numbers=[f, 3], label="plain")
        assert sorted(other.list_datasets()) == ["label", "numbers"]
        fs, three = other.get_dataset("numbers")
        assert fs.result(timeout=10) == 100 and three == 3
        assert other.get_dataset("label") == "plain"
        # Published data outlives the publisher's Futures and the publisher.
        del f, fs
        c.close()
        gc.collect()
        assert other.get_dataset("numbers")[0].result(timeout=10) == 100
        with pytest.raises(KeyError):
            other.publish_dataset(label="again")
        other.publish_dataset(label="again", override=True)
        assert other.get_dataset("label") == "again"
        other.unpublish_dataset("numbers")
        # the same, as a mapping
        assert dict(other.datasets) == {"label": "again"} and len(other.datasets) == 1
        other.datasets["more"] = 5
        assert other.datasets["more"] == 5 and "more" in other.datasets
        with pytest.raises(KeyError):
            other.datasets["more"] = 6
        del other.datasets["more"], other.datasets["label"]
        assert other.list_datasets() == ()
        with pytest.raises(KeyError):
            other.get_dataset("numbers")
        assert other.get_dataset("numbers", default=None) is None
        wait_for(lambda: forgotten(other, "published"), message="release on unpublish")
    finally:
        other.close()


def test_datasets_by_lists_of_names_and_missing_ones(c):
    c.publish_dataset(a=1, b=2)
    c.publish_dataset(("t", 1), name=("t", 1))
    assert c.list_datasets() == (("t", 1), "a", "b")     # sorted as text
    assert c.get_dataset(["b", ("t", 1)]) == [2, ("t", 1)]
    assert c.get_dataset(["a", "gone"], default=None) == [1, None]
    with pytest.raises(KeyError, match="Dataset 'gone' not found"):
        c.get_dataset("gone")
    with pytest.raises(KeyError, match="Dataset 'a' already exists"):
        c.publish_dataset(a=3)
    # Forgetting what is not there is no error.
    c.unpublish_dataset("gone")
    del c.datasets["gone"]
    c.unpublish_dataset(["a", ("t", 1), "gone"])
    assert c.list_datasets() == ("b",)
    del c.datasets["b"]
    assert c.list_datasets() == ()


def test_events_and_metadata_are_shared_between_clients(c, pc):
    other = pc.client(set_as_default=False)
    try:
        seen = []
        other.subscribe_topic("news", seen.append)
        assert other.get_events("news") == ()     # answered after the subscription
        before = time.time()
        c.log_event("news", {"n": 1})
        c.log_event(["news", "other"], "two")
        c.submit(log_worker_event, "news", [3], pure=False).result()
        wait_for(lambda: len(seen) == 3, message="three events")
        events = other.get_events("news")
        assert [msg for _, msg in events] == [{"n": 1}, "two", (3,)]
        assert all(before <= t <= time.time() for t, _ in events)
        assert [msg for _, msg in seen] == [{"n": 1}, "two", (3,)]
        assert [msg for _, msg in c.get_events()["other"]] == ["two"]
        assert c.get_events("never") == ()
        with pytest.raises(TypeError, match="msgpack"):
            c.log_event("news", object())

        c.set_metadata("plain", 1)
        c.set_metadata(["tree", "a"], {"x": [1, 2]})
        c.set_metadata(["tree", "b"], {1, 2})                 # pickled, not msgpack
        assert other.get_metadata("plain") == 1
        assert other.get_metadata("tree") == {"a": {"x": [1, 2]}, "b": {1, 2}}
        assert other.get_metadata(["tree", "a"]) == {"x": [1, 2]}
        with pytest.raises(KeyError):
            other.get_metadata(["tree", "nothing"])
        assert other.get_metadata("nothing", default=None) is None
    finally:
        other.close()


def test_a_metadata_path_reaches_into_a_dict_set_whole(c):
    c.set_metadata(["run", "config"], {"lr": 0.1, "layers": [1, {"n": 2}], 3: "three"})
    assert c.get_metadata(["run", "config", "lr"]) == 0.1
    assert c.get_metadata(["run", "config", 3]) == "three"
    c.set_metadata(["run", "config", "epochs"], 5)           # merged, not replaced
    assert c.get_metadata("run") == {"config": {"lr": 0.1, "layers": [1, {"n": 2}],
                                                3: "three", "epochs": 5}}
    with pytest.raises(TypeError):          # through 0.1, as dask.distributed's
        c.get_metadata(["run", "config", "lr", "more"])


def test_versions_of_every_process(c, workers):
    v = c.get_versions(check=True, packages=["numpy"])
    assert set(v) == {"client", "scheduler", "workers"}
    assert set(v["workers"]) == set(workers)
    for one in [v["client"], v["scheduler"], *v["workers"].values()]:
        assert one["packages"]["dask_ipy"] == dask_ipy.__version__
        assert one["packages"]["numpy"] and one["host"]["python"]
    # a package whose version differs (here: absent from the workers' view only)
    from dask_ipy import versions
    v["workers"][next(iter(workers))]["packages"]["dask"] = "0.0"
    assert set(versions.mismatches(v)) == {"dask"}


# ---------------------------------------------------------------- cluster control

def test_run_on_every_worker_or_some(c, workers):
    assert c.run(pid) == workers
    address = next(iter(workers))
    assert c.run(pid, workers=[address]) == {address: workers[address]}
    assert c.run(add, 1, 2) == {a: 3 for a in workers}
    with pytest.raises(Boom):
        c.run(fail, 1)
    assert c.run(pid, workers=[]) == {}                  # no worker asked: none
    assert c.run(pid, workers=[], wait=False) is None


def test_run_an_async_function(c, workers):
    """Its coroutine runs to its end there: the value comes back, or the error."""
    assert c.run(add_later, 1, 2, delay=0.05) == {a: 3 for a in workers}
    address = next(iter(workers))
    assert c.run(add_later, 2, 2, workers=[address]) == {address: 4}
    with pytest.raises(Boom, match="failed later on 1"):
        c.run(fail_later, 1)


def test_who_has_has_what_nthreads(c, workers):
    a = c.submit(inc, 1, workers=[next(iter(workers))])
    a.result(timeout=10)
    (holder,) = c.who_has([a])[a.key]
    assert holder in workers
    has_what = c.has_what()
    assert set(has_what) == set(workers)
    assert a.key in has_what[holder]
    assert c.nthreads() == {address: 1 for address in workers}
    info = c.scheduler_info()
    assert set(info["workers"]) == set(workers)
    assert info["address"] == c.address


def test_restart_drops_everything_and_keeps_working(c, tmp_path):
    gate = tmp_path / "gate"
    done = c.submit(inc, 1)
    done.result(timeout=10)
    running = c.submit(wait_for_file, str(gate), pure=False)
    wait_for(lambda: running.key in _processing(c), message="the task to start")
    c.restart()
    wait_for(lambda: running.cancelled() and done.cancelled(), message="cancellation")
    gate.touch()
    with pytest.raises(FutureCancelledError, match="reason: scheduler-restart") as e:
        running.result()
    assert e.value.reason == "scheduler-restart" and e.value.key == running.key
    assert c.who_has() == {}
    assert all(keys == [] for keys in c.run(worker_keys).values())
    assert c.submit(inc, 2).result(timeout=10) == 3
    assert c.get({"x": (inc, 1)}, "x") == 2


@pytest.mark.parametrize("how", ["cancel", "restart"])
def test_a_thread_still_running_a_forgotten_task_gets_no_new_work(c, tmp_path, how):
    """Two workers of one thread: one runs on a task its scheduler forgot.  New work
    goes to the other one until that task is over, then to both again."""
    gate = tmp_path / "gate"

    def executing():
        return sorted(w["executing"] for w in c.scheduler_info()["workers"].values())
    try:
        running = c.submit(wait_for_file, str(gate), pure=False)
        wait_for(lambda: executing() == [0, 1], message="the task to start")
        c.cancel([running]) if how == "cancel" else c.restart()
        more = c.map(inc, range(6), pure=False)
        assert c.gather(more, timeout=10) == list(range(1, 7))
        assert len({w for ws in c.who_has(more).values() for w in ws}) == 1
        assert executing() == [0, 1]
    finally:
        gate.touch()
    wait_for(lambda: executing() == [0, 0], message="the forgotten task to end")
    for address in c.scheduler_info()["workers"]:
        assert c.submit(inc, 1, workers=[address], pure=False).result(timeout=10) == 2


def test_a_shutdown_by_another_client_fails_what_waits_and_closes(cluster, tmp_path):
    """Another client stops the scheduler (in this process here): this one's pending
    Future fails with SchedulerLost at once, and this client closes and leaves the
    default stack."""
    from dask_ipy import Client, SchedulerLost
    from dask_ipy.client.default import default_clients

    s, _, c = cluster
    gate = tmp_path / "gate"
    try:
        f = c.submit(wait_for_file, str(gate), 10, "late")
        wait_for(lambda: any(w["executing"]
                             for w in c.scheduler_info()["workers"].values()),
                 message="the task to start")
        other = Client(s, set_as_default=False)
        other.shutdown()
        with pytest.raises(SchedulerLost, match="shut down"):
            f.result(timeout=5)
        wait_for(lambda: c.status == "closed", timeout=5, message="the client to close")
        assert c not in default_clients()
    finally:
        gate.touch()


def test_context_manager_closes(pc):
    with pc.client() as client:
        done = client.submit(inc, 1)
        assert done.result(timeout=10) == 2
    assert client.status == "closed"
    # As with dask.distributed, every Future of a closed client is cancelled, a
    # finished one too.
    assert done.cancelled() and done.status == "cancelled" and done.exception() is None
    with pytest.raises(FutureCancelledError, match="cancelled for reason: unknown"):
        done.result()
    with pytest.raises(dask_ipy.ClosedClientError, match="closed"):
        client.submit(inc, 1)
    assert issubclass(dask_ipy.ClosedClientError, RuntimeError)
    client.close()                                 # twice is harmless
    with client:                                   # entered again: still closed
        with pytest.raises(dask_ipy.ClosedClientError):
            client.submit(inc, 1)


def test_function_tokens_are_remembered_only_where_they_cannot_change():
    import dask_ipy.client.calls as client_module
    from dask.base import tokenize
    from dask_ipy.client.calls import _FN_TOKENS, function_token

    assert function_token(client_module.call_token, {}) == tokenize(client_module.call_token, {})
    assert client_module.call_token in _FN_TOKENS          # module function: by reference

    def local(x):
        return x

    namespace = {"__name__": "__main__"}
    exec("def main_fn(x):\n    return x + offset\noffset = 1", namespace)
    main_fn = namespace["main_fn"]
    for fn, kwargs in [(local, {}), (main_fn, {}), (client_module.call_token, {"a": 1}),
                       (len, {})]:
        assert function_token(fn, kwargs) == tokenize(fn, kwargs)
    assert local not in _FN_TOKENS and main_fn not in _FN_TOKENS


def test_a_client_without_an_address_starts_and_stops_a_local_cluster(monkeypatch):
    """As dask.distributed's: ``Client(**cluster_kwargs)`` starts a LocalCluster of
    its own, and closing the client stops its processes; with an address those
    arguments are an error."""
    import psutil

    from dask_ipy import Client, LocalCluster

    monkeypatch.delenv("DASK_IPY_SCHEDULER_FILE", raising=False)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    c = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)
    try:
        assert isinstance(c.cluster, LocalCluster)
        assert sorted(c.nthreads().values()) == [1, 1]
        assert c.submit(inc, 1).result(timeout=30) == 2
        assert dask.delayed(inc)(2).compute() == 3
        address = c.cluster.scheduler_address
    finally:
        c.close()
    assert c.cluster.status == "closed"
    wait_for(lambda: not ({p.pid for p in psutil.Process().children(recursive=True)}
                          - before), message="the cluster's processes to end")
    with pytest.raises(TypeError, match="n_workers"):
        Client(address, n_workers=2)
    with pytest.raises(TypeError, match="bogus"):
        Client(bogus=1)


def test_as_current_makes_the_client_current_in_its_block_only(pc):
    """Inside ``with other.as_current():`` the default client, `get_client`, dask's
    compute and Futures unpickled there are ``other``'s; another thread keeps the
    default; after the block all is back."""
    import pickle

    from dask_ipy import default_client, get_client

    with pc.client() as c, pc.client(set_as_default=False) as other:
        f = c.submit(inc, 1)
        blob = pickle.dumps(f)
        seen = {}
        with other.as_current() as inside:
            assert inside is other
            assert default_client() is other and get_client() is other
            assert Client.current() is other
            assert Client.current(allow_global=False) is other
            assert dask.config.get("scheduler") == other.get
            assert dask.delayed(inc)(2).compute() == 3
            assert pickle.loads(blob).client is other
            t = threading.Thread(target=lambda: seen.update(client=default_client()))
            t.start()
            t.join()
        assert seen["client"] is c
        assert default_client() is c and get_client() is c
        with pytest.raises(ValueError):
            Client.current(allow_global=False)
        assert pickle.loads(blob).client is c
        assert f.result(timeout=10) == 2


def test_a_clients_id_is_a_str_with_its_name(pc):
    with pc.client(name="hello-world") as named, pc.client() as plain:
        assert isinstance(named.id, str) and "hello-world" in named.id
        assert isinstance(plain.id, str) and plain.id != named.id
        assert named.submit(inc, 1).result(timeout=10) == 2
