"""Moving data between workers, decided without I/O: the plans of scheduler/moves.py on
plain data, then SchedulerState carrying out retire_workers, replicate and rebalance
message by message (what it asks of whom, and when it answers), and the cluster
requests beside them (worker plugins, wait_for_workers, restart_workers, events for
scheduler plugins).  Invariants are checked after every transition."""

import pytest

from dask_ipy.scheduler.moves import plan_rebalance, plan_replicas, plan_retirement
from dask_ipy.scheduler.state import CLOSING_GRACEFULLY, MEMORY, SchedulerState

pytestmark = pytest.mark.timeout(60)

A, B, C = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1", "tcp://10.0.0.3:1"


# ---------------------------------------------------------------- the plans

def test_a_retiring_workers_keys_go_largest_first_to_the_lightest_worker():
    plan = plan_retirement({"a": 300, "b": 200, "c": 100, "d": 100}, {B: 0, C: 250})
    # a -> B (300); b -> C (450); c -> B (400); d -> B (500)
    assert plan == {"a": B, "b": C, "c": B, "d": B}


def test_no_worker_stays_no_plan():
    assert plan_retirement({"a": 1}, {}) == {}


def test_replicas_are_added_on_the_lightest_and_dropped_from_the_heaviest():
    keys = {"x": (100, [A]), "y": (50, [A, B, C])}
    acquire, drop = plan_replicas(keys, 2, [A, B, C], {A: 150, B: 50, C: 50})
    # x: one more copy, on B (B and C tie at 50: the first address); then y has one
    # copy too many, and A and B both hold 150: A's goes.
    assert acquire == {"x": [B]}
    assert drop == {"y": [A]}


def test_replicas_on_all_workers_by_default_and_only_among_those_allowed():
    keys = {"x": (100, [A])}
    assert plan_replicas(keys, None, [A, B, C], {}) == ({"x": [B, C]}, {})
    assert plan_replicas(keys, None, [A, C], {}) == ({"x": [C]}, {})
    # no copy among the allowed workers to start from: nothing to do
    assert plan_replicas(keys, 2, [B, C], {}) == ({}, {})


def test_rebalance_moves_until_no_move_would_help():
    keys = {f"k{i}": (100, [A]) for i in range(4)}
    moves = plan_rebalance(keys, {A: 400, B: 0, C: 0})
    # After two moves A holds 200 and B, C 100 each: a third move would leave A
    # below its taker.
    assert moves == [("k0", A, B), ("k1", A, C)]


def test_rebalance_never_makes_things_worse_nor_moves_to_a_holder():
    assert plan_rebalance({"k": (100, [A])}, {A: 100, B: 0}) == []
    keys = {"k": (100, [A, B]), "j": (100, [A])}
    assert plan_rebalance(keys, {A: 300, B: 100}) == [("j", A, B)]


# ---------------------------------------------------------------- the state

def take(s):
    return s.take_messages()


def ops(out, op):
    return [(ident, msg) for _, ident, msg in out if msg.get("op") == op]


def in_memory(s, key, wid, nbytes=100):
    """Compute ``key`` (no inputs) on the worker it goes to, then on ``wid`` in fact:
    the state sees only what the workers tell it."""
    s.handle_client_message("c", {"op": "update-graph", "tasks": [(key, "spec", [])],
                                  "keys": [key]})
    ts = s.tasks[key]
    if ts.processing_on is None or ts.processing_on.id != wid:
        # place it by hand on the worker the test wants (a steal, as the state does it)
        if ts.processing_on is not None:
            s._request_steal(ts, ts.processing_on, s.workers[wid])
            s.handle_worker_message(ts.processing_on.id,
                                    {"op": "steal-response", "key": key,
                                     "released": True})
    assert ts.processing_on.id == wid
    s.handle_worker_message(wid, {"op": "task-finished", "key": key, "nbytes": nbytes,
                                  "type": "int", "duration": 0.1})
    assert ts.state == MEMORY
    take(s)


@pytest.fixture
def s():
    """Client 'c'; workers 'w1' (A), 'w2' (B), one thread each."""
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_worker("w1", A)
    s.add_worker("w2", B)
    take(s)
    return s


