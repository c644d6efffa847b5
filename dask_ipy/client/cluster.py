"""The client's hold on the cluster itself: code and set-up on workers (`run`,
`call_stack`, `story`, `upload_file`, `register_plugin`), code in the scheduler
(`run_on_scheduler`, scheduler plugins), its workers (`wait_for_workers`,
`restart`, `retire_workers`, `restart_workers`, `rebalance`, `replicate`,
`processing`, `adaptive_target`, `forward_logging`), and its state (`nbytes`,
`dump_cluster_state`), with dask.distributed's names, arguments and return values.

`ClusterMethods` is part of `Client` and uses only its public face: each method
builds an operation (see `waits`) that `Client.run_op` runs blocking or as a
coroutine, over the requests of `ClientShell.request_op`.  The scheduler decides and
moves the data (`scheduler.moves`); here are only the requests and their answers.
"""

from __future__ import annotations

import logging
import time

from dask.utils import parse_timedelta

from .. import dump, messages, profiling, versions
from ..errors import WorkerStartTimeoutError, rebuild_error
from ..plugins import (FORWARD_LOGGING, ForwardLogging, SetupCallback, UploadFile,
                       handle_forwarded, plugin_kind, plugin_name)
from ..protocol import serialize
from ..stories import worker_story
from .futures import Acknowledgement, Future, Waiter, futures_of, load, seconds
from .waits import done, then

RESTART_TIMEOUT = 60.0      # seconds restart_workers waits for the workers to return


def worker_names(workers):
    """Workers as a list of addresses or names (None: all workers)."""
    if workers is None:
        return None
    if isinstance(workers, str):
        return [workers]
    return list(workers)


def worker_filter(workers):
    """`worker_names` for the requests that pick workers by a name as the scheduler
    keeps it (`run`, `scatter`): a name that is not text goes as itself and as
    text, since a worker process's name (``0`` of a `LocalCluster`) reaches the
    scheduler as text."""
    names = worker_names(workers)
    if names is None:
        return None
    return [form for w in names for form in ([w] if isinstance(w, str) else [w, str(w)])]


def _path(key):
    """A metadata key as a path of names."""
    return [key] if isinstance(key, (str, int)) else list(key)


def _stored(value):
    """A metadata value as the scheduler keeps it: a plain dict as a dict of its
    items, so that a longer path reaches into it; anything else serialized."""
    if type(value) is dict and all(isinstance(k, (str, int)) for k in value):
        return {name: _stored(v) for name, v in value.items()}
    return serialize(value)


def _loaded(node, client):
    """A metadata value: nested dicts whose leaves the clients serialized."""
    if isinstance(node, dict):
        return {name: _loaded(v, client) for name, v in node.items()}
    return load(node, client)


def _raise(record):
    exc, tb = rebuild_error(record)
    raise exc.with_traceback(tb)


def run_results(reply, on_error, client):
    """{worker address: result} of a "run" request's reply; an error raised
    (``on_error="raise"``), returned as the worker's result ("return"), or that
    worker left out ("ignore")."""
    out = {}
    for address, r in reply["results"].items():
        if r.get("status") == "OK":
            out[address] = load(r["result"], client)
        elif on_error == "raise":
            _raise(r)
        elif on_error == "return":
            out[address] = rebuild_error(r)[0]
    return out


