"""A small result straight from its worker to the client waiting for it (three hops),
in the three state machines alone: the scheduler names the waiting clients in
"compute-task" and says nothing more of what went straight unless asked
("report-keys"); the worker sends it to subscribed clients only; the client takes
whichever of the worker's "task-result" and the scheduler's "key-in-memory" comes
first, once, and never for a key released, cancelled or erred."""

import pytest

from dask_ipy.client.state import (CANCELLED, ERROR, FINISHED, PENDING, ClientState,
                                   Connect, Done, Reset, Resolve)
from dask_ipy.errors import KeyReleased
from dask_ipy.scheduler.state import SchedulerState
from dask_ipy.worker.state import Execute, Send, ToClient, WorkerState

pytestmark = pytest.mark.timeout(30)

A, B = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"
ME = A


def take(s):
    return s.take_messages()


# ------------------------------------------------------------------ scheduler


@pytest.fixture
def s():
    s = SchedulerState(validate=True)
    s.add_client("c")
    s.add_client("d")
    s.add_worker("w1", A, nthreads=1)
    take(s)
    return s


def submit(s, client="c", key="x"):
    s.update_graph(client, {key: (f"spec-{key}", [])}, [key], {key: 0})
    [(_, _, msg)] = take(s)
    return msg


def test_compute_task_names_the_clients_waiting_for_the_key(s):
    msg = submit(s)
    assert msg["op"] == "compute-task" and msg["want_data"] and msg["clients"] == ["c"]
    # A task nobody wants (an intermediate) names none.
    s.update_graph("c", {"a": ("spec-a", []), "b": ("spec-b", ["a"])}, ["b"],
                   {"a": 0, "b": 1})
    [(_, _, msg)] = take(s)
    assert msg["key"] == "a" and "clients" not in msg and "want_data" not in msg


def finished(s, key="x", direct=None, data="blob"):
    msg = {"op": "task-finished", "key": key, "nbytes": 8, "type": "int",
           "duration": 0.1, "data": data}
    if direct is not None:
        msg["direct"] = direct
    s.handle_worker_message("w1", msg)
    return take(s)


def test_a_result_sent_straight_is_not_sent_again(s):
    submit(s)
    # The client's result() is parked until the key is done.
    s.handle_client_message("c", {"op": "gather", "request_id": 5, "keys": ["x"],
                                  "wait": True, "direct": True})
    assert take(s) == []
    # The client has the value and answered its gather itself: neither that
    # answer nor "key-in-memory" is sent.
    assert finished(s, direct=["c"]) == []
    assert s.tasks["x"].direct == ("c",) and s.tasks["x"].data == "blob"
    # Asked again without it (it did not arrive): the value, from the scheduler.
    s.handle_client_message("c", {"op": "gather", "request_id": 6, "keys": ["x"],
                                  "direct": False})
    assert take(s) == [("client", "c", {"op": "gather-result", "request_id": 6,
                                        "data": {"x": "blob"}, "missing": [],
                                        "errors": {}, "types": {"x": "int"}})]


def test_a_result_not_sent_straight_names_its_worker_and_comes_with_the_answer(s):
    submit(s)
    s.update_graph("d", {}, ["x"], {})          # a second client wants it too
    s.handle_client_message("d", {"op": "gather", "request_id": 7, "keys": ["x"],
                                  "wait": True})
    take(s)
    out = finished(s, direct=["c"])
    # c got it straight and hears nothing; d is told where it could have come
    # from, and gets it.
    assert not [m for _, cid, m in out if cid == "c"]
    assert ("client", "d", {"op": "key-in-memory", "key": "x", "type": "int",
                            "nbytes": 8, "worker": A}) in out
    assert ("client", "d", {"op": "gather-result", "request_id": 7,
                            "data": {"x": "blob"}, "missing": [], "errors": {},
                            "types": {"x": "int"}}) in out


def test_a_small_result_that_went_the_long_way_comes_with_key_in_memory(s):
    """A client waiting for no gather of the key gets the small value along with
    "key-in-memory", so that its gather needs no request; a client whose gather
    the value answers gets it there, once."""
    submit(s)
    s.update_graph("d", {}, ["x"], {})
    s.handle_client_message("d", {"op": "gather", "request_id": 7, "keys": ["x"],
                                  "wait": True})
    take(s)
    out = finished(s)
    assert ("client", "c", {"op": "key-in-memory", "key": "x", "type": "int",
                            "nbytes": 8, "worker": A, "data": "blob"}) in out
    assert ("client", "d", {"op": "key-in-memory", "key": "x", "type": "int",
                            "nbytes": 8, "worker": A}) in out
    assert ("client", "d", {"op": "gather-result", "request_id": 7,
                            "data": {"x": "blob"}, "missing": [], "errors": {},
                            "types": {"x": "int"}}) in out


def test_a_large_result_names_no_worker_and_its_release_forgets_who_got_it(s):
    submit(s)
    assert finished(s, data=None, direct=["c"]) == [
        ("client", "c", {"op": "key-in-memory", "key": "x", "type": "int", "nbytes": 8})]
    assert s.tasks["x"].direct == ()
    s.update_graph("c", {"y": ("spec-y", [])}, ["y"], {"y": 0})
    take(s)
    finished(s, key="y", direct=["c"])
    s.remove_worker("w1")                        # its data is lost: computed again
    assert s.tasks["y"].direct == () and s.tasks["y"].data is None


