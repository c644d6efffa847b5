"""Future, wait and as_completed, against scheduler and worker processes."""

import asyncio
import collections
import concurrent.futures as cf
import gc
import pickle
import sys
import threading
import time
import types

import pytest

from helpers import (Boom, add, fail, fail_deeply, inc, raise_base_exception, slow_inc,
                     wait_for, wait_for_file)
from dask_ipy import (CancelledError, CancelledFuturesGroup, Future, FutureCancelledError,
                      FuturesCancelledError, RemoteError, as_completed, wait)
from dask_ipy.client.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from dask_ipy.errors import restore_filenames

pytestmark = pytest.mark.timeout(60)


def held(c, gate, value=None):
    return c.submit(wait_for_file, str(gate), value=value, pure=False)


# ---------------------------------------------------------------- Future

def test_result_and_status_of_a_success(c, gate):
    f = held(c, gate, value=3)
    assert isinstance(f, Future)
    assert f.status == "pending" and not f.done() and not f.cancelled()
    with pytest.raises(TimeoutError, match=f"'{f.key}' not done after 0.1 s"):
        f.result(timeout=0.1)
    with pytest.raises(cf.TimeoutError):
        f.exception(timeout=0.1)
    g = held(c, gate, value=4)
    with pytest.raises(TimeoutError, match="and 1 more not done after 0.1 s"):
        c.gather([f, g], timeout=0.1)
    # durations as strings, as dask.distributed takes them
    with pytest.raises(TimeoutError, match="not done after 0.1 s"):
        f.result(timeout="100ms")
    with pytest.raises(TimeoutError):
        f.traceback(timeout="100ms")
    with pytest.raises(TimeoutError):
        c.gather([f, g], timeout="100ms")
    gate.touch()
    assert f.result(timeout=10) == 3
    assert f.status == "finished" and f.done()
    assert f.exception() is None and f.traceback() is None
    assert f.key in repr(f) and "finished" in repr(f)
    html = f._repr_html_()
    assert "finished" in html and "builtins.int" in html
    assert f.type is int


def test_the_type_of_a_value_is_its_class_when_it_can_be_imported():
    from dask_ipy.client.futures import resolve_type
    assert resolve_type("builtins.int") is int
    assert resolve_type("collections.OrderedDict") is collections.OrderedDict
    assert resolve_type("concurrent.futures._base.Future") is cf.Future
    assert resolve_type("no_such_module_here.Thing") is None
    assert resolve_type("builtins.len") is None             # not a class
    assert resolve_type("tests.Local.<locals>.Cls") is None
    assert resolve_type(None) is None


def test_exception_and_traceback_of_a_failure(c):
    f = c.submit(fail_deeply, 1)
    exc = f.exception(timeout=10)
    assert type(exc) is ZeroDivisionError
    assert str(exc) == "inner failure with 1"
    assert f.status == "error" and f.done()
    tb = f.traceback()
    assert isinstance(tb, types.TracebackType)
    names = []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert names[-2:] == ["fail_deeply", "_inner_failure"]
    with pytest.raises(ZeroDivisionError):
        f.result()


@pytest.mark.parametrize("kind, args", [("SystemExit", (3,)), ("KeyboardInterrupt", ())])
def test_a_task_raising_system_exit_or_keyboard_interrupt_errs_catchably(c, kind, args):
    """Raised again in the client they would end its program (SystemExit(None) even
    with status 0): the client gets an Exception naming them, with the task's
    traceback, and the worker runs on."""
    f = c.submit(raise_base_exception, kind, *args)
    with pytest.raises(Exception) as e:
        f.result(timeout=10)
    assert type(e.value) is RemoteError
    assert f"the code raised {kind}({', '.join(map(repr, args))})" in str(e.value)
    assert f.status == "error"
    tb = f.traceback()
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_name == "raise_base_exception"
    with pytest.raises(RemoteError, match=kind):          # Client.run's too
        c.run(raise_base_exception, kind, *args)
    assert c.submit(inc, 1).result(timeout=10) == 2


