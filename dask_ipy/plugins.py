"""Plugins: user code the workers and the scheduler run on the client's request.

    client.register_plugin(p) ── pickled ──▶ scheduler ─┬─ SchedulerPlugin: unpickled
                                                        │  and started there (its shell)
                                                        └─ WorkerPlugin: kept as an
                                                           opaque blob, sent to every
                                                           worker, now and when one
                                                           joins or restarts later

`WorkerPlugin` and `SchedulerPlugin` have dask.distributed's methods and arguments;
subclasses of dask.distributed's own classes are taken too (`plugin_kind`).  Worker
plugins that come with dask_ipy: `UploadFile` (`Client.upload_file`), `Environ`,
`UploadDirectory`, `InstallPlugin` and `PipInstall` (public, as dask.distributed's),
`SetupCallback` (`Client.register_worker_callbacks`) and `ForwardLogging`
(`Client.forward_logging`); a scheduler plugin: `TaskMetadata`
(`get_task_metadata`).

This module imports neither dask nor anything of the roles: the scheduler imports it,
and a scheduler process never imports dask unless the user's own code does.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import importlib
import inspect
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import uuid
import zipfile

FORWARD_LOGGING = "forward-logging"     # the topic of forwarded log records


class WorkerPlugin:
    """Set-up code for workers: ``setup(worker)`` on every worker, now and on those
    that join or restart later; ``teardown(worker)`` when the worker closes or
    restarts or the plugin is replaced; ``transition(key, start, finish)`` on each
    change of a task's state on the worker (states: released, fetch, flight,
    missing, waiting, ready, executing, memory, forgotten).  ``setup`` and
    ``teardown`` run on a thread the worker keeps for plugins, one at a time in the
    order they were registered; the worker goes on meanwhile (heartbeats, data for
    its peers), but starts no task until they end.  ``transition`` runs on the
    worker's I/O thread, once the set-up has ended (it is told first of those
    meanwhile): keep it short.  A set-up that changes the worker's own state, not
    the process's, races that thread.  ``name``: the plugin's name (one plugin per
    name); ``idempotent``: registering it again under its name changes nothing."""

    idempotent = False

    def setup(self, worker):
        pass

    def teardown(self, worker):
        pass

    def transition(self, key, start, finish, **kwargs):
        pass


class SchedulerPlugin:
    """Code run in the scheduler process, on its I/O thread, after each event the
    scheduler's state machine reports: ``start(scheduler)`` once registered;
    ``add_worker``, ``remove_worker``, ``add_client``, ``remove_client``,
    ``update_graph``, ``restart``, ``transition(key, start, finish)`` and
    ``log_event(topic, msg)``; ``before_close()`` and ``close()`` when the scheduler
    stops or the plugin is replaced.  ``scheduler`` is the `Scheduler` (its
    ``tasks``, ``workers`` by address, ``clients``)."""

    idempotent = False

    def start(self, scheduler):
        pass

    def before_close(self):
        pass

    def close(self):
        pass

    def update_graph(self, scheduler, *, client, keys, tasks, annotations, priority,
                     stimulus_id, **kwargs):
        pass

    def restart(self, scheduler):
        pass

    def transition(self, key, start, finish, *args, stimulus_id, **kwargs):
        pass

    def add_worker(self, scheduler, worker):
        pass

    def remove_worker(self, scheduler, worker, *, stimulus_id, **kwargs):
        pass

    def add_client(self, scheduler, client):
        pass

    def remove_client(self, scheduler, client):
        pass

    def log_event(self, topic, msg):
        pass


def _bases(plugin):
    return {cls.__name__ for cls in type(plugin).__mro__}


def plugin_kind(plugin):
    """"worker" or "scheduler": by base class (ours or dask.distributed's, by name,
    so that dask.distributed need not be imported), else by the methods it has."""
    bases = _bases(plugin)
    if "NannyPlugin" in bases:
        raise TypeError("dask_ipy has no nanny: a NannyPlugin cannot run; use a "
                        "WorkerPlugin (its setup runs on every worker, and again "
                        "when one restarts)")
    if "SchedulerPlugin" in bases:
        return "scheduler"
    if "WorkerPlugin" in bases:
        return "worker"
    if any(hasattr(plugin, m) for m in ("start", "add_worker", "remove_worker",
                                        "update_graph", "add_client")):
        return "scheduler"
    if any(hasattr(plugin, m) for m in ("setup", "teardown", "transition")):
        return "worker"
    raise TypeError(f"{plugin!r} is neither a WorkerPlugin nor a SchedulerPlugin")


def plugin_name(plugin, name=None):
    """The name a plugin is registered under: ``name``, its ``name`` attribute, or
    its class name with a random suffix (a new plugin each time)."""
    if name is not None:
        return name
    own = getattr(plugin, "name", None)
    if isinstance(own, str) and own:
        return own
    return f"{type(plugin).__name__}-{uuid.uuid4()}"


def overrides(plugin, method):
    """Does ``plugin`` define ``method`` beyond the do-nothing one of its base?"""
    for cls in type(plugin).__mro__:
        if method in vars(cls):
            return cls.__name__ not in ("WorkerPlugin", "SchedulerPlugin", "object")
    return False


def accepts(fn, name):
    """Does ``fn`` take an argument called ``name`` (``dask_worker``,
    ``dask_scheduler``)?"""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a coroutine it returns is run to its end (in a loop of
    its own: the caller is a shell's I/O thread, which runs no event loop)."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        async def finish():
            return await result
        result = asyncio.run(finish())
    return result


# ---------------------------------------------------------------- upload_file

_uploads = {"dir": None}


def upload_directory():
    """This process's directory of uploaded files, made on first use and removed at
    exit."""
    if _uploads["dir"] is None:
        path = tempfile.mkdtemp(prefix="dask-ipy-uploads-")
        atexit.register(shutil.rmtree, path, True)
        _uploads["dir"] = path
    return _uploads["dir"]


def save_upload(filename, data):
    """Write an uploaded file where it is importable; its path.

    Each content goes to a directory of its own (named by its digest): a file sent
    again with new content gets a new path, so neither the bytecode cache (which
    trusts a file's size and time) nor the cache of zip importers serves the old one.
    """
    folder = os.path.join(upload_directory(), hashlib.sha256(data).hexdigest()[:16])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(filename))
    if not os.path.exists(path):
        tmp = f"{path}.{uuid.uuid4().hex}.part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def _archive_names(path):
    """Top-level modules and packages in a .zip or .egg."""
    names = set()
    with zipfile.ZipFile(path) as z:
        for entry in z.namelist():
            head, _, rest = entry.partition("/")
            if head.endswith((".egg-info", ".dist-info")) or head == "EGG-INFO":
                continue
            if not rest and head.endswith(".py"):
                names.add(head[:-3])
            elif rest == "__init__.py":
                names.add(head)
    return sorted(names)


def import_file(path):
    """Put an uploaded file on ``sys.path`` in place of an earlier upload of the same
    name, then import its modules: a .py module imported already is reloaded, the
    modules of an archive are imported afresh; the modules."""
    base = os.path.basename(path)
    # An earlier upload of the same name leaves sys.path: the new one is found first.
    for entry in list(sys.path):
        if entry.startswith(upload_directory()) and (
                os.path.basename(entry) == base
                or os.path.exists(os.path.join(entry, base))) and entry != path:
            sys.path.remove(entry)
    if base.endswith(".py"):
        where, names = os.path.dirname(path), [base[:-3]]
    elif base.endswith((".zip", ".egg")):
        where, names = path, _archive_names(path)
    else:
        raise ValueError(f"cannot import {base}: only .py, .zip and .egg files")
    if where not in sys.path:
        sys.path.insert(0, where)
    importlib.invalidate_caches()
    modules = []
    for name in names:
        if name in sys.modules and where != path:
            modules.append(importlib.reload(sys.modules[name]))     # a .py module
            continue
        # A package from an archive is imported afresh, submodules and all: a reload
        # would find its submodules through its old __path__, in the old archive.
        for m in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[m]
        modules.append(importlib.import_module(name))
    return modules


class UploadFile(WorkerPlugin):
    """A file for every worker: saved there and, with ``load``, imported (a .py
    module, or the modules of a .zip or .egg), reloaded if it was imported before
    (``client.register_plugin(UploadFile("mymodule.py"))``, or
    ``client.upload_file``)."""

    def __init__(self, filepath, load=True):
        with open(filepath, "rb") as f:
            self.data = f.read()
        self.filename = os.path.basename(filepath)
        self.load = load
        self.name = f"upload-file-{self.filename}"

    def setup(self, worker):
        path = save_upload(self.filename, self.data)
        if self.load:
            import_file(path)


class Environ(WorkerPlugin):
    """Environment variables for every worker: set in its process's ``os.environ``
    (values as strings) when the plugin is set up, before the worker's next task
    (``client.register_plugin(Environ({"MY_SETTING": "1"}))``)."""

    def __init__(self, environ=None):
        self.environ = {k: str(v) for k, v in (environ or {}).items()}

    def setup(self, worker):
        os.environ.update(self.environ)


class SetupCallback(WorkerPlugin):
    """``setup()`` (or ``setup(dask_worker=worker)``, if it takes that argument) on
    every worker, now and on those that join or restart later
    (`Client.register_worker_callbacks`)."""

    def __init__(self, setup):
        self.setup_function = setup

    def setup(self, worker):
        if accepts(self.setup_function, "dask_worker"):
            return self.setup_function(dask_worker=worker)
        return self.setup_function()


# ---------------------------------------------------------------- directories, installs

def _no_nanny(restart_workers):
    if restart_workers:
        raise ValueError("restart_workers=True needs a nanny, and dask_ipy has none: "
                         "a worker restarts in place, in the same process")


class UploadDirectory(WorkerPlugin):
    """A directory for every worker: copied into the worker's ``local_directory``
    (as ``local_directory/<its name>``) and, with ``update_path``, put first on
    ``sys.path``.  Files whose path has a part in ``skip_words``, or for which a
    function in ``skip`` is true, stay behind.  ``mode`` is "workers" only (the
    scheduler runs no user code it does not ask for)."""

    def __init__(self, path, restart_workers=False, update_path=False,
                 skip_words=(".git", ".github", ".pytest_cache", "tests", "docs"),
                 skip=(lambda fn: os.path.splitext(fn)[1] == ".pyc",), mode="workers"):
        _no_nanny(restart_workers)
        if mode != "workers":
            raise ValueError(f"mode={mode!r}: dask_ipy copies a directory to the "
                             f"workers only (mode='workers')")
        path = os.path.abspath(os.path.expanduser(path))
        self.dirname = os.path.basename(path)
        self.update_path = update_path
        self.name = f"upload-directory-{self.dirname}"
        self.data = zip_directory(path, skip_words, skip)

    def setup(self, worker):
        target = os.path.join(worker.local_directory, self.dirname)
        _extract(self.data, target)
        if self.update_path:
            if target in sys.path:
                sys.path.remove(target)
            sys.path.insert(0, target)
            importlib.invalidate_caches()


def zip_directory(path, skip_words, skip):
    """The files under ``path`` (those not skipped) as the bytes of a zip archive,
    named relative to ``path``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for root, _, files in os.walk(path):
            for file in files:
                full = os.path.join(root, file)
                rel = os.path.relpath(full, path)
                if any(word in rel.split(os.sep) for word in skip_words) or \
                        any(f(full) for f in skip):
                    continue
                z.write(full, rel)
    return buffer.getvalue()


def _extract(data, target):
    """Unpack the archive ``data`` as the directory ``target``, replacing what was
    there: unpacked beside it first, then renamed into place, so that a worker
    sharing the directory never sees half of it."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    fresh = tempfile.mkdtemp(prefix=".upload-", dir=parent)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        z.extractall(fresh)
    old = None
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=".replaced-", dir=parent)
        try:
            os.replace(target, os.path.join(old, "dir"))
        except OSError:
            pass                       # another worker moved it away first
    try:
        os.replace(fresh, target)
    except OSError:                    # another worker put its copy there meanwhile
        shutil.rmtree(fresh, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class InstallPlugin(WorkerPlugin):
    """Install software on every worker, now and on those that join or restart
    later: ``install_fn()`` (idempotent), one worker of a host at a time.  The
    worker starts no task meanwhile (it still heartbeats and serves its data)."""

    idempotent = True

    def __init__(self, install_fn, restart_workers=False):
        _no_nanny(restart_workers)
        self.install_fn = install_fn
        self.name = f"{type(self).__name__}-{uuid.uuid4()}"

    def setup(self, worker):
        import fcntl

        lock = f"dask-ipy-install-{os.getuid()}.lock"       # one per host and user
        with open(os.path.join(tempfile.gettempdir(), lock), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self.install_fn()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class PipInstaller:
    """``python -m pip install`` of ``packages`` (requirement lines) with
    ``pip_options``, in the worker's Python; RuntimeError with pip's message if it
    fails."""

    def __init__(self, packages, pip_options=None):
        self.packages = list(packages)
        self.pip_options = list(pip_options or ())

    def __call__(self):
        logging.getLogger("dask_ipy").info("pip installing %s", self.packages)
        # The packages go through a requirements file, where pip expands
        # environment variables (tokens of private indexes).
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
            requirements.write("\n".join(self.packages))
            requirements.flush()
            done = subprocess.run([sys.executable, "-m", "pip", "install",
                                   *self.pip_options, "-r", requirements.name],
                                  capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip install failed: {done.stderr.strip()}")


class PipInstall(InstallPlugin):
    """``pip install`` ``packages`` on every worker, with ``pip_options``
    (``client.register_plugin(PipInstall(["scikit-learn"], ["--upgrade"]))``)."""

    def __init__(self, packages, pip_options=None, restart_workers=False):
        super().__init__(PipInstaller(packages, pip_options), restart_workers)


# ---------------------------------------------------------------- get_task_metadata

FINAL = ("memory", "erred")


class TaskMetadata(SchedulerPlugin):
    """What `get_task_metadata` collects in the scheduler: of the keys clients ask
    for (``update_graph``) while it is registered, the final state ("memory" or
    "erred") each reaches, and its metadata (None: dask_ipy keeps no metadata per
    task).  A key in a final state already when asked for is left out: it reaches
    none meanwhile."""

    def __init__(self):
        self.keys = set()          # asked for, no final state reached yet
        self.metadata = {}
        self.state = {}

    def update_graph(self, scheduler, *, keys, **kwargs):
        tasks = scheduler.tasks
        self.keys.update(k for k in keys if k in tasks and tasks[k].state not in FINAL)

    def transition(self, key, start, finish, *args, **kwargs):
        if finish in FINAL and key in self.keys:
            self.keys.discard(key)
            self.metadata[key] = None
            self.state[key] = finish


def take_task_metadata(name, dask_scheduler):
    """Unregister the `TaskMetadata` plugin ``name``; what it collected (run in the
    scheduler)."""
    plugin = dask_scheduler.plugins.get(name)
    if not isinstance(plugin, TaskMetadata):
        raise ValueError(f"no task metadata is collected under {name!r}")
    dask_scheduler.plugin_host.remove(name)
    return {"metadata": plugin.metadata, "state": plugin.state}


# ---------------------------------------------------------------- forward_logging

def record_fields(record):
    """A log record as plain data (msgpack), its message formatted and its
    exception as text: the scheduler and the client unpickle nothing of it."""
    fields = {k: v for k, v in vars(record).items()
              if isinstance(v, (str, int, float, bool, type(None)))}
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info:
        fields["exc_text"] = "".join(traceback.format_exception(*record.exc_info))
    fields.pop("exc_info", None)
    return fields


class _Forwarder(logging.Handler):
    def __init__(self, worker, topic, level):
        super().__init__(level)
        self.worker = worker
        self.topic = topic

    def emit(self, record):
        if record.name == "dask_ipy" or record.name.startswith("dask_ipy."):
            return           # the worker's own words would echo through its sending
        try:
            self.worker.log_event(self.topic, record_fields(record))
        except Exception:
            self.handleError(record)


class ForwardLogging(WorkerPlugin):
    """Send the records of logger ``logger_name`` (the root: None) on the workers,
    at ``level`` or above, to the clients that asked for them."""

    def __init__(self, logger_name=None, level=logging.NOTSET, topic=FORWARD_LOGGING):
        self.logger_name = logger_name
        self.level = level
        self.topic = topic
        self.name = f"forward-logging-{logger_name or ''}"
        self.handlers = {}

    def setup(self, worker):
        handler = self.handlers[id(worker)] = _Forwarder(worker, self.topic, self.level)
        logging.getLogger(self.logger_name).addHandler(handler)

    def teardown(self, worker):
        handler = self.handlers.pop(id(worker), None)
        if handler is not None:
            logging.getLogger(self.logger_name).removeHandler(handler)

    def __getstate__(self):
        return {k: v for k, v in vars(self).items() if k != "handlers"}

    def __setstate__(self, state):
        vars(self).update(state, handlers={})


def handle_forwarded(event):
    """A forwarded record, handled by the client's logger of the same name."""
    _, fields = event
    record = logging.makeLogRecord(fields)
    logging.getLogger(record.name).handle(record)
