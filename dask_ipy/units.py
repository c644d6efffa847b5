"""Numbers for people, shared by the scheduler (which never imports dask) and the
worker: shown, and read from what people type (light to import: the client and the
command line check their input with them)."""

import operator


def format_bytes(n, digits=2):
    """``1536 -> '1.50 KiB'`` (``digits`` after the point)."""
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    return f"{n:.{digits}f} PiB"   # pragma: no cover


def check_nthreads(nthreads):
    """A number of task threads: a whole number of at least 1 (never quietly one
    for zero)."""
    try:
        n = operator.index(nthreads)
    except TypeError:
        n = None
    if n is None or isinstance(nthreads, bool) or n < 1:
        raise ValueError(f"nthreads must be a whole number of at least 1, not "
                         f"{nthreads!r}")
    return n


def parse_resources(resources):
    """Worker resources as {name: amount}: from a dict, or from a string such as
    ``"GPU=2,MEM=10e9"`` (commas or spaces between them, as dask-worker takes)."""
    if resources is None or resources == "":
        return {}
    if isinstance(resources, str):
        pairs = {}
        for item in resources.replace(",", " ").split():
            name, sep, amount = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"resources: expected NAME=AMOUNT, got {item!r} "
                                 f"in {resources!r}")
            pairs[name.strip()] = amount.strip()
        resources = pairs
    if not isinstance(resources, dict):
        raise TypeError(f"resources must be a dict such as {{'GPU': 2}} or a string "
                        f"such as 'GPU=2,MEM=10e9', not {type(resources).__name__}")
    out = {}
    for name, amount in resources.items():
        try:
            value = float(amount)
        except (TypeError, ValueError):
            raise ValueError(f"resources: the amount of {name!r} must be a number, "
                             f"not {amount!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"resources: the amount of {name!r} must be a finite "
                             f"number of at least 0, not {amount!r}")
        out[str(name)] = int(value) if value.is_integer() else value
    return out