def test_work_on_a_cancelled_future_is_cancelled_error(c):
    """As in dask.distributed: submit and map on a cancelled Future give Futures at
    once, cancelled, whose results raise CancelledError; the rest of a map runs."""
    x = c.submit(inc, 1)
    assert x.result(timeout=10) == 2
    c.cancel(x)
    on_x = c.submit(inc, x)
    assert on_x.cancelled()
    with pytest.raises(CancelledError):
        on_x.result(timeout=10)
    fs = c.map(add, [1, 2, 3], [x, x, 4])
    assert [f.cancelled() for f in fs] == [True, True, False]
    with pytest.raises(CancelledError):
        c.gather(fs[:2])
    assert fs[2].result(timeout=10) == 7


def test_a_released_future_is_cancelled_for_its_user(c):
    f = c.submit(inc, 1)
    assert f.result(timeout=10) == 2
    f.release()
    f.release()                                  # twice is harmless
    for call in (f.result, f.exception, f.retry, lambda: f.add_done_callback(print)):
        with pytest.raises(FutureCancelledError, match="released"):
            call()


def test_a_released_future_shows_cancelled_and_ends_waits(c, gate):
    f = c.submit(inc, 1)
    assert f.result(timeout=10) == 2
    pending = c.submit(wait_for_file, str(gate), pure=False)
    other = c.submit(inc, 2)
    kept = c.submit(inc, 2)                      # a second Future of other's key
    assert kept.result(timeout=10) == 3
    for one in (f, pending, other):
        one.release()
    assert (f.status, f.done(), f.cancelled()) == ("cancelled", True, True)
    assert pending.status == "cancelled"
    assert [g.status for g in as_completed([pending], timeout=10)] == ["cancelled"]
    with pytest.raises(FuturesCancelledError):
        wait([f, pending], timeout=10)
    assert other.status == kept.status == "finished"     # the key is still held


def test_a_task_error_raised_here_shows_few_frames_of_the_client(c):
    """The user's line, the call's, one of the client's, then the task's: the
    client's machinery in between is left out."""
    f = c.submit(fail, 1)
    with pytest.raises(Boom) as by_result:
        f.result()
    with pytest.raises(Boom) as by_gather:
        c.gather([f])
    for e in (by_result, by_gather):
        names = [entry.name for entry in e.traceback]
        assert names[-1] == "fail" and len(names) == 4, names


CELL = """
def outer(x):
    def inner(y):
        return 1 / y
    return inner(x)

class Model:
    def fit(self):
        raise ValueError
"""


def test_frames_of_code_sent_by_value_get_their_file_names_back(monkeypatch):
    module = types.ModuleType("cells")
    exec(compile(CELL, "<cell 7>", "exec"), vars(module))
    monkeypatch.setitem(sys.modules, "cells", module)

    def frame(name, line, below=None, module="cells"):
        return {"tb_frame": {"f_globals": {"__name__": module},
                             "f_code": {"co_filename": "<dynamic-code>", "co_name": name}},
                "tb_lineno": line, "tb_next": below}
    frames = frame("outer", 5, frame("inner", 4, frame("fit", 9, frame(
        "outer", 9, frame("gone", 2, frame("inner", 4, module="elsewhere"))))))
    restore_filenames(frames)
    found = []
    while frames is not None:
        found.append(frames["tb_frame"]["f_code"]["co_filename"])
        frames = frames["tb_next"]
    # outer, inner (nested) and a method are found by name and line; a name at a line
    # it does not have, an unknown name and an unknown module are left as they were.
    assert found == ["<cell 7>"] * 3 + ["<dynamic-code>"] * 3


def test_cancel_then_result_raises_cancelled_error(c, gate):
    f = held(c, gate)
    assert f.cancel() is True
    wait_for(f.cancelled, message="the cancellation")
    assert f.status == "cancelled" and f.done()
    with pytest.raises(CancelledError):
        f.result()
    assert f.exception() is None                 # as dask.distributed's


