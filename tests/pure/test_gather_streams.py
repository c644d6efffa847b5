"""SchedulerState alone: a client's gather whose large values the holders stream to
it through the shell's relay.  The state only asks for streams, orders the relay to
let them through (or to give them up) and passes their announcements on, opaque;
messages are compared literally."""

import pytest

from dask_ipy.scheduler.state import SchedulerState

pytestmark = pytest.mark.timeout(30)

A, B = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"
STREAM = {"ticket": b"t" * 16, "sizes": [100, 50_000_000], "keys": ["a"]}


def held_apart(streams=True):
    """Client "c", workers "w1" (A) holding "a" and "w2" (B) holding "b"."""
    s = SchedulerState(validate=True)
    s.relay_streams = streams
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.add_worker("w2", B, nthreads=1)
    for i, (key, wid, address) in enumerate((("a", "w1", A), ("b", "w2", B))):
        s.handle_client_message("c", {"op": "scatter", "request_id": i,
                                      "data": {key: "blob"}, "workers": [address]})
        s.handle_worker_message(wid, {"op": "add-keys", "keys": [(key, 4, "int")]})
    s.take_messages()
    return s


def test_a_gather_that_may_stream_says_for_whom_and_passes_the_streams_on():
    s = held_apart()
    s.handle_client_message("c", {"op": "gather", "request_id": 2, "keys": ["a"],
                                  "stream": True})
    [(_, wid, ask)] = s.take_messages()
    assert ask == {"op": "send-data", "keys": ["a"], "request_id": ask["request_id"],
                   "for": "c"}
    s.handle_worker_message(wid, {"op": "data", "request_id": ask["request_id"],
                                  "data": {}, "missing": [], "errors": {},
                                  "streams": [STREAM]})
    # The relay is told before the client hears of the stream.
    assert s.take_messages() == [("relay", STREAM["ticket"], STREAM["sizes"]),
                                 ("client", "c", {
        "op": "gather-result", "request_id": 2, "data": {}, "missing": [], "errors": {},
        "streams": [STREAM]})]


def test_streams_a_client_gave_up_are_given_up_at_the_relay():
    s = held_apart()
    s.handle_client_message("c", {"op": "gather", "request_id": 3, "keys": ["a"],
                                  "stream": False, "unwanted": [b"t" * 16, b"u" * 16]})
    out = s.take_messages()
    assert out[:2] == [("relay", b"t" * 16, None), ("relay", b"u" * 16, None)]
    assert [m["op"] for _, _, m in out[2:]] == ["send-data"]
    # Without a relay (encryption) there is nothing to order.
    s = held_apart(streams=False)
    s.handle_client_message("c", {"op": "gather", "request_id": 3, "keys": ["a"],
                                  "unwanted": [b"t" * 16]})
    assert [kind for kind, _, _ in s.take_messages()] == ["worker"]


@pytest.mark.parametrize("request_options, shell_streams", [
    ({"stream": False}, True),                             # the client cannot take them
    ({"stream": True, "max_bytes": 10_000_000}, True),     # a capped client
    ({"stream": True}, False),                             # no relay (encryption)
])
def test_no_streams_are_asked_for_when_they_cannot_be_taken(request_options,
                                                            shell_streams):
    s = held_apart(shell_streams)
    s.handle_client_message("c", {"op": "gather", "request_id": 2, "keys": ["a"],
                                  **request_options})
    [(_, _, ask)] = s.take_messages()
    assert "for" not in ask


