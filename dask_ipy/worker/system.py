"""What this host gives a worker: memory and cores, cgroup limits included; and
what a worker's heartbeat tells of it: open files, network and disk traffic.

A container or a batch job usually limits its processes through a cgroup, not
through the machine's size: a worker must read the lower of the two, or its "auto"
limit lies and the kernel's OOM killer acts before the worker does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys

import psutil

from ..supervisor import HEAP_SETTINGS

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"


def _cgroup_paths(proc_cgroup):
    """{controller or "" (cgroup v2): path} of this process's cgroups."""
    out = {}
    try:
        with open(proc_cgroup) as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                _, controllers, path = parts
                for c in controllers.split(",") if controllers else [""]:
                    out[c] = path
    except OSError:
        pass
    return out


def _read_number(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def _upwards(base, path):
    """``base/path``, then each of its parents up to ``base`` itself."""
    parts = [p for p in path.strip("/").split("/") if p]
    for i in range(len(parts), -1, -1):
        yield os.path.join(base, *parts[:i])


def cgroup_memory_limit(root=CGROUP_ROOT, proc_cgroup=PROC_CGROUP):
    """The lowest memory limit of this process's cgroups (v1 or v2), or None."""
    paths = _cgroup_paths(proc_cgroup)
    found = []
    if "" in paths:                                              # cgroup v2
        for d in _upwards(root, paths[""]):
            for name in ("memory.max", "memory.high"):
                found.append(_read_number(os.path.join(d, name)))
    if "memory" in paths:                                        # cgroup v1
        for d in _upwards(os.path.join(root, "memory"), paths["memory"]):
            found.append(_read_number(os.path.join(d, "memory.limit_in_bytes")))
    found = [v for v in found if v and v > 0]
    return min(found) if found else None


def host_memory(root=CGROUP_ROOT, proc_cgroup=PROC_CGROUP):
    """Bytes of memory this host gives its processes: the machine's, or its cgroup's
    limit, or RLIMIT_RSS, whichever is lowest."""
    total = psutil.virtual_memory().total
    cgroup = cgroup_memory_limit(root, proc_cgroup)
    if cgroup is not None:
        total = min(total, cgroup)
    if sys.platform != "win32":
        try:
            import resource

            hard = resource.getrlimit(resource.RLIMIT_RSS)[1]
            if 0 < hard < total:
                total = hard
        except (ImportError, OSError, ValueError):
            pass
    return int(total)


def cgroup_cpu_limit(root=CGROUP_ROOT, proc_cgroup=PROC_CGROUP):
    """Cores allowed by this process's cgroup CPU quota (a float), or None."""
    paths = _cgroup_paths(proc_cgroup)
    found = []
    if "" in paths:
        for d in _upwards(root, paths[""]):
            try:
                with open(os.path.join(d, "cpu.max")) as f:
                    quota, _, period = f.read().strip().partition(" ")
                if quota != "max" and period:
                    found.append(int(quota) / int(period))
            except (OSError, ValueError):
                pass
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if "cpu" in paths else ():
        if os.path.isdir(os.path.join(root, mount)):
            for d in _upwards(os.path.join(root, mount), paths["cpu"]):
                quota = _read_number(os.path.join(d, "cpu.cfs_quota_us"))
                period = _read_number(os.path.join(d, "cpu.cfs_period_us"))
                if quota and quota > 0 and period:
                    found.append(quota / period)
            break
    return min(found) if found else None


def host_cores(root=CGROUP_ROOT, proc_cgroup=PROC_CGROUP):
    """Cores this process may run on: its CPU affinity, or its cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        cores = min(cores, max(math.ceil(quota), 1))
    return max(cores, 1)


def open_files(process):
    """How many file descriptors ``process`` (a psutil.Process) has open; None where
    the system does not count them (Windows) or will not say."""
    try:
        return process.num_fds()
    except (AttributeError, psutil.Error):
        return None


def io_counters():
    """The host's traffic so far, in bytes: {"host_net_io": (received, sent),
    "host_disk_io": (read, written)}, of those the host counts."""
    out = {}
    for name, read in (("host_net_io", _net), ("host_disk_io", _disk)):
        try:
            counts = read()
        except Exception:       # psutil raises what the platform does (no /proc...)
            counts = None
        if counts is not None:
            out[name] = counts
    return out


def _net():
    c = psutil.net_io_counters()
    return None if c is None else (c.bytes_recv, c.bytes_sent)


def _disk():
    c = psutil.disk_io_counters()
    return None if c is None else (c.read_bytes, c.write_bytes)


def io_rates(before, after, seconds):
    """Bytes per second between two `io_counters` readings ``seconds`` apart:
    {name: {"read_bps", "write_bps"}}."""
    seconds = max(seconds, 1e-3)
    return {name: {"read_bps": max(read - before[name][0], 0) / seconds,
                   "write_bps": max(write - before[name][1], 0) / seconds}
            for name, (read, write) in after.items() if name in before}


_libc = None


def _glibc():
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


_set_here = set()                 # HEAP_SETTINGS names set by `apply_heap_settings`
LEAN_MMAP_THRESHOLD = 128 * 1024  # glibc's default: past it, a block is its own mapping


def apply_heap_settings():
    """Set `HEAP_SETTINGS` in a process already running, as its environment
    variables do for a process started with them; a variable the user set wins.
    Returns the names set (none where unsupported)."""
    libc = _glibc()
    if libc is None:
        return []
    done = [name for name, (param, value) in HEAP_SETTINGS.items()
            if name not in os.environ and libc.mallopt(param, value)]
    _set_here.update(done)
    return done


def reuse_heap(on):
    """In a process given `HEAP_SETTINGS`' mmap threshold: blocks under it from
    the heap, where a freed one is used again (on), or each from a mapping of its
    own, given back the moment it is freed (off: a worker short of memory, whose
    RSS must show what it holds).  Whether it was set."""
    name = "MALLOC_MMAP_THRESHOLD_"
    param, value = HEAP_SETTINGS[name]
    libc = _glibc()
    if libc is None or not (name in _set_here or os.environ.get(name) == str(value)):
        return False
    return bool(libc.mallopt(param, value if on else LEAN_MMAP_THRESHOLD))


SWITCH_INTERVAL = 0.0005        # seconds: see `shorten_switch_interval`


def shorten_switch_interval(interval=SWITCH_INTERVAL):
    """Let a worker's I/O thread back in sooner while a task runs Python code, in a
    process that is all worker (a `dask-ipy worker`, an engine).

    The I/O thread lets go of the GIL in every socket call, and gets it back only
    when the task thread lets go of it: while a task runs Python code, after the
    interpreter's switch interval (5 ms by default), for every frame sent or
    received.  A round trip to a worker busy with such a task took 17 ms, and
    2.2 ms at 0.5 ms; tiny tasks and two threads both running Python lost nothing
    measurable.  An interval already shorter stays."""
    if sys.getswitchinterval() > interval:
        sys.setswitchinterval(interval)


def malloc_trim():
    """Give freed heap memory back to the system (glibc); False where unsupported.

    After results leave for disk their memory is free but may stay in the process's
    heap (glibc keeps freed chunks below its trim threshold): RSS would not fall."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
