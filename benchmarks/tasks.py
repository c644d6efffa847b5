"""Functions that run on the workers.

Kept free of heavy imports so that unpickling a reference to them costs nothing
beyond the first import of this package on the worker.
"""

import os


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def total(xs):
    return sum(xs)


def make_array(nbytes, seed):
    """An array of ``nbytes`` bytes whose first element is the maker's pid."""
    import numpy as np

    a = np.full(max(nbytes // 8, 1), float(seed))
    a[0] = os.getpid()
    return a


def probe_array(a):
    """(size in bytes, pid of the process that made it, pid of this process)."""
    return int(a.nbytes), int(a[0]), os.getpid()


def getpid():
    return os.getpid()


# Data of the dask collection workloads (benchmarks.collections).  Each block or
# partition depends only on a seed and its own position, so that every run, on any
# scheduler, computes the same numbers; ``run`` only makes the keys new.


def array_block(seed, run, block_id=None, block_info=None):
    """Uniform floats in [0, 1) of one ``map_blocks`` block."""
    import numpy as np

    shape = block_info[None]["chunk-shape"]
    return np.random.default_rng((seed, *block_id)).random(shape)


NAMES = (
    "Alice Bob Charlie Dan Edith Frank George Hannah Ingrid Jerry Kevin Laura Michael "
    "Norbert Oliver Patricia Quinn Ray Sarah Tim Ursula Victor Wendy Xavier Yvonne Zelda"
).split()


def timeseries_partition(day, rows, seed=0, run=0):
    """One day of a timeseries like ``dask.datasets.timeseries``: ``rows`` rows
    evenly spread over the day, columns name (str), id (int), x, y (float)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng((seed, day))
    start = pd.Timestamp("2000-01-01") + pd.Timedelta(days=day)
    index = pd.date_range(start, periods=rows, freq=pd.Timedelta(days=1) / rows, name="timestamp")
    return pd.DataFrame(
        {
            "name": np.asarray(NAMES, dtype=object)[rng.integers(0, len(NAMES), rows)],
            "id": rng.poisson(1000, rows).astype("int64"),
            "x": rng.random(rows) * 2 - 1,
            "y": rng.random(rows) * 2 - 1,
        },
        index=index,
    )


def frame_summary(df):
    """One row about a partition of a frame indexed by integers: its length, the
    first and last index, whether the index is sorted, and sums of its columns."""
    import pandas as pd

    index = df.index
    return pd.DataFrame(
        {
            "rows": [len(df)],
            "first": [index[0] if len(df) else 0],
            "last": [index[-1] if len(df) else 0],
            "sorted": [bool(index.is_monotonic_increasing)],
            "index_sum": [int(index.to_numpy().sum())],
            "x_sum": [float(df["x"].sum())],
            "y_sum": [float(df["y"].sum())],
            "names": [int(df["name"].str.len().sum())],
        }
    )


def text_lines(part, seed=0):
    """``part`` = (run, index, lines): lines of ten words drawn from a Zipf-like
    vocabulary of 20,000 words, the same for the same index and seed."""
    import numpy as np

    _run, index, lines = part
    rng = np.random.default_rng((seed, index))
    words = np.char.add("w", (rng.zipf(1.3, lines * 10) % 20_000).astype(str))
    return [" ".join(words[i:i + 10]) for i in range(0, lines * 10, 10)]
