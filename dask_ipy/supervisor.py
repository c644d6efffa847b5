"""The small process that keeps a ``dask-ipy worker`` running.

    dask-ipy worker ADDR ...            (this process: stdlib and psutil; ZeroMQ only
                                         to tell the scheduler of a death)
        │  makes a private local directory (0700)
        ├─ spawns  python -m dask_ipy worker ADDR ... --supervised --local-directory D
        │          and relays its output; reads its "memory_limit:" lines, and its
        │          "registered:" line (the scheduler welcomed it: it is up)
        ├─ watches its RSS: past the terminate fraction for longer than the worker
        │  takes to act on it itself (its GIL held by one long C call), or past
        │  `HARD_FACTOR` x its limit for `HARD_GRACE`, the worker is killed
        ├─ when it exits with an error (for memory: EXIT_MEMORY; killed by a task
        │  or a signal; crashed), tells the scheduler how its process ended
        │  (`fate`), on a short connection of its own (`tell_scheduler`)
        └─ then its files are removed and a new worker starts, as `restart_delay` says

A worker that was up is started again: at once, or after a wait that grows while its
deaths come quickly (a task that kills every worker it lands on ends in KilledWorker
at the scheduler after its allowed failures; the workers stay).  Only one that dies
soon after registering, again and again (a broken worker plugin, tasks that kill
every worker they land on), is given up on.  One that exits before it ever registered
(bad arguments, an import that fails) is tried again a few times, and then given up
on.  Giving up names the last exit code (or signal) and the worker's last lines on
stderr, and ends the supervisor with an error.

The scheduler notices the lost connection first, as a rule: a task that would end in
KilledWorker there waits for this word (at most 5 s; see scheduler/server.py),
so that the error says "its process exited with code 3" or "was killed by SIGSEGV"
rather than only "connection lost".  ZeroMQ and the protocol are loaded for it only
once a worker has died.

The worker itself stops a runaway task first (it tells the scheduler which task ran
and how much memory it reached, then exits: see worker/monitor.py); this process is
the backstop for what it cannot see.  A clean exit (the scheduler closed the worker,
or a signal) ends the supervisor too.  Signals sent here are passed on.
"""

from __future__ import annotations

import collections
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from .status import STATUS_TAG, own_line

EXIT_MEMORY = 75          # as worker.monitor.EXIT_MEMORY (not imported: no dask here)
POLL = 0.1                # seconds between two looks at the worker
GRACE = 0.5               # seconds past terminate the worker has to act on its own
HARD_FACTOR = 1.2         # past this multiple of its limit the worker is killed sooner,
HARD_GRACE = 0.2          # after this many seconds: a few of the worker's own memory
                          # checks, so that one that acts on it (and tells the scheduler
                          # which task ran out of memory) is not killed first
RESTART_WINDOW = 60.0     # restarts within this many seconds make the next one wait
BACKOFF = 0.5             # ... this long for the second, twice as long for each next,
MAX_BACKOFF = 10.0        # up to this
QUICK_DEATH = 30.0        # a worker that dies within this many seconds of registering,
GIVE_UP_DEATHS = 5        # this many times
GIVE_UP_WINDOW = 300.0    # within this many seconds, is given up on
START_RETRIES = 3         # a worker that exits before registering is started again
START_BACKOFF = 1.0       # this many times, after 1, 2, 4 s
STDERR_LINES = 5          # lines of a worker's stderr kept for the give-up message
TELL_TIMEOUT = 5.0        # seconds to tell the scheduler how a worker ended, at most
                          # (1 s, quietly, for one not seen registering)
TOKEN_VARIABLE = "DASK_IPY_SUPERVISION"   # the worker's token, from its supervisor

