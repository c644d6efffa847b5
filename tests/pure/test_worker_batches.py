"""A batch of messages from a worker does what the same messages one by one do: its
results are taken in and the worker gets the same queued tasks, in the same order
(after a run of results, in one pass)."""

import pytest

from dask_ipy.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(60)

A, B = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"


def _cluster():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.add_worker("w2", B, nthreads=1)
    keys = [f"inc-{i}" for i in range(300)]
    s.update_graph("c", {k: (f"spec-{k}", []) for k in keys}, keys)
    sent = {"w1": [], "w2": []}
    for kind, ident, msg in s.take_messages():
        if msg["op"] == "compute-task":
            sent[ident].append(msg["key"])
    # Once tasks are known to be tiny, workers hold more of them.
    s.handle_worker_message("w1", _finished(sent["w1"].pop(0), 1e-5), now=0.5)
    for kind, ident, msg in s.take_messages():
        if msg["op"] == "compute-task":
            sent[ident].append(msg["key"])
    return s, sent


def _finished(key, duration):
    return {"op": "task-finished", "key": key, "nbytes": 28, "type": "int",
            "duration": duration}


def _outcome(s):
    return [(ident, msg["op"], msg.get("key")) for _, ident, msg in s.take_messages()]


@pytest.mark.parametrize("middle", [None, "task-started", "heartbeat"])
def test_a_batch_hands_out_the_tasks_messages_one_by_one_would(middle):
    one, sent = _cluster()
    batch, _ = _cluster()
    msgs = [_finished(k, 1e-5 * (1 + i)) for i, k in enumerate(sent["w1"][:6])]
    if middle == "task-started":
        msgs.insert(3, {"op": "task-started", "key": sent["w1"][10]})
    elif middle == "heartbeat":
        msgs.insert(3, {"op": "heartbeat", "metrics": {"status": "running"}})
    for msg in msgs:
        assert one.handle_worker_message("w1", msg, now=1.0)
    assert batch.handle_worker_messages("w1", msgs, now=1.0)
    expected = _outcome(one)
    got = _outcome(batch)
    assert sorted(got) == sorted(expected)
    # Per peer, in the same order.
    for peer in ("c", "w1", "w2"):
        assert [m for m in got if m[0] == peer] == [m for m in expected if m[0] == peer]
    assert [m for m in got if m[1] == "compute-task"]
    assert {k: ts.state for k, ts in batch.tasks.items()} == \
        {k: ts.state for k, ts in one.tasks.items()}


def test_a_batch_from_a_worker_that_left_stops_there():
    s, sent = _cluster()
    s.remove_worker("w1", reason="gone")
    s.take_messages()
    assert not s.handle_worker_messages("w1", [_finished(sent["w1"][0], 1e-5)], now=1.0)
    assert not s.handle_worker_message("w1", _finished(sent["w1"][0], 1e-5), now=1.0)