def test_a_cancelled_futures_error_says_its_key_and_why(c, gate):
    """As dask.distributed's: FutureCancelledError, a concurrent.futures
    CancelledError (not asyncio's), with the key, the reason ("unknown" if none was
    given) and the message; a dependent's is its input's; work submitted on a
    cancelled Future has lost its dependencies."""
    assert issubclass(FutureCancelledError, cf.CancelledError)
    assert not issubclass(FutureCancelledError, asyncio.CancelledError)
    f = held(c, gate)
    f.cancel()
    with pytest.raises(FutureCancelledError) as e:
        f.result()
    assert (e.value.key, e.value.reason, e.value.msg) == (f.key, "unknown", None)
    assert str(e.value) == f"{f.key} cancelled for reason: unknown."
    assert f.exception() is None and f.traceback() is None   # result() is what raises
    a = held(c, gate)
    b = c.submit(inc, a)
    c.cancel([a], reason="superseded", msg="a newer run took over")
    for x in (a, b):
        with pytest.raises(FutureCancelledError) as e:
            c.gather([x])
        assert (e.value.key, e.value.reason) == (x.key, "superseded")
        assert str(e.value) == (f"{x.key} cancelled for reason: superseded.\n"
                                "a newer run took over")
    on_a = c.submit(inc, a)
    with pytest.raises(FutureCancelledError, match="reason: lost dependencies"):
        on_a.result()
    # It pickles (a task may raise it) and is caught as dask_ipy's CancelledError.
    again = pickle.loads(pickle.dumps(e.value))
    assert (again.key, again.reason, again.msg) == (b.key, "superseded",
                                                    "a newer run took over")
    with pytest.raises(CancelledError):
        raise again


def test_a_key_cancelled_and_submitted_again_is_computed_again(c, gate):
    # Finished, then cancelled while its Future lives on: the same pure key
    # submitted again is a new computation, as in dask.distributed.
    f = c.submit(inc, 8)
    assert f.result() == 9
    f.cancel()
    g = c.submit(inc, 8)
    assert g.result(timeout=20) == 9 and f.cancelled() and g.status == "finished"
    del f                                 # the old Future's release keeps g's key
    wait_for(lambda: c.who_has(g)[g.key], message="g's key held on a worker")
    assert c.gather(g) == 9
    # Pending, with an explicit key; and a dependent cancelled through its input
    # then submitted again at once.
    a = c.submit(wait_for_file, str(gate), value=1, key="a")
    b = c.submit(inc, a, key="b")
    a.cancel()
    assert b.cancelled()                  # told before cancel returned
    gate.touch()
    a2 = c.submit(wait_for_file, str(gate), value=2, key="a")
    b2 = c.submit(inc, a2, key="b")
    assert b2.result(timeout=20) == 3 and a2.result() == 2
    assert a.cancelled() and b.cancelled()


def test_done_callbacks_run_once_with_the_future(c, gate):
    f = held(c, gate, value=1)
    seen = []
    ran = threading.Event()

    def callback(fut):
        seen.append(fut)
        ran.set()
    f.add_done_callback(callback)
    assert seen == []
    gate.touch()
    assert ran.wait(10)
    assert seen == [f] and seen[0].status == "finished"
    # Added after the fact: called at once (on the callback thread).
    late = []
    f.add_done_callback(late.append)
    wait_for(lambda: late == [f], message="the late callback")
    # Errors and cancellations complete futures too.
    errs = []
    g = c.submit(fail, 0)
    g.add_done_callback(errs.append)
    wait_for(lambda: errs == [g], message="the error callback")
    # A callback that raises does not break others.
    h = c.submit(inc, 1)
    h.add_done_callback(lambda fut: 1 / 0)
    later = []
    h.add_done_callback(later.append)
    wait_for(lambda: later == [h], message="the second callback")


def test_a_done_callback_may_wait_on_futures(c, gate):
    # The everyday pattern: the callback reads the result, and submits more.
    out = []
    f = held(c, gate, value=1)
    f.add_done_callback(lambda fut: out.append(fut.result() + c.submit(inc, 10).result()))
    gate.touch()
    wait_for(lambda: out == [12], message="the callback's result")
    assert c.submit(inc, 7).result(timeout=10) == 8      # the client still works
    # In the order their Futures ended, one at a time, off the caller's thread.
    order, threads = [], set()
    fs = [c.submit(inc, i, pure=False) for i in range(5)]
    wait(fs)
    for i, x in enumerate(fs):
        x.add_done_callback(lambda fut, i=i: (order.append(i),
                                              threads.add(threading.get_ident())))
    wait_for(lambda: len(order) == 5, message="the callbacks")
    assert order == [0, 1, 2, 3, 4] and threading.get_ident() not in threads


def test_futures_of_the_same_key_share_state(c):
    a, b = c.submit(inc, 5), c.submit(inc, 5)
    assert a.key == b.key and a is not b
    assert a.result(timeout=10) == 6
    assert b.done() and b.status == "finished"


