"""ClientState alone: calls and the scheduler's messages in, messages and instructions
out, compared literally.  Invariants are checked after every step."""

import pytest

from dask_ipy.client.state import (ClientState, Close, Done, FutureState, Reject, Reset,
                                   Resolve, Warn)
from dask_ipy.errors import ClosedClientError, PausedWorkerWarning, SchedulerLost

pytestmark = pytest.mark.timeout(30)

ADDRESS = "tcp://10.0.0.1:5555"
EPOCH, LATER_EPOCH = b"e" * 16, b"f" * 16


@pytest.fixture
def cs():
    cs = ClientState(ADDRESS, paused_warning=60.0)
    assert cs.answered(EPOCH, b"scheduler") == []
    assert cs.request({"op": "register-client"}, "t-welcome", welcome=True) == []
    assert cs.handle({"op": "welcome", "id": "s"}) == [Resolve("t-welcome",
                                                            {"op": "welcome", "id": "s"})]
    assert cs.start()
    cs.take_messages()
    cs.validate()
    return cs


def step(cs, out):
    cs.validate()
    return out


def statuses(cs):
    return {key: st.status for key, st in cs.futures.items()}


def test_a_released_state_is_cancelled_once_no_future_holds_its_key(cs):
    a = cs.hold("x")
    cs.hold("x")
    cs.drop(["x"])
    assert step(cs, cs.released(a)) == [] and a.status == "pending"
    cs.drop(["x"])
    assert step(cs, cs.released(a)) == [Done(a)] and a.status == "cancelled"
    assert a.error == {"reason": None, "msg": None}
    assert step(cs, cs.released(a)) == []
    b = cs.hold("x")                              # the key held again: a new state
    assert b is not a and b.status == "pending"


def test_holders_are_counted_and_the_last_one_gone_releases_the_key(cs):
    a = cs.hold("x")
    assert cs.hold("x") is a and cs.refcount == {"x": 2}
    assert step(cs, cs.drop(["x"])) == []
    assert cs.take_messages() == []
    assert step(cs, cs.drop(["x"])) == ["x"]
    assert cs.futures == {} and cs.refcount == {}
    assert cs.take_messages() == [{"op": "client-releases-keys", "keys": ["x"]}]
    # Releases of many dropped keys leave as one message.
    cs.hold_many(["y", "z"])
    cs.drop(["y"])
    cs.drop(["z"])
    assert step(cs, cs.take_messages()) == [
        {"op": "client-releases-keys", "keys": ["y", "z"]}]
    assert cs.take_messages() == []


def test_releases_keep_their_place_among_the_messages(cs):
    # Futures only passed as arguments: dropped once the graph that uses them is
    # sent, which must reach the scheduler before they are released.
    cs.hold_many(["a", "b"])
    uses = {"op": "update-graph", "keys": ["c"], "tasks": [("c", "spec", ["a", "b"], 0)]}
    cs.send(uses)
    cs.drop(["a"])
    cs.drop(["b"])
    # "a" submitted again after its release: the release must not undo it.
    cs.hold("a")
    again = {"op": "update-graph", "keys": ["a"], "tasks": [("a", "spec", [], 0)]}
    cs.send(again)
    assert step(cs, cs.take_messages()) == [
        uses, {"op": "client-releases-keys", "keys": ["a", "b"]}, again]



def test_what_needs_another_clients_messages_waits_for_them(cs):
    # Sent before the wait: leaves at once; after: once the other client's
    # messages have reached the scheduler (its answer came), releases included.
    before = {"op": "update-graph", "keys": ["a"], "tasks": [("a", "spec", [], 0)]}
    cs.send(before)
    cs.wait_for("lender's answer")
    uses = {"op": "update-graph", "keys": ["b"], "tasks": [("b", "spec", ["x"], 0)]}
    cs.send(uses)
    cs.hold("c")
    cs.drop(["c"])
    assert step(cs, cs.take_messages()) == [before]
    assert step(cs, cs.take_messages()) == []
    cs.waited("lender's answer")
    assert step(cs, cs.take_messages()) == [
        uses, {"op": "client-releases-keys", "keys": ["c"]}]
    cs.waited("lender's answer")
    assert cs.take_messages() == []
    # Closing: nothing waits any more.
    cs.wait_for("another answer")
    cs.send(uses)
    assert cs.begin_close()
    assert step(cs, cs.take_messages()) == [uses, {"op": "close-client"}]


