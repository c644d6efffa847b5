"""Soak: random graphs for minutes while workers are killed and frozen at random.

    pytest -m soak tests/cluster/test_soak.py            # DASK_IPY_SOAK_MINUTES, default 2

DASK_IPY_SOAK_TASK_MS makes each graph task sleep about that long (0 to twice it), so
that tasks wait in workers' queues long enough to be stolen.

A scheduler and three workers run as processes.  One thread of chaos SIGKILLs a random
worker (and starts a new one in its place) or SIGSTOPs one for up to twice the
heartbeat timeout (so some are removed and register again after SIGCONT), always
leaving at least one worker running.  Meanwhile random DAGs of cheap tasks, and maps
of them, are computed; each result is checked against dask's synchronous scheduler.
Every wait is bounded: a graph not done within GRAPH_TIMEOUT is a hang and fails the
test.  The counts are printed at the end (run with -s to see them).
"""

import os
import random
import signal
import threading
import time

import dask
import pytest

import helpers as ops
from helpers import ProcessCluster, dask_ipy_threads, wait_for

MINUTES = float(os.environ.get("DASK_IPY_SOAK_MINUTES", "2"))
TASK_SECONDS = float(os.environ.get("DASK_IPY_SOAK_TASK_MS", "0")) / 1000

pytestmark = [pytest.mark.soak, pytest.mark.timeout(MINUTES * 60 + 300)]
GRAPH_TIMEOUT = 120.0          # seconds; more is a hang
HEARTBEAT_TIMEOUT = 3.0
WORKERS = 3


class Chaos(threading.Thread):
    """Kills and freezes random workers of a ProcessCluster; the only thread that
    touches `pc.workers` while it runs."""

    def __init__(self, pc, rng):
        super().__init__(name="soak-chaos", daemon=True)
        self.pc = pc
        self.rng = rng
        self.halt = threading.Event()
        self.frozen = {}           # {pid: (Popen, monotonic time to resume)}
        self.kills = 0
        self.stops = 0
        self.errors = []

    def running(self):
        return [p for p in self.pc.workers
                if p.poll() is None and p.pid not in self.frozen]

    def run(self):
        next_action = time.monotonic() + self.rng.uniform(0.3, 1.5)
        try:
            while not self.halt.wait(0.05):
                now = time.monotonic()
                for pid, (p, until) in list(self.frozen.items()):
                    if now >= until:
                        p.send_signal(signal.SIGCONT)
                        del self.frozen[pid]
                if now >= next_action:
                    self.act()
                    next_action = time.monotonic() + self.rng.uniform(0.3, 1.5)
        except Exception as e:                   # reported by the test
            self.errors.append(e)
        finally:
            for p, _ in self.frozen.values():
                p.send_signal(signal.SIGCONT)
            self.frozen.clear()

    def act(self):
        running = self.running()
        if len(running) < 2:                     # always keep one worker running
            return
        victim = self.rng.choice(running)
        if self.rng.random() < 0.5:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            self.kills += 1
            self.pc.workers.append(self.pc.start_worker())
        else:
            victim.send_signal(signal.SIGSTOP)
            self.stops += 1
            pause = self.rng.uniform(0.2, 2 * HEARTBEAT_TIMEOUT)
            self.frozen[victim.pid] = (victim, time.monotonic() + pause)


def bounded(fn, *args, timeout=GRAPH_TIMEOUT, what="a call"):
    """fn(*args) on a daemon thread, given `timeout` seconds; longer is a hang."""
    out = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as e:
            out["error"] = e
    t = threading.Thread(target=target, name="soak-call", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"hang: {what} not done after {timeout} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_random_graphs_under_random_kills_and_stops(tmp_path):
    seed = int(os.environ.get("DASK_IPY_SOAK_SEED", time.time_ns() % 2**32))
    print(f"\nsoak: {MINUTES} minutes, seed {seed}")
    rng = random.Random(seed)
    # Random kills blame whatever a worker was running: with cheap tasks a task may
    # be caught several times, which is not what this test is about.
    pc = ProcessCluster(str(tmp_path), nworkers=WORKERS, nthreads=2,
                        heartbeat_timeout=HEARTBEAT_TIMEOUT,
                        scheduler_options={"allowed_failures": 50})
    c = None
    chaos = Chaos(pc, random.Random(rng.random()))
    graphs = tasks = maps = 0
    try:
        c = pc.client(timeout=30)
        chaos.start()
        deadline = time.monotonic() + MINUTES * 60
        while time.monotonic() < deadline:
            assert not chaos.errors, chaos.errors
            n = graphs
            batch = [ops.random_graph(rng, rng.randint(1, 400), f"g{n}-{i}", TASK_SECONDS)
                     for i in range(2)]
            results = {}

            def compute(i, dsk, outputs):
                results[i] = _try(bounded, c.get, dsk, outputs,
                                  what=f"graph {n + i} ({len(dsk)} tasks, seed {seed})")
            calls = [threading.Thread(target=compute, args=(i, dsk, outputs),
                                      name="soak-graph", daemon=True)
                     for i, (dsk, outputs) in enumerate(batch)]
            for t in calls:
                t.start()
            seeds = [rng.randrange(1000) for _ in range(rng.randint(1, 100))]
            got = bounded(lambda: c.gather(c.map(ops.combine, seeds),
                                           timeout=GRAPH_TIMEOUT),
                          what=f"a map of {len(seeds)} (seed {seed})")
            assert got == [ops.combine(s) for s in seeds]
            maps += 1
            for t in calls:
                t.join(GRAPH_TIMEOUT + 10)
                assert not t.is_alive(), "hang"
            for i, (dsk, outputs) in enumerate(batch):
                kind, value = results[i]
                if kind == "error":
                    raise value
                assert list(value) == list(dask.get(dsk, outputs)), (
                    f"graph {n + i} (seed {seed}) computed a wrong result")
                graphs += 1
                tasks += len(dsk)
        chaos.halt.set()
        chaos.join(30)
        assert not chaos.is_alive() and not chaos.errors, chaos.errors

        # Afterwards: every worker back, the right answers, and nothing left behind.
        alive = [p for p in pc.workers if p.poll() is None]
        wait_for(lambda: len(c.scheduler_info()["workers"]) == len(alive),
                 timeout=4 * HEARTBEAT_TIMEOUT, message="every worker registered")
        dsk, outputs = ops.random_graph(rng, 500, "final", TASK_SECONDS)
        assert list(bounded(c.get, dsk, outputs)) == list(dask.get(dsk, outputs))
        wait_for(lambda: c.scheduler_info()["ntasks"] == 0, timeout=30,
                 message="every task released")
        print(f"soak: {graphs} graphs, {tasks} tasks, {maps} maps, "
              f"{chaos.kills} kills, {chaos.stops} stops, "
              f"{c.scheduler_info()['stolen']} stolen, seed {seed}")
    finally:
        chaos.halt.set()
        if chaos.is_alive():
            chaos.join(30)
        if c is not None:
            c.close()
        pc.close()
    wait_for(lambda: not dask_ipy_threads(), timeout=5, message="threads to stop")


def _try(fn, *args, **kwargs):
    try:
        return ("ok", fn(*args, **kwargs))
    except BaseException as e:
        return ("error", e)
