"""Task functions for the memory tests, importable by worker processes and engines."""

import builtins
import time

import numpy as np

MiB = 2**20


def make(i, mib=10):
    """An array of ``mib`` MiB filled with ``i``."""
    return np.full(mib * MiB // 8, i, dtype="f8")


def total(x):
    return float(x.sum())


def add(a, b):
    return a + b


def inc(x):
    return x + 1


def slow_inc(x, delay=0.05):
    time.sleep(delay)
    return x + 1


def grow(step_mib=20, up_to_mib=4096):
    """Allocate step by step (a runaway): only a stop for memory ends it early."""
    held = []
    for _ in range(up_to_mib // step_mib):
        held.append(np.ones(step_mib * MiB // 8))
    return len(held)


def allocate(mib):
    """One allocation in one call."""
    return float(np.ones(mib * MiB // 8).sum())


def hold(mib):
    """Keep ``mib`` MiB alive outside any result (unmanaged memory)."""
    builtins._dask_ipy_test_held = np.ones(mib * MiB // 8)
    return mib


def release():
    builtins.__dict__.pop("_dask_ipy_test_held", None)
    from dask_ipy.worker.system import malloc_trim

    malloc_trim()
    return True


def blas_threads(*ignored):
    """The thread counts of the BLAS pools loaded in this process."""
    from threadpoolctl import threadpool_info

    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})


def pid():
    import os

    return os.getpid()
