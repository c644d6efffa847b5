"""Task functions for the cluster tests.  They live in a module of their own so that
worker processes import them by reference (tests/ is on their PYTHONPATH)."""

import os
import threading
import time


def inc(x):
    return x + 1


def dec(x):
    return x - 1


def add(x, y):
    return x + y


def double(x):
    return 2 * x


def total(*args, **kwargs):
    """Sum of everything passed, walking lists, tuples and dict values."""
    def walk(obj):
        if isinstance(obj, (list, tuple, set)):
            return sum(walk(x) for x in obj)
        if isinstance(obj, dict):
            return sum(walk(x) for x in obj.values())
        return obj
    return walk(args) + walk(kwargs)


def identity(x):
    return x


def slow_inc(x, delay=0.2):
    time.sleep(delay)
    return x + 1


def sleep(seconds, value=None):
    time.sleep(seconds)
    return value


def wait_for_file(path, timeout=30.0, value=None):
    """Block until ``path`` exists: a task the test lets finish when it wants."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


class Boom(ValueError):
    """An exception type of our own, to check that types survive the trip."""


def fail(x=None):
    raise Boom(f"failed on {x!r}")


def fail_deeply(x):
    return _inner_failure(x)


def _inner_failure(x):
    raise ZeroDivisionError(f"inner failure with {x}")


def fail_until(path, succeed_on):
    """Fail until this has been called ``succeed_on`` times (counted in a file)."""
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        calls = len(f.read())
    if calls < succeed_on:
        raise RuntimeError(f"attempt {calls} fails")
    return calls


def record(path, value):
    """Append a line to ``path`` (one per execution) and return ``value``."""
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


def count_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def pid():
    return os.getpid()


def where(x=None):
    """The process and thread that ran this task."""
    return os.getpid(), threading.get_ident()


def array_of(nbytes, fill=1):
    import numpy as np

    return np.full(nbytes, fill, dtype="u1")


def array_sum(a):
    return int(a.sum())


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def make_unpicklable(x=None):
    return Unpicklable()


def length(x):
    return len(x)


def worker_keys(dask_worker=None):
    """For Client.run: the keys held by the worker in this process."""
    import gc

    from dask_ipy import Worker

    return sorted(str(k) for w in gc.get_objects() if isinstance(w, Worker)
                  for k in w.data)


class NeedsTwo(Exception):
    """Pickle rebuilds exceptions from ``args``: this one cannot be rebuilt."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


class SlotsOnly(Exception):
    """Rebuilt by pickle without its slot, so its ``__str__`` fails afterwards (as
    numpy's AxisError does)."""

    __slots__ = ("detail",)

    def __init__(self, detail):
        super().__init__()
        self.detail = detail

    def __str__(self):
        return f"detail is {self.detail}"


def raise_needs_two():
    raise NeedsTwo(1, 2)


def raise_slots_only():
    raise SlotsOnly("lost")
