"""Workload n: many clients at once, each in a process of its own.

    child (the benchmark's process)            N client processes, started once
      | "map 5000 from S" to each, at once  ──▶ Client.map(inc, ...), gather, check
      | the clock starts before the first   ◀── {"began", "ended"}: wall clock
      v aggregate = all tasks / (last end - start)

The same client processes time one client mapping all the tasks alone (N x 5,000
from one of them), in turns with the N at once, so that both figures come from the
same code, the same processes and the same minute of the machine's load.

A client in a process of its own is what many clients are in practice (notebooks,
services, several users' scripts): each has its own interpreter and GIL.  Eight
clients in one process would share one GIL and measure that process's Python, not
the scheduler's handling of many clients.

``python -m benchmarks.manyclients SYSTEM ADDRESS``: one client process; reads one
JSON command a line on stdin (``{"n": tasks, "start": first argument}``), answers
one JSON line on stdout, and exits at the end of its input.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

from . import procs


def _address(system):
    return system.info["address_to_clients" if system.name == "dask_ipy" else "address"]


class ClientProcess:
    """One client process: commands to its stdin, answers from its stdout (one JSON
    object a line), its stderr to the log."""

    def __init__(self, system, log):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.manyclients", system.name, _address(system)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            cwd=str(procs.ROOT), env=procs.child_env())
        self.answers = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True,
                                       name=f"client-{self.proc.pid}")
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.decode(errors="replace").strip()
            if line.startswith("{"):
                self.answers.put(json.loads(line))
        self.answers.put(None)          # the process is gone

    def answer(self, timeout):
        try:
            got = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"a client process gave no answer in {timeout:.0f} s") from None
        if got is None:
            raise RuntimeError(f"a client process exited ({self.proc.poll()})")
        if "error" in got:
            raise RuntimeError(f"a client failed: {got['error']}")
        return got

    def send(self, command):
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            pass
        procs.kill_tree(self.proc.pid)
        self.proc.wait(5)
        self.reader.join(2)


def many_clients(system, size, timeout, fresh, nclients=8):
    """n. ``nclients`` client processes submitting ``size`` tiny tasks each at once,
    against one of them submitting ``nclients * size`` alone; aggregate tasks/s.
    ``timeout``: seconds any one answer may take; ``fresh()``: a new run number
    (arguments never repeat between runs)."""
    log = open(system.log_path, "ab", buffering=0)
    clients = []
    try:
        clients.extend(ClientProcess(system, log) for _ in range(nclients))
        for c in clients:
            c.answer(120)               # connected

        def run(per_client, together):
            senders = clients if together else clients[:1]
            n = per_client if together else per_client * nclients
            commands = [{"n": n, "start": fresh() * 10**9} for _ in senders]
            began = time.time()
            for c, command in zip(senders, commands):
                c.send(command)
            ends = [c.answer(timeout)["ended"] - began for c in senders]
            return n * len(senders) / max(ends), ends

        warm = max(50, size // 10)
        run(warm, True)
        run(warm, False)
        together, alone, spreads = [], [], []
        for i in range(system.repeats):
            # In turns, the order swapped each round: both see the same load.
            for mode in ((True, False) if i % 2 == 0 else (False, True)):
                system.settle()
                rate, ends = run(size, mode)
                if mode:
                    together.append(rate)
                    spreads.append(min(ends) / max(ends))
                else:
                    alone.append(rate)
    finally:
        for c in clients:
            c.stop()
        log.close()
    return {
        "path": f"{nclients} client processes, Client.map(inc, {size:,}) + gather each, "
                f"at once; against one of them mapping {nclients * size:,} alone",
        "clients": nclients,
        "tasks_per_client": size,
        "tasks_per_s": statistics.median(together),
        "best_tasks_per_s": max(together),
        "single_tasks_per_s": statistics.median(alone),
        "best_single_tasks_per_s": max(alone),
        "aggregate_over_single": statistics.median(together) / statistics.median(alone),
        "best_aggregate_over_single": max(together) / max(alone),
        # The first client done over the last: 1 when every client is served alike.
        "fairness": statistics.median(spreads),
        "together": together,
        "alone": alone,
    }


# ---------------------------------------------------------------- the client process


def _connect(name, address):
    if name == "dask_ipy":
        from dask_ipy import Client
        return Client(address)
    import distributed
    return distributed.Client(address, timeout=60)


def main(argv=None):
    from . import tasks

    name, address = (argv or sys.argv[1:])[:2]
    client = _connect(name, address)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        n, start = command["n"], command["start"]
        began = time.time()
        try:
            futures = client.map(tasks.inc, range(start, start + n))
            results = client.gather(futures)
            if sum(results) != n * start + n * (n + 1) // 2:
                raise AssertionError("wrong sum of map results")
            del futures, results
            answer = {"began": began, "ended": time.time()}
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"[:2000]}
        print(json.dumps(answer), flush=True)
    client.close()


if __name__ == "__main__":
    main()
