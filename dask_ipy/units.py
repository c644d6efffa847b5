"""Numbers for people, shared by the scheduler (which never imports dask) and the
worker."""


def format_bytes(n, digits=2):
    """``1536 -> '1.50 KiB'`` (``digits`` after the point)."""
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    return f"{n:.{digits}f} PiB"   # pragma: no cover
