"""The worker plugins of one worker: set up, torn down, and told of transitions, on
the worker's I/O thread.

    scheduler ── "plugin-add" (blob) ──▶ Worker._on_plugin_add ──▶ WorkerPlugins.add:
                                         unpickle, tear the old one of that name
                                         down, setup(worker=...), and watch the
                                         state machine's transitions if it wants them
    WorkerState.transition_log ─────────▶ WorkerPlugins.transitions (after each event)

The scheduler sends every plugin to a worker when it registers (so again after a
restart), before any task; the outcome of a set-up goes back to the client that
registered the plugin.
"""

from __future__ import annotations

from ..errors import error_payload
from ..log import logger
from ..plugins import call, overrides
from ..protocol import deserialize


class WorkerPlugins:
    def __init__(self, worker):
        self.worker = worker
        self.plugins = {}           # {name: plugin}, in the order they came

    def add(self, name, blob):
        """Set up the plugin pickled in ``blob`` under ``name``; the outcome, as
        "run-result" says it: {"status": "OK"} or an error record."""
        try:
            plugin = deserialize(blob)
            self.remove(name)
            self.plugins[name] = plugin
            call(plugin.setup, worker=self.worker)
            if overrides(plugin, "transition"):
                self.worker.state.observe_transitions()
        except Exception as e:
            logger.exception("worker %s: plugin %r failed to set up",
                             self.worker.address, name)
            return {"status": "error", **error_payload(e, e.__traceback__)}
        return {"status": "OK"}

    def remove(self, name):
        """Tear the plugin ``name`` down and forget it; its outcome."""
        plugin = self.plugins.pop(name, None)
        if plugin is None or not hasattr(plugin, "teardown"):
            return {"status": "OK"}
        try:
            call(plugin.teardown, worker=self.worker)
        except Exception as e:
            logger.exception("worker %s: plugin %r failed to tear down",
                             self.worker.address, name)
            return {"status": "error", **error_payload(e, e.__traceback__)}
        return {"status": "OK"}

    def remove_all(self):
        """Tear every plugin down, the last set up first."""
        for name in reversed(list(self.plugins)):
            self.remove(name)

    def transitions(self, log):
        for plugin in list(self.plugins.values()):
            if not overrides(plugin, "transition"):
                continue
            for key, start, finish in log:
                try:
                    plugin.transition(key, start, finish)
                except Exception:
                    logger.exception("worker %s: plugin transition failed",
                                     self.worker.address)
