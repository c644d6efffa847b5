"""The core runtime as the seed describes it: one scheduler, workers sharing data peer
to peer, several clients; in this process and as separate processes."""

import os
import pickle
import socket
import threading
import time
from collections.abc import MutableMapping
from operator import add

import dask
import dask.bag as db
import numpy as np
import pytest
import zmq

from helpers import (CreateFileOnLoad, array_of, array_sum, dask_ipy_threads, inc,
                     local_cluster, payload, slow_inc, wait_for, wait_for_file)
from dask_ipy import Client, Scheduler, Security, Worker
from dask_ipy.protocol import MessageTooLarge, Session, serialize

pytestmark = pytest.mark.timeout(90)

# The module's process cluster (the `pc` fixture), for the large graphs.
PROCESS_CLUSTER = {"nthreads": 2}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closing(*things):
    """Close in reverse order of creation, whatever happens."""
    for thing in reversed(things):
        try:
            thing.close()
        except Exception:
            pass


# ---------------------------------------------------------------- the seed's examples

def test_seed_example_as_written():
    s = Scheduler()
    workers = []
    c = None
    try:
        assert s.address_to_workers.startswith("tcp://127.0.0.1:")
        assert s.address_to_clients.startswith("tcp://127.0.0.1:")
        w1 = Worker(scheduler=s.address_to_workers)
        w2 = Worker(scheduler=s.address_to_workers)
        workers = [w1, w2]
        assert w1.data == {} and w1.address != w2.address
        c = Client(s.address_to_clients)
        dsk = {'x': 1, 'y': (add, 'x', 2)}
        assert c.get(dsk, 'y') == 3
    finally:
        closing(s, *workers, *([c] if c else []))
    wait_for(lambda: not dask_ipy_threads(), timeout=5, message="threads to stop")


def test_a_worker_may_start_before_the_scheduler():
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    security = Security.temporary()
    w = Worker(scheduler=address, security=security)
    s = c = None
    try:
        s = Scheduler(port_to_workers=port, security=security)
        c = Client(s)
        wait_for(lambda: len(s.state.workers) == 1, message="the early worker")
        assert c.get({"x": (inc, 1)}, "x") == 2
    finally:
        closing(*(x for x in (w, s, c) if x is not None))


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_given_addresses_are_advertised_and_released_on_close(hostname):
    pw, pc, pworker = free_port(), free_port(), free_port()
    s = Scheduler(hostname=hostname, port_to_workers=pw, port_to_clients=pc)
    w = c = None
    try:
        assert s.address_to_workers == f"tcp://{hostname}:{pw}"
        assert s.address_to_clients == f"tcp://{hostname}:{pc}"
        w = Worker(scheduler=s.address_to_workers, hostname="127.0.0.1",
                   port_to_workers=pworker, data={})
        assert w.address == f"tcp://127.0.0.1:{pworker}"
        c = Client(s.address_to_clients)
        assert c.get({"x": 1, "y": (add, "x", 2)}, "y") == 3
    finally:
        closing(s, *(x for x in (w, c) if x is not None))
    # The same ports can be bound again at once.
    s2 = Scheduler(hostname=hostname, port_to_workers=pw, port_to_clients=pc)
    w2 = None
    try:
        w2 = Worker(scheduler=s2.address_to_workers, hostname="127.0.0.1",
                    port_to_workers=pworker)
        c2 = Client(s2.address_to_clients)
        try:
            assert c2.get({"a": (inc, 41)}, "a") == 42
        finally:
            c2.close()
    finally:
        closing(s2, *(x for x in (w2,) if x is not None))
    ctx = zmq.Context()
    try:
        for port in (pw, pc, pworker):
            sock = ctx.socket(zmq.ROUTER)
            sock.linger = 0
            sock.bind(f"tcp://127.0.0.1:{port}")
            sock.close()
    finally:
        ctx.term()


def test_scheduler_and_client_are_context_managers():
    with Scheduler() as s, Worker(scheduler=s.address_to_workers) as w, \
            Client(s.address_to_clients) as c:
        assert c.get({"x": (inc, 1)}, "x") == 2
        assert list(c.scheduler_info()["workers"]) == [w.address]
    assert c.status == "closed"