def test_a_gather_waiting_also_for_others_lists_what_went_straight(s):
    submit(s, key="x")
    submit(s, key="y")
    s.handle_client_message("c", {"op": "gather", "request_id": 5, "keys": ["x", "y"],
                                  "wait": True, "direct": True})
    assert finished(s, key="x", direct=["c"]) == []
    assert ("client", "c", {"op": "gather-result", "request_id": 5,
                            "data": {"y": "blob"}, "missing": [], "errors": {},
                            "types": {"y": "int"}, "direct": ["x"]}) in finished(s, key="y")


def test_a_client_asking_for_a_report_hears_of_a_key_that_came_straight(s):
    """A client about to ask the scheduler about the cluster asks first to hear of
    keys that came to it straight ("report-keys"): at once for a key the scheduler
    knows is done, when it is done for one still running; without the value,
    which the client has."""
    submit(s, key="x")
    submit(s, key="y")
    finished(s, key="x", direct=["c"])
    s.handle_client_message("c", {"op": "report-keys", "keys": ["x", "y"]})
    assert take(s) == [("client", "c", {"op": "key-in-memory", "key": "x",
                                        "type": "int", "nbytes": 8})]
    assert s.clients["c"].reports == {s.tasks["y"]}
    # The gather of result() waiting for y needs no answer still.
    s.handle_client_message("c", {"op": "gather", "request_id": 5, "keys": ["y"],
                                  "wait": True, "direct": True})
    assert finished(s, key="y", direct=["c"]) == [
        ("client", "c", {"op": "key-in-memory", "key": "y", "type": "int",
                         "nbytes": 8})]
    assert s.clients["c"].reports == set()
    # Once told, the next value that comes straight is not told again.
    submit(s, key="z")
    assert finished(s, key="z", direct=["c"]) == []


def test_a_report_asked_ends_with_a_release_or_an_error(s):
    submit(s, key="x")
    submit(s, key="y")
    s.handle_client_message("c", {"op": "report-keys", "keys": ["x", "y"]})
    assert take(s) == [] and len(s.clients["c"].reports) == 2
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    take(s)
    assert s.clients["c"].reports == {s.tasks["y"]}
    s.handle_worker_message("w1", {"op": "task-erred", "key": "y", "type": "E",
                                   "text": "boom"})
    assert [m["op"] for _, _, m in take(s)] == ["task-erred"]
    assert s.clients["c"].reports == set()


def test_a_client_that_lost_a_worker_connection_gets_its_values_from_the_scheduler(s):
    """Values sent straight on a connection that dropped may never have come: the
    client asks for its pending keys again ("report-keys", lost), and from then on
    the values of that worker come to it as if none went straight; another
    worker's still go straight."""
    submit(s, key="x")
    submit(s, key="y")
    assert finished(s, key="x", direct=["c"]) == []
    s.handle_client_message("c", {"op": "report-keys", "keys": ["x", "y"],
                                  "lost": A})
    assert take(s) == [("client", "c", {"op": "key-in-memory", "key": "x",
                                        "type": "int", "nbytes": 8, "worker": A,
                                        "data": "blob"})]
    assert s.clients["c"].wary == {A} and s.clients["c"].reports == set()
    assert finished(s, key="y", direct=["c"]) == [
        ("client", "c", {"op": "key-in-memory", "key": "y", "type": "int",
                         "nbytes": 8, "worker": A, "data": "blob"})]
    assert s.tasks["y"].direct == ()
    # Later keys too, and a gather of them is answered with the value.
    s.add_worker("w2", B, nthreads=1)
    take(s)
    for key in ("z", "v"):
        submit(s, key=key)
    s.handle_client_message("c", {"op": "gather", "request_id": 9, "keys": ["z", "v"],
                                  "wait": True, "direct": True})
    on = {key: s.tasks[key].processing_on.id for key in ("z", "v")}
    assert sorted(on.values()) == ["w1", "w2"]
    out = []
    for key, wid in on.items():
        s.handle_worker_message(wid, {"op": "task-finished", "key": key, "nbytes": 8,
                                      "type": "int", "duration": 0.1,
                                      "data": f"blob-{key}", "direct": ["c"]})
        out += take(s)
    from_w1 = "z" if on["z"] == "w1" else "v"
    assert ("client", "c", {"op": "key-in-memory", "key": from_w1, "type": "int",
                            "nbytes": 8, "worker": A}) in out
    assert ("client", "c", {"op": "gather-result", "request_id": 9,
                            "data": {from_w1: f"blob-{from_w1}"}, "missing": [],
                            "errors": {}, "types": {from_w1: "int"},
                            "direct": [k for k in ("z", "v")
                                                     if k != from_w1]}) in out
    assert len(out) == 2


