"""The catalogue of message kinds: who sends each one to whom, and what it says.

Every message is a dict whose "op" is one of the kinds below.  A role's shell receives
them and looks the kind up in one dispatch table made by `handlers`: the shell's own
handler if it has one (the kinds that need a socket, a thread or a clock), else its way
into the role's state machine, which holds a table of its own.  Either way a kind is
handled in exactly one place::

                 table of the shell                   table of the state machine
    scheduler    Scheduler.FROM_WORKERS/FROM_CLIENTS  SchedulerState.FROM_WORKERS/
                                                      FROM_CLIENTS
    worker       Worker.FROM_SCHEDULER                WorkerState.handlers (_on_<kind>)
    client       ClientShell.FROM_SCHEDULER           ClientState.FROM_SCHEDULER

Before anything else on each connection to the scheduler, a worker or a client says
"hello" and learns from "hello-reply" the epoch of this start of the scheduler and its
identity (see protocol.py): these two are the only kinds signed without an epoch, and
the only ones without a recipient; a "hello" creates no state at the scheduler.

Workers also talk to each other on their own sockets (PEER), request and reply:
"get-data" is served by `Worker._on_peer_request`, its answers ("data", "data-bulk")
land in `Worker._on_peer_reply`.  Clients reach workers too: actor calls on a worker's
actor socket, and "subscribe-results" on its peer socket, after which small results
of the client's keys come straight from there ("task-result", into
`ClientState.FROM_WORKERS`).  `tests/pure/test_messages.py` checks that every kind
sent is handled by its receiver and that every handler is catalogued here.
"""

from __future__ import annotations

import msgpack

SCHEDULER, WORKER, CLIENT, PEER = "scheduler", "worker", "client", "peer"