def test_retire_moves_unique_data_first_then_removes_and_closes(s):
    in_memory(s, "x", "w1")
    in_memory(s, "y", "w2")
    s.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                  "request_id": 7, "close": True, "remove": True})
    out = take(s)
    # w2 is asked for a copy of x, from A; nothing else happens yet
    assert ops(out, "acquire-replicas") == [
        ("w2", {"op": "acquire-replicas", "who_has": {"x": [A]}, "nbytes": {"x": 100}})]
    assert not ops(out, "reply") and not ops(out, "close")
    assert s.workers["w1"].status == CLOSING_GRACEFULLY
    # while it retires, no task goes to w1
    s.handle_client_message("c", {"op": "update-graph", "tasks": [("z", "spec", [])],
                                  "keys": ["z"]})
    assert s.tasks["z"].processing_on.id == "w2"
    take(s)
    # the copy is confirmed: w1 leaves, closed, and the client hears
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [("x", 100, None)]})
    out = take(s)
    assert "w1" not in s.workers
    assert ops(out, "close") == [("w1", {"op": "close"})]
    (reply,) = ops(out, "reply")
    assert reply[0] == "c" and list(reply[1]["result"]) == [A]
    assert reply[1]["result"][A]["name"] == A
    # x was never recomputed: in memory on B, its type kept
    assert not ops(out, "compute-task")
    x = s.tasks["x"]
    assert x.state == MEMORY and [w.address for w in x.who_has] == [B]
    assert x.type == "int"


def test_retire_waits_for_running_tasks_and_hands_back_queued_ones(s):
    s.handle_client_message("c", {"op": "update-graph", "keys": ["a", "b"],
                                  "tasks": [("a", "spec", []), ("b", "spec", [])]})
    take(s)
    w1 = s.workers["w1"]
    a = next(ts for ts in w1.processing)
    s.handle_worker_message("w1", {"op": "task-started", "key": a.key})
    # one more task queued on w1 (placed there by hand, as a steal would)
    s.handle_client_message("c", {"op": "update-graph", "keys": ["q"],
                                  "tasks": [("q", "spec", [])]})
    q = s.tasks["q"]
    if q.processing_on is not w1:
        s._request_steal(q, q.processing_on, w1)
        s.handle_worker_message(q.processing_on.id, {"op": "steal-response", "key": "q",
                                                     "released": True})
    take(s)
    s.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                  "request_id": 1, "close": False, "remove": True})
    out = take(s)
    # the queued task is asked back; the running one stays
    assert ops(out, "steal-request") == [("w1", {"op": "steal-request", "key": "q"})]
    s.handle_worker_message("w1", {"op": "steal-response", "key": "q", "released": True,
                                   "state": "ready"})
    out = take(s)
    assert q.processing_on.id == "w2"
    assert not ops(out, "reply")
    # the running task ends on w1; its result then moves to w2 before w1 leaves
    s.handle_worker_message("w1", {"op": "task-finished", "key": a.key, "nbytes": 8,
                                   "type": "int", "duration": 0.1})
    out = take(s)
    assert ops(out, "acquire-replicas") == [
        ("w2", {"op": "acquire-replicas", "who_has": {a.key: [A]},
                "nbytes": {a.key: 8}})]
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [(a.key, 8, None)]})
    out = take(s)
    assert "w1" not in s.workers and not ops(out, "close")     # close=False
    assert [list(r["result"]) for _, r in ops(out, "reply")] == [[A]]


def test_a_worker_whose_data_has_nowhere_to_go_is_not_retired(s):
    in_memory(s, "x", "w1")
    in_memory(s, "y", "w2")
    s.handle_client_message("c", {"op": "retire-workers", "workers": [A, B],
                                  "request_id": 1, "close": True})
    out = take(s)
    assert ops(out, "reply") == [("c", {"op": "reply", "request_id": 1, "result": {}})]
    assert {ws.status for ws in s.workers.values()} == {"running"}
    assert not ops(out, "acquire-replicas") and not ops(out, "close")


def test_a_failing_copy_is_asked_again_then_the_worker_stays(s):
    in_memory(s, "x", "w1")
    s.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                  "request_id": 1})
    for attempt in range(3):
        out = take(s)
        assert [m["who_has"] for _, m in ops(out, "acquire-replicas")] == [{"x": [A]}], \
            attempt
        s.handle_worker_message("w2", {"op": "missing-data", "key": None, "dep": "x",
                                       "holder": None})
    out = take(s)
    assert ops(out, "reply") == [("c", {"op": "reply", "request_id": 1, "result": {}})]
    assert s.workers["w1"].status == "running"


