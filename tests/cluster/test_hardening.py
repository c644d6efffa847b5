"""Attacks on a cluster of real processes, each as a test.

- messages recorded against one scheduler are replayed to another started with the
  same key, at the same address: refused, and nothing runs;
- a message for one worker is replayed to another: refused;
- a stranger sends huge messages (one frame, many at once, a frame at a time): the
  scheduler's peak RSS does not move;
- idle connections to the side channels cost no thread and are closed soon; idle
  connections to ZeroMQ ports are closed too;
- a flood of bad messages writes a few log lines, with counts.

The attacker here holds no key unless a test says otherwise; it speaks ZeroMQ's wire
protocol (ZMTP) by hand (benchmarks/attacks.py, which measures the same attacks) where
a pyzmq socket would refuse to send what it sends.
"""

import json
import os
import re
import socket
import subprocess
import sys

import psutil
import pytest
import zmq

from benchmarks.attacks import (frame_by_frame, frame_header, one_frame, peak_rss,
                                send_zeros, ten_at_once, zmtp_connect)
from helpers import WORKER_SCRIPT, wait_for
from dask_ipy import Client, Security, bulk
from dask_ipy.protocol import Session, serialize
from dask_ipy.security import _plain_password

pytestmark = pytest.mark.timeout(120)

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                reason="reads the kernel's peak RSS from /proc")

SCHEDULER_SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(levelname)s %(message)s")
from dask_ipy import Scheduler, Security, comm
options = json.loads(sys.argv[1])
comm.REJECTION_LOG_INTERVAL = options.pop("log_interval", comm.REJECTION_LOG_INTERVAL)
security = Security.from_dict(json.loads(sys.stdin.readline()))
s = Scheduler(security=security, **options)
print(json.dumps({"workers": s.address_to_workers, "clients": s.address_to_clients,
                  "file": s.connection_file, "relay": s.relay.port}), flush=True)