def test_keys_already_streaming_are_not_asked_again_when_a_holder_dies():
    s = held_apart()
    # "b" on both workers; w1 busy, so that "b" is asked of w2.
    s.handle_client_message("c", {"op": "scatter", "request_id": 3, "data": {"b": "blob"},
                                  "workers": [A]})
    s.handle_worker_message("w1", {"op": "add-keys", "keys": [("b", 4, "int")]})
    s.handle_client_message("c", {"op": "update-graph", "tasks": [("x", "spec-x", [], 0)],
                                  "keys": ["x"], "restrictions": {"x": [A]}})
    s.take_messages()
    s.handle_client_message("c", {"op": "gather", "request_id": 2, "keys": ["a", "b"],
                                  "stream": True})
    asks = {wid: msg for _, wid, msg in s.take_messages()}
    assert {wid: msg["keys"] for wid, msg in asks.items()} == {"w1": ["a"], "w2": ["b"]}
    # w1 streams "a"; w2 dies before it answers: only "b" is asked again, of w1.
    s.handle_worker_message("w1", {"op": "data", "request_id": asks["w1"]["request_id"],
                                   "data": {}, "missing": [], "errors": {},
                                   "streams": [STREAM]})
    s.remove_worker("w2")
    out = s.take_messages()
    assert ("relay", STREAM["ticket"], STREAM["sizes"]) in out
    [(_, wid, retry)] = [m for m in out if m[0] == "worker" and m[2]["op"] == "send-data"]
    assert wid == "w1" and retry["keys"] == ["b"]
    s.handle_worker_message(wid, {"op": "data", "request_id": retry["request_id"],
                                  "data": {"b": "blob"}, "missing": [], "errors": {}})
    [(_, _, result)] = [m for m in s.take_messages() if m[2]["op"] == "gather-result"]
    assert result["data"] == {"b": "blob"} and result["streams"] == [STREAM]


# ---------------------------------------------------------------- relays between workers

def relay_apart(relay_streams=True, **options):
    """Workers "w1" (A) holding "a" and "w2" (B) that cannot reach A, and "w3" (C)
    holding "b"."""
    s = SchedulerState(validate=True, **options)
    s.relay_streams = relay_streams
    s.add_client("c")
    for wid, address in (("w1", A), ("w2", B), ("w3", C)):
        s.add_worker(wid, address, nthreads=1)
    for i, (key, wid, address) in enumerate((("a", "w1", A), ("b", "w3", C))):
        s.handle_client_message("c", {"op": "scatter", "request_id": i,
                                      "data": {key: "blob"}, "workers": [address]})
        s.handle_worker_message(wid, {"op": "add-keys", "keys": [(key, 4, "int")]})
    s.handle_worker_message("w2", {"op": "peer-unreachable", "address": A})
    s.take_messages()
    return s


C = "tcp://10.0.0.3:1"


def test_a_relay_that_may_stream_is_signed_for_the_worker_and_ordered_before_it_hears():
    # A cap far below the stream's size: streamed values are not held, so not capped.
    s = relay_apart(max_relay_bytes=100_000)
    s.handle_worker_message("w2", {"op": "relay", "request_id": "r1", "keys": ["a"],
                                   "stream": True})
    [(_, wid, ask)] = s.take_messages()
    assert (wid, ask) == ("w1", {"op": "send-data", "keys": ["a"],
                                 "request_id": ask["request_id"], "for": "w2",
                                 "max_bytes": 100_000})
    s.handle_worker_message("w1", {"op": "data", "request_id": ask["request_id"],
                                   "data": {}, "missing": [], "errors": {},
                                   "streams": [STREAM]})
    assert s.take_messages() == [("relay", STREAM["ticket"], STREAM["sizes"]),
                                 ("worker", "w2", {
        "op": "relay-data", "request_id": "r1", "data": {}, "missing": [], "errors": {},
        "streams": [STREAM]})]
    assert s.gathers == {}


def test_a_relay_streams_only_when_both_ends_can():
    for relay_streams, request_options, streams in [
        (True, {"stream": True}, True),
        (True, {}, False),             # the worker cannot take streams (or they failed)
        (True, {"stream": False}, False),
        (False, {"stream": True}, False),    # no relay (encryption): one message, capped
    ]:
        s = relay_apart(relay_streams)
        s.handle_worker_message("w2", {"op": "relay", "request_id": "r1", "keys": ["a"],
                                       **request_options})
        [(_, _, ask)] = s.take_messages()
        assert ("for" in ask) is streams and ask["max_bytes"] == s.max_relay_bytes


def test_streams_for_a_worker_that_left_are_given_up_and_nobody_is_answered():
    s = relay_apart()
    s.handle_worker_message("w2", {"op": "relay", "request_id": "r1",
                                   "keys": ["a", "b"], "stream": True})
    asks = {wid: msg for _, wid, msg in s.take_messages()}
    assert sorted(asks) == ["w1", "w3"]
    s.handle_worker_message("w1", {"op": "data", "request_id": asks["w1"]["request_id"],
                                   "data": {}, "missing": [], "errors": {},
                                   "streams": [STREAM]})
    assert s.take_messages() == [("relay", STREAM["ticket"], STREAM["sizes"])]
    # w2 leaves while "b" is still on its way: the upload of "a" ends now.
    s.remove_worker("w2")
    out = s.take_messages()
    assert ("relay", STREAM["ticket"], None) in out
    assert not [m for kind, _, m in out if kind == "worker" and m["op"] == "relay-data"]
    assert s.gathers == {}
    s.handle_worker_message("w3", {"op": "data", "request_id": asks["w3"]["request_id"],
                                   "data": {"b": "blob"}, "missing": [], "errors": {}})
    assert s.take_messages() == []


