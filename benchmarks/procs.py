"""Processes: host subprocesses, memory readings, and killing whole trees.

Every process a benchmark starts is either a ``HostProcess`` (stopped by closing
its stdin, killed with its tree if it does not go) or a child of ipyparallel's
``Cluster`` (stopped by ipyparallel, killed with the child's tree as a last
resort). Nothing here waits without a deadline.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
READY_MARK = "BENCHMARK-HOST-READY "


def child_env(extra=None):
    """The environment for subprocesses: the project importable everywhere."""
    env = dict(os.environ)
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def kill_tree(pid, timeout=5.0, include_root=True):
    """Terminate a process and all its descendants; kill what stays."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True)
    except psutil.Error:
        return
    if include_root:
        procs.append(root)
    kill_procs(procs, timeout)


def kill_procs(procs, timeout=5.0):
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def ready_mark(line, seen):
    """A ``benchmarks.hosts`` announcement: one ``BENCHMARK-HOST-READY {json}`` line."""
    if line.startswith(READY_MARK):
        return json.loads(line[len(READY_MARK):])
    return None


def ready_fields(last):
    """``name: value`` lines (as the ``dask-ipy`` command prints), complete at ``last``."""

    def parse(line, seen):
        name, sep, value = line.partition(":")
        if sep and name.strip().replace("_", "").isalnum():
            value = value.strip()
            seen[name.strip()] = int(value) if value.isdigit() else value
        return seen if last in seen else None

    return parse


class HostProcess:
    """A Python subprocess that announces itself on stdout, then serves until stopped.

    ``argv`` follows the interpreter (``["-m", "benchmarks.hosts", KIND]``);
    ``parse(line, seen)`` turns stdout lines into the announcement (a dict) once
    complete. Stopping closes stdin (``benchmarks.hosts`` exits at its end),
    sends SIGTERM if ``terminate``, and kills the tree if it does not go.
    """

    def __init__(self, argv, log_path, parse=ready_mark, terminate=False, env=None):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.parse = parse
        self.terminate = terminate
        self._log = open(self.log_path, "ab", buffering=0)
        self._log.write(f"\n=== host {' '.join(self.argv)}\n".encode())
        self._ready = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, *self.argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=str(ROOT),
            env=env or child_env(),
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"host-{self.pid}")
        self._reader.start()

    def _read(self):
        seen, announced = {}, False
        for line in self.proc.stdout:
            self._log.write(line)
            if not announced:
                info = self.parse(line.decode(errors="replace").rstrip("\n"), seen)
                if info is not None:
                    announced = True
                    self._ready.put(info)
        self._ready.put(None)

    def ready(self, timeout):
        """The host's announcement (a dict), or an error with the log's tail."""
        try:
            info = self._ready.get(timeout=timeout)
        except queue.Empty:
            info = None
            why = f"not ready after {timeout:.0f} s"
        else:
            try:
                code = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            why = f"closed its output (exit code {code})"
        if info is None:
            raise RuntimeError(f"host {' '.join(self.argv)} {why}: {tail(self.log_path)}")
        return info

    def stop(self, timeout=15.0):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.terminate and self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.pid)
            self.proc.wait(5)
        else:
            kill_tree(self.pid)  # anything it left behind
        self._reader.join(2)
        self._log.close()


def tail(path, nbytes=1500):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- memory


def rss(pids):
    """Sum of resident set sizes (bytes) of the live processes among ``pids``."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def memory(pid):
    """{'rss', 'uss', 'pss'} of one process, in bytes (None where not available).

    RSS counts shared pages in full, so it overstates a group of forked processes;
    PSS shares them out, so it adds up.
    """
    p = psutil.Process(pid)
    out = {"rss": p.memory_info().rss, "uss": None, "pss": None}
    try:
        full = p.memory_full_info()
        out["uss"] = full.uss
        out["pss"] = getattr(full, "pss", None)
    except (psutil.Error, AttributeError):
        pass
    return out


def reset_peak(pid):
    """Reset the kernel's RSS high-water mark of ``pid``; False where unsupported."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss(pid):
    """The kernel's RSS high-water mark (VmHWM) of ``pid`` in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakSampler:
    """Samples the summed RSS of some processes in a thread; keeps the maximum.

    Used together with the kernel's VmHWM, which catches spikes between samples
    but covers one process at a time.
    """

    def __init__(self, pids, interval=0.05):
        self.pids = list(pids)
        self.interval = interval
        self.peak = rss(self.pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss(self.pids))

    def __enter__(self):
        self._hwm_reset = len(self.pids) == 1 and reset_peak(self.pids[0])
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss(self.pids))
        if self._hwm_reset:
            hwm = peak_rss(self.pids[0])
            if hwm is not None:
                self.peak = max(self.peak, hwm)


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout:.0f} s")
        time.sleep(interval)
