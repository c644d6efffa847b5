"""The ``dask-ipy`` command (also ``python -m dask_ipy``).

    dask-ipy scheduler [--host H] [--port-to-workers P] [--port-to-clients P]
                       [--connection-file F] [--idle-timeout S]
                       [--dashboard-port P] [--dashboard-prefix /PATH]
    dask-ipy worker ADDRESS_OR_FILE [--nthreads N] [--name NAME] [--host H]
                    [--memory-limit LIMIT] [--local-directory D] [--no-supervisor]
                    [--resources "GPU=2,MEM=10e9"]
    dask-ipy demo [--engines N] [--ipython-dir D]
    dask-ipy bench [ARGS...]          # python -m benchmarks ARGS, from a checkout

``scheduler`` prints ``name: value`` lines (pid, connection_file, address_to_workers,
address_to_clients, in that order) once it listens; `dask_ipy.bootstrap` reads them to
boot on ipyparallel.  With ``--security-from-stdin`` the key arrives as one JSON line
on stdin, never on the command line.  With ``--log-file`` output goes to a file once
the addresses are out, so a parent may stop reading the pipe.  SIGINT, SIGTERM and
SIGHUP close the scheduler or worker cleanly.  ``worker`` runs under a small
supervisor (`dask_ipy.supervisor`) that starts a new worker when one exits because
a task took it past its memory limit.  With ``--lifeline`` (not in ``--help``: for a
parent that starts these commands, as `dask_ipy.local.LocalCluster` does) the
process stops as on SIGTERM once its stdin closes: the parent holds the other end,
so its close, or its death however it comes, stops the child.  A parent that sets
``DASK_IPY_STATUS_TAG`` gets those lines each after its tag (`dask_ipy.status.say`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import operator
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .status import say, take_tag

__all__ = ["main", "build_parser", "parse_args"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dask-ipy",
        description="dask_ipy: a distributed task scheduler for dask graphs and "
                    "futures over ZeroMQ, booted on ipyparallel.")
    parser.add_argument("--log-level", default="WARNING",
                        help="logging level (default: WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scheduler", help="run a scheduler until it is shut down")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind and advertise (default: 127.0.0.1; "
                        "0.0.0.0 binds all and advertises this host's name)")
    p.add_argument("--port-to-workers", type=int, default=0)
    p.add_argument("--port-to-clients", type=int, default=0)
    p.add_argument("--connection-file", default=None,
                   help="where to write addresses and key (default: runtime dir)")
    p.add_argument("--idle-timeout", type=float, default=None,
                   help="exit after this many seconds without clients and workers")
    p.add_argument("--heartbeat-timeout", type=float, default=10.0)
    p.add_argument("--dashboard-port", type=int, default=None,
                   help="serve a live page and Prometheus /metrics over HTTP on this "
                        "port (0: any free one; default: no HTTP)")
    p.add_argument("--dashboard-prefix", default="",
                   help="path the page lives under, for a proxy that keeps it "
                        "(e.g. /proxy/8787)")
    p.add_argument("--transition-log-length", type=int, default=None, metavar="N",
                   help="transitions kept for Client.story (0: none; default "
                        "10000)")
    p.add_argument("--allowed-failures", type=int, default=None, metavar="N",
                   help="workers a task may see die while it runs on them; it ends "
                        "in KilledWorker at the next (default 3)")
    p.add_argument("--unknown-task-duration", type=_seconds, default=None,
                   metavar="SECONDS",
                   help="what a task of a group not measured yet is expected to "
                        "take (default 0.5)")
    p.add_argument("--default-task-durations", type=_durations, default=None,
                   metavar="JSON",
                   help='the same by task prefix, e.g. \'{"load": 10}\' (added to '
                        "dask.distributed's defaults)")
    p.add_argument("--encrypt", action="store_true",
                   help="encrypt every connection (ZeroMQ CURVE)")
    p.add_argument("--security-from-stdin", action="store_true",
                   help="read the key as one JSON line on stdin")
    p.add_argument("--log-file", default=None,
                   help="send output here once listening ('auto': next to the "
                        "connection file; removed at exit if empty)")
    p.add_argument("--lifeline", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("worker", help="run a worker until its scheduler closes it")
    p.add_argument("scheduler", metavar="ADDRESS_OR_FILE",
                   help="the scheduler's address_to_workers or connection file")
    p.add_argument("--nthreads", type=_nthreads, default=1,
                   help="task threads (default 1)")
    p.add_argument("--name", default=None)
    p.add_argument("--resources", type=_resources, default=None,
                   metavar='"NAME=AMOUNT,..."',
                   help="what this worker has, e.g. \"GPU=2,MEM=10e9\" (commas or "
                        "spaces between them): tasks submitted with resources= run "
                        "only where these suffice")
    p.add_argument("--host", default=None,
                   help="interface to serve peers on (default: the one towards "
                        "the scheduler)")
    p.add_argument("--contact-address", default=None, metavar="tcp://HOST:PORT",
                   help="the address peers are told to use, if not the one bound "
                        "(a port forward, a NAT)")
    p.add_argument("--connect-timeout", type=float, default=5.0,
                   help="seconds a connection to a peer may take before that peer's "
                        "data comes through the scheduler instead (default 5)")
    p.add_argument("--memory-limit", default="auto", metavar="LIMIT",
                   help="bytes, '2GiB', a fraction of the host such as 0.25, 'auto' "
                        "(default: the host's memory, or its cgroup limit, shared "
                        "among the workers on this host) or 'none'")
    p.add_argument("--local-directory", default=None, metavar="DIR",
                   help="where results spill to disk (default: dask's "
                        "temporary-directory, else the system's)")
    p.add_argument("--blas-threads", default=None, metavar="N",
                   help="threads of BLAS/OpenMP pools inside tasks: 'auto' (default: "
                        "the worker's cores over its threads), a number, or 'off'")
    p.add_argument("--no-supervisor", action="store_true",
                   help="run the worker in this process: a task past the memory "
                        "limit is interrupted instead of the worker restarted")
    p.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lifeline", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("demo", help="boot on a local ipcluster, compute, print, stop")
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--ipython-dir", default=None,
                   help="IPython directory for the cluster (default: a temporary one)")
    p.add_argument("--scheduler", default="engine",
                   choices=("engine", "local", "inprocess"))

    # Everything after `bench` goes to the benchmarks, options included.
    sub.add_parser("bench", help="run the benchmarks of a source checkout "
                                 "(python -m benchmarks ARGS)", add_help=False)
    return parser


def _nthreads(text):
    from .units import check_nthreads

    try:
        return check_nthreads(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of at least 1, got {text!r}") from None


def _seconds(text):
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}")
    return seconds


def _durations(text):
    """{task prefix: seconds} from JSON."""
    try:
        durations = json.loads(text)
        return {str(prefix): _seconds(str(value)) for prefix, value in durations.items()}
    except (ValueError, AttributeError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of task prefixes and seconds, got {text!r}") from None


def _resources(text):
    from .units import parse_resources

    try:
        parse_resources(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_args(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return COMMANDS[args.command](args) or 0


# ---------------------------------------------------------------- signals

class _Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


@contextlib.contextmanager
def _until_signalled():
    """SIGINT, SIGTERM and SIGHUP end the block; once inside the clean-up they are
    ignored, so a second Ctrl-C cannot leave sockets or files half closed."""
    old = {s: signal.signal(s, _interrupt) for s in STOP_SIGNALS}
    try:
        yield
    except _Interrupted:
        pass
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)


def _stop_when_stdin_closes():
    """``--lifeline``: the parent holds the other end of our stdin; once it is closed
    (by the parent, or because the parent died) this process gets SIGTERM."""
    def watch():
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dask-ipy-lifeline", daemon=True).start()


# ---------------------------------------------------------------- scheduler

def _read_security(args):
    from .security import Security

    if args.security_from_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            raise SystemExit("dask-ipy scheduler: no key on stdin")
        return Security.from_dict(json.loads(line))
    if args.encrypt:
        return Security.temporary(encrypt=True)
    return None


def ready_lines(pid, connection_file, address_to_workers, address_to_clients):
    """What `scheduler` prints once it listens; the addresses come last."""
    return [f"pid: {pid}", f"connection_file: {connection_file}",
            f"address_to_workers: {address_to_workers}",
            f"address_to_clients: {address_to_clients}"]


def log_path(option, connection_file):
    if option == "auto":
        return os.path.splitext(connection_file)[0] + ".log"
    return option


def _open_log(path):
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def _redirect_output(fd, keep_stdin=False):
    """Point stdout and stderr at ``fd``: a parent reading our pipe may stop.  Stdin
    becomes /dev/null too, unless ``keep_stdin`` (a lifeline)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if keep_stdin:
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def _remove_if_empty(path):
    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            os.remove(path)