def test_a_gather_ends_unanswered_when_its_client_releases_a_key_it_waits_for(s):
    """The value came straight, the client answered its gather and released the
    key, and that release overtook the worker's word: the gather ends without an
    answer ("missing" would tell the client nothing)."""
    for key in ("x", "y"):
        submit(s, key=key)
    s.handle_client_message("c", {"op": "gather", "request_id": 5, "keys": ["x", "y"],
                                  "wait": True, "direct": True})
    s.handle_client_message("c", {"op": "gather", "request_id": 6, "keys": ["y"],
                                  "wait": True, "direct": True})
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    assert take(s) == [("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    assert [g["request_id"] for g in s.gathers.values()] == [6]
    assert list(parked(s)) == ["y"] and len(parked(s)["y"]) == 1
    assert finished(s, key="x", direct=["c"]) == [
        ("worker", "w1", {"op": "free-keys", "keys": ["x"]})]
    # A gather asking for values whatever way they went is answered, as is
    # another client's.
    s.update_graph("d", {}, ["y"], {})
    s.handle_client_message("c", {"op": "gather", "request_id": 7, "keys": ["y"],
                                  "wait": True, "direct": False})
    s.handle_client_message("d", {"op": "gather", "request_id": 8, "keys": ["y"],
                                  "wait": True, "direct": True})
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["y"]})
    assert sorted(g["request_id"] for g in s.gathers.values()) == [7, 8]
    s.handle_client_message("d", {"op": "client-releases-keys", "keys": ["y"]})
    assert sorted((cid, m["request_id"], m["missing"]) for _, cid, m in take(s)
                  if m["op"] == "gather-result") == [("c", 7, ["y"])]
    assert parked(s) == {} and s.gathers == {}


# ------------------------------------------------------------------ worker


@pytest.fixture
def ws():
    return WorkerState(ME, nthreads=1, validating=True)


def run(ws, clients=("c",), want_data=True):
    out = ws.handle("compute-task", key="x", run_spec="spec-x", priority=(0,),
                    want_data=want_data, clients=list(clients))
    assert out == [Send({"op": "task-started", "key": "x"}),
                   Execute("x", "spec-x", {}, want_data)]
    return ws.handle("execute-success", key="x", value=41, nbytes=8, type="int",
                     start=1.0, stop=1.5, data="blob" if want_data else None)


def test_the_worker_sends_a_small_result_to_subscribed_clients_first(ws):
    assert ws.handle("client-subscribed", client="c") == []
    assert run(ws, clients=("c", "d")) == [
        ToClient("c", {"op": "task-result", "key": "x", "data": "blob", "type": "int",
                       "nbytes": 8}),
        Send({"op": "task-finished", "key": "x", "nbytes": 8, "type": "int",
              "duration": 0.5, "start": 1.0, "data": "blob", "direct": ["c"]})]


def test_the_worker_sends_nothing_straight_to_a_client_gone_or_never_there(ws):
    ws.handle("client-subscribed", client="c")
    ws.handle("client-gone", client="c")
    assert run(ws) == [Send({"op": "task-finished", "key": "x", "nbytes": 8,
                             "type": "int", "duration": 0.5, "start": 1.0,
                             "data": "blob"})]


def test_a_large_result_goes_the_long_way(ws):
    ws.handle("client-subscribed", client="c")
    assert run(ws, want_data=False) == [Send({"op": "task-finished", "key": "x",
                                              "nbytes": 8, "type": "int",
                                              "duration": 0.5, "start": 1.0})]


def test_a_result_finished_while_others_wait_to_run_goes_the_long_way(ws):
    ws.handle("client-subscribed", client="c")
    for key in ("x", "y"):
        ws.handle("compute-task", key=key, run_spec=f"spec-{key}", priority=(0,),
                  want_data=True, clients=["c"])
    # y waits behind x: x's value rides in the scheduler's batches.
    assert ws.handle("execute-success", key="x", value=1, nbytes=8, type="int",
                     start=1.0, stop=1.5, data="blob-x") == [
        Send({"op": "task-finished", "key": "x", "nbytes": 8, "type": "int",
              "duration": 0.5, "start": 1.0, "data": "blob-x"}),
        Send({"op": "task-started", "key": "y"}),
        Execute("y", "spec-y", {}, True)]
    # Nothing waits behind y: its value goes straight.
    out = ws.handle("execute-success", key="y", value=2, nbytes=8, type="int",
                    start=1.5, stop=2.0, data="blob-y")
    assert out[0] == ToClient("c", {"op": "task-result", "key": "y", "data": "blob-y",
                                    "type": "int", "nbytes": 8})
    assert out[1].msg["direct"] == ["c"]


def test_an_error_or_a_cancelled_run_sends_nothing_straight(ws):
    ws.handle("client-subscribed", client="c")
    ws.handle("compute-task", key="x", run_spec="spec-x", want_data=True,
              clients=["c"])
    ws.handle("free-keys", keys=["x"])
    out = ws.handle("execute-success", key="x", value=1, nbytes=8, type="int",
                    data="blob")
    assert not [i for i in out if isinstance(i, ToClient)]
    ws.handle("compute-task", key="y", run_spec="spec-y", want_data=True,
              clients=["c"])
    out = ws.handle("execute-failure", key="y", error={"type": "ValueError",
                                                       "text": "no"})
    assert not [i for i in out if isinstance(i, ToClient)]


# ------------------------------------------------------------------ client


EPOCH = b"e" * 16


