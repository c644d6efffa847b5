"""The pure parts of `Client.nbytes` and `dump_cluster_state`, without sockets:
sizes from a scheduler's tasks, entries dropped from a dump, the files written."""

import gzip
from types import SimpleNamespace

import msgpack
import pytest
import yaml

from dask_ipy.dump import drop_names, task_sizes, write

A = "tcp://127.0.0.1:1"


def test_task_sizes_by_key_and_by_prefix():
    tasks = {"inc-aaaaa1": 28, "inc-bbbbb2": 32, ("sum-ccccc3", 0): 100,
             "pending-ddddd4": -1}
    scheduler = SimpleNamespace(tasks={k: SimpleNamespace(nbytes=n)
                                       for k, n in tasks.items()})
    assert task_sizes(None, False, dask_scheduler=scheduler) == {
        "inc-aaaaa1": 28, "inc-bbbbb2": 32, ("sum-ccccc3", 0): 100}
    assert task_sizes(None, True, dask_scheduler=scheduler) == {"inc": 60, "sum": 100}
    assert task_sizes(["pending-ddddd4"], False, dask_scheduler=scheduler) == {
        "pending-ddddd4": -1}
    with pytest.raises(KeyError):
        task_sizes(["nope"], True, dask_scheduler=scheduler)


def test_drop_names_at_any_depth():
    state = {"scheduler": {"logs": [1], "tasks": {"x": {"who_has": [A], "state": "m"}}},
             "workers": {A: {"logs": [], "tasks": [{"logs": 1, "k": 2}]}}}
    assert drop_names(state, {"logs", "who_has"}) == {
        "scheduler": {"tasks": {"x": {"state": "m"}}},
        "workers": {A: {"tasks": [{"k": 2}]}}}


def test_write_adds_the_suffix_once_and_reads_back(tmp_path):
    state = {"scheduler": {"tasks": {"x": {"priority": [0, 1]}}}, "workers": {}}
    path = write(state, tmp_path / "dump")
    assert path == str(tmp_path / "dump.msgpack.gz")
    with gzip.open(path) as f:
        assert msgpack.unpack(f) == state
    assert write(state, str(tmp_path / "d.yaml"), "yaml") == str(tmp_path / "d.yaml")
    assert yaml.safe_load((tmp_path / "d.yaml").read_text()) == state
    with pytest.raises(ValueError, match="format"):
        write(state, tmp_path / "x", "json")