def cmd_scheduler(args):
    from .scheduler.server import Scheduler

    take_tag()                 # run_on_scheduler functions are user code
    # This process is all scheduler: its state is many long-lived small objects, which
    # the cyclic collector would otherwise rescan again and again (15-20% of the time
    # on large graphs).  Collect rarely; startup objects are frozen out of the scans.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    security = _read_security(args)
    s = Scheduler(hostname=args.host, port_to_workers=args.port_to_workers,
                  port_to_clients=args.port_to_clients, security=security,
                  connection_file=args.connection_file, idle_timeout=args.idle_timeout,
                  heartbeat_timeout=args.heartbeat_timeout,
                  dashboard_port=args.dashboard_port,
                  dashboard_prefix=args.dashboard_prefix,
                  transition_log_length=args.transition_log_length,
                  allowed_failures=args.allowed_failures,
                  unknown_task_duration=args.unknown_task_duration,
                  default_task_durations=args.default_task_durations)
    log = None
    try:
        with _until_signalled():
            if args.lifeline:
                _stop_when_stdin_closes()
            if args.log_file:   # created before the addresses are out: it exists then
                log = log_path(args.log_file, s.connection_file)
                fd = _open_log(log)
            say("dask-ipy scheduler")
            if s.dashboard_link:
                say(f"dashboard: {s.dashboard_link}")
            say("\n".join(ready_lines(os.getpid(), s.connection_file,
                                      s.address_to_workers, s.address_to_clients)))
            if log:
                _redirect_output(fd, keep_stdin=args.lifeline)
            s.wait()
    finally:
        s.close()
        if log:
            _remove_if_empty(log)
    return 0


