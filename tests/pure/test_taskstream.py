"""The task stream without sockets or clocks: a worker's `Recorder`, the scheduler's
`TaskStream` ring and its pages, the dicts a client builds from them, the sums of a
report (`Breakdown`), memory history, the log buffer, and the report drawn from it."""

import logging
import re

from dask_ipy import charts
from dask_ipy.logs import LogBuffer
from dask_ipy.taskstream import (Breakdown, MemoryHistory, TaskStream, pack, records,
                                 report_data, unpack)
from dask_ipy.worker.recording import CANCELLED, ERROR, OK, Recorder

A, B = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"


def rec(key, start, stop, thread=7, status=OK, nbytes=8, typename="int", deser=0.0,
        ser=0.0, extra=None):
    return (key, start, stop, thread, status, nbytes, typename, deser, ser, extra)


# ---------------------------------------------------------------- the worker's side

def test_recorder_charges_a_fetch_to_the_first_task_using_it():
    r = Recorder()
    r.fetch_started(B, 10.0)
    r.fetched_from(B, 10.5, {"x": 100, "y": 50})
    # timing: (begin, loaded, start, stop, serialize seconds, thread, disk)
    r.ended("z", OK, (11.0, 11.25, 11.25, 12.0, 0.5, 3, False), 8, "int", ["x", "y", "w"])
    r.ended("z2", OK, (12.0, 12.0, 12.0, 13.0, 0.0, 3, False), 8, "int", ["x"])
    assert unpack(r.take()) == [
        ("z", 11.25, 12.0, 3, OK, 8, "int", 0.25, 0.5,
         (("transfer", 10.0, 10.5, B, 150),)),
        ("z2", 12.0, 13.0, 3, OK, 8, "int", 0.0, 0.0, None),
    ]
    assert r.take() is None and r.keys == [] and r.fetched == {}


def test_recorder_keeps_fetches_apart_and_names_the_relay():
    r = Recorder()
    r.fetch_started(A, 1.0)
    r.fetch_started(B, 1.5)
    r.fetched_from(B, 2.0, {"b": 5})
    r.fetched_from(A, 3.0, {"a": 7}, source="scheduler")
    r.ended("c", ERROR, (4.0, 4.0, 4.5, 5.0, 0.0, 9, True), 0, "", ["a", "b"])
    (record,) = unpack(r.take())
    assert record[:9] == ("c", 4.5, 5.0, 9, ERROR, 0, "", 0.0, 0.0)
    assert sorted(record[9]) == [("disk-read", 4.0, 4.5, None, 0),
                                 ("transfer", 1.0, 3.0, "scheduler", 7),
                                 ("transfer", 1.5, 2.0, B, 5)]


def test_recorder_measures_the_bandwidth_of_large_fetches_only():
    r = Recorder(on=False)                  # measured with the task stream off too
    assert r.take_bandwidth() == {"total": None, "workers": {}, "types": {}}
    r.fetch_started(A, 1.0)
    r.fetched_from(A, 1.5, {"small": 1000}, types=["int"])     # its round trip
    assert r.bandwidth is None
    r.fetch_started(A, 2.0)
    r.fetched_from(A, 2.5, {"a": 3_000_000, "b": 1_000_000},
                   types=["numpy.ndarray", "numpy.ndarray"])
    assert r.bandwidth == 8e6
    r.fetch_started(B, 3.0)
    r.fetched_from(B, 5.0, {"c": 2_000_000}, source="scheduler", types=["a", "b"])
    assert r.bandwidth == 8e6 + (1e6 - 8e6) * 0.05        # a moving average
    # Peers and types since the last heartbeat: the relay is no worker, and a fetch
    # of values of several types counts for no type.
    assert r.take_bandwidth() == {"total": r.bandwidth, "workers": {A: (8e6, 1)},
                                  "types": {"numpy.ndarray": (8e6, 1)}}
    assert r.take_bandwidth() == {"total": r.bandwidth, "workers": {}, "types": {}}
    assert (r.fetches, r.bytes_in) == (3, 6_001_000)


def test_recorder_is_bounded_and_off_keeps_no_fetches():
    r = Recorder(max_pending=3, max_fetched=2)
    for i in range(5):
        r.fetched_from(A, float(i), {f"k{i}": 1})
        r.ended(f"t{i}", CANCELLED, (0, 0, 0, 1, 0, 1, False), None, None)
    assert [x[0] for x in unpack(r.take())] == ["t2", "t3", "t4"]
    assert list(r.fetched) == ["k3", "k4"]       # the oldest dropped
    off = Recorder(on=False)
    off.fetch_started(A, 1.0)
    off.fetched_from(A, 2.0, {"x": 1})
    assert off.fetched == {} and off.started == {}


