"""dask_ipy's settings in dask.config, with their defaults in one place.

    import dask
    dask.config.get("dask-ipy.worker.memory.pause")          # 0.8
    with dask.config.set({"dask-ipy.worker.memory.target": 0.5}):
        w = Worker(...)

Importing this module registers the defaults (dask_ipy registers them as soon as a
worker or client module loads; a scheduler process never imports dask).  Worker and
client read the settings when they start; the scheduler is told what it needs.

Memory fractions are of a worker's memory limit; ``False`` turns a step off:

    target     the results a worker holds (by dask's `sizeof`) are kept below this;
               the least recently used ones go to disk
    spill      when the whole process (RSS) passes this, results go to disk until it
               is back under ``target``
    pause      the worker starts no new task while the process is past this; it keeps
               serving its data to peers and spilling, and resumes below it
    terminate  a task whose process passes this is stopped (see the README's memory
               section: a ``dask-ipy worker`` restarts, a worker in an engine
               interrupts its running tasks)
"""

from __future__ import annotations

import json

import dask

from . import stories

DEFAULTS = {
    "dask-ipy": {
        "worker": {
            "memory": {
                "target": 0.6,
                "spill": 0.7,
                "pause": 0.8,
                "terminate": 0.95,
                # seconds between two samples of the process's memory
                "monitor-interval": 0.05,
                # a paused worker resumes once its memory is this far under `pause`
                "resume-margin": 0.05,
            },
            # threads of BLAS/OpenMP pools inside a task: "auto" (the worker's share
            # of the host's cores divided by its task threads), a number, or False
            # to leave the libraries alone
            "blas-threads": "auto",
            # record every task (start, stop, thread, inputs fetched) for the task
            # stream and performance reports
            "task-stream": True,
            # transitions of tasks kept for `Client.story` (0: none; None: 10,000)
            "transition-log-length": None,
            # sample the stacks of the threads running tasks, for Client.profile
            "profile": {
                "enabled": True,
                "interval": "10ms",       # between two samples
                "cycle": "1s",            # samples are kept per cycle of this length
                "history": 1000,          # cycles kept (those with samples only)
            },
        },
        "client": {
            # seconds a worker may stay paused before clients and the widget warn
            "paused-warning": 60,
        },
        "scheduler": {
            # transitions kept for `Client.story` (0: none; None: 10,000)
            "transition-log-length": None,
            # workers a task may see die while it runs on them before it ends in
            # KilledWorker (None: dask.distributed's setting, else 3)
            "allowed-failures": None,
        },
    }
}

dask.config.update_defaults(DEFAULTS)

FRACTIONS = ("target", "spill", "pause", "terminate")
MAX_INHERITED = 120_000        # characters: Linux takes 128 KiB per variable


def get(name):
    """``dask.config.get("dask-ipy." + name)``, defaults registered."""
    return dask.config.get("dask-ipy." + name)


def memory_fractions(**overrides):
    """{target, spill, pause, terminate} from dask.config; a given value (not None)
    wins; False (or None in the config) turns a step off.

    A dask.distributed user's ``distributed.worker.memory.*`` is honoured where the
    ``dask-ipy`` one is left at its default (dask.distributed's defaults are the
    same numbers, so its registered defaults change nothing)."""
    defaults = DEFAULTS["dask-ipy"]["worker"]["memory"]
    out = {}
    for name in FRACTIONS:
        value = overrides.get(name)
        if value is None:
            value = get(f"worker.memory.{name}")
            if value == defaults[name]:
                value = dask.config.get(f"distributed.worker.memory.{name}", value)
        out[name] = False if value is None or value is False else float(value)
    return out


def profile_settings():
    """(interval, cycle) in seconds and the cycles kept, or None if the workers do
    not sample, from dask.config."""
    from dask.utils import parse_timedelta

    if not get("worker.profile.enabled"):
        return None
    return (float(parse_timedelta(get("worker.profile.interval"), "s")),
            float(parse_timedelta(get("worker.profile.cycle"), "s")),
            int(get("worker.profile.history")))


