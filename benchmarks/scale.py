"""The scheduler's state machine at scale, with no processes:
``python -m benchmarks.scale [--workers 10,100,1000] [--tasks 10000,100000,1000000]
[--repeats 3]``.

Simulated workers of one thread each answer the scheduler as real ones would: they
run what they are sent in order, one task per worker per round (equal durations),
answer steal requests (given up if not started yet) and report each result as
finished.  Only the scheduler's own calls are timed, in CPU time (``update_graph``
and ``handle_worker_message``); the simulation's bookkeeping is not.  The cyclic
garbage collector runs as in the scheduler's own process (``--collector server``,
see `collect_as_server`), with Python's default settings (``default``), or not at
all (``off``); its time and full collections are reported.

The graph is a reduction tree: half the tasks are roots, every other task sums two
tasks of the level below, so each completion places a dependent that needs data
from up to two workers.  Reported per (workers, tasks): microseconds per task for
the graph's intake and for its completions, the number of steals, and the
scheduler's memory per task (its objects' growth on the heap while the graph is
held, by tracemalloc, in a fresh child process for each case, so that earlier cases
leave nothing behind).  Separately, the cost of the two placement decisions that look at
workers: ``decide_worker`` for a task with inputs, and a steal pass for an idle
worker, each against the number of workers; and of a graph of one task (a
``submit``) on an idle and on a full cluster.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc

from dask_ipy.scheduler.state import SchedulerState


def address(i):
    return f"tcp://10.{i // 65536}.{(i // 256) % 256}.{i % 256}:1"


def tree(n_tasks):
    """Entries (key, spec, dependencies) of a binary reduction of about ``n_tasks``
    tasks, roots first; and the final key."""
    roots = max(n_tasks // 2, 1)
    level = [("r", i) for i in range(roots)]
    entries = [(k, b"spec", ()) for k in level]
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), 2):
            key = (f"s{depth}", j // 2)
            entries.append((key, b"spec", tuple(level[j:j + 2])))
            nxt.append(key)
        level = nxt
    return entries, level[0]


def cluster(n_workers):
    s = SchedulerState()
    s.add_client("c")
    for i in range(n_workers):
        s.add_worker(f"w{i}", address(i), nthreads=1)
    s.take_messages()
    return s


class GCClock:
    """CPU seconds and count of the cyclic collector's runs, by generation."""

    def __init__(self):
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._t0 = None

    def __call__(self, phase, info):
        if phase == "start":
            self._t0 = time.process_time()
        elif self._t0 is not None:
            g = info["generation"]
            self.seconds[g] += time.process_time() - self._t0
            self.runs[g] += 1


COLLECTORS = {"off": 0, "default": 1, "server": 2}