def test_a_holder_that_dies_before_streaming_leaves_the_key_missing_for_the_worker():
    s = relay_apart()
    s.handle_worker_message("w2", {"op": "relay", "request_id": "r1", "keys": ["a"],
                                   "stream": True})
    [(_, _, ask)] = s.take_messages()
    assert ask["for"] == "w2"
    s.remove_worker("w1")
    [reply] = [m for kind, wid, m in s.take_messages()
               if kind == "worker" and m["op"] == "relay-data"]
    assert reply == {"op": "relay-data", "request_id": "r1", "data": {},
                     "missing": ["a"], "errors": {}}


def test_streams_for_a_client_that_left_before_the_answer_are_given_up():
    s = held_apart()
    s.handle_client_message("c", {"op": "gather", "request_id": 2, "keys": ["a", "b"],
                                  "stream": True})
    asks = {wid: msg for _, wid, msg in s.take_messages()}
    s.handle_worker_message("w1", {"op": "data", "request_id": asks["w1"]["request_id"],
                                   "data": {}, "missing": [], "errors": {},
                                   "streams": [STREAM]})
    s.take_messages()
    s.remove_client("c")
    s.take_messages()
    s.handle_worker_message("w2", {"op": "data", "request_id": asks["w2"]["request_id"],
                                   "data": {"b": "blob"}, "missing": [], "errors": {}})
    assert ("relay", STREAM["ticket"], None) in s.take_messages()


# ---------------------------------------------------------------- scattered streams

def scatter_ready(relay_streams=True):
    s = SchedulerState(validate=True)
    s.relay_streams = relay_streams
    s.add_client("c")
    s.add_worker("w1", A, nthreads=1)
    s.add_worker("w2", B, nthreads=1)
    s.take_messages()
    return s


def scattered_stream(key, wid, ticket=b"s" * 16):
    return {"ticket": ticket, "sizes": [100, 50_000_000], "keys": [key], "worker": wid}


def test_a_scatter_streams_to_the_workers_it_was_told_of_the_relay_ordered_first():
    s = scatter_ready()
    s.handle_client_message("c", {"op": "scatter-targets", "request_id": 1,
                                  "keys": ["x", "y"], "broadcast": False,
                                  "workers": None})
    [(_, _, reply)] = s.take_messages()
    targets = reply["result"]
    assert reply["op"] == "reply" and sorted(targets) == ["x", "y"]
    assert sorted(w for ws in targets.values() for w in ws) == ["w1", "w2"]
    streams = [scattered_stream(key, wid, key.encode() * 16)
               for key, [wid] in targets.items()]
    s.handle_client_message("c", {"op": "scatter", "request_id": 2, "data": {"z": "blob"},
                                  "streams": streams, "broadcast": False,
                                  "workers": None})
    out = s.take_messages()
    puts = [(wid, m) for kind, wid, m in out if kind == "worker"]
    relays = [(ticket, sizes) for kind, ticket, sizes in out if kind == "relay"]
    assert relays == [(st["ticket"], st["sizes"]) for st in streams]
    assert out.index(("relay", streams[0]["ticket"], streams[0]["sizes"])) < [
        i for i, m in enumerate(out) if m[0] == "worker" and "streams" in m[2]][0]
    for stream in streams:
        assert (stream["worker"], {"op": "put-data", "data": {},
                                   "streams": [stream]}) in puts
    assert [m["data"] for _, m in puts if m["data"]] == [{"z": "blob"}]
    for key, [wid] in targets.items():
        s.handle_worker_message(wid, {"op": "add-keys", "keys": [(key, 50_000_000,
                                                                  "ndarray")]})
    assert sorted(m["key"] for _, _, m in s.take_messages()) == ["x", "y"]
    assert s.tasks["x"].state == "memory" and s.scatters == {"z": s.scatters["z"]}