def distributed_setting(*names):
    """The first of dask.distributed's settings ``names`` that is set to something
    else than the default dask.distributed registers when it is imported; None if
    none is.  (Its defaults are not ours: only what a user set counts.)"""
    for name in names:
        value = dask.config.get(name, None)
        if value is not None and not any(
                dask.config.get(name, None, config=d) == value
                for d in dask.config.defaults):
            return value
    return None


def transition_log_length(role):
    """How many transitions the scheduler or a worker (``role``) keeps for `story`:
    ``dask-ipy.<role>.transition-log-length``, else dask.distributed's
    ``distributed.admin.low-level-log-length`` (formerly
    ``distributed.scheduler.transition-log-length``, the name dask.config keeps
    while dask.distributed is not imported), else 10,000."""
    value = get(f"{role}.transition-log-length")
    if value is None:
        value = distributed_setting("distributed.admin.low-level-log-length",
                                    "distributed.scheduler.transition-log-length")
    return stories.LENGTH if value is None else int(value)


def allowed_failures():
    """How many workers a task may see die under it before the scheduler gives up
    on it: ``dask-ipy.scheduler.allowed-failures``, else dask.distributed's
    ``distributed.scheduler.allowed-failures``, else None (the scheduler's default,
    3)."""
    value = get("scheduler.allowed-failures")
    if value is None:
        value = distributed_setting("distributed.scheduler.allowed-failures")
    return None if value is None else int(value)


def task_durations():
    """(seconds, {task prefix: seconds}): what tasks of a group not measured yet are
    expected to take, from dask.distributed's settings
    ``distributed.scheduler.unknown-task-duration`` (None where not set: the
    scheduler's 0.5 s) and ``distributed.scheduler.default-task-durations`` (by
    dask's `key_split` of the key; added to the scheduler's, dask.distributed's
    defaults)."""
    from dask.utils import parse_timedelta

    unknown = dask.config.get("distributed.scheduler.unknown-task-duration", None)
    by_prefix = dask.config.get("distributed.scheduler.default-task-durations", None)
    return (None if unknown is None else float(parse_timedelta(unknown, "s")),
            {str(prefix): float(parse_timedelta(value, "s"))
             for prefix, value in (by_prefix or {}).items()})


def scheduler_flags():
    """The ``dask-ipy scheduler`` options that carry this process's settings to a
    scheduler it starts (a scheduler process does not read dask.config)."""
    flags = ["--transition-log-length", str(transition_log_length("scheduler"))]
    failures = allowed_failures()
    if failures is not None:
        flags += ["--allowed-failures", str(failures)]
    unknown, by_prefix = task_durations()
    if unknown is not None:
        flags += ["--unknown-task-duration", repr(unknown)]
    if by_prefix:
        flags += ["--default-task-durations", json.dumps(by_prefix)]
    return flags


def inherited_env():
    """{"DASK_INTERNAL_INHERIT_CONFIG": ...}: dask's way to hand this process's
    dask.config (as it is now, ``dask.config.set`` blocks included) to a child
    process, which applies it as it imports dask.  A value that cannot be written
    as JSON stays here: the ``scheduler`` a Client set (a child has its own) goes
    silently, any other with a warning; {} if the rest is too long."""
    from .log import logger

    dropped = []
    tree = _json_ready(dask.config.config, (), dropped)
    if [path for path in dropped if path not in (("scheduler",), ("get",))]:
        logger.warning("dask.config not wholly handed to the cluster's processes: "
                       "%s cannot be written as JSON",
                       ", ".join(".".join(path) for path in dropped))
    text = dask.config.serialize(tree)
    if len(text) <= MAX_INHERITED:
        return {"DASK_INTERNAL_INHERIT_CONFIG": text}
    logger.warning("dask.config not handed to the cluster's processes: %d "
                   "characters, more than an environment variable holds", len(text))
    return {}


def _json_ready(tree, path, dropped):
    """``tree`` without the values JSON cannot hold; their paths go to
    ``dropped``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _json_ready(value, (*path, str(key)), dropped)
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            dropped.append((*path, str(key)))
        else:
            out[key] = value
    return out


def paused_warning():
    """Seconds a worker may stay paused before a warning, from dask.config."""
    from dask.utils import parse_timedelta

    value = get("client.paused-warning")
    return None if value in (None, False) else float(parse_timedelta(value, "s"))