@pytest.fixture
def cs():
    cs = ClientState("tcp://10.0.0.9:5555")
    cs.answered(EPOCH, b"scheduler")
    cs.take_messages()
    return cs


def result(key="x", data="blob"):
    return {"op": "task-result", "key": key, "data": data, "type": "int", "nbytes": 8}


def in_memory(key="x", **extra):
    return {"op": "key-in-memory", "key": key, "type": "int", "nbytes": 8, **extra}


def gather(cs, keys, token="t"):
    out = cs.gather(cs.gather_message(keys, wait=True), token)
    cs.validate()
    return out


def test_the_result_straight_from_the_worker_finishes_the_key_once(cs):
    st = cs.hold("x")
    assert gather(cs, ["x"]) == []
    [msg] = cs.take_messages()
    assert msg["op"] == "gather" and msg["keys"] == ["x"]
    rid = msg["request_id"]
    # Straight from the worker: done, and the gather answered here.
    assert cs.handle_worker(result()) == [
        Done(st), Resolve("t", {"data": {"x": "blob"}, "missing": [], "errors": {}})]
    assert st.status == FINISHED and st.data == "blob" and cs.gathers == {}
    cs.validate()
    # The scheduler's word, later: nothing more (no second done callback).
    assert cs.handle(in_memory()) == []
    assert cs.handle({"op": "gather-result", "request_id": rid, "data": {},
                      "missing": [], "errors": {}, "direct": ["x"]}) == []
    # Asked again: answered here, nothing sent.
    assert gather(cs, ["x"], "t2") == [Resolve("t2", {"data": {"x": "blob"},
                                                      "missing": [], "errors": {}})]
    assert cs.take_messages() == []


def test_the_schedulers_word_first_then_the_value_straight(cs):
    st = cs.hold("x")
    assert cs.handle(in_memory()) == [Done(st)]
    assert gather(cs, ["x"]) == []
    cs.take_messages()
    # The value comes after: kept, the gather answered, no second Done.
    assert cs.handle_worker(result()) == [
        Resolve("t", {"data": {"x": "blob"}, "missing": [], "errors": {}})]
    assert cs.handle_worker(result(data="again")) == []
    assert st.data == "blob"


def test_a_value_with_key_in_memory_is_kept_and_answers_gathers_here(cs):
    x, y = cs.hold("x"), cs.hold("y")
    assert gather(cs, ["x", "y"]) == []
    cs.take_messages()
    assert cs.handle(in_memory("x", data="X")) == [Done(x)]
    assert x.data == "X" and cs.kept == 1
    # The gather waiting for both is answered here once y's value comes too.
    assert cs.handle(in_memory("y", data="Y")) == [
        Done(y), Resolve("t", {"data": {"x": "X", "y": "Y"}, "missing": [],
                               "errors": {}})]
    cs.validate()
    # Asked again: nothing is sent.
    assert gather(cs, ["x"], "t2") == [Resolve("t2", {"data": {"x": "X"},
                                                      "missing": [], "errors": {}})]
    assert cs.take_messages() == []
    # A value that came straight first is not replaced.
    z = cs.hold("z")
    cs.handle_worker(result("z", "straight"))
    assert cs.handle(in_memory("z", data="again")) == [] and z.data == "straight"


def test_kept_values_stay_under_a_byte_cap(cs, monkeypatch):
    """Values are kept while their sizes summed stay under MAX_KEPT_BYTES: past it
    a key's value is asked of the scheduler; releasing frees room."""

    class Blob:
        def __init__(self, nbytes):
            self.nbytes = nbytes

    monkeypatch.setattr("dask_ipy.client.state.MAX_KEPT_BYTES", 100)
    a, b = cs.hold("a"), cs.hold("b")
    cs.handle(in_memory("a", data=Blob(60)))
    cs.handle(in_memory("b", data=Blob(60)))
    assert a.data is not None and b.data is None and cs.kept_bytes == 60
    cs.validate()
    assert gather(cs, ["b"]) == []
    assert [m["keys"] for m in cs.take_messages()] == [["b"]]
    cs.drop(["a"])
    assert cs.kept == 0 and cs.kept_bytes == 0
    c = cs.hold("c")
    cs.handle_worker(result("c", Blob(90)))
    assert c.data is not None and cs.kept_bytes == 90
    cs.validate()


def test_a_result_for_a_released_cancelled_or_erred_key_is_dropped(cs):
    assert cs.handle_worker(result("gone")) == []          # never held
    st = cs.hold("x")
    cs.drop(["x"])
    assert cs.handle_worker(result("x")) == [] and "x" not in cs.futures
    st = cs.hold("y")
    assert cs.cancel([st], ["y"], False, None, None, "t") == [Done(st)]
    assert cs.handle_worker(result("y")) == []
    assert st.status == CANCELLED and st.data is None
    st = cs.hold("z")
    assert cs.handle({"op": "task-erred", "key": "z", "type": "ValueError",
                      "text": "no"}) == [Done(st)]
    assert cs.handle_worker(result("z")) == []
    assert st.status == ERROR and st.data is None
    cs.validate()


