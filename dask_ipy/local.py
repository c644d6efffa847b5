"""`LocalCluster`: a scheduler and workers on this machine, started and stopped as
one, with dask.distributed's arguments, attributes and methods.

    processes=True (the default)                   processes=False
    this process                                   this process
     ├─ python -m dask_ipy scheduler ...            Scheduler (its I/O thread)
     ├─ python -m dask_ipy worker FILE ...          Worker, Worker, ... (threads)
     │     (a supervisor) └─ the worker process
     └─ ...

The commands are those of ``dask-ipy`` (cli.py): each worker runs under its
supervisor, which starts a new worker process when one dies, as dask.distributed's
nanny does.  Each child runs in its own session (a Ctrl-C at the terminal reaches
this process only) and stops as on SIGTERM once its stdin closes (``--lifeline``):
this process holds the other end, so its death, however it comes, stops them too.
The key travels on the scheduler's stdin, the workers read it from the scheduler's
connection file (owner-only); none is on a command line.  A thread per child reads
its stdout: the ``name: value`` lines it prints as it starts (addresses; a worker's
pid, address and memory limit each time its supervisor starts one, and each
registration); whatever else it prints (a task's ``print``) is passed on to this
process's standard output.

A scale thread carries out `scale` (which only asks, and returns): it starts
workers, or retires them, while the caller goes on.  A watch thread waits for the
scheduler to stop: a `Client.shutdown`, or a crash, closes the cluster too.
`close` closes the lifelines of the workers and the scheduler at once (each
closes cleanly), gives up the workers a scale is starting, waits, and kills what
is still there with its children; clusters still open when the interpreter exits
are closed then.

Adaptivity (`LocalCluster.adapt`) is one more thread here:

    every interval:  "adaptive-target" ──▶ scheduler: {"target": n, "retire": [address]}
                     AdaptivePolicy.decide ──▶ up to n workers now, or retire those
                     named `wait_count` rounds in a row (`scale`'s own machinery)

The scheduler decides how many workers its work wants and which are cheapest to
retire (`SchedulerState.adaptive_target`); the policy, pure, decides when to act.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import logging
import math
import operator
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref

import psutil

from . import config
from .addresses import ANY_HOST, dashboard_port
from .log import logger
from .security import Security
from .status import STATUS_TAG, Status, own_line
from .units import check_nthreads, format_bytes, parse_resources
from .worker.limits import memory_limit_bytes
from .worker.system import host_cores, host_memory

START_TIMEOUT = 60.0      # seconds a scheduler or worker has to come up
CLOSE_TIMEOUT = 10.0      # seconds the processes have to stop once asked, before
                          # they are killed
DEFAULT_DASHBOARD = ":8787"
ADAPTIVE_LOG_LENGTH = 1000    # changes an `Adaptive` remembers
ENDING_WAIT = 5.0         # seconds a worker gone from the scheduler has to end or restart

# Arguments of dask.distributed's LocalCluster that mean nothing here, each accepted
# and ignored, with the reason.
IGNORED = {
    "loop": "dask_ipy runs no event loop of its own: each scheduler, worker and "
            "client has an I/O thread",
    "start": "deprecated in dask.distributed, where it has no effect either",
    "scheduler_sync_interval": "the cluster asks the scheduler when it needs to know",
    "worker_dashboard_address": "workers serve no web page; the scheduler's "
                                "dashboard shows them",
    "death_timeout": "the cluster's workers end with it, not on a timeout: a "
                     "worker process stops once its lifeline to the cluster closes",
}
# Arguments of dask.distributed's LocalCluster that mean something dask_ipy cannot do:
# refused (TypeError) unless left at their empty default.
UNSUPPORTED = {
    "services": "Bokeh services",
    "worker_services": "Bokeh services",
    "service_kwargs": "Bokeh services",
    "blocked_handlers": "blocking scheduler handlers",
    "worker_class": "another worker class",
    "scheduler_kwargs": "other scheduler arguments",
    "interface": "choosing a network interface (pass its address as host=)",
    "lifetime": "worker lifetimes (workers are restarted by restart_workers)",
    "lifetime_stagger": "worker lifetimes",
    "lifetime_restart": "worker lifetimes",
}

_OPEN = weakref.WeakSet()         # clusters of this process not closed yet


def _close_open_clusters():
    for cluster in list(_OPEN):
        with contextlib.suppress(Exception):
            cluster._close()


atexit.register(_close_open_clusters)


# ---------------------------------------------------------------- arguments

def _level_name(level):
    """A logging level (a number or a name; True: warnings) as the ``--log-level``
    of a command."""
    if level is True:
        level = logging.WARN
    if isinstance(level, str):
        return level.upper()
    for number, name in ((10, "DEBUG"), (20, "INFO"), (30, "WARNING"), (40, "ERROR")):
        if level <= number:
            return name
    return "CRITICAL"


def default_sizes(n_workers, threads_per_worker, processes, cores):
    """(workers, threads each), as dask.distributed's LocalCluster chooses them on a
    host of ``cores`` cores: with processes, up to 4 cores one single-threaded
    worker each, beyond that about sqrt(cores) workers; in one process, one worker
    with a thread per core."""
    if n_workers is None and threads_per_worker is None:
        if not processes:
            return 1, cores
        if cores <= 4:
            return cores, 1
        n_workers = min(f for f in range(1, cores + 1)
                        if cores % f == 0 and f >= math.sqrt(cores))
        return n_workers, cores // n_workers
    if n_workers is None:
        return (max(1, cores // threads_per_worker) if processes else 1), \
            threads_per_worker
    if threads_per_worker is None:
        threads_per_worker = max(1, math.ceil(cores / max(n_workers, 1)))
    return n_workers, threads_per_worker


def _child_env():
    """This process's environment, with its ``sys.path`` on the children's
    PYTHONPATH: they import dask_ipy, and the functions tasks call by reference,
    from where this process does; and its dask.config as it is now (when the
    process starts), as dask.distributed's workers get theirs."""
    env = dict(os.environ, **config.inherited_env())
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")     # a task's print shows at once
    return env


