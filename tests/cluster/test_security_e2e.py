"""Security end to end: hostile messages at every listening port, and encryption.

Raw pyzmq DEALER sockets that passed ZeroMQ's handshake (as a peer that read the PLAIN
password off the wire could) send unauthenticated, forged, impersonating, replayed,
tampered, truncated, oversize and other-version messages to the scheduler's worker
port, its client port and a worker's peer port.  Each is rejected and logged, its
sender hears nothing, nothing of it is unpickled (its payload would create a file),
and the cluster keeps serving a real client.  Then the whole cluster runs encrypted:
it computes, while a sniffing relay sees no plaintext, a client without the key gets
nothing, and the key shows up in no log line and no repr.

The cluster runs in this process, so that logs and counters can be inspected.
"""

import logging
import os
import pickle
import socket
import stat
import threading

import msgpack
import pytest
import zmq

import helpers as ops
from helpers import dask_ipy_threads, local_cluster, wait_for
from dask_ipy import Client, Scheduler, Security, Worker
from dask_ipy import protocol
from dask_ipy.protocol import Session, Serialized, serialize
from dask_ipy.security import _server_keypair

pytestmark = pytest.mark.timeout(60)

CAP = 2**20          # bytes: the cluster's cap on received messages, for "oversize"


@pytest.fixture
def secured(tmp_path):
    """(scheduler, [worker, worker], client) in this process, every cap at 1 MiB."""
    with local_cluster({"max_message_bytes": CAP}, {"max_message_bytes": CAP}) as parts:
        yield parts


@pytest.fixture
def context():
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def dealer(ctx, address, identity, security=None):
    """A raw DEALER; with `security`, it has the ZeroMQ credentials of its cluster."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.routing_id = identity
    if security is not None:
        security.configure_client(sock)
    sock.connect(address)
    return sock


def bomb_pickle(path):
    """A pickle stream whose loading creates `path`."""
    return pickle.dumps(ops.CreateFileOnLoad(str(path)), protocol=5)


def graph_message(spec):
    """What a client sends to run `spec` (a Serialized task) under key "k"."""
    return [{"op": "update-graph", "tasks": [("k", spec, [])], "keys": ["k"],
             "user_priority": 0, "retries": 0}]


def other_version(session, frames, version=3):
    """The message as a peer speaking protocol `version` would sign it."""
    header = bytearray(frames[1])
    header[0:2] = version.to_bytes(2, "little")
    payload = frames[2:]
    sizes = [len(header)] + [len(bytes(p)) for p in payload]
    return [session._mac(bytes(header), payload, sizes), bytes(header), *payload]


def hand_signed(session, msgs, epoch, to):
    """A message signed with the right key that `Session.dumps` would not make: any
    epoch, any recipient."""
    body = msgpack.packb(msgs, default=lambda s: msgpack.ExtType(1, bytes(s.frames[0])))
    header = protocol._ENVELOPE.pack(protocol.PROTOCOL_VERSION, epoch, 99,
                                     len(session.identity), len(to), 0, 0)
    header += session.identity + to + body
    return [session._mac(header, [], None), header]


def hostile_messages(key, identity, bomb, epoch, to):
    """[(kind, frames)] of messages the receiver must refuse; `bomb` is a pickle stream
    that must never be loaded.  Signed ones are signed by `identity`, the sender, in
    the cluster's `epoch`, for `to`."""
    wrong = Session(b"not the key", identity, epoch=epoch)
    right = Session(key, identity, epoch=epoch)
    old = Session(key, identity, epoch=os.urandom(16))      # another scheduler start
    inline_bomb = Serialized([bomb])
    # A pickle stream big enough to travel as a payload frame of its own, which a
    # tampering peer then swaps for the bomb.
    big_stream = serialize(list(range(30_000)))
    assert big_stream.nbytes > 65_536 and len(big_stream.frames) == 1
    tampered = right.dumps(graph_message(big_stream), to)
    assert len(tampered) == 3
    tampered[2] = bomb
    truncated = right.dumps(graph_message(big_stream), to)[:2]
    short_header = right.dumps(graph_message(inline_bomb), to)
    short_header[1] = bytes(short_header[1])[:12]
    return [
        ("garbage", [b"not a mac", b"hello"]),
        ("empty", [b""]),
        ("unsigned pickle", [bomb]),
        ("forged", wrong.dumps(graph_message(inline_bomb), to)),
        ("impersonating", Session(key, b"someone-else", epoch=epoch).dumps(
            graph_message(inline_bomb), to)),
        ("other epoch", old.dumps(graph_message(inline_bomb), to)),
        ("no recipient", hand_signed(right, graph_message(inline_bomb), epoch, b"")),
        ("no epoch", hand_signed(right, graph_message(inline_bomb), bytes(16), to)),
        ("tampered", tampered),
        ("truncated", truncated),
        ("truncated header", short_header),
        ("oversize", [bytes(32), bomb + bytes(CAP)]),
        ("other version", other_version(right, right.dumps(graph_message(inline_bomb), to))),
        ("wrong recipient", right.dumps(graph_message(inline_bomb), b"somebody-else")),
    ]


