"""Task functions for the resilience, security and soak tests.

Worker processes import these by reference (tests/ is on their PYTHONPATH), so they
live at module level here rather than inside the test modules.
"""

import os
import threading
import time


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def total(*parts):
    return sum(parts)


def slow_add(x, y, delay=0.05):
    time.sleep(delay)
    return x + y


def slow_inc(x, delay=0.05):
    time.sleep(delay)
    return x + 1


def slow_identity(x, delay=0.05):
    time.sleep(delay)
    return x


def pid_of_worker(*_):
    return os.getpid()


def die(*_):
    """Kill the worker process running this task, at once."""
    os._exit(1)


def die_in_worker(pid):
    """Kill the worker whose process id is `pid`; elsewhere, return 'survived'."""
    if os.getpid() == pid:
        os._exit(1)
    return "survived"


class TaskFailure(ValueError):
    """Raised on purpose by `fail`; a type of its own, to check it comes back as is."""


def fail(x=None):
    raise TaskFailure(f"bad input {x!r}")  # the line the remote traceback must show


def fail_huge(nbytes):
    raise TaskFailure("x" * nbytes)


def make_lock(*_):
    return threading.Lock()


def big_array(nbytes):
    import numpy as np

    a = np.ones(nbytes, dtype=np.uint8)
    a[-1] = 7
    return a


def array_summary(a):
    return int(a.nbytes), int(a[0]), int(a[-1])


def payload(nbytes, fill=1):
    """`nbytes` bytes whose value is easy to check."""
    return bytes([fill]) * nbytes


def length(x):
    return len(x)


def block_until_file(path, value, timeout=60.0):
    """Return `value` once `path` exists (a task that waits for the test to release it)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


def touch_and_block(started, release, value, timeout=60.0):
    """Create `started`, then wait for `release`: the test knows the task is running."""
    with open(started, "w"):
        pass
    return block_until_file(release, value, timeout)


def tree_reduction(leaves, fanin=4, prefix="tree", delay=0.0):
    """A classic dask graph: `leaves` leaf tasks summed `fanin` at a time up to one root.

    Returns (graph, root key, expected value).  Leaf i holds i, so the root is the sum
    of range(leaves).
    """
    dsk = {}
    level = []
    for i in range(leaves):
        key = (f"{prefix}-leaf", i)
        dsk[key] = (slow_identity, i, delay)
        level.append(key)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), fanin):
            key = (f"{prefix}-sum-{depth}", j // fanin)
            dsk[key] = (slow_total, delay, *level[j:j + fanin])
            nxt.append(key)
        level = nxt
    return dsk, level[0], sum(range(leaves))


def slow_total(delay, *parts):
    time.sleep(delay)
    return sum(parts)


# A pickle whose loading would create a file: the proof that nothing received from the
# network was unpickled is that the file never appears.
class CreateFileOnLoad:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
