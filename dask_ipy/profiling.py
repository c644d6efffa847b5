"""Statistical profiles: what the workers' task threads were running, as call trees.

A worker's sampler thread (`worker/sampler.py`) looks at the stack of each thread
running a task every few milliseconds and adds it to a tree; this module holds the
tree and everything done with it, pure functions of plain data (no clock, no thread)::

    {"identifier": "root", "description": "root", "count": 12, "children": {
        "spin;/path/tasks.py;10": {
            "identifier": "spin;/path/tasks.py;10",
            "description": {"filename": "/path/tasks.py", "name": "spin",
                            "line_number": 12, "line": "while time.time() < end:"},
            "count": 12, "children": {...}}}}

the shape dask.distributed's statistical profiler gives: a node per function (code
object: name, file, first line) under its caller; ``count`` is how many samples had it
on the stack there; ``description`` is where it was when first seen.

Samples are kept in cycles (a second, say): a cycle is ``{"start", "stop", "trees":
{group: tree}}`` with one tree per task group (`keys.key_prefix` of the key the thread
ran), so a profile of one group and of a span of time is a `select` over a bounded
history of cycles; `merge` adds trees (of cycles, of workers).  `top` sums a tree per
function for reports.
"""

from __future__ import annotations

import linecache

from .keys import key_prefix

MAX_DEPTH = 100                # frames kept of one stack, the innermost
_IDENTIFIERS = {}              # {code object: identifier}: one string per function
_MAX_IDENTIFIERS = 100_000


def create():
    """An empty tree."""
    return {"identifier": "root", "description": "root", "count": 0, "children": {}}


def identifier(code):
    """The node name of a function: "name;filename;first line" (cached per code
    object: a sample costs a dict lookup per frame, not a string)."""
    ident = _IDENTIFIERS.get(code)
    if ident is None:
        if len(_IDENTIFIERS) >= _MAX_IDENTIFIERS:
            _IDENTIFIERS.clear()
        ident = _IDENTIFIERS[code] = \
            f"{code.co_name};{code.co_filename};{code.co_firstlineno}"
    return ident


def describe(code, line_number):
    """{"filename", "name", "line_number", "line"} of a place in a function."""
    line_number = line_number if line_number is not None else code.co_firstlineno
    try:
        line = linecache.getline(code.co_filename, line_number).strip()
    except Exception:          # a file that cannot be read: no text, no failure
        line = ""
    return {"filename": code.co_filename, "name": code.co_name,
            "line_number": line_number, "line": line}


def add_stack(tree, frame, stop=(), depth=MAX_DEPTH):
    """Count the stack ending in ``frame`` (the innermost) into ``tree``, from the
    frame just above one whose code is in ``stop`` (the worker's own frames below a
    task are left out).  A stack without such a frame, given ``stop``, is not a
    task's and is not counted: returns False."""
    stack = []
    while frame is not None:
        code = frame.f_code
        if code in stop:
            break
        stack.append(frame)
        frame = frame.f_back
    else:
        if stop:
            return False
    if len(stack) > depth:
        del stack[depth:]
    node = tree
    node["count"] += 1
    for f in reversed(stack):
        code = f.f_code
        ident = _IDENTIFIERS.get(code) or identifier(code)
        children = node["children"]
        child = children.get(ident)
        if child is None:
            child = children[ident] = {"identifier": ident,
                                       "description": describe(code, f.f_lineno),
                                       "count": 0, "children": {}}
        child["count"] += 1
        node = child
    return True


def worker_call_stacks(keys=None, dask_worker=None):
    """Run on a worker (`Client.call_stack`, through `Client.run`): its running
    tasks' stacks (`Worker.get_call_stack`)."""
    return dask_worker.get_call_stack(keys)


def merge(*trees):
    """A new tree counting every sample of ``trees`` (which are left as they are)."""
    out = create()
    for tree in trees:
        _add_into(out, tree)
    return out


def _add_into(dst, src):
    dst["count"] += src["count"]
    children = dst["children"]
    for ident, child in src["children"].items():
        mine = children.get(ident)
        if mine is None:
            mine = children[ident] = {"identifier": ident,
                                      "description": child["description"],
                                      "count": 0, "children": {}}
        _add_into(mine, child)


def new_cycle(start):
    return {"start": start, "stop": None, "trees": {}}


def add_sample(cycle, key, frame, stop=(), groups=None):
    """Count one thread's stack into ``cycle``, under the group of ``key`` (the task
    the thread ran).  ``groups``: a dict caching key → group."""
    if groups is None:
        group = key_prefix(key)
    else:
        group = groups.get(key)
        if group is None:
            if len(groups) > 10_000:
                groups.clear()
            group = groups[key] = key_prefix(key)
    trees = cycle["trees"]
    tree = trees.get(group)
    if tree is None:
        tree = trees[group] = create()
    if not add_stack(tree, frame, stop):
        if not tree["count"]:
            del trees[group]
        return False
    return True


def group_of(key):
    """What ``key=`` selects: a task's key stands for its group (``"inc-ab12"`` and
    ``"inc"`` both select "inc"), as dask.distributed's profile does."""
    return key_prefix(key)


def select(cycles, start=None, stop=None, key=None, now=None):
    """One tree of the cycles that overlap [start, stop] (seconds since the epoch;
    None: unbounded; the running cycle, with no stop, ends ``now``), of ``key``'s
    group only if given."""
    group = None if key is None else group_of(key)
    trees = []
    for c in cycles:
        if stop is not None and c["start"] > stop:
            continue
        end = c["stop"] if c["stop"] is not None else now
        if start is not None and end is not None and end < start:
            continue
        if group is None:
            trees.extend(c["trees"].values())
        elif group in c["trees"]:
            trees.append(c["trees"][group])
    return merge(*trees)


def top(tree, n=20):
    """The functions that took most samples: [{"name", "filename", "line_number",
    "identifier", "self", "total"}], most ``self`` first.  ``self``: samples where
    it was the innermost frame; ``total``: samples with it anywhere on the stack
    (a recursive function counted once per sample)."""
    sums = {}

    def walk(node, on_stack):
        ident = node["identifier"]
        entry = sums.get(ident)
        if entry is None:
            d = node["description"]
            entry = sums[ident] = {"identifier": ident, "name": d["name"],
                                   "filename": d["filename"],
                                   "line_number": d["line_number"],
                                   "self": 0, "total": 0}
        inner = sum(c["count"] for c in node["children"].values())
        entry["self"] += max(node["count"] - inner, 0)
        if ident not in on_stack:
            entry["total"] += node["count"]
        on_stack = on_stack | {ident}
        for child in node["children"].values():
            walk(child, on_stack)

    for child in tree["children"].values():
        walk(child, frozenset())
    ranked = sorted(sums.values(), key=lambda e: (-e["self"], -e["total"],
                                                   e["identifier"]))
    return ranked[:n]


def flatten(tree, min_fraction=0.0):
    """The rectangles of a flame chart, root at depth 0: [(depth, offset, count,
    node)] where ``offset`` counts the samples left of it; nodes under
    ``min_fraction`` of the root are left out (with what they hold)."""
    total = tree["count"]
    out = []
    floor = total * min_fraction
    todo = [(0, 0, tree)]
    while todo:
        depth, offset, node = todo.pop()
        out.append((depth, offset, node["count"], node))
        x = offset
        for child in sorted(node["children"].values(),
                            key=lambda c: (-c["count"], c["identifier"])):
            if child["count"] >= floor and child["count"] > 0:
                todo.append((depth + 1, x, child))
            x += child["count"]
    out.sort(key=lambda r: (r[0], r[1]))
    return out