def test_futures_of_the_same_key_are_distinct_objects(c):
    # As in dask.distributed: equality is identity, so each Future counts once.
    fs = [c.submit(inc, 7) for _ in range(3)]
    assert fs[0] != fs[1] and len({fs[0], fs[1]}) == 2 and fs.index(fs[2]) == 2
    done, not_done = wait(fs, timeout=10)
    assert len(done) == 3 and not not_done


def test_dropping_the_last_future_forgets_the_key(c):
    f = c.submit(inc, 1, key="ephemeral")
    f.result(timeout=10)
    del f
    gc.collect()
    wait_for(lambda: "ephemeral" not in c._info("task-states"),
             message="the key to be forgotten")


# ---------------------------------------------------------------- wait

def test_wait_all_completed(c):
    fs = c.map(slow_inc, range(4), delay=0.05)
    done, not_done = wait(fs, timeout=10)
    assert done == set(fs) and not_done == set()
    assert isinstance(done, set)


def test_wait_timeout_raises_timeout_error(c, gate):
    # As dask.distributed's wait (concurrent.futures.wait would return what is done)
    quick = c.submit(inc, 1)
    stuck = held(c, gate)
    quick.result(timeout=10)
    with pytest.raises(TimeoutError, match="1 of 2 futures not done after 0.2 s"):
        wait([quick, stuck], timeout=0.2)
    with pytest.raises(TimeoutError):
        wait(stuck, timeout="100ms")
    with pytest.raises(TimeoutError):
        wait([stuck], return_when=FIRST_COMPLETED, timeout=0.1)
    assert wait([quick, stuck], return_when=FIRST_COMPLETED, timeout=0.1).done == {quick}
    gate.touch()
    done, not_done = wait([quick, stuck], timeout=10)
    assert done == {quick, stuck} and not not_done


def test_wait_first_completed(c, gate):
    stuck = held(c, gate)
    quick = c.submit(inc, 2)
    done, not_done = wait([stuck, quick], return_when=FIRST_COMPLETED, timeout=10)
    assert done == {quick} and not_done == {stuck}
    done, _ = wait([stuck, quick], return_when="FIRST_COMPLETED", timeout=10)
    assert done == {quick}


def test_wait_first_exception(c, gate):
    stuck = held(c, gate)
    fine = c.submit(inc, 3)
    fine.result(timeout=10)
    bad = c.submit(fail, 1)
    done, not_done = wait([stuck, fine, bad], return_when=FIRST_EXCEPTION, timeout=10)
    assert bad in done and fine in done and not_done == {stuck}
    # Without an exception it waits for everything (here: until the timeout).
    with pytest.raises(TimeoutError):
        wait([stuck, fine], return_when=FIRST_EXCEPTION, timeout=0.2)


def test_wait_rejects_unknown_conditions(c):
    with pytest.raises(ValueError):
        wait([c.submit(inc, 1)], return_when="SOMETIMES")
    assert ALL_COMPLETED == "ALL_COMPLETED"


def test_wait_on_cancelled_futures_raises_their_errors_grouped_by_reason(c, gate):
    """As dask.distributed's: once done, cancelled Futures make `wait` (and
    `Client.futures_of`) raise FuturesCancelledError, a CancelledError holding
    each one's FutureCancelledError, grouped by reason, the largest group first."""
    ok = c.submit(inc, 1)
    ok.result(timeout=10)           # before the held tasks take the workers' threads
    a, b, d = (held(c, gate, value=i) for i in range(3))
    c.cancel([a, b], reason="superseded", msg="a newer run took over")
    d.cancel()
    with pytest.raises(FuturesCancelledError) as e:
        wait([a, b, d, ok], timeout=10)
    assert isinstance(e.value, CancelledError)
    superseded, unknown = e.value.error_groups
    assert isinstance(superseded, CancelledFuturesGroup)
    assert superseded.reason == "superseded" and unknown.reason == "unknown"
    assert sorted(err.key for err in superseded.errors) == sorted([a.key, b.key])
    assert [err.key for err in unknown.errors] == [d.key]
    assert all(isinstance(err, FutureCancelledError)
               for g in e.value.error_groups for err in g.errors)
    assert str(e.value) == "\n".join([
        "3 Futures cancelled:", "Reasons:",
        "2 Futures cancelled for reason: superseded.\nMessage: a newer run took over"
        f"\nFutures: {[err.key for err in superseded.errors]}",
        f"1 Future cancelled for reason: unknown.\nMessage: None\nFuture: {[d.key]}"])
    again = pickle.loads(pickle.dumps(e.value))
    assert [len(g.errors) for g in again.error_groups] == [2, 1]
    with pytest.raises(FuturesCancelledError, match="1 Future cancelled"):
        c.futures_of([ok, d])
    gate.touch()                    # the cancelled tasks that run leave their threads
    assert wait([ok], timeout=10).done == {ok}