sys.stdin.read()
s.close()
"""

BULK_WORKER_SCRIPT = """
import json, sys
from dask_ipy import Worker
w = Worker(scheduler=sys.argv[1])
print(json.dumps({"address": w.address, "bulk": w.bulk.port}), flush=True)
sys.stdin.read()
w.close()
"""


class Processes:
    """Processes of one test: killed at the end, whatever happens."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs = []

    def scheduler(self, security, name="scheduler", **options):
        err = open(self.tmp_path / f"{name}.err", "w")
        p = subprocess.Popen([sys.executable, "-c", SCHEDULER_SCRIPT, json.dumps(options)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                             text=True)
        self.procs.append(p)
        p.stdin.write(json.dumps(security.to_dict()) + "\n")
        p.stdin.flush()
        p.info = json.loads(p.stdout.readline() or "null")
        p.err = err
        return p

    def worker(self, connection_file, script=WORKER_SCRIPT, *args):
        p = subprocess.Popen([sys.executable, "-c", script, connection_file, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        p.line = p.stdout.readline().strip()
        return p

    def stop(self, p):
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for f in (p.stdin, p.stdout, getattr(p, "err", None)):
            if f is not None:
                f.close()

    def close(self):
        for p in self.procs:
            self.stop(p)


@pytest.fixture
def procs(tmp_path):
    ps = Processes(tmp_path)
    try:
        yield ps
    finally:
        ps.close()


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def stderr_lines(p):
    # Read through a file object of its own: a seek on the one the process writes
    # through would move its write offset too (one open file), and its next line
    # would overwrite the start of the file.
    with open(p.err.name) as f:
        return f.read().splitlines()


def serves(p):
    """A client's request answered by the scheduler ``p``: it is up and its I/O thread
    has read everything sent to it before."""
    with Client(p.info["file"], set_as_default=False) as c:
        assert c.submit(len, "abc").key                  # (no workers: not run)
        assert c.scheduler_info()["nclients"] >= 1        # (an earlier one may linger)


def steady(read, times=3):
    """``read()`` once it gave the same value ``times`` times in a row (a process
    done starting up), rather than after a guessed pause."""
    seen = []

    def same():
        seen[:] = (seen + [read()])[-times:]
        return len(seen) == times and len(set(seen)) == 1
    wait_for(same, timeout=10, interval=0.1, message=lambda: f"{read} to settle: {seen}")
    return seen[-1]


def attempt(fn):
    """Run an attack; (True, None) if it went through, (False, error) if refused."""
    try:
        fn()
        return True, None
    except OSError as e:
        return False, e


# ---------------------------------------------------------------- 1. replay


def dealer(ctx, address, identity, security):
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.routing_id = identity
    security.configure_client(sock)
    sock.connect(address)
    return sock


def answers(sock, session, wait=2000):
    """Every message `sock` receives within `wait` ms after the first."""
    got = []
    while sock.poll(wait if not got else 300):
        got += session.loads(sock.recv_multipart())
    return got


def test_messages_recorded_against_one_scheduler_are_refused_by_another_with_the_same_key(
        procs, tmp_path):
    security = Security.temporary()
    identity = b"client-recorded"
    evidence = tmp_path / "ran"

    def leave_evidence(path):
        with open(path, "w") as f:
            f.write("ran")
        return "ran"

    first = procs.scheduler(security, "first")
    address = first.info["clients"]
    ctx = zmq.Context()
    try:
        # A genuine client of the first scheduler; its frames are recorded.
        sock = dealer(ctx, address, identity, security)
        me = Session(security.key, identity)
        recorded = [me.dumps([{"op": "hello", "nonce": os.urandom(16)}], b"",
                             handshake=True)]
        sock.send_multipart(recorded[0])
        [reply] = answers(sock, me)
        me.epoch = reply["epoch"]
        scheduler_id = reply["id"]
        recorded.append(me.dumps([{"op": "register-client"}], scheduler_id))
        recorded.append(me.dumps([{"op": "run", "request_id": 1, "workers": None,
                                   "function": serialize((leave_evidence, (str(evidence),),
                                                          {}))}], scheduler_id))
        for frames in recorded[1:]:
            sock.send_multipart(frames)
        got = answers(sock, me)
        assert [m["op"] for m in got] == ["welcome", "run-result"]
        assert got[1]["results"] == {}                   # no workers there: nothing ran
        sock.close()

        # The same key, the same address: a second start, with a worker.
        procs.stop(first)
        second = procs.scheduler(security, "second", port_to_clients=port_of(address),
                                 port_to_workers=port_of(first.info["workers"]))
        procs.worker(second.info["file"], WORKER_SCRIPT, "1")
        with Client(second.info["file"], set_as_default=False) as c:
            wait_for(lambda: len(c.scheduler_info()["workers"]) == 1, message="a worker")
            replayer = dealer(ctx, address, identity, security)
            for frames in recorded:
                replayer.send_multipart(frames)
            listener = Session(security.key, identity)
            got = answers(replayer, listener)
            # The hello is answered (with the new epoch: no use to the replayer);
            # the rest is refused, and the sender hears nothing of it.
            assert [m["op"] for m in got] == ["hello-reply"]
            assert got[0]["epoch"] != me.epoch
            wait_for(lambda: sum("another scheduler start" in line
                                 for line in stderr_lines(second)) >= 1,
                     message="the refusal in the log")
            assert c.scheduler_info()["nclients"] == 1          # only `c`
            assert c.run(len, "abc") == {c.scheduler_info()["workers"].popitem()[0]: 3}
            replayer.close()
        assert not evidence.exists()
    finally:
        ctx.destroy(linger=0)


def test_a_message_for_one_worker_is_refused_by_another(procs):
    """Peers name each other by address: a request recorded on its way to worker A is
    no use at worker B, although both are of the same cluster and epoch."""
    security = Security.temporary()
    s = procs.scheduler(security)
    a, b = (procs.worker(s.info["file"], WORKER_SCRIPT, "1").line for _ in range(2))
    ctx = zmq.Context()
    try:
        with Client(s.info["file"], set_as_default=False) as c:
            wait_for(lambda: len(c.scheduler_info()["workers"]) == 2, message="workers")
            x = c.submit(len, "x" * 10, workers=[b], key="held-by-b")
            assert x.result(timeout=30) == 10
            # The epoch, as any peer learns it.
            probe = dealer(ctx, s.info["workers"], b"worker-probe", security)
            me = Session(security.key, b"worker-probe")
            probe.send_multipart(me.dumps([{"op": "hello", "nonce": os.urandom(16)}], b"",
                                          handshake=True))
            me.epoch = answers(probe, me)[0]["epoch"]
            probe.close()

            peer = dealer(ctx, b, b"worker-probe", security)
            ask = {"op": "get-data", "keys": ["held-by-b"], "request_id": "r1"}
            peer.send_multipart(me.dumps([ask], a.encode()))        # meant for A
            assert answers(peer, me, wait=1000) == []
            peer.send_multipart(me.dumps([ask], b.encode()))
            [reply] = answers(peer, me)
            assert reply["op"] == "data" and list(reply["data"]) == ["held-by-b"]
            peer.close()
    finally:
        ctx.destroy(linger=0)


# ---------------------------------------------------------------- 2. memory


@needs_proc
def test_a_stranger_cannot_make_the_scheduler_hold_a_large_message(procs):
    security = Security.temporary()
    s = procs.scheduler(security)
    pid, port = s.pid, port_of(s.info["clients"])
    serves(s)                       # the peak of a scheduler that has served a client
    before = peak_rss(pid)

    def sniffed_password_huge_frame():
        # Whoever reads the traffic learns the PLAIN password (not the key): a frame
        # over the limit still ends the connection before it is stored.
        sock = zmtp_connect(port, password=_plain_password(security.key))
        with sock:
            sock.sendall(frame_header(1 << 30, False))
            send_zeros(sock, 1 << 30)

    for attack in (lambda: one_frame(port), lambda: ten_at_once(port),
                   lambda: frame_by_frame(port, frames=512),
                   lambda: frame_by_frame(port, b"a guess", frames=512)):
        went_through, error = attempt(attack)
        assert not went_through and isinstance(error, ConnectionError), attack
    went_through, error = attempt(sniffed_password_huge_frame)
    assert not went_through
    # Served after the attacks on the same I/O thread: whatever they made it hold
    # has been held by now.
    serves(s)
    assert peak_rss(pid) - before < 64 << 20


# ---------------------------------------------------------------- 3. connections


def closed_by_peer(sock):
    """Whether the other end closed `sock` (what it said before that is read away)."""
    sock.setblocking(False)
    while True:
        try:
            if sock.recv(4096) == b"":
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True


def test_idle_connections_to_the_side_channels_cost_no_thread_and_are_dropped(procs):
    security = Security.temporary()
    s = procs.scheduler(security)
    w = procs.worker(s.info["file"], BULK_WORKER_SCRIPT)
    procs.worker(s.info["file"], WORKER_SCRIPT, "1")
    worker = json.loads(w.line)
    threads = {p: psutil.Process(p).num_threads() for p in (w.pid, s.pid)}
    ports = {w.pid: worker["bulk"], s.pid: s.info["relay"]}
    conns = {p: [] for p in ports}
    try:
        for pid, port in ports.items():
            for _ in range(300):
                conns[pid].append(socket.create_connection(("127.0.0.1", port)))
            # An uploader's role and a ticket nobody announced: waits a little longer.
            for _ in range(5):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(bulk.UPLOAD + os.urandom(bulk.TICKET_BYTES))
                conns[pid].append(sock)
        for pid in ports:
            assert psutil.Process(pid).num_threads() <= threads[pid] + 1
        # A ticket is due within a second; an uploader's within five more.
        wait_for(lambda: all(closed_by_peer(c) for cs in conns.values() for c in cs),
                 timeout=15, message="the idle connections to be closed")
    finally:
        for cs in conns.values():
            for c in cs:
                c.close()
    # Large data still takes the side channels afterwards.
    import numpy as np

    with Client(s.info["file"], set_as_default=False) as c:
        wait_for(lambda: len(c.scheduler_info()["workers"]) == 2, message="workers")
        other = next(a for a in c.scheduler_info()["workers"] if a != worker["address"])
        x = c.submit(np.ones, 5_000_000, workers=[worker["address"]])
        assert c.submit(np.sum, x, workers=[other]).result(timeout=30) == 5_000_000
        assert x.result(timeout=30).sum() == 5_000_000
    for pid in ports:
        assert psutil.Process(pid).num_threads() <= threads[pid] + bulk.MAX_ACTIVE


def test_idle_and_keyless_connections_to_zeromq_ports_are_closed(procs):
    security = Security.temporary()
    s = procs.scheduler(security)
    proc = psutil.Process(s.pid)
    fds = steady(proc.num_fds)
    port = port_of(s.info["clients"])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    try:
        wait_for(lambda: proc.num_fds() >= fds + 250, message="the connections")
        # Keyless ZeroMQ peers do not get past the handshake.
        for password in (None, b"a guess"):
            with pytest.raises(ConnectionError):
                zmtp_connect(port, password=password)
        wait_for(lambda: all(closed_by_peer(c) for c in idle),
                 timeout=15, message="idle connections to close")    # 5 s, and slack
        wait_for(lambda: proc.num_fds() <= fds + 5, message="descriptors to be freed")
    finally:
        for c in idle:
            c.close()


# ---------------------------------------------------------------- 4. logs


def test_a_flood_of_bad_messages_writes_a_few_log_lines_with_counts(procs):
    security = Security.temporary()
    s = procs.scheduler(security, log_interval=1.0)
    port = port_of(s.info["clients"])
    ctx = zmq.Context()
    try:
        # 300 messages that fail their MAC, from a peer with the ZeroMQ credentials.
        sock = dealer(ctx, s.info["clients"], b"flooder", security)
        for i in range(300):
            sock.send_multipart([bytes(32), b"not a message %d" % i])
        # 100 handshakes with a wrong password.
        for _ in range(100):
            with pytest.raises(ConnectionError):
                zmtp_connect(port, password=b"a guess")

        def counted(kind):
            total = 0
            for line in stderr_lines(s):
                if kind in line:
                    more = re.search(r": (\d+) more ", line)
                    total += int(more.group(1)) if more else 1
            return total
        wait_for(lambda: counted("rejected a message") == 300
                 and counted("refused a connection") == 100, timeout=20,
                 message=lambda: f"the counts in the log: {stderr_lines(s)}")
        lines = stderr_lines(s)
        assert len(lines) <= 8, lines
        assert any("more messages" in line for line in lines)
        assert any("more connections" in line for line in lines)
        sock.close()
    finally:
        ctx.destroy(linger=0)