# {(sender, receiver): {kind: what it says}}
KINDS = {
    (WORKER, SCHEDULER): {
        "hello": "after each connection: which start of the scheduler is this ('nonce')",
        "register-worker": "a worker joins (address, threads, host, pid, memory)",
        "unregister": "a worker leaves on purpose",
        "worker-died": "a worker's supervisor, on a connection of its own: how the "
                       "worker's process ended (its token, pid, reason)",
        "heartbeat": "a worker is alive; its metrics",
        "task-started": "a task began on a pool thread (it may need a 'go' first)",
        "task-finished": "a task's result is in memory (a small one comes along; "
                         "'direct': the clients it went to straight)",
        "task-erred": "a task raised: its error record",
        "reschedule": "a task raised Reschedule: place it again",
        "task-dropped": "a task released while it ran has ended; its thread is free",
        "task-seceded": "a running task gave its thread slot back to wait for other work",
        "task-rejoined": "a seceded task holds a thread slot again",
        "steal-response": "whether a worker gave up a queued task asked for",
        "missing-data": "no holder had a task's input",
        "input-unmovable": "a task's input could not be sent to its worker (it "
                           "cannot be pickled, or the relay could not carry it): "
                           "the task is given back",
        "peer-unreachable": "a worker cannot connect to a peer",
        "peer-reachable": "a worker can connect to that peer again",
        "relay": "a worker asks for data it cannot fetch from its holders ('stream': "
                 "large values may come through the scheduler's relay)",
        "add-keys": "data put on a worker (scatter) is stored",
        "put-failed": "values streamed to a worker for a scatter could not be "
                      "downloaded",
        "data": "values asked for by 'send-data' (a gather or a relay); large ones for "
                "a client or a relaying worker may instead be announced as 'streams' "
                "(ticket, sizes, keys) going through the scheduler's relay",
        "stream-failed": "a stream announced in 'data' could not be sent to the relay, "
                         "or (from the worker it was for) could not be downloaded",
        "run-result": "the result of a function run for Client.run, or of setting a "
                      "plugin up or down",
        "memory-exceeded": "tasks took the worker past its terminate fraction: they "
                           "are interrupted, or the worker exits ('action')",
        "log-event": "an event for the clients subscribed to its topics (a forwarded "
                     "log record, a task's `log_event`): a dict of it is told the "
                     "worker ('worker')",
        "task-stream": "records of the tasks that ended since the last flush (start, "
                       "stop, thread, inputs fetched, (de)serialization), as one batch "
                       "of columns: taskstream.py",
        "profile": "the answer to 'get-profile': the worker's call tree of the span "
                   "and group asked (profiling.py), None if it does not sample",
    },
    (SCHEDULER, WORKER): {
        "hello-reply": "the answer to 'hello': the nonce, the epoch, the scheduler's id",
        "welcome": "registered; the scheduler's message size cap and its relay's port",
        "registered": "the worker is known (no answer needed)",
        "unknown-worker": "the scheduler does not know this worker: register again",
        "ping": "only tests that the worker is reachable",
        "compute-task": "run a task; where its inputs are; the clients waiting for "
                        "its result",
        "free-keys": "forget these keys",
        "who-has": "new holders of inputs a worker is missing",
        "go": "start a task announced with 'task-started'",
        "steal-request": "give up a queued task for another worker",
        "worker-removed": "a peer left",
        "restart": "drop every task and all data",
        "put-data": "store these values (scatter; 'streams': download them from the "
                    "relay)",
        "send-data": "send these values to the scheduler ('for' a client or a relaying "
                     "worker: large ones may stream to it through the relay)",
        "relay-data": "data the scheduler fetched for a 'relay' ('streams': large ones "
                      "to download from the scheduler's relay)",
        "run": "run a function (Client.run)",
        "host-workers": "how many workers share this worker's host (for 'auto' limits)",
        "close": "close this worker (the cluster shuts down, or it retires)",
        "scheduler-closing": "the scheduler closes",
        "plugin-add": "set a worker plugin up (replacing one of the same name)",
        "plugin-remove": "tear a worker plugin down",
        "acquire-replicas": "fetch copies of these keys from their holders and keep "
                            "them (a move: retire, replicate, rebalance)",
        "restart-worker": "drop everything, tear the plugins down and register again",
        "get-profile": "the call tree of the task threads' sampled stacks ('start', "
                       "'stop', 'key' group), for a client's 'get-profile' ('token')",
    },
    (CLIENT, SCHEDULER): {
        "hello": "after each connection: which start of the scheduler is this ('nonce')",
        "register-client": "a client connects",
        "close-client": "a client leaves",
        "shutdown": "stop the scheduler and its workers",
        "update-graph": "new tasks, and the keys the client wants",
        "client-releases-keys": "no Future of these keys is left (my gathers sent "
                                "with 'direct' that wait for one end unanswered)",
        "client-desires-keys": "Futures of these keys arrived (unpickled)",
        "report-keys": "say how these keys end even if their value goes to me "
                       "straight: to confirm them, or because my connection to "
                       "the worker 'lost' dropped (with the values then, and of "
                       "that worker's values from now on)",
        "fire-and-forget": "run these keys to their end even once no client wants "
                           "them, then forget them (fire_and_forget)",
        "retry": "compute these erred keys again, with the erred inputs they erred "
                 "from (Client.retry); answered once they are waiting again",
        "cancel": "cancel these keys (and why: 'reason', 'msg')",
        "gather": "the values of these keys (once done, with 'wait'; 'stream': large "
                  "ones may come through the relay; 'unwanted': streams given up; "
                  "'direct' False: send even those the worker sent to me straight; "
                  "true: leave those out, and if that is all, answer nothing)",
        "scatter": "put these values on workers ('streams': large ones streamed "
                   "through the relay, each for the worker 'scatter-targets' chose)",
        "scatter-targets": "which workers will hold these large scattered values (so "
                           "that the client streams each signed for its worker)",
        "run": "run a function on workers",
        "info": "a question about the cluster ('what')",
        "set-collection": "store a named collection",
        "publish-dataset": "store a named dataset",
        "unpublish-dataset": "forget a named dataset",
        "coordinate": "a request about a named Variable, Queue, Lock, Semaphore, "
                      "Event or MultiLock ('what'); it may wait on the scheduler for "
                      "its answer (scheduler/coordination.py)",
        "withdraw": "give up a 'coordinate' request still waiting (its timeout, an "
                    "interrupt, the client closing): it is answered as withdrawn, "
                    "unless it was answered already",
        "monitor": "start or stop monitor snapshots",
        "restart": "forget every task and drop all data",
        "register-worker-plugin": "keep a worker plugin and set it up on every worker",
        "unregister-worker-plugin": "tear a worker plugin down everywhere",
        "register-scheduler-plugin": "start a plugin in the scheduler process",
        "unregister-scheduler-plugin": "close a scheduler plugin",
        "run-on-scheduler": "run a function in the scheduler process",
        "wait-for-workers": "answer once this many workers run",
        "restart-workers": "restart these workers in place",
        "retire-workers": "retire these workers, moving their unique data first",
        "adaptive-target": "how many workers the work wants (within 'minimum' and "
                           "'maximum'), and which to retire to get there: what "
                           "adaptivity asks every interval",
        "replicate": "keep copies of these keys on n workers",
        "rebalance": "move data to even out the workers' memory",
        "subscribe-topic": "send me the workers' events of a topic (or stop)",
        "log-event": "an event of the client's for some topics: kept, and sent to "
                     "their subscribers",
        "set-metadata": "store a value under a path of names",
        "client-options": "a client's options: when to warn of a paused worker",
        "get-task-stream": "a page of the task stream's records (by number or by time)",
        "get-memory-history": "the workers' memory sampled over time (since a time)",
        "get-logs": "the scheduler's latest log lines (at most 'n')",
        "get-profile": "the workers' sampled call trees (merged, or per worker), "
                       "asked of each worker and gathered within a 'timeout'",
        "get-story": "the scheduler's transitions of these keys or stimulus ids",
    },
    (SCHEDULER, CLIENT): {
        "hello-reply": "the answer to 'hello': the nonce, the epoch, the scheduler's id",
        "welcome": "the answer to 'register-client' (and the relay's port)",
        "ping": "only tests that the client is reachable",
        "key-in-memory": "a wanted key is done (with a small result that did not go "
                         "straight to the client: the worker holding it); not sent "
                         "of a value that went straight, unless 'report-keys' asked",
        "task-erred": "a wanted key failed: its error record",
        "cancelled": "a key was cancelled (and why, if the canceller said)",
        "restarted": "every task was forgotten",
        "reply": "the answer to a request ('request_id')",
        "gather-result": "the answer to 'gather' (and the 'streams' to download from "
                         "the relay; 'direct': keys whose value went to the client "
                         "straight from its worker)",
        "run-result": "the answer to 'run'",
        "scattered": "one scattered key is stored",
        "scatter-failed": "a scatter failed",
        "monitor-snapshot": "the cluster's state, for the widget",
        "scheduler-closing": "the scheduler shuts down",
        "event": "a worker's event of a subscribed topic",
        "worker-paused-long": "a worker has stayed paused (memory) longer than the "
                              "client's 'paused_warning'",
    },
    (CLIENT, WORKER): {
        "actor-call": "call a method of an actor this worker holds, or read one of "
                      "its attributes (straight to the worker's peer socket)",
        "subscribe-results": "send me the small results of my keys on this connection "
                             "(to the worker's peer socket)",
        "data": "a large scattered value, streamed through the scheduler's relay and "
                "announced in 'put-data' (read by bulk.receive)",
    },
    (WORKER, CLIENT): {
        "actor-result": "the result of an 'actor-call', or its error",
        "task-result": "a small result of a key the client waits for, straight from "
                       "the worker that computed it (the scheduler hears of it in "
                       "'task-finished', 'direct')",
    },
    (WORKER, PEER): {
        "get-data": "the values of these keys",
    },
    (PEER, WORKER): {
        "data": "values asked for by 'get-data'",
        "data-bulk": "a ticket, and the sizes, to fetch large values over the side "
                     "channel",
    },
}