# ---------------------------------------------------------------- worker

def worker_argv(args):
    """The arguments after ``python -m dask_ipy`` that start the worker ``args`` say."""
    argv = ["--log-level", args.log_level, "worker", args.scheduler,
            "--nthreads", str(args.nthreads), "--connect-timeout",
            str(args.connect_timeout), "--memory-limit", str(args.memory_limit)]
    for flag, value in (("--name", args.name), ("--host", args.host),
                        ("--contact-address", args.contact_address),
                        ("--blas-threads", args.blas_threads),
                        ("--resources", args.resources)):
        if value is not None:
            argv += [flag, value]
    return argv


def _blas_threads(value):
    if value is None:
        return None
    if value.lower() in ("off", "false", "none", "no"):
        return False
    return value if value == "auto" else int(value)


def cmd_worker(args):
    if not (args.supervised or args.no_supervisor):
        return _supervise_worker(args)     # which passes the tag on to its worker
    from .worker.server import Worker
    from .worker.system import apply_heap_settings, shorten_switch_interval

    take_tag()
    apply_heap_settings()      # under a supervisor, set already by its environment

    limit = None if str(args.memory_limit).lower() in ("none", "0") else args.memory_limit
    w = Worker(scheduler=args.scheduler, hostname=args.host, nthreads=args.nthreads,
               name=args.name, contact_address=args.contact_address,
               connect_timeout=args.connect_timeout, memory_limit=limit,
               local_directory=args.local_directory,
               blas_threads=_blas_threads(args.blas_threads),
               resources=args.resources,
               memory_terminate_action="exit" if args.supervised else "interrupt",
               supervised=_supervision_token(args))
    # A process of its own: at the collector's default pace (every 700 allocations)
    # its scans of the worker's short-lived messages and task records took some 8% of
    # a worker's CPU under tiny tasks.  Young objects are scanned every 10,000
    # allocations; what startup made is frozen out of the scans.  Garbage that holds
    # memory is collected before the memory watch acts on it, and once a computation
    # is over (worker/monitor.py).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    shorten_switch_interval()
    try:
        with _until_signalled():
            if args.lifeline:
                _stop_when_stdin_closes()
            limit = w.memory_limit
            say("dask-ipy worker")
            say(f"pid: {os.getpid()}\naddress: {w.address}\n"
                f"memory_limit: {limit or 0}\n"
                f"memory_terminate: {w.memory_fractions['terminate'] or 0}\n"
                f"resources: {json.dumps(w.resources)}\n"
                f"scheduler: {w.scheduler_address}")
            # The supervisor watches the worker against its limit: it follows it;
            # and a worker that registered and then died it starts again.

            def announce_limit(n):
                say(f"memory_limit: {n or 0}")

            def announce_registered():
                say(f"registered: {w.scheduler_address}")
            w.limit_listeners.append(announce_limit)
            w.registered_listeners.append(announce_registered)
            # What came before the listeners were there (told twice at worst).
            if w.memory_limit != limit:
                announce_limit(w.memory_limit)
            if w.clients_address is not None:
                announce_registered()
            w.wait()
    finally:
        w.close()
    return 0