def test_a_key_from_elsewhere_is_asked_for_once(cs):
    cs.hold("x", inform=True)
    cs.hold("x", inform=True)
    assert step(cs, cs.take_messages()) == [{"op": "client-desires-keys", "keys": ["x"]}]


def test_a_given_state_is_shared_only_when_the_key_is_new(cs):
    mine = FutureState("x")
    assert cs.hold("x", mine) is mine
    assert cs.hold("x", FutureState("x")) is mine


def test_the_scheduler_says_how_keys_end(cs):
    x, y, z = (cs.hold(k) for k in "xyz")
    assert step(cs, cs.handle({"op": "key-in-memory", "key": "x", "type": "int"})) == \
        [Done(x)]
    assert (x.status, x.type) == ("finished", "int")
    error = {"op": "task-erred", "key": "y", "type": "ValueError", "text": "bad"}
    assert step(cs, cs.handle(error)) == [Done(y)]
    assert (y.status, y.error) == ("error", error)
    assert step(cs, cs.handle({"op": "cancelled", "key": "z"})) == [Done(z)]
    # A cancelled state is let go of: "z" submitted again starts anew.
    assert statuses(cs) == {"x": "finished", "y": "error"}
    assert z.status == "cancelled" and cs.hold("z").status == "pending"
    # Keys this client does not hold (any more) change nothing.
    for op in ("key-in-memory", "task-erred", "cancelled"):
        assert cs.handle({"op": op, "key": "gone"}) == []


def test_futures_loaded_from_a_value_start_as_the_scheduler_said_their_keys_ended(cs):
    x, y, z = (cs.hold(k, inform=True) for k in "xyz")
    erred = {"op": "task-erred", "key": "y", "type": "ZeroDivisionError", "text": "0"}
    assert step(cs, cs.learn([{"op": "key-in-memory", "key": "x", "type": "int"},
                              erred])) == [Done(x), Done(y)]
    assert statuses(cs) == {"x": "finished", "y": "error", "z": "pending"}
    assert (x.type, y.error) == ("int", erred)
    # What this client learnt of a key, in order, is not undone by an older report.
    assert cs.learn([{"op": "task-erred", "key": "x", "type": "E", "text": ""},
                     {"op": "key-in-memory", "key": "gone"}]) == []
    assert x.status == "finished"


def test_a_restart_cancels_pending_and_finished_keys_not_failed_ones(cs):
    a, b, c = (cs.hold(k) for k in "abc")
    cs.handle({"op": "key-in-memory", "key": "b"})
    cs.handle({"op": "task-erred", "key": "c", "text": "no"})
    assert step(cs, cs.handle({"op": "restarted"})) == [Done(a), Done(b)]
    assert [st.status for st in (a, b, c)] == ["cancelled", "cancelled", "error"]
    assert cs.futures == {}          # every key submitted again is computed again


def test_requests_are_answered_by_id(cs):
    msg = {"op": "info", "what": "nthreads"}
    assert cs.request(msg, "t1") == []
    rid = msg["request_id"]
    assert step(cs, cs.take_messages()) == [{"op": "info", "what": "nthreads",
                                             "request_id": rid}]
    assert cs.requests == {rid: "t1"}
    assert step(cs, cs.handle({"op": "reply", "request_id": rid, "result": 4})) == \
        [Resolve("t1", 4)]
    assert cs.requests == {}
    assert cs.handle({"op": "reply", "request_id": rid, "result": 4}) == []


def test_a_key_lost_after_it_finished_is_reset_before_the_gather_answers(cs):
    x = cs.hold("x")
    cs.hold("y")
    cs.handle({"op": "key-in-memory", "key": "x"})
    cs.request({"op": "gather", "keys": ["x", "y"]}, "t")
    rid = cs.take_messages()[0]["request_id"]
    answer = {"op": "gather-result", "request_id": rid, "data": {}, "errors": {},
              "missing": ["x", "y"]}
    assert step(cs, cs.handle(answer)) == [Reset(x), Resolve("t", answer)]
    assert statuses(cs) == {"x": "pending", "y": "pending"}