def test_no_targets_without_a_relay():
    s = scatter_ready(relay_streams=False)
    s.handle_client_message("c", {"op": "scatter-targets", "request_id": 1,
                                  "keys": ["x"], "broadcast": False, "workers": None})
    assert s.take_messages() == [("client", "c", {"op": "reply", "request_id": 1,
                                                  "result": None})]


def test_a_scattered_stream_a_worker_could_not_download_fails_the_scatter():
    s = scatter_ready()
    stream = scattered_stream("x", "w1")
    s.handle_client_message("c", {"op": "scatter", "request_id": 2, "data": {},
                                  "streams": [stream]})
    s.take_messages()
    s.handle_worker_message("w1", {"op": "put-failed", "keys": ["x"]})
    [(_, _, failed)] = s.take_messages()
    assert failed["op"] == "scatter-failed" and failed["request_id"] == 2
    assert "did not reach worker" in failed["text"] and s.scatters == {}
    # Asked again over ZeroMQ, it is stored as any scatter.
    s.handle_client_message("c", {"op": "scatter", "request_id": 3,
                                  "data": {"x": "blob"}})
    [(_, wid, put)] = s.take_messages()
    s.handle_worker_message(wid, {"op": "add-keys", "keys": [("x", 4, "int")]})
    assert s.take_messages() == [("client", "c", {"op": "scattered", "request_id": 3,
                                                  "key": "x"})]


def test_a_stream_for_a_worker_gone_since_it_was_chosen_is_given_up():
    s = scatter_ready()
    s.remove_worker("w2")
    s.take_messages()
    stream = scattered_stream("x", "w2")
    s.handle_client_message("c", {"op": "scatter", "request_id": 2, "data": {},
                                  "streams": [stream]})
    assert s.take_messages() == [
        ("relay", stream["ticket"], None),
        ("client", "c", {"op": "scatter-failed", "request_id": 2,
                         "text": "the worker chosen to receive 'x' left"})]


def test_a_broadcast_that_loses_one_worker_after_another_stored_it_is_done():
    s = scatter_ready()
    s.handle_client_message("c", {"op": "scatter", "request_id": 2, "data": {},
                                  "streams": [scattered_stream("x", "w1", b"1" * 16),
                                              scattered_stream("x", "w2", b"2" * 16)]})
    s.take_messages()
    s.handle_worker_message("w1", {"op": "add-keys", "keys": [("x", 4, "int")]})
    assert s.take_messages() == []
    s.remove_worker("w2")
    assert ("client", "c", {"op": "scattered", "request_id": 2, "key": "x"}) in \
        s.take_messages()


# ---------------------------------------------------------------- an end that leaves

def answered_with_a_stream():
    """Client "c" was told of a stream of "a", uploaded by "w1" through the relay."""
    s = held_apart()
    s.handle_client_message("c", {"op": "gather", "request_id": 2, "keys": ["a"],
                                  "stream": True})
    [(_, wid, ask)] = s.take_messages()
    s.handle_worker_message(wid, {"op": "data", "request_id": ask["request_id"],
                                  "data": {}, "missing": [], "errors": {},
                                  "streams": [STREAM]})
    assert [kind for kind, _, _ in s.take_messages()] == ["relay", "client"]
    return s


@pytest.mark.parametrize("leaves", ["client", "uploader"])
def test_a_stream_ends_at_once_when_one_end_leaves_after_the_answer(leaves):
    """The other end would wait at the relay for nobody: the relay gives the stream
    up now instead of at its timeout (for a ticket already used, or given up
    already, nothing happens there)."""
    s = answered_with_a_stream()
    if leaves == "client":
        s.remove_client("c")
    else:
        s.remove_worker("w1")
    assert ("relay", STREAM["ticket"], None) in s.take_messages()


def test_an_unrelated_end_leaving_gives_up_nothing():
    s = answered_with_a_stream()
    s.remove_worker("w2")
    assert not [m for m in s.take_messages() if m[0] == "relay"]


@pytest.mark.parametrize("leaves", ["client", "downloader"])
def test_a_scattered_stream_ends_at_once_when_one_end_leaves(leaves):
    s = scatter_ready()
    stream = scattered_stream("x", "w1")
    s.handle_client_message("c", {"op": "scatter", "request_id": 2, "data": {},
                                  "streams": [stream]})
    s.take_messages()
    if leaves == "client":
        s.remove_client("c")
    else:
        s.remove_worker("w1")
    assert ("relay", stream["ticket"], None) in s.take_messages()