EXPECTED_REASONS = ["bad MAC frame", "message signature does not match",
                    "at least 2 frames", "arrived from", "exceeds the cap",
                    "protocol version 3", "replayed or stale", "another scheduler start",
                    "arrived at", "without an epoch"]


def rejections(caplog, who, level=logging.DEBUG):
    """Log lines of rejections by `who` at `level` (each one is logged at DEBUG; at
    WARNING, the first and then one count per interval)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and "rejected" in r.getMessage()
            and r.getMessage().startswith(who)]


@pytest.mark.parametrize("port", ["scheduler-workers", "scheduler-clients", "worker-peers"])
def test_hostile_messages_are_rejected_logged_and_never_unpickled(
        secured, context, caplog, tmp_path, port):
    caplog.set_level(logging.DEBUG, logger="dask_ipy")
    s, workers, c = secured
    key = s.security.key
    epoch = s.session.epoch
    address = {"scheduler-workers": s.address_to_workers,
               "scheduler-clients": s.address_to_clients,
               "worker-peers": workers[0].address}[port]
    to = workers[0].address.encode() if port == "worker-peers" else s.id
    who = "worker" if port == "worker-peers" else "scheduler"
    identity = b"attacker-1"
    sock = dealer(context, address, identity, s.security)
    evidence = tmp_path / "unpickled"
    bad = hostile_messages(key, identity, bomb_pickle(evidence), epoch, to)

    # A replay needs a genuine message first: one the receiver accepts and answers.
    me = Session(key, identity, epoch=epoch)
    genuine = {"scheduler-workers": [{"op": "heartbeat", "metrics": {}}],
               "scheduler-clients": [{"op": "info", "what": "nthreads",
                                      "request_id": 1}],
               "worker-peers": [{"op": "get-data", "keys": ["nothing"],
                                 "request_id": "r1"}]}[port]
    frames = me.dumps(genuine, to)
    sock.send_multipart(frames)
    assert sock.poll(10_000), "the genuine message got no answer"
    (answer,) = Session(key, identity, epoch=epoch).loads(sock.recv_multipart())
    assert answer["op"] in ("unknown-worker", "reply", "data")
    bad.append(("replayed", frames))

    rejected_before = s.rejected
    for kind, message in bad:
        sock.send_multipart(message)

    if who == "scheduler":
        wait_for(lambda: s.rejected - rejected_before == len(bad), timeout=10,
                 message="every message to be rejected")
    else:
        wait_for(lambda: len(rejections(caplog, who)) == len(bad), timeout=10,
                 message="every message to be rejected")
    logged = rejections(caplog, who)
    assert len(logged) == len(bad)
    for reason in EXPECTED_REASONS:
        assert any(reason in line for line in logged), (reason, logged)
    # At WARNING: the first one only, the rest counted for a later line.
    assert len(rejections(caplog, who, logging.WARNING)) == 1
    # The sender of bad data hears nothing back.
    assert not sock.poll(200)
    sock.close()

    # The service goes on, and nothing was ever unpickled.
    assert c.submit(ops.inc, 1).result(timeout=10) == 2
    assert c.gather(c.map(ops.add, range(20), range(20))) == list(range(0, 40, 2))
    assert len(s.state.workers) == 2
    assert not evidence.exists()


def test_an_unknown_worker_is_told_so_and_changes_nothing(secured, context):
    s, workers, c = secured
    identity = b"worker-imposter"
    sock = dealer(context, s.address_to_workers, identity, s.security)
    me = Session(s.security.key, identity, epoch=s.session.epoch)
    sock.send_multipart(me.dumps([{"op": "task-finished", "key": "k", "nbytes": 1}], s.id))
    assert sock.poll(10_000)
    assert Session(s.security.key, identity, epoch=s.session.epoch).loads(
        sock.recv_multipart()) == [{"op": "unknown-worker"}]
    sock.close()
    assert len(s.state.workers) == 2 and "k" not in s.state.tasks
    assert c.submit(ops.inc, 2).result(timeout=10) == 3


# ---------------------------------------------------------------- encryption


class SniffingRelay:
    """A TCP relay that forwards connections to `port` and keeps every byte it sees."""

    def __init__(self, port):
        self.target = port
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sockets = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, name="test-relay")]
        self.threads[0].start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                downstream, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for sock in (downstream, upstream):
                sock.settimeout(0.05)
                self.sockets.append(sock)
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                t = threading.Thread(target=self._pump, args=(src, dst),
                                     name="test-relay-pump")
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst):
        while not self.stop.is_set():
            try:
                data = src.recv(65536)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.seen += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.stop.set()
        for t in list(self.threads):
            t.join(5)
        for sock in self.sockets + [self.listener]:
            sock.close()


MARKER = b"PLAINTEXT-MARKER-7f3a"


def run_through_relay(security):
    """Compute with a client connected through a sniffing relay; returns the bytes
    the relay saw.  Workers exchange data directly, a dependency between them."""
    s = Scheduler(security=security)
    workers = [Worker(scheduler=s.address_to_workers, security=security)
               for _ in range(2)]
    relay = SniffingRelay(int(s.address_to_clients.rsplit(":", 1)[1]))
    c = None
    try:
        wait_for(lambda: len(s.state.workers) == 2, message="workers")
        c = Client(f"tcp://127.0.0.1:{relay.port}", security=security)
        a, b = sorted(s.state.by_address)
        x = c.submit(ops.payload, 100_000, 5, workers=[a])
        y = c.submit(ops.length, x, workers=[b])
        assert y.result(timeout=20) == 100_000
        assert c.submit(ops.length, MARKER * 1000).result(timeout=20) == 21_000
        (scattered,) = c.scatter([MARKER * 10])
        assert scattered.result(timeout=20) == MARKER * 10
        assert c.get({"m": MARKER, "n": (ops.length, "m")}, "n") == len(MARKER)
        assert sorted(c.run(ops.type_name, MARKER).values()) == ["bytes", "bytes"]
    finally:
        if c is not None:
            c.close()
        relay.close()
        for w in workers:
            w.close()
        s.close()
    return bytes(relay.seen)


def test_encrypted_cluster_computes_and_a_sniffer_sees_no_plaintext():
    seen = run_through_relay(Security.temporary(encrypt=True))
    assert len(seen) > 21_000 and MARKER not in seen
    # The same run in clear: the relay does see the traffic.
    assert MARKER in run_through_relay(Security.temporary(encrypt=False))
    wait_for(lambda: not dask_ipy_threads(), timeout=5, message="threads to stop")


def test_without_the_key_nothing_gets_through_an_encrypted_cluster(context):
    security = Security.temporary(encrypt=True)
    s = Scheduler(security=security)
    w = Worker(scheduler=s.address_to_workers, security=security)
    c = Client(s.address_to_clients, security=security)
    try:
        wait_for(lambda: len(s.state.workers) == 1, message="worker")
        # Another key, the right key without encryption, no CURVE at all.
        for wrong in (Security.temporary(encrypt=True),
                      Security(key=security.key, encrypt=False)):
            with pytest.raises(TimeoutError):
                Client(s.address_to_clients, security=wrong, timeout=1.5,
                       set_as_default=False)
        raw = dealer(context, s.address_to_clients, b"plain-peer")
        raw.send_multipart(Session(security.key, b"plain-peer", epoch=s.session.epoch).dumps(
            [{"op": "info", "what": "nthreads", "request_id": 1}], s.id))
        assert not raw.poll(500)
        raw.close()
        assert list(s.state.clients) == [c.id.encode()] and s.rejected == 0
        assert c.submit(ops.inc, 1).result(timeout=10) == 2
    finally:
        c.close()
        w.close()
        s.close()
    wait_for(lambda: not dask_ipy_threads(), timeout=5, message="threads to stop")


def test_the_key_is_never_logged_or_shown(caplog):
    caplog.set_level(logging.DEBUG)
    security = Security.temporary(encrypt=True)
    secrets = [security.key.hex(), repr(security.key)[2:-1],
               _server_keypair(security.key)[1].decode()]
    shown = []
    options = {"security": security}
    with local_cluster(options, options, options) as (s, workers, c):
        assert c.gather(c.map(ops.inc, range(20))) == list(range(1, 21))
        with pytest.raises(ops.Boom):
            c.submit(ops.fail, 1).result(timeout=10)
        c.scatter([1, 2, 3])
        c.run(ops.inc, 1)
        mode = stat.S_IMODE(os.stat(s.connection_file).st_mode)
        assert mode == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(s.connection_file)).st_mode) == 0o700
        for obj in (security, s, c, s.session, c.shell.session, *workers):
            shown += [repr(obj), str(obj)]
        # A peer holding the key sends a message that fails its MAC: the rejection
        # is logged, and that log line is checked too.
        ctx = zmq.Context()
        try:
            raw = ctx.socket(zmq.DEALER)
            raw.linger = 0
            security.configure_client(raw)
            raw.connect(s.address_to_clients)
            raw.send_multipart([bytes(32), b"header"])
            wait_for(lambda: s.rejected == 1, message="the rejection")
        finally:
            ctx.destroy(linger=0)
    logged = [r.getMessage() for r in caplog.records]
    logged += [r.exc_text or "" for r in caplog.records]
    assert logged, "nothing was logged at DEBUG: the check would be empty"
    for text in shown + logged:
        for secret in secrets:
            assert secret not in text