def log_event_fields(topic, msg, now):
    """The fields of a "log-event" (a client's or a worker's) of ``msg``
    (msgpack-able data, else TypeError) under ``topic``, or each of a list of
    topics, at time ``now``."""
    try:
        msgpack.packb(msg)
    except Exception as e:
        raise TypeError(f"an event must be msgpack-able data: {e}") from None
    topics = [topic] if isinstance(topic, str) else list(topic)
    return {"topics": topics, "event": [now, msg]}


# The topics of the events ("log-event", then "event") of a task's
# `dask_ipy.print` and `dask_ipy.warn`: dask.distributed's names.  Sent by
# worker/printing.py, shown by client/printing.py.
PRINT, WARN = "print", "warn"

# The answer to a "coordinate" request withdrawn while it waited (scheduler/
# coordination.py answers it, client/coordination.py reads it).
WITHDRAWN = {"withdrawn": True}

# Events a shell feeds its own state machine besides what comes off the wire.
SHELL_EVENTS = {
    WORKER: {
        "execute-success": "a pool thread ran a task",
        "execute-failure": "a task raised on a pool thread",
        "execute-reschedule": "a task raised Reschedule on a pool thread",
        "gather-done": "a peer (or the relay) answered a fetch",
        "gather-failed": "a fetch through the relay gave nothing in time, or its "
                         "streams could not be downloaded",
        "peer-unreachable": "no connection to a peer in time",
        "peer-reachable": "a connection to a peer at last",
        "put-data": "scattered values, unpickled",
        "worker-removed": "a peer left (its connection is gone)",
        "pause": "memory passed the pause fraction: start nothing new",
        "resume": "memory fell back: run again",
        "plugins-busy": "worker plugins are being set up or torn down: start no task",
        "plugins-done": "the plugins' set-ups and teardowns ended: tasks start again",
        "memory-exceeded": "memory passed the terminate fraction while these tasks ran",
        "long-running": "tasks run for a heartbeat interval or more",
        "secede": "a running task gives its thread slot back (it waits for other work)",
        "rejoin": "a seceded task wants a thread slot again",
        "client-subscribed": "a client asked for its small results on its connection "
                             "to the peer socket",
        "client-gone": "a subscribed client's connection is gone",
    },
}


def handlers(sender, receiver, owner, table, state):
    """The dispatch table ``{kind: handler}`` of ``receiver`` for what ``sender``
    sends: ``table[kind]`` (a function of ``owner``'s class) bound to ``owner`` where
    the shell handles the kind, else ``state``, the shell's way into its state machine.
    A kind the catalogue does not list is an error, found at once."""
    kinds = KINDS[(sender, receiver)]
    unknown = set(table) - set(kinds)
    if unknown:
        raise ValueError(f"{receiver} handles kinds from {sender} the catalogue "
                         f"does not list: {sorted(unknown)}")
    return {kind: table[kind].__get__(owner) if kind in table else state
            for kind in kinds}