def test_a_scatter_ends_when_every_key_is_stored(cs):
    msg = {"op": "scatter", "data": {}}
    assert cs.scatter(msg, ["a", "b"], "t") == []
    rid = msg["request_id"]
    assert cs.handle({"op": "scattered", "request_id": rid, "key": "a"}) == []
    assert step(cs, cs.handle({"op": "scattered", "request_id": rid, "key": "b"})) == \
        [Resolve("t", True)]
    msg = {"op": "scatter", "data": {}}
    cs.scatter(msg, ["c"], "t2")
    assert step(cs, cs.handle({"op": "scatter-failed", "request_id": msg["request_id"],
                               "text": "no workers"})) == \
        [Reject("t2", RuntimeError("no workers"))]
    assert cs.scatters == {}


def test_values_scattered_here_are_finished_at_once(cs):
    st = cs.hold("x")
    assert step(cs, cs.finish([(st, "int")])) == [Done(st)]
    assert (st.status, st.type) == ("finished", "int")


def test_the_user_cancels_pending_and_finished_keys(cs):
    a, b, c = (cs.hold(k) for k in "abc")
    cs.handle({"op": "key-in-memory", "key": "b"})
    cs.handle({"op": "task-erred", "key": "c", "text": "no"})
    assert step(cs, cs.cancel([a, b, c], ["a", "b", "c"], True, None, None, "t")) == \
        [Done(a), Done(b)]
    [msg] = cs.take_messages()
    assert msg == {"op": "cancel", "keys": ["a", "b", "c"], "force": True,
                   "request_id": msg["request_id"]}
    assert step(cs, cs.handle({"op": "reply", "request_id": msg["request_id"],
                               "result": None})) == [Resolve("t", None)]
    # The Futures keep their cancelled states; the client holds no state of those
    # keys, so submitting one again computes it again.
    assert [st.status for st in (a, b, c)] == ["cancelled", "cancelled", "error"]
    assert cs.futures == {} and cs.refcount == {"a": 1, "b": 1, "c": 1}
    assert not cs.is_held("a") and cs.hold("a") is not a
    assert cs.drop(["a"]) == [] and cs.drop(["a"]) == ["a"]


def test_a_cancelled_state_keeps_why_for_its_futures_error(cs):
    a, b, c, d, e = (cs.hold(k) for k in "abcde")
    cs.cancel([a], ["a"], False, "no longer needed", "see the log", "t")
    [msg] = cs.take_messages()
    assert (msg["reason"], msg["msg"]) == ("no longer needed", "see the log")
    assert a.error == {"reason": "no longer needed", "msg": "see the log"}
    # A dependent cancelled through its input: the reason the canceller gave.
    cs.handle({"op": "cancelled", "key": "b", "reason": "R", "msg": "M"})
    assert b.error == {"reason": "R", "msg": "M"}
    cs.handle({"op": "cancelled", "key": "c"})
    assert c.error == {"reason": None, "msg": None}
    cs.lose(["d"])
    assert d.error == {"reason": "lost dependencies", "msg": None}
    cs.handle({"op": "restarted"})
    assert e.error["reason"] == "scheduler-restart" and e.error["msg"]
    assert {st.status for st in (a, b, c, d, e)} == {"cancelled"}


def test_a_lost_connection_fails_everything_in_flight_and_reconnects(cs):
    x, y = cs.hold("x"), cs.hold("y")
    cs.handle({"op": "key-in-memory", "key": "y"})
    cs.request({"op": "info"}, "t-info")
    cs.scatter({"op": "scatter"}, ["s"], "t-scatter")
    cs.monitor(True)
    cs.take_messages()
    reason = "lost the connection"
    assert step(cs, cs.disconnected(reason)) == [
        Done(x), Reject("t-info", SchedulerLost(reason)),
        Reject("t-scatter", SchedulerLost(reason))]
    assert (x.status, x.error) == ("lost", {"type": "SchedulerLost", "text": reason})
    assert y.status == "finished"
    assert cs.status == "reconnecting"
    # Nothing new is asked of a scheduler that is not there; registering is.
    assert cs.request({"op": "info"}, "t2") == [
        Reject("t2", SchedulerLost(f"not connected to {ADDRESS}"))]
    assert cs.request({"op": "register-client"}, "t3", welcome=True) == []
    cs.take_messages()
    # Back, once the scheduler has answered the hello: register again, and the
    # monitor subscription with it.
    assert step(cs, cs.answered(EPOCH, b"scheduler")) == []
    assert cs.status == "running"
    assert cs.take_messages() == [{"op": "client-options", "paused_warning": 60.0},
                                  {"op": "register-client"}, {"op": "monitor", "on": True}]
    # Another answer on a connection that was not lost changes nothing.
    assert cs.answered(EPOCH, b"scheduler") == [] and cs.take_messages() == []