# ---------------------------------------------------------------- as_completed

def test_as_completed_yields_in_completion_order(c, gate):
    # Dependencies force the completion order: a, then b, then d.
    a = held(c, gate, value=1)
    b = c.submit(inc, a)
    d = c.submit(inc, b)
    it = as_completed([d, b, a])
    gate.touch()
    assert [next(it), it.next(), next(it)] == [a, b, d]     # .next(), as distributed
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_times_out_waiting_for_the_next_one(c, gate):
    done = c.submit(inc, 1)
    done.result()
    it = as_completed([done, held(c, gate)], timeout=0.5)
    assert next(it) is done                 # finished ones come out in time
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="1 futures not done"):
        next(it)
    assert time.monotonic() - began < 5

    async def main():
        ait = as_completed([held(c, gate, value=2)], timeout="200ms")
        with pytest.raises(TimeoutError):
            await ait.__anext__()
    asyncio.run(main())


def test_as_completed_with_results_and_add(c):
    first = c.map(inc, range(3))
    ac = as_completed(first, with_results=True)
    results = []
    added = False
    for future, result in ac:
        results.append(result)
        if not added:
            ac.add(c.submit(inc, 100))
            added = True
    assert sorted(results) == [1, 2, 3, 101]


def test_as_completed_raises_errors_with_results(c):
    ac = as_completed([c.submit(fail, 1)], with_results=True)
    with pytest.raises(Boom):
        next(ac)
    cancelled = c.submit(inc, 5)
    cancelled.cancel()
    ac = as_completed([c.submit(fail, 2), c.submit(inc, 1), cancelled], with_results=True,
                      raise_errors=False)
    out = dict((f.key, r) for f, r in ac)
    assert len(out) == 3
    typ, exc, tb = next(r for r in out.values() if isinstance(r, tuple))
    assert typ is Boom and isinstance(exc, Boom) and tb.tb_frame.f_code.co_name == "fail"
    assert isinstance(out[cancelled.key], CancelledError)
    assert 2 in out.values()


def test_as_completed_with_results_hands_out_a_cancelled_future_and_raises_errors(c, gate):
    cancelled = c.submit(wait_for_file, str(gate), pure=False)
    ac = as_completed([cancelled, c.submit(inc, 1)], with_results=True)
    cancelled.cancel()
    out = dict((f.key, r) for f, r in ac)           # nothing raised
    assert isinstance(out[cancelled.key], CancelledError) and 2 in out.values()
    ac = as_completed([c.submit(fail, 3), cancelled], with_results=True)
    with pytest.raises(Boom):
        list(ac)


def test_as_completed_takes_only_futures(c):
    with pytest.raises(TypeError, match="Input must be a future, got 1"):
        as_completed([1, 2, 3])
    ac = as_completed()
    with pytest.raises(TypeError, match="got 'x'"):
        ac.update([c.submit(inc, 1), "x"])
    assert ac.count() == 0                          # none of them added
    with pytest.raises(TypeError):
        ac.add(None)


def test_as_completed_of_nothing_stops_at_once():
    assert list(as_completed([])) == []


def test_as_completed_handles_already_finished_futures(c):
    fs = c.map(inc, range(5))
    c.gather(fs)
    assert set(as_completed(fs)) == set(fs)


def test_as_completed_counts_what_is_left_and_hands_out_batches(c, gate):
    a, b = held(c, gate, 1), held(c, gate, 2)
    ac = as_completed([a, b])
    ac.add(a)                                 # added twice: handed out twice
    assert (ac.count(), len(ac), ac.is_empty(), ac.has_ready()) == (3, 3, False, False)
    assert ac.next_batch(block=False) == []
    gate.touch()
    # Done callbacks run in the order they were added: as_completed's before wait's.
    wait([a, b], timeout=10)
    assert ac.has_ready() and ac.count() == 3
    batch = ac.next_batch(block=False)
    assert sorted(f.key for f in batch) == sorted([a.key, a.key, b.key])
    assert (ac.count(), ac.is_empty(), ac.has_ready()) == (0, True, False)
    assert ac.next_batch(block=False) == []
    with pytest.raises(StopIteration):
        ac.next_batch()