def _forward(raw):
    out = sys.__stdout__
    if out is None:
        return
    with contextlib.suppress(Exception):
        out.buffer.write(raw)
        out.flush()


# ---------------------------------------------------------------- processes

class _Child:
    """A ``python -m dask_ipy ...`` process of a cluster (see the module
    docstring); `status_line` takes the lines of its stdout that are its own: those
    that start with the tag it was given (`status.say`).  The rest (what its tasks
    print) goes to this process's stdout."""

    def __init__(self, argv, env, label, first_line=None):
        self.tag = secrets.token_hex(8)
        self.proc = subprocess.Popen([sys.executable, "-m", "dask_ipy", *argv],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**env, STATUS_TAG: self.tag},
                                     start_new_session=True)
        if first_line is not None:
            with contextlib.suppress(BrokenPipeError):   # it died: told when waited for
                self.proc.stdin.write(first_line.encode() + b"\n")
                self.proc.stdin.flush()
        self.reader = threading.Thread(target=self._read, daemon=True,
                                       name=f"dask-ipy-cluster-{label}")
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            own = own_line(raw.decode(errors="replace"), self.tag)
            if own is None:
                _forward(raw)
                continue
            try:
                taken = self.status_line(own.strip())
            except Exception:        # one of ours, but malformed: shown, read on
                taken = False
            if not taken:
                _forward(own.encode())
        self.proc.stdout.close()

    def status_line(self, line):
        """Take ``line`` if it is one of the process's own; whether it was."""
        raise NotImplementedError

    def running(self):
        return self.proc.poll() is None

    def family(self):
        """The process and its descendants, as psutil processes, while it lives."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self):
        """Ask it to stop: its lifeline closes, which is one SIGTERM (a second
        one, sent from here too, could cut its clean-up short)."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


def _reap(children, family, deadline):
    """Wait for ``children`` until ``deadline``; kill what is left of them and of
    ``family`` (their descendants, taken before they were asked to stop: one that
    outlives its parent is no longer its child)."""
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(max(deadline - time.monotonic(), 0.01))
    left = [p for p in family if p.is_running()]
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(5)
        child.reader.join(5)


class SchedulerProcess(_Child):
    """The scheduler of a `LocalCluster` with ``processes=True``: a ``dask-ipy
    scheduler`` process.  ``address_to_clients`` (what a Client joins),
    ``address_to_workers``, ``connection_file``, ``pid``, ``dashboard_link``."""

    def __init__(self, argv, env, security):
        self.info = {}
        self.ready = threading.Event()
        super().__init__(argv, env, "scheduler",
                         first_line=json.dumps(security.to_dict()))

    def status_line(self, line):
        if self.ready.is_set():
            return False
        name, _, value = line.partition(":")
        self.info[name.strip()] = value.strip()
        if name.strip() == "address_to_clients":    # the last of its start-up lines
            self.ready.set()
        return True

    def wait_ready(self, deadline):
        while not self.ready.wait(0.05):
            if not self.running():
                raise RuntimeError(f"the scheduler exited (code {self.proc.poll()}) "
                                   f"before it listened; its output is above")
            if time.monotonic() > deadline:
                raise TimeoutError("the scheduler did not listen in time")

    def wait(self):
        """Block until the process ends."""
        self.proc.wait()

    @property
    def pid(self):
        return self.proc.pid

    @property
    def address_to_clients(self):
        return self.info.get("address_to_clients")

    @property
    def address(self):
        return self.address_to_clients

    @property
    def address_to_workers(self):
        return self.info.get("address_to_workers")

    @property
    def connection_file(self):
        return self.info.get("connection_file")

    @property
    def dashboard_link(self):
        return self.info.get("dashboard")

    def __repr__(self):
        return f"<SchedulerProcess {self.address} pid={self.pid}>"


class WorkerProcess(_Child):
    """A worker of a `LocalCluster` with ``processes=True``: a ``dask-ipy worker``
    command, its supervisor and the worker process the supervisor keeps running
    (dask.distributed's Nanny).  ``address`` (also ``worker_address``), ``pid`` and
    ``memory_limit`` are those of the worker process running now: a new one, after
    a death, has its own."""

    def __init__(self, name, argv, env):
        self.name = name
        self.address = None
        self.pid = None
        self.memory_limit = None
        self.registered = threading.Event()   # the worker running now registered
        self._header = None                   # the start-up lines being read
        super().__init__(argv, env, f"worker-{name}")

    @property
    def worker_address(self):
        return self.address

    @property
    def supervisor_pid(self):
        return self.proc.pid

    def status_line(self, line):
        if line == "dask-ipy worker":        # a worker process starts
            self._header = {}
            self.registered.clear()
            return True
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if self._header is not None:
            self._header[name] = value
            if name == "scheduler":          # the last of its start-up lines
                header, self._header = self._header, None
                self.pid = int(header.get("pid") or 0) or None
                self.address = header.get("address")
                self.memory_limit = int(float(header.get("memory_limit") or 0))
            return True
        if not sep:
            return False
        if name == "registered":
            self.registered.set()
        elif name == "memory_limit":
            self.memory_limit = int(float(value or 0))
        return name in ("registered", "memory_limit") or (
            name == "supervisor" and value.isdigit())

    def close(self, timeout=CLOSE_TIMEOUT):
        """Stop the worker and its supervisor (killed after ``timeout`` s)."""
        family = self.family()
        self.stop()
        _reap([self], family, time.monotonic() + timeout)

    def __repr__(self):
        return f"<WorkerProcess {self.name!r} {self.address} pid={self.pid}>"


# ---------------------------------------------------------------- the cluster

