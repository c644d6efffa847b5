"""The scheduler's queue of root tasks hands entries out in a heap's order."""

import heapq
import itertools
import random

from dask_ipy.scheduler.state import RootQueue


def test_root_queue_pops_in_heap_order():
    rng = random.Random(1)
    seq = itertools.count()
    for _ in range(200):
        q, heap = RootQueue(), []
        for _ in range(rng.randrange(60)):
            if heap and rng.random() < 0.3:
                assert q.first() == heap[0]
                assert q.pop() == heapq.heappop(heap)
            else:
                # Mostly in order (a graph's tasks), sometimes ahead of the rest.
                top = max((e[0] for e in heap), default=(0, 0))
                prio = (top[0], top[1] + 1) if rng.random() < 0.7 else \
                    (rng.randrange(-2, 2), rng.randrange(50))
                entry = (prio, next(seq), None)
                q.push(entry)
                heapq.heappush(heap, entry)
            assert len(q) == len(heap) and bool(q) == bool(heap)
            assert sorted(q) == sorted(heap)
        while heap:
            assert q.pop() == heapq.heappop(heap)
        assert not q and q.first() is None and q.pop() is None
        q.push(((0,), next(seq), None))
        q.clear()
        assert not q and list(q) == []
