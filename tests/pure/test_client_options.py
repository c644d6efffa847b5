"""What a submission's update-graph message says about placement, from keyword
arguments, dask.annotate around the call, and annotations kept per key."""

import operator
import warnings

import dask
import pytest

from dask_ipy.client.options import AnnotationWarning, graph_options, kept_annotations
from dask_ipy.graph import collections_to_graph

pytestmark = pytest.mark.timeout(30)


def test_keyword_arguments_become_fields():
    assert graph_options(["x"]) == {"user_priority": 0, "retries": 0}
    assert graph_options(["x"], priority=2, retries=1, workers="w1",
                         resources={"GPU": 1}, allow_other_workers=True) == {
        "user_priority": 2, "retries": 1, "workers": ["w1"], "resources": {"GPU": 1},
        "allow_other_workers": True}


def test_annotate_around_the_call_applies_unless_an_argument_is_given():
    with dask.annotate(priority=5, retries=2, resources={"GPU": 1}, workers=["a"]):
        assert graph_options(["x"]) == {"user_priority": 5, "retries": 2,
                                        "workers": ["a"], "resources": {"GPU": 1}}
        assert graph_options(["x"], priority=9)["user_priority"] == 9
    # A callable is asked for each task.
    with dask.annotate(priority=lambda key: len(key)):
        out = graph_options(["x", "yyy"])
    assert out["annotations"] == {"priority": {"x": 1, "yyy": 3}}


def test_per_key_annotations_of_a_collection_are_sent_for_its_keys():
    with dask.annotate(priority=4, resources={"GPU": 1}):
        x = dask.delayed(operator.add)(1, 2)
    y = dask.delayed(operator.add)(x, 3)
    found = {}
    graph, keys, _ = collections_to_graph([y], annotations=found)
    kept = kept_annotations(found)
    assert kept == {"priority": {x.key: 4}, "resources": {x.key: {"GPU": 1}}}
    out = graph_options(list(graph), annotations=kept)
    assert out["annotations"] == kept
    # Keys not sent are left out.
    assert "annotations" not in graph_options([y.key], annotations=kept)


def test_what_is_not_honoured_is_named():
    with pytest.warns(AnnotationWarning, match="'queue'"):
        with dask.annotate(queue="gpu"):
            graph_options(["x"])
    with pytest.warns(AnnotationWarning, match="'queue'"):
        kept_annotations({"queue": {"x": "gpu"}, "priority": {"x": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept_annotations({"fuse": {"x": False}})        # dask's own hint
    with pytest.raises(ValueError, match="resources="):
        graph_options(["x"], resources={"GPU": -1})
    with pytest.raises(TypeError, match="retries"):
        graph_options(["x"], retries=1.5)