class LocalCluster:
    """A scheduler and ``n_workers`` workers of ``threads_per_worker`` threads each
    on this machine, as dask.distributed's ``LocalCluster``:

    >>> cluster = LocalCluster(n_workers=2, threads_per_worker=1)
    >>> client = Client(cluster)          # client.cluster is cluster

    ``processes``: each worker a process of its own under a supervisor (the
    default; the scheduler is a process too), or (False) the scheduler and the
    workers in this process, as threads.  Without ``n_workers`` and
    ``threads_per_worker`` the sizes are dask.distributed's (`default_sizes`).
    ``memory_limit`` of each worker: "auto" (this host's memory shared among the
    workers on it), bytes, "2GiB", a fraction of the host, or None/0 for none
    (workers in this process measure this process, which they share).
    ``resources`` of each worker, ``{"GPU": 1}`` or "GPU=1".  ``host`` (``ip``,
    deprecated): where the scheduler and workers listen (default 127.0.0.1;
    "0.0.0.0" or "": everywhere; "tcp://127.0.0.2" names the protocol too).
    ``scheduler_port``: the port clients join (0: any free one); workers join the
    scheduler on a port of their own, always a free one.  ``dashboard_address``
    (":8787", ":0" for any free port, None for none): the scheduler's web page, on
    ``host``.  ``silence_logs``: the level of the
    "dask_ipy" logger in the cluster's processes (False or None: left alone).
    ``security``: a `Security` (True: a new key with encryption; default: a new
    key).  ``local_directory`` and ``blas_threads`` go to each worker (see
    `Worker`); ``plugins``, worker plugins, are registered as
    `Client.register_plugin` does, so they are set up on every worker, those
    that join later too.  ``asynchronous``: await the cluster (``await
    LocalCluster(..., asynchronous=True)`` or ``async with``); its `close`,
    `scale`, `wait_for_workers` and `get_logs` then return awaitables.

    Accepted and ignored, as meaning nothing here: ``loop``, ``start``,
    ``scheduler_sync_interval``, ``worker_dashboard_address`` (see `IGNORED`).
    Refused unless empty: ``services``, ``worker_services``, ``service_kwargs``,
    ``blocked_handlers``, ``worker_class``, ``scheduler_kwargs``, ``interface``;
    ``protocol`` other than tcp.  Any other keyword: TypeError.

    `scale` returns at once, as in dask.distributed: a thread of the cluster
    starts the workers, or retires them gracefully (``wait_for_workers``, or
    awaiting an asynchronous cluster, waits for them); `adapt` scales with the
    work until stopped (by `scale` too).  `close` stops every process and thread
    it started; so do a `Client.shutdown`, the end of a ``with`` block and the
    exit of the interpreter.  ``Client(cluster).close()`` leaves the cluster running.
    """

    def __init__(self, n_workers=None, threads_per_worker=None, processes=True, *,
                 memory_limit="auto", resources=None, host=None, ip=None,
                 scheduler_port=0, dashboard_address=DEFAULT_DASHBOARD,
                 silence_logs=logging.WARN, security=None, local_directory=None,
                 blas_threads=None, name=None, asynchronous=False, protocol=None,
                 plugins=None, **kwargs):
        self._check_extra(kwargs)
        if ip is not None:
            warnings.warn("the ip parameter is deprecated: use host",
                          DeprecationWarning, stacklevel=2)
            host = host or ip
        if host and "://" in host:          # "tcp://127.0.0.2": the protocol too
            scheme, _, host = host.partition("://")
            protocol = protocol or scheme
        if protocol not in (None, "tcp", "tcp://"):
            raise ValueError(f"dask_ipy speaks tcp only, not protocol={protocol!r}")
        if n_workers is not None:
            n_workers = operator.index(n_workers)
            if n_workers < 0:
                raise ValueError(f"n_workers must be 0 or more, not {n_workers}")
        if threads_per_worker is not None:
            threads_per_worker = check_nthreads(threads_per_worker)
        self.processes = bool(processes)
        n_workers, self.threads_per_worker = default_sizes(
            n_workers, threads_per_worker, self.processes, host_cores())
        memory_limit_bytes(memory_limit, 1)                  # checked now
        self.memory_limit = memory_limit
        self.resources = parse_resources(resources)
        # None: this host only; "" (as in dask.distributed): every interface.
        self.host = "127.0.0.1" if host is None else (host or "0.0.0.0")
        self.scheduler_port = operator.index(scheduler_port or 0)
        if security is None or security is False:
            security = Security.temporary()
        elif security is True:
            security = Security.temporary(encrypt=True)
        elif not isinstance(security, Security):
            raise TypeError(f"security must be a Security, True or None, not "
                            f"{type(security).__name__}")
        self.security = security
        self.local_directory = local_directory
        self.blas_threads = blas_threads
        self._plugins = list(plugins or ())
        self.silence_logs = silence_logs
        self.name = name if name is not None else secrets.token_hex(4)
        self._asynchronous = bool(asynchronous)
        self._dashboard = dashboard_port(dashboard_address, self.host)
        self.status = Status.created
        self.scheduler = None       # the Scheduler, or its SchedulerProcess
        self.workers = {}           # {name: Worker, or its WorkerProcess}
        self._n_workers = n_workers
        self._next_name = 0
        self._lock = threading.RLock()     # held while workers start or leave
        # `scale` asks, the scale thread acts (see `_request`): the workers wanted,
        # those named to leave, the environment new ones start with, and the
        # number of the latest request and of the latest one carried out.
        self._scaled = threading.Condition()
        self._target = n_workers
        self._retire = set()
        self._env = None
        self._asked = self._done = 0
        self._failure = None       # (request number, exception) of one that failed
        self._scaler = None        # the scale thread, started by the first request
        self._starting = []        # the names of the workers it is starting
        self._closing = threading.Event()
        self._client = None        # a Client of our own, made when first needed
        self._client_lock = threading.Lock()
        self._adaptive = None      # the running Adaptive, if adapt() was called
        self._watch = None
        self._scheduler_stopped = None   # blocks until the scheduler has stopped
        self._old_level = None
        _OPEN.add(self)
        if not self._asynchronous:
            self._start()

    @staticmethod
    def _check_extra(kwargs):
        for key, value in kwargs.items():
            if key in IGNORED:
                continue
            if key in UNSUPPORTED:
                if value:
                    raise TypeError(f"LocalCluster({key}=...) is not supported: "
                                    f"dask_ipy has no {UNSUPPORTED[key]}")
                continue
            raise TypeError(f"LocalCluster() got an unexpected keyword argument "
                            f"{key!r}")

    # ---------------------------------------------------------------- life

    def _start(self):
        with self._lock:
            if self.status != Status.created:
                return
            self.status = Status.running
            try:
                if self.processes:
                    self._start_scheduler_process()
                else:
                    self._start_scheduler_here()
                self._watch = threading.Thread(
                    target=_watch, args=(self._scheduler_stopped, weakref.ref(self)),
                    name="dask-ipy-cluster-watch", daemon=True)
                self._watch.start()
                self._add_workers(self._n_workers)
                self._register_plugins()
            except BaseException:
                self._close()
                raise

    def _register_plugins(self):
        """The worker plugins given (``plugins=``), set up on the workers there and
        on each that joins later.  One that fails to set up fails the cluster's
        start, as in dask.distributed (RuntimeError, the plugin's error its
        cause)."""
        client = self._scheduler_client() if self._plugins else None
        for plugin in self._plugins:
            try:
                client.register_plugin(plugin)
            except Exception as e:
                raise RuntimeError(f"LocalCluster {self.name}: the worker plugin "
                                   f"{plugin!r} failed to set up: {e}") from e

    def _start_scheduler_process(self):
        argv = ["--log-level", self._log_level(), "scheduler", "--host", self.host,
                "--port-to-clients", str(self.scheduler_port),
                "--security-from-stdin", "--lifeline", *config.scheduler_flags()]
        if self._dashboard is not None:
            argv += ["--dashboard-port", str(self._dashboard)]
        self.scheduler = SchedulerProcess(argv, _child_env(), self.security)
        self.scheduler.wait_ready(time.monotonic() + START_TIMEOUT)
        self._scheduler_stopped = self.scheduler.wait

    def _start_scheduler_here(self):
        from .scheduler.server import Scheduler

        if self.silence_logs:
            log = logging.getLogger("dask_ipy")
            self._old_level = log.level
            log.setLevel(self._log_level())
        self.scheduler = Scheduler(hostname=self.host,
                                   port_to_clients=self.scheduler_port,
                                   security=self.security,
                                   dashboard_port=self._dashboard)
        self._scheduler_stopped = self.scheduler.loop.stopped.wait

    def _log_level(self):
        return _level_name(self.silence_logs or logging.WARN)

    def _scheduler_running(self):
        if self.processes:
            return self.scheduler.running()
        return not self.scheduler.loop.stopped.is_set()

    def _scheduler_ended(self):
        """The watch thread: the scheduler stopped (a client shut it down, or it
        died).  The rest of the cluster goes too (adaptivity first), unless it is
        already going; a `scale` under way is waited for."""
        self._stop_adapting()
        while not self._lock.acquire(timeout=0.1):
            if self.status != Status.running:
                return
        try:
            if self.status == Status.running:
                logger.info("LocalCluster %s: the scheduler stopped; closing",
                            self.name)
                self._close()
        finally:
            self._lock.release()

    def close(self, timeout=None):
        """Stop the workers and the scheduler, every process and thread started;
        what has not stopped after ``timeout`` seconds (default 10) is killed.
        Again: nothing.  An awaitable if the cluster is asynchronous."""
        if self._asynchronous:
            return asyncio.to_thread(self._close, timeout)
        self._close(timeout)

    def _close(self, timeout=None):
        """`close`, blocking whatever the cluster is.  Workers being started by a
        `scale` are given up (stopped with the others)."""
        deadline = time.monotonic() + (CLOSE_TIMEOUT if timeout is None else timeout)
        self._closing.set()
        with self._scaled:
            self._scaled.notify_all()
        self._stop_adapting()
        with self._lock:
            if self.status in (Status.closed, Status.closing):
                return
            self.status = Status.closing
            try:
                with self._client_lock:
                    client, self._client = self._client, None
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close(timeout=2)
                if self.processes:
                    self._stop_processes(deadline)
                else:
                    self._stop_threads()
            finally:
                self.workers.clear()
                self.status = Status.closed
                _OPEN.discard(self)
        for thread in (self._scaler, self._watch):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 5))

    def _stop_processes(self, deadline):
        children = list(self.workers.values())
        if self.scheduler is not None:
            children.append(self.scheduler)
        family = [p for child in children for p in child.family()]
        for child in children:          # at once: each closes cleanly
            child.stop()
        _reap(children, family, deadline)

    def _stop_threads(self):
        for w in self.workers.values():
            with contextlib.suppress(Exception):
                w.close()
        if self.scheduler is not None:
            self.scheduler.close()
        if self._old_level is not None:
            logging.getLogger("dask_ipy").setLevel(self._old_level)
            self._old_level = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()

    def __await__(self):
        return self._astart().__await__()

    async def _astart(self):
        await asyncio.to_thread(self._start)
        await asyncio.to_thread(self._wait_scaled, self._asked)
        return self

    async def __aenter__(self):
        return await self

    async def __aexit__(self, *exc):
        await asyncio.to_thread(self._close)

    def __del__(self):
        with contextlib.suppress(Exception):
            if self.status in (Status.running, Status.created):
                self._close()

    # ---------------------------------------------------------------- workers

    def scale(self, n=0, memory=None, cores=None):
        """Have ``n`` workers (or enough for ``memory`` bytes, or ``cores``
        threads), as dask.distributed's ``scale``: it returns at once, and a thread
        of the cluster starts the new workers (they join `workers` once they have
        registered) or retires the newest, gracefully (their data moves to the
        others first).  ``client.wait_for_workers(n)``, or `wait_for_workers`,
        waits for them.  Adaptivity, if on, stops.  On an asynchronous cluster it
        returns an awaitable, which need not be awaited: awaiting it (or the
        cluster) waits until the workers have joined or left."""
        n = self._workers_for(n, memory, cores)
        if n < 0:
            raise ValueError(f"scale to 0 workers or more, not {n}")
        self._stop_adapting()
        asked = self._request(n)
        if self._asynchronous:
            return _Scaling(self, asked)

    def _request(self, n=None, retire=()):
        """Ask the scale thread for ``n`` workers in all (None: as many as asked
        before), those named ``retire`` gone; the number of the request, which
        `_wait_scaled` waits for.  Requests not carried out yet merge: the
        latest counts.  A new worker starts with this process's environment and
        dask.config as they are now."""
        with self._scaled:
            if self.status != Status.running or self._closing.is_set():
                raise RuntimeError(f"the cluster is {self.status}")
            if retire:
                leaving = (set(self.workers) & set(retire)) - self._retire
                self._retire |= leaving
                self._target = max(self._target - len(leaving), 0)
            if n is not None:
                self._target = n
            self._env = _child_env() if self.processes else None
            self._asked += 1
            if self._scaler is None:
                self._scaler = threading.Thread(
                    target=_scale_thread, args=(weakref.ref(self),), daemon=True,
                    name="dask-ipy-cluster-scale")
                self._scaler.start()
            self._scaled.notify_all()
            return self._asked

    def _carry_out(self, asked):
        """The scale thread: bring the workers to what request ``asked`` (or a
        later one merged into it) wants."""
        failure = None
        try:
            with self._lock:
                if self.status == Status.running and not self._closing.is_set():
                    self._forget_ended()
                    with self._scaled:
                        target = self._target
                        leaving = [name for name in self.workers
                                   if name in self._retire]
                        self._retire.clear()
                    if leaving:
                        self._remove_workers(leaving)
                    if target > len(self.workers):
                        self._add_workers(target - len(self.workers))
                    elif target < len(self.workers):
                        self._remove_workers(list(self.workers)[target:])
        except Exception as e:
            failure = e
            if not self._closing.is_set():
                logger.error("LocalCluster %s: scaling to %s workers failed",
                             self.name, self._target, exc_info=True)
        with self._scaled:
            self._done = max(self._done, asked)
            if failure is not None:
                self._failure = (asked, failure)
            self._scaled.notify_all()

    def _wait_scaled(self, asked, timeout=None, stop=None):
        """Block until request ``asked`` has been carried out (raising what made it
        fail), the cluster closes, or ``stop`` (an Event) is set; TimeoutError
        after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._scaled:
            while self._done < asked and not self._closing.is_set():
                if stop is not None and stop.is_set():
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("the cluster did not finish scaling in time")
                self._scaled.wait(0.1)
            failure = self._failure
        if failure is not None and failure[0] >= asked:
            raise failure[1]

    def _forget_ended(self):
        """Drop the workers that ended for good: retired by the scheduler
        (``Client.retire_workers``), or closed.  A worker process that died is not
        among them while its supervisor starts another.  A worker the scheduler no
        longer knows, but which has not ended yet, is waited for (up to
        `ENDING_WAIT` s) to either end or, a process, start again."""
        known = set(self._scheduler_client().scheduler_info()["workers"])
        deadline = time.monotonic() + ENDING_WAIT
        for w in self.workers.values():
            while (w.address not in known and not self._ended(w)
                   and (not self.processes or w.registered.is_set())
                   and time.monotonic() < deadline):
                time.sleep(0.02)
        for name in [name for name, w in self.workers.items() if self._ended(w)]:
            self.workers.pop(name).close()

    def _ended(self, worker):
        return not worker.running() if self.processes else worker.closed.is_set()

    def _workers_for(self, n, memory, cores):
        """``n``, or more: enough workers for ``memory`` bytes and ``cores``
        threads."""
        if memory is not None:
            n = max(n, math.ceil(_bytes(memory) / self._memory_per_worker()))
        if cores is not None:
            n = max(n, math.ceil(cores / self.threads_per_worker))
        return operator.index(n)

    def scale_up(self, n=0, memory=None, cores=None):
        """Have at least ``n`` workers, or enough for ``memory`` bytes or ``cores``
        threads (dask.distributed's ``scale_up``); returns at once, as `scale`."""
        return self.scale(max(self._workers_for(n, memory, cores), self._target))

    def scale_down(self, workers):
        """Retire the workers named in ``workers`` (names or addresses), as `scale`
        retires (dask.distributed's ``scale_down``); returns at once, as
        `scale`."""
        wanted = {str(w) for w in workers}
        names = [name for name, w in list(self.workers.items())
                 if str(name) in wanted or w.address in wanted]
        self._stop_adapting()
        asked = self._request(retire=names)
        if self._asynchronous:
            return _Scaling(self, asked)

    @property
    def plan(self):
        """The names of the workers asked for (dask.distributed's ``plan``): those
        that stay and those to start."""
        with self._scaled:
            stay = [name for name in self.workers if name not in self._retire]
            stay = (stay + self._starting)[:self._target]
            new = range(self._next_name,
                        self._next_name + self._target - len(stay))
        return set(stay) | set(new)

    requested = plan

    @property
    def observed(self):
        """The names of the workers that run now, as the scheduler knows them."""
        running = {str(info.get("name")) for info in
                   self.scheduler_info["workers"].values()}
        return {name for name in self.workers if str(name) in running}

    def get_client(self):
        """A Client of this cluster: the default one if it is of this cluster, else
        a new one."""
        from .client.default import default_client

        try:
            client = default_client()
        except ValueError:
            client = None
        if client is not None and getattr(client, "cluster", None) is self:
            return client
        from .client.client import Client

        return Client(self)

    def _memory_per_worker(self):
        per_worker = memory_limit_bytes(self.memory_limit, host_memory(),
                                        max(len(self.workers), 1))
        if not per_worker:
            raise ValueError("a size in memory needs workers with a memory limit")
        return per_worker

    def adapt(self, *, minimum=0, maximum=math.inf, minimum_cores=None,
              maximum_cores=None, minimum_memory=None, maximum_memory=None,
              interval="1s", wait_count=3, target_duration="5s"):
        """Scale with the work, as dask.distributed's ``adapt``: every ``interval``
        the cluster grows at once to the workers the scheduler wants for its work to
        take about ``target_duration``, and retires idle workers (their data moves
        to the others first) once they have been found idle ``wait_count`` times in
        a row; never below ``minimum`` workers nor above ``maximum``, nor out of
        ``minimum_cores``/``maximum_cores`` threads and ``minimum_memory``/
        ``maximum_memory`` bytes.  Returns the `Adaptive`, whose ``stop()`` ends
        it, as do `scale`, `close` and another `adapt`."""
        from dask.utils import parse_timedelta

        if minimum_cores is not None:
            minimum = max(minimum, math.ceil(minimum_cores / self.threads_per_worker))
        if maximum_cores is not None:
            maximum = min(maximum, maximum_cores // self.threads_per_worker)
        if minimum_memory is not None:
            minimum = max(minimum, math.ceil(_bytes(minimum_memory)
                                             / self._memory_per_worker()))
        if maximum_memory is not None:
            maximum = min(maximum, _bytes(maximum_memory) // self._memory_per_worker())
        minimum = operator.index(minimum)
        if not math.isinf(maximum):
            maximum = operator.index(maximum)
        if not 0 <= minimum <= maximum:
            raise ValueError(f"adapt between 0 <= minimum <= maximum workers, not "
                             f"minimum={minimum}, maximum={maximum}")
        wait_count = operator.index(wait_count)
        interval = parse_timedelta(interval, "s")
        target_duration = parse_timedelta(target_duration, "s")
        if wait_count < 1 or not interval > 0 or not target_duration > 0:
            raise ValueError("adapt needs wait_count >= 1 and a positive interval "
                             "and target_duration")
        self._stop_adapting()
        with self._lock:
            if self.status != Status.running:
                raise RuntimeError(f"the cluster is {self.status}")
            self._adaptive = Adaptive(self, minimum, maximum, interval, wait_count,
                                      target_duration)
            return self._adaptive

    def _stop_adapting(self):
        """Stop adaptivity, waiting for a round under way: never with the lock held,
        which that round may be waiting for."""
        adaptive, self._adaptive = self._adaptive, None
        if adaptive is not None:
            adaptive.stop()

    def _add_workers(self, count):
        if count <= 0:
            return
        deadline = time.monotonic() + START_TIMEOUT
        new, registered = {}, []
        with self._scaled:
            names = list(range(self._next_name, self._next_name + count))
            self._next_name += count
            self._starting = names
        try:
            for name in names:
                new[name], event = self._new_worker(name)
                registered.append(event)
            for (name, worker), event in zip(new.items(), registered):
                while not event.wait(0.05):
                    self._check_starting(name, worker, deadline)
        except BaseException:
            with self._scaled:
                self._starting = []
            for worker in new.values():
                with contextlib.suppress(Exception):
                    worker.close()
            raise
        with self._scaled:
            self.workers.update(new)
            self._starting = []
        self._settle_auto_limits(deadline)

    def _settle_auto_limits(self, deadline):
        """With "auto" memory limits, wait (until ``deadline``, at most
        `ENDING_WAIT` s from now) for the scheduler to report every worker's share
        of this host: each worker takes it when the scheduler tells it how many
        share the host, just after they register."""
        if str(self.memory_limit).strip().lower() != "auto":
            return
        deadline = min(deadline, time.monotonic() + ENDING_WAIT)
        total = host_memory()
        while time.monotonic() < deadline:
            workers = self._scheduler_client().scheduler_info()["workers"].values()
            share = memory_limit_bytes("auto", total, len(workers))
            if all(w.get("memory_limit") == share for w in workers):
                return
            time.sleep(0.02)

    def _check_starting(self, name, worker, deadline):
        """Raise if worker ``name``, not registered yet, never will be (or is no
        longer wanted: the cluster closes)."""
        if self._closing.is_set():
            raise RuntimeError("the cluster is closing")
        if self.processes and not worker.running():
            raise RuntimeError(f"worker {name!r} exited (code {worker.proc.poll()}) "
                               f"before it registered with the scheduler; its output "
                               f"is above")
        if not self._scheduler_running():
            raise RuntimeError("the scheduler stopped")
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {name!r} did not register with the scheduler "
                               f"within {START_TIMEOUT:g} s")

    def _new_worker(self, name):
        """A new worker called ``name``, and an Event set once it has registered."""
        if self.processes:
            argv = ["--log-level", self._log_level(), "worker",
                    self.scheduler.connection_file, "--name", str(name), "--nthreads",
                    str(self.threads_per_worker), "--memory-limit",
                    "none" if not self.memory_limit else str(self.memory_limit),
                    "--lifeline"]
            if self.host not in ANY_HOST:
                argv += ["--host", self.host]
            if self.resources:
                argv += ["--resources", ",".join(f"{k}={v}"
                                                 for k, v in self.resources.items())]
            if self.local_directory is not None:
                argv += ["--local-directory", str(self.local_directory)]
            if self.blas_threads is not None:
                argv += ["--blas-threads", "off" if self.blas_threads is False
                         else str(self.blas_threads)]
            worker = WorkerProcess(name, argv, self._env or _child_env())
            return worker, worker.registered
        from .worker.server import Worker

        w = Worker(scheduler=self.scheduler.address_to_workers, security=self.security,
                   hostname=None if self.host in ANY_HOST else self.host,
                   nthreads=self.threads_per_worker, name=name,
                   memory_limit=self.memory_limit or None,
                   resources=self.resources or None,
                   local_directory=self.local_directory,
                   blas_threads=self.blas_threads)
        registered = threading.Event()
        w.registered_listeners.append(registered.set)
        if w.clients_address is not None:     # welcomed before the line above
            registered.set()
        return w, registered

    def _remove_workers(self, names):
        """Retire workers ``names``, then close them.  The scheduler retires those
        whose data can move to workers that stay; the others close all the same
        (their data is lost), as in dask.distributed."""
        gone = [self.workers.pop(name) for name in names]
        retired = {}
        with contextlib.suppress(Exception):
            retired = self._scheduler_client().retire_workers(
                names=[str(n) for n in names])
        if self.processes:
            deadline = time.monotonic() + CLOSE_TIMEOUT
            for w in gone:        # a retired worker exits, and then its supervisor
                if w.address in retired:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        w.proc.wait(max(deadline - time.monotonic(), 0.01))
        for w in gone:
            w.close()
        self._settle_auto_limits(time.monotonic() + ENDING_WAIT)

    def wait_for_workers(self, n_workers, timeout=None):
        """Block until ``n_workers`` workers run (TimeoutError after ``timeout``
        seconds), and are in `workers` once a `scale` under way has started them;
        an awaitable if the cluster is asynchronous."""
        if self._asynchronous:
            return asyncio.to_thread(self._wait_for_workers, n_workers, timeout)
        return self._wait_for_workers(n_workers, timeout)

    def _wait_for_workers(self, n_workers, timeout):
        from dask.utils import parse_timedelta

        timeout = parse_timedelta(timeout, "s")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._scheduler_client().wait_for_workers(n_workers, timeout)
        with self._scaled:       # a scale under way to n or fewer: its end
            while (self._done < self._asked and not self._closing.is_set()
                   and (self._target <= n_workers or len(self.workers) < n_workers)
                   and (deadline is None or time.monotonic() < deadline)):
                self._scaled.wait(0.05)

    # ---------------------------------------------------------------- what it is

    def _scheduler_client(self):
        """The cluster's own Client of its scheduler (blocking, never the default
        client): how the cluster asks the scheduler (retirements, logs, info).
        Its own lock: asking never waits for workers being started."""
        with self._client_lock:
            if self.status != Status.running:
                raise RuntimeError(f"the cluster is {self.status}")
            if self._client is None:
                from .client.client import Client

                self._client = Client(self.scheduler_address,
                                      security=self.security, set_as_default=False,
                                      task_output=False, name=f"cluster-{self.name}")
            return self._client

    @property
    def asynchronous(self):
        return self._asynchronous

    @property
    def scheduler_address(self):
        """The address a Client joins (the scheduler's ``address_to_clients``)."""
        return None if self.scheduler is None else self.scheduler.address_to_clients

    @property
    def dashboard_link(self):
        """The URL of the scheduler's web page, its token included; None without
        one."""
        return None if self.scheduler is None else self.scheduler.dashboard_link

    @property
    def scheduler_info(self):
        """What the scheduler says of itself and its workers
        (`Client.scheduler_info`)."""
        return self._scheduler_client().scheduler_info()

    def get_logs(self, cluster=True, scheduler=True, workers=True):
        """The latest log lines, newest first, one text each: ``{"Scheduler": ...,
        worker address: ...}`` (``workers``: True for all, or addresses).  The
        cluster itself logs to the "dask_ipy" logger here and keeps nothing
        (``cluster`` is accepted for dask.distributed's sake).  An awaitable if the
        cluster is asynchronous."""
        if self._asynchronous:
            return asyncio.to_thread(self._get_logs, scheduler, workers)
        return self._get_logs(scheduler, workers)

    def _get_logs(self, scheduler, workers):
        client = self._scheduler_client()
        logs = {}
        if scheduler:
            logs["Scheduler"] = "\n".join(line for _, line in
                                          client.get_scheduler_logs())
        if workers:
            chosen = None if workers is True else list(workers)
            for address, lines in client.get_worker_logs(workers=chosen).items():
                logs[address] = "\n".join(line for _, line in lines)
        return logs

    def _repr_html_(self):
        """How a notebook shows the cluster: its name, status, scheduler,
        dashboard link and workers, from what the cluster knows here (no request
        to the scheduler, so it shows at once, even while it scales)."""
        from html import escape

        workers = list(self.workers.items())
        limits = [w.memory_limit for _, w in workers]
        memory = format_bytes(sum(limits)) if limits and all(limits) else "no limit"
        link = self.dashboard_link
        dashboard = (f'<a href="{escape(link)}" target="_blank">{escape(link)}</a>'
                     if link else "none")
        rows = "".join(
            f"<tr><td>{escape(str(name))}</td>"
            f"<td style=\"font-family:monospace\">{escape(str(w.address))}</td>"
            f"<td>{self.threads_per_worker}</td>"
            f"<td>{format_bytes(w.memory_limit) if w.memory_limit else ''}</td></tr>"
            for name, w in workers)
        table = (f'<table style="margin:2px 0 0 0"><tr><th>name</th><th>address</th>'
                 f"<th>threads</th><th>memory limit</th></tr>{rows}</table>"
                 if workers else "")
        return (f"<div><b>LocalCluster</b> {escape(str(self.name))} "
                f"<span style=\"opacity:0.7\">({escape(str(self.status))})</span><br>"
                f"Scheduler: <span style=\"font-family:monospace\">"
                f"{escape(str(self.scheduler_address))}</span><br>"
                f"Dashboard: {dashboard}<br>"
                f"Workers: {len(workers)}, Total threads: "
                f"{len(workers) * self.threads_per_worker}, Total memory: {memory}"
                f"{table}</div>")

    def __repr__(self):
        workers = list(self.workers.values())
        text = (f"LocalCluster({self.name}, {self.scheduler_address!r}, "
                f"workers={len(workers)}, "
                f"threads={len(workers) * self.threads_per_worker}")
        limits = [w.memory_limit for w in workers]
        if limits and all(limits):
            text += f", memory={format_bytes(sum(limits))}"
        return text + ")"


# ---------------------------------------------------------------- adaptivity

class AdaptivePolicy:
    """When adaptivity acts on the scheduler's answers: up at once, down only for
    workers named for retirement ``wait_count`` rounds in a row (a short lull
    retires nobody).  Pure: no clock, thread or socket."""

    def __init__(self, wait_count=3):
        self.wait_count = wait_count
        self.counts = {}        # {worker name: rounds in a row it was named to retire}

    def decide(self, answer, workers):
        """``answer``: the scheduler's ``{"target": n, "retire": [address]}``;
        ``workers``: the cluster's ``{name: address}`` now (a worker that joined
        the scheduler from elsewhere is not the cluster's to retire).  ("up", n
        workers in all), ("down", [names to retire]) or ("same", None)."""
        target = answer["target"]
        if target >= len(workers):
            self.counts.clear()
            return ("up", target) if target > len(workers) else ("same", None)
        name_of = {address: name for name, address in workers.items()}
        named = [name_of[a] for a in answer["retire"] if a in name_of]
        self.counts = {name: self.counts.get(name, 0) + 1 for name in named}
        due = [name for name in named if self.counts[name] >= self.wait_count]
        for name in due:
            del self.counts[name]
        return ("down", due) if due else ("same", None)


class Adaptive:
    """A `LocalCluster`'s adaptivity, made by `LocalCluster.adapt` (dask.distributed's
    ``Adaptive``): a thread of this process asks the scheduler every ``interval``
    seconds how many workers its work wants, and which to retire
    (`Client.adaptive_target`, within ``minimum`` and ``maximum``), and acts as
    `AdaptivePolicy` says, through the cluster's `scale` machinery.  A round that
    fails is logged and the next one comes.  `stop` ends the thread.  ``log``: the
    latest changes, ``(time, {"status": "up", "n": n})`` or ``(time, {"status":
    "down", "workers": [names]})``; ``state``: "running" or "stopped"."""

    def __init__(self, cluster, minimum, maximum, interval, wait_count,
                 target_duration):
        self.minimum = minimum
        self.maximum = maximum
        self.interval = interval
        self.wait_count = wait_count
        self.target_duration = target_duration
        self.policy = AdaptivePolicy(wait_count)
        self.log = collections.deque(maxlen=ADAPTIVE_LOG_LENGTH)
        self._cluster = weakref.ref(cluster)      # the thread must not keep it alive
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="dask-ipy-cluster-adapt")
        self._thread.start()
        logger.info("LocalCluster %s: adaptive scaling started, minimum=%s "
                    "maximum=%s", cluster.name, minimum, maximum)

    @property
    def cluster(self):
        return self._cluster()

    @property
    def state(self):
        stopped = self._stopping.is_set() or not self._thread.is_alive()
        return "stopped" if stopped else "running"

    def stop(self, reason="unknown"):
        """Stop adapting (the workers there are stay), once a round under way has
        ended."""
        if not self._stopping.is_set():
            self._stopping.set()
            logger.info("adaptive scaling stopped: %s", reason)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self):
        while not self._stopping.wait(self.interval):
            cluster = self._cluster()
            if cluster is None or cluster.status != Status.running:
                return
            try:
                self._round(cluster)
            except Exception:
                if not self._stopping.is_set() and cluster.status == Status.running:
                    logger.warning("LocalCluster %s: an adaptive scaling round failed",
                                   cluster.name, exc_info=True)
            del cluster

    def _round(self, cluster):
        answer = cluster._scheduler_client().adaptive_target(
            self.target_duration, self.minimum,
            None if math.isinf(self.maximum) else self.maximum)
        workers = {name: w.address for name, w in list(cluster.workers.items())}
        status, what = self.policy.decide(answer, workers)
        if status == "same" or self._stopping.is_set():
            return
        if status == "up":
            self.log.append((time.time(), {"status": "up", "n": what}))
            asked = cluster._request(what)
        else:
            self.log.append((time.time(), {"status": "down", "workers": what}))
            asked = cluster._request(retire=what)
        cluster._wait_scaled(asked, stop=self._stopping)

    def __repr__(self):
        return (f"<Adaptive {self.state} minimum={self.minimum} "
                f"maximum={self.maximum}>")