def test_a_gather_of_several_keys_waits_for_all_of_them(cs):
    x, y = cs.hold("x"), cs.hold("y")
    assert gather(cs, ["x", "y"]) == []
    assert cs.handle_worker(result("x")) == [Done(x)]
    assert cs.by_key == {"y": {cs.take_messages()[0]["request_id"]}}
    assert cs.handle_worker(result("y", "blob-y")) == [
        Done(y), Resolve("t", {"data": {"x": "blob", "y": "blob-y"}, "missing": [],
                               "errors": {}})]
    assert cs.gathers == {} and cs.by_key == {}
    # A later gather asks only for what is not here.
    z = cs.hold("z")
    assert gather(cs, ["x", "z"], "t2") == []
    [msg] = cs.take_messages()
    assert msg["keys"] == ["z"]
    assert cs.handle({"op": "gather-result", "request_id": msg["request_id"],
                      "data": {"z": "blob-z"}, "missing": [], "errors": {}}) == [
        Done(z), Resolve("t2", {"op": "gather-result", "request_id": msg["request_id"],
                       "data": {"z": "blob-z", "x": "blob"}, "missing": [],
                       "errors": {}})]


def test_a_value_said_to_come_straight_but_lost_is_asked_for_again(cs):
    st = cs.hold("x")
    gather(cs, ["x"])
    [msg] = cs.take_messages()
    assert cs.handle(in_memory()) == [Done(st)]
    # The scheduler says the worker sent it here; it never came (connection lost).
    assert cs.handle({"op": "gather-result", "request_id": msg["request_id"],
                      "data": {}, "missing": [], "errors": {},
                      "direct": ["x"]}) == []
    [again] = cs.take_messages()
    assert again["op"] == "gather" and again["keys"] == ["x"] and not again["direct"]
    assert again["request_id"] != msg["request_id"]
    cs.validate()
    assert cs.handle({"op": "gather-result", "request_id": again["request_id"],
                      "data": {"x": "blob"}, "missing": [], "errors": {}}) == [
        Resolve("t", {"op": "gather-result", "request_id": again["request_id"],
                      "data": {"x": "blob"}, "missing": [], "errors": {}})]


def test_a_gather_leaves_out_what_comes_straight_only_while_all_is_pending(cs):
    x, y = cs.hold("x"), cs.hold("y")
    gather(cs, ["x", "y"])
    [msg] = cs.take_messages()
    assert msg["direct"] is True
    # Done here without its value (it went the long way, a gather answered it):
    # a gather of it needs the value from the scheduler.
    cs.handle(in_memory("x"))
    assert x.status == FINISHED and x.data is None
    gather(cs, ["x", "y"], "t2")
    [msg] = cs.take_messages()
    assert msg["keys"] == ["x", "y"] and msg["direct"] is False


def test_a_lost_connection_to_a_worker_asks_for_the_pending_keys_again(cs):
    x, y = cs.hold("x"), cs.hold("y")
    cs.handle(in_memory("x", worker=A))
    cs.handle_worker(result("x"))
    assert gather(cs, ["y"]) == []
    cs.take_messages()
    assert cs.worker_lost(A) is None
    assert cs.take_messages() == [{"op": "report-keys", "keys": ["y"], "lost": A}]
    # y's value was lost with the connection: the scheduler sends it, which
    # finishes y, answers the gather and connects to the worker again.
    assert cs.handle(in_memory("y", worker=A, data="Y")) == [
        Connect(A), Done(y), Resolve("t", {"data": {"y": "Y"}, "missing": [],
                                           "errors": {}})]
    cs.validate()
    # A closed client asks for nothing.
    cs.begin_close()
    cs.take_messages()
    cs.worker_lost(A)
    assert cs.take_messages() == []


def test_a_gather_waiting_for_a_key_released_here_fails_and_is_forgotten(cs):
    x, y = cs.hold("x"), cs.hold("y")
    gather(cs, ["x", "y"])
    gather(cs, ["y"], "t2")
    [one, two] = cs.take_messages()
    assert cs.drop(["x"]) == ["x"]
    [reject] = cs.end_gathers(["x"])
    assert reject.token == "t" and isinstance(reject.error, KeyReleased)
    assert set(cs.gathers) == {two["request_id"]} and set(cs.requests) == {
        two["request_id"]}
    cs.validate()
    # One that asked for the values whatever way they went waits for its answer.
    cs.handle_worker(result("y"))
    cs.drop(["y"])
    z = cs.hold("z")
    cs.handle(in_memory("z"))
    gather(cs, ["z"], "t3")
    cs.drop(["z"])
    assert cs.end_gathers(["z"]) == [] and len(cs.requests) == 1
    cs.validate()


def test_a_key_in_memory_naming_a_worker_connects_once(cs):
    st = cs.hold("x")
    assert cs.handle(in_memory(worker=A)) == [Connect(A), Done(st)]
    cs.hold("y")
    assert cs.handle(in_memory("y", worker=A)) == [Done(cs.futures["y"])]
    cs.worker_lost(A)
    cs.hold("z")
    assert cs.handle(in_memory("z", worker=A))[0] == Connect(A)