def _supervision_token(args):
    """The token this worker's supervisor gave it (None without one), taken out of
    the environment that its tasks' processes inherit."""
    from .supervisor import TOKEN_VARIABLE

    token = os.environ.pop(TOKEN_VARIABLE, None)
    return token if args.supervised else None


def _supervise_worker(args):
    from .supervisor import Supervisor

    sup = Supervisor(worker_argv(args), local_directory=args.local_directory,
                     scheduler=args.scheduler)
    say(f"supervisor: {os.getpid()}")

    def forward(signum, frame):
        sup.stop(signum)
    old = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    if args.lifeline:
        _stop_when_stdin_closes()
    try:
        return sup.run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)



# ---------------------------------------------------------------- demo

def square(x):
    return x * x


def slow_inc(x):
    time.sleep(0.01)
    return x + 1


def _worker_names(client):
    return {addr: w.get("name") or addr
            for addr, w in client.scheduler_info()["workers"].items()}


def _placement(who_has, names):
    """{worker name: number of keys it holds} from ``who_has``."""
    counts = {}
    for holders in who_has.values():
        for addr in holders:
            name = names.get(addr, addr)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


COMPLETE = "pip install 'dask_ipy[complete]' (or -e '.[complete]' in a checkout)"


def _demo_compute(client, out):
    """The seed graph, a dask.array reduction and a map of futures; prints where
    things ran. Returns True when every result is right."""
    from .client.futures import wait

    names = _worker_names(client)
    out(f"workers: {', '.join(f'{n} ({a})' for a, n in sorted(names.items()))}")
    ok = True

    y = client.get({"x": 1, "y": (operator.add, "x", 2)}, "y")
    out(f"seed graph {{'x': 1, 'y': (add, 'x', 2)}} -> y = {y}")
    ok &= y == 3

    try:
        import dask.array as da
        import numpy  # noqa: F401
    except ImportError:
        out(f"dask.array reduction: skipped (numpy is not installed: {COMPLETE})")
    else:
        x = da.arange(1_000_000, chunks=100_000)
        total = x.sum().compute()          # the client is dask's default scheduler
        out(f"dask.array: arange(1e6, chunks=1e5).sum() = {total}")
        ok &= int(total) == 499999500000
        chunks = list(dict(client.persist(x).__dask_graph__()).values())
        wait(chunks)
        out(f"  persisted chunks held by {_placement(client.who_has(chunks), names)}")
        del chunks

    try:
        import dask.dataframe as dd
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError:
        out(f"dask.dataframe groupby: skipped (pandas or pyarrow is not installed: "
            f"{COMPLETE})")
    else:
        pdf = pd.DataFrame({"k": [i % 3 for i in range(30)], "v": range(30)})
        sums = dd.from_pandas(pdf, npartitions=4).groupby("k").v.sum().compute()
        sums = {int(k): int(v) for k, v in sums.sort_index().items()}
        out(f"dask.dataframe: groupby('k').v.sum() = {sums}")
        ok &= sums == {int(k): int(v) for k, v in pdf.groupby("k").v.sum().items()}

    futures = client.map(slow_inc, range(20))
    results = client.gather(futures)
    out(f"map(slow_inc, range(20)) -> {results}")
    out(f"  results held by {_placement(client.who_has(futures), names)}")
    ok &= results == list(range(1, 21))

    pids = client.run(os.getpid)
    out("client.run(os.getpid): " + ", ".join(
        f"{names.get(a, a)}: pid {p}" for a, p in sorted(pids.items())))
    return ok