class ClusterMethods:
    """Part of `Client`: the cluster as a whole (see the module docstring)."""

    # ---------------------------------------------------------------- code on workers

    def run(self, function, *args, workers=None, wait=True, nanny=False,
            on_error="raise", **kwargs):
        """Run ``function(*args, **kwargs)`` on workers, outside the task system:
        ``{worker address: result}``.  A function taking ``dask_worker`` gets the
        `Worker`.  ``on_error``: "raise" the first error, "return" it as the
        worker's result, or "ignore" that worker.  ``wait=False``: return at once
        (None), the results are dropped.  ``nanny=True`` (run in the process that
        watches each worker) is refused: a worker's supervisor takes no calls."""
        if nanny:
            raise NotImplementedError("run(nanny=True) is not supported: a worker's "
                                      "supervisor runs no code of yours; run it on "
                                      "the workers themselves")
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(f"on_error must be 'raise', 'return' or 'ignore', "
                             f"not {on_error!r}")
        msg = {"op": "run", "function": serialize((function, args, kwargs)),
               "workers": worker_filter(workers)}
        if msg["workers"] == []:          # no worker asked: none runs it
            return self.run_op(done({} if wait else None))
        if not wait:                  # sent; its answer is dropped when it comes
            self.shell.request_future(msg)
            return self.run_op(done())
        return self.run_op(self._run_op(msg, on_error))

    def _run_op(self, msg, on_error):
        reply = yield from self.shell.request_op(msg)
        return run_results(reply, on_error, self)

    def call_stack(self, futures=None, keys=None):
        """Where the tasks running now are: ``{worker address: {key: [frames as
        text, outermost first]}}``, of the tasks of ``futures`` (Futures or
        collections) and ``keys``, or of every running task if neither is given.
        Workers running none of them are left out."""
        keys = list(keys or ())
        if futures is not None:
            keys += [f.key for f in self.futures_of(futures)]
        op = self._run_op({"op": "run", "workers": None, "function": serialize(
            (profiling.worker_call_stacks, (keys or None,), {}))}, "raise")
        return self.run_op(then(op, lambda found: {
            address: stacks for address, stacks in found.items() if stacks}))

    def story(self, *keys_or_stimuli, on_error="raise"):
        """What the cluster did with these keys (or Futures) or stimulus ids, as
        dask.distributed's story: the scheduler's transitions, ``("scheduler", key,
        start, finish, recommendations, stimulus_id, time)``, then each worker's by
        address, ``(address, key, start, state asked for, state reached,
        recommendations, stimulus_id, time)``, each oldest first (see stories.py).
        ``on_error="ignore"``: leave out the workers whose answer is an error."""
        if on_error not in ("raise", "ignore"):
            raise ValueError(f"on_error must be 'raise' or 'ignore', not {on_error!r}")
        names = [k.key if isinstance(k, Future) else k for k in keys_or_stimuli]
        return self.run_op(self._story_op(names, on_error))

    def _story_op(self, names, on_error):
        lines = yield from self.shell.request_op({"op": "get-story", "keys": names})
        found = yield from self._run_op({"op": "run", "workers": None, "function":
                                         serialize((worker_story, tuple(names), {}))},
                                        on_error)
        return [("scheduler", *line) for line in lines] + [
            (address, *line) for address, told in sorted(found.items())
            for line in told]

    def run_on_scheduler(self, function, *args, **kwargs):
        """Run ``function(*args, **kwargs)`` in the scheduler process (on its I/O
        thread, so it sees a steady state); a function taking ``dask_scheduler`` gets
        the `Scheduler`.  Its result comes back pickled."""
        return self.run_op(self._on_scheduler_op(function, args, kwargs))

    def _on_scheduler_op(self, function, args, kwargs):
        reply = yield from self.shell.request_op(
            {"op": "run-on-scheduler", "function": serialize((function, args, kwargs))})
        return self._scheduler_result(reply)

    def _scheduler_result(self, reply):
        if reply.get("status") != "OK":
            _raise(reply)
        return load(reply["result"], self) if "result" in reply else None

    def get_versions(self, check=False, packages=None):
        """Versions of Python and of the main packages in the client, the scheduler
        and each worker: ``{"client": v, "scheduler": v, "workers": {address: v}}``,
        each ``{"host": {...}, "packages": {name: version}}``.  ``check``: raise
        ValueError if those that must agree (`versions.REQUIRED`, and ``packages``)
        differ anywhere."""
        packages = tuple(packages or ())

        def op():
            scheduler = yield from self._on_scheduler_op(versions.versions, (packages,), {})
            workers = yield from self._run_op(
                {"op": "run", "function": serialize((versions.versions, (packages,), {})),
                 "workers": None}, "raise")
            report = {"scheduler": scheduler, "workers": workers,
                      "client": versions.versions(packages)}
            differ = versions.mismatches(report, packages) if check else None
            if differ:
                raise ValueError("versions differ: " + "; ".join(
                    f"{name} {seen}" for name, seen in sorted(differ.items())))
            return report
        return self.run_op(op())

    def register_plugin(self, plugin, name=None, idempotent=None):
        """Register a worker plugin (set up on every worker now, and on every worker
        that joins or restarts later; ``{address: {"status": "OK"}}``) or a scheduler
        plugin (started in the scheduler process; None).  A plugin registered under
        a name in use replaces the old one (torn down first), unless it is
        ``idempotent``: then nothing changes."""
        kind = plugin_kind(plugin)
        name = plugin_name(plugin, name)
        if idempotent is None:
            idempotent = bool(getattr(plugin, "idempotent", False))
        blob = serialize(plugin)
        if kind == "scheduler":
            op = self.shell.request_op({"op": "register-scheduler-plugin", "name": name,
                                        "plugin": blob, "idempotent": idempotent})
            return self.run_op(then(op, self._scheduler_result))
        op = self.shell.request_op({"op": "register-worker-plugin", "name": name,
                                    "plugin": blob, "idempotent": idempotent})
        return self.run_op(then(op, self._plugin_results))

    @staticmethod
    def _plugin_results(reply):
        if "unknown" in reply:
            # worded as dask.distributed's, which code may match
            raise ValueError(f"The worker plugin {reply['unknown']} does not exist")
        for r in reply["results"].values():
            if r.get("status") != "OK":
                _raise(r)
        return dict(reply["results"])

    def register_worker_callbacks(self, setup=None):
        """Run ``setup()`` (``setup(dask_worker=worker)`` if it takes that argument)
        on every worker now and on every worker that joins or restarts later, after
        those registered before: a worker plugin (`SetupCallback`).  ``{address:
        {"status": "OK"}}``."""
        return self.register_plugin(SetupCallback(setup))

    def unregister_worker_plugin(self, name, nanny=None):
        """Tear a worker plugin down on every worker and forget it."""
        op = self.shell.request_op({"op": "unregister-worker-plugin", "name": name})
        return self.run_op(then(op, self._plugin_results))

    def unregister_scheduler_plugin(self, name):
        op = self.shell.request_op({"op": "unregister-scheduler-plugin", "name": name})
        return self.run_op(then(op, self._scheduler_result))

    def upload_file(self, filename, load=True):
        """Send a file to every worker, now and later: saved in a directory of its
        own on ``sys.path`` and, with ``load``, imported (reloaded if it was imported
        before) if it is a .py, .zip or .egg file; any other file is only saved, as
        with dask.distributed.  ``{address: {"status": "OK"}}``."""
        load = load and str(filename).endswith((".py", ".zip", ".egg"))
        return self.register_plugin(UploadFile(filename, load=load))

    def subscribe_topic(self, topic, handler):
        """Call ``handler((time, msg))`` (on the client's I/O thread) for each event
        of ``topic`` a worker logs (`Worker.log_event`)."""
        self.shell.subscribe_topic(topic, handler)

    def unsubscribe_topic(self, topic):
        """Stop calling the handler of ``topic``; ValueError if there is none, as
        dask.distributed's."""
        if topic not in self.shell.topic_handlers:
            raise ValueError(f"No event handler known for topic {topic}")
        self.shell.unsubscribe_topic(topic)

    def log_event(self, topic, msg):
        """Log ``msg`` (msgpack-able data) under ``topic`` (or each of a list of
        topics) at the scheduler, with the time: kept among the topic's latest
        events (`get_events`) and sent to the topic's subscribers."""
        self.shell.send({"op": "log-event",
                         **messages.log_event_fields(topic, msg, time.time())})
        if self.asynchronous:
            return Acknowledgement.sent("log-event")     # awaitable, as there

    def get_events(self, topic=None):
        """The latest events of ``topic`` as ``((time, msg), ...)``, or of every
        topic as ``{topic: ((time, msg), ...)}``."""
        op = self.shell.request_op({"op": "info", "what": "events", "topic": topic})

        def shaped(events):
            if topic is not None:
                return tuple(map(tuple, events))
            return {t: tuple(map(tuple, kept)) for t, kept in events.items()}
        return self.run_op(then(op, shaped))

    def set_metadata(self, key, value):
        """Keep ``value`` at the scheduler under ``key``, a name or a list of names
        (a path into nested dicts), for every client."""
        keys = _path(key)
        if not keys:
            raise ValueError("set_metadata needs a key")
        op = self.shell.request_op({"op": "set-metadata", "keys": keys,
                                    "value": _stored(value)})
        return self.run_op(then(op, lambda _: None))

    def get_metadata(self, keys, default=KeyError):
        """What `set_metadata` keeps under ``keys`` (a name or a path); KeyError, or
        ``default``, if nothing is."""
        op = self.shell.request_op({"op": "info", "what": "get-metadata",
                                    "keys": _path(keys)})

        def value(found):
            if found.get("through"):        # as dask.distributed's, default or not
                raise TypeError(f"metadata {keys!r}: a value on that path is not "
                                "a dict")
            if "value" not in found:
                if default is KeyError:
                    raise KeyError(keys)
                return default
            return _loaded(found["value"], self)
        return self.run_op(then(op, value))

    def forward_logging(self, logger_name=None, level=logging.NOTSET):
        """Records of logger ``logger_name`` (None: the root) on the workers, at
        ``level`` or above, are handled by the logger of the same name here."""
        self.subscribe_topic(FORWARD_LOGGING, handle_forwarded)
        return self.register_plugin(ForwardLogging(logger_name, level))

    def unforward_logging(self, logger_name=None):
        return self.unregister_worker_plugin(ForwardLogging(logger_name).name)

    # ---------------------------------------------------------------- its state

    def nbytes(self, keys=None, summary=True, **kwargs):
        """The bytes (by dask's ``sizeof``) of the results on the cluster:
        ``{key: bytes}`` of ``keys`` (KeyError for one the scheduler does not know;
        -1: not computed yet), or of every result whose size is known; with
        ``summary``, summed by key prefix (``{"inc": 84}``)."""
        return self.run_op(self._on_scheduler_op(dump.task_sizes, (keys, summary), {}))

    def dump_cluster_state(self, filename="dask-cluster-dump", write_from_scheduler=None,
                           exclude=(), format="msgpack", **storage_options):
        """Write the state of the scheduler and of every worker, for debugging, to
        ``filename`` + ".msgpack.gz" (gzipped msgpack) or ".yaml" (``format``):
        ``{"scheduler": {...}, "workers": {address: {...}}, "versions":
        {"scheduler": ..., "workers": {address: ...}}}`` (see `dump`).  A worker that
        fails to answer has ``{"error": text}``.  ``exclude``: names of entries to
        leave out, at any depth.  The client writes the file, to a local path."""
        if format not in dump.FORMATS:
            raise ValueError(f"Unsupported format {format!r}: 'msgpack' or 'yaml'")
        if write_from_scheduler or storage_options or "://" in str(filename):
            raise ValueError("dump_cluster_state writes a local file, from the client "
                             "(no write_from_scheduler, URLs or storage_options)")
        return self.run_op(self._dump_op(filename, set(exclude), format))

    def _dump_op(self, filename, exclude, format):
        scheduler = yield from self._on_scheduler_op(dump.scheduler_state, (), {})
        workers = yield from self._run_op(
            {"op": "run", "function": serialize((dump.worker_state, (), {})),
             "workers": None}, "return")
        workers = {a: {"error": f"{type(w).__name__}: {w}"}
                   if isinstance(w, BaseException) else w for a, w in workers.items()}
        state = {"scheduler": scheduler, "workers": workers,
                 "versions": {"scheduler": scheduler.pop("versions"),
                              "workers": {a: w.pop("versions", None)
                                          for a, w in workers.items()}}}
        dump.write(dump.drop_names(state, exclude), filename, format)

    # ---------------------------------------------------------------- workers

    def wait_for_workers(self, n_workers, timeout=None):
        """Block (or, asynchronously, wait) until ``n_workers`` workers run;
        `WorkerStartTimeoutError` (a TimeoutError) after ``timeout`` (seconds, or a
        string such as ``"500ms"``)."""
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, not {n_workers!r}")
        return self.run_op(self._wait_for_workers_op(n_workers, timeout))

    def _wait_for_workers_op(self, n_workers, timeout):
        reply = yield from self.shell.request_op({"op": "wait-for-workers",
                                                  "n": n_workers,
                                                  "timeout": seconds(timeout)})
        if not reply["ok"]:
            raise WorkerStartTimeoutError(reply["workers"], n_workers, timeout)

    def restart(self, timeout=30, wait_for_workers=True):
        """Forget every task and drop all data on the workers; with
        ``wait_for_workers``, then wait until as many workers run (take tasks) as
        before (TimeoutError after ``timeout`` seconds).

        The worker processes stay: a task already running finishes on its thread (a
        Python thread cannot be stopped) and its result is dropped; the worker runs
        new tasks on its other threads meanwhile, and on that one once it is free.
        Returns None, as the client's Futures made before are all gone."""
        return self.run_op(self._restart_op(seconds(timeout), wait_for_workers))

    def _restart_op(self, timeout, wait_for_workers):
        running = 0                    # workers taking tasks (not paused, not retiring)
        if wait_for_workers:
            info = yield from self.shell.request_op(
                {"op": "info", "what": "scheduler-info"}, timeout=timeout)
            running = sum(w["status"] == "running" for w in info["workers"].values())
        yield from self.shell.request_op({"op": "restart"}, timeout)
        if running:
            yield from self._wait_for_workers_op(running, timeout)

    def processing(self, workers=None):
        """The keys each worker has been given to run (queued there or running):
        ``{address: (key, ...)}``."""
        op = self.shell.request_op({"op": "info", "what": "processing",
                                    "workers": worker_names(workers)})
        return self.run_op(then(op, lambda r: {k: tuple(v) for k, v in r.items()}))

    def adaptive_target(self, target_duration="5s", minimum=0, maximum=None):
        """What adaptivity asks every interval (`LocalCluster.adapt`): how many
        workers the scheduler wants for the work it has, so that it takes about
        ``target_duration`` (dask.distributed's `Scheduler.adaptive_target`), kept
        within ``minimum`` and ``maximum`` (None: no maximum), and the addresses of
        the workers to retire to get there, cheapest first: ``{"target": n,
        "retire": [address, ...]}``."""
        seconds = parse_timedelta(target_duration, "s")
        if not seconds or seconds <= 0:
            raise ValueError(f"target_duration must be positive, not "
                             f"{target_duration!r}")
        return self.run_op(self.shell.request_op(
            {"op": "adaptive-target", "target_duration": float(seconds),
             "minimum": minimum, "maximum": maximum}))

    def retire_workers(self, workers=None, close_workers=True, remove=True, names=None,
                       **kwargs):
        """Retire workers gracefully: no new tasks go to them, their queued tasks go
        elsewhere, their running tasks end there, their unique data is copied to the
        workers that stay, and then they leave (``remove``) and close
        (``close_workers``; a worker in an ipyparallel engine closes, the engine
        stays).  Nothing is recomputed.  ``{address: what it was}`` of the retired
        workers; with neither ``workers`` nor ``names``, the idle ones."""
        op = self.shell.request_op({"op": "retire-workers",
                                    "workers": worker_names(workers),
                                    "names": worker_names(names), "close": close_workers,
                                    "remove": remove})
        return self.run_op(then(op, dict))

    def restart_workers(self, workers, timeout=None, raise_for_error=True):
        """Restart workers in place: each drops its tasks and data, tears its plugins
        down and registers again at its address, where its plugins are set up anew;
        the process (an ipyparallel engine) stays.  ``{worker as named: "OK" |
        "timed out"}``; TimeoutError unless all are "OK" with ``raise_for_error``;
        KeyError if a worker is not known."""
        names = worker_names(workers)
        timeout = RESTART_TIMEOUT if timeout is None else timeout

        def check(result):
            unknown = [name for name in names if result[name] == "unknown"]
            if unknown:
                raise KeyError(unknown[0])
            if raise_for_error and any(v != "OK" for v in result.values()):
                raise TimeoutError(f"workers not restarted within {timeout} s: "
                                   f"{ {k: v for k, v in result.items() if v != 'OK'} }")
            return {name: result[name] for name in names}
        op = self.shell.request_op({"op": "restart-workers", "workers": names,
                                    "timeout": timeout})
        return self.run_op(then(op, check))

    def replicate(self, futures, n=None, workers=None, branching_factor=2, **kwargs):
        """Keep copies of the Futures' data on ``n`` workers (all: None), among
        ``workers`` if given: missing copies are fetched from the holders, extra
        ones dropped.  Waits for the Futures first.  ``futures`` as `futures_of`
        finds them (in a structure, behind collections); a cancelled one is an
        error."""
        if (n is not None and n < 1) or worker_names(workers) == []:
            raise ValueError(f"replicate keeps at least one copy: n={n!r} and "
                             f"workers={workers!r} leave none")
        return self.run_op(self._move_op(futures_of(futures, client=self), {
            "op": "replicate", "n": n, "workers": worker_names(workers)}))

    def rebalance(self, futures=None, workers=None, **kwargs):
        """Move data so that the workers (``workers``, or all) hold about as many
        bytes each: the Futures' data, or all data.  KeyError if some of it cannot
        be moved.  ``futures`` as `futures_of` finds them; a cancelled one is an
        error."""
        fs = None if futures is None else futures_of(futures, client=self)
        if fs == [] or worker_names(workers) == []:     # nothing to move
            return self.run_op(done())
        return self.run_op(self._move_op(fs, {"op": "rebalance",
                                              "workers": worker_names(workers)}))

    def _move_op(self, fs, msg):
        if fs is not None:
            yield from Waiter(fs).wait_op()
            msg["keys"] = [f.key for f in fs]
        else:
            msg["keys"] = None
        reply = yield from self.shell.request_op(msg)
        if reply.get("status") == "partial-fail" and msg["op"] == "rebalance":
            raise KeyError(f"Could not rebalance keys: {reply['keys']}")