def test_a_lost_value_resets_and_drops_what_came_straight(cs):
    st = cs.hold("x")
    cs.handle_worker(result())
    gather(cs, ["x"])                       # answered here: nothing asked
    assert cs.take_messages() == []
    # Another gather of the scheduler's finds it gone (its worker died).
    cs.hold("y")
    gather(cs, ["y"], "t2")
    [msg] = cs.take_messages()
    out = cs.handle({"op": "gather-result", "request_id": msg["request_id"],
                     "data": {}, "missing": ["x", "y"], "errors": {}})
    assert out[0] == Reset(st) and st.status == PENDING and st.data is None
    # Recomputed: comes straight again, and finishes the key again.
    assert cs.handle_worker(result(data="blob2")) == [Done(st)]


def test_a_lost_connection_to_the_scheduler_fails_gathers_waiting_here(cs):
    cs.hold("x")
    gather(cs, ["x"])
    cs.disconnected("gone")
    assert cs.gathers == {} and cs.by_key == {}
    cs.validate()


def test_questions_to_the_scheduler_wait_for_its_word_on_a_value_that_came_straight(cs):
    x = cs.hold("x")
    cs.handle_worker(result())
    assert cs.unconfirmed == {"x"}
    # The hot path goes on; a question about the cluster (and what follows it)
    # waits: the scheduler may not know yet that x is done.
    cs.send({"op": "update-graph", "keys": ["y"]})
    cs.request({"op": "info", "what": "who_has", "keys": ["x"]}, "t-info")
    cs.send({"op": "gather", "keys": ["z"]})
    # The scheduler says nothing of x unless asked: asked once.
    assert cs.take_messages() == [{"op": "update-graph", "keys": ["y"]},
                                  {"op": "report-keys", "keys": ["x"]}]
    assert cs.take_messages() == []
    cs.validate()
    assert cs.handle(in_memory()) == []
    assert cs.unconfirmed == set() and cs.confirming == set()
    assert [m["op"] for m in cs.take_messages()] == ["info", "gather"]
    # Released, erred or cancelled before the scheduler's word: nothing waits.
    for key, end in (("a", lambda: cs.drop(["a"])),
                     ("b", lambda: cs.handle({"op": "task-erred", "key": "b",
                                              "type": "E", "text": ""})),
                     ("c", lambda: cs.cancel([cs.futures["c"]], ["c"], False, None,
                                             None, "t"))):
        cs.hold(key)
        cs.handle_worker(result(key))
        assert cs.unconfirmed == {key}
        end()
        assert cs.unconfirmed == set()
        cs.validate()
    assert x.status == FINISHED


def test_a_value_asked_for_again_beside_one_here_is_waited_for(cs):
    one, two = cs.hold("one"), cs.hold("two")
    cs.handle_worker(result("one", "blob-1"))
    gather(cs, ["one", "two"])
    [msg] = cs.take_messages()
    assert msg["keys"] == ["two"]
    cs.handle(in_memory("two"))
    # "two" was sent here straight, but the scheduler's answer overtook it: asked
    # again, and the answer waits for it (not only for the one value here).
    assert cs.handle({"op": "gather-result", "request_id": msg["request_id"],
                      "data": {}, "missing": [], "errors": {}, "direct": ["two"]}) == []
    [again] = cs.take_messages()
    assert again["keys"] == ["two"] and again["direct"] is False
    assert cs.handle_worker(result("two", "blob-2")) == [
        Resolve("t", {"data": {"one": "blob-1", "two": "blob-2"}, "missing": [],
                      "errors": {}})]
    cs.validate()


def test_values_that_came_straight_are_kept_up_to_a_cap(cs, monkeypatch):
    """Held futures keep at most MAX_KEPT values that came straight: past it a value
    still answers the gather waiting for it, and a later gather asks the scheduler;
    releasing a key frees its place."""
    monkeypatch.setattr("dask_ipy.client.state.MAX_KEPT", 2)
    for key in "abc":
        cs.hold(key)
    cs.handle_worker(result("a", "A"))
    cs.handle_worker(result("b", "B"))
    assert gather(cs, ["c"]) == []
    [msg] = cs.take_messages()
    # c comes past the cap: its waiting gather gets it all the same.
    assert cs.handle_worker(result("c", "C")) == [
        Done(cs.futures["c"]),
        Resolve("t", {"data": {"c": "C"}, "missing": [], "errors": {}})]
    cs.validate()
    assert cs.kept == 2 and cs.futures["c"].data is None
    # Asked again, a and b are answered here; c is asked of the scheduler.
    assert gather(cs, ["a", "b"], "t2") == [
        Resolve("t2", {"data": {"a": "A", "b": "B"}, "missing": [], "errors": {}})]
    assert gather(cs, ["c"], "t3") == []
    assert [m["keys"] for m in cs.take_messages() if m["op"] == "gather"] == [["c"]]
    # Releasing a frees a place for the next value.
    cs.drop(["a"])
    cs.validate()
    assert cs.kept == 1
    cs.hold("d")
    cs.handle_worker(result("d", "D"))
    cs.validate()
    assert cs.kept == 2 and cs.futures["d"].data == "D"


def parked(s):
    """{key: {gather id}} of the gathers waiting for keys."""
    return {k: {g} if type(g) is int else set(g) for k, g in s.parked.items() if g}


