"""Attacks on a scheduler and a worker, and large gathers, each against real processes:
the figures behind README's "Security" section.

    python -m benchmarks.attacks                  # all: memory flood bulk gather
    python -m benchmarks.attacks memory gather    # some
    PYTHONPATH=/other/checkout python -m benchmarks.attacks    # another version

memory  a stranger sends one 2 GiB frame, ten 100 MiB messages at once, and 2 GiB in
        1 MiB frames; without ZeroMQ credentials, with a guessed password, and with
        the PLAIN password read off the wire: the scheduler's peak RSS (VmHWM)
flood   1000 idle TCP connections and 1000 ZeroMQ peers sending garbage to the
        scheduler: its open files after 1 s and after 7 s, and its log lines
bulk    1000 idle connections to a worker's side channel: its threads, and how many
        connections are still open after 4 s
gather  a client gathers 1 GB and 3.2 GB arrays: time, and scheduler and client peaks

The attacker speaks ZeroMQ's wire protocol (ZMTP 3.0) by hand (`zmtp_connect`), so it
can send what a pyzmq socket would refuse to.  Linux only (/proc).
"""

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import psutil

HOST = r"""
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
if sys.argv[1] == "scheduler":
    from dask_ipy import Scheduler
    s = Scheduler(connection_file=sys.argv[2])
    print(json.dumps({"clients": s.address_to_clients}), flush=True)
    sys.stdin.read(); s.close()
else:
    from dask_ipy import Worker
    w = Worker(scheduler=sys.argv[2])
    print(json.dumps({"bulk": w.bulk.port}), flush=True)
    sys.stdin.read(); w.close()
"""


# ---------------------------------------------------------------- raw ZMTP 3.0


def _recv_n(s, n):
    got = b""
    while len(got) < n:
        more = s.recv(n - len(got))
        if not more:
            raise ConnectionError("closed during the handshake")
        got += more
    return got


def _command(s, body):
    s.sendall(b"\x04" + bytes([len(body)]) + body)


def _read_command(s):
    flags = _recv_n(s, 1)[0]
    size = struct.unpack(">Q", _recv_n(s, 8))[0] if flags & 2 else _recv_n(s, 1)[0]
    return _recv_n(s, size)


def zmtp_connect(port, identity=b"attacker", password=None):
    """A raw DEALER connection to 127.0.0.1:port: NULL mechanism, or PLAIN with
    `password`.  Raises ConnectionError when the server refuses the handshake."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    mechanism = b"PLAIN" if password is not None else b"NULL"
    greeting = (b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0")
                + bytes(32))
    try:
        s.sendall(greeting[:10])
        _recv_n(s, 10)
        s.sendall(greeting[10:])
        _recv_n(s, 54)

        def prop(name, value):
            return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
        meta = prop(b"Socket-Type", b"DEALER") + prop(b"Identity", identity)
        if password is not None:
            _command(s, b"\x05HELLO\x08dask-ipy" + bytes([len(password)]) + password)
            if not _read_command(s).startswith(b"\x07WELCOME"):
                raise ConnectionError("PLAIN refused")
            _command(s, b"\x08INITIATE" + meta)
        else:
            _command(s, b"\x05READY" + meta)
        _read_command(s)
    except (ConnectionError, OSError):
        s.close()
        raise ConnectionError("handshake refused") from None
    return s


def frame_header(size, more):
    """ZMTP's header of a message frame of `size` bytes."""
    flags = int(more) | (2 if size > 255 else 0)
    return bytes([flags]) + (struct.pack(">Q", size) if size > 255 else bytes([size]))


_ZEROS = memoryview(bytes(1 << 20))


def send_zeros(s, n):
    while n:
        k = min(n, len(_ZEROS))
        s.sendall(_ZEROS[:k])
        n -= k


# ---------------------------------------------------------------- processes


def spawn(kind, file, stderr=None):
    p = subprocess.Popen([sys.executable, "-c", HOST, kind, file], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=stderr, text=True)
    p.info = json.loads(p.stdout.readline())
    return p


def stop(p):
    try:
        p.stdin.close()
        p.wait(15)
    except (OSError, subprocess.TimeoutExpired):
        p.kill()
        p.wait()
    p.stdout.close()


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def _password(file):
    """The PLAIN password, as someone reading the traffic would learn it."""
    try:
        from dask_ipy.security import _plain_password, read_connection_file
    except ImportError:
        return None                   # a version without PLAIN
    return _plain_password(read_connection_file(file)[1].key)


# ---------------------------------------------------------------- the attacks


def one_frame(port, password=None):
    """One message whose second frame is 2 GiB."""
    with zmtp_connect(port, password=password) as s:
        s.sendall(frame_header(32, True) + bytes(32) + frame_header(2**31, False))
        send_zeros(s, 2**31)


def ten_at_once(port, password=None):
    """Ten connections, each sending a message of 100 MiB; raises if none got in."""
    errors = []

    def one(i):
        try:
            with zmtp_connect(port, b"attacker-%d" % i, password) as s:
                s.sendall(frame_header(32, True) + bytes(32)
                          + frame_header(100 << 20, False))
                send_zeros(s, 100 << 20)
        except OSError as e:
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(errors) == 10:
        raise errors[0]


