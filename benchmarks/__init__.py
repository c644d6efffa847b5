"""Benchmarks: dask_ipy against dask.distributed and ipyparallel on one machine.

Run ``python -m benchmarks --help``. One run measures every workload on every
system in turn, each system in its own child process with its own cluster, and
writes a table to stdout and the figures to ``benchmarks/results/latest.json``.

Data flow::

    runner (python -m benchmarks)          prints the table, writes the JSON
      |  one child per system, events on a pipe, a hard deadline per phase
      v
    child (python -m benchmarks.child)     holds the Client, times the workloads
      |  starts and stops the system's cluster
      v
    hosts (python -m benchmarks.hosts)     a dask_ipy Scheduler or Worker, or a
                                           LocalCluster; ipyparallel's own
                                           controller and engines

The modules: ``workloads`` (one function per workload, ``fn(system, size)``; the real dask
workloads in ``dask_workloads``),
``systems`` (the adapters: start, stop, client), ``tasks`` (the functions run on
workers), ``procs`` (processes, memory and clean-up), ``report`` (table, JSON).
"""

SYSTEMS = ("dask_ipy", "distributed", "distributed-inf", "ipyparallel")
WORKLOADS = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n")