def test_gathers_waiting_on_the_same_keys_each_get_their_answer(s):
    for key in ("x", "y"):
        submit(s, key=key)
    s.take_messages()
    # Two gathers park on x and y, a third on y alone.
    for rid, keys in ((1, ["x", "y"]), (2, ["x", "y"]), (3, ["y"])):
        s.handle_client_message("c", {"op": "gather", "request_id": rid, "keys": keys,
                                      "wait": True, "direct": False})
    assert take(s) == [] and parked(s) == {"x": {1, 2}, "y": {1, 2, 3}}
    finished(s, key="x")
    assert parked(s) == {"y": {1, 2, 3}}
    # y errs: every gather waiting on it answers, y missing.
    s.handle_worker_message("w1", {"op": "task-erred", "key": "y", "type": "E",
                                   "text": "boom"})
    answers = sorted((m["request_id"], m["data"], m["missing"])
                     for _, _, m in take(s) if m["op"] == "gather-result")
    assert answers == [(1, {}, ["y"]), (2, {}, ["y"]), (3, {}, ["y"])]
    assert parked(s) == {}


def test_a_gather_that_ends_early_lets_go_of_its_other_keys(s):
    for key in ("x", "y"):
        submit(s, key=key)
    s.take_messages()
    s.handle_client_message("c", {"op": "gather", "request_id": 1, "keys": ["x", "y"],
                                  "wait": True, "direct": False})
    s.handle_client_message("c", {"op": "gather", "request_id": 2, "keys": ["y"],
                                  "wait": True, "direct": False})
    assert parked(s) == {"x": {1}, "y": {1, 2}}
    s.handle_worker_message("w1", {"op": "task-erred", "key": "x", "type": "E",
                                   "text": "boom"})
    assert [m["request_id"] for _, _, m in take(s) if m["op"] == "gather-result"] == [1]
    assert parked(s) == {"y": {2}}
    assert [(m["request_id"], m["data"]) for _, _, m in finished(s, key="y")
            if m["op"] == "gather-result"] == [(2, {"y": "blob"})]
    assert parked(s) == {}


# ------------------------------------------------ a key released while it ran, again
#
# A key let go of (or cancelled) while it ran, then submitted again, here under an
# explicit key as another computation: the earlier run may end after the key was
# given to a worker again, and its word, or its value sent straight, must not pass
# for the new run's.


def run_twice(s, started=True):
    """x runs on w1 (two threads), is cancelled, and is submitted again as another
    computation, which w1 gets too: the two "compute-task"s."""
    s.remove_worker("w1")
    s.add_worker("w1", A, nthreads=2)        # a thread for the new run beside the old
    take(s)
    first = submit(s)
    if started:
        s.handle_worker_message("w1", {"op": "task-started", "key": "x",
                                       "run_id": first["run_id"]})
    s.handle_client_message("c", {"op": "cancel", "keys": ["x"], "force": False,
                                  "request_id": 1})
    assert ("worker", "w1", {"op": "free-keys", "keys": ["x"]}) in take(s)
    s.update_graph("c", {"x": ("spec-x2", [])}, ["x"], {"x": 0})
    [(_, _, again)] = take(s)
    assert again["run_spec"] == "spec-x2" and again["run_id"] > first["run_id"]
    return first, again


def test_the_schedulers_word_on_an_earlier_run_is_not_the_new_runs(s):
    first, again = run_twice(s)
    # The first run ended before its worker heard of the release: that word is not
    # the second run's, and nothing is sent (the worker let that value go).
    s.handle_worker_message("w1", {"op": "task-finished", "key": "x", "nbytes": 8,
                                   "type": "int", "duration": 0.1, "data": "old",
                                   "direct": ["c"], "run_id": first["run_id"]})
    assert take(s) == [] and s.tasks["x"].state == "processing"
    s.handle_worker_message("w1", {"op": "task-finished", "key": "x", "nbytes": 8,
                                   "type": "int", "duration": 0.1, "data": "new",
                                   "run_id": again["run_id"]})
    assert s.tasks["x"].state == "memory" and s.tasks["x"].data == "new"
    assert take(s) == [("client", "c", {"op": "key-in-memory", "key": "x",
                                        "type": "int", "nbytes": 8, "worker": A,
                                        "data": "new"})]


def test_an_earlier_runs_error_is_not_the_new_runs(s):
    first, _ = run_twice(s, started=False)
    s.handle_worker_message("w1", {"op": "task-erred", "key": "x", "type": "ValueError",
                                   "text": "old", "run_id": first["run_id"]})
    assert take(s) == [] and s.tasks["x"].state == "processing"


def test_an_earlier_runs_secede_and_rejoin_are_not_the_new_runs(s):
    first, _ = run_twice(s)
    ws = s.workers["w1"]
    s.handle_worker_message("w1", {"op": "task-seceded", "key": "x",
                                   "run_id": first["run_id"]})
    assert ws.seceded == set() and "x" not in ws.stale     # its thread is free
    s.handle_worker_message("w1", {"op": "task-rejoined", "key": "x",
                                   "run_id": first["run_id"]})
    assert ws.seceded == set() and "x" in ws.stale          # and held again