def test_recorder_dropping_the_oldest_keeps_extras_with_their_records():
    r = Recorder(max_pending=2)
    for i in range(4):
        r.fetched_from(A, float(i), {f"in{i}": i + 1})
        r.ended(f"t{i}", OK, (i, i, i, i + 1, 0, 1, False), 8, "int",
                [f"in{i}"] if i % 2 else ())
    got = unpack(r.take())
    assert [x[0] for x in got] == ["t2", "t3"]
    assert got[0][9] is None and got[1][9] == (("transfer", 3.0, 3.0, A, 4),)


def test_a_record_the_numbers_cannot_hold_is_left_out():
    r = Recorder()
    r.ended("big", OK, (0, 0, 0, 1, 0, -1, False), 8, "int")     # no such thread
    r.ended("ok", OK, (0, 0, 0, 1, 0, 1, False), 8, "int")
    assert [x[0] for x in unpack(r.take())] == ["ok"]


def test_a_batch_is_columns_and_packs_back():
    records_ = [rec("a", 0.0, 1.0, thread=2**63 + 5, nbytes=10, deser=0.25),
                rec(("b", 1), 1.0, 2.0, status=ERROR, typename="str",
                    extra=(("transfer", 0.5, 1.0, B, 64),))]
    batch = pack(records_)
    assert batch["keys"] == ["a", ("b", 1)] and batch["types"] == ["int", "str"]
    assert len(batch["numbers"]) == 2 * 56 and batch["extra"] == [
        (1, (("transfer", 0.5, 1.0, B, 64),))]
    assert unpack(batch) == records_


# ---------------------------------------------------------------- the scheduler's ring

def test_a_batch_from_the_wire_is_stored_as_its_records_and_a_bad_one_dropped():
    good = pack([rec("a", 0.0, 1.0, nbytes=3),
                 rec("b", 1.0, 2.0, extra=(("transfer", 0.5, 1.0, B, 9),))])
    short = dict(good, numbers=good["numbers"][:-1])
    bad_status = pack([rec("c", 0.0, 1.0)])
    bad_status["numbers"] = bad_status["numbers"][:48] + (7).to_bytes(8, "little")
    bad_extra = dict(pack([rec("d", 0.0, 1.0)]), extra=[(5, (("transfer", 0, 1, A, 1),))])
    s = TaskStream(batch=1000)
    s.add_batch(A, short)
    s.add_batch(A, {"keys": ["x"]})
    s.add_batch(B, bad_status)
    s.add_batch(A, good)
    s.add_batch(B, bad_extra)
    assert s.total == 2                 # the bad ones dropped, the good one whole
    page = records(s.page())
    assert [(r["key"], r["worker"], r["nbytes"]) for r in page] == [("a", A, 3), ("b", A, 8)]
    assert page[1]["startstops"][0] == {"action": "transfer", "start": 0.5, "stop": 1.0,
                                        "source": B, "nbytes": 9}



def test_pages_by_number_count_and_time():
    s = TaskStream()
    s.add(A, [rec("a", 0.0, 1.0), rec("b", 1.0, 2.0, nbytes=3)])
    s.add(B, [rec(("c", 0), 2.0, 3.0, status=ERROR, typename="str",
                  extra=(("transfer", 1.0, 2.0, A, 30),))])
    assert (len(s), s.total, s.first, s.workers, s.types) == (3, 3, 0, [A, B],
                                                             ["int", "str"])
    page = s.page()
    assert (page["first"], page["next"], page["end"], page["total"]) == (0, 3, 3, 3)
    assert records(page) == [
        {"key": "a", "worker": A, "thread": 7, "status": "OK", "nbytes": 8,
         "typename": "int", "startstops": [
             {"action": "compute", "start": 0.0, "stop": 1.0}]},
        {"key": "b", "worker": A, "thread": 7, "status": "OK", "nbytes": 3,
         "typename": "int", "startstops": [
             {"action": "compute", "start": 1.0, "stop": 2.0}]},
        {"key": ("c", 0), "worker": B, "thread": 7, "status": "error", "nbytes": 8,
         "typename": "str", "startstops": [
             {"action": "transfer", "start": 1.0, "stop": 2.0, "source": A,
              "nbytes": 30},
             {"action": "compute", "start": 2.0, "stop": 3.0}]}]
    assert [r["key"] for r in records(s.page(count=-2))] == ["b", ("c", 0)]
    assert [r["key"] for r in records(s.page(since=1, count=1))] == ["b"]
    assert [r["key"] for r in records(s.page(start=1.5))] == ["b", ("c", 0)]
    assert [r["key"] for r in records(s.page(stop=2.0))] == ["a"]
    limited = s.page(limit=2)
    assert (limited["next"], limited["end"]) == (2, 3)
    rest = s.page(since=limited["next"], count=limited["end"] - limited["next"])
    assert [r["key"] for r in records(rest)] == [("c", 0)]
    assert s.page(count=0)["total"] == 3 and s.page(count=0)["keys"] == []


