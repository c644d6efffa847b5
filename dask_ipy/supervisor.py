"""The small process that keeps a ``dask-ipy worker`` running.

    dask-ipy worker ADDR ...            (this process: stdlib and psutil only)
        │  makes a private local directory (0700)
        ├─ spawns  python -m dask_ipy worker ADDR ... --supervised --local-directory D
        │          and relays its output; reads its "memory_limit:" lines
        ├─ watches its RSS: past the terminate fraction for longer than the worker
        │  takes to act on it itself (its GIL held by one long C call), or past
        │  `HARD_FACTOR` x its limit for `HARD_GRACE`, the worker is killed
        └─ when it exits for memory (EXIT_MEMORY), is killed, or crashes after
           running a while: its files are removed and a new worker starts

The worker itself stops a runaway task first (it tells the scheduler which task ran
and how much memory it reached, then exits: see worker/monitor.py); this process is
the backstop for what it cannot see.  A clean exit (the scheduler closed the worker,
or a signal) ends the supervisor too.  Signals sent here are passed on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil

EXIT_MEMORY = 75          # as worker.monitor.EXIT_MEMORY (not imported: no dask here)
POLL = 0.1                # seconds between two looks at the worker
GRACE = 0.5               # seconds past terminate the worker has to act on its own
HARD_FACTOR = 1.2         # past this multiple of its limit the worker is killed sooner,
HARD_GRACE = 0.2          # after this many seconds: a few of the worker's own memory
                          # checks, so that one that acts on it (and tells the scheduler
                          # which task ran out of memory) is not killed first
SHORT_LIFE = 10.0         # a crash sooner than this after a start is not retried
MAX_RESTARTS = 10         # restarts within RESTART_WINDOW seconds before giving up
RESTART_WINDOW = 60.0


class Supervisor:
    """Runs ``argv`` (after ``python -m dask_ipy``) again and again; see the module
    docstring.  The worker prints its limit and terminate fraction ("memory_limit:",
    "memory_terminate:" lines), and the limit again whenever it changes."""

    def __init__(self, argv, local_directory=None, env=None, out=None):
        self.directory = tempfile.mkdtemp(prefix="dask-ipy-worker-",
                                          dir=local_directory)
        os.chmod(self.directory, 0o700)
        self.argv = [sys.executable, "-m", "dask_ipy", *argv, "--supervised",
                     "--local-directory", self.directory]
        self.terminate = None
        self.env = dict(os.environ if env is None else env)
        # Freed heap memory goes back to the system at once (glibc's adaptive
        # threshold would keep it): what the memory watch sees is what is used.
        self.env.setdefault("MALLOC_TRIM_THRESHOLD_", "65536")
        self.out = out or sys.stdout
        self.proc = None
        self.limit = None
        self.stopping = threading.Event()
        self.restarts = []
        self.starts = 0

    def run(self):
        """Keep a worker running until it exits cleanly or `stop()`; the exit code."""
        try:
            while True:
                code, reason = self._run_once()
                if self.stopping.is_set() or code == 0:
                    return 0
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW]
                if code > 0 and reason != "memory" and self._lived < SHORT_LIFE:
                    self._say(f"worker exited with code {code} after {self._lived:.1f} s;"
                              " not restarting")
                    return code if code > 0 else 1
                if len(self.restarts) >= MAX_RESTARTS:
                    self._say(f"{MAX_RESTARTS} restarts in {RESTART_WINDOW:.0f} s; "
                              "giving up")
                    return code if code > 0 else 1
                self.restarts.append(now)
                self._say(f"worker exited ({reason}, code {code}); starting a new one")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self, sig=signal.SIGTERM):
        self.stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(sig)
            except OSError:
                pass

    def _say(self, text):
        print(f"supervisor: {text}", file=sys.stderr, flush=True)

    def _run_once(self):
        started = time.monotonic()
        self.starts += 1
        self.limit = None
        self.proc = proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=self.env,
            text=True, bufsize=1)
        relay = threading.Thread(target=self._relay, args=(proc,), daemon=True,
                                 name="dask-ipy-supervisor-relay")
        relay.start()
        reason = "exit"
        over_since = hard_since = None
        try:
            watched = psutil.Process(proc.pid)
        except psutil.Error:
            watched = None
        while True:
            try:
                code = proc.wait(POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set() or watched is None or not self.limit:
                continue
            try:
                rss = watched.memory_info().rss
            except psutil.Error:
                continue
            now = time.monotonic()
            hard = rss > HARD_FACTOR * self.limit
            over = self.terminate and rss > self.terminate * self.limit
            over_since = (over_since or now) if over else None
            hard_since = (hard_since or now) if hard else None
            if (hard_since and now - hard_since >= HARD_GRACE
                    or over_since and now - over_since > GRACE):
                self._say(f"worker pid {proc.pid} holds {rss} bytes, past its "
                          f"{self.limit} byte limit; killing it")
                reason = "memory"
                proc.kill()
        relay.join(5)
        self._lived = time.monotonic() - started
        if code == EXIT_MEMORY:
            reason = "memory"
        elif code < 0 and reason != "memory":
            reason = f"killed by {signal.Signals(-code).name}" if -code in \
                signal.valid_signals() else "killed"
        # What the worker left behind (it cannot clean up after a kill).
        for name in os.listdir(self.directory):
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        return code, reason

    def _relay(self, proc):
        for line in proc.stdout:
            name, sep, value = line.partition(":")
            if sep and name.strip() in ("memory_limit", "memory_terminate"):
                try:
                    number = float(value.strip())
                except ValueError:
                    number = 0
                if name.strip() == "memory_limit":
                    self.limit = int(number) or None
                else:
                    self.terminate = number or None
            try:
                self.out.write(line)
                self.out.flush()
            except (OSError, ValueError):
                pass
        proc.stdout.close()