def test_a_retiring_worker_that_dies_is_retired_and_its_data_recomputed(s):
    in_memory(s, "x", "w1")
    s.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                  "request_id": 1})
    take(s)
    s.remove_worker("w1", reason="died")
    out = take(s)
    assert [list(r["result"]) for _, r in ops(out, "reply")] == [[A]]
    assert [m["key"] for _, m in ops(out, "compute-task")] == ["x"]


def test_replicate_asks_for_copies_and_answers_once_they_are_made(s):
    in_memory(s, "x", "w1")
    s.handle_client_message("c", {"op": "replicate", "keys": ["x"], "n": None,
                                  "request_id": 3})
    out = take(s)
    assert ops(out, "acquire-replicas") == [
        ("w2", {"op": "acquire-replicas", "who_has": {"x": [A]}, "nbytes": {"x": 100}})]
    assert not ops(out, "reply")
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [("x", 100, None)]})
    out = take(s)
    assert ops(out, "reply") == [("c", {"op": "reply", "request_id": 3,
                                        "result": {"status": "OK"}})]
    assert {w.address for w in s.tasks["x"].who_has} == {A, B}
    # down to one copy: the one on the worker holding more goes at once
    s.handle_client_message("c", {"op": "replicate", "keys": ["x"], "n": 1,
                                  "request_id": 4})
    out = take(s)
    assert ops(out, "free-keys") == [("w1", {"op": "free-keys", "keys": ["x"]})]
    assert ops(out, "reply") == [("c", {"op": "reply", "request_id": 4,
                                        "result": {"status": "OK"}})]
    assert [w.address for w in s.tasks["x"].who_has] == [B]


def test_rebalance_drops_the_senders_copy_once_the_recipients_is_confirmed(s):
    for k in ("k0", "k1", "k2", "k3"):
        in_memory(s, k, "w1")
    s.handle_client_message("c", {"op": "rebalance", "keys": None, "request_id": 5})
    out = take(s)
    ((who, msg),) = ops(out, "acquire-replicas")
    assert who == "w2" and sorted(msg["who_has"]) == ["k0", "k1"]
    assert not ops(out, "free-keys")
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [("k0", 100, None),
                                                              ("k1", 100, None)]})
    out = take(s)
    assert sorted(k for _, m in ops(out, "free-keys") for k in m["keys"]) == ["k0", "k1"]
    assert {i for i, _ in ops(out, "free-keys")} == {"w1"}
    assert ops(out, "reply") == [("c", {"op": "reply", "request_id": 5,
                                        "result": {"status": "OK"}})]
    assert {k: [w.address for w in ts.who_has] for k, ts in s.tasks.items()} == {
        "k0": [B], "k1": [B], "k2": [A], "k3": [A]}


def test_rebalance_of_keys_not_in_memory_fails_whole(s):
    s.handle_client_message("c", {"op": "rebalance", "keys": ["nope"], "request_id": 5})
    assert ops(take(s), "reply") == [("c", {"op": "reply", "request_id": 5, "result": {
        "status": "partial-fail", "keys": ["nope"]}})]


def test_worker_plugins_reach_running_workers_now_and_late_joiners_later(s):
    s.handle_client_message("c", {"op": "register-worker-plugin", "name": "p",
                                  "plugin": b"blob", "request_id": 9})
    out = take(s)
    sent = sorted((i, m["name"], m["plugin"]) for i, m in ops(out, "plugin-add"))
    assert sent == [("w1", "p", b"blob"), ("w2", "p", b"blob")]
    (rid,) = {m["request_id"] for _, m in ops(out, "plugin-add")}
    for wid in ("w1", "w2"):
        s.handle_worker_message(wid, {"op": "run-result", "request_id": rid,
                                      "status": "OK"})
    (reply,) = ops(take(s), "run-result")
    assert reply[1]["results"] == {A: {"status": "OK"}, B: {"status": "OK"}}
    # a worker joining later gets it before any task, without a request
    s.add_worker("w3", C)
    out = take(s)
    assert [m for _, i, m in out if i == "w3"][:2] == [
        {"op": "registered"}, {"op": "plugin-add", "name": "p", "plugin": b"blob"}]