def test_messages_wait_for_the_handshake_then_go_to_the_scheduler_it_named():
    cs = ClientState(ADDRESS)
    cs.request({"op": "register-client"}, "t", welcome=True)
    cs.send({"op": "monitor", "on": True})
    assert cs.take_messages() == [] and cs.scheduler is None
    assert step(cs, cs.answered(EPOCH, b"scheduler-1")) == []
    assert (cs.epoch, cs.scheduler) == (EPOCH, b"scheduler-1")
    assert cs.take_messages() == [{"op": "client-options", "paused_warning": None},
                                  {"op": "register-client"}, {"op": "monitor", "on": True}]
    # A message sent once a flush has taken the outbox leaves with the next one.
    cs.send({"op": "cancel", "keys": ["a"], "force": False})
    assert cs.take_messages() == [{"op": "cancel", "keys": ["a"], "force": False}]


def test_another_epoch_at_the_address_is_a_new_scheduler(cs):
    x, y = cs.hold("x"), cs.hold("y")
    cs.handle({"op": "key-in-memory", "key": "y"})
    cs.request({"op": "info"}, "t-info")
    cs.take_messages()
    # The connection came back without a word of its loss, to another start of the
    # scheduler: what was in flight there fails, and this client registers again.
    reason = f"a new scheduler answers at {ADDRESS}"
    assert step(cs, cs.answered(LATER_EPOCH, b"scheduler-2")) == [
        Done(x), Reject("t-info", SchedulerLost(reason))]
    assert (x.status, y.status, cs.status) == ("lost", "finished", "running")
    assert (cs.epoch, cs.scheduler) == (LATER_EPOCH, b"scheduler-2")
    assert cs.take_messages() == [{"op": "client-options", "paused_warning": 60.0},
                                  {"op": "register-client"}]
    # After a lost connection, a new start fails nothing twice.
    cs.disconnected("lost the connection")
    assert step(cs, cs.answered(EPOCH, b"scheduler-3")) == []
    assert cs.take_messages() == [{"op": "client-options", "paused_warning": 60.0},
                                  {"op": "register-client"}]


def test_large_values_stream_only_while_the_relay_serves(cs):
    assert cs.relay_port is None
    assert cs.gather_message(["a"], wait=True) == {
        "op": "gather", "keys": ["a"], "wait": True, "max_bytes": None, "stream": False}
    cs.handle({"op": "welcome", "id": "s", "relay_port": 4321})
    msg = cs.gather_message(["a", "b"])
    assert msg["stream"] and cs.relay_port == 4321
    cs.request(msg, "t")
    streams = [{"ticket": b"1" * 16, "sizes": [10, 5 << 20], "keys": ["a"]},
               {"ticket": b"2" * 16, "sizes": [10, 6 << 20], "keys": ["b"]}]
    # The download failed: the same gather again, over ZeroMQ, naming the streams
    # given up; none asked for until a welcome names the relay again.
    assert cs.streams_failed(msg, streams) == {
        "op": "gather", "keys": ["a", "b"], "wait": False, "max_bytes": None,
        "stream": False, "direct": False, "unwanted": [b"1" * 16, b"2" * 16]}
    assert cs.relay_port is None and not cs.gather_message(["a"])["stream"]
    cs.handle({"op": "welcome", "id": "s", "relay_port": 4321})
    assert cs.gather_message(["a"])["stream"]


def test_a_scheduler_shutting_down_fails_what_waits_then_closes(cs):
    x = cs.hold("x")
    cs.request({"op": "info"}, "t")
    reason = f"the scheduler at {ADDRESS} was shut down"
    assert step(cs, cs.handle({"op": "scheduler-closing"})) == [
        Done(x), Reject("t", SchedulerLost(reason)), Close(reason)]
    assert cs.begin_close()
    assert cs.handle({"op": "scheduler-closing"}) == []
    # Closed, the key keeps the error that says why (not cancelled).
    assert step(cs, cs.closed()) == []
    assert statuses(cs) == {"x": "lost"}


