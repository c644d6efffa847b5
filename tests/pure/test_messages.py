"""The catalogue of message kinds against the code: every kind a role sends is
catalogued for that sender, every catalogued kind has exactly one handler at its
receiver (its shell's or its state machine's), and every handler is catalogued.

What each role sends is read from the source with ast: the "op" of dict literals,
of ``.update(op=...)`` and of ``msg["op"] = ...``, in the role's package and in the
handshake, which comm.py builds for every role, and in the supervisor's word to the
scheduler, which speaks for its worker."""

import ast
import pathlib

import pytest

from dask_ipy import messages
from dask_ipy.client.shell import ClientShell
from dask_ipy.client.state import ClientState
from dask_ipy.messages import CLIENT, KINDS, PEER, SCHEDULER, SHELL_EVENTS, WORKER
from dask_ipy.scheduler.server import Scheduler
from dask_ipy.scheduler.state import SchedulerState
from dask_ipy.worker.server import Worker
from dask_ipy.worker.state import WorkerState

PACKAGE = pathlib.Path(messages.__file__).resolve().parent
ROLES = {"scheduler": {SCHEDULER}, "worker": {WORKER, PEER}, "client": {CLIENT}}
# Definitions outside a role's package that build its messages: the two sides of the
# handshake (comm.py), and how a worker's process ended (supervisor.py).
SHARED = {"worker": {"comm.py": {"Handshake"}, "supervisor.py": {"tell_scheduler"}},
          "client": {"comm.py": {"Handshake"}},
          "scheduler": {"comm.py": {"hello_reply"}}}


def sent_kinds(path, names=None):
    """{kind: line} of the messages built in ``path`` (only in its top-level
    definitions ``names``, if given)."""
    tree = ast.parse(path.read_text())
    if names is not None:
        tree.body = [d for d in tree.body if getattr(d, "name", None) in names]
        assert {d.name for d in tree.body} == set(names), f"{names} not all in {path}"
    found = {}
    for node in ast.walk(tree):
        values = []
        if isinstance(node, ast.Dict):
            values = [v for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and k.value == "op"]
        elif isinstance(node, ast.Call):
            values = [kw.value for kw in node.keywords if kw.arg == "op"]
        elif isinstance(node, ast.Assign):
            values = [node.value for t in node.targets
                      if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                      and t.slice.value == "op"]
        for v in values:
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                found.setdefault(v.value, node.lineno)
    return found


def sent_by(role):
    out = {}
    sources = [(path, None) for path in sorted((PACKAGE / role).glob("*.py"))]
    sources += [(PACKAGE / name, names) for name, names in SHARED[role].items()]
    for path, names in sources:
        for kind, line in sent_kinds(path, names).items():
            out.setdefault(kind, f"{path.relative_to(PACKAGE)}:{line}")
    return out


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_kind_sent_is_catalogued_for_its_sender(role):
    sent = sent_by(role)
    assert len(sent) >= 3, f"found almost nothing sent by {role}: is the scan broken?"
    catalogued = set()
    for (sender, _), kinds in KINDS.items():
        if sender in ROLES[role]:
            catalogued |= set(kinds)
    stray = {kind: where for kind, where in sent.items() if kind not in catalogued}
    assert not stray, f"{role} sends kinds the catalogue does not list: {stray}"


def test_every_catalogued_kind_is_sent():
    sent = {}
    for role, senders in ROLES.items():
        for sender in senders:
            sent.setdefault(sender, set()).update(sent_by(role))
    for (sender, receiver), kinds in KINDS.items():
        unsent = set(kinds) - sent[sender]
        assert not unsent, f"catalogued from {sender} to {receiver}, sent by nothing: {unsent}"


def one_handler_each(kinds, shell, state):
    assert not set(shell) & set(state), f"handled twice: {set(shell) & set(state)}"
    assert set(shell) | set(state) == set(kinds), (
        f"not handled: {set(kinds) - set(shell) - set(state)}; "
        f"handled but not catalogued: {(set(shell) | set(state)) - set(kinds)}")


def test_the_scheduler_handles_each_kind_once():
    one_handler_each(KINDS[(WORKER, SCHEDULER)], Scheduler.FROM_WORKERS,
                     SchedulerState.FROM_WORKERS)
    one_handler_each(KINDS[(CLIENT, SCHEDULER)], Scheduler.FROM_CLIENTS,
                     SchedulerState.FROM_CLIENTS)


def test_the_client_handles_each_kind_once():
    one_handler_each(KINDS[(SCHEDULER, CLIENT)], ClientShell.FROM_SCHEDULER,
                     ClientState.FROM_SCHEDULER)


def test_the_worker_handles_each_kind_once():
    kinds = set(KINDS[(SCHEDULER, WORKER)])
    shell = set(Worker.FROM_SCHEDULER)
    state = set(WorkerState("tcp://10.0.0.1:1").handlers)
    assert shell <= kinds, f"handled but not catalogued: {shell - kinds}"
    to_state = kinds - shell
    assert to_state <= state, f"not handled: {to_state - state}"
    # The state machine's other handlers are the shell's own events.
    assert state - to_state == set(SHELL_EVENTS[WORKER]), (
        f"state handlers neither catalogued nor shell events: "
        f"{state - to_state - set(SHELL_EVENTS[WORKER])}")


def test_a_dispatch_table_refuses_an_uncatalogued_kind():
    class Shell:
        def _on_welcome(self, msg):
            return "shell"

        def _on_hello(self, msg):
            return "hello"

    shell = Shell()
    table = messages.handlers(SCHEDULER, CLIENT, shell, {"welcome": Shell._on_welcome},
                              lambda msg: "state")
    assert set(table) == set(KINDS[(SCHEDULER, CLIENT)])
    assert table["welcome"]({}) == "shell" and table["key-in-memory"]({}) == "state"
    with pytest.raises(ValueError, match="hello"):
        messages.handlers(SCHEDULER, CLIENT, shell, {"hello": Shell._on_hello},
                          lambda msg: None)


def test_the_scan_finds_every_way_a_message_is_built(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text('a = {"op": "one", "x": 1}\n'
                    'b.update(op="two")\n'
                    'c["op"] = "three"\n'
                    'if msg["op"] == "not-sent": pass\n')
    assert set(sent_kinds(path)) == {"one", "two", "three"}
    path.write_text('def f():\n    return {"op": "in-f"}\n'
                    'def g():\n    return {"op": "in-g"}\n')
    assert set(sent_kinds(path, {"g"})) == {"in-g"}
    with pytest.raises(AssertionError, match="not all in"):
        sent_kinds(path, {"h"})


def test_the_architecture_notes_say_where_every_kind_is_handled():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    table = text[text.index("## Where each message is handled"):]
    missing = {kind for kinds in KINDS.values() for kind in kinds
               if f"`{kind}`" not in table}
    assert not missing, f"ARCHITECTURE.md does not place {sorted(missing)}"