# glibc's malloc in a process that is all worker, as environment variables (for a
# process about to start) and as mallopt parameter numbers (for one running).
#   trim: freed memory at the top of the heap goes back to the system past 64 KiB
#     at once.  glibc would raise that threshold after each large free, and a
#     worker that released gigabytes would keep them as its RSS.
#   mmap: blocks under 32 MiB (glibc's largest; most dask chunks) come from the
#     heap, where a freed block is used again.  With the trim threshold set, glibc
#     keeps this one at 128 KiB, and each larger block is a fresh mapping whose
#     every page the kernel faults in and zeroes on first touch: making an 8 MB
#     numpy block, adding its transpose and averaging took 4.8-5.8 ms in a thread
#     with blocks from the heap, 8-9 ms with fresh mappings (a 2-core VM).  Freed
#     blocks in the middle of the heap stay in the RSS until trimmed: the memory
#     watch trims them, and turns this off past its target (worker/monitor.py).
HEAP_SETTINGS = {
    "MALLOC_TRIM_THRESHOLD_": (-1, 64 * 1024),
    "MALLOC_MMAP_THRESHOLD_": (-3, 32 * 2**20),
}
HEAP_ENV = {name: str(value) for name, (_, value) in HEAP_SETTINGS.items()}


def restart_delay(ready, recent, failed_starts, quick_deaths):
    """Seconds to wait before starting a new worker after one exited with an error,
    or None to give up.  ``ready``: it had registered with its scheduler; ``recent``:
    restarts within the last RESTART_WINDOW seconds; ``failed_starts``: workers in a
    row that exited before registering, this one included; ``quick_deaths``: workers
    that died within QUICK_DEATH seconds of registering in the last GIVE_UP_WINDOW
    seconds, this one included."""
    if not ready:
        if failed_starts > START_RETRIES:
            return None
        return START_BACKOFF * 2 ** (failed_starts - 1)
    if quick_deaths >= GIVE_UP_DEATHS:
        return None
    if not recent:
        return 0.0
    return min(BACKOFF * 2 ** (recent - 1), MAX_BACKOFF)


def oom_kills(path="/proc/vmstat"):
    """How many processes the kernel's out-of-memory killer has ended since the
    machine started (Linux's /proc/vmstat, the whole machine's even in a container),
    or None where that is not known."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def fate(code, reason, oom=None):
    """How a worker's process ended, for the scheduler (KilledWorker's text): None
    after a clean exit or EXIT_MEMORY (the worker told the scheduler itself).
    ``reason`` "memory": this process killed it for its memory.  ``oom``: whether
    the kernel's out-of-memory killer ended a process while it ran (None: not
    known), which tells a SIGKILL from it from one somebody sent."""
    if code == 0 or code == EXIT_MEMORY:
        return None
    if reason == "memory":
        return "its process was killed by its supervisor for exceeding its memory limit"
    if code > 0:
        return f"its process exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"its process was killed by signal {-code}"
    if -code == signal.SIGKILL and oom is not False:
        return f"its process was killed by {name} (" + (
            "the kernel's out-of-memory killer ended a process meanwhile)" if oom
            else "the system may have run out of memory)")
    return f"its process was killed by {name}"


def tell_scheduler(scheduler, token, pid, reason, timeout=TELL_TIMEOUT):
    """Tell the scheduler (``scheduler``: the worker's ADDRESS_OR_FILE, whose key is
    found as the worker finds it) that the worker of token ``token`` (which it
    registered with), process ``pid``, ended as ``reason`` says: a "worker-died"
    message, authenticated as a worker's are, on a connection of this process's
    own.  True once handed to ZeroMQ, False after ``timeout`` seconds without the
    scheduler's answer to "hello"."""
    import zmq

    from .comm import Handshake, connect_dealer, new_id
    from .discovery import resolve_scheduler
    from .protocol import ProtocolError, Session

    target, security = resolve_scheduler(scheduler, None, "address_to_workers")
    identity = new_id("supervisor")
    session = Session(security.key, identity)
    handshake = Handshake()
    context = zmq.Context()
    sock = connect_dealer(context, security, identity, target, heartbeat=False)
    try:
        sock.sndtimeo = int(timeout * 1000)
        sock.send_multipart(handshake.hello(session))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and sock.poll(left * 1000):
            try:
                msgs = session.loads(sock.recv_multipart())
            except ProtocolError:
                continue
            answer = next(filter(None, map(handshake.answer, msgs)), None)
            if answer is not None:
                session.epoch, scheduler_id = answer
                sock.send_multipart(session.dumps(
                    [{"op": "worker-died", "token": token, "pid": pid,
                      "reason": reason}], scheduler_id))
                sock.linger = int(timeout * 1000)
                return True
        return False
    finally:
        sock.close()
        context.term()