def test_an_idle_timeout_waits_for_the_first_to_join(monkeypatch):
    """A scheduler whose launcher's workers and client are slow to come (a loaded
    machine, engines importing dask) is not closed as idle before anyone joined;
    once they have come and gone, the idle timeout counts from then."""
    from dask_ipy.scheduler import server

    monkeypatch.setattr(server, "FIRST_JOIN_TIMEOUT", 4.0)
    with Scheduler(idle_timeout=0.5) as s:
        time.sleep(2.5)                   # idle past 0.5 s, but nobody has joined
        assert not s.loop.stopped.is_set()
        with Client(s.address_to_clients, set_as_default=False) as c:
            assert c.nthreads() == {}
        assert s.loop.stopped.wait(5), "an idle scheduler stops once its client left"


def test_a_connection_file_is_enough(tmp_path):
    path = str(tmp_path / "sched.json")
    with Scheduler(connection_file=path) as s:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        with Worker(scheduler=path), Client(path) as c:
            assert c.get({"x": (inc, 1)}, "x") == 2
            assert c.scheduler_info()["address"] == s.address_to_clients
    assert not os.path.exists(path)


def test_legacy_tuples_and_task_objects_run_alike(cluster):
    from dask._task_spec import Alias, DataNode, Task, TaskRef

    _, _, c = cluster
    dsk = {"a": DataNode("a", 10), "b": Task("b", inc, TaskRef("a")),
           "c": (add, "b", (inc, "a")), "d": Alias("d", "c"), "e": ["a", "b"]}
    assert c.get(dsk, ["b", "c", "d", "e"]) == (11, 22, 22, [10, 11])


# ---------------------------------------------------------------- collections by name

def test_two_clients_share_a_named_collection(cluster):
    s, _, c1 = cluster
    c2 = Client(s.address_to_clients, set_as_default=False)
    try:
        b = db.from_sequence(range(5), npartitions=2).map(inc)
        c1.set_collection("mybag", b)
        assert c2.list_collections() == ["mybag"]
        b2 = c2.get_collection("mybag")
        expected = b.compute(scheduler="sync")
        assert expected == [1, 2, 3, 4, 5]
        assert b2.compute(scheduler=c2.get) == expected
        assert dask.compute(b2, scheduler=c1.get)[0] == expected
        with pytest.raises(KeyError):
            c2.get_collection("nope")
    finally:
        c2.close()


# ---------------------------------------------------------------- data moves peer to peer

def test_big_input_goes_from_worker_to_worker_not_through_the_scheduler(cluster):
    s, (wa, wb), c = cluster
    size = 100_000_000
    x = c.submit(array_of, size, 3, workers=[wa.address])
    wait_for(lambda: x.done(), timeout=30, message="the array")
    assert x.status == "finished"
    assert c.who_has([x]) == {x.key: (wa.address,)}
    before = s.bytes_received
    y = c.submit(array_sum, x, workers=[wb.address])
    assert y.result(timeout=60) == 3 * size
    # Only small control messages reached the scheduler while 100 MB moved.
    assert s.bytes_received - before < 1_000_000
    assert x.key in wa.data
    # The copy fetched for y is dropped once y is done with it.
    wait_for(lambda: x.key not in wb.data, message="the fetched copy to go")
    assert isinstance(wa.data[x.key], np.ndarray)


# ---------------------------------------------------------------- worker storage

class RecordingStore(MutableMapping):
    """A MutableMapping that is not a dict and remembers every write."""

    def __init__(self):
        self.inner = {}
        self.writes = []

    def __getitem__(self, key):
        return self.inner[key]

    def __setitem__(self, key, value):
        self.writes.append(key)
        self.inner[key] = value

    def __delitem__(self, key):
        del self.inner[key]

    def __iter__(self):
        return iter(self.inner)

    def __len__(self):
        return len(self.inner)


