"""The floor of a three-hop round trip: a bare ZeroMQ chain on this machine.

dask_ipy's smallest round trip is three hops between three processes (client →
scheduler → worker → client).  The same three hops with nothing else in them::

    client (this process) ──DEALER──▶ ROUTER  A  DEALER──▶ ROUTER  B  DEALER──┐
          ROUTER ◀────────────────────────────────────────────────────────────┘

over loopback TCP, one message of `MESSAGE_BYTES` at a time (about the size of the
messages of a dask_ipy round trip), each hop a plain Python `recv_multipart` /
`send_multipart`, as dask_ipy's I/O threads do.  A and B are
``python -m benchmarks.chain hop PORT`` (they bind a ROUTER and forward what it gets
to PORT on this host), announced like the other hosts (`benchmarks.hosts`) and
stopped by closing their stdin.
"""

import statistics
import sys
import threading
from time import perf_counter

import zmq

MESSAGE_BYTES = 512


def _socket(context, kind):
    sock = context.socket(kind)
    sock.linger = 0
    return sock


def hop(to_port):
    """Forward everything the ROUTER gets to ``to_port``, until stdin closes."""
    from .hosts import announce

    context = zmq.Context()
    inbound = _socket(context, zmq.ROUTER)
    port = inbound.bind_to_random_port("tcp://127.0.0.1")
    outbound = _socket(context, zmq.DEALER)
    outbound.connect(f"tcp://127.0.0.1:{to_port}")
    stop = threading.Event()

    def forward():
        poller = zmq.Poller()
        poller.register(inbound, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(100):
                frames = inbound.recv_multipart(copy=False)
                outbound.send_multipart(frames[1:], copy=False)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    announce(port=port)
    try:
        sys.stdin.buffer.read()
    except (OSError, ValueError):
        pass
    stop.set()
    thread.join(2)
    inbound.close()
    outbound.close()
    context.term()


def measure(log_path, size, timeout=60.0):
    """Median (and p10, p90, min) of ``size`` round trips through A and B, in ms."""
    from .procs import HostProcess

    context = zmq.Context()
    back = _socket(context, zmq.ROUTER)
    back_port = back.bind_to_random_port("tcp://127.0.0.1")
    out = _socket(context, zmq.DEALER)
    hosts = []
    try:
        b = HostProcess(["-m", "benchmarks.chain", "hop", str(back_port)], log_path)
        hosts.append(b)
        b_port = b.ready(timeout)["port"]
        a = HostProcess(["-m", "benchmarks.chain", "hop", str(b_port)], log_path)
        hosts.append(a)
        a_port = a.ready(timeout)["port"]
        out.connect(f"tcp://127.0.0.1:{a_port}")
        payload = b"x" * MESSAGE_BYTES
        poller = zmq.Poller()
        poller.register(back, zmq.POLLIN)

        def once():
            out.send(payload)
            if not poller.poll(timeout * 1000):
                raise TimeoutError("the bare chain did not answer")
            frames = back.recv_multipart()
            if frames[-1] != payload:
                raise RuntimeError("the bare chain changed the message")

        for _ in range(max(5, size // 10)):
            once()
        samples = []
        for _ in range(size):
            t0 = perf_counter()
            once()
            samples.append((perf_counter() - t0) * 1e3)
    finally:
        for host in hosts:
            host.stop()
        out.close()
        back.close()
        context.term()
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else samples * 9
    return {"message_bytes": MESSAGE_BYTES, "median_ms": statistics.median(samples),
            "p10_ms": q[0], "p90_ms": q[-1], "min_ms": min(samples)}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "hop":
        hop(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m benchmarks.chain hop PORT")