def test_the_ring_overwrites_the_oldest_and_says_what_was_dropped():
    s = TaskStream(capacity=4)
    for i in range(10):
        s.add(A, [rec(f"k{i}", float(i), i + 0.5,
                      extra=(("transfer", i - 1.0, float(i), B, i),) if i % 3 == 0
                      else None)])
    assert (len(s), s.total, s.first) == (4, 10, 6)
    page = s.page(since=2)
    assert page["dropped"] == 4
    assert [r["key"] for r in records(page)] == ["k6", "k7", "k8", "k9"]
    # extras follow their records across the wrap, and die with them
    assert [r["key"] for r in records(page) if len(r["startstops"]) == 2] == ["k6", "k9"]
    assert sorted(s.extra) == sorted(s._slot(i) for i in (6, 9))
    assert [r["key"] for r in records(s.page(start=7.0))] == ["k7", "k8", "k9"]
    assert [r["key"] for r in records(s.page(count=-3, limit=2))] == ["k7", "k8"]


def test_a_million_records_stay_bounded():
    s = TaskStream(capacity=1000)
    batch = [rec(("x", i), float(i), i + 1.0) for i in range(1000)]
    for _ in range(1000):
        s.add(A, batch)
    assert (len(s), s.total) == (1000, 1_000_000)
    assert all(len(col) == 1000 for col in s.columns.values())


def test_stored_in_bulk_as_one_by_one():
    """Records wait and are stored column by column; the ring ends up the same
    whether they are stored at each add, in batches, or all at once past its size."""
    batches = [(A if i % 3 else B,
                [rec(f"k{i}-{j}", i + j / 10, i + j / 10 + 0.05, thread=i % 2,
                     status=(i + j) % 3, nbytes=i * j, typename=f"t{j % 2}",
                     extra=(("transfer", i - 0.5, i - 0.1, A, j),) if j == 1 else None)
                 for j in range(i % 4)]) for i in range(40)]
    pages = []
    for batch, capacity in ((1, 13), (7, 13), (10_000, 13), (1, 1000), (10_000, 1000)):
        s = TaskStream(capacity=capacity, batch=batch)
        for worker, records in batches:
            s.add(worker, records)
        page = s.page()
        pages.append((capacity, {k: v for k, v in page.items()}))
    for capacity in (13, 1000):
        same = [p for c, p in pages if c == capacity]
        assert all(p == same[0] for p in same)
    assert pages[0][1]["total"] == 60 and len(pages[0][1]["keys"]) == 13
    assert len(pages[-1][1]["keys"]) == 60


def test_malformed_records_are_dropped_and_keys_shared():
    s = TaskStream()
    own = ("x", 1)
    s.add(A, [("bad",), rec("k", "not a time", 1.0), rec(("x", 1), 0.0, 1.0)],
          key_of=lambda key: own if key == own else None)
    assert s.total == 1 and s.keys[0] is own


# ---------------------------------------------------------------- sums for a report

def test_breakdown_sums_groups_threads_and_transfers():
    s = TaskStream()
    s.add(A, [rec("inc-1", 0.0, 1.0, thread=1, deser=0.5),
              rec("inc-2", 1.0, 3.0, thread=2, status=ERROR, nbytes=0)])
    s.add(B, [rec("add-1", 3.0, 4.0, thread=1, ser=0.25, nbytes=100,
                  extra=(("transfer", 2.0, 3.0, A, 64),
                         ("disk-read", 2.5, 3.0, None, 0)))])
    b = Breakdown(0.0, 4.0)
    b.add_page(s.page())
    assert b.groups["inc"] == {"compute": 3.0, "transfer": 0.0, "deserialize": 0.5,
                               "serialize": 0.0, "disk-read": 0.0, "count": 2,
                               "errors": 1, "nbytes": 8}
    assert b.groups["add"] == {"compute": 1.0, "transfer": 1.0, "deserialize": 0.0,
                               "serialize": 0.25, "disk-read": 0.5, "count": 1,
                               "errors": 0, "nbytes": 100}
    assert b.transfers == {(A, B): {"count": 1, "nbytes": 64, "seconds": 1.0}}
    assert b.threads[(A, 2)]["compute"] == 2.0 and b.threads[(B, 1)]["tasks"] == 1
    assert (b.first, b.last) == (-0.5, 4.25)
    # three threads over 4 s, busy 1.5 + 2 + 2.75 (compute, transfer, serialize, disk)
    assert b.idle({A: 2, B: 1}, 0.0, 4.0) == 12.0 - 6.25
    assert len(b.rects) == 7 and not b.binned


