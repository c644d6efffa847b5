"""The scheduler's plugins and `run_on_scheduler`: user code in the scheduler
process, run only on a client's explicit (authenticated) request.

    client ── "register-scheduler-plugin" ──▶ Scheduler ──▶ SchedulerPlugins.add:
                                              unpickle, start(scheduler)
    SchedulerState.plugin_events ───────────▶ SchedulerPlugins.dispatch: the first
                                              flush hook of the shell's loop while
                                              there are plugins

The state machine stays pure: it only reports what happened (a list of events, kept
only while there are plugins) and the shell calls the plugins on its I/O thread after
each batch of messages, so a plugin sees a steady state.  Everything else the
scheduler receives it still forwards unopened; this module imports no dask, and
neither does the scheduler process unless a plugin's own code does.
"""

from __future__ import annotations

from ..errors import error_payload
from ..log import logger
from ..plugins import accepts, call
from ..protocol import deserialize, serialize

STIMULUS = "dask-ipy"      # the stimulus_id plugins get: events carry no cause here


class SchedulerPlugins:
    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.plugins = {}          # {name: plugin}, in the order they came

    def add(self, name, blob, idempotent=False):
        """Start the plugin pickled in ``blob`` under ``name`` (closing the one it
        replaces); the answer for the client."""
        if name in self.plugins and idempotent:
            return {"status": "OK"}
        try:
            plugin = deserialize(blob)
            self.remove(name)
            if hasattr(plugin, "start"):
                call(plugin.start, self.scheduler)
        except Exception as e:
            logger.exception("scheduler: plugin %r failed to start", name)
            return {"status": "error", **error_payload(e, e.__traceback__)}
        self.plugins[name] = plugin
        if self.scheduler.state.plugin_events is None:
            self.scheduler.state.plugin_events = []
            # Plugins hear of each batch's events before the batch's messages leave
            # (the first flush hook); a scheduler without plugins pays nothing.
            self.scheduler.loop.flush_hooks.insert(0, self.dispatch)
        return {"status": "OK"}

    def remove(self, name):
        plugin = self.plugins.pop(name, None)
        if not self.plugins and self.scheduler.state.plugin_events is not None:
            self.scheduler.state.plugin_events = None
            self.scheduler.loop.flush_hooks.remove(self.dispatch)
        if plugin is None:
            return False
        for hook in ("before_close", "close"):
            self._call(plugin, hook)
        return True

    def close(self):
        for name in reversed(list(self.plugins)):
            self.remove(name)

    def _call(self, plugin, hook, *args, **kwargs):
        fn = getattr(plugin, hook, None)
        if fn is None:
            return
        try:
            call(fn, *args, **kwargs)
        except Exception:
            logger.exception("scheduler: plugin %r failed in %s", plugin, hook)

    def dispatch(self):
        """Hand the events the state machine reported to every plugin."""
        state = self.scheduler.state
        if not state.plugin_events:
            return
        events, state.plugin_events = state.plugin_events, []
        s = self.scheduler
        for event in events:
            kind = event[0]
            for plugin in list(self.plugins.values()):
                if kind == "transition":
                    _, key, start, finish, *ended = event
                    self._call(plugin, "transition", key, start, finish,
                               stimulus_id=STIMULUS, **(ended[0] if ended else {}))
                elif kind in ("add_worker", "remove_worker"):
                    extra = {"stimulus_id": STIMULUS} if kind == "remove_worker" else {}
                    self._call(plugin, kind, scheduler=s, worker=event[1], **extra)
                elif kind in ("add_client", "remove_client"):
                    self._call(plugin, kind, scheduler=s, client=_text(event[1]))
                elif kind == "update_graph":
                    _, client, keys, tasks, annotations, priority = event
                    self._call(plugin, kind, s, client=_text(client), keys=set(keys),
                               tasks=tasks, annotations=annotations, priority=priority,
                               stimulus_id=STIMULUS)
                elif kind == "restart":
                    self._call(plugin, kind, s)
                elif kind == "log_event":
                    # the message alone, as logged; its time is the topic's record
                    _, topic, (_, msg) = event
                    self._call(plugin, kind, topic, msg)


def _text(ident):
    return ident.decode() if isinstance(ident, bytes) else ident


def run_function(scheduler, blob):
    """`Client.run_on_scheduler`: the function pickled in ``blob`` run here (a
    function taking ``dask_scheduler`` gets the `Scheduler`); the answer for the
    client, its result pickled."""
    try:
        fn, args, kwargs = deserialize(blob)
        if accepts(fn, "dask_scheduler"):
            kwargs["dask_scheduler"] = scheduler
        return {"status": "OK", "result": serialize(call(fn, *args, **kwargs))}
    except Exception as e:
        return {"status": "error", **error_payload(e, e.__traceback__)}