def test_closing_cancels_every_key_and_fails_every_request(cs):
    x = cs.hold("x")
    cs.hold("y")
    cs.handle({"op": "key-in-memory", "key": "y"})
    cs.request({"op": "info"}, "t")
    cs.scatter({"op": "scatter"}, ["s"], "t-scatter")
    cs.take_messages()
    assert cs.begin_close() and not cs.begin_close()
    assert cs.take_messages() == [{"op": "close-client"}]
    closed = ClosedClientError("this Client is closed")
    y = cs.futures["y"]
    assert step(cs, cs.closed()) == [Done(x), Done(y), Reject("t", closed),
                                     Reject("t-scatter", closed)]
    # As with dask.distributed, a finished key is cancelled too.
    assert statuses(cs) == {"x": "cancelled", "y": "cancelled"}
    assert cs.request({"op": "info"}, "t2") == [Reject("t2", closed)]
    assert cs.scatter({"op": "scatter"}, ["s"], "t3") == [Reject("t3", closed)]
    assert cs.drop(["x", "y"]) == [] and cs.disconnected("gone") == []
    assert not cs.start()


def test_closing_first_withdraws_what_may_wait_on_the_scheduler(cs):
    """A get or an acquire may be parked there: withdrawn, each gets its one answer
    (a grant already on its way among them) before the scheduler forgets us."""
    for n, what in enumerate(["queue-get", "acquire", "queue-size"]):
        cs.request({"op": "coordinate", "what": what}, f"t{n}")
    cs.request({"op": "info"}, "t-info")
    [get, acquire, size, info] = cs.take_messages()
    cs.handle({"op": "reply", "request_id": size["request_id"], "result": 0})
    assert cs.begin_close()
    assert cs.take_messages() == [{"op": "withdraw", "request": get["request_id"]},
                                  {"op": "withdraw", "request": acquire["request_id"]},
                                  {"op": "close-client"}]
    assert cs.parked_tokens() == ["t0", "t1"]
    assert step(cs, cs.handle({"op": "reply", "request_id": get["request_id"],
                               "result": {"data": "item"}})) == [
        Resolve("t0", {"data": "item"})]
    assert cs.parked_tokens() == ["t1"]


def test_the_options_go_first_and_a_worker_paused_too_long_is_a_warning():
    cs = ClientState(ADDRESS, paused_warning=30.0)
    cs.answered(EPOCH, b"scheduler")
    cs.request({"op": "register-client"}, "t", welcome=True)
    assert cs.take_messages() == [{"op": "client-options", "paused_warning": 30.0},
                                  {"op": "register-client"}]
    msg = {"op": "worker-paused-long", "address": "tcp://10.0.0.2:1", "name": "engine-1",
           "seconds": 95.2, "memory": 900 * 2**20, "managed": 2**29, "spilled": 2**31,
           "memory_limit": 2**30}
    assert step(cs, cs.handle(msg)) == [Warn(PausedWorkerWarning(
        "worker engine-1 (tcp://10.0.0.2:1) has been paused for 95 s: its process "
        "holds 900.00 MiB of its 1.00 GiB limit (512.00 MiB of results in memory, "
        "2.00 GiB spilled to disk).  It starts no task until its memory falls: release "
        "results you no longer need, persist less at once, or give workers more memory "
        "(memory_limit=)."))]


def test_monitor_subscriptions(cs):
    cs.monitor(True)
    cs.monitor(False)
    assert cs.take_messages() == [{"op": "monitor", "on": True},
                                  {"op": "monitor", "on": False}]
    assert not cs.monitoring


def test_every_kind_from_the_scheduler_has_one_handler():
    from dask_ipy.client.shell import ClientShell
    from dask_ipy.messages import CLIENT, KINDS, SCHEDULER

    kinds = set(KINDS[(SCHEDULER, CLIENT)])
    here, there = set(ClientState.FROM_SCHEDULER), set(ClientShell.FROM_SCHEDULER)
    assert here | there == kinds and not here & there


def test_topics_subscribed_to_are_subscribed_again_after_a_reconnection(cs):
    cs.subscribe("forward-logging", True)
    cs.subscribe("other", True)
    cs.subscribe("other", False)
    assert cs.take_messages() == [
        {"op": "subscribe-topic", "topic": "forward-logging", "on": True},
        {"op": "subscribe-topic", "topic": "other", "on": True},
        {"op": "subscribe-topic", "topic": "other", "on": False}]
    cs.disconnected("gone")
    assert step(cs, cs.answered(EPOCH, b"scheduler")) == []
    assert cs.take_messages() == [
        {"op": "client-options", "paused_warning": 60.0},
        {"op": "register-client"},
        {"op": "subscribe-topic", "topic": "forward-logging", "on": True}]
