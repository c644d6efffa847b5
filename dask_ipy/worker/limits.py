"""A worker's memory decisions, pure: a sample of memory in, instructions out.

The shell (`worker.monitor.MemoryMonitor`) samples the process's RSS on a timer and
carries out what `decide` returns; nothing here reads a clock, a file or a process.

    RSS ─┬─ > terminate x limit ─▶ Terminate   stop the running tasks
         ├─ > pause x limit ──────▶ Pause       start no new task (data still served)
         │  < (pause - margin) x limit, paused ─▶ Resume
         └─ > spill x limit ──────▶ Spill(n)    move n bytes of results to disk, so
                                                that RSS falls back under target

Results are also kept under ``target x limit`` by the store itself (by `sizeof`, as
they arrive); ``spill`` acts on the whole process, which holds more than results:
the tasks' working memory, libraries, fragmentation ("unmanaged" memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from dask.utils import parse_bytes


@dataclass(frozen=True)
class Spill:
    nbytes: int          # by sizeof, to move from memory to disk


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Terminate:
    rss: int
    limit: int


def lean_heap(rss, limit, fractions, lean, margin=0.05):
    """Whether freed blocks should go back to the system at once rather than wait
    in the heap for reuse: once ``rss`` is past the target fraction (the spill
    fraction if target is off), until it is ``margin`` under it again (``lean``:
    whether they go back at once now)."""
    at = fractions.get("target") or fractions.get("spill")
    if not (limit and at):
        return False
    return rss > (at - margin if lean else at) * limit


def memory_limit_bytes(value, total, nworkers=1):
    """A worker's limit in bytes, or None for none.

    ``value``: "auto" (``total`` shared among the ``nworkers`` workers of the host),
    a number of bytes, a string such as "2GiB" or "500 MB", a fraction of ``total``
    (a number, or a string such as "0.25", at most 1), or None / 0 / False for no
    limit.  ``total``: the host's memory, or its cgroup's limit where lower.  A limit
    above ``total`` is cut to ``total``.
    """
    if value is None or value is False:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", ""):
            return max(int(total // max(int(nworkers), 1)), 1) if text else None
        if text in ("none", "0", "false", "off"):
            return None
        try:
            value = float(text)
        except ValueError:
            value = parse_bytes(value)
    if isinstance(value, bool):
        return None
    if value < 0:
        raise ValueError(f"a memory limit cannot be negative: {value!r}")
    if value == 0:
        return None
    if value <= 1:
        return max(int(value * total), 1)
    return min(int(value), int(total))


def thresholds(limit, fractions):
    """{name: bytes or None} of each fraction of ``limit`` (None: off or no limit)."""
    return {name: (int(f * limit) if limit and f else None)
            for name, f in fractions.items()}


def decide(rss, managed, limit, fractions, paused, margin=0.05):
    """What to do about a sample of memory.

    ``rss``: the process's resident memory; ``managed``: bytes of results held in
    memory (by `sizeof`), the only part that can go to disk; ``limit``: the worker's
    limit (None: nothing to decide); ``fractions``: {target, spill, pause,
    terminate}, each a fraction of the limit or False; ``paused``: whether the worker
    is paused now; ``margin``: how far under ``pause`` memory must fall to resume (a
    worker on the line would otherwise flap).
    """
    if not limit:
        return [Resume()] if paused else []
    out = []
    terminate, pause = fractions.get("terminate"), fractions.get("pause")
    spill, target = fractions.get("spill"), fractions.get("target")
    if terminate and rss > terminate * limit:
        out.append(Terminate(int(rss), int(limit)))
    if pause and not paused and rss > pause * limit:
        out.append(Pause())
    elif paused and (not pause or rss < (pause - margin) * limit):
        out.append(Resume())
    if spill and managed > 0 and rss > spill * limit:
        goal = (target or spill) * limit
        out.append(Spill(int(min(managed, rss - goal))))
    return out


def blas_threads(setting, cores, nthreads):
    """Threads each BLAS/OpenMP pool may use inside a task, or None to leave the
    libraries alone: "auto" shares the worker's ``cores`` among its ``nthreads``
    task threads, so that together they do not use more cores than it has."""
    if setting is None or setting is False:
        return None
    if isinstance(setting, str):
        if setting.strip().lower() != "auto":
            return max(int(setting), 1)
        return max(int(cores) // max(int(nthreads), 1), 1)
    return max(int(setting), 1)