def test_breakdown_bins_past_its_budget():
    b = Breakdown(0.0, 10.0, max_rects=5, bins=10)
    for i in range(10):
        b.add(A, 1, f"inc-{i}", "OK", 8, float(i), i + 0.5)
    assert b.binned and b.rects == [] and b.count == 10
    rects = b.binned_rects()
    # each one-second bin is half busy with "inc"
    assert len(rects) == 1
    lane, start, stop, label, busy = rects[0]
    assert (lane, start, stop, label, busy) == ((A, 1), 0.0, 10.0, "inc", 0.5)


def test_memory_history_halves_old_samples_and_forgets_departed_workers():
    h = MemoryHistory(capacity=8)
    for t in range(20):
        h.add(A, float(t), t * 10, t, 0)
    samples = h.since()[A]
    assert len(samples) < 8 and samples[-1] == [19.0, 190, 19, 0]
    assert [s[0] for s in h.since(17.0)[A]] == [17.0, 18.0, 19.0]
    for i in range(10):
        h.add(f"w{i}", float(i), 1, 1, 0)
    h.forget({A: None})
    assert len(h.series) == 4 and A in h.series and "w9" in h.series


# ---------------------------------------------------------------- the report

def test_report_data_and_html_carry_the_same_numbers():
    s = TaskStream()
    s.add(A, [rec("inc-1", 0.0, 1.0, thread=1), rec("inc-2", 1.0, 2.0, thread=1)])
    s.add(B, [rec("add-1", 2.5, 3.0, thread=5, status=ERROR,
                  extra=(("transfer", 2.0, 2.5, A, 64),))])
    b = Breakdown(0.0, 4.0)
    b.add_page(s.page())
    data = report_data(b, {A: [[0.0, 100, 10, 0], [4.0, 200, 20, 0]]},
                       {A: {"nthreads": 1}, B: {"nthreads": 1}}, 0.0, 4.0,
                       scheduler="tcp://127.0.0.1:9")
    assert data["summary"]["tasks"] == 3 and data["summary"]["errors"] == 1
    assert data["summary"]["idle"] == 8.0 - 3.0     # two threads, 4 s; 3 s busy
    assert [g["name"] for g in data["groups"]] == ["inc", "add"]
    assert data["transfers"] == [{"source": A, "destination": B, "count": 1,
                                  "nbytes": 64, "seconds": 0.5}]
    page = charts.report_html(data)
    assert 'data-dask-ipy="report" data-tasks="3" data-errors="1"' in page
    assert len(re.findall(r'data-dask-ipy="task" ', page)) == 4   # 3 computes, 1 transfer
    assert 'data-dask-ipy="transfer" data-source="tcp://127.0.0.1:1"' in page
    assert re.search(r'data-dask-ipy="groups-row" data-group="inc" data-count="2"', page)
    assert 'data-dask-ipy="memory-line" data-worker="tcp://127.0.0.1:1" ' \
           'data-kind="process" data-samples="2" data-peak="200"' in page
    assert "<script src" not in page and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", "")


# ---------------------------------------------------------------- worker logs

def test_log_buffer_is_bounded_newest_first():
    logger = logging.getLogger("dask_ipy.test-logbuffer")
    buf = LogBuffer(n=3, logger="dask_ipy.test-logbuffer").attach()
    try:
        for i in range(5):
            logger.warning("line %d", i)
        # a record that does not format is kept as written
        buf.handle(logging.LogRecord("dask_ipy", logging.ERROR, __file__, 1, "%d %d",
                                     (1,), None))
    finally:
        buf.detach()
    logger.warning("after")
    lines = buf.lines()
    assert [level for level, _ in lines] == ["ERROR", "WARNING", "WARNING"]
    assert lines[0][1] == "%d %d"
    assert [line.rsplit(" - ", 1)[1] for _, line in lines[1:]] == ["line 4", "line 3"]
    assert len(buf.lines(1)) == 1
