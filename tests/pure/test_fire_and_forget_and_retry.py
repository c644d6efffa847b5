"""The state machines alone: the scheduler's "fire-and-forget" (tasks that run to their
end whoever lets go of them, then are forgotten) and "retry" (erred tasks computed
again), and the client's side of a retry."""

import pytest

from dask_ipy.client.state import ClientState, Reject, Reset, Resolve
from dask_ipy.errors import SchedulerLost
from dask_ipy.scheduler.state import FIRE_AND_FORGET
from test_scheduler_state import (A, CHAIN, CHAIN_ORDER, compute, erred, finished, states,
                                  take)
from test_scheduler_state import s1  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(60)


def retry(s, *keys):
    """The scheduler's messages after a client's "retry": its reply last."""
    s.handle_client_message("c", {"op": "retry", "keys": list(keys), "request_id": 7})
    *out, reply = take(s)
    assert reply == ("client", "c", {"op": "reply", "request_id": 7, "result": None})
    return out


def ff(s, *keys):
    s.handle_client_message("c", {"op": "fire-and-forget", "keys": list(keys)})
    return take(s)


@pytest.mark.parametrize("let_go", ["release", "disconnect"])
def test_a_fired_chain_runs_to_its_end_after_the_client_lets_go_then_is_forgotten(
        s1, let_go):
    s = s1
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    assert take(s) == [("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]
    assert ff(s, "z") == []
    if let_go == "release":
        s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["z"]})
    else:
        s.remove_client("c")
    assert take(s) == []
    assert states(s) == {"x": "processing", "y": "waiting", "z": "waiting"}
    assert set(s.tasks["z"].who_wants) == {FIRE_AND_FORGET}

    assert finished(s, "w1", "x") == [
        ("worker", "w1", compute("y", "spec-y", (0, 1, 1), {"x": [A]}, {"x": 8}))]
    s.handle_worker_message("w1", {"op": "task-finished", "key": "y", "nbytes": 8,
                                   "type": "int", "duration": 0.1})
    (_, _, free), (kind, wid, msg) = s.take_messages()
    assert free == {"op": "free-keys", "keys": ["x"]}
    assert (kind, wid, msg["op"], msg["key"]) == ("worker", "w1", "compute-task", "z")
    # Nobody waits for z's value: the worker is asked to send it to no one.
    assert "want_data" not in msg and "clients" not in msg
    assert finished(s, "w1", "z") == [
        ("worker", "w1", {"op": "free-keys", "keys": ["z", "y"]})]
    assert s.tasks == {}