def test_a_blocked_task_of_a_tiny_group_never_silences_its_worker(tmp_path):
    """Tasks run on pool threads, never on the worker's I/O thread, however tiny their
    group has been: while one blocks, the worker still sends heartbeats and serves its
    data to peers."""
    gate = str(tmp_path / "gate")
    ready = tmp_path / "ready"
    ready.touch()
    with local_cluster(scheduler_options={"heartbeat_timeout": 2.0},
                       worker_options={"heartbeat_interval": 0.1}) as (s, (a, b), c):
        tiny = [c.submit(wait_for_file, str(ready), 1, i, workers=[a.address], pure=False)
                for i in range(20)]
        assert c.gather(tiny) == list(range(20))
        blocked = c.submit(wait_for_file, gate, 30, "done", workers=[a.address])
        wait_for(lambda: a.state.executing, message="the blocked task to start")
        # b fetches from a while a's only thread waits at the gate.
        assert c.submit(inc, tiny[0], workers=[b.address]).result(timeout=5) == 1
        # Heartbeats keep coming for longer than the scheduler's heartbeat timeout
        # (2 s): it would have removed a worker that fell silent.
        record = s.state.workers[a.identity]
        since = record.last_seen
        wait_for(lambda: record.last_seen > since + 2.5 or a.identity not in s.state.workers,
                 timeout=20, message="heartbeats from the blocked worker")
        assert s.state.workers.get(a.identity) is record
        open(gate, "w").close()
        assert blocked.result(timeout=10) == "done"


def test_a_worker_that_joins_takes_over_work_queued_on_a_busy_one():
    s = Scheduler(validate=True)
    a = Worker(scheduler=s.address_to_workers, validate=True)
    c = Client(s.address_to_clients)
    b = None
    try:
        # A worker registers once the scheduler has answered its hello.
        wait_for(lambda: a.identity in s.state.workers, message="a to register")
        x = c.submit(inc, 0)
        # Six tasks on x, all sent to the only worker there is.
        ys = [c.submit(slow_inc, x, delay=0.2, pure=False) for _ in range(6)]
        wait_for(lambda: len(s.state.workers[a.identity].processing) == 6,
                 message="the tasks to be queued on a")
        b = Worker(scheduler=s.address_to_workers, validate=True)
        assert c.gather(ys, timeout=10) == [2] * 6
        holders = {w for ws in c.who_has(ys).values() for w in ws}
        assert holders == {a.address, b.address}
        assert c.scheduler_info()["stolen"] >= 1
    finally:
        c.close()
        for w in (a, b):
            if w is not None:
                w.close()
        s.close()
    wait_for(lambda: not dask_ipy_threads(), timeout=5, message="threads to stop")


def test_the_tasks_of_a_graph_leave_before_the_rest_of_its_batch_is_handled():
    """A client's batch of an "update-graph" and a gather waiting for its task: the
    "compute-task" is on its way to the worker before the gather is handled."""
    with Scheduler() as s, Worker(scheduler=s.address_to_workers):
        wait_for(lambda: s.state.workers, timeout=10, message="the worker registered")
        seen = []
        take, gather = s.state.take_messages, s.from_clients["gather"]

        def taking():
            out = take()
            seen.extend(msg["op"] for _, _, msg in out)
            return out

        def gathering(cid, msg):
            seen.append("(gather handled)")
            gather(cid, msg)

        s.state.take_messages, s.from_clients["gather"] = taking, gathering
        client = Session(s.security.key, b"client-batch", epoch=s.session.epoch)
        batch = client.dumps([
            {"op": "update-graph", "tasks": [("inc-1", serialize((inc, 1)).frames[0], [], 0)],
             "keys": ["inc-1"]},
            {"op": "gather", "keys": ["inc-1"], "wait": True, "request_id": 1}], s.id)
        handled = threading.Event()

        def handle():
            s._on_client_frames([zmq.Frame(f) for f in [client.identity, *batch]])
            handled.set()

        s.loop.call_soon(handle)
        assert handled.wait(10)
        assert seen.index("compute-task") < seen.index("(gather handled)")


def test_custom_data_mapping_receives_results(cluster):
    s, _, c = cluster
    store = RecordingStore()
    w = Worker(scheduler=s.address_to_workers, data=store, validate=True)
    try:
        assert w.data is store
        wait_for(lambda: len(s.state.workers) == 3, message="third worker")
        f = c.submit(inc, 41, workers=[w.address])
        assert f.result(timeout=10) == 42
        assert store.writes == [f.key] and store[f.key] == 42
        g = c.submit(add, f, 1, workers=[w.address])
        assert g.result(timeout=10) == 43
        assert store[g.key] == 43
        del f
        wait_for(lambda: len(store) == 1, message="released key to leave the store")
    finally:
        w.close()


