"""Task group names from keys, without importing dask (the scheduler process never
needs dask itself)."""

from __future__ import annotations


def _is_token(word):
    """A generated part of a key: a number, or a hex token of 5+ characters."""
    if word.isdigit():
        return True
    # All hex digits (nothing left once they are stripped), not all letters.
    return len(word) >= 5 and not word.strip("0123456789abcdef") and not word.isalpha()


def key_prefix(key) -> str:
    """The group a key belongs to: ``'inc'`` for ``'inc-9f86d081884c'`` or
    ``('inc-9f86d081884c', 3)``, ``'sum-aggregate'`` for ``('sum-aggregate-ab12f', 0)``.
    """
    if isinstance(key, tuple):
        key = key[0] if key else ""
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    if not isinstance(key, str):
        return type(key).__name__
    words = key.split("-")
    kept = [words[0]] + [w for w in words[1:] if not _is_token(w)]
    return "-".join(w for w in kept if w) or key