def test_a_fired_task_that_errs_is_forgotten_with_its_inputs(s1):
    s = s1
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    ff(s, "z")
    s.remove_client("c")
    finished(s, "w1", "x")
    # y errs, and z with it: no client hears of it, and nothing is left.
    assert erred(s, "w1", "y") == [("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    assert s.tasks == {}


def test_a_fired_task_another_client_wants_stays_when_it_ends(s1):
    s = s1
    s.add_client("d")
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    s.update_graph("d", {"x": ("spec-x", [])}, ["x"])
    take(s)
    ff(s, "x")
    s.remove_client("c")
    assert finished(s, "w1", "x") == [
        ("client", "d", {"op": "key-in-memory", "key": "x", "type": "int", "nbytes": 8})]
    assert states(s) == {"x": "memory"}
    assert set(s.tasks["x"].who_wants) == {"d"}


def test_firing_a_task_that_ended_holds_nothing(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", []), "bad": ("spec-bad", [])}, ["x", "bad"])
    take(s)
    finished(s, "w1", "x")
    erred(s, "w1", "bad")
    assert ff(s, "x", "bad", "unknown") == []
    assert s.tasks["x"].who_wants == ("c",) and s.tasks["bad"].who_wants == ("c",)
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x", "bad"]})
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    assert s.tasks == {}


# ---------------------------------------------------------------- retry

def test_retry_computes_an_erred_task_again(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    take(s)
    out = erred(s, "w1", "x")
    assert [(kind, msg["op"]) for kind, _, msg in out] == [("client", "task-erred")]
    assert retry(s, "x") == [("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]
    assert states(s) == {"x": "processing"}
    assert s.tasks["x"].error is None
    assert finished(s, "w1", "x") == [
        ("client", "c", {"op": "key-in-memory", "key": "x", "type": "int", "nbytes": 8})]


def test_retry_starts_again_from_the_erred_input(s1):
    s = s1
    s.update_graph("c", CHAIN, ["z"], CHAIN_ORDER)
    take(s)
    finished(s, "w1", "x")
    out = erred(s, "w1", "y")
    assert [(kind, msg["op"], msg.get("key")) for kind, _, msg in out] == [
        ("worker", "free-keys", None), ("client", "task-erred", "z")]
    assert states(s) == {"x": "released", "y": "erred", "z": "erred"}
    # x was released when y erred: it runs again first, then y, then z.
    assert retry(s, "z") == [("worker", "w1", compute("x", "spec-x", (0, 1, 0)))]
    assert states(s) == {"x": "processing", "y": "waiting", "z": "waiting"}
    finished(s, "w1", "x")
    finished(s, "w1", "y")
    assert finished(s, "w1", "z")[0] == (
        "client", "c", {"op": "key-in-memory", "key": "z", "type": "int", "nbytes": 8})


def test_retry_of_a_key_that_did_not_err_reports_it_again(s1):
    s = s1
    s.update_graph("c", {"x": ("spec-x", [])}, ["x"])
    take(s)
    finished(s, "w1", "x")
    out = retry(s, "x", "gone")
    assert out[0] == ("client", "c", {"op": "key-in-memory", "key": "x", "type": "int",
                                      "nbytes": 8})
    assert out[1][:2] == ("client", "c")
    assert (out[1][2]["op"], out[1][2]["key"], out[1][2]["type"]) == (
        "task-erred", "gone", "KeyError")
    assert len(out) == 2


def test_the_client_waits_again_on_the_keys_it_retries():
    cs = ClientState("tcp://10.0.0.1:5555")
    cs.answered(b"e" * 16, b"scheduler")
    bad, good = cs.hold("bad"), cs.hold("good")
    cs.handle({"op": "task-erred", "key": "bad", "type": "ValueError", "text": "no"})
    cs.handle({"op": "key-in-memory", "key": "good", "type": "int"})
    cs.take_messages()
    assert (bad.status, good.status) == ("error", "finished")
    # Only the erred one is pending again; every key asked for goes to the scheduler,
    # which reports them all again.
    assert cs.retry(["bad", "good"], "t") == [Reset(bad)]
    assert (bad.status, bad.error, good.status) == ("pending", None, "finished")
    [msg] = cs.take_messages()
    assert msg == {"op": "retry", "keys": ["bad", "good"],
                   "request_id": msg["request_id"]}
    cs.validate()
    # The scheduler answers once it has them again.
    assert cs.handle({"op": "reply", "request_id": msg["request_id"],
                      "result": None}) == [Resolve("t", None)]
    cs.handle({"op": "key-in-memory", "key": "bad", "type": "int"})
    assert bad.status == "finished"


def test_a_retry_the_scheduler_cannot_hear_is_refused_and_changes_nothing():
    cs = ClientState("tcp://10.0.0.1:5555")
    cs.answered(b"e" * 16, b"scheduler")
    bad = cs.hold("bad")
    cs.handle({"op": "task-erred", "key": "bad", "type": "ValueError", "text": "no"})
    cs.take_messages()
    cs.disconnected("gone")
    assert cs.retry(["bad"], "t") == [
        Reject("t", SchedulerLost("not connected to tcp://10.0.0.1:5555"))]
    assert bad.status == "error" and cs.take_messages() == []