def test_as_completed_batches_until_every_future_is_handed_out(c, gate):
    first = held(c, gate, 0)
    ac = as_completed([first], with_results=True)
    ac.update(c.map(inc, range(5)))
    batches = []
    for batch in ac.batches():
        batches.append(batch)
        if len(batches) == 1:
            assert all(f is not first for f, _ in batch)
            gate.touch()
    assert sorted(r for batch in batches for _, r in batch) == [0, 1, 2, 3, 4, 5]
    assert all(batches)
    assert list(as_completed().batches()) == []


def test_as_completed_clear_drops_finished_and_pending_futures(c, gate):
    pending = held(c, gate, 1)
    finished = c.submit(inc, 1)
    ac = as_completed([pending, finished])
    wait([finished], timeout=10)
    assert ac.has_ready()
    ac.clear()
    assert (ac.count(), ac.is_empty(), ac.has_ready()) == (0, True, False)
    assert list(ac) == []
    gate.touch()
    wait([pending], timeout=10)
    assert ac.count() == 0 and not ac.has_ready()       # its late callback is void
    ac.add(pending)
    assert list(ac) == [pending]


def test_as_completed_clear_ends_an_iteration_waiting_in_another_thread(c, gate):
    ac = as_completed([held(c, gate)])
    got = []
    t = threading.Thread(target=lambda: got.append(list(ac)), daemon=True)
    t.start()
    wait_for(lambda: len(ac.cond._waiters) == 1, message="the iteration to wait")
    ac.clear()
    t.join(10)
    assert not t.is_alive() and got == [[]]


def test_as_completed_shared_by_two_threads_ends_for_both(c, gate):
    f = held(c, gate, 1)
    ac = as_completed([f])
    got = []
    threads = [threading.Thread(target=lambda: got.append(list(ac)), daemon=True)
               for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(ac.cond._waiters) == 2, message="both threads to wait")
    gate.touch()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert sorted(got, key=len) == [[], [f]]


def _reschedule_once(marker):
    """Raise Reschedule the first time (on whichever worker), then answer where."""
    import os

    from dask_ipy import Reschedule, get_worker

    if not os.path.exists(marker):
        open(marker, "w").close()
        raise Reschedule()
    return get_worker().address


def test_a_task_raising_reschedule_runs_again(c, tmp_path):
    marker = str(tmp_path / "rescheduled")
    f = c.submit(_reschedule_once, marker, pure=False)
    g = c.submit(len, f)
    assert f.result(timeout=20) in {w for w in c.scheduler_info()["workers"]}
    assert g.result(timeout=20) == len(f.result())
    # No thread stays counted for the run that gave up (a result that came
    # straight may be here before the scheduler heard of it: waited for).
    wait_for(lambda: all(w["metrics"]["executing"] == 0
                         for w in c.scheduler_info()["workers"].values()),
             message="the workers' threads to be free")


def test_a_graph_on_a_cancelled_future_is_cancelled(c):
    """As in dask.distributed: a graph on a cancelled Future is no error when it is
    given; its tasks that need that key are cancelled (``compute`` and ``persist``
    return at once, their results raise CancelledError; a ``get`` raises it), and
    nothing of them reaches the scheduler.  Its other tasks run."""
    import dask

    x = c.submit(inc, 1)
    assert x.result(timeout=10) == 2
    c.cancel(x)
    on_x = dask.delayed(inc)(x)
    computed = c.compute(on_x)
    assert computed.cancelled()
    with pytest.raises(CancelledError):
        computed.result(timeout=10)
    with pytest.raises(CancelledError):
        c.persist(on_x).compute()
    with pytest.raises(CancelledError):
        c.get({"y": (inc, x)}, "y")
    with pytest.raises(CancelledError):
        c.get({"x": x, "y": (inc, (inc, "x"))}, "y")
    with pytest.raises(CancelledError):
        dask.compute(on_x, scheduler=c.get)
    both = c.compute([on_x, dask.delayed(inc)(10)])
    assert both[0].cancelled() and both[1].result(timeout=10) == 11
    del both
    wait_for(lambda: c.scheduler_info()["ntasks"] == 0, message="no task left")
