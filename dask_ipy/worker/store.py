"""Where a worker keeps results: any MutableMapping.  `SpillStore`, the default when
a worker has a memory limit, keeps the most recently used results in memory up to a
byte budget (by dask's `sizeof`) and moves the others to files, so a worker can hold
more than its memory.

    worker I/O thread ── store.nonblocking ──▶ fast: zict.LRU (dict) ──┐ evict, LRU
       set: into memory at once; eviction is queued                    ▼ first
       get: the value, or a `Spilled` marker (never reads a file)     "dask-ipy-spill"
    pool threads ── Spilled.load() ──▶ read back (moves into memory)   thread: pickle,
    peers' requests ── get_serialized ──▶ a spilled value's frames     write, unlink
                        ("dask-ipy-unspill" thread), never unpickled

Built on zict (`Buffer` over `Func` over files): zict 3 is thread-safe and runs the
slow side's writes outside its locks, so the worker's I/O thread never waits for a
disk: its heartbeats and its peers' transfers go on while results spill.

A value on disk is the frames of `protocol.serialize` (pickle protocol 5, buffers out
of band) behind a small header: a peer asking for it gets those frames as they are.
Files are 0600 in a directory of the store's own (0700, under ``directory``), which
`close` removes with everything the store created.
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import stat
import struct
import tempfile
import threading
from collections.abc import MutableMapping

import zict
from zict.utils import InsertionSortedSet
from dask.sizeof import sizeof

from ..log import logger
from ..protocol import Serialized, deserialize, serialize

IDLE_THREAD = 1.0      # seconds a background thread waits for work before ending
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


def _frames_nbytes(frame):
    return memoryview(frame).nbytes


def dump_frames(value):
    """A value as the list of buffers written to its file: header, then frames."""
    frames = serialize(value).frames
    lengths = b"".join(_LENGTH.pack(_frames_nbytes(f)) for f in frames)
    return [_COUNT.pack(len(frames)) + lengths, *frames]


def parse_frames(buf):
    """The `Serialized` in the bytes of a spill file, without copying its frames."""
    view = memoryview(buf)
    (n,) = _COUNT.unpack_from(view, 0)
    pos = _COUNT.size
    lengths = []
    for _ in range(n):
        lengths.append(_LENGTH.unpack_from(view, pos)[0])
        pos += _LENGTH.size
    frames = []
    for length in lengths:
        frames.append(view[pos:pos + length])
        pos += length
    return Serialized(frames)


def load_frames(buf):
    return deserialize(parse_frames(buf))


class SpillFiles(MutableMapping):
    """{key: bytes} as one file per key in ``directory``, created 0600.  Any dask key
    (tuples included): files are named by a counter; the names stay here.
    ``directory`` may be a callable that makes it, called on the first write (a
    worker that never spills leaves nothing on disk, even if killed)."""

    def __init__(self, directory):
        self._directory = directory
        self.names = {}               # {key: (file name, bytes)}
        self.nbytes = 0
        self.lock = threading.Lock()
        self._counter = itertools.count()

    @property
    def directory(self):
        if callable(self._directory):
            with self.lock:
                if callable(self._directory):
                    self._directory = self._directory()
        return self._directory

    def __setitem__(self, key, frames):
        name = f"{next(self._counter):08d}"
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_NOFOLLOW", 0), 0o600)
        size = 0
        try:
            os.fchmod(fd, 0o600)          # whatever the umask
            with os.fdopen(fd, "wb", closefd=True) as f:
                for frame in frames if isinstance(frames, (list, tuple)) else [frames]:
                    f.write(frame)
                    size += _frames_nbytes(frame)
        except BaseException:
            _unlink(path)
            raise
        with self.lock:
            old = self.names.pop(key, None)
            self.names[key] = (name, size)
            self.nbytes += size - (old[1] if old else 0)
        if old is not None:
            _unlink(os.path.join(self.directory, old[0]))

    def __getitem__(self, key):
        with self.lock:
            name, size = self.names[key]
        buf = bytearray(size)
        try:
            with open(os.path.join(self.directory, name), "rb") as f:
                if f.readinto(buf) != size:
                    raise OSError(f"spill file of {key!r} is shorter than written")
        except FileNotFoundError:
            raise KeyError(key) from None         # deleted meanwhile
        return buf

    def __delitem__(self, key):
        with self.lock:
            name, size = self.names.pop(key)
            self.nbytes -= size
        _unlink(os.path.join(self.directory, name))

    def __contains__(self, key):
        return key in self.names

    def __iter__(self):
        with self.lock:
            return iter(list(self.names))

    def __len__(self):
        return len(self.names)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


PREFIX = "dask-ipy-spill-"


def remove_stale(parent=None):
    """Remove the spill directories under ``parent`` (default: the system's temporary
    directory) that belong to this user and whose process is gone: a worker that was
    killed could not remove its own.  Their names carry their process's id."""
    parent = parent or tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True              # someone else's: not ours to judge
    return True