def test_a_graph_asking_for_values_the_long_way_names_no_client_to_the_worker(s):
    s.handle_client_message("c", {"op": "update-graph", "tasks": [("x", "spec-x", [], 0)],
                                  "keys": ["x"], "indirect": ["x"]})
    [(_, _, msg)] = take(s)
    assert msg["want_data"] is True and "clients" not in msg    # not straight to c
    s.update_graph("d", {"x": ("spec-x", [])}, ["x"], {"x": 0})
    assert s.indirect == {"x": {"c"}}
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    s.handle_client_message("d", {"op": "client-releases-keys", "keys": ["x"]})
    take(s)
    assert s.indirect == {}                                   # forgotten with the key


def test_a_client_that_wants_a_running_key_again_the_long_way_gets_it_so(s):
    """c let go of x while d kept it running; c submits it again, asking for the
    value the long way: the worker, told of c before, still sends it straight, and c
    takes none of it; so the scheduler sends it too."""
    first = submit(s)
    assert first["clients"] == ["c"]
    s.update_graph("d", {"x": ("spec-x", [])}, ["x"], {"x": 0})
    s.handle_client_message("c", {"op": "client-releases-keys", "keys": ["x"]})
    s.handle_client_message("c", {"op": "update-graph", "tasks": [], "keys": ["x"],
                                  "indirect": ["x"]})
    take(s)
    s.handle_worker_message("w1", {"op": "task-finished", "key": "x", "nbytes": 8,
                                   "type": "int", "duration": 0.1, "data": "blob",
                                   "direct": ["c"], "run_id": first["run_id"]})
    assert sorted((ident, m["op"], m.get("data")) for _, ident, m in take(s)) == [
        ("c", "key-in-memory", "blob"), ("d", "key-in-memory", "blob")]


def test_the_worker_names_the_run_its_word_is_about(ws):
    ws.handle("client-subscribed", client="c")
    assert ws.handle("compute-task", key="x", run_spec="spec-x", want_data=True,
                     clients=["c"], run_id=7) == [
        Send({"op": "task-started", "key": "x", "run_id": 7}),
        Execute("x", "spec-x", {}, True)]
    # Released while it runs, then asked for again as the same computation: the run
    # under way answers the new request, and says so.
    ws.handle("free-keys", keys=["x"])
    assert ws.handle("compute-task", key="x", run_spec="spec-x", want_data=True,
                     clients=["c"], run_id=8) == []
    out = ws.handle("execute-success", key="x", value=1, nbytes=8, type="int",
                    data="blob")
    assert out[-1].msg["run_id"] == 8
    # As another computation: the run under way is dropped, the new one runs and
    # names its own run.
    ws.handle("compute-task", key="y", run_spec="spec-y", run_id=9)
    ws.handle("free-keys", keys=["y"])
    assert ws.handle("compute-task", key="y", run_spec="spec-y2", run_id=10) == []
    out = ws.handle("execute-success", key="y", value=1, nbytes=8, type="int")
    assert out == [Send({"op": "task-dropped", "key": "y"}),
                   Send({"op": "task-started", "key": "y", "run_id": 10}),
                   Execute("y", "spec-y2", {}, False)]
    assert ws.handle("secede", key="y") == [
        Send({"op": "task-seceded", "key": "y", "run_id": 10})]
    out = ws.handle("execute-failure", key="y", error={"type": "ValueError",
                                                       "text": "no"})
    assert out[0].msg["op"] == "task-erred" and out[0].msg["run_id"] == 10


def test_a_key_submitted_again_after_its_release_takes_no_value_straight(cs):
    st = cs.hold("x")
    cs.drop(["x"])                                 # let go of while it may run
    assert cs.indirect_among(["x"]) == []
    again = cs.hold("x")
    assert cs.indirect_among(["x", "other"]) == ["x"]
    # A value of the earlier run, sent straight before its worker heard of the
    # release, is not this key's.
    assert cs.handle_worker(result("x", "old")) == []
    assert again.status == PENDING and again.data is None
    # The scheduler's word, value and all, is.
    assert cs.handle(in_memory("x", data="new")) == [Done(again)]
    assert again.data == "new"
    assert cs.handle_worker(result("x", "old")) == [] and again.data == "new"
    # Let go of once done, the key is no longer a suspect.
    cs.drop(["x"])
    assert "x" not in cs.indirect and "x" not in cs.suspects
    cs.hold("x")
    assert cs.indirect_among(["x"]) == []
    cs.validate()


def test_a_key_cancelled_then_submitted_again_takes_no_value_straight(cs):
    st = cs.hold("y")
    assert cs.cancel([st], ["y"], False, None, None, "t") == [Done(st)]
    again = cs.hold("y")
    assert cs.indirect_among(["y"]) == ["y"]
    assert cs.handle_worker(result("y", "old")) == [] and again.status == PENDING


def test_an_unpickled_future_of_a_suspect_asks_for_its_value_the_long_way(cs):
    cs.hold("x")
    cs.drop(["x"])
    cs.take_messages()
    cs.hold("x", inform=True)
    assert cs.take_messages()[-1] == {"op": "client-desires-keys", "keys": ["x"],
                                      "indirect": ["x"]}


def test_suspects_are_kept_up_to_a_cap(cs, monkeypatch):
    import dask_ipy.client.state as state
    monkeypatch.setattr(state, "SUSPECTS_KEPT", 2)
    for key in "abc":
        cs.hold(key)
        cs.drop([key])
    assert list(cs.suspects) == ["b", "c"]
