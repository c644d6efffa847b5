"""Task group names, and dask's task prefixes, from keys, without importing dask (the
scheduler process never needs dask itself)."""

from __future__ import annotations

from functools import lru_cache


def _is_token(word):
    """A generated part of a key: a number, or a hex token of 5+ characters."""
    if word.isdigit():
        return True
    # All hex digits (nothing left once they are stripped), not all letters.
    return len(word) >= 5 and not word.strip("0123456789abcdef") and not word.isalpha()


def _words_kept(key):
    """The words of ``key`` that are not generated, joined again ('' for none)."""
    words = key.split("-")
    kept = [words[0]] + [w for w in words[1:] if not _is_token(w)]
    return "-".join(w for w in kept if w)


# The keys of a graph share a few names ("inc" in "inc-9f86d081884c", ...): each
# name's words are looked at once, not once per key.
_name_kept = lru_cache(maxsize=4096)(_words_kept)


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
    name, dash, last = key.rpartition("-")
    if dash and _is_token(last):
        return _name_kept(name) or key
    return _words_kept(key) or key


def _is_hex_word(word):
    """dask's test for a token among words of letters: 8 of them, the first a-f."""
    return len(word) == 8 and "a" <= word[0] <= "f"


@lru_cache(maxsize=4096)
def _split_name(name):
    """`key_split` of a str key."""
    words = name.split("-")
    first = words[0]
    if not first:
        return "Other"
    prefix = first if first[0].isalpha() else first.split(",")[0].strip("_'()\"")
    for word in words[1:]:
        if not word.isalpha() or _is_hex_word(word):
            break
        prefix += "-" + word
    if len(prefix) == 32 and not prefix.strip("0123456789abcdef"):
        return "data"
    if not prefix:
        return "Other"
    if prefix[0] == "<":
        prefix = prefix.strip("<>").split()[0].split(".")[-1]
    return prefix


def key_split(key) -> str:
    """The task prefix dask.distributed gives a key (dask's ``key_split``), which is
    what its settings per prefix name (``distributed.scheduler.default-task-durations``):
    the first word and the letters-only words right after it, ``'x'`` for
    ``('x-1-y', 0)``, ``'hello-world'`` for ``'hello-world-1'``.  Not always the
    group (`key_prefix`), which keeps every word that is not a token."""
    while type(key) is tuple:
        key = key[0] if key else None
    if type(key) is bytes:
        key = key.decode(errors="replace")
    return _split_name(key) if type(key) is str else "Other"