def private_directory(parent=None, prefix=PREFIX):
    """(a new 0700 directory under ``parent``, [directories made for it]); the
    parent is made too (0700) if it does not exist.  Its name carries this
    process's id (see `remove_stale`)."""
    made = []
    if parent is not None and not os.path.isdir(parent):
        missing = []
        path = os.path.abspath(parent)
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)
            made.append(path)
    remove_stale(parent)
    directory = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    os.chmod(directory, 0o700)
    return directory, made


class _Keys(InsertionSortedSet):
    """zict's ordered set of keys, whose `discard` of a key it does not hold raises
    and catches no KeyError: the LRU's ``heavy`` keys, which zict asks to forget
    every key deleted."""

    __slots__ = ()

    def discard(self, value):
        if value in self:
            super().discard(value)


class _LRU(zict.LRU):
    """zict's LRU, whose `set_noevict` of a key it does not hold (every result a
    worker stores) finds it absent without raising and catching a KeyError, and
    whose ``heavy`` keys are `_Keys`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.heavy = _Keys(self.heavy)

    def discard(self, key):
        if key in self.d:
            super().discard(key)       # which ignores a key deleted meanwhile


class _Buffer(zict.Buffer):
    """zict's Buffer over the `_LRU` above, whose `set_noevict` of a key not on disk
    (every result a worker stores) goes straight to the LRU: zict's path removes the
    key from disk first (a KeyError raised and caught)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lru = self.fast                          # zict's own, replaced before any use
        self.fast = _LRU(lru.n, lru.d, weight=lru.weight, on_evict=lru.on_evict,
                         on_cancel_evict=lru.on_cancel_evict)

    def set_noevict(self, key, value):
        with self.lock:
            # zict's path for a key on disk: it removes the file, and cancels a
            # read of it under way (a key being read back is on disk until read:
            # the others that remove it from there cancel the read themselves).
            if key in self.slow.d:              # its files (zict.Func's)
                super().set_noevict(key, value)
            else:
                self.fast.set_noevict(key, value)


class Spilled:
    """What the worker's I/O thread sees for a value on disk: a pool thread reads it
    back with `load()`; a peer is sent its frames (`SpillStore.get_serialized`)."""

    __slots__ = ("key", "store")

    def __init__(self, key, store):
        self.key = key
        self.store = store

    def load(self):
        return self.store.unspill(self.key)

    def __repr__(self):
        return f"<Spilled {self.key!r}>"


