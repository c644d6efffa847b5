"""One system's workloads in one process: ``python -m benchmarks.child``.

The runner starts one child per system and reads its events, one JSON object a
line, from the pipe whose descriptor is ``--events``:

    {"event": "phase", "phase": "start" | "workload" | "stop", "workload": "a", "deadline": s}
    {"event": "meta", "system": {...}}              after the cluster started
    {"event": "result", "workload": "a", "data": {...}}   "error" in data on failure
    {"event": "done"}

Each phase carries the deadline the runner enforces by killing this process and
everything under it (after SIGUSR1, which dumps every thread's stack to the log). A failed workload stops the cluster, so the next one starts
on a fresh cluster; a cluster that fails to start fails the workloads needing it.
The child exits (after stopping what it started) if the runner goes away.
"""

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time
import traceback

from . import procs
from .systems import ADAPTERS
from .workloads import WORKLOADS


class Events:
    def __init__(self, fd):
        self.fd = fd
        os.set_inheritable(fd, False)
        self.lock = threading.Lock()

    def emit(self, **event):
        data = (json.dumps(event, default=repr) + "\n").encode()
        with self.lock:
            while data:
                data = data[os.write(self.fd, data):]


def error_info(exc):
    return {
        "error": f"{type(exc).__name__}: {exc}"[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-6000:],
    }


def stop_quietly(system):
    try:
        system.stop()
    except Exception:
        traceback.print_exc()
    procs.kill_tree(os.getpid(), include_root=False)


def watch_parent(parent):
    """Exit, after killing this process's descendants, once the runner is gone."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            procs.kill_tree(os.getpid(), timeout=3, include_root=False)
            os._exit(2)


def run(system, letters, settings, events):
    start_error = None
    for letter in letters:
        workload = WORKLOADS[letter]
        if workload.needs_cluster and not system.running and start_error is None:
            events.emit(event="phase", phase="start", workload=letter, deadline=settings["start_deadline"])
            try:
                system.start(timeout=settings["start_timeout"])
                events.emit(event="meta", system=system.describe())
            except Exception as exc:
                traceback.print_exc()
                start_error = error_info(exc)
                start_error["error"] = "cluster did not start: " + start_error["error"]
                stop_quietly(system)
        if workload.needs_cluster and start_error is not None:
            events.emit(event="result", workload=letter, data=start_error)
            continue
        if not workload.needs_cluster and system.running:
            events.emit(event="phase", phase="stop", deadline=settings["stop_deadline"])
            stop_quietly(system)
        events.emit(
            event="phase", phase="workload", workload=letter, deadline=settings["deadlines"][letter]
        )
        print(f"--- {system.name}: workload {letter}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            data = workload.fn(system, settings["sizes"][letter])
        except Exception as exc:
            traceback.print_exc()
            data = error_info(exc)
            if system.running:
                events.emit(event="phase", phase="stop", deadline=settings["stop_deadline"])
                stop_quietly(system)
        data["wall_seconds"] = time.perf_counter() - t0
        events.emit(event="result", workload=letter, data=data)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    parser.add_argument("--system", required=True, choices=sorted(ADAPTERS))
    parser.add_argument("--workloads", required=True, help="letters, in the order to run them")
    parser.add_argument("--settings", required=True, help="JSON")
    parser.add_argument("--events", required=True, type=int, help="file descriptor")
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    settings = json.loads(args.settings)
    events = Events(args.events)
    # The runner asks for every thread's stack (into the log) before it kills a stuck child.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()

    system = ADAPTERS[args.system](args.log, settings)
    try:
        run(system, args.workloads, settings, events)
    finally:
        events.emit(event="phase", phase="stop", deadline=settings["stop_deadline"])
        stop_quietly(system)
        events.emit(event="done")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait on non-daemon threads a library left behind


if __name__ == "__main__":
    main()
