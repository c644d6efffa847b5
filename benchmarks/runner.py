"""``python -m benchmarks``: run the workloads on each system, print the table, save JSON.

Each system runs in a child process of its own (``benchmarks.child``), one system
after another so that they never share the machine. The runner reads the child's
events and enforces a deadline on every phase; a child that misses one is killed
with everything it started, its current workload is recorded as failed, and a new
child carries on with the rest. The JSON is rewritten after every system, so an
interrupted run keeps what it measured.
"""

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from . import SYSTEMS, WORKLOADS, procs, report
from .workloads import DEADLINES, ORDER, SIZES
from .workloads import WORKLOADS as SPECS

DEFAULT_JSON = procs.ROOT / "benchmarks" / "results" / "latest.json"


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="dask_ipy against dask.distributed and ipyparallel, on this machine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="workloads (full sizes; --quick uses tiny ones):\n"
        + "\n".join(f"  {k}  {SPECS[k].summary.format(n=SIZES['full'][k])}" for k in WORKLOADS),
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, one timed run (a smoke run)")
    p.add_argument("--only", default=",".join(WORKLOADS), help="workloads, e.g. a,c (default: all)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"default: {','.join(SYSTEMS)}")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to save (default: %(default)s)")
    p.add_argument("--repeats", type=int, help="timed runs per figure (default: 3, quick: 1)")
    p.add_argument(
        "--size", action="append", default=[], metavar="W=N",
        help="override one workload's size, e.g. e=100000 (repeatable)",
    )
    p.add_argument(
        "--stat", choices=("median", "best"), default="median",
        help="which of the timed runs the table shows (both are in the JSON)",
    )
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="print the table of a saved run (with --stat) and exit; runs nothing")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every deadline")
    args = p.parse_args(argv)
    args.only = _split(args.only, WORKLOADS, "--only")
    args.systems = _split(args.systems, SYSTEMS, "--systems")
    return args


def _split(text, allowed, flag):
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown {bad or 'empty'}; choose from {','.join(allowed)}")
    return items


def settings_for(args):
    mode = "quick" if args.quick else "full"
    sizes = dict(SIZES[mode])
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in sizes or not value:
            raise SystemExit(f"--size {item!r}: expected W=N with W one of {','.join(sizes)}")
        sizes[key] = int(float(value))
    scale = args.timeout_scale
    return {
        "mode": mode,
        "quick": args.quick,
        "repeats": args.repeats or (1 if args.quick else 3),
        "repeats_given": args.repeats is not None,
        "sizes": sizes,
        "deadlines": {k: v * scale for k, v in DEADLINES[mode].items()},
        "wait_timeout": (60.0 if args.quick else 1800.0) * scale,
        "start_timeout": 60.0 * scale,
        "start_deadline": 120.0 * scale,
        "stop_deadline": 60.0 * scale,
    }


class EventReader:
    """JSON lines from a pipe, each read with a deadline."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def next(self, timeout):
        """The next event; None at end of file; TimeoutError when the deadline passes."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                if chunk:
                    self.buffer += chunk
                else:
                    self.eof = True
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


def progress(system, letter, data):
    if "error" in data:
        text = "ERROR " + data["error"].splitlines()[0][:200]
    else:
        text = f"done in {data.get('wall_seconds', 0):.1f} s"
    print(f"[{system}] {letter}: {text}", file=sys.stderr, flush=True)


