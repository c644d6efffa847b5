"""Task functions for the resilience, security and soak tests.

Worker processes import these by reference (tests/ is on their PYTHONPATH), so they
live at module level here rather than inside the test modules.
"""

import os
import threading
import time
import uuid

from helpers import wait_for_file


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def slow_inc(x, delay=0.05):
    time.sleep(delay)
    return x + 1


def die(*_):
    """Kill the worker process running this task, at once."""
    os._exit(1)


class TaskFailure(ValueError):
    """Raised on purpose by `fail`; a type of its own, to check it comes back as is."""


def fail(x=None):
    raise TaskFailure(f"bad input {x!r}")  # the line the remote traceback must show


def fail_huge(nbytes):
    raise TaskFailure("x" * nbytes)


def make_lock(*_):
    return threading.Lock()


def big_array(nbytes):
    """`nbytes` bytes, first 1 and last 7.  Only those two are written: writing every
    page of a gigabyte costs seconds and proves nothing more."""
    import numpy as np

    a = np.empty(nbytes, dtype=np.uint8)
    a[0] = 1
    a[-1] = 7
    return a


def array_summary(a):
    return int(a.nbytes), int(a[0]), int(a[-1])


def payload(nbytes, fill=1):
    """`nbytes` bytes whose value is easy to check."""
    return bytes([fill]) * nbytes


def length(x):
    return len(x)


def type_name(x):
    return type(x).__name__


def block_until_file(path, value, timeout=60.0):
    """Return `value` once `path` exists (a task that waits for the test to release it)."""
    return wait_for_file(path, timeout, value)


def _record(log_dir, kind):
    """Leave a file per execution: counting them counts runs across processes."""
    if log_dir is not None:
        with open(os.path.join(log_dir, f"{kind}-{uuid.uuid4().hex}"), "w"):
            pass


def runs(log_dir, kind):
    return sum(1 for name in os.listdir(log_dir) if name.startswith(kind + "-"))


def leaf(log_dir, i):
    _record(log_dir, "leaf")
    return i


def gated_total(log_dir, gate, *parts):
    """Sum `parts` once `gate` exists (when `gate` is given)."""
    _record(log_dir, "sum")
    if gate is not None:
        block_until_file(gate, None)
    return sum(parts)


def tree_reduction(leaves, fanin=4, prefix="tree", log_dir=None, gate=None):
    """A classic dask graph: `leaves` leaf tasks summed `fanin` at a time up to one root.

    Second-level sums wait for the file `gate`, so a test can hold the reduction in
    the middle (there are leaves / fanin**2 of them: as many threads they may hold).
    Every leaf and sum leaves a file in `log_dir` when it runs.  Returns (graph, root
    key, expected value, first-level keys); leaf i holds i, so the root is the sum of
    range(leaves).
    """
    dsk = {}
    level = []
    for i in range(leaves):
        key = (f"{prefix}-leaf", i)
        dsk[key] = (leaf, log_dir, i)
        level.append(key)
    depth = 0
    first = None
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), fanin):
            key = (f"{prefix}-sum-{depth}", j // fanin)
            dsk[key] = (gated_total, log_dir, gate if depth == 2 else None,
                        *level[j:j + fanin])
            nxt.append(key)
        level = nxt
        if first is None:
            first = list(level)
    return dsk, level[0], sum(range(leaves)), first


def mark_and_wait(marker_dir, release, value):
    """Leave a marker naming this worker process, then wait for `release`."""
    with open(os.path.join(marker_dir, f"{os.getpid()}-{value}"), "w"):
        pass
    return block_until_file(release, value)


def markers_of(marker_dir, pid):
    return [n for n in os.listdir(marker_dir) if n.startswith(f"{pid}-")]


class SlowToSend:
    """A value that a worker takes `delay` seconds to send to a peer.

    Pickling it in a worker's I/O thread (which serves peers) first leaves a file
    named after the worker's process id: the test knows who is sending, and when.
    Elsewhere (the client scattering it) it pickles at once.
    """

    def __init__(self, value, marker_dir, delay):
        self.value = value
        self.marker_dir = marker_dir
        self.delay = delay

    def __reduce__(self):
        if threading.current_thread().name == "dask-ipy-worker":
            path = os.path.join(self.marker_dir, f"sending-{os.getpid()}")
            with open(path, "w"):
                pass
            time.sleep(self.delay)
        return (SlowToSend, (self.value, self.marker_dir, self.delay))


def make_slow_to_send(value, marker_dir, delay):
    return SlowToSend(value, marker_dir, delay)


def unwrap(x):
    return x.value


def worker_stats():
    """What the Worker objects of this process hold (for Client.run)."""
    import gc

    from dask_ipy.worker.server import Worker

    found = [o for o in gc.get_objects() if isinstance(o, Worker)]
    return [{"data": len(w.data), "tasks": len(w.state.tasks),
             "executing": len(w.state.executing)} for w in found]


# A pickle whose loading would create a file: the proof that nothing received from the
# network was unpickled is that the file never appears.
class CreateFileOnLoad:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def combine(seed, *inputs):
    """A cheap task for random graphs: a small number from its seed and its inputs."""
    return (seed * 31 + sum(inputs)) % 1_000_003


def slow_combine(delay, seed, *inputs):
    """`combine` that first sleeps `delay` seconds."""
    time.sleep(delay)
    return combine(seed, *inputs)


def random_graph(rng, ntasks, prefix, delay=0.0):
    """A random DAG of `ntasks` `combine` tasks, each on up to four earlier ones, in
    the legacy tuple form; returns (graph, output keys: those nobody depends on).
    With `delay`, each task first sleeps between 0 and twice that many seconds."""
    dsk = {}
    keys = []
    used = set()
    for i in range(ntasks):
        key = (prefix, i)
        ndeps = min(len(keys), rng.choice((0, 1, 1, 2, 2, 3, 4)))
        deps = rng.sample(keys[-50:], ndeps) if ndeps else []
        used.update(deps)
        if delay:
            dsk[key] = (slow_combine, rng.random() * 2 * delay, rng.randrange(1000), *deps)
        else:
            dsk[key] = (combine, rng.randrange(1000), *deps)
        keys.append(key)
    return dsk, [k for k in keys if k not in used]