def collect_as_server():
    """The cyclic collector as `dask-ipy scheduler` sets it (cli.cmd_scheduler):
    startup objects frozen out of its scans, and collections rare."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def run(n_workers, n_tasks, collector=0):
    """Drive one graph to completion: CPU time of the scheduler's calls.  With
    ``collector`` 1 the cyclic garbage collector runs with Python's default
    settings, with 2 as in the scheduler's own process (`collect_as_server`); its
    time spent inside those calls counts.  With 0 it is off."""
    s = cluster(n_workers)
    entries, final = tree(n_tasks)
    queues = {wid: collections.deque() for wid in s.workers}
    steals = 0

    def dispatch():
        nonlocal steals
        for kind, wid, msg in s.take_messages():
            if kind != "worker":
                continue
            op = msg["op"]
            if op == "compute-task":
                queues[wid].append(msg["key"])
            elif op == "steal-request":
                q = queues[wid]
                key = msg["key"]
                # The head is the task "running" now: never given up.
                given = key in q and q[0] != key
                if given:
                    q.remove(key)
                    steals += 1
                answers.append((wid, {"op": "steal-response", "key": key,
                                      "released": given,
                                      "state": None if given else "executing"}))

    answers = []
    gc.collect()
    if collector == 2:
        collect_as_server()
    clock = GCClock()
    if collector:
        gc.callbacks.append(clock)
    else:
        gc.disable()
    try:
        t0 = time.process_time()
        s.update_graph("c", iter(entries), keys=[final])
        intake = time.process_time() - t0
        n = len(entries)
        del entries
        dispatch()
        busy = 0.0
        done = 0
        while True:
            heads = [(wid, q.popleft()) for wid, q in queues.items() if q]
            if not heads and not answers:
                break
            t0 = time.process_time()
            while answers:
                wid, msg = answers.pop()
                s.handle_worker_message(wid, msg)
            for wid, key in heads:
                s.handle_worker_message(wid, {"op": "task-finished", "key": key,
                                              "nbytes": 8, "type": "int",
                                              "duration": 0.001})
            busy += time.process_time() - t0
            done += len(heads)
            dispatch()
    finally:
        gc.enable()
        if collector:
            gc.callbacks.remove(clock)
    assert s.tasks[final].state == "memory", s.tasks[final].state
    assert done == n, (done, n)
    return {"workers": n_workers, "tasks": n, "intake_us": 1e6 * intake / n,
            "complete_us": 1e6 * busy / n, "steals": steals, "collector": collector,
            "gc_seconds": clock.seconds, "gc_runs": clock.runs}


def memory(n_tasks):
    """Bytes per task the scheduler holds for a waiting graph: what its objects take
    on the heap (tracemalloc), exact at any size, where the RSS of a small graph can
    stay within pages the process had already."""
    s = cluster(10)
    entries, final = tree(n_tasks)
    n = len(entries)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    s.update_graph("c", iter(entries), keys=[final])
    del entries
    gc.collect()
    s.take_messages()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"tasks": n, "bytes_per_task": grown / n}


def decisions(n_workers, repeat=200):
    """Microseconds of one placement of a task with two inputs, and of one steal
    pass for an idle worker while every other worker has three tasks queued."""
    s = cluster(n_workers)
    workers = list(s.workers.values())
    roots = [(("r", i), b"spec", ()) for i in range(2 * n_workers)]
    s.update_graph("c", roots, keys=[k for k, _, _ in roots])
    s.take_messages()
    # Finish the roots where they went: inputs spread over the cluster.
    for ts in list(s.tasks.values()):
        if ts.processing_on is not None:
            s.handle_worker_message(ts.processing_on.id, {
                "op": "task-finished", "key": ts.key, "nbytes": 8, "type": "int",
                "duration": 1.0})
    s.take_messages()
    s.update_graph("c", [(("s", 0), b"spec", (("r", 0), ("r", 1)))], keys=[("s", 0)])
    s.take_messages()
    ts = s.tasks[("s", 0)]
    t0 = time.process_time()
    for _ in range(repeat):
        s.decide_worker(ts)
    place = (time.process_time() - t0) / repeat
    # Three tasks queued on every worker but the thief (placed there by restriction,
    # which is then lifted so that they may be stolen).
    thief = workers[0]
    for ws in s.workers.values():
        ws.processing.clear()
        ws.occupancy = 0.0
    queued = {("q", ws.id, j): ws for ws in workers[1:] for j in range(3)}
    s.update_graph("c", [(k, b"spec", (("r", 0),)) for k in queued], keys=list(queued),
                   restrictions={k: [ws.address] for k, ws in queued.items()})
    for k in queued:
        s.tasks[k].restrictions = None
    s.take_messages()
    t0 = time.process_time()
    for _ in range(repeat):
        s._steal_for(thief)
        asked = len(s.steals)
        for key in list(s.steals):          # unanswered: the thief is idle again
            s._end_steal(key)
    steal = (time.process_time() - t0) / repeat
    s.take_messages()
    return {"workers": n_workers, "decide_worker_us": 1e6 * place,
            "steal_pass_us": 1e6 * steal, "steals_asked": asked}


def submits(n_workers, n=2000):
    """Microseconds of one graph of one task (a client's ``submit``), on an idle
    cluster (each task finished before the next comes) and on a full one (tasks
    queued on the scheduler: one thread and two queued on every worker first)."""
    s = cluster(n_workers)
    idle = 0.0
    for i in range(n):
        t0 = time.process_time()
        s.update_graph("c", [(("x", i), b"spec", ())], keys=[("x", i)])
        idle += time.process_time() - t0
        for kind, wid, msg in s.take_messages():
            if kind == "worker" and msg["op"] == "compute-task":
                s.handle_worker_message(wid, {"op": "task-finished", "key": msg["key"],
                                              "nbytes": 8, "type": "int",
                                              "duration": 1.0})
        s.take_messages()
    fill = [(("f", i), b"spec", ()) for i in range(3 * n_workers)]
    s.update_graph("c", fill, keys=[k for k, _, _ in fill])
    s.take_messages()
    t0 = time.process_time()
    for i in range(n):
        s.update_graph("c", [(("y", i), b"spec", ())], keys=[("y", i)])
        s.take_messages()
    full = time.process_time() - t0
    assert len(s.queued) == n
    return {"workers": n_workers, "idle_submit_us": 1e6 * idle / n,
            "full_submit_us": 1e6 * full / n}


def child(kind, *args):
    """One measurement in a fresh interpreter: its JSON."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", kind,
                          *map(str, args)], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout.splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="10,100,1000")
    p.add_argument("--tasks", default="10000,100000,1000000")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each case; the fastest is kept (least disturbed)")
    p.add_argument("--collector", choices=tuple(COLLECTORS), default="server",
                   help="the cyclic garbage collector during the runs: as in the "
                        "scheduler's process (server), Python's default, or off")
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        kind, *args = a.child
        fn = {"run": run, "memory": memory, "decisions": decisions,
              "submits": submits}[kind]
        print(json.dumps(fn(*map(int, args))))
        return 0
    workers = [int(x) for x in a.workers.split(",")]
    tasks = [int(x) for x in a.tasks.split(",")]
    if a.quick:
        workers, tasks, a.repeats = [2, 20], [200, 2000], 1
    results = {"runs": [], "memory": [], "decisions": []}
    collector = COLLECTORS[a.collector]
    print(f"{'workers':>8} {'tasks':>9} {'intake us/task':>15} "
          f"{'complete us/task':>17} {'steals':>7} {'gc s':>6} {'full gc':>8}")
    for w in workers:
        for n in tasks:
            samples = [child("run", w, n, collector) for _ in range(max(a.repeats, 1))]
            r = dict(min(samples, key=lambda x: x["intake_us"] + x["complete_us"]))
            r["samples"] = samples
            r["requested"] = n
            results["runs"].append(r)
            print(f"{r['workers']:>8} {r['tasks']:>9} {r['intake_us']:>15.2f} "
                  f"{r['complete_us']:>17.2f} {r['steals']:>7} "
                  f"{sum(r['gc_seconds']):>6.2f} {r['gc_runs'][2]:>8}", flush=True)
    print(f"\n{'tasks':>9} {'scheduler bytes/task':>21}")
    for n in tasks:
        r = child("memory", n)
        results["memory"].append(r)
        print(f"{r['tasks']:>9} {r['bytes_per_task']:>21.0f}", flush=True)
    print(f"\n{'workers':>8} {'decide_worker us':>17} {'steal pass us':>14} "
          f"{'steals asked':>13}")
    for w in workers:
        r = child("decisions", w)
        results["decisions"].append(r)
        print(f"{r['workers']:>8} {r['decide_worker_us']:>17.2f} "
              f"{r['steal_pass_us']:>14.2f} {r['steals_asked']:>13}", flush=True)
    print(f"\n{'workers':>8} {'submit us, idle':>16} {'submit us, full':>16}")
    results["submits"] = []
    for w in workers:
        r = child("submits", w)
        results["submits"].append(r)
        print(f"{r['workers']:>8} {r['idle_submit_us']:>16.2f} "
              f"{r['full_submit_us']:>16.2f}", flush=True)
    base = {(r["workers"], r["requested"]): r for r in results["runs"]}
    lo, hi = min(tasks), max(tasks)
    for w in workers:
        small, big = base[(w, lo)], base[(w, hi)]
        ratio = (big["intake_us"] + big["complete_us"]) / (
            small["intake_us"] + small["complete_us"])
        print(f"{w} workers: per-task cost at {big['tasks']} tasks is {ratio:.2f}x "
              f"that at {small['tasks']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
