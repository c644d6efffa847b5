"""Call trees of sampled stacks (profiling.py): counting a stack, merging trees,
selecting cycles by time and group, the top functions, the flame chart's layout."""

import sys

from dask_ipy import charts, profiling
from dask_ipy.profiling import add_sample, add_stack, create, merge, select, top


def node(name, count, children=(), filename="f.py", line=1):
    ident = f"{name};{filename};{line}"
    return {"identifier": ident, "count": count,
            "description": {"filename": filename, "name": name, "line_number": line,
                            "line": ""},
            "children": {c["identifier"]: c for c in children}}


def root(count, *children):
    return {"identifier": "root", "description": "root", "count": count,
            "children": {c["identifier"]: c for c in children}}


# Real frames: outer -> middle -> inner, the stack a sampler would see.
def outer(stop_here=False):
    return middle()


def middle():
    return inner()


def inner():
    return sys._getframe()


def names_by_depth(tree):
    out, level = [], [tree]
    while level:
        level = [c for n in level for c in n["children"].values()]
        if level:
            out.append(sorted(c["description"]["name"] for c in level))
    return out


def test_a_stack_counts_from_above_the_stop_frame():
    frame = outer()
    tree = create()
    assert add_stack(tree, frame, stop={outer.__code__})
    assert add_stack(tree, frame, stop={outer.__code__})
    assert names_by_depth(tree) == [["middle"], ["inner"]]
    (m,) = tree["children"].values()
    assert tree["count"] == m["count"] == 2
    assert m["identifier"] == f"middle;{__file__};{middle.__code__.co_firstlineno}"
    d = m["description"]
    assert (d["name"], d["filename"]) == ("middle", __file__)
    assert d["line"] == "return inner()"
    assert d["line_number"] == middle.__code__.co_firstlineno + 1


def test_a_stack_without_the_stop_frame_is_not_a_tasks():
    tree = create()
    assert not add_stack(tree, inner(), stop={outer.__code__})
    assert tree == create()


def test_deep_stacks_keep_their_innermost_frames():
    tree = create()
    add_stack(tree, outer(), stop={outer.__code__}, depth=1)
    assert names_by_depth(tree) == [["inner"]]


def test_merge_adds_counts_and_leaves_its_inputs_alone():
    a = root(3, node("f", 3, [node("g", 2)]))
    b = root(2, node("f", 1, [node("h", 1)]), node("k", 1))
    before = repr((a, b))
    m = merge(a, b)
    assert repr((a, b)) == before
    assert m == root(5, node("f", 4, [node("g", 2), node("h", 1)]), node("k", 1))
    assert merge() == create()


def test_samples_go_under_their_keys_group():
    cycle = profiling.new_cycle(100.0)
    frame = outer()
    groups = {}
    assert add_sample(cycle, "spin-0123456789abcdef0123456789abcdef", frame,
                      {outer.__code__}, groups)
    assert add_sample(cycle, ("spin-0123456789abcdef0123456789abcdef", 3), frame,
                      {outer.__code__}, groups)
    assert add_sample(cycle, "inc-0123456789abcdef0123456789abcdef", frame,
                      {outer.__code__})
    assert not add_sample(cycle, "other", inner(), {outer.__code__})
    assert {g: t["count"] for g, t in cycle["trees"].items()} == {"spin": 2, "inc": 1}


def test_select_by_time_and_group():
    t = {"spin": root(2, node("spin", 2)), "inc": root(1, node("inc", 1))}
    cycles = [{"start": 0.0, "stop": 1.0, "trees": {"spin": t["spin"]}},
              {"start": 1.0, "stop": 2.0, "trees": dict(t)},
              {"start": 2.0, "stop": None, "trees": {"inc": t["inc"]}}]   # running
    assert select(cycles)["count"] == 6
    assert select(cycles, key="spin")["count"] == 4
    assert select(cycles, key="spin-0123456789abcdef0123456789abcdef")["count"] == 4
    assert select(cycles, key="inc", start=1.5)["count"] == 2
    assert select(cycles, start=2.5)["count"] == 1          # the running cycle
    assert select(cycles, start=2.5, now=3.0)["count"] == 1
    assert select(cycles, start=3.5, now=3.0)["count"] == 0
    assert select(cycles, stop=0.5)["count"] == 2
    assert select(cycles, start=0.2, stop=0.8) == root(2, node("spin", 2))
    assert select(cycles, key="nothing") == create()


def test_top_counts_own_and_total_samples_once_per_stack():
    # f calls g which calls f again (recursion), and h
    tree = root(10, node("f", 10, [node("g", 6, [node("f", 4)]), node("h", 3)]))
    ranked = {r["name"]: r for r in top(tree)}
    assert [r["name"] for r in top(tree)] == ["f", "h", "g"]
    assert (ranked["f"]["self"], ranked["f"]["total"]) == (1 + 4, 10)
    assert (ranked["g"]["self"], ranked["g"]["total"]) == (2, 6)
    assert (ranked["h"]["self"], ranked["h"]["total"]) == (3, 3)
    assert len(top(tree, n=1)) == 1


def test_flame_layout_and_chart():
    tree = root(10, node("f", 6, [node("g", 6)]), node("h", 4))
    rects = [(d, off, n, nd["identifier"]) for d, off, n, nd in profiling.flatten(tree)]
    assert rects == [(0, 0, 10, "root"), (1, 0, 6, "f;f.py;1"), (1, 6, 4, "h;f.py;1"),
                     (2, 0, 6, "g;f.py;1")]
    assert [r[3]["identifier"] for r in profiling.flatten(tree, 0.5)] == ["root", "f;f.py;1",
                                                            "g;f.py;1"]
    svg = charts.flame_svg(tree, width=1000)
    assert 'data-samples="10"' in svg and 'data-frames="4"' in svg
    assert 'data-name="g" data-filename="f.py" data-line="1" data-count="6" ' \
           'data-depth="2"' in svg
    page = charts.profile_html({"w": tree})
    assert 'data-dask-ipy="profile" data-samples="10"' in page
    assert 'data-dask-ipy="profile-top-row" data-name="g"' in page
    assert 'data-dask-ipy="profile-empty"' in charts.profile_html({"w": create()})