def cmd_demo(args):
    import ipyparallel

    from .bootstrap import dask_client_from_ipclient

    out = print
    with contextlib.ExitStack() as stack:
        if args.ipython_dir is None:
            ipython_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="dask-ipy-demo-"))
        else:
            ipython_dir = args.ipython_dir
        os.environ["IPYTHONDIR"] = ipython_dir     # the engines inherit it
        out(f"starting an ipcluster with {args.engines} engines ...")
        t0 = time.perf_counter()
        cluster = ipyparallel.Cluster(n=args.engines, load_profile=False, delay=0,
                                      controller_args=["--ping=200"], log_level=40)
        stack.callback(cluster.stop_cluster_sync)
        rc = cluster.start_and_connect_sync(activate=False)
        stack.callback(rc.close)
        rc.wait_for_engines(args.engines, timeout=60)
        out(f"ipcluster up in {time.perf_counter() - t0:.2f} s: engines {rc.ids}")

        t0 = time.perf_counter()
        client = dask_client_from_ipclient(rc, scheduler=args.scheduler)
        boot = time.perf_counter() - t0
        out(f"dask_client_from_ipclient: {boot:.3f} s ({args.scheduler} scheduler at "
            f"{client.address})")
        try:
            ok = _demo_compute(client, out)
        finally:
            t0 = time.perf_counter()
            client.shutdown()
            out(f"shutdown: {time.perf_counter() - t0:.3f} s; engines still answer: "
                f"{rc[:].apply_sync(operator.add, 1, 1)}")
    out("all results correct" if ok else "WRONG RESULTS")
    return 0 if ok else 1


# ---------------------------------------------------------------- bench

def _benchmarks_here(cwd):
    path = os.path.join(cwd, "benchmarks")
    return os.path.isfile(os.path.join(path, "__main__.py"))


def cmd_bench(args):
    cwd = os.getcwd()
    if not _benchmarks_here(cwd):
        print("dask-ipy bench: no benchmarks package here; run it from the root of a "
              "dask_ipy source checkout (the directory holding benchmarks/)",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.args], cwd=cwd)


COMMANDS = {"scheduler": cmd_scheduler, "worker": cmd_worker, "demo": cmd_demo,
            "bench": cmd_bench}