def frame_by_frame(port, password=None, frames=2048):
    """One message of `frames` frames of 1 MiB, none over the frame limit."""
    with zmtp_connect(port, password=password) as s:
        for _ in range(frames):
            s.sendall(frame_header(1 << 20, True))
            send_zeros(s, 1 << 20)
        s.sendall(frame_header(0, False))


def memory(directory):
    file = os.path.join(directory, "memory.json")
    sniffed = None
    for attack in (one_frame, ten_at_once, frame_by_frame):
        for who in ("stranger", "guessed password", "sniffed password"):
            s = spawn("scheduler", file)
            try:
                if who == "sniffed password":
                    sniffed = _password(file)
                    if sniffed is None:
                        continue
                password = {"stranger": None, "guessed password": b"a guess",
                            "sniffed password": sniffed}[who]
                time.sleep(0.3)
                before = peak_rss(s.pid)
                start = time.monotonic()
                try:
                    attack(port_of(s.info["clients"]), password)
                    outcome = "sent"
                except OSError as e:
                    outcome = f"cut off ({type(e).__name__})"
                time.sleep(1.0)
                print(f"memory  {attack.__name__:15} {who:17} scheduler peak "
                      f"{before / 1e6:5.0f} -> {peak_rss(s.pid) / 1e6:5.0f} MB   {outcome}, "
                      f"{time.monotonic() - start:.1f} s", flush=True)
            finally:
                stop(s)


def flood(directory):
    import zmq

    err = open(os.path.join(directory, "flood.err"), "w+")
    s = spawn("scheduler", os.path.join(directory, "flood.json"), stderr=err)
    proc = psutil.Process(s.pid)
    ctx = zmq.Context()
    raw, peers = [], []
    try:
        for _ in range(1000):
            raw.append(socket.create_connection(("127.0.0.1", port_of(s.info["clients"]))))
        for i in range(1000):
            z = ctx.socket(zmq.DEALER)
            z.linger = 0
            z.connect(s.info["clients"])
            z.send_multipart([bytes(32), b"garbage %d" % i])
            peers.append(z)
        time.sleep(1)
        early = proc.num_fds()
        time.sleep(6)
        late = proc.num_fds()
    finally:
        for z in peers:
            z.close()
        ctx.destroy(0)
        for c in raw:
            c.close()
        stop(s)
    err.seek(0)
    lines = err.read().splitlines()
    print(f"flood   scheduler open files {early} after 1 s, {late} after 7 s; "
          f"{len(lines)} log lines", flush=True)


def bulk(directory):
    file = os.path.join(directory, "bulk.json")
    s = spawn("scheduler", file)
    w = spawn("worker", file)
    proc = psutil.Process(w.pid)
    before = proc.num_threads()
    conns = []
    try:
        for _ in range(1000):
            conns.append(socket.create_connection(("127.0.0.1", w.info["bulk"])))
        time.sleep(2)
        during = proc.num_threads()
        time.sleep(2)
        still_open = 0
        for c in conns:
            c.setblocking(False)
            try:
                still_open += c.recv(1) != b""
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
    finally:
        for c in conns:
            c.close()
        stop(w)
        stop(s)
    print(f"bulk    worker threads {before} -> {during} with 1000 idle connections; "
          f"{still_open} still open after 4 s", flush=True)


def gather(directory, sizes=(10**9, 3_200_000_000)):
    import numpy as np

    from dask_ipy import Client, wait

    file = os.path.join(directory, "gather.json")
    s = spawn("scheduler", file)
    w = spawn("worker", file)
    try:
        with Client(file, set_as_default=False) as c:
            for n in sizes:
                for _ in range(2):
                    f = c.submit(np.ones, n // 8, pure=False)
                    wait([f])
                    start = time.perf_counter()
                    try:
                        x = f.result()
                        took = time.perf_counter() - start
                        assert x.nbytes == n
                        print(f"gather  {n / 1e9:.1f} GB in {took:.2f} s, "
                              f"{n / took / 1e9:.2f} GB/s; peaks: scheduler "
                              f"{peak_rss(s.pid) / 1e9:.2f} GB, client "
                              f"{peak_rss(os.getpid()) / 1e9:.2f} GB", flush=True)
                    except Exception as e:
                        print(f"gather  {n / 1e9:.1f} GB failed: {type(e).__name__}: "
                              f"{str(e)[:160]}", flush=True)
                    del f
                    x = None
    finally:
        stop(w)
        stop(s)


def main(argv):
    kinds = {"memory": memory, "flood": flood, "bulk": bulk, "gather": gather}
    chosen = argv or list(kinds)
    unknown = [k for k in chosen if k not in kinds]
    if unknown:
        sys.exit(f"unknown: {unknown}; choose among {list(kinds)}")
    with tempfile.TemporaryDirectory(prefix="dask-ipy-attacks-") as d:
        os.environ["DASK_IPY_RUNTIME_DIR"] = d
        for kind in chosen:
            kinds[kind](d)


if __name__ == "__main__":
    main(sys.argv[1:])