def test_wait_for_workers_answers_when_enough_have_come_or_when_told(s):
    t1 = s.wait_for_workers("c", 1, 2)
    assert ops(take(s), "reply") == [("c", {"op": "reply", "request_id": 1,
                                            "result": {"ok": True, "workers": 2}})]
    t3 = s.wait_for_workers("c", 2, 3)
    assert take(s) == []
    s.add_worker("w3", C)
    assert ops(take(s), "reply") == [("c", {"op": "reply", "request_id": 2,
                                            "result": {"ok": True, "workers": 3}})]
    t4 = s.wait_for_workers("c", 3, 4)
    s.stop_waiting_for_workers(t4)
    assert ops(take(s), "reply") == [("c", {"op": "reply", "request_id": 3,
                                            "result": {"ok": False, "workers": 3}})]
    s.stop_waiting_for_workers(t1)          # answered already: nothing more
    s.stop_waiting_for_workers(t3)
    assert take(s) == []


def test_restart_workers_answers_once_they_register_again(s):
    in_memory(s, "x", "w1")
    token = s.restart_workers("c", 4, [A, "nobody"])
    out = take(s)
    assert ops(out, "restart-worker") == [("w1", {"op": "restart-worker"})]
    assert "w1" not in s.workers
    assert [m["key"] for _, m in ops(out, "compute-task")] == ["x"]   # its data is lost
    s.add_worker("w1-new", A)
    out = take(s)
    assert ops(out, "reply") == [("c", {"op": "reply", "request_id": 4, "result": {
        A: "OK", "nobody": "unknown"}})]
    assert [e for _, e in s.events["all"]][-2:] == [
        {"action": "restart-workers", "workers": [A], "client": "c"},
        {"action": "add-worker", "worker": A}]
    s.restart_timed_out(token)              # too late: nothing more
    assert not ops(take(s), "reply")


def test_restart_workers_times_out_for_those_that_do_not_come_back(s):
    token = s.restart_workers("c", 4, [A, B])
    take(s)
    s.add_worker("w2-new", B)
    assert not ops(take(s), "reply")
    s.restart_timed_out(token)
    assert ops(take(s), "reply") == [("c", {"op": "reply", "request_id": 4, "result": {
        B: "OK", A: "timed out"}})]


def test_plugin_events_are_reported_only_when_asked_for(s):
    in_memory(s, "x", "w1")
    assert s.plugin_events is None
    s.plugin_events = []
    s.handle_client_message("c", {"op": "update-graph", "keys": ["y"],
                                  "tasks": [("y", "spec", ["x"])]})
    wid = s.tasks["y"].processing_on.id
    s.handle_worker_message(wid, {"op": "task-finished", "key": "y", "nbytes": 1,
                                  "type": "int", "duration": 0.5, "start": 100.0})
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["y"]})
    events = s.plugin_events
    assert events[-1] == ("transition", "y", "memory", "forgotten")
    assert [e[1:] for e in events if e[0] == "transition" and e[1] == "y"] == [
        ("y", "released", "waiting"), ("y", "waiting", "processing"),
        ("y", "processing", "memory", {"worker": s.workers[wid].address, "nbytes": 1,
                                       "typename": "int", "startstops": [
                                           {"action": "compute", "start": 100.0,
                                            "stop": 100.5}]}),
        ("y", "memory", "forgotten")]
    # The graph comes before its tasks' first moves, with their priorities.
    first = events.index(("transition", "y", "released", "waiting"))
    kind, client, keys, tasks, annotations, priority = events[first - 1]
    assert (kind, client, keys, tasks, annotations) == ("update_graph", "c", ["y"],
                                                        ["y"], {})
    assert list(priority) == ["y"] and isinstance(priority["y"], tuple)


# ---------------------------------------------------------------- paused workers

def heartbeat(s, wid, status, now):
    """A worker's heartbeat saying whether its memory keeps it paused."""
    assert s.handle_worker_message(wid, {"op": "heartbeat", "metrics": {
        "status": status, "memory": 90, "managed": 30, "spilled": 20,
        "memory_limit": 100}}, now=now)


def pause(s, *wids):
    for wid in wids:
        heartbeat(s, wid, "paused", now=1.0)
    take(s)


@pytest.fixture
def s3(s):
    """Workers w1 (A), w2 (B), w3 (C)."""
    s.add_worker("w3", C)
    take(s)
    return s