class Supervisor:
    """Runs ``argv`` (after ``python -m dask_ipy``) again and again; see the module
    docstring.  The worker prints its limit and terminate fraction ("memory_limit:",
    "memory_terminate:" lines), and the limit again whenever it changes.
    ``scheduler``: the worker's ADDRESS_OR_FILE, told how each worker that died there
    ended (`tell_scheduler`; None: not told).  Each worker gets a token of its own
    (in `TOKEN_VARIABLE`), which it registers with: the scheduler knows it by that."""

    def __init__(self, argv, local_directory=None, env=None, out=None, scheduler=None):
        self.directory = tempfile.mkdtemp(prefix="dask-ipy-worker-",
                                          dir=local_directory)
        os.chmod(self.directory, 0o700)
        self.argv = [sys.executable, "-m", "dask_ipy", *argv, "--supervised",
                     "--local-directory", self.directory]
        self.terminate = None
        self.env = dict(os.environ if env is None else env)
        # The worker's own status lines start with this tag: a task's print is
        # never taken for one.  Lines go on with the tag of this process's launcher
        # (the same one), or without any for a person at a terminal.
        self.keep_tags = bool(self.env.get(STATUS_TAG))
        self.tag = self.env.get(STATUS_TAG) or secrets.token_hex(8)
        self.env[STATUS_TAG] = self.tag
        # glibc's malloc as a worker wants it (see `HEAP_SETTINGS`); the user's wins.
        for name, value in HEAP_ENV.items():
            self.env.setdefault(name, value)
        self.out = out or sys.stdout
        self.proc = None
        self.limit = None
        self.stopping = threading.Event()
        self.stop_signal = signal.SIGTERM
        self.signalled = None     # the worker process the stop signal was passed to
        self.restarts = []        # when workers were started again (monotonic)
        self.failed_starts = 0    # workers in a row that exited before registering
        self.quick_deaths = []    # when workers died soon after registering (monotonic)
        self.registered = None    # when the worker running now registered (monotonic)
        self.token = None         # the running worker's
        self.scheduler = scheduler
        self.stderr_tail = collections.deque(maxlen=STDERR_LINES)

    def run(self):
        """Keep a worker running until it exits cleanly or `stop()`; the exit code."""
        try:
            while True:
                code, reason = self._run_once()
                if self.stopping.is_set() or code == 0:
                    return 0
                now = time.monotonic()
                ready = self.registered is not None
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW]
                self.failed_starts = 0 if ready else self.failed_starts + 1
                if ready and now - self.registered < QUICK_DEATH:
                    self.quick_deaths.append(now)
                self.quick_deaths = [t for t in self.quick_deaths
                                     if now - t < GIVE_UP_WINDOW]
                delay = restart_delay(ready, len(self.restarts), self.failed_starts,
                                      len(self.quick_deaths))
                if delay is None:
                    self._say(self._giving_up(code, reason))
                    return code if code > 0 else 1
                self._say(f"worker exited ({reason}, code {code}"
                          f"{'' if ready else ', before registering'}); starting "
                          f"a new one{f' in {delay:g} s' if delay else ''}")
                if self.stopping.wait(delay):
                    return 0
                self.restarts.append(time.monotonic())
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _tell(self, reason):
        if reason is None or self.scheduler is None:
            return
        # One not seen registering (its "registered:" line may not have come out
        # before a task killed it) is tried too, briefly and quietly: the scheduler
        # may not be there at all.
        seen = self.registered is not None
        timeout = TELL_TIMEOUT if seen else 1.0
        try:
            if tell_scheduler(self.scheduler, self.token, self.proc.pid, reason, timeout):
                return
            why = f"no answer within {timeout:g} s"
        except Exception as e:        # its connection file gone, no key any more...
            why = f"{type(e).__name__}: {e}"
        if seen:
            self._say(f"could not tell the scheduler how the worker ended: {why}")

    def _giving_up(self, code, reason):
        if self.registered is None:
            how = (f"before registering with its scheduler, {self.failed_starts} times "
                   f"in a row")
        else:
            how = (f"within {QUICK_DEATH:g} s of registering with its scheduler, "
                   f"{len(self.quick_deaths)} times in {GIVE_UP_WINDOW:g} s")
        text = f"worker exited ({reason}, code {code}) {how}; giving up"
        if self.stderr_tail:
            text += "; its last lines on stderr:\n" + "\n".join(
                f"    {line.rstrip()}" for line in self.stderr_tail)
        return text

    def stop(self, sig=signal.SIGTERM):
        self.stop_signal = sig
        self.stopping.set()
        self._signal(self.proc)

    def _signal(self, proc):
        """Pass the stop signal on to ``proc``, once."""
        if proc is not None and proc is not self.signalled and proc.poll() is None:
            self.signalled = proc
            try:
                proc.send_signal(self.stop_signal)
            except OSError:
                pass

    def _say(self, text):
        print(f"supervisor: {text}", file=sys.stderr, flush=True)

    def _run_once(self):
        self.limit = None
        self.registered = None
        self.token = secrets.token_hex(16)
        ooms = oom_kills()            # to tell the kernel's SIGKILL from another's
        self.stderr_tail.clear()
        self.proc = proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={**self.env, TOKEN_VARIABLE: self.token},
            text=True, bufsize=1)
        if self.stopping.is_set():    # stopped while it was being started
            self._signal(proc)
        relays = [threading.Thread(target=target, args=(stream,), daemon=True,
                                   name=f"dask-ipy-supervisor-{name}")
                  for target, stream, name in ((self._relay, proc.stdout, "stdout"),
                                               (self._relay_stderr, proc.stderr,
                                                "stderr"))]
        for relay in relays:
            relay.start()
        reason = "error"
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
        if code == EXIT_MEMORY:
            reason = "memory"
        elif code < 0 and reason != "memory":
            reason = f"killed by {signal.Signals(-code).name}" if -code in \
                signal.valid_signals() else "killed"
        if not self.stopping.is_set():
            # Before the relays end: a task's own child may hold their pipes open.
            after = oom_kills() if code == -signal.SIGKILL else None
            oom = None if ooms is None or after is None else after > ooms
            self._tell(fate(code, reason, oom))
        for relay in relays:
            relay.join(5)
        # What the worker left behind (it cannot clean up after a kill).
        for name in os.listdir(self.directory):
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        return code, reason

    def _relay(self, stdout):
        for line in stdout:
            own = own_line(line, self.tag)
            if own is not None:
                self._status(own)
                if not self.keep_tags:
                    line = own
            self._write(self.out, line)
        stdout.close()

    def _status(self, line):
        """One of the worker's own status lines."""
        name, sep, value = line.partition(":")
        name = name.strip() if sep else None
        if name == "registered" and self.registered is None:
            self.registered = time.monotonic()
        elif name in ("memory_limit", "memory_terminate"):
            try:
                number = float(value.strip())
            except ValueError:
                number = 0
            if name == "memory_limit":
                self.limit = int(number) or None
            else:
                self.terminate = number or None

    def _relay_stderr(self, stderr):
        for line in stderr:
            if line.strip():
                self.stderr_tail.append(line)
            self._write(sys.stderr, line)
        stderr.close()

    @staticmethod
    def _write(stream, line):
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):
            pass