class SpillStore(MutableMapping):
    """Results in memory up to ``memory_limit`` bytes (by dask's `sizeof`), the least
    recently used ones spilled to files in a private directory under ``directory``
    (default: the system's temporary directory).

    >>> w = Worker(scheduler=address, data=SpillStore(memory_limit=2e9))

    Used directly, it is a plain MutableMapping: setting a value spills others at
    once, getting a spilled value reads it back.  A worker uses `nonblocking` instead,
    whose operations never wait for a disk.  `close()` removes the files and every
    directory the store created.
    """

    def __init__(self, memory_limit, directory=None):
        self.parent = directory
        self._directory = None
        self._made = []
        self.files = SpillFiles(lambda: self.directory)
        # {key: bytes} of values whose size is known already (a worker's measured
        # sizes): weighing a frame of strings again can cost as much as a small task.
        self.sizes = {}
        self.buffer = _Buffer({}, zict.Func(dump_frames, load_frames, self.files),
                               n=float(memory_limit), weight=self._weight)
        self.nonblocking = NonBlocking(self)
        self.closed = False
        self.failed = None             # the last error of a write, for the logs
        self._jobs = None              # {thread name: queue}, made on first use
        self._threads = {}             # {thread name: Thread} running
        self._evicting = False
        self._lock = threading.Lock()

    def _weight(self, key, value):
        nbytes = self.sizes.get(key)
        return sizeof(value) if nbytes is None else nbytes

    # ---------------------------------------------------------------- mapping

    @property
    def directory(self):
        """The store's own directory, made (0700) when first asked for."""
        with self._lock:
            if self._directory is None:
                self._directory, self._made = private_directory(self.parent)
            return self._directory

    @property
    def fast(self):
        return self.buffer.fast

    @property
    def slow(self):
        return self.buffer.slow

    @property
    def memory_limit(self):
        return self.buffer.n

    @memory_limit.setter
    def memory_limit(self, value):
        self.buffer.n = float(value)
        self.evict_soon()

    @property
    def memory(self):
        """Bytes (by sizeof) of the values held in memory."""
        return int(self.buffer.fast.total_weight)

    @property
    def spilled_bytes(self):
        """Bytes on disk."""
        return self.files.nbytes

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

    def clear(self):
        """Drop everything, reading nothing back."""
        for key in list(self.buffer):
            try:
                del self.buffer[key]
            except KeyError:
                pass

    def unspill(self, key):
        """Read ``key`` back into memory, from any thread, and return it.  Unlike
        ``store[key]``, what this pushes out of memory goes to disk in the background:
        the task that needs the value starts while the others are written."""
        buffer = self.buffer
        try:
            return buffer.fast[key]
        except KeyError:
            pass
        try:
            value = load_frames(self.files[key])
        except KeyError:
            return buffer[key]                   # back in memory meanwhile
        with buffer.lock:
            if key in buffer.slow and self._weight(key, value) <= buffer.n:
                buffer.set_noevict(key, value)   # its file goes
        self.evict_soon()
        return value

    def get_serialized(self, key):
        """The value of ``key`` as a `Serialized`: from its file as it is (never
        unpickled) if on disk, else serialized from memory."""
        try:
            return parse_frames(self.files[key])
        except KeyError:
            pass
        try:
            value = self.buffer.fast[key]
        except KeyError:
            # Read back into memory by a task meanwhile, or on disk again by now.
            return parse_frames(self.files[key]) if key in self.files \
                else serialize(self.buffer[key])
        return serialize(value)

    # ---------------------------------------------------------------- background

    def _submit(self, fn, *args, thread="spill"):
        """Run ``fn(*args)`` on the named background thread, started if needed (it
        ends after a while without work: a store nobody closes leaves none)."""
        with self._lock:
            if self.closed:
                return False
            if self._jobs is None:
                self._jobs = {"spill": queue.Queue(), "unspill": queue.Queue()}
                self._threads = {}
            self._jobs[thread].put((fn, args))
            t = self._threads.get(thread)
            if t is None:
                t = self._threads[thread] = threading.Thread(
                    target=self._run, args=(thread,), daemon=True,
                    name=f"dask-ipy-{thread}")
                t.start()
        return True

    def _run(self, thread):
        jobs = self._jobs[thread]
        while True:
            try:
                job = jobs.get(timeout=IDLE_THREAD)
            except queue.Empty:
                with self._lock:
                    if jobs.empty():
                        del self._threads[thread]
                        return
                continue
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except Exception as e:
                logger.exception("spill store %s: %r failed", self.directory, fn)
                self.failed = e

    def evict_soon(self):
        """If memory holds more than the budget, move the excess to disk in the
        background (one eviction at a time)."""
        fast = self.buffer.fast
        if fast.total_weight <= fast.n or self._evicting:
            return
        self._evicting = True
        if not self._submit(self._evict):
            self._evicting = False

    def _evict(self):
        try:
            self.buffer.evict_until_below_target()
        except Exception as e:
            self._note_failure(e)
        finally:
            self._evicting = False
        if self.buffer.fast.total_weight > self.buffer.n and self.failed is None:
            self.evict_soon()                   # more came in meanwhile

    def spill(self, nbytes, after=None):
        """Move about ``nbytes`` (by sizeof) of the least recently used values to disk
        in the background, then call ``after()`` there (a worker gives the freed
        memory back to the system)."""
        return self._submit(self._spill, nbytes, after)

    def _spill(self, nbytes, after):
        fast = self.buffer.fast
        try:
            self.buffer.evict_until_below_target(max(fast.total_weight - nbytes, 0))
        except Exception as e:
            self._note_failure(e)
        if after is not None:
            after()

    def _note_failure(self, e):
        if self.failed is None:
            logger.error("spill store %s: cannot write to disk (%s); results stay in "
                         "memory", self.directory, e)
        self.failed = e

    def read_in_background(self, keys, done):
        """Call ``done({key: Serialized}, [missing keys])`` from the unspill thread."""
        def read():
            found, missing = {}, []
            for key in keys:
                try:
                    found[key] = self.get_serialized(key)
                except KeyError:
                    missing.append(key)
                except Exception as e:
                    logger.error("spill store %s: could not read %r back: %s",
                                 self.directory, key, e)
                    missing.append(key)
            done(found, missing)
        if not self._submit(read, thread="unspill"):
            done({}, list(keys))

    # ---------------------------------------------------------------- life

    def close(self, timeout=10):
        """Stop the background threads, drop the values and remove the files and
        every directory the store created."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            jobs = self._jobs
            threads = list(self._threads.values())
            if jobs is not None:
                for q in jobs.values():
                    q.put(None)
        self.buffer.fast.closed = True            # an eviction under way stops early
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        for path in reversed(self._made):
            try:
                os.rmdir(path)
            except OSError:
                pass

    def remove_files(self):
        """Remove the store's directory now, whatever runs (a process about to exit)."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def __repr__(self):
        return (f"<SpillStore {len(self.fast)} in memory, {len(self.slow)} on disk "
                f"at {self._directory or self.parent or '(none yet)'}>")


class NonBlocking(MutableMapping):
    """The worker's I/O thread's view of a `SpillStore`: nothing here waits for a
    disk.  Setting a value keeps it in memory and queues an eviction; getting a value
    on disk gives a `Spilled` marker."""

    def __init__(self, store):
        self.store = store

    def __getitem__(self, key):
        buffer = self.store.buffer
        try:
            return buffer.fast[key]
        except KeyError:
            if key in buffer.slow:
                return Spilled(key, self.store)
            if key in buffer.fast:                # back in memory meanwhile
                return buffer.fast[key]
            raise

    def __setitem__(self, key, value):
        self.store.buffer.set_noevict(key, value)
        self.store.evict_soon()

    def __delitem__(self, key):
        del self.store.buffer[key]

    def __contains__(self, key):
        return key in self.store.buffer

    def __iter__(self):
        return iter(self.store.buffer)

    def __len__(self):
        return len(self.store.buffer)

    def clear(self):
        self.store.clear()
