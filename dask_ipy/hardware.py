"""Bandwidths of the workers' hardware, for `Client.benchmark_hardware`:
``{"disk": {size: bytes/s}, "memory": {...}, "network": {...}}``.

    disk, memory ── Client.run(local_bandwidths) ──▶ measured on every worker at once
    network ─────── pairs of workers: a task on one makes random bytes, a task on
                    the other takes them; the time of that transfer (peer to peer,
                    as any input moves) comes from the task stream

Each figure is the mean over the workers (or pairs) of bytes moved per second, for
blocks of each size: written to a file and synced to the disk (in the worker's
local directory), copied in memory, or fetched from the peer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

KiB, MiB = 2 ** 10, 2 ** 20

DISK_SIZES = {"1 kiB": KiB, "100 kiB": 100 * KiB, "1 MiB": MiB, "10 MiB": 10 * MiB}
MEMORY_SIZES = {"2 kiB": 2 * KiB, "10 kiB": 10 * KiB, "100 kiB": 100 * KiB,
                "1 MiB": MiB, "10 MiB": 10 * MiB}
NETWORK_SIZES = {"1 kiB": KiB, "10 kiB": 10 * KiB, "100 kiB": 100 * KiB, "1 MiB": MiB,
                 "10 MiB": 10 * MiB, "50 MiB": 50 * MiB}
DISK_SECONDS = 0.25          # spent on each size
MEMORY_SECONDS = 0.1
NETWORK_REPEATS = 3          # transfers of each size between each pair


def _rate(step, size, seconds):
    """Bytes per second of ``step()`` (moving ``size`` bytes) done for ``seconds``
    (at least once)."""
    done = 0
    start = time.perf_counter()
    while True:
        step()
        done += size
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def disk_bandwidth(directory=None, sizes=DISK_SIZES, seconds=DISK_SECONDS):
    """{size: bytes/s} of blocks appended to a file in ``directory`` and synced."""
    folder = tempfile.mkdtemp(prefix="dask-ipy-benchmark-", dir=directory)
    try:
        out = {}
        for label, size in sizes.items():
            block = os.urandom(size)
            with open(os.path.join(folder, label.replace(" ", "")), "wb") as f:
                def write():
                    f.write(block)
                    f.flush()
                    os.fsync(f.fileno())
                out[label] = _rate(write, size, seconds)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def memory_bandwidth(sizes=MEMORY_SIZES, seconds=MEMORY_SECONDS):
    """{size: bytes/s} of copies of a block in memory."""
    out = {}
    for label, size in sizes.items():
        block = bytearray(os.urandom(size))
        out[label] = _rate(lambda: bytes(block), size, seconds)
    return out


def local_bandwidths(dask_worker):
    """{"disk": ..., "memory": ...} of the worker this runs on (`Client.run`)."""
    return {"disk": disk_bandwidth(dask_worker.local_directory),
            "memory": memory_bandwidth()}


def pairs(workers):
    """Disjoint pairs (sender, receiver) of ``workers``, in the order given."""
    workers = list(workers)
    return list(zip(workers[::2], workers[1::2]))


def transfer_rates(records, sizes):
    """{size label: bytes/s} from the task stream ``records`` of the receiving tasks,
    ``sizes``: {key of a receiving task: size label}; each label's moved bytes over
    its transfers' time, summed per pair of workers, then averaged over the pairs."""
    moved = {}                      # {label: {pair: [bytes, seconds]}}
    for r in records:
        label = sizes.get(r["key"])
        for step in r["startstops"] if label else ():
            if step["action"] == "transfer":
                total = moved.setdefault(label, {}).setdefault(
                    (step["source"], r["worker"]), [0, 0.0])
                total[0] += step["nbytes"]
                total[1] += step["stop"] - step["start"]
    rates = {}
    for label in dict.fromkeys(sizes.values()):        # in the order of the sizes
        if label in moved:
            per_pair = [b / max(s, 1e-9) for b, s in moved[label].values()]
            rates[label] = sum(per_pair) / len(per_pair)
    return rates


def mean_of(reports):
    """{size: mean bytes/s} of the workers' {size: bytes/s}."""
    out = {}
    for report in reports:
        for label, rate in report.items():
            out.setdefault(label, []).append(rate)
    return {label: sum(rates) / len(rates) for label, rates in out.items()}