def test_a_paused_worker_is_retired_its_data_copied_to_a_running_one(s3):
    in_memory(s3, "x", "w1")
    pause(s3, "w1", "w2")
    s3.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                   "request_id": 1, "close": True})
    out = take(s3)
    # w1 serves its data though paused; the copy goes to w3, never to paused w2
    assert ops(out, "acquire-replicas") == [
        ("w3", {"op": "acquire-replicas", "who_has": {"x": [A]}, "nbytes": {"x": 100}})]
    assert s3.workers["w1"].status == CLOSING_GRACEFULLY
    # its pause is still timed while it retires
    heartbeat(s3, "w1", "running", now=3.0)
    assert s3.workers["w1"].status == CLOSING_GRACEFULLY
    assert s3.workers["w1"].time_paused == 2.0
    s3.handle_worker_message("w3", {"op": "add-keys", "keys": [("x", 100, None)]})
    out = take(s3)
    assert "w1" not in s3.workers and ops(out, "close") == [("w1", {"op": "close"})]
    assert [list(r["result"]) for _, r in ops(out, "reply")] == [[A]]
    assert [w.address for w in s3.tasks["x"].who_has] == [C]


def test_a_key_a_paused_worker_also_holds_is_not_copied(s):
    in_memory(s, "x", "w1")
    s.handle_client_message("c", {"op": "replicate", "keys": ["x"], "n": None,
                                  "request_id": 1})
    s.handle_worker_message("w2", {"op": "add-keys", "keys": [("x", 100, None)]})
    pause(s, "w2")
    s.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                  "request_id": 2})
    out = take(s)
    assert not ops(out, "acquire-replicas")
    assert [list(r["result"]) for _, r in ops(out, "reply")] == [[A]]
    assert [w.address for w in s.tasks["x"].who_has] == [B]


def test_with_only_paused_workers_left_a_worker_is_not_retired(s):
    in_memory(s, "x", "w1")
    pause(s, "w1", "w2")
    s.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                  "request_id": 1})
    out = take(s)
    assert ops(out, "reply") == [("c", {"op": "reply", "request_id": 1, "result": {}})]
    assert not ops(out, "acquire-replicas")
    # it is back as its memory has it: paused
    assert s.workers["w1"].status == "paused"


def test_copies_asked_of_a_worker_that_pauses_are_asked_elsewhere(s3):
    in_memory(s3, "x", "w1")
    s3.handle_client_message("c", {"op": "retire-workers", "workers": [A],
                                   "request_id": 1})
    ((first, _),) = ops(take(s3), "acquire-replicas")
    other = ({"w2", "w3"} - {first}).pop()
    heartbeat(s3, first, "paused", now=1.0)
    out = take(s3)
    assert ops(out, "acquire-replicas") == [
        (other, {"op": "acquire-replicas", "who_has": {"x": [A]},
                 "nbytes": {"x": 100}})]
    s3.handle_worker_message(other, {"op": "add-keys", "keys": [("x", 100, None)]})
    assert [list(r["result"]) for _, r in ops(take(s3), "reply")] == [[A]]


def test_replicate_and_rebalance_leave_paused_workers_out(s3):
    for k in ("k0", "k1", "k2", "k3"):
        in_memory(s3, k, "w1")
    pause(s3, "w2")
    s3.handle_client_message("c", {"op": "replicate", "keys": ["k0"], "n": None,
                                   "request_id": 1})
    assert [i for i, _ in ops(take(s3), "acquire-replicas")] == ["w3"]
    s3.handle_worker_message("w3", {"op": "add-keys", "keys": [("k0", 100, None)]})
    take(s3)
    s3.handle_client_message("c", {"op": "rebalance", "keys": None, "request_id": 2})
    assert {i for i, _ in ops(take(s3), "acquire-replicas")} <= {"w3"}


def test_worker_plugins_reach_paused_workers_too(s):
    pause(s, "w2")
    s.handle_client_message("c", {"op": "register-worker-plugin", "name": "p",
                                  "plugin": b"blob", "request_id": 9})
    assert sorted(i for i, _ in ops(take(s), "plugin-add")) == ["w1", "w2"]


def test_wait_for_workers_counts_a_paused_worker_once_it_runs_again(s):
    pause(s, "w2")
    s.wait_for_workers("c", 1, 2)
    assert take(s) == []
    heartbeat(s, "w2", "running", now=2.0)
    assert ops(take(s), "reply") == [("c", {"op": "reply", "request_id": 1,
                                            "result": {"ok": True, "workers": 2}})]
