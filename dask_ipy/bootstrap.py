"""Boot dask_ipy on a running ipyparallel cluster.

    caller (a kernel)                          target engines
    ─────────────────                          ──────────────
    1 first target ─ apply ──────────────────▶ probe; unless its worker serves a live
                                               scheduler, start python -m dask_ipy
                                               scheduler (child process, own session;
                                               the key on its stdin), import dask_ipy
                                               meanwhile, answer with the addresses
      other targets ─ apply (same moment) ───▶ probe, then import dask_ipy
    2 targets lacking a worker ─ apply ──────▶ Worker(...) kept as `dask_worker`
    3 Client(address_to_clients, security), wait until every worker has registered

All calls of a step go out at once (``block=False``) and the engines work in parallel.
Step 1 ships its functions by value (code only, stdlib imports inside), so the
scheduler starts before the engines pay ~0.3 s to import dask_ipy, and those imports
overlap with the scheduler's own.  With placement 'local' or 'inprocess' the probe
comes first and the caller starts the scheduler.

The key is made by the caller and travels only over ipyparallel's authenticated
channel and the scheduler's stdin; it never appears on a command line.

Reuse: the probe reports, per engine, the scheduler its live worker belongs to. If
one answers, the call connects to it and only starts workers on the engines lacking
one (a scheduler step 1 started meanwhile is stopped again); nothing is recorded in
the caller, so a fresh kernel finds the scheduler too.

Lifetime: ``client.shutdown()`` closes the scheduler and its workers; whoever spawned
the scheduler reaps it with a thread that ends with it.  Workers die with their
engines.  A scheduler left without clients and workers (the kernel died, then
``ipcluster stop``) exits after ``idle_timeout`` seconds.

Where the scheduler listens: on 127.0.0.1 when its host reaches the controller over
loopback (a one-machine cluster), else on the IP its host uses to reach the
controller, which the engines and the client reach too.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import threading
import time
import types
from collections import Counter

from .addresses import host_of, route_ip, split_address
from .log import logger

PLACEMENTS = ("engine", "local", "inprocess")
DEFAULT_IDLE_TIMEOUT = 30.0

# Engine side: the worker this engine runs and the scheduler it serves.
_engine = {"worker": None, "scheduler": None}
# Caller side: schedulers running in this process ({address_to_clients: Scheduler}).
_inprocess = {}
_inprocess_lock = threading.Lock()


# ---------------------------------------------------------------- pure helpers

def normalize_targets(targets, ids):
    """Engine ids for an ipyparallel target spec ('all', int, slice, list, range)."""
    ids = list(ids)
    if targets is None or targets == "all":
        chosen = ids
    elif isinstance(targets, int):
        chosen = [targets]
    elif isinstance(targets, slice):
        chosen = ids[targets]
    else:
        chosen = list(targets)
    missing = [t for t in chosen if t not in ids]
    if missing:
        raise ValueError(f"no engine with id {missing} (engines up: {ids})")
    if not chosen:
        raise ValueError(f"the targets {targets!r} select no engine (engines up: {ids})")
    return list(dict.fromkeys(chosen))


def choose_host(controller, route_ip, fallback):
    """Where a scheduler binds, given how its machine reaches the controller.

    ``controller``: the controller's host as that machine sees it; ``route_ip``: its
    own IP on the route there; ``fallback``: its host name.  Self-contained (it is
    also shipped to engines by value)."""
    import ipaddress

    if controller is None:
        return route_ip or fallback or "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(controller).is_loopback
    except ValueError:
        loopback = controller == "localhost"
    if loopback:
        return "127.0.0.1"
    return route_ip or fallback


def scheduler_argv(host, idle_timeout, heartbeat_timeout):
    """Arguments after ``python -m dask_ipy`` to start a scheduler for a bootstrap
    (``host`` None: the engine that starts it fills it in)."""
    from .config import scheduler_flags

    argv = ["scheduler", "--host", host, "--security-from-stdin", "--log-file", "auto",
            "--heartbeat-timeout", str(heartbeat_timeout), *scheduler_flags()]
    if idle_timeout is not None:
        argv += ["--idle-timeout", str(idle_timeout)]
    return argv


def live_scheduler(probes):
    """The scheduler most engines with a live worker serve, or None.

    ``probes``: {engine_id: probe dict} as returned by `_engine_probe`."""
    votes = Counter()
    infos = {}
    for probe in probes.values():
        record = probe.get("record")
        if record and record.get("worker_alive") and record.get("scheduler"):
            address = record["scheduler"]["address_to_clients"]
            votes[address] += 1
            infos[address] = record["scheduler"]
    if not votes:
        return None
    return infos[votes.most_common(1)[0][0]]


def engines_to_start(probes):
    """Engines without a live worker. An engine whose worker serves another scheduler
    is left alone: one engine, one worker."""
    return [eid for eid, probe in probes.items()
            if not (probe.get("record") or {}).get("worker_alive")]


# ---------------------------------------------------------------- shipped by value

def _by_value(fn):
    """``fn`` re-homed in ``__main__``, so ipyparallel sends its code rather than a
    reference that would make the engine import dask_ipy before running it."""
    clone = types.FunctionType(fn.__code__, {"__builtins__": builtins}, fn.__name__,
                               fn.__defaults__, fn.__closure__)
    clone.__module__ = "__main__"
    clone.__kwdefaults__ = fn.__kwdefaults__
    return clone


def _engine_probe(split_address, route_ip):
    """Runs on an engine, by value (its helpers come as arguments): who am I, how do I
    reach the controller, and which scheduler does my worker serve (only if dask_ipy is
    already imported)."""
    import os
    import socket
    import sys

    out = {"pid": os.getpid(), "hostname": socket.gethostname(), "engine_id": None,
           "controller": None, "route_ip": None, "record": None}
    try:
        from IPython import get_ipython
        out["engine_id"] = getattr(get_ipython().kernel, "engine_id", None)
    except Exception:
        pass
    try:
        from ipyparallel.engine.app import IPEngine
        if IPEngine.initialized():
            out["controller"] = split_address(IPEngine.instance().registration_url)[1]
    except Exception:
        pass
    if out["controller"]:
        out["route_ip"] = route_ip(out["controller"])
    mod = sys.modules.get("dask_ipy.bootstrap")
    if mod is not None:
        out["record"] = mod._engine_record()
    return out


def _engine_warm():
    """Runs on an engine, by value: import dask_ipy while the scheduler starts, and
    prime ipyparallel's serializer (it imports numpy on first use)."""
    import dask_ipy.bootstrap  # noqa: F401

    try:
        from ipyparallel.serialize import can
        can(None)
    except Exception:
        pass