def run_system(name, letters, settings, log_path, results, meta):
    """Run ``letters`` on system ``name``; fills results[name] and meta[name]."""
    remaining = list(letters)
    mine = results.setdefault(name, {})
    while remaining:
        # Private IPython and Jupyter runtime directories: profiles, connection
        # files and keys of this run go there and are removed with it.
        scratch = tempfile.mkdtemp(prefix="bench-")
        env = procs.child_env(
            {"IPYTHONDIR": os.path.join(scratch, "ipython"),
             "JUPYTER_RUNTIME_DIR": os.path.join(scratch, "runtime")}
        )
        r, w = os.pipe()
        with open(log_path, "ab") as log:
            log.write(f"\n=== child {name} {''.join(remaining)} {time.ctime()}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.child", "--system", name,
                 "--workloads", "".join(remaining), "--settings", json.dumps(settings),
                 "--events", str(w), "--log", str(log_path)],
                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(procs.ROOT), env=env,
            )
        os.close(w)
        events = EventReader(r)
        phase, current, failure = "launch", remaining[0], None
        deadline = time.monotonic() + settings["start_deadline"]
        try:
            while True:
                try:
                    ev = events.next(max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    failure = f"no progress within the deadline during {phase}; killed"
                    break
                if ev is None:
                    break
                kind = ev["event"]
                if kind == "phase":
                    phase, current = ev["phase"], ev.get("workload", current)
                    deadline = time.monotonic() + ev["deadline"]
                elif kind == "meta":
                    meta[name] = ev["system"]
                elif kind == "result":
                    mine[ev["workload"]] = ev["data"]
                    if ev["workload"] in remaining:
                        remaining.remove(ev["workload"])
                    progress(name, ev["workload"], ev["data"])
                    current = remaining[0] if remaining else None
                elif kind == "done":
                    phase = "exit"
                    deadline = time.monotonic() + settings["stop_deadline"]
        finally:
            os.close(r)
            if failure and proc.poll() is None:
                _dump_stacks(proc)
            procs.kill_tree(proc.pid, timeout=5)
            try:
                rc = proc.wait(10)
            except subprocess.TimeoutExpired:
                rc = None
            shutil.rmtree(scratch, ignore_errors=True)
        if not remaining:
            break
        failure = failure or f"child exited with code {rc} during {phase}"
        failure += f" (log: {log_path})"
        # The workload under way failed; if the cluster would not start, so do all needing it.
        failed = [current] if current in remaining else remaining[:1]
        if phase in ("launch", "start"):
            failed = [x for x in remaining if SPECS[x].needs_cluster] or failed
        for letter in failed:
            mine[letter] = {"error": failure}
            remaining.remove(letter)
            progress(name, letter, mine[letter])


def _dump_stacks(proc):
    """Have a stuck child write its threads' stacks to its log before it dies."""
    try:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
    except OSError:
        pass


def versions():
    out = {}
    for mod in ("dask", "distributed", "ipyparallel", "zmq", "numpy", "dask_ipy"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception as exc:
            out[mod] = f"not importable: {type(exc).__name__}: {exc}"[:300]
    return out


def save(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=repr))
    tmp.replace(path)


def print_table(out, stat):
    meta = out["meta"]
    sizes = meta["settings"]["sizes"]
    print(report.render(out["table"], meta["systems"]))
    print(
        f"\n{stat} of the timed runs (c: of {sizes['c']} round trips). "
        "ratio: dask_ipy / the better of distributed and distributed-inf\n"
        "(f: / ipyparallel's become_dask); read it with the 'better' column."
    )
    if meta.get("load_average"):
        loads = ", ".join(f"{k} {a:.1f} -> {b:.1f}" for k, (a, b) in meta["load_average"].items())
        print(f"load average (1 min, {meta['machine']['cpus']} cpus) before -> after: {loads}")
    for err in out["errors"]:
        print(f"error: {err['system']} {err['workload']}: {err['error'].splitlines()[0][:300]}")


def show_saved(path, stat):
    out = json.loads(Path(path).read_text())
    meta = out["meta"]
    out["table"] = report.build(
        out["results"], meta["settings"]["sizes"], meta["systems"], meta["workloads"], stat
    )
    print_table(out, stat)
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.report:
        return show_saved(args.report, args.stat)
    settings = settings_for(args)
    json_path = args.json.resolve()
    log_dir = json_path.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    meta = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": settings,
        "systems": args.systems,
        "workloads": args.only,
        "stat": args.stat,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        },
        "versions": versions(),
        "clusters": {},
        "logs": {},
        # Other work on the machine skews every figure: the 1-minute load average
        # before and after each system says how much there was.
        "load_average": {},
    }
    results = {}

    def payload():
        table = report.build(results, settings["sizes"], args.systems, args.only, args.stat)
        return {"meta": meta, "table": table, "errors": report.errors(results), "results": results}

    t0 = time.perf_counter()
    try:
        for name in args.systems:
            letters = [x for x in ORDER if x in args.only and name in SPECS[x].systems]
            if not letters:
                continue
            log_path = log_dir / f"{name}.log"
            log_path.write_bytes(b"")
            meta["logs"][name] = str(log_path)
            print(f"[{name}] running {','.join(letters)} (log: {log_path})", file=sys.stderr, flush=True)
            load_before = os.getloadavg()[0]
            run_system(name, letters, settings, log_path, results, meta["clusters"])
            meta["load_average"][name] = [load_before, os.getloadavg()[0]]
            meta["elapsed_seconds"] = time.perf_counter() - t0
            save(json_path, payload())
    except KeyboardInterrupt:
        meta["interrupted"] = True
        print("interrupted: the table has what was measured", file=sys.stderr)
    finally:
        meta["elapsed_seconds"] = time.perf_counter() - t0
        out = payload()
        save(json_path, out)

    print_table(out, args.stat)
    print(f"\nJSON: {json_path}  ({meta['elapsed_seconds']:.0f} s)")
    return 130 if meta.get("interrupted") else 0
