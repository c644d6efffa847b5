"""The scheduler's relay between workers that cannot reach each other:
``python -m benchmarks.relay [--quick] [--size MB] [--modes stream,one-message]``.

A scheduler and three one-thread workers, one process each.  Worker A tells everyone
an address that takes connections and never answers (a black-holing firewall), so
worker B gets A's data through the scheduler; worker C runs a second client's small
tasks (so that its round trips measure the scheduler, not a worker busy with the
transfer; on a 2-core machine every process still competes for the cores).  A makes a numpy array of ``--size``
MB (500; 16 with ``--quick``); a task on B then sums it, timed from submit to result.
Figures, per mode:

    MB/s          array bytes / that time (median of the timed runs)
    sched_rss_MB  the scheduler's peak RSS during the relay (kernel VmHWM, reset
                  before, and a 10 ms sampler) above its RSS after the warm-up,
                  largest of the runs (a heap grown by an earlier run counts)
    idle_ms       a second client's ``submit(inc).result()`` round trips, median
                  and p90, with nothing else running
    busy_ms       the same while the relay runs
    info_idle_ms, info_busy_ms   the same client's ``nthreads()`` round trips,
                  which the scheduler answers alone (no worker on the way)
    cpu_s         CPU seconds (user + system) each process spent during the relay
    scatter_MB_s, scatter_rss_MB   ``client.scatter`` of the same array onto B:
                  array bytes / its time (median), and the scheduler's peak RSS
                  during it above the same baseline (largest)

Modes: ``stream`` (large values stream through the scheduler's TCP relay in bounded
chunks) and ``one-message`` (the fetching worker asks as it does after its streams
failed, and as every worker does on an encrypted cluster, though here unencrypted:
the scheduler receives the whole value on its ZeroMQ socket and forwards it; its
cap is raised to let the array through); the scatter goes over ZeroMQ too (the
client's streams turned off, as after a failed one).  Each mode warms up (B finds A
unreachable, one small relay), then times ``--repeats`` relays (3; 1 with
``--quick``).  The JSON (``--json``, default ``benchmarks/results/relay.json``)
keeps every sample and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import procs
from .clusters import finish

HERE = Path(__file__).resolve().parent
MB = 1_000_000
MODES = ("stream", "one-message")


# ---------------------------------------------------------------- tasks

def make(nbytes):
    import numpy as np

    return np.ones(nbytes // 8, dtype="f8")


def total(a):
    return float(a.sum())


def inc(x):
    return x + 1


# ---------------------------------------------------------------- hosts

def host(kind, file, options):
    """``python -m benchmarks.relay --host KIND FILE OPTIONS``: a scheduler writing
    ``file``, or a worker joining it; announces its address and pid."""
    from dask_ipy import Scheduler, Worker

    from .hosts import announce, wait_for_stdin_eof

    if kind == "scheduler":
        s = Scheduler(connection_file=file, **options)
        announce(address=s.address_to_clients)
        wait_for_stdin_eof()
        s.close()
        return
    one_message = options.pop("one_message", False)
    w = Worker(scheduler=file, nthreads=1, **options)
    if one_message:
        from dask_ipy.worker.server import RELAY_STREAM_TRIES

        procs.wait_until(lambda: w.relay_port is not None, 30, what="the welcome")
        w.loop.call_soon(setattr, w, "relay_failures", RELAY_STREAM_TRIES)
    announce(address=w.address)
    wait_for_stdin_eof()
    w.close()


class RelayCluster:
    def __init__(self, log, mode, nbytes):
        self.mode = mode
        self.hosts = []
        self.hole = socket.create_server(("127.0.0.1", 0), backlog=64)
        hole = f"tcp://127.0.0.1:{self.hole.getsockname()[1]}"
        self.file = str(Path(tempfile.mkdtemp(prefix="dask-ipy-relay-")) / "s.json")
        sched = {"max_relay_bytes": 2 * nbytes + (64 << 20)} if mode != "stream" else {}
        try:
            self.scheduler = self._start(log, "scheduler", sched)
            self.holder = self._start(log, "worker", {"contact_address": hole})
            self.fetcher = self._start(log, "worker", {
                "connect_timeout": 1.0, "one_message": mode == "one-message"})
            self.bystander = self._start(log, "worker", {})
            from dask_ipy import Client

            self.client = Client(self.file)
            self.other = Client(self.file)
            procs.wait_until(lambda: len(self.client.nthreads()) >= 3, 60,
                             what="3 workers")
        except BaseException:
            self.close()
            raise

    def _start(self, log, kind, options):
        h = procs.HostProcess(["-m", "benchmarks.relay", "--host", kind, self.file,
                               json.dumps(options)], log, terminate=True)
        self.hosts.append(h)
        return h.ready(60)

    def close(self):
        for c in ("other", "client"):
            if hasattr(self, c):
                try:
                    getattr(self, c).close()
                except Exception:
                    pass
        for h in self.hosts[1:] + self.hosts[:1]:
            h.stop()
        self.hole.close()
        shutil.rmtree(os.path.dirname(self.file), ignore_errors=True)


def round_trips(client, where, stop, out, info, limit=None):
    """Time ``submit(inc).result()`` on worker ``where`` into ``out``, and
    ``nthreads()`` into ``info`` (ms), one at a time until ``stop`` is set (or
    ``limit`` of each)."""
    i = 0
    while not stop.is_set() and (limit is None or i < limit):
        start = time.perf_counter()
        assert client.submit(inc, i, pure=False, workers=[where]).result(
            timeout=60) == i + 1
        out.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        assert len(client.nthreads()) == 3
        info.append((time.perf_counter() - start) * 1e3)
        i += 1


def quantiles(samples):
    if not samples:
        return {"median": None, "p90": None, "n": 0}
    ordered = sorted(samples)
    return {"median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "n": len(ordered)}


def cpu_seconds(pids):
    import psutil

    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = None
    return out


def measure(cluster, nbytes, repeats, idle_trips):
    from dask_ipy import wait

    c = cluster.client
    a, b = cluster.holder["address"], cluster.fetcher["address"]
    bystander = cluster.bystander["address"]
    pid = cluster.scheduler["pid"]
    pids = {"scheduler": pid, "holder": cluster.holder["pid"],
            "fetcher": cluster.fetcher["pid"], "bystander": cluster.bystander["pid"],
            "clients": os.getpid()}
    # Warm-up: B finds A unreachable (its connect timeout), then a small relay.
    small = c.submit(make, 1 << 10, workers=[a], pure=False)
    assert c.submit(total, small, workers=[b], pure=False).result(timeout=120) == 128.0
    idle, info_idle = [], []
    round_trips(cluster.other, bystander, threading.Event(), idle, info_idle,
                limit=idle_trips)
    runs = []
    before = procs.rss([pid])
    for _ in range(repeats):
        x = c.submit(make, nbytes, workers=[a], pure=False)
        wait([x], timeout=300)
        busy, info_busy, stop = [], [], threading.Event()
        trips = threading.Thread(target=round_trips, name="round-trips",
                                 args=(cluster.other, bystander, stop, busy, info_busy))
        cpu_before = cpu_seconds(pids)
        with procs.PeakSampler([pid], interval=0.01) as peak:
            trips.start()
            start = time.perf_counter()
            y = c.submit(total, x, workers=[b], pure=False)
            assert y.result(timeout=600) == nbytes // 8
            elapsed = time.perf_counter() - start
            stop.set()
            trips.join(60)
        cpu_after = cpu_seconds(pids)
        runs.append({"seconds": elapsed, "MB_s": nbytes / MB / elapsed,
                     "sched_rss_growth": peak.peak - before, "busy_ms": busy,
                     "info_busy_ms": info_busy,
                     "cpu_s": {name: cpu_after[name] - cpu_before[name]
                               for name in pids if cpu_after[name] is not None}})
        del x, y
    if cluster.mode == "one-message":
        c.shell.streams_off()
    scatters = []
    for _ in range(repeats):
        array = make(nbytes)
        with procs.PeakSampler([pid], interval=0.01) as peak:
            start = time.perf_counter()
            [f] = c.scatter([array], workers=[b], hash=False)
            elapsed = time.perf_counter() - start
        scatters.append({"seconds": elapsed, "MB_s": nbytes / MB / elapsed,
                         "sched_rss_growth": peak.peak - before})
        assert c.submit(total, f, workers=[b], pure=False).result(timeout=600) == \
            nbytes // 8
        del f, array
    unreachable = c.scheduler_info()["workers"][b]["unreachable"]
    assert list(unreachable) == [a], unreachable
    busy = [t for r in runs for t in r["busy_ms"]]
    info_busy = [t for r in runs for t in r["info_busy_ms"]]
    return {"MB_s": statistics.median(r["MB_s"] for r in runs),
            "sched_rss_MB": max(r["sched_rss_growth"] for r in runs) / MB,
            "idle_ms": quantiles(idle), "busy_ms": quantiles(busy),
            "info_idle_ms": quantiles(info_idle), "info_busy_ms": quantiles(info_busy),
            "relayed_by_stream": c.run_on_scheduler(_relayed), "runs": runs,
            "cpu_s": {name: statistics.median(r["cpu_s"][name] for r in runs)
                      for name in runs[0]["cpu_s"]},
            "idle_samples": idle, "info_idle_samples": info_idle,
            "scatter_MB_s": statistics.median(r["MB_s"] for r in scatters),
            "scatter_rss_MB": max(r["sched_rss_growth"] for r in scatters) / MB,
            "scatters": scatters}


def _relayed(dask_scheduler):
    relay = dask_scheduler.relay
    return None if relay is None else relay.relayed


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.relay",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--host", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="16 MB, one run: a smoke run")
    p.add_argument("--size", type=float, default=None, help="MB (default 500)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--json", default=str(HERE / "results" / "relay.json"))
    args = p.parse_args(argv)
    if args.host:
        kind, file, options = args.host
        host(kind, file, json.loads(options))
        return 0
    nbytes = int((args.size or (16 if args.quick else 500)) * MB) // 8 * 8
    repeats = args.repeats or (1 if args.quick else 3)
    idle_trips = 30 if args.quick else 300
    results = {"python": platform.python_version(), "quick": args.quick,
               "nbytes": nbytes, "repeats": repeats, "cpus": os.cpu_count(),
               "load_before": os.getloadavg(), "runs": []}
    log = Path(tempfile.mkdtemp(prefix="dask-ipy-bench-")) / "relay.log"
    for mode in args.modes.split(","):
        print(f"relay: {mode} ...", file=sys.stderr, flush=True)
        figures = {"mode": mode}
        cluster = None
        try:
            cluster = RelayCluster(log, mode, nbytes)
            figures.update(ok=True, **measure(cluster, nbytes, repeats, idle_trips))
        except Exception as e:
            figures.update(ok=False, error=f"{type(e).__name__}: {e}")
        finally:
            if cluster is not None:
                cluster.close()
        figures["load"] = os.getloadavg()
        results["runs"].append(figures)
    return finish(results, args.json, table, log)


def cell(q):
    return f"{q['median']:.2f} / {q['p90']:.2f} (n={q['n']})" if q["n"] else "-"


def table(results):
    lines = [f"relay of {results['nbytes'] / MB:,.0f} MB between two workers that "
             "cannot reach each other",
             "| mode | MB/s | scheduler RSS growth MB | other client's submit ms, idle "
             "(median / p90) | while relaying | its nthreads() ms, idle | while "
             "relaying | CPU s: scheduler, holder, fetcher, bystander, clients | "
             "scatter MB/s | its scheduler RSS growth MB | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        if not r["ok"]:
            lines.append(f"| {r['mode']} | FAILED: {r['error']} |" + " |" * 9)
            continue
        cells = [cell(r[name]) for name in ("idle_ms", "busy_ms", "info_idle_ms",
                                            "info_busy_ms")]
        cpu = ", ".join(f"{v:.2f}" for v in r["cpu_s"].values())
        lines.append(f"| {r['mode']} | {r['MB_s']:,.0f} | {r['sched_rss_MB']:,.1f} | "
                     + " | ".join(cells) + f" | {cpu} | {r['scatter_MB_s']:,.0f} | "
                     f"{r['scatter_rss_MB']:,.1f} | {r['load'][0]:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
