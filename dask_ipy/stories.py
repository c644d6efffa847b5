"""What the transition logs of the scheduler and of the workers tell of some keys or
stimulus ids (`Client.story`).

An entry of either log is ``(key, start, finish, kind, time)``: the task's change of
state, the kind of message or event that caused it and the shell's clock then; the
scheduler keeps beside it the states that change recommended for other keys.  Its
stimulus id is ``"<kind>-<time>"``, as dask.distributed's
("task-finished-1765000000.25"): the two parts are kept as they are and joined only
when a story is told, so that a transition costs no formatting.
"""

from __future__ import annotations

LENGTH = 10_000        # entries a log keeps by default


def story(log, recommendations, keys_or_stimuli):
    """The entries of ``log`` (oldest first) of these keys, recommending them a state,
    or caused by these stimulus ids: [(key, start, finish, {key: state},
    stimulus_id, time)]; what is no key (unhashable) is no part of any.
    ``recommendations``: what each entry recommended, in a sequence beside ``log``,
    or None.  ``log`` is copied first, in one step: a log that another thread
    appends to may be read (with no recommendations)."""
    wanted = {name for name in keys_or_stimuli if _hashable(name)}
    stimuli = set()
    for name in wanted:
        if isinstance(name, str):
            kind, _, when = name.rpartition("-")
            try:
                stimuli.add((kind, float(when)))
            except ValueError:
                pass
    entries = list(log)
    recommendations = ([None] * len(entries) if recommendations is None
                       else list(recommendations))
    return [(key, start, finish, dict(recs or ()), f"{kind}-{when}", when)
            for (key, start, finish, kind, when), recs in zip(entries, recommendations)
            if key in wanted or (kind, when) in stimuli
            or not wanted.isdisjoint(recs or ())]


def _hashable(value):
    try:
        hash(value)
    except TypeError:
        return False
    return True


def worker_story(*keys_or_stimuli, dask_worker=None):
    """Run on a worker (`Client.story`, through `Client.run`): its story of these."""
    return dask_worker.story(*keys_or_stimuli)
