"""The import graph keeps the layers honest.  It is read from the source with ast
(every import statement, those inside functions too), and checked:

    top        notebook/, bootstrap.py, cli.py, local.py, __main__.py, __init__.py,
               dynamic.py
    roles      scheduler/  worker/  client/     beside each other: none imports another
    base       the rest: the wire (protocol, comm, security, bulk), errors, graph...

A layer imports only from itself and the layers below; no module imports another
module's ``_private`` names; the pure modules (the state machines, the graph, the wire
format) import nothing that does I/O, and only pure modules of the package; and there
is no import circle.  Each rule is also shown failing on a package made for it."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "dask_ipy"
TOP = ("notebook", "bootstrap", "cli", "__main__", "dynamic", "local")
ROLES = ("scheduler", "worker", "client")
PURE = ["scheduler/state.py", "scheduler/moves.py", "scheduler/coordination.py",
        "worker/state.py", "client/state.py",
        "graph.py", "protocol.py", "keys.py", "errors.py", "messages.py", "units.py",
        "stories.py"]
FORBIDDEN = {"zmq", "socket", "threading", "time", "asyncio", "select", "selectors",
             "subprocess", "concurrent", "multiprocessing", "queue", "signal", "psutil"}
# Private attributes of other libraries' objects, each with its reason.
FOREIGN = {
    ("dask_ipy.bootstrap", "ipclient._config"):
        "ipyparallel's Client keeps the controller's URL only there",
    ("dask_ipy.worker.sampler", "sys._current_frames"):
        "the only way to read the stacks of other threads, which a sampling profiler "
        "samples",
    ("dask_ipy.worker.server", "os._exit"):
        "a worker past its memory limit ends its process from the memory watch "
        "thread, where sys.exit would end only the thread",
    **{("dask_ipy.client.futures", text):
       "no public way to cancel a running concurrent.futures.Future (see _cancel)"
       for text in ("local._condition", "local._waiters", "local._invoke_callbacks",
                    "cf._base")},
}
# Edges up the layers on purpose, each with its reason.
ALLOWED = {
    ("dask_ipy.client.client", "dask_ipy.notebook.widget"):
        "a Client shows itself as the live widget in a kernel (imported on display)",
}


# ---------------------------------------------------------------- reading the graph

def modules(root):
    """{dotted name: path} of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name, path, known):
    """[(imported module, imported names, line)] of one module, package modules only;
    also [(external top-level name, line)]."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside, outside = [], []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known or alias.name.split(".")[0] in known:
                    target = alias.name
                    # ``import a.b.c as x`` binds x to a.b.c; plain ``import a.b`` binds a
                    inside.append((target, {alias.asname or alias.name.split(".")[0]:
                                            target if alias.asname else
                                            alias.name.split(".")[0]}, [], node.lineno))
                else:
                    outside.append((alias.name.split(".")[0], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module not in known and module.split(".")[0] not in known:
                outside.append((module.split(".")[0], node.lineno))
                continue
            bound, names = {}, []
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in known:                       # ``from . import graph as g``
                    inside.append((sub, {alias.asname or alias.name: sub}, [],
                                   node.lineno))
                else:
                    names.append(alias.name)
            if names:
                inside.append((module, bound, names, node.lineno))
    return inside, outside


def graph(root):
    """{module: [(target, names imported from it, line)]}, {module: [(external,
    line)]}, and the private names used across modules [(module, line, text)]."""
    known = modules(root)
    edges, external, private = {}, {}, []
    for name, path in known.items():
        inside, outside = imports(name, path, known)
        external[name] = outside
        edges[name] = []
        aliases = {}
        for target, bound, names, line in inside:
            edges[name].append((target, names, line))
            aliases.update(bound)
            if target != name:
                private += [(name, line, f"from {target} import {n}")
                            for n in names if _private(n)]
        # ``g._as_dict`` where g is a module of the package bound by an import
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] != name):
                private.append((name, node.lineno,
                                f"{aliases[node.value.id]}.{node.attr}"))
    return edges, external, private


def reached_into(root):
    """``obj._name`` where no ``_name`` is defined in the module itself: a private
    attribute of some other module's object (a method of another class, most often).
    [(module, line, text)]."""
    found = []
    for name, path in modules(root).items():
        tree = ast.parse(path.read_text())
        defined = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                defined.add(node.value)                 # names in __slots__
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and node.attr not in defined):
                found.append((name, node.lineno, ast.unparse(node)))
    return sorted(set(found))


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def layer(module, package):
    parts = module.split(".")[1:]
    if not parts or parts[0] in TOP:
        return "top"
    if parts[0] in ROLES:
        return parts[0]
    return "base"


def upward(root, allowed=ALLOWED):
    """Imports against the direction of the layers: [(importer, imported, line)]."""
    package = root.name
    edges, _, _ = graph(root)
    bad = []
    for name, targets in edges.items():
        mine = layer(name, package)
        for target, _, line in targets:
            theirs = layer(target, package)
            ok = (mine == "top" or theirs == "base" or theirs == mine)
            if not ok and (name, target) not in allowed:
                bad.append((name, target, line))
    return bad


def circles(root):
    """Import circles between modules (self-imports aside), each as a path."""
    edges, _, _ = graph(root)
    succ = {n: sorted({t for t, _, _ in ts if t != n and t in edges}) for n, ts in
            edges.items()}
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in succ[node]:
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(succ):
        if node not in state:
            visit(node, [node])
    return found


def impure(root, pure=PURE):
    """Pure modules importing I/O, or a package module that is not pure."""
    package = root.name
    edges, external, _ = graph(root)
    pure_names = {package + "." + p[:-3].replace("/", ".") for p in pure}
    bad = []
    for name in sorted(pure_names):
        bad += [(name, ext, line) for ext, line in external[name] if ext in FORBIDDEN]
        bad += [(name, target, line) for target, _, line in edges[name]
                if target not in pure_names and target != package]
    return bad


# ---------------------------------------------------------------- the package

def test_the_layers_point_down():
    bad = upward(PACKAGE)
    assert not bad, "imports against the layers: " + ", ".join(
        f"{a} -> {b} (line {line})" for a, b, line in bad)


def test_the_roles_do_not_import_each_other():
    edges, _, _ = graph(PACKAGE)
    for name, targets in edges.items():
        mine = layer(name, "dask_ipy")
        if mine in ROLES:
            others = {layer(t, "dask_ipy") for t, _, _ in targets} & set(ROLES)
            assert others <= {mine} or (
                {(name, t) for t, _, _ in targets} & set(ALLOWED)), (name, others)


def test_no_private_names_across_modules():
    _, _, private = graph(PACKAGE)
    assert not private, "private names used across modules: " + ", ".join(
        f"{m}:{line} {text}" for m, line, text in private)


def test_no_private_attributes_of_other_modules_objects():
    bad = [(m, line, text) for m, line, text in reached_into(PACKAGE)
           if (m, text) not in FOREIGN]
    assert not bad, "private attributes reached into: " + ", ".join(
        f"{m}:{line} {text}" for m, line, text in bad)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module):
    name = "dask_ipy." + module[:-3].replace("/", ".")
    bad = [(target, line) for importer, target, line in impure(PACKAGE)
           if importer == name]
    assert not bad, f"{module} imports {bad}"


def test_no_import_circle():
    assert circles(PACKAGE) == []


def test_the_graph_is_read_whole():
    """The checks above see the imports they are about (a broken reader would pass
    everything)."""
    edges, external, _ = graph(PACKAGE)
    assert any(t == "dask_ipy.client.state" for t, _, _ in edges["dask_ipy.client.shell"])
    assert any(t == "dask_ipy.graph" for t, _, _ in edges["dask_ipy.client.client"])
    assert "zmq" in {e for e, _ in external["dask_ipy.comm"]}
    assert ("dask_ipy.client.client", "dask_ipy.notebook.widget") in {
        (n, t) for n, ts in edges.items() for t, _, _ in ts}
    assert len(edges) >= 30


def test_a_scheduler_process_never_imports_dask():
    code = ("import sys, dask_ipy.cli, dask_ipy.scheduler.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dask'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- each rule can fail

def make_package(tmp_path, files):
    root = tmp_path / "dask_ipy"
    for rel, text in {"__init__.py": "", "scheduler/__init__.py": "",
                      "worker/__init__.py": "", "client/__init__.py": "",
                      "notebook/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_a_role_importing_another_is_caught(tmp_path):
    root = make_package(tmp_path, {
        "worker/server.py": "def resolve(): pass\n",
        "client/client.py": "from ..worker.server import resolve\n"})
    assert upward(root) == [("dask_ipy.client.client", "dask_ipy.worker.server", 1)]


def test_the_wire_importing_upwards_is_caught(tmp_path):
    root = make_package(tmp_path, {
        "notebook/widget.py": "",
        "comm.py": "def f():\n    from .notebook import widget\n"})
    assert upward(root) == [("dask_ipy.comm", "dask_ipy.notebook.widget", 2)]


def test_a_private_name_across_modules_is_caught(tmp_path):
    root = make_package(tmp_path, {
        "graph.py": "def _as_dict(d): return d\n",
        "keys.py": "from .graph import _as_dict\n",
        "client/client.py": "from .. import graph as g\nx = g._as_dict({})\n"})
    _, _, private = graph(root)
    assert sorted(private) == [("dask_ipy.client.client", 2, "dask_ipy.graph._as_dict"),
                               ("dask_ipy.keys", 1, "from dask_ipy.graph import _as_dict")]


def test_a_private_method_of_another_module_is_caught(tmp_path):
    root = make_package(tmp_path, {
        "client/client.py": "class Client:\n    def _retain(self, key): pass\n",
        "client/futures.py": "def hold(client):\n    return client._retain('x')\n"})
    assert reached_into(root) == [("dask_ipy.client.futures", 2, "client._retain")]


def test_io_in_a_pure_module_is_caught(tmp_path):
    root = make_package(tmp_path, {
        "comm.py": "import zmq\n",
        "client/state.py": "import threading\n",
        "worker/state.py": "from ..comm import x\n"})
    assert impure(root, ["client/state.py", "worker/state.py"]) == [
        ("dask_ipy.client.state", "threading", 1),
        ("dask_ipy.worker.state", "dask_ipy.comm", 1)]


def test_an_import_circle_is_caught(tmp_path):
    root = make_package(tmp_path, {
        "client/futures.py": "def f():\n    from .client import default_client\n",
        "client/client.py": "from .futures import Future\n"})
    assert circles(root) == [["dask_ipy.client.client", "dask_ipy.client.futures",
                              "dask_ipy.client.client"]]