def _bytes(memory):
    from dask.utils import parse_bytes

    return parse_bytes(memory) if isinstance(memory, str) else int(memory)


class _Scaling:
    """What `LocalCluster.scale` of an asynchronous cluster returns: the scaling
    goes on whether it is awaited or not; awaited, it ends once the workers have
    joined or left (raising what made them fail to start)."""

    def __init__(self, cluster, asked):
        self._cluster = cluster
        self._asked = asked

    def __await__(self):
        return asyncio.to_thread(self._cluster._wait_scaled,
                                 self._asked).__await__()

    def __repr__(self):
        return f"<scaling of {self._cluster!r}>"


def _scale_thread(ref):
    """The scale thread of a cluster (``ref``, a weak reference: the thread must
    not keep it alive): carries out its requests, the latest first, until it
    closes."""
    while True:
        cluster = ref()
        if cluster is None or cluster._closing.is_set():
            return
        with cluster._scaled:
            if cluster._done >= cluster._asked:
                cluster._scaled.wait(0.5)
            asked = cluster._asked
        if asked > cluster._done and not cluster._closing.is_set():
            cluster._carry_out(asked)
        del cluster


def _watch(stopped, ref):
    """The watch thread (see the module docstring); ``ref``: a weak reference to
    the cluster, which it must not keep alive."""
    stopped()
    cluster = ref()
    if cluster is not None:
        cluster._scheduler_ended()