# ---------------------------------------------------------------- hostile input

def test_unauthenticated_pickles_are_never_loaded(cluster, tmp_path):
    s, (wa, wb), c = cluster
    target = tmp_path / "pwned"
    evil = pickle.dumps(CreateFileOnLoad(str(target)))
    assert not target.exists()
    # The wrong key, behind the right ZeroMQ credentials (read off the wire, say).
    intruder = Session(os.urandom(32), b"intruder", epoch=os.urandom(16))
    forged = [
        [evil],
        [b"\0" * 32, evil],
        [b"\0" * 32, b"header", evil],
        intruder.dumps([{"op": "update-graph", "keys": ["k"],
                         "tasks": [("k", serialize(CreateFileOnLoad(str(target))), [])]}],
                       b"scheduler"),
        intruder.dumps([{"op": "put-data", "data": {"k": serialize(
            CreateFileOnLoad(str(target)))}}], b"worker"),
        intruder.dumps([{"op": "get-data", "keys": ["k"], "request_id": "r"}], b"worker"),
    ]
    ctx = zmq.Context()
    try:
        socks = []
        for address in (s.address_to_clients, s.address_to_workers, wa.address):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.routing_id = b"intruder"
            s.security.configure_client(sock)
            sock.connect(address)
            socks.append(sock)
            for frames in forged:
                sock.send_multipart(frames)
        wait_for(lambda: s.rejected >= 2 * len(forged), message="rejections")
        # Nobody answers a forged message.
        for sock in socks:
            assert sock.poll(300) == 0
            sock.close()
    finally:
        ctx.destroy(linger=0)
    assert not target.exists()
    # Both keep serving real clients, including work placed on the attacked worker.
    assert c.submit(inc, 1, workers=[wa.address]).result(timeout=10) == 2
    assert c.get({"x": (inc, 1), "y": (add, "x", 10)}, "y") == 12
    assert not target.exists()


# ------------------------------------------------------- large graphs, real processes

def tree(n_inputs, name):
    """``n_inputs`` inc tasks summed pairwise: about 2 * n_inputs tasks."""
    dsk = {(name, "inc", i): (inc, i) for i in range(n_inputs)}
    layer = list(dsk)
    level = 0
    while len(layer) > 1:
        nxt = []
        for j in range(0, len(layer), 2):
            key = (name, "sum", level, j // 2)
            dsk[key] = (sum, layer[j:j + 2])
            nxt.append(key)
        layer, level = nxt, level + 1
    return dsk, layer[0], sum(range(1, n_inputs + 1))


@pytest.mark.parametrize("n_inputs", [5_000, 50_000])
@pytest.mark.timeout(240)
@pytest.mark.uncovered                  # throughput: tracing would triple its time
def test_large_graphs_complete_on_separate_processes(pc, n_inputs, capsys):
    c = pc.client()
    try:
        dsk, final, expected = tree(n_inputs, f"tree{n_inputs}")
        assert len(dsk) >= 2 * n_inputs - 1
        start = time.perf_counter()
        assert c.get(dsk, final) == expected
        elapsed = time.perf_counter() - start
        with capsys.disabled():
            print(f"\n{len(dsk)} tasks on 2 worker processes: {elapsed:.1f} s")
        wait_for(lambda: c.scheduler_info()["ntasks"] == 0, message="tasks to be freed")
    finally:
        c.close()


# ---------------------------------------------------------------- caps

def test_a_gather_bigger_than_the_clients_cap_is_an_error_naming_a_key_not_a_hang():
    """Each value fits the client's cap, all of them together do not."""
    with local_cluster(client_options={"max_message_bytes": 3_000_000}) as (s, ws, c):
        a, b = (c.submit(payload, 2_000_000, i, key=f"two-mb-{i}") for i in (1, 2))
        small = c.submit(payload, 100, 3)
        assert a.result(timeout=30) == b"\x01" * 2_000_000
        with pytest.raises(MessageTooLarge, match="two-mb-[12]"):   # the one that came last
            c.gather([a, small, b], timeout=30)
        assert c.gather([small, b], timeout=30)[1] == b"\x02" * 2_000_000
        assert c.submit(inc, 1).result(timeout=30) == 2
