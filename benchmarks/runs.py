"""Run numbers: every timed run of every workload in a child gets a new one, which its
keys and arguments carry, so that no run finds an earlier run's results."""

import itertools

_runs = itertools.count(1)


def fresh():
    """A new run number."""
    return next(_runs)
