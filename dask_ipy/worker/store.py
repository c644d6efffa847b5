"""Where a worker keeps results: any MutableMapping.  A dict by default; `SpillStore`
keeps the most recently used values in memory up to a byte budget and moves the rest
to files, so a worker can hold more than its memory."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from collections.abc import MutableMapping

import cloudpickle
import zict
from dask.sizeof import sizeof


def _dump(value):
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return cloudpickle.dumps(value, protocol=5)


class _NamedFiles(MutableMapping):
    """zict.File keyed by any dask key (tuples included): files are named by a hash
    of the key, and the keys themselves are remembered here."""

    def __init__(self, directory):
        self.files = zict.File(directory)
        self.keys_by_name = {}

    @staticmethod
    def _name(key):
        return hashlib.sha1(repr(key).encode()).hexdigest()

    def __getitem__(self, key):
        return self.files[self._name(key)]

    def __setitem__(self, key, value):
        name = self._name(key)
        self.files[name] = value
        self.keys_by_name[name] = key

    def __delitem__(self, key):
        name = self._name(key)
        del self.files[name]
        del self.keys_by_name[name]

    def __iter__(self):
        return iter(list(self.keys_by_name.values()))

    def __len__(self):
        return len(self.keys_by_name)


class SpillStore(MutableMapping):
    """Results in memory up to ``memory_limit`` bytes (as measured by dask's
    `sizeof`), least recently used ones spilled to ``directory``.

    >>> w = Worker(scheduler=address, data=SpillStore(memory_limit=2e9))
    """

    def __init__(self, memory_limit, directory=None):
        self.directory = directory or tempfile.mkdtemp(prefix="dask-ipy-spill-")
        self._owns_directory = directory is None
        os.makedirs(self.directory, exist_ok=True)
        slow = zict.Func(_dump, pickle.loads, _NamedFiles(self.directory))
        self.buffer = zict.Buffer({}, slow, n=float(memory_limit),
                                  weight=lambda k, v: sizeof(v))

    @property
    def fast(self):
        return self.buffer.fast

    @property
    def slow(self):
        return self.buffer.slow

    def __getitem__(self, key):
        return self.buffer[key]

    def __setitem__(self, key, value):
        self.buffer[key] = value

    def __delitem__(self, key):
        del self.buffer[key]

    def __contains__(self, key):
        return key in self.buffer

    def __iter__(self):
        return iter(self.buffer)

    def __len__(self):
        return len(self.buffer)

    def close(self):
        self.buffer.clear()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __repr__(self):
        return (f"<SpillStore {len(self.fast)} in memory, {len(self.slow)} on disk "
                f"at {self.directory}>")
