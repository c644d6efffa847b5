"""Where data should move between workers: pure decisions over plain data (keys,
sizes, worker addresses), for `SchedulerState`'s retire_workers, replicate and
rebalance, which carry them out.

A move is asked of the worker that is to hold a copy ("acquire-replicas": the key and
its holders); it fetches the copy from a holder, peer to peer, and confirms with
"add-keys" (or reports "missing-data" without a task).  A copy that is no longer
wanted is dropped with "free-keys", but only once another copy is confirmed:

    retire:     unique data ──acquire──▶ others ──add-keys──▶ the worker is removed
    replicate:  missing copies acquired, extra copies dropped
    rebalance:  a key ──acquire──▶ a lighter worker ──add-keys──▶ dropped from the
                heavier one

Every function is deterministic: ties are broken by address, then by key (as text).
"""

from __future__ import annotations


def _by_size(sizes):
    """Keys, largest first (ties by key)."""
    return sorted(sizes, key=lambda k: (-max(sizes[k], 0), str(k)))


def _lightest(loads, exclude=()):
    best = None
    for address in sorted(loads):
        if address in exclude:
            continue
        if best is None or loads[address] < loads[best]:
            best = address
    return best


def plan_retirement(sizes, loads):
    """Where each key held only by retiring workers goes: ``sizes`` {key: bytes},
    ``loads`` {address: bytes held} of the workers that stay.  The largest keys
    first, each to the worker holding the least so far.  {key: address}; {} if no
    worker stays."""
    if not loads:
        return {}
    loads = dict(loads)
    plan = {}
    for key in _by_size(sizes):
        address = _lightest(loads)
        plan[key] = address
        loads[address] += max(sizes[key], 0)
    return plan


def plan_replicas(keys, n, allowed, loads):
    """Copies to add and to drop so that each key has ``n`` copies among the
    ``allowed`` workers (None: on all of them).

    ``keys``: {key: (bytes, [holders])}; ``loads``: {address: bytes held} of the
    allowed workers.  New copies go to the least loaded workers, extra copies leave
    the most loaded; holders outside ``allowed`` are left alone.  Returns
    ({key: [addresses to acquire it]}, {key: [addresses to drop it]})."""
    loads = {a: loads.get(a, 0) for a in allowed}
    acquire, drop = {}, {}
    for key in _by_size({k: v[0] for k, v in keys.items()}):
        nbytes, holders = keys[key]
        nbytes = max(nbytes, 0)
        mine = [h for h in sorted(holders) if h in loads]
        target = len(loads) if n is None else min(n, len(loads))
        if not mine:
            continue           # no copy among the allowed workers to start from
        if len(mine) < target:
            new = []
            for _ in range(target - len(mine)):
                address = _lightest(loads, exclude=set(mine) | set(new))
                new.append(address)
                loads[address] += nbytes
            acquire[key] = new
        elif len(mine) > target and target > 0:
            extra = sorted(mine, key=lambda a: (-loads[a], a))[:len(mine) - target]
            for address in extra:
                loads[address] -= nbytes
            drop[key] = sorted(extra)
    return acquire, drop


def plan_rebalance(keys, loads):
    """Moves that even out the bytes the workers hold: ``keys`` {key: (bytes,
    [holders])} that may move, ``loads`` {address: bytes held} of the workers taking
    part.  Workers above the mean give their largest keys, one at a time, to the
    worker holding least, as long as the giver stays at or above the taker
    afterwards (a move never makes the imbalance worse).  [(key, sender,
    recipient)]."""
    if len(loads) < 2:
        return []
    loads = dict(loads)
    mean = sum(loads.values()) / len(loads)
    held = {}
    for key, (nbytes, holders) in keys.items():
        for h in holders:
            if h in loads:
                held.setdefault(h, {})[key] = nbytes
    moves = []
    for sender in sorted(loads, key=lambda a: (-loads[a], a)):
        if loads[sender] <= mean:
            break
        mine = held.get(sender, {})
        for key in _by_size(mine):
            nbytes = max(mine[key], 0)
            if nbytes == 0:
                continue
            holders = keys[key][1]
            recipient = _lightest(loads, exclude=set(holders) | {sender})
            if recipient is None or loads[sender] - nbytes < loads[recipient] + nbytes:
                continue
            moves.append((key, sender, recipient))
            loads[sender] -= nbytes
            loads[recipient] += nbytes
            if loads[sender] <= mean:
                break
    return moves


class Move:
    """One request moving data (retire, replicate or rebalance), until its copies are
    confirmed.

    ``pending``: {(key, recipient id): sender id or None}  copies asked for; a
    rebalance drops the sender's copy once the recipient's is confirmed.
    ``failed``: [key]  copies that could not be made.
    For a retirement: ``retiring`` {worker id: status before}, ``info`` {worker id:
    what it was}, ``retired`` {address: what it was}, ``attempts`` {key: copies
    failed}, ``close``, ``remove``.
    """

    def __init__(self, kind, client, request_id, **options):
        self.kind = kind
        self.client = client
        self.request_id = request_id
        self.pending = {}
        self.failed = []
        self.retiring = {}
        self.retired = {}
        self.info = {}
        self.attempts = {}
        self.close = options.get("close", False)
        self.remove = options.get("remove", True)

    def __repr__(self):
        return f"<Move {self.kind} pending={len(self.pending)}>"