def _engine_first(probe, split_address, route_ip, spawn, choose_host, warm, argv,
                  security_json, timeout, reuse=True):
    """Runs on the first target engine, by value (helpers come as arguments):
    probe, and unless (``reuse``) this engine's worker serves a live scheduler,
    start one. Returns (probe, scheduler info or None)."""
    found = probe(split_address, route_ip)
    record = found["record"]
    if reuse and record and record["worker_alive"]:
        return found, None
    host = choose_host(found["controller"], found["route_ip"], found["hostname"])
    argv = [host if a is None else a for a in argv]
    return found, spawn(argv, security_json, timeout, warm)


def spawn_scheduler(argv, security_json, timeout=30.0, warm=None):
    """Start ``python -m dask_ipy <argv>`` as a child in its own session; returns
    {pid, connection_file, address_to_workers, address_to_clients} once it listens.

    Runs on an engine (by value, so stdlib only) or in the caller. ``warm``, if given,
    is called while the child starts. A thread named ``dask-ipy-scheduler-reaper``
    waits for the child, so it never lingers as a zombie; it ends when the scheduler
    does."""
    import os
    import selectors
    import subprocess
    import sys
    import threading
    import time

    proc = subprocess.Popen([sys.executable, "-m", "dask_ipy", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.stdin.write(security_json.encode() + b"\n")
    proc.stdin.close()
    if warm is not None:
        warm()
    deadline = time.monotonic() + timeout
    info, text, buf = {}, [], b""
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while "address_to_clients" not in info:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:       # `name: value`, as cli.ready_lines prints them
                line = line.decode("utf-8", "replace")
                text.append(line)
                name, sep, value = line.partition(":")
                if sep and name.strip() in ("pid", "connection_file",
                                            "address_to_workers", "address_to_clients"):
                    info[name.strip()] = value.strip()
    proc.stdout.close()
    if "address_to_clients" not in info:
        proc.kill()
        proc.wait()
        output = "\n".join(text[-40:]) or "(no output)"
        raise RuntimeError(f"the dask_ipy scheduler did not start within {timeout} s:\n"
                           f"{output}")
    info["pid"] = int(info.get("pid") or proc.pid)
    threading.Thread(target=proc.wait, name="dask-ipy-scheduler-reaper",
                     daemon=True).start()
    return info


# ---------------------------------------------------------------- engine side

def _worker_alive(w):
    return w is not None and w.loop.running and not w.closed.is_set()


def _engine_record():
    """What this engine tells a probe: its worker and the scheduler it serves."""
    w = _engine["worker"]
    if w is None:
        return None
    return {"worker_alive": _worker_alive(w), "worker_address": w.address,
            "scheduler": _engine["scheduler"]}


def _engine_id():
    try:
        from IPython import get_ipython
        return getattr(get_ipython().kernel, "engine_id", None)
    except Exception:
        return None


def _engine_start_worker(scheduler, nthreads=1, memory_limit="auto", resources=None):
    """Runs on an engine: a Worker for ``scheduler``, in the engine namespace as
    ``dask_worker``. A worker for another scheduler is closed first.

    A task that takes the engine past its memory limit's terminate fraction is
    interrupted (TaskMemoryError inside the task): the engine belongs to the
    notebook, and its own state must survive."""
    from .security import Security
    from .worker.server import Worker
    from .worker.system import apply_heap_settings, shorten_switch_interval

    old = _engine["worker"]
    if _worker_alive(old):
        if old.scheduler_address == scheduler["address_to_workers"]:
            return {"engine_id": _engine_id(), "address": old.address, "new": False}
        old.close()
    eid = _engine_id()
    apply_heap_settings()      # glibc's malloc as a worker wants it (supervisor.py)
    shorten_switch_interval()  # its I/O thread gets in while tasks run Python code
    w = Worker(scheduler=scheduler["address_to_workers"],
               security=Security.from_dict(scheduler["security"]), nthreads=nthreads,
               name=f"engine-{eid}" if eid is not None else None,
               memory_limit=memory_limit, memory_terminate_action="interrupt",
               resources=resources)
    _engine.update(worker=w, scheduler=scheduler)
    try:
        from IPython import get_ipython
        get_ipython().user_ns["dask_worker"] = w
    except Exception:
        pass
    return {"engine_id": eid, "address": w.address, "new": True}


# ---------------------------------------------------------------- caller side

def _controller_host(ipclient):
    try:
        return host_of(ipclient._config["registration"])
    except Exception:
        return None


def _collect(asyncs, deadline, what):
    """{engine_id: result} of ``{engine_id: AsyncResult}``, one deadline for all."""
    out = {}
    for eid, ar in asyncs.items():
        left = max(deadline - time.monotonic(), 0.001)
        try:
            out[eid] = ar.get(timeout=left)
        except TimeoutError:
            raise TimeoutError(f"engine {eid} did not {what} in time") from None
    return out


def _probe_by_value():
    """The probe and its helpers' arguments, each shipped by value."""
    return _by_value(_engine_probe), _by_value(split_address), _by_value(route_ip)


def _probe(ipclient, targets, deadline):
    probe, *helpers = _probe_by_value()
    return _collect({eid: ipclient[eid].apply_async(probe, *helpers) for eid in targets},
                    deadline, "answer a probe")


def _reachable(address, timeout=2.0):
    _, host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _connect(scheduler, timeout, set_as_default=True):
    from .client.client import Client
    from .security import Security

    return Client(scheduler["address_to_clients"],
                  security=Security.from_dict(scheduler["security"]), timeout=timeout,
                  set_as_default=set_as_default)


def _engine_step(ipclient, targets, security, hostname, idle_timeout, heartbeat_timeout,
                 deadline, reuse=True):
    """Step 1 for placement 'engine': probe every target, and start a scheduler on the
    first one unless (``reuse``) its worker serves a live one. Returns (probes,
    scheduler info or None)."""
    first = targets[0]
    argv = scheduler_argv(hostname, idle_timeout, heartbeat_timeout)
    timeout = max(deadline - time.monotonic(), 1.0)
    probe, *helpers = _probe_by_value()
    asyncs = {first: ipclient[first].apply_async(
        _by_value(_engine_first), probe, *helpers, _by_value(spawn_scheduler),
        _by_value(choose_host), _by_value(_engine_warm), argv,
        json.dumps(security.to_dict()), timeout, reuse)}
    for eid in targets[1:]:
        asyncs[eid] = ipclient[eid].apply_async(probe, *helpers)
        # Import dask_ipy while the first engine waits for the scheduler.
        ipclient[eid].apply_async(_by_value(_engine_warm))
    answers = _collect(asyncs, deadline, "answer")
    probe, info = answers[first]
    answers[first] = probe
    if info is not None:
        info.update(engine_id=first, placement="engine", security=security.to_dict())
    return answers, info


def _start_here(ipclient, placement, security, hostname, idle_timeout,
                heartbeat_timeout, deadline):
    """A scheduler in (inprocess) or beside (local) the caller; returns its info."""
    controller = _controller_host(ipclient)
    host = hostname or choose_host(controller, route_ip(controller), socket.gethostname())
    if placement == "local":
        argv = scheduler_argv(host, idle_timeout, heartbeat_timeout)
        info = spawn_scheduler(argv, json.dumps(security.to_dict()),
                               max(deadline - time.monotonic(), 1.0))
    else:
        info = _start_inprocess(host, security, idle_timeout, heartbeat_timeout)
    info.update(placement=placement, security=security.to_dict())
    return info


def _start_inprocess(host, security, idle_timeout, heartbeat_timeout):
    from .scheduler.server import Scheduler

    s = Scheduler(hostname=host, security=security, idle_timeout=idle_timeout,
                  heartbeat_timeout=heartbeat_timeout)
    with _inprocess_lock:
        _inprocess[s.address_to_clients] = s

    def reap():           # close (connection file, registry) once a client shuts it down
        s.wait()
        with _inprocess_lock:
            _inprocess.pop(s.address_to_clients, None)
    threading.Thread(target=reap, name="dask-ipy-inprocess-reaper", daemon=True).start()
    return {"pid": os.getpid(), "connection_file": s.connection_file,
            "address_to_workers": s.address_to_workers,
            "address_to_clients": s.address_to_clients}


def _start_workers(ipclient, engines, scheduler, nthreads, deadline,
                   memory_limit="auto", resources=None):
    if not engines:
        return {}
    view = ipclient.direct_view(engines)
    ar = view.apply_async(_engine_start_worker, scheduler, nthreads, memory_limit,
                          resources)
    left = max(deadline - time.monotonic(), 0.001)
    try:
        results = ar.get(timeout=left)
    except TimeoutError:
        raise TimeoutError(f"engines {engines} did not start their workers in time") \
            from None
    return dict(zip(engines, results))


def _wait_for_workers(client, addresses, deadline):
    missing = set(addresses)
    while True:
        missing -= set(client.nthreads())
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers {sorted(missing)} did not register with the "
                               f"scheduler at {client.address} in time")
        time.sleep(0.005)


def _existing(probes, timeout):
    """A client of the scheduler the engines' live workers serve, if it answers."""
    scheduler = live_scheduler(probes)
    if scheduler is None:
        return None, None
    if not _reachable(scheduler["address_to_clients"]):
        logger.info("scheduler %s is gone; booting a new one",
                    scheduler["address_to_clients"])
        return None, None
    try:
        return _connect(scheduler, timeout), scheduler
    except (TimeoutError, OSError) as e:
        logger.info("scheduler %s does not answer (%s); booting a new one",
                    scheduler["address_to_clients"], e)
        return None, None


def dask_client_from_ipclient(ipclient, targets="all", *, nthreads=1, scheduler="engine",
                              security=None, idle_timeout=DEFAULT_IDLE_TIMEOUT,
                              hostname=None, heartbeat_timeout=10.0, timeout=30.0,
                              memory_limit="auto", resources=None):
    """Start a scheduler and one worker in each target engine; return a Client.

    ``scheduler``: 'engine' (its own process on the host of the first target engine),
    'local' (a process on this host) or 'inprocess' (a thread here, for debugging).
    ``security``: a `Security` (or its dict) to use instead of a fresh random key.
    ``hostname``: where the scheduler binds (default: see the module docstring).
    ``idle_timeout``: seconds the scheduler lives on without clients and workers.
    ``memory_limit``: each worker's limit: "auto" (its host's memory, or cgroup
    limit, shared among the workers on that host), bytes, "2GiB", a fraction of the
    host, or None.  A task that takes an engine past the terminate fraction is
    interrupted, never the engine (see the README's memory section).
    ``resources``: what each new worker has, ``{"GPU": 1}`` or ``"GPU=1"``: tasks
    submitted with ``resources=`` run only on workers having that much.

    If the engines already run workers of a live scheduler, a client of that
    scheduler is returned, and workers are started on target engines lacking one
    (those running keep their resources).
    Raises TimeoutError when the cluster does not come up within ``timeout`` seconds.
    """
    from .security import Security
    from .units import check_nthreads, parse_resources

    if scheduler not in PLACEMENTS:
        raise ValueError(f"scheduler must be one of {PLACEMENTS}, not {scheduler!r}")
    nthreads = check_nthreads(nthreads)
    resources = parse_resources(resources) or None
    deadline = time.monotonic() + timeout
    targets = normalize_targets(targets, ipclient.ids)
    security = Security.from_dict(security) if security else Security.temporary()
    settings = (security, hostname, idle_timeout, heartbeat_timeout, deadline)
    if scheduler == "engine":
        probes, spawned = _engine_step(ipclient, targets, *settings)
    else:
        probes, spawned = _probe(ipclient, targets, deadline), None
    client, info = _existing(probes, timeout)
    if client is not None and spawned is not None:
        _abandon(None, spawned)      # the first engine started one it did not need
    fresh = client is None
    if fresh:
        if spawned is not None:
            info = spawned
        elif scheduler == "engine":  # the first engine's worker served a dead one
            info = _engine_step(ipclient, targets[:1], *settings, reuse=False)[1]
        else:
            info = _start_here(ipclient, scheduler, *settings)
    try:
        engines = targets if fresh else engines_to_start(probes)
        started = _start_workers(ipclient, engines, info, nthreads, deadline,
                                 memory_limit, resources)
        if client is None:
            client = _connect(info, max(deadline - time.monotonic(), 1.0))
        _wait_for_workers(client, [r["address"] for r in started.values()], deadline)
    except BaseException:
        if fresh:
            _abandon(client, info)
        elif client is not None:
            client.close()
        raise
    return client


def _abandon(client, info):
    """Undo a failed bootstrap: stop the new scheduler and whatever workers it has."""
    try:
        if client is None:
            client = _connect(info, 5.0, set_as_default=False)
        client.shutdown()
    except Exception as e:
        logger.warning("could not stop the scheduler at %s (%s); it exits when idle",
                       info.get("address_to_clients"), e)


def add_engines(client, ipclient, targets="all", nthreads=1, timeout=30.0,
                memory_limit="auto", resources=None):
    """Start workers for ``client``'s scheduler on target engines that lack one
    (engines added to the ipcluster after the bootstrap); returns their addresses."""
    from .units import check_nthreads, parse_resources

    nthreads = check_nthreads(nthreads)
    resources = parse_resources(resources) or None
    deadline = time.monotonic() + timeout
    targets = normalize_targets(targets, ipclient.ids)
    # Any engine may know the scheduler, not only the targets.
    probes = _probe(ipclient, list(ipclient.ids), deadline)
    scheduler = scheduler_of(client, ipclient, probes)
    lacking = engines_to_start({eid: probes[eid] for eid in targets})
    started = _start_workers(ipclient, lacking, scheduler, nthreads, deadline,
                             memory_limit, resources)
    addresses = [r["address"] for r in started.values()]
    _wait_for_workers(client, addresses, deadline)
    return addresses


def scheduler_of(client, ipclient=None, probes=None):
    """The bootstrap record ({address_to_workers, address_to_clients, security, ...})
    of the scheduler ``client`` talks to, as its engines know it."""
    if probes is None:
        if ipclient is None:
            raise ValueError("scheduler_of needs the ipyparallel client or probes")
        probes = _probe(ipclient, list(ipclient.ids), time.monotonic() + 30)
    for probe in probes.values():
        record = probe.get("record") or {}
        sched = record.get("scheduler")
        if sched and sched["address_to_clients"] == client.address:
            return sched
    with _inprocess_lock:
        s = _inprocess.get(client.address)
    if s is not None:
        return {"address_to_workers": s.address_to_workers,
                "address_to_clients": s.address_to_clients,
                "security": s.security.to_dict(), "placement": "inprocess",
                "pid": os.getpid()}
    raise ValueError(f"no engine knows the scheduler at {client.address}")
